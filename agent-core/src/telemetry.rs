//! Logs (human, JSON, or plain on the systemd journal) and the Prometheus text endpoint.
//! Knows tracing and prometheus-client; must not know which metrics an agent defines beyond the shared ones.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human text; plain (no colour, no timestamp) when stderr goes to the systemd journal.
    Auto,
    Human,
    Json,
}

/// The default log filter: info, with hickory's per-query INFO lines (two per DNS query) kept out of the journal.
pub const DEFAULT_FILTER: &str = "info,hickory_server=warn,hickory_net=warn,hickory_proto=warn,hickory_resolver=warn";

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let on_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Auto if on_journal => builder.with_ansi(false).without_time().try_init(),
        LogFormat::Auto | LogFormat::Human => builder.with_ansi(false).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The agent's metric registry, shared by every module that registers metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics { registry: Arc::new(Mutex::new(Registry::with_prefix("strata"))) }
    }

    /// Registers a metric (name without the `strata_` prefix).
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).register(name, help, metric);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }

    /// Serves `GET /metrics` on an already-bound listener until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let m = self.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        m.encode(),
                    )
                }
            }),
        );
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }
}

/// Binds a TCP listener and logs `listening on ADDR` with what it is for; tests read that line.
pub async fn bind(what: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("{what} listening on {}", l.local_addr()?);
    Ok(l)
}
