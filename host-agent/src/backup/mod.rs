//! Orchestration: one backup run (guest lease, guest file systems frozen through the guest's agent when one answers,
//! ONE quiesce, clone or not, resume, thaw, then every target's transfer in
//! parallel, each target's retention, one history row per target) with the VM's downtime measured from quiesce to
//! resume (`quiesce` takes the VM down: exclusive groups, pause or its fallback); VM actions; crash recovery from the
//! journal (`restore` reads backups back). A target that fails does not fail the others: the run is then `partial`,
//! naming it and why. Knows the order of steps and the promise that the VM is left running on every failure path;
//! must not know proto/tonic types (the grpc module converts), any program's command line, a VM bundle's files (its
//! hypervisor backend knows them: `Hypervisor::is_bundle`, `check_bundle`) or which engines exist
//! (`engine::ENGINES`).

mod freeze;
mod notify;
mod quiesce;
mod report;
mod restore;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::clock::now_unix;
use agent_core::jobs::Reporter;
use agent_core::repos::RepoSpec;

use crate::clone::{self, CloneError};
use crate::config::{Config, Mode, VmConfig};
use crate::encryption;
use crate::engine::{self, Engine, EngineError};
use crate::hypervisor::{self, HvError, Hypervisor, Quiesced, VmState};
use crate::journal::{step, Journal, JournalError};
use quiesce::Quiesce;

pub(crate) use report::{BackupReport, DrillReport, RestoreReport, TargetRun, VmSummary};

/// One history row: what one target got in one run (the journal's).
pub(crate) use crate::journal::HistoryRow;

/// How long a guest lease lasts: long enough for the pause, short enough to expire if we die.
pub(crate) const LEASE_SECONDS: u32 = 600;

/// Asks a services-agent guest to prepare for / recover from a host backup (implemented over mTLS by `grpc`).
pub(crate) trait Guest: Send + Sync {
    /// Returns the lease id.
    fn prepare<'a>(&'a self, url: &'a str, lease_seconds: u32) -> GuestFuture<'a, String>;
    fn release<'a>(&'a self, url: &'a str, lease_id: &'a str) -> GuestFuture<'a, ()>;
}

pub(crate) type GuestFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HostError {
    #[error("no vm `{0}` in the config")]
    UnknownVm(String),
    #[error("vm {0}: another operation is running on it")]
    Busy(String),
    #[error(transparent)]
    Hv(#[from] HvError),
    #[error("vm {vm}: {source}")]
    Engine { vm: String, source: EngineError },
    #[error("vm {vm}: {source}")]
    Clone { vm: String, source: CloneError },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("vm {vm}: backup target {target} is not encrypted ({detail}) and require_encrypted_target is set")]
    Unencrypted { vm: String, target: String, detail: String },
    #[error("vm {vm}: guest {url} did not prepare for the backup and require_guest is set: {message}")]
    Guest { vm: String, url: String, message: String },
    #[error("vm {vm}: restore target {}: {why}", path.display())]
    Refused { vm: String, path: PathBuf, why: String },
    #[error("vm {vm}: {} already exists: restore with --force to move it aside", path.display())]
    Exists { vm: String, path: PathBuf },
    #[error("vm {vm}: restored bundle {} fails its check: {message}", path.display())]
    Check { vm: String, path: PathBuf, message: String },
    #[error("vm {vm}: no backups")]
    NoBackups { vm: String },
    #[error(
        "vm {vm}: its engine `{engine}` does not list a backup's files: only borg does (an rsync target's backup is a \
         plain directory on the target, browse it there; Time Machine's are browsed with `tmutil`)"
    )]
    NoFileList { vm: String, engine: &'static str },
    #[error("vm {vm}: {message}")]
    Other { vm: String, message: String },
    #[error("vm {0}: not backed up: the job was cancelled before its turn")]
    Cancelled(String),
    #[error("vm {vm}: no target `{label}` (its targets: {labels})")]
    NoTarget { vm: String, label: String, labels: String },
    /// Some targets got the backup, others not.
    #[error("vm {}: partly backed up as {}: {}", report.vm, report.id, report.failures())]
    Partial { report: Box<BackupReport> },
    /// No target got the backup (a VM with several targets).
    #[error("vm {vm}: backup {id} failed on every target: {message}")]
    AllTargets { vm: String, id: String, message: String },
}

/// A target's error without the `vm NAME: ` its run's message already says.
pub(super) fn target_error(vm: &str, e: &HostError) -> String {
    let s = e.to_string();
    s.strip_prefix(&format!("vm {vm}: ")).map(str::to_string).unwrap_or(s)
}

