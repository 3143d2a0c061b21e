//! Per-service backups: the run (pre-hooks → quiesce exactly the running containers → recursive ZFS snapshot →
//! resume → post-hooks → clone mounted at a stable path → `borg create` into each of the service's repositories →
//! destroy the clone → per repository prune → compact → local snapshot retention), each step journaled before it is
//! done, each repository's result recorded (some failed, some not: a `partial` run); the job limits (one job per
//! service and its repositories, `[backup] parallel` services and repositories at once, the host's lease); metrics
//! and notifications. Restores, checks and drills
//! are in `restore`, crash repair in `recovery`. Must not know proto/tonic (the `grpc` module converts), nor the
//! CLIs of zfs/borg/docker (their modules do).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::backups::BackupWatch;
use agent_core::borg::BorgError;
use agent_core::freshness::{self, Layer, Record};
use tokio::sync::Semaphore;

use crate::config::{Config, HookWhen, Quiesce, Service, ServiceBackup};
use crate::docker::{DockerError, Engine};
use crate::journal::{step, Job, Journal, JournalError, Outcome, Quiesced, RepoRun, Trigger};
use crate::lease::Gate;
use crate::zfs::{self, ZfsError};
use agent_core::notify::{self, Event, NotifyTarget, Phase};
use agent_core::repos::RepoSpec;

/// Our snapshots are `strata-YYYYMMDDTHHMMSSZ`; safety snapshots before a restore `strata-prerestore-…`.
pub(crate) const SNAPSHOT_PREFIX: &str = "strata-";
pub(crate) const PRERESTORE_PREFIX: &str = "strata-prerestore-";
/// Our clones and scratch datasets are direct children of the pool: `POOL/strata-clone-SERVICE`,
/// `POOL/strata-scratch-SERVICE`. Recovery destroys only names with these prefixes.
pub(crate) const CLONE_PREFIX: &str = "strata-clone-";
pub(crate) const SCRATCH_PREFIX: &str = "strata-scratch-";
/// Set in the environment of every long-running program a job starts (borg, cp): recovery kills the ones a dead
/// agent left behind, and only those.
pub(crate) const OWNER_ENV: &str = "STRATA_JOB_OWNER";

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("service {0} is not in the config")]
    Unknown(String),
    #[error("service {0} has no backup settings (dataset, repo)")]
    NotBackedUp(String),
    #[error("service {service}: {message}")]
    Refused { service: String, message: String },
    #[error("service {service}: {step}: {message}")]
    Step { service: String, step: &'static str, message: String },
    /// Some repositories got the run's archive, others did not (`message` names them and why).
    #[error("service {service}: partial backup: {message}")]
    Partial { service: String, message: String, report: Box<BackupReport> },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl JobError {
    pub(crate) fn step(service: &str, step: &'static str, e: impl std::fmt::Display) -> JobError {
        JobError::Step { service: service.to_string(), step, message: e.to_string() }
    }
}

/// Where a job reports its progress (a labctl stream, or nowhere for scheduled runs): agent-core's.
pub(crate) use agent_core::jobs::Reporter;

/// What a finished backup did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BackupReport {
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
    /// What each repository got.
    pub repos: Vec<RepoRun>,
}

impl BackupReport {
    pub(crate) fn summary(&self) -> String {
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
        if self.repos.len() > 1 {
            let per: Vec<String> = self
                .repos
                .iter()
                .map(|r| match r.succeeded() {
                    true => format!("{} {} in {:.1} s", r.label, r.result, r.duration_seconds),
                    false => format!("{} {}: {}", r.label, r.result, r.error),
                })
                .collect();
            s.push_str(&format!("; repositories: {}", per.join("; ")));
        }
        s
    }
}

pub(crate) fn human(bytes: u64) -> String {
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
pub(crate) fn timestamp_now() -> String {
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

/// What this agent's notifications are about: services (`agent_core::notify`).
pub(crate) const LAYER: Layer = Layer::Services;

/// How a job that ended in an error is recorded and told: `cancelled` when its job was cancelled (`Cancel`; the
/// failure is the cancellation's doing), `failed` otherwise.
pub(crate) fn failed_or_cancelled() -> (&'static str, Phase) {
    if agent_core::runner::is_cancelled() {
        ("cancelled", Phase::Cancel)
    } else {
        ("failed", Phase::Fail)
    }
}

/// The archive glob of a service: its archives (`NAME-YYYYMMDDTHHMMSSZ`, the scheme of `agent_core::borg`) and
/// Borg's `.checkpoint` leftovers of such archives.
pub(crate) fn archive_glob(service: &str) -> String {
    format!("{}*", agent_core::borg::archive_glob(service))
}

/// The timestamp part of one of our archive names, if it is one.
pub(crate) fn archive_timestamp<'a>(service: &str, archive: &'a str) -> Option<&'a str> {
    agent_core::borg::archive_stamp(service, archive)
}

