//! The writer against a real Redis at 127.0.0.1:6379, one key prefix per test.

use std::time::Duration;

use redis::AsyncCommands;

use super::*;
use crate::sink::meta::read_meta;
use crate::sink::{CacheConfig, RedisCache};

async fn cache(tombstone: Duration) -> RedisCache {
    let config = CacheConfig {
        url: "redis://127.0.0.1:6379".into(),
        password_file: None,
        cluster: false,
        unsafe_eviction: Default::default(),
        tls: None,
        tombstone_ttl: tombstone,
        response_timeout: Duration::from_secs(10),
        durability: None,
    };
    config.build("test").await.expect("Redis at 127.0.0.1:6379; start it with: bash scripts/dev-services.sh")
}

fn writer(cache: &RedisCache, ttl: Option<Duration>) -> RedisWriter {
    RedisWriter::new(cache.clone(), WriteSettings { pipeline: "p".into(), safety_ttl: ttl, ttl_jitter: None })
}

fn prefix(test: &str) -> String {
    format!("t{}:sink:{test}", std::process::id())
}

/// Removes a test's keys and their metadata, so thousands of them do not slow
/// every later `KEYS` on the shared Redis.
async fn clear(cache: &RedisCache, prefix: &str) {
    let mut c = cache.connection();
    for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await.unwrap();
        for chunk in keys.chunks(1000) {
            redis::cmd("UNLINK").arg(chunk).query_async::<()>(&mut c).await.unwrap();
        }
    }
}

fn version(position: &str) -> KeyVersion {
    KeyVersion { position: position.into(), kind: VersionKind::Change, committed_at_ms: 11, read_at_ms: 22 }
}

fn put(key: &str, entry: Entry, position: &str) -> KeyWrite {
    KeyWrite {
        key: key.into(),
        action: KeyAction::Put(CacheValue { entry, ttl_seconds: None }),
        version: version(position),
    }
}

fn delete(key: &str, position: &str) -> KeyWrite {
    KeyWrite { key: key.into(), action: KeyAction::Delete, version: version(position) }
}

fn text(s: &str) -> Entry {
    Entry::Json(s.into())
}

