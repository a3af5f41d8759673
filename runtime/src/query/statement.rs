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

/// Families of such functions, by name prefix.
const OUTSIDE_THE_TRANSACTION_PREFIXES: &[&str] = &["pg_replication_origin_"];

/// Only statements that read: the first keyword must be SELECT, WITH, VALUES or
/// TABLE, and none of [`OUTSIDE_THE_TRANSACTION`] may be named. Writes hidden
/// in a CTE are stopped by the read-only transaction; session-level advisory
/// locks are released after every query.
pub(super) fn check(sql: &str) -> Result<(), String> {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
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

#[cfg(test)]
mod tests {
    use super::check;

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
