//! `labctl vm …`: list, start/stop/suspend/resume, backup (one or all), backups, restore and drill on the
//! host-agent. One of labctl's gRPC edges: converts replies to rows, shows streamed work through `progress`, and
//! knows nothing of how the agent drives hypervisors or backup engines.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use futures::StreamExt;
use serde::Serialize;
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{JobRef, ListVmsRequest, VmBackupRequest, VmRef, VmRestoreRequest};

use crate::client::{self, Agent, Timeouts};
use crate::inventory::Inventory;
use crate::output::{self, Opts};
use crate::progress;
use crate::table::Table;

/// The step of the host-agent's progress update that closes one VM's backup; its message is the summary.
const FINAL_STEP: &str = "finished";
/// The step that closes a restore (its message is the summary).
const FINAL_RESTORE_STEP: &str = "done";
/// The step that closes a drill (its message is the report; the drill's own restore closes with `done` before it).
const FINAL_DRILL_STEP: &str = "drill";

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// List the VMs with their state, backup mode and engine, and encryption of storage and target.
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
    /// Back up one VM, or every VM with `--all`.
    #[command(after_help = "Example: labctl vm backup services")]
    Backup {
        /// The VM to back up.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Back up every VM of the host-agent's config, one after the other.
        #[arg(long)]
        all: bool,
    },
    /// List the backups of a VM with their downtime.
    #[command(after_help = "Example: labctl vm backups services")]
    Backups {
        /// The VM whose backups to list.
        name: String,
    },
    /// Restore a backup (the latest unless `--archive`) into a directory, check it, optionally start it.
    #[command(after_help = "Example: labctl vm restore services --to /vms/restored/services")]
    Restore {
        /// The VM whose backup to restore.
        name: String,
        /// The backup to restore (an id from `labctl vm backups NAME`).
        #[arg(long)]
        archive: Option<String>,
        /// Where the bundle goes (absolute path on the host); never overwritten without --force.
        #[arg(long)]
        to: PathBuf,
        /// Move an existing bundle at `--to` aside instead of refusing.
        #[arg(long)]
        force: bool,
        /// Start the restored VM.
        #[arg(long)]
        start: bool,
    },
    /// Restore the latest backup into scratch space on the host, check it, and report.
    #[command(after_help = "Example: labctl vm drill services")]
    Drill {
        /// The VM whose latest backup to drill.
        name: String,
    },
    /// Re-attach to a VM's running backup, restore or drill (one left with Ctrl-C) and follow it to its end, as the
    /// command that started it would have.
    #[command(after_help = "Example: labctl vm watch services")]
    Watch {
        /// The VM whose running job to follow.
        name: String,
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

/// The step that closes a job of `kind` (the first part of its id).
fn final_step(kind: &str) -> &'static str {
    match kind {
        "restore" => FINAL_RESTORE_STEP,
        "drill" => FINAL_DRILL_STEP,
        _ => FINAL_STEP,
    }
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
}

#[derive(Debug, Serialize)]
struct BackupRow {
    id: String,
    time_unix: i64,
    downtime_seconds: f64,
    size: u64,
    engine: String,
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

/// Shows a job's progress stream and prints its summaries: on stdout as text, or as the last JSON line
/// `{"summaries": [...]}` with `--json` (after one line per update).
async fn follow(
    agent: &Agent,
    what: &'static str,
    stream: impl futures::Stream<Item = Result<strata_proto::v1::VmProgress, tonic::Status>> + Unpin,
    json: bool,
    final_step: &str,
    on_interrupt: &str,
) -> Result<ExitCode> {
    let summaries = progress::follow(stream, json, final_step, on_interrupt).await.map_err(agent.error(what))?;
    if json {
        println!("{}", serde_json::json!({ "summaries": summaries }));
    } else {
        for line in summaries {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
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
                })
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            let mut t =
                Table::new(["NAME", "BACKEND", "STATE", "MODE", "ENGINE", "DISK ENC", "TARGET ENC", "LAST BACKUP"]);
            for r in &rows {
                t.row([
                    r.name.clone(),
                    r.backend.clone(),
                    r.state.clone(),
                    r.mode.clone(),
                    r.engine.clone(),
                    yes_no(r.storage_encrypted),
                    yes_no(r.target_encrypted),
                    when(r.last_backup_unix),
                ]);
            }
            print!("{t}");
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
        VmCmd::Backup { name, all } => {
            let req = VmBackupRequest { name: name.clone().unwrap_or_default(), all };
            let s = agent.stream("backup", c.backup(req), true).await?;
            follow(&agent, "backup", s, json, FINAL_STEP, &detached("backup", name.as_deref())).await
        }
        VmCmd::Backups { name } => {
            let list = agent.call("list backups", c.list_backups(VmRef { name })).await?.backups;
            let rows: Vec<BackupRow> = list
                .into_iter()
                .map(|b| BackupRow {
                    id: b.id,
                    time_unix: b.time_unix,
                    downtime_seconds: b.downtime_seconds,
                    size: b.size,
                    engine: b.engine,
                })
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            let mut t = Table::new(["ID", "TIME", "DOWNTIME", "SIZE", "ENGINE"]);
            for r in &rows {
                t.row([
                    r.id.clone(),
                    when(r.time_unix),
                    format!("{:.3}s", r.downtime_seconds),
                    r.size.to_string(),
                    r.engine.clone(),
                ]);
            }
            print!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Restore { name, archive, to, force, start } => {
            let detached = detached("restore", Some(&name));
            let req = VmRestoreRequest {
                name,
                archive: archive.unwrap_or_default(),
                to: to.display().to_string(),
                force,
                start,
            };
            let s = agent.stream("restore", c.restore(req), true).await?;
            follow(&agent, "restore", s, json, FINAL_RESTORE_STEP, &detached).await
        }
        VmCmd::Drill { name } => {
            let s = agent.stream("drill", c.drill(VmRef { name: name.clone() }), true).await?;
            follow(&agent, "drill", s, json, FINAL_DRILL_STEP, &detached("drill", Some(&name))).await
        }
        VmCmd::Watch { name } => {
            let mut s = agent.stream("watch", c.watch(JobRef { id: String::new(), name: name.clone() }), true).await?;
            // The job's kind (the first part of its id, on every update) says which step closes it.
            let first = s.next().await.transpose().map_err(agent.error("watch"))?;
            let kind = first.as_ref().map_or("", |p| p.job_id.split('-').next().unwrap_or(""));
            let (step, said) = (final_step(kind), detached(if kind.is_empty() { "job" } else { kind }, Some(&name)));
            let rest = futures::stream::iter(first.map(Ok)).chain(s);
            follow(&agent, "watch", Box::pin(rest), json, step, &said).await
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
    }

    #[test]
    fn dates_render() {
        assert_eq!(when(0), "never");
        assert_eq!(when(1_795_629_427), "2026-11-25 17:57Z");
    }
}
