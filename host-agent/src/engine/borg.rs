//! The borg `Engine`: one repository per VM target (a local path or an SSH location), one archive per backup named
//! by its backup id, made from the bundle directory so that an extract yields the bundle's files directly. A thin
//! adapter over `agent_core::borg::Repo` (built by `agent_core::repos::RepoSpec::repo`, which alone knows the
//! target's ssh settings and borg CLI); this module knows backup ids and `EngineError`, and must not know borg's
//! commands, flags or output, nor hypervisors.

use std::path::Path;
use std::sync::Arc;

use agent_core::borg::{BorgError, CreateStats, FilesRead, ProgressSink, Repo, Retention};
use agent_core::jobs::Reporter;

use super::{parse_backup_id, BackupInfo, Engine, EngineDef, EngineError, EngineFuture, Spec};

/// `engine = "borg"`: this engine's row of `super::ENGINES`.
pub(super) const ENGINE: EngineDef = EngineDef {
    name: "borg",
    passcommand: true,
    keep_within: true,
    ssh: true,
    many: true,
    open: |spec| Arc::new(Borg::new(spec)),
};

#[derive(Debug, Clone)]
pub(super) struct Borg {
    vm: String,
    /// How messages name the target.
    target: String,
    repo: Repo,
}

impl Borg {
    pub(super) fn new(spec: &Spec<'_>) -> Self {
        let repo = spec.target.repo(spec.passphrase).report_read_files();
        Borg { vm: spec.vm.to_string(), target: spec.name(), repo }
    }

    /// The same target, knowing unchanged files by mtime and size alone: for a clone made afresh at one path.
    fn for_clone(&self) -> Borg {
        Borg { repo: self.repo.clone().files_by_mtime(), ..self.clone() }
    }

    /// One archive of `src` as backup `id`: borg's figures (the files it read among them), logged.
    async fn create_stats(&self, src: &Path, id: &str) -> Result<CreateStats, EngineError> {
        // The archive's time is the one its id names (UTC), so that retention follows the ids even for two
        // backups within a second.
        let timestamp = archive_timestamp(&self.vm, id);
        let (stats, warnings) =
            self.repo.create(id, src, &["."], timestamp.as_deref()).await.map_err(|e| self.err(e))?;
        for w in &warnings {
            tracing::warn!(vm = %self.vm, id, target = %self.target, "borg: {w}");
        }
        if let Some(read) = &stats.files_read {
            tracing::info!(vm = %self.vm, id, target = %self.target, "{}", read_line(read, stats.nfiles));
        }
        Ok(stats)
    }

    /// The same target, its creates and extracts reporting bytes to `sink`.
    fn with_progress(&self, sink: ProgressSink) -> Borg {
        Borg { repo: self.repo.clone().progress(sink), ..self.clone() }
    }

    /// This VM's archives and nothing else: `VM-YYYYMMDDTHHMMSSZ`.
    fn glob(&self) -> String {
        archive_glob(&self.vm)
    }

    fn err(&self, e: BorgError) -> EngineError {
        let target = self.target.clone();
        match e {
            BorgError::NoRepo { .. } => EngineError::MissingTarget { target },
            BorgError::NoSuchArchive { archive, .. } => EngineError::NoSuchBackup { target, id: archive },
            BorgError::Ssh { host, failure, .. } => EngineError::Ssh { target, host, failure },
            other => EngineError::Failed { target, message: other.to_string() },
        }
    }
}

/// The step under which a VM's bytes moving to or from a borg target are reported.
const STEP_TRANSFER: &str = "transfer";

/// The archives of `vm`: its backup ids, exactly (`VM-*` would also match a VM named `VM-2`).
pub(super) fn archive_glob(vm: &str) -> String {
    agent_core::borg::archive_glob(vm)
}

impl Engine for Borg {
    fn target(&self) -> &str {
        &self.target
    }

    fn files<'a>(&'a self, id: &'a str) -> EngineFuture<'a, Vec<agent_core::borg::FileEntry>> {
        Box::pin(async move { self.repo.list_files(id, None).await.map_err(|e| self.err(e)) })
    }