/// True for `YYYYMMDDTHHMMSSZ`.
pub(crate) fn is_timestamp(ts: &str) -> bool {
    agent_core::borg::is_stamp(ts)
}

/// The services agent's jobs: see the module docs.
pub(crate) struct Backups {
    /// The running config, swapped whole by a reload; a job reads its service's settings once, at its start, and
    /// finishes under them.
    cfg: crate::SharedConfig,
    pub(crate) journal: Journal,
    pub gate: Gate,
    parallel: Semaphore,
    pub(crate) repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The backups' metrics and freshness (agent-core's one vocabulary).
    pub metrics: BackupWatch,
    pub(crate) host: String,
}

impl Backups {
    pub(crate) fn open(cfg: crate::SharedConfig) -> Result<Backups, JournalError> {
        let loaded = cfg.load_full();
        let journal = Journal::open(&loaded.common.state_dir)?;
        let host = notify::this_host();
        let metrics = BackupWatch::new(Layer::Services, agent_core::clock::now_unix());
        watch_services(&loaded, &journal, &metrics);
        Ok(Backups {
            parallel: Semaphore::new(loaded.backup.parallel),
            cfg,
            journal,
            gate: Gate::default(),
            repo_locks: Mutex::new(HashMap::new()),
            metrics,
            host,
        })
    }

