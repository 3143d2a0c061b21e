//! `labctl vm …`: list, start/stop/suspend/resume, backup (one or all), backups, history, restore and drill on the
//! host-agent (the reads take `--target LABEL`). One of labctl's gRPC edges: converts replies to rows, follows streamed jobs with
//! `Agent::follow_job`, and knows nothing of how the agent drives hypervisors or backup engines.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use futures::StreamExt;
use serde::Serialize;
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{
    JobRef, ListVmsRequest, ReloadRequest, VmBackupRequest, VmBackupsRequest, VmDrillRequest, VmFilesRequest,
    VmHistoryRequest, VmRef, VmRestoreRequest,
};

use crate::client::{self, Agent, Timeouts};
use crate::inventory::Inventory;
use crate::output::{self, Opts};
use crate::progress;
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Re-read the host-agent's config file (an invalid one is refused and the old one keeps serving; a running
    /// backup finishes under the settings it started with).
    #[command(after_help = "Example: labctl vm reload")]
    Reload,
    /// List the VMs with their state, backup mode and engine, targets, and encryption of storage and local targets.
    #[command(after_help = "Example: labctl vm ls")]
    Ls,
    /// Start a VM.
    #[command(after_help = "Example: labctl vm start services")]
    Start {
        /// The VM, as named in the host-agent's config.
        name: String,
    },
    /// Shut a VM down (clean, then hard after its timeout).
    #[command(after_help = "Example: labctl vm stop services")]
    Stop {
        /// The VM, as named in the host-agent's config.
        name: String,
    },
    /// Suspend (VMware) or pause (QEMU) a VM.
    #[command(after_help = "Example: labctl vm suspend services")]
    Suspend {
        /// The VM, as named in the host-agent's config.
        name: String,
    },
    /// Resume a suspended, paused or stopped VM.
    #[command(after_help = "Example: labctl vm resume services")]
    Resume {
        /// The VM, as named in the host-agent's config.
        name: String,
    },
    /// Back up one VM to every one of its targets (one quiesce for all), or every VM with `--all`. A target that
    /// fails does not stop the others: the run is then partial, exit 1, naming the target and why.
    #[command(
        after_help = "Example: labctl vm backup services\nExample: labctl vm backup services --cancel-on-interrupt"
    )]
    Backup {
        /// The VM to back up.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Back up every VM of the host-agent's config, one after the other.
        #[arg(long)]
        all: bool,
        /// On Ctrl-C, cancel the job (the agent kills its program, resumes the VM as a failure would, and records
        /// it as cancelled) and follow it to its end, then exit 1; without it Ctrl-C leaves the job running.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// List the backups of a VM on one of its targets with their downtime.
    #[command(
        after_help = "Example: labctl vm backups services\nExample: labctl vm backups services --target offsite"
    )]
    Backups {
        /// The VM whose backups to list.
        name: String,
        /// The target to list (its label); default: the first reachable one, local ones first.
        #[arg(long, value_name = "LABEL")]
        target: Option<String>,
    },
    /// List the files a VM backup holds (the newest unless `--archive`): type, mode, size, modification time (UTC).
    /// Borg targets only (an rsync target's backup is a plain directory on the target; Time Machine's are browsed
    /// with `tmutil`). One page at a time; a longer list ends with the command that shows the next page.
    #[command(
        after_help = "Example: labctl vm files services\nExample: labctl vm files services --target offsite --archive services-20261125T031500Z"
    )]
    Files {
        /// The VM.
        name: String,
        /// The target to read (its label); default: the first reachable one that has the backup, local ones first.
        #[arg(long, value_name = "LABEL")]
        target: Option<String>,
        /// The backup to list (see `labctl vm backups NAME`; default: the newest).
        #[arg(long, value_name = "ID")]
        archive: Option<String>,
        /// Entries per page (default: 500, at most 5000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Where to continue: the token the previous page ended with.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
    },
    /// Past backup runs, one row per run and target: when, id, result of the target and of the run, sizes,
    /// downtime, error.
    #[command(after_help = "Example: labctl vm history services\nExample: labctl vm history --target offsite")]
    History {
        /// Only this VM's (default: every VM's).
        name: Option<String>,
        /// Only this target's rows (its label).
        #[arg(long, value_name = "LABEL")]
        target: Option<String>,
    },
    /// Restore a backup (the latest unless `--archive`) into a directory, check it, optionally start it.
    #[command(after_help = "Example: labctl vm restore services --to /vms/restored/services\n\
                      Example: labctl vm restore services --target offsite --to /vms/restored/services")]
    Restore {
        /// The VM whose backup to restore.
        name: String,
        /// The backup to restore (an id from `labctl vm backups NAME`).
        #[arg(long)]
        archive: Option<String>,
        /// The target to read it from (its label); default: the first reachable one that has it, local ones first.
        #[arg(long, value_name = "LABEL")]
        target: Option<String>,
        /// Where the bundle goes (absolute path on the host); never overwritten without --force.
        #[arg(long)]
        to: PathBuf,
        /// Move an existing bundle at `--to` aside instead of refusing.
        #[arg(long)]
        force: bool,
        /// Start the restored VM.
        #[arg(long)]
        start: bool,
        /// On Ctrl-C, cancel the job (the agent kills its program, resumes the VM as a failure would, and records
        /// it as cancelled) and follow it to its end, then exit 1; without it Ctrl-C leaves the job running.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Restore the latest backup into scratch space on the host, check it, and report.
    #[command(after_help = "Example: labctl vm drill services\nExample: labctl vm drill services --target offsite")]
    Drill {
        /// The VM whose latest backup to drill.
        name: String,
        /// The target to read it from (its label); default: the first reachable one with a backup, local ones first.
        #[arg(long, value_name = "LABEL")]
        target: Option<String>,
        /// On Ctrl-C, cancel the job (the agent kills its program, resumes the VM as a failure would, and records
        /// it as cancelled) and follow it to its end, then exit 1; without it Ctrl-C leaves the job running.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Re-attach to a VM's running backup, restore or drill (one left with Ctrl-C) and follow it to its end, as the
    /// command that started it would have.
    #[command(after_help = "Example: labctl vm watch services")]
    Watch {
        /// The VM whose running job to follow.
        name: String,
        /// On Ctrl-C, cancel the job (the agent kills its program, resumes the VM as a failure would, and records
        /// it as cancelled) and follow it to its end, then exit 1; without it Ctrl-C leaves the job running.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
}

/// What Ctrl-C says about a `what` job on `name` (None: several VMs) and where its outcome shows.
fn detached(what: &str, name: Option<&str>) -> String {
    let outcome = match what {
        "backup" => "`labctl vm ls` shows each vm's last backup",
        _ => "its outcome is in the host-agent's log",
    };
    match name {
        Some(n) => format!("the {what} goes on on the host-agent; `labctl vm watch {n}` follows it again, {outcome}"),
        None => format!("the {what} goes on on the host-agent; {outcome}"),
    }
}

/// What Ctrl-C does to a job on `name` (None: several VMs): detach with `detached`, or, with `cancel`, send Cancel
/// for the job (`Agent::on_interrupt`).
fn on_interrupt<'a>(
    agent: &'a Agent,
    c: &HostClient<tonic::transport::Channel>,
    name: Option<&str>,
    detached: String,
    cancel: bool,
) -> progress::OnInterrupt<'a> {
    let mut c = c.clone();
    agent.on_interrupt(detached, name, cancel.then_some(move |job| async move { c.cancel(job).await }))
}