/// What a run backs up: the bundle itself, or its clone (made afresh at one path, mtimes kept: `Engine::create_clone`).
#[derive(Clone, Copy)]
enum Source<'a> {
    Bundle(&'a Path),
    Clone(&'a Path),
}

/// What a run's quiesce part did (the targets' outcomes are apart).
struct RunInfo {
    mode_used: Mode,
    downtime: Duration,
    consistency: String,
    warnings: Vec<String>,
}

/// The host agent's domain: the configured VMs and what can be done to them.
pub(crate) struct Host {
    /// The running config, swapped whole by a reload; an operation reads one snapshot (a backup copies its VM's
    /// settings at its start and finishes under them).
    cfg: arc_swap::ArcSwap<Config>,
    journal: Journal,
    guest: Arc<dyn Guest>,
    busy: Mutex<HashSet<String>>,
    /// Sees every backup run's report (ok, partial or failed).
    observer: Box<dyn Fn(&BackupReport) + Send + Sync>,
    /// The last look at each configured VM through its hypervisor (name → why it could not be seen).
    unseen: Mutex<std::collections::BTreeMap<String, String>>,
    /// One lock per `exclusive` group, held from quiesce to resume: two VMs of a group are never down together.
    /// Made on first use, so a group a reload adds has its lock.
    groups: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Released on drop: the VM is free for the next operation.
struct BusyGuard<'a> {
    host: &'a Host,
    vm: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.host.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.vm);
    }
}

async fn send(tx: &Reporter, step: &str, done: u64, total: u64, message: impl Into<String>) {
    let message = message.into();
    tracing::info!(step, "{message}");
    tx.progress(step, done, total, message).await;
}

impl Host {
    pub(crate) fn new(cfg: Config, guest: Arc<dyn Guest>) -> Result<Host, HostError> {
        let journal = Journal::open(&cfg.common.state_dir)?;
        Ok(Host {
            groups: Mutex::default(),
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            journal,
            guest,
            busy: Mutex::new(HashSet::new()),
            observer: Box::new(|_| {}),
            unseen: Mutex::default(),
        })
    }

    /// Calls `f` after every backup run, whatever its outcome (the agent feeds its metrics from each target's).
    pub(crate) fn on_backup(mut self, f: impl Fn(&BackupReport) + Send + Sync + 'static) -> Self {
        self.observer = Box::new(f);
        self
    }

    /// When the last run that reached target `target` of `vm` started; `None` when never, or unreadable (logged).
    pub(crate) fn last_success(&self, vm: &str, target: &str) -> Option<i64> {
        self.journal.last_target_ok(vm, target).unwrap_or_else(|e| {
            tracing::error!(vm, target, error = %e, "cannot read the last successful backup");
            None
        })
    }

    /// The backup history (one row per run and target), oldest first: of `vm`, or of every VM.
    pub(crate) fn history(&self, vm: Option<&str>) -> Result<Vec<HistoryRow>, HostError> {
        if let Some(v) = vm {
            self.vm(v)?;
        }
        Ok(match vm {
            Some(v) => self.journal.history(v)?,
            None => self.journal.history_all()?,
        })
    }

    /// The running config (one snapshot: a reload during the caller's operation does not change what it reads).
    pub(crate) fn config(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    /// Makes `new` the running config (a reload, validated in full by the caller). Operations already running keep
    /// the snapshot they read.
    pub(crate) fn replace_config(&self, new: Config) {
        self.cfg.store(Arc::new(new));
    }

    /// A copy of `name`'s settings from the running config.
    fn vm(&self, name: &str) -> Result<VmConfig, HostError> {
        self.config().vm(name).cloned().ok_or_else(|| HostError::UnknownVm(name.to_string()))
    }

    /// The lock of exclusive group `group`.
    pub(super) fn group_lock(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).entry(group.to_string()).or_default().clone()
    }

    fn hv(&self, vm: &VmConfig) -> Arc<dyn Hypervisor> {
        hypervisor::for_vm(vm, &self.config().common.state_dir)
    }

    /// The engine writing `vm`'s backups to its target `t`.
    fn engine(&self, vm: &VmConfig, t: &RepoSpec) -> Arc<dyn Engine> {
        vm.engine.open(&engine::Spec {
            vm: &vm.name,
            target: t,
            passphrase: &vm.passphrase,
            bundle: &vm.path,
            tmutil: &vm.tmutil,
        })
    }

