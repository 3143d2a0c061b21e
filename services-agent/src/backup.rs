//! Per-service backups: the run (pre-hooks → quiesce exactly the running containers → recursive ZFS snapshot →
//! resume → post-hooks → clone mounted at a stable path → `borg create` → destroy the clone → prune → compact →
//! local snapshot retention), each step journaled before it is done; the job limits (one job per repository,
//! `[backup] parallel` services at once, the host's lease); metrics and notifications. Restores, checks and drills
//! are in `restore`, crash repair in `recovery`. Must not know proto/tonic (the `grpc` module converts), nor the
//! CLIs of zfs/borg/docker (their modules do).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::borg::{BorgError, Repo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, Semaphore};

use crate::config::{Config, HookWhen, Passphrase, Quiesce, Service, ServiceBackup};
use crate::docker::{DockerError, Engine};
use crate::journal::{self, step, Journal, JournalError, Outcome};
use crate::lease::Gate;
use crate::model::Progress;
use crate::notify::{self, Event, NotifyTarget, Phase};
use crate::zfs::{self, ZfsError};

/// Our snapshots are `strata-YYYYMMDDTHHMMSSZ`; safety snapshots before a restore `strata-prerestore-…`.
pub const SNAPSHOT_PREFIX: &str = "strata-";
pub const PRERESTORE_PREFIX: &str = "strata-prerestore-";
/// Our clones and scratch datasets are direct children of the pool: `POOL/strata-clone-SERVICE`,
/// `POOL/strata-scratch-SERVICE`. Recovery destroys only names with these prefixes.
pub const CLONE_PREFIX: &str = "strata-clone-";
pub const SCRATCH_PREFIX: &str = "strata-scratch-";
/// Set in the environment of every long-running program a job starts (borg, cp): recovery kills the ones a dead
/// agent left behind, and only those.
pub const OWNER_ENV: &str = "STRATA_JOB_OWNER";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("service {0} is not in the config")]
    Unknown(String),
    #[error("service {0} has no backup settings (dataset, repo)")]
    NotBackedUp(String),
    #[error("service {service}: {message}")]
    Refused { service: String, message: String },
    #[error("service {service}: {step}: {message}")]
    Step { service: String, step: &'static str, message: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl JobError {
    pub fn step(service: &str, step: &'static str, e: impl std::fmt::Display) -> JobError {
        JobError::Step { service: service.to_string(), step, message: e.to_string() }
    }
}

/// Labels of the per-service metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Per-service backup metrics.
#[derive(Clone, Default)]
pub struct BackupMetrics {
    pub last_success: Family<ServiceLabel, FGauge>,
    pub duration: Family<ServiceLabel, FGauge>,
    pub downtime: Family<ServiceLabel, FGauge>,
    pub original_size: Family<ServiceLabel, Gauge>,
    pub deduplicated_size: Family<ServiceLabel, Gauge>,
    pub failures: Family<ServiceLabel, Counter>,
}

impl BackupMetrics {
    pub fn register(&self, m: &agent_core::telemetry::Metrics) {
        m.register(
            "services_backup_last_success_timestamp_seconds",
            "When the last successful backup of the service started (Unix seconds)",
            self.last_success.clone(),
        );
        m.register("services_backup_duration_seconds", "Duration of the last backup run", self.duration.clone());
        m.register(
            "services_backup_downtime_seconds",
            "How long the last backup kept the service's containers stopped or paused",
            self.downtime.clone(),
        );
        m.register("services_backup_original_bytes", "Original size of the last archive", self.original_size.clone());
        m.register(
            "services_backup_deduplicated_bytes",
            "Bytes the last archive added to its repository",
            self.deduplicated_size.clone(),
        );
        m.register("services_backup_failures", "Backup runs that failed", self.failures.clone());
    }
}

/// Where a job reports its progress (a labctl stream, or nowhere for scheduled runs).
#[derive(Clone)]
pub struct Reporter {
    tx: Option<mpsc::Sender<Progress>>,
    prefix: String,
}

impl Reporter {
    pub fn new(tx: mpsc::Sender<Progress>) -> Reporter {
        Reporter { tx: Some(tx), prefix: String::new() }
    }

    pub fn none() -> Reporter {
        Reporter { tx: None, prefix: String::new() }
    }

