//! A streaming standby of a [`PgCluster`] (`pg_basebackup -R`), its promotion,
//! and the primary's crash, so a test can play a failover: the standby may
//! replicate through a proxy the test cuts, so the primary can commit what the
//! standby never receives and is lost with it.

use std::path::Path;
use std::process::Command;

use crate::pg_cluster::PgCluster;

impl PgCluster {
    /// A hot standby of this cluster in `dir/pg`, with its server options,
    /// replicating from `127.0.0.1:upstream_port` (this cluster's port, or a
    /// proxy's in front of it); started, and consistent when this returns.
    pub fn standby(&self, dir: &Path, upstream_port: u16) -> PgCluster {
        let options: Vec<&str> = self.options.iter().map(String::as_str).collect();
        let standby = PgCluster::without_data(dir, &options, &[]);
        let data = standby.dir.join("data");
        let port = self.port.to_string();
        let backup = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", data.to_str().unwrap()];
        standby.run("pg_basebackup", &[&backup[..], &["-X", "stream", "-R", "--no-sync"]].concat());
        // The last setting in postgresql.auto.conf wins over the one -R wrote.
        let conninfo = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={upstream_port} user=postgres application_name=standby'\n"
        );
        let auto_conf = data.join("postgresql.auto.conf");
        let mut settings = std::fs::read_to_string(&auto_conf).unwrap();
        settings.push_str(&conninfo);
        std::fs::write(&auto_conf, settings).unwrap();
        standby.start_server();
        standby
    }

    /// `pg_ctl promote`: ends recovery on a new timeline; returns once it takes writes.
    pub fn promote(&self) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-w", "promote"]);
    }

    /// SIGKILLs the postmaster, as a crash of its machine: nothing is flushed
    /// or sent any more, and its backends exit as they notice.
    pub fn kill(&self) {
        let pid_file = self.dir.join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
        assert!(!pid.is_empty(), "no postmaster pid in {}", pid_file.display());
        let killed = Command::new("kill").args(["-KILL", &pid]).status();
        assert!(matches!(killed, Ok(s) if s.success()), "kill -KILL {pid}: {killed:?}");
    }
}
