//! Metric names, defined once (Prometheus style, `_total` for counters), and the
//! process-wide Prometheus recorder the `[http]` listener renders at `/metrics`.

use std::sync::OnceLock;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::source::DeadLetter;

/// Change events handled, by `pipeline`, `op` (c/u/d/r/t) and `outcome` (`written`, `dead_lettered`).
pub const EVENTS_TOTAL: &str = "evercache_events_total";
/// Events per pipeline batch (histogram), by `pipeline`.
pub const BATCH_EVENTS: &str = "evercache_batch_events";
/// Keys named by `keys` calls before coalescing, by `pipeline`.
pub const KEYS_PLANNED_TOTAL: &str = "evercache_keys_planned_total";
/// Distinct keys recomputed (or invalidated), by `pipeline`.
pub const KEYS_RECOMPUTED_TOTAL: &str = "evercache_keys_recomputed_total";
/// Keys named per distinct key in a batch (histogram, 1 = no coalescing), by `pipeline`.
pub const COALESCING_RATIO: &str = "evercache_coalescing_ratio";
/// Duration of one `recompute` call (histogram), by `pipeline`.
pub const RECOMPUTE_SECONDS: &str = "evercache_recompute_duration_seconds";
/// Duration of one host `query` (histogram), by `pipeline` and `plugin`.
pub const HOST_QUERY_SECONDS: &str = "evercache_host_query_duration_seconds";
/// Guarded key writes, by `pipeline` and `outcome` (`applied`, `stale`, `deleted`).
pub const WRITES_TOTAL: &str = "evercache_writes_total";
/// Now minus the source commit time of each written event (histogram), by `pipeline`.
pub const DELAY_SECONDS: &str = "evercache_end_to_end_delay_seconds";
/// Records written to a dead-letter stream, by `source` and `pipeline` ("" when undecodable).
pub const DEAD_LETTERS_TOTAL: &str = "evercache_dead_letters_total";
/// Failed plugin calls, by `pipeline`, `plugin` and `kind` (plugin/trap/timeout/contract/unavailable).
pub const PLUGIN_ERRORS_TOTAL: &str = "evercache_plugin_errors_total";
/// Plugin hot reloads, by `plugin` and `outcome` (`ok`, `failed`).
pub const PLUGIN_RELOADS_TOTAL: &str = "evercache_plugin_reloads_total";
/// Pipeline-file hot reloads, by `pipeline` and `outcome` (`ok`, `failed`).
pub const PIPELINE_RELOADS_TOTAL: &str = "evercache_pipeline_reloads_total";
/// When the running plugin version was loaded (Unix seconds), by `pipeline`, `plugin` and `version`.
pub const PLUGIN_LOADED_SECONDS: &str = "evercache_plugin_loaded_timestamp_seconds";
/// Entries (or messages) not yet delivered to the consumer group, by `source` and `stream`.
pub const SOURCE_LAG_ENTRIES: &str = "evercache_source_lag_entries";
/// Entries delivered to the group but not acknowledged, by `source` and `stream`.
pub const SOURCE_PENDING_ENTRIES: &str = "evercache_source_pending_entries";
/// WAL bytes between the server's current position and the slot's confirmed one, by `source` and `slot`.
pub const SLOT_LAG_BYTES: &str = "evercache_replication_slot_lag_bytes";
/// Gauge: seconds since the last change a capture confirmed was committed, while it is behind.
pub const CAPTURE_LAG_SECONDS: &str = "evercache_capture_lag_seconds";
/// 1 when the last probe reached the source and its runner is not failing, else 0, by `source`.
pub const SOURCE_UP: &str = "evercache_source_up";
/// Failed reads and commands of a source, by `source` and `kind` (unavailable, halted, config, not_visible).
pub const SOURCE_ERRORS_TOTAL: &str = "evercache_source_errors_total";
/// Consumer groups found missing and created again, by `source` and `stream`.
pub const GROUPS_RECREATED_TOTAL: &str = "evercache_source_groups_recreated_total";
/// Times the built-in capture lost its replication connection and reconnected, by `source`.
pub const CAPTURE_RECONNECTS_TOTAL: &str = "evercache_capture_reconnects_total";
/// Debezium-fed binlog events whose versions cannot be ordered against the
/// ones before: from a new server (MySQL, ranked by binlog place) or a new
/// MariaDB GTID domain, by `pipeline`.
pub const BINLOG_SERVER_CHANGES_TOTAL: &str = "evercache_binlog_server_changes_total";
/// Failovers a built-in capture followed to a new primary, by `source`.
pub const CAPTURE_FAILOVERS_TOTAL: &str = "evercache_capture_failovers_total";
/// 1 while a pipeline is stuck (a batch running, or lag without progress, for
/// longer than `[http] stuck_after`), else 0, by `pipeline`.
pub const PIPELINE_STUCK: &str = "evercache_pipeline_stuck";
/// Reads of `GET /v1/keys/…`, by `pipeline` and `result` (`hit`, `miss`).
pub const READS_TOTAL: &str = "evercache_reads_total";
/// Misses settled, by `pipeline` and `how`: `recomputed` (this process filled
/// the key), `waited` (another request or instance filled it), `failed`.
pub const READ_FILLS_TOTAL: &str = "evercache_read_fills_total";
/// Keys recomputed ahead of their expiry by the read path, by `pipeline`.
pub const READ_REFRESHES_TOTAL: &str = "evercache_read_refreshes_total";
/// Redis `used_memory` of a cache, by `cache`.
pub const REDIS_USED_MEMORY_BYTES: &str = "evercache_redis_used_memory_bytes";
/// How long a built-in capture held a batch until its transactions were
/// visible to new queries, by `source`: every checked batch of streamed
/// changes, ≈0 when visible at the first check; none with `visibility = "off"`.
pub const SOURCE_VISIBILITY_WAIT_SECONDS: &str = "evercache_source_visibility_wait_seconds";
/// How long a pipeline held a batch of Debezium events until their
/// transactions were visible on its database, by `pipeline`: every checked
/// batch whose events name their transactions, ≈0 when visible at once.
pub const PIPELINE_VISIBILITY_WAIT_SECONDS: &str = "evercache_pipeline_visibility_wait_seconds";
/// Batches still not visible after `event::visibility::REPORT_AFTER` (each is reported
/// and held, never handed on), by `source` (built-in captures) or `pipeline`.
pub const VISIBILITY_STALLS_TOTAL: &str = "evercache_visibility_stalls_total";
/// Times a cache was found to have come back older than evercache's writes
/// (its watermark behind), by `source` and `cache`.
pub const CACHE_ROLLBACKS_TOTAL: &str = "evercache_cache_rollbacks_total";
/// Times a cache's Redis was seen restarted or replaced (its `run_id` or role changed), by `cache`.
pub const CACHE_RESTARTS_TOTAL: &str = "evercache_cache_restarts_total";
/// Change records lost before evercache read them (a stream trimmed past the
/// group, a Kafka offset past retention), by `source`: each gap counted once.
pub const EVENT_GAPS_TOTAL: &str = "evercache_event_gaps_total";
/// Cache rollbacks repaired by delivering the lost batches again instead of
/// recomputing (a Redis Streams group moved back), by `source`.
pub const LOSS_REPLAYS_TOTAL: &str = "evercache_loss_replays_total";
/// Repairs after a loss (a cache rollback or an event gap), by `pipeline` and `outcome` (`done`, `failed`).
pub const LOSS_REPAIRS_TOTAL: &str = "evercache_loss_repairs_total";
/// Keys recomputed by repairs after a loss, by `pipeline`.
pub const LOSS_REPAIRED_KEYS_TOTAL: &str = "evercache_loss_repaired_keys_total";

