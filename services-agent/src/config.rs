//! The services-agent config file: raw serde structs (unknown keys refused) validated into `Config`.
//! Knows the file format; must not know how the agent acts on it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::borg::Retention;
use agent_core::config::{self, CommonConfig, ConfigError, GrpcSection, MetricsSection};
use agent_core::duration;
use agent_core::notify::{self, NotifyTarget, RawTarget};
use agent_core::repos::{RawChecks, RawRepo, RepoSpec};
use serde::Deserialize;

mod backup_settings;
pub use backup_settings::valid_dataset;
use backup_settings::{backup_global, service_backup};
pub mod webhook;

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9443;

/// The Docker engine's socket when `[docker] socket` is not given.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The audit rules a `[[services]] allow` list may name as exceptions.
/// `privileged`, `host-*`, `docker-socket`, `host-mount`, `cap-add` and `devices` are also the deploy gate's rules.
pub const AUDIT_RULES: &[&str] = &[
    "foreign-network",
    "published-port",
    "host-network",
    "host-pid",
    "host-ipc",
    "host-mount",
    "privileged",
    "docker-socket",
    "cap-add",
    "devices",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: PathBuf,
    grpc: GrpcSection,
    metrics: Option<MetricsSection>,
    /// The IANA time zone the services' schedules are read in (default UTC).
    timezone: Option<String>,
    stacks: Option<RawStacks>,
    hub: Option<RawHub>,
    dns: Option<RawDns>,
    docker: Option<RawDocker>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    notify: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBackup {
    parallel: usize,
    snapshot_mount_dir: PathBuf,
}

impl Default for RawBackup {
    fn default() -> Self {
        RawBackup { parallel: 2, snapshot_mount_dir: PathBuf::from(DEFAULT_SNAPSHOT_MOUNT_DIR) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    when: HookWhen,
    container: String,
    command: Vec<String>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    socket: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStacks {
    repo: String,
    #[serde(default = "default_branch")]
    branch: String,
    checkout_dir: PathBuf,
    #[serde(default = "default_poll", deserialize_with = "duration::deserialize")]
    poll: Duration,
    credentials_file: Option<PathBuf>,
    #[serde(default)]
    bind_roots: Vec<PathBuf>,
    webhook: Option<webhook::RawWebhook>,
    #[serde(default)]
    keep_unlisted: bool,
}

fn default_branch() -> String {
    "main".to_string()
}

fn default_poll() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    stack: String,
    network: String,
    domain: String,
    address: IpAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    agent: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    // Backups (all optional; `dataset` and `repo` or `repos` turn them on).
    dataset: Option<String>,
    repo: Option<String>,
    repos: Option<Vec<RawRepo>>,
    passcommand: Option<String>,
    passphrase_file: Option<PathBuf>,
    quiesce: Option<Quiesce>,
    #[serde(default)]
    hooks: Vec<RawHook>,
    schedule: Option<String>,
    #[serde(default)]
    catch_up: bool,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    jitter: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    warn_after: Option<Duration>,
    local_snapshots: Option<u32>,
    retention: Option<Retention>,
    checks: Option<RawChecks>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    healthy_timeout: Option<Duration>,
    #[serde(default)]
    notify: Vec<RawTarget>,
    files: Option<Vec<PathBuf>>,
    env_files: Option<Vec<PathBuf>>,
    profiles: Option<Vec<String>>,
    secrets_dir: Option<PathBuf>,
    /// Image updates: a cron, like `schedule`.
    update: Option<String>,
    #[serde(default)]
    backup_before_update: bool,
}

/// `[stacks]`: the Git repository of compose stacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stacks {
    /// A URL or a local path (relative paths resolved against the config file).
    pub repo: String,
    pub branch: String,
    pub checkout_dir: PathBuf,
    pub poll: Duration,
    /// `USER:PASSWORD` for an http(s) `repo`, handed to git through `GIT_ASKPASS` (never argv or `.git/config`).
    pub credentials_file: Option<PathBuf>,
    /// Host directories stacks may bind-mount from (besides their own directory in the checkout); absolute.
    pub bind_roots: Vec<PathBuf>,
    /// `[stacks.webhook]`: the push trigger's HTTP endpoint, when configured.
    pub webhook: Option<webhook::Webhook>,
    /// Deployed stacks that left `[[services]]` or the repository stay running (`unlisted`), not taken down.
    pub keep_unlisted: bool,
}

/// `[hub]`: the reverse-proxy stack every spoke shares a network with, and where service names point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    pub stack: String,
    pub network: String,
    /// Without a trailing dot, lowercase.
    pub domain: String,
    pub address: IpAddr,
}

/// One managed service: a stack directory of the repo and the compose project of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Relative names under the hub domain.
    pub dns: Vec<String>,
    /// Audit rules waived for this service (from [`AUDIT_RULES`]).
    pub allow: Vec<String>,
    /// `None`: the service is not backed up.
    pub backup: Option<Box<ServiceBackup>>,
    /// `files`, `env_files`, `profiles`, `secrets_dir`: how compose runs the stack.
    pub compose: crate::compose_keys::StackCompose,
    pub update: ServiceUpdate,
}