    /// [`Host::engine`], once the target's ssh files are as they must be (a private key only its owner reads, a
    /// `known_hosts` that lists the host: checked before every run, files change after the config is read) and its
    /// repository is the one recorded at its first use (a borg repository's id: another repository put at the same
    /// place is refused, never written to nor restored from). When a check fails, nothing is sent.
    async fn checked_engine(&self, vm: &VmConfig, t: &RepoSpec) -> Result<Arc<dyn Engine>, HostError> {
        let refused = |message: String| HostError::Engine {
            vm: vm.name.clone(),
            source: EngineError::Failed { target: engine::target_name(t), message },
        };
        t.check_files().map_err(refused)?;
        let engine = self.engine(vm, t);
        let id = engine.repository_id().await.map_err(|source| HostError::Engine { vm: vm.name.clone(), source })?;
        if let Some(id) = id {
            let known = self.journal.repo_id(&vm.name, &t.url()).map_err(|e| refused(e.to_string()))?;
            match known {
                Some(k) if k != id => {
                    return Err(refused(format!(
                        "the repository is not the one backed up to before (its id is {id}, {k} was recorded): \
                         refused, as another repository may have been put in its place"
                    )))
                }
                Some(_) => {}
                None => self.journal.set_repo_id(&vm.name, &t.url(), &id).map_err(|e| refused(e.to_string()))?,
            }
        }
        Ok(engine)
    }

