//! A Postgres cluster of the test's own (`initdb` + `pg_ctl` from the installed
//! binaries) on a free loopback port, with logical WAL, so it can be stopped,
//! crashed or configured (TLS) without touching the shared one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::free_port;

/// A Postgres cluster of the test's own (`initdb` + `pg_ctl` from the installed binaries).
pub struct PgCluster {
    pub port: u16,
    pub(crate) dir: PathBuf,
    bin: PathBuf,
    /// Server options beyond logical WAL and the port (`-c name=value`).
    pub(crate) options: Vec<String>,
}

impl PgCluster {
    /// A new cluster in `dir/pg` with logical WAL, trust authentication.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[], &[])
    }

    /// The same with extra server options, e.g. `["-c ssl=on"]`, after copying
    /// `files` (e.g. a certificate and key) into the cluster's directory, owned
    /// by the server's user with mode 0600; options name them relative to it.
    pub fn start_with(dir: &Path, options: &[&str], files: &[&Path]) -> Self {
        let cluster = Self::without_data(dir, options, files);
        let data = cluster.dir.join("data");
        cluster.run("initdb", &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        cluster.start_server();
        cluster
    }

    /// A cluster's directory `dir/pg`, owned by the server's user, with no data directory yet.
    pub(crate) fn without_data(dir: &Path, options: &[&str], files: &[&Path]) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                let mut found: Vec<PathBuf> = versions
                    .filter_map(|v| v.ok())
                    .map(|v| v.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .collect();
                found.sort_by_key(|b| b.to_string_lossy().split('/').nth(4).and_then(|v| v.parse::<u32>().ok()));
                found.pop()
            })
            .expect("no initdb under /usr/lib/postgresql/*/bin; run bash scripts/dev-services.sh");
        let options = options.iter().map(|o| (*o).to_owned()).collect();
        let cluster = Self { port: free_port(), dir: dir.join("pg"), bin, options };
        std::fs::create_dir_all(&cluster.dir).unwrap();
        for file in files {
            let copy = cluster.dir.join(file.file_name().unwrap());
            std::fs::copy(file, &copy).unwrap();
            let _ = Command::new("chmod").args(["600", copy.to_str().unwrap()]).status();
        }
        // initdb refuses to run as root; the cluster then belongs to `postgres`.
        let _ = Command::new("chown").args(["-R", "postgres:postgres", cluster.dir.to_str().unwrap()]).status();
        cluster
    }

    pub(crate) fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let status = if is_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).stdout(Stdio::null()).status()
        } else {
            Command::new(&exe).args(args).stdout(Stdio::null()).status()
        };
        assert!(matches!(status, Ok(s) if s.success()), "{tool} {args:?} failed: {status:?}");
    }

    /// The cluster's directory (where `start_with` copied its files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_server(&self) {
        let data = self.dir.join("data");
        // Logical WAL, so the built-in capture can stream from it.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c wal_level=logical -c max_wal_senders=10 \
             -c max_replication_slots=10 {}",
            self.port,
            self.dir.display(),
            self.options.join(" ")
        );
        let log = self.dir.join("server.log");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]);
    }

    pub fn stop_server(&self) {
        self.stop_server_mode("fast");
    }

    /// `pg_ctl stop -m <mode>`: "fast" (clean, connections closed) or "immediate" (a crash).
    pub fn stop_server_mode(&self, mode: &str) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).stderr(Stdio::null()).status()
        } else {
            Command::new(&exe).args(args).stderr(Stdio::null()).status()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
