//! evercache against the naive worker and against the same logic compiled
//! into the host, on the same data, in one invocation.

mod naive;
mod native;
mod runtime;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::stats::{Latencies, ms};
use runtime::Implementation;

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
    /// Most events the naive worker handles per workload (its rate is steady,
    /// so a prefix measures it; the full run would dominate the benchmark).
    #[arg(long, default_value_t = 20_000)]
    naive_limit: u32,
    /// Seconds of each steady-rate latency run.
    #[arg(long, default_value_t = 5)]
    latency_seconds: u32,
    /// Steady rates (events/s) of the latency runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
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
    elapsed: Duration,
    latency: Option<Latencies>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(mut options: Options) -> Result<()> {
    if options.tiny {
        (options.distinct, options.hot, options.hot_rows, options.naive_limit) = (2_000, 2_000, 100, 500);
        (options.latency_seconds, options.rates) = (1, vec![500]);
    }
    let pg = PgPool::connect(&options.pg_url).await.context("Postgres; run: bash scripts/dev-services.sh")?;
    let redis = redis::Client::open(options.redis_url.as_str())?;
    let rows = options.distinct.max(options.hot_rows);
    sqlx::raw_sql(&format!(
        "drop schema if exists {SCHEMA} cascade; create schema {SCHEMA};
         create table {SCHEMA}.item (id bigint primary key, name text, version bigint);
         insert into {SCHEMA}.item select g, 'row ' || g, 1 from generate_series(1, {rows}) g;
         analyze {SCHEMA}.item;"
    ))
    .execute(&pg)
    .await?;

    let mut table = Vec::new();
    let workloads: [(&str, u32, u32); 2] =
        [("distinct keys", options.distinct, options.distinct), ("hot keys", options.hot, options.hot_rows)];
    for (workload, events, over) in workloads {
        for implementation in Implementation::ALL {
            let limit = if implementation == Implementation::Naive { events.min(options.naive_limit) } else { events };
            let run = runtime::drain(&options, &redis, &pg, implementation, workload, limit, over).await?;
            eprintln!(
                "{workload:>14} | {:>9} | {:>8.0} events/s",
                implementation.name(),
                run.0 as f64 / run.1.as_secs_f64()
            );
            table.push(Row {
                workload: workload.to_owned(),
                implementation,
                events: run.0,
                elapsed: run.1,
                latency: None,
            });
        }
    }
    for rate in options.rates.clone() {
        for implementation in Implementation::ALL {
            let workload = format!("steady {rate}/s");
            let (events, elapsed, latencies) =
                runtime::steady(&options, &redis, &pg, implementation, &workload, rate, options.latency_seconds)
                    .await?;
            eprintln!("{workload:>14} | {:>9} | p99 {}", implementation.name(), ms(latencies.percentile(99.0)));
            table.push(Row { workload, implementation, events, elapsed, latency: Some(latencies) });
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
    println!("| workload | implementation | events | events/s | vs naive | vs native | delay p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|---|---|---|");
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
            "| {} | {} | {} | {:.0} | {} | {} | {p50} | {p99} | {p999} |",
            row.workload,
            row.implementation.name(),
            row.events,
            row.rate(),
            ratio(Implementation::Naive),
            ratio(Implementation::Native),
        );
    }
}

/// Send times by key, for matching keyspace notifications.
pub(crate) type Sent = HashMap<String, Instant>;
