//! Service definitions for the agents: renders the systemd unit or launchd plist, writes it, (de)activates it.
//! Knows systemd, launchd and their file layout; must not know what an agent does beyond the flags in `ServiceSpec`.
//!
//! Files: systemd `ROOT/etc/systemd/system/strata-AGENT.service`, launchd
//! `ROOT/Library/LaunchDaemons/dev.strata.AGENT.plist`. With `root == "/"` the service manager is told
//! (`systemctl daemon-reload` + `enable --now`, `launchctl bootout` + `bootstrap`); with any other root only the file is
//! written, so packaging and tests never touch the running system. System commands go through [`crate::runner`].
//!
//! Hardening (systemd). Agents that do not need root (`dns-agent`: its own system user `strata-dns`, created here
//! with `useradd --system` when missing, with no capability but `CAP_NET_BIND_SERVICE`; its root-owned keys are
//! handed over with `LoadCredential=`, so it never reads them itself; `DynamicUser=yes` is available too) get the
//! full set: `ProtectSystem=strict`, `ProtectHome`, `PrivateTmp`, `PrivateDevices`, kernel/cgroup/clock protection,
//! a system-call filter, and so on. [`Sandbox`] is the one description of the file-system part: the unit is written
//! from it and [`hidden_paths`] judges the binary, config, state dir and TLS files against it (`install` refuses
//! what the service could not reach). Agents that need root (they drive docker, zfs, qemu, borg) get only what creates no
//! file-system namespace and no device policy: any of `ProtectSystem=`, `ProtectHome=`, `PrivateTmp=`,
//! `ProtectKernel*=`, `ReadWritePaths=`… puts the service in its own mount namespace whose mounts no longer propagate
//! to the host, and systemd.exec(5) says `MountFlags=shared` does not bring propagation back. A dataset that
//! `zfs create`/`zfs clone` mounts from inside such a namespace would be invisible to the host and to dockerd.
//! They also keep devices (`/dev/zfs`, `/dev/kvm`: no `PrivateDevices=`, no `ProtectClock=` which implies a device
//! allow-list) and may restore set-uid files from backups (no `RestrictSUIDSGID=`).
//! No `WatchdogSec=`: the agents do not ping the watchdog. `RestartPreventExitStatus=78`: a bad config (exit 78) is
//! not restarted in a loop. `LimitNOFILE=` bounds every agent's descriptors (the gRPC listener caps its own share).
//! launchd: `KeepAlive` restarts only after a failure, throttled; a refused config exits 0 there (launchd has no
//! per-status rule), so it is not restarted either: it stays down, its reason in the log file, until fixed and
//! kickstarted. launchd has no sandbox, so nothing is hidden there. Agents that need root get `KillMode=process`: a restart must not take the QEMU VMs the
//! host agent started down with it (the services agent kills the job programs its predecessor left itself, at
//! start), and are ordered after docker and the ZFS mounts. launchd gets a `PATH` that includes Homebrew's
//! directories (borg, qemu).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runner::{self, Cmd, Output, RunError};

/// Where launchd writes an agent's stdout/stderr (an absolute path inside the plist, whatever the install root).
pub const LAUNCHD_LOG_DIR: &str = "/Library/Logs/Strata";

/// Open files allowed to every agent's process (systemd `LimitNOFILE=`). The gRPC listener holds at most
/// `conn::Limits::max_connections` of them; the rest is for DNS over TCP, databases, logs and child processes.
pub const LIMIT_NOFILE: u32 = 16384;

/// Seconds launchd waits before starting an agent again after it failed (`ThrottleInterval`).
pub const LAUNCHD_THROTTLE_SECONDS: u32 = 30;

/// Environment variable the launchd plist sets, so that a refused config exits 0 there (see `cli`): launchd restarts a
/// job on any non-zero exit and has no equivalent of `RestartPreventExitStatus=78`.
pub const LAUNCHD_ENV: &str = "STRATA_SERVICE_MANAGER";

/// Mode of every written service file.
pub const SERVICE_FILE_MODE: u32 = 0o644;

/// What the service manager needs to know about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Binary name, e.g. `dns-agent`: lowercase letters, digits and `-`.
    pub agent: String,
    pub description: String,
    /// Absolute path of the agent binary.
    pub exec: PathBuf,
    /// Absolute path of the agent's config file.
    pub config: PathBuf,
    /// Run as a transient unprivileged user (`DynamicUser=yes`).
    pub dynamic_user: bool,
    /// May bind ports below 1024 (`AmbientCapabilities=CAP_NET_BIND_SERVICE`).
    pub bind_privileged: bool,
    /// Runs as root with devices and host mounts (drives docker, zfs, qemu).
    pub needs_root: bool,
    /// Runs as this dedicated system user and its group of the same name (`User=`/`Group=`), which [`install`]
    /// creates when it is missing (`useradd --system`).
    pub system_user: Option<String>,
    /// Root-only files systemd reads and hands over (`LoadCredential=NAME:PATH`): the agent reads
    /// `$CREDENTIALS_DIRECTORY/NAME` (see [`crate::credentials`]).
    pub credentials: Vec<Credential>,
}

/// One `LoadCredential=NAME:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// e.g. [`crate::credentials::GRPC_KEY`].
    pub name: String,
    /// Absolute path systemd reads (as root, outside the sandbox).
    pub path: PathBuf,
}

impl ServiceSpec {
    /// `strata-AGENT.service`.
    pub fn unit_name(&self) -> String {
        format!("strata-{}.service", self.agent)
    }

    /// `dev.strata.AGENT`.
    pub fn launchd_label(&self) -> String {
        format!("dev.strata.{}", self.agent)
    }

    /// `strata/dns` for `dns-agent`: relative to `/var/lib` (systemd `StateDirectory=`).
    pub fn state_directory(&self) -> String {
        let short = self.agent.strip_suffix("-agent").filter(|s| !s.is_empty()).unwrap_or(&self.agent);
        format!("strata/{short}")
    }

    /// `/Library/Logs/Strata/AGENT.log`.
    pub fn launchd_log_path(&self) -> String {
        format!("{LAUNCHD_LOG_DIR}/{}.log", self.agent)
    }

