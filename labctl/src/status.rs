//! `labctl status`: asks every agent of the inventory in parallel, renders one table (or JSON) and decides the exit
//! code (0 healthy, 2 degraded, 1 unreachable). Knows rows and rendering; the calls themselves are in `client`.

use std::time::Duration;

use agent_core::tls::TlsMaterial;

use crate::client::{self, AgentStatus};
use crate::inventory::Inventory;
use crate::table::Table;

/// One row: an agent and either its status or the error that kept us from it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub agent: String,
    pub address: String,
    #[serde(flatten)]
    pub status: Option<AgentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    pub fn healthy(&self) -> bool {
        self.error.is_none() && self.status.as_ref().is_some_and(|s| s.health == "healthy")
    }

    /// It answers and serves, but says it cannot do part of its job.
    pub fn degraded(&self) -> bool {
        self.error.is_none() && self.status.as_ref().is_some_and(|s| s.health == "degraded")
    }
}

/// Exit code of `labctl status` when every agent is healthy.
pub const EXIT_HEALTHY: u8 = 0;
/// Exit code when an agent is unreachable (or not serving): it wins over degraded.
pub const EXIT_UNREACHABLE: u8 = 1;
/// Exit code when every agent answered and at least one is degraded.
pub const EXIT_DEGRADED: u8 = 2;

/// The exit code of `labctl status` and the lines for stderr saying which agents made it so.
pub fn verdict(rows: &[Row]) -> (u8, Vec<String>) {
    let agents =
        |f: &dyn Fn(&Row) -> bool| -> Vec<&str> { rows.iter().filter(|r| f(r)).map(|r| r.agent.as_str()).collect() };
    let unreachable = agents(&|r| !r.healthy() && !r.degraded());
    let degraded = agents(&|r| r.degraded());
    let mut lines = Vec::new();
    if !unreachable.is_empty() {
        lines.push(format!("error: not healthy: {}", unreachable.join(", ")));
    }
    if !degraded.is_empty() {
        lines.push(format!("degraded: {}", degraded.join(", ")));
    }
    let code = match (unreachable.is_empty(), degraded.is_empty()) {
        (false, _) => EXIT_UNREACHABLE,
        (true, false) => EXIT_DEGRADED,
        (true, true) => EXIT_HEALTHY,
    };
    (code, lines)
}

pub async fn collect(inv: &Inventory, tls: &TlsMaterial, timeout: Duration) -> Vec<Row> {
    let calls = inv.agents.iter().map(|a| async move {
        let r = client::status(tls, a, timeout).await;
        let (status, error) = match r {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        Row { agent: a.key.to_string(), address: a.addr.clone(), status, error }
    });
    futures::future::join_all(calls).await
}

/// Renders rows as an aligned text table; `now` is Unix seconds (for certificate days left).
pub fn render(rows: &[Row], now: i64) -> String {
    let mut t = Table::new(["AGENT", "ROLE", "NAME", "VERSION", "UPTIME", "CERT EXPIRES", "HEALTH"]);
    for r in rows {
        match (&r.status, &r.error) {
            (Some(s), _) => t.row([
                r.agent.clone(),
                s.role.clone(),
                s.name.clone(),
                s.version.clone(),
                human_duration(s.uptime_seconds),
                expiry(s.cert_not_after_unix, now),
                health_cell(s),
            ]),
            (None, e) => {
                let e = e.clone().unwrap_or_default();
                let dash = || "-".to_string();
                t.row([r.agent.clone(), dash(), dash(), dash(), dash(), dash(), format!("error: {e}")])
            }
        }
    }
    t.to_string()
}

/// "healthy", or "degraded: REASON; REASON" (the reasons in full: the column is the last one).
fn health_cell(s: &AgentStatus) -> String {
    if s.degraded.is_empty() {
        s.health.clone()
    } else {
        format!("{}: {}", s.health, s.degraded.join("; "))
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn expiry(not_after: i64, now: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_else(|_| "?".into());
    let days = (not_after - now).div_euclid(86400);
    if not_after < now {
        format!("{date} (expired)")
    } else {
        format!("{date} ({days}d)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_and_errors() {
        let ok = Row {
            agent: "dns".into(),
            address: "https://127.0.0.1:1".into(),
            status: Some(AgentStatus {
                name: "dns1".into(),
                role: "dns-agent".into(),
                version: "0.1.0".into(),
                uptime_seconds: 3725,
                cert_not_after_unix: 86400 * 30,
                identity: "spiffe://lab/dns-agent/dns1".into(),
                summary: String::new(),
                health: "healthy".into(),
                degraded: Vec::new(),
            }),
            error: None,
        };
        let bad = Row { agent: "host".into(), address: "x".into(), status: None, error: Some("refused".into()) };
        let mut sick = ok.clone();
        sick.agent = "svc".into();
        if let Some(s) = sick.status.as_mut() {
            s.health = "degraded".into();
            s.degraded = vec!["docker: cannot reach the engine".into(), "stack web: missing".into()];
        }
        let out = render(&[ok.clone(), bad.clone(), sick.clone()], 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "AGENT  ROLE       NAME  VERSION  UPTIME  CERT EXPIRES      HEALTH");
        assert_eq!(lines[1], "dns    dns-agent  dns1  0.1.0    1h2m    1970-01-31 (30d)  healthy");
        assert_eq!(lines[2], "host   -          -     -        -       -                 error: refused");
        assert_eq!(
            lines[3],
            "svc    dns-agent  dns1  0.1.0    1h2m    1970-01-31 (30d)  \
             degraded: docker: cannot reach the engine; stack web: missing"
        );
        assert!(ok.healthy() && !bad.healthy() && !sick.healthy());
        assert!(sick.degraded() && !ok.degraded() && !bad.degraded());

        // Exit codes: unreachable (1) wins over degraded (2); 0 only when all are healthy.
        assert_eq!(verdict(std::slice::from_ref(&ok)), (EXIT_HEALTHY, vec![]));
        assert_eq!(verdict(&[ok.clone(), sick.clone()]), (EXIT_DEGRADED, vec!["degraded: svc".to_string()]));
        assert_eq!(
            verdict(&[sick, bad, ok]),
            (EXIT_UNREACHABLE, vec!["error: not healthy: host".to_string(), "degraded: svc".to_string()])
        );
    }
}
