//! The services-agent library: compose stacks from Git (sync, deploy, lifecycle), state read from Docker's event
//! stream, the hub-and-spoke audit, DNS registration, per-service ZFS snapshot + Borg backups (restore, checks,
//! drills, crash recovery, the host's lease), image updates with rollback and the push-trigger webhook; the config
//! reloads on SIGHUP. `main.rs` is only glue; `run` wires the tasks together (it hands `dns` the gRPC edge's
//! dns-agent client and owns the registration's [`DnsStatus`]).

mod audit;
mod backup;
mod compose;
pub mod compose_keys;
pub mod config;
mod dns;
mod docker;
mod files;
pub mod git;
mod grpc;
mod journal;
mod lease;
mod live;
mod model;
mod mounts;
mod recovery;
mod reload;
mod repos;
mod restore;
mod schedule;
mod secrets;
mod stacks;
mod store;
mod update;
mod verify;
mod webhook;
mod zfs;

use std::sync::{Arc, RwLock};

use agent_core::cli::{Listeners, Shutdown};
use agent_core::grpc::{AgentParts, ServeError};
use agent_core::identity::Role;
use agent_core::telemetry::Metrics;

pub use config::Config;
use stacks::Stacks;

/// The running config, shared by the stacks engine, the jobs and DNS registration; a reload swaps it whole.
pub(crate) type SharedConfig = Arc<arc_swap::ArcSwap<Config>>;

/// The role this agent's certificate must carry.
pub const ROLE: Role = Role::ServicesAgent;

/// How DNS registration is doing, for Status: written by `dns::run`, read by the health check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsStatus {
    /// Names registered by the last successful reconcile.
    pub registered: usize,
    /// Why the last attempt failed; `None` after a success.
    pub error: Option<String>,
    /// False until the first attempt finished.
    pub attempted: bool,
}

impl DnsStatus {
    /// Its part of the Status summary (empty before the first attempt).
    pub fn summary(&self) -> String {
        match &self.error {
            Some(e) => format!("dns names pending: {e}"),
            None if self.attempted => format!("{} dns names", self.registered),
            None => String::new(),
        }
    }
}

