//! The compose CLI: `docker compose` (v2 plugin) when present, else `docker-compose` (v1); validating, deploying and
//! driving one project. Builds commands run through `agent_core::runner`; parses their output in pure functions.
//! Must not know Git, bollard or the audit rules; it never reads container state (that is `docker`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd, RunError};
use serde::Deserialize;

use crate::model::{PlannedBind, PlannedService};

/// `up` may build nothing but still has to create networks and start every container.
const UP_TIMEOUT: Duration = Duration::from_secs(600);
const ACTION_TIMEOUT: Duration = Duration::from_secs(180);
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

/// A compose file with no services: what a project whose own file is gone is brought down with.
pub(crate) const EMPTY_FILE: &str = "version: \"3.7\"\nservices: {}\n";

/// File names a stack directory may use, in the order compose itself prefers.
pub(crate) const COMPOSE_FILES: &[&str] = &["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum ComposeError {
    #[error("neither `docker compose` (v2 plugin) nor `docker-compose` (v1) is installed")]
    Missing,
    #[error("stack {stack}: no compose file ({}) in {dir}", COMPOSE_FILES.join(", "))]
    NoFile { stack: String, dir: PathBuf },
    #[error("stack {stack}: invalid compose file, refused by `config`: {message}")]
    Invalid { stack: String, message: String },
    #[error("stack {stack}: compose {action} failed: {source}")]
    Action { stack: String, action: &'static str, source: RunError },
}

/// Which compose program this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `docker compose` (the v2 CLI plugin).
    V2,
    /// `docker-compose` (v1, Python).
    V1,
}

/// The compose program with its detected flavor and version.
#[derive(Debug, Clone)]
pub(crate) struct Compose {
    pub flavor: Flavor,
    pub version: String,
    /// `DOCKER_HOST` for every compose command (`unix:///var/run/docker.sock`).
    pub docker_host: String,
}

impl Compose {
    /// Detects `docker compose version` first, then `docker-compose version`; commands will talk to `socket`.
    pub(crate) async fn detect(socket: &Path) -> Result<Compose, ComposeError> {
        let docker_host = format!("unix://{}", socket.display());
        let v2 = Cmd::new("docker").args(["compose", "version", "--short"]).timeout(QUICK_TIMEOUT);
        if let Ok(out) = runner::run_ok(v2).await {
            if let Some(version) = parse_version(&out.stdout) {
                return Ok(Compose { flavor: Flavor::V2, version, docker_host });
            }
        }
        let v1 = Cmd::new("docker-compose").args(["version", "--short"]).timeout(QUICK_TIMEOUT);
        match runner::run_ok(v1).await {
            Ok(out) => match parse_version(&out.stdout) {
                Some(version) => Ok(Compose { flavor: Flavor::V1, version, docker_host }),
                None => Err(ComposeError::Missing),
            },
            Err(_) => Err(ComposeError::Missing),
        }
    }

    /// `docker compose` / `docker-compose` with the project name and file.
    fn project(&self, project: &str, file: &Path) -> Cmd {
        let base = match self.flavor {
            Flavor::V2 => Cmd::new("docker").arg("compose"),
            Flavor::V1 => Cmd::new("docker-compose"),
        };
        base.env("COMPOSE_INTERACTIVE_NO_CLI", "1")
            .env("DOCKER_HOST", &self.docker_host)
            .arg("-p")
            .arg(project)
            .arg("-f")
            .arg(file)
    }

    /// Validates the file with `config` and returns what compose would deploy (its services, resolved: relative
    /// paths made absolute, variables interpolated): nothing is started or stopped.
    pub(crate) async fn validate(&self, project: &str, file: &Path) -> Result<Vec<PlannedService>, ComposeError> {
        let cmd = self.project(project, file).arg("config").timeout(QUICK_TIMEOUT);
        match runner::run(cmd).await {
            Ok(out) if out.status.success() => {
                parse_config(&out.stdout).map_err(|message| ComposeError::Invalid { stack: project.into(), message })
            }
            Ok(out) => Err(ComposeError::Invalid { stack: project.into(), message: validation_message(&out.stderr) }),
            Err(RunError::NotFound { .. }) => Err(ComposeError::Missing),
            Err(source) => Err(ComposeError::Action { stack: project.into(), action: "config", source }),
        }
    }

    /// `up -d --remove-orphans`: creates or recreates what changed, leaves the rest running.
    pub(crate) async fn up(&self, project: &str, file: &Path) -> Result<(), ComposeError> {
        self.action(project, file, "up", &["up", "-d", "--remove-orphans"], UP_TIMEOUT).await
    }

    /// `down --remove-orphans`; named volumes (the data) are kept.
    pub(crate) async fn down(&self, project: &str, file: &Path) -> Result<(), ComposeError> {
        self.action(project, file, "down", &["down", "--remove-orphans"], ACTION_TIMEOUT).await
    }

