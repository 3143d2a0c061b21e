//! The host-agent config file: raw serde structs (unknown keys refused) validated into `Config`. Knows the file
//! format; must not know how the agent acts on it, nor what is inside a VM bundle (each hypervisor backend reads its
//! own, e.g. QEMU's `vm.toml`) or what each engine is (it names one of `engine::ENGINES`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::config::{self, CommonConfig, ConfigError, GrpcSection, MetricsSection};
use agent_core::duration;
use agent_core::notify::{self, NotifyTarget, RawTarget};
use agent_core::repos::{self, Passphrase, RawRepo, RepoSpec};
use serde::Deserialize;

/// Which program stores the backups: one of `engine::ENGINES`, by name.
pub use crate::engine::EngineKind;

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9441;

/// How long a clean shutdown (ACPI powerdown, `vmrun stop soft`) may take before the hard fallback.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one `vmrun` call may take before it is killed and the hard variant is tried.
pub const DEFAULT_VMRUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Where macOS keeps Time Machine's command-line tool.
pub const DEFAULT_TMUTIL: &str = "/usr/bin/tmutil";

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
    /// `[[notify]]`: targets told about every VM's backups.
    #[serde(default)]
    notify: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    backend: Backend,
    path: PathBuf,
    mode: Mode,
    engine: EngineKind,
    /// The shorthand of `targets`: one target labelled `default` with the VM's own settings.
    target: Option<String>,
    /// Where the VM's backups go (the VM's `engine` writes to each): local paths and SSH locations.
    targets: Option<Vec<RawRepo>>,
    passcommand: Option<String>,
    schedule: Option<String>,
    /// Run once at start when a scheduled time passed while the agent was down.
    #[serde(default)]
    catch_up: bool,
    /// Older than this, the last success on a target is overdue (default: from the schedule).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    warn_after: Option<Duration>,
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
    /// The `tmutil` program (`engine = "timemachine"`); default `/usr/bin/tmutil`.
    tmutil: Option<PathBuf>,
    /// VMs naming the same group are never quiesced at the same time (a DNS primary and its secondary).
    exclusive: Option<String>,
    /// This VM's own notification targets (the `[[notify]]` ones are told too).
    #[serde(default)]
    notify: Vec<RawTarget>,
}