#[tokio::test]
async fn stores_every_entry_type_with_metadata() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let p = prefix("types");
    let writes = vec![
        put(&format!("{p}:text"), Entry::Text("hello".into()), "pg:1"),
        put(&format!("{p}:json"), text(r#"{"a":1}"#), "pg:1"),
        put(&format!("{p}:hash"), Entry::Hash(vec![("f".into(), "v".into()), ("g".into(), "w".into())]), "pg:1"),
        put(&format!("{p}:set"), Entry::Set(vec!["x".into(), "y".into()]), "pg:1"),
        put(&format!("{p}:zset"), Entry::SortedSet(vec![(1.5, "a".into()), (0.5, "b".into())]), "pg:1"),
    ];
    let report = w.write("plug@1", &writes).await.unwrap();
    assert_eq!(report, WriteReport { applied: 5, deleted: 0, stale: 0 });
    let mut c = cache.connection();
    assert_eq!(c.get::<_, String>(format!("{p}:text")).await.unwrap(), "hello");
    assert_eq!(c.get::<_, String>(format!("{p}:json")).await.unwrap(), r#"{"a":1}"#);
    let hash: Vec<(String, String)> = c.hgetall(format!("{p}:hash")).await.unwrap();
    assert_eq!(hash.len(), 2);
    let mut members: Vec<String> = c.smembers(format!("{p}:set")).await.unwrap();
    members.sort();
    assert_eq!(members, ["x", "y"]);
    let zset: Vec<String> = c.zrange(format!("{p}:zset"), 0, -1).await.unwrap();
    assert_eq!(zset, ["b", "a"]);
    let meta = read_meta(&mut c, &format!("{p}:hash")).await.unwrap().unwrap();
    assert_eq!(
        meta,
        crate::sink::KeyMeta {
            position: "pg:1".into(),
            committed_at_ms: 11,
            read_at_ms: 22,
            plugin: "plug@1".into(),
            pipeline: "p".into(),
            deleted: false,
            writes: 1,
            snapshot_position: String::new(),
        }
    );
    // A hash rewritten with fewer fields loses the old ones.
    let smaller = put(&format!("{p}:hash"), Entry::Hash(vec![("f".into(), "v2".into())]), "pg:2");
    w.write("plug@1", &[smaller]).await.unwrap();
    let hash: Vec<(String, String)> = c.hgetall(format!("{p}:hash")).await.unwrap();
    assert_eq!(hash, [("f".to_owned(), "v2".to_owned())]);
}

#[tokio::test]
async fn older_and_equal_positions_are_stale() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let key = format!("{}:k", prefix("order"));
    let mut c = cache.connection();
    assert_eq!(w.write("p@1", &[put(&key, text("2"), "pg:2")]).await.unwrap().applied, 1);
    assert_eq!(w.write("p@1", &[put(&key, text("1"), "pg:1")]).await.unwrap().stale, 1);
    assert_eq!(w.write("p@1", &[put(&key, text("2b"), "pg:2")]).await.unwrap().stale, 1);
    assert_eq!(c.get::<_, String>(&key).await.unwrap(), "2");
    assert_eq!(w.write("p@1", &[put(&key, text("3"), "pg:3")]).await.unwrap().applied, 1);
    assert_eq!(c.get::<_, String>(&key).await.unwrap(), "3");
}

#[tokio::test]
async fn deletes_leave_a_tombstone_that_blocks_older_writes() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let key = format!("{}:k", prefix("tombstone"));
    let mut c = cache.connection();
    w.write("p@1", &[put(&key, text("1"), "pg:1")]).await.unwrap();
    assert_eq!(w.write("p@1", &[delete(&key, "pg:3")]).await.unwrap().deleted, 1);
    assert!(!c.exists::<_, bool>(&key).await.unwrap());
    let meta = read_meta(&mut c, &key).await.unwrap().unwrap();
    assert!(meta.deleted);
    let ttl: i64 = c.ttl(meta_key(&key).unwrap()).await.unwrap();
    assert!(ttl > 0 && ttl <= 60, "tombstone ttl {ttl}");
    assert_eq!(w.write("p@1", &[put(&key, text("2"), "pg:2")]).await.unwrap().stale, 1, "no resurrection");
    assert!(!c.exists::<_, bool>(&key).await.unwrap());
    assert_eq!(w.write("p@1", &[put(&key, text("4"), "pg:4")]).await.unwrap().applied, 1);
    assert_eq!(c.get::<_, String>(&key).await.unwrap(), "4");
    let ttl: i64 = c.ttl(meta_key(&key).unwrap()).await.unwrap();
    assert_eq!(ttl, -1, "a live key's metadata does not expire");
}

#[tokio::test]
async fn snapshot_reads_fill_unversioned_keys_repair_older_ones_and_keep_the_change_version() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let p = prefix("snapshot");
    let (fresh, known) = (format!("{p}:fresh"), format!("{p}:known"));
    let mut c = cache.connection();
    w.write("p@1", &[put(&known, text("streamed"), "pg:5")]).await.unwrap();
    let snapshot = |key: &str, value: &str, position: &str| {
        let mut write = put(key, text(value), position);
        write.version.kind = VersionKind::Snapshot;
        write
    };
    let (older, newer) = (snapshot(&fresh, "snap", "pg:1"), snapshot(&known, "snap", "pg:4"));
    assert_eq!(w.write("p@1", &[older, newer]).await.unwrap(), WriteReport { applied: 1, deleted: 0, stale: 1 });
    assert_eq!(c.get::<_, String>(&known).await.unwrap(), "streamed", "a snapshot read older than the change");
    assert_eq!(c.get::<_, String>(&fresh).await.unwrap(), "snap", "an unversioned key is filled");
    assert!(w.write("p@1", &[snapshot(&known, "equal", "pg:5")]).await.unwrap().stale == 1);

    // A re-snapshot newer than the change repairs the value and keeps the change version.
    assert_eq!(w.write("p@1", &[snapshot(&known, "repaired", "pg:9")]).await.unwrap().applied, 1);
    assert_eq!(c.get::<_, String>(&known).await.unwrap(), "repaired");
    let meta = read_meta(&mut c, &known).await.unwrap().unwrap();
    assert_eq!((meta.position.as_str(), meta.snapshot_position.as_str()), ("pg:5", "pg:9"));
    assert_eq!(w.write("p@1", &[snapshot(&known, "duplicate", "pg:9")]).await.unwrap().stale, 1);
    assert_eq!(w.write("p@1", &[snapshot(&known, "older", "pg:7")]).await.unwrap().stale, 1);
    // A change streamed after the snapshot ranks against the change version only.
    assert_eq!(w.write("p@1", &[put(&known, text("in flight"), "pg:6")]).await.unwrap().applied, 1);
    assert_eq!(c.get::<_, String>(&known).await.unwrap(), "in flight");
    let fresh_meta = read_meta(&mut c, &fresh).await.unwrap().unwrap();
    assert_eq!((fresh_meta.position.as_str(), fresh_meta.snapshot_position.as_str()), ("", "pg:1"));
    assert_eq!(w.write("p@1", &[put(&fresh, text("first change"), "pg:0")]).await.unwrap().applied, 1);

    assert_eq!(w.write("p@1", &[put(&known, text("unversioned"), "")]).await.unwrap().applied, 1);
    assert_eq!(c.get::<_, String>(&known).await.unwrap(), "unversioned");
    assert_eq!(read_meta(&mut c, &known).await.unwrap().unwrap().position, "pg:6");
}

