//! Debezium Server for a test: the real distribution (`scripts/java-parts.sh`)
//! started by `scripts/debezium-server.sh` with the MariaDB marketplace
//! example's `application.properties`, pointed at the test's own database and
//! stream prefix through the environment variables that file reads, and
//! stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use evercache_test_kit::{free_port, repo_root};

/// The example's folder, relative to the repository.
pub const EXAMPLE: &str = "examples/marketplace/debezium-server";

/// One running Debezium Server; SIGTERM when dropped.
pub struct DebeziumServer {
    dir: PathBuf,
    /// Its Quarkus HTTP port (`/q/health`).
    pub port: u16,
    /// Wall time of `scripts/debezium-server.sh` until the health check said UP.
    pub started_in: Duration,
}

impl DebeziumServer {
    /// Starts the example's server on MariaDB database `database` of the local
    /// server, streams named `<prefix>.<database>.<table>`, registering as
    /// replica `replica_id` and writing to the Redis at `redis_url`. Offsets
    /// start empty, so it snapshots first.
    pub fn start_example(prefix: &str, database: &str, replica_id: u32, redis_url: &str) -> Result<Self> {
        let config = repo_root().join(EXAMPLE).join("application.properties");
        Self::start(&config, prefix, replica_id, redis_url, &[("MARKETPLACE_DATABASE", database)])
    }

    /// Starts a server with the `application.properties` at `config`, which
    /// reads `TOPIC_PREFIX`, `MARIADB_REPLICA_ID`, `REDIS_ADDRESS` and the
    /// `MARIADB_*` connection from the environment, plus `env` of its own.
    pub fn start(config: &Path, prefix: &str, replica_id: u32, redis_url: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = std::env::temp_dir().join("evercache-debezium-server").join(prefix);
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let start = Instant::now();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/debezium-server.sh"))
            .arg("--dir")
            .arg(&dir)
            .arg("--config")
            .arg(config)
            .args(["--port", &port.to_string()])
            .env("MARIADB_HOST", "127.0.0.1")
            .env("MARIADB_PORT", "3306")
            .env("MARIADB_REPLICA_ID", replica_id.to_string())
            .env("TOPIC_PREFIX", prefix)
            .env("REDIS_ADDRESS", redis_address(redis_url)?)
            .envs(env.iter().copied())
            .output()
            .context("running scripts/debezium-server.sh")?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let server = Self { dir, port, started_in: start.elapsed() };
        ensure!(
            out.status.success(),
            "scripts/debezium-server.sh failed ({}); log:\n{}",
            out.status,
            server.log_tail(40)
        );
        Ok(server)
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The lines of the log at WARN or ERROR.
    pub fn warnings(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).map(str::to_owned).collect()
    }
}

impl Drop for DebeziumServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/debezium-server.sh"))
            .arg("--dir")
            .arg(&self.dir)
            .arg("--stop")
            .output();
    }
}

/// `host:port` of a `redis://[user@]host:port[/db]` URL, as the Redis sink's `address`.
pub fn redis_address(url: &str) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let address = rest.split('/').next().unwrap_or_default();
    ensure!(address.contains(':'), "no host:port in {url}");
    Ok(address.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_address_is_the_urls_host_and_port() {
        assert_eq!(redis_address("redis://127.0.0.1:6379").unwrap(), "127.0.0.1:6379");
        assert_eq!(redis_address("redis://u:p@127.0.0.1:6391/0").unwrap(), "127.0.0.1:6391");
        assert!(redis_address("redis://localhost").is_err());
    }
}
