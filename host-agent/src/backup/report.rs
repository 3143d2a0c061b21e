//! What backup runs, restores and drills report (per target and per run, with the one-line summaries the agent logs
//! and answers with) and what `ListVms` shows of a VM: plain data. Knows no engine, hypervisor or journal.

use std::path::PathBuf;
use std::time::Duration;

use agent_core::repos::RepoSpec;

use crate::config::{Backend, Mode};

/// What one target got in one backup run.
#[derive(Debug, Clone)]
pub(crate) struct TargetRun {
    pub label: String,
    /// The target's location as its engine reads it.
    pub url: String,
    pub ok: bool,
    /// Why it failed (empty when ok).
    pub error: String,
    /// What the engine reported it stored (0 when failed).
    pub size: u64,
    /// How long its transfer took.
    pub duration: Duration,
    /// It succeeded despite these (retention failed).
    pub warnings: Vec<String>,
}

impl TargetRun {
    pub(super) fn new(t: &RepoSpec) -> TargetRun {
        TargetRun {
            label: t.label.clone(),
            url: t.url(),
            ok: false,
            error: String::new(),
            size: 0,
            duration: Duration::ZERO,
            warnings: Vec::new(),
        }
    }

    pub(super) fn failed(t: &RepoSpec, error: String) -> TargetRun {
        TargetRun { error, ..TargetRun::new(t) }
    }
}

/// What one backup run did.
#[derive(Debug, Clone)]
pub(crate) struct BackupReport {
    pub vm: String,
    pub id: String,
    /// When the run started (Unix seconds; the time its id names).
    pub started_unix: i64,
    pub mode_used: Mode,
    pub downtime: Duration,
    /// How consistent the copy is (file systems frozen by the guest's agent, or crash-consistent and why); empty
    /// when the VM was not running or was shut down for the run.
    pub consistency: String,
    /// The largest size a target reported.
    pub size: u64,
    pub warnings: Vec<String>,
    /// What each target got, in config order.
    pub targets: Vec<TargetRun>,
}

impl BackupReport {
    /// `ok` when every target got the backup, `partial` when some did, `failed` when none did.
    pub(crate) fn status(&self) -> &'static str {
        match self.targets.iter().filter(|t| t.ok).count() {
            n if n == self.targets.len() => "ok",
            0 => "failed",
            _ => "partial",
        }
    }

    /// The failed targets and why, `target `b` failed: …; …`.
    pub(crate) fn failures(&self) -> String {
        let failed = self.targets.iter().filter(|t| !t.ok);
        failed.map(|t| format!("target `{}` failed: {}", t.label, t.error)).collect::<Vec<_>>().join("; ")
    }

    /// The outcome in one line; each target's when there are several.
    pub(crate) fn summary(&self) -> String {
        let warnings =
            if self.warnings.is_empty() { String::new() } else { format!("; warnings: {}", self.warnings.join("; ")) };
        let consistency = if self.consistency.is_empty() { String::new() } else { format!("; {}", self.consistency) };
        let partly = if self.status() == "ok" { "" } else { "partly " };
        let mut s = format!(
            "vm {} {partly}backed up as {} ({} mode, downtime {:.3}s, {} bytes){consistency}{warnings}",
            self.vm,
            self.id,
            self.mode_used.as_str(),
            self.downtime.as_secs_f64(),
            self.size,
        );
        if self.targets.len() > 1 {
            let per: Vec<String> = self
                .targets
                .iter()
                .map(|t| match t.ok {
                    true => format!("`{}` ok ({} bytes in {:.1}s)", t.label, t.size, t.duration.as_secs_f64()),
                    false => format!("`{}` failed: {}", t.label, t.error),
                })
                .collect();
            s.push_str(&format!("; targets: {}", per.join("; ")));
        }
        s
    }
}

/// What one restore did.
#[derive(Debug, Clone)]
pub(crate) struct RestoreReport {
    pub vm: String,
    /// The backup restored.
    pub archive: String,
    /// The label of the target it was read from.
    pub target: String,
    pub to: PathBuf,
    /// Where the bundle that was at `to` went (`--force`).
    pub moved_aside: Option<PathBuf>,
    /// The name the restored VM was started as (`--start`).
    pub started_as: Option<String>,
}

impl RestoreReport {
    /// The outcome in one line.
    pub(crate) fn summary(&self) -> String {
        let mut msg = format!(
            "restored {} of vm {} from target `{}` into {}",
            self.archive,
            self.vm,
            self.target,
            self.to.display()
        );
        if let Some(aside) = &self.moved_aside {
            msg.push_str(&format!("; the previous bundle was moved to {}", aside.display()));
        }
        if let Some(name) = &self.started_as {
            msg.push_str(&format!("; started as {name}"));
        }
        msg
    }
}

/// What one drill did: its restore into scratch space (removed since) and how long it all took.
#[derive(Debug, Clone)]
pub(crate) struct DrillReport {
    pub restore: RestoreReport,
    pub duration: Duration,
}

impl DrillReport {
    /// The outcome in one line.
    pub(crate) fn summary(&self) -> String {
        format!("drill ok in {:.1}s: {}; scratch copy removed", self.duration.as_secs_f64(), self.restore.summary())
    }
}

/// A VM as `ListVms` shows it.
#[derive(Debug, Clone)]
pub(crate) struct VmSummary {
    pub name: String,
    pub backend: Backend,
    pub state: String,
    pub mode: Mode,
    pub engine: String,
    pub storage_encrypted: bool,
    /// Every local target is on an encrypted volume (false when it has none).
    pub target_encrypted: bool,
    pub last_backup_unix: i64,
    /// The targets' labels, in config order.
    pub targets: Vec<String>,
}
