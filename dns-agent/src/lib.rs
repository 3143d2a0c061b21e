//! The dns-agent library: DNS for the whole lab on an embedded hickory-server (local zones, dynamic records over
//! gRPC, blocklists, forwarding), wired together by `run`. `main.rs` is only glue; no module here parses argv.

mod blocklist;
pub mod config;
mod doh;
mod dot;
mod encrypted;
mod forward;
pub mod fuzz;
mod grpc;
mod guard;
mod handler;
mod metrics;
mod querylog;
mod records;
mod scope;
mod secondary;
mod server;
mod service;
mod signed;
mod store;
mod tcp;
mod tsig;
mod udp;
mod wire;
mod xfr;
mod zones;

use std::time::Duration;

use agent_core::cli::{Listeners, Shutdown};
use agent_core::grpc::AgentParts;
use agent_core::identity::Role;
use agent_core::telemetry::Metrics;

pub use config::Config;
pub use server::TLS_KEY_CREDENTIAL;

/// The role this agent's certificate must carry.
pub const ROLE: Role = Role::DnsAgent;
/// How often the cache and blocklist size gauges are updated.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error(transparent)]
    Tls(#[from] server::TlsFileError),
    #[error("dns server: {0}")]
    Dns(String),
    #[error(transparent)]
    Serve(#[from] agent_core::grpc::ServeError),
}

/// Runs the agent until `shutdown` fires: local zones are served as soon as the DNS sockets are bound (before any
/// blocklist or upstream is reached); blocklists load in the background; SIGHUP reloads the config.
pub async fn run(cfg: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
    let registry = Metrics::new();
    let dns_metrics = metrics::DnsMetrics::new(&registry);
    let listen = cfg.dns.listen.clone();
    let dns = service::Dns::new(cfg, dns_metrics)?;

    if listen.is_empty() {
        tracing::warn!("no [dns] listen addresses in the config: serving gRPC and metrics only");
    }
    let bound = server::bind_all(&listen)?;
    let encrypted = bind_encrypted(&dns.config().dns)?;
    let mut dns_server = server::serve(bound, encrypted, handler::Handler::new(dns.clone()))
        .map_err(|e| RunError::Dns(format!("cannot register sockets: {e}")))?;
    tracing::info!(summary = dns.summary(), "dns serving");
    tracing::info!("dns clients: {}", dns.guard.policy().describe());
    dns.notify_all();

    dns.blocklists.spawn_refresh_loop(shutdown.clone().wait());
    dns.spawn_gauges(GAUGE_INTERVAL, shutdown.clone());
    dns.spawn_secondaries(shutdown.clone());
    let reloading = dns.clone();
    agent_core::cli::reload_on_sighup(shutdown.clone(), move || match reloading.reload() {
        Ok(o) => tracing::info!(changed = o.changed, "{}", o.message),
        Err(e) => tracing::warn!("reload refused, keeping the running config: {e}"),
    });

    let health_dns = dns.clone();
    let mut health = agent_core::health::Checks::new();
    health.add(move |h| health_dns.health(h));
    let domain = grpc::DnsGrpc::routes(dns.clone());
    let parts = AgentParts { role: ROLE, version: env!("CARGO_PKG_VERSION"), health, domain, metrics: registry };
    let served = agent_core::grpc::run_agent(&dns.config().common, parts, listeners, shutdown).await;

    if !listen.is_empty() {
        dns_server.shutdown().await;
    }
    served.map_err(RunError::from)
}

/// Loads the DoT/DoH certificate and binds their listeners, when the config has any.
fn bind_encrypted(cfg: &config::DnsSection) -> Result<Option<server::Encrypted>, RunError> {
    let Some(files) = cfg.tls.as_ref().filter(|_| !(cfg.tls_listen.is_empty() && cfg.https_listen.is_empty())) else {
        return Ok(None);
    };
    let certs = server::load_certs(files)?;
    let tls =
        cfg.tls_listen.iter().map(|a| server::bind_encrypted(*a, "tls", "dns.tls_listen")).collect::<Result<_, _>>()?;
    let https = cfg
        .https_listen
        .iter()
        .map(|a| server::bind_encrypted(*a, "https", "dns.https_listen"))
        .collect::<Result<_, _>>()?;
    Ok(Some(server::Encrypted { tls, https, certs }))
}