    fn claim(&self, vm: &str) -> Result<BusyGuard<'_>, HostError> {
        if !self.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(vm.to_string()) {
            return Err(HostError::Busy(vm.to_string()));
        }
        Ok(BusyGuard { host: self, vm: vm.to_string() })
    }

    /// Undoes what a crashed run left: resumes every VM the journal says we quiesced, deletes our clones, then
    /// thaws the guests whose file systems we froze (after the resumes: a paused guest's agent cannot answer).
    /// Returns one line per action taken; failures are logged and left open for the next start.
    pub(crate) async fn recover(&self) -> Vec<String> {
        let mut done = Vec::new();
        let mut open = match self.journal.open_steps() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "recovery: cannot read the journal");
                return done;
            }
        };
        // Stable: the resumes and clones in their order, then the thaws.
        open.sort_by_key(|s| s.step == step::FREEZE);
        for s in open {
            let result: Result<String, String> = match s.step.as_str() {
                step::QUIESCE => match (self.config().vm(&s.vm), Quiesced::parse(&s.detail)) {
                    (Some(vm), Some(how)) => match self.hv(vm).resume(how).await {
                        Ok(()) => Ok(format!("resumed vm {} ({} by a crashed run)", s.vm, s.detail)),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => Err(format!("vm {} ({}) is no longer configured: left as it is", s.vm, s.detail)),
                },
                step::FREEZE => match self.config().vm(&s.vm) {
                    Some(vm) => match self.hv(vm).thaw_guest().await {
                        Ok(Some(n)) => {
                            Ok(format!("thawed the file systems of vm {} ({n}) frozen by a crashed run", s.vm))
                        }
                        Ok(None) => Ok(format!("vm {}: no guest agent to thaw (frozen by a crashed run)", s.vm)),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err(format!("vm {} is no longer configured: its guest left as it is", s.vm)),
                },
                step::CLONE => {
                    let p = PathBuf::from(&s.detail);
                    match clone::remove_clone(&p).await {
                        Ok(()) => Ok(format!("removed clone {} of a crashed run", p.display())),
                        Err(e) => Err(e.to_string()),
                    }
                }
                _ => continue,
            };
            match result {
                Ok(line) => {
                    tracing::warn!("recovery: {line}");
                    if let Err(e) = self.journal.done(s.id) {
                        tracing::error!(error = %e, "recovery: cannot mark the journal");
                    }
                    done.push(line);
                }
                Err(e) => tracing::error!("recovery of {} {} failed: {e}", s.step, s.detail),
            }
        }
        if let Err(e) = self.journal.close_stale() {
            tracing::error!(error = %e, "recovery: cannot close stale journal rows");
        }
        done
    }

    /// Asks each configured VM's hypervisor for its state and keeps which VMs it could not see (for
    /// [`Host::unseen_vms`]).
    pub(crate) async fn probe_vms(&self) {
        for vm in &self.config().vms {
            let seen = self.hv(vm).state().await;
            self.record_seen(&vm.name, &seen);
        }
    }

    fn record_seen(&self, vm: &str, seen: &Result<VmState, HvError>) {
        let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        match seen {
            Ok(_) => unseen.remove(vm),
            Err(e) => unseen.insert(vm.to_string(), e.to_string()),
        };
    }

    /// One reason per configured VM its hypervisor could not see at the last look ("vm dns: bundle … does not
    /// exist"); the hypervisor's errors already name the VM. A VM a reload dropped is no longer a reason.
    pub(crate) fn unseen_vms(&self) -> Vec<String> {
        let cfg = self.config();
        let unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        unseen.iter().filter(|(vm, _)| cfg.vm(vm).is_some()).map(|(_, why)| why.clone()).collect()
    }

    /// Probes now and every `every`, forever (the caller aborts the task).
    pub(crate) async fn watch_vms(self: Arc<Self>, every: Duration) {
        loop {
            self.probe_vms().await;
            tokio::time::sleep(every).await;
        }
    }

    pub(crate) async fn list_vms(&self) -> Vec<VmSummary> {
        let mut out = Vec::new();
        for vm in &self.config().vms {
            let seen = self.hv(vm).state().await;
            self.record_seen(&vm.name, &seen);
            let state = match seen {
                Ok(s) => s.as_str().to_string(),
                Err(e) => format!("error: {e}"),
            };
            let enc = |p: PathBuf| async move { encryption::check(&p).await.map(|e| e.encrypted).unwrap_or(false) };
            let mut target_encrypted = vm.targets.iter().any(|t| t.location.is_local());
            for t in &vm.targets {
                if let agent_core::repos::Location::Local(p) = &t.location {
                    target_encrypted &= enc(p.clone()).await;
                }
            }
            let last =
                self.journal.history(&vm.name).ok().and_then(|h| h.iter().rev().find(|r| r.ok).map(|r| r.time_unix));
            out.push(VmSummary {
                name: vm.name.clone(),
                backend: vm.backend,
                state,
                mode: vm.mode,
                engine: vm.engine.as_str().to_string(),
                storage_encrypted: enc(vm.path.clone()).await,
                target_encrypted,
                last_backup_unix: last.unwrap_or(0),
                targets: vm.targets.iter().map(|t| t.label.clone()).collect(),
            });
        }
        out
    }

    pub(crate) async fn start(&self, name: &str) -> Result<String, HostError> {
        let vm = &self.vm(name)?;
        let _g = self.claim(name)?;
        self.hv(vm).start().await?;
        Ok(format!("vm {name} is running"))
    }

    pub(crate) async fn stop(&self, name: &str) -> Result<String, HostError> {
        let vm = &self.vm(name)?;
        let _g = self.claim(name)?;
        self.hv(vm).shutdown().await?;
        Ok(format!("vm {name} is off"))
    }

    pub(crate) async fn suspend(&self, name: &str) -> Result<String, HostError> {
        let vm = &self.vm(name)?;
        let _g = self.claim(name)?;
        let how = self.hv(vm).quiesce().await?;
        Ok(format!("vm {name} is {}", how.as_str()))
    }

    pub(crate) async fn resume(&self, name: &str) -> Result<String, HostError> {
        let vm = &self.vm(name)?;
        let _g = self.claim(name)?;
        let hv = self.hv(vm);
        let how = match hv.state().await? {
            VmState::Running => return Ok(format!("vm {name} is running")),
            VmState::Off => Quiesced::Stopped,
            VmState::Suspended => Quiesced::Suspended,
            _ => Quiesced::Paused,
        };
        hv.resume(how).await?;
        Ok(format!("vm {name} is running"))
    }

    /// When the last backup of `name` was tried (see `Journal::last_attempt`); `None` when never, or unreadable
    /// (logged).
    pub(crate) fn last_attempt(&self, name: &str) -> Option<i64> {
        self.journal.last_attempt(name).unwrap_or_else(|e| {
            tracing::error!(vm = name, error = %e, "cannot read the last backup attempt");
            None
        })
    }

    /// One backup run of `name` to every target of the VM; the history gets one row per target whatever happens,
    /// and the observer sees every run (ok, partial or failed). A run that some targets got is `Partial` (an error
    /// naming the failed targets and why); one that no target got is the error (the target's own with one target).
    /// The VM's notification targets hear of the run's start once the VM is claimed, and of its end.
    pub(crate) async fn backup(&self, name: &str, tx: &Reporter) -> Result<BackupReport, HostError> {
        let vm = self.vm(name)?;
        let _g = self.claim(name)?;
        let t0 = Instant::now();
        self.tell_start(&vm, notify::BACKUP).await;
        let result = self.backup_claimed(&vm, tx).await;
        self.tell_end(&vm, notify::BACKUP, t0, &result).await;
        result
    }

    /// [`Host::backup`] of the claimed `vm`.
    async fn backup_claimed(&self, vm: &VmConfig, tx: &Reporter) -> Result<BackupReport, HostError> {
        let name = vm.name.as_str();
        // Ids have one-second resolution: never reuse the second of this VM's previous run.
        let previous = self.journal.history(name)?.last().map_or(0, |h| h.time_unix);
        let started = now_unix().max(previous + 1);
        let id = engine::backup_id(&vm.name, started);
        let mut runs: Vec<(TargetRun, Option<HostError>)> = Vec::new();
        let result = self.backup_inner(vm, &id, tx, &mut runs).await;
        // Every target has its outcome: those the run never reached failed with the run's error.
        let run_error = result.as_ref().err().map(|e| target_error(&vm.name, e));
        let targets: Vec<TargetRun> = vm
            .targets
            .iter()
            .map(|t| match runs.iter().find(|(r, _)| r.label == t.label) {
                Some((r, _)) if run_error.is_none() || !r.ok => r.clone(),
                // The run failed after this target's transfer (resuming the vm): its copy is there, the run is not.
                Some((r, _)) => TargetRun { warnings: vec![run_error.clone().unwrap_or_default()], ..r.clone() },
                None => TargetRun::failed(t, run_error.clone().unwrap_or_else(|| "not attempted".into())),
            })
            .collect();
        let (mode_used, downtime, consistency, warnings) = match &result {
            Ok(info) => (info.mode_used, info.downtime, info.consistency.clone(), info.warnings.clone()),
            Err(_) => (vm.mode, Duration::ZERO, String::new(), Vec::new()),
        };
        let report = BackupReport {
            vm: vm.name.clone(),
            id: id.clone(),
            started_unix: started,
            mode_used,
            downtime,
            consistency,
            size: targets.iter().filter(|t| t.ok).map(|t| t.size).max().unwrap_or(0),
            warnings,
            targets,
        };
        // A cancelled job (`Cancel`) failed because it was told to: its rows say so.
        let cancelled = agent_core::runner::is_cancelled();
        for t in &report.targets {
            let mut message = match (t.ok, cancelled) {
                (true, _) => {
                    let c = Some(report.consistency.clone()).filter(|c| !c.is_empty());
                    c.into_iter().chain(report.warnings.iter().cloned()).collect()
                }
                (false, true) => vec![format!("cancelled: vm {}: {}", vm.name, t.error)],
                (false, false) => vec![t.error.clone()],
            };
            message.extend(t.warnings.iter().cloned());
            let h = HistoryRow {
                vm: vm.name.clone(),
                backup_id: id.clone(),
                target: t.label.clone(),
                url: t.url.clone(),
                engine: vm.engine.as_str().into(),
                mode: report.mode_used.as_str().into(),
                time_unix: started,
                downtime_seconds: report.downtime.as_secs_f64(),
                duration_seconds: t.duration.as_secs_f64(),
                size: t.size,
                ok: t.ok,
                message: message.join("; "),
            };
            if let Err(e) = self.journal.record(&h) {
                tracing::error!(error = %e, target = %t.label, "cannot record backup history");
            }
        }
        (self.observer)(&report);
        result?;
        match report.status() {
            "ok" => Ok(report),
            "partial" => {
                tracing::warn!(vm = name, "{}", report.summary());
                Err(HostError::Partial { report: Box::new(report) })
            }
            _ => {
                // No target got it: the one target's own error, or each target's.
                let mut errs: Vec<HostError> = runs.into_iter().filter_map(|(_, e)| e).collect();
                if errs.len() == 1 && vm.targets.len() == 1 {
                    return Err(errs.remove(0));
                }
                Err(HostError::AllTargets { vm: vm.name.clone(), id, message: report.failures() })
            }
        }
    }

    /// Checks each target (reachable, and encrypted when required for a local one): the targets that pass. The
    /// others are in `runs`, failed with why.
    async fn usable_targets<'a>(
        &self,
        vm: &'a VmConfig,
        runs: &mut Vec<(TargetRun, Option<HostError>)>,
    ) -> Vec<&'a RepoSpec> {
        let name = vm.name.as_str();
        let checks = vm.targets.iter().map(|t| async move {
            let engine = self.checked_engine(vm, t).await?;
            engine.list().await.map_err(|source| HostError::Engine { vm: name.into(), source })?;
            if let (true, agent_core::repos::Location::Local(p)) = (vm.require_encrypted_target, &t.location) {
                let e = encryption::check(p)
                    .await
                    .map_err(|e| HostError::Other { vm: name.into(), message: e.to_string() })?;
                if !e.encrypted {
                    let target = engine::target_name(t);
                    return Err(HostError::Unencrypted { vm: name.into(), target, detail: e.detail });
                }
            }
            Ok(())
        });
        let results = futures::future::join_all(checks).await;
        let mut usable = Vec::new();
        for (t, r) in vm.targets.iter().zip(results) {
            match r {
                Ok(()) => usable.push(t),
                Err(e) => {
                    tracing::warn!(vm = name, target = %t.label, "target not usable: {e}");
                    runs.push((TargetRun::failed(t, target_error(name, &e)), Some(e)));
                }
            }
        }
        usable
    }

    /// Before a clone-mode run, with the vm untouched: a clone an earlier run could not remove (its journal rows
    /// still open) is removed, journaled like any removal, and those rows closed. Anything else at the clone's path
    /// (no open row names it) was not made by this agent, or not that the journal knows: it is left as it is and the
    /// run refused, naming it.
    async fn remove_leftover_clone(&self, name: &str, cpath: &Path) -> Result<(), HostError> {
        if tokio::fs::symlink_metadata(cpath).await.is_err() {
            return Ok(());
        }
        let refuse = |why: &str| HostError::Other {
            vm: name.into(),
            message: format!("its clone path {} exists and {why}: not removed; move it away", cpath.display()),
        };
        if self.config().vms.iter().any(|v| v.path == cpath) {
            return Err(refuse("is a configured vm's bundle"));
        }
        let path = cpath.to_string_lossy();
        let rows = self.journal.open_clone_rows(name, &path)?;
        if rows.is_empty() {
            return Err(refuse("no open journal row says this agent made it"));
        }
        let jd = self.journal.begin(name, step::DELETE_CLONE, &path)?;
        clone::remove_clone(cpath).await.map_err(|source| HostError::Clone { vm: name.into(), source })?;
        self.journal.done(jd)?;
        for r in rows {
            self.journal.done(r)?;
        }
        tracing::warn!(vm = name, "removed clone {} left by an earlier run", cpath.display());
        Ok(())
    }

    /// Backs up `src` as `id` to every target of `targets` at once; each target's outcome goes to `runs`.
    async fn transfer(
        &self,
        vm: &VmConfig,
        targets: &[&RepoSpec],
        src: Source<'_>,
        id: &str,
        tx: &Reporter,
        runs: &mut Vec<(TargetRun, Option<HostError>)>,
    ) {
        let name = vm.name.as_str();
        let all = targets.iter().map(|t| async move {
            let t0 = Instant::now();
            let created = match src {
                Source::Bundle(p) => self.engine(vm, t).create_reporting(p, id, tx).await,
                Source::Clone(p) => self.engine(vm, t).create_clone(p, id, tx).await,
            };
            let took = t0.elapsed();
            let line = match &created {
                Ok(b) => format!("target `{}`: {} bytes in {:.1}s", t.label, b.size, took.as_secs_f64()),
                Err(e) => format!("target `{}` failed: {e}", t.label),
            };
            send(tx, "backup", 3, 6, line).await;
            (t, created, took)
        });
        for (t, created, took) in futures::future::join_all(all).await {
            let run = TargetRun { duration: took, ..TargetRun::new(t) };
            runs.push(match created {
                Ok(b) => (TargetRun { ok: true, size: b.size, ..run }, None),
                Err(source) => {
                    let e = HostError::Engine { vm: name.into(), source };
                    (TargetRun { error: target_error(name, &e), ..run }, Some(e))
                }
            });
        }
    }

    /// Applies each target's retention to the targets that got the backup; none to an append-only one (its trusted
    /// side prunes). A failure is a warning of that target.
    async fn prune(&self, vm: &VmConfig, tx: &Reporter, runs: &mut [(TargetRun, Option<HostError>)]) {
        let targets: Vec<&RepoSpec> = vm
            .targets
            .iter()
            .filter(|t| !t.append_only && runs.iter().any(|(r, _)| r.ok && r.label == t.label))
            .collect();
        if targets.is_empty() {
            return;
        }
        let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
        send(tx, "retention", 5, 6, format!("applying retention to {}", labels.join(", "))).await;
        let all = targets
            .iter()
            .map(|t| async move { (t.label.as_str(), self.engine(vm, t).prune(&vm.retention_of(t)).await) });
        for (label, r) in futures::future::join_all(all).await {
            if let (Err(e), Some((run, _))) = (r, runs.iter_mut().find(|(r, _)| r.label == label)) {
                run.warnings.push(format!("retention failed: {e}"));
            }
        }
    }

    async fn backup_inner(
        &self,
        vm: &VmConfig,
        id: &str,
        tx: &Reporter,
        runs: &mut Vec<(TargetRun, Option<HostError>)>,
    ) -> Result<RunInfo, HostError> {
        let name = vm.name.as_str();
        let hv = self.hv(vm);
        let mut warnings = Vec::new();
        let total = 6;

        // Checks that need nothing undone: the VM exists, the targets are there (and encrypted when required).
        let state = hv.state().await?;
        send(tx, "check", 0, total, format!("vm {name} is {}", state.as_str())).await;
        let targets = self.usable_targets(vm, runs).await;
        if targets.is_empty() {
            // Nothing to write to: the vm is not touched. The targets' errors are the run's.
            return Ok(RunInfo { mode_used: vm.mode, downtime: Duration::ZERO, consistency: String::new(), warnings });
        }

        if state != VmState::Running {
            // Not running: its disks are not changing; back it up as it is and leave it so.
            send(tx, "backup", 3, total, format!("vm {name} is {}: backing up without touching it", state.as_str()))
                .await;
            self.transfer(vm, &targets, Source::Bundle(&vm.path), id, tx, runs).await;
            self.prune(vm, tx, runs).await;
            return Ok(RunInfo { mode_used: vm.mode, downtime: Duration::ZERO, consistency: String::new(), warnings });
        }

        let mut group = self.exclusive(vm, tx).await;
        let mut lease = self.lease(vm, &mut warnings).await?;
        let mut consistency = String::new();
        let result = self
            .quiesced_backup(vm, id, &*hv, &targets, tx, &mut lease, &mut group, &mut consistency, &mut warnings, runs)
            .await;
        drop(group);
        self.release_lease(vm, &mut lease, &mut warnings).await;
        let (mode_used, downtime) = result?;
        self.prune(vm, tx, runs).await;
        for w in &warnings {
            tracing::warn!(vm = name, "{w}");
        }
        send(tx, "done", total, total, format!("backup {id}: downtime {:.3}s", downtime.as_secs_f64())).await;
        Ok(RunInfo { mode_used, downtime, consistency, warnings })
    }

    async fn lease(&self, vm: &VmConfig, warnings: &mut Vec<String>) -> Result<Option<String>, HostError> {
        let Some(url) = &vm.guest else { return Ok(None) };
        match self.guest.prepare(url, LEASE_SECONDS).await {
            Ok(id) => Ok(Some(id)),
            Err(message) if vm.require_guest => {
                Err(HostError::Guest { vm: vm.name.clone(), url: url.clone(), message })
            }
            Err(message) => {
                warnings.push(format!(
                    "guest {url} did not prepare for the backup (backing up without its help): {message}"
                ));
                Ok(None)
            }
        }
    }

    /// Releases the guest's lease, if one is held (a failure is a warning: the lease expires on its own).
    async fn release_lease(&self, vm: &VmConfig, lease: &mut Option<String>, warnings: &mut Vec<String>) {
        if let (Some(url), Some(lease_id)) = (&vm.guest, lease.take()) {
            if let Err(e) = self.guest.release(url, &lease_id).await {
                warnings.push(format!("guest {url}: cannot release lease {lease_id}: {e}"));
            }
        }
    }

    /// Freeze the guest's file systems (when its agent answers; not for a shutdown) → quiesce once → (clone → resume
    /// → thaw → back up the clone to every target → delete it) or (back up to every target → resume → thaw). The VM
    /// is resumed and thawed on every path; the downtime is the time from just before quiesce to just after resume.
    /// Each target's outcome goes to `runs`; the error is the run's own (quiesce, clone, resume, thaw, journal).
    /// `group` (the VM's exclusive group) is released as soon as the VM runs again.
    #[allow(clippy::too_many_arguments)]
    async fn quiesced_backup(
        &self,
        vm: &VmConfig,
        id: &str,
        hv: &dyn Hypervisor,
        targets: &[&RepoSpec],
        tx: &Reporter,
        lease: &mut Option<String>,
        group: &mut Option<tokio::sync::OwnedMutexGuard<()>>,
        consistency: &mut String,
        warnings: &mut Vec<String>,
        runs: &mut Vec<(TargetRun, Option<HostError>)>,
    ) -> Result<(Mode, Duration), HostError> {
        let name = vm.name.as_str();
        let j = &self.journal;
        let cpath = clone::clone_path(&vm.path, name);
        if vm.mode == Mode::Clone {
            self.remove_leftover_clone(name, &cpath).await?;
        }
        let jf = match vm.mode {
            Mode::Stop => None,
            _ => self.freeze_journaled(name, hv, tx, consistency, warnings).await?,
        };
        let Quiesce { jq, planned, t0, outcome: quiesced } = match self.quiesce_for_backup(vm, hv, tx, warnings).await {
            Ok(q) => q,
            Err(e) => {
                // The journal failed: the VM is not quiesced (or was resumed first); thaw before reporting it.
                return Err(match jf {
                    Some(jf) => match self.thaw_journaled(name, hv, jf).await {
                        Ok(()) => e,
                        Err(t) => HostError::Other { vm: name.into(), message: format!("{e}; and {t}") },
                    },
                    None => e,
                });
            }
        };
        let how = match quiesced {
            Ok(h) => h,
            Err(e) => {
                // Whatever state it reached, bring it back.
                self.resume_journaled(name, hv, planned, jq, jf)
                    .await
                    .map_err(|r| HostError::Other { vm: name.into(), message: format!("{e}; and {r}") })?;
                return Err(e.into());
            }
        };

        let mut mode = vm.mode;
        let mut clone_dir = None;
        if vm.mode == Mode::Clone {
            // Not journaled, not cloned: the vm is resumed before the journal error is reported.
            let jc = match j.begin(name, step::CLONE, &cpath.to_string_lossy()) {
                Ok(jc) => jc,
                Err(e) => return Err(self.resume_on_journal_error(name, hv, how, jq, jf, e).await),
            };
            send(tx, "clone", 2, 6, format!("cloning {} copy-on-write", vm.path.display())).await;
            match clone::clone_dir(&vm.path, &cpath).await {
                Ok(()) => clone_dir = Some((cpath, jc)),
                Err(CloneError::Unsupported { dir, message }) => {
                    if let Err(e) = j.done(jc) {
                        return Err(self.resume_on_journal_error(name, hv, how, jq, jf, e).await);
                    }
                    mode = Mode::Suspend;
                    warnings.push(format!("{} cannot clone ({message}): fell back to suspend mode", dir.display()));
                    tracing::warn!(vm = name, "{}", warnings.last().map(String::as_str).unwrap_or(""));
                }
                Err(e) => {
                    self.resume_journaled(name, hv, how, jq, jf)
                        .await
                        .map_err(|r| HostError::Other { vm: name.into(), message: format!("{e}; and {r}") })?;
                    j.done(jc)?;
                    return Err(HostError::Clone { vm: name.into(), source: e });
                }
            }
        }

        if let Some((cpath, jc)) = clone_dir {
            self.resume_journaled(name, hv, how, jq, jf)
                .await
                .map_err(|message| HostError::Other { vm: name.into(), message })?;
            let downtime = t0.elapsed();
            group.take();
            if let Err(w) = hv.tidy_clone(&cpath) {
                warnings.push(w);
            }
            // The guest runs again: its backups may go on while the clone is copied.
            self.release_lease(vm, lease, warnings).await;
            send(
                tx,
                "backup",
                3,
                6,
                format!("vm {name} resumed after {:.3}s; backing up the clone", downtime.as_secs_f64()),
            )
            .await;
            self.transfer(vm, targets, Source::Clone(&cpath), id, tx, runs).await;
            let jd = j.begin(name, step::DELETE_CLONE, &cpath.to_string_lossy())?;
            let removed = clone::remove_clone(&cpath).await;
            match &removed {
                Ok(()) => {
                    j.done(jd)?;
                    j.done(jc)?;
                }
                Err(e) => warnings.push(format!("cannot remove clone {}: {e}", cpath.display())),
            }
            return Ok((mode, downtime));
        }

        send(tx, "backup", 3, 6, format!("backing up {} while the vm is {}", vm.path.display(), how.as_str())).await;
        self.transfer(vm, targets, Source::Bundle(&vm.path), id, tx, runs).await;
        self.resume_journaled(name, hv, how, jq, jf)
            .await
            .map_err(|message| HostError::Other { vm: name.into(), message })?;
        let downtime = t0.elapsed();
        send(tx, "resume", 4, 6, format!("vm {name} running again after {:.3}s", downtime.as_secs_f64())).await;
        Ok((mode, downtime))
    }

    /// Journals the resume, resumes, thaws the guest's file systems when `jf` (their freeze row) says they were
    /// frozen, then closes the resume and the quiesce rows. The vm is resumed and thawed even when the journal cannot
    /// be written (a full disk, a locked database); that error is reported after.
    async fn resume_journaled(
        &self,
        name: &str,
        hv: &dyn Hypervisor,
        how: Quiesced,
        jq: i64,
        jf: Option<i64>,
    ) -> Result<(), String> {
        let jr = self.journal.begin(name, step::RESUME, how.as_str());
        hv.resume(how).await.map_err(|e| format!("resuming failed: {e}"))?;
        let thawed = match jf {
            Some(jf) => self.thaw_journaled(name, hv, jf).await,
            None => Ok(()),
        };
        let journal_error =
            |e: JournalError| format!("the journal could not be written ({e}); the vm was resumed first");
        self.journal.done(jr.map_err(journal_error)?).map_err(journal_error)?;
        self.journal.done(jq).map_err(journal_error)?;
        thawed
    }

    /// A journal write failed while the vm is quiesced: resume it first, then report the journal error. The quiesce
    /// row may stay open (the journal is failing): the next start then resumes a running vm, which does nothing.
    pub(super) async fn resume_on_journal_error(
        &self,
        name: &str,
        hv: &dyn Hypervisor,
        how: Quiesced,
        jq: i64,
        jf: Option<i64>,
        e: JournalError,
    ) -> HostError {
        let resumed = hv.resume(how).await;
        let mut thawed = Ok(());
        if resumed.is_ok() {
            if let Some(jf) = jf {
                thawed = self.thaw_journaled(name, hv, jf).await;
            }
            let _ = self.journal.done(jq);
        }
        let message = match (resumed, thawed) {
            (Ok(()), Ok(())) => format!("the journal could not be written ({e}); the vm was resumed first"),
            (Ok(()), Err(t)) => format!("the journal could not be written ({e}); the vm was resumed, and {t}"),
            (Err(r), _) => format!("the journal could not be written ({e}); and resuming failed: {r}"),
        };
        HostError::Other { vm: name.into(), message }
    }
}