/// Runs the agent until `shutdown` fires: the Docker watcher, the sync poller, DNS registration and the gRPC server.
pub async fn run(cfg: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), ServeError> {
    let common = cfg.common.clone();
    let cfg: SharedConfig = Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let state_dir = common.state_dir.clone();
    let stacks = Arc::new(Stacks::open(cfg.clone()).map_err(|e| match e {
        store::StoreError::Open(e) => ServeError::State(e),
        store::StoreError::Sql(source) => {
            ServeError::State(agent_core::state::StateError::Sqlite { path: state_dir.join("services.db"), source })
        }
    })?);
    // Replies such as ListServices span several TCP segments: without TCP_NODELAY, Nagle plus the client's delayed
    // ACK add ~40 ms to each. Linux hands the listener's TCP_NODELAY down to every accepted connection.
    if let Err(e) = socket2::SockRef::from(&listeners.grpc).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the grpc listener");
    }
    let backups = Arc::new(backup::Backups::open(cfg.clone()).map_err(|e| match e {
        journal::JournalError::State(e) => ServeError::State(e),
        journal::JournalError::Sql(source) => {
            ServeError::State(agent_core::state::StateError::Sqlite { path: state_dir.join("services.db"), source })
        }
    })?);
    // Crash repair comes before anything else may start a job; interrupted updates first (backups' recovery would
    // only mark them failed).
    let updates = Arc::new(update::Updates::new(stacks.clone(), backups.clone()));
    let (actions, errors) = updates.recover().await;
    if !actions.is_empty() || !errors.is_empty() {
        tracing::warn!(?actions, ?errors, "update recovery done");
    }
    let recovered = backups.recover().await;
    if !recovered.actions.is_empty() || !recovered.errors.is_empty() {
        tracing::warn!(actions = recovered.actions.len(), errors = recovered.errors.len(), "recovery done");
    }
    let metrics = Metrics::new();
    stacks.metrics.register(&metrics);
    backups.metrics.register(&metrics);

    let watcher = tokio::spawn(docker::watch(
        stacks.live.clone(),
        cfg.load().docker_socket.clone(),
        stacks.metrics.docker_events.clone(),
        stacks.metrics.containers.clone(),
        shutdown.clone(),
    ));
    let poller = tokio::spawn(stacks.clone().poll(shutdown.clone()));
    let dns_status: Arc<RwLock<DnsStatus>> = Arc::default();
    let dns = tokio::spawn(dns::run::<grpc::DnsRemote>(
        cfg.clone(),
        listeners.tls.clone(),
        dns_status.clone(),
        shutdown.clone(),
    ));
    let scheduler = tokio::spawn(schedule::run(backups.clone(), shutdown.clone()));
    let update_scheduler = tokio::spawn(update::schedule(updates.clone(), shutdown.clone()));
    let webhook = start_webhook(&cfg, &stacks, &metrics, &shutdown).await?;
    // SIGHUP (`systemctl reload`) and `Services/Reload` re-read the config file.
    let reloader = Arc::new(reload::Reloader::new(cfg.clone(), stacks.clone(), backups.clone()));
    let on_hup = reloader.clone();
    agent_core::cli::reload_on_sighup(shutdown.clone(), move || {
        if let Err(e) = on_hup.reload() {
            tracing::warn!("reload refused, keeping the running config: {e}");
        }
    });

    // The first look at the engine settles before serving (a missing socket fails at once), so that a Status just
    // after start does not report the engine as "not connected yet".
    for _ in 0..50 {
        if stacks.live.attempted() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut health = agent_core::health::Checks::new();
    let (health_stacks, health_backups) = (stacks.clone(), backups.clone());
    health.add(move |h| health_stacks.health(h));
    if cfg.load().dns_agent.is_some() {
        health.add(move |h| h.summary(dns_status.read().unwrap_or_else(|e| e.into_inner()).summary()));
    }
    health.add(move |h| h.summary(health_backups.summary()));
    let watch = backups.metrics.clone();
    health.add(move |h| watch.check(h));
    let domain = grpc::routes(stacks, backups, updates, reloader);
    let parts = AgentParts { role: ROLE, version: env!("CARGO_PKG_VERSION"), health, domain, metrics };
    let served = agent_core::grpc::run_agent(&common, parts, listeners, shutdown).await;
    // The background tasks stop on the same shutdown; a sync in progress is abandoned (compose is killed on drop). A
    // backup in progress is abandoned too: the journal lets the next start repair it.
    for t in [watcher, poller, dns, scheduler, update_scheduler].into_iter().chain(webhook) {
        t.abort();
    }
    served
}

/// Binds and serves `[stacks.webhook]` when configured (a push wakes the poller); logs `webhook listening on ADDR`.
async fn start_webhook(
    cfg: &SharedConfig,
    stacks: &Arc<Stacks>,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServeError> {
    let Some(w) = cfg.load().stacks.as_ref().and_then(|s| s.webhook.clone()) else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(w.listen).await.map_err(|source| ServeError::Listen {
        what: "webhook",
        addr: w.listen,
        source,
    })?;
    tracing::info!("webhook listening on {}", listener.local_addr().unwrap_or(w.listen));
    let s = stacks.clone();
    let hook = webhook::Webhook {
        cfg: cfg.clone(),
        trigger: Box::new(move || s.request_sync()),
        metrics: webhook::WebhookMetrics::default(),
        limits: webhook::Limits::default(),
    };
    hook.metrics.register(metrics);
    Ok(Some(tokio::spawn(webhook::serve(listener, Arc::new(hook), shutdown.clone()))))
}