/// One VM, validated.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub backend: Backend,
    /// The bundle: a directory whose layout only its hypervisor backend knows (`.vmwarevm`, a QEMU directory).
    pub path: PathBuf,
    pub mode: Mode,
    pub engine: EngineKind,
    /// Where backups go, in config order (`target = "…"` is one, labelled `default`). Each run writes the same
    /// backup to every target; restores take the first reachable one, local ones first, unless told.
    pub targets: Vec<RepoSpec>,
    /// The passphrase source of borg targets that name none (`passcommand`).
    pub passphrase: Passphrase,
    /// A five-field cron expression, read on the wall clock of [`Config::timezone`].
    pub schedule: Option<String>,
    /// A scheduled time passed while the agent was down (the last backup attempt is older): one backup at start.
    pub catch_up: bool,
    /// Older than this, the last success on a target is overdue; `None`: 1.5 × the schedule's interval.
    pub warn_after: Option<Duration>,
    pub retention: Retention,
    pub guest: Option<String>,
    pub require_guest: bool,
    /// Refuse a local target that is not on an encrypted volume (SSH targets are not checked: the remote's disk
    /// cannot be seen from here).
    pub require_encrypted_target: bool,
    pub shutdown_timeout: Duration,
    pub vmrun: PathBuf,
    pub vmrun_timeout: Duration,
    /// The `tmutil` program (`engine = "timemachine"`).
    pub tmutil: PathBuf,
    /// QEMU: `-runas` user; `None` leaves QEMU running as the agent's user (root).
    pub runas: Option<String>,
    /// The exclusive group: no two VMs of one group are quiesced (paused, suspended, stopped) at once.
    pub exclusive: Option<String>,
    /// Per-VM notification targets (the global `[[notify]]` ones apply too).
    pub notify: Vec<NotifyTarget>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `timezone`: where schedules are read (default UTC).
    pub timezone: agent_core::cron::TimeZone,
    pub vms: Vec<VmConfig>,
    /// `[[notify]]`: targets told about every VM's backups, restores and drills.
    pub notify: Vec<NotifyTarget>,
    /// The file this config was read from (a reload reads it again).
    pub path: PathBuf,
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
            if v.path.as_os_str().is_empty() {
                return Err(bad("path", "must not be empty".into()));
            }
            let targets = vm_targets(path, i, &v)?;
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
            if v.passcommand.is_some() && !v.engine.takes_passcommand() {
                let only = EngineKind::names_where(EngineKind::takes_passcommand).join("/");
                return Err(bad("passcommand", format!("only the {only} engine uses it, not {}", v.engine.as_str())));
            }
            if v.passcommand.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(bad("passcommand", "must not be empty".into()));
            }
            let vmrun_default = if cfg!(target_os = "macos") {
                PathBuf::from("/Applications/VMware Fusion.app/Contents/Library/vmrun")
            } else {
                PathBuf::from("vmrun")
            };
            check_within(v.engine, v.retention.as_ref()).map_err(|m| bad("retention.within", m))?;
            if let Some(u) = &v.runas {
                if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                    return Err(bad("runas", format!("`{u}` is not a user name")));
                }
            }
            if let Some(g) = &v.exclusive {
                if !valid_name(g) {
                    return Err(bad("exclusive", format!("group `{g}` must be 1-63 of a-z, 0-9, `-`, `_`")));
                }
            }
            let notify = notify::targets(path, &key("notify"), &v.notify)?;
            let program = |p: PathBuf| if p.components().count() > 1 { config::resolve(path, &p) } else { p };
            if v.tmutil.is_some() && v.engine.as_str() != "timemachine" {
                return Err(bad("tmutil", format!("only the timemachine engine uses it, not {}", v.engine.as_str())));
            }
            vms.push(VmConfig {
                notify,
                tmutil: v.tmutil.map(program).unwrap_or_else(|| PathBuf::from(DEFAULT_TMUTIL)),
                exclusive: v.exclusive,
                runas: v.runas,
                shutdown_timeout: v.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
                vmrun_timeout: v.vmrun_timeout.unwrap_or(DEFAULT_VMRUN_TIMEOUT),
                name: v.name,
                backend: v.backend,
                path: config::resolve(path, &v.path),
                mode: v.mode,
                engine: v.engine,
                targets,
                passphrase: v.passcommand.map_or(Passphrase::None, Passphrase::Command),
                schedule: v.schedule,
                catch_up: v.catch_up,
                warn_after: v.warn_after,
                retention: v.retention.unwrap_or_default(),
                guest: v.guest,
                require_guest: v.require_guest,
                require_encrypted_target: v.require_encrypted_target,
                vmrun: v.vmrun.map(program).unwrap_or(vmrun_default),
            });
        }
        let notify = notify::targets(path, "notify", &raw.notify)?;
        Ok(Config { common, timezone, vms, notify, path: path.to_path_buf() })
    }

    pub fn vm(&self, name: &str) -> Option<&VmConfig> {
        self.vms.iter().find(|v| v.name == name)
    }
}

impl VmConfig {
    /// The target labelled `label`.
    pub fn target(&self, label: &str) -> Option<&RepoSpec> {
        self.targets.iter().find(|t| t.label == label)
    }

