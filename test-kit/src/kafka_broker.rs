//! Apache Kafka brokers (4.4, KRaft) for the suites, started by
//! `scripts/kafka.sh` from the Java parts `scripts/java-parts.sh` resolves.
//!
//! The JVM takes seconds to start, so most tests share one broker: the
//! suite's, on 127.0.0.1:19092, started once (by `scripts/test.sh`, or by the
//! first test that asks) and left running; each test uses topics and groups of
//! its own. A test that restarts or reconfigures a broker starts a private one
//! in a folder of its own, killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::repo_root;

/// The suite's shared broker's base port and folder (`scripts/kafka.sh`'s defaults).
const SHARED_PORT: u16 = 19092;
const SHARED_DIR: &str = "/tmp/evercache-kafka";

/// The SCRAM user every broker is formatted with (SHA-256 and SHA-512).
pub const SCRAM_USER: &str = "evercache";
/// That user's password.
pub const SCRAM_PASSWORD: &str = "evercache-secret";

/// A running broker and its listeners.
pub struct KafkaBroker {
    dir: PathBuf,
    port: u16,
    extra: Vec<String>,
    /// Private brokers are killed and their folder removed on drop.
    private: bool,
}

impl KafkaBroker {
    /// The suite's shared broker, started if it is not running yet.
    pub fn shared() -> Result<Self> {
        // Tests of one binary run on threads: let one of them start it.
        static STARTING: Mutex<()> = Mutex::new(());
        let _guard = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let broker = Self { dir: PathBuf::from(SHARED_DIR), port: SHARED_PORT, extra: Vec::new(), private: false };
        broker.run_script(&[])?;
        Ok(broker)
    }

    /// A broker of the test's own on free ports, with extra server properties
    /// (`key=value`), e.g. a tiny `log.retention.bytes`.
    pub fn private(extra: &[&str]) -> Result<Self> {
        let port = free_base_port();
        let dir = std::env::temp_dir().join(format!("evercache-kafka-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let broker = Self { dir, port, extra: extra.iter().map(|s| (*s).to_owned()).collect(), private: true };
        broker.run_script(&[])?;
        Ok(broker)
    }

    fn run_script(&self, action: &[&str]) -> Result<()> {
        let mut command = Command::new("bash");
        command.arg(repo_root().join("scripts/kafka.sh")).args([
            "--dir",
            &self.dir.to_string_lossy(),
            "--port",
            &self.port.to_string(),
        ]);
        for kv in &self.extra {
            command.args(["--set", kv]);
        }
        let output = command.args(action).output().context("running scripts/kafka.sh")?;
        if !output.status.success() {
            bail!("scripts/kafka.sh {action:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// PLAINTEXT `host:port`, for `brokers =`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SASL_PLAINTEXT (SCRAM) `host:port`.
    pub fn sasl_address(&self) -> String {
        format!("127.0.0.1:{}", self.port + 1)
    }

    /// SSL `localhost:port` (the certificate names `localhost` and 127.0.0.1).
    pub fn ssl_address(&self) -> String {
        format!("localhost:{}", self.port + 2)
    }

    /// SASL_SSL (SCRAM over TLS) `localhost:port`.
    pub fn sasl_ssl_address(&self) -> String {
        format!("localhost:{}", self.port + 3)
    }

    /// The CA that signed the broker's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// The broker's folder (log in `broker.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the broker (SIGKILL), waits `down`, and starts it again on the
    /// same ports and data. Only for private brokers.
    pub fn restart(&mut self, down: Duration) -> Result<()> {
        self.kill()?;
        std::thread::sleep(down);
        self.run_script(&[])
    }

    /// Kills the broker (SIGKILL) and waits for it to exit. Only for private brokers.
    pub fn kill(&mut self) -> Result<()> {
        if !self.private {
            bail!("the suite's shared broker is not the test's to kill; start a private one");
        }
        self.run_script(&["--kill"])
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if self.private {
            let _ = self.run_script(&["--kill"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port P with P..=P+3 and P+9 free (the broker's listeners and its controller).
fn free_base_port() -> u16 {
    loop {
        let base = crate::free_port();
        if base > 65_000 {
            continue;
        }
        let free = [1, 2, 3, 9].iter().all(|offset| TcpStream::connect(("127.0.0.1", base + offset)).is_err())
            && [1, 2, 3, 9].iter().all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return base;
        }
    }
}
