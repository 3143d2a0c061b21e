//! The host-agent config file: raw serde structs (unknown keys refused) validated into `Config`, and the `vm.toml`
//! of a QEMU VM directory. Knows the file formats; must not know how the agent acts on them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::config::{self, CommonConfig, ConfigError, GrpcSection, MetricsSection};
use agent_core::duration;
use serde::Deserialize;

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9441;

/// How long a clean shutdown (ACPI powerdown, `vmrun stop soft`) may take before the hard fallback.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one `vmrun` call may take before it is killed and the hard variant is tried.
pub const DEFAULT_VMRUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which hypervisor runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Fusion,
    Workstation,
    Qemu,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Fusion => "fusion",
            Backend::Workstation => "workstation",
            Backend::Qemu => "qemu",
        }
    }
}

/// How a VM is quiesced for its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Stop,
    Suspend,
    Clone,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stop => "stop",
            Mode::Suspend => "suspend",
            Mode::Clone => "clone",
        }
    }
}

/// Which program stores the backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Borg,
    Rsync,
    Timemachine,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Borg => "borg",
            EngineKind::Rsync => "rsync",
            EngineKind::Timemachine => "timemachine",
        }
    }
}

/// How many backups to keep (borg prune semantics; rsync applies the same rule to its dated copies): the one
/// retention table of both agents, in `agent_core::borg`.
pub use agent_core::borg::Retention;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    grpc: GrpcSection,
    metrics: Option<MetricsSection>,
    /// The IANA time zone the VMs' schedules are read in (default UTC).
    timezone: Option<String>,
    #[serde(default)]
    vms: Vec<RawVm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    backend: Backend,
    path: PathBuf,
    mode: Mode,
    engine: EngineKind,
    target: PathBuf,
    passcommand: Option<String>,
    schedule: Option<String>,
    /// Run once at start when a scheduled time passed while the agent was down.
    #[serde(default)]
    catch_up: bool,
    retention: Option<Retention>,
    guest: Option<String>,
    #[serde(default)]
    require_guest: bool,
    #[serde(default)]
    require_encrypted_target: bool,
    /// How long a clean shutdown may take before the hard fallback (default 2min).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    shutdown_timeout: Option<Duration>,
    /// The `vmrun` program (VMware backends); default: Fusion's bundled vmrun on macOS, `vmrun` on PATH otherwise.
    vmrun: Option<PathBuf>,
    /// How long one vmrun call may take (default 1min).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    vmrun_timeout: Option<Duration>,
    /// QEMU: the user `qemu-system-x86_64` drops to once it opened its disks and QMP socket (`-runas`).
    runas: Option<String>,
}