    /// The running config (one snapshot).
    pub(crate) fn cfg(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Declares the running config's backups to the freshness watch again (after a reload): added services and
    /// repositories are watched, changed `warn_after`s apply, and dropped ones are no longer judged.
    pub(crate) fn rewatch(&self) {
        let cfg = self.cfg();
        watch_services(&cfg, &self.journal, &self.metrics);
        self.metrics.retain(|name, repo| {
            cfg.service(name).and_then(|s| s.backup.as_deref()).is_some_and(|b| b.repo(repo).is_some())
        });
    }

    /// The service and its backup settings.
    /// A copy taken from the running config: a job that reads it at its start finishes under it across reloads.
    pub(crate) fn settings(&self, name: &str) -> Result<(Service, ServiceBackup), JobError> {
        let cfg = self.cfg();
        let svc = cfg.service(name).ok_or_else(|| JobError::Unknown(name.to_string()))?;
        let b = svc.backup.as_deref().ok_or_else(|| JobError::NotBackedUp(name.to_string()))?;
        Ok((svc.clone(), b.clone()))
    }

    /// The time zone backup schedules are read in.
    pub(crate) fn timezone(&self) -> agent_core::cron::TimeZone {
        self.cfg().timezone.clone()
    }

    /// The services that have backup settings.
    pub(crate) fn backed_up(&self) -> Vec<String> {
        self.cfg().services.iter().filter(|s| s.backup.is_some()).map(|s| s.name.clone()).collect()
    }

    /// The value of [`OWNER_ENV`] in the programs this agent runs for jobs.
    pub(crate) fn owner(&self) -> String {
        format!("services-agent:{}", self.cfg().common.state_dir.display())
    }

    pub(crate) fn mount_path(&self, service: &str) -> PathBuf {
        self.cfg().backup.snapshot_mount_dir.join(service)
    }

    pub(crate) fn targets(&self, b: &ServiceBackup) -> Vec<NotifyTarget> {
        self.cfg().notify.iter().chain(&b.notify).cloned().collect()
    }

    /// Tells the global and the service's targets (healthchecks ones hear of backups only: `agent_core::notify`).
    pub(crate) async fn notify(&self, b: &ServiceBackup, phase: Phase, event: Event) {
        notify::send(&self.targets(b), phase, &event).await;
    }

    pub(crate) fn event(&self, service: &str, job: Job) -> Event {
        Event::new(LAYER, service, job.as_str(), &self.host)
    }

    /// Backs up every backed-up service, `[backup] parallel` at a time; one report (or error) per service.
    pub(crate) async fn backup_all(
        self: &Arc<Self>,
        trigger: Trigger,
        rep: &Reporter,
    ) -> Vec<(String, Result<BackupReport, JobError>)> {
        let mut tasks = Vec::new();
        for name in self.backed_up() {
            let (me, rep) = (self.clone(), rep.for_target(&name));
            // The job's cancellation scope does not follow a spawned task: hand it over.
            let cancel = agent_core::runner::current_cancel();
            tasks.push(tokio::spawn(async move {
                let r = match cancel {
                    Some(token) => agent_core::runner::with_cancel(token, me.backup(&name, trigger, &rep)).await,
                    None => me.backup(&name, trigger, &rep).await,
                };
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
    pub(crate) async fn backup(&self, name: &str, trigger: Trigger, rep: &Reporter) -> Result<BackupReport, JobError> {
        let (_, b) = &self.settings(name)?;
        let _job = self
            .gate
            .enter(|lease| {
                tracing::info!(service = name, lease, "backup waits for the host backup lease to end");
            })
            .await;
        let _slot = self.parallel.acquire().await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let _repos = self.lock_repos(b).await;
        let run = self.journal.start_run(name, Job::Backup, trigger)?;
        let started = Instant::now();
        let started_unix = agent_core::clock::now_unix();
        tracing::info!(service = name, %trigger, "backup started");
        self.notify(b, Phase::Start, self.event(name, Job::Backup)).await;
        let mut downtime = Duration::ZERO;
        let mut repos: Vec<RepoRun> = Vec::new();
        let result = self.backup_steps(run, name, b, rep, &mut downtime, &mut repos).await;
        let duration = started.elapsed();
        // In config order, whatever step each repository ended at.
        repos.sort_by_key(|r| b.repos.iter().position(|c| c.label == r.label));
        let result = result.map(|mut report| {
            report.repos = repos.clone();
            report
        });
        // Each repository's own result, whatever the run's: recorded, and its metrics.
        for r in &repos {
            if let Err(e) = self.journal.record_repo(run, name, r) {
                tracing::error!(service = name, repo = %r.label, error = %e, "cannot record the repository's result");
            }
            let outcome = if r.succeeded() { Ok(r.original_size) } else { Err(r.error.clone()) };
            self.metrics.record_run(name, &r.label, started_unix, Duration::from_secs_f64(r.duration_seconds), outcome);
        }
        // Some repositories got the archive, others not: a partial run, told as a failure naming them.
        let failed: Vec<&RepoRun> = repos.iter().filter(|r| !r.succeeded()).collect();
        let result = match result {
            Ok(r) if !failed.is_empty() => Err(JobError::Partial {
                service: name.to_string(),
                message: failed
                    .iter()
                    .map(|f| format!("repository {}: {}", f.label, f.error))
                    .collect::<Vec<_>>()
                    .join("; "),
                report: Box::new(r),
            }),
            other => other,
        };
        // A run that failed before a repository had its turn failed there too (the metrics and freshness say so).
        if let Err(e) = &result {
            for r in b.repos.iter().filter(|c| !repos.iter().any(|r| r.label == c.label)) {
                self.metrics.record_run(name, &r.label, started_unix, Duration::ZERO, Err(e.to_string()));
            }
        }
        self.metrics.record_downtime(name, downtime);
        let mut event = self.event(name, Job::Backup);
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
                tracing::info!(service = name, archive = %r.archive, downtime = ?downtime, "backup done");
                event.message = r.summary();
                event.archive = r.archive.clone();
                self.notify(b, Phase::Success, event).await;
                Ok(r)
            }
            Err(e) => {
                let (mut result, phase) = failed_or_cancelled();
                let mut o = Outcome {
                    result: String::new(),
                    error: e.to_string(),
                    downtime_seconds: downtime.as_secs_f64(),
                    ..Default::default()
                };
                if let JobError::Partial { report, .. } = &e {
                    result = "partial";
                    o.archive = report.archive.clone();
                    o.snapshot = report.snapshot.clone();
                    o.original_size = report.original_size;
                    o.compressed_size = report.compressed_size;
                    o.deduplicated_size = report.deduplicated_size;
                    event.archive = report.archive.clone();
                }
                o.result = result.into();
                // A journal that cannot be written must not silence the failure: it is counted and notified anyway
                // (the next start marks the run failed if this write is lost).
                if let Err(je) = self.journal.finish(run, &o) {
                    tracing::error!(service = name, error = %je, "cannot record the failed backup");
                }
                tracing::error!(service = name, error = %e, "backup {result}");
                event.message = e.to_string();
                self.notify(b, phase, event).await;
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
        results: &mut Vec<RepoRun>,
    ) -> Result<BackupReport, JobError> {
        let j = &self.journal;

        // Everything that can be checked without touching the service is checked before it is touched: the
        // dataset and borg, then each repository's files and, for a local one, its id (read from its `config`). A
        // remote repository's id costs a round trip and a `borg serve` start: it is compared with the one its
        // `borg create` reports instead (borg itself refuses a repository whose key the passphrase does not open,
        // so only one initialised with the same passphrase can get an archive before the mismatch is reported).
        // Repositories that fail are recorded as failed and left out; with none left the service is not touched.
        let s = j.begin(run, name, step::PREFLIGHT, &b.dataset)?;
        rep.say(step::PREFLIGHT, format!("checking dataset {} and repositories {}", b.dataset, b.labels())).await;
        self.refuse_if_held(name)?;
        preflight(name, b).await?;
        let mut usable = Vec::new();
        for r in &b.repos {
            let checked = match self.preflight_files(name, b, r) {
                Ok(()) if r.location.is_local() => self.same_repo(name, r, self.repo(b, r).id().await),
                other => other,
            };
            match checked {
                Ok(()) => usable.push(r),
                Err(e) => results.push(repo_failed(r, e, Duration::ZERO)),
            }
        }
        if usable.is_empty() {
            return Err(JobError::step(
                name,
                step::PREFLIGHT,
                results.iter().map(|r| format!("repository {}: {}", r.label, r.error)).collect::<Vec<_>>().join("; "),
            ));
        }
        let engine =
            Engine::connect(&self.cfg().docker_socket).await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let mount = self.mount_path(name);
        agent_core::state::ensure_dir(&self.cfg().backup.snapshot_mount_dir)
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

        // The downtime window: quiesce, snapshot, resume — once for every repository. Resuming happens whatever
        // the snapshot did.
        let ids = engine.running_in_project(name).await.map_err(|e| JobError::step(name, step::QUIESCE, e))?;
        let quiesce = if ids.is_empty() { Quiesce::None } else { b.quiesce };
        let detail = Quiesced { how: quiesce, ids: ids.clone() }.to_string();
        let q = j.begin(run, name, step::QUIESCE, &detail)?;
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
            j.begin(run, name, step::RESUME, &detail).map_err(|e| journal_failed = Some(e)).ok()
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

        // Borg reads a clone of the snapshot, mounted at the same path every time (its files cache keys on it);
        // every repository gets its archive from that one clone, `[backup] parallel` repositories at a time.
        let c = j.begin(run, name, step::CLONE, &clone)?;
        rep.say(step::CLONE, format!("mounting {snap} at {}", mount.display())).await;
        let cloned = clone_tree(&b.dataset, &snap, &clone, &mount).await;
        let slots = Semaphore::new(self.cfg().backup.parallel.max(1));
        let mut created: Vec<RepoRun> = Vec::new();
        if cloned.is_ok() {
            let per_repo = usable.iter().map(|r| async {
                let _slot = slots.acquire().await;
                self.create_in(run, name, b, r, &archive, &mount, rep).await
            });
            created = futures::future::join_all(per_repo).await.into_iter().collect::<Result<_, _>>()?;
        }
        let s = j.begin(run, name, step::DESTROY_CLONE, &clone)?;
        rep.say(step::DESTROY_CLONE, format!("removing the clone {clone}")).await;
        let destroyed = zfs::destroy(&clone, true).await;
        if destroyed.is_ok() {
            j.done(c)?;
        }
        j.done(s)?;
        cloned.map_err(|e| JobError::step(name, step::CLONE, e))?;
        if !created.iter().any(RepoRun::succeeded) {
            results.extend(created);
            let why: Vec<String> = results.iter().map(|r| format!("repository {}: {}", r.label, r.error)).collect();
            return Err(JobError::step(name, step::BORG_CREATE, why.join("; ")));
        }
        let kept = destroyed.map_err(|e| JobError::step(name, step::DESTROY_CLONE, e));
        if let Err(e) = kept {
            results.extend(created);
            return Err(e);
        }

        // Each repository that got the archive: its retention (not an append-only one's), once the clone is gone.
        let maintained = futures::future::join_all(
            created.iter_mut().zip(&usable).filter(|(out, _)| out.succeeded()).map(|(out, r)| async {
                let _slot = slots.acquire().await;
                self.maintain(run, name, b, r, out, rep).await.map(|p| (r.label.clone(), p))
            }),
        )
        .await;
        results.extend(created.iter().cloned());
        let pruned_per_repo: Vec<(String, Vec<String>)> = maintained.into_iter().collect::<Result<_, _>>()?;
        // The report is the first repository (in config order) that got the archive.
        let first = created.iter().find(|r| r.succeeded()).cloned().unwrap_or_default();
        let pruned = pruned_per_repo.into_iter().find(|(l, _)| *l == first.label).map(|(_, p)| p).unwrap_or_default();

        let s = j.begin(run, name, step::LOCAL_SNAPSHOTS, &b.dataset)?;
        rep.say(step::LOCAL_SNAPSHOTS, format!("keeping the newest {} local snapshots", b.local_snapshots)).await;
        prune_local(&b.dataset, b.local_snapshots).await.map_err(|e| JobError::step(name, step::LOCAL_SNAPSHOTS, e))?;
        j.done(s)?;

        let warnings: Vec<String> = created
            .iter()
            .filter(|r| r.result == "warning")
            .map(|r| format!("repository {}: {}", r.label, r.error))
            .collect();
        Ok(BackupReport {
            service: name.to_string(),
            archive,
            snapshot: format!("{}@{snap}", b.dataset),
            original_size: first.original_size,
            compressed_size: first.compressed_size,
            deduplicated_size: first.deduplicated_size,
            pruned,
            warnings,
            repos: results.clone(),
            ..Default::default()
        })
    }

    /// One repository's part of a run while the clone is mounted: `borg create` from it. A borg failure is this
    /// repository's result, not the run's error; only a journal that cannot be written is.
    #[allow(clippy::too_many_arguments)]
    async fn create_in(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        r: &RepoSpec,
        archive: &str,
        mount: &Path,
        rep: &Reporter,
    ) -> Result<RepoRun, JobError> {
        let j = &self.journal;
        let t0 = Instant::now();
        let s = j.begin(run, name, step::BORG_CREATE, &r.url())?;
        rep.say(step::BORG_CREATE, format!("borg create {archive} in {}", r.label)).await;
        let mut repo = self.repo(b, r);
        if rep.is_watched() {
            let root = mount.to_path_buf();
            let total = tokio::task::spawn_blocking(move || agent_core::borg::source_bytes(&root, &["."])).await;
            let message = format!("borg create {archive} in {}", r.label);
            if let Some(sink) = agent_core::borg::job_progress(rep, step::BORG_CREATE, total.unwrap_or(0), message) {
                repo = repo.progress(sink);
            }
        }
        let created = repo.create(archive, mount, &["."], None).await;
        j.done(s)?;
        // The repository that took the archive is the one recorded (a remote's id is first seen here).
        let created = created.map_err(|e| e.to_string()).and_then(|(stats, warnings)| {
            self.same_repo(name, r, Ok(stats.repository_id.clone())).map(|()| (stats, warnings))
        });
        Ok(match created {
            Ok((stats, warnings)) => RepoRun {
                label: r.label.clone(),
                url: r.url(),
                result: if warnings.is_empty() { "ok" } else { "warning" }.into(),
                error: warnings.join("; "),
                archive: archive.to_string(),
                original_size: stats.original_size,
                compressed_size: stats.compressed_size,
                deduplicated_size: stats.deduplicated_size,
                duration_seconds: t0.elapsed().as_secs_f64(),
            },
            Err(e) => repo_failed(r, e, t0.elapsed()),
        })
    }

    /// A repository's retention after it got the run's archive (nothing for an append-only one): `borg prune`, and
    /// `borg compact` when something was pruned; returns the archives pruned. The archive is stored whatever these
    /// do: their failure makes the repository's result a warning that says so.
    async fn maintain(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        r: &RepoSpec,
        out: &mut RepoRun,
        rep: &Reporter,
    ) -> Result<Vec<String>, JobError> {
        let retention = b.retention_of(r);
        if retention.is_empty() {
            return Ok(Vec::new());
        }
        let j = &self.journal;
        let t0 = Instant::now();
        let repo = self.repo(b, r);
        let s = j.begin(run, name, step::PRUNE, &r.url())?;
        rep.say(step::PRUNE, format!("borg prune of {}", r.label)).await;
        let result = repo.prune(&archive_glob(name), &retention).await;
        j.done(s)?;
        let mut pruned = Vec::new();
        match result {
            // Compacting frees the space of pruned archives; with nothing pruned it has nothing to free.
            Ok(p) if !p.is_empty() => {
                let s = j.begin(run, name, step::COMPACT, &r.url())?;
                rep.say(step::COMPACT, format!("borg compact of {} after pruning {}", r.label, p.len())).await;
                let compacted = repo.compact().await;
                j.done(s)?;
                if let Err(e) = compacted {
                    out.result = "warning".into();
                    out.error = format!("the archive is stored, but compact failed: {e}");
                }
                pruned = p;
            }
            Ok(_) => {}
            Err(e) => {
                out.result = "warning".into();
                out.error = format!("the archive is stored, but prune failed: {e}");
            }
        }
        out.duration_seconds += t0.elapsed().as_secs_f64();
        Ok(pruned)
    }

    /// One line for Status: how many services are backed up, which last backup failed, a live host lease.
    pub(crate) fn summary(&self) -> String {
        let names = self.backed_up();
        if names.is_empty() {
            return String::new();
        }
        let mut failed = Vec::new();
        let mut never = 0;
        for n in &names {
            let last = self.journal.history(Some(n), 20).unwrap_or_default();
            match last.iter().find(|r| r.kind == Job::Backup && r.outcome.result != "running") {
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
    /// `label`: the repository (default: the first reachable, local first).
    pub(crate) async fn archives(
        &self,
        name: &str,
        label: Option<&str>,
    ) -> Result<Vec<crate::model::ArchiveRow>, JobError> {
        let (_, b) = &self.settings(name)?;
        let r = self.pick_repo(name, b, label).await?;
        let _repos = self.lock_repos(b).await;
        let list =
            self.repo(b, r).list(Some(&archive_glob(name))).await.map_err(|e| JobError::step(name, "list", e))?;
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

/// Checks the dataset and borg before anything is stopped (each repository: `Backups::preflight_files`, then its
/// id).
/// Declares every backed-up service's repositories to the watch with what the journal says of each (the last
/// success and the last run's outcome survive a restart, so alerts see no gap), and when each is overdue (its
/// `warn_after`, or 1.5 × its schedule's interval plus its jitter). Runs from before per-repository results count
/// for every repository of the service.
fn watch_services(cfg: &Config, journal: &Journal, watch: &BackupWatch) {
    let now = agent_core::clock::now_unix();
    for s in cfg.services.iter() {
        let Some(b) = s.backup.as_deref() else { continue };
        let warn_after = b.warn_after.or_else(|| {
            let cron = b.schedule.as_ref()?;
            freshness::default_warn_after(cron, &cfg.timezone, b.jitter, now)
        });
        let history = journal.history(Some(&s.name), 50).unwrap_or_else(|e| {
            tracing::error!(service = %s.name, error = %e, "cannot read the backup history");
            Vec::new()
        });
        let last = history.iter().find(|r| r.kind == Job::Backup && r.outcome.result != "running");
        for r in &b.repos {
            let last_success = match journal.last_repo_ok(&s.name, &r.label) {
                Ok(Some(t)) => Some(t),
                _ if b.repos.len() == 1 => journal.last_ok(&s.name, Job::Backup).ok().flatten(),
                _ => None,
            };
            let last_error = last.and_then(|run| match run.repos.iter().find(|x| x.label == r.label) {
                Some(x) => (!x.succeeded()).then(|| x.error.clone()),
                None => {
                    matches!(run.outcome.result.as_str(), "failed" | "cancelled").then(|| run.outcome.error.clone())
                }
            });
            let record = Record {
                last_success: last_success.map(|t| t as i64),
                last_run: last.map(|run| run.started_unix as i64),
                last_error,
            };
            watch.watch(&s.name, &r.label, warn_after, record);
        }
    }
}

pub(crate) async fn preflight(name: &str, b: &ServiceBackup) -> Result<(), JobError> {
    let fail = |m: String| JobError::step(name, step::PREFLIGHT, m);
    match zfs::exists(&b.dataset).await {
        Ok(true) => {}
        Ok(false) => return Err(fail(format!("dataset {} does not exist", b.dataset))),
        Err(e) => return Err(fail(e.to_string())),
    }
    if !on_path("borg") {
        return Err(fail(BorgError::NotInstalled.to_string()));
    }
    Ok(())
}

/// A repository's result when borg failed for it (`cancelled` when its job was).
fn repo_failed(r: &RepoSpec, e: impl std::fmt::Display, took: Duration) -> RepoRun {
    RepoRun {
        label: r.label.clone(),
        url: r.url(),
        result: failed_or_cancelled().0.into(),
        error: e.to_string(),
        duration_seconds: took.as_secs_f64(),
        ..Default::default()
    }
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
