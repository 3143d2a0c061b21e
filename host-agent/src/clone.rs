//! Copy-on-write clones of a VM bundle next to it (APFS clonefile via `cp -c` on macOS, FICLONE via
//! `cp --reflink=always` on Linux btrfs/xfs), at one path per VM (`strata-clone-VM`) with the bundle's file mtimes,
//! so that a backup engine can tell the files unchanged since the last clone; and removing them — only ever a
//! directory named `strata-clone-…`. Knows cp and the clone naming rule; must not know hypervisors or backup engines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd, RunError};

/// Every clone this agent makes is a sibling of the bundle whose name starts with this; nothing else is deleted.
pub(crate) const CLONE_PREFIX: &str = "strata-clone-";

/// A clone of 8 GB takes well under a second on a CoW filesystem; this only guards against a hung copy.
pub(crate) const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CloneError {
    #[error("{}: the volume cannot clone copy-on-write: {message}", dir.display())]
    Unsupported { dir: PathBuf, message: String },
    #[error("clone of {}: {source}", src.display())]
    Run { src: PathBuf, source: RunError },
    #[error("{}: not a clone made by strata (its name does not start with `{CLONE_PREFIX}`)", path.display())]
    NotOurs { path: PathBuf },
    #[error("{}: already exists (a clone left behind is removed before the next one)", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where the clone of `vm`'s `bundle` goes, every run the same: next to the bundle, on the same volume. One path
/// per VM because borg knows a file by its absolute path: a new path each run would make every file new to it.
pub(crate) fn clone_path(bundle: &Path, vm: &str) -> PathBuf {
    let parent = bundle.parent().unwrap_or(Path::new("/"));
    parent.join(format!("{CLONE_PREFIX}{vm}"))
}

/// Whether `path` is named like one of our clones.
pub(crate) fn is_ours(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(CLONE_PREFIX) && n.len() > CLONE_PREFIX.len())
}

/// The `cp` command cloning `src` (a directory) to `dst` copy-on-write, refusing a plain copy, keeping each file's
/// mtime (GNU `-a`, BSD `-p`).
pub(crate) fn clone_cmd(src: &Path, dst: &Path) -> Cmd {
    let cmd = if cfg!(target_os = "macos") {
        // macOS cp -c uses clonefile(2) and fails where the volume cannot clone.
        Cmd::new("cp").args(["-c", "-R", "-p"])
    } else {
        Cmd::new("cp").args(["-a", "--reflink=always"])
    };
    cmd.arg(src).arg(dst).timeout(CLONE_TIMEOUT)
}

/// Whether cp's stderr says the filesystem cannot clone (as opposed to a full disk or a missing file).
pub(crate) fn is_unsupported(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["operation not supported", "invalid cross-device link", "not supported", "inappropriate ioctl"]
        .iter()
        .any(|m| s.contains(m))
}

/// Clones `src` to `dst`, which must not exist (`cp` would copy into it). A refusal of the filesystem is
/// `Unsupported`; any partial clone is removed before returning an error.
pub(crate) async fn clone_dir(src: &Path, dst: &Path) -> Result<(), CloneError> {
    if !is_ours(dst) {
        return Err(CloneError::NotOurs { path: dst.to_path_buf() });
    }
    if tokio::fs::symlink_metadata(dst).await.is_ok() {
        return Err(CloneError::Exists { path: dst.to_path_buf() });
    }
    let result = runner::run_ok(clone_cmd(src, dst)).await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = remove_clone(dst).await;
            match e {
                RunError::Failed { ref stderr, .. } if is_unsupported(stderr) => Err(CloneError::Unsupported {
                    dir: dst.parent().unwrap_or(Path::new("/")).to_path_buf(),
                    message: stderr.lines().last().unwrap_or("").to_string(),
                }),
                source => Err(CloneError::Run { src: src.to_path_buf(), source }),
            }
        }
    }
}

/// Removes one of our clones; refuses any path not named `strata-clone-…`. A missing clone is not an error.
pub(crate) async fn remove_clone(path: &Path) -> Result<(), CloneError> {
    if !is_ours(path) {
        return Err(CloneError::NotOurs { path: path.to_path_buf() });
    }
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CloneError::Io { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_and_refusals() {
        let p = clone_path(Path::new("/vms/lab"), "lab");
        assert_eq!(p, Path::new("/vms/strata-clone-lab"));
        assert_eq!(clone_path(Path::new("/vms/lab.vmwarevm"), "lab"), p, "one path per vm, every run");
        assert!(is_ours(&p));
        assert!(!is_ours(Path::new("/vms/lab")) && !is_ours(Path::new("/vms/strata-clone-")));
        // Captured from GNU cp 9.1 on ext4.
        assert!(is_unsupported("cp: failed to clone '/t/b/disk.raw' from '/t/a/disk.raw': Operation not supported"));
        assert!(!is_unsupported("cp: error writing '/t/b/disk.raw': No space left on device"));
    }

    #[tokio::test]
    async fn remove_refuses_foreign_paths_and_clone_falls_back_cleanly_on_ext4_or_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("lab");
        std::fs::create_dir(&vm).unwrap();
        std::fs::write(vm.join("disk.raw"), vec![7u8; 8192]).unwrap();
        assert!(matches!(remove_clone(&vm).await, Err(CloneError::NotOurs { .. })));
        assert!(vm.join("disk.raw").exists());
        let dst = clone_path(&vm, "lab");
        match clone_dir(&vm, &dst).await {
            // A reflink-capable temp dir clones; others must refuse with Unsupported and leave nothing behind.
            Ok(()) => assert_eq!(std::fs::read(dst.join("disk.raw")).unwrap(), vec![7u8; 8192]),
            Err(CloneError::Unsupported { .. }) => assert!(!dst.exists()),
            Err(e) => panic!("unexpected error {e}"),
        }
        remove_clone(&dst).await.unwrap();
        assert!(!dst.exists() && vm.join("disk.raw").exists());
    }
}
