//! Service definitions for the agents: renders the systemd unit or launchd plist, writes it, (de)activates it.
//! Knows systemd, launchd and their file layout; must not know what an agent does or drives (no docker, zfs or VM
//! knowledge): each agent hands in its [`Privilege`], its unit ordering and its kill mode ([`ServiceSpec`]).
//! `systemd` renders units, `launchd` plists, `sandbox` judges the paths a sandboxed service needs.
//!
//! Files: systemd `ROOT/etc/systemd/system/strata-AGENT.service`, launchd
//! `ROOT/Library/LaunchDaemons/dev.strata.AGENT.plist`. With `root == "/"` the service manager is told
//! (`systemctl daemon-reload` + `enable --now`, `launchctl bootout` + `bootstrap`); with any other root only the file is
//! written, so packaging and tests never touch the running system. System commands go through [`crate::runner`].
//!
//! Hardening (systemd). Agents that do not need root ([`Privilege::SystemUser`]: a system user created here with
//! `useradd --system` when missing, with no capability but, if asked, `CAP_NET_BIND_SERVICE`; its root-owned keys
//! are handed over with `LoadCredential=`, so it never reads them itself; [`Privilege::DynamicUser`] is available
//! too) get the full set: `ProtectSystem=strict`, `ProtectHome`, `PrivateTmp`, `PrivateDevices`,
//! kernel/cgroup/clock protection, a system-call filter, and so on. [`Sandbox`] is the one description of the
//! file-system part: the unit is written from it and [`hidden_paths`] judges the binary, config, state dir and TLS
//! files against it (`install` refuses what the service could not reach). Agents that run as [`Privilege::Root`]
//! get only what creates no file-system namespace and no device policy: any of `ProtectSystem=`, `ProtectHome=`,
//! `PrivateTmp=`, `ProtectKernel*=`, `ReadWritePaths=`… puts the service in its own mount namespace whose mounts no
//! longer propagate to the host, and systemd.exec(5) says `MountFlags=shared` does not bring propagation back: a
//! mount the agent makes would be invisible to the host. They also keep the host's devices (no `PrivateDevices=`,
//! no `ProtectClock=` which implies a device allow-list) and may restore set-uid files from backups (no
//! `RestrictSUIDSGID=`); the agent says why in a comment of the unit.
//! No `WatchdogSec=`: the agents do not ping the watchdog. `RestartPreventExitStatus=78`: a bad config (exit 78) is
//! not restarted in a loop. `LimitNOFILE=` bounds every agent's descriptors (the gRPC listener caps its own share).
//! launchd: `KeepAlive` restarts only after a failure, throttled; a refused config exits 0 there (launchd has no
//! per-status rule), so it is not restarted either: it stays down, its reason in the log file, until fixed and
//! kickstarted. launchd has no sandbox, so nothing is hidden there. launchd gets a `PATH` that includes Homebrew's
//! directories (where the external programs the agents run are installed on a Mac).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runner::{self, Cmd, Output, RunError};

mod launchd;
mod sandbox;
mod systemd;
// Tests run programs directly.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests;

pub use launchd::launchd_plist;
pub use sandbox::{check_paths, hidden_paths, sandbox, Access, FileInfo, Hidden, NeededPath, Sandbox, UserIds};
pub use systemd::systemd_unit;

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
    pub privilege: Privilege,
    /// Ordering, dependencies and kill mode, as the agent declares them.
    pub unit: UnitNeeds,
    /// Root-only files systemd reads and hands over (`LoadCredential=NAME:PATH`): the agent reads
    /// `$CREDENTIALS_DIRECTORY/NAME` (see [`crate::credentials`]).
    pub credentials: Vec<Credential>,
}

