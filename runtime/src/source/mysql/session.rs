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
    /// Whether a connection that finds another server may follow it.
    follow: Follow,
    /// A failover followed by the connection just opened, until taken.
    followed: Option<Followed>,
    /// The connection was opened by GTID: the rotate that opens it names the
    /// file, with its checksum (`true`) or not trailing the name.
    first_rotate: Option<bool>,
}

/// Whether a reconnect that finds another server behind the URL follows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Follow {
    /// No GTID position is known (MySQL, or no GTIDs): it halts.
    #[default]
    Never,
    /// Batches handed out are still being written; it waits for them.
    Later,
    /// From this MariaDB GTID position.
    From(String),
}

/// A failover the session followed: the binlog now comes from another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Followed {
    pub(super) from_server: u32,
    pub(super) to_server: u32,
    /// Where on the new server streaming resumed (`None` until its first rotate was read).
    pub(super) at: Option<BinlogPosition>,
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
            follow: Follow::Never,
            followed: None,
            first_rotate: None,
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

    /// Whether a connection is open.
    pub(super) fn connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether the next connection may follow a failover.
    pub(super) fn may_follow(&mut self, follow: Follow) {
        self.follow = follow;
    }

    /// The failover followed by the connection, once streaming resumed on the new server.
    pub(super) fn take_followed(&mut self) -> Option<Followed> {
        if self.followed.as_ref().is_some_and(|f| f.at.is_some()) { self.followed.take() } else { None }
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
            let facts: Option<(String, u32, String)> =
                conn.query_first("SELECT VERSION(), @@server_id, @@global.binlog_checksum").await?;
            let (version, server_id, checksum) = facts.unwrap_or_default();
            let mariadb = version.to_ascii_lowercase().contains("mariadb");
            let follow = match &self.follow {
                _ if server_id == self.server.0 => None,
                Follow::From(gtids) if mariadb => Some(gtids.clone()),
                _ => return Ok(Err(server_id)),
            };
            if mariadb {
                // Without it MariaDB replaces its GTID events with BEGIN queries.
                conn.query_drop("SET @mariadb_slave_capability = 4").await?;
            }
            // An idle server says nothing otherwise, so a dead one would go unnoticed.
            conn.query_drop(format!("SET @master_heartbeat_period = {}", self.heartbeat.as_nanos())).await?;
            let request = match &follow {
                // MariaDB sends from the GTID position when the file name is empty.
                Some(gtids) => {
                    conn.exec_drop("SET @slave_connect_state = ?", (gtids.as_str(),)).await?;
                    conn.query_drop("SET @slave_gtid_strict_mode = 1").await?;
                    BinlogStreamRequest::new(self.server_id).with_filename(&[]).with_pos(4u64)
                }
                None => BinlogStreamRequest::new(self.server_id)
                    .with_filename(self.resume.file.as_bytes())
                    .with_pos(self.resume.pos),
            };
            let stream = conn.get_binlog_stream(request).await?;
            Ok::<_, mysql_async::Error>(Ok((
                stream,
                follow.map(|_| (server_id, !checksum.eq_ignore_ascii_case("NONE"))),
            )))
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(Err(other))) if self.follow == Follow::Later => Err(SourceError::Unavailable {
                source_name: self.source.clone(),
                operation: "follow a failover",
                message: format!(
                    "server_id {other} is behind the URL, not {}: following it once the batches handed out are written",
                    self.server.0
                ),
            }),
            Ok(Ok(Err(other))) => {
                let (ours, key) = &self.server;
                Err(super::config::other_server(&self.source, &self.resume, *ours, other, key))
            }
            Ok(Ok(Ok((stream, follow)))) => {
                self.stream = Some(stream);
                self.file = self.resume.file.clone();
                self.described = false;
                self.first_rotate = None;
                if let Some((server_id, checksum)) = follow {
                    self.followed = Some(Followed { from_server: self.server.0, to_server: server_id, at: None });
                    self.server.0 = server_id;
                    self.first_rotate = Some(checksum);
                    tracing::warn!(source = %self.source, from_server = self.followed.as_ref().map(|f| f.from_server),
                        to_server = server_id, gtid_position = %match &self.follow { Follow::From(g) => g.as_str(), _ => "" },
                        "another server is behind the URL (a failover): following it from the GTID position");
                }
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
                if let Some(followed) = self.followed.take() {
                    return Err(SourceError::Halted {
                        source_name: self.source.clone(),
                        message: format!(
                            "the new primary (server_id {}) cannot send the binlog from the GTID position {:?} \
                             read from server_id {} ({}): it lacks transactions the capture read (lost with the old \
                             primary under asynchronous replication) or purged its binlog. Cached values may come \
                             from transactions the database no longer has. Rebuild the cache from a new snapshot: \
                             stop evercache, delete the capture's position key in Redis (see `position_key`), and \
                             start it again with snapshot = \"initial\"",
                            followed.to_server, self.follow, followed.from_server, e.message
                        ),
                    });
                }
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
            ROTATE_EVENT if self.first_rotate.is_some() => {
                let checksum = self.first_rotate.take().unwrap_or(true);
                if let Ok(Some(EventData::RotateEvent(rotate))) = event.read_data() {
                    let raw = rotate.name_raw();
                    let raw = if checksum { &raw[..raw.len().saturating_sub(4)] } else { raw };
                    self.file = super::change::binlog_file_name(&String::from_utf8_lossy(raw));
                    // Nothing on this server is confirmed yet: a reconnect starts at the file's
                    // head, before the GTID position (what comes again is applied once).
                    let gtids = match &self.follow {
                        Follow::From(gtids) => Some(gtids.clone()),
                        _ => None,
                    };
                    self.resume = BinlogPosition { file: self.file.clone(), pos: 4, gtid: None, gtids };
                    if let Some(followed) = &mut self.followed {
                        followed.at = Some(self.resume.clone());
                    }
                }
            }
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
        if self.followed.is_none() && position.ordinal() >= self.resume.ordinal() {
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
