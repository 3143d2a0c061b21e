//! Crash repair at start: reads the journal and undoes what a dead agent left behind — starts or unpauses every
//! container it stopped or paused, puts a half-restored dataset back to its safety snapshot (only when nothing but
//! the restore can have written it since: see [`Backups::may_roll_back`]; otherwise the restore is *held*, the
//! service stays stopped and the operator decides), destroys its own clones and scratch datasets (only names with its
//! own prefix), closes an interrupted take-down of a stack that left the config (no data is touched; the next sync
//! takes it down again), breaks Borg locks left by its own dead borg processes on this host (any other lock is
//! reported, never broken), and marks the interrupted runs failed with the step they died in. Must not know
//! proto/tonic, nor the CLIs of zfs/borg/docker.

use std::collections::HashSet;

use agent_core::notify::Phase;

use crate::backup::{Backups, CLONE_PREFIX, SCRATCH_PREFIX};
use crate::config::Quiesce;
use crate::docker::Engine;
use crate::journal::{now_unix, step, Held, Job, OpenStep, Outcome, Quiesced};
use crate::zfs;

/// What recovery did, for the log and the tests.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub actions: Vec<String>,
    pub errors: Vec<String>,
}

impl Backups {
    /// See the module docs. Errors are collected, not fatal: the agent starts and reports them.
    pub(crate) async fn recover(&self) -> Recovered {
        let mut out = Recovered::default();
        let open = match self.journal.open_steps() {
            Ok(o) => o,
            Err(e) => {
                out.errors.push(format!("cannot read the journal: {e}"));
                return out;
            }
        };
        // Programs a dead agent started (a borg reading a clone) die first: they hold locks and mounts.
        self.kill_orphans(&mut out).await;
        let mut engine: Option<Engine> = None;
        // Restores held for the operator: their steps are closed by the hold and not undone.
        let mut held: HashSet<i64> = HashSet::new();
        // Newest first: a restore's data is put back before its containers start.
        for s in open.iter().rev() {
            if held.contains(&s.run) {
                continue;
            }
            let undone = match s.step.as_str() {
                step::QUIESCE | step::RESTORE_STOP => match s.detail.parse::<Quiesced>() {
                    Err(e) => Err(e.to_string()),
                    Ok(Quiesced { how, ids }) if ids.is_empty() || how == Quiesce::None => Ok(()),
                    Ok(Quiesced { how, ids }) => {
                        if engine.is_none() {
                            engine = Engine::connect(&self.cfg().docker_socket)
                                .await
                                .map_err(|e| out.errors.push(e.to_string()))
                                .ok();
                        }
                        match &engine {
                            Some(e) => crate::backup::resume_all(e, how, &ids)
                                .await
                                .map(|()| {
                                    out.actions.push(format!(
                                        "{}: resumed {} container(s) ({})",
                                        s.service,
                                        ids.len(),
                                        how.as_str()
                                    ))
                                })
                                .map_err(|e| e.to_string()),
                            None => Err("docker engine unreachable".to_string()),
                        }
                    }
                },
                step::CLONE | step::SCRATCH => {
                    if is_ours(&s.detail) {
                        zfs::destroy(&s.detail, true)
                            .await
                            .map(|()| out.actions.push(format!("{}: destroyed {}", s.service, s.detail)))
                            .map_err(|e| e.to_string())
                    } else {
                        Err(format!("journal names {} as a clone, but it is not one of ours: left alone", s.detail))
                    }
                }
                step::RESTORE_DATA => {
                    // The dataset may be half emptied or half extracted: its state before the restore is safer, but
                    // only if nothing else can have written it since the step began.
                    match self.may_roll_back(&s.service, s.started_unix, &s.detail).await {
                        Ok(()) => rollback_tree(&s.detail)
                            .await
                            .map(|()| {
                                out.actions
                                    .push(format!("{}: rolled back to the safety snapshot {}", s.service, s.detail))
                            })
                            .map_err(|e| e.to_string()),
                        Err(why) => {
                            let stop = open.iter().find(|o| o.run == s.run && o.step == step::RESTORE_STOP);
                            match self.hold_restore(s, stop, &why).await {
                                Ok(h) => {
                                    held.insert(s.run);
                                    out.errors.push(h.reason);
                                    continue;
                                }
                                Err(e) => Err(format!("{why}; and holding the restore failed: {e}")),
                            }
                        }
                    }
                }
                // Nothing of its to undo (compose down never touches volumes or datasets): the stack's row is not
                // marked removed yet, so the next sync takes it down again (or deploys it, if it is listed again).
                step::TAKE_DOWN => {
                    out.actions.push(format!("{}: take-down interrupted; the next sync finishes it", s.service));
                    Ok(())
                }
                _ => Ok(()),
            };
            match undone {
                Ok(()) => {
                    if let Err(e) = self.journal.done(s.id) {
                        out.errors.push(e.to_string());
                    }
                }
                Err(e) => out.errors.push(format!("{}: cannot undo step {}: {e}", s.service, s.step)),
            }
        }
        // Runs that never finished.
        match self.journal.running() {
            Ok(dead) => {
                for r in dead {
                    let o = Outcome {
                        result: "failed".into(),
                        error: format!("the agent stopped during step {}; repaired at restart", r.step),
                        ..Default::default()
                    };
                    if let Err(e) = self.journal.finish(r.id, &o) {
                        out.errors.push(e.to_string());
                    }
                    out.actions
                        .push(format!("{}: {} run {} marked failed (died in {})", r.service, r.kind, r.id, r.step));
                }
            }
            Err(e) => out.errors.push(e.to_string()),
        }
        // Restores held by this or an earlier start stay reported until the operator decides.
        match self.journal.all_held() {
            Ok(all) => {
                for h in all.into_iter().filter(|h| !held.contains(&h.run)) {
                    out.errors.push(format!("still waiting for a decision: {}", h.reason));
                }
            }
            Err(e) => out.errors.push(e.to_string()),
        }
        // Leftovers the journal may not name (a crash between creating and journaling cannot happen — steps are
        // journaled first — but a manual mount can): our prefixes only, per backed-up service.
        for name in self.backed_up() {
            let Ok((_, b)) = &self.settings(&name) else { continue };
            let pool = zfs::pool_of(&b.dataset);
            for prefix in [format!("{CLONE_PREFIX}{name}"), format!("{SCRATCH_PREFIX}{name}")] {
                match zfs::children_with_prefix(pool, &prefix).await {
                    Ok(found) => {
                        for d in found.into_iter().filter(|d| d.rsplit('/').next() == Some(prefix.as_str())) {
                            match zfs::destroy(&d, true).await {
                                Ok(()) => out.actions.push(format!("{name}: destroyed leftover {d}")),
                                Err(e) => out.errors.push(format!("{name}: cannot destroy {d}: {e}")),
                            }
                        }
                    }
                    Err(e) => out.errors.push(format!("{name}: cannot list {pool}: {e}")),
                }
            }
            for r in &b.repos {
                self.repair_lock(&name, &self.repo(b, r), &mut out).await;
            }
        }
        for a in &out.actions {
            tracing::warn!("recovery: {a}");
        }
        for e in &out.errors {
            tracing::error!("recovery: {e}");
        }
        out
    }