/// Latency buckets (seconds) shared by the duration histograms.
const SECONDS_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for counts per batch.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];
/// Buckets for the coalescing ratio.
const RATIO_BUCKETS: &[f64] = &[1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0];

/// Installs the Prometheus recorder once per process and returns its handle;
/// `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in [
                (BATCH_EVENTS, COUNT_BUCKETS),
                (COALESCING_RATIO, RATIO_BUCKETS),
                (RECOMPUTE_SECONDS, SECONDS_BUCKETS),
                (HOST_QUERY_SECONDS, SECONDS_BUCKETS),
                (DELAY_SECONDS, SECONDS_BUCKETS),
                (SOURCE_VISIBILITY_WAIT_SECONDS, SECONDS_BUCKETS),
                (PIPELINE_VISIBILITY_WAIT_SECONDS, SECONDS_BUCKETS),
            ] {
                builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets).ok()?;
            }
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(EVENTS_TOTAL, "Change events handled, by pipeline, op and outcome.");
    describe_histogram!(BATCH_EVENTS, "Events per pipeline batch.");
    describe_counter!(KEYS_PLANNED_TOTAL, "Keys named by plugin keys calls, before coalescing.");
    describe_counter!(KEYS_RECOMPUTED_TOTAL, "Distinct keys recomputed or invalidated.");
    describe_histogram!(COALESCING_RATIO, "Keys named per distinct key in a batch.");
    describe_histogram!(RECOMPUTE_SECONDS, Unit::Seconds, "Duration of one recompute call.");
    describe_histogram!(HOST_QUERY_SECONDS, Unit::Seconds, "Duration of one host query.");
    describe_counter!(WRITES_TOTAL, "Guarded key writes by outcome (applied, stale, deleted).");
    describe_histogram!(DELAY_SECONDS, Unit::Seconds, "Now minus the source commit time of each written event.");
    describe_histogram!(
        SOURCE_VISIBILITY_WAIT_SECONDS,
        Unit::Seconds,
        "How long a built-in capture held a batch until its transactions were visible."
    );
    describe_histogram!(
        PIPELINE_VISIBILITY_WAIT_SECONDS,
        Unit::Seconds,
        "How long a pipeline held a batch until its Debezium events' transactions were visible."
    );
    describe_counter!(
        VISIBILITY_STALLS_TOTAL,
        "Batches held past the visibility report threshold, by source or pipeline."
    );
    describe_counter!(DEAD_LETTERS_TOTAL, "Records written to a dead-letter stream.");
    describe_counter!(PLUGIN_ERRORS_TOTAL, "Failed plugin calls by kind.");
    describe_counter!(PLUGIN_RELOADS_TOTAL, "Plugin hot reloads by outcome.");
    describe_counter!(PIPELINE_RELOADS_TOTAL, "Pipeline-file hot reloads by outcome.");
    describe_gauge!(PLUGIN_LOADED_SECONDS, Unit::Seconds, "When the running plugin version was loaded.");
    describe_gauge!(SOURCE_LAG_ENTRIES, "Entries not yet delivered to the consumer group.");
    describe_gauge!(SOURCE_PENDING_ENTRIES, "Entries delivered but not acknowledged.");
    describe_gauge!(SLOT_LAG_BYTES, Unit::Bytes, "WAL (or binlog) bytes the capture has not confirmed.");
    describe_gauge!(
        CAPTURE_LAG_SECONDS,
        Unit::Seconds,
        "Seconds since the last change the capture confirmed was committed, while it is behind."
    );
    describe_gauge!(SOURCE_UP, "1 when the last probe reached the source and its runner is not failing.");
    describe_counter!(SOURCE_ERRORS_TOTAL, "Failed reads and commands of a source, by kind.");
    describe_counter!(GROUPS_RECREATED_TOTAL, "Consumer groups found missing and created again.");
    describe_counter!(CAPTURE_RECONNECTS_TOTAL, "Replication connections of the built-in capture re-established.");
    describe_counter!(CAPTURE_FAILOVERS_TOTAL, "Failovers a built-in capture followed to a new primary.");
    describe_counter!(
        BINLOG_SERVER_CHANGES_TOTAL,
        "Debezium binlog events whose versions cannot be ordered against the ones before (new server or GTID domain)."
    );
    describe_counter!(CACHE_ROLLBACKS_TOTAL, "Times a cache came back older than evercache's writes.");
    describe_counter!(CACHE_RESTARTS_TOTAL, "Times a cache's Redis was seen restarted or replaced.");
    describe_counter!(EVENT_GAPS_TOTAL, "Change records lost before evercache read them, per gap.");
    describe_counter!(LOSS_REPLAYS_TOTAL, "Cache rollbacks repaired by delivering the lost batches again.");
    describe_counter!(LOSS_REPAIRS_TOTAL, "Repairs after a cache rollback or an event gap, by outcome.");
    describe_counter!(LOSS_REPAIRED_KEYS_TOTAL, "Keys recomputed by repairs after a loss.");
    describe_gauge!(PIPELINE_STUCK, "1 while a pipeline is stuck for longer than stuck_after.");
    describe_gauge!(REDIS_USED_MEMORY_BYTES, Unit::Bytes, "Redis used_memory of a cache.");
    describe_counter!(READS_TOTAL, "Reads of the read path by result (hit, miss).");
    describe_counter!(READ_REFRESHES_TOTAL, "Keys the read path refreshed ahead of their expiry.");
    describe_counter!(READ_FILLS_TOTAL, "Read-path misses settled: recomputed here, waited for, or failed.");
}

/// Counts dead letters once they are written (one line in the source runner).
pub fn dead_lettered(source: &str, letters: &[DeadLetter]) {
    for letter in letters {
        let pipeline = letter.pipeline.clone().unwrap_or_default();
        counter!(DEAD_LETTERS_TOTAL, "source" => source.to_owned(), "pipeline" => pipeline).increment(1);
    }
}

/// Registers a plugin's reload counters at 0 so dashboards show them before the first reload.
pub fn register_plugin(plugin: &str) {
    for outcome in ["ok", "failed"] {
        counter!(PLUGIN_RELOADS_TOTAL, "plugin" => plugin.to_owned(), "outcome" => outcome).increment(0);
    }
}
