//! Hot reload under traffic: the plugin file is replaced v1 → v2 → broken → v3
//! while events flow; every event is applied by the version live at its batch.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::{Running, TestEnv, plugins_dir, wait_until};
use serde_json::json;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(30);

/// Events sent this long after a file landed must see the new version. The
/// target is 1 s (debounce + compile + init, ~0.6 s on an idle 2-core box; see
/// `evercache-bench plugin-cost`); the bound is looser because CI compiles on
/// cores shared with other builds, and speed targets live in benchmarks.
const RELOAD_BOUND: Duration = Duration::from_secs(3);

/// One test at a time: the 1 s reload deadline must not include compiling for
/// the other test on the same two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The testkit component with a custom section naming `tag`: the same
/// behaviour, a different file and so a different version.
fn tagged_testkit(tag: &str) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(plugins_dir().join("testkit.wasm"))?;
    let name = b"evercache-test-tag";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    bytes.push(0);
    leb128(&mut bytes, payload.len());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn label(bytes: &[u8]) -> String {
    format!("testkit@{}", hex::encode(&Sha256::digest(bytes)[..6]))
}

/// Writes then renames, as a deploy would, and returns when the file landed.
fn land(dir: &Path, bytes: &[u8]) -> Result<Instant> {
    let tmp = dir.join("testkit.wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join("testkit.wasm"))?;
    Ok(Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_replaced_twice_under_traffic_loses_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("reload").await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let plugins = env.dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let (v1, v2, v3) = (tagged_testkit("v1")?, tagged_testkit("v2")?, tagged_testkit("v3")?);
    land(&plugins, &v1)?;
    let stream = env.stream("item");
    let runtime = env
        .runtime_toml(std::slice::from_ref(&stream), "[reload]\ndebounce = \"100ms\"\n")
        .replace(&format!("plugins_dir = \"{}\"", plugins_dir().display()), "plugins_dir = \"plugins\"");
    let config = env.config(&runtime, &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (pg, mut redis, prefix, stream, stop) =
            (env.pg.clone(), env.redis.clone(), env.prefix.clone(), stream.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut id = 0i64;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                sqlx::query(&format!("insert into {prefix}.item values ($1, $2, $1)"))
                    .bind(id)
                    .bind(format!("n{id}"))
                    .execute(&pg)
                    .await?;
                let change = pg_change("c", &prefix, "item", None, Some(json!({"id": id})), next_lsn());
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg(pg_key(id))
                    .arg(change.to_string())
                    .query_async::<String>(&mut redis)
                    .await?;
                sent.push((id, Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(sent)
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t2 = land(&plugins, &v2)?;
    tokio::time::sleep(RELOAD_BOUND + Duration::from_millis(500)).await;
    land(&plugins, b"\0asm\x0d\0\x01\0 this is not a component")?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t3 = land(&plugins, &v3)?;
    tokio::time::sleep(RELOAD_BOUND + Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let sent = producer.await??;
    let last = sent.len() as i64;

    wait_until("every event written and acked", WAIT, || {
        let mut redis = env.redis.clone();
        let (stream, key) = (stream.clone(), format!("{}:item:{last}", env.prefix));
        async move {
            let written: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut redis).await?;
            let pending: Vec<redis::Value> =
                redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
            Ok(written && matches!(pending.first(), Some(redis::Value::Int(0))))
        }
    })
    .await?;
    ensure!(env.undelivered(&stream).await? == Some(0), "entries left undelivered");
    let dead: u64 = redis::cmd("XLEN").arg(format!("{stream}:dlq")).query_async(&mut env.redis).await?;
    ensure!(dead == 0, "{dead} entries dead-lettered");

    let versions = [label(&v1), label(&v2), label(&v3)];
    let mut previous = 0;
    let mut seen = [0usize; 3];
    let mut live_after = [None, None];
    for (id, at) in &sent {
        let key = format!("{}:item:{id}", env.prefix);
        let value = env.get_json(&key).await?;
        ensure!(value == Some(json!({"id": id, "name": format!("n{id}"), "version": id})), "{key} = {value:?}");
        let meta = env.hgetall(&evercache::sink::meta_key(&key)?).await?;
        let plugin = meta["plugin"].as_str().unwrap_or_default();
        let Some(version) = versions.iter().position(|v| v == plugin) else {
            anyhow::bail!("{key} written by {plugin}, not one of {versions:?}");
        };
        ensure!(version >= previous, "{key} written by {plugin} after a later version was live");
        if *at > t2 + RELOAD_BOUND {
            ensure!(version >= 1, "{key} sent {:?} after v2 landed still got v1", *at - t2);
        }
        if *at > t3 + RELOAD_BOUND {
            ensure!(version == 2, "{key} sent {:?} after v3 landed still got {plugin}", *at - t3);
        }
        for (slot, (tag, landed)) in [(1, t2), (2, t3)].into_iter().enumerate() {
            if version == tag && live_after[slot].is_none() {
                live_after[slot] = Some(at.saturating_duration_since(landed));
            }
        }
        previous = version;
        seen[version] += 1;
    }
    ensure!(seen.iter().all(|&n| n > 0), "every version applied some events: {seen:?}");
    println!(
        "events: {}, per version (v1, v2, v3): {seen:?}; first event on v2, v3 sent after landing: {live_after:?}",
        sent.len()
    );
    running.stop().await
}

/// Writes `text` as pipeline `name`'s file the way a deploy would.
fn land_pipeline(env: &TestEnv, name: &str, text: &str) -> Result<()> {
    let dir = env.dir.join("pipelines");
    std::fs::write(dir.join(format!("{name}.toml.tmp")), text)?;
    std::fs::rename(dir.join(format!("{name}.toml.tmp")), dir.join(format!("{name}.toml")))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_pipeline_file_restarts_the_pipeline_and_a_broken_one_is_ignored() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("reload_pipeline").await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let stream = env.stream("item");
    let runtime = env.runtime_toml(std::slice::from_ref(&stream), "[reload]\ndebounce = \"50ms\"\n");
    let config = env.config(&runtime, &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    let send = |id: i64| {
        let (pg, mut redis, prefix, stream) = (env.pg.clone(), env.redis.clone(), env.prefix.clone(), stream.clone());
        async move {
            sqlx::query(&format!("insert into {prefix}.item values ($1, 'x', 1)")).bind(id).execute(&pg).await?;
            let change = pg_change("c", &prefix, "item", None, Some(json!({"id": id})), next_lsn());
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(pg_key(id))
                .arg(change.to_string())
                .query_async::<String>(&mut redis)
                .await?;
            anyhow::Ok(format!("{prefix}:item:{id}"))
        }
    };
    let kind = |key: String| {
        let mut redis = env.redis.clone();
        async move { anyhow::Ok(redis::cmd("TYPE").arg(&key).query_async::<String>(&mut redis).await?) }
    };

    let key = send(1).await?;
    wait_until("item 1 cached as JSON", WAIT, || async { Ok(kind(key.clone()).await? == "string") }).await?;

    land_pipeline(&env, "items", &format!("{}\nbogus = 1\n", env.testkit_pipeline("")))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = send(2).await?;
    wait_until("item 2 still cached as JSON", WAIT, || async { Ok(kind(key.clone()).await? == "string") }).await?;

    land_pipeline(&env, "items", &env.testkit_pipeline("mode = \"hash\""))?;
    // Each poll sends one more change and looks at the one sent before, which
    // has had a poll interval to be written.
    let sent = std::sync::Mutex::new((2, None::<String>));
    wait_until("the restarted pipeline writes hashes", WAIT, || {
        let (id, previous) = {
            let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.0 += 1;
            (sent.0, sent.1.take())
        };
        let (send, kind, sent) = (&send, &kind, &sent);
        async move {
            let hashed = match previous {
                Some(key) => kind(key).await? == "hash",
                None => false,
            };
            let key = send(id).await?;
            sent.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(key);
            Ok(hashed)
        }
    })
    .await?;
    let dead: u64 = redis::cmd("XLEN").arg(format!("{stream}:dlq")).query_async(&mut env.redis).await?;
    ensure!(dead == 0, "{dead} entries dead-lettered");
    running.stop().await
}
