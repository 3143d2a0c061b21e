//! `labctl services …`: list, lifecycle, logs, sync and audit of the services-agent. One of labctl's gRPC edges:
//! converts replies to rows and renders them (table or `--json`); knows nothing of how the agent drives compose.

use std::process::ExitCode;
use std::time::Duration;

use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{AuditRequest, ListServicesRequest, LogsRequest, ServiceRef, SyncRequest};

use crate::client::{call_error, channel};
use crate::inventory::Inventory;
use crate::table::Table;

/// Deploys (sync, up, restart) may take minutes on a busy host.
const ACTION_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, Subcommand)]
pub enum ServicesCmd {
    /// List the services: state, health, image, deployed commit, uptime, restarts, last error.
    Ls,
    /// Deploy a service from the checked-out repository (it stays up across syncs).
    Up {
        name: String,
    },
    /// Stop and remove a service's containers (volumes are kept); syncs leave it down until `up`.
    Down {
        name: String,
    },
    Restart {
        name: String,
    },
    Pause {
        name: String,
    },
    Unpause {
        name: String,
    },
    /// Print a service's logs; `-f` follows them.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each container (0: all).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Fetch the stacks repository now and redeploy the stacks that changed.
    Sync,
    /// The hub-and-spoke audit: every violation with its container and rule (non-zero exit when any).
    Audit,
}

#[derive(Debug, Serialize)]
struct ContainerRow {
    name: String,
    id: String,
    image: String,
    state: String,
    health: String,
    uptime_seconds: u64,
    restarts: u32,
}

#[derive(Debug, Serialize)]
struct ServiceRow {
    name: String,
    state: String,
    health: String,
    deployed_commit: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    containers: Vec<ContainerRow>,
}

