//! Crash repair at start: reads the journal and undoes what a dead agent left behind — starts or unpauses every
//! container it stopped or paused, puts a half-restored dataset back to its safety snapshot, destroys its own clones
//! and scratch datasets (only names with its own prefix), breaks Borg locks left by its own dead borg processes on
//! this host (any other lock is reported, never broken), and marks the interrupted runs failed with the step they
//! died in. Must not know proto/tonic, nor the CLIs of zfs/borg/docker.

use crate::backup::{Backups, CLONE_PREFIX, SCRATCH_PREFIX};
use crate::config::Quiesce;
use crate::docker::Engine;
use crate::journal::{step, Outcome};
use crate::zfs;

/// What recovery did, for the log and the tests.
#[derive(Debug, Default)]
pub struct Recovered {
    pub actions: Vec<String>,
    pub errors: Vec<String>,
}

impl Backups {
    /// See the module docs. Errors are collected, not fatal: the agent starts and reports them.
    pub async fn recover(&self) -> Recovered {
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
        // Newest first: a restore's data is put back before its containers start.
        for s in open.iter().rev() {
            let undone = match s.step.as_str() {
                step::QUIESCE | step::RESTORE_STOP => {
                    let mut words = s.detail.split_whitespace();
                    let how = match words.next() {
                        Some("pause") => Quiesce::Pause,
                        Some("stop") => Quiesce::Stop,
                        _ => Quiesce::None,
                    };
                    let ids: Vec<String> = words.map(String::from).collect();
                    if ids.is_empty() || how == Quiesce::None {
                        Ok(())
                    } else {
                        if engine.is_none() {
                            engine = Engine::connect(&self.cfg.docker_socket)
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
                }
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
                    // The dataset may be half emptied or half extracted: its state before the restore is safer.
                    rollback_tree(&s.detail)
                        .await
                        .map(|()| {
                            out.actions.push(format!("{}: rolled back to the safety snapshot {}", s.service, s.detail))
                        })
                        .map_err(|e| e.to_string())
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
        // Leftovers the journal may not name (a crash between creating and journaling cannot happen — steps are
        // journaled first — but a manual mount can): our prefixes only, per backed-up service.
        for name in self.backed_up() {
            let Ok((_, b)) = self.settings(&name) else { continue };
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
            self.repair_lock(&name, &b.repo, &mut out).await;
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
    /// that died with it); reports any other lock.
    async fn repair_lock(&self, name: &str, repo_location: &str, out: &mut Recovered) {
        let repo = match self.settings(name) {
            Ok((_, b)) => self.repo(b),
            Err(_) => return,
        };
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

/// Rolls `DATASET@SNAP` and the same snapshot of every descendant back (a recursive snapshot's whole tree).
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
