//! A Redis Cluster of the test's own: three primaries with a replica each,
//! `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`,
//! nothing kept on disk, so slots can be migrated and replicas promoted while
//! the runtime writes. `EVERCACHE_TEST_REDIS_SERVER` names another server
//! binary (the test script's Valkey pass runs a Valkey cluster that way).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// Six nodes under `dir/redis-cluster`, joined into three primaries with a
    /// replica each; returns once every node sees all slots served.
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("redis-cluster");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self { dir, nodes: Vec::new() };
        for port in cluster_ports(6) {
            cluster.nodes.push(ClusterNode { port, child: None });
            cluster.start_node(port);
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        cluster.wait_settled();
        cluster
    }

    /// "redis 7.0.15" or "valkey 8.1.8": what the nodes run.
    pub fn server(&self) -> String {
        let info = self.cli(self.nodes[0].port, &["INFO", "server"]);
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
        let version = field("valkey_version:").or_else(|| field("redis_version:")).unwrap_or_default();
        format!("{} {version}", field("server_name:").unwrap_or_else(|| "redis".to_owned()))
    }

    /// A URL of one node (any node serves as a seed).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Ports of the nodes serving slots now.
    pub fn primaries(&self) -> Vec<u16> {
        self.roles().into_iter().filter(|(_, role)| role.primary).map(|(port, _)| port).collect()
    }

    /// The port of a replica of `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let id = self.node_id(primary);
        self.roles()
            .into_iter()
            .find(|(_, role)| role.primary_id.as_deref() == Some(id.as_str()))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no replica of 127.0.0.1:{primary}"))
    }

    /// `redis-cli -p port …`, its output trimmed.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn node_id(&self, port: u16) -> String {
        self.cli(port, &["CLUSTER", "MYID"])
    }

    /// Moves `slots` slots from `from` to `to` with `redis-cli --cluster
    /// reshard` (MIGRATING/IMPORTING and MIGRATE, key by key, as operators do).
    pub fn reshard(&self, from: u16, to: u16, slots: usize) {
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &self.node_id(from), "--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes", "--cluster-pipeline", "10"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "reshard failed: {}", String::from_utf8_lossy(&out.stdout));
        self.wait_settled();
    }

    /// Promotes a replica with `CLUSTER FAILOVER` (its primary hands over after
    /// the replica caught up, as in planned maintenance) and waits for it.
    pub fn failover(&self, replica: u16) {
        assert_eq!(self.cli(replica, &["CLUSTER", "FAILOVER"]), "OK");
        self.wait_for("the replica to become a primary", || {
            self.roles().iter().any(|(p, r)| *p == replica && r.primary)
        });
        self.stabilize_imported_slots(replica);
        self.wait_settled();
    }

    /// Valkey 8.1 replicates importing marks to replicas, and a replica was
    /// seen keeping one after the move had finished; promoted, it then fails
    /// `redis-cli --cluster reshard`'s open-slot check. Clears such marks on
    /// slots the node owns, as `redis-cli --cluster fix` would.
    fn stabilize_imported_slots(&self, port: u16) {
        let nodes = self.cli(port, &["CLUSTER", "NODES"]);
        let Some(me) = nodes.lines().find(|l| l.contains("myself")) else { return };
        for mark in me.split_whitespace().filter(|f| f.starts_with('[') && f.contains("-<-")) {
            if let Some(slot) = mark.trim_start_matches('[').split('-').next() {
                self.cli(port, &["CLUSTER", "SETSLOT", slot, "STABLE"]);
            }
        }
    }

    /// Valkey 8.1 replicates slot marks to replicas, and replicas were seen
    /// keeping one after the move had finished, which `redis-cli --cluster
    /// check` and `reshard` count as an open slot. A replica refuses
    /// `CLUSTER SETSLOT`, but its primary replicates `SETSLOT <slot> STABLE`
    /// to it, and on a primary without the mark that changes nothing.
    fn clear_replicas_stale_marks(&self) {
        let marks = |line: &str| -> Vec<String> {
            line.split_whitespace().filter(|f| f.starts_with('[')).map(str::to_owned).collect()
        };
        for port in self.live_ports() {
            let nodes = self.cli(port, &["CLUSTER", "NODES"]);
            let Some(me) = nodes.lines().find(|l| l.contains("myself")) else { continue };
            let fields: Vec<&str> = me.split_whitespace().collect();
            if fields.get(2).is_none_or(|flags| flags.contains("master")) || !me.contains('[') {
                continue;
            }
            let Some(primary) = fields.get(3).and_then(|id| nodes.lines().find(|l| l.starts_with(id))) else {
                continue;
            };
            let Some(primary_port) = primary
                .split_whitespace()
                .nth(1)
                .and_then(|address| address.split(['@', ':']).nth(1))
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let primary_nodes = self.cli(primary_port, &["CLUSTER", "NODES"]);
            let live = primary_nodes.lines().find(|l| l.contains("myself")).map(marks).unwrap_or_default();
            for mark in marks(me).into_iter().filter(|m| !live.contains(m)) {
                if let Some(slot) = mark.trim_start_matches('[').split('-').next() {
                    self.cli(primary_port, &["CLUSTER", "SETSLOT", slot, "STABLE"]);
                }
            }
        }
    }

    /// SIGKILLs a node.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every live node agrees the cluster is ok and serves all slots.
    pub fn wait_settled(&self) {
        let mut problem = String::new();
        self.wait_for_with("the cluster to settle", &mut problem, |problem| {
            *problem = match self.unsettled() {
                Some(why) => why,
                None => return true,
            };
            false
        });
    }

    /// What keeps the cluster from being settled, if anything.
    fn unsettled(&self) -> Option<String> {
        self.clear_replicas_stale_marks();
        for port in self.live_ports() {
            let info = self.cli(port, &["CLUSTER", "INFO"]);
            if !(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")) {
                return Some(format!("127.0.0.1:{port} says: {}", info.lines().take(4).collect::<Vec<_>>().join(", ")));
            }
        }
        let open = self.open_slots();
        if !open.is_empty() {
            return Some(format!("slots still migrating: {open:?}"));
        }
        self.nodes_disagree()
    }

    /// What `redis-cli --cluster check` finds wrong, if anything: each node
    /// can report itself ok while a promoted replica has not yet heard of a
    /// slot its old shard took last, and `redis-cli --cluster reshard` refuses
    /// to start until every node's view of the slots agrees.
    fn nodes_disagree(&self) -> Option<String> {
        let Some(port) = self.primaries().into_iter().next() else { return Some("no primary answers".to_owned()) };
        let out = match Command::new("redis-cli").args(["--cluster", "check", &format!("127.0.0.1:{port}")]).output() {
            Ok(out) => out,
            Err(e) => return Some(format!("redis-cli --cluster check: {e}")),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        (!out.status.success() || text.contains("[ERR]")).then(|| format!("redis-cli --cluster check: {text}"))
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        self.wait_for_with(what, &mut String::new(), |_| done());
    }

    /// Polls `done` for a minute; it leaves why it is not done yet in `problem`.
    fn wait_for_with(&self, what: &str, problem: &mut String, mut done: impl FnMut(&mut String) -> bool) {
        let start = Instant::now();
        while !done(problem) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what} ({problem}); logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Slots a primary still marks migrating. Importing marks are not counted:
    /// Valkey 8.1 replicates them to replicas, and a replica was seen (under
    /// load) keeping one for a slot its shard already owned after the move had
    /// finished; on the slot's owner such a mark changes no routing.
    fn open_slots(&self) -> Vec<String> {
        let mut open = Vec::new();
        for port in self.primaries() {
            for line in self.cli(port, &["CLUSTER", "NODES"]).lines() {
                open.extend(
                    line.split_whitespace().filter(|f| f.starts_with('[') && f.contains("->-")).map(str::to_owned),
                );
            }
        }
        open
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// Each live node's role, as it sees itself.
    fn roles(&self) -> Vec<(u16, Role)> {
        self.live_ports()
            .into_iter()
            .filter_map(|port| {
                let nodes = self.cli(port, &["CLUSTER", "NODES"]);
                let me = nodes.lines().find(|l| l.contains("myself"))?.to_owned();
                let fields: Vec<&str> = me.split_whitespace().collect();
                let primary = fields.get(2)?.contains("master");
                let primary_id = (!primary).then(|| fields[3].to_owned());
                Some((port, Role { primary, primary_id }))
            })
            .collect()
    }

    fn start_node(&mut self, port: u16) {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let server = std::env::var("EVERCACHE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(&server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(&dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{server} runs ({e}); bash scripts/dev-services.sh installs redis-server"));
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Role {
    primary: bool,
    primary_id: Option<String>,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Ports whose cluster bus port (+10000) is free as well.
fn cluster_ports(count: usize) -> Vec<u16> {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut ports = Vec::new();
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut candidate = 20_000 + (seed % 9_000) as u16;
    while ports.len() < count {
        candidate = if candidate >= 29_999 { 20_000 } else { candidate + 1 };
        if free(candidate) && free(candidate + 10_000) {
            ports.push(candidate);
        }
    }
    ports
}
