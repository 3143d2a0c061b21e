//! Orchestration: one backup run (guest lease, quiesce, clone or not, resume, engine, retention, history) with the
//! VM's downtime measured from quiesce to resume; restore and drill; VM actions; crash recovery from the journal.
//! Knows the order of steps and the promise that the VM is left running on every failure path; must not know
//! proto/tonic types (the grpc module converts) or any program's command line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::clone::{self, CloneError};
use crate::config::{Backend, Config, Mode, VmConfig, VmToml};
use crate::encryption;
use crate::engine::{self, BackupInfo, EngineError};
use crate::hypervisor::{self, HvError, Hypervisor, Quiesced, VmState};
use crate::journal::{step, HistoryRow, Journal, JournalError};

/// How long a guest lease lasts: long enough for the pause, short enough to expire if we die.
pub const LEASE_SECONDS: u32 = 600;

/// Asks a services-agent guest to prepare for / recover from a host backup (implemented over mTLS by `grpc`).
pub trait Guest: Send + Sync {
    /// Returns the lease id.
    fn prepare<'a>(&'a self, url: &'a str, lease_seconds: u32) -> GuestFuture<'a, String>;
    fn release<'a>(&'a self, url: &'a str, lease_id: &'a str) -> GuestFuture<'a, ()>;
}

pub type GuestFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// A progress event of a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub step: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
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
    #[error("vm {vm}: backup target {} is not encrypted ({detail}) and require_encrypted_target is set", target.display())]
    Unencrypted { vm: String, target: PathBuf, detail: String },
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
    #[error("vm {vm}: {message}")]
    Other { vm: String, message: String },
}

/// What one backup run did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub vm: String,
    pub id: String,
    pub mode_used: Mode,
    pub downtime: Duration,
    pub size: u64,
    pub warnings: Vec<String>,
}

/// A VM as `ListVms` shows it.
#[derive(Debug, Clone)]
pub struct VmSummary {
    pub name: String,
    pub backend: Backend,
    pub state: String,
    pub mode: Mode,
    pub engine: String,
    pub storage_encrypted: bool,
    pub target_encrypted: bool,
    pub last_backup_unix: i64,
}

/// The host agent's domain: the configured VMs and what can be done to them.
pub struct Host {
    cfg: Config,
    journal: Journal,
    guest: Arc<dyn Guest>,
    busy: Mutex<HashSet<String>>,
    observer: Box<dyn Fn(&BackupReport) + Send + Sync>,
    /// The last look at each configured VM through its hypervisor (name → why it could not be seen).
    unseen: Mutex<std::collections::BTreeMap<String, String>>,
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

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn send(tx: &mpsc::Sender<Progress>, step: &str, done: u64, total: u64, message: impl Into<String>) {
    let message = message.into();
    tracing::info!(step, "{message}");
    let _ = tx.send(Progress { step: step.into(), done, total, message }).await;
}

impl Host {
    pub fn new(cfg: Config, guest: Arc<dyn Guest>) -> Result<Host, HostError> {
        let journal = Journal::open(&cfg.common.state_dir)?;
        Ok(Host {
            cfg,
            journal,
            guest,
            busy: Mutex::new(HashSet::new()),
            observer: Box::new(|_| {}),
            unseen: Mutex::default(),
        })
    }

    /// Calls `f` after every successful backup (the agent feeds its metrics from it).
    pub fn on_backup(mut self, f: impl Fn(&BackupReport) + Send + Sync + 'static) -> Self {
        self.observer = Box::new(f);
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn vm(&self, name: &str) -> Result<&VmConfig, HostError> {
        self.cfg.vm(name).ok_or_else(|| HostError::UnknownVm(name.to_string()))
    }

    fn hv(&self, vm: &VmConfig) -> Arc<dyn Hypervisor> {
        hypervisor::for_vm(vm, &self.cfg.common.state_dir)
    }

    fn claim(&self, vm: &str) -> Result<BusyGuard<'_>, HostError> {
        if !self.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(vm.to_string()) {
            return Err(HostError::Busy(vm.to_string()));
        }
        Ok(BusyGuard { host: self, vm: vm.to_string() })
    }

