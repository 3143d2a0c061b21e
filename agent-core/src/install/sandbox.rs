//! The file-system sandbox of a systemd service and the judge of the paths it needs: what `ProtectSystem=`,
//! `ProtectHome=`, `PrivateTmp=` and `User=` leave visible and usable. Must not know how units are rendered beyond
//! the [`Sandbox`] they are written from, nor what an agent reads (`cli` hands the paths in).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Exec, Platform, Privilege, ServiceSpec};
use crate::runner::{self, Cmd, Output};

/// The file-system sandbox a unit puts its service in. [`super::systemd_unit`] writes its directives from this, and
/// [`hidden_paths`] judges paths against it: one source for both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// `ProtectSystem=strict`: everything read-only but [`Sandbox::writable`].
    pub protect_system_strict: bool,
    /// `ProtectHome=yes`: `/home`, `/root` and `/run/user` look empty.
    pub protect_home: bool,
    /// `PrivateTmp=yes`: `/tmp` and `/var/tmp` are the service's own, empty.
    pub private_tmp: bool,
    /// What stays writable under `ProtectSystem=strict`, with the directive that makes it so.
    pub writable: Vec<(PathBuf, String)>,
    /// `User=` (root when `None`).
    pub user: Option<String>,
}

/// Directories `ProtectHome=yes` hides.
const HOME_DIRS: [&str; 3] = ["/home", "/root", "/run/user"];
/// Directories `PrivateTmp=yes` replaces.
const TMP_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];

/// The sandbox of `spec`'s service on `platform` (launchd and the agents that need root: none).
pub fn sandbox(spec: &ServiceSpec, platform: Platform) -> Sandbox {
    if platform != Platform::Systemd || matches!(spec.privilege, Privilege::Root { .. }) {
        return Sandbox::default();
    }
    let state = spec.state_directory();
    Sandbox {
        protect_system_strict: true,
        protect_home: true,
        private_tmp: true,
        writable: vec![(Path::new("/var/lib").join(&state), format!("StateDirectory={state}"))],
        user: spec.privilege.system_user().map(str::to_owned),
    }
}

/// How the service uses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// A path the service needs, as the config names it, and where it really is (symlinks resolved) when it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededPath {
    /// What it is, e.g. `config` or `[grpc] ca`.
    pub what: String,
    pub path: PathBuf,
    pub real: Option<PathBuf>,
    pub access: Access,
}

/// Owner, group and permission bits of an existing file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The unit user's ids; `None` where it does not exist yet (a new system user with its own group: only the "other"
/// permission bits will apply to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gids: Vec<u32>,
}

/// A path the service would not see, or could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hidden {
    pub what: String,
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}) {}", self.path.display(), self.what, self.reason)
    }
}

/// The paths of `needed` the service could not use inside `sandbox`: hidden by `ProtectHome=`/`PrivateTmp=`, written
/// outside what `ProtectSystem=strict` leaves writable, or (when the unit has a `User=`) not readable or searchable
/// by that user, judged from `stat`'s owner and mode bits (`user`: its ids, `None` when it does not exist yet).
/// Pure: `stat` answers for the file system (`None`: does not exist).
pub fn hidden_paths(
    sandbox: &Sandbox,
    user: Option<&UserIds>,
    needed: &[NeededPath],
    stat: &dyn Fn(&Path) -> Option<FileInfo>,
) -> Vec<Hidden> {
    let mut hidden = Vec::new();
    for n in needed {
        let hide = |reason: String| Hidden { what: n.what.clone(), path: n.path.clone(), reason };
        let real = n.real.as_ref().filter(|r| **r != n.path);
        let by_place = place_reason(sandbox, &n.path, n.access).or_else(|| {
            real.and_then(|r| place_reason(sandbox, r, n.access)).map(|reason| {
                format!("{reason} (it resolves to {})", real.map(|r| r.display()).unwrap_or(n.path.display()))
            })
        });
        if let Some(reason) = by_place {
            hidden.push(hide(reason));
            continue;
        }
        // The state directory is created and chowned to the user by systemd (StateDirectory=): only reads and
        // executions are the user's own business.
        let (Some(name), Access::Read | Access::Execute) = (&sandbox.user, n.access) else { continue };
        let path = real.unwrap_or(&n.path);
        if let Some(reason) = permission_reason(name, user, path, n.access, stat) {
            hidden.push(hide(reason));
        }
    }
    hidden
}

