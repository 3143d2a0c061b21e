//! labctl's gRPC edge: connects to agents over mTLS (checking each one's role) and converts replies to plain structs.
//! The only labctl module that touches proto/tonic types.

use std::time::Duration;

use agent_core::tls::{error_chain, TlsMaterial};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::StatusRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use tonic::transport::Channel;

use crate::inventory::{AgentAddr, Inventory};

/// What an agent says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentStatus {
    pub name: String,
    pub role: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub cert_not_after_unix: i64,
    pub identity: String,
    pub summary: String,
    /// healthy, degraded (with `degraded` listing why), not serving, unknown.
    pub health: String,
    /// Why the agent is degraded, one reason per line; empty when healthy.
    pub degraded: Vec<String>,
}

/// For `map_err`: a failed call of `what` on `agent`, as a one-line error.
pub fn call_error<'a>(agent: &'a AgentAddr, what: &'static str) -> impl Fn(tonic::Status) -> anyhow::Error + 'a {
    move |s| anyhow::anyhow!(status_error(agent, what, &s))
}

/// Explains a failed call in one line, naming the agent.
pub fn status_error(agent: &AgentAddr, what: &str, s: &tonic::Status) -> String {
    let mut msg = format!("{what} on {} ({}): {}", agent.key, agent.addr, s.code().description());
    if !s.message().is_empty() {
        msg.push_str(": ");
        msg.push_str(s.message());
    }
    if let Some(src) = std::error::Error::source(s) {
        for part in error_chain(src).split(": ") {
            if !msg.contains(part) {
                msg.push_str(": ");
                msg.push_str(part);
            }
        }
    }
    // TLS 1.3 completes the client's side of the handshake before the agent judges our certificate, so a refusal
    // shows up on the first call as an alert (UnknownCA, BadCertificate, CertificateExpired, DecryptError for a
    // look-alike CA) or as a connection closed under us.
    let refused =
        ["UnknownCA", "BadCertificate", "CertificateExpired", "DecryptError", "broken pipe", "connection reset"];
    if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled)
        && refused.iter().any(|r| msg.contains(r))
    {
        msg.push_str(
            " (the agent closed the connection: is our client certificate signed by its lab ca and not expired?)",
        );
    }
    msg
}

/// Connects to the inventory's agent `key` (host, dns, services), checking that it serves with the expected role.
pub async fn channel(inv: &Inventory, tls: &TlsMaterial, key: &str) -> anyhow::Result<(AgentAddr, Channel)> {
    let agent = inv
        .agent(key)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("inventory {} has no `{key}` under [agents]", inv.path.display()))?;
    let ch = tls.connect(&agent.addr, agent.role, CALL_TIMEOUT).await?;
    Ok((agent, ch))
}

/// Timeout for one call of a read or write command (long-running work streams progress instead).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks one agent for its status and health.
pub async fn status(tls: &TlsMaterial, agent: &AgentAddr, timeout: Duration) -> Result<AgentStatus, String> {
    let channel = tls.connect(&agent.addr, agent.role, timeout).await.map_err(|e| e.to_string())?;
    let s = AgentClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .map_err(|s| status_error(agent, "status", &s))?
        .into_inner();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| status_error(agent, "health check", &s))?
        .into_inner();
    let health = match ServingStatus::try_from(health.status) {
        Ok(ServingStatus::Serving) if !s.degraded.is_empty() => "degraded",
        Ok(ServingStatus::Serving) => "healthy",
        Ok(ServingStatus::NotServing) => "not serving",
        _ => "unknown",
    };
    Ok(AgentStatus {
        name: s.name,
        role: s.role,
        version: s.version,
        uptime_seconds: s.uptime_seconds,
        cert_not_after_unix: s.cert_not_after_unix,
        identity: s.identity,
        summary: s.summary,
        health: health.to_string(),
        degraded: s.degraded,
    })
}
