//! The query that reads a batch of keys' rows by the key template's columns,
//! built once from the table's catalogue (which also checks that every column
//! the mapper names exists).

use crate::contract::DbValue;
use crate::query::{Dialect, QueryRunner};

use super::config::MapperConfig;
use super::template::KeyTemplate;

/// A mistake found against the catalogue: the `[mapper]` field at fault and what is wrong.
pub type ColumnMistake = (&'static str, String);

/// Reads `table`'s columns and their types from the catalogue and builds the
/// default query: one text-list parameter per template column, in order.
pub async fn default_query(
    database: &QueryRunner,
    table: &str,
    template: &KeyTemplate,
    config: &MapperConfig,
) -> Result<String, ColumnMistake> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    let sql = match database.dialect() {
        Dialect::Postgres => {
            "select a.attname::text, format_type(a.atttypid, a.atttypmod) from pg_attribute a \
             join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped order by a.attnum"
        }
        Dialect::MySql => {
            "select column_name, column_type from information_schema.columns \
             where table_schema = ? and table_name = ? order by ordinal_position"
        }
    };
    let rows = database
        .query(sql, &[DbValue::Text(schema.to_owned()), DbValue::Text(name.to_owned())])
        .await
        .map_err(|e| ("key", format!("reading the columns of {table}: {e}")))?;
    let columns: Vec<(String, String)> = rows
        .values
        .iter()
        .filter_map(|row| match row.as_slice() {
            [DbValue::Text(name), DbValue::Text(kind)] => Some((name.clone(), kind.clone())),
            _ => None,
        })
        .collect();
    if columns.is_empty() {
        return Err(("key", format!("table {table} does not exist (or the database user cannot see it)")));
    }
    check_columns(table, template, config, &columns)?;
    let types: Vec<&str> = template
        .columns()
        .iter()
        .map(|c| columns.iter().find(|(name, _)| name == c).map_or("text", |(_, kind)| kind.as_str()))
        .collect();
    Ok(match database.dialect() {
        Dialect::Postgres => postgres_query(schema, name, &template.columns(), &types),
        Dialect::MySql => mysql_query(schema, name, &template.columns(), &types),
    })
}

/// Every column the mapper names must be one of the table's.
pub fn check_columns(
    table: &str,
    template: &KeyTemplate,
    config: &MapperConfig,
    columns: &[(String, String)],
) -> Result<(), ColumnMistake> {
    let has = |column: &str| columns.iter().any(|(name, _)| name == column);
    let named = template
        .columns()
        .into_iter()
        .map(|c| ("key", c))
        .chain(config.columns.iter().flatten().map(|c| ("columns", c.as_str())))
        .chain(config.exclude.iter().map(|c| ("exclude", c.as_str())))
        .chain(config.rename.keys().map(|c| ("rename", c.as_str())));
    for (field, column) in named {
        if !has(column) {
            let known: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
            return Err((field, format!("table {table} has no column `{column}`; it has: {}", known.join(", "))));
        }
    }
    Ok(())
}

fn postgres_query(schema: &str, table: &str, columns: &[&str], types: &[&str]) -> String {
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let from = format!("{}.{}", quoted(schema), quoted(table));
    if let ([column], [kind]) = (columns, types) {
        return format!("select * from {from} where {} = any($1::text[]::{kind}[])", quoted(column));
    }
    let lists: Vec<String> =
        types.iter().enumerate().map(|(i, kind)| format!("${}::text[]::{kind}[]", i + 1)).collect();
    let names: Vec<String> = columns.iter().map(|c| quoted(c)).collect();
    format!("select * from {from} where ({}) in (select * from unnest({}))", names.join(", "), lists.join(", "))
}

fn mysql_query(schema: &str, table: &str, columns: &[&str], types: &[&str]) -> String {
    let quoted = |name: &str| format!("`{}`", name.replace('`', "``"));
    // Each parameter is a JSON array of the batch's values; the lists are zipped by position.
    let lists: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, kind)| format!("json_table(?, '$[*]' columns (n for ordinality, k{i} {kind} path '$')) j{i}"))
        .collect();
    let mut keys = format!(
        "select {} from {}",
        (0..types.len()).map(|i| format!("j{i}.k{i}")).collect::<Vec<_>>().join(", "),
        lists[0]
    );
    for (i, list) in lists.iter().enumerate().skip(1) {
        keys.push_str(&format!(" join {list} on j{i}.n = j0.n"));
    }
    let on: Vec<String> = columns.iter().enumerate().map(|(i, c)| format!("t.{} = k.k{i}", quoted(c))).collect();
    format!("select t.* from {}.{} t join ({keys}) k on {}", quoted(schema), quoted(table), on.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_by_one_and_by_several_key_columns() {
        assert_eq!(
            postgres_query("public", "users", &["id"], &["bigint"]),
            "select * from \"public\".\"users\" where \"id\" = any($1::text[]::bigint[])"
        );
        assert_eq!(
            postgres_query("s", "t", &["a", "b"], &["integer", "text"]),
            "select * from \"s\".\"t\" where (\"a\", \"b\") in (select * from unnest($1::text[]::integer[], $2::text[]::text[]))"
        );
        assert_eq!(
            mysql_query("d", "t", &["a", "b"], &["int(11)", "varchar(8)"]),
            "select t.* from `d`.`t` t join (select j0.k0, j1.k1 from json_table(?, '$[*]' columns (n for ordinality, k0 int(11) path '$')) j0 \
             join json_table(?, '$[*]' columns (n for ordinality, k1 varchar(8) path '$')) j1 on j1.n = j0.n) k on t.`a` = k.k0 and t.`b` = k.k1"
        );
    }
}
