//! evercache against the naive worker and against the same logic compiled
//! into the host, on the same data, in one invocation.

pub(crate) mod entry;
mod naive;
mod native;
mod runtime;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::stats::{Latencies, ms};
use runtime::{Implementation, Logic};

pub(crate) const SCHEMA: &str = "bench_compare";

/// Sizes of the workloads.
#[derive(clap::Args)]
pub struct Options {
    /// Events (and rows) of the distinct-keys workload.
    #[arg(long, default_value_t = 200_000)]
    distinct: u32,
    /// Events of the hot-keys workload.
    #[arg(long, default_value_t = 200_000)]
    hot: u32,
    /// Rows the hot-keys events cycle over.
    #[arg(long, default_value_t = 1_000)]
    hot_rows: u32,
    /// Categories of the fan-out workload; each is renamed once.
    #[arg(long, default_value_t = 200)]
    fanout_categories: u32,
    /// Products per category: the keys one rename touches.
    #[arg(long, default_value_t = 1_000)]
    fanout_products: u32,
    /// Most events the naive worker handles per workload (its rate is steady,
    /// so a prefix measures it; the full run would dominate the benchmark).
    #[arg(long, default_value_t = 20_000)]
    naive_limit: u32,
    /// Most renames the naive worker handles in the fan-out workload.
    #[arg(long, default_value_t = 20)]
    naive_fanout_limit: u32,
    /// Seconds of each steady-rate latency run.
    #[arg(long, default_value_t = 5)]
    latency_seconds: u32,
    /// Steady rates (events/s) of the latency runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// The evercache source's `max_batch_entries`: how many entries read while a
    /// batch is applied may join the next one.
    #[arg(long, default_value_t = 5_000)]
    max_batch_entries: u32,
    /// The evercache source's `batch_size`: entries per `XREADGROUP`.
    #[arg(long, default_value_t = 500)]
    batch_size: u32,
    /// Run only the workloads whose name contains this, e.g. "hot".
    #[arg(long)]
    only: Option<String>,
    /// Run only these implementations, e.g. "evercache" (for profiling one).
    #[arg(long, value_delimiter = ',', default_value = "evercache,mapper,native,naive")]
    implementations: Vec<String>,
    /// Entries carry the JsonConverter's `schema`/`payload` wrapper, as
    /// Debezium writes them by default (`--schema-wrapper false`: the bare
    /// change, `value.converter.schemas.enable=false`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    schema_wrapper: bool,
    /// A few thousand events, to keep the harness working in CI (figures meaningless).
    #[arg(long)]
    tiny: bool,
    /// Postgres.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

struct Row {
    workload: String,
    implementation: Implementation,
    events: usize,
    /// Keys the events touch before coalescing (one per event, or a category's products).
    keys_per_event: u32,
    elapsed: Duration,
    latency: Option<Latencies>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn key_rate(&self) -> f64 {
        self.rate() * f64::from(self.keys_per_event)
    }
}

pub async fn run(mut options: Options) -> Result<()> {
    if options.tiny {
        (options.distinct, options.hot, options.hot_rows, options.naive_limit) = (2_000, 2_000, 100, 500);
        (options.fanout_categories, options.fanout_products, options.naive_fanout_limit) = (10, 100, 3);
        (options.latency_seconds, options.rates) = (1, vec![500]);
    }
    let pg = PgPool::connect(&options.pg_url).await.context("Postgres; run: bash scripts/dev-services.sh")?;
    let redis = redis::Client::open(options.redis_url.as_str())?;
    let rows = options.distinct.max(options.hot_rows);
    let (categories, per_category) = (options.fanout_categories, options.fanout_products);
    sqlx::raw_sql(&format!(
        "drop schema if exists {SCHEMA} cascade; create schema {SCHEMA};
         create table {SCHEMA}.item (id bigint primary key, name text, version bigint);
         insert into {SCHEMA}.item select g, 'row ' || g, 1 from generate_series(1, {rows}) g;
         create table {SCHEMA}.category (id bigint primary key, name text not null);
         create table {SCHEMA}.product (id bigint primary key, category_id bigint not null references {SCHEMA}.category (id),
                                        name text not null, price numeric(12, 2) not null, stock integer not null);
         create index on {SCHEMA}.product (category_id);
         insert into {SCHEMA}.category select g, 'category ' || g from generate_series(1, {categories}) g;
         insert into {SCHEMA}.product select g, (g - 1) / {per_category} + 1, 'product ' || g, g % 1000 + 0.99, g % 50
           from generate_series(1, {categories} * {per_category}) g;
         analyze {SCHEMA}.item; analyze {SCHEMA}.category; analyze {SCHEMA}.product;"
    ))
    .execute(&pg)
    .await?;

    let mut table = Vec::new();
    let fanout = format!("fan-out ({per_category} products/category)");
    let workloads = [
        ("distinct keys", Logic::Item, options.distinct, options.distinct, options.naive_limit, 1),
        ("hot keys", Logic::Item, options.hot, options.hot_rows, options.naive_limit, 1),
        (fanout.as_str(), Logic::Shop, categories, categories, options.naive_fanout_limit, per_category),
    ];
    let selected = |workload: &str| options.only.as_deref().is_none_or(|only| workload.contains(only));
    for (workload, logic, events, over, naive_limit, keys_per_event) in workloads {
        if !selected(workload) {
            continue;
        }
        for implementation in Implementation::ALL
            .into_iter()
            .filter(|i| options.implementations.iter().any(|n| n == i.name()) && logic.runs_on(*i))
        {
            let limit = if implementation == Implementation::Naive { events.min(naive_limit) } else { events };
            let run = runtime::drain(&options, &redis, &pg, implementation, logic, workload, limit, over).await?;
            eprintln!(
                "{workload:>14} | {:>9} | {:>8.0} events/s",
                implementation.name(),
                run.0 as f64 / run.1.as_secs_f64()
            );
            table.push(Row {
                workload: workload.to_owned(),
                implementation,
                events: run.0,
                keys_per_event,
                elapsed: run.1,
                latency: None,
            });
        }
    }
    for rate in options.rates.clone() {
        let workload = format!("steady {rate}/s");
        if !selected(&workload) {
            continue;
        }
        for implementation in
            Implementation::ALL.into_iter().filter(|i| options.implementations.iter().any(|n| n == i.name()))
        {
            let (events, elapsed, latencies) =
                runtime::steady(&options, &redis, &pg, implementation, &workload, rate, options.latency_seconds)
                    .await?;
            eprintln!("{workload:>14} | {:>9} | p99 {}", implementation.name(), ms(latencies.percentile(99.0)));
            table.push(Row {
                workload: workload.clone(),
                implementation,
                events,
                keys_per_event: 1,
                elapsed,
                latency: Some(latencies),
            });
        }
    }
    sqlx::query(&format!("drop schema if exists {SCHEMA} cascade")).execute(&pg).await?;
    print(&table);
    Ok(())
}

fn print(table: &[Row]) {
    let rate_of = |workload: &str, implementation: Implementation| {
        table.iter().find(|r| r.workload == workload && r.implementation == implementation).map(Row::rate)
    };
    println!(
        "| workload | implementation | events | events/s | keys/s | vs naive | vs native | delay p50 | p99 | p99.9 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in table {
        // Steady runs all offer the same rate; only drains compare throughput.
        let ratio = |other: Implementation| match row.latency {
            Some(_) => String::new(),
            None => rate_of(&row.workload, other).map(|base| format!("{:.2}×", row.rate() / base)).unwrap_or_default(),
        };
        let (p50, p99, p999) = match &row.latency {
            Some(l) => (ms(l.percentile(50.0)), ms(l.percentile(99.0)), ms(l.percentile(99.9))),
            None => Default::default(),
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {p50} | {p99} | {p999} |",
            row.workload,
            row.implementation.name(),
            row.events,
            row.rate(),
            row.key_rate(),
            ratio(Implementation::Naive),
            ratio(Implementation::Native),
        );
    }
}

/// Send times by key, for matching keyspace notifications.
pub(crate) type Sent = HashMap<String, Instant>;