    /// `down --remove-orphans` of a project whose own compose file is gone (its stack left the config or the
    /// repository), through `empty`, a compose file with no services (written by the caller): every container of
    /// the project is an orphan and removed. Volumes are kept (no `-v`). Compose v1 (1.29) leaves the project's
    /// networks (they are not in the file): the caller removes them by label.
    pub(crate) async fn down_orphans(&self, project: &str, empty: &Path) -> Result<(), ComposeError> {
        self.action(project, empty, "down", &["down", "--remove-orphans"], ACTION_TIMEOUT).await
    }

    pub(crate) async fn restart(&self, project: &str, file: &Path) -> Result<(), ComposeError> {
        self.action(project, file, "restart", &["restart"], ACTION_TIMEOUT).await
    }

    pub(crate) async fn pause(&self, project: &str, file: &Path) -> Result<(), ComposeError> {
        self.action(project, file, "pause", &["pause"], ACTION_TIMEOUT).await
    }

    pub(crate) async fn unpause(&self, project: &str, file: &Path) -> Result<(), ComposeError> {
        self.action(project, file, "unpause", &["unpause"], ACTION_TIMEOUT).await
    }

    async fn action(
        &self,
        project: &str,
        file: &Path,
        action: &'static str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(), ComposeError> {
        match runner::run_ok(self.project(project, file).args(args).timeout(timeout)).await {
            Ok(_) => Ok(()),
            Err(RunError::NotFound { .. }) => Err(ComposeError::Missing),
            Err(source) => Err(ComposeError::Action { stack: project.into(), action, source }),
        }
    }
}

/// The compose file of the stack in `dir`.
pub(crate) fn find_file(stack: &str, dir: &Path) -> Result<PathBuf, ComposeError> {
    COMPOSE_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| ComposeError::NoFile { stack: stack.into(), dir: dir.to_path_buf() })
}

/// `version --short` output: `1.29.2`, `2.24.6`, or `v2.24.6` → the version without a leading `v`.
pub(crate) fn parse_version(stdout: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(stdout);
    let v = s.lines().next()?.trim().trim_start_matches('v');
    let ok = !v.is_empty() && v.starts_with(|c: char| c.is_ascii_digit()) && v.split('.').count() >= 2;
    ok.then(|| v.to_string())
}

/// What `config -q` printed on stderr, as one line: the reason a file is refused.
pub(crate) fn validation_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("ERROR: ").trim())
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING:"))
        .collect();
    if lines.is_empty() {
        "compose refused the file without saying why".to_string()
    } else {
        lines.join("; ")
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    services: std::collections::BTreeMap<String, RawService>,
    #[serde(default)]
    volumes: std::collections::BTreeMap<String, Option<RawVolume>>,
}

#[derive(Deserialize)]
struct RawService {
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    network_mode: String,
    #[serde(default)]
    pid: String,
    #[serde(default)]
    ipc: String,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    devices: Vec<serde_norway::Value>,
    #[serde(default)]
    volumes: Vec<serde_norway::Value>,
}

#[derive(Deserialize)]
struct RawVolume {
    #[serde(default)]
    driver_opts: std::collections::BTreeMap<String, serde_norway::Value>,
}

