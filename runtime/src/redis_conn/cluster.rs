//! A Redis Cluster connection over one reconnecting connection per primary,
//! routed by the slot map from `CLUSTER SLOTS`. Ours rather than redis-rs's
//! cluster client, which (1.8.2) stopped sending anything, for good, after a
//! `CLUSTER FAILOVER` under load. A pipeline is split per node and the parts
//! sent at once; each command that comes back `MOVED`, `ASK`, `TRYAGAIN`,
//! `CLUSTERDOWN`, `LOADING` or `READONLY` (none of which ran it) is sent again,
//! alone, to where it now belongs, until the deadline, so what succeeded is
//! never sent twice. A lost connection is reported, as with one server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};

use super::key_slot;
use crate::secret::SecretUrl;
use crate::tls::RedisTls;

/// A cluster connection; cheap to clone (clones share the node connections).
#[derive(Clone)]
pub struct ClusterConn {
    inner: Arc<Inner>,
}

struct Inner {
    seed: SecretUrl,
    tls: Option<RedisTls>,
    response_timeout: Duration,
    topology: RwLock<Arc<Topology>>,
    /// Held while `CLUSTER SLOTS` is asked, so concurrent failures refresh once.
    refreshing: tokio::sync::Mutex<()>,
    nodes: Mutex<HashMap<String, ConnectionManager>>,
}

#[derive(Default)]
struct Topology {
    generation: u64,
    /// The primary serving each slot, as "host:port".
    slots: Vec<Option<Arc<str>>>,
    primaries: Vec<Arc<str>>,
}

/// Where a command goes.
enum Target {
    Slot(u16),
    /// Server-wide (`INFO`, `SCRIPT LOAD`…): every primary; `INFO` answers
    /// with a map of node → reply, the others with the first node's reply.
    AllPrimaries {
        map: bool,
    },
    Any,
}

/// What to do with a reply.
enum Verdict {
    Done,
    Redirect { addr: String, asking: bool },
    Retry { refresh: bool },
}

impl ClusterConn {
    /// Connects to the seed and reads the slot map.
    pub async fn connect(seed: &SecretUrl, tls: Option<&RedisTls>, response_timeout: Duration) -> RedisResult<Self> {
        let conn = Self {
            inner: Arc::new(Inner {
                seed: seed.clone(),
                tls: tls.cloned(),
                response_timeout,
                topology: RwLock::default(),
                refreshing: tokio::sync::Mutex::new(()),
                nodes: Mutex::default(),
            }),
        };
        conn.refresh(0).await?;
        Ok(conn)
    }

