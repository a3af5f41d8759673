//! A misbehaving plugin for the sandbox tests: `mode` in its config picks what it
//! does in `keys` (loop, sleep, allocate, recurse, panic, open a file or a
//! socket, return a million keys) or in `recompute` (run DDL or DML, terminate
//! backends, take a session advisory lock and keep it, sleep in a query).
//! Never deploy it.

use evercache_plugin_sdk::{Config, Event, Outcome, Plugin, PluginError, export_plugin, query};

struct Hostile {
    mode: String,
    key_prefix: String,
    schema: String,
}

impl Plugin for Hostile {
    fn init(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            mode: config.require("mode")?.to_owned(),
            key_prefix: config.get_or("key_prefix", "hostile").to_owned(),
            schema: config.identifier("schema", "public")?,
        })
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
        let id: i64 = event.row_field("id")?;
        match self.mode.as_str() {
            "loop" => spin(id),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Err(PluginError::other("hostile: woke up after an hour"))
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "stack" => Ok(vec![format!("{}:{}", self.key_prefix, recurse(id as u64))]),
            "panic" => panic!("hostile: deliberate panic for id {id}"),
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => Err(PluginError::other(format!("hostile: read a host file ({} bytes)", text.len()))),
                Err(e) => Err(PluginError::other(format!("hostile: opening /etc/passwd failed: {e}"))),
            },
            "socket" => match std::net::TcpStream::connect("127.0.0.1:6379") {
                Ok(_) => Err(PluginError::other("hostile: connected to 127.0.0.1:6379")),
                Err(e) => Err(PluginError::other(format!("hostile: connecting to 127.0.0.1:6379 failed: {e}"))),
            },
            "many_keys" => Ok((0..1_000_000).map(|n: u32| n.to_string()).collect()),
            _ => Ok(vec![format!("{}:{id}", self.key_prefix)]),
        }
    }

    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        let sql = match self.mode.as_str() {
            "ddl" => format!("create table {}.hostile_made (id int)", self.schema),
            // Passes the host's first-keyword check; only the READ ONLY transaction stops it.
            "dml" => format!("with gone as (delete from {}.item returning id) select count(*) from gone", self.schema),
            "terminate" => {
                "select pg_terminate_backend(pid) from pg_stat_activity where pid <> pg_backend_pid()".to_owned()
            }
            "cancel" => "select \"pg_cancel_backend\"(pg_backend_pid())".to_owned(),
            "advisory" => {
                // A session-level lock survives the host's ROLLBACK unless the host releases it.
                query!("select pg_advisory_lock(424242)")?;
                return Err(PluginError::other("hostile: took session advisory lock 424242"));
            }
            "pg_sleep" => "select pg_sleep(3600)".to_owned(),
            _ => return Ok(keys.iter().map(|_| Outcome::delete()).collect()),
        };
        query!(&sql)?;
        Err(PluginError::other(format!("hostile: `{sql}` was allowed to run")))
    }
}

/// Never returns; `id` keeps the optimiser from proving it.
fn spin(id: i64) -> ! {
    let mut n = id as u64;
    loop {
        n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Recurses until the wasm stack is exhausted.
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth; 64]);
    recurse(frame[(depth % 64) as usize] + 1) + frame[3]
}

export_plugin!(Hostile);
