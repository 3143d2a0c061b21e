//! The shared gRPC edge: serves `strata.v1.Agent`, `grpc.health.v1` and an agent's own services over mTLS,
//! behind the authorization layer; and the wire side of long jobs both agents share (a job update as `Progress`,
//! a watcher as a stream, the CANCELLED and registry statuses). The only module of agent-core that touches
//! proto/tonic service types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use strata_proto::v1::agent_server::{Agent, AgentServer};
use strata_proto::v1::{StatusRequest, StatusResponse};
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

use crate::authz::{AuthzLayer, DecisionLabels};
use crate::conn::{self, ServerTls};
use crate::health::{Checks, DegradedGauge};
use crate::identity::Role;
use crate::telemetry::Metrics;
use crate::tls::TlsMaterial;

/// What `strata.v1.Agent/Status` reports.
#[derive(Clone)]
pub struct AgentInfo {
    pub name: String,
    pub role: Role,
    pub version: &'static str,
    pub started: Instant,
    pub tls: TlsMaterial,
    /// The agent's health checks: its summary and the reasons it is degraded.
    pub health: Checks,
}

struct AgentSvc(AgentInfo);

#[tonic::async_trait]
impl Agent for AgentSvc {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let i = &self.0;
        let health = i.health.report();
        Ok(Response::new(StatusResponse {
            name: i.name.clone(),
            role: i.role.to_string(),
            version: i.version.to_string(),
            uptime_seconds: i.started.elapsed().as_secs(),
            cert_not_after_unix: i.tls.not_after,
            identity: i.tls.identity.uri(),
            summary: health.summary_line(),
            degraded: health.reasons().to_vec(),
            backups: health.backups().iter().map(backup_freshness).collect(),
        }))
    }
}