    fn topology(&self) -> Arc<Topology> {
        self.inner.topology.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads `CLUSTER SLOTS` from a known primary or the seed, unless someone
    /// did since `seen` generation.
    async fn refresh(&self, seen: u64) -> RedisResult<()> {
        let _one = self.inner.refreshing.lock().await;
        let current = self.topology();
        if current.generation > seen {
            return Ok(());
        }
        let seed = url::Url::parse(self.inner.seed.expose()).map_err(|e| invalid(e.to_string()))?;
        let seed_addr = format!("{}:{}", seed.host_str().unwrap_or("127.0.0.1"), seed.port().unwrap_or(6379));
        let mut last = invalid("no node to ask for the slot map".to_owned());
        for addr in current.primaries.iter().map(|a| a.to_string()).chain([seed_addr]) {
            let reply = match self.node(&addr).await {
                Ok(mut conn) => redis::cmd("CLUSTER").arg("SLOTS").query_async::<Value>(&mut conn).await,
                Err(e) => Err(e),
            };
            match reply.and_then(|r| parse_slots(&addr, r)) {
                Ok(slots) => {
                    let mut primaries: Vec<Arc<str>> = slots.iter().flatten().cloned().collect();
                    primaries.sort();
                    primaries.dedup();
                    let topology = Topology { generation: current.generation + 1, slots, primaries };
                    tracing::debug!(primaries = ?topology.primaries, "cluster slot map read");
                    *self.inner.topology.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(topology);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The connection to node `addr`, connecting on first use.
    async fn node(&self, addr: &str) -> RedisResult<ConnectionManager> {
        if let Some(conn) = self.inner.nodes.lock().unwrap_or_else(PoisonError::into_inner).get(addr) {
            return Ok(conn.clone());
        }
        let mut url = url::Url::parse(self.inner.seed.expose()).map_err(|e| invalid(e.to_string()))?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| invalid(format!("bad node address {addr}")))?;
        url.set_host(Some(host)).map_err(|e| invalid(e.to_string()))?;
        url.set_port(port.parse().ok()).map_err(|()| invalid(format!("bad node address {addr}")))?;
        let client =
            crate::tls::redis_client(&SecretUrl::new(url.to_string()), self.inner.tls.as_ref()).map_err(invalid)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.inner.response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(addr.to_owned())
            .or_insert(conn)
            .clone())
    }

    /// One slot served by each primary of the current slot map (its first),
    /// for keys that must land on every primary.
    pub fn slot_per_primary(&self) -> Vec<u16> {
        let topology = self.topology();
        let mut seen = std::collections::HashSet::new();
        let mut slots = Vec::with_capacity(topology.primaries.len());
        for (slot, primary) in topology.slots.iter().enumerate() {
            if let Some(primary) = primary
                && seen.insert(primary.clone())
            {
                slots.push(slot as u16);
            }
        }
        slots
    }

    /// A connection to every primary of the current slot map.
    pub async fn primary_connections(&self) -> RedisResult<Vec<ConnectionManager>> {
        let topology = self.topology();
        let mut conns = Vec::with_capacity(topology.primaries.len());
        for addr in &topology.primaries {
            conns.push(self.node(addr).await?);
        }
        Ok(conns)
    }

    fn primary(&self, topology: &Topology, slot: u16) -> RedisResult<String> {
        topology.slots.get(usize::from(slot)).cloned().flatten().map(|a| a.to_string()).ok_or_else(|| {
            RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no node serves slot",
                slot.to_string(),
            ))
        })
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        match target(cmd) {
            Target::AllPrimaries { map } => {
                let primaries = self.topology().primaries.clone();
                let replies = join_all(primaries.iter().map(|addr| async move {
                    let mut conn = self.node(addr).await?;
                    let reply: Value = cmd.query_async(&mut conn).await?;
                    Ok::<_, RedisError>((Value::BulkString(addr.as_bytes().to_vec()), reply))
                }))
                .await;
                let mut replies: Vec<(Value, Value)> = replies.into_iter().collect::<Result<_, _>>()?;
                match (map, replies.is_empty()) {
                    (true, _) => Ok(Value::Map(replies)),
                    (false, false) => Ok(replies.swap_remove(0).1),
                    (false, true) => Err(invalid("no primary is known".to_owned())),
                }
            }
            Target::Slot(_) | Target::Any => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd.clone());
                let mut replies = self.pipeline(&pipe).await?;
                match replies.pop() {
                    Some(Value::ServerError(e)) => Err(e.into()),
                    Some(value) => Ok(value),
                    None => Err(invalid("no reply".to_owned())),
                }
            }
        }
    }

    /// Sends each command to its slot's primary, one pipeline per node, all at
    /// once; commands redirected or refused for now are sent again alone.
    async fn pipeline(&self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let commands: Vec<&Cmd> = pipe.cmd_iter().collect();
        let deadline = Instant::now() + self.inner.response_timeout;
        let mut replies: Vec<Option<Value>> = vec![None; commands.len()];
        let mut todo: Vec<(usize, Option<(String, bool)>)> = (0..commands.len()).map(|i| (i, None)).collect();
        for attempt in 0u32.. {
            let topology = self.topology();
            let mut groups: HashMap<(String, bool), Vec<usize>> = HashMap::new();
            for (index, redirect) in todo.drain(..) {
                let key = match redirect {
                    Some(redirect) => redirect,
                    None => match target(commands[index]) {
                        Target::Slot(slot) => (self.primary(&topology, slot)?, false),
                        _ => (topology.primaries.first().map(|a| a.to_string()).unwrap_or_default(), false),
                    },
                };
                groups.entry(key).or_default().push(index);
            }
            let commands = &commands;
            let sent = join_all(groups.into_iter().map(|((addr, asking), indices)| async move {
                let mut part = redis::pipe();
                for &index in &indices {
                    if asking {
                        part.cmd("ASKING");
                    }
                    part.add_command(commands[index].clone());
                }
                let reply = match self.node(&addr).await {
                    Ok(mut conn) => conn.req_packed_commands(&part, 0, part.len()).await,
                    Err(e) => Err(e),
                };
                (indices, asking, reply)
            }))
            .await;
            let (mut refresh, mut last_error) = (false, None);
            for (indices, asking, reply) in sent {
                let values = match reply {
                    Ok(values) => values,
                    Err(e) => {
                        // The commands may have run with their replies lost (a read
                        // was delivered, an entry appended): the caller decides, as
                        // with one server. The next call routes by a fresh map.
                        if is_transient(&e) {
                            let _ = self.refresh(topology.generation).await;
                        }
                        return Err(e);
                    }
                };
                let step = if asking { 2 } else { 1 };
                for (index, value) in indices.into_iter().zip(values.into_iter().skip(step - 1).step_by(step)) {
                    if let Value::ServerError(e) = &value {
                        last_error = Some(e.clone().into());
                    }
                    match verdict(&value) {
                        Verdict::Done => replies[index] = Some(value),
                        Verdict::Redirect { addr, asking } => todo.push((index, Some((addr, asking)))),
                        Verdict::Retry { refresh: r } => {
                            refresh |= r;
                            todo.push((index, None));
                        }
                    }
                }
            }
            if todo.is_empty() {
                return replies
                    .into_iter()
                    .map(|r| r.ok_or_else(|| invalid("a reply is missing".to_owned())))
                    .collect();
            }
            if Instant::now() >= deadline {
                return Err(last_error.unwrap_or_else(|| invalid("cluster request timed out".to_owned())));
            }
            let moved = todo.iter().any(|(_, redirect)| matches!(redirect, Some((_, false))));
            if refresh || moved {
                // A refresh failing now (the node asked is down) is retried on the next failure.
                let _ = self.refresh(topology.generation).await;
            }
            // Redirects are followed at once, but not in a tight loop while the
            // nodes disagree about a slot.
            if refresh || attempt >= 3 {
                tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
            }
        }
        unreachable!("the loop returns")
    }

    /// A transaction (`MULTI`…`EXEC`) goes whole to its first key's primary.
    async fn transaction(&self, pipe: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let slot = pipe.cmd_iter().find_map(|c| match target(c) {
            Target::Slot(slot) => Some(slot),
            _ => None,
        });
        let topology = self.topology();
        let addr = match slot {
            Some(slot) => self.primary(&topology, slot)?,
            None => topology.primaries.first().map(|a| a.to_string()).unwrap_or_default(),
        };
        let result = self.node(&addr).await?.req_packed_commands(pipe, offset, count).await;
        if result.as_ref().is_err_and(|e| e.code() == Some("MOVED") || is_transient(e)) {
            let _ = self.refresh(topology.generation).await;
        }
        result
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        if offset == 0 && count == pipeline.len() {
            Box::pin(self.pipeline(pipeline))
        } else {
            Box::pin(self.transaction(pipeline, offset, count))
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

fn invalid(message: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, "redis cluster", message))
}

