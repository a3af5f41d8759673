//! The Kafka source alone: produce a backlog of Debezium changes to the
//! suite's Apache Kafka broker (scripts/kafka.sh), then time the source reading and acknowledging
//! it, batch by batch, as a pipeline does (each ack commits the offsets).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use bytes::Bytes;
use clap::Args;
use evercache::source::KafkaConfig;
use evercache::source::kafka::client::Cluster;
use evercache::source::kafka::client::admin;
use evercache::source::kafka::client::produce::{OutRecord, produce};
use evercache_test_kit::kafka_broker::KafkaBroker;
use serde_json::json;

use crate::compare::entry;

/// `kafka-source` options.
#[derive(Args)]
pub struct Options {
    /// Records in the backlog.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Records per batch the source hands out.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Entries with the JsonConverter's schema wrapper (Debezium's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    schema_wrapper: bool,
    /// A few thousand records: keeps the harness working, figures meaningless.
    #[arg(long)]
    tiny: bool,
}

/// Runs the workload and prints its figures.
pub async fn run(options: Options) -> Result<()> {
    let records = if options.tiny { 2_000 } else { options.records };
    let broker = KafkaBroker::shared()?;
    // A topic of this run's own on the shared broker, so every run reads only its records.
    let topic = &format!("bench{}.bench_compare.item", std::process::id());
    let settings = Arc::new(
        evercache::source::kafka::client::Settings::from_properties(&Default::default(), None)
            .map_err(anyhow::Error::msg)?,
    );
    admin::create_topic(&mut Cluster::new(&broker.address(), settings), topic, options.partitions, &[]).await?;
    let config: KafkaConfig = serde_json::from_value(json!({
        "brokers": broker.address(),
        "topics": [topic],
        "group": "bench",
        "batch_size": options.batch_size,
        "block": "200ms",
        "properties": { "session.timeout.ms": "10000" },
    }))?;

    let mut cluster = Cluster::new(&broker.address(), Arc::new(config.settings().map_err(anyhow::Error::msg)?));
    let started = Instant::now();
    let mut bytes = 0usize;
    for chunk in (0..records as i64).collect::<Vec<_>>().chunks(2_000) {
        let out: Vec<OutRecord> = chunk
            .iter()
            .map(|id| {
                let (key, value) =
                    (entry::key(options.schema_wrapper, *id), entry::value(options.schema_wrapper, "item", *id));
                bytes += key.len() + value.len();
                OutRecord {
                    key: Some(Bytes::from(key)),
                    value: Some(Bytes::from(value)),
                    headers: Vec::new(),
                    partition_hint: *id as u32,
                }
            })
            .collect();
        // A topic just created may not have its leaders elected yet (NotLeaderOrFollower):
        // ask again with fresh metadata, as a producer's retries would.
        let mut tries = 0;
        while let Err(e) = produce(&mut cluster, topic, &out).await {
            tries += 1;
            anyhow::ensure!(tries < 50, "producing to {topic}: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            cluster = Cluster::new(&broker.address(), Arc::new(config.settings().map_err(anyhow::Error::msg)?));
        }
    }
    let produced = started.elapsed();

    let mut source = config.build("bench").await?;
    let started = Instant::now();
    let (mut read, mut batches) = (0usize, 0usize);
    while read < records {
        let batch = source.next_batch().await?;
        read += batch.len();
        batches += usize::from(!batch.is_empty());
        source.ack(&batch).await?;
        ensure!(started.elapsed().as_secs() < 600, "the source stalled at {read} of {records} records");
    }
    let drained = started.elapsed();
    source.shutdown().await;
    let per_record = bytes / records.max(1);
    println!(
        "kafka-source: {records} records of ~{per_record} B (schema wrapper: {}), {} partitions, Apache Kafka 4.4",
        options.schema_wrapper, options.partitions
    );
    println!(
        "  produce (evercache's client, batches of 2,000, acks=all): {:.0} records/s, {:.1} MB/s",
        records as f64 / produced.as_secs_f64(),
        bytes as f64 / produced.as_secs_f64() / 1e6
    );
    println!(
        "  source read + ack (join, fetch, commit per batch of {}): {:.0} records/s, {:.1} MB/s, {batches} batches",
        options.batch_size,
        records as f64 / drained.as_secs_f64(),
        bytes as f64 / drained.as_secs_f64() / 1e6
    );
    Ok(())
}
