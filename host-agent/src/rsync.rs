//! rsync: one dated copy per run under the target (`TARGET/ID/`), unchanged files hard-linked to the previous copy
//! with `--link-dest`, retention by removing old copies. Knows the rsync CLI; must not know hypervisors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd};

use crate::config::{EngineKind, Retention, VmConfig};
use crate::engine::{keep, parse_backup_id, BackupInfo, Engine, EngineError, EngineFuture};

pub const RSYNC_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// A copy still being written: never listed, removed by the next run.
const PARTIAL: &str = ".partial";

#[derive(Debug, Clone)]
pub struct Rsync {
    vm: String,
    target: PathBuf,
}

impl Rsync {
    pub fn new(vm: &VmConfig) -> Self {
        Rsync { vm: vm.name.clone(), target: vm.target.clone() }
    }

    fn check_target(&self) -> Result<(), EngineError> {
        if !self.target.is_dir() {
            return Err(EngineError::MissingTarget { target: self.target.clone() });
        }
        Ok(())
    }

    fn copies(&self) -> Result<Vec<BackupInfo>, EngineError> {
        self.check_target()?;
        let io = |source| EngineError::Io { path: self.target.clone(), source };
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.target).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(t) = parse_backup_id(&self.vm, &name).filter(|_| e.path().is_dir()) {
                v.push(BackupInfo { id: name, time_unix: t, size: 0 });
            }
        }
        v.sort_by_key(|b| b.time_unix);
        Ok(v)
    }
}

/// The rsync argv (without the program) copying `src/` into `dest/`, hard-linking unchanged files to `link_dest`.
pub fn copy_args(src: &Path, dest: &Path, link_dest: Option<&Path>) -> Vec<String> {
    let mut a = vec!["-a".to_string(), "--sparse".into(), "--delete".into(), "--numeric-ids".into()];
    if let Some(l) = link_dest {
        a.push(format!("--link-dest={}", l.display()));
    }
    a.push(format!("{}/", src.display()));
    a.push(format!("{}/", dest.display()));
    a
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

impl Engine for Rsync {
    fn kind(&self) -> EngineKind {
        EngineKind::Rsync
    }

    fn target(&self) -> &Path {
        &self.target
    }

    fn create<'a>(&'a self, src: &'a Path, id: &'a str) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            let previous = self.copies()?.pop().map(|b| self.target.join(b.id));
            let partial = self.target.join(format!("{id}{PARTIAL}"));
            let final_dir = self.target.join(id);
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| EngineError::Io { path, source }
            };
            if partial.exists() {
                tokio::fs::remove_dir_all(&partial).await.map_err(io(&partial))?;
            }
            let cmd = Cmd::new("rsync").args(copy_args(src, &partial, previous.as_deref())).timeout(RSYNC_TIMEOUT);
            if let Err(source) = runner::run_ok(cmd).await {
                let _ = tokio::fs::remove_dir_all(&partial).await;
                return Err(EngineError::Run { target: self.target.clone(), source });
            }
            tokio::fs::rename(&partial, &final_dir).await.map_err(io(&final_dir))?;
            let size = dir_size(&final_dir);
            Ok(BackupInfo { id: id.to_string(), time_unix: parse_backup_id(&self.vm, id).unwrap_or(0), size })
        })
    }

    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>> {
        Box::pin(async move { self.copies() })
    }

    fn prune<'a>(&'a self, r: &'a Retention) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let all = self.copies()?;
            let kept = keep(&all, r);
            for b in all.iter().filter(|b| !kept.contains(&b.id)) {
                let p = self.target.join(&b.id);
                tracing::info!(vm = %self.vm, copy = %p.display(), "retention: removing old copy");
                tokio::fs::remove_dir_all(&p).await.map_err(|source| EngineError::Io { path: p.clone(), source })?;
            }
            Ok(())
        })
    }

    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if !self.copies()?.iter().any(|b| b.id == id) {
                return Err(EngineError::NoSuchBackup { target: self.target.clone(), id: id.to_string() });
            }
            let cmd = Cmd::new("rsync").args(copy_args(&self.target.join(id), dest, None)).timeout(RSYNC_TIMEOUT);
            runner::run_ok(cmd).await.map_err(|source| EngineError::Run { target: self.target.clone(), source })?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_args_link_to_the_previous_copy() {
        let a = copy_args(Path::new("/c/lab"), Path::new("/t/lab-2.partial"), Some(Path::new("/t/lab-1")));
        assert_eq!(a.join(" "), "-a --sparse --delete --numeric-ids --link-dest=/t/lab-1 /c/lab/ /t/lab-2.partial/");
    }
}
