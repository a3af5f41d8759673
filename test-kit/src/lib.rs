//! What every test crate and the bench share: where the repository and the
//! built plugins are, the runtime file built section by section, waiting for a
//! condition, free loopback ports, Apache Kafka brokers and a private MariaDB
//! server. It does not depend on the runtime, so the runtime's own
//! integration tests can use it too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

pub mod certs;
pub mod kafka_broker;
pub mod mariadb_replica;
pub mod mariadb_server;
pub mod pg_cluster;
pub mod pg_standby;
pub mod redis_cluster;
pub mod tcp_proxy;

/// The Redis (or Valkey) every suite uses: the local Redis started by
/// `scripts/dev-services.sh`, or `EVERCACHE_TEST_REDIS_URL` when set (the test
/// script runs the end-to-end suites once more against Valkey that way).
pub static REDIS_URL: EnvUrl = EnvUrl::new("EVERCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379");

/// A URL taken from an environment variable, with a default; reads as a `&str`.
pub struct EnvUrl {
    variable: &'static str,
    default: &'static str,
    value: OnceLock<String>,
}

impl EnvUrl {
    const fn new(variable: &'static str, default: &'static str) -> Self {
        Self { variable, default, value: OnceLock::new() }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        self.value.get_or_init(|| std::env::var(self.variable).unwrap_or_else(|_| self.default.to_owned()))
    }
}

