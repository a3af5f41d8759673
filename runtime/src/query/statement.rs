//! What a plugin's statement may be: a read, that calls nothing acting outside
//! its transaction. The READ ONLY transaction stops writes; these checks stop
//! what a read-only transaction still allows.

/// Functions that reach outside the transaction: signal other backends
/// (cancel, terminate), change the server, or open connections elsewhere.
const OUTSIDE_THE_TRANSACTION: &[&str] = &[
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_log_backend_memory_contexts",
    "pg_drop_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_logical_emit_message",
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "dblink_connect",
    "dblink_connect_u",
];

/// MySQL's ways of writing from a read: `SELECT … INTO OUTFILE/DUMPFILE` writes
/// a file on the server.
const MYSQL_WRITES: &[&str] = &["outfile", "dumpfile"];

/// Families of such functions, by name prefix.
const OUTSIDE_THE_TRANSACTION_PREFIXES: &[&str] = &["pg_replication_origin_"];

/// The SQL a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Postgres: `$1` placeholders.
    Postgres,
    /// MySQL and MariaDB: `?` placeholders.
    MySql,
}

impl Dialect {
    /// The dialect a database URL's scheme names.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }
}

/// Only statements that read: the first keyword must be SELECT, WITH, VALUES or
/// TABLE, and none of [`OUTSIDE_THE_TRANSACTION`] may be named. Writes hidden
/// in a CTE are stopped by the read-only transaction; session-level advisory
/// locks (named locks on MySQL) are released after every query.
pub(super) fn check(sql: &str, dialect: Dialect) -> Result<(), String> {
    if dialect == Dialect::MySql {
        check_mysql(sql)?;
    }
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) =
            rest.strip_prefix("--").or_else(|| rest.strip_prefix('#').filter(|_| dialect == Dialect::MySql))
        {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix('(') {
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let keyword: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    match keyword.to_ascii_uppercase().as_str() {
        "SELECT" | "WITH" | "VALUES" | "TABLE" => {}
        "" => return Err("empty statement".to_owned()),
        other => return Err(format!("only SELECT, WITH, VALUES or TABLE statements may run, not {other}")),
    }
    // Quoted and escaped identifiers name the same functions: compare without
    // quotes, and refuse Unicode escapes that could spell them.
    let plain: String = sql.chars().filter(|c| *c != '"').flat_map(char::to_lowercase).collect();
    if plain.contains("u&'") || sql.to_ascii_lowercase().contains("u&\"") {
        return Err("Unicode-escaped identifiers and strings (U&) are not allowed".to_owned());
    }
    let outside = |word: &&str| {
        OUTSIDE_THE_TRANSACTION.contains(word) || OUTSIDE_THE_TRANSACTION_PREFIXES.iter().any(|p| word.starts_with(p))
    };
    match plain.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).find(outside) {
        Some(name) => Err(format!("{name} acts outside the query's read-only transaction and may not be called")),
        None => Ok(()),
    }
}

/// MySQL runs the text of `/*! … */` comments, so a statement could hide there
/// from the first-keyword check.
fn check_mysql(sql: &str) -> Result<(), String> {
    if sql.contains("/*!") {
        return Err("executable comments (/*! … */) are not allowed".to_owned());
    }
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> =
        lower.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    match words.windows(2).find(|pair| pair[0] == "into" && MYSQL_WRITES.contains(&pair[1])) {
        Some(pair) => Err(format!("INTO {} writes a file on the server and may not be used", pair[1].to_uppercase())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, check as check_in};

    fn check(sql: &str) -> Result<(), String> {
        check_in(sql, Dialect::Postgres)
    }

    #[test]
    fn mysql_comments_and_file_writes() {
        let mysql = |sql| check_in(sql, Dialect::MySql);
        assert_eq!(mysql("# note\nselect ? from t -- x"), Ok(()));
        assert_eq!(mysql("/*+ MAX_EXECUTION_TIME(10) */ select 1"), Ok(()));
        assert_eq!(mysql("select outfile, dumpfile from t"), Ok(()));
        for sql in [
            "select * from t into outfile '/tmp/x'",
            "select 1 into DUMPFILE '/tmp/y'",
            "/*!50000 update t set a = 1 */",
            "select 1 /*! , sleep(1) */",
            "# c\nupdate t set a = 1",
        ] {
            assert!(mysql(sql).is_err(), "{sql}");
        }
        assert!(check("# not a comment in Postgres\nselect 1").is_err());
        assert_eq!(Dialect::of_url("mysql://root@h/db"), Some(Dialect::MySql));
        assert_eq!(Dialect::of_url("postgresql://h/db"), Some(Dialect::Postgres));
        assert_eq!(Dialect::of_url("redis://h"), None);
    }

    #[test]
    fn reads_pass_and_everything_else_is_refused() {
        for sql in ["select 1", " -- c\n/* d */ ( with x as (select 1) select * from x )", "values (1)", "table t"] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
        for sql in ["update t set a = 1", "", "commit", "set x = 1", "create table t (a int)"] {
            assert!(check(sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn functions_acting_outside_the_transaction_are_refused_however_spelled() {
        for sql in [
            "select pg_terminate_backend(pid) from pg_stat_activity",
            "select PG_CANCEL_BACKEND(1)",
            "select pg_catalog.\"pg_terminate_backend\"(1)",
            "select U&\"pg\\005fterminate_backend\"(1)",
            "select * from dblink('host=x', 'delete from t') as t(a int)",
            "select pg_reload_conf()",
        ] {
            assert!(check(sql).is_err(), "{sql}");
        }
        assert_eq!(
            check("select pg_backend_pid(), dblink_id, pg_terminate_backend_count, 'x' as pg_sleep from t"),
            Ok(())
        );
    }
}
