//! A query's result as it streams in, held to the row and byte caps so an
//! oversized result is an error before it is all in memory, never a truncation.

use crate::contract::{DbValue, Rows};

use super::QueryError;

/// Collects rows up to `max_rows` and `max_bytes` of cell data.
pub(super) struct RowCollector<'a> {
    database: &'a str,
    max_rows: usize,
    max_bytes: usize,
    bytes: usize,
    rows: Rows,
}

impl<'a> RowCollector<'a> {
    pub(super) fn new(database: &'a str, max_rows: usize, max_bytes: usize) -> Self {
        Self { database, max_rows, max_bytes, bytes: 0, rows: Rows { columns: Vec::new(), values: Vec::new() } }
    }

    /// Called before a row's cells are decoded, so a result over the row cap
    /// stops at the first extra row.
    pub(super) fn admit_row(&self) -> Result<(), QueryError> {
        if self.rows.values.len() == self.max_rows {
            return Err(QueryError::TooManyRows { database: self.database.to_owned(), limit: self.max_rows });
        }
        Ok(())
    }

    /// The column names; set once, from the first row.
    pub(super) fn has_columns(&self) -> bool {
        !self.rows.columns.is_empty()
    }

    pub(super) fn set_columns(&mut self, columns: Vec<String>) {
        self.rows.columns = columns;
    }

    pub(super) fn push(&mut self, cells: Vec<DbValue>) -> Result<(), QueryError> {
        self.bytes += cells.iter().map(size).sum::<usize>();
        if self.bytes > self.max_bytes {
            return Err(QueryError::ResultTooLarge { database: self.database.to_owned(), limit: self.max_bytes });
        }
        self.rows.values.push(cells);
        Ok(())
    }

    pub(super) fn finish(self) -> Rows {
        self.rows
    }
}

/// Approximate bytes a cell costs the plugin, for `max_result_bytes`.
fn size(value: &DbValue) -> usize {
    8 + match value {
        DbValue::Text(s) => s.len(),
        DbValue::Bytes(b) => b.len(),
        DbValue::IntList(l) => l.len() * 8,
        DbValue::TextList(l) => l.iter().map(|s| s.len() + 8).sum(),
        _ => 0,
    }
}
