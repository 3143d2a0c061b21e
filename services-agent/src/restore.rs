//! Restores (in place behind a safety snapshot, or to a path for inspection), the operator's decision on a held
//! restore (resume or abandon), Borg checks and restore drills of one service, each a journaled run in the history.
//! Must not know proto/tonic, nor the CLIs of zfs/borg/docker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_core::borg::CheckKind;
use agent_core::notify::Phase;
use agent_core::runner::{self, Cmd};

use crate::backup::{
    archive_glob, archive_timestamp, clone_tree, failed_or_cancelled, preflight, timestamp_now, Backups, JobError,
    Reporter, CLONE_PREFIX, PRERESTORE_PREFIX, SCRATCH_PREFIX, SNAPSHOT_PREFIX,
};
use crate::config::{Quiesce, ServiceBackup};
use crate::docker::Engine;
use crate::journal::{now_unix, step, Held, Job, OpenStep, Outcome, Quiesced, Trigger};
use crate::verify;
use crate::zfs;
use agent_core::repos::RepoSpec;

/// What a restore reads, once the request is resolved and checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Picked {
    /// An archive in one of the service's repositories.
    Archive { repo: Box<RepoSpec>, name: String },
    /// A local snapshot, `DATASET@SNAP`.
    Snapshot(String),
}

impl Picked {
    pub(crate) fn name(&self) -> &str {
        match self {
            Picked::Archive { name: n, .. } | Picked::Snapshot(n) => n,
        }
    }
}

/// A failed in-place replacement, and whether the dataset holds whole data (so that the service may start).
struct Failed {
    error: JobError,
    data_safe: bool,
}

/// Copying a snapshot's data can take long; the timeout only catches a hung copy.
const COPY_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// The operator's decision on a restore that recovery held (see `recovery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A new safety snapshot of the data as it is now, then the held restore's replacement again, from its source;
    /// then the service starts.
    Resume,
    /// The data stays as it is; the containers the held restore stopped are started.
    Abandon,
}

/// What to restore from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The newest archive.
    Latest,
    Archive(String),
    /// A local snapshot (`strata-…`, or `DATASET@strata-…`).
    Snapshot(String),
}

/// What a finished restore, check or drill did: its outcome in one line, and the archive and snapshot it worked from
/// (empty when none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunReport {
    pub service: String,
    pub message: String,
    pub archive: String,
    pub snapshot: String,
}

impl Backups {
    /// Ends a job run: history row, notification on failure (and success), the report or the error.
    async fn end(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        job: Job,
        started: Instant,
        result: Result<(String, Outcome), JobError>,
    ) -> Result<RunReport, JobError> {
        let mut event = self.event(name, job);
        event.duration_seconds = started.elapsed().as_secs_f64();
        match result {
            Ok((message, mut o)) => {
                if o.result.is_empty() {
                    o.result = "ok".into();
                }
                self.journal.finish(run, &o)?;
                tracing::info!(service = name, %job, "{message}");
                event.message = message.clone();
                self.notify(b, Phase::Success, event).await;
                Ok(RunReport { service: name.to_string(), message, archive: o.archive, snapshot: o.snapshot })
            }
            Err(e) => {
                // A job cancelled by `Cancel` failed because it was told to: recorded and told as `cancelled`.
                let (result, phase) = failed_or_cancelled();
                let o = Outcome { result: result.into(), error: e.to_string(), ..Default::default() };
                // Notified even when the journal cannot be written (the next start marks the run failed then).
                if let Err(je) = self.journal.finish(run, &o) {
                    tracing::error!(service = name, %job, error = %je, "cannot record the {result} {job}");
                }
                tracing::error!(service = name, %job, error = %e, "{job} {result}");
                event.message = e.to_string();
                self.notify(b, phase, event).await;
                Err(e)
            }
        }
    }

    /// The archive `source` names (the newest for `Latest`) in repository `r`, checked to exist.
    pub(crate) async fn pick_archive(
        &self,
        name: &str,
        b: &ServiceBackup,
        r: &RepoSpec,
        wanted: Option<&str>,
    ) -> Result<Picked, JobError> {
        let list =
            self.repo(b, r).list(Some(&archive_glob(name))).await.map_err(|e| JobError::step(name, "list", e))?;
        let mut ours = list.into_iter().filter(|a| archive_timestamp(name, &a.name).is_some());
        let found = match wanted {
            Some(w) => ours.find(|a| a.name == w),
            None => ours.next_back(),
        };
        let found = found.ok_or_else(|| JobError::Refused {
            service: name.to_string(),
            message: match wanted {
                Some(w) => format!("no archive {w} in repository {} ({})", r.label, r.url()),
                None => format!("repository {} ({}) holds no archive of this service yet", r.label, r.url()),
            },
        })?;
        Ok(Picked::Archive { repo: Box::new(r.clone()), name: found.name })
    }