/// One VM, validated.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub backend: Backend,
    /// The bundle: a `.vmwarevm` directory (VMware) or a directory holding disks and `vm.toml` (QEMU).
    pub path: PathBuf,
    pub mode: Mode,
    pub engine: EngineKind,
    pub target: PathBuf,
    pub passcommand: Option<String>,
    /// A five-field cron expression, read on the wall clock of [`Config::timezone`].
    pub schedule: Option<String>,
    /// A scheduled time passed while the agent was down (the last backup attempt is older): one backup at start.
    pub catch_up: bool,
    pub retention: Retention,
    pub guest: Option<String>,
    pub require_guest: bool,
    pub require_encrypted_target: bool,
    pub shutdown_timeout: Duration,
    pub vmrun: PathBuf,
    pub vmrun_timeout: Duration,
    /// QEMU: `-runas` user; `None` leaves QEMU running as the agent's user (root).
    pub runas: Option<String>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `timezone`: where schedules are read (default UTC).
    pub timezone: agent_core::cron::TimeZone,
    pub vms: Vec<VmConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = config::load(path)?;
        Self::validate(path, raw)
    }

    /// Parses config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = config::parse(path, text)?;
        Self::validate(path, raw)
    }

    fn validate(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let common = CommonConfig::validate(path, raw.state_dir, raw.grpc, raw.metrics, DEFAULT_METRICS_PORT)?;
        let timezone = match &raw.timezone {
            None => agent_core::cron::TimeZone::UTC,
            Some(z) => agent_core::cron::zone(z).map_err(|m| ConfigError::invalid(path, "timezone", m))?,
        };
        let mut names = HashSet::new();
        let mut vms = Vec::with_capacity(raw.vms.len());
        for (i, v) in raw.vms.into_iter().enumerate() {
            let key = |k: &str| format!("vms[{i}].{k}");
            let bad = |k: &str, m: String| ConfigError::invalid(path, key(k), m);
            if !valid_name(&v.name) {
                return Err(bad("name", format!("`{}` must be 1-63 of a-z, 0-9, `-`, `_`", v.name)));
            }
            if !names.insert(v.name.clone()) {
                return Err(bad("name", format!("vm `{}` is defined twice", v.name)));
            }
            if v.path.as_os_str().is_empty() || v.target.as_os_str().is_empty() {
                return Err(bad("path", "path and target must not be empty".into()));
            }
            if let Some(s) = &v.schedule {
                check_schedule(s).map_err(|m| bad("schedule", m))?;
            }
            if v.catch_up && v.schedule.is_none() {
                return Err(bad("catch_up", "is true but no `schedule` is set".into()));
            }
            if let Some(g) = &v.guest {
                if !g.starts_with("https://") || g.len() <= "https://".len() {
                    return Err(bad("guest", format!("`{g}` must be an https:// address of a services-agent")));
                }
            }
            if v.require_guest && v.guest.is_none() {
                return Err(bad("require_guest", "is true but no `guest` is set".into()));
            }
            if v.passcommand.is_some() && v.engine != EngineKind::Borg {
                return Err(bad("passcommand", format!("only the borg engine uses it, not {}", v.engine.as_str())));
            }
            if v.passcommand.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(bad("passcommand", "must not be empty".into()));
            }
            let vmrun_default = if cfg!(target_os = "macos") {
                PathBuf::from("/Applications/VMware Fusion.app/Contents/Library/vmrun")
            } else {
                PathBuf::from("vmrun")
            };
            // Only borg knows `--keep-within`; the rsync engine's pruning counts backups per period.
            if v.retention.as_ref().is_some_and(|r| r.within.is_some()) && v.engine != EngineKind::Borg {
                return Err(bad(
                    "retention.within",
                    format!("only the borg engine applies it, not {}: use last/hourly/daily/…", v.engine.as_str()),
                ));
            }
            if let Some(u) = &v.runas {
                if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                    return Err(bad("runas", format!("`{u}` is not a user name")));
                }
            }
            vms.push(VmConfig {
                runas: v.runas,
                shutdown_timeout: v.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
                vmrun_timeout: v.vmrun_timeout.unwrap_or(DEFAULT_VMRUN_TIMEOUT),
                name: v.name,
                backend: v.backend,
                path: config::resolve(path, &v.path),
                mode: v.mode,
                engine: v.engine,
                target: config::resolve(path, &v.target),
                passcommand: v.passcommand,
                schedule: v.schedule,
                catch_up: v.catch_up,
                retention: v.retention.unwrap_or_default(),
                guest: v.guest,
                require_guest: v.require_guest,
                require_encrypted_target: v.require_encrypted_target,
                vmrun: v
                    .vmrun
                    .map(|p| if p.components().count() > 1 { config::resolve(path, &p) } else { p })
                    .unwrap_or(vmrun_default),
            });
        }
        Ok(Config { common, timezone, vms })
    }

    pub fn vm(&self, name: &str) -> Option<&VmConfig> {
        self.vms.iter().find(|v| v.name == name)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A five-field cron expression (`m h dom mon dow`), checked by the scheduler's own parser.
fn check_schedule(s: &str) -> Result<(), String> {
    agent_core::cron::Cron::parse(s).map(drop)
}

/// A QEMU VM's `vm.toml`: how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmToml {
    pub memory_mb: u32,
    pub cpus: u32,
    /// Relative to the VM directory.
    pub disks: Vec<PathBuf>,
    /// Extra `qemu-system-x86_64` arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// The file name of a QEMU VM's start description.
pub const VM_TOML: &str = "vm.toml";

impl VmToml {
    /// Reads and checks `DIR/vm.toml`.
    pub fn load(dir: &Path) -> Result<VmToml, ConfigError> {
        let path = dir.join(VM_TOML);
        let v: VmToml = config::load(&path)?;
        v.check(&path)?;
        Ok(v)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        if self.memory_mb < 16 {
            return Err(ConfigError::invalid(path, "memory_mb", "must be at least 16"));
        }
        if self.cpus == 0 {
            return Err(ConfigError::invalid(path, "cpus", "must be at least 1"));
        }
        if self.disks.is_empty() {
            return Err(ConfigError::invalid(path, "disks", "must name at least one disk"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            let escapes = d.is_absolute() || d.components().any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes || d.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    path,
                    format!("disks[{i}]"),
                    format!("`{}` must be a path inside the VM directory", d.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "state_dir = \"/s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
    const VM: &str = "[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = \"/vms/lab\"\nmode = \"clone\"\n\
                      engine = \"borg\"\ntarget = \"/b/lab\"\n";

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/host-agent.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.common.grpc.listen.port(), 7441);
        assert_eq!(cfg.common.metrics_listen.port(), 9441);
        let s = cfg.vm("services").unwrap();
        assert_eq!((s.backend, s.mode, s.engine), (Backend::Fusion, Mode::Clone, EngineKind::Borg));
        assert_eq!(s.retention, Retention { weekly: 4, monthly: 6, ..Default::default() });
        assert!(s.require_encrypted_target && !s.require_guest);
        assert_eq!(s.guest.as_deref(), Some("https://10.0.0.20:7443"));
        assert_eq!(cfg.vm("lab").unwrap().backend, Backend::Qemu);
        assert_eq!(cfg.vm("lab").unwrap().runas.as_deref(), Some("nobody"));
        assert_eq!(cfg.timezone, agent_core::cron::zone("Europe/Berlin").unwrap());
        assert!(s.catch_up && !cfg.vm("lab").unwrap().catch_up);
    }

    #[test]
    fn bad_vms_are_refused_naming_the_key() {
        let p = Path::new("/etc/strata/host.toml");
        let cases = [
            (VM.replace("clone", "snapshot"), "unknown variant `snapshot`"),
            (format!("{VM}colour = 1\n"), "unknown field `colour`"),
            (format!("{VM}{VM}"), "key `vms[1].name`: vm `lab` is defined twice"),
            (VM.replace("\"lab\"", "\"Lab!\""), "key `vms[0].name`"),
            (format!("{VM}schedule = \"daily\"\n"), "key `vms[0].schedule`"),
            (format!("{VM}guest = \"http://x\"\n"), "key `vms[0].guest`"),
            (format!("{VM}require_guest = true\n"), "key `vms[0].require_guest`"),
            (VM.replace("borg", "rsync") + "passcommand = \"x\"\n", "key `vms[0].passcommand`"),
            (format!("{VM}shutdown_timeout = \"0s\"\n"), "must be more than zero (key `shutdown_timeout`)"),
            (format!("{VM}shutdown_timeout = 120\n"), "write a duration string with a unit, e.g. \"120s\""),
            (VM.replace("borg", "rsync") + "retention = { within = \"2d\" }\n", "key `vms[0].retention.within`"),
            (format!("{VM}runas = \"a b\"\n"), "key `vms[0].runas`"),
            (format!("{VM}catch_up = true\n"), "key `vms[0].catch_up`: is true but no `schedule` is set"),
            (format!("{VM}catch_up = \"yes\"\n"), "(key `catch_up`)"),
        ];
        for (vm, want) in cases {
            let err = Config::parse(p, &format!("{HEAD}{vm}")).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let ok = Config::parse(p, &format!("{HEAD}{VM}schedule = \"*/15 4 * * 0,6\"\n")).unwrap();
        assert_eq!(ok.vms[0].shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(ok.timezone, agent_core::cron::TimeZone::UTC, "schedules are UTC by default");
        assert!(!ok.vms[0].catch_up);
        // `timezone` is a top-level key (before any table); a bad name is refused naming the key and the value.
        let zoned = |z: &str| Config::parse(p, &format!("timezone = {z:?}\n{HEAD}{VM}"));
        assert_eq!(zoned("America/New_York").unwrap().timezone, agent_core::cron::zone("America/New_York").unwrap());
        let e = zoned("Europe/Berln").unwrap_err().to_string();
        assert!(e.contains("key `timezone`: `Europe/Berln` is not a time zone"), "{e}");
    }

    /// Every duration key of this config takes the shared grammar tables of `agent_core::duration`.
    #[test]
    fn every_duration_key_takes_the_one_grammar() {
        let p = Path::new("/etc/strata/host.toml");
        type Get = fn(&VmConfig) -> Option<Duration>;
        let keys: [(&str, &str, Get); 3] = [
            ("shutdown_timeout", "shutdown_timeout = V", |v| Some(v.shutdown_timeout)),
            ("vmrun_timeout", "vmrun_timeout = V", |v| Some(v.vmrun_timeout)),
            ("within", "retention = { within = V }", |v| v.retention.within),
        ];
        for (leaf, line, get) in keys {
            let text = |v: &str| format!("{HEAD}{VM}{}\n", line.replace('V', &format!("{v:?}")));
            for (v, secs) in duration::ACCEPTED {
                let c = Config::parse(p, &text(v)).unwrap_or_else(|e| panic!("{leaf} = {v:?}: {e}"));
                assert_eq!(get(&c.vms[0]), Some(Duration::from_secs(*secs)), "{leaf} = {v:?}");
            }
            for v in duration::REFUSED {
                let e = Config::parse(p, &text(v)).unwrap_err().to_string();
                assert!(e.contains(&format!("(key `{leaf}`)")), "{leaf} = {v:?}: {e}");
            }
        }
    }

    #[test]
    fn vm_toml_parses_and_refuses_escaping_disks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VM_TOML), "memory_mb = 512\ncpus = 1\ndisks = [\"disk.qcow2\"]\n").unwrap();
        let v = VmToml::load(dir.path()).unwrap();
        assert_eq!(v.disks, vec![PathBuf::from("disk.qcow2")]);
        assert!(v.args.is_empty());
        std::fs::write(dir.path().join(VM_TOML), "memory_mb = 512\ncpus = 1\ndisks = [\"../x.raw\"]\n").unwrap();
        let e = VmToml::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("disks[0]"), "{e}");
        std::fs::write(dir.path().join(VM_TOML), "memory_mb = 512\ncpus = 1\ndisks = []\nram = 1\n").unwrap();
        assert!(VmToml::load(dir.path()).unwrap_err().to_string().contains("unknown field `ram`"));
    }
}
