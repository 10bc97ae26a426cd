//! Observability shared by the operator, kam-cdr-bridge and cdr-worker:
//! - [`init_tracing`]: structured logs as JSON (the default in clusters) or text, filtered by a
//!   `RUST_LOG`-style directive;
//! - [`serve`]: one HTTP listener with `/metrics` (Prometheus text format from a
//!   `prometheus-client` registry), `/healthz` (the process is alive) and `/readyz` (the process
//!   can do its job now: 503 with the reason while it cannot);
//! - [`shutdown_signal`] and [`cancel_on_signal`]: graceful shutdown on SIGTERM/SIGINT through a
//!   [`CancellationToken`].

pub mod shutdown;

pub use shutdown::{cancel_on_signal, shutdown_signal};
pub use tokio_util::sync::CancellationToken;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Failure to set up logging or the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    #[error("a global tracing subscriber is already set")]
    AlreadyInitialised,
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per event, for log pipelines.
    #[default]
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// Installs the global tracing subscriber. `filter` is an `EnvFilter` directive such as `info` or
/// `info,nats_cdr_workloads=debug`.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), ObservabilityError> {
    use tracing_subscriber::EnvFilter;
    let env_filter = EnvFilter::try_new(filter).map_err(|e| ObservabilityError::Filter {
        filter: filter.to_owned(),
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|_| ObservabilityError::AlreadyInitialised)
}

/// Readiness of a process: ready, or not ready with a reason shown on `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    not_ready_reason: Mutex<Option<String>>,
}

impl Readiness {
    /// Not ready, with `reason` (the state at start-up).
    pub fn new(reason: &str) -> Self {
        Self {
            not_ready_reason: Mutex::new(Some(reason.to_owned())),
        }
    }

    /// Marks the process ready.
    pub fn set_ready(&self) {
        *self.lock() = None;
    }

    /// Marks the process not ready, saying why.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Some(reason.into());
    }

    /// `None` when ready, else the reason.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.not_ready_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// What the HTTP endpoint serves.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// Readiness reported on `/readyz`.
    pub readiness: Arc<Readiness>,
}

impl Telemetry {
    /// Serves `registry` (with every metric already registered) and `readiness`.
    pub fn new(registry: Registry, readiness: Arc<Readiness>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            readiness,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The router of `/metrics`, `/healthz` and `/readyz`.
pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(telemetry)
}

/// Binds `addr` and serves the endpoints until `shutdown` completes. Returns the bound address
/// (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<
    (
        SocketAddr,
        tokio::task::JoinHandle<Result<(), ObservabilityError>>,
    ),
    ObservabilityError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ObservabilityError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ObservabilityError::Bind { addr, source })?;
    let app = router(telemetry);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ObservabilityError::Serve)
    });
    Ok((bound, task))
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.encode_metrics(),
    )
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    match telemetry.readiness.not_ready_reason() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let mut registry = Registry::default();
        let lines: Counter = Counter::default();
        registry.register("lines_read", "Lines read", lines.clone());
        lines.inc_by(7);
        let readiness = Arc::new(Readiness::new("connecting to NATS"));
        let telemetry = Telemetry::new(registry, readiness.clone());
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            telemetry,
            std::future::pending(),
        )
        .await
        .unwrap();

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("lines_read_total 7"), "{metrics}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(
            not_ready.contains("503") && not_ready.contains("connecting to NATS"),
            "{not_ready}"
        );
        readiness.set_ready();
        assert!(get(addr, "/readyz").await.contains("200 OK"));
    }
}
