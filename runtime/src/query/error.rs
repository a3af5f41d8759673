//! Why a host query failed, classified by what it means: the database being
//! unreachable or overloaded is waited out; everything else is the plugin's.

use std::fmt;

/// The server's code for a failed statement, in its own scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlCode {
    /// Postgres' SQLSTATE, e.g. "57014".
    SqlState(String),
    /// A MySQL or MariaDB error number, e.g. 1969.
    MySql(u16),
}

impl fmt::Display for SqlCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlCode::SqlState(code) => write!(f, "SQLSTATE {code}"),
            SqlCode::MySql(number) => write!(f, "MySQL error {number}"),
        }
    }
}

impl SqlCode {
    /// The server cancelled the statement at its time limit.
    pub fn is_statement_timeout(&self) -> bool {
        match self {
            SqlCode::SqlState(code) => code == "57014",
            // MariaDB's max_statement_time, MySQL's max_execution_time.
            SqlCode::MySql(number) => matches!(number, 1969 | 3024),
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            SqlCode::SqlState(code) => transient_sqlstate(code),
            SqlCode::MySql(number) => transient_mysql(*number),
        }
    }
}

/// Why a query failed; the plugin receives the message as a value.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The database could not be reached; transient, the pipeline waits.
    #[error("database '{database}' is unavailable: {message}")]
    Unavailable {
        /// The `[databases.<name>]` name.
        database: String,
        /// What failed.
        message: String,
    },
    /// The host refused the statement (not a read, unsupported column type).
    #[error("database '{database}': query refused: {message}")]
    Rejected {
        /// The `[databases.<name>]` name.
        database: String,
        /// Why.
        message: String,
    },
    /// The database rejected the statement, e.g. a syntax error, a statement
    /// timeout (SQLSTATE 57014, MySQL error 1969 or 3024) or a write in the
    /// read-only transaction (25006, MySQL error 1792).
    #[error("database '{database}': {message}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Sql {
        /// The `[databases.<name>]` name.
        database: String,
        /// The server's error code, when it sent one.
        code: Option<SqlCode>,
        /// The server's message.
        message: String,
    },
    /// The calling plugin's `call_timeout` ran out while the statement ran;
    /// the server cancelled it (its statement timeout was cut to the deadline).
    #[error("database '{database}': query cancelled at the plugin call's deadline (call_timeout)")]
    Deadline {
        /// The `[databases.<name>]` name.
        database: String,
    },
    /// More rows than `max_rows`.
    #[error("database '{database}': query returned more than {limit} rows (max_rows); narrow it or raise the limit")]
    TooManyRows {
        /// The `[databases.<name>]` name.
        database: String,
        /// The limit.
        limit: usize,
    },
    /// More cell data than `max_result_bytes`.
    #[error("database '{database}': query returned more than {limit} bytes (max_result_bytes)")]
    ResultTooLarge {
        /// The `[databases.<name>]` name.
        database: String,
        /// The limit.
        limit: usize,
    },
    /// The URL or options are unusable.
    #[error("database '{database}': bad configuration: {message}")]
    BadConfig {
        /// The `[databases.<name>]` name.
        database: String,
        /// What is wrong (never the password).
        message: String,
    },
}

impl QueryError {
    /// True when the database is unreachable or refused for a reason of its
    /// own (load, a conflict with another transaction): waited out, never
    /// dead-lettered. A pipeline whose failures stay "transient" while the
    /// database answers health checks treats them as its own after a bound.
    pub fn is_transient(&self) -> bool {
        match self {
            QueryError::Unavailable { .. } => true,
            QueryError::Sql { code: Some(code), .. } => code.is_transient(),
            _ => false,
        }
    }
}

/// SQLSTATEs that say nothing about the statement itself.
fn transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 53: insufficient resources (too many
    // connections, out of memory or disk); 57P: shutdown, cannot connect now;
    // 57014: statement timeout; 40001/40P01: serialization failure, deadlock;
    // 55P03: lock not available; 58: system error (I/O).
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code.starts_with("58")
        || matches!(code, "57014" | "40001" | "40P01" | "55P03")
}

/// MySQL and MariaDB error numbers that say nothing about the statement itself.
fn transient_mysql(number: u16) -> bool {
    // 1021 disk full; 1037/1038/1041 out of memory; 1040/1203 too many
    // connections; 1053 shutdown; 1205 lock wait timeout; 1213 deadlock; 1317
    // interrupted; 1927 connection killed (MariaDB); 1969/3024 statement time
    // limit; 3572 lock not available (NOWAIT); 4031 idle disconnect (MySQL).
    matches!(
        number,
        1021 | 1037 | 1038 | 1041 | 1040 | 1203 | 1053 | 1205 | 1213 | 1317 | 1927 | 1969 | 3024 | 3572 | 4031
    )
}

/// The password part of a `postgres://user:password@host/db` (or `mysql://…`) URL.
pub(super) fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

pub(super) fn redact(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) => text.replace(p, "***"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(code: &str) -> QueryError {
        QueryError::Sql { database: "db".into(), code: Some(SqlCode::SqlState(code.into())), message: String::new() }
    }

    #[test]
    fn load_and_conflicts_are_transient_the_statement_is_not() {
        for code in ["57014", "40001", "40P01", "53300", "55P03", "57P01", "08006"] {
            assert!(sql(code).is_transient(), "{code}");
        }
        for code in ["42601", "25006", "22012", "42P01", "42501"] {
            assert!(!sql(code).is_transient(), "{code}");
        }
        assert!(!QueryError::Deadline { database: "db".into() }.is_transient());
    }

    #[test]
    fn mysql_load_and_conflicts_are_transient_the_statement_is_not() {
        let mysql = |number| QueryError::Sql {
            database: "db".into(),
            code: Some(SqlCode::MySql(number)),
            message: String::new(),
        };
        for number in [1205, 1213, 1040, 1969, 3024, 1053] {
            assert!(mysql(number).is_transient(), "{number}");
        }
        // Syntax, read-only transaction, unknown table, access denied, division by zero.
        for number in [1064, 1792, 1146, 1142, 1365] {
            assert!(!mysql(number).is_transient(), "{number}");
        }
        let timeout =
            QueryError::Sql { database: "db".into(), code: Some(SqlCode::MySql(1969)), message: "interrupted".into() };
        assert_eq!(timeout.to_string(), "database 'db': interrupted (MySQL error 1969)");
    }
}