#[derive(Debug, Serialize)]
struct ViolationRow {
    container: String,
    rule: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct SyncRow {
    commit: String,
    redeployed: Vec<String>,
    errors: std::collections::BTreeMap<String, String>,
}

fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `3d4h`, `5m`, `12s`.
fn human(secs: u64) -> String {
    match secs {
        0 => "-".to_string(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A service that needs a look: an error, or a state other than running / deliberately down.
fn troubled(s: &ServiceRow) -> bool {
    !s.error.is_empty() || !matches!(s.state.as_str(), "running" | "down" | "paused")
}

fn render(rows: &[ServiceRow]) -> String {
    let mut t = Table::new(["NAME", "STATE", "HEALTH", "IMAGE", "COMMIT", "UPTIME", "RESTARTS", "ERROR"]);
    for s in rows {
        let mut images: Vec<&str> = s.containers.iter().map(|c| c.image.as_str()).collect();
        images.dedup();
        let uptime = s.containers.iter().map(|c| c.uptime_seconds).filter(|u| *u > 0).min().unwrap_or(0);
        let restarts: u32 = s.containers.iter().map(|c| c.restarts).sum();
        t.row([
            s.name.clone(),
            s.state.clone(),
            s.health.clone(),
            if images.is_empty() { "-".into() } else { images.join(",") },
            if s.deployed_commit.is_empty() {
                "-".into()
            } else {
                s.deployed_commit[..s.deployed_commit.len().min(12)].into()
            },
            human(uptime),
            restarts.to_string(),
            s.error.clone(),
        ]);
    }
    t.to_string()
}

pub async fn run(cmd: ServicesCmd, inv: &Inventory, tls: &TlsMaterial, json: bool) -> Result<ExitCode> {
    let (agent, ch) = match cmd {
        // Writes may run long: connect with a generous per-call timeout.
        ServicesCmd::Up { .. }
        | ServicesCmd::Down { .. }
        | ServicesCmd::Restart { .. }
        | ServicesCmd::Pause { .. }
        | ServicesCmd::Unpause { .. }
        | ServicesCmd::Sync => {
            let agent = inv
                .agent("services")
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("inventory {} has no `services` under [agents]", inv.path.display()))?;
            let ch = tls.connect(&agent.addr, agent.role, ACTION_TIMEOUT).await?;
            (agent, ch)
        }
        _ => channel(inv, tls, "services").await?,
    };
    let mut c = ServicesClient::new(ch);
    let agent = &agent;
    match cmd {
        ServicesCmd::Ls => {
            let rows: Vec<ServiceRow> = c
                .list_services(ListServicesRequest {})
                .await
                .map_err(call_error(agent, "list services"))?
                .into_inner()
                .services
                .into_iter()
                .map(|s| ServiceRow {
                    name: s.name,
                    state: s.state,
                    health: s.health,
                    deployed_commit: s.deployed_commit,
                    error: s.error,
                    containers: s
                        .containers
                        .into_iter()
                        .map(|c| ContainerRow {
                            name: c.name,
                            id: c.id,
                            image: c.image,
                            state: c.state,
                            health: c.health,
                            uptime_seconds: c.uptime_seconds,
                            restarts: c.restarts,
                        })
                        .collect(),
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", render(&rows));
            }
            let troubled: Vec<&str> = rows.iter().filter(|s| troubled(s)).map(|s| s.name.as_str()).collect();
            if !troubled.is_empty() {
                eprintln!("error: needs attention: {}", troubled.join(", "));
                return Ok(ExitCode::FAILURE);
            }
        }
        ServicesCmd::Up { name } => {
            println!("{}", c.up(ServiceRef { name }).await.map_err(call_error(agent, "up"))?.into_inner().message)
        }
        ServicesCmd::Down { name } => {
            println!("{}", c.down(ServiceRef { name }).await.map_err(call_error(agent, "down"))?.into_inner().message)
        }
        ServicesCmd::Restart { name } => {
            println!(
                "{}",
                c.restart(ServiceRef { name }).await.map_err(call_error(agent, "restart"))?.into_inner().message
            )
        }
        ServicesCmd::Pause { name } => {
            println!("{}", c.pause(ServiceRef { name }).await.map_err(call_error(agent, "pause"))?.into_inner().message)
        }
        ServicesCmd::Unpause { name } => {
            println!(
                "{}",
                c.unpause(ServiceRef { name }).await.map_err(call_error(agent, "unpause"))?.into_inner().message
            )
        }
        ServicesCmd::Logs { name, follow, tail } => {
            let mut stream =
                c.logs(LogsRequest { name, follow, tail }).await.map_err(call_error(agent, "logs"))?.into_inner();
            while let Some(line) = stream.message().await.map_err(call_error(agent, "logs"))? {
                if json {
                    println!("{}", serde_json::json!({ "container": line.container, "line": line.line }));
                } else {
                    println!("{} | {}", line.container, line.line);
                }
            }
        }
        ServicesCmd::Sync => {
            let r = c.sync(SyncRequest {}).await.map_err(call_error(agent, "sync"))?.into_inner();
            let row = SyncRow { commit: r.commit, redeployed: r.redeployed, errors: r.errors.into_iter().collect() };
            if json {
                print_json(&row)?;
            } else {
                let commit = if row.commit.is_empty() { "-" } else { &row.commit[..row.commit.len().min(12)] };
                let redeployed =
                    if row.redeployed.is_empty() { "nothing".to_string() } else { row.redeployed.join(", ") };
                println!("synced commit {commit}; redeployed: {redeployed}");
                for (stack, e) in &row.errors {
                    eprintln!("error: {stack}: {e}");
                }
            }
            if !row.errors.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        ServicesCmd::Audit => {
            let rows: Vec<ViolationRow> = c
                .audit(AuditRequest {})
                .await
                .map_err(call_error(agent, "audit"))?
                .into_inner()
                .violations
                .into_iter()
                .map(|v| ViolationRow { container: v.container, rule: v.rule, detail: v.detail })
                .collect();
            if json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("no violations: every spoke is on its own networks and the hub's only");
            } else {
                let mut t = Table::new(["CONTAINER", "RULE", "DETAIL"]);
                for v in &rows {
                    t.row([v.container.clone(), v.rule.clone(), v.detail.clone()]);
                }
                print!("{t}");
            }
            if !rows.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_state_commit_and_error() {
        let rows = [ServiceRow {
            name: "photos".into(),
            state: "unhealthy".into(),
            health: "unhealthy".into(),
            deployed_commit: "9e117e48d2eb54e7898359e3a6253513928c8330".into(),
            error: "stack photos: invalid compose file".into(),
            containers: vec![ContainerRow {
                name: "photos_web_1".into(),
                id: "abc".into(),
                image: "img:1".into(),
                state: "unhealthy".into(),
                health: "unhealthy".into(),
                uptime_seconds: 3700,
                restarts: 2,
            }],
        }];
        let out = render(&rows);
        assert!(
            out.starts_with("NAME    STATE      HEALTH     IMAGE  COMMIT        UPTIME  RESTARTS  ERROR\n"),
            "{out}"
        );
        assert!(
            out.contains("photos  unhealthy  unhealthy  img:1  9e117e48d2eb  1h1m    2         stack photos"),
            "{out}"
        );
        assert!(troubled(&rows[0]));
        assert_eq!(human(59), "59s");
        assert_eq!(human(90000), "1d1h");
    }
}
