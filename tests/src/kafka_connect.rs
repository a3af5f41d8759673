//! Debezium's Postgres connector on Kafka Connect for the suites: the shared
//! Apache Kafka broker (`scripts/kafka.sh`, 127.0.0.1:19092), one standalone
//! Connect worker on the machine (`scripts/kafka-connect.sh`, REST on
//! 127.0.0.1:18083) started by the first test that asks and left running like
//! the broker, connectors of each test's own created over the REST API from
//! `examples/shop/debezium/postgres-connector.json`, and an rdkafka client to
//! create and read topics independently of evercache's own client.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use evercache::event::Op;
use evercache::event::debezium::{Decoded, SkipReason, decode_record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::kafka::ReadRecord;
use crate::{TestEnv, repo_root, wait_until};

/// The suite's shared broker (`scripts/kafka.sh`'s default listener).
pub const BOOTSTRAP: &str = "127.0.0.1:19092";
/// The shared worker's REST port and folder.
const REST_PORT: u16 = 18083;
const WORKER_DIR: &str = "/tmp/evercache-kafka-connect";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The shared Connect worker; `started_in` is how long the script took (a few
/// milliseconds when the worker was already running).
#[derive(Debug, Clone)]
pub struct Worker {
    /// Wall time of `scripts/kafka-connect.sh`.
    pub started_in: Duration,
}

impl Worker {
    /// Starts the broker and the worker when they are not running (once per
    /// test binary) and deletes connectors whose test process is gone.
    pub async fn shared() -> Result<Worker> {
        static SHARED: Mutex<Option<Worker>> = Mutex::new(None);
        let worker = tokio::task::spawn_blocking(|| {
            let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(worker) = shared.as_ref() {
                return Ok(worker.clone());
            }
            script("kafka.sh", &[])?;
            let start = Instant::now();
            script(
                "kafka-connect.sh",
                &["--dir", WORKER_DIR, "--bootstrap", BOOTSTRAP, "--port", &REST_PORT.to_string()],
            )?;
            let worker = Worker { started_in: start.elapsed() };
            *shared = Some(worker.clone());
            Ok::<_, anyhow::Error>(worker)
        })
        .await??;
        delete_abandoned_connectors().await?;
        Ok(worker)
    }
}

fn script(name: &str, args: &[&str]) -> Result<()> {
    let path = repo_root().join("scripts").join(name);
    let out = std::process::Command::new("bash").arg(&path).args(args).output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{} {args:?} failed ({})", path.display(), out.status);
    Ok(())
}

/// One call to the worker's REST API: the status and the body (JSON, or null).
pub async fn rest(method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let url = format!("http://127.0.0.1:{REST_PORT}{path}");
    let mut command = tokio::process::Command::new("curl");
    command.args(["-sS", "--max-time", "60", "-X", method, "-w", "\n%{http_code}", &url]);
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
    }
    let out = command.output().await.context("running curl")?;
    ensure!(out.status.success(), "curl {method} {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    Ok((code.trim().parse()?, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Connectors named after a test process (`t<pid>_…`) that no longer runs keep
/// their replication slot busy, so they are deleted before a test starts.
async fn delete_abandoned_connectors() -> Result<()> {
    let (_, names) = rest("GET", "/connectors", None).await?;
    for name in names.as_array().into_iter().flatten().filter_map(Value::as_str) {
        let pid: String = name.strip_prefix('t').unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            rest("DELETE", &format!("/connectors/{name}"), None).await?;
        }
    }
    Ok(())
}

/// The example connector (`examples/shop/debezium/postgres-connector.json`)
/// pointed at the test's schema of the `test` database (its tables, and the
/// test's prefix as topic prefix, slot and publication, so tests run side by
/// side), with `overrides` set on top.
pub fn example_connector(env: &TestEnv, overrides: &[(&str, &str)]) -> Result<Value> {
    let path = repo_root().join("examples/shop/debezium/postgres-connector.json");
    let mut connector: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let p = &env.prefix;
    // Connect keeps offsets by connector name, so a name reused by a later run
    // (a recycled process id) would resume from a slot that is gone.
    connector["name"] = json!(format!("{p}_{}", std::time::UNIX_EPOCH.elapsed()?.as_millis()));
    let config = connector["config"].as_object_mut().context("the example has a config object")?;
    for (key, value) in [("database.dbname", "test"), ("topic.prefix", p), ("slot.name", p), ("publication.name", p)] {
        ensure!(config.contains_key(key), "the example sets {key}");
        config.insert(key.to_owned(), json!(value));
    }
    for key in ["table.include.list", "heartbeat.action.query"] {
        let value = config.get(key).and_then(Value::as_str).with_context(|| format!("the example sets {key}"))?;
        config.insert(key.to_owned(), json!(value.replace("public.", &format!("{p}."))));
    }
    for (key, value) in overrides {
        config.insert((*key).to_owned(), json!(value));
    }
    Ok(connector)
}

/// An example pipeline file retargeted at the test's source, database, schema and key prefix.
pub fn example_pipeline(env: &TestEnv, file: &str) -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join("examples/shop/pipelines").join(file))?;
    let mut table: toml::Table = text.parse()?;
    let p = &env.prefix;
    table.insert("source".into(), "dbz".into());
    table.insert("database".into(), "db".into());
    table.insert("tables".into(), vec![format!("{p}.category"), format!("{p}.product")].into());
    if let Some(toml::Value::Array(patterns)) = table.get_mut("key_patterns") {
        for pattern in patterns {
            *pattern = format!("{p}:{}", pattern.as_str().context("a key pattern")?).into();
        }
    }
    let config = table.get_mut("config").and_then(toml::Value::as_table_mut).context("[config]")?;
    let prefix = config.get("key_prefix").and_then(toml::Value::as_str).context("key_prefix")?;
    config.insert("key_prefix".into(), format!("{p}:{prefix}").into());
    config.insert("schema".into(), p.as_str().into());
    Ok(toml::to_string(&table)?)
}

