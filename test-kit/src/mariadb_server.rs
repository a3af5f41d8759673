//! A MariaDB server of the test's own (`mariadb-install-db` + `mariadbd` from
//! the installed packages), with its binlog on as the capture needs, so it can
//! be stopped, crashed and started without touching the shared one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct MariaDbServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Server options beyond the defaults below, which they override.
    options: Vec<String>,
}

impl MariaDbServer {
    /// A new server in `dir/mariadb`, binlog on with full row images and metadata.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A new server with extra options, e.g. `--binlog-row-metadata=MINIMAL`.
    pub fn start_with(dir: &Path, options: &[&str]) -> Self {
        let options = options.iter().map(|o| (*o).to_owned()).collect();
        let server = Self { port: free_port(), dir: dir.join("mariadb"), child: None, options };
        let data = server.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let _ = Command::new("chown").args(["-R", "mysql:mysql", server.dir.to_str().unwrap()]).status();
        let status = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(matches!(status, Ok(s) if s.success()), "mariadb-install-db failed: {status:?}");
        let mut server = server;
        server.start_server();
        server
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub fn start_server(&mut self) {
        let data = self.dir.join("data");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", self.dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("mysqld.pid").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--user=mysql", "--server-id=1"])
            .arg(format!("--log-bin={}", self.dir.join("data/mariadb-bin").display()))
            .args(["--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0"])
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "mariadbd did not start; see {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A clean shutdown (SIGTERM, waited for).
    pub fn stop_server(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// A crash (SIGKILL).
    pub fn kill_server(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.kill_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