fn text(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => s.clone(),
        other => serde_norway::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// The output of `config` (compose's resolved YAML) → the services it would deploy. Relative bind sources are
/// already absolute there; a named volume whose `driver_opts` bind a `device` counts as a bind of that path.
/// Anything it cannot read is an error: the gate fails closed.
pub(crate) fn parse_config(stdout: &[u8]) -> Result<Vec<PlannedService>, String> {
    let raw: RawConfig =
        serde_norway::from_slice(stdout).map_err(|e| format!("cannot read the resolved compose file: {e}"))?;
    let volume_device = |name: &str| -> Option<String> {
        let opts = &raw.volumes.get(name)?.as_ref()?.driver_opts;
        let device = opts.get("device").map(text)?;
        let bind = opts.get("o").map(text).is_some_and(|o| o.split(',').any(|x| x.trim() == "bind"))
            || opts.get("type").map(text).is_some_and(|t| t == "none");
        bind.then_some(device)
    };
    let mut out = Vec::new();
    for (name, s) in &raw.services {
        let mut binds = Vec::new();
        for v in &s.volumes {
            let (kind, source) = match v {
                serde_norway::Value::String(spec) => {
                    let source = spec.split(':').next().unwrap_or("").to_string();
                    (if source.starts_with('/') { "bind" } else { "volume" }, source)
                }
                serde_norway::Value::Mapping(m) => {
                    let get = |k: &str| m.get(serde_norway::Value::String(k.into())).map(text).unwrap_or_default();
                    let kind = get("type");
                    (
                        if kind == "bind" {
                            "bind"
                        } else if kind == "volume" {
                            "volume"
                        } else {
                            "other"
                        },
                        get("source"),
                    )
                }
                other => return Err(format!("service {name}: unreadable volume entry {}", text(other))),
            };
            let host = match kind {
                "bind" => Some(source),
                "volume" => volume_device(&source),
                _ => None,
            };
            if let Some(h) = host.filter(|h| !h.is_empty()) {
                binds.push(PlannedBind { real: PathBuf::from(&h), source: h });
            }
        }
        out.push(PlannedService {
            service: name.clone(),
            privileged: s.privileged,
            network_mode: s.network_mode.clone(),
            pid: s.pid.clone(),
            ipc: s.ipc.clone(),
            cap_add: s.cap_add.clone(),
            devices: s.devices.iter().map(text).collect(),
            binds,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version(b"1.29.2\n").as_deref(), Some("1.29.2"));
        assert_eq!(parse_version(b"v2.24.6\n").as_deref(), Some("2.24.6"));
        assert_eq!(parse_version(b"docker: 'compose' is not a docker command.\n"), None);
        assert_eq!(parse_version(b""), None);
    }

    /// stderr of `docker-compose -f docker-compose.yml config -q` (1.29.2) on three invalid files.
    #[test]
    fn validation_messages_from_compose_v1() {
        let schema = "The Compose file './docker-compose.yml' is invalid because:\n\
                      services.web.ports contains an invalid type, it should be an array\n";
        assert_eq!(
            validation_message(schema),
            "The Compose file './docker-compose.yml' is invalid because:; \
             services.web.ports contains an invalid type, it should be an array"
        );
        let yaml = "yaml.parser.ParserError: while parsing a flow node\nexpected the node content, but found \
                    '<stream end>'\n  in \"./docker-compose.yml\", line 4, column 1\n";
        let m = validation_message(yaml);
        assert!(m.starts_with("yaml.parser.ParserError: while parsing a flow node;") && m.contains("line 4"), "{m}");
        let unknown = "The Compose file './docker-compose.yml' is invalid because:\n\
                       Unsupported config option for services.web: 'bogus'\n";
        assert!(validation_message(unknown).ends_with("Unsupported config option for services.web: 'bogus'"));
        assert_eq!(validation_message("\n"), "compose refused the file without saying why");
    }

    #[test]
    fn the_file_is_found_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_file("photos", dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("stack photos: no compose file (compose.yaml, "), "{err}");
        std::fs::write(dir.path().join("docker-compose.yml"), "services: {}\n").unwrap();
        assert_eq!(find_file("photos", dir.path()).unwrap(), dir.path().join("docker-compose.yml"));
    }

    /// `docker-compose -p cc -f docker-compose.yml config` (1.29.2) of a file using every form the gate judges.
    const CONFIG: &str = "services:\n  b:\n    image: \"y\"\n    volumes:\n    - bindvol:/b:rw\n  web:\n    cap_add:\n    \
- NET_ADMIN\n    devices:\n    - /dev/kvm:/dev/kvm\n    image: x\n    ipc: host\n    network_mode: host\n    pid: host\n    \
privileged: true\n    volumes:\n    - /etc:/host-etc:rw\n    - /tmp/cc/data:/data:ro\n    - /tmp/cc/link:/l:rw\n    \
- named:/n:rw\n    - source: /var/run/docker.sock\n      target: /s\n      type: bind\n    - target: /t\n      \
type: tmpfs\nversion: '3.7'\nvolumes:\n  bindvol:\n    driver_opts:\n      device: /root\n      o: bind\n      \
type: none\n  named: {}\n\n";

    #[test]
    fn resolved_config_parses_into_what_the_gate_judges() {
        let plan = parse_config(CONFIG.as_bytes()).unwrap();
        assert_eq!(plan.len(), 2);
        let (b, web) = (&plan[0], &plan[1]);
        assert_eq!(b.service, "b");
        assert_eq!(b.binds.iter().map(|x| x.source.as_str()).collect::<Vec<_>>(), ["/root"]);
        assert!(!b.privileged && b.cap_add.is_empty() && b.network_mode.is_empty());
        assert!(web.privileged && web.network_mode == "host" && web.pid == "host" && web.ipc == "host");
        assert_eq!(
            (web.cap_add.clone(), web.devices.clone()),
            (vec!["NET_ADMIN".into()], vec!["/dev/kvm:/dev/kvm".into()])
        );
        let binds: Vec<&str> = web.binds.iter().map(|x| x.source.as_str()).collect();
        assert_eq!(binds, ["/etc", "/tmp/cc/data", "/tmp/cc/link", "/var/run/docker.sock"]);
        assert!(parse_config(b"services: [1, 2]\n").is_err());
        assert!(parse_config(b"services:\n  a:\n    privileged: maybe\n").is_err());
    }
}