/// A backup's freshness as `Status` lists it (0 for "never" and "not watched for age").
fn backup_freshness(f: &crate::freshness::Freshness) -> strata_proto::v1::BackupFreshness {
    strata_proto::v1::BackupFreshness {
        layer: f.layer.as_str().into(),
        name: f.name.clone(),
        repo: f.repo.clone(),
        state: f.state.as_str().into(),
        last_success_unix: f.record.last_success.unwrap_or(0),
        last_run_unix: f.record.last_run.unwrap_or(0),
        warn_after_seconds: f.warn_after.map_or(0, |w| w.as_secs()),
        failing: f.failing,
        last_error: f.record.last_error.clone().unwrap_or_default(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Material(#[from] crate::tls::TlsError),
    #[error("state directory: {0}")]
    State(crate::state::StateError),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
    #[error("grpc server: {0}")]
    Transport(String),
    /// An agent's own extra listener (e.g. the services-agent's webhook) could not be bound.
    #[error("{what} listener on {addr}: {source}")]
    Listen { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
}

/// What a finished job's summary is on the wire: its outcome in words (one line per target) and its typed facts.
/// Each agent implements it for its own summary type.
pub trait JobSummary {
    fn message(&self) -> String;
    fn to_pb(&self) -> strata_proto::v1::Summary;
}

/// A long job's stream as both agents serve it (`Backup`, `Restore`, `Watch`, …).
pub type ProgressStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<strata_proto::v1::Progress, Status>> + Send>>;

/// One update of a job as the wire carries it, with the job's id: a step, or the last update (step `done`, the
/// outcome in words and the typed summary).
pub fn progress_pb<S: JobSummary>(u: crate::jobs::Update<S>, job_id: &str) -> strata_proto::v1::Progress {
    use crate::jobs::Update;
    let job_id = job_id.to_string();
    match u {
        Update::Progress(p) => strata_proto::v1::Progress {
            job_id,
            step: p.step,
            message: p.message,
            done: p.done,
            total: p.total,
            summary: None,
            bytes: p.bytes,
        },
        Update::Done(d) => strata_proto::v1::Progress {
            job_id,
            step: "done".into(),
            message: d.message(),
            done: 1,
            total: 1,
            summary: Some(d.to_pb()),
            bytes: false,
        },
    }
}

/// A job watcher's updates on the wire.
pub fn progress_stream<S>(w: crate::jobs::Watcher<Result<crate::jobs::Update<S>, Status>>) -> ProgressStream
where
    S: JobSummary + Clone + Send + 'static,
{
    use futures::StreamExt;
    let id = w.id().to_string();
    Box::pin(w.into_stream().map(move |r| r.map(|u| progress_pb(u, &id))))
}

/// A `JobRef` checked: a job id (of the registry's form), or the name of what the job works on (`subject`, such as
/// "vm name", checked by `check_name`), never both; errors are INVALID_ARGUMENT naming the field.
pub fn job_key(
    r: strata_proto::v1::JobRef,
    subject: &str,
    check_name: impl FnOnce(&str) -> Result<String, Status>,
) -> Result<String, Status> {
    match (r.id.is_empty(), r.name.is_empty()) {
        (true, true) => Err(Status::invalid_argument(format!("id: give a job id or a {subject}"))),
        (false, false) => Err(Status::invalid_argument(format!("name: give a job id or a {subject}, not both"))),
        (false, true) if !crate::jobs::valid_id(&r.id) => {
            Err(Status::invalid_argument(format!("id: `{}` is not a job id", r.id.escape_debug())))
        }
        (false, true) => Ok(r.id),
        (true, false) => check_name(&r.name),
    }
}

/// One entry of a backup's listing as the wire carries it (both agents' `ListFiles`).
pub fn file_entry_pb(e: crate::borg::FileEntry) -> strata_proto::v1::FileEntry {
    strata_proto::v1::FileEntry {
        path: e.path,
        r#type: e.kind,
        size: e.size,
        mtime_unix: e.mtime_unix,
        mode: e.mode,
        link_target: e.link_target,
    }
}

/// The error of a job that failed after it was cancelled: CANCELLED, naming the job and what stopped it.
pub fn cancelled(id: &str, e: Status) -> Status {
    Status::cancelled(format!("job {id} cancelled: {}", e.message()))
}

/// A job registry's refusal as a status: NOT_FOUND for no such job, RESOURCE_EXHAUSTED past its bounds.
pub fn jobs_status(e: crate::jobs::JobsError) -> Status {
    use crate::jobs::JobsError;
    let msg = e.to_string();
    match e {
        JobsError::NoJob(_) => Status::not_found(msg),
        JobsError::TooManyJobs(_) | JobsError::TooManyWatchers { .. } => Status::resource_exhausted(msg),
    }
}

/// Serves the agent on an already-bound listener until `shutdown` resolves, then drains in-flight calls.
/// `domain` holds the agent's own services (empty until built); `Agent` and health are added to it; every request
/// passes `AuthzLayer` first. Connections come through [`conn::incoming`] (caps, handshake deadline, CRL reload);
/// HTTP/2 is bounded per connection (streams, header list, reset floods) and idle peers are probed by keep-alive.
pub async fn serve(
    listener: tokio::net::TcpListener,
    info: AgentInfo,
    tls: Arc<ServerTls>,
    domain: RoutesBuilder,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let decisions = Family::<DecisionLabels, Counter>::default();
    metrics.register("authz_decisions", "Authorization decisions by method and outcome", decisions.clone());
    let authz = AuthzLayer::new(&info.tls.identity.domain, decisions);
    let tracker = conn::Tracker::new(conn::Limits::default());
    tracker.register(metrics);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentServer<AgentSvc>>().await;

    let mut routes = domain;
    routes.add_service(AgentServer::new(AgentSvc(info)));
    routes.add_service(health);
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS))
        .concurrency_limit_per_connection(MAX_STREAMS as usize)
        .http2_max_header_list_size(Some(MAX_HEADER_LIST))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(authz)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(conn::incoming(listener, tls, tracker), shutdown)
        .await
        .map_err(|e| ServeError::Transport(crate::tls::error_chain(&e)))
}

/// Concurrent HTTP/2 streams (calls) per connection.
const MAX_STREAMS: u32 = 64;
/// Bytes of request headers (HPACK-decoded) per request.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a peer may open and reset at once (the "rapid reset" flood) before the connection is closed.
const MAX_PENDING_RESETS: usize = 32;

/// What an agent brings to `run_agent`: its role, version, health checks, own services and metrics.
pub struct AgentParts {
    pub role: Role,
    pub version: &'static str,
    pub health: Checks,
    pub domain: RoutesBuilder,
    pub metrics: Metrics,
}

/// Runs an agent's control plane with the TLS material `cli` loaded and verified before binding (its certificate
/// carries `role`): serves metrics and gRPC on the given listeners, and returns after a graceful drain once
/// `shutdown` fires. `[grpc] crl` comes read with the material (`Listeners::crl`) and is read again whenever it changes.
pub async fn run_agent(
    common: &crate::config::CommonConfig,
    parts: AgentParts,
    listeners: crate::cli::Listeners,
    shutdown: crate::cli::Shutdown,
) -> Result<(), ServeError> {
    let AgentParts { role, version, health, domain, metrics } = parts;
    crate::state::ensure_dir(&common.state_dir).map_err(ServeError::State)?;
    let crate::cli::Listeners { grpc, metrics: metrics_listener, tls, crl } = listeners;
    let server_tls = Arc::new(ServerTls::new(tls.clone(), crl)?);
    tracing::info!(identity = %tls.identity, "serving as");
    metrics.register(
        "degraded_reasons",
        "Reasons the agent is degraded (0: healthy), as labctl status lists them",
        DegradedGauge(health.clone()),
    );
    let expiry = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    expiry.set(tls.not_after);
    metrics.register(
        "certificate_expiry_timestamp_seconds",
        "When the certificate the agent serves with expires (notAfter, Unix seconds)",
        expiry,
    );
    let info = AgentInfo { name: tls.identity.name.clone(), role, version, started: Instant::now(), tls, health };
    metrics.register_build_info(role.as_str(), version);
    let metrics_task = tokio::spawn(metrics.clone().serve(metrics_listener, shutdown.clone().wait()));
    serve(grpc, info, server_tls, domain, &metrics, shutdown.wait()).await?;
    match metrics_task.await {
        Ok(r) => r.map_err(ServeError::Metrics),
        Err(e) => Err(ServeError::Transport(format!("metrics task: {e}"))),
    }
}