    /// `DATASET@SNAP` of a local snapshot named by the request, checked to exist.
    async fn pick_snapshot(&self, name: &str, b: &ServiceBackup, wanted: &str) -> Result<String, JobError> {
        let snap = match wanted.split_once('@') {
            Some((ds, s)) if ds == b.dataset => s,
            Some((ds, _)) => {
                return Err(JobError::Refused {
                    service: name.into(),
                    message: format!("snapshot {wanted} is not of the service's dataset {} ({ds})", b.dataset),
                })
            }
            None => wanted,
        };
        let all = zfs::snapshots(&b.dataset).await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        if !all.iter().any(|s| s.name == snap) {
            return Err(JobError::Refused {
                service: name.into(),
                message: format!("no snapshot {}@{snap}", b.dataset),
            });
        }
        Ok(format!("{}@{snap}", b.dataset))
    }

    /// Refuses a single-path restore whose `path` its source does not hold (an archive is listed; a snapshot is
    /// cloned to the scratch dataset, looked into, and the clone destroyed), before anything is stopped.
    pub(crate) async fn check_source_path(
        &self,
        name: &str,
        b: &ServiceBackup,
        from: &Picked,
        path: &str,
    ) -> Result<(), JobError> {
        let found = match from {
            Picked::Archive { repo, name: a } => {
                let list = self
                    .repo(b, repo)
                    .list_files(a, Some(path))
                    .await
                    .map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
                list.iter().any(|e| e.path == path)
            }
            Picked::Snapshot(sn) => {
                let snap = sn.split_once('@').map(|(_, s)| s).unwrap_or_default();
                let scratch = format!("{}/{SCRATCH_PREFIX}{name}", zfs::pool_of(&b.dataset));
                let at = self.cfg().backup.snapshot_mount_dir.join(format!("{name}.restore"));
                let fail = |e: zfs::ZfsError| JobError::step(name, step::PREFLIGHT, e);
                zfs::destroy(&scratch, true).await.map_err(fail)?;
                let cloned = clone_tree(&b.dataset, snap, &scratch, &at).await;
                let found = cloned.is_ok() && std::fs::symlink_metadata(at.join(path)).is_ok();
                let destroyed = zfs::destroy(&scratch, true).await;
                cloned.map_err(fail)?;
                destroyed.map_err(fail)?;
                found
            }
        };
        if found {
            Ok(())
        } else {
            let kind = if matches!(from, Picked::Archive { .. }) { "archive" } else { "snapshot" };
            Err(JobError::Refused {
                service: name.into(),
                message: format!("--path {path} is not in {kind} {}", from.name()),
            })
        }
    }

    /// Restores the service (see `labctl services restore`). To a path: the data is extracted there (the path must
    /// not exist or be empty) and the service is not touched. In place: the service is stopped, a safety snapshot
    /// `strata-prerestore-…` is taken (no safety snapshot, no restore), the dataset's contents are replaced from the
    /// archive or local snapshot, and the service is started and waited for until running and healthy.
    pub(crate) async fn restore(
        &self,
        name: &str,
        source: Source,
        to: Option<PathBuf>,
        label: Option<&str>,
        path: Option<&str>,
        rep: &Reporter,
    ) -> Result<RunReport, JobError> {
        let (_, b) = &self.settings(name)?;
        let to = match to {
            Some(p) => Some(self.confined_target(name, &p).await?),
            None => None,
        };
        if label.is_some() && matches!(source, Source::Snapshot(_)) {
            return Err(JobError::Refused {
                service: name.into(),
                message: "--repo names a repository, but a snapshot restore reads no repository".into(),
            });
        }
        let _job = self.gate.enter(|_| {}).await;
        let _repos = self.lock_repos(b).await;
        let run = self.journal.start_run(name, Job::Restore, Trigger::Manual)?;
        let started = Instant::now();
        let result = self.restore_steps(run, name, b, source, to, label, path, rep, None).await;
        self.end(run, name, b, Job::Restore, started, result).await
    }