    /// Checks everything [`install`] needs: a safe agent name, absolute UTF-8 paths, a one-line description and
    /// no contradictory flags.
    pub fn validate(&self) -> Result<(), InstallError> {
        self.validate_name()?;
        let invalid = |reason: String| Err(InstallError::InvalidSpec { agent: self.agent.clone(), reason });
        if has_control(&self.description) {
            return invalid("description must be a single line without control characters".into());
        }
        if self.description.ends_with('\\') {
            return invalid("description must not end with a backslash".into());
        }
        for (what, path) in [("executable", &self.exec), ("config", &self.config)] {
            let Some(text) = path.to_str() else {
                return invalid(format!("{what} path {} is not valid UTF-8", path.display()));
            };
            if !path.is_absolute() {
                return invalid(format!("{what} path {text:?} must be absolute"));
            }
            if has_control(text) {
                return invalid(format!("{what} path {text:?} contains control characters"));
            }
        }
        if self.exec.to_string_lossy().contains(['"', '\'', '\\']) {
            return invalid(format!("executable path {} must not contain quotes or backslashes", self.exec.display()));
        }
        if self.dynamic_user && self.needs_root {
            return invalid("dynamic_user and needs_root exclude each other".into());
        }
        if let Some(user) = &self.system_user {
            let ok = (1..=32).contains(&user.len())
                && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok {
                return invalid(format!("system user {user:?} must be 1 to 32 of a-z, 0-9, '-' and '_'"));
            }
            if self.needs_root || self.dynamic_user {
                return invalid("system_user excludes needs_root and dynamic_user".into());
            }
        }
        for c in &self.credentials {
            let name_ok = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name != "."
                && c.name != ".."
                && c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
            if !name_ok {
                return invalid(format!(
                    "credential name {:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'",
                    c.name
                ));
            }
            let Some(text) = c.path.to_str() else {
                return invalid(format!("credential {} path {} is not valid UTF-8", c.name, c.path.display()));
            };
            if !c.path.is_absolute() || has_control(text) || text.ends_with('\\') {
                return invalid(format!("credential {} path {text:?} must be absolute, on one line", c.name));
            }
        }
        Ok(())
    }

    /// The part of [`validate`](Self::validate) that [`uninstall`] needs: the agent name builds paths and labels.
    fn validate_name(&self) -> Result<(), InstallError> {
        let name = &self.agent;
        let ok = (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(())
        } else {
            Err(InstallError::InvalidSpec {
                agent: name.clone(),
                reason: "agent name must be 1 to 64 of a-z, 0-9 and '-', starting with a letter".into(),
            })
        }
    }
}

/// Which service manager to write for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Systemd,
    Launchd,
}