    /// The same stream, each message prefixed with the service name (for `--all`).
    pub fn for_service(&self, service: &str) -> Reporter {
        Reporter { tx: self.tx.clone(), prefix: format!("{service}: ") }
    }

    pub async fn say(&self, step: &str, message: impl Into<String>) {
        self.progress(step, 0, 0, message).await;
    }

    pub async fn progress(&self, step: &str, done: u64, total: u64, message: impl Into<String>) {
        let message = format!("{}{}", self.prefix, message.into());
        tracing::debug!(step, "{message}");
        if let Some(tx) = &self.tx {
            // A client that went away does not stop the job.
            let _ = tx.send(Progress { step: step.to_string(), done, total, message }).await;
        }
    }
}

/// What a finished backup did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupReport {
    pub service: String,
    pub archive: String,
    pub snapshot: String,
    pub downtime: Duration,
    pub duration: Duration,
    pub original_size: u64,
    pub compressed_size: u64,
    pub deduplicated_size: u64,
    pub pruned: Vec<String>,
    pub warnings: Vec<String>,
}

impl BackupReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: archive {} in {:.1} s, downtime {:.3} s, {} original, {} added to the repository",
            self.service,
            self.archive,
            self.duration.as_secs_f64(),
            self.downtime.as_secs_f64(),
            human(self.original_size),
            human(self.deduplicated_size),
        );
        if !self.pruned.is_empty() {
            s.push_str(&format!(", pruned {}", self.pruned.len()));
        }
        if !self.warnings.is_empty() {
            s.push_str(&format!(", {} borg warning(s): {}", self.warnings.len(), self.warnings.join("; ")));
        }
        s
    }
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `YYYYMMDDTHHMMSSZ` of now (UTC).
pub fn timestamp_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The archive glob of a service: `NAME-YYYYMMDDTHHMMSSZ` and Borg's `.checkpoint` leftovers of such archives.
pub fn archive_glob(service: &str) -> String {
    format!("{service}-????????T??????Z*")
}

/// The timestamp part of one of our archive names, if it is one.
pub fn archive_timestamp<'a>(service: &str, archive: &'a str) -> Option<&'a str> {
    let ts = archive.strip_prefix(service)?.strip_prefix('-')?;
    is_timestamp(ts).then_some(ts)
}

/// True for `YYYYMMDDTHHMMSSZ`.
pub fn is_timestamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// The services agent's jobs: see the module docs.
pub struct Backups {
    pub(crate) cfg: Arc<Config>,
    pub(crate) journal: Journal,
    pub gate: Gate,
    parallel: Semaphore,
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub metrics: BackupMetrics,
    pub(crate) host: String,
}

