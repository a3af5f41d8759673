//! What a Wasm plugin costs: compiling a component, loading it from the compile
//! cache, instantiating and `init`-ing it, and one `keys` or `recompute` call
//! (with its host query), next to the same query run directly by the host.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use evercache::contract::DbValue;
use evercache::event::{ChangeEvent, Op};
use evercache::plugin::{PluginEngine, PluginInstance, SandboxConfig, load_file};
use evercache::query::DatabaseConfig;
use serde::Deserialize;

use crate::stats::{Latencies, ms};

const SCHEMA: &str = "bench_plugin_cost";

/// `plugin-cost` options.
#[derive(clap::Args)]
pub struct Options {
    /// Calls measured per call kind.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Compilations (and cache loads, instantiations) measured.
    #[arg(long, default_value_t = 10)]
    loads: usize,
    /// Postgres the host query runs on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// A few iterations only, to keep the harness working in CI.
    #[arg(long)]
    tiny: bool,
}

pub async fn run(mut options: Options) -> Result<()> {
    if options.tiny {
        options.calls = 20;
        options.loads = 1;
    }
    let plugin = evercache_test_kit::repo_root().join("target/plugins/testkit.wasm");
    if !plugin.exists() {
        bail!("{} is missing; run: bash scripts/build-plugins.sh", plugin.display());
    }
    let pg = sqlx::PgPool::connect(&options.pg_url).await?;
    sqlx::raw_sql(&format!(
        "drop schema if exists {SCHEMA} cascade; create schema {SCHEMA};
         create table {SCHEMA}.item (id bigint primary key, name text, version bigint);
         insert into {SCHEMA}.item select g, 'item ' || g, 1 from generate_series(1, 1000) g;"
    ))
    .execute(&pg)
    .await?;
    let size = std::fs::metadata(&plugin)?.len();

    let engine = PluginEngine::new(SandboxConfig::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let compile = sample(options.loads, || async { Ok(load_file(&engine, &plugin).await.map(drop)?) }).await?;
    let cache_dir = std::env::temp_dir().join(format!("evercache-bench-cache-{}", std::process::id()));
    let cached_engine = engine.clone().with_compile_cache(&cache_dir);
    load_file(&cached_engine, &plugin).await?;
    let from_cache =
        sample(options.loads, || async { Ok(load_file(&cached_engine, &plugin).await.map(drop)?) }).await?;
    let _ = std::fs::remove_dir_all(&cache_dir);

    let database = DatabaseConfig::deserialize(toml::Value::Table(toml::Table::from_iter([(
        "url".to_owned(),
        toml::Value::String(options.pg_url.clone()),
    )])))?
    .build("bench")?;
    let loaded = load_file(&engine, &plugin).await?;
    let config = vec![
        ("schema".to_owned(), SCHEMA.to_owned()),
        ("table".to_owned(), "item".to_owned()),
        ("key_prefix".to_owned(), "bench:item".to_owned()),
    ];
    let instantiate = sample(options.loads.max(10), || async {
        let mut instance =
            PluginInstance::new(&engine, loaded.clone(), "bench", Some(database.clone()), config.clone());
        instance.init().await.map_err(anyhow::Error::from)
    })
    .await?;

    let mut instance = PluginInstance::new(&engine, loaded.clone(), "bench", Some(database.clone()), config);
    instance.init().await?;
    let event = ChangeEvent {
        op: Op::Update,
        source: "bench".into(),
        schema: Some(SCHEMA.into()),
        table: "item".into(),
        key: r#"{"id":42}"#.into(),
        before: None,
        after: Some(r#"{"id":42,"name":"item 42","version":2}"#.into()),
        position: "1".into(),
        committed_at_ms: 0,
    };
    let mut keys_samples = Vec::with_capacity(options.calls);
    for _ in 0..options.calls {
        let start = Instant::now();
        instance.keys(&event).await?;
        keys_samples.push(start.elapsed());
    }
    let keys = vec!["bench:item:42".to_owned()];
    let mut recompute_samples = Vec::with_capacity(options.calls);
    for _ in 0..options.calls {
        let start = Instant::now();
        instance.recompute(&keys).await?;
        recompute_samples.push(start.elapsed());
    }
    let sql = format!("select id, name, version from {SCHEMA}.item where id = any($1)");
    let params = [DbValue::IntList(vec![42])];
    let mut query_samples = Vec::with_capacity(options.calls);
    for _ in 0..options.calls {
        let start = Instant::now();
        database.query(&sql, &params).await?;
        query_samples.push(start.elapsed());
    }

    println!("plugin: testkit.wasm ({} KiB); {} loads, {} calls per kind", size / 1024, options.loads, options.calls);
    println!("| step | p50 | p99 | mean |");
    println!("|---|---|---|---|");
    for (step, samples) in [
        ("compile (Component::from_binary + instantiate_pre)", compile),
        ("load from compile cache (deserialize + instantiate_pre)", from_cache),
        ("instantiate + init", instantiate),
        ("keys (one event)", keys_samples),
        ("recompute (one key, one host query)", recompute_samples),
        ("the same query, run by the host directly", query_samples),
    ] {
        let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
        let latencies = Latencies::new(samples);
        println!("| {step} | {} | {} | {} |", ms(latencies.percentile(50.0)), ms(latencies.percentile(99.0)), ms(mean));
    }
    sqlx::raw_sql(&format!("drop schema {SCHEMA} cascade")).execute(&pg).await?;
    Ok(())
}

async fn sample<F, Fut>(n: usize, mut f: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f().await?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}
