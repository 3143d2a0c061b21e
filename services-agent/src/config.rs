//! The services-agent config file: raw serde structs (unknown keys refused) validated into `Config`.
//! Knows the file format; must not know how the agent acts on it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::config::{self, CommonConfig, ConfigError, GrpcSection, MetricsSection};
use serde::Deserialize;

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9443;

/// The Docker engine's socket when `[docker] socket` is not given.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The audit rules a `[[services]] allow` list may name as exceptions.
pub const AUDIT_RULES: &[&str] = &["foreign-network", "published-port", "host-network", "privileged", "docker-socket"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: PathBuf,
    grpc: GrpcSection,
    metrics: Option<MetricsSection>,
    stacks: Option<RawStacks>,
    hub: Option<RawHub>,
    dns: Option<RawDns>,
    docker: Option<RawDocker>,
    #[serde(default)]
    services: Vec<RawService>,
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
    #[serde(default = "default_poll")]
    poll: String,
}

fn default_branch() -> String {
    "main".to_string()
}

fn default_poll() -> String {
    "5m".to_string()
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
}

/// `[stacks]`: the Git repository of compose stacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stacks {
    /// A URL or a local path (relative paths resolved against the config file).
    pub repo: String,
    pub branch: String,
    pub checkout_dir: PathBuf,
    pub poll: Duration,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Relative names under the hub domain.
    pub dns: Vec<String>,
    /// Audit rules waived for this service (from [`AUDIT_RULES`]).
    pub allow: Vec<String>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `None` (with `hub`) for an agent that manages no stacks yet.
    pub stacks: Option<Stacks>,
    pub hub: Option<Hub>,
    /// `[dns] agent`: the dns-agent's gRPC address; `None` disables registration.
    pub dns_agent: Option<String>,
    /// `[docker] socket`: the local engine's unix socket (default `/var/run/docker.sock`).
    pub docker_socket: PathBuf,
    /// The hub stack first (added when `[[services]]` does not list it), then the services in file order.
    pub services: Vec<Service>,
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

/// Parses `30s`, `5m`, `2h`, `1d` (a positive integer and one unit).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
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

    let (s, h) = match (raw.stacks, raw.hub) {
        (Some(s), Some(h)) => (s, h),
        (None, None) if raw.services.is_empty() => {
            let dns_agent = raw.dns.map(|d| d.agent);
            let docker_socket = docker_socket(path, raw.docker)?;
            return Ok(Config { common, stacks: None, hub: None, dns_agent, docker_socket, services: Vec::new() });
        }
        (None, _) => return Err(bad("stacks", "missing: [[services]] and [hub] need a [stacks] repository".into())),
        (Some(_), None) => {
            return Err(bad("hub", "missing: [stacks] needs a [hub] (stack, network, domain, address)".into()))
        }
    };
    if s.repo.trim().is_empty() {
        return Err(bad("stacks.repo", "must not be empty".into()));
    }
    // A local path is resolved against the config file; URLs (scheme://, or scp-like user@host:path) are kept.
    let is_url = s.repo.contains("://") || (s.repo.contains(':') && !s.repo.starts_with('/') && s.repo.contains('@'));
    let repo = if is_url { s.repo } else { config::resolve(path, Path::new(&s.repo)).display().to_string() };
    if s.branch.is_empty() || s.branch.starts_with('-') || s.branch.contains("..") || s.branch.contains(' ') {
        return Err(bad("stacks.branch", format!("`{}` is not a usable branch name", s.branch)));
    }
    if s.checkout_dir.as_os_str().is_empty() {
        return Err(bad("stacks.checkout_dir", "must not be empty".into()));
    }
    let poll = parse_duration(&s.poll)
        .ok_or_else(|| bad("stacks.poll", format!("`{}` is not a duration like 30s, 5m, 1h", s.poll)))?;
    let stacks = Stacks { repo, branch: s.branch, checkout_dir: config::resolve(path, &s.checkout_dir), poll };

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

    let dns_agent = match raw.dns {
        Some(d) if !d.agent.starts_with("https://") => {
            return Err(bad("dns.agent", format!("`{}` must be https://HOST:PORT", d.agent)))
        }
        Some(d) => Some(d.agent),
        None => None,
    };

    let mut services: Vec<Service> = Vec::new();
    for (i, s) in raw.services.into_iter().enumerate() {
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
        services.push(Service { name: s.name, dns, allow: s.allow });
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
    match services.iter().position(|s| s.name == hub.stack) {
        Some(0) => {}
        Some(i) => {
            let h = services.remove(i);
            services.insert(0, h);
        }
        None => services.insert(0, Service { name: hub.stack.clone(), dns: Vec::new(), allow: Vec::new() }),
    }
    let docker_socket = docker_socket(path, raw.docker)?;
    Ok(Config { common, stacks: Some(stacks), hub: Some(hub), dns_agent, docker_socket, services })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/services-agent.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.common.grpc.listen.port(), 7443);
        assert_eq!(cfg.common.metrics_listen.port(), 9443);
        let (stacks, hub) = (cfg.stacks.as_ref().unwrap(), cfg.hub.as_ref().unwrap());
        assert_eq!(stacks.poll, Duration::from_secs(300));
        assert_eq!(stacks.branch, "main");
        assert_eq!(hub.domain, "lab.home.arpa");
        assert_eq!(cfg.dns_agent.as_deref(), Some("https://10.0.0.53:7442"));
        let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["proxy", "photos", "wiki"]);
        assert_eq!(cfg.service("photos").unwrap().dns, ["photos"]);
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
        assert_eq!(c.services[0], Service { name: "proxy".into(), dns: vec![], allow: vec![] });
        assert_eq!(c.services[1].name, "photos");
        let c = parse("").unwrap();
        assert_eq!(c.services.len(), 1);
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
        ];
        for (extra, want) in cases {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let err = Config::parse(Path::new("/x.toml"), &BASE.replace("30s", "soon")).unwrap_err().to_string();
        assert!(err.contains("key `stacks.poll`"), "{err}");
        let err = Config::parse(Path::new("/x.toml"), &BASE.replace("\"proxy\"", "\"Pro/xy\"")).unwrap_err();
        assert!(err.to_string().contains("key `hub.stack`"), "{err}");
    }

    #[test]
    fn names_and_durations() {
        for ok in ["photos", "a", "t123_0-proxy", "9lives"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "..", "a/b", "A", "-a", "_a", "a.b", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 m"), None);
    }
}
