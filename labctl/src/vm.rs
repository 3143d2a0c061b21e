//! `labctl vm …`: list, start/stop/suspend/resume, backup (one or all), backups, restore and drill on the
//! host-agent. One of labctl's gRPC edges: converts replies to rows, shows streamed work through `progress`, and
//! knows nothing of how the agent drives hypervisors or backup engines.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{ListVmsRequest, VmBackupRequest, VmRef, VmRestoreRequest};

use crate::client::{call_error, channel};
use crate::inventory::Inventory;
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
    Ls,
    /// Start a VM.
    Start { name: String },
    /// Shut a VM down (clean, then hard after its timeout).
    Stop { name: String },
    /// Suspend (VMware) or pause (QEMU) a VM.
    Suspend { name: String },
    /// Resume a suspended, paused or stopped VM.
    Resume { name: String },
    /// Back up one VM, or every VM with `--all`.
    Backup {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// List the backups of a VM with their downtime.
    Backups { name: String },
    /// Restore a backup (the latest unless `--archive`) into a directory, check it, optionally start it.
    Restore {
        name: String,
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
    Drill { name: String },
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

fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
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

pub async fn run(cmd: VmCmd, inv: &Inventory, tls: &TlsMaterial, json: bool) -> Result<ExitCode> {
    let (agent, ch) = channel(inv, tls, "host").await?;
    let mut c = HostClient::new(ch);
    let action = |message: String| {
        println!("{message}");
        Ok(ExitCode::SUCCESS)
    };
    match cmd {
        VmCmd::Ls => {
            let vms = c.list_vms(ListVmsRequest {}).await.map_err(call_error(&agent, "list vms"))?.into_inner().vms;
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
                return print_json(&rows).map(|_| ExitCode::SUCCESS);
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
            action(c.start(VmRef { name }).await.map_err(call_error(&agent, "start"))?.into_inner().message)
        }
        VmCmd::Stop { name } => {
            action(c.stop(VmRef { name }).await.map_err(call_error(&agent, "stop"))?.into_inner().message)
        }
        VmCmd::Suspend { name } => {
            action(c.suspend(VmRef { name }).await.map_err(call_error(&agent, "suspend"))?.into_inner().message)
        }
        VmCmd::Resume { name } => {
            action(c.resume(VmRef { name }).await.map_err(call_error(&agent, "resume"))?.into_inner().message)
        }
        VmCmd::Backup { name, all } => {
            let s = c
                .backup(VmBackupRequest { name: name.unwrap_or_default(), all })
                .await
                .map_err(call_error(&agent, "backup"))?
                .into_inner();
            let detached = "the backup goes on on the host-agent; `labctl vm ls` shows each vm's last backup";
            for line in progress::follow(s, json, FINAL_STEP, detached).await.map_err(call_error(&agent, "backup"))? {
                if !json {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Backups { name } => {
            let list =
                c.list_backups(VmRef { name }).await.map_err(call_error(&agent, "list backups"))?.into_inner().backups;
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
                return print_json(&rows).map(|_| ExitCode::SUCCESS);
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
            let req = VmRestoreRequest {
                name,
                archive: archive.unwrap_or_default(),
                to: to.display().to_string(),
                force,
                start,
            };
            let s = c.restore(req).await.map_err(call_error(&agent, "restore"))?.into_inner();
            let detached = "the restore goes on on the host-agent; its outcome is in the host-agent's log";
            let lines = progress::follow(s, json, FINAL_RESTORE_STEP, detached).await;
            for line in lines.map_err(call_error(&agent, "restore"))? {
                if !json {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Drill { name } => {
            let s = c.drill(VmRef { name: name.clone() }).await.map_err(call_error(&agent, "drill"))?.into_inner();
            let detached = "the drill goes on on the host-agent; its outcome is in the host-agent's log";
            for line in
                progress::follow(s, json, FINAL_DRILL_STEP, detached).await.map_err(call_error(&agent, "drill"))?
            {
                if !json {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
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