impl Platform {
    /// launchd on macOS, systemd everywhere else.
    pub fn current() -> Platform {
        if cfg!(target_os = "macos") {
            Platform::Launchd
        } else {
            Platform::Systemd
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("invalid service spec for agent {agent:?}: {reason}")]
    InvalidSpec { agent: String, reason: String },
    #[error("cannot read service file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write service file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove service file {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("service {service}: {source}")]
    Command {
        service: String,
        #[source]
        source: RunError,
    },
    #[error("cannot print install report: {0}")]
    Output(#[source] io::Error),
}

/// The systemd unit for `spec` (see the module docs for the hardening choices).
pub fn systemd_unit(spec: &ServiceSpec) -> String {
    let mut u = String::new();
    let mut line = |text: &str| {
        u.push_str(text);
        u.push('\n');
    };
    line(&format!("# {} — generated by `{} install`; re-run it instead of editing.", spec.unit_name(), spec.agent));
    line("[Unit]");
    line(&format!("Description={}", systemd_value(&spec.description)));
    if spec.needs_root {
        line("After=network-online.target docker.service zfs-mount.service zfs-fuse.service");
    } else {
        line("After=network-online.target");
    }
    line("Wants=network-online.target");
    line("");
    line("[Service]");
    line("Type=notify");
    line(&format!(
        "ExecStart={} run --config {}",
        systemd_exec_path(&spec.exec.to_string_lossy()),
        systemd_exec_arg(&spec.config.to_string_lossy())
    ));
    line("ExecReload=/bin/kill -HUP $MAINPID");
    line("Restart=on-failure");
    line("RestartSec=2s");
    line("RestartPreventExitStatus=78");
    line(&format!("LimitNOFILE={LIMIT_NOFILE}"));
    line(&format!("StateDirectory={}", spec.state_directory()));
    line("StateDirectoryMode=0750");
    // Safe for every agent: no namespace, no device policy.
    line("NoNewPrivileges=yes");
    line("LockPersonality=yes");
    line("RestrictRealtime=yes");
    line("SystemCallArchitectures=native");
    if spec.needs_root {
        line("# Root with host mounts and devices: docker, zfs (/dev/zfs), qemu (/dev/kvm). No file-system");
        line("# namespacing (ProtectSystem=, PrivateTmp=, ...): mounts made by zfs must reach the host and dockerd.");
        line("UMask=0027");
        line("# VMs started by the host agent outlive a restart of it.");
        line("KillMode=process");
    } else {
        let sandbox = sandbox(spec, Platform::Systemd);
        if spec.dynamic_user {
            line("DynamicUser=yes");
        }
        if let Some(user) = &spec.system_user {
            line("# Its own system user (created by `install` / the package). It reads the config, the CA, its");
            line("# certificate and the CRL (world-readable, or group-readable by this group), writes only the");
            line("# StateDirectory (owned by it); root-only keys come from LoadCredential= below, read by systemd.");
            line(&format!("User={}", systemd_value(user)));
            line(&format!("Group={}", systemd_value(user)));
        }
        for c in &spec.credentials {
            line(&format!("LoadCredential={}:{}", c.name, systemd_value(&c.path.to_string_lossy())));
        }
        if spec.bind_privileged {
            line("AmbientCapabilities=CAP_NET_BIND_SERVICE");
            line("CapabilityBoundingSet=CAP_NET_BIND_SERVICE");
        } else {
            line("CapabilityBoundingSet=");
        }
        if sandbox.protect_system_strict {
            line("ProtectSystem=strict");
        }
        if sandbox.protect_home {
            line("ProtectHome=yes");
        }
        if sandbox.private_tmp {
            line("PrivateTmp=yes");
        }
        line("PrivateDevices=yes");
        line("ProtectKernelTunables=yes");
        line("ProtectKernelModules=yes");
        line("ProtectKernelLogs=yes");
        line("ProtectControlGroups=yes");
        line("ProtectClock=yes");
        line("ProtectHostname=yes");
        line("ProtectProc=invisible");
        line("RestrictSUIDSGID=yes");
        line("RestrictNamespaces=yes");
        line("MemoryDenyWriteExecute=yes");
        line("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK");
        line("SystemCallFilter=@system-service");
        line("SystemCallErrorNumber=EPERM");
        line("UMask=0077");
    }
    line("");
    line("[Install]");
    line("WantedBy=multi-user.target");
    u
}

/// The launchd property list for `spec` (an XML plist; every string escaped).
pub fn launchd_plist(spec: &ServiceSpec) -> String {
    let log = xml_escape(&spec.launchd_log_path());
    let mut p = String::new();
    p.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    p.push_str(
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
    );
    p.push_str("<plist version=\"1.0\">\n<dict>\n");
    // Writing to a String cannot fail.
    let _ = writeln!(p, "\t<key>Label</key>\n\t<string>{}</string>", xml_escape(&spec.launchd_label()));
    p.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
    for arg in [&*spec.exec.to_string_lossy(), "run", "--config", &*spec.config.to_string_lossy()] {
        let _ = writeln!(p, "\t\t<string>{}</string>", xml_escape(arg));
    }
    p.push_str("\t</array>\n");
    p.push_str("\t<key>RunAtLoad</key>\n\t<true/>\n");
    // Restarted only after a failure (a non-zero exit), at most every THROTTLE seconds; a refused config exits 0
    // under launchd and stays down.
    p.push_str("\t<key>KeepAlive</key>\n\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n");
    let _ = writeln!(p, "\t<key>ThrottleInterval</key>\n\t<integer>{LAUNCHD_THROTTLE_SECONDS}</integer>");
    p.push_str("\t<key>EnvironmentVariables</key>\n\t<dict>\n\t\t<key>PATH</key>\n");
    p.push_str("\t\t<string>/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin</string>\n");
    let _ = writeln!(p, "\t\t<key>{LAUNCHD_ENV}</key>\n\t\t<string>launchd</string>\n\t</dict>");
    let _ = writeln!(p, "\t<key>StandardOutPath</key>\n\t<string>{log}</string>");
    let _ = writeln!(p, "\t<key>StandardErrorPath</key>\n\t<string>{log}</string>");
    p.push_str("</dict>\n</plist>\n");
    p
}

/// Where the service file for `spec` lives under `root`.
pub fn unit_path(spec: &ServiceSpec, platform: Platform, root: &Path) -> PathBuf {
    match platform {
        Platform::Systemd => root.join("etc/systemd/system").join(spec.unit_name()),
        Platform::Launchd => root.join("Library/LaunchDaemons").join(format!("{}.plist", spec.launchd_label())),
    }
}

/// The file-system sandbox a unit puts its service in. [`systemd_unit`] writes its directives from this, and
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
    if platform != Platform::Systemd || spec.needs_root {
        return Sandbox::default();
    }
    let state = spec.state_directory();
    Sandbox {
        protect_system_strict: true,
        protect_home: true,
        private_tmp: true,
        writable: vec![(Path::new("/var/lib").join(&state), format!("StateDirectory={state}"))],
        user: spec.system_user.clone(),
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
fn lookup_user(name: &str, exec: Exec<'_>) -> Option<UserIds> {
    let number = |out: Output| -> Vec<u32> {
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|n| n.parse().ok()).collect()
    };
    let id = |flag: &str| Cmd::new("id").args([flag, name]).timeout(Duration::from_secs(10));
    let uid = *number(exec(id("-u")).ok()?).first()?;
    let gids = exec(id("-G")).map(number).unwrap_or_default();
    Some(UserIds { uid, gids })
}

/// `useradd` for `spec`'s system user when `getent passwd` does not know it (exit 2); nothing otherwise.
fn user_steps(spec: &ServiceSpec, exec: Exec<'_>) -> Vec<Step> {
    let Some(user) = &spec.system_user else { return vec![] };
    let known = exec(Cmd::new("getent").args(["passwd", user]).timeout(Duration::from_secs(10)));
    match known {
        Err(RunError::Failed { code: Some(2), .. }) => vec![Step::required(
            Cmd::new("useradd")
                .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", "--comment", &format!("Strata {}", spec.agent), user])
                .timeout(Duration::from_secs(60)),
        )],
        // Known, or `getent` itself failed: `systemctl enable` will name a missing user.
        _ => vec![],
    }
}

/// Writes the service file (atomically, mode 0644) and, when `root` is `/`, enables and starts the service.
/// `dry_run` prints the file to `out` and changes nothing. Returns the written path (`None` on a dry run).
pub fn install(
    spec: &ServiceSpec,
    platform: Platform,
    root: &Path,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Option<PathBuf>, InstallError> {
    install_with(spec, platform, root, dry_run, out, &mut runner::run_ok_blocking)
}

/// Stops and disables the service when `root` is `/`, then removes its file. A missing file is not an error.
pub fn uninstall(
    spec: &ServiceSpec,
    platform: Platform,
    root: &Path,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    uninstall_with(spec, platform, root, dry_run, out, &mut runner::run_ok_blocking)
}

/// Runs one system command the way `runner::run_ok_blocking` does (replaceable in tests).
type Exec<'a> = &'a mut dyn FnMut(Cmd) -> Result<Output, RunError>;

/// A system command of an (un)install; a failing optional step is reported and skipped.
struct Step {
    cmd: Cmd,
    required: bool,
}

impl Step {
    fn required(cmd: Cmd) -> Step {
        Step { cmd, required: true }
    }

    fn optional(cmd: Cmd) -> Step {
        Step { cmd, required: false }
    }
}

fn systemctl(args: &[&str], timeout: Duration) -> Cmd {
    Cmd::new("systemctl").args(args).timeout(timeout)
}

fn launchctl(args: &[&str]) -> Cmd {
    Cmd::new("launchctl").args(args).timeout(Duration::from_secs(60))
}

fn activation_steps(spec: &ServiceSpec, platform: Platform, path: &Path) -> Vec<Step> {
    match platform {
        Platform::Systemd => vec![
            Step::required(systemctl(&["daemon-reload"], Duration::from_secs(60))),
            // Waits for READY=1 (Type=notify): allow for systemd's default 90 s start timeout.
            Step::required(systemctl(&["enable", "--now", &spec.unit_name()], Duration::from_secs(120))),
        ],
        Platform::Launchd => vec![
            // Fails when the service is not loaded yet: that is fine.
            Step::optional(launchctl(&["bootout", &format!("system/{}", spec.launchd_label())])),
            Step::required(launchctl(&["bootstrap", "system"]).arg(path)),
        ],
    }
}

/// Commands before the file is removed, and after.
fn deactivation_steps(spec: &ServiceSpec, platform: Platform) -> (Vec<Step>, Vec<Step>) {
    match platform {
        Platform::Systemd => (
            vec![Step::required(systemctl(&["disable", "--now", &spec.unit_name()], Duration::from_secs(120)))],
            vec![Step::required(systemctl(&["daemon-reload"], Duration::from_secs(60)))],
        ),
        Platform::Launchd => {
            (vec![Step::optional(launchctl(&["bootout", &format!("system/{}", spec.launchd_label())]))], vec![])
        }
    }
}

fn is_system_root(root: &Path) -> bool {
    root == Path::new("/")
}

fn say(out: &mut dyn Write, text: impl std::fmt::Display) -> Result<(), InstallError> {
    writeln!(out, "{text}").map_err(InstallError::Output)
}

fn run_steps(spec: &ServiceSpec, steps: Vec<Step>, out: &mut dyn Write, exec: Exec<'_>) -> Result<(), InstallError> {
    for step in steps {
        say(out, format_args!("running: {}", step.cmd.display()))?;
        match exec(step.cmd) {
            Ok(_) => {}
            Err(e) if !step.required => say(out, format_args!("ignored: {e}"))?,
            Err(source) => return Err(InstallError::Command { service: spec.unit_name(), source }),
        }
    }
    Ok(())
}

fn render(spec: &ServiceSpec, platform: Platform) -> String {
    match platform {
        Platform::Systemd => systemd_unit(spec),
        Platform::Launchd => launchd_plist(spec),
    }
}

fn install_with(
    spec: &ServiceSpec,
    platform: Platform,
    root: &Path,
    dry_run: bool,
    out: &mut dyn Write,
    exec: Exec<'_>,
) -> Result<Option<PathBuf>, InstallError> {
    spec.validate()?;
    let content = render(spec, platform);
    let path = unit_path(spec, platform, root);
    if dry_run {
        out.write_all(content.as_bytes()).map_err(InstallError::Output)?;
        return Ok(None);
    }

    let previous = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(InstallError::Read { path, source }),
    };
    if previous.as_deref().is_some_and(|old| old != content.as_bytes()) {
        say(out, format_args!("replacing {} (its content differs)", path.display()))?;
    }
    write_atomic(&path, content.as_bytes())?;
    if platform == Platform::Launchd {
        // launchd opens StandardOutPath but does not create its directory.
        let logs = root.join(LAUNCHD_LOG_DIR.trim_start_matches('/'));
        fs::create_dir_all(&logs).map_err(|source| InstallError::CreateDir { path: logs, source })?;
    }

    if !is_system_root(root) {
        say(out, format_args!("wrote {} (not activated: --root given)", path.display()))?;
        return Ok(Some(path));
    }
    say(out, format_args!("wrote {}", path.display()))?;
    let mut steps = if platform == Platform::Systemd { user_steps(spec, &mut *exec) } else { vec![] };
    steps.extend(activation_steps(spec, platform, &path));
    run_steps(spec, steps, out, exec)?;
    if platform == Platform::Systemd && previous.is_some_and(|old| old != content.as_bytes()) {
        say(out, format_args!("the unit changed: `systemctl restart {}` applies it now", spec.unit_name()))?;
    }
    match platform {
        Platform::Systemd => say(out, format_args!("enabled and started {}", spec.unit_name()))?,
        Platform::Launchd => say(out, format_args!("bootstrapped {} (RunAtLoad starts it)", spec.launchd_label()))?,
    }
    Ok(Some(path))
}

fn uninstall_with(
    spec: &ServiceSpec,
    platform: Platform,
    root: &Path,
    dry_run: bool,
    out: &mut dyn Write,
    exec: Exec<'_>,
) -> Result<(), InstallError> {
    // `config` and `exec` are not needed (and may be empty) to find and remove a service.
    spec.validate_name()?;
    let path = unit_path(spec, platform, root);
    let exists = match path.try_exists() {
        Ok(exists) => exists,
        Err(source) => return Err(InstallError::Read { path, source }),
    };
    if !exists {
        say(out, format_args!("{} is not installed: nothing to remove", path.display()))?;
        return Ok(());
    }
    let system = is_system_root(root);
    let (before, after) = if system { deactivation_steps(spec, platform) } else { (vec![], vec![]) };
    if dry_run {
        for step in &before {
            say(out, format_args!("would run: {}", step.cmd.display()))?;
        }
        say(out, format_args!("would remove {}", path.display()))?;
        for step in &after {
            say(out, format_args!("would run: {}", step.cmd.display()))?;
        }
        return Ok(());
    }
    run_steps(spec, before, out, exec)?;
    match fs::remove_file(&path) {
        Ok(()) => say(out, format_args!("removed {}", path.display()))?,
        // Removed between the check and now: the outcome is the same.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            say(out, format_args!("{} is not installed: nothing to remove", path.display()))?
        }
        Err(source) => return Err(InstallError::Remove { path, source }),
    }
    run_steps(spec, after, out, exec)
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory. Mode [`SERVICE_FILE_MODE`].
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|source| InstallError::CreateDir { path: dir.clone(), source })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp); // left over from a crashed run with the same pid
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(SERVICE_FILE_MODE).open(&tmp)?;
        file.set_permissions(Permissions::from_mode(SERVICE_FILE_MODE))?; // whatever the umask
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| InstallError::Write { path: path.to_path_buf(), source })
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// A one-line unit-file value: control characters become spaces, `%` specifiers are escaped, no trailing `\`.
fn systemd_value(text: &str) -> String {
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    line.trim_end_matches('\\').replace('%', "%%")
}