#[tokio::test]
async fn a_repair_applies_only_while_no_other_write_came_and_keeps_the_version() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let p = prefix("repair");
    let mut c = cache.connection();
    let repair = |key: &str, value: &str, seen_writes: Option<u64>| {
        let mut write = put(key, text(value), "");
        write.version.kind = VersionKind::Repair { seen_writes };
        write
    };
    let (missing, known) = (format!("{p}:missing"), format!("{p}:known"));

    // No metadata seen: a fill applies once, and a change then still outranks it.
    assert_eq!(w.write("p@1", &[repair(&missing, "filled", None)]).await.unwrap().applied, 1);
    assert_eq!(w.write("p@1", &[repair(&missing, "again", None)]).await.unwrap().stale, 1, "metadata now exists");
    let meta = read_meta(&mut c, &missing).await.unwrap().unwrap();
    assert_eq!((meta.position.as_str(), meta.writes), ("", 1));
    assert_eq!(w.write("p@1", &[put(&missing, text("changed"), "pg:1")]).await.unwrap().applied, 1);
    assert_eq!(c.get::<_, String>(&missing).await.unwrap(), "changed");

    // A wrong value at pg:5 is repaired in place; the version stays pg:5.
    w.write("p@1", &[put(&known, text("wrong"), "pg:5")]).await.unwrap();
    let seen = read_meta(&mut c, &known).await.unwrap().unwrap().writes;
    assert_eq!(w.write("p@1", &[repair(&known, "right", Some(seen))]).await.unwrap().applied, 1);
    let meta = read_meta(&mut c, &known).await.unwrap().unwrap();
    assert_eq!((c.get::<_, String>(&known).await.unwrap().as_str(), meta.position.as_str()), ("right", "pg:5"));
    assert_eq!(meta.committed_at_ms, 11, "the change's commit time is kept");
    assert_eq!(w.write("p@1", &[put(&known, text("older"), "pg:5")]).await.unwrap().stale, 1);
    assert_eq!(w.write("p@1", &[put(&known, text("newer"), "pg:6")]).await.unwrap().applied, 1);

    // A change between the count being seen and the repair's write wins.
    let seen = read_meta(&mut c, &known).await.unwrap().unwrap().writes;
    w.write("p@1", &[put(&known, text("from change"), "pg:7")]).await.unwrap();
    assert_eq!(w.write("p@1", &[repair(&known, "late fill", Some(seen))]).await.unwrap().stale, 1);
    assert_eq!(c.get::<_, String>(&known).await.unwrap(), "from change");
}

#[tokio::test]
async fn ttls_from_the_value_or_the_pipeline() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, Some(Duration::from_secs(100)));
    let p = prefix("ttl");
    let mut c = cache.connection();
    let mut own = put(&format!("{p}:own"), text("a"), "pg:1");
    if let KeyAction::Put(value) = &mut own.action {
        value.ttl_seconds = Some(30);
    }
    w.write("p@1", &[own, put(&format!("{p}:safety"), text("b"), "pg:1")]).await.unwrap();
    let own_ttl: i64 = c.ttl(format!("{p}:own")).await.unwrap();
    let safety_ttl: i64 = c.ttl(format!("{p}:safety")).await.unwrap();
    let meta_ttl: i64 = c.ttl(meta_key(&format!("{p}:own")).unwrap()).await.unwrap();
    assert!((1..=30).contains(&own_ttl), "{own_ttl}");
    assert!((31..=100).contains(&safety_ttl), "{safety_ttl}");
    assert!(meta_ttl > 60, "metadata outlives the value by the tombstone ttl: {meta_ttl}");
}