    /// Undoes what a crashed run left: resumes every VM the journal says we quiesced and deletes our clones.
    /// Returns one line per action taken; failures are logged and left open for the next start.
    pub async fn recover(&self) -> Vec<String> {
        let mut done = Vec::new();
        let open = match self.journal.open_steps() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "recovery: cannot read the journal");
                return done;
            }
        };
        for s in open {
            let result: Result<String, String> = match s.step.as_str() {
                step::QUIESCE => match (self.cfg.vm(&s.vm), Quiesced::parse(&s.detail)) {
                    (Some(vm), Some(how)) => match self.hv(vm).resume(how).await {
                        Ok(()) => Ok(format!("resumed vm {} ({} by a crashed run)", s.vm, s.detail)),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => Err(format!("vm {} ({}) is no longer configured: left as it is", s.vm, s.detail)),
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
    pub async fn probe_vms(&self) {
        for vm in &self.cfg.vms {
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
    /// exist"); the hypervisor's errors already name the VM.
    pub fn unseen_vms(&self) -> Vec<String> {
        self.unseen.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Probes now and every `every`, forever (the caller aborts the task).
    pub async fn watch_vms(self: Arc<Self>, every: Duration) {
        loop {
            self.probe_vms().await;
            tokio::time::sleep(every).await;
        }
    }

    pub async fn list_vms(&self) -> Vec<VmSummary> {
        let mut out = Vec::new();
        for vm in &self.cfg.vms {
            let seen = self.hv(vm).state().await;
            self.record_seen(&vm.name, &seen);
            let state = match seen {
                Ok(s) => s.as_str().to_string(),
                Err(e) => format!("error: {e}"),
            };
            let enc = |p: PathBuf| async move { encryption::check(&p).await.map(|e| e.encrypted).unwrap_or(false) };
            let last =
                self.journal.history(&vm.name).ok().and_then(|h| h.iter().rev().find(|r| r.ok).map(|r| r.time_unix));
            out.push(VmSummary {
                name: vm.name.clone(),
                backend: vm.backend,
                state,
                mode: vm.mode,
                engine: vm.engine.as_str().to_string(),
                storage_encrypted: enc(vm.path.clone()).await,
                target_encrypted: enc(vm.target.clone()).await,
                last_backup_unix: last.unwrap_or(0),
            });
        }
        out
    }

    pub async fn start(&self, name: &str) -> Result<String, HostError> {
        let vm = self.vm(name)?;
        let _g = self.claim(name)?;
        self.hv(vm).start().await?;
        Ok(format!("vm {name} is running"))
    }

    pub async fn stop(&self, name: &str) -> Result<String, HostError> {
        let vm = self.vm(name)?;
        let _g = self.claim(name)?;
        self.hv(vm).shutdown().await?;
        Ok(format!("vm {name} is off"))
    }

    pub async fn suspend(&self, name: &str) -> Result<String, HostError> {
        let vm = self.vm(name)?;
        let _g = self.claim(name)?;
        let how = self.hv(vm).quiesce().await?;
        Ok(format!("vm {name} is {}", how.as_str()))
    }

    pub async fn resume(&self, name: &str) -> Result<String, HostError> {
        let vm = self.vm(name)?;
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

    /// Backups of `name`, oldest first, with downtime and size from this agent's history where it has them.
    pub async fn list_backups(&self, name: &str) -> Result<Vec<(BackupInfo, f64)>, HostError> {
        let vm = self.vm(name)?;
        let list = engine::for_vm(vm).list().await.map_err(|source| HostError::Engine { vm: name.into(), source })?;
        let history = self.journal.history(name)?;
        Ok(list
            .into_iter()
            .map(|mut b| {
                let h = history.iter().find(|h| h.ok && h.backup_id == b.id);
                if let Some(h) = h {
                    b.size = b.size.max(h.size);
                }
                let downtime = h.map_or(0.0, |h| h.downtime_seconds);
                (b, downtime)
            })
            .collect())
    }

    /// When the last backup of `name` was tried (see `Journal::last_attempt`); `None` when never, or unreadable
    /// (logged).
    pub fn last_attempt(&self, name: &str) -> Option<i64> {
        self.journal.last_attempt(name).unwrap_or_else(|e| {
            tracing::error!(vm = name, error = %e, "cannot read the last backup attempt");
            None
        })
    }

    /// One backup run of `name`; the history gets a row whatever happens.
    pub async fn backup(&self, name: &str, tx: &mpsc::Sender<Progress>) -> Result<BackupReport, HostError> {
        let vm = self.vm(name)?.clone();
        let _g = self.claim(name)?;
        // Ids have one-second resolution: never reuse the second of this VM's previous run.
        let previous = self.journal.history(name)?.last().map_or(0, |h| h.time_unix);
        let started = now_unix().max(previous + 1);
        let id = engine::backup_id(&vm.name, started);
        let result = self.backup_inner(&vm, &id, tx).await;
        let row = |ok: bool, downtime: f64, size: u64, mode: Mode, message: String| HistoryRow {
            vm: vm.name.clone(),
            backup_id: id.clone(),
            engine: vm.engine.as_str().into(),
            mode: mode.as_str().into(),
            time_unix: started,
            downtime_seconds: downtime,
            size,
            ok,
            message,
        };
        let h = match &result {
            Ok(r) => row(true, r.downtime.as_secs_f64(), r.size, r.mode_used, r.warnings.join("; ")),
            Err(e) => row(false, 0.0, 0, vm.mode, e.to_string()),
        };
        if let Err(e) = self.journal.record(&h) {
            tracing::error!(error = %e, "cannot record backup history");
        }
        if let Ok(r) = &result {
            (self.observer)(r);
        }
        result
    }

    async fn backup_inner(
        &self,
        vm: &VmConfig,
        id: &str,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<BackupReport, HostError> {
        let name = vm.name.as_str();
        let hv = self.hv(vm);
        let eng = engine::for_vm(vm);
        let eng_err = |source| HostError::Engine { vm: name.into(), source };
        let mut warnings = Vec::new();
        let total = 6;

        // Checks that need nothing undone: the VM exists, the target is there (and encrypted when required).
        let state = hv.state().await?;
        send(tx, "check", 0, total, format!("vm {name} is {}", state.as_str())).await;
        eng.list().await.map_err(eng_err)?;
        if vm.require_encrypted_target {
            let e = encryption::check(&vm.target)
                .await
                .map_err(|e| HostError::Other { vm: name.into(), message: e.to_string() })?;
            if !e.encrypted {
                return Err(HostError::Unencrypted { vm: name.into(), target: vm.target.clone(), detail: e.detail });
            }
        }

        if state != VmState::Running {
            // Not running: its disks are not changing; back it up as it is and leave it so.
            send(tx, "backup", 3, total, format!("vm {name} is {}: backing up without touching it", state.as_str()))
                .await;
            let info = eng.create(&vm.path, id).await.map_err(eng_err)?;
            self.prune(vm, &mut warnings).await;
            return Ok(BackupReport {
                vm: name.into(),
                id: id.into(),
                mode_used: vm.mode,
                downtime: Duration::ZERO,
                size: info.size,
                warnings,
            });
        }

        let mut lease = self.lease(vm, &mut warnings).await?;
        let result = self.quiesced_backup(vm, id, &*hv, &*eng, tx, &mut lease, &mut warnings).await;
        self.release_lease(vm, &mut lease, &mut warnings).await;
        let (mode_used, downtime, info) = result?;
        send(tx, "retention", 5, total, format!("applying retention to {}", vm.target.display())).await;
        self.prune(vm, &mut warnings).await;
        for w in &warnings {
            tracing::warn!(vm = name, "{w}");
        }
        send(tx, "done", total, total, format!("backup {id}: downtime {:.3}s", downtime.as_secs_f64())).await;
        Ok(BackupReport { vm: name.into(), id: id.into(), mode_used, downtime, size: info.size, warnings })
    }

    async fn prune(&self, vm: &VmConfig, warnings: &mut Vec<String>) {
        if let Err(e) = engine::for_vm(vm).prune(&vm.retention).await {
            warnings.push(format!("retention failed: {e}"));
        }
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

    /// Quiesce → (clone → resume → back up the clone → delete it) or (back up → resume). The VM is resumed on
    /// every path; the downtime is the time from just before quiesce to just after resume.
    /// Releases the guest's lease, if one is held (a failure is a warning: the lease expires on its own).
    async fn release_lease(&self, vm: &VmConfig, lease: &mut Option<String>, warnings: &mut Vec<String>) {
        if let (Some(url), Some(lease_id)) = (&vm.guest, lease.take()) {
            if let Err(e) = self.guest.release(url, &lease_id).await {
                warnings.push(format!("guest {url}: cannot release lease {lease_id}: {e}"));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn quiesced_backup(
        &self,
        vm: &VmConfig,
        id: &str,
        hv: &dyn Hypervisor,
        eng: &dyn engine::Engine,
        tx: &mpsc::Sender<Progress>,
        lease: &mut Option<String>,
        warnings: &mut Vec<String>,
    ) -> Result<(Mode, Duration, BackupInfo), HostError> {
        let name = vm.name.as_str();
        let j = &self.journal;
        let planned = if vm.mode == Mode::Stop {
            Quiesced::Stopped
        } else if vm.backend == Backend::Qemu {
            Quiesced::Paused
        } else {
            Quiesced::Suspended
        };
        let jq = j.begin(name, step::QUIESCE, planned.as_str())?;
        send(
            tx,
            "quiesce",
            1,
            6,
            format!("{} vm {name}", if vm.mode == Mode::Stop { "shutting down" } else { "pausing" }),
        )
        .await;
        let t0 = Instant::now();
        let quiesced =
            if vm.mode == Mode::Stop { hv.shutdown().await.map(|()| Quiesced::Stopped) } else { hv.quiesce().await };
        let how = match quiesced {
            Ok(h) => h,
            Err(e) => {
                // Whatever state it reached, bring it back.
                self.resume_journaled(name, hv, planned, jq)
                    .await
                    .map_err(|r| HostError::Other { vm: name.into(), message: format!("{e}; and {r}") })?;
                return Err(e.into());
            }
        };

        let mut mode = vm.mode;
        let mut clone_dir = None;
        if vm.mode == Mode::Clone {
            let cpath = clone::clone_path(&vm.path, name, &engine::stamp(now_unix()));
            // Not journaled, not cloned: the vm is resumed before the journal error is reported.
            let jc = match j.begin(name, step::CLONE, &cpath.to_string_lossy()) {
                Ok(jc) => jc,
                Err(e) => return Err(self.resume_on_journal_error(name, hv, how, jq, e).await),
            };
            send(tx, "clone", 2, 6, format!("cloning {} copy-on-write", vm.path.display())).await;
            match clone::clone_dir(&vm.path, &cpath).await {
                Ok(()) => clone_dir = Some((cpath, jc)),
                Err(CloneError::Unsupported { dir, message }) => {
                    if let Err(e) = j.done(jc) {
                        return Err(self.resume_on_journal_error(name, hv, how, jq, e).await);
                    }
                    mode = Mode::Suspend;
                    warnings.push(format!("{} cannot clone ({message}): fell back to suspend mode", dir.display()));
                    tracing::warn!(vm = name, "{}", warnings.last().map(String::as_str).unwrap_or(""));
                }
                Err(e) => {
                    self.resume_journaled(name, hv, how, jq)
                        .await
                        .map_err(|r| HostError::Other { vm: name.into(), message: format!("{e}; and {r}") })?;
                    j.done(jc)?;
                    return Err(HostError::Clone { vm: name.into(), source: e });
                }
            }
        }

        if let Some((cpath, jc)) = clone_dir {
            self.resume_journaled(name, hv, how, jq)
                .await
                .map_err(|message| HostError::Other { vm: name.into(), message })?;
            let downtime = t0.elapsed();
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
            let created = eng.create(&cpath, id).await;
            let jd = j.begin(name, step::DELETE_CLONE, &cpath.to_string_lossy())?;
            let removed = clone::remove_clone(&cpath).await;
            match &removed {
                Ok(()) => {
                    j.done(jd)?;
                    j.done(jc)?;
                }
                Err(e) => warnings.push(format!("cannot remove clone {}: {e}", cpath.display())),
            }
            let info = created.map_err(|source| HostError::Engine { vm: name.into(), source })?;
            return Ok((mode, downtime, info));
        }

        send(tx, "backup", 3, 6, format!("backing up {} while the vm is {}", vm.path.display(), how.as_str())).await;
        let created = eng.create(&vm.path, id).await;
        self.resume_journaled(name, hv, how, jq)
            .await
            .map_err(|message| HostError::Other { vm: name.into(), message })?;
        let downtime = t0.elapsed();
        send(tx, "resume", 4, 6, format!("vm {name} running again after {:.3}s", downtime.as_secs_f64())).await;
        let info = created.map_err(|source| HostError::Engine { vm: name.into(), source })?;
        Ok((mode, downtime, info))
    }

    /// Journals the resume, resumes, then closes both the resume and the quiesce rows. The vm is resumed even when
    /// the journal cannot be written (a full disk, a locked database); that error is reported after.
    async fn resume_journaled(&self, name: &str, hv: &dyn Hypervisor, how: Quiesced, jq: i64) -> Result<(), String> {
        let jr = self.journal.begin(name, step::RESUME, how.as_str());
        hv.resume(how).await.map_err(|e| format!("resuming failed: {e}"))?;
        let journal_error =
            |e: JournalError| format!("the journal could not be written ({e}); the vm was resumed first");
        self.journal.done(jr.map_err(journal_error)?).map_err(journal_error)?;
        self.journal.done(jq).map_err(journal_error)
    }

    /// A journal write failed while the vm is quiesced: resume it first, then report the journal error. The quiesce
    /// row may stay open (the journal is failing): the next start then resumes a running vm, which does nothing.
    async fn resume_on_journal_error(
        &self,
        name: &str,
        hv: &dyn Hypervisor,
        how: Quiesced,
        jq: i64,
        e: JournalError,
    ) -> HostError {
        let resumed = hv.resume(how).await;
        if resumed.is_ok() {
            let _ = self.journal.done(jq);
        }
        let message = match resumed {
            Ok(()) => format!("the journal could not be written ({e}); the vm was resumed first"),
            Err(r) => format!("the journal could not be written ({e}); and resuming failed: {r}"),
        };
        HostError::Other { vm: name.into(), message }
    }

    /// Restores backup `archive` (latest when `None`) of `name` into `to`, checks it, and optionally starts it.
    /// `to` must be confined (see `agent_core::target`: no `..`, no symlinked component, no system directory, not
    /// in the agent's state directory), and `--force` moves aside only a VM bundle of this VM's backend.
    pub async fn restore(
        &self,
        name: &str,
        archive: Option<&str>,
        to: &Path,
        force: bool,
        start: bool,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<String, HostError> {
        let vm = self.vm(name)?;
        let own = [(self.cfg.common.state_dir.as_path(), "the agent's state directory")];
        let to = agent_core::target::confined(to, &own).map_err(|e| HostError::Refused {
            vm: vm.name.clone(),
            path: e.path,
            why: e.why,
        })?;
        self.restore_into(name, archive, &to, force, start, tx).await
    }

    /// [`Host::restore`] without the confinement of `to` (the drill restores under the state directory).
    async fn restore_into(
        &self,
        name: &str,
        archive: Option<&str>,
        to: &Path,
        force: bool,
        start: bool,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<String, HostError> {
        let vm = self.vm(name)?.clone();
        let eng = engine::for_vm(&vm);
        let eng_err = |source| HostError::Engine { vm: name.into(), source };
        let meta = std::fs::symlink_metadata(to).ok();
        if meta.as_ref().is_some_and(|m| !m.is_dir()) {
            return Err(HostError::Refused {
                vm: name.into(),
                path: to.to_path_buf(),
                why: "exists and is not a directory: nothing is moved aside".into(),
            });
        }
        let occupied = meta.is_some() && std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(true);
        if occupied && !force {
            return Err(HostError::Exists { vm: name.into(), path: to.to_path_buf() });
        }
        if occupied {
            if let Err(why) = is_bundle(vm.backend, to) {
                return Err(HostError::Refused {
                    vm: name.into(),
                    path: to.to_path_buf(),
                    why: format!("is not a VM bundle ({why}): --force moves aside only a VM bundle"),
                });
            }
        }
        if occupied && to == vm.path {
            let st = self.hv(&vm).state().await?;
            if st != VmState::Off {
                return Err(HostError::Other {
                    vm: name.into(),
                    message: format!("is {}: stop it before restoring over it", st.as_str()),
                });
            }
        }
        let id = match archive {
            Some(a) => a.to_string(),
            None => eng
                .list()
                .await
                .map_err(eng_err)?
                .pop()
                .map(|b| b.id)
                .ok_or(HostError::NoBackups { vm: name.into() })?,
        };
        let parent = to.parent().unwrap_or(Path::new("/"));
        let io = |p: &Path, e: std::io::Error| HostError::Other {
            vm: name.into(),
            message: format!("{}: {e}", p.display()),
        };
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        let file = to.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| name.into());
        let staging = parent.join(format!(".{file}.strata-restore-{}", engine::stamp(now_unix())));
        std::fs::create_dir(&staging).map_err(|e| io(&staging, e))?;
        send(tx, "extract", 1, 4, format!("extracting {id} into {}", staging.display())).await;
        if let Err(e) = eng.extract(&id, &staging).await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(eng_err(e));
        }
        send(tx, "check", 2, 4, format!("checking {}", staging.display())).await;
        if let Err(message) = check_bundle(vm.backend, &staging).await {
            return Err(HostError::Check { vm: name.into(), path: staging, message });
        }
        let mut moved = String::new();
        if to.exists() {
            let aside = parent.join(format!("{file}.replaced-{}", engine::stamp(now_unix())));
            std::fs::rename(to, &aside).map_err(|e| io(to, e))?;
            moved = format!("; the previous bundle was moved to {}", aside.display());
        }
        std::fs::rename(&staging, to).map_err(|e| io(to, e))?;
        let mut msg = format!("restored {id} of vm {name} into {}{moved}", to.display());
        if start {
            send(tx, "start", 3, 4, format!("starting the restored vm {name}")).await;
            let mut vmc = vm.clone();
            if vmc.path != to {
                vmc.path = to.to_path_buf();
                vmc.name = format!("{name}-restored");
            }
            self.hv(&vmc).start().await?;
            msg.push_str(&format!("; started as {}", vmc.name));
        }
        send(tx, "done", 4, 4, msg.clone()).await;
        Ok(msg)
    }

    /// Restores the latest backup into scratch space under the state dir, checks it, reports, and removes it.
    pub async fn drill(&self, name: &str, tx: &mpsc::Sender<Progress>) -> Result<String, HostError> {
        let vm = self.vm(name)?;
        let scratch = self.cfg.common.state_dir.join("drill").join(format!("{name}-{}", engine::stamp(now_unix())));
        let t0 = Instant::now();
        let result = self.restore_into(&vm.name, None, &scratch, false, false, tx).await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let msg = result?;
        let report = format!("drill ok in {:.1}s: {msg}; scratch copy removed", t0.elapsed().as_secs_f64());
        send(tx, "drill", 4, 4, report.clone()).await;
        Ok(report)
    }
}

/// Whether `dir` looks like a VM bundle of `backend` (what `--force` may move aside): QEMU: a `vm.toml` file;
/// VMware: a `.vmx` file. `Err` says what is missing.
pub fn is_bundle(backend: Backend, dir: &Path) -> Result<(), String> {
    match backend {
        Backend::Qemu => match std::fs::symlink_metadata(dir.join("vm.toml")) {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err("no vm.toml file in it".into()),
        },
        Backend::Fusion | Backend::Workstation => {
            if crate::vmrun::find_with_ext(dir, "vmx").is_empty() {
                Err("no .vmx file in it".into())
            } else {
                Ok(())
            }
        }
    }
}

/// A restored bundle must be startable: QEMU: `vm.toml` parses, every disk exists, qcow2 disks pass `qemu-img check`;
/// VMware: a `.vmx` is present.
pub async fn check_bundle(backend: Backend, dir: &Path) -> Result<(), String> {
    match backend {
        Backend::Qemu => {
            let spec = VmToml::load(dir).map_err(|e| e.to_string())?;
            for d in &spec.disks {
                let p = dir.join(d);
                if !p.is_file() {
                    return Err(format!("disk {} is missing", p.display()));
                }
                if d.extension().is_some_and(|e| e == "qcow2") {
                    crate::qemu_img::check(&p).await?;
                }
            }
            Ok(())
        }
        Backend::Fusion | Backend::Workstation => {
            if crate::vmrun::find_with_ext(dir, "vmx").is_empty() {
                return Err(format!("no .vmx file in {}", dir.display()));
            }
            Ok(())
        }
    }
}
