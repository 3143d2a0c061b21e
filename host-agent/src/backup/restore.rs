//! What reads a VM's backups back: which target a read uses (the one asked for, or else the first reachable one,
//! local ones first), the list of backups, restore (staging, bundle check, moving an existing bundle aside) and
//! drill. Knows the order of those steps; must not know proto/tonic types, any program's command line or a bundle's
//! files (its hypervisor backend knows them).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agent_core::clock::now_unix;
use agent_core::jobs::Reporter;
use agent_core::repos::RepoSpec;

use super::{notify, send, DrillReport, Host, HostError, RestoreReport};
use crate::config::VmConfig;
use crate::engine::{self, BackupInfo, Engine};
use crate::hypervisor::VmState;

/// A target chosen for a read, its engine, and the backup id to read (when one was wanted).
struct Picked {
    label: String,
    engine: Arc<dyn Engine>,
    id: Option<String>,
    /// The target's backups, when they were listed to choose it.
    listed: Option<Vec<BackupInfo>>,
}

impl Host {
    /// The target a read of `vm` uses: the one labelled `label`, or else the first reachable one, local ones first,
    /// that has backup `archive` (any backup when `None`, with `need_backup`). Refused naming the labels when `label`
    /// is not one of them; when no target fits, the error names each target and why.
    async fn pick(
        &self,
        vm: &VmConfig,
        label: Option<&str>,
        archive: Option<&str>,
        need_backup: bool,
    ) -> Result<Picked, HostError> {
        let name = vm.name.as_str();
        let eng_err = |source| HostError::Engine { vm: name.into(), source };
        let candidates: Vec<&RepoSpec> = match label {
            Some(l) => vec![vm.target(l).ok_or_else(|| HostError::NoTarget {
                vm: name.into(),
                label: l.into(),
                labels: vm.labels(),
            })?],
            None => {
                let mut order: Vec<&RepoSpec> = vm.targets.iter().collect();
                order.sort_by_key(|t| !t.location.is_local());
                order
            }
        };
        // One candidate: no choice to make; its own errors (missing target, no such backup) are the answer.
        if let [t] = candidates[..] {
            let engine = self.checked_engine(vm, t).await?;
            let picked = |id, listed| Picked { label: t.label.clone(), engine: engine.clone(), id, listed };
            return match (archive, need_backup) {
                (Some(a), _) => Ok(picked(Some(a.to_string()), None)),
                (None, false) => Ok(picked(None, None)),
                (None, true) => {
                    let list = engine.list().await.map_err(eng_err)?;
                    let id = list.last().map(|b| b.id.clone()).ok_or(HostError::NoBackups { vm: name.into() })?;
                    Ok(picked(Some(id), Some(list)))
                }
            };
        }
        let mut why = Vec::new();
        let mut empty = 0;
        for t in candidates {
            let listed = match self.checked_engine(vm, t).await {
                Ok(engine) => match engine.list().await {
                    Ok(list) => Ok((engine, list)),
                    Err(source) => Err(HostError::Engine { vm: name.into(), source }),
                },
                Err(e) => Err(e),
            };
            let (engine, list) = match listed {
                Ok(x) => x,
                Err(e) => {
                    why.push(super::target_error(name, &e));
                    continue;
                }
            };
            let id = match archive {
                Some(a) if list.iter().any(|b| b.id == a) => Some(a.to_string()),
                Some(a) => {
                    why.push(format!("target `{}` has no backup `{a}`", t.label));
                    continue;
                }
                None => list.last().map(|b| b.id.clone()),
            };
            if id.is_none() && need_backup {
                empty += 1;
                why.push(format!("target `{}` has no backups", t.label));
                continue;
            }
            return Ok(Picked { label: t.label.clone(), engine, id, listed: Some(list) });
        }
        if empty == vm.targets.len() {
            return Err(HostError::NoBackups { vm: name.into() });
        }
        Err(HostError::Other { vm: name.into(), message: format!("no target to read from: {}", why.join("; ")) })
    }

    /// The backups of `name` on target `label` (or the first reachable one, local ones first), oldest first, with
    /// downtime and size from this agent's history where it has them; and the target's label.
    pub(crate) async fn list_backups(
        &self,
        name: &str,
        label: Option<&str>,
    ) -> Result<(String, Vec<(BackupInfo, f64)>), HostError> {
        let vm = &self.vm(name)?;
        let picked = self.pick(vm, label, None, false).await?;
        let list = match picked.listed {
            Some(l) => l,
            None => picked.engine.list().await.map_err(|source| HostError::Engine { vm: name.into(), source })?,
        };
        let history = self.journal.history(name)?;
        let rows = list
            .into_iter()
            .map(|mut b| {
                let h = history.iter().find(|h| h.ok && h.backup_id == b.id && h.target == picked.label);
                if let Some(h) = h {
                    b.size = b.size.max(h.size);
                }
                let downtime = h.map_or(0.0, |h| h.downtime_seconds);
                (b, downtime)
            })
            .collect();
        Ok((picked.label, rows))
    }

