//! The shared gRPC edge: serves `strata.v1.Agent`, `grpc.health.v1` and an agent's own services over mTLS,
//! behind the authorization layer. The only module of agent-core that touches proto/tonic service types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use strata_proto::v1::agent_server::{Agent, AgentServer};
use strata_proto::v1::{StatusRequest, StatusResponse};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

use crate::authz::{AuthzLayer, DecisionLabels};
use crate::identity::Role;
use crate::telemetry::Metrics;
use crate::tls::TlsMaterial;

/// A role-specific one-line summary for `Status`, computed on each call.
pub type Summary = Arc<dyn Fn() -> String + Send + Sync>;

/// What `strata.v1.Agent/Status` reports.
#[derive(Clone)]
pub struct AgentInfo {
    pub name: String,
    pub role: Role,
    pub version: &'static str,
    pub started: Instant,
    pub tls: TlsMaterial,
    pub summary: Summary,
}

struct AgentSvc(AgentInfo);

#[tonic::async_trait]
impl Agent for AgentSvc {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let i = &self.0;
        Ok(Response::new(StatusResponse {
            name: i.name.clone(),
            role: i.role.to_string(),
            version: i.version.to_string(),
            uptime_seconds: i.started.elapsed().as_secs(),
            cert_not_after_unix: i.tls.not_after,
            identity: i.tls.identity.uri(),
            summary: (i.summary)(),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Material(#[from] crate::tls::TlsError),
    #[error("{path}: certificate identity {identity} has role {found}, but this is a {expected}")]
    WrongRole { path: std::path::PathBuf, identity: String, found: Role, expected: Role },
    #[error("state directory: {0}")]
    State(crate::state::StateError),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
    #[error("grpc tls configuration: {0}")]
    Tls(String),
    #[error("grpc server: {0}")]
    Transport(String),
}

/// Serves the agent on an already-bound listener until `shutdown` resolves, then drains in-flight calls.
/// `domain` holds the agent's own services (empty until built); `Agent` and health are added to it; every request passes `AuthzLayer` first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    info: AgentInfo,
    domain: RoutesBuilder,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let decisions = Family::<DecisionLabels, Counter>::default();
    metrics.register("authz_decisions", "Authorization decisions by method and outcome", decisions.clone());
    let authz = AuthzLayer::new(&info.tls.identity.domain, decisions);
    let tls = info.tls.server_config();

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentServer<AgentSvc>>().await;

    let mut routes = domain;
    routes.add_service(AgentServer::new(AgentSvc(info)));
    routes.add_service(health);
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| ServeError::Tls(crate::tls::error_chain(&e)))?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(authz)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| ServeError::Transport(crate::tls::error_chain(&e)))
}

/// Accepted connections with TCP_NODELAY set: without it a reply spanning several segments waits for the peer's
/// delayed ACK (≈ 40 ms on Linux).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        Ok(conn)
    })
}

/// What an agent brings to `run_agent`: its role, version, summary, own services and metrics.
pub struct AgentParts {
    pub role: Role,
    pub version: &'static str,
    pub summary: Summary,
    pub domain: RoutesBuilder,
    pub metrics: Metrics,
}

/// Runs an agent's control plane: loads its mTLS material (its certificate must carry `role`), serves metrics and
/// gRPC on the given listeners, and returns after a graceful drain once `shutdown` fires.
pub async fn run_agent(
    common: &crate::config::CommonConfig,
    parts: AgentParts,
    listeners: crate::cli::Listeners,
    shutdown: crate::cli::Shutdown,
) -> Result<(), ServeError> {
    let AgentParts { role, version, summary, domain, metrics } = parts;
    crate::state::ensure_dir(&common.state_dir).map_err(ServeError::State)?;
    let g = &common.grpc;
    let tls = TlsMaterial::load(&g.ca, &g.cert, &g.key)?;
    if tls.identity.role != role {
        return Err(ServeError::WrongRole {
            path: g.cert.clone(),
            identity: tls.identity.uri(),
            found: tls.identity.role,
            expected: role,
        });
    }
    tracing::info!(identity = %tls.identity, "serving as");
    let info = AgentInfo { name: tls.identity.name.clone(), role, version, started: Instant::now(), tls, summary };
    metrics.register_build_info(role.as_str(), version);
    let metrics_task = tokio::spawn(metrics.clone().serve(listeners.metrics, shutdown.clone().wait()));
    serve(listeners.grpc, info, domain, &metrics, shutdown.wait()).await?;
    match metrics_task.await {
        Ok(r) => r.map_err(ServeError::Metrics),
        Err(e) => Err(ServeError::Transport(format!("metrics task: {e}"))),
    }
}