#[derive(Debug, Serialize)]
struct VmRow {
    name: String,
    backend: String,
    state: String,
    mode: String,
    engine: String,
    storage_encrypted: bool,
    target_encrypted: bool,
    last_backup_unix: i64,
    targets: Vec<String>,
}

#[derive(Debug, Serialize)]
struct BackupRow {
    id: String,
    time_unix: i64,
    downtime_seconds: f64,
    size: u64,
    engine: String,
    target: String,
}

#[derive(Debug, Serialize)]
struct HistoryRow {
    vm: String,
    id: String,
    target: String,
    url: String,
    time_unix: i64,
    mode: String,
    downtime_seconds: f64,
    duration_seconds: f64,
    size: u64,
    /// This target's result: `ok` or `failed`.
    result: String,
    /// The run's: `ok` (every target), `partial`, `failed`.
    run: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
}

fn render_history(rows: &[HistoryRow], verbose: bool) -> String {
    let mut t = Table::new(["VM", "TIME", "ID", "TARGET", "RESULT", "RUN", "DOWNTIME", "DURATION", "SIZE", "MESSAGE"]);
    for h in rows {
        let message = t.error_cell(&format!("{} {} {}", h.vm, h.id, h.target), &h.message);
        t.row([
            h.vm.clone(),
            when(h.time_unix),
            h.id.clone(),
            h.target.clone(),
            h.result.clone(),
            h.run.clone(),
            format!("{:.3}s", h.downtime_seconds),
            format!("{:.1}s", h.duration_seconds),
            h.size.to_string(),
            message,
        ]);
    }
    t.render(verbose)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn when(unix: i64) -> String {
    if unix <= 0 {
        return "never".into();
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| {
            format!("{:04}-{:02}-{:02} {:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
        })
        .unwrap_or_default()
}

pub async fn run(cmd: VmCmd, inv: &Inventory, tls: &TlsMaterial, opts: &Opts) -> Result<ExitCode> {
    let json = opts.json;
    let agent = client::open(inv, tls, "host", Timeouts::new(opts.timeout)).await?;
    let mut c = HostClient::new(agent.channel.clone());
    let action = |verb: &str, name: String, message: String| {
        let value = serde_json::json!({ "action": verb, "name": name, "message": message });
        output::result(opts, &value, &message).map(|()| ExitCode::SUCCESS)
    };
    match cmd {
        VmCmd::Ls => {
            let vms = agent.call("list vms", c.list_vms(ListVmsRequest {})).await?.vms;
            let rows: Vec<VmRow> = vms
                .into_iter()
                .map(|v| VmRow {
                    name: v.name,
                    backend: v.backend,
                    state: v.state,
                    mode: v.mode,
                    engine: v.engine,
                    storage_encrypted: v.storage_encrypted,
                    target_encrypted: v.target_encrypted,
                    last_backup_unix: v.last_backup_unix,
                    targets: v.targets,
                })
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            let mut t = Table::new([
                "NAME",
                "BACKEND",
                "STATE",
                "MODE",
                "ENGINE",
                "TARGETS",
                "DISK ENC",
                "TARGET ENC",
                "LAST BACKUP",
            ]);
            for r in &rows {
                t.row([
                    r.name.clone(),
                    r.backend.clone(),
                    r.state.clone(),
                    r.mode.clone(),
                    r.engine.clone(),
                    r.targets.join(","),
                    yes_no(r.storage_encrypted),
                    yes_no(r.target_encrypted),
                    when(r.last_backup_unix),
                ]);
            }
            print!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Reload => {
            let r = agent.call("reload", c.reload(ReloadRequest {})).await?;
            output::reloaded(opts, r.changed, &r.message)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Start { name } => {
            let message = agent.call("start", c.start(VmRef { name: name.clone() })).await?.message;
            action("start", name, message)
        }
        VmCmd::Stop { name } => {
            let message = agent.call("stop", c.stop(VmRef { name: name.clone() })).await?.message;
            action("stop", name, message)
        }
        VmCmd::Suspend { name } => {
            let message = agent.call("suspend", c.suspend(VmRef { name: name.clone() })).await?.message;
            action("suspend", name, message)
        }
        VmCmd::Resume { name } => {
            let message = agent.call("resume", c.resume(VmRef { name: name.clone() })).await?.message;
            action("resume", name, message)
        }
        VmCmd::Backup { name, all, cancel_on_interrupt } => {
            let req = VmBackupRequest { name: name.clone().unwrap_or_default(), all };
            let s = agent.stream("backup", c.backup(req), true).await?;
            let said = detached("backup", name.as_deref());
            let ctrl_c = on_interrupt(&agent, &c, name.as_deref(), said, cancel_on_interrupt);
            agent.follow_job("backup", s, json, ctrl_c).await
        }
        VmCmd::Files { name, target, archive, limit, page_token } => {
            let req = VmFilesRequest {
                name: name.clone(),
                target: target.clone().unwrap_or_default(),
                archive: archive.unwrap_or_default(),
                page_token: page_token.unwrap_or_default(),
                limit: limit.unwrap_or(0),
            };
            let r = agent.call("list files", c.list_files(req)).await?;
            let page = crate::files::Page {
                source: r.archive,
                place: r.target,
                total: r.total,
                next_page_token: r.next_page_token,
                entries: r.entries.into_iter().map(crate::files::Row::from).collect(),
            };
            let mut next = format!("labctl vm files {name}");
            if let Some(t) = &target {
                next.push_str(" --target ");
                next.push_str(&agent_core::runner::shell_quote(t));
            }
            crate::files::show(&page, "backup", "target", json, &next).map(|()| ExitCode::SUCCESS)
        }
        VmCmd::Backups { name, target } => {
            let req = VmBackupsRequest { name, target: target.unwrap_or_default() };
            let list = agent.call("list backups", c.list_backups(req)).await?.backups;
            let rows: Vec<BackupRow> = list
                .into_iter()
                .map(|b| BackupRow {
                    id: b.id,
                    time_unix: b.time_unix,
                    downtime_seconds: b.downtime_seconds,
                    size: b.size,
                    engine: b.engine,
                    target: b.target,
                })
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            let mut t = Table::new(["ID", "TIME", "DOWNTIME", "SIZE", "ENGINE", "TARGET"]);
            for r in &rows {
                t.row([
                    r.id.clone(),
                    when(r.time_unix),
                    format!("{:.3}s", r.downtime_seconds),
                    r.size.to_string(),
                    r.engine.clone(),
                    r.target.clone(),
                ]);
            }
            print!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::History { name, target } => {
            let req = VmHistoryRequest { name: name.unwrap_or_default(), target: target.unwrap_or_default() };
            let entries = agent.call("history", c.history(req)).await?.entries;
            let rows: Vec<HistoryRow> = entries
                .into_iter()
                .map(|h| HistoryRow {
                    vm: h.vm,
                    id: h.id,
                    target: h.target,
                    url: h.url,
                    time_unix: h.time_unix,
                    mode: h.mode,
                    downtime_seconds: h.downtime_seconds,
                    duration_seconds: h.duration_seconds,
                    size: h.size,
                    result: if h.ok { "ok" } else { "failed" }.into(),
                    run: h.run_status,
                    message: h.message,
                })
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            print!("{}", render_history(&rows, opts.verbose));
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Restore { name, archive, target, to, force, start, cancel_on_interrupt } => {
            let ctrl_c = on_interrupt(&agent, &c, Some(&name), detached("restore", Some(&name)), cancel_on_interrupt);
            let req = VmRestoreRequest {
                name,
                archive: archive.unwrap_or_default(),
                to: to.display().to_string(),
                force,
                start,
                target: target.unwrap_or_default(),
            };
            let s = agent.stream("restore", c.restore(req), true).await?;
            agent.follow_job("restore", s, json, ctrl_c).await
        }
        VmCmd::Drill { name, target, cancel_on_interrupt } => {
            let req = VmDrillRequest { name: name.clone(), target: target.unwrap_or_default() };
            let s = agent.stream("drill", c.drill(req), true).await?;
            let ctrl_c = on_interrupt(&agent, &c, Some(&name), detached("drill", Some(&name)), cancel_on_interrupt);
            agent.follow_job("drill", s, json, ctrl_c).await
        }
        VmCmd::Watch { name, cancel_on_interrupt } => {
            let mut s = agent.stream("watch", c.watch(JobRef { id: String::new(), name: name.clone() }), true).await?;
            // The job's kind (the first part of its id, on every update) says where its outcome shows.
            let first = s.next().await.transpose().map_err(agent.error("watch"))?;
            let kind = first.as_ref().map_or("", |p| p.job_id.split('-').next().unwrap_or(""));
            let said = detached(if kind.is_empty() { "job" } else { kind }, Some(&name));
            let rest = futures::stream::iter(first.map(Ok)).chain(s);
            let ctrl_c = on_interrupt(&agent, &c, Some(&name), said, cancel_on_interrupt);
            agent.follow_job("watch", Box::pin(rest), json, ctrl_c).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: VmCmd,
    }

    #[test]
    fn commands_parse() {
        let c = Cli::try_parse_from(["vm", "restore", "lab", "--to", "/r/lab", "--force"]).unwrap();
        assert!(matches!(c.cmd, VmCmd::Restore { force: true, start: false, archive: None, .. }));
        assert!(matches!(Cli::try_parse_from(["vm", "backup", "--all"]).unwrap().cmd, VmCmd::Backup { all: true, .. }));
        assert!(Cli::try_parse_from(["vm", "backup"]).is_err());
        assert!(Cli::try_parse_from(["vm", "backup", "lab", "--all"]).is_err());
        let c = Cli::try_parse_from(["vm", "restore", "lab", "--target", "offsite", "--to", "/r/lab"]).unwrap();
        assert!(matches!(c.cmd, VmCmd::Restore { target: Some(t), .. } if t == "offsite"));
        let c = Cli::try_parse_from(["vm", "drill", "lab", "--target", "offsite"]).unwrap();
        assert!(matches!(c.cmd, VmCmd::Drill { target: Some(t), .. } if t == "offsite"));
        let c = Cli::try_parse_from(["vm", "backups", "lab", "--target", "local"]).unwrap();
        assert!(matches!(c.cmd, VmCmd::Backups { target: Some(t), .. } if t == "local"));
        let c = Cli::try_parse_from(["vm", "files", "lab", "--archive", "lab-1", "--limit", "50"]).unwrap();
        assert!(matches!(c.cmd, VmCmd::Files { archive: Some(a), limit: Some(50), target: None, .. } if a == "lab-1"));
        assert!(Cli::try_parse_from(["vm", "files"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["vm", "history"]).unwrap().cmd,
            VmCmd::History { name: None, target: None }
        ));
    }

    #[test]
    fn dates_render() {
        assert_eq!(when(0), "never");
        assert_eq!(when(1_795_629_427), "2026-11-25 17:57Z");
    }
}
