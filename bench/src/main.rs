//! `evercache-bench`: measures the real runtime against the local Redis and
//! Postgres and prints figures. Speed targets live here, never in tests.
//!
//! `cargo run --release -p evercache-bench -- compare` runs evercache, the
//! naive worker and the same logic compiled into the host over the same data;
//! `-- kafka-source` the Kafka source reading a backlog; `-- stream-floor` how
//! fast a Redis stream backlog can be read and decoded at all;
//! `-- capture` measures the built-in capture's commit→cache latency and burst
//! drain rate; `-- plugin-cost` what compiling, instantiating and calling a
//! plugin costs; `-- read-path` the read path against Redis and the database;
//! `-- backlog` the `evercache` binary's peak memory while draining backlogs;
//! `-- visibility` what the visibility gates add to commit→cache delay;
//! `-- durability` what a cache's `durability` (`WAIT`/`WAITAOF`) adds to it.
//! `--tiny` keeps a workload's harness working in CI.

mod backlog;
mod capture;
mod capture_db;
mod compare;
mod durability;
mod kafka_source;
mod keys;
mod plugin_cost;
mod read_path;
mod stats;
mod steady;
mod stream_floor;
mod visibility;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "evercache-bench", about = "Benchmarks against the local Redis and Postgres")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// The `evercache` binary draining stream backlogs of several sizes: rate and peak resident memory.
    Backlog(backlog::Options),
    /// Built-in capture (Postgres or MariaDB): commit→cache latency and burst drain rate.
    Capture(capture::Options),
    /// evercache vs the naive worker vs native logic: distinct keys, hot keys, fan-out, steady-rate delay.
    Compare(compare::Options),
    /// What a cache's `durability` (WAIT / WAITAOF before confirming) adds to commit→cache delay.
    Durability(durability::Options),
    /// The Kafka source alone: reading and acknowledging a backlog of Debezium changes.
    KafkaSource(kafka_source::Options),
    /// What a Wasm plugin costs: compile, cache load, instantiate, keys, recompute.
    PluginCost(plugin_cost::Options),
    /// The floor under `compare`: reading a backlog out of a Redis stream, with and without decoding.
    StreamFloor(stream_floor::Options),
    /// The read path: a herd on one missing key; hit and miss latency beside Redis and the database.
    ReadPath(read_path::Options),
    /// What the visibility gates add to commit→cache delay, gate on vs off, capture and Debezium-fed.
    Visibility(visibility::Options),
}

/// The runtime binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match Cli::parse().workload {
        Workload::Backlog(options) => backlog::run(options).await,
        Workload::Capture(options) => capture::run(options).await,
        Workload::Compare(options) => compare::run(options).await,
        Workload::Durability(options) => durability::run(options).await,
        Workload::KafkaSource(options) => kafka_source::run(options).await,
        Workload::PluginCost(options) => plugin_cost::run(options).await,
        Workload::ReadPath(options) => read_path::run(options).await,
        Workload::Visibility(options) => visibility::run(options).await,
        Workload::StreamFloor(options) => stream_floor::run(options).await,
    }
}
