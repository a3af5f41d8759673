//! DDL statements read from the binlog, applied to the captured tables'
//! schemas the way the server applied them, so the columns of the rows that
//! follow are named by the layout they were written with (a capture behind
//! several changes of a table cannot ask the catalogue: it answers for now).
//! Statements are parsed with sqlparser's MySQL dialect; one it cannot parse
//! or follow is reported by the tables it names, which are then read from the
//! catalogue again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOption, CreateTable, Expr, MySQLColumnPosition, ObjectName, ObjectNamePart,
    ObjectType, RenameTableNameKind, Statement, TableConstraint,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use super::debezium_json::BINARY_CHARSET;
use super::schema::{SchemaColumn, TableSchema, binary_string, labels};

/// A table as "database.table".
pub(super) type TableName = (String, String);

/// The schemas of the captured tables that are known.
pub(super) type Schemas = HashMap<TableName, Arc<TableSchema>>;

/// What a statement did to the known schemas.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Applied {
    /// Some schema changed.
    pub(super) changed: bool,
    /// Captured tables the statement changed in a way not followed here.
    pub(super) unfollowed: Vec<TableName>,
}

/// Applies `statement`, run with default database `default_database`, to
/// `schemas`, for the tables in `captured`.
pub(super) fn apply(
    schemas: &mut Schemas,
    captured: &HashSet<TableName>,
    statement: &str,
    default_database: &str,
) -> Applied {
    let mut applied = Applied::default();
    let name = |object: &ObjectName| table_name(object, default_database);
    let parsed = match Parser::parse_sql(&MySqlDialect {}, statement) {
        Ok(parsed) => parsed,
        Err(_) => {
            applied.unfollowed = named_tables(statement, default_database, captured);
            return applied;
        }
    };
    for statement in parsed {
        match statement {
            Statement::AlterTable { name: object, operations, .. } => {
                let Some(table) = name(&object).filter(|t| captured.contains(t) || schemas.contains_key(t)) else {
                    continue;
                };
                let Some(schema) = schemas.get(&table) else {
                    applied.unfollowed.push(table);
                    continue;
                };
                let mut schema = (**schema).clone();
                let mut renamed = None;
                for operation in &operations {
                    match alter(&mut schema, operation) {
                        Ok(Some(to)) => renamed = name(&to),
                        Ok(None) => {}
                        Err(()) => {
                            applied.unfollowed.push(table.clone());
                            break;
                        }
                    }
                }
                if applied.unfollowed.contains(&table) {
                    schemas.remove(&table);
                    continue;
                }
                schemas.remove(&table);
                schemas.insert(renamed.unwrap_or(table), Arc::new(schema));
                applied.changed = true;
            }
            Statement::CreateTable(create) => {
                let Some(table) = name(&create.name).filter(|t| captured.contains(t)) else { continue };
                match created(&create) {
                    Some(schema) => {
                        schemas.insert(table, Arc::new(schema));
                        applied.changed = true;
                    }
                    None => {
                        schemas.remove(&table);
                        applied.unfollowed.push(table);
                    }
                }
            }
            Statement::Drop { object_type: ObjectType::Table, names, .. } => {
                for table in names.iter().filter_map(name) {
                    applied.changed |= schemas.remove(&table).is_some();
                }
            }
            Statement::RenameTable(renames) => {
                for rename in renames {
                    let (Some(from), Some(to)) = (name(&rename.old_name), name(&rename.new_name)) else { continue };
                    if let Some(schema) = schemas.remove(&from) {
                        schemas.insert(to, schema);
                        applied.changed = true;
                    } else if captured.contains(&to) {
                        // A table not followed takes a captured name: read it from the catalogue.
                        applied.changed |= schemas.remove(&to).is_some();
                        applied.unfollowed.push(to);
                    }
                }
            }
            _ => {}
        }
    }
    applied
}

