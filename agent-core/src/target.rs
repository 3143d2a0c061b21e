//! Restore targets: whether a path an operator asks an agent to restore into (or to move aside) is confined —
//! absolute, without `..`, without a symlinked component (checked with `lstat`, never followed), not a system
//! directory, not a top-level directory, and not inside a tree the agent names as its own (state, live data).
//! Knows paths only; must not know any agent's domain.

use std::path::{Component, Path, PathBuf};

/// System trees no restore may write into: the directory itself or anything below it.
pub const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/cache",
    "/var/lib",
    "/var/lock",
    "/var/log",
    "/var/run",
    "/var/spool",
    // macOS
    "/Applications",
    "/Library",
    "/System",
    "/private",
];

/// Directories that hold restore targets but are none themselves.
pub const TOP_LEVEL: &[&str] =
    &["/", "/home", "/media", "/mnt", "/opt", "/srv", "/tmp", "/var", "/var/tmp", "/Users", "/Volumes"];

/// Why a restore target is refused; the message names the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {why}")]
pub struct Refused {
    pub path: PathBuf,
    pub why: String,
}

/// Checks `path` as a restore target (see the module docs). `own` are trees of the agent's own (its state directory,
/// live data) that a target may not lie in, each with what it is (`"the agent's state directory"`). Returns the path
/// as checked (lexically normalized: `.` components and repeated slashes gone).
pub fn confined(path: &Path, own: &[(&Path, &str)]) -> Result<PathBuf, Refused> {
    let refuse = |why: String| Refused { path: path.to_path_buf(), why };
    if !path.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    let mut clean = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => return Err(refuse("has a `..` component (give the path without it)".into())),
            Component::Prefix(_) => return Err(refuse("not a Unix path".into())),
        }
    }
    // Every existing component, from the root down, must be what it says: no symlink redirects the restore.
    let mut at = PathBuf::from("/");
    for c in clean.components().skip(1) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(format!("{} is a symlink (give the path it points to)", at.display())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(refuse(format!("{}: {e}", at.display()))),
        }
    }
    if let Some(tree) = SYSTEM_TREES.iter().find(|t| clean.starts_with(t)) {
        return Err(refuse(format!("lies in the system directory {tree}")));
    }
    if TOP_LEVEL.iter().any(|t| clean == Path::new(t)) {
        return Err(refuse("is a top-level directory: give a directory below it".into()));
    }
    for (tree, what) in own {
        if clean.starts_with(tree) {
            return Err(refuse(format!("lies in {} ({what})", tree.display())));
        }
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confined_paths_pass_and_the_rest_is_refused_naming_the_path_and_why() {
        let dir = tempfile::tempdir().unwrap();
        // Linux: the tempdir is below /tmp, no symlink on the way (on macOS it is below /private, refused).
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        let state = base.join("state");

        let ok = |p: PathBuf| confined(&p, &[(&state, "the agent's state directory")]).unwrap();
        assert_eq!(ok(base.join("real/new")), base.join("real/new"));
        assert_eq!(ok(base.join("real/./a//b")), base.join("real/a/b"));
        assert_eq!(ok(base.join("not/yet/there")), base.join("not/yet/there"));

        let refused = |p: &str| confined(Path::new(p), &[(&state, "the agent's state directory")]).unwrap_err();
        let cases: Vec<(String, &str)> = vec![
            ("relative/x".into(), "not an absolute path"),
            (format!("{}/real/../../x", base.display()), "`..`"),
            (format!("{}/link/x", base.display()), "link is a symlink"),
            (format!("{}/link", base.display()), "link is a symlink"),
            ("/etc/strata-restore".into(), "system directory /etc"),
            ("/etc".into(), "system directory /etc"),
            ("/usr/local/share/x".into(), "system directory /usr"),
            ("/var/lib/docker/volumes/x".into(), "system directory /var/lib"),
            ("/root/.ssh".into(), "system directory /root"),
            ("/".into(), "top-level directory"),
            ("/srv".into(), "top-level directory"),
            ("/srv/".into(), "top-level directory"),
            (format!("{}/db", state.display()), "the agent's state directory"),
        ];
        for (p, why) in cases {
            let e = refused(&p);
            assert!(e.why.contains(why), "{p}: {e}");
            assert!(e.to_string().starts_with(&p), "names the path: {e}");
        }
        // Names that only start like a system tree are not in it.
        assert!(confined(Path::new("/etcetera/x"), &[]).is_ok());
    }
}