impl Backups {
    pub fn open(cfg: Arc<Config>) -> Result<Backups, JournalError> {
        let journal = Journal::open(&cfg.common.state_dir)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let metrics = BackupMetrics::default();
        // The last success survives a restart: read back from the history, so alerts see no gap.
        for s in cfg.services.iter().filter(|s| s.backup.is_some()) {
            if let Ok(Some(t)) = journal.last_ok(&s.name, "backup") {
                metrics.last_success.get_or_create(&ServiceLabel { service: s.name.clone() }).set(t);
            }
        }
        Ok(Backups {
            parallel: Semaphore::new(cfg.backup.parallel),
            cfg,
            journal,
            gate: Gate::default(),
            repo_locks: Mutex::new(HashMap::new()),
            metrics,
            host,
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The service and its backup settings.
    pub(crate) fn settings(&self, name: &str) -> Result<(&Service, &ServiceBackup), JobError> {
        let svc = self.cfg.service(name).ok_or_else(|| JobError::Unknown(name.to_string()))?;
        let b = svc.backup.as_deref().ok_or_else(|| JobError::NotBackedUp(name.to_string()))?;
        Ok((svc, b))
    }

    /// The time zone backup schedules are read in.
    pub fn timezone(&self) -> &agent_core::cron::TimeZone {
        &self.cfg.timezone
    }

    /// The services that have backup settings.
    pub fn backed_up(&self) -> Vec<String> {
        self.cfg.services.iter().filter(|s| s.backup.is_some()).map(|s| s.name.clone()).collect()
    }

    /// The value of [`OWNER_ENV`] in the programs this agent runs for jobs.
    pub(crate) fn owner(&self) -> String {
        format!("services-agent:{}", self.cfg.common.state_dir.display())
    }

    /// The service's Borg repository, with its passphrase source. Its borg processes carry [`OWNER_ENV`], so that
    /// recovery can find the ones a dead agent left running.
    pub(crate) fn repo(&self, b: &ServiceBackup) -> Repo {
        let r = Repo::new(b.repo.clone()).env(OWNER_ENV, self.owner());
        match &b.passphrase {
            Passphrase::Command(c) => r.passcommand(c.clone()),
            Passphrase::File(f) => r.passphrase_file(f),
            Passphrase::None => r,
        }
    }

    /// One job per repository at a time.
    pub(crate) fn repo_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks.lock().unwrap_or_else(|e| e.into_inner()).entry(repo.to_string()).or_default().clone()
    }

    pub(crate) fn mount_path(&self, service: &str) -> PathBuf {
        self.cfg.backup.snapshot_mount_dir.join(service)
    }

    pub(crate) fn targets(&self, b: &ServiceBackup) -> Vec<NotifyTarget> {
        self.cfg.notify.iter().chain(&b.notify).cloned().collect()
    }

    pub(crate) async fn notify(&self, b: &ServiceBackup, phase: Phase, event: Event) {
        let mut targets = self.targets(b);
        // A healthchecks check is the backup's heartbeat: a passing drill or check must not stand in for it.
        if event.job != "backup" {
            targets.retain(|t| t.kind != crate::notify::NotifyKind::Healthchecks);
        }
        if !targets.is_empty() {
            notify::send(&targets, phase, &event).await;
        }
    }

    pub(crate) fn event(&self, service: &str, job: &str, phase: &'static str) -> Event {
        Event {
            service: service.to_string(),
            job: job.to_string(),
            phase,
            message: String::new(),
            duration_seconds: 0.0,
            downtime_seconds: 0.0,
            archive: String::new(),
            host: self.host.clone(),
        }
    }

    /// Backs up every backed-up service, `[backup] parallel` at a time; one report (or error) per service.
    pub async fn backup_all(
        self: &Arc<Self>,
        trigger: &str,
        rep: &Reporter,
    ) -> Vec<(String, Result<BackupReport, JobError>)> {
        let mut tasks = Vec::new();
        for name in self.backed_up() {
            let (me, trigger, rep) = (self.clone(), trigger.to_string(), rep.for_service(&name));
            tasks.push(tokio::spawn(async move {
                let r = me.backup(&name, &trigger, &rep).await;
                (name, r)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            match t.await {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, "a backup task panicked"),
            }
        }
        out
    }

    /// One backup run of `name` (see the module docs). The run is recorded in the history whatever happens, a
    /// notification is sent, and the containers are running again whatever failed.
    pub async fn backup(&self, name: &str, trigger: &str, rep: &Reporter) -> Result<BackupReport, JobError> {
        let (_, b) = self.settings(name)?;
        let _job = self
            .gate
            .enter(|lease| {
                tracing::info!(service = name, lease, "backup waits for the host backup lease to end");
            })
            .await;
        let _slot = self.parallel.acquire().await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let lock = self.repo_lock(&b.repo);
        let _repo = lock.lock().await;
        let run = self.journal.start_run(name, "backup", trigger)?;
        let started = Instant::now();
        tracing::info!(service = name, trigger, "backup started");
        self.notify(b, Phase::Start, self.event(name, "backup", "start")).await;
        let mut downtime = Duration::ZERO;
        let result = self.backup_steps(run, name, b, rep, &mut downtime).await;
        let duration = started.elapsed();
        let label = ServiceLabel { service: name.to_string() };
        self.metrics.duration.get_or_create(&label).set(duration.as_secs_f64());
        self.metrics.downtime.get_or_create(&label).set(downtime.as_secs_f64());
        let mut event = self.event(name, "backup", "success");
        event.duration_seconds = duration.as_secs_f64();
        event.downtime_seconds = downtime.as_secs_f64();
        match result {
            Ok(mut r) => {
                r.duration = duration;
                r.downtime = downtime;
                let o = Outcome {
                    result: if r.warnings.is_empty() { "ok" } else { "warning" }.into(),
                    error: r.warnings.join("; "),
                    downtime_seconds: downtime.as_secs_f64(),
                    archive: r.archive.clone(),
                    snapshot: r.snapshot.clone(),
                    original_size: r.original_size,
                    compressed_size: r.compressed_size,
                    deduplicated_size: r.deduplicated_size,
                };
                self.journal.finish(run, &o)?;
                self.metrics.last_success.get_or_create(&label).set(journal::now_unix() - duration.as_secs_f64());
                self.metrics.original_size.get_or_create(&label).set(r.original_size as i64);
                self.metrics.deduplicated_size.get_or_create(&label).set(r.deduplicated_size as i64);
                tracing::info!(service = name, archive = %r.archive, downtime = ?downtime, "backup done");
                event.message = r.summary();
                event.archive = r.archive.clone();
                self.notify(b, Phase::Success, event).await;
                Ok(r)
            }
            Err(e) => {
                let o = Outcome {
                    result: "failed".into(),
                    error: e.to_string(),
                    downtime_seconds: downtime.as_secs_f64(),
                    ..Default::default()
                };
                // A journal that cannot be written must not silence the failure: it is counted and notified anyway
                // (the next start marks the run failed if this write is lost).
                if let Err(je) = self.journal.finish(run, &o) {
                    tracing::error!(service = name, error = %je, "cannot record the failed backup");
                }
                self.metrics.failures.get_or_create(&label).inc();
                tracing::error!(service = name, error = %e, "backup failed");
                event.phase = "fail";
                event.message = e.to_string();
                self.notify(b, Phase::Fail, event).await;
                Err(e)
            }
        }
    }

    async fn backup_steps(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        rep: &Reporter,
        downtime: &mut Duration,
    ) -> Result<BackupReport, JobError> {
        let j = &self.journal;
        let repo = self.repo(b);

        // Everything that can be checked without touching the service is checked before it is touched.
        let s = j.begin(run, name, step::PREFLIGHT, &b.dataset)?;
        rep.say(step::PREFLIGHT, format!("checking dataset {} and repository {}", b.dataset, b.repo)).await;
        self.refuse_if_held(name)?;
        preflight(name, b, &repo).await?;
        let engine =
            Engine::connect(&self.cfg.docker_socket).await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let mount = self.mount_path(name);
        agent_core::state::ensure_dir(&self.cfg.backup.snapshot_mount_dir)
            .map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let clone = format!("{}/{CLONE_PREFIX}{name}", zfs::pool_of(&b.dataset));
        // A clone left by an earlier run (recovery removes them; this covers a manual mount): ours by name.
        zfs::destroy(&clone, true).await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let ts = fresh_timestamp(&b.dataset).await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let snap = format!("{SNAPSHOT_PREFIX}{ts}");
        let archive = format!("{name}-{ts}");
        j.done(s)?;

        let s = j.begin(run, name, step::PRE_HOOKS, "")?;
        run_hooks(&engine, name, b, HookWhen::BeforeSnapshot, rep).await?;
        j.done(s)?;

        // The downtime window: quiesce, snapshot, resume. Resuming happens whatever the snapshot did.
        let ids = engine.running_in_project(name).await.map_err(|e| JobError::step(name, step::QUIESCE, e))?;
        let quiesce = if ids.is_empty() { Quiesce::None } else { b.quiesce };
        let detail = format!("{} {}", quiesce.as_str(), ids.join(" "));
        let q = j.begin(run, name, step::QUIESCE, detail.trim_end())?;
        rep.say(step::QUIESCE, format!("{} {} container(s)", quiesce.as_str(), ids.len())).await;
        let t0 = Instant::now();
        let quiesced = quiesce_all(&engine, quiesce, &ids).await;
        // Until the containers run again, a failed journal write (a full disk, a locked database) must not skip
        // the resume: the first one is kept, no further write is tried before resuming, and it is reported after.
        let mut journal_failed: Option<JournalError> = None;
        let mut snap_step = None;
        let snapshot = match &quiesced {
            Ok(()) => match j.begin(run, name, step::SNAPSHOT, &format!("{}@{snap}", b.dataset)) {
                Ok(s) => {
                    snap_step = Some(s);
                    zfs::snapshot_recursive(&b.dataset, &snap).await
                }
                // Not journaled, so not taken.
                Err(e) => {
                    journal_failed = Some(e);
                    Ok(())
                }
            },
            Err(_) => Ok(()),
        };
        let resume_step = if journal_failed.is_some() {
            None
        } else {
            j.begin(run, name, step::RESUME, detail.trim_end()).map_err(|e| journal_failed = Some(e)).ok()
        };
        let resumed = resume_all(&engine, quiesce, &ids).await;
        *downtime = t0.elapsed();
        rep.say(step::RESUME, format!("containers back after {:.3} s", downtime.as_secs_f64())).await;
        // The bookkeeping, now that the service runs. A container that did not come back keeps the quiesce step
        // open: the next start retries it.
        let book = (|| {
            if let Some(s) = snap_step {
                j.done(s)?;
            }
            if resumed.is_ok() {
                j.done(q)?;
            }
            if let Some(s) = resume_step {
                j.done(s)?;
            }
            Ok::<_, JournalError>(())
        })();
        quiesced.map_err(|e| JobError::step(name, step::QUIESCE, e))?;
        resumed.map_err(|e| JobError::step(name, step::RESUME, e))?;
        if let Some(e) = journal_failed.or(book.err()) {
            return Err(JobError::step(
                name,
                step::SNAPSHOT,
                format!("the journal could not be written ({e}); the containers were resumed first"),
            ));
        }
        snapshot.map_err(|e| JobError::step(name, step::SNAPSHOT, e))?;

        let s = j.begin(run, name, step::POST_HOOKS, "")?;
        run_hooks(&engine, name, b, HookWhen::AfterSnapshot, rep).await?;
        j.done(s)?;

        // Borg reads a clone of the snapshot, mounted at the same path every time (its files cache keys on it).
        let c = j.begin(run, name, step::CLONE, &clone)?;
        rep.say(step::CLONE, format!("mounting {snap} at {}", mount.display())).await;
        let cloned = clone_tree(&b.dataset, &snap, &clone, &mount).await;
        let created = match cloned {
            Ok(()) => {
                let s = j.begin(run, name, step::BORG_CREATE, &b.repo)?;
                rep.say(step::BORG_CREATE, format!("borg create {archive}")).await;
                let r = repo.create(&archive, &mount, &["."], None).await;
                j.done(s)?;
                Ok(r)
            }
            Err(e) => Err(e),
        };
        let s = j.begin(run, name, step::DESTROY_CLONE, &clone)?;
        rep.say(step::DESTROY_CLONE, format!("removing the clone {clone}")).await;
        let destroyed = zfs::destroy(&clone, true).await;
        if destroyed.is_ok() {
            j.done(c)?;
        }
        j.done(s)?;
        let (stats, warnings) = created
            .map_err(|e| JobError::step(name, step::CLONE, e))?
            .map_err(|e| JobError::step(name, step::BORG_CREATE, e))?;
        destroyed.map_err(|e| JobError::step(name, step::DESTROY_CLONE, e))?;

        let mut pruned = Vec::new();
        if !b.retention.is_empty() {
            let s = j.begin(run, name, step::PRUNE, &b.repo)?;
            rep.say(step::PRUNE, "borg prune").await;
            pruned = repo
                .prune(&archive_glob(name), &b.retention)
                .await
                .map_err(|e| JobError::step(name, step::PRUNE, e))?;
            j.done(s)?;
            // Compacting frees the space of pruned archives; with nothing pruned it has nothing to free.
            if !pruned.is_empty() {
                let s = j.begin(run, name, step::COMPACT, &b.repo)?;
                rep.say(step::COMPACT, format!("borg compact after pruning {}", pruned.len())).await;
                repo.compact().await.map_err(|e| JobError::step(name, step::COMPACT, e))?;
                j.done(s)?;
            }
        }

        let s = j.begin(run, name, step::LOCAL_SNAPSHOTS, &b.dataset)?;
        rep.say(step::LOCAL_SNAPSHOTS, format!("keeping the newest {} local snapshots", b.local_snapshots)).await;
        prune_local(&b.dataset, b.local_snapshots).await.map_err(|e| JobError::step(name, step::LOCAL_SNAPSHOTS, e))?;
        j.done(s)?;

        Ok(BackupReport {
            service: name.to_string(),
            archive,
            snapshot: format!("{}@{snap}", b.dataset),
            original_size: stats.original_size,
            compressed_size: stats.compressed_size,
            deduplicated_size: stats.deduplicated_size,
            pruned,
            warnings,
            ..Default::default()
        })
    }

    /// One line for Status: how many services are backed up, which last backup failed, a live host lease.
    pub fn summary(&self) -> String {
        let names = self.backed_up();
        if names.is_empty() {
            return String::new();
        }
        let mut failed = Vec::new();
        let mut never = 0;
        for n in &names {
            let last = self.journal.history(Some(n), 20).unwrap_or_default();
            match last.iter().find(|r| r.kind == "backup" && r.outcome.result != "running") {
                Some(r) if r.outcome.result == "failed" => failed.push(n.as_str()),
                Some(_) => {}
                None => never += 1,
            }
        }
        let mut s = format!("backups: {} services", names.len());
        if never > 0 {
            s.push_str(&format!(", {never} never backed up"));
        }
        if !failed.is_empty() {
            s.push_str(&format!(", last backup failed: {}", failed.join(" ")));
        }
        let held: Vec<String> = self.journal.all_held().unwrap_or_default().into_iter().map(|h| h.service).collect();
        if !held.is_empty() {
            s.push_str(&format!(
                ", interrupted restore waits for `labctl services restore NAME --resume|--abandon`: {}",
                held.join(" ")
            ));
        }
        if let Some(lease) = self.gate.current() {
            s.push_str(&format!(", held by host lease {lease}"));
        }
        s
    }

    /// The archives in the service's repository (oldest first), with the sizes this agent recorded for them. Waits
    /// for the repository like any job (one borg per repository at a time): concurrent listings queue instead of
    /// each starting a borg.
    pub async fn archives(&self, name: &str) -> Result<Vec<crate::model::ArchiveRow>, JobError> {
        let (_, b) = self.settings(name)?;
        let lock = self.repo_lock(&b.repo);
        let _repo = lock.lock().await;
        let list = self.repo(b).list(Some(&archive_glob(name))).await.map_err(|e| JobError::step(name, "list", e))?;
        let mut out = Vec::new();
        for a in list {
            let (original_size, deduplicated_size) = self.journal.archive_sizes(name, &a.name)?.unwrap_or((0, 0));
            out.push(crate::model::ArchiveRow {
                name: a.name,
                time_unix: a.time_unix,
                original_size,
                deduplicated_size,
            });
        }
        Ok(out)
    }
}

/// Checks the dataset, the repository and borg before anything is stopped.
pub(crate) async fn preflight(name: &str, b: &ServiceBackup, repo: &Repo) -> Result<(), JobError> {
    let fail = |m: String| JobError::step(name, step::PREFLIGHT, m);
    match zfs::exists(&b.dataset).await {
        Ok(true) => {}
        Ok(false) => return Err(fail(format!("dataset {} does not exist", b.dataset))),
        Err(e) => return Err(fail(e.to_string())),
    }
    if repo.is_local() && !Path::new(repo.location()).join("config").is_file() {
        return Err(fail(BorgError::NoRepo { repo: b.repo.clone() }.to_string()));
    }
    if !on_path("borg") {
        return Err(fail(BorgError::NotInstalled.to_string()));
    }
    if let Passphrase::File(f) = &b.passphrase {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(f) {
            Err(e) => return Err(fail(format!("passphrase_file {}: {e}", f.display()))),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                tracing::warn!(service = name, file = %f.display(), "passphrase_file is readable by others (chmod 600)")
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// A timestamp no snapshot of ours on `dataset` has yet (two runs within one second wait for the next second).
async fn fresh_timestamp(dataset: &str) -> Result<String, ZfsError> {
    let existing = zfs::snapshots(dataset).await?;
    loop {
        let ts = timestamp_now();
        let name = format!("{SNAPSHOT_PREFIX}{ts}");
        if !existing.iter().any(|s| s.name == name) {
            return Ok(ts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_hooks(
    engine: &Engine,
    name: &str,
    b: &ServiceBackup,
    when: HookWhen,
    rep: &Reporter,
) -> Result<(), JobError> {
    let step = if when == HookWhen::BeforeSnapshot { step::PRE_HOOKS } else { step::POST_HOOKS };
    for h in b.hooks.iter().filter(|h| h.when == when) {
        let shown = h.command.join(" ");
        rep.say(step, format!("hook in {}: {shown}", h.container)).await;
        let id = engine
            .service_container(name, &h.container)
            .await
            .map_err(|e| JobError::step(name, step, e))?
            .ok_or_else(|| JobError::step(name, step, format!("hook container {} is not running", h.container)))?;
        let (code, out) = engine.exec(&id, &h.command, h.timeout).await.map_err(|e| JobError::step(name, step, e))?;
        if code != 0 {
            let tail: Vec<&str> = out.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(JobError::step(
                name,
                step,
                format!("hook `{shown}` in {} exited with {code}: {}", h.container, tail.join(" | ")),
            ));
        }
    }
    Ok(())
}

/// Stops (in parallel, each with its grace period) or pauses the containers. On a failure the ones already done
/// are resumed by the caller's resume step, which is idempotent.
pub(crate) async fn quiesce_all(engine: &Engine, how: Quiesce, ids: &[String]) -> Result<(), DockerError> {
    let results = futures::future::join_all(ids.iter().map(|id| async move {
        match how {
            Quiesce::Stop => engine.stop(id).await,
            Quiesce::Pause => engine.pause(id).await,
            Quiesce::None => Ok(()),
        }
    }))
    .await;
    results.into_iter().collect()
}

/// Starts or unpauses every container (all are tried; the first error is returned).
pub(crate) async fn resume_all(engine: &Engine, how: Quiesce, ids: &[String]) -> Result<(), DockerError> {
    let results = futures::future::join_all(ids.iter().map(|id| async move {
        match how {
            Quiesce::Stop => engine.start(id).await,
            Quiesce::Pause => engine.unpause(id).await,
            Quiesce::None => Ok(()),
        }
    }))
    .await;
    results.into_iter().collect()
}

/// Clones `DATASET@SNAP` and every descendant's snapshot under `clone`, mounted under `mount` in the same layout.
pub(crate) async fn clone_tree(dataset: &str, snap: &str, clone: &str, mount: &Path) -> Result<(), ZfsError> {
    for fs in zfs::filesystems(dataset).await? {
        let rel = fs.strip_prefix(dataset).unwrap_or_default();
        let at = if rel.is_empty() { mount.to_path_buf() } else { mount.join(rel.trim_start_matches('/')) };
        zfs::clone(&format!("{fs}@{snap}"), &format!("{clone}{rel}"), &at).await?;
    }
    Ok(())
}

/// Keeps the newest `keep` of our backup snapshots on `dataset` (safety snapshots and others' are left alone).
async fn prune_local(dataset: &str, keep: u32) -> Result<(), ZfsError> {
    let ours: Vec<_> = zfs::snapshots(dataset)
        .await?
        .into_iter()
        .filter(|s| s.name.strip_prefix(SNAPSHOT_PREFIX).is_some_and(is_timestamp))
        .collect();
    let mut names: Vec<String> = ours.iter().map(|s| s.name.clone()).collect();
    // The timestamp orders them.
    names.sort();
    let excess = names.len().saturating_sub(keep as usize);
    for n in &names[..excess] {
        zfs::destroy_snapshot_recursive(&format!("{dataset}@{n}")).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_timestamps() {
        let ts = timestamp_now();
        assert!(is_timestamp(&ts), "{ts}");
        for bad in ["", "20261125T030000", "20261125X030000Z", "2026112aT030000Z", "20261125T030000Z0"] {
            assert!(!is_timestamp(bad), "{bad}");
        }
        assert_eq!(archive_timestamp("photos", "photos-20261125T030000Z"), Some("20261125T030000Z"));
        assert_eq!(archive_timestamp("photos", "photos-db-20261125T030000Z"), None);
        assert_eq!(archive_timestamp("photos", "photos-20261125T030000Z.checkpoint"), None);
        assert_eq!(archive_glob("photos"), "photos-????????T??????Z*");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 * 1024 * 1024), "10.0 MiB");
    }
}
