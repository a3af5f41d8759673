//! The `[http]` listener: Prometheus `/metrics`, `/health`, `/ready`, the status
//! page at `/` with its JSON at `/api/status`, and the probe loop feeding them.

mod page;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::pipeline::now_ms;
use crate::pipeline::stats::StatsSnapshot;
use crate::status::{Facts, Probes, save_pipeline};

/// `[http]` in the runtime file; without it no listener runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. "127.0.0.1:9464" (port 0 picks a free one).
    pub listen: String,
    /// How often source lag, pending entries and Redis memory are probed (default "1s").
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("[http] listen = \"{listen}\": {source}")]
pub struct BindError {
    /// The configured address.
    pub listen: String,
    /// The socket error.
    pub source: std::io::Error,
}

/// Binds the configured address.
pub async fn bind(config: &HttpConfig) -> Result<TcpListener, BindError> {
    TcpListener::bind(&config.listen).await.map_err(|source| BindError { listen: config.listen.clone(), source })
}

/// What the handlers read: the pipelines' live figures and the last probe.
struct Ops {
    pipelines: Vec<Arc<Pipeline>>,
    facts: RwLock<Option<Facts>>,
}

/// One pipeline's row, as `/api/status` and the page show it.
#[derive(Debug, Serialize)]
pub struct PipelineStatus {
    /// The pipeline's name.
    pub name: String,
    /// Its source.
    pub source: String,
    /// Its cache.
    pub cache: String,
    /// Entries not yet delivered, summed over the source's streams.
    pub lag_entries: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending_entries: Option<u64>,
    /// Replication slot lag.
    pub lag_bytes: Option<u64>,
    /// Whether the last probe reached the source.
    pub source_up: bool,
    /// Totals, history and errors.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// The whole `/api/status` document.
#[derive(Debug, Serialize)]
pub struct StatusDocument {
    /// When (Unix ms).
    pub now_ms: u64,
    /// One row per pipeline.
    pub pipelines: Vec<PipelineStatus>,
    /// The last probe, when one ran.
    pub facts: Option<Facts>,
}

impl Ops {
    fn document(&self) -> StatusDocument {
        let facts = self.facts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let pipelines = self
            .pipelines
            .iter()
            .map(|p| {
                let config = p.config();
                let source = facts.as_ref().and_then(|f| f.source(&config.source));
                let sum = |f: fn(&crate::source::lag::SourceLag) -> Option<u64>| {
                    source.and_then(|s| s.lags.iter().filter_map(f).reduce(|a, b| a + b))
                };
                PipelineStatus {
                    name: p.name().to_owned(),
                    source: config.source.clone(),
                    cache: config.cache.clone(),
                    lag_entries: sum(|l| l.lag_entries),
                    pending_entries: sum(|l| l.pending_entries),
                    lag_bytes: sum(|l| l.lag_bytes),
                    source_up: source.is_some_and(|s| s.up),
                    stats: p.stats().snapshot(),
                }
            })
            .collect();
        StatusDocument { now_ms: now_ms(), pipelines, facts }
    }
}

/// Serves until `shutdown`, probing every `probe_interval`.
pub async fn serve(
    listener: TcpListener,
    config: HttpConfig,
    runtime: Config,
    pipelines: Vec<Arc<Pipeline>>,
    shutdown: CancellationToken,
) {
    let handle = crate::metrics::install();
    let ops = Arc::new(Ops { pipelines, facts: RwLock::new(None) });
    let probing = tokio::spawn(probe_loop(ops.clone(), config.probe_interval, runtime, shutdown.clone()));
    let metrics = move || async move {
        match handle {
            Some(handle) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response(),
            None => (StatusCode::SERVICE_UNAVAILABLE, "another metrics recorder is installed").into_response(),
        }
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/rows", get(rows))
        .route("/api/status", get(status))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(ops);
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %addr, "http listener started");
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "http listener failed");
    }
    let _ = probing.await;
}

async fn probe_loop(ops: Arc<Ops>, interval: Duration, config: Config, shutdown: CancellationToken) {
    let mut probes = match Probes::new(&config) {
        Ok(probes) => probes,
        Err(e) => {
            tracing::error!(error = %e, "cannot probe sources; lag metrics disabled");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        let facts = probes.collect().await;
        for source in facts.sources.iter().filter(|s| !s.up) {
            tracing::debug!(source = %source.source, error = source.error.as_deref().unwrap_or(""), "source probe failed");
        }
        facts.publish();
        *ops.facts.write().unwrap_or_else(|e| e.into_inner()) = Some(facts);
        save_all(&ops, &mut probes, true).await;
        if let Some(handle) = crate::metrics::install() {
            handle.run_upkeep();
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
    save_all(&ops, &mut probes, false).await;
}

/// Leaves each pipeline's figures in its cache for `evercache status`.
async fn save_all(ops: &Ops, probes: &mut Probes, running: bool) {
    for pipeline in &ops.pipelines {
        if let Some(mut conn) = probes.cache_conn(&pipeline.config().cache).await {
            save_pipeline(&mut conn, pipeline.name(), &pipeline.stats().snapshot(), running).await;
        }
    }
}

async fn index(State(ops): State<Arc<Ops>>) -> Html<String> {
    Html(page::render(&ops.document()))
}

async fn rows(State(ops): State<Arc<Ops>>) -> Html<String> {
    Html(page::rows(&ops.document()))
}

async fn status(State(ops): State<Arc<Ops>>) -> Json<StatusDocument> {
    Json(ops.document())
}

/// Ready once every source answered the last probe and every pipeline has its plugin.
async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let facts = ops.facts.read().unwrap_or_else(|e| e.into_inner()).clone();
    let sources: serde_json::Map<String, serde_json::Value> = facts
        .iter()
        .flat_map(|f| &f.sources)
        .map(|s| (s.source.clone(), json!({"connected": s.up, "error": s.error})))
        .collect();
    let plugins: serde_json::Map<String, serde_json::Value> =
        ops.pipelines.iter().map(|p| (p.name().to_owned(), json!(p.stats().snapshot().plugin))).collect();
    let ready = facts.is_some() && sources.values().all(|s| s["connected"] == true);
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"ready": ready, "sources": sources, "plugins": plugins}))).into_response()
}

/// The address a bound listener ended up on.
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
