//! A private Kafka-protocol broker: `tansu` with in-memory storage on a free
//! loopback port, killed on drop. `scripts/kafka-deps.sh` installs it.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const INSTALL_HINT: &str =
    "install it with: bash scripts/kafka-deps.sh (cargo install tansu --locked --features dynostore,postgres)";

/// A running `tansu` broker.
pub struct Tansu {
    child: Child,
    port: u16,
}

/// How to start a broker beyond the defaults (in-memory storage, advertised
/// where it listens, no authentication).
#[derive(Debug, Clone, Default)]
pub struct TansuOptions {
    /// Listen on this port instead of a free one (to restart a broker in place).
    pub port: Option<u16>,
    /// `host:port` told to clients in metadata, e.g. a TLS front's.
    pub advertised: Option<String>,
    /// `--storage-engine`, e.g. a Postgres URL; in-memory when `None`.
    pub storage: Option<String>,
    /// `--authentication`: clients must authenticate with SASL SCRAM.
    pub authentication: bool,
}

/// The `tansu` binary: where `cargo install` puts it, else on the PATH.
fn binary() -> String {
    let installed = format!("{}/.cargo/bin/tansu", std::env::var("HOME").unwrap_or_default());
    if std::path::Path::new(&installed).exists() { installed } else { "tansu".to_owned() }
}

impl Tansu {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_with(&TansuOptions::default())
    }

    /// Starts a broker with `options` and waits until it accepts connections.
    pub fn start_with(options: &TansuOptions) -> Result<Self> {
        let port = options.port.unwrap_or_else(crate::free_port);
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = options.advertised.as_ref().map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let mut command = Command::new(binary());
        command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", options.storage.as_deref().unwrap_or("memory://tansu/")]);
        if options.authentication {
            command.arg("--authentication");
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the tansu broker failed; {INSTALL_HINT}"))?;
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("tansu did not listen on 127.0.0.1:{port} within 10s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port })
    }

    /// The plain-TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` for `brokers =`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let output = Command::new(binary())
            .args(["topic", "create", name, "--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://{}", self.address())])
            .output()?;
        if !output.status.success() {
            bail!("tansu topic create {name}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }
}

impl Tansu {
    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