    /// Breaks the repository's lock when every holder is a dead process on this host (a borg this agent ran and
    /// that died with it); reports any other lock. A remote repository's lock is held by `borg serve` on the remote,
    /// whose roster cannot be read from here: borg itself removes it there when its holder is dead (same rule).
    async fn repair_lock(&self, name: &str, repo: &agent_core::borg::Repo, out: &mut Recovered) {
        let repo_location = repo.location();
        let holders = repo.lock_holders();
        if holders.is_empty() {
            return;
        }
        let ours = |h: &agent_core::borg::LockHolder| {
            h.host.split('@').next() == Some(self.host.as_str()) && !pid_alive(h.pid)
        };
        if holders.iter().all(ours) {
            match repo.break_lock().await {
                Ok(()) => out
                    .actions
                    .push(format!("{name}: broke the stale borg lock of {repo_location} (dead process on this host)")),
                Err(e) => out.errors.push(format!("{name}: cannot break the stale lock of {repo_location}: {e}")),
            }
        } else {
            let who: Vec<String> = holders.iter().map(|h| format!("{} pid {}", h.host, h.pid)).collect();
            out.errors.push(format!(
                "{name}: repository {repo_location} is locked by {} — not ours, left alone",
                who.join(", ")
            ));
        }
    }
}

