//! Why a host query failed, classified by what it means: the database being
//! unreachable or overloaded is waited out; everything else is the plugin's.

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
    /// timeout (SQLSTATE 57014) or a write in the read-only transaction (25006).
    #[error("database '{database}': {message}{}", code.as_ref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Sql {
        /// The `[databases.<name>]` name.
        database: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
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
            QueryError::Sql { code: Some(code), .. } => transient_sqlstate(code),
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

/// Maps a sqlx error, never showing `password`.
pub(super) fn classify(database: &str, password: Option<&str>, e: sqlx::Error) -> QueryError {
    let database = database.to_owned();
    let message = |e: &dyn std::fmt::Display| redact(&e.to_string(), password);
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned());
            if code.as_deref().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) {
                QueryError::Unavailable { database, message: message(&e) }
            } else {
                QueryError::Sql { database, code, message: message(&db.message()) }
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => QueryError::Unavailable { database, message: message(&e) },
        _ => QueryError::Sql { database, code: None, message: message(&e) },
    }
}

/// The password part of a `postgres://user:password@host/db` URL.
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
        QueryError::Sql { database: "db".into(), code: Some(code.into()), message: String::new() }
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
}