/// A connector of the test's own on the shared worker; its slot and
/// publication are named after the test's prefix.
pub struct Connector {
    /// Its name.
    pub name: String,
    topics: Vec<String>,
}

impl Connector {
    /// POSTs the connector JSON (`{"name": …, "config": {…}}`) to `/connectors`.
    pub async fn create(connector: &Value) -> Result<Self> {
        let name = connector["name"].as_str().context("connector name")?.to_owned();
        let config = &connector["config"];
        let prefix = config["topic.prefix"].as_str().context("topic.prefix")?;
        let tables = config["table.include.list"].as_str().context("table.include.list")?.split(',');
        let mut topics: Vec<String> = tables.map(|table| format!("{prefix}.{table}")).collect();
        topics.extend([format!("{prefix}.transaction"), format!("__debezium-heartbeat.{prefix}")]);
        let (code, body) = rest("POST", "/connectors", Some(connector)).await?;
        ensure!(code == 201, "POST /connectors: HTTP {code}: {body}");
        Ok(Self { name, topics })
    }

    /// Waits until the connector and its task run; a failed task fails at once with its trace.
    pub async fn wait_running(&self) -> Result<Duration> {
        wait_until(&format!("connector {} running", self.name), Duration::from_secs(60), || async {
            let (code, status) = rest("GET", &format!("/connectors/{}/status", self.name), None).await?;
            if code != 200 {
                return Ok(false);
            }
            let task = &status["tasks"][0];
            if task["state"] == "FAILED" {
                bail!("connector {} task failed: {}", self.name, task["trace"].as_str().unwrap_or_default());
            }
            Ok(status["connector"]["state"] == "RUNNING" && task["state"] == "RUNNING")
        })
        .await
    }

    /// Stops the connector, resets its offsets, deletes it and its topics, then
    /// drops its slot and publication once the server has let the slot go.
    pub async fn delete(self, env: &TestEnv) -> Result<()> {
        let path = format!("/connectors/{}", self.name);
        rest("PUT", &format!("{path}/stop"), None).await?;
        // Offsets can be reset only once the connector has stopped.
        let reset = || async { Ok(rest("DELETE", &format!("{path}/offsets"), None).await?.0 == 200) };
        wait_until(&format!("{path}/offsets reset"), Duration::from_secs(30), reset).await?;
        let (code, body) = rest("DELETE", &path, None).await?;
        ensure!(code == 204, "DELETE {path}: HTTP {code}: {body}");
        delete_topics(&self.topics).await?;
        env.drop_capture().await
    }
}