impl Backups {
    /// Kills the processes carrying this agent's `STRATA_JOB_OWNER` value (left running by a dead agent: this one has
    /// started no job yet) and waits for them to go.
    async fn kill_orphans(&self, out: &mut Recovered) {
        let marker = format!("{}={}", crate::backup::OWNER_ENV, self.owner());
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
            })
            .collect();
        for pid in pids {
            let kill = agent_core::runner::Cmd::new("kill").args(["-KILL", &pid.to_string()]);
            match agent_core::runner::run_ok(kill).await {
                Ok(_) => out.actions.push(format!("killed process {pid} left running by the previous agent")),
                Err(e) => out.errors.push(format!("cannot kill process {pid}: {e}")),
            }
            for _ in 0..50 {
                if !pid_alive(pid) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

impl Backups {
    /// Whether the dataset of a restore whose data step began at `since` may be rolled back to its safety snapshot
    /// `DATASET@SNAP` without destroying anything the restore did not write. zfs-fuse has no `written` property, so
    /// this is what the agent can prove: the safety snapshot is still the newest snapshot of the dataset and of each
    /// descendant (no one took a snapshot since, and a plain `zfs rollback` destroys nothing), and no container of
    /// the service's stack is running or has started since `since` (Docker's start times). `Err` says why not.
    pub(crate) async fn may_roll_back(&self, service: &str, since: f64, safety: &str) -> Result<(), String> {
        let Some((dataset, snap)) = safety.split_once('@') else {
            return Err(format!("{safety} is not a snapshot name"));
        };
        let filesystems = zfs::filesystems(dataset).await.map_err(|e| format!("cannot list {dataset}: {e}"))?;
        for fs in &filesystems {
            let snaps = zfs::snapshots(fs).await.map_err(|e| format!("cannot list the snapshots of {fs}: {e}"))?;
            let Some(at) = snaps.iter().position(|s| s.name == snap) else {
                return Err(format!("the safety snapshot {fs}@{snap} is gone"));
            };
            let newer: Vec<String> = snaps[at + 1..].iter().map(|s| s.full()).collect();
            if !newer.is_empty() {
                return Err(format!("snapshot(s) newer than the safety snapshot exist: {}", newer.join(", ")));
            }
        }
        let engine = Engine::connect(&self.cfg().docker_socket)
            .await
            .map_err(|e| format!("cannot tell whether the stack's containers started since the restore began: {e}"))?;
        let containers = engine
            .project_starts(service)
            .await
            .map_err(|e| format!("cannot tell whether the stack's containers started since the restore began: {e}"))?;
        for c in containers {
            if c.running {
                return Err(format!("container {} is running", c.name));
            }
            if let Some(t) = c.started_unix.filter(|t| *t >= since) {
                return Err(format!(
                    "container {} started at {t:.3} (Unix), after the restore began replacing the data at {since:.3}",
                    c.name
                ));
            }
        }
        Ok(())
    }

    /// Holds the interrupted restore whose data step is `data` (and whose stop step is `stop`): its steps are closed
    /// in favour of a held row, its run fails with the conflict, the service stays stopped, and a failure is notified.
    pub(crate) async fn hold_restore(
        &self,
        data: &OpenStep,
        stop: Option<&OpenStep>,
        why: &str,
    ) -> Result<Held, String> {
        let name = &data.service;
        let (archive, snapshot) = self.journal.source(data.run).map_err(|e| e.to_string())?;
        let stopped: Vec<String> =
            stop.and_then(|s| s.detail.parse::<Quiesced>().ok()).map(|q| q.ids).unwrap_or_default();
        let reason = format!(
            "service {name}: the interrupted restore (run {}) was not rolled back to its safety snapshot {}, because \
             something else may have written the dataset since: {why}; the data was left as it is and the service \
             stays stopped: run `labctl services restore {name} --resume` (a new safety snapshot, then the restore \
             again) or `--abandon` (keep the data as it is and start the service)",
            data.run, data.detail
        );
        let h = Held {
            service: name.clone(),
            run: data.run,
            safety: data.detail.clone(),
            archive,
            snapshot,
            stopped,
            reason,
            since_unix: now_unix(),
        };
        let mut close = vec![data.id];
        close.extend(stop.map(|s| s.id));
        self.journal.hold(&h, &close).map_err(|e| e.to_string())?;
        if let Ok((_, b)) = &self.settings(name) {
            let mut event = self.event(name, Job::Restore);
            event.message = h.reason.clone();
            self.notify(b, Phase::Fail, event).await;
        }
        Ok(h)
    }
}

/// Rolls `DATASET@SNAP` and the same snapshot of every descendant back (a recursive snapshot's whole tree), with a
/// plain `zfs rollback`: it refuses, rather than destroys, snapshots newer than `SNAP`.
pub(crate) async fn rollback_tree(snapshot_full: &str) -> Result<(), zfs::ZfsError> {
    let Some((dataset, snap)) = snapshot_full.split_once('@') else {
        return Err(zfs::ZfsError::NoSnapshot { snapshot: snapshot_full.to_string() });
    };
    for fs in zfs::filesystems(dataset).await? {
        zfs::rollback(&format!("{fs}@{snap}")).await?;
    }
    Ok(())
}

fn is_ours(dataset: &str) -> bool {
    dataset.split('/').nth(1).is_some_and(|c| c.starts_with(CLONE_PREFIX) || c.starts_with(SCRATCH_PREFIX))
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_prefixes_are_ours() {
        assert!(is_ours("tank/strata-clone-photos"));
        assert!(is_ours("tank/strata-scratch-photos/child"));
        assert!(!is_ours("tank/appdata/photos"));
        assert!(!is_ours("tank/strata-clone-photos-x".replace("tank/", "").as_str()));
        assert!(!is_ours("tank/zrepl-clone"));
    }
}