    /// The labels, comma-separated (for messages).
    pub fn labels(&self) -> String {
        self.targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// What the agent prunes in `t`: nothing in an append-only target (its trusted side runs the retention).
    pub fn retention_of(&self, t: &RepoSpec) -> Retention {
        if t.append_only {
            return Retention::default();
        }
        t.retention.clone().unwrap_or_else(|| self.retention.clone())
    }
}

/// Only borg knows `--keep-within`; the rsync engine's pruning counts backups per period.
fn check_within(engine: EngineKind, r: Option<&Retention>) -> Result<(), String> {
    if r.is_some_and(|r| r.within.is_some()) && !engine.keeps_within() {
        let only = EngineKind::names_where(EngineKind::keeps_within).join("/");
        return Err(format!("only the {only} engine applies it, not {}: use last/hourly/daily/…", engine.as_str()));
    }
    Ok(())
}

/// The VM's targets: `targets = [...]` (validated by `agent_core::repos`), or the `target = "…"` shorthand; then
/// what the VM's engine can do with each (an SSH location, a passphrase, a remote program, a rate limit).
fn vm_targets(path: &Path, i: usize, v: &RawVm) -> Result<Vec<RepoSpec>, ConfigError> {
    let key = |k: &str| format!("vms[{i}].{k}");
    let bad = |k: &str, m: String| ConfigError::invalid(path, key(k), m);
    let (list, shorthand) = match (&v.target, &v.targets) {
        (Some(_), Some(_)) => return Err(bad("targets", "give either `target` or `targets`, not both".into())),
        (None, None) => return Err(bad("target", "missing: give `target = \"…\"` or `targets = [...]`".into())),
        // The shorthand: one target with the VM's own settings, named as written (`target`).
        (Some(url), None) => (vec![repos::validate_shorthand(path, &key("target"), "targets", url)?], true),
        (None, Some(list)) => (repos::validate_list(path, &key("targets"), list)?, false),
    };
    let engine = v.engine;
    for (j, t) in list.iter().enumerate() {
        let k = |leaf: &str| if shorthand { key("target") } else { format!("vms[{i}].targets[{j}].{leaf}") };
        let bad = |leaf: &str, m: String| ConfigError::invalid(path, k(leaf), m);
        if !t.location.is_local() && !engine.reaches_ssh() {
            let only = EngineKind::names_where(EngineKind::reaches_ssh).join("/");
            return Err(bad(
                "url",
                format!("`{}` is an SSH location: only the {only} engines reach one, not {}", t.url(), engine.as_str()),
            ));
        }
        if t.passphrase.is_some() && !engine.takes_passcommand() {
            let only = EngineKind::names_where(EngineKind::takes_passcommand).join("/");
            let leaf = if v.targets.as_ref().and_then(|l| l.get(j)).is_some_and(|r| r.passcommand.is_some()) {
                "passcommand"
            } else {
                "passphrase_file"
            };
            return Err(bad(leaf, format!("only the {only} engine uses it, not {}", engine.as_str())));
        }
        if t.checks.is_some() {
            return Err(bad("checks", "the host-agent runs no scheduled repository checks".into()));
        }
        if t.upload_ratelimit_kib.is_some() && !engine.reaches_ssh() {
            let only = EngineKind::names_where(EngineKind::reaches_ssh).join("/");
            return Err(bad("upload_ratelimit", format!("only the {only} engines apply it, not {}", engine.as_str())));
        }
        check_within(engine, t.retention.as_ref()).map_err(|m| bad("retention.within", m))?;
    }
    if !engine.many_targets() && list.len() > 1 {
        return Err(bad(
            "targets",
            format!(
                "the {} engine backs up to the destinations its own settings name: give one target",
                engine.as_str()
            ),
        ));
    }
    Ok(list)
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
        assert_eq!((s.backend, s.mode, s.engine), (Backend::Fusion, Mode::Clone, EngineKind::named("borg").unwrap()));
        assert_eq!(s.retention, Retention { weekly: 4, monthly: 6, ..Default::default() });
        assert!(s.require_encrypted_target && !s.require_guest);
        assert_eq!(s.guest.as_deref(), Some("https://10.0.0.20:7443"));
        assert_eq!((s.warn_after, cfg.vm("lab").unwrap().warn_after), (Some(Duration::from_secs(8 * 86_400)), None));
        assert_eq!((s.labels().as_str(), cfg.vm("lab").unwrap().labels().as_str()), ("local, offsite", "local, usb"));
        assert!(s.target("offsite").is_some_and(|t| t.append_only && !t.location.is_local()));
        assert_eq!(cfg.vm("lab").unwrap().backend, Backend::Qemu);
        assert_eq!(cfg.vm("lab").unwrap().runas.as_deref(), Some("nobody"));
        assert_eq!((s.exclusive.as_deref(), cfg.vm("lab").unwrap().exclusive.as_deref()), (Some("dns"), None));
        assert_eq!(cfg.timezone, agent_core::cron::zone("Europe/Berlin").unwrap());
        assert!(s.catch_up && !cfg.vm("lab").unwrap().catch_up);
        let kinds = |t: &[NotifyTarget]| t.iter().map(|t| t.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&cfg.notify), [notify::NotifyKind::Healthchecks]);
        assert_eq!(kinds(&s.notify), [notify::NotifyKind::Ntfy]);
        assert!(cfg.vm("lab").unwrap().notify.is_empty());
    }

    /// `[[notify]]` for every VM and `notify = [...]` per VM: the services-agent's shape, checked by the one
    /// validation of `agent_core::notify` (errors name the key, never the URL: it may carry a token).
    #[test]
    fn notify_targets_are_read_globally_and_per_vm_naming_the_key() {
        let p = Path::new("/etc/strata/host.toml");
        let hook = "https://hooks.example/strata?token=s3cret";
        let text = format!(
            "{HEAD}[[notify]]\nkind = \"webhook\"\nurl = \"{hook}\"\n[[notify]]\nkind = \"healthchecks\"\n\
             url = \"https://hc.example/ping/x\"\n{VM}notify = [{{ kind = \"ntfy\", url = \"http://ntfy.lan/vms\" }}]\n"
        );
        let cfg = Config::parse(p, &text).unwrap();
        let got: Vec<(notify::NotifyKind, &str)> = cfg.notify.iter().map(|t| (t.kind, t.url.as_str())).collect();
        assert_eq!(
            got,
            [(notify::NotifyKind::Webhook, hook), (notify::NotifyKind::Healthchecks, "https://hc.example/ping/x")]
        );
        assert_eq!(
            cfg.vms[0].notify,
            [NotifyTarget { kind: notify::NotifyKind::Ntfy, url: "http://ntfy.lan/vms".into() }]
        );
        assert!(!format!("{cfg:?}").contains("s3cret"), "a dumped config shows no token");
        // None anywhere: nobody is told.
        let quiet = Config::parse(p, &format!("{HEAD}{VM}")).unwrap();
        assert!(quiet.notify.is_empty() && quiet.vms[0].notify.is_empty());

        let cases = [
            (format!("{HEAD}[[notify]]\nkind = \"mail\"\nurl = \"https://x.example/\"\n{VM}"), "unknown variant `mail`, expected one of `healthchecks`, `ntfy`, `webhook`"),
            (format!("{HEAD}[[notify]]\nkind = \"ntfy\"\nurl = \"ftp://x/s3cret\"\n{VM}"), "key `notify[0].url`: must be an http(s) URL"),
            (format!("{HEAD}[[notify]]\nkind = \"ntfy\"\nurl = \"https://x/\"\ntopic = \"t\"\n{VM}"), "unknown field `topic`"),
            (format!("{HEAD}[[notify]]\nkind = \"ntfy\"\n{VM}"), "missing field `url`"),
            (format!("{HEAD}{VM}notify = [{{ kind = \"webhook\", url = \"https://\" }}]\n"), "key `vms[0].notify[0].url`: must be an http(s) URL with a host"),
            (format!("{HEAD}{VM}notify = [{{ kind = \"webhook\", url = \"https://h/\" }}, {{ kind = \"webhook\", url = \"s3cret\" }}]\n"), "key `vms[0].notify[1].url`"),
            (format!("{HEAD}{VM}notify = {{ kind = \"webhook\", url = \"https://h/\" }}\n"), "(key `notify`)"),
        ];
        for (text, want) in cases {
            let err = Config::parse(p, &text).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
            assert!(!err.contains("s3cret"), "{err}");
        }
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
            (
                VM.replace("borg", "rsync") + "passcommand = \"x\"\n",
                "key `vms[0].passcommand`: only the borg engine uses it, not rsync",
            ),
            (format!("{VM}shutdown_timeout = \"0s\"\n"), "must be more than zero (key `shutdown_timeout`)"),
            (format!("{VM}shutdown_timeout = 120\n"), "write a duration string with a unit, e.g. \"120s\""),
            (
                VM.replace("borg", "rsync") + "retention = { within = \"2d\" }\n",
                "key `vms[0].retention.within`: only the borg engine applies it, not rsync",
            ),
            (VM.replace("borg", "tape"), "unknown variant `tape`, expected one of `borg`, `rsync`, `timemachine`"),
            (format!("{VM}runas = \"a b\"\n"), "key `vms[0].runas`"),
            (format!("{VM}exclusive = \"DNS pair\"\n"), "key `vms[0].exclusive`: group `DNS pair` must be 1-63"),
            (format!("{VM}exclusive = \"\"\n"), "key `vms[0].exclusive`"),
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

    /// `targets = [...]`: local and SSH targets of one VM, the `target` shorthand, and each refusal naming its key.
    #[test]
    fn targets_are_validated_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host-agent.toml");
        let key = dir.path().join("offsite.key");
        std::fs::write(&key, "not a real key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("known_hosts"), "[backup.example]:2222 ssh-ed25519 AAAA\n").unwrap();
        let vm = |engine: &str, rest: &str| {
            format!(
                "{HEAD}[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = \"/vms/lab\"\nmode = \"clone\"\n\
                 engine = \"{engine}\"\nretention = {{ last = 3 }}\n{rest}\n"
            )
        };
        let offsite =
            "{ label = \"offsite\", url = \"ssh://borg@backup.example:2222/./lab\", ssh_key = \"offsite.key\", \
                       known_hosts = \"known_hosts\", append_only = true, retention = { daily = 30 } }";
        let ok =
            Config::parse(&p, &vm("borg", &format!("targets = [{{ label = \"local\", url = \"b/lab\" }}, {offsite}]")))
                .unwrap();
        let v = &ok.vms[0];
        assert_eq!(v.labels(), "local, offsite");
        assert_eq!(v.targets[0].location, agent_core::repos::Location::Local(dir.path().join("b/lab")));
        assert_eq!(v.target("offsite").unwrap().ssh.as_ref().unwrap().key, key);
        assert_eq!(v.retention_of(&v.targets[0]), Retention { last: 3, ..Default::default() }, "the VM's retention");
        assert!(v.retention_of(&v.targets[1]).is_empty(), "an append-only target is never pruned");
        // An SSH target's files are checked before each run, not here (a config must parse on any machine).
        let rsync = vm(
            "rsync",
            &format!("targets = [{}]", offsite.replace("ssh://borg@backup.example:2222/./lab", "u@nas:lab")),
        );
        let rsync = Config::parse(&p, &rsync).unwrap();
        assert!(rsync.vms[0].targets[0].check_files().unwrap_err().contains("has no key for `nas`"));
        assert_eq!(v.targets[1].check_files(), Ok(()));
        let short = Config::parse(&p, &vm("rsync", "target = \"/b/lab\"")).unwrap();
        assert_eq!((short.vms[0].targets.len(), short.vms[0].targets[0].label.as_str()), (1, "default"));

        let cases = [
            (
                vm("borg", "target = \"/b\"\ntargets = [{ label = \"a\", url = \"/c\" }]"),
                "key `vms[0].targets`: give either",
            ),
            (vm("borg", ""), "key `vms[0].target`: missing"),
            (vm("borg", "targets = []"), "key `vms[0].targets`: must list at least one"),
            (vm("borg", "target = \"-x\""), "key `vms[0].target`: `-x` starts with `-`"),
            (
                vm("borg", "target = \"u@nas:lab\""),
                "key `vms[0].target`: `u@nas:lab` is an SSH location: give it in `targets",
            ),
            (
                vm("borg", "targets = [{ label = \"a\", url = \"/b\" }, { label = \"a\", url = \"/c\" }]"),
                "key `vms[0].targets[1].label`: `a` is used twice",
            ),
            (
                vm("borg", "targets = [{ label = \"a\", url = \"/b\" }, { label = \"b\", url = \"/b\" }]"),
                "key `vms[0].targets[1].url`: `/b` is already the URL",
            ),
            (
                vm("borg", "targets = [{ label = \"a\", url = \"u@nas:lab\", ssh_key = \"offsite.key\" }]"),
                "key `vms[0].targets[0].known_hosts`: missing",
            ),
            (
                vm("timemachine", &format!("targets = [{offsite}]")),
                "key `vms[0].targets[0].url`: `ssh://borg@backup.example:2222/./lab` is an SSH location: only the \
                 borg/rsync engines reach one, not timemachine",
            ),
            (
                vm("timemachine", "targets = [{ label = \"a\", url = \"/b\" }, { label = \"b\", url = \"/c\" }]"),
                "key `vms[0].targets`: the timemachine engine backs up to the destinations its own settings name",
            ),
            (
                vm("borg", "target = \"/b\"\ntmutil = \"/usr/local/bin/tmutil\""),
                "key `vms[0].tmutil`: only the timemachine engine uses it, not borg",
            ),
            (
                vm("timemachine", "targets = [{ label = \"a\", url = \"/b\", upload_ratelimit = \"1MiB\" }]"),
                "key `vms[0].targets[0].upload_ratelimit`: only the borg/rsync engines apply it",
            ),
            (
                vm("rsync", "targets = [{ label = \"a\", url = \"/b\", passcommand = \"cat p\" }]"),
                "key `vms[0].targets[0].passcommand`: only the borg engine uses it, not rsync",
            ),
            (
                vm("rsync", "targets = [{ label = \"a\", url = \"/b\", passphrase_file = \"p\" }]"),
                "key `vms[0].targets[0].passphrase_file`: only the borg engine uses it, not rsync",
            ),
            (
                vm("rsync", "targets = [{ label = \"a\", url = \"/b\", retention = { within = \"2d\" } }]"),
                "key `vms[0].targets[0].retention.within`: only the borg engine applies it, not rsync",
            ),
            (
                vm("borg", "targets = [{ label = \"a\", url = \"/b\", checks = { repository = \"1d\" } }]"),
                "key `vms[0].targets[0].checks`: the host-agent runs no scheduled repository checks",
            ),
            (vm("borg", "targets = [{ label = \"a\", url = \"/b\", colour = 1 }]"), "unknown field `colour`"),
        ];
        for (text, want) in cases {
            let err = Config::parse(&p, &text).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
            assert!(err.starts_with(&p.display().to_string()), "{err}");
        }
    }

    /// Every duration key of this config takes the shared grammar tables of `agent_core::duration`.
    #[test]
    fn every_duration_key_takes_the_one_grammar() {
        let p = Path::new("/etc/strata/host.toml");
        type Get = fn(&VmConfig) -> Option<Duration>;
        let keys: [(&str, &str, Get); 4] = [
            ("shutdown_timeout", "shutdown_timeout = V", |v| Some(v.shutdown_timeout)),
            ("warn_after", "warn_after = V", |v| v.warn_after),
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
}