/// Applies one `ALTER TABLE` operation; `Ok(Some(name))` when it renames the table.
fn alter(schema: &mut TableSchema, operation: &AlterTableOperation) -> Result<Option<ObjectName>, ()> {
    use AlterTableOperation::*;
    match operation {
        AddColumn { column_def, column_position, if_not_exists, .. } => {
            if *if_not_exists && schema.index(&column_def.name.value).is_some() {
                return Ok(None);
            }
            let column = column(column_def, schema);
            schema.insert(column, position(schema, column_position.as_ref(), schema.columns.len())?);
        }
        DropColumn { column_names, if_exists, .. } => {
            for name in column_names {
                match schema.index(&name.value) {
                    Some(index) => schema.remove(index),
                    None if *if_exists => {}
                    None => return Err(()),
                }
            }
        }
        ChangeColumn { old_name, new_name, data_type, options, column_position } => {
            let index = schema.index(&old_name.value).ok_or(())?;
            let mut column = column_from(&new_name.value, &data_type.to_string(), options, schema);
            if column.charset == 0 && schema.columns[index].charset != 0 && !binary_string(&column.data_type) {
                column.charset = schema.columns[index].charset;
            }
            schema.replace(index, column, column_position.as_ref())?;
        }
        ModifyColumn { col_name, data_type, options, column_position } => {
            let index = schema.index(&col_name.value).ok_or(())?;
            let column = column_from(&col_name.value, &data_type.to_string(), options, schema);
            schema.replace(index, column, column_position.as_ref())?;
        }
        RenameColumn { old_column_name, new_column_name } => {
            let index = schema.index(&old_column_name.value).ok_or(())?;
            schema.columns[index].name = new_column_name.value.clone();
        }
        AddConstraint { constraint: TableConstraint::PrimaryKey { columns, .. }, .. } => {
            let names: Vec<String> = columns.iter().filter_map(|c| identifier(&c.column.expr)).collect();
            schema.primary_key = names.iter().map(|n| schema.index(n).ok_or(())).collect::<Result<_, _>>()?;
        }
        DropPrimaryKey { .. } => schema.primary_key.clear(),
        RenameTable { table_name: RenameTableNameKind::As(to) | RenameTableNameKind::To(to) } => {
            return Ok(Some(to.clone()));
        }
        // Indexes, other constraints, options, partitions, algorithm and lock clauses leave the columns alone.
        _ => {}
    }
    Ok(None)
}

/// Where `FIRST`/`AFTER c` puts a column; `default` without one.
fn position(schema: &TableSchema, at: Option<&MySQLColumnPosition>, default: usize) -> Result<usize, ()> {
    match at {
        None => Ok(default),
        Some(MySQLColumnPosition::First) => Ok(0),
        Some(MySQLColumnPosition::After(name)) => schema.index(&name.value).map(|i| i + 1).ok_or(()),
    }
}

impl TableSchema {
    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name))
    }

    fn insert(&mut self, column: SchemaColumn, at: usize) {
        self.columns.insert(at, column);
        for key in &mut self.primary_key {
            *key += usize::from(*key >= at);
        }
    }

    fn remove(&mut self, index: usize) {
        self.columns.remove(index);
        self.primary_key.retain(|&key| key != index);
        for key in &mut self.primary_key {
            *key -= usize::from(*key > index);
        }
    }

    /// Replaces the column at `index`, moving it when `at` says so; it stays in the key it was in.
    fn replace(&mut self, index: usize, column: SchemaColumn, at: Option<&MySQLColumnPosition>) -> Result<(), ()> {
        let Some(at) = at else {
            self.columns[index] = column;
            return Ok(());
        };
        let in_key = self.primary_key.iter().position(|&k| k == index);
        self.remove(index);
        let to = position(self, Some(at), index)?;
        self.insert(column, to);
        if let Some(slot) = in_key {
            self.primary_key.insert(slot, to);
        }
        Ok(())
    }
}