    fn repository_id(&self) -> EngineFuture<'_, Option<String>> {
        Box::pin(async move { self.repo.id().await.map(Some).map_err(|e| self.err(e)) })
    }

    fn create<'a>(&'a self, src: &'a Path, id: &'a str) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            let stats = self.create_stats(src, id).await?;
            let time_unix = parse_backup_id(&self.vm, id).unwrap_or(0);
            Ok(BackupInfo { id: id.to_string(), time_unix, size: stats.original_size })
        })
    }

    fn create_reporting<'a>(&'a self, src: &'a Path, id: &'a str, rep: &'a Reporter) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            if !rep.is_watched() {
                return self.create(src, id).await;
            }
            let root = src.to_path_buf();
            let total = tokio::task::spawn_blocking(move || agent_core::borg::source_bytes(&root, &["."])).await;
            let message = format!("borg create {id} to target `{}`", self.target);
            match agent_core::borg::job_progress(rep, STEP_TRANSFER, total.unwrap_or(0), message) {
                Some(sink) => self.with_progress(sink).create(src, id).await,
                None => self.create(src, id).await,
            }
        })
    }

    fn create_clone<'a>(&'a self, src: &'a Path, id: &'a str, rep: &'a Reporter) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move { self.for_clone().create_reporting(src, id, rep).await })
    }

    fn extract_reporting<'a>(&'a self, id: &'a str, dest: &'a Path, rep: &'a Reporter) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let message = format!("borg extract {id} from target `{}`", self.target);
            match agent_core::borg::job_progress(rep, STEP_TRANSFER, 0, message) {
                Some(sink) => self.with_progress(sink).extract(id, dest).await,
                None => self.extract(id, dest).await,
            }
        })
    }

    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>> {
        Box::pin(async move {
            let archives = self.repo.list(Some(&self.glob())).await.map_err(|e| self.err(e))?;
            let mut v: Vec<BackupInfo> = archives
                .into_iter()
                .filter_map(|a| {
                    parse_backup_id(&self.vm, &a.name).map(|t| BackupInfo { id: a.name, time_unix: t, size: 0 })
                })
                .collect();
            v.sort_by_key(|b| b.time_unix);
            Ok(v)
        })
    }

    fn prune<'a>(&'a self, r: &'a Retention) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if r.is_empty() {
                return Ok(());
            }
            let pruned = self.repo.prune(&self.glob(), r).await.map_err(|e| self.err(e))?;
            if !pruned.is_empty() {
                tracing::info!(vm = %self.vm, target = %self.target, ?pruned, "borg: pruned");
            }
            self.repo.compact().await.map_err(|e| self.err(e))
        })
    }

    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()> {
        Box::pin(async move { self.repo.extract(id, dest).await.map_err(|e| self.err(e)) })
    }
}

/// "borg read 1 of 3 files (the others unchanged): vm.toml": what a create cost, for the log.
fn read_line(read: &FilesRead, nfiles: u64) -> String {
    let more = if read.count > read.paths.len() as u64 { ", …" } else { "" };
    let names = if read.paths.is_empty() { String::new() } else { format!(": {}{more}", read.paths.join(", ")) };
    format!("borg read {} of {nfiles} files (the others unchanged){names}", read.count)
}