/// Who an agent's service runs as: one of three, so that no contradictory combination can be written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Root, with the host's mounts and devices and no file-system namespace (see the module docs). `why` names
    /// what the agent drives that needs it; the unit carries it as a comment (one comment line per `\n`).
    Root { why: &'static str },
    /// A dedicated system user and its group of the same name (`User=`/`Group=`), which [`install`] creates when it
    /// is missing (`useradd --system`); its root-only files are handed over as credentials. `bind_privileged`: may
    /// bind ports below 1024 (`AmbientCapabilities=CAP_NET_BIND_SERVICE`), no other capability.
    SystemUser { name: &'static str, bind_privileged: bool },
    /// A transient unprivileged user (`DynamicUser=yes`); its root-only files are handed over as credentials.
    DynamicUser { bind_privileged: bool },
}

impl Privilege {
    /// The dedicated system user, if the service runs as one.
    pub fn system_user(&self) -> Option<&'static str> {
        match *self {
            Privilege::SystemUser { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Whether the service cannot read root-only files itself (they are handed over with `LoadCredential=`).
    pub fn unprivileged(&self) -> bool {
        !matches!(self, Privilege::Root { .. })
    }
}

/// The agent's place among the host's other units, and what stopping it stops. The default: after (and wanting)
/// `network-online.target` only, the whole control group stopped with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitNeeds {
    /// Units started before the agent (`After=`), beyond `network-online.target`; a unit missing on the host is
    /// ignored by systemd.
    pub after: &'static [&'static str],
    /// Units pulled in with it (`Wants=`), beyond `network-online.target`.
    pub wants: &'static [&'static str],
    pub kill_mode: KillMode,
}

/// What `systemctl stop` (and so a restart) kills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KillMode {
    /// Every process of the unit (systemd's default; nothing is written).
    #[default]
    ControlGroup,
    /// Only the agent's own process (`KillMode=process`): the children it started outlive a restart. `why` becomes
    /// the comment above the directive.
    Process { why: &'static str },
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
        if let Privilege::SystemUser { name: user, .. } = self.privilege {
            let ok = (1..=32).contains(&user.len())
                && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok {
                return invalid(format!("system user {user:?} must be 1 to 32 of a-z, 0-9, '-' and '_'"));
            }
        }
        if !self.privilege.unprivileged() && !self.credentials.is_empty() {
            return invalid("credentials are handed over only to a service that does not run as root".into());
        }
        let comments = match (self.privilege, self.unit.kill_mode) {
            (Privilege::Root { why }, KillMode::Process { why: kill }) => vec![why, kill],
            (Privilege::Root { why }, _) | (_, KillMode::Process { why }) => vec![why],
            _ => vec![],
        };
        for text in comments {
            if text.trim().is_empty() || text.chars().any(|c| c.is_control() && c != '\n') {
                return invalid(format!("unit comment {text:?} must be non-empty lines without control characters"));
            }
        }
        for unit in self.unit.after.iter().chain(self.unit.wants) {
            let ok = !unit.is_empty()
                && unit.contains('.')
                && unit.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':' | '\\'));
            if !ok {
                return invalid(format!("unit name {unit:?} must be of A-Z, a-z, 0-9, ':', '-', '_', '.', '@', '\\'"));
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
        source: crate::state::StateError,
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

/// Where the service file for `spec` lives under `root`.
pub fn unit_path(spec: &ServiceSpec, platform: Platform, root: &Path) -> PathBuf {
    match platform {
        Platform::Systemd => root.join("etc/systemd/system").join(spec.unit_name()),
        Platform::Launchd => root.join("Library/LaunchDaemons").join(format!("{}.plist", spec.launchd_label())),
    }
}

/// `useradd` for `spec`'s system user when `getent passwd` does not know it (exit 2); nothing otherwise.
fn user_steps(spec: &ServiceSpec, exec: Exec<'_>) -> Vec<Step> {
    let Some(user) = spec.privilege.system_user() else { return vec![] };
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
pub(super) type Exec<'a> = &'a mut dyn FnMut(Cmd) -> Result<Output, RunError>;

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
    write_service_file(&path, content.as_bytes())?;
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

/// Creates the directory, then [`crate::state::write_atomic`] with mode [`SERVICE_FILE_MODE`].
fn write_service_file(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| InstallError::CreateDir { path: dir.to_path_buf(), source })?;
    }
    crate::state::write_atomic(path, data, SERVICE_FILE_MODE)
        .map_err(|source| InstallError::Write { path: path.to_path_buf(), source })
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}
