//! The binlog connection of the MySQL/MariaDB capture, kept alive: after a
//! server restart or a dropped or silent connection it is opened again from
//! the last confirmed position (what was handed out and not confirmed is
//! read again).

use std::time::{Duration, Instant};

use futures::StreamExt;
use mysql_async::binlog::events::{Event, EventData, TableMapEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};

use super::position::BinlogPosition;
use crate::source::SourceError;

/// The server could not send from the requested position (ER_MASTER_FATAL_ERROR_READING_BINLOG).
const BINLOG_GONE: u16 = 1236;
const ROTATE_EVENT: u8 = 4;
const FORMAT_DESCRIPTION_EVENT: u8 = 15;

/// A binlog stream that reconnects on demand.
pub(super) struct BinlogSession {
    source: String,
    opts: Opts,
    server_id: u32,
    heartbeat: Duration,
    stream: Option<BinlogStream>,
    /// Where a new connection starts: the newest confirmed position.
    resume: BinlogPosition,
    /// The file the events being read are in; follows rotations.
    file: String,
    /// This connection has sent its format description, so the parser knows
    /// whether events carry checksums.
    described: bool,
    last_heard: Instant,
    /// When the connection was lost, until it is back.
    lost_at: Option<Instant>,
    /// `@@server_id` of the server the positions are from, and the key they are stored under.
    server: (u32, String),
}

impl BinlogSession {
    pub(super) fn new(source: &str, opts: Opts, server_id: u32, heartbeat: Duration, resume: BinlogPosition) -> Self {
        Self {
            source: source.to_owned(),
            opts,
            server_id,
            heartbeat,
            stream: None,
            described: false,
            file: resume.file.clone(),
            resume,
            last_heard: Instant::now(),
            lost_at: None,
            server: (0, String::new()),
        }
    }

    /// The server the positions belong to: a reconnect that finds another one behind the URL halts.
    pub(super) fn on_server(mut self, server_id: u32, position_key: String) -> Self {
        self.server = (server_id, position_key);
        self
    }

    /// `@@server_id` of the server the positions belong to.
    pub(super) fn server_id(&self) -> u32 {
        self.server.0
    }

    /// The binlog file of the last event read.
    pub(super) fn file(&self) -> &str {
        &self.file
    }

    /// The table a rows event refers to, from the stream's table maps.
    pub(super) fn table(&self, table_id: u64) -> Option<&TableMapEvent<'static>> {
        self.stream.as_ref()?.get_tme(table_id)
    }

    async fn connect(&mut self) -> Result<(), SourceError> {
        let attempt = async {
            let mut conn = Conn::new(self.opts.clone()).await?;
            let facts: Option<(String, u32)> = conn.query_first("SELECT VERSION(), @@server_id").await?;
            let (version, server_id) = facts.unwrap_or_default();
            if server_id != self.server.0 {
                return Ok(Err(server_id));
            }
            if version.to_ascii_lowercase().contains("mariadb") {
                // Without it MariaDB replaces its GTID events with BEGIN queries.
                conn.query_drop("SET @mariadb_slave_capability = 4").await?;
            }
            // An idle server says nothing otherwise, so a dead one would go unnoticed.
            conn.query_drop(format!("SET @master_heartbeat_period = {}", self.heartbeat.as_nanos())).await?;
            let request = BinlogStreamRequest::new(self.server_id)
                .with_filename(self.resume.file.as_bytes())
                .with_pos(self.resume.pos);
            conn.get_binlog_stream(request).await.map(Ok)
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(Err(other))) => {
                let (ours, key) = &self.server;
                Err(super::config::other_server(&self.source, &self.resume, *ours, other, key))
            }
            Ok(Ok(Ok(stream))) => {
                self.stream = Some(stream);
                self.file = self.resume.file.clone();
                self.described = false;
                self.last_heard = Instant::now();
                if let Some(lost_at) = self.lost_at.take() {
                    metrics::counter!(crate::metrics::CAPTURE_RECONNECTS_TOTAL, "source" => self.source.clone())
                        .increment(1);
                    tracing::info!(source = %self.source, position = %self.resume, down = ?lost_at.elapsed(),
                        "binlog streaming resumed from the last confirmed position");
                }
                Ok(())
            }
            Ok(Err(e)) => Err(self.lost(&e.to_string())),
            Err(_) => Err(self.lost("no answer within 10s while connecting")),
        }
    }

    /// The next event, or `None` when none came within `wait`. Connects first
    /// when there is no connection; an error means it was lost now (anything
    /// handed out since the last confirmation will come again).
    pub(super) async fn recv(&mut self, wait: Duration) -> Result<Option<Event>, SourceError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        let Some(stream) = self.stream.as_mut() else { return Ok(None) };
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(event))) => {
                self.last_heard = Instant::now();
                self.follow(&event);
                Ok(Some(event))
            }
            Ok(Some(Err(mysql_async::Error::Server(e)))) if e.code == BINLOG_GONE => {
                self.drop_stream();
                Err(SourceError::Halted {
                    source_name: self.source.clone(),
                    message: format!(
                        "the server cannot send the binlog from {} ({}); changes since then cannot be read. \
                         Rebuild the cache from a new snapshot: stop evercache, delete the capture's position key \
                         in Redis (see `position_key`), and start it again with snapshot = \"initial\"",
                        self.resume, e.message
                    ),
                })
            }
            Ok(Some(Err(e))) => Err(self.lost(&e.to_string())),
            Ok(None) => Err(self.lost("the binlog stream ended (server shutdown?)")),
            // Heartbeats arrive every `heartbeat` on an idle stream: silence for
            // several means the connection is gone without a FIN or RST.
            Err(_) if self.last_heard.elapsed() >= self.heartbeat * 4 + Duration::from_secs(2) => {
                Err(self.lost("no event or heartbeat for too long: the connection is gone"))
            }
            Err(_) => Ok(None),
        }
    }

    /// Keeps `file` on the binlog file the events come from. The rotate that
    /// opens a connection comes before the format description, so the parser
    /// leaves the checksum on its name (those bytes may even be digits): that
    /// one names the file asked for, which is known. Every later rotate, real or
    /// sent when the server moved to a new file after a restart, names the next file.
    fn follow(&mut self, event: &Event) {
        match event.header().event_type_raw() {
            FORMAT_DESCRIPTION_EVENT => self.described = true,
            ROTATE_EVENT if self.described => {
                if let Ok(Some(EventData::RotateEvent(rotate))) = event.read_data() {
                    self.file = super::change::binlog_file_name(&rotate.name());
                }
            }
            _ => {}
        }
    }

    /// Everything up to `position` was written: a new connection starts there.
    pub(super) fn confirm(&mut self, position: &BinlogPosition) {
        if position.ordinal() >= self.resume.ordinal() {
            self.resume = position.clone();
        }
    }

    /// Lets go of the connection on purpose; the next read reconnects.
    pub(super) fn release(&mut self, why: &str) {
        if self.stream.is_some() {
            let _ = self.lost(why);
        }
    }

    /// Closes the connection.
    pub(super) async fn shutdown(&mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
        }
    }

    fn drop_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            // Closing politely can hang on a dead connection; do it aside.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
            });
        }
    }

    fn lost(&mut self, why: &str) -> SourceError {
        self.drop_stream();
        self.lost_at.get_or_insert_with(Instant::now);
        tracing::warn!(source = %self.source, position = %self.resume, reason = why,
            "binlog connection lost; reconnecting");
        SourceError::Unavailable { source_name: self.source.clone(), operation: "binlog", message: why.to_owned() }
    }
}