/// A service's image updates (`labctl services pull`, or its `update` schedule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// `update`: when its images are pulled and the changed ones redeployed (read in `timezone`); `None`: by hand.
    pub schedule: Option<agent_core::cron::Cron>,
    /// `backup_before_update`: back the service up first and refuse the update when that fails.
    pub backup_first: bool,
    /// `healthy_timeout` (shared with restores): how long updated containers may take to be running and healthy
    /// before the update is rolled back.
    pub healthy_timeout: Duration,
}

impl Default for ServiceUpdate {
    fn default() -> Self {
        ServiceUpdate { schedule: None, backup_first: false, healthy_timeout: DEFAULT_HEALTHY_TIMEOUT }
    }
}

/// Where `[backup] snapshot_mount_dir` defaults to.
pub const DEFAULT_SNAPSHOT_MOUNT_DIR: &str = "/run/strata/snapshots";
/// How long a restored service may take to be running (and healthy, when it has a health check) by default.
pub const DEFAULT_HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
/// A hook's time limit by default.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// Local snapshots kept by default.
pub const DEFAULT_LOCAL_SNAPSHOTS: u32 = 3;

/// `[backup]`: settings shared by every service's backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupGlobal {
    /// Services backed up at once (each repository still runs one job at a time).
    pub parallel: usize,
    /// Snapshot clones are mounted at `DIR/SERVICE`: a stable path keeps Borg's files cache hitting.
    pub snapshot_mount_dir: PathBuf,
}

/// How a service's containers are quiesced for the instant of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quiesce {
    /// Stopped (each with its own grace period), started again right after the snapshot.
    Stop,
    /// Frozen with the cgroup freezer, unpaused right after the snapshot.
    Pause,
    /// Left running (crash-consistent snapshot).
    None,
}

impl Quiesce {
    pub fn as_str(self) -> &'static str {
        match self {
            Quiesce::Stop => "stop",
            Quiesce::Pause => "pause",
            Quiesce::None => "none",
        }
    }
}

/// Where Borg's passphrase comes from (the service's own; a repository may name its own): agent-core's.
pub use agent_core::repos::Passphrase;

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookWhen {
    BeforeSnapshot,
    AfterSnapshot,
}

/// A command run inside one of the stack's containers (by compose service name) around the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub when: HookWhen,
    pub container: String,
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// `checks`: how often each borg check runs (scheduled), `None` = never on schedule; the floors: agent-core's.
pub use agent_core::repos::{Checks, MIN_REPOSITORY_CHECK, MIN_VERIFY_DATA};

/// A service's backup settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBackup {
    /// The ZFS dataset holding the service's data (snapshotted recursively).
    pub dataset: String,
    /// The service's own Borg repositories, in config order (local ones first is the convention; restores take
    /// the first reachable one unless told). `repo = "…"` is one, labelled `default`.
    pub repos: Vec<RepoSpec>,
    /// The passphrase source of repositories that name none.
    pub passphrase: Passphrase,
    pub quiesce: Quiesce,
    pub hooks: Vec<Hook>,
    /// Read on the wall clock of [`Config::timezone`].
    pub schedule: Option<agent_core::cron::Cron>,
    /// A scheduled time passed while the agent was down (its last attempt is older): one backup at start, jittered.
    pub catch_up: bool,
    /// A fixed per-service delay after each scheduled minute, spreading services over `jitter`.
    pub jitter: Duration,
    /// Older than this, the last success is overdue; `None`: 1.5 × the schedule's interval plus `jitter`.
    pub warn_after: Option<Duration>,
    pub local_snapshots: u32,
    /// The retention of repositories that name none.
    pub retention: Retention,
    /// The check intervals of repositories that name none.
    pub checks: Checks,
    pub healthy_timeout: Duration,
    /// Per-service notification targets (the global `[[notify]]` ones apply too).
    pub notify: Vec<NotifyTarget>,
}

impl ServiceBackup {
    /// The repository labelled `label`.
    pub fn repo(&self, label: &str) -> Option<&RepoSpec> {
        self.repos.iter().find(|r| r.label == label)
    }

    /// What the agent prunes in `r`: nothing in an append-only repository (its trusted side runs the retention).
    pub fn retention_of(&self, r: &RepoSpec) -> Retention {
        if r.append_only {
            return Retention::default();
        }
        r.retention.clone().unwrap_or_else(|| self.retention.clone())
    }

    /// How often `r` is checked on schedule.
    pub fn checks_of(&self, r: &RepoSpec) -> Checks {
        r.checks.clone().unwrap_or_else(|| self.checks.clone())
    }

