//! `labctl status`: asks every agent of the inventory in parallel, renders one table (or JSON) and decides the exit
//! code (0 healthy, 2 degraded, 1 unreachable). Knows rows and rendering; the calls themselves are in `client`.

use std::time::Duration;

use agent_core::tls::TlsMaterial;

use crate::client::{self, AgentStatus, BackupFreshness};
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
    let mut out = t.to_string();
    out.push_str(&render_backups(rows, now));
    out
}

/// The backups that need attention (overdue or failing), one row each after the agents: empty when none does.
/// `--json` lists every backup.
fn render_backups(rows: &[Row], now: i64) -> String {
    let mut t = Table::new(["AGENT", "BACKUP", "REPO", "STATE", "LAST SUCCESS", "WARN AFTER", "LAST ERROR"]);
    let mut any = false;
    for r in rows {
        let Some(s) = &r.status else { continue };
        for b in s.backups.iter().filter(|b| b.state == "overdue" || b.state == "failing") {
            any = true;
            let error = if b.last_error.is_empty() { "-".into() } else { t.error_cell(&b.name, &b.last_error) };
            t.row([
                r.agent.clone(),
                format!("{} {}", if b.layer == "host" { "vm" } else { "service" }, b.name),
                b.repo.clone(),
                state_cell(b),
                b.last_success_unix
                    .map_or("never".into(), |t| format!("{} ago", human_duration(now.saturating_sub(t).max(0) as u64))),
                b.warn_after_seconds.map_or("-".into(), human_duration),
                error,
            ]);
        }
    }
    if any {
        format!("\n{t}")
    } else {
        String::new()
    }
}

/// "overdue", "failing", or "overdue, failing" when it is both.
fn state_cell(b: &BackupFreshness) -> String {
    if b.state == "overdue" && b.failing {
        "overdue, failing".into()
    } else {
        b.state.clone()
    }
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
                backups: Vec::new(),
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

    fn backup(layer: &str, name: &str, repo: &str, state: &str, failing: bool, error: &str) -> BackupFreshness {
        BackupFreshness {
            layer: layer.into(),
            name: name.into(),
            repo: repo.into(),
            state: state.into(),
            last_success_unix: (state != "never").then_some(1000),
            last_run_unix: Some(8200),
            warn_after_seconds: Some(5400),
            failing,
            last_error: error.into(),
        }
    }

    #[test]
    fn failing_and_overdue_backups_are_listed_and_make_it_degraded() {
        let reasons = [
            "vm dns: backup overdue (target nas): last success 2h ago, warn after 1h30m".to_string(),
            "service web: backup failing (repo local): borg: repository is read-only".to_string(),
        ];
        let status = |role: &str, backups: Vec<BackupFreshness>, degraded: &[String]| AgentStatus {
            name: "n".into(),
            role: role.into(),
            version: "0.1.0".into(),
            uptime_seconds: 60,
            cert_not_after_unix: 86400 * 30,
            identity: String::new(),
            summary: String::new(),
            health: if degraded.is_empty() { "healthy" } else { "degraded" }.into(),
            degraded: degraded.to_vec(),
            backups,
        };
        let row = |agent: &str, s: AgentStatus| Row {
            agent: agent.into(),
            address: "x".into(),
            status: Some(s),
            error: None,
        };
        let host = row(
            "host",
            status(
                "host-agent",
                vec![
                    backup("host", "dns", "nas", "overdue", true, "ssh: no route"),
                    backup("host", "dns", "usb", "ok", false, ""),
                ],
                &reasons[..1],
            ),
        );
        let svc = row(
            "svc",
            status(
                "services-agent",
                vec![backup("services", "web", "local", "failing", true, "borg: repository is read-only")],
                &reasons[1..],
            ),
        );
        let quiet =
            row("quiet", status("services-agent", vec![backup("services", "wiki", "local", "never", false, "")], &[]));
        let out = render(&[host.clone(), svc.clone(), quiet.clone()], 8200);
        let lines: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("AGENT  BACKUP")).collect();
        assert_eq!(
            lines,
            [
                "AGENT  BACKUP       REPO   STATE             LAST SUCCESS  WARN AFTER  LAST ERROR",
                "host   vm dns       nas    overdue, failing  2h0m ago      1h30m       ssh: no route",
                "svc    service web  local  failing           2h0m ago      1h30m       borg: repository is read-only",
            ],
            "{out}"
        );
        // Only ok or never-run backups: no backup table.
        assert!(!render(std::slice::from_ref(&quiet), 8200).contains("BACKUP"));
        assert_eq!(verdict(&[quiet.clone(), svc.clone()]), (EXIT_DEGRADED, vec!["degraded: svc".to_string()]));
        assert_eq!(verdict(&[host, svc, quiet]).0, EXIT_DEGRADED);

        // --json lists every backup of every agent, times absent when never.
        let json = serde_json::to_value(render_json_row()).unwrap();
        assert_eq!(json["backups"][0]["state"], "never");
        assert_eq!(json["backups"][0]["last_success_unix"], serde_json::Value::Null);
        assert_eq!(json["backups"][0]["warn_after_seconds"], 5400);
        assert!(json["backups"][0].get("last_error").is_none());
    }

    fn render_json_row() -> Row {
        let mut s = backup("services", "wiki", "local", "never", false, "");
        s.last_run_unix = None;
        Row {
            agent: "svc".into(),
            address: "x".into(),
            status: Some(AgentStatus {
                name: "n".into(),
                role: "services-agent".into(),
                version: "0.1.0".into(),
                uptime_seconds: 1,
                cert_not_after_unix: 0,
                identity: String::new(),
                summary: String::new(),
                health: "healthy".into(),
                degraded: Vec::new(),
                backups: vec![s],
            }),
            error: None,
        }
    }
}