fn is_transient(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

fn verdict(value: &Value) -> Verdict {
    let Value::ServerError(error) = value else { return Verdict::Done };
    let target = || error.details().and_then(|d| d.split_ascii_whitespace().nth(1)).map(str::to_owned);
    match error.code() {
        "MOVED" => target().map_or(Verdict::Retry { refresh: true }, |addr| Verdict::Redirect { addr, asking: false }),
        "ASK" => target().map_or(Verdict::Retry { refresh: true }, |addr| Verdict::Redirect { addr, asking: true }),
        // A slot's keys half moved, or the cluster is electing a new primary.
        "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" => Verdict::Retry { refresh: false },
        // Written to a primary just turned replica.
        "READONLY" => Verdict::Retry { refresh: true },
        _ => Verdict::Done,
    }
}

/// The slot of a command's first key, for the commands evercache sends.
fn target(cmd: &Cmd) -> Target {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => bytes,
            _ => &b""[..],
        })
        .collect();
    let Some(name) = args.first().map(|n| n.to_ascii_uppercase()) else { return Target::Any };
    let key = match name.as_slice() {
        b"INFO" => return Target::AllPrimaries { map: true },
        b"SCRIPT" | b"FLUSHALL" | b"FLUSHDB" => return Target::AllPrimaries { map: false },
        b"PING" | b"CLUSTER" | b"CONFIG" | b"ASKING" | b"WAIT" => return Target::Any,
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" => {
            let keys = args.get(2).and_then(|n| std::str::from_utf8(n).ok()).and_then(|n| n.parse::<usize>().ok());
            if keys.unwrap_or(0) == 0 { None } else { args.get(3) }
        }
        b"XREADGROUP" | b"XREAD" => {
            args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")).and_then(|at| args.get(at + 1))
        }
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.get(2),
        _ => args.get(1),
    };
    key.map_or(Target::Any, |key| Target::Slot(key_slot(key)))
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id…], replicas…], …]`, an
/// empty host meaning the node asked.
fn parse_slots(asked: &str, reply: Value) -> RedisResult<Vec<Option<Arc<str>>>> {
    let bad = || invalid("unexpected CLUSTER SLOTS reply".to_owned());
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut slots = vec![None; 16384];
    let Value::Array(ranges) = reply else { return Err(bad()) };
    for range in ranges {
        let Value::Array(fields) = range else { return Err(bad()) };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let host = match primary.first() {
            Some(Value::BulkString(h)) if !h.is_empty() && h.as_slice() != b"?" => {
                String::from_utf8_lossy(h).into_owned()
            }
            _ => asked_host.to_owned(),
        };
        let Some(Value::Int(port)) = primary.get(1) else { return Err(bad()) };
        let addr: Arc<str> = Arc::from(format!("{host}:{port}"));
        let (start, end) = ((*start).clamp(0, 16383) as usize, (*end).clamp(0, 16383) as usize);
        for slot in slots.iter_mut().take(end + 1).skip(start) {
            *slot = Some(addr.clone());
        }
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_of(cmd: &Cmd) -> Option<u16> {
        match target(cmd) {
            Target::Slot(slot) => Some(slot),
            _ => None,
        }
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let key = key_slot(b"{a}:meta");
        assert_eq!(slot_of(redis::cmd("EVALSHA").arg("f00").arg(2).arg("a").arg("{a}:meta")), Some(key_slot(b"a")));
        assert_eq!(
            slot_of(redis::cmd("XREADGROUP").arg("GROUP").arg("g").arg("c").arg("STREAMS").arg("{a}:s").arg(">")),
            Some(key)
        );
        assert_eq!(slot_of(redis::cmd("XGROUP").arg("CREATE").arg("{a}x").arg("g").arg("0")), Some(key));
        assert_eq!(slot_of(redis::cmd("XADD").arg("{a}.dlq").arg("*").arg("f").arg("v")), Some(key));
        assert!(matches!(target(redis::cmd("INFO").arg("memory")), Target::AllPrimaries { map: true }));
        assert!(matches!(
            target(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")),
            Target::AllPrimaries { map: false }
        ));
        assert!(matches!(target(&redis::cmd("PING")), Target::Any));
    }

    #[test]
    fn the_slot_map_names_each_slot_primary() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let slots = parse_slots("10.0.0.9:7001", reply).unwrap();
        assert_eq!(slots[0].as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(slots[5460].as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(slots[5461].as_deref(), Some("10.0.0.9:7001"), "an empty host is the node asked");
        assert_eq!(slots[16383].as_deref(), Some("10.0.0.9:7001"));
        assert!(parse_slots("x:1", Value::Int(1)).is_err());
    }
}