fn under(path: &Path, dir: &str) -> bool {
    path.starts_with(dir)
}

fn place_reason(sandbox: &Sandbox, path: &Path, access: Access) -> Option<String> {
    if sandbox.protect_home {
        if let Some(dir) = HOME_DIRS.iter().find(|d| under(path, d)) {
            return Some(format!("is hidden by ProtectHome=yes (the service sees {dir} empty)"));
        }
    }
    if sandbox.private_tmp {
        if let Some(dir) = TMP_DIRS.iter().find(|d| under(path, d)) {
            return Some(format!("is hidden by PrivateTmp=yes (the service gets its own empty {dir})"));
        }
    }
    if access == Access::Write
        && sandbox.protect_system_strict
        && !sandbox.writable.iter().any(|(w, _)| path.starts_with(w))
    {
        let writable: Vec<String> =
            sandbox.writable.iter().map(|(w, why)| format!("{} ({why})", w.display())).collect();
        return Some(format!(
            "is read-only under ProtectSystem=strict: only {} is writable (use it; a drop-in adding ReadWritePaths= is not seen here: --force)",
            writable.join(", ")
        ));
    }
    None
}

/// Why `user` cannot read (or execute) `path`: a directory on the way it cannot search, or the file's mode.
fn permission_reason(
    name: &str,
    user: Option<&UserIds>,
    path: &Path,
    access: Access,
    stat: &dyn Fn(&Path) -> Option<FileInfo>,
) -> Option<String> {
    if user.is_some_and(|u| u.uid == 0) {
        return None;
    }
    let allowed = |info: FileInfo, bit: u32| -> bool {
        let shift = match user {
            Some(u) if u.uid == info.uid => 6,
            Some(u) if u.gids.contains(&info.gid) => 3,
            _ => 0,
        };
        info.mode & (bit << shift) != 0
    };
    let shown = |info: FileInfo| format!("mode {:04o}, owner uid {} gid {}", info.mode & 0o7777, info.uid, info.gid);
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let info = stat(dir)?;
        if !allowed(info, 0o1) {
            return Some(format!("is under {}, which User={name} cannot search ({})", dir.display(), shown(info)));
        }
    }
    let info = stat(path)?;
    let (bit, verb) = match access {
        Access::Execute => (0o1, "execute"),
        _ => (0o4, "read"),
    };
    if allowed(info, bit) {
        None
    } else {
        Some(format!("is not {verb}able by User={name} ({}); the unit runs as that user", shown(info)))
    }
}

/// [`hidden_paths`] on this machine: symlinks resolved, the unit user's ids from `id`, owners and modes from the
/// file system.
pub fn check_paths(spec: &ServiceSpec, platform: Platform, needed: Vec<(String, PathBuf, Access)>) -> Vec<Hidden> {
    use std::os::unix::fs::MetadataExt;
    let sandbox = sandbox(spec, platform);
    let needed: Vec<NeededPath> = needed
        .into_iter()
        .map(|(what, path, access)| NeededPath { real: fs::canonicalize(&path).ok(), what, path, access })
        .collect();
    let user = sandbox.user.as_deref().and_then(|name| lookup_user(name, &mut runner::run_ok_blocking));
    let stat = |p: &Path| fs::metadata(p).ok().map(|m| FileInfo { uid: m.uid(), gid: m.gid(), mode: m.mode() });
    hidden_paths(&sandbox, user.as_ref(), &needed, &stat)
}

/// The ids of system user `name` (`id -u`, `id -G`); `None` when it does not exist.
pub(super) fn lookup_user(name: &str, exec: Exec<'_>) -> Option<UserIds> {
    let number = |out: Output| -> Vec<u32> {
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|n| n.parse().ok()).collect()
    };
    let id = |flag: &str| Cmd::new("id").args([flag, name]).timeout(Duration::from_secs(10));
    let uid = *number(exec(id("-u")).ok()?).first()?;
    let gids = exec(id("-G")).map(number).unwrap_or_default();
    Some(UserIds { uid, gids })
}