#[tokio::test]
async fn jittered_ttls_of_keys_written_together_spread_over_the_jitter() {
    let cache = cache(Duration::from_secs(60)).await;
    let settings = WriteSettings {
        pipeline: "p".into(),
        safety_ttl: Some(Duration::from_secs(3600)),
        ttl_jitter: Some(TtlJitter::Fraction(0.1)),
    };
    let w = RedisWriter::new(cache.clone(), settings);
    let p = prefix("jitter");
    let writes: Vec<KeyWrite> = (0..1000).map(|i| put(&format!("{p}:{i}"), text("x"), "pg:1")).collect();
    assert_eq!(w.write("p@1", &writes).await.unwrap().applied, 1000);
    let mut c = cache.connection();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("PTTL").arg(format!("{p}:{i}"));
    }
    let mut ttls: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    ttls.sort_unstable();
    let (least, most) = (ttls[0], ttls[999]);
    // Between the TTL and a tenth more (less the moments the test took), and spread over most of that.
    assert!(least > 3_590_000 && most <= 3_960_000, "{least}..{most}");
    assert!(most - least > 300_000, "1,000 keys written together expire over {} s", (most - least) / 1000);
    let seconds: std::collections::HashSet<i64> = ttls.iter().map(|t| t / 1000).collect();
    assert!(seconds.len() > 250, "they expire in {} distinct seconds", seconds.len());
    clear(&cache, &p).await;
}

#[tokio::test]
async fn a_thousand_keys_in_one_call_and_script_reload() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let p = prefix("bulk");
    let writes: Vec<KeyWrite> = (0..1000).map(|i| put(&format!("{p}:{i}"), text(&i.to_string()), "pg:1")).collect();
    assert_eq!(w.write("p@1", &writes).await.unwrap().applied, 1000);
    let mut c = cache.connection();
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut c).await.unwrap();
    let newer: Vec<KeyWrite> = (0..1000).map(|i| put(&format!("{p}:{i}"), text("x"), "pg:2")).collect();
    assert_eq!(w.write("p@1", &newer).await.unwrap().applied, 1000, "NOSCRIPT is recovered");
    let big = Entry::Hash((0..10_000).map(|i| (format!("f{i}"), i.to_string())).collect());
    w.write("p@1", &[put(&format!("{p}:big"), big, "pg:1")]).await.unwrap();
    assert_eq!(c.hlen::<_, usize>(format!("{p}:big")).await.unwrap(), 10_000);
    clear(&cache, &p).await;
}

#[tokio::test]
async fn bad_keys_are_permanent_and_connection_errors_transient() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let err = w.write("p@1", &[put("odd}key", text("x"), "pg:1")]).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let refused = CacheConfig {
        url: "redis://127.0.0.1:1".into(),
        password_file: None,
        cluster: false,
        unsafe_eviction: Default::default(),
        tls: None,
        tombstone_ttl: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        durability: None,
    };
    match refused.build("down").await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(_) => panic!("nothing listens on port 1"),
    }
}

#[tokio::test]
async fn a_fan_out_batch_goes_in_several_round_trips_and_a_retry_counts_written_keys_stale() {
    let cache = cache(Duration::from_secs(60)).await;
    let w = writer(&cache, None);
    let p = prefix("fanout");
    let count = KEYS_PER_ROUND_TRIP * 2 + 7;
    let writes: Vec<KeyWrite> = (0..count).map(|i| put(&format!("{p}:{i}"), text(&i.to_string()), "pg:5")).collect();
    assert_eq!(w.write("p@1", &writes).await.unwrap(), WriteReport { applied: count, deleted: 0, stale: 0 });
    let mut c = cache.connection();
    let last: String = c.get(format!("{p}:{}", count - 1)).await.unwrap();
    assert_eq!(last, (count - 1).to_string());
    assert_eq!(w.write("p@1", &writes).await.unwrap(), WriteReport { applied: 0, deleted: 0, stale: count });
    clear(&cache, &p).await;
}