    /// `--to PATH` checked before anything is done: absolute, no `..`, no symlinked component, not a system or
    /// top-level directory, not in the agent's state or snapshot directories nor in any service's live data.
    async fn confined_target(&self, name: &str, p: &Path) -> Result<PathBuf, JobError> {
        let cfg = self.cfg();
        let mut mounts = Vec::new();
        for s in cfg.services.iter().filter_map(|s| s.backup.as_deref()) {
            if let Ok(Some(m)) = zfs::mountpoint(&s.dataset).await {
                mounts.push((m, format!("the live data of dataset {}", s.dataset)));
            }
        }
        let mut own: Vec<(&Path, &str)> = vec![
            (cfg.common.state_dir.as_path(), "the agent's state directory"),
            (cfg.backup.snapshot_mount_dir.as_path(), "the agent's snapshot_mount_dir"),
        ];
        own.extend(mounts.iter().map(|(m, what)| (m.as_path(), what.as_str())));
        agent_core::target::confined(p, &own)
            .map_err(|e| JobError::Refused { service: name.into(), message: format!("--to {e}: refused") })
    }

    /// Refuses when an interrupted restore of `name` waits for the operator's decision (backups and restores would
    /// work on data nobody has vouched for).
    pub(crate) fn refuse_if_held(&self, name: &str) -> Result<(), JobError> {
        match self.journal.held(name)? {
            Some(h) => Err(JobError::Refused {
                service: name.into(),
                message: format!(
                    "an interrupted restore (run {}) waits for a decision: run `labctl services restore {name} \
                     --resume` or `--abandon` first ({})",
                    h.run, h.reason
                ),
            }),
            None => Ok(()),
        }
    }

