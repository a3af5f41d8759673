//! Reading ahead while a batch is gathered never holds back what was gathered:
//! a read after the first of a batch waits only briefly for new entries, not
//! the source's whole `block`.

use std::time::{Duration, Instant};

use anyhow::Result;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::{Running, TestEnv, wait_json};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_backlog_is_applied_without_waiting_out_the_block() -> Result<()> {
    let mut env = TestEnv::with_items("read_ahead_tail", 1000).await?;
    let stream = env.stream("item");
    // Two full reads of 500; the third finds nothing new and used to block for
    // all of `block` before the batch was handed on.
    for id in 1..=1000 {
        let row = json!({"id": id, "name": "row", "version": 1});
        let change = pg_change("u", &env.prefix, "item", None, Some(row), next_lsn());
        env.xadd_compact(&stream, &pg_key(id), &change.to_string()).await?;
    }
    let runtime = env.runtime_toml(std::slice::from_ref(&stream), "").replace("block = \"200ms\"", "block = \"10s\"");
    let config = env.config(&runtime, &[("items", &env.testkit_pipeline(""))])?;
    let started = Instant::now();
    let running = Running::start(config).await?;
    let last = format!("{}:item:1000", env.prefix);
    // Well under the 10 s block, and generous for a loaded machine.
    wait_json(&env.redis, &last, Some(json!({"id": 1000, "name": "row", "version": 1})), Duration::from_secs(6))
        .await?;
    println!("a backlog of 1000 entries applied {:.1?} after the start, with block = 10s", started.elapsed());
    // The stop waits for the read in flight, which blocks for up to `block`.
    running.stop().await?;
    Ok(())
}