/// `YYYY-MM-DDTHH:MM:SS` (borg's `--timestamp`, UTC) of a backup id `VM-YYYYMMDDTHHMMSSZ`.
fn archive_timestamp(vm: &str, id: &str) -> Option<String> {
    parse_backup_id(vm, id)?;
    agent_core::borg::borg_timestamp(agent_core::borg::archive_stamp(vm, id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glob_matches_this_vms_backup_ids_only() {
        assert_eq!(archive_glob("services"), "services-????????T??????Z");
        let r = Retention { weekly: 4, monthly: 6, ..Default::default() };
        assert_eq!(
            agent_core::borg::prune_args(&archive_glob("services"), &r).join(" "),
            "prune --list --lock-wait 60 --glob-archives services-????????T??????Z --keep-weekly 4 --keep-monthly 6"
        );
        assert!(Retention::default().is_empty());
    }

    /// What borg 1.2 reads of a clone made afresh for each backup (`cp -a`: mtimes kept, new inodes and ctimes),
    /// against the real borg: at one path and comparing mtime and size, only a changed file; by default (inode and
    /// ctime), or at a new path (its files cache is keyed on the absolute path), every file.
    #[tokio::test]
    async fn a_clone_at_one_path_is_read_only_where_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (base, src, pw) = (dir.path().join("base"), dir.path().join("lab"), dir.path().join("pw"));
        std::fs::create_dir(&src).unwrap();
        std::fs::write(&pw, "clone test passphrase").unwrap();
        // Files written together share an mtime (the kernel's coarse clock): borg keeps none of them. Set apart.
        let write = |f: &str, content: String, t: u64| {
            std::fs::write(src.join(f), content).unwrap();
            let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000 + t);
            std::fs::File::options().write(true).open(src.join(f)).unwrap().set_modified(mtime).unwrap();
        };
        for (t, f) in ["a.vmdk", "b.vmdk", "vm.toml"].iter().enumerate() {
            write(f, f.repeat(1000), t as u64);
        }
        let target = dir.path().join("repo");
        let repo = Repo::new(target.to_string_lossy())
            .passphrase_file(&pw)
            .env("BORG_BASE_DIR", base.to_string_lossy())
            .report_read_files();
        repo.init("repokey").await.unwrap();
        let lab = Borg { vm: "lab".into(), target: "t".into(), repo };
        let mut n = 0;
        let mut read = |engine: Borg, clone: &'static str| {
            n += 1;
            let (src, dst) = (src.clone(), dir.path().join(clone));
            async move {
                let _ = std::fs::remove_dir_all(&dst);
                agent_core::runner::run_ok(agent_core::runner::Cmd::new("cp").arg("-a").arg(&src).arg(&dst))
                    .await
                    .unwrap();
                let id = format!("lab-202601{:02}T040000Z", n);
                let stats = engine.create_stats(&dst, &id).await.unwrap();
                let mut read = stats.files_read.unwrap().paths;
                read.sort();
                read
            }
        };
        let all = ["a.vmdk", "b.vmdk", "vm.toml"];
        assert_eq!(read(lab.for_clone(), "strata-clone-lab").await, all);
        // borg init made the cache: the newest file of a run that read files is not kept (borg's guard against
        // timestamp granularity), so vm.toml, written last, is read again.
        assert_eq!(read(lab.for_clone(), "strata-clone-lab").await, ["vm.toml"]);
        write("a.vmdk", "A".repeat(3000), 10);
        assert_eq!(read(lab.for_clone(), "strata-clone-lab").await, ["a.vmdk", "vm.toml"]);
        // a.vmdk is now the newest file: read as long as no newer file is.
        assert_eq!(read(lab.for_clone(), "strata-clone-lab").await, ["a.vmdk"]);
        assert_eq!(read(lab.for_clone(), "strata-clone-lab-2").await, all, "another path");
        assert_eq!(read(lab.clone(), "strata-clone-lab").await, all, "by default: new inodes and ctimes");
    }

    /// The adapter against the real borg: ids, the exact glob (a VM named `lab-2` is not `lab`'s), retention, errors.
    #[tokio::test]
    async fn engine_over_real_borg() {
        let dir = tempfile::tempdir().unwrap();
        let (base, src, pw) = (dir.path().join("base"), dir.path().join("bundle"), dir.path().join("pw"));
        std::fs::create_dir(&base).unwrap();
        std::fs::create_dir(&src).unwrap();
        std::fs::write(&pw, "engine test passphrase").unwrap();
        std::fs::write(src.join("disk.raw"), b"disk bytes").unwrap();
        let target = dir.path().join("repo");
        let repo = |path: &Path| {
            Repo::new(path.to_string_lossy()).passphrase_file(&pw).env("BORG_BASE_DIR", base.to_string_lossy())
        };
        let name = |p: &Path| format!("`default` ({})", p.display());
        let engine = |vm: &str| Borg { vm: vm.into(), target: name(&target), repo: repo(&target) };

        let none = dir.path().join("none");
        let missing = Borg { vm: "lab".into(), target: name(&none), repo: repo(&none) };
        let e = missing.list().await.unwrap_err();
        assert!(matches!(e, EngineError::MissingTarget { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("backup target `default` ({}) does not exist", none.display())), "{e}");

        repo(&target).init("repokey").await.unwrap();
        let (lab, lab2) = (engine("lab"), engine("lab-2"));
        let ids = ["lab-20260105T040000Z", "lab-20260106T040000Z", "lab-20260107T040000Z"];
        for id in ids {
            let b = lab.create(&src, id).await.unwrap();
            assert_eq!((b.id.as_str(), b.time_unix), (id, parse_backup_id("lab", id).unwrap()));
            assert!(b.size >= 10, "{b:?}");
        }
        lab2.create(&src, "lab-2-20260105T040000Z").await.unwrap();
        let listed: Vec<String> = lab.list().await.unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(listed, ids);
        assert_eq!(lab2.list().await.unwrap().len(), 1);

        lab.prune(&Retention { last: 2, ..Default::default() }).await.unwrap();
        let listed: Vec<String> = lab.list().await.unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(listed, ids[1..]);
        assert_eq!(lab2.list().await.unwrap().len(), 1, "another vm's archives are not pruned");

        assert_eq!(archive_timestamp("lab", ids[0]).as_deref(), Some("2026-01-05T04:00:00"));
        assert_eq!(archive_timestamp("lab", "lab-x"), None);
        let dest = dir.path().join("restored");
        std::fs::create_dir(&dest).unwrap();
        lab.extract(ids[2], &dest).await.unwrap();
        assert_eq!(std::fs::read(dest.join("disk.raw")).unwrap(), b"disk bytes");
        let e = lab.extract(ids[0], &dest).await.unwrap_err();
        assert!(matches!(&e, EngineError::NoSuchBackup { id, .. } if id == ids[0]), "{e:?}");
    }
}
