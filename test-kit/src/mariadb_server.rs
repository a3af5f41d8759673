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
        let (data, tmp) = (server.dir.join("data"), server.dir.join("tmp"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let _ = Command::new("chown").args(["-R", "mysql:mysql", server.dir.to_str().unwrap()]).status();
        // A temporary directory of its own: installs sharing /tmp fail now and then on each other's temporary tables.
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .env("TMPDIR", &tmp)
            .output();
        let said = |o: &std::process::Output| {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        };
        assert!(matches!(&out, Ok(o) if o.status.success()), "mariadb-install-db failed: {:?}", out.map(|o| said(&o)));
        let mut server = server;
        // Another test's server may take the free port first; this one then exits, and another port is tried.
        for attempt in 1..=3 {
            match server.try_start_server() {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    eprintln!("{e}; trying another port");
                    server.port = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        server
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Runs `statements` as root with the `mariadb` client over TCP and
    /// returns what they print, one tab-separated row a line without headers.
    pub fn sql(&self, statements: &str) -> anyhow::Result<String> {
        self.client(&["-N"], statements)
    }

    /// The first row `statement` returns, by column name (empty when it returns none).
    pub fn sql_row(&self, statement: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let text = self.client(&[], statement)?;
        let mut lines = text.lines();
        let (names, values) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
        Ok(names.split('\t').zip(values.split('\t')).map(|(n, v)| (n.to_owned(), v.to_owned())).collect())
    }

    fn client(&self, options: &[&str], statements: &str) -> anyhow::Result<String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "--protocol=tcp", "-h127.0.0.1", "-uroot", "-B"])
            .arg(format!("-P{}", self.port))
            .args(options)
            .arg("-e")
            .arg(statements)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`{statements}` on port {} failed: {}",
            self.port,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Starts `mariadbd` again on its port; panics if it does not come up.
    pub fn start_server(&mut self) {
        if let Err(e) = self.try_start_server() {
            panic!("{e}");
        }
    }

    /// Starts `mariadbd` and waits until it answers on its own socket and its
    /// port; fails at once if it exits, as it does when the port is taken.
    fn try_start_server(&mut self) -> Result<(), String> {
        let data = self.dir.join("data");
        let socket = self.dir.join("mysqld.sock");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let mut child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", self.dir.join("mysqld.pid").display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
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
        let start = Instant::now();
        // Its own socket too: a port that answers may be another test's server.
        while std::os::unix::net::UnixStream::connect(&socket).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mariadbd on port {} exited ({status}); see {}", self.port, self.dir.display()));
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("mariadbd did not start on port {}; see {}", self.port, self.dir.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = Some(child);
        Ok(())
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