fn admin() -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new().set("bootstrap.servers", BOOTSTRAP).create()?)
}

/// Deletes topics; missing ones are no error.
pub async fn delete_topics(names: &[String]) -> Result<()> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    admin()?.delete_topics(&names, &AdminOptions::new().operation_timeout(Some(TIMEOUT))).await?;
    Ok(())
}

/// Creates single-partition topics (existing ones are left alone).
pub async fn create_topics(names: &[String]) -> Result<()> {
    let topics: Vec<NewTopic<'_>> = names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1))).collect();
    for result in admin()?.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(TIMEOUT))).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

fn consumer(group: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?)
}

/// The end offset of partition 0 of `topic` (0 when the topic does not exist yet).
pub fn end_offset(topic: &str) -> Result<i64> {
    match consumer("evercache-test-reader")?.fetch_watermarks(topic, 0, TIMEOUT) {
        Ok((_, high)) => Ok(high),
        Err(rdkafka::error::KafkaError::MetadataFetch(_)) => Ok(0),
        Err(e) if e.to_string().contains("Unknown topic") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The offset `group` committed on partition 0 of `topic` (-1 for none).
pub fn committed(group: &str, topic: &str) -> Result<i64> {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer(group)?.committed_offsets(list, TIMEOUT)?;
    Ok(match committed.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(offset)) => offset,
        _ => -1,
    })
}

/// Every record of partition 0 of `topic` up to its current end.
pub fn read_topic(topic: &str) -> Result<Vec<ReadRecord>> {
    let end = end_offset(topic)?;
    let client = consumer("evercache-test-reader")?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    client.assign(&list)?;
    let mut records: Vec<ReadRecord> = Vec::new();
    let start = Instant::now();
    while records.last().map_or(end > 0, |r| r.offset + 1 < end) {
        ensure!(start.elapsed() < TIMEOUT, "read {} of {end} records of {topic}", records.len());
        let Some(message) = client.poll(Duration::from_millis(100)) else { continue };
        let message = message?;
        records.push(ReadRecord::from_message(&message));
    }
    Ok(records)
}

/// What the decoder must make of an envelope.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// A row change with this op.
    Change(Op),
    /// A record set aside for this reason.
    Skip(SkipReason),
}

/// The real envelopes recorded in `tests/fixtures/debezium/real/`, by file
/// name, and what the decoder must make of each.
pub const ENVELOPES: [(&str, Expect); 11] = [
    ("pg_snapshot_read_last", Expect::Change(Op::SnapshotRead)),
    ("pg_insert", Expect::Change(Op::Create)),
    ("pg_update", Expect::Change(Op::Update)),
    ("pg_update_toast_unchanged", Expect::Change(Op::Update)),
    ("pg_category_rename", Expect::Change(Op::Update)),
    ("pg_delete", Expect::Change(Op::Delete)),
    ("pg_tombstone", Expect::Skip(SkipReason::Tombstone)),
    ("pg_truncate", Expect::Change(Op::Truncate)),
    ("pg_heartbeat", Expect::Skip(SkipReason::Heartbeat)),
    ("pg_transaction_begin", Expect::Skip(SkipReason::TransactionMarker)),
    ("pg_transaction_end", Expect::Skip(SkipReason::TransactionMarker)),
];

