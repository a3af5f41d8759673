//! The format conformance suite's parts: the fixture's SQL
//! (`tests/fixtures/debezium/conformance/`) retargeted at one test's schema or
//! database and run the way psql and mysql run it, the echo plugin (what the
//! SDK hands a plugin for an event), a built-in capture drained into both
//! forms plugins get its changes in, and the comparison of two echo lists.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use evercache::event::ChangeEvent;
use evercache::event::debezium::{Decoded, decode_stream_entry};
use evercache::plugin::{PluginEngine, PluginInstance, SandboxConfig, load_file};
use evercache::source::Source;
use evercache::source::record::RecordBody;
use evercache_test_kit::{MYSQL_URL, PG_URL, plugins_dir, repo_root};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The fixture's folder, relative to the repository.
pub const FIXTURES: &str = "tests/fixtures/debezium/conformance";
/// How long a capture may take to deliver what the SQL wrote.
pub const WAIT: Duration = Duration::from_secs(60);

/// A file of the fixture.
pub fn fixture(name: &str) -> Result<String> {
    let path = repo_root().join(FIXTURES).join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `pg.sql`'s two phases with its type and table in schema `schema` of the
/// test database rather than in a database of their own.
pub fn pg_phases(schema: &str) -> Result<[String; 2]> {
    let own_database =
        |line: &str| ["drop database", "create database", "\\connect"].iter().any(|p| line.starts_with(p));
    let lines: Vec<String> = fixture("pg.sql")?
        .lines()
        .filter(|l| !own_database(l))
        .map(|l| l.replace("public.", &format!("{schema}.")))
        .collect();
    phases(&lines.join("\n"))
}

/// `mariadb.sql`'s two phases with database `conformance` renamed `database`.
pub fn mariadb_phases(database: &str) -> Result<[String; 2]> {
    let lines: Vec<String> = fixture("mariadb.sql")?
        .lines()
        .map(|l| if l.starts_with("--") { l.to_owned() } else { l.replace("conformance", database) })
        .collect();
    phases(&lines.join("\n"))
}

fn phases(text: &str) -> Result<[String; 2]> {
    let (one, two) = text.split_once("-- ==== phase 2").context("no `-- ==== phase 2` marker")?;
    Ok([one.to_owned(), two.to_owned()])
}

/// Runs SQL with `psql` on the test database, one transaction per statement.
pub async fn psql(sql: &str) -> Result<()> {
    client("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", PG_URL], sql).await
}

/// Runs SQL with the `mysql` client on the local MariaDB as root.
pub async fn mysql(sql: &str) -> Result<()> {
    let address = MYSQL_URL.rsplit_once('@').map_or(MYSQL_URL, |(_, address)| address);
    let (host, port) = address.split_once(':').context("MYSQL_URL has host:port")?;
    client("mysql", &["-h", host, "-P", port, "-u", "root"], sql).await
}

