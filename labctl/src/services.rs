//! `labctl services …`: list, lifecycle, logs, sync, audit, image updates (pull), and the backups (backup, archives,
//! history, restore, check, drill) of the services-agent. One of labctl's gRPC edges: converts replies to rows and
//! renders them (table or `--json`), follows streamed jobs with `Agent::follow_job`; knows nothing of how the agent
//! drives compose, ZFS or Borg.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{
    AuditRequest, BackupRequest, HistoryRequest, JobRef, ListFilesRequest, ListServicesRequest, LogsRequest,
    PullRequest, ReloadRequest, RestoreRequest, ServiceRef, SyncRequest,
};

use crate::client::{self, Agent, Timeouts, DEPLOY_TIMEOUT};
use crate::inventory::Inventory;
use crate::output::{self, Opts};
use crate::table::{human, size, utc, Table};

#[derive(Debug, Subcommand)]
pub enum ServicesCmd {
    /// List the services: state, health, image, deployed commit, uptime, restarts, last error.
    #[command(after_help = "Example: labctl services ls")]
    Ls,
    /// Deploy a service from the checked-out repository (it stays up across syncs).
    #[command(after_help = "Example: labctl services up photos")]
    Up {
        /// The service (its stack's name in the stacks repository).
        name: String,
    },
    /// Stop and remove a service's containers (volumes are kept); syncs leave it down until `up`.
    #[command(after_help = "Example: labctl services down photos")]
    Down {
        /// The service (its stack's name in the stacks repository).
        name: String,
    },
    /// Restart a service's containers.
    #[command(after_help = "Example: labctl services restart photos")]
    Restart {
        /// The service (its stack's name in the stacks repository).
        name: String,
    },
    /// Pause a service's containers (they keep their memory; `unpause` resumes them).
    #[command(after_help = "Example: labctl services pause photos")]
    Pause {
        /// The service (its stack's name in the stacks repository).
        name: String,
    },
    /// Unpause a paused service's containers.
    #[command(after_help = "Example: labctl services unpause photos")]
    Unpause {
        /// The service (its stack's name in the stacks repository).
        name: String,
    },
    /// Print a service's logs; `-f` follows them.
    #[command(after_help = "Example: labctl services logs photos -f --tail 20")]
    Logs {
        /// The service (its stack's name in the stacks repository).
        name: String,
        /// Keep printing new lines as they come (until Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each container (0: all).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Fetch the stacks repository now and redeploy the stacks that changed.
    #[command(after_help = "Example: labctl services sync")]
    Sync,
    /// The hub-and-spoke audit: every violation with its container and rule (non-zero exit when any).
    #[command(after_help = "Example: labctl services audit")]
    Audit,
    /// Back up one service now (snapshot, then Borg archive), or every backed-up service with `--all`.
    #[command(
        after_help = "Example: labctl services backup photos\nExample: labctl services backup photos --cancel-on-interrupt"
    )]
    Backup {
        /// The service to back up.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Back up every service that has backup settings.
        #[arg(long)]
        all: bool,
        /// On Ctrl-C, cancel the job (the agent kills its program, undoes as a failure would: containers running
        /// again, no half-restored data; history says `cancelled`), follow it to its end, then exit 1.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Pull a service's images (or every service's with `--all`) and redeploy only the compose services whose image
    /// changed; they must be running and healthy within `healthy_timeout`, else they are rolled back to the images
    /// they ran before. `labctl services history` shows the images old → new.
    #[command(after_help = "Example: labctl services pull photos\nExample: labctl services pull --all")]
    Pull {
        /// The service to update.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Update every service.
        #[arg(long)]
        all: bool,
        /// On Ctrl-C, cancel the job and follow it to its end, then exit 1.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// List a service's Borg archives in one of its repositories: time (UTC), original and deduplicated size.
    #[command(
        after_help = "Example: labctl services archives photos\nExample: labctl services archives photos --repo offsite"
    )]
    Archives {
        /// The service (its stack's name in the stacks repository).
        name: String,
        /// The repository to read, by its label in the agent's config (default: the first reachable, local first).
        #[arg(long, value_name = "LABEL")]
        repo: Option<String>,
    },
    /// List the files an archive holds (the newest unless `--archive`), under PATH when given: type, mode, size,
    /// modification time (UTC). One page at a time; a longer list ends with the command that shows the next page.
    #[command(
        after_help = "Example: labctl services files photos\nExample: labctl services files photos library/2026 --archive photos-20261125T031500Z\nExample: labctl services files photos --page-token 500:photos-20261125T031500Z"
    )]
    Files {
        /// The service.
        name: String,
        /// Only this file or directory and what lies under it (relative to the data's root).
        path: Option<String>,
        /// The archive to read (see `labctl services archives NAME`; default: the newest).
        #[arg(long)]
        archive: Option<String>,
        /// The repository to read, by its label (default: the first reachable, local first).
        #[arg(long, value_name = "LABEL")]
        repo: Option<String>,
        /// Entries per page (default: 500, at most 5000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Where to continue: the token the previous page ended with.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
    },
    /// Past backups, restores, checks and drills: when, duration, downtime, result; a backup's result per repository
    /// on the lines below it.
    #[command(after_help = "Example: labctl services history photos --limit 10")]
    History {
        /// Only this service's (default: every service's).
        name: Option<String>,
        /// At most N entries (default: the agent's).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Restore a service from an archive (the latest unless `--archive`) or a local `--snapshot`.
    #[command(
        after_help = "Example: labctl services restore photos --archive photos-20261125T031500Z\nExample: labctl services restore photos --repo offsite"
    )]
    Restore {
        /// The service to restore.
        name: String,
        /// The repository to restore from, by its label (default: the first reachable, local first).
        #[arg(long, value_name = "LABEL", conflicts_with = "snapshot")]
        repo: Option<String>,
        /// The Borg archive to restore (see `labctl services archives NAME`).
        #[arg(long, conflicts_with = "snapshot")]
        archive: Option<String>,
        /// A local ZFS snapshot to restore instead of an archive.
        #[arg(long)]
        snapshot: Option<String>,
        /// Restore into this directory on the services host instead of the service's own data.
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        /// Only this file or directory (relative to the data's root, as `labctl services files` shows it): in place,
        /// only it is replaced, behind a safety snapshot; with `--to`, it is written under that directory.
        #[arg(long, value_name = "P", conflicts_with_all = ["resume", "abandon"])]
        path: Option<String>,
        /// Finish an interrupted restore that crash recovery held (it could not prove that nothing else wrote the
        /// data since): a new safety snapshot of the data as it is now, then the restore again from its own source.
        #[arg(long, conflicts_with_all = ["archive", "snapshot", "to", "abandon"])]
        resume: bool,
        /// Give up an interrupted restore that crash recovery held: nothing is rolled back, the data stays as it
        /// is, and the service starts (its safety snapshot keeps the data from before that restore).
        #[arg(long, conflicts_with_all = ["archive", "snapshot", "to"])]
        abandon: bool,
        /// On Ctrl-C, cancel the job (the agent kills its program, undoes as a failure would: containers running
        /// again, no half-restored data; history says `cancelled`), follow it to its end, then exit 1.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Check a service's Borg repositories (and archives' data, as configured) now: every one, or `--repo`'s.
    #[command(
        after_help = "Example: labctl services check photos\nExample: labctl services check photos --repo offsite"
    )]
    Check {
        /// The service whose repositories to check.
        name: String,
        /// Only this repository, by its label (default: every repository of the service).
        #[arg(long, value_name = "LABEL")]
        repo: Option<String>,
        /// On Ctrl-C, cancel the job (the agent kills its program, undoes as a failure would: containers running
        /// again, no half-restored data; history says `cancelled`), follow it to its end, then exit 1.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Restore a service's latest archive into scratch space, check it, and report (the live service is untouched).
    #[command(
        after_help = "Example: labctl services drill photos\nExample: labctl services drill photos --repo offsite"
    )]
    Drill {
        /// The service to drill.
        name: String,
        /// The repository to read, by its label in the agent's config (default: the first reachable, local first).
        #[arg(long, value_name = "LABEL")]
        repo: Option<String>,
        /// On Ctrl-C, cancel the job (the agent kills its program, undoes as a failure would: containers running
        /// again, no half-restored data; history says `cancelled`), follow it to its end, then exit 1.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Re-read the agent's config file (an invalid one is refused, the running one kept); says what was applied.
    #[command(after_help = "Example: labctl services reload")]
    Reload,
    /// Forget a stack the sync took down because it left the config (listed `removed`): its record is deleted.
    #[command(after_help = "Example: labctl services ack oldwiki")]
    Ack {
        /// The removed stack.
        name: String,
    },
    /// Re-attach to a service's running backup, restore, check or drill (one left with Ctrl-C) and follow it to its
    /// end, as the command that started it would have.
    #[command(after_help = "Example: labctl services watch photos")]
    Watch {
        /// The service whose running job to follow.
        name: String,
        /// On Ctrl-C, cancel the job (the agent kills its program, undoes as a failure would: containers running
        /// again, no half-restored data; history says `cancelled`), follow it to its end, then exit 1.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
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
struct ArchiveRow {
    name: String,
    time_unix: i64,
    original_size: u64,
    deduplicated_size: u64,
}

#[derive(Debug, Serialize)]
struct HistoryRow {
    service: String,
    kind: String,
    started_unix: i64,
    duration_seconds: f64,
    downtime_seconds: f64,
    result: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    /// A backup's result per repository.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repos: Vec<RepoResultRow>,
    /// An update's images, old → new (old again when it was rolled back).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<ImageRow>,
}

#[derive(Debug, Serialize)]
struct ImageRow {
    service: String,
    image: String,
    old_digest: String,
    new_digest: String,
}

/// An image ID as a history line shows it: its first 12 hex digits.
fn short_id(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    &id[..id.len().min(12)]
}

#[derive(Debug, Serialize)]
struct RepoResultRow {
    label: String,
    url: String,
    result: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    archive: String,
    original_size: u64,
    deduplicated_size: u64,
    duration_seconds: f64,
}

#[derive(Debug, Serialize)]
struct SyncRow {
    commit: String,
    redeployed: Vec<String>,
    errors: std::collections::BTreeMap<String, String>,
}

/// A duration: `4.2s`, `3m7s`, `2h5m`.
fn span(secs: f64) -> String {
    if !secs.is_finite() || secs <= 0.0 {
        return "-".into();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m", s / 3600, s % 3600 / 60)
    }
}

/// Downtime to the millisecond when short (that is what quiescing is judged by).
fn downtime(secs: f64) -> String {
    if secs.is_finite() && secs < 60.0 {
        format!("{:.3}s", secs.max(0.0))
    } else {
        span(secs)
    }
}

fn render_archives(rows: &[ArchiveRow]) -> String {
    let mut t = Table::new(["NAME", "TIME", "ORIGINAL", "DEDUPLICATED"]);
    for a in rows {
        t.row([a.name.clone(), utc(a.time_unix), size(a.original_size), size(a.deduplicated_size)]);
    }
    t.to_string()
}

fn render_history(rows: &[HistoryRow], verbose: bool) -> String {
    let mut t = Table::new(["SERVICE", "KIND", "STARTED", "DURATION", "DOWNTIME", "RESULT", "ERROR"]);
    for h in rows {
        let error = t.error_cell(&format!("{} {} {}", h.service, h.kind, utc(h.started_unix)), &h.error);
        t.row([
            h.service.clone(),
            h.kind.clone(),
            utc(h.started_unix),
            span(h.duration_seconds),
            downtime(h.downtime_seconds),
            h.result.clone(),
            error,
        ]);
        for i in &h.images {
            let change = format!("{} → {}", short_id(&i.old_digest), short_id(&i.new_digest));
            t.row([
                String::new(),
                format!("  {}", i.service),
                String::new(),
                String::new(),
                String::new(),
                change,
                i.image.clone(),
            ]);
        }
        for r in &h.repos {
            let error =
                t.error_cell(&format!("{} {} {} {}", h.service, h.kind, utc(h.started_unix), r.label), &r.error);
            t.row([
                String::new(),
                format!("  {}", r.label),
                String::new(),
                span(r.duration_seconds),
                String::new(),
                r.result.clone(),
                error,
            ]);
        }
    }
    t.render(verbose)
}

/// Follows a backup/restore/check/drill/watch stream with `Agent::follow_job` (its summary on stdout, an error when
/// the stream ends without one: the outcome is unknown); Ctrl-C says how to see the job again.
async fn follow(
    agent: &Agent,
    what: &'static str,
    target: Option<&str>,
    stream: client::FirstWithin<tonic::Streaming<strata_proto::v1::Progress>>,
    json: bool,
    cancel: Option<&ServicesClient<tonic::transport::Channel>>,
) -> Result<ExitCode> {
    let job = if what == "watch" { "job" } else { what };
    let detached = match target {
        Some(name) => format!(
            "the {job} goes on on the services-agent; `labctl services watch {name}` follows it again, \
             `labctl services history {name}` shows its outcome"
        ),
        None => format!("the {job} goes on on the services-agent; `labctl services history` shows its outcome"),
    };
    let cancel = cancel.map(|c| {
        let mut c = c.clone();
        move |job| async move { c.cancel(job).await }
    });
    let on_interrupt = agent.on_interrupt(detached, target, cancel);
    agent.follow_job(what, stream, json, on_interrupt).await
}

/// A service that needs a look: an error, or a state other than running / deliberately down / kept (`unlisted`).
fn troubled(s: &ServiceRow) -> bool {
    !s.error.is_empty() || !matches!(s.state.as_str(), "running" | "down" | "paused" | "unlisted")
}

fn render(rows: &[ServiceRow], verbose: bool) -> String {
    let mut t = Table::new(["NAME", "STATE", "HEALTH", "IMAGE", "COMMIT", "UPTIME", "RESTARTS", "ERROR"]);
    for s in rows {
        let mut images: Vec<&str> = s.containers.iter().map(|c| c.image.as_str()).collect();
        images.dedup();
        let uptime = s.containers.iter().map(|c| c.uptime_seconds).filter(|u| *u > 0).min().unwrap_or(0);
        let restarts: u32 = s.containers.iter().map(|c| c.restarts).sum();
        let error = t.error_cell(&s.name, &s.error);
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
            error,
        ]);
    }
    t.render(verbose)
}