impl std::ops::Deref for EnvUrl {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for EnvUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
/// The local Postgres every suite uses (started by `scripts/dev-services.sh`).
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The local MariaDB every suite uses, without a database (started, with its
/// binlog on, by `scripts/dev-services.sh`).
pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306";
/// What to run when a service is missing.
pub const SETUP_HINT: &str = "start the services with: bash scripts/dev-services.sh";

/// Drops replication slot `name` on the shared Postgres once the server has
/// released it (a moment after its client closes), so no test run leaks one.
pub fn drop_released_slot(name: &str) {
    let start = Instant::now();
    loop {
        let sql = format!(
            "select pg_drop_replication_slot('{name}') from pg_replication_slots where slot_name = '{name}' and not active"
        );
        let _ = Command::new("psql").args([PG_URL, "-qtAc", &sql]).output();
        let left = Command::new("psql")
            .args([PG_URL, "-tAc", &format!("select count(*) from pg_replication_slots where slot_name = '{name}'")])
            .output()
            .expect("psql runs; start the services with: bash scripts/dev-services.sh");
        if String::from_utf8_lossy(&left.stdout).trim() == "0" {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "slot {name} was never released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

/// Builds the plugins once per process (a no-op when they are up to date) and
/// returns the directory holding the `.wasm` components.
pub fn plugins_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = repo_root().join("scripts/build-plugins.sh");
            match Command::new("bash").arg(&script).status() {
                Ok(status) if status.success() => repo_root().join("target/plugins"),
                other => panic!(
                    "building plugins failed ({other:?}); run `bash scripts/build-plugins.sh` and read its output"
                ),
            }
        })
        .clone()
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// Polls `check` every 20 ms until it returns true and says how long that
/// took, or fails after `timeout` with `what` in the message.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A runtime file, written section by section. Keys added with
/// [`RuntimeToml::line`] belong to the section added last.
#[derive(Debug, Clone)]
pub struct RuntimeToml {
    text: String,
}

impl Default for RuntimeToml {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeToml {
    /// `plugins_dir` (the built plugins) and `pipelines_dir = "pipelines"`.
    pub fn new() -> Self {
        Self::with_plugins_dir(&plugins_dir())
    }

    /// The same with another plugins directory.
    pub fn with_plugins_dir(plugins: &Path) -> Self {
        Self { text: format!("plugins_dir = \"{}\"\npipelines_dir = \"pipelines\"\n", plugins.display()) }
    }

    /// `[databases.<name>]` at `url`.
    pub fn database(self, name: &str, url: &str) -> Self {
        self.section(&format!("databases.{name}")).line(&format!("url = \"{url}\""))
    }

    /// `[caches.<name>]` at `url`.
    pub fn cache(self, name: &str, url: &str) -> Self {
        self.section(&format!("caches.{name}")).line(&format!("url = \"{url}\""))
    }

    /// `[sources.<name>]`, a Redis Streams source over `streams` in group
    /// "evercache" as `consumer`, blocking 200 ms per read.
    pub fn redis_stream(self, name: &str, url: &str, streams: &[String], consumer: &str) -> Self {
        let streams = serde_json::to_string(streams).unwrap_or_default();
        self.section(&format!("sources.{name}"))
            .line("type = \"redis-stream\"")
            .line(&format!("url = \"{url}\""))
            .line(&format!("streams = {streams}"))
            .line("group = \"evercache\"")
            .line(&format!("consumer = \"{consumer}\""))
            .line("block = \"200ms\"")
    }

    /// `[sources.<name>]`, the built-in capture of `tables` (as "schema.table")
    /// on `url`, its publication and slot both named `slot`, dead letters to `redis_url`.
    pub fn postgres_capture(self, name: &str, url: &str, tables: &[String], slot: &str, redis_url: &str) -> Self {
        let tables = serde_json::to_string(tables).unwrap_or_default();
        self.section(&format!("sources.{name}"))
            .line("type = \"postgres\"")
            .line(&format!("url = \"{url}\""))
            .line(&format!("tables = {tables}"))
            .line(&format!("publication = \"{slot}\"\nslot = \"{slot}\""))
            .line(&format!("dead_letter_url = \"{redis_url}\""))
    }

    /// `[sources.<name>]`, the built-in binlog capture of `tables` (as
    /// "database.table") on the local MariaDB, registering as replica
    /// `server_id`, its streams and position key named by `prefix`.
    pub fn mysql_capture(self, name: &str, tables: &[String], server_id: u32, prefix: &str, redis_url: &str) -> Self {
        let tables = serde_json::to_string(tables).unwrap_or_default();
        self.section(&format!("sources.{name}"))
            .line("type = \"mysql\"")
            .line(&format!("url = \"{MYSQL_URL}\""))
            .line(&format!("tables = {tables}"))
            .line(&format!("server_id = {server_id}"))
            .line(&format!("topic_prefix = \"{prefix}\"\nposition_key = \"{prefix}:binlog\""))
            .line(&format!("dead_letter_url = \"{redis_url}\""))
    }

    /// `[http]` listening on `127.0.0.1:<port>` (0: any free port).
    pub fn http(self, port: u16) -> Self {
        self.section("http").line(&format!("listen = \"127.0.0.1:{port}\""))
    }

    /// A `[section]` header.
    pub fn section(mut self, name: &str) -> Self {
        self.text.push_str(&format!("[{name}]\n"));
        self
    }

    /// Lines as they are (keys of the last section, or whole sections).
    pub fn line(mut self, text: &str) -> Self {
        self.text.push_str(text);
        if !text.ends_with('\n') {
            self.text.push('\n');
        }
        self
    }

    /// The file's text.
    pub fn build(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_their_keys_come_out_in_order() {
        let toml = RuntimeToml::with_plugins_dir(Path::new("/p"))
            .database("db", PG_URL)
            .cache("main", REDIS_URL.as_str())
            .redis_stream("events", REDIS_URL.as_str(), &["a.b.c".to_owned()], "c1")
            .line("batch_size = 50")
            .build();
        assert!(toml.starts_with("plugins_dir = \"/p\"\npipelines_dir = \"pipelines\"\n[databases.db]\nurl = "));
        assert!(toml.ends_with(
            "streams = [\"a.b.c\"]\ngroup = \"evercache\"\nconsumer = \"c1\"\nblock = \"200ms\"\nbatch_size = 50\n"
        ));
    }
}
