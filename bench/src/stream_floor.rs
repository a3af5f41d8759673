//! The floor under `compare`: how fast this machine reads a backlog of
//! Debezium entries out of a Redis stream at all. Three readers drain the same
//! stream, each with a consumer group of its own: bare `XREADGROUP` + `XACK`
//! with redis-rs (the transport), evercache's Redis Streams source (read and
//! ack, batch by batch), and that source plus the Debezium decoding every
//! pipeline runs. No plugin, no database, no cache write: a pipeline can go no
//! faster than these. Last, the decoding alone on the entries read, in memory:
//! its CPU cost per entry.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use evercache::event::debezium::decode_stream_entry;
use evercache::source::SourceConfig;
use redis::Value;

use crate::compare::entry;

/// `stream-floor` options.
#[derive(Args)]
pub struct Options {
    /// Entries in the backlog.
    #[arg(long, default_value_t = 100_000)]
    entries: u32,
    /// Entries per read.
    #[arg(long, default_value_t = 500)]
    count: usize,
    /// Entries with the JsonConverter's schema wrapper (Debezium's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    schema_wrapper: bool,
    /// A few thousand entries: keeps the harness working, figures meaningless.
    #[arg(long)]
    tiny: bool,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// Runs the three readers and prints their rates.
pub async fn run(options: Options) -> Result<()> {
    let entries = if options.tiny { 2_000 } else { options.entries };
    let stream = "bench:floor:item";
    let client = redis::Client::open(options.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg(stream).exec_async(&mut conn).await?;
    let mut bytes = 0usize;
    for chunk in (1..=i64::from(entries)).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            let (key, value) =
                (entry::key(options.schema_wrapper, *id), entry::value(options.schema_wrapper, "item", *id));
            bytes += key.len() + value.len();
            pipe.cmd("XADD").arg(stream).arg("*").arg(key).arg(value).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let entries = entries as usize;
    println!(
        "stream-floor: {entries} entries of ~{} B (schema wrapper: {}), reads of {}",
        bytes / entries,
        options.schema_wrapper,
        options.count
    );
    let report = |what: &str, elapsed: Duration| {
        println!(
            "  {what:<40} {:>8.0} entries/s {:>6.1} MB/s",
            entries as f64 / elapsed.as_secs_f64(),
            bytes as f64 / elapsed.as_secs_f64() / 1e6
        );
    };

    redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("raw").arg("0").exec_async(&mut conn).await?;
    let started = Instant::now();
    let mut read = 0;
    while read < entries {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("c")
            .arg("COUNT")
            .arg(options.count)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let ids = entry_ids(&reply);
        ensure!(!ids.is_empty(), "the raw reader found nothing after {read} entries");
        read += ids.len();
        redis::cmd("XACK").arg(stream).arg("raw").arg(&ids).exec_async(&mut conn).await?;
    }
    report("XREADGROUP + XACK (redis-rs Value)", started.elapsed());

    let mut kept = Vec::new();
    for (group, decode) in [("source", false), ("decode", true)] {
        let config: SourceConfig = toml::from_str(&format!(
            "type = \"redis-stream\"\nurl = \"{}\"\nstreams = [\"{stream}\"]\ngroup = \"{group}\"\nbatch_size = {}\nblock = \"100ms\"",
            options.redis_url, options.count
        ))?;
        let SourceConfig::RedisStream(config) = config else { unreachable!("a redis-stream source") };
        let mut source = config.build(group).await?;
        let started = Instant::now();
        let mut read = 0;
        while read < entries {
            let batch = source.next_batch().await?;
            ensure!(!batch.is_empty(), "the {group} reader found nothing after {read} entries");
            if decode {
                for record in &batch {
                    decode_stream_entry(&record.stream, &record.fields())?;
                }
            }
            read += batch.len();
            source.ack(&batch).await?;
            if decode {
                kept.push(batch);
            }
        }
        let what = if decode { "evercache's source + Debezium decoding" } else { "evercache's Redis Streams source" };
        report(what, started.elapsed());
    }
    // The decoding alone, on the entries read, best of three passes: the CPU
    // it costs, without the reads it overlaps with in the runtime.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for record in kept.iter().flatten() {
            std::hint::black_box(decode_stream_entry(&record.stream, &record.fields())?);
        }
        best = best.min(started.elapsed());
    }
    report("Debezium decoding alone (in memory)", best);
    println!("  {:<40} {:>8.2} µs/entry", "", best.as_secs_f64() * 1e6 / entries as f64);
    redis::cmd("DEL").arg(stream).exec_async(&mut conn).await?;
    Ok(())
}

/// The entry ids of an `XREADGROUP` reply.
fn entry_ids(reply: &Value) -> Vec<String> {
    let streams = match reply {
        Value::Array(streams) => streams.as_slice(),
        Value::Map(pairs) => return pairs.iter().flat_map(|(_, entries)| ids_of(entries)).collect(),
        _ => &[],
    };
    streams
        .iter()
        .filter_map(|s| match s {
            Value::Array(pair) if pair.len() == 2 => Some(ids_of(&pair[1])),
            _ => None,
        })
        .flatten()
        .collect()
}

fn ids_of(entries: &Value) -> Vec<String> {
    let Value::Array(entries) = entries else { return Vec::new() };
    entries
        .iter()
        .filter_map(|e| match e {
            Value::Array(parts) => match parts.first() {
                Some(Value::BulkString(id)) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
