//! The services-agent library: compose stacks from Git and per-service ZFS + Borg backups. `main.rs` is only glue.
//! Its domain service is not built yet: calls to it answer UNIMPLEMENTED.

pub mod config;

use std::sync::Arc;

use agent_core::cli::{Listeners, Shutdown};
use agent_core::grpc::AgentParts;
use agent_core::identity::Role;
use agent_core::telemetry::Metrics;

pub use config::Config;

/// The role this agent's certificate must carry.
pub const ROLE: Role = Role::ServicesAgent;

/// Runs the agent until `shutdown` fires.
pub async fn run(cfg: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), agent_core::grpc::ServeError> {
    let summary: agent_core::grpc::Summary = Arc::new(|| "domain service not built yet".to_string());
    let domain = tonic::service::RoutesBuilder::default();
    let parts = AgentParts { role: ROLE, version: env!("CARGO_PKG_VERSION"), summary, domain, metrics: Metrics::new() };
    agent_core::grpc::run_agent(&cfg.common, parts, listeners, shutdown).await
}