async fn client(program: &str, args: &[&str], sql: &str) -> Result<()> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(sql.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    ensure!(out.status.success(), "{program} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The echo plugin (`plugins/echo`), called the way a pipeline calls `keys`.
pub struct Echo(PluginInstance);

impl Echo {
    /// Loads `echo.wasm` from the built plugins.
    pub async fn new() -> Result<Self> {
        let engine = PluginEngine::new(SandboxConfig::default())?;
        let plugin = load_file(&engine, &plugins_dir().join("echo.wasm")).await?;
        Ok(Self(PluginInstance::new(&engine, plugin, "conformance", None, Vec::new())))
    }

    /// What the plugin's SDK made of `event`: `{"op","table","key","before","after"}`.
    pub async fn echo(&mut self, event: &ChangeEvent) -> Result<Value> {
        let keys = self.0.keys(event).await?;
        ensure!(keys.len() == 1, "echo answers one key, got {keys:?}");
        Ok(serde_json::from_str(&keys[0])?)
    }

    /// Every event's echo, in order.
    pub async fn echo_all<'a>(&mut self, events: impl IntoIterator<Item = &'a ChangeEvent>) -> Result<Vec<Value>> {
        let mut echoes = Vec::new();
        for event in events {
            echoes.push(self.echo(event).await?);
        }
        Ok(echoes)
    }
}

/// One change of a built-in capture in both forms plugins get it in.
#[derive(Debug)]
pub struct Captured {
    /// The event a pipeline on the capture receives.
    pub direct: ChangeEvent,
    /// The same change written as `evercache capture --to redis-stream` writes
    /// it, then decoded as a pipeline on that stream decodes it.
    pub rendered: ChangeEvent,
    /// That written envelope.
    pub envelope: Value,
}

/// A capture running in a task, its changes arriving on `changes`.
pub struct Drain {
    /// The changes, in the order the capture handed them on.
    pub changes: mpsc::UnboundedReceiver<Captured>,
    stop: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Drain {
    /// Starts pulling batches from `source`, confirming each after it was sent on.
    pub fn start(mut source: Source) -> Self {
        let (sender, changes) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let records = tokio::select! {
                    _ = cancelled.cancelled() => break,
                    batch = source.next_batch() => batch?,
                };
                for record in &records {
                    let RecordBody::Change(change) = &record.body else { bail!("a capture record without a change") };
                    let fields = record.fields();
                    let rendered = match decode_stream_entry(&record.stream, &fields)? {
                        Decoded::Change(event) => event,
                        skipped => bail!("the rendered change decodes as {skipped:?}"),
                    };
                    let envelope = serde_json::from_str(&fields[0].1)?;
                    let _ = sender.send(Captured { direct: change.event.clone(), rendered, envelope });
                }
                source.ack(&records).await?;
            }
            source.close().await;
            Ok(())
        });
        Self { changes, stop, task }
    }

    /// The next `count` changes.
    pub async fn take(&mut self, count: usize) -> Result<Vec<Captured>> {
        let mut taken = Vec::new();
        while taken.len() < count {
            match tokio::time::timeout(WAIT, self.changes.recv()).await {
                Ok(Some(change)) => taken.push(change),
                Ok(None) => bail!("the capture stopped after {} of {count} changes", taken.len()),
                Err(_) => bail!("{} of {count} changes from the capture in {WAIT:?}", taken.len()),
            }
        }
        Ok(taken)
    }

    /// Stops the capture, which releases its slot or replica connection.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// Echoes with the leading snapshot reads in key order: Debezium and the
/// captures may read a table's rows in different orders.
pub fn in_key_order(mut echoes: Vec<Value>) -> Vec<Value> {
    let reads = echoes.iter().take_while(|echo| echo["op"] == "r").count();
    echoes[..reads].sort_by_key(|echo| echo["key"].to_string());
    echoes
}

/// Where two echo lists differ, one line per event or column:
/// `c {"id":2} after.c_x: debezium <value> / capture <value>`.
pub fn differences(debezium: &[Value], capture: &[Value]) -> Vec<String> {
    let label = |echo: &Value| format!("{} {}", echo["op"].as_str().unwrap_or("?"), echo["key"]);
    if debezium.len() != capture.len() {
        let labels = |echoes: &[Value]| echoes.iter().map(label).collect::<Vec<_>>().join(", ");
        return vec![format!("events: debezium [{}] / capture [{}]", labels(debezium), labels(capture))];
    }
    let mut lines = Vec::new();
    for (ours, theirs) in debezium.iter().zip(capture) {
        if (&ours["op"], &ours["key"], &ours["table"]) != (&theirs["op"], &theirs["key"], &theirs["table"]) {
            lines.push(format!("event: debezium {} / capture {}", label(ours), label(theirs)));
            continue;
        }
        for image in ["before", "after"] {
            let (a, b) = (&ours[image], &theirs[image]);
            let columns =
                |row: &Value| row.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            let mut names = columns(a);
            names.extend(columns(b));
            names.sort();
            names.dedup();
            if names.is_empty() && a != b {
                lines.push(format!("{} {image}: debezium {} / capture {}", label(ours), short(a), short(b)));
            }
            for name in names {
                if a[&name] != b[&name] {
                    let (a, b) = (short(&a[&name]), short(&b[&name]));
                    lines.push(format!("{} {image}.{name}: debezium {a} / capture {b}", label(ours)));
                }
            }
        }
    }
    lines
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// Every entry of a Redis stream: its field/value pairs (one, in the compact layout).
pub async fn stream_entries(
    redis: &redis::aio::MultiplexedConnection,
    stream: &str,
) -> Result<Vec<Vec<(String, String)>>> {
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut redis.clone()).await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|entry| {
            let text = |v: redis::Value| redis::from_redis_value::<String>(v).unwrap_or_default();
            entry.map.into_iter().map(|(field, value)| (field, text(value))).collect()
        })
        .collect())
}