    /// Resumes or abandons the restore of `name` that recovery held (see [`Decision`]).
    pub(crate) async fn decide(&self, name: &str, decision: Decision, rep: &Reporter) -> Result<RunReport, JobError> {
        let (_, b) = &self.settings(name)?;
        let _job = self.gate.enter(|_| {}).await;
        let _repos = self.lock_repos(b).await;
        let held = self.journal.held(name)?.ok_or_else(|| JobError::Refused {
            service: name.into(),
            message: "no interrupted restore of this service waits for a decision: nothing to resume or abandon".into(),
        })?;
        let trigger = match decision {
            Decision::Resume => Trigger::Resume,
            Decision::Abandon => Trigger::Abandon,
        };
        let run = self.journal.start_run(name, Job::Restore, trigger)?;
        let started = Instant::now();
        let result = match decision {
            Decision::Resume => {
                let source = if !held.snapshot.is_empty() {
                    Ok(Source::Snapshot(held.snapshot.clone()))
                } else if !held.archive.is_empty() {
                    Ok(Source::Archive(held.archive.clone()))
                } else {
                    Err(JobError::Refused {
                        service: name.into(),
                        message: format!(
                            "the source of the interrupted restore (run {}) is not recorded: abandon it, then \
                             restore with --archive or --snapshot",
                            held.run
                        ),
                    })
                };
                // A single-path restore resumes that path only.
                let path = match source {
                    Ok(_) => self.journal.run_detail(held.run, step::RESTORE_PATH).map_err(JobError::from),
                    Err(_) => Ok(None),
                };
                match (source, path) {
                    (Ok(source), Ok(path)) => {
                        self.restore_steps(run, name, b, source, None, None, path.as_deref(), rep, Some(&held)).await
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            Decision::Abandon => self.abandon_steps(run, name, b, &held, rep).await,
        };
        self.end(run, name, b, Job::Restore, started, result).await
    }

    /// Abandons a held restore: nothing is rolled back or deleted; the containers it stopped start again.
    async fn abandon_steps(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        held: &Held,
        rep: &Reporter,
    ) -> Result<(String, Outcome), JobError> {
        let j = &self.journal;
        let engine = Engine::connect(&self.cfg().docker_socket)
            .await
            .map_err(|e| JobError::step(name, step::WAIT_HEALTHY, e))?;
        let ids = existing(&engine, name, &held.stopped).await?;
        let s = j.begin(run, name, step::WAIT_HEALTHY, "")?;
        rep.say(step::WAIT_HEALTHY, format!("starting {} container(s)", ids.len())).await;
        crate::backup::resume_all(&engine, Quiesce::Stop, &ids)
            .await
            .map_err(|e| JobError::step(name, step::WAIT_HEALTHY, e))?;
        j.release_held(name)?;
        wait_healthy(&engine, name, &ids, b.healthy_timeout).await?;
        j.done(s)?;
        let snap = held.safety.split_once('@').map_or(held.safety.as_str(), |(_, s)| s);
        Ok((
            format!(
                "abandoned the interrupted restore (run {}): the data was left as it is, nothing was rolled back; \
                 {} still holds the data from before that restore (`labctl services restore {name} --snapshot \
                 {snap}` brings it back); {} container(s) started",
                held.run,
                held.safety,
                ids.len()
            ),
            Outcome::default(),
        ))
    }

    /// `held`: the held restore this run resumes. `path`: only this file or directory (see `files`).
    #[allow(clippy::too_many_arguments)]
    async fn restore_steps(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        source: Source,
        to: Option<PathBuf>,
        label: Option<&str>,
        path: Option<&str>,
        rep: &Reporter,
        held: Option<&Held>,
    ) -> Result<(String, Outcome), JobError> {
        let j = &self.journal;
        if held.is_none() {
            self.refuse_if_held(name)?;
        }
        let s = j.begin(run, name, step::PREFLIGHT, &b.dataset)?;
        preflight(name, b).await?;
        let from = match &source {
            Source::Latest | Source::Archive(_) => {
                let r = self.pick_repo(name, b, label).await?;
                let wanted = if let Source::Archive(a) = &source { Some(a.as_str()) } else { None };
                self.pick_archive(name, b, r, wanted).await?
            }
            Source::Snapshot(sn) => Picked::Snapshot(self.pick_snapshot(name, b, sn).await?),
        };
        let (archive, snapshot) = match &from {
            Picked::Archive { name: a, .. } => (a.clone(), String::new()),
            Picked::Snapshot(sn) => (String::new(), sn.clone()),
        };
        if let Some(p) = path {
            // Before anything is stopped or written: the path must be in the source; and it is recorded, so that a
            // held restore resumes this path only.
            self.check_source_path(name, b, &from, p).await?;
            let ps = j.begin(run, name, step::RESTORE_PATH, p)?;
            j.done(ps)?;
        }
        j.set_source(run, &archive, &snapshot)?;
        let outcome = Outcome { archive, snapshot, ..Default::default() };
        j.done(s)?;
        let what = match path {
            Some(p) => format!("{p} from {}", from.name()),
            None => from.name().to_string(),
        };

        if let Some(dest) = to {
            // For inspection: never into anything that holds data.
            if dest.exists() {
                let empty = std::fs::read_dir(&dest).map(|mut d| d.next().is_none()).unwrap_or(false);
                if !empty {
                    return Err(JobError::Refused {
                        service: name.into(),
                        message: format!("--to {} exists and is not an empty directory", dest.display()),
                    });
                }
            }
            std::fs::create_dir_all(&dest)
                .map_err(|e| JobError::step(name, step::EXTRACT, format!("{}: {e}", dest.display())))?;
            self.fill(run, name, b, &from, &dest, path, rep).await?;
            let at = path.map_or_else(|| dest.clone(), |p| dest.join(p));
            return Ok((format!("restored {what} to {} (the service was not touched)", at.display()), outcome));
        }

        let mount = zfs::mountpoint(&b.dataset)
            .await
            .map_err(|e| JobError::step(name, step::PREFLIGHT, e))?
            .ok_or_else(|| JobError::step(name, step::PREFLIGHT, format!("dataset {} is not mounted", b.dataset)))?;
        // Only the dataset's own filesystems are replaced: anything else mounted inside is covered by no snapshot.
        let table = crate::mounts::read().map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        if let Some(why) = crate::mounts::foreign_inside(&table, &b.dataset, &mount) {
            return Err(JobError::Refused {
                service: name.into(),
                message: format!("in-place restore refused: {why}"),
            });
        }
        if let Some(p) = path {
            crate::files::check_live_parents(&mount, p)
                .map_err(|m| JobError::Refused { service: name.into(), message: format!("--path {m}") })?;
        }
        let engine = Engine::connect(&self.cfg().docker_socket)
            .await
            .map_err(|e| JobError::step(name, step::RESTORE_STOP, e))?;
        let mut ids = engine.running_in_project(name).await.map_err(|e| JobError::step(name, step::RESTORE_STOP, e))?;
        if let Some(h) = held {
            // The containers the held restore stopped come back at the end too.
            ids.extend(existing(&engine, name, &h.stopped).await?);
            ids.sort();
            ids.dedup();
        }
        let detail = Quiesced { how: Quiesce::Stop, ids: ids.clone() }.to_string();
        let stop = j.begin(run, name, step::RESTORE_STOP, &detail)?;
        rep.say(step::RESTORE_STOP, format!("stopping {} container(s)", ids.len())).await;
        let stopped = crate::backup::quiesce_all(&engine, Quiesce::Stop, &ids).await;
        let stop_step = OpenStep {
            id: stop,
            run,
            service: name.to_string(),
            step: step::RESTORE_STOP.into(),
            detail,
            started_unix: now_unix(),
        };
        let replaced = match stopped {
            Err(e) => Err(Failed { error: JobError::step(name, step::RESTORE_STOP, e), data_safe: true }),
            Ok(()) => self.replace(run, name, b, &from, &mount, path, &stop_step, rep).await,
        };
        // Half-replaced data whose rollback failed stays down (its journal step open for the next start to repair);
        // in every other case the service comes back, with the restored data or with the data it had before.
        let replaced = match replaced {
            Err(Failed { error, data_safe: false }) => return Err(error),
            r => r.map_err(|f| f.error),
        };
        let s = j.begin(run, name, step::WAIT_HEALTHY, "")?;
        rep.say(step::WAIT_HEALTHY, format!("starting {} container(s)", ids.len())).await;
        let started = crate::backup::resume_all(&engine, Quiesce::Stop, &ids).await;
        if started.is_ok() {
            j.done(stop)?;
            // The service is back (restored, or with the data it had): a resumed restore is decided.
            if held.is_some() {
                j.release_held(name)?;
            }
        }
        let safety = replaced?;
        started.map_err(|e| JobError::step(name, step::WAIT_HEALTHY, e))?;
        wait_healthy(&engine, name, &ids, b.healthy_timeout).await?;
        j.done(s)?;
        let state = if ids.is_empty() {
            "the service was not running and stays down (start it with `labctl services up`)".to_string()
        } else {
            format!("its {} container(s) are running again", ids.len())
        };
        let resumed = held.map(|h| format!(" (resumed the interrupted restore, run {})", h.run)).unwrap_or_default();
        let rest = if path.is_some() { " (the rest of the data was not touched)" } else { "" };
        Ok((format!("restored {what} in place{rest}{resumed}; safety snapshot {safety}; {state}"), outcome))
    }

    /// Safety snapshot, then the dataset's contents replaced. Returns the safety snapshot; on failure, whether the
    /// dataset holds whole data (untouched, or rolled back to the safety snapshot). A failed replacement is rolled
    /// back only when nothing else can have written the dataset meanwhile; otherwise the restore is held (the
    /// service stays stopped, `stop` is closed in favour of the held row) for the operator to decide.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        from: &Picked,
        mount: &Path,
        path: Option<&str>,
        stop: &OpenStep,
        rep: &Reporter,
    ) -> Result<String, Failed> {
        let j = &self.journal;
        let safety = format!("{}@{PRERESTORE_PREFIX}{}", b.dataset, timestamp_now());
        let safe = |error: JobError| Failed { error, data_safe: true };
        let s = j.begin(run, name, step::SAFETY_SNAPSHOT, &safety).map_err(|e| safe(e.into()))?;
        rep.say(step::SAFETY_SNAPSHOT, format!("safety snapshot {safety}")).await;
        let snap_name = safety.split_once('@').map(|(_, s)| s).unwrap_or_default();
        let taken = match agent_core::state::fail_point(step::SAFETY_SNAPSHOT) {
            Ok(()) => zfs::snapshot_recursive(&b.dataset, snap_name).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        taken.map_err(|e| {
            safe(JobError::Refused {
                service: name.into(),
                message: format!("refusing to restore without a safety snapshot: {e}"),
            })
        })?;
        j.done(s).map_err(|e| safe(e.into()))?;
        let data_started = now_unix();
        let d = j.begin(run, name, step::RESTORE_DATA, &safety).map_err(|e| safe(e.into()))?;
        let shown = path.map_or_else(|| mount.to_path_buf(), |p| mount.join(p));
        rep.say(step::RESTORE_DATA, format!("replacing the contents of {}", shown.display())).await;
        let (m, ds, p) = (mount.to_path_buf(), b.dataset.clone(), path.map(String::from));
        let replaced = async {
            tokio::task::spawn_blocking(move || match p {
                Some(p) => crate::files::remove_live(&m, &p),
                None => empty_tree(&ds, &m),
            })
            .await
            .map_err(|e| JobError::step(name, step::RESTORE_DATA, e))?
            .map_err(|e| JobError::step(name, step::RESTORE_DATA, e))?;
            self.fill(run, name, b, from, mount, path, rep).await
        }
        .await;
        if let Err(e) = replaced {
            // Half-replaced data must not be started: put the data from before the restore back first.
            if let Err(why) = self.may_roll_back(name, data_started, &safety).await {
                let data = OpenStep {
                    id: d,
                    run,
                    service: name.to_string(),
                    step: step::RESTORE_DATA.into(),
                    detail: safety.clone(),
                    started_unix: data_started,
                };
                let held = match self.hold_restore(&data, Some(stop), &why).await {
                    Ok(h) => h.reason,
                    Err(he) => format!("{why}; holding the restore failed ({he}): the next start decides"),
                };
                return Err(Failed {
                    error: JobError::step(name, step::RESTORE_DATA, format!("{e}; {held}")),
                    data_safe: false,
                });
            }
            rep.say(step::RESTORE_DATA, format!("restore failed, rolling back to {safety}")).await;
            return match crate::recovery::rollback_tree(&safety).await {
                Ok(()) => {
                    j.done(d).map_err(|e| safe(e.into()))?;
                    Err(safe(JobError::step(
                        name,
                        step::RESTORE_DATA,
                        format!("{e}; the data is back as it was before the restore ({safety})"),
                    )))
                }
                // The journal step stays open: the next start retries the rollback before anything else.
                Err(r) => Err(Failed {
                    error: JobError::step(
                        name,
                        step::RESTORE_DATA,
                        format!("{e}; and rolling back to {safety} failed: {r}; the service stays down"),
                    ),
                    data_safe: false,
                }),
            };
        }
        // The data is whole (restored); only the bookkeeping failed.
        j.done(d).map_err(|e| safe(e.into()))?;
        Ok(safety)
    }

    /// Writes the data of the archive or snapshot (only `path`, at its relative path, when given; it must not exist
    /// in `dest`) into the existing directory `dest`.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        from: &Picked,
        dest: &Path,
        path: Option<&str>,
        rep: &Reporter,
    ) -> Result<(), JobError> {
        let j = &self.journal;
        let snapshot = match from {
            Picked::Snapshot(sn) => sn.as_str(),
            Picked::Archive { repo: r, name: a } => {
                let s = j.begin(run, name, step::EXTRACT, a)?;
                rep.say(step::EXTRACT, format!("borg extract {a} from {} into {}", r.label, dest.display())).await;
                agent_core::state::fail_point(step::EXTRACT).map_err(|e| JobError::step(name, step::EXTRACT, e))?;
                let message = format!("borg extract {a} from {}", r.label);
                let repo = match agent_core::borg::job_progress(rep, step::EXTRACT, 0, message) {
                    Some(sink) => self.repo(b, r).progress(sink),
                    None => self.repo(b, r),
                };
                let extracted = match path {
                    Some(p) => repo.extract_paths(a, dest, &[p]).await,
                    None => repo.extract(a, dest).await,
                };
                extracted.map_err(|e| JobError::step(name, step::EXTRACT, e))?;
                j.done(s)?;
                return Ok(());
            }
        };
        let snap = snapshot.split_once('@').map(|(_, s)| s).unwrap_or_default();
        let scratch = format!("{}/{SCRATCH_PREFIX}{name}", zfs::pool_of(&b.dataset));
        let at = self.cfg().backup.snapshot_mount_dir.join(format!("{name}.restore"));
        let sc = j.begin(run, name, step::SCRATCH, &scratch)?;
        zfs::destroy(&scratch, true).await.map_err(|e| JobError::step(name, step::SCRATCH, e))?;
        clone_tree(&b.dataset, snap, &scratch, &at).await.map_err(|e| JobError::step(name, step::SCRATCH, e))?;
        let s = j.begin(run, name, step::EXTRACT, snapshot)?;
        rep.say(step::EXTRACT, format!("copying {snapshot} into {}", dest.display())).await;
        let (src, to) = match path {
            Some(p) => (at.join(p), dest.join(p)),
            None => (at.join("."), dest.to_path_buf()),
        };
        let copied = match crate::files::prepare_copy(&at, dest, path) {
            Ok(()) => {
                let copy = Cmd::new("cp")
                    .args(["-a", "--reflink=auto", "--"])
                    .arg(src)
                    .arg(to)
                    .env(crate::backup::OWNER_ENV, self.owner())
                    .timeout(COPY_TIMEOUT);
                runner::run_ok(copy).await.map(drop).map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let destroyed = zfs::destroy(&scratch, true).await;
        copied.map_err(|e| JobError::step(name, step::EXTRACT, e))?;
        j.done(s)?;
        destroyed.map_err(|e| JobError::step(name, step::SCRATCH, e))?;
        j.done(sc)?;
        Ok(())
    }

    /// Runs the configured Borg checks: the repository, then the archives (or a full `--verify-data` when
    /// `checks.verify_data` is set). `kind` is [`Job::Check`] or [`Job::VerifyData`] (scheduled verify-data runs only
    /// that).
    /// `label`: only that repository (default: every repository of the service, each with its own `checks`).
    pub(crate) async fn check(
        &self,
        name: &str,
        kind: Job,
        trigger: Trigger,
        label: Option<&str>,
        rep: &Reporter,
    ) -> Result<RunReport, JobError> {
        let (_, b) = &self.settings(name)?;
        let repos: Vec<&RepoSpec> = match label {
            Some(_) => vec![self.pick_repo(name, b, label).await?],
            None => b.repos.iter().collect(),
        };
        let _job = self.gate.enter(|_| {}).await;
        let _repos = self.lock_repos(b).await;
        let run = self.journal.start_run(name, kind, trigger)?;
        let started = Instant::now();
        let result = async {
            let mut passed = Vec::new();
            for r in repos {
                // Scheduled: `check` is the repository and archive metadata, `verify-data` reads every chunk (its
                // own, usually rarer, frequency). By hand: everything that is configured.
                let kinds: &[CheckKind] = match (kind, trigger, b.checks_of(r).verify_data.is_some()) {
                    (Job::VerifyData, _, _) => &[CheckKind::VerifyData],
                    (_, Trigger::Manual, true) => &[CheckKind::Repository, CheckKind::VerifyData],
                    _ => &[CheckKind::Repository, CheckKind::Archives],
                };
                let s = self.journal.begin(run, name, step::CHECK, &r.url())?;
                for (i, k) in kinds.iter().enumerate() {
                    rep.progress(step::CHECK, i as u64, kinds.len() as u64, format!("borg check {k:?} of {}", r.label))
                        .await;
                    self.repo(b, r).check(*k).await.map_err(|e| {
                        self.metrics.record_check(name, &r.label, false);
                        JobError::step(name, step::CHECK, format!("repository {}: {e}", r.label))
                    })?;
                }
                self.metrics.record_check(name, &r.label, true);
                self.journal.done(s)?;
                passed.push((r.label.clone(), format!("{kinds:?}")));
            }
            let labels: Vec<&str> = passed.iter().map(|(l, _)| l.as_str()).collect();
            let kinds: Vec<String> = passed.iter().map(|(l, k)| format!("{l} {k}")).collect();
            Ok((format!("borg check of {} passed ({})", labels.join(", "), kinds.join(", ")), Outcome::default()))
        }
        .await;
        self.end(run, name, b, kind, started, result).await
    }

    /// Restore drill: extracts the newest archive whose snapshot is still kept into a scratch dataset and compares
    /// it file by file (content hash, mode, size) with that snapshot.
    /// `label`: the repository to read (default: the first reachable, local first).
    pub(crate) async fn drill(
        &self,
        name: &str,
        trigger: Trigger,
        label: Option<&str>,
        rep: &Reporter,
    ) -> Result<RunReport, JobError> {
        let (_, b) = &self.settings(name)?;
        let _job = self.gate.enter(|_| {}).await;
        let _repos = self.lock_repos(b).await;
        let run = self.journal.start_run(name, Job::Drill, trigger)?;
        let started = Instant::now();
        let result = match self.pick_repo(name, b, label).await {
            Ok(r) => self.drill_steps(run, name, b, r, rep).await,
            Err(e) => Err(e),
        };
        self.end(run, name, b, Job::Drill, started, result).await
    }

    async fn drill_steps(
        &self,
        run: i64,
        name: &str,
        b: &ServiceBackup,
        r: &RepoSpec,
        rep: &Reporter,
    ) -> Result<(String, Outcome), JobError> {
        let j = &self.journal;
        let s = j.begin(run, name, step::PREFLIGHT, &b.dataset)?;
        preflight(name, b).await?;
        let repo = self.repo(b, r);
        let archives = repo.list(Some(&archive_glob(name))).await.map_err(|e| JobError::step(name, "list", e))?;
        let snaps = zfs::snapshots(&b.dataset).await.map_err(|e| JobError::step(name, step::PREFLIGHT, e))?;
        let pick = archives.iter().rev().find_map(|a| {
            let ts = archive_timestamp(name, &a.name)?;
            let snap = format!("{SNAPSHOT_PREFIX}{ts}");
            snaps.iter().any(|s| s.name == snap).then(|| (a.name.clone(), snap))
        });
        let Some((archive, snap)) = pick else {
            return Err(JobError::Refused {
                service: name.into(),
                message: "no archive whose snapshot is still kept locally to compare with (raise local_snapshots)"
                    .into(),
            });
        };
        j.done(s)?;
        let pool = zfs::pool_of(&b.dataset);
        let scratch = format!("{pool}/{SCRATCH_PREFIX}{name}");
        let clone = format!("{pool}/{CLONE_PREFIX}{name}");
        let scratch_at = self.cfg().backup.snapshot_mount_dir.join(format!("{name}.drill"));
        let clone_at = self.mount_path(name);

        let sc = j.begin(run, name, step::SCRATCH, &scratch)?;
        let c = j.begin(run, name, step::CLONE, &clone)?;
        let compared = async {
            zfs::destroy(&scratch, true).await.map_err(|e| JobError::step(name, step::SCRATCH, e))?;
            zfs::destroy(&clone, true).await.map_err(|e| JobError::step(name, step::CLONE, e))?;
            zfs::create(&scratch, &scratch_at).await.map_err(|e| JobError::step(name, step::SCRATCH, e))?;
            clone_tree(&b.dataset, &snap, &clone, &clone_at).await.map_err(|e| JobError::step(name, step::CLONE, e))?;
            let s = j.begin(run, name, step::EXTRACT, &archive)?;
            rep.say(step::EXTRACT, format!("borg extract {archive} from {} into scratch", r.label)).await;
            repo.extract(&archive, &scratch_at).await.map_err(|e| JobError::step(name, step::EXTRACT, e))?;
            j.done(s)?;
            let s = j.begin(run, name, step::COMPARE, &snap)?;
            rep.say(step::COMPARE, format!("comparing with {}@{snap} file by file", b.dataset)).await;
            let (a, e) = (scratch_at.clone(), clone_at.clone());
            let (diffs, summary) = tokio::task::spawn_blocking(move || {
                let expected = verify::manifest(&e)?;
                let actual = verify::manifest(&a)?;
                Ok::<_, verify::VerifyError>((verify::compare(&expected, &actual), verify::summary(&expected)))
            })
            .await
            .map_err(|e| JobError::step(name, step::COMPARE, e))?
            .map_err(|e| JobError::step(name, step::COMPARE, e))?;
            j.done(s)?;
            Ok::<_, JobError>((diffs, summary))
        }
        .await;
        let d1 = zfs::destroy(&clone, true).await;
        let d2 = zfs::destroy(&scratch, true).await;
        if d1.is_ok() {
            j.done(c)?;
        }
        if d2.is_ok() {
            j.done(sc)?;
        }
        let (diffs, summary) = compared?;
        d1.map_err(|e| JobError::step(name, step::CLONE, e))?;
        d2.map_err(|e| JobError::step(name, step::SCRATCH, e))?;
        let outcome =
            Outcome { archive: archive.clone(), snapshot: format!("{}@{snap}", b.dataset), ..Default::default() };
        if !diffs.is_empty() {
            let shown: Vec<String> =
                diffs.iter().take(10).map(|d| format!("{}: {}", d.path.display(), d.what)).collect();
            return Err(JobError::step(
                name,
                step::COMPARE,
                format!(
                    "archive {archive} differs from its snapshot in {} place(s): {}",
                    diffs.len(),
                    shown.join("; ")
                ),
            ));
        }
        Ok((
            format!(
                "drill passed: archive {archive} equals snapshot {snap} ({} files, {} directories, {})",
                summary.files,
                summary.dirs,
                crate::backup::human(summary.bytes)
            ),
            outcome,
        ))
    }
}

/// Empties the dataset mounted at `mount` and each filesystem mounted inside it (its child datasets: the caller
/// refused anything else), each one never crossing into another (see `files::empty_dir`). The mount table is read again
/// here, so that a mount that appeared since the check is still never entered.
fn empty_tree(dataset: &str, mount: &Path) -> std::io::Result<()> {
    crate::files::empty_dir(mount)?;
    for inner in crate::mounts::children_inside(&crate::mounts::read()?, dataset, mount) {
        crate::files::empty_dir(&inner)?;
    }
    Ok(())
}

/// The containers of `ids` that still exist (a held restore's containers may have been removed since).
async fn existing(engine: &Engine, name: &str, ids: &[String]) -> Result<Vec<String>, JobError> {
    let mut out = Vec::new();
    for id in ids {
        if engine.inspect(id).await.map_err(|e| JobError::step(name, step::RESTORE_STOP, e))?.is_some() {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// Waits until every container of `ids` is running and, when it has a health check, healthy.
pub(crate) async fn wait_healthy(
    engine: &Engine,
    name: &str,
    ids: &[String],
    within: Duration,
) -> Result<(), JobError> {
    let deadline = Instant::now() + within;
    loop {
        let mut waiting = None;
        for id in ids {
            let c = engine.inspect(id).await.map_err(|e| JobError::step(name, step::WAIT_HEALTHY, e))?;
            match c {
                Some(c) if c.state == "running" && matches!(c.health.as_deref(), None | Some("healthy")) => {}
                Some(c) => waiting = Some(format!("container {} is {}", c.name, c.shown_state())),
                None => waiting = Some(format!("container {id} is gone")),
            }
        }
        let Some(why) = waiting else { return Ok(()) };
        if Instant::now() > deadline {
            return Err(JobError::step(name, step::WAIT_HEALTHY, format!("not healthy within {within:?}: {why}")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