pub async fn run(cmd: ServicesCmd, inv: &Inventory, tls: &TlsMaterial, opts: &Opts) -> Result<ExitCode> {
    let json = opts.json;
    let timeouts = Timeouts::new(opts.timeout);
    let timeouts = match cmd {
        ServicesCmd::Up { .. }
        | ServicesCmd::Down { .. }
        | ServicesCmd::Restart { .. }
        | ServicesCmd::Pause { .. }
        | ServicesCmd::Unpause { .. }
        | ServicesCmd::Sync => timeouts.with_default_call(DEPLOY_TIMEOUT),
        _ => timeouts,
    };
    let agent = &client::open(inv, tls, "services", timeouts).await?;
    let mut c = ServicesClient::new(agent.channel.clone());
    match cmd {
        ServicesCmd::Ls => {
            let rows: Vec<ServiceRow> = agent
                .call("list services", c.list_services(ListServicesRequest {}))
                .await?
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
                output::json(&rows)?;
            } else {
                print!("{}", render(&rows, opts.verbose));
            }
            let troubled: Vec<&str> = rows.iter().filter(|s| troubled(s)).map(|s| s.name.as_str()).collect();
            if !troubled.is_empty() {
                eprintln!("error: needs attention: {}", troubled.join(", "));
                return Ok(ExitCode::FAILURE);
            }
        }
        ServicesCmd::Up { name } => {
            let message =
                agent.call("up", c.up(ServiceRef { name: name.clone(), ..Default::default() })).await?.message;
            let value = serde_json::json!({ "action": "up", "name": name, "message": message });
            output::result(opts, &value, &message)?;
        }
        ServicesCmd::Down { name } => {
            let message =
                agent.call("down", c.down(ServiceRef { name: name.clone(), ..Default::default() })).await?.message;
            let value = serde_json::json!({ "action": "down", "name": name, "message": message });
            output::result(opts, &value, &message)?;
        }
        ServicesCmd::Restart { name } => {
            let message = agent
                .call("restart", c.restart(ServiceRef { name: name.clone(), ..Default::default() }))
                .await?
                .message;
            let value = serde_json::json!({ "action": "restart", "name": name, "message": message });
            output::result(opts, &value, &message)?;
        }
        ServicesCmd::Pause { name } => {
            let message =
                agent.call("pause", c.pause(ServiceRef { name: name.clone(), ..Default::default() })).await?.message;
            let value = serde_json::json!({ "action": "pause", "name": name, "message": message });
            output::result(opts, &value, &message)?;
        }
        ServicesCmd::Unpause { name } => {
            let message = agent
                .call("unpause", c.unpause(ServiceRef { name: name.clone(), ..Default::default() }))
                .await?
                .message;
            let value = serde_json::json!({ "action": "unpause", "name": name, "message": message });
            output::result(opts, &value, &message)?;
        }
        ServicesCmd::Logs { name, follow, tail } => {
            use futures::StreamExt;
            let mut stream = agent.stream("logs", c.logs(LogsRequest { name, follow, tail }), false).await?;
            while let Some(line) = stream.next().await.transpose().map_err(agent.error("logs"))? {
                if json {
                    println!("{}", serde_json::json!({ "container": line.container, "line": line.line }));
                } else {
                    println!("{} | {}", line.container, line.line);
                }
            }
        }
        ServicesCmd::Reload => {
            let r = agent.call("reload", c.reload(ReloadRequest {})).await?;
            output::reloaded(opts, r.changed, &r.message)?;
        }
        ServicesCmd::Ack { name } => {
            let message =
                agent.call("ack", c.acknowledge(ServiceRef { name: name.clone(), ..Default::default() })).await?;
            let message = message.message;
            output::result(opts, &serde_json::json!({ "action": "ack", "name": name, "message": message }), &message)?;
        }
        ServicesCmd::Sync => {
            let r = agent.call("sync", c.sync(SyncRequest {})).await?;
            let row = SyncRow { commit: r.commit, redeployed: r.redeployed, errors: r.errors.into_iter().collect() };
            if json {
                output::json(&row)?;
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
            let rows: Vec<ViolationRow> = agent
                .call("audit", c.audit(AuditRequest {}))
                .await?
                .violations
                .into_iter()
                .map(|v| ViolationRow { container: v.container, rule: v.rule, detail: v.detail })
                .collect();
            if json {
                output::json(&rows)?;
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
        ServicesCmd::Backup { name, all, cancel_on_interrupt } => {
            let req = BackupRequest { name: name.clone().unwrap_or_default(), all };
            let s = agent.stream("backup", c.backup(req), true).await?;
            return follow(agent, "backup", name.as_deref(), s, json, cancel_on_interrupt.then_some(&c)).await;
        }
        ServicesCmd::Pull { name, all, cancel_on_interrupt } => {
            let req = PullRequest { name: name.clone().unwrap_or_default(), all };
            let s = agent.stream("pull", c.pull(req), true).await?;
            return follow(agent, "pull", name.as_deref(), s, json, cancel_on_interrupt.then_some(&c)).await;
        }
        ServicesCmd::Archives { name, repo } => {
            let rows: Vec<ArchiveRow> = agent
                .call("list archives", c.list_archives(ServiceRef { name, repo: repo.unwrap_or_default() }))
                .await?
                .archives
                .into_iter()
                .map(|a| ArchiveRow {
                    name: a.name,
                    time_unix: a.time_unix,
                    original_size: a.original_size,
                    deduplicated_size: a.deduplicated_size,
                })
                .collect();
            if json {
                output::json(&rows)?;
            } else {
                print!("{}", render_archives(&rows));
            }
        }
        ServicesCmd::History { name, limit } => {
            let req = HistoryRequest { name: name.unwrap_or_default(), limit: limit.unwrap_or(0) };
            let rows: Vec<HistoryRow> = agent
                .call("history", c.history(req))
                .await?
                .entries
                .into_iter()
                .map(|h| HistoryRow {
                    service: h.service,
                    kind: h.kind,
                    started_unix: h.started_unix,
                    duration_seconds: h.duration_seconds,
                    downtime_seconds: h.downtime_seconds,
                    result: h.result,
                    error: h.error,
                    images: h
                        .images
                        .into_iter()
                        .map(|i| ImageRow {
                            service: i.service,
                            image: i.image,
                            old_digest: i.old_digest,
                            new_digest: i.new_digest,
                        })
                        .collect(),
                    repos: h
                        .repos
                        .into_iter()
                        .map(|r| RepoResultRow {
                            label: r.label,
                            url: r.url,
                            result: r.result,
                            error: r.error,
                            archive: r.archive,
                            original_size: r.original_size,
                            deduplicated_size: r.deduplicated_size,
                            duration_seconds: r.duration_seconds,
                        })
                        .collect(),
                })
                .collect();
            if json {
                output::json(&rows)?;
            } else {
                print!("{}", render_history(&rows, opts.verbose));
            }
        }
        ServicesCmd::Files { name, path, archive, repo, limit, page_token } => {
            let req = ListFilesRequest {
                name: name.clone(),
                archive: archive.unwrap_or_default(),
                repo: repo.unwrap_or_default(),
                path: path.clone().unwrap_or_default(),
                page_token: page_token.unwrap_or_default(),
                limit: limit.unwrap_or(0),
            };
            let r = agent.call("list files", c.list_files(req)).await?;
            let page = crate::files::Page {
                source: r.archive,
                place: r.repo,
                total: r.total,
                next_page_token: r.next_page_token,
                entries: r.entries.into_iter().map(crate::files::Row::from).collect(),
            };
            let mut next = format!("labctl services files {name}");
            if let Some(p) = &path {
                next.push(' ');
                next.push_str(&agent_core::runner::shell_quote(p));
            }
            crate::files::show(&page, "archive", "repository", json, &next)?;
        }
        ServicesCmd::Restore { name, repo, archive, snapshot, to, path, resume, abandon, cancel_on_interrupt } => {
            let target = name.clone();
            let req = RestoreRequest {
                name,
                archive: archive.unwrap_or_default(),
                snapshot: snapshot.unwrap_or_default(),
                to: to.map(|p| p.display().to_string()).unwrap_or_default(),
                resume,
                abandon,
                repo: repo.unwrap_or_default(),
                path: path.unwrap_or_default(),
            };
            let s = agent.stream("restore", c.restore(req), true).await?;
            return follow(agent, "restore", Some(&target), s, json, cancel_on_interrupt.then_some(&c)).await;
        }
        ServicesCmd::Check { name, repo, cancel_on_interrupt } => {
            let req = ServiceRef { name: name.clone(), repo: repo.unwrap_or_default() };
            let s = agent.stream("check", c.check(req), true).await?;
            return follow(agent, "check", Some(&name), s, json, cancel_on_interrupt.then_some(&c)).await;
        }
        ServicesCmd::Drill { name, repo, cancel_on_interrupt } => {
            let req = ServiceRef { name: name.clone(), repo: repo.unwrap_or_default() };
            let s = agent.stream("drill", c.drill(req), true).await?;
            return follow(agent, "drill", Some(&name), s, json, cancel_on_interrupt.then_some(&c)).await;
        }
        ServicesCmd::Watch { name, cancel_on_interrupt } => {
            let s = agent.stream("watch", c.watch(JobRef { id: String::new(), name: name.clone() }), true).await?;
            return follow(agent, "watch", Some(&name), s, json, cancel_on_interrupt.then_some(&c)).await;
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
        let out = render(&rows, false);
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

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ServicesCmd,
    }

    fn parse(args: &[&str]) -> Result<ServicesCmd, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("services").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn backup_commands_parse() {
        assert!(
            matches!(parse(&["backup", "photos"]).unwrap(), ServicesCmd::Backup { name: Some(n), all: false, cancel_on_interrupt: false } if n == "photos")
        );
        assert!(matches!(
            parse(&["backup", "--all"]).unwrap(),
            ServicesCmd::Backup { name: None, all: true, cancel_on_interrupt: false }
        ));
        assert!(matches!(
            parse(&["backup", "photos", "--cancel-on-interrupt"]).unwrap(),
            ServicesCmd::Backup { cancel_on_interrupt: true, .. }
        ));
        for cmd in ["restore", "check", "drill", "watch"] {
            let c = parse(&[cmd, "photos", "--cancel-on-interrupt"]).unwrap();
            assert!(format!("{c:?}").contains("cancel_on_interrupt: true"), "{c:?}");
        }
        assert!(parse(&["backup"]).is_err());
        assert!(parse(&["backup", "photos", "--all"]).is_err());

        assert!(matches!(parse(&["archives", "photos"]).unwrap(), ServicesCmd::Archives { .. }));
        match parse(&["files", "photos", "library/2026", "--archive", "photos-1", "--limit", "10"]).unwrap() {
            ServicesCmd::Files { name, path, archive, limit, page_token: None, repo: None } => {
                assert_eq!(
                    (name.as_str(), path.as_deref(), archive.as_deref(), limit),
                    ("photos", Some("library/2026"), Some("photos-1"), Some(10))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["files"]).is_err());
        match parse(&["restore", "photos", "--path", "a/b.txt", "--to", "/srv/r"]).unwrap() {
            ServicesCmd::Restore { path, to, .. } => {
                assert_eq!((path.as_deref(), to), (Some("a/b.txt"), Some(PathBuf::from("/srv/r"))));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["restore", "photos", "--resume", "--path", "a"]).is_err());
        assert!(parse(&["archives"]).is_err());

        assert!(matches!(parse(&["history"]).unwrap(), ServicesCmd::History { name: None, limit: None }));
        assert!(matches!(
            parse(&["history", "photos", "--limit", "5"]).unwrap(),
            ServicesCmd::History { name: Some(_), limit: Some(5) }
        ));

        assert!(matches!(
            parse(&["restore", "photos"]).unwrap(),
            ServicesCmd::Restore { archive: None, snapshot: None, to: None, .. }
        ));
        match parse(&["restore", "photos", "--archive", "photos-2026-11-25T03:00", "--to", "/srv/restore"]).unwrap() {
            ServicesCmd::Restore {
                name,
                repo: None,
                archive,
                snapshot,
                to,
                path: None,
                resume: false,
                abandon: false,
                cancel_on_interrupt: false,
            } => {
                assert_eq!(name, "photos");
                assert_eq!(archive.as_deref(), Some("photos-2026-11-25T03:00"));
                assert_eq!(snapshot, None);
                assert_eq!(to, Some(PathBuf::from("/srv/restore")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["restore", "photos", "--snapshot", "strata-1"]).unwrap(),
            ServicesCmd::Restore { snapshot: Some(_), archive: None, .. }
        ));
        let e = parse(&["restore", "photos", "--archive", "a", "--snapshot", "s"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(matches!(
            parse(&["restore", "photos", "--resume"]).unwrap(),
            ServicesCmd::Restore { resume: true, abandon: false, archive: None, .. }
        ));
        assert!(matches!(
            parse(&["restore", "photos", "--abandon"]).unwrap(),
            ServicesCmd::Restore { resume: false, abandon: true, .. }
        ));
        for bad in [&["--resume", "--abandon"][..], &["--resume", "--archive", "a"], &["--abandon", "--to", "/x"]] {
            let e = parse(&[&["restore", "photos"][..], bad].concat()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{bad:?}");
        }

        assert!(matches!(parse(&["check", "photos"]).unwrap(), ServicesCmd::Check { .. }));
        assert!(matches!(parse(&["drill", "photos"]).unwrap(), ServicesCmd::Drill { .. }));
        assert!(parse(&["drill"]).is_err());
    }

    #[test]
    fn archives_table_has_utc_times_and_human_sizes() {
        let rows = [ArchiveRow {
            name: "photos-2026-11-25T17:57:07".into(),
            time_unix: 1_795_629_427,
            original_size: 1_288_490_189,
            deduplicated_size: 1_258_291,
        }];
        assert_eq!(
            render_archives(&rows),
            "NAME                        TIME                  ORIGINAL  DEDUPLICATED\n\
             photos-2026-11-25T17:57:07  2026-11-25T17:57:07Z  1.2 GiB   1.2 MiB\n"
        );
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(json["original_size"], 1_288_490_189u64);
        assert_eq!(json["time_unix"], 1_795_629_427i64);
    }

    #[test]
    fn history_table_shows_duration_downtime_and_error() {
        let rows = [
            HistoryRow {
                service: "photos".into(),
                kind: "backup".into(),
                started_unix: 1_795_629_427,
                duration_seconds: 187.4,
                downtime_seconds: 0.4123,
                result: "partial".into(),
                error: "repository offsite: ssh to backup.example: unreachable".into(),
                repos: vec![
                    RepoResultRow {
                        label: "local".into(),
                        url: "/b/photos".into(),
                        result: "ok".into(),
                        error: String::new(),
                        archive: "photos-20261125T175707Z".into(),
                        original_size: 10,
                        deduplicated_size: 5,
                        duration_seconds: 12.0,
                    },
                    RepoResultRow {
                        label: "offsite".into(),
                        url: "ssh://backup.example/./photos".into(),
                        result: "failed".into(),
                        error: "ssh to backup.example: unreachable".into(),
                        archive: String::new(),
                        original_size: 0,
                        deduplicated_size: 0,
                        duration_seconds: 15.0,
                    },
                ],
                images: Vec::new(),
            },
            HistoryRow {
                service: "wiki".into(),
                kind: "check".into(),
                started_unix: 1_795_629_500,
                duration_seconds: 7500.0,
                downtime_seconds: 0.0,
                result: "failed".into(),
                error: "borg check: exit 1".into(),
                repos: Vec::new(),
                images: Vec::new(),
            },
        ];
        let out = render_history(&rows, false);
        assert_eq!(
            out,
            "SERVICE  KIND       STARTED               DURATION  DOWNTIME  RESULT   ERROR\n\
             photos   backup     2026-11-25T17:57:07Z  3m7s      0.412s    partial  repository offsite: ssh to backup.example: unreachable\n\
             \x20          local                          12.0s               ok\n\
             \x20          offsite                        15.0s               failed   ssh to backup.example: unreachable\n\
             wiki     check      2026-11-25T17:58:20Z  2h5m      0.000s    failed   borg check: exit 1\n"
        );
        assert_eq!(span(4.25), "4.2s");
        assert_eq!(utc(0), "-");
        assert!(serde_json::to_value(&rows[1]).unwrap().get("error").is_some());
        assert!(serde_json::to_value(&rows[1]).unwrap().get("repos").is_none());
        assert_eq!(serde_json::to_value(&rows[0]).unwrap()["repos"][1]["label"], "offsite");
    }

    #[test]
    fn history_table_shows_an_updates_images_old_to_new() {
        let rows = [HistoryRow {
            service: "web".into(),
            kind: "update".into(),
            started_unix: 1_795_629_427,
            duration_seconds: 9.0,
            downtime_seconds: 0.0,
            result: "ok".into(),
            error: String::new(),
            repos: Vec::new(),
            images: vec![ImageRow {
                service: "app".into(),
                image: "reg:5000/lab/web:stable".into(),
                old_digest: "sha256:0123456789abcdef".into(),
                new_digest: "sha256:fedcba9876543210".into(),
            }],
        }];
        let out = render_history(&rows, false);
        assert!(out.contains("  app") && out.contains("0123456789ab → fedcba987654  reg:5000/lab/web:stable"), "{out}");
        assert_eq!(serde_json::to_value(&rows[0]).unwrap()["images"][0]["new_digest"], "sha256:fedcba9876543210");
        assert!(matches!(parse(&["pull", "--all"]).unwrap(), ServicesCmd::Pull { name: None, all: true, .. }));
        assert!(parse(&["pull"]).is_err() && parse(&["pull", "web", "--all"]).is_err());
    }
}