/// A `CREATE TABLE`'s schema; `None` for `LIKE` or `AS SELECT`, whose columns are elsewhere.
fn created(create: &CreateTable) -> Option<TableSchema> {
    if create.like.is_some() || create.query.is_some() || create.clone.is_some() {
        return None;
    }
    let mut schema = TableSchema { columns: Vec::new(), primary_key: Vec::new() };
    for def in &create.columns {
        let column = column(def, &schema);
        let primary = def.options.iter().any(|o| matches!(o.option, ColumnOption::Unique { is_primary: true, .. }));
        if primary {
            schema.primary_key = vec![schema.columns.len()];
        }
        schema.columns.push(column);
    }
    for constraint in &create.constraints {
        if let TableConstraint::PrimaryKey { columns, .. } = constraint {
            let names: Vec<String> = columns.iter().filter_map(|c| identifier(&c.column.expr)).collect();
            schema.primary_key = names.iter().map(|n| schema.index(n)).collect::<Option<_>>()?;
        }
    }
    Some(schema)
}

fn column(def: &ColumnDef, schema: &TableSchema) -> SchemaColumn {
    let options: Vec<ColumnOption> = def.options.iter().map(|o| o.option.clone()).collect();
    column_from(&def.name.value, &def.data_type.to_string(), &options, schema)
}

/// A column from its SQL type text (`DECIMAL(10,2)`, `INT UNSIGNED`,
/// `ENUM('a', 'b')`) and options. Its character set: binary strings' own, an
/// explicit one, else the table's (that of its other text columns).
fn column_from(name: &str, type_text: &str, options: &[ColumnOption], schema: &TableSchema) -> SchemaColumn {
    let text = type_text.to_ascii_lowercase();
    let word = text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("");
    let data_type = match word {
        "integer" => "int",
        "bool" | "boolean" => "tinyint",
        "dec" | "numeric" | "fixed" => "decimal",
        "real" => "double",
        "character" => "char",
        "serial" => "bigint",
        other => other,
    }
    .to_owned();
    let explicit = options.iter().find_map(|o| match o {
        ColumnOption::CharacterSet(name) | ColumnOption::Collation(name) => Some(name.to_string().to_ascii_lowercase()),
        _ => None,
    });
    let textual = matches!(
        data_type.as_str(),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" | "json"
    );
    let charset = if binary_string(&data_type) {
        BINARY_CHARSET
    } else if let Some(explicit) = explicit.filter(|_| textual) {
        // Only latin1 decodes differently from UTF-8 (see `debezium_json::text`).
        if explicit.starts_with("latin1") { 8 } else { 45 }
    } else if textual {
        schema.columns.iter().map(|c| c.charset).find(|&c| c != 0 && c != BINARY_CHARSET).unwrap_or(0)
    } else {
        0
    };
    SchemaColumn {
        name: name.to_owned(),
        unsigned: text.contains("unsigned") || word == "serial",
        labels: labels(&data_type, &text),
        charset,
        data_type,
    }
}

fn identifier(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        // A key prefix, `name(10)`, keys the column.
        Expr::Function(function) => Some(function.name.to_string()),
        _ => None,
    }
}

/// `db.table` or `table` (in the default database).
fn table_name(object: &ObjectName, default_database: &str) -> Option<TableName> {
    let parts: Vec<&str> = object
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(ident.value.as_str()),
            ObjectNamePart::Function(_) => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [table] => Some((default_database.to_owned(), (*table).to_owned())),
        [database, table] => Some(((*database).to_owned(), (*table).to_owned())),
        _ => None,
    }
}

/// The captured tables a statement names, for one that could not be parsed:
/// only DDL (`ALTER`, `CREATE`, `DROP`, `RENAME`) counts.
fn named_tables(statement: &str, default_database: &str, captured: &HashSet<TableName>) -> Vec<TableName> {
    let words = super::schema::ddl_words(statement);
    if !words.first().is_some_and(|w| matches!(w.as_str(), "alter" | "create" | "drop" | "rename")) {
        return Vec::new();
    }
    captured
        .iter()
        .filter(|(database, table)| {
            let (database, table) = (database.to_ascii_lowercase(), table.to_ascii_lowercase());
            let qualified = format!("{database}.{table}");
            let here = database.eq_ignore_ascii_case(default_database);
            words.iter().any(|w| *w == qualified || (here && *w == table))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
#[path = "ddl_tests.rs"]
mod tests;
