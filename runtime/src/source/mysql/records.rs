//! Binlog row events (and TRUNCATE statements) of the captured tables turned
//! into records: each row's images rendered as Debezium MySQL JSON, its key,
//! its position, and the events that cannot be read as dead-letter records.

use mysql_async::binlog::events::{Event, RowsEventData, TableMapEvent};

use super::change::Change;
use super::position::BinlogPosition;
use super::schema::{self, TableSchema};
use super::{CatalogueSchema, MySqlCapture, values};
use crate::contract::Op;
use crate::event::position as version;
use crate::source::{Origin, RecordBody, SourceError, SourceRecord};

impl MySqlCapture {
    /// For a captured table whose table map names no columns, the catalogue's schema.
    pub(super) async fn catalogue_schema(&mut self, table_id: u64, at: u64) -> Result<CatalogueSchema, SourceError> {
        let Some(tme) = self.session.table(table_id) else { return Ok(None) };
        let name = (tme.database_name().into_owned(), tme.table_name().into_owned());
        if !self.tables.contains(&name) || schema::names_columns(tme) {
            return Ok(None);
        }
        let at = BinlogPosition { file: self.session.file().to_owned(), pos: at, gtid: None, gtids: None }.ordinal();
        self.catalogue.schema(&name, tme, at).await.map(Some).map_err(|e| SourceError::Unavailable {
            source_name: self.name.clone(),
            operation: "read the table's columns from the catalogue",
            message: e.to_string(),
        })
    }

    pub(super) fn rows_records(
        &self,
        event: &Event,
        rows: &RowsEventData<'_>,
        schema: CatalogueSchema,
        records: &mut Vec<SourceRecord>,
    ) {
        let Some(table) = self.session.table(rows.table_id()) else {
            records.push(self.undecodable(event, &format!("rows event for unknown table id {}", rows.table_id())));
            return;
        };
        let name = (table.database_name().into_owned(), table.table_name().into_owned());
        if !self.tables.contains(&name) {
            return;
        }
        let (create, delete) = match rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => (true, false),
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => (false, true),
            _ => (false, false),
        };
        let op = if create {
            Op::Create
        } else if delete {
            Op::Delete
        } else {
            Op::Update
        };
        let schema = match schema.transpose() {
            Ok(schema) => schema,
            Err(e) => {
                let what =
                    format!("rows of {}.{} at a table map that does not match the catalogue: {e}", name.0, name.1);
                records.push(self.undecodable(event, &what));
                return;
            }
        };
        for (index, row) in rows.rows(table).enumerate() {
            let row = row
                .map_err(|e| e.to_string())
                .and_then(|(before, after)| self.change(table, schema.as_deref(), before, after));
            match row {
                Ok((key, before, after)) => {
                    records.push(self.record(event, &name, op, index as u32, key, before, after));
                }
                Err(e) => records.push(self.undecodable(event, &format!("row {index} of {}.{}: {e}", name.0, name.1))),
            }
        }
    }

    /// The key and the two images of one row, as Debezium JSON text.
    fn change(
        &self,
        table: &TableMapEvent<'_>,
        schema: Option<&TableSchema>,
        before: Option<mysql_async::binlog::row::BinlogRow>,
        after: Option<mysql_async::binlog::row::BinlogRow>,
    ) -> Result<(String, Option<String>, Option<String>), String> {
        let before = before.map(|row| values::render_row(row, table, schema)).transpose()?;
        let after = after.map(|row| values::render_row(row, table, schema)).transpose()?;
        let key = after.as_ref().or(before.as_ref()).map(|r| &r.key).filter(|k| !k.is_empty());
        let key = key.map_or_else(|| "null".to_owned(), |k| serde_json::Value::Object(k.clone()).to_string());
        let text = |row: Option<values::RenderedRow>| row.map(|r| serde_json::Value::Object(r.image).to_string());
        Ok((key, text(before), text(after)))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        event: &Event,
        table: &(String, String),
        op: Op,
        row: u32,
        key: String,
        before: Option<String>,
        after: Option<String>,
    ) -> SourceRecord {
        let header = event.header();
        let file = self.session.file().to_owned();
        let pos = u64::from(header.log_pos()).saturating_sub(u64::from(header.event_size()));
        let number = version::binlog_file_number(&file).unwrap_or(0);
        let gtid = self.transaction.as_ref().and_then(|t| t.gtid.clone());
        // MariaDB's sequence numbers go on across a failover; file numbers do not.
        let position = match gtid.as_deref().and_then(version::parse_mariadb_gtid) {
            Some(g) => version::mariadb(g.seq, pos, row),
            None => version::mysql(number, pos, row),
        };
        Change {
            prefix: &self.prefix,
            table,
            op,
            key,
            before,
            after,
            position,
            committed_at_ms: u64::from(header.timestamp()) * 1000,
            id: format!("{file}:{pos}:{row}"),
            origin: Origin::MySql { server_id: header.server_id(), file, pos, row, gtid, mariadb: self.mariadb },
        }
        .into_record()
    }

    pub(super) fn truncate_record(&self, event: &Event, table: (String, String)) -> SourceRecord {
        self.record(event, &table, Op::Truncate, 0, "null".to_owned(), None, None)
    }

    /// An event the capture could not read, as a record the pipeline dead-letters.
    pub(super) fn undecodable(&self, event: &Event, error: &str) -> SourceRecord {
        let header = event.header();
        let position = format!("{}:{}", self.session.file(), header.log_pos());
        tracing::error!(source = %self.name, %position, %error, "undecodable binlog event; dead-lettered");
        SourceRecord {
            stream: format!("{}.binlog", self.prefix),
            id: position.clone(),
            body: RecordBody::Fields(vec![
                (
                    crate::event::debezium::CAPTURE_ERROR_FIELD.to_owned(),
                    format!("binlog event ending at {position} could not be decoded: {error}"),
                ),
                ("binlog".to_owned(), hex::encode(event.data())),
            ]),
        }
    }
}