    /// The labels, comma-separated (for messages).
    pub fn labels(&self) -> String {
        self.repos.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `timezone`: where backup schedules are read (default UTC).
    pub timezone: agent_core::cron::TimeZone,
    /// `None` (with `hub`) for an agent that manages no stacks yet.
    pub stacks: Option<Stacks>,
    pub hub: Option<Hub>,
    /// `[dns] agent`: the dns-agent's gRPC address; `None` disables registration.
    pub dns_agent: Option<String>,
    /// `[docker] socket`: the local engine's unix socket (default `/var/run/docker.sock`).
    pub docker_socket: PathBuf,
    /// The hub stack first (added when `[[services]]` does not list it), then the services in file order.
    pub services: Vec<Service>,
    pub backup: BackupGlobal,
    /// `[[notify]]`: targets told about every service's backups.
    pub notify: Vec<NotifyTarget>,
    /// The file this config was read from (a reload reads it again).
    pub path: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = config::load(path)?;
        validate(path, raw)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate(path, config::parse(path, text)?)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// True for a name usable as a stack directory and a compose project: `[a-z0-9][a-z0-9_-]*`, at most 63 bytes.
/// Refuses path characters (`/`, `.`, `..`) and anything compose would rewrite.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// A DNS label or dotted relative name (`photos`, `api.photos`).
fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

fn docker_socket(path: &Path, raw: Option<RawDocker>) -> Result<PathBuf, ConfigError> {
    match raw {
        Some(d) if d.socket.as_os_str().is_empty() => {
            Err(ConfigError::invalid(path, "docker.socket", "must not be empty"))
        }
        Some(d) => Ok(config::resolve(path, &d.socket)),
        None => Ok(PathBuf::from(DEFAULT_DOCKER_SOCKET)),
    }
}

fn validate(path: &Path, raw: Raw) -> Result<Config, ConfigError> {
    let common = CommonConfig::validate(path, raw.state_dir, raw.grpc, raw.metrics, DEFAULT_METRICS_PORT)?;
    let bad = |key: &str, msg: String| ConfigError::invalid(path, key, msg);
    let timezone = match &raw.timezone {
        None => agent_core::cron::TimeZone::UTC,
        Some(z) => agent_core::cron::zone(z).map_err(|m| bad("timezone", m))?,
    };

    let (stacks, hub, dns_agent, services) = match (raw.stacks, raw.hub) {
        (Some(s), Some(h)) => {
            let (stacks, hub, dns_agent, services) = managed(path, s, h, raw.dns, raw.services)?;
            (Some(stacks), Some(hub), dns_agent, services)
        }
        // The common sections alone: an agent that manages no stacks (yet).
        (None, None) if raw.services.is_empty() => (None, None, raw.dns.map(|d| d.agent), Vec::new()),
        (None, _) => return Err(bad("stacks", "missing: [[services]] and [hub] need a [stacks] repository".into())),
        (Some(_), None) => {
            return Err(bad("hub", "missing: [stacks] needs a [hub] (stack, network, domain, address)".into()))
        }
    };
    let docker_socket = docker_socket(path, raw.docker)?;
    let backup = backup_global(path, raw.backup)?;
    let notify = notify::targets(path, "notify", &raw.notify)?;
    Ok(Config {
        common,
        timezone,
        stacks,
        hub,
        dns_agent,
        docker_socket,
        services,
        backup,
        notify,
        path: path.to_path_buf(),
    })
}

/// `[stacks]`, `[hub]`, `[dns]` and `[[services]]` of an agent that manages stacks: the services with the hub stack
/// first (added when `[[services]]` does not list it).
fn managed(
    path: &Path,
    s: RawStacks,
    h: RawHub,
    dns: Option<RawDns>,
    raw_services: Vec<RawService>,
) -> Result<(Stacks, Hub, Option<String>, Vec<Service>), ConfigError> {
    let bad = |key: &str, msg: String| ConfigError::invalid(path, key, msg);
    if s.repo.trim().is_empty() {
        return Err(bad("stacks.repo", "must not be empty".into()));
    }
    // A local path is resolved against the config file; URLs (scheme://, or scp-like user@host:path) are kept.
    let is_url = s.repo.contains("://") || (s.repo.contains(':') && !s.repo.starts_with('/') && s.repo.contains('@'));
    // Credentials in the URL would show in git's argv (/proc), `.git/config`, the log and ListServices: refused.
    // A user name alone is fine over ssh (keys authenticate); anywhere else it is often the token itself.
    let ssh = s.repo.starts_with("ssh://") || (is_url && !s.repo.contains("://"));
    let password = crate::git::url_secret(&s.repo).is_some();
    if crate::git::has_userinfo(&s.repo) && (!ssh || password) {
        return Err(bad(
            "stacks.repo",
            format!(
                "`{}` carries credentials in the URL: remove them and put `USER:TOKEN` in a file readable by root \
                 only, named by `stacks.credentials_file`",
                crate::git::redact_userinfo(&s.repo)
            ),
        ));
    }
    let http = s.repo.starts_with("https://") || s.repo.starts_with("http://");
    let credentials_file = match &s.credentials_file {
        None => None,
        Some(_) if !http => {
            return Err(bad(
                "stacks.credentials_file",
                "is for an http(s) `repo` only (over ssh, git uses root's ssh key)".into(),
            ))
        }
        Some(f) => {
            let f = config::resolve(path, f);
            crate::git::read_credentials(&f)
                .map_err(|reason| bad("stacks.credentials_file", format!("{}: {reason}", f.display())))?;
            Some(f)
        }
    };
    let repo = if is_url { s.repo } else { config::resolve(path, Path::new(&s.repo)).display().to_string() };
    let b = &s.branch;
    if b.is_empty() || b.starts_with(['-', '/']) || b.ends_with('/') || b.contains("..") || b.contains(' ') {
        return Err(bad("stacks.branch", format!("`{}` is not a usable branch name", s.branch)));
    }
    if s.checkout_dir.as_os_str().is_empty() {
        return Err(bad("stacks.checkout_dir", "must not be empty".into()));
    }
    let checkout_dir = config::resolve(path, &s.checkout_dir);
    let mut bind_roots = Vec::new();
    for (i, r) in s.bind_roots.iter().enumerate() {
        let system = ["/", "/etc", "/root", "/proc", "/sys", "/dev", "/boot", "/var/run", "/run", "/var/lib/docker"];
        if !r.is_absolute() || r.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(bad(&format!("stacks.bind_roots[{i}]"), format!("`{}` must be an absolute path", r.display())));
        }
        if system.iter().any(|p| r == Path::new(p)) {
            return Err(bad(
                &format!("stacks.bind_roots[{i}]"),
                format!("`{}` would let every stack mount the host's system files", r.display()),
            ));
        }
        bind_roots.push(r.clone());
    }
    let webhook = s.webhook.map(|w| webhook::validate(path, w)).transpose()?;
    let (branch, poll, keep_unlisted) = (s.branch, s.poll, s.keep_unlisted);
    let stacks = Stacks { repo, branch, checkout_dir, poll, credentials_file, bind_roots, webhook, keep_unlisted };

    if !valid_name(&h.stack) {
        return Err(bad("hub.stack", format!("`{}` is not a valid stack name ([a-z0-9][a-z0-9_-]*)", h.stack)));
    }
    if h.network.is_empty() || !h.network.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c)) {
        return Err(bad("hub.network", format!("`{}` is not a valid network name", h.network)));
    }
    let domain = h.domain.trim_end_matches('.').to_ascii_lowercase();
    if !valid_dns_name(&domain) {
        return Err(bad("hub.domain", format!("`{}` is not a valid domain name", h.domain)));
    }
    let hub = Hub { stack: h.stack, network: h.network, domain, address: h.address };

    let dns_agent = match dns {
        Some(d) if !d.agent.starts_with("https://") => {
            return Err(bad("dns.agent", format!("`{}` must be https://HOST:PORT", d.agent)))
        }
        Some(d) => Some(d.agent),
        None => None,
    };

    let mut services: Vec<Service> = Vec::new();
    for (i, s) in raw_services.into_iter().enumerate() {
        if !valid_name(&s.name) {
            return Err(bad(
                &format!("services[{i}].name"),
                format!("`{}` is not a valid service name ([a-z0-9][a-z0-9_-]*, no path characters)", s.name),
            ));
        }
        if services.iter().any(|o| o.name == s.name) {
            return Err(bad(&format!("services[{i}].name"), format!("service `{}` is listed twice", s.name)));
        }
        let mut dns = Vec::new();
        for (j, d) in s.dns.iter().enumerate() {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if !valid_dns_name(&d) || d.ends_with(&format!(".{}", hub.domain)) || d == hub.domain {
                return Err(bad(
                    &format!("services[{i}].dns[{j}]"),
                    format!("`{d}` is not a name relative to {} (e.g. \"photos\")", hub.domain),
                ));
            }
            dns.push(d);
        }
        for (j, a) in s.allow.iter().enumerate() {
            if !AUDIT_RULES.contains(&a.as_str()) {
                return Err(bad(
                    &format!("services[{i}].allow[{j}]"),
                    format!("unknown audit rule `{a}` (one of: {})", AUDIT_RULES.join(", ")),
                ));
            }
        }
        let backup = service_backup(path, i, &s)?.map(Box::new);
        let keys = (s.files.unwrap_or_default(), s.env_files.unwrap_or_default(), s.profiles.unwrap_or_default());
        let compose = crate::compose_keys::validate(path, i, keys, s.secrets_dir, &stacks.checkout_dir)?;
        let update = ServiceUpdate {
            schedule: s
                .update
                .as_deref()
                .map(agent_core::cron::Cron::parse)
                .transpose()
                .map_err(|e| bad(&format!("services[{i}].update"), e))?,
            backup_first: s.backup_before_update,
            healthy_timeout: s.healthy_timeout.unwrap_or(DEFAULT_HEALTHY_TIMEOUT),
        };
        if update.backup_first && backup.is_none() {
            return Err(bad(
                &format!("services[{i}].backup_before_update"),
                "is true but the service has no backup settings (dataset, repo)".into(),
            ));
        }
        services.push(Service { name: s.name, dns, allow: s.allow, backup, compose, update });
    }
    // Two services may not claim the same name.
    let mut seen = std::collections::BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        for (j, d) in s.dns.iter().enumerate() {
            if let Some(other) = seen.insert(d.clone(), s.name.clone()) {
                return Err(bad(
                    &format!("services[{i}].dns[{j}]"),
                    format!("`{d}` is already claimed by service `{other}`"),
                ));
            }
        }
    }
    // Repositories of their own per service: two services sharing one would serialize and prune each other's
    // archives.
    let mut repos = std::collections::BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        for r in s.backup.iter().flat_map(|b| &b.repos) {
            if let Some(other) = repos.insert(r.url(), s.name.clone()) {
                return Err(bad(
                    &format!("services[{i}].repos"),
                    format!("repository `{}` is already a repository of service `{other}`", r.url()),
                ));
            }
        }
    }
    match services.iter().position(|s| s.name == hub.stack) {
        Some(0) => {}
        Some(i) => {
            let h = services.remove(i);
            services.insert(0, h);
        }
        None => services.insert(0, Service { name: hub.stack.clone(), ..Default::default() }),
    }
    Ok((stacks, hub, dns_agent, services))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/services-agent.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!((cfg.common.grpc.listen.port(), cfg.common.metrics_listen.port()), (7443, 9443));
        let (stacks, hub) = (cfg.stacks.as_ref().unwrap(), cfg.hub.as_ref().unwrap());
        assert_eq!((stacks.poll, stacks.branch.as_str()), (Duration::from_secs(300), "main"));
        assert_eq!((hub.domain.as_str(), cfg.dns_agent.as_deref()), ("lab.home.arpa", Some("https://10.0.0.53:7442")));
        let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["proxy", "photos", "wiki"]);
        assert_eq!(cfg.service("photos").unwrap().dns, ["photos"]);
        let b = cfg.service("photos").unwrap().backup.as_deref().unwrap();
        assert_eq!(b.dataset, "tank/appdata/photos");
        let urls: Vec<String> = b.repos.iter().map(|r| r.url()).collect();
        assert_eq!(urls, ["/mnt/backup/borg/photos", "ssh://borg@backup.example:22/./photos"]);
        let offsite = b.repo("offsite").unwrap();
        assert!(offsite.append_only && offsite.ssh.is_some() && offsite.upload_ratelimit_kib == Some(20 * 1024));
        // Append-only: the agent prunes nothing there; the local one takes the service's retention.
        assert!(b.retention_of(offsite).is_empty() && !b.retention_of(b.repo("local").unwrap()).is_empty());
        assert_eq!(b.passphrase, Passphrase::Command("cat /etc/strata/secrets/photos".into()));
        assert_eq!((b.quiesce, b.local_snapshots, b.jitter), (Quiesce::Stop, 24, Duration::from_secs(600)));
        assert_eq!(b.retention.within, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!((b.retention.daily, b.retention.weekly, b.retention.monthly, b.retention.yearly), (7, 4, 6, 2));
        assert_eq!(b.checks.verify_data, Some(Duration::from_secs(duration::MONTH_SECS)));
        assert_eq!((b.hooks[0].when, b.hooks[0].command[0].as_str()), (HookWhen::BeforeSnapshot, "pg_dumpall"));
        assert_eq!(b.notify[0].kind, notify::NotifyKind::Ntfy);
        assert_eq!(cfg.notify[0].kind, notify::NotifyKind::Healthchecks);
        assert_eq!(cfg.backup.parallel, 2);
        assert!(cfg.service("wiki").unwrap().backup.is_none());
        assert_eq!(cfg.timezone, agent_core::cron::zone("Europe/Berlin").unwrap());
        assert!(b.catch_up && b.warn_after == Some(Duration::from_secs(2 * 86_400)));
    }

    #[test]
    fn bad_backup_settings_name_the_key() {
        let svc = "[[services]]\nname = \"a\"\n";
        let full = "dataset = \"tank/a\"\nrepo = \"/b/a\"\n";
        let cases = [
            (format!("{svc}dataset = \"tank/a\"\n"), "key `services[0].repo`: missing"),
            (format!("{svc}repo = \"/b\"\n"), "key `services[0].dataset`: missing"),
            (format!("{svc}quiesce = \"stop\"\n"), "key `services[0].quiesce`: is a backup setting"),
            (format!("{svc}dataset = \"tank\"\nrepo = \"/b\"\n"), "key `services[0].dataset`"),
            (format!("{svc}dataset = \"tank/a@s\"\nrepo = \"/b\"\n"), "key `services[0].dataset`"),
            (
                format!("{svc}{full}quiesce = \"freeze\"\n"),
                "unknown variant `freeze`, expected one of `stop`, `pause`, `none` (key `quiesce`)",
            ),
            (format!("{svc}{full}passcommand = \"x\"\npassphrase_file = \"/p\"\n"), "not both"),
            (format!("{svc}{full}schedule = \"61 * * * *\"\n"), "key `services[0].schedule`"),
            (
                format!("{svc}{full}retention = {{ within = \"2x\" }}\n"),
                "unknown unit `x` (units: s, min, h, d, w, mo, y) (key `within`)",
            ),
            (format!("{svc}{full}checks = {{ verify_data = \"1M\" }}\n"), "`M` is ambiguous"),
            (
                format!("{svc}{full}checks = {{ verify_data = \"1m\" }}\n"),
                "key `services[0].checks.verify_data`: `1m` is too often",
            ),
            (
                format!("{svc}{full}checks = {{ repository = \"30min\" }}\n"),
                "key `services[0].checks.repository`: `30m` is too often",
            ),
            (format!("{svc}{full}retention = {{ dayly = 2 }}\n"), "unknown field `dayly`"),
            (format!("{svc}{full}checks = {{ repository = \"often\" }}\n"), "(key `repository`)"),
            (
                format!("{svc}{full}hooks = [{{ when = \"later\", container = \"db\", command = [\"x\"] }}]\n"),
                "unknown variant `later`, expected `before-snapshot` or `after-snapshot` (key `when`)",
            ),
            (
                format!("{svc}{full}hooks = [{{ when = \"before-snapshot\", container = \"db\", command = [] }}]\n"),
                "key `services[0].hooks[0].command`",
            ),
            (
                format!("{svc}{full}notify = [{{ kind = \"mail\", url = \"https://x.example/\" }}]\n"),
                "unknown variant `mail`, expected one of `healthchecks`, `ntfy`, `webhook` (key `kind`)",
            ),
            (format!("{svc}{full}[[services]]\nname = \"b\"\n{full}"), "already a repository of service `a`"),
            (format!("{svc}{full}repos = [{{ label = \"x\", url = \"/c\" }}]\n"), "give either `repo` or `repos`"),
            (format!("{svc}dataset = \"tank/a\"\nrepo = \"-x\"\n"), "key `services[0].repo`: `-x` starts with `-`"),
            (
                format!("{svc}dataset = \"tank/a\"\nrepo = \"u@h:p\"\n"),
                "key `services[0].repo`: `u@h:p` is an SSH location: give it in `repos = [...]`",
            ),
            (
                format!("{svc}dataset = \"tank/a\"\nrepos = [{{ label = \"l\", url = \"/c\" }}, {{ label = \"l\", url = \"/d\" }}]\n"),
                "key `services[0].repos[1].label`: `l` is used twice",
            ),
            (
                format!("{svc}dataset = \"tank/a\"\nrepos = [{{ label = \"l\", url = \"/c\", colour = 1 }}]\n"),
                "unknown field `colour`",
            ),
            (format!("{svc}dataset = \"tank/a\"\nrepos = []\n"), "key `services[0].repos`: must list at least one"),
            (format!("[backup]\nparallel = 0\n{svc}"), "key `backup.parallel`"),
            (format!("{svc}{full}catch_up = true\n"), "key `services[0].catch_up`: is true but no `schedule`"),
            (format!("{svc}catch_up = true\n"), "key `services[0].catch_up`: is a backup setting"),
            (format!("{svc}warn_after = \"1h\"\n"), "key `services[0].warn_after`: is a backup setting"),
        ];
        for (extra, want) in cases {
            let err = parse(&extra).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    const BASE: &str = "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n\
        key = \"a.key\"\n[stacks]\nrepo = \"stacks-repo\"\ncheckout_dir = \"co\"\npoll = \"30s\"\n[hub]\n\
        stack = \"proxy\"\nnetwork = \"hub\"\ndomain = \"Lab.Test.\"\naddress = \"10.0.0.20\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/strata/services.toml"), &format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_resolve_and_hub_comes_first() {
        let c = parse("[[services]]\nname = \"photos\"\ndns = [\"photos\"]\n").unwrap();
        let stacks = c.stacks.as_ref().unwrap();
        assert_eq!(stacks.repo, "/etc/strata/stacks-repo");
        assert_eq!(stacks.checkout_dir, Path::new("/etc/strata/co"));
        assert_eq!(c.hub.as_ref().unwrap().domain, "lab.test");
        assert_eq!(c.dns_agent, None);
        assert_eq!(c.docker_socket, Path::new("/var/run/docker.sock"));
        assert_eq!(c.services[0], Service { name: "proxy".into(), ..Default::default() });
        assert_eq!(c.services[1].name, "photos");
        assert_eq!(c.timezone, agent_core::cron::TimeZone::UTC, "schedules are UTC by default");
        let zoned = |z: &str| Config::parse(Path::new("/x.toml"), &format!("timezone = {z:?}\n{BASE}"));
        assert_eq!(zoned("Asia/Tokyo").unwrap().timezone, agent_core::cron::zone("Asia/Tokyo").unwrap());
        let e = zoned("Asia/Tokio").unwrap_err().to_string();
        assert!(e.contains("key `timezone`: `Asia/Tokio` is not a time zone"), "{e}");
        assert_eq!(parse("").unwrap().services.len(), 1);
        let c = Config::parse(Path::new("/x.toml"), &BASE.replace("stacks-repo", "https://git.example/s.git")).unwrap();
        assert_eq!(c.stacks.unwrap().repo, "https://git.example/s.git");

        // The common sections alone: an agent managing no stacks (yet).
        let common = BASE.split("[stacks]").next().unwrap();
        let c = Config::parse(Path::new("/x.toml"), common).unwrap();
        assert!(c.stacks.is_none() && c.hub.is_none() && c.services.is_empty());
        let err = Config::parse(Path::new("/x.toml"), &format!("{common}[[services]]\nname = \"a\"\n")).unwrap_err();
        assert!(err.to_string().contains("key `stacks`: missing"), "{err}");
        let no_hub = BASE.split("[hub]").next().unwrap();
        let err = Config::parse(Path::new("/x.toml"), no_hub).unwrap_err();
        assert!(err.to_string().contains("key `hub`: missing"), "{err}");
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases = [
            ("[[services]]\nname = \"../etc\"\n", "key `services[0].name`: `../etc` is not a valid service name"),
            ("[[services]]\nname = \"a\"\n[[services]]\nname = \"a/b\"\n", "key `services[1].name`"),
            ("[[services]]\nname = \"a\"\n[[services]]\nname = \"a\"\n", "service `a` is listed twice"),
            (
                "[[services]]\nname = \"a\"\nallow = [\"root\"]\n",
                "key `services[0].allow[0]`: unknown audit rule `root`",
            ),
            ("[[services]]\nname = \"a\"\ndns = [\"x.lab.test\"]\n", "key `services[0].dns[0]`"),
            ("[[services]]\nname = \"a\"\ndns = [\"x y\"]\n", "key `services[0].dns[0]`"),
            (
                "[[services]]\nname = \"a\"\ndns = [\"x\"]\n[[services]]\nname = \"b\"\ndns = [\"x\"]\n",
                "`x` is already claimed by service `a`",
            ),
            ("[dns]\nagent = \"10.0.0.53:7442\"\n", "key `dns.agent`"),
            ("[[services]]\nname = \"a\"\ncolour = 1\n", "unknown field `colour`"),
            ("[[services]]\nname = \"a\"\nupdate = \"61 * * * *\"\n", "key `services[0].update`"),
            ("[[services]]\nname = \"a\"\nbackup_before_update = true\n", "key `services[0].backup_before_update`"),
        ];
        for (extra, want) in cases {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let err = Config::parse(Path::new("/x.toml"), &BASE.replace("30s", "soon")).unwrap_err().to_string();
        assert!(err.contains("`soon` is not a duration") && err.contains("(key `poll`)"), "{err}");
        let err = Config::parse(Path::new("/x.toml"), &BASE.replace("\"proxy\"", "\"Pro/xy\"")).unwrap_err();
        assert!(err.to_string().contains("key `hub.stack`"), "{err}");
        // The branch names paths under .git (its ref and lock files): nothing that leaves refs/.
        for branch in ["/etc/x", "../x", "a/../../x", "x/", "-x", ""] {
            let text = BASE.replace("poll = ", &format!("branch = {branch:?}\npoll = "));
            let err = Config::parse(Path::new("/x.toml"), &text).unwrap_err().to_string();
            assert!(err.contains("key `stacks.branch`"), "{branch:?}: {err}");
        }
        for (roots, want) in [
            ("[\"/etc\"]", "key `stacks.bind_roots[0]`: `/etc` would let every stack mount the host's system files"),
            ("[\"/srv\", \"/\"]", "key `stacks.bind_roots[1]`"),
            ("[\"data\"]", "key `stacks.bind_roots[0]`: `data` must be an absolute path"),
            ("[\"/srv/../etc\"]", "key `stacks.bind_roots[0]`"),
        ] {
            let text = BASE.replace("poll = ", &format!("bind_roots = {roots}\npoll = "));
            let err = Config::parse(Path::new("/x.toml"), &text).unwrap_err().to_string();
            assert!(err.contains(want), "{roots}: {err}");
        }
        // Credentials in the repo URL: refused naming the key and credentials_file, never quoting them.
        for url in [
            "https://ghp_T0KEN@git.example/s.git",
            "https://bot:T0KEN@git.example/s.git",
            "http://T0KEN:x-oauth-basic@127.0.0.1:1/s.git",
            "ssh://git:T0KEN@git.example/s.git",
        ] {
            let err = Config::parse(Path::new("/x.toml"), &BASE.replace("\"stacks-repo\"", &format!("{url:?}")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("key `stacks.repo`") && err.contains("stacks.credentials_file"), "{err}");
            assert!(!err.contains("T0KEN") && err.contains("***@"), "{err}");
        }
        let ssh = BASE.replace("\"stacks-repo\"", "\"ssh://git@git.example/s.git\"");
        assert_eq!(
            Config::parse(Path::new("/x.toml"), &ssh).unwrap().stacks.unwrap().repo,
            "ssh://git@git.example/s.git"
        );
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("git-credentials");
        std::fs::write(&creds, "bot:T0KEN\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        let https = BASE
            .replace("\"stacks-repo\"", "\"https://git.example/s.git\"")
            .replace("poll = ", &format!("credentials_file = {:?}\npoll = ", creds.display().to_string()));
        let err = Config::parse(Path::new("/x.toml"), &https).unwrap_err().to_string();
        assert!(err.contains("key `stacks.credentials_file`") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(Path::new("/x.toml"), &https).unwrap();
        assert_eq!(c.stacks.unwrap().credentials_file.as_deref(), Some(creds.as_path()));
        let local = BASE.replace("poll = ", &format!("credentials_file = {:?}\npoll = ", creds.display().to_string()));
        let err = Config::parse(Path::new("/x.toml"), &local).unwrap_err().to_string();
        assert!(err.contains("key `stacks.credentials_file`: is for an http(s) `repo` only"), "{err}");
        std::fs::write(&creds, "T0KEN\n").unwrap();
        let err = Config::parse(Path::new("/x.toml"), &https).unwrap_err().to_string();
        assert!(err.contains("USER:PASSWORD") && !err.contains("T0KEN"), "{err}");

        let text = BASE.replace("poll = ", "branch = \"release/2026\"\npoll = ");
        assert_eq!(Config::parse(Path::new("/x.toml"), &text).unwrap().stacks.unwrap().branch, "release/2026");
    }

    #[test]
    fn names_and_durations() {
        for ok in ["photos", "a", "t123_0-proxy", "9lives"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "..", "a/b", "A", "-a", "_a", "a.b", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    /// Every duration key of this config, each with the shared grammar tables of `agent_core::duration`: accepted
    /// texts give the same value in every key (or, below a check's floor, a refusal naming the key); refused texts
    /// are refused in every key, naming it.
    #[test]
    fn every_duration_key_takes_the_one_grammar() {
        let svc = "[[services]]\nname = \"a\"\ndataset = \"tank/a\"\nrepo = \"/b/a\"\n";
        type Get = fn(&Config) -> Option<Duration>;
        let keys: [(&str, &str, Option<Duration>, Get); 8] = [
            ("stacks.poll", "poll = \"30s\"", None, |c| Some(c.stacks.as_ref().unwrap().poll)),
            ("services[0].jitter", "jitter = V", None, |c| Some(c.services[1].backup.as_ref().unwrap().jitter)),
            ("services[0].warn_after", "warn_after = V", None, |c| c.services[1].backup.as_ref().unwrap().warn_after),
            ("services[0].healthy_timeout", "healthy_timeout = V", None, |c| {
                Some(c.services[1].backup.as_ref().unwrap().healthy_timeout)
            }),
            (
                "services[0].hooks[0].timeout",
                "hooks = [{ when = \"before-snapshot\", container = \"db\", command = [\"x\"], timeout = V }]",
                None,
                |c| Some(c.services[1].backup.as_ref().unwrap().hooks[0].timeout),
            ),
            ("services[0].retention.within", "retention = { within = V }", None, |c| {
                c.services[1].backup.as_ref().unwrap().retention.within
            }),
            ("services[0].checks.repository", "checks = { repository = V }", Some(MIN_REPOSITORY_CHECK), |c| {
                c.services[1].backup.as_ref().unwrap().checks.repository
            }),
            ("services[0].checks.verify_data", "checks = { verify_data = V }", Some(MIN_VERIFY_DATA), |c| {
                c.services[1].backup.as_ref().unwrap().checks.verify_data
            }),
        ];
        let text = |key: &str, line: &str, v: &str| {
            if key == "stacks.poll" {
                BASE.replace(line, &format!("poll = {v:?}")) + svc
            } else {
                format!("{BASE}{svc}{}\n", line.replace('V', &format!("{v:?}")))
            }
        };
        for (key, line, floor, get) in keys {
            let leaf = key.rsplit('.').next().unwrap();
            for (v, secs) in duration::ACCEPTED {
                let want = Duration::from_secs(*secs);
                match Config::parse(Path::new("/x.toml"), &text(key, line, v)) {
                    Ok(c) => {
                        assert!(floor.is_none_or(|f| want >= f), "{key} = {v:?} passed its floor");
                        assert_eq!(get(&c), Some(want), "{key} = {v:?}");
                    }
                    Err(e) => {
                        let e = e.to_string();
                        let below = floor.is_some_and(|f| want < f);
                        assert!(
                            below && e.contains(&format!("key `{key}`: ")) && e.contains("too often"),
                            "{key} = {v:?}: {e}"
                        );
                    }
                }
            }
            for v in duration::REFUSED {
                let e = Config::parse(Path::new("/x.toml"), &text(key, line, v)).unwrap_err().to_string();
                assert!(e.contains(&format!("(key `{leaf}`)")), "{key} = {v:?}: {e}");
            }
        }
    }
}