/// Decodes a record as the Kafka source hands it over and checks the event
/// against the record's own payload: op, table, key and both row images.
pub fn check_envelope(name: &str, expect: Expect, topic: &str, key: Option<&str>, value: Option<&str>) -> Result<()> {
    let decoded = decode_record(topic, key, value).with_context(|| format!("{name} decodes"))?;
    let payload = value.map(serde_json::from_str::<Value>).transpose()?.unwrap_or_default()["payload"].clone();
    match (expect, decoded) {
        (Expect::Skip(want), Decoded::Skip(got)) => ensure!(want == got, "{name}: skipped as {got:?}, not {want:?}"),
        (Expect::Change(op), Decoded::Change(event)) => {
            ensure!(event.op == op, "{name}: op {:?}, not {op:?}", event.op);
            let source = &payload["source"];
            ensure!(json!(event.table) == source["table"] && json!(event.schema) == source["schema"], "{name}: table");
            ensure!(event.position.starts_with("pg:"), "{name}: position {:?}", event.position);
            let key: Value = key.map(serde_json::from_str).transpose()?.unwrap_or_default();
            ensure!(serde_json::from_str::<Value>(&event.key)? == key["payload"], "{name}: key {}", event.key);
            let schema = value.map(serde_json::from_str::<Value>).transpose()?.unwrap_or_default()["schema"].clone();
            let scales = decimal_scales(&schema);
            let image = |text: &Option<String>| text.as_deref().map(serde_json::from_str::<Value>).transpose();
            for (part, decoded) in [("before", image(&event.before)?), ("after", image(&event.after)?)] {
                let mut decoded = decoded.unwrap_or_default();
                // The runtime hands plugins decimal text where Debezium sent base64 and a scale in the schema.
                for (column, scale) in &scales {
                    let Some(text) = decoded.get_mut(column).filter(|v| !v.is_null()) else { continue };
                    let digits =
                        text.as_str().and_then(|t| t.split_once('.')).map_or(0, |(_, fraction)| fraction.len());
                    ensure!(digits == *scale, "{name}: {part}.{column} is {text}, not a decimal of scale {scale}");
                    *text = payload[part][column].clone();
                }
                ensure!(decoded == payload[part], "{name}: {part}");
            }
        }
        (_, other) => bail!("{name}: decoded as {other:?}, expected {expect:?}"),
    }
    Ok(())
}

/// The columns an envelope's schema declares `Decimal`s, with their scales.
fn decimal_scales(schema: &Value) -> Vec<(String, usize)> {
    let fields = |v: &Value| v["fields"].as_array().cloned().unwrap_or_default();
    let after = fields(schema).into_iter().find(|f| f["field"] == "after").unwrap_or_default();
    fields(&after)
        .iter()
        .filter(|f| f["name"] == "org.apache.kafka.connect.data.Decimal")
        .filter_map(|f| Some((f["field"].as_str()?.to_owned(), f["parameters"]["scale"].as_str()?.parse().ok()?)))
        .collect()
}

fn fixture_path(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/debezium/real").join(format!("{name}.json"))
}

/// Writes `<name>.json`: where the record was, then key and value exactly as
/// Kafka holds them (JSON text embedded as it is, so its bytes are kept).
pub fn write_fixture(name: &str, record: &ReadRecord) -> Result<()> {
    let text = format!(
        "{{\n  \"captured_with\": \"{CAPTURED_WITH}\",\n  \"topic\": {},\n  \"partition\": 0,\n  \"offset\": {},\n  \
         \"headers\": {},\n  \"key\": {},\n  \"value\": {}\n}}\n",
        json!(record.topic),
        record.offset,
        json!(record.headers),
        record.key.as_deref().unwrap_or("null"),
        record.value.as_deref().unwrap_or("null"),
    );
    let path = fixture_path(name);
    std::fs::create_dir_all(path.parent().context("a folder")?)?;
    Ok(std::fs::write(path, text)?)
}

const CAPTURED_WITH: &str = "Debezium 3.6.1.Final PostgresConnector (pgoutput) on Kafka Connect 4.4.0 standalone, \
                             JsonConverter schemas.enable=true";

/// Reads a fixture back, key and value as the exact text that was recorded.
pub fn read_fixture(name: &str) -> Result<ReadRecord> {
    #[derive(serde::Deserialize)]
    struct Fixture {
        topic: String,
        offset: i64,
        headers: Vec<(String, String)>,
        key: Box<RawValue>,
        value: Box<RawValue>,
    }
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let fixture: Fixture = serde_json::from_str(&text)?;
    let raw = |raw: &RawValue| Some(raw.get().to_owned()).filter(|t| t != "null");
    Ok(ReadRecord {
        topic: fixture.topic,
        partition: 0,
        offset: fixture.offset,
        key: raw(&fixture.key),
        value: raw(&fixture.value),
        headers: fixture.headers,
    })
}
