//! The `[http]` listener: Prometheus `/metrics`, `/health`, `/ready`, the status
//! page at `/` with its JSON at `/api/status`, the probe loop feeding them, and
//! the read path at `/v1/keys/{key}`.

mod config;
mod page;
pub mod readiness;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::pipeline::stats::StatsSnapshot;
use crate::read::{ReadError, ReadPath};
use crate::source::health::SourceHealth;
use crate::status::{Facts, Probes, save_pipeline};
pub use config::HttpConfig;
use readiness::{LagWatch, Readiness};

/// What the listener watches: the configuration, the pipelines and what each
/// source's runner knows of its source.
pub struct Watched {
    /// The loaded configuration (sources and caches to probe).
    pub config: Config,
    /// The running pipelines.
    pub pipelines: Vec<Arc<Pipeline>>,
    /// Each running source's health.
    pub sources: Vec<Arc<SourceHealth>>,
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

/// What the handlers read: the pipelines' live figures, the last probe and
/// the verdict drawn from both.
struct Ops {
    pipelines: Vec<Arc<Pipeline>>,
    read: Arc<ReadPath>,
    sources: Vec<Arc<SourceHealth>>,
    facts: RwLock<Option<Facts>>,
    readiness: RwLock<Readiness>,
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
    /// Why the pipeline is stuck, when it is.
    pub stuck: Option<String>,
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
    /// Whether the runtime is doing its job, with the reasons when not.
    pub readiness: Readiness,
}

impl Ops {
    fn document(&self) -> StatusDocument {
        let facts = self.facts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let readiness = self.readiness.read().unwrap_or_else(|e| e.into_inner()).clone();
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
                    source_up: source.is_some_and(|s| s.up) && !readiness.failing.contains_key(&config.source),
                    stuck: readiness.stuck.get(p.name()).cloned(),
                    stats: p.stats().snapshot(),
                }
            })
            .collect();
        StatusDocument { now_ms: now_ms(), pipelines, facts, readiness }
    }
}

/// Serves until `shutdown`, probing every `probe_interval`.
pub async fn serve(listener: TcpListener, config: HttpConfig, watched: Watched, shutdown: CancellationToken) {
    let handle = crate::metrics::install();
    let Watched { config: runtime, pipelines, sources } = watched;
    let read = ReadPath::new(pipelines.clone(), runtime.runtime.read.clone());
    let ops = Arc::new(Ops { pipelines, read, sources, facts: RwLock::new(None), readiness: RwLock::default() });
    let probing = tokio::spawn(probe_loop(ops.clone(), config, runtime, shutdown.clone()));
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
        .route("/v1/keys/{*key}", get(read_key))
        .with_state(ops);
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %addr, "http listener started");
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "http listener failed");
    }
    let _ = probing.await;
}

/// Probes the sources and caches every `probe_interval`. Readiness is judged
/// on a tick of its own from the latest facts and the pipelines' live figures,
/// so a probe waiting on an unreachable cache never leaves the verdict stale.
async fn probe_loop(ops: Arc<Ops>, http: HttpConfig, config: Config, shutdown: CancellationToken) {
    let mut probes = match Probes::new(&config) {
        Ok(probes) => probes,
        Err(e) => {
            tracing::error!(error = %e, "cannot probe sources; lag metrics disabled");
            return;
        }
    };
    let judging = tokio::spawn(judge_loop(ops.clone(), http.clone(), shutdown.clone()));
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
            _ = tokio::time::sleep(http.probe_interval) => {}
        }
    }
    let _ = judging.await;
    save_all(&ops, &mut probes, false).await;
}

async fn judge_loop(ops: Arc<Ops>, http: HttpConfig, shutdown: CancellationToken) {
    let mut lag_watch = LagWatch::default();
    let mut reasons = Vec::new();
    while !shutdown.is_cancelled() {
        let facts = ops.facts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let verdict = lag_watch.judge(now_ms(), http.stuck_after, facts.as_ref(), &ops.sources, &ops.pipelines);
        if verdict.reasons != reasons {
            for reason in &verdict.reasons {
                tracing::debug!(%reason, "not ready");
            }
            reasons.clone_from(&verdict.reasons);
        }
        *ops.readiness.write().unwrap_or_else(|e| e.into_inner()) = verdict;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(http.probe_interval) => {}
        }
    }
}

/// Leaves each pipeline's figures, and why it is not ready, in its cache for `evercache status`.
async fn save_all(ops: &Ops, probes: &mut Probes, running: bool) {
    let readiness = ops.readiness.read().unwrap_or_else(|e| e.into_inner()).clone();
    for pipeline in &ops.pipelines {
        let config = pipeline.config();
        let trouble =
            readiness.stuck.get(pipeline.name()).cloned().or_else(|| {
                readiness.failing.get(&config.source).map(|why| format!("source '{}': {why}", config.source))
            });
        if let Some(mut conn) = probes.cache_conn(&config.cache).await {
            save_pipeline(&mut conn, pipeline.name(), &pipeline.stats().snapshot(), running, trouble.as_deref()).await;
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

/// Ready once every source answered the last probe and none has kept failing,
/// and no pipeline is stuck; the body says why not.
async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let facts = ops.facts.read().unwrap_or_else(|e| e.into_inner()).clone();
    let readiness = ops.readiness.read().unwrap_or_else(|e| e.into_inner()).clone();
    let sources: serde_json::Map<String, serde_json::Value> = facts
        .iter()
        .flat_map(|f| &f.sources)
        .map(|s| {
            let health = ops.sources.iter().find(|h| h.source() == s.source).map(|h| h.snapshot());
            let state = json!({
                "connected": s.up,
                "error": s.error,
                "failing": readiness.failing.get(&s.source),
                "failing_since_ms": health.as_ref().and_then(|h| h.failing_since_ms),
                "last_error": health.as_ref().and_then(|h| h.last_error.clone()),
            });
            (s.source.clone(), state)
        })
        .collect();
    let plugins: serde_json::Map<String, serde_json::Value> =
        ops.pipelines.iter().map(|p| (p.name().to_owned(), json!(p.stats().snapshot().plugin))).collect();
    let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "ready": readiness.ready,
        "reasons": readiness.reasons,
        "sources": sources,
        "pipelines": readiness.stuck,
        "plugins": plugins,
    });
    (code, Json(body)).into_response()
}

/// `GET /v1/keys/{key}`: the key's value and metadata, filled first on a miss.
/// 404 when no pipeline owns the key or it holds no value, 502 when the plugin
/// failed, 503 when the cache did, 504 when nobody filled it in time.
async fn read_key(State(ops): State<Arc<Ops>>, Path(key): Path<String>) -> Response {
    match ops.read.get(&key).await {
        Ok(reply) => {
            let code = if reply.cached.found() { StatusCode::OK } else { StatusCode::NOT_FOUND };
            (code, Json(json!(reply))).into_response()
        }
        Err(e) => {
            let code = match &e {
                ReadError::NoOwner { .. } | ReadError::NotFilled { .. } => StatusCode::NOT_FOUND,
                ReadError::Recompute(_) => StatusCode::BAD_GATEWAY,
                ReadError::Cache(_) => StatusCode::SERVICE_UNAVAILABLE,
                ReadError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            };
            if code != StatusCode::NOT_FOUND {
                tracing::warn!(key = %key, error = %e, "read failed");
            }
            (code, Json(json!({"key": key, "error": e.to_string()}))).into_response()
        }
    }
}

/// The address a bound listener ended up on.
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