/// The executable of `ExecStart=`: `%` escaped, quoted when not plain. systemd does not expand `$` in it and
/// refuses quotes and backslashes there (`validate` rejects those).
fn systemd_exec_path(path: &str) -> String {
    systemd_word(path, false)
}

/// An argument of `ExecStart=`: `%` and `$` escaped (no specifier or variable expansion), quoted when not plain.
fn systemd_exec_arg(word: &str) -> String {
    systemd_word(word, true)
}

fn systemd_word(word: &str, escape_dollar: bool) -> String {
    let word: String = word.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | ',' | '='));
    if plain {
        return word;
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    for c in word.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '%' => quoted.push_str("%%"),
            '$' if escape_dollar => quoted.push_str("$$"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Not representable in XML 1.0; `validate` rejects them, this keeps the document well-formed anyway.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => escaped.push('\u{FFFD}'),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The three agents, with flags as their `main` declares them.
    fn specs(exec: &Path, config: &Path) -> Vec<ServiceSpec> {
        let spec = |agent: &str, dynamic_user, bind_privileged, needs_root| ServiceSpec {
            agent: agent.to_owned(),
            description: format!("Strata {agent} (100% homelab)"),
            exec: exec.to_path_buf(),
            config: config.to_path_buf(),
            dynamic_user,
            bind_privileged,
            needs_root,
            system_user: None,
            credentials: vec![],
        };
        let key = config.with_extension("key");
        vec![
            ServiceSpec {
                system_user: Some("strata-dns".into()),
                credentials: vec![Credential { name: "grpc.key".into(), path: key }],
                ..spec("dns-agent", false, true, false)
            },
            spec("services-agent", false, false, true),
            spec("host-agent", false, false, true),
        ]
    }

    /// An executable and a config file whose paths need quoting and escaping (space, `%`, `$`; quotes and a
    /// backslash in the config, where systemd allows them).
    fn awkward_files(dir: &Path) -> (PathBuf, PathBuf) {
        let bin_dir = dir.join("bin dir %i $HOME");
        fs::create_dir_all(&bin_dir).unwrap();
        let exec = bin_dir.join("agent");
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &exec).unwrap();
        let config = dir.join("conf %n $USER \"it's\" \\.toml");
        fs::write(&config, "# test\n").unwrap();
        (exec, config)
    }

    fn unit_suffix(name: &str) -> bool {
        [".service", ".target", ".socket", ".mount", ".slice", ".timer", ".path", ".device", ".scope", ".swap"]
            .iter()
            .any(|s| name.ends_with(s))
    }

    /// `systemd-analyze verify FILE`; `Err(complaints)` when it exits non-zero or says anything about our unit.
    ///
    /// verify also loads the units ours references (network-online.target, multi-user.target) from the host and
    /// reports problems in them, prefixed with *their* file or unit name; those lines are not about our unit and are
    /// skipped (printed for the record). Every other line counts, including "Unknown key" warnings, which verify
    /// prints without failing.
    fn verify_unit(path: &Path) -> Result<(), String> {
        let unit = path.file_name().unwrap().to_str().unwrap();
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(path)
            .output()
            .expect("systemd-analyze is required for this test (Debian: apt-get install systemd)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut complaints = Vec::new();
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            let subject = line.split_once(": ").map(|(s, _)| s.split(':').next().unwrap_or(s)).unwrap_or("");
            let other_file = subject.starts_with('/') && Path::new(subject) != path;
            let other_unit = !subject.contains('/') && unit_suffix(subject) && subject != unit;
            if other_file || other_unit {
                eprintln!("systemd-analyze, about another unit (ignored): {line}");
            } else {
                complaints.push(line.to_owned());
            }
        }
        if output.status.success() && complaints.is_empty() {
            Ok(())
        } else {
            Err(format!("{} {}", output.status, complaints.join("\n")))
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn generated_units_pass_systemd_analyze_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (exec, config) = awkward_files(dir.path());
        let root = dir.path().join("root");
        for spec in specs(&exec, &config) {
            let mut out = Vec::new();
            let path = install(&spec, Platform::Systemd, &root, false, &mut out).unwrap().unwrap();
            if let Err(complaints) = verify_unit(&path) {
                panic!("{}:\n{}\n{complaints}", spec.agent, systemd_unit(&spec));
            }
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_verify_check_catches_a_broken_unit() {
        let dir = tempfile::tempdir().unwrap();
        let (exec, config) = awkward_files(dir.path());
        let spec = &specs(&exec, &config)[0];
        let path = dir.path().join(spec.unit_name());
        // An unknown key: verify only warns (exit 0), the check must still fail.
        fs::write(&path, systemd_unit(spec).replace("Type=notify\n", "Type=notify\nBogusKey=1\n")).unwrap();
        assert!(verify_unit(&path).unwrap_err().contains("BogusKey"));
        // A missing executable: verify fails.
        let missing = ServiceSpec { exec: dir.path().join("no-such-agent"), ..spec.clone() };
        fs::write(&path, systemd_unit(&missing)).unwrap();
        assert!(verify_unit(&path).is_err());
    }

    #[test]
    fn units_carry_the_hardening_for_their_agent() {
        let specs = specs(Path::new("/usr/local/bin/x"), Path::new("/etc/strata/x.toml"));
        let dns = systemd_unit(&specs[0]);
        for want in [
            "Type=notify\n",
            "ExecStart=/usr/local/bin/x run --config /etc/strata/x.toml\n",
            "ExecReload=/bin/kill -HUP $MAINPID\n",
            "Restart=on-failure\n",
            "RestartSec=2s\n",
            "StateDirectory=strata/dns\n",
            "RestartPreventExitStatus=78\n",
            "LimitNOFILE=16384\n",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
            "ProtectSystem=strict\n",
            "ProtectHome=yes\n",
            "PrivateTmp=yes\n",
            "PrivateDevices=yes\n",
            "NoNewPrivileges=yes\n",
            "After=network-online.target\n",
            "Wants=network-online.target\n",
            "WantedBy=multi-user.target\n",
            "Description=Strata dns-agent (100%% homelab)\n",
            "User=strata-dns\n",
            "Group=strata-dns\n",
            "LoadCredential=grpc.key:/etc/strata/x.key\n",
        ] {
            assert!(dns.contains(want), "dns-agent unit lacks {want:?}:\n{dns}");
        }
        let services = systemd_unit(&specs[1]);
        assert!(services.contains("StateDirectory=strata/services\n"));
        assert!(services.contains("NoNewPrivileges=yes\n") && services.contains("LimitNOFILE=16384\n"));
        assert!(services.contains("KillMode=process\n") && !dns.contains("KillMode"));
        assert!(!dns.contains("DynamicUser"), "the dns-agent runs as a static system user");
        for absent in [
            "DynamicUser",
            "CapabilityBoundingSet",
            "ProtectSystem",
            "PrivateDevices",
            "ProtectClock",
            "Private",
            "User=",
            "LoadCredential",
        ] {
            assert!(!services.contains(&format!("\n{absent}")), "services-agent unit has {absent}:\n{services}");
        }
        for unit in [&dns, &services] {
            assert!(!unit.contains("WatchdogSec"));
        }
        assert_eq!(specs[2].state_directory(), "strata/host");
    }

    #[test]
    fn exec_words_are_quoted_and_escaped() {
        assert_eq!(systemd_exec_arg("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(systemd_exec_arg("/a b/%i $HOME \"q\" \\"), r#""/a b/%%i $$HOME \"q\" \\""#);
        assert_eq!(systemd_exec_path("/a b/%i $HOME"), r#""/a b/%%i $HOME""#);
        assert_eq!(systemd_exec_arg("line\nbreak"), "\"line break\"");
        assert_eq!(systemd_value("50% \\"), "50%% ");
    }

    #[test]
    fn plists_parse_with_the_expected_keys() {
        let exec = Path::new("/Applications/Strata & Co/<bin>/host-agent");
        let config = Path::new("/Library/Application Support/Strata/it's \"here\".toml");
        for spec in specs(exec, config) {
            let xml = launchd_plist(&spec);
            let value = plist::Value::from_reader_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
            let dict = value.as_dictionary().expect("a dictionary");
            assert_eq!(dict.get("Label").and_then(|v| v.as_string()), Some(&*format!("dev.strata.{}", spec.agent)));
            let args: Vec<&str> = dict
                .get("ProgramArguments")
                .and_then(|v| v.as_array())
                .expect("ProgramArguments")
                .iter()
                .map(|v| v.as_string().expect("a string"))
                .collect();
            assert_eq!(args, [exec.to_str().unwrap(), "run", "--config", config.to_str().unwrap()]);
            assert_eq!(dict.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
            let keep = dict.get("KeepAlive").and_then(|v| v.as_dictionary()).expect("KeepAlive dict");
            assert_eq!(keep.get("SuccessfulExit").and_then(|v| v.as_boolean()), Some(false));
            assert_eq!(keep.len(), 1);
            assert_eq!(dict.get("ThrottleInterval").and_then(|v| v.as_signed_integer()), Some(30));
            let log = format!("/Library/Logs/Strata/{}.log", spec.agent);
            assert_eq!(dict.get("StandardOutPath").and_then(|v| v.as_string()), Some(&*log));
            assert_eq!(dict.get("StandardErrorPath").and_then(|v| v.as_string()), Some(&*log));
            let env = dict.get("EnvironmentVariables").and_then(|v| v.as_dictionary()).expect("EnvironmentVariables");
            assert!(env.get("PATH").and_then(|v| v.as_string()).is_some_and(|p| p.contains("/opt/homebrew/bin")));
            assert_eq!(env.get(LAUNCHD_ENV).and_then(|v| v.as_string()), Some("launchd"));
            assert_eq!(dict.len(), 8, "{xml}");
        }
    }

    fn no_commands() -> impl FnMut(Cmd) -> Result<Output, RunError> {
        |cmd: Cmd| panic!("no system command may run with --root, got `{}`", cmd.display())
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn install_with_a_root_writes_the_file_and_runs_nothing() {
        for platform in [Platform::Systemd, Platform::Launchd] {
            for spec in specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")) {
                let root = tempfile::tempdir().unwrap();
                let mut out = Vec::new();
                let written = install_with(&spec, platform, root.path(), false, &mut out, &mut no_commands())
                    .unwrap()
                    .expect("a path");
                let path = unit_path(&spec, platform, root.path());
                assert_eq!(written, path);
                assert_eq!(fs::read_to_string(&path).unwrap(), render(&spec, platform));
                assert_eq!(mode(&path), 0o644);
                let printed = String::from_utf8(out).unwrap();
                assert_eq!(printed, format!("wrote {} (not activated: --root given)\n", path.display()));
                // Only the service file (and launchd's log directory): no temp file left behind.
                let siblings: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
                assert_eq!(siblings.len(), 1);

                // Reinstalling over a different file replaces it and says so.
                fs::write(&path, "stale").unwrap();
                let mut out = Vec::new();
                install_with(&spec, platform, root.path(), false, &mut out, &mut no_commands()).unwrap();
                assert!(String::from_utf8(out).unwrap().starts_with("replacing "));
                assert_eq!(fs::read_to_string(&path).unwrap(), render(&spec, platform));
            }
        }
        let root = tempfile::tempdir().unwrap();
        let spec = &specs(Path::new("/a"), Path::new("/b"))[0];
        install(spec, Platform::Launchd, root.path(), false, &mut Vec::new()).unwrap();
        assert!(root.path().join("Library/Logs/Strata").is_dir());
        assert_eq!(
            unit_path(spec, Platform::Launchd, root.path()),
            root.path().join("Library/LaunchDaemons/dev.strata.dns-agent.plist")
        );
        assert_eq!(
            unit_path(spec, Platform::Systemd, Path::new("/")),
            Path::new("/etc/systemd/system/strata-dns-agent.service")
        );
    }

    #[test]
    fn dry_run_prints_the_file_and_writes_nothing() {
        for platform in [Platform::Systemd, Platform::Launchd] {
            for spec in specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")) {
                let root = tempfile::tempdir().unwrap();
                let mut out = Vec::new();
                let written = install(&spec, platform, root.path(), true, &mut out).unwrap();
                assert_eq!(written, None);
                assert_eq!(String::from_utf8(out).unwrap(), render(&spec, platform));
                assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "dry run wrote something");
            }
        }
    }

    #[test]
    fn uninstall_removes_the_file_and_tolerates_a_missing_one() {
        for platform in [Platform::Systemd, Platform::Launchd] {
            let root = tempfile::tempdir().unwrap();
            let spec = specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")).remove(1);
            let path = install(&spec, platform, root.path(), false, &mut Vec::new()).unwrap().unwrap();

            // As the CLI calls it: no config path.
            let bare = ServiceSpec { config: PathBuf::new(), exec: PathBuf::new(), ..spec };
            let mut out = Vec::new();
            uninstall_with(&bare, platform, root.path(), true, &mut out, &mut no_commands()).unwrap();
            assert!(path.exists(), "dry run removed the file");
            assert_eq!(String::from_utf8(out).unwrap(), format!("would remove {}\n", path.display()));

            let mut out = Vec::new();
            uninstall_with(&bare, platform, root.path(), false, &mut out, &mut no_commands()).unwrap();
            assert!(!path.exists());
            assert_eq!(String::from_utf8(out).unwrap(), format!("removed {}\n", path.display()));

            let mut out = Vec::new();
            uninstall(&bare, platform, root.path(), false, &mut out).unwrap();
            assert!(String::from_utf8(out).unwrap().contains("is not installed: nothing to remove"));
        }
    }

    #[test]
    fn system_root_runs_the_service_manager_commands() {
        let spec = &specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml"))[0];
        let shown = |steps: Vec<Step>| steps.iter().map(|s| (s.cmd.display(), s.required)).collect::<Vec<_>>();
        let path = unit_path(spec, Platform::Launchd, Path::new("/"));
        assert_eq!(
            shown(activation_steps(spec, Platform::Systemd, Path::new("/x"))),
            [
                ("systemctl daemon-reload".to_owned(), true),
                ("systemctl enable --now strata-dns-agent.service".to_owned(), true)
            ]
        );
        assert_eq!(
            shown(activation_steps(spec, Platform::Launchd, &path)),
            [
                ("launchctl bootout system/dev.strata.dns-agent".to_owned(), false),
                ("launchctl bootstrap system /Library/LaunchDaemons/dev.strata.dns-agent.plist".to_owned(), true)
            ]
        );
        let (before, after) = deactivation_steps(spec, Platform::Systemd);
        assert_eq!(shown(before), [("systemctl disable --now strata-dns-agent.service".to_owned(), true)]);
        assert_eq!(shown(after), [("systemctl daemon-reload".to_owned(), true)]);

        // An optional step may fail; a required one stops the install with a message naming the service.
        let fail = |cmd: Cmd| -> Result<Output, RunError> {
            Err(RunError::Failed { cmd: cmd.display(), code: Some(5), stderr: "nope".into() })
        };
        let mut out = Vec::new();
        let steps = vec![Step::optional(Cmd::new("a")), Step::required(Cmd::new("b")), Step::required(Cmd::new("c"))];
        let err = run_steps(spec, steps, &mut out, &mut { fail }).unwrap_err();
        assert_eq!(err.to_string(), "service strata-dns-agent.service: `b` failed with exit code 5: nope");
        let printed = String::from_utf8(out).unwrap();
        assert_eq!(printed, "running: a\nignored: `a` failed with exit code 5: nope\nrunning: b\n");
    }

    #[test]
    fn bad_specs_are_errors_not_panics() {
        let good = specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")).remove(0);
        let root = tempfile::tempdir().unwrap();
        let cases = [
            ServiceSpec { agent: "../../etc/passwd".into(), ..good.clone() },
            ServiceSpec { agent: String::new(), ..good.clone() },
            ServiceSpec { agent: "Dns".into(), ..good.clone() },
            ServiceSpec { exec: "bin/agent".into(), ..good.clone() },
            ServiceSpec { exec: "/opt/it's/agent".into(), ..good.clone() },
            ServiceSpec { config: PathBuf::new(), ..good.clone() },
            ServiceSpec { description: "two\nlines".into(), ..good.clone() },
            ServiceSpec { description: "trailing \\".into(), ..good.clone() },
            ServiceSpec { needs_root: true, dynamic_user: true, ..good.clone() },
            ServiceSpec { system_user: Some("Root".into()), ..good.clone() },
            ServiceSpec { system_user: Some("x\nUser=root".into()), ..good.clone() },
            ServiceSpec { needs_root: true, ..good.clone() },
            ServiceSpec { credentials: vec![Credential { name: "../k".into(), path: "/k".into() }], ..good.clone() },
            ServiceSpec { credentials: vec![Credential { name: "k".into(), path: "k".into() }], ..good.clone() },
            ServiceSpec {
                credentials: vec![Credential { name: "k".into(), path: "/k\nUser=root".into() }],
                ..good.clone()
            },
        ];
        for spec in cases {
            let err = install(&spec, Platform::Systemd, root.path(), false, &mut Vec::new()).unwrap_err();
            assert!(matches!(err, InstallError::InvalidSpec { .. }), "{spec:?}: {err}");
            assert!(err.to_string().starts_with("invalid service spec for agent "), "{err}");
            // Rendering never panics and never lets a value break out of its line.
            let unit = systemd_unit(&spec);
            assert!(unit.lines().all(|l| !l.starts_with("lines") && l != "User=root"), "{unit}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
        let err = uninstall(
            &ServiceSpec { agent: "a/b".into(), ..good },
            Platform::Systemd,
            root.path(),
            false,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, InstallError::InvalidSpec { .. }));
    }

    fn needed(what: &str, path: &str, access: Access) -> NeededPath {
        NeededPath { what: what.into(), path: path.into(), real: None, access }
    }

    #[test]
    fn hidden_paths_name_the_path_and_the_directive() {
        let dns = &specs(Path::new("/usr/bin/dns-agent"), Path::new("/etc/strata/dns-agent.toml"))[0];
        let services = &specs(Path::new("/usr/bin/x"), Path::new("/etc/strata/x.toml"))[1];
        let dns_box = sandbox(dns, Platform::Systemd);
        // The unit writes exactly what the sandbox says.
        let unit = systemd_unit(dns);
        for (on, directive) in [
            (dns_box.protect_system_strict, "ProtectSystem=strict\n"),
            (dns_box.protect_home, "ProtectHome=yes\n"),
            (dns_box.private_tmp, "PrivateTmp=yes\n"),
        ] {
            assert!(on && unit.contains(directive), "{directive}");
        }
        assert_eq!(dns_box.writable, [(PathBuf::from("/var/lib/strata/dns"), "StateDirectory=strata/dns".to_owned())]);
        assert_eq!(sandbox(services, Platform::Systemd), Sandbox::default());
        assert_eq!(sandbox(dns, Platform::Launchd), Sandbox::default());

        // Everything world-readable and searchable unless a case says otherwise.
        let open = FileInfo { uid: 0, gid: 0, mode: 0o755 };
        let key = FileInfo { uid: 0, gid: 0, mode: 0o600 };
        let group_key = FileInfo { uid: 0, gid: 120, mode: 0o640 };
        let locked_dir = FileInfo { uid: 0, gid: 0, mode: 0o700 };
        let stat = |p: &Path| -> Option<FileInfo> {
            match p.to_str()? {
                "/etc/strata/pki/dns1.key" | "/etc/strata/secret.toml" => Some(key),
                "/etc/strata/pki/group.key" => Some(group_key),
                "/srv/locked" => Some(locked_dir),
                "/nowhere" => None,
                _ => Some(open),
            }
        };
        let user = UserIds { uid: 120, gids: vec![120] };
        let cases: [(NeededPath, Option<&UserIds>, Option<&str>); 16] = [
            (needed("config", "/etc/strata/dns-agent.toml", Access::Read), Some(&user), None),
            (needed("config", "/home/x/config.toml", Access::Read), Some(&user), Some("is hidden by ProtectHome=yes (the service sees /home empty)")),
            (needed("config", "/root/dns.toml", Access::Read), None, Some("is hidden by ProtectHome=yes (the service sees /root empty)")),
            (needed("executable", "/run/user/0/dns-agent", Access::Execute), None, Some("is hidden by ProtectHome=yes (the service sees /run/user empty)")),
            (needed("config", "/tmp/a/dns.toml", Access::Read), None, Some("is hidden by PrivateTmp=yes (the service gets its own empty /tmp)")),
            (needed("state_dir", "/var/tmp/s", Access::Write), None, Some("is hidden by PrivateTmp=yes (the service gets its own empty /var/tmp)")),
            // `/tmpfoo` is not under /tmp, `/homes` not under /home.
            (needed("config", "/tmpfoo/dns.toml", Access::Read), Some(&user), None),
            (needed("config", "/homes/dns.toml", Access::Read), Some(&user), None),
            (needed("state_dir", "/var/lib/strata/dns", Access::Write), Some(&user), None),
            (needed("state_dir", "/var/lib/strata/dns/sub", Access::Write), Some(&user), None),
            (needed("state_dir", "/var/lib/dns", Access::Write), Some(&user), Some("is read-only under ProtectSystem=strict: only /var/lib/strata/dns (StateDirectory=strata/dns) is writable (use it; a drop-in adding ReadWritePaths= is not seen here: --force)")),
            (needed("[grpc] key", "/etc/strata/pki/dns1.key", Access::Read), Some(&user), Some("is not readable by User=strata-dns (mode 0600, owner uid 0 gid 0); the unit runs as that user")),
            // Group-readable by the user's group: fine; by another group, or for a user not created yet: not.
            (needed("dns.tls_key", "/etc/strata/pki/group.key", Access::Read), Some(&user), None),
            (needed("dns.tls_key", "/etc/strata/pki/group.key", Access::Read), None, Some("is not readable by User=strata-dns (mode 0640, owner uid 0 gid 120); the unit runs as that user")),
            (needed("[grpc] ca", "/srv/locked/ca.pem", Access::Read), Some(&user), Some("is under /srv/locked, which User=strata-dns cannot search (mode 0700, owner uid 0 gid 0)")),
            (needed("[grpc] crl", "/nowhere/crl.pem", Access::Read), Some(&user), None),
        ];
        for (n, ids, want) in cases {
            let got = hidden_paths(&dns_box, ids, std::slice::from_ref(&n), &stat);
            let got: Vec<String> = got.iter().map(|h| h.reason.clone()).collect();
            assert_eq!(got, want.into_iter().map(str::to_owned).collect::<Vec<_>>(), "{n:?} as {ids:?}");
        }
        // A symlink into a hidden place is judged where it leads; the message names both.
        let link = NeededPath {
            real: Some("/home/me/dns.toml".into()),
            ..needed("config", "/etc/strata/dns.toml", Access::Read)
        };
        let got = hidden_paths(&dns_box, Some(&user), &[link], &stat);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].to_string(),
            "/etc/strata/dns.toml (config) is hidden by ProtectHome=yes (the service sees /home empty) (it resolves to /home/me/dns.toml)"
        );
        // Root agents have no sandbox: nothing is hidden from them; root (uid 0) reads everything.
        let all = [needed("config", "/tmp/x.toml", Access::Read), needed("state_dir", "/root/s", Access::Write)];
        assert!(hidden_paths(&sandbox(services, Platform::Systemd), None, &all, &stat).is_empty());
        let root = UserIds { uid: 0, gids: vec![0] };
        assert!(hidden_paths(&dns_box, Some(&root), &[needed("k", "/etc/strata/pki/dns1.key", Access::Read)], &stat)
            .is_empty());
    }

    #[test]
    fn a_missing_system_user_is_created_and_an_existing_one_is_left_alone() {
        let spec = &specs(Path::new("/usr/bin/dns-agent"), Path::new("/etc/strata/dns-agent.toml"))[0];
        let answer = |code: Option<i32>| {
            move |cmd: Cmd| -> Result<Output, RunError> {
                assert_eq!(cmd.display(), "getent passwd strata-dns");
                match code {
                    None => Ok(Output {
                        status: Default::default(),
                        stdout: vec![],
                        stderr: String::new(),
                        elapsed: Duration::ZERO,
                    }),
                    Some(code) => Err(RunError::Failed { cmd: cmd.display(), code: Some(code), stderr: String::new() }),
                }
            }
        };
        let shown = |steps: Vec<Step>| steps.iter().map(|s| (s.cmd.display(), s.required)).collect::<Vec<_>>();
        assert_eq!(
            shown(user_steps(spec, &mut answer(Some(2)))),
            [(
                "useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
                 --comment 'Strata dns-agent' strata-dns"
                    .to_owned(),
                true
            )]
        );
        assert!(user_steps(spec, &mut answer(None)).is_empty());
        assert!(user_steps(spec, &mut answer(Some(1))).is_empty());
        let services = &specs(Path::new("/usr/bin/x"), Path::new("/etc/x.toml"))[1];
        assert!(user_steps(services, &mut no_commands()).is_empty());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn user_ids_come_from_id() {
        assert_eq!(lookup_user("root", &mut runner::run_ok_blocking), Some(UserIds { uid: 0, gids: vec![0] }));
        let nobody = lookup_user("nobody", &mut runner::run_ok_blocking).expect("nobody exists on Debian");
        assert_eq!(nobody.uid, 65534);
        assert_eq!(lookup_user("strata-no-such-user", &mut runner::run_ok_blocking), None);
    }
}
