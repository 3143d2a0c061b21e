//! File-level access to a service's backups: one page of an archive's file list, and what a single-path restore
//! checks and does beside `restore` (the path is in its source, no symlinked or non-directory parent in the live
//! data, the live copy removed without crossing into another filesystem, the parents of a copied path created).
//! Must not know proto/tonic, nor the CLIs of zfs/borg/docker.

use std::path::Path;

use agent_core::borg::FileEntry;

use crate::backup::{Backups, JobError};

/// One page of an archive's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilesPage {
    pub archive: String,
    pub repo: String,
    pub entries: Vec<FileEntry>,
    /// Entries under the asked path in the whole archive.
    pub total: usize,
    /// The offset of the next page; `None` on the last one.
    pub next: Option<usize>,
}

impl Backups {
    /// Entries `offset..offset+limit` of `archive` (the newest of the service's when `None`) in the repository
    /// labelled `label` (default: the first reachable), only under `prefix` when given (a path checked by
    /// `agent_core::borg::archive_path`). A prefix the archive does not hold is refused, naming it.
    pub(crate) async fn files(
        &self,
        name: &str,
        archive: Option<&str>,
        label: Option<&str>,
        prefix: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<FilesPage, JobError> {
        let (_, b) = &self.settings(name)?;
        let r = self.pick_repo(name, b, label).await?;
        let _repos = self.lock_repos(b).await;
        let a = self.pick_archive(name, b, r, archive).await?.name().to_string();
        let all = self.repo(b, r).list_files(&a, prefix).await.map_err(|e| JobError::step(name, "list", e))?;
        if let Some(p) = prefix {
            if !all.iter().any(|e| e.path == p) {
                return Err(JobError::Refused {
                    service: name.into(),
                    message: format!("--path {p} is not in archive {a}"),
                });
            }
        }
        let total = all.len();
        let (entries, next) = agent_core::paging::page(all, offset, limit.min(agent_core::paging::MAX_LIMIT));
        Ok(FilesPage { archive: a, repo: r.label.clone(), entries, total, next })
    }
}

/// Refuses a `path` (relative, checked) whose parents in the live data under `mount` are a symlink (the restore
/// would write wherever it points) or not a directory. Missing parents are fine (they are created).
pub(crate) fn check_live_parents(mount: &Path, path: &str) -> Result<(), String> {
    let mut at = mount.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{path}: {} is a symlink in the live data: refused", at.display()))
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!("{path}: {} is not a directory in the live data: refused", at.display()))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{path}: {}: {e}", at.display())),
        }
    }
    Ok(())
}

/// Removes the live copy of `path` under `mount` (a file or symlink itself, a directory with what is on its own
/// filesystem, never crossing into another); nothing when it does not exist.
pub(crate) fn remove_live(mount: &Path, path: &str) -> std::io::Result<()> {
    let at = mount.join(path);
    match std::fs::symlink_metadata(&at) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => {
            empty_dir(&at)?;
            std::fs::remove_dir(&at)
        }
        Ok(_) => std::fs::remove_file(&at),
    }
}

/// Removes everything inside `dir` that lies on `dir`'s own filesystem, like `find -xdev`: a directory that is a
/// mount point (another filesystem) is neither entered nor removed.
pub(crate) fn empty_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::symlink_metadata(dir)?.dev();
    empty_on(dir, dev)
}

fn empty_on(dir: &Path, dev: u64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            empty_on(&path, dev)?;
            std::fs::remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Before a snapshot's `path` (when given) is copied from the clone at `from` to `dest`: it must exist there, and
/// its parents are created under `dest`.
pub(crate) fn prepare_copy(from: &Path, dest: &Path, path: Option<&str>) -> Result<(), String> {
    let Some(p) = path else { return Ok(()) };
    std::fs::symlink_metadata(from.join(p)).map_err(|e| format!("--path {p} in the snapshot: {e}"))?;
    if let Some(parent) = Path::new(p).parent() {
        let d = dest.join(parent);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_parents_and_removal() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path();
        std::fs::create_dir_all(m.join("a/b")).unwrap();
        std::fs::write(m.join("a/b/f"), b"x").unwrap();
        std::fs::write(m.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", m.join("ln")).unwrap();
        for (p, want) in [
            ("a/b/f", None),
            ("a/new/f", None),
            ("missing/x/y", None),
            ("ln/passwd", Some("is a symlink")),
            ("file/x", Some("is not a directory")),
        ] {
            match (check_live_parents(m, p), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{p}: {e}"),
                (got, w) => panic!("{p}: got {got:?}, want {w:?}"),
            }
        }
        remove_live(m, "a/b").unwrap();
        assert!(!m.join("a/b").exists() && m.join("a").is_dir());
        remove_live(m, "ln").unwrap();
        assert!(std::fs::symlink_metadata(m.join("ln")).is_err() && Path::new("/etc/passwd").exists());
        remove_live(m, "nothing/here").unwrap();
        assert!(m.join("file").is_file());
    }
}