    /// The files backup `archive` (latest when `None`) of `name` holds on target `label` (or the first reachable
    /// one that has it, local ones first); and the target's label and the backup's id.
    pub(crate) async fn list_files(
        &self,
        name: &str,
        label: Option<&str>,
        archive: Option<&str>,
    ) -> Result<(String, String, Vec<agent_core::borg::FileEntry>), HostError> {
        let vm = &self.vm(name)?;
        if vm.engine.as_str() != "borg" {
            return Err(HostError::NoFileList { vm: name.into(), engine: vm.engine.as_str() });
        }
        let picked = self.pick(vm, label, archive, true).await?;
        let id = picked.id.ok_or(HostError::NoBackups { vm: name.into() })?;
        let files = picked.engine.files(&id).await.map_err(|source| HostError::Engine { vm: name.into(), source })?;
        Ok((picked.label, id, files))
    }

    /// Restores backup `archive` (latest when `None`) of `name` from target `label` (or the first reachable one
    /// that has it, local ones first) into `to`, checks it, and optionally starts it. `to` must be confined (see
    /// `agent_core::target`: no `..`, no symlinked component, no system directory, not in the agent's state
    /// directory), and `--force` moves aside only a VM bundle of this VM's backend. The VM's notification targets
    /// hear how it ended (a refused `to` is the caller's mistake, not told).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn restore(
        &self,
        name: &str,
        archive: Option<&str>,
        label: Option<&str>,
        to: &Path,
        force: bool,
        start: bool,
        tx: &Reporter,
    ) -> Result<RestoreReport, HostError> {
        let vm = &self.vm(name)?;
        let cfg = self.config();
        let own = [(cfg.common.state_dir.as_path(), "the agent's state directory")];
        let to = agent_core::target::confined(to, &own).map_err(|e| HostError::Refused {
            vm: vm.name.clone(),
            path: e.path,
            why: e.why,
        })?;
        let t0 = Instant::now();
        let result = self.restore_into(name, archive, label, &to, force, start, tx).await;
        self.tell_end(vm, notify::RESTORE, t0, &result).await;
        result
    }

    /// [`Host::restore`] without the confinement of `to` (the drill restores under the state directory).
    #[allow(clippy::too_many_arguments)]
    async fn restore_into(
        &self,
        name: &str,
        archive: Option<&str>,
        label: Option<&str>,
        to: &Path,
        force: bool,
        start: bool,
        tx: &Reporter,
    ) -> Result<RestoreReport, HostError> {
        let vm = self.vm(name)?;
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
            if let Err(why) = self.hv(&vm).is_bundle(to) {
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
        let picked = self.pick(&vm, label, archive, true).await?;
        let id = picked.id.clone().ok_or(HostError::NoBackups { vm: name.into() })?;
        let parent = to.parent().unwrap_or(Path::new("/"));
        let io = |p: &Path, e: std::io::Error| HostError::Other {
            vm: name.into(),
            message: format!("{}: {e}", p.display()),
        };
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        let file = to.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| name.into());
        let staging = parent.join(format!(".{file}.strata-restore-{}", engine::stamp(now_unix())));
        std::fs::create_dir(&staging).map_err(|e| io(&staging, e))?;
        send(tx, "extract", 1, 4, format!("extracting {id} from target `{}` into {}", picked.label, staging.display()))
            .await;
        if let Err(e) = picked.engine.extract_reporting(&id, &staging, tx).await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(eng_err(e));
        }
        send(tx, "check", 2, 4, format!("checking {}", staging.display())).await;
        if let Err(message) = self.hv(&vm).check_bundle(&staging).await {
            return Err(HostError::Check { vm: name.into(), path: staging, message });
        }
        let mut moved_aside = None;
        if to.exists() {
            let aside = parent.join(format!("{file}.replaced-{}", engine::stamp(now_unix())));
            std::fs::rename(to, &aside).map_err(|e| io(to, e))?;
            moved_aside = Some(aside);
        }
        std::fs::rename(&staging, to).map_err(|e| io(to, e))?;
        let mut report = RestoreReport {
            vm: name.into(),
            archive: id,
            target: picked.label,
            to: to.to_path_buf(),
            moved_aside,
            started_as: None,
        };
        if start {
            send(tx, "start", 3, 4, format!("starting the restored vm {name}")).await;
            let mut vmc = vm.clone();
            if vmc.path != to {
                vmc.path = to.to_path_buf();
                vmc.name = format!("{name}-restored");
            }
            self.hv(&vmc).start().await?;
            report.started_as = Some(vmc.name);
        }
        tracing::info!(vm = name, "{}", report.summary());
        Ok(report)
    }

    /// Restores the latest backup (of target `label`, or of the first reachable target, local ones first) into
    /// scratch space under the state dir, checks it, reports, and removes it. The VM's notification targets hear how
    /// it ended.
    pub(crate) async fn drill(&self, name: &str, label: Option<&str>, tx: &Reporter) -> Result<DrillReport, HostError> {
        let vm = &self.vm(name)?;
        let scratch =
            self.config().common.state_dir.join("drill").join(format!("{name}-{}", engine::stamp(now_unix())));
        let t0 = Instant::now();
        let result = self.restore_into(&vm.name, None, label, &scratch, false, false, tx).await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let result = result.map(|restore| DrillReport { restore, duration: t0.elapsed() });
        self.tell_end(vm, notify::DRILL, t0, &result).await;
        let report = result?;
        send(tx, "done", 4, 4, report.restore.summary()).await;
        tracing::info!(vm = name, "{}", report.summary());
        Ok(report)
    }
}
