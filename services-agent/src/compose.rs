//! The compose CLI: `docker compose` (v2 plugin) when present, else `docker-compose` (v1); validating, deploying and
//! driving one project as people write it (its directory, compose's own file discovery or the configured `files`,
//! `.env`, an env file, profiles, secrets in the process environment). Builds commands run through
//! `agent_core::runner`; parses their output in pure functions. Must not know Git, bollard or the audit rules; it never
//! reads container state (that is `docker`). The resolved config holds interpolated secrets: it is hashed and parsed,
//! never logged nor put in an error.

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

/// File names compose discovers in a stack directory (v1.29 and v2 both know all four; they prefer different ones).
pub(crate) const COMPOSE_FILES: &[&str] = &["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum ComposeError {
    #[error("neither `docker compose` (v2 plugin) nor `docker-compose` (v1) is installed")]
    Missing,
    #[error("stack {stack}: no compose file ({}) in {dir}", COMPOSE_FILES.join(", "))]
    NoFile { stack: String, dir: PathBuf },
    #[error(
        "stack {stack}: several compose files in {dir} ({}): compose v1 and v2 pick different ones; keep one or name \
         them in the service's `files`",
        found.join(", ")
    )]
    SeveralFiles { stack: String, dir: PathBuf, found: Vec<String> },
    #[error("stack {stack}: {key} names {path}, which does not exist in the stack directory")]
    MissingFile { stack: String, key: &'static str, path: PathBuf },
    #[error(
        "stack {stack}: profile {profile} (the service's `profiles`) is used by no service of the resolved compose \
         file; the running stack was left as it was"
    )]
    UnknownProfile { stack: String, profile: String },
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

    /// `docker compose` / `docker-compose` for project `p`, run in its directory (see [`Project::args`]); the
    /// secrets reach only its environment.
    fn project(&self, p: &Project) -> Cmd {
        let base = match self.flavor {
            Flavor::V2 => Cmd::new("docker").arg("compose"),
            Flavor::V1 => Cmd::new("docker-compose"),
        };
        let mut cmd = base
            .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
            .env("DOCKER_HOST", &self.docker_host)
            .current_dir(&p.dir)
            .args(p.args());
        for (k, v) in &p.secrets {
            cmd = cmd.secret_env(k, v);
        }
        cmd
    }

    /// Validates the project with `config` and returns what compose would deploy (its services, resolved: relative
    /// paths made absolute, variables interpolated) and the hash of the resolved text: nothing is started or stopped.
    /// A profile no service has is refused (compose itself accepts it silently).
    pub(crate) async fn validate(&self, p: &Project) -> Result<Resolved, ComposeError> {
        let cmd = self.project(p).arg("config").timeout(QUICK_TIMEOUT);
        let redact = cmd.clone();
        match runner::run(cmd).await {
            Ok(out) if out.status.success() => {
                let invalid = |message| ComposeError::Invalid { stack: p.name.clone(), message };
                let resolved = resolve(&out.stdout).map_err(invalid)?;
                if let Some(profile) = p.profiles.iter().find(|x| !resolved.profiles.contains(*x)) {
                    return Err(ComposeError::UnknownProfile { stack: p.name.clone(), profile: profile.clone() });
                }
                Ok(resolved)
            }
            Ok(out) => Err(ComposeError::Invalid {
                stack: p.name.clone(),
                message: redact.redacted(&validation_message(&out.stderr)),
            }),
            Err(RunError::NotFound { .. }) => Err(ComposeError::Missing),
            Err(source) => Err(ComposeError::Action { stack: p.name.clone(), action: "config", source }),
        }
    }

    /// `up -d --remove-orphans`: creates or recreates what changed, leaves the rest running.
    pub(crate) async fn up(&self, p: &Project) -> Result<(), ComposeError> {
        self.action(p, "up", &["up", "-d", "--remove-orphans"], UP_TIMEOUT).await
    }

    /// `down --remove-orphans`; named volumes (the data) are kept.
    pub(crate) async fn down(&self, p: &Project) -> Result<(), ComposeError> {
        self.action(p, "down", &["down", "--remove-orphans"], ACTION_TIMEOUT).await
    }

    /// `down --remove-orphans` of project `name` whose own compose files are gone (its stack left the config or the
    /// repository), through `empty`, [`EMPTY_FILE`] written by the caller alone in its directory: every container
    /// of the project is an orphan and removed. Volumes are kept (no `-v`). Compose v1 (1.29) leaves the project's
    /// networks (they are not in the file): the caller removes them by label.
    pub(crate) async fn down_orphans(&self, name: &str, empty: &Path) -> Result<(), ComposeError> {
        let p = Project {
            name: name.to_string(),
            dir: empty.parent().unwrap_or(Path::new("/")).to_path_buf(),
            files: vec![empty.to_path_buf()],
            env_file: None,
            profiles: Vec::new(),
            secrets: Vec::new(),
        };
        self.action(&p, "down", &["down", "--remove-orphans"], ACTION_TIMEOUT).await
    }

    pub(crate) async fn restart(&self, p: &Project) -> Result<(), ComposeError> {
        self.action(p, "restart", &["restart"], ACTION_TIMEOUT).await
    }

    pub(crate) async fn pause(&self, p: &Project) -> Result<(), ComposeError> {
        self.action(p, "pause", &["pause"], ACTION_TIMEOUT).await
    }

    pub(crate) async fn unpause(&self, p: &Project) -> Result<(), ComposeError> {
        self.action(p, "unpause", &["unpause"], ACTION_TIMEOUT).await
    }

    /// `pull`: fetches the current image of every compose service of the project; nothing is restarted.
    pub(crate) async fn pull(&self, p: &Project) -> Result<(), ComposeError> {
        self.action(p, "pull", &["pull", "--quiet"], UP_TIMEOUT).await
    }

    /// `up -d --no-deps SERVICE…`: recreates just these compose services (their image changed), nothing else.
    pub(crate) async fn up_services(&self, p: &Project, services: &[String]) -> Result<(), ComposeError> {
        let mut args = vec!["up", "-d", "--no-deps"];
        args.extend(services.iter().map(String::as_str));
        self.action(p, "up", &args, UP_TIMEOUT).await
    }

    async fn action(
        &self,
        p: &Project,
        action: &'static str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(), ComposeError> {
        match runner::run_ok(self.project(p).args(args).timeout(timeout)).await {
            Ok(_) => Ok(()),
            Err(RunError::NotFound { .. }) => Err(ComposeError::Missing),
            Err(source) => Err(ComposeError::Action { stack: p.name.clone(), action, source }),
        }
    }
}

/// How compose runs one stack: in its directory, with compose's own discovery (`files` empty) or the given files.
#[derive(Clone, Default)]
pub(crate) struct Project {
    /// The compose project name (the stack's).
    pub name: String,
    /// The stack directory: working and project directory (`.env` is read there).
    pub dir: PathBuf,
    /// `-f` each, in order (absolute); empty: compose discovers the file and its override in `dir`.
    pub files: Vec<PathBuf>,
    /// `--env-file` (absolute): read instead of `dir/.env` (compose v1.29 takes one).
    pub env_file: Option<PathBuf>,
    /// `--profile` each.
    pub profiles: Vec<String>,
    /// `KEY=VALUE` for the compose process's environment only (never argv, never shown).
    pub secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.secrets.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Project")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("files", &self.files)
            .field("env_file", &self.env_file)
            .field("profiles", &self.profiles)
            .field("secret_keys", &keys)
            .finish()
    }
}

impl Project {
    /// The global options: `-p NAME --project-directory DIR [-f FILE]… [--env-file FILE] [--profile P]…`.
    pub(crate) fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> =
            vec!["-p".into(), self.name.clone().into(), "--project-directory".into(), self.dir.clone().into()];
        for f in &self.files {
            a.extend(["-f".into(), f.clone().into()]);
        }
        if let Some(e) = &self.env_file {
            a.extend(["--env-file".into(), e.clone().into()]);
        }
        for p in &self.profiles {
            a.extend(["--profile".into(), p.clone().into()]);
        }
        a
    }
}

/// The one compose file compose would discover in `dir` (none, or several, is an error naming the stack).
pub(crate) fn find_file(stack: &str, dir: &Path) -> Result<PathBuf, ComposeError> {
    let found: Vec<&str> = COMPOSE_FILES.iter().copied().filter(|f| dir.join(f).is_file()).collect();
    match found.as_slice() {
        [] => Err(ComposeError::NoFile { stack: stack.into(), dir: dir.to_path_buf() }),
        [one] => Ok(dir.join(one)),
        _ => Err(ComposeError::SeveralFiles {
            stack: stack.into(),
            dir: dir.to_path_buf(),
            found: found.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// What `config` resolved: the deploy gate's plan, the images the services use, the profiles they name, and the
/// SHA-256 of the exact resolved text (which is dropped: it holds interpolated secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub plan: Vec<PlannedService>,
    /// (service, image) in service order; a service without `image:` runs `PROJECT_SERVICE` (what compose builds).
    pub images: Vec<(String, String)>,
    pub profiles: std::collections::BTreeSet<String>,
    /// Lowercase hex SHA-256 of `config`'s stdout.
    pub config_sha256: String,
}

/// `config`'s stdout → [`Resolved`]; the project name is not known here, so a built image is `""` (see
/// [`Resolved::images`]: the caller names it).
pub(crate) fn resolve(stdout: &[u8]) -> Result<Resolved, String> {
    use sha2::{Digest, Sha256};
    let plan = parse_config(stdout)?;
    let raw: RawConfig =
        serde_norway::from_slice(stdout).map_err(|e| format!("cannot read the resolved compose file: {e}"))?;
    let images = raw.services.iter().map(|(n, s)| (n.clone(), s.image.clone())).collect();
    let profiles = raw.services.values().flat_map(|s| s.profiles.iter().cloned()).collect();
    Ok(Resolved { plan, images, profiles, config_sha256: format!("{:x}", Sha256::digest(stdout)) })
}

/// The config hash of a deployed stack: the resolved config's SHA-256, the profiles it runs with, and the id of each
/// image its services use (`""` when the image is not present) — what a redeploy decision compares.
pub(crate) fn config_hash(r: &Resolved, profiles: &[String], image_ids: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"strata-config-hash-v1\0");
    h.update(r.config_sha256.as_bytes());
    for p in profiles {
        h.update(format!("\0profile={p}").as_bytes());
    }
    for (image, id) in image_ids {
        h.update(format!("\0image={image}={id}").as_bytes());
    }
    format!("{:x}", h.finalize())
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
    image: String,
    #[serde(default)]
    profiles: Vec<String>,
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
        // An override is not a second compose file.
        std::fs::write(dir.path().join("docker-compose.override.yml"), "services: {}\n").unwrap();
        assert_eq!(find_file("photos", dir.path()).unwrap(), dir.path().join("docker-compose.yml"));
        std::fs::write(dir.path().join("compose.yaml"), "services: {}\n").unwrap();
        let err = find_file("photos", dir.path()).unwrap_err().to_string();
        assert!(err.contains("several compose files") && err.contains("(compose.yaml, docker-compose.yml)"), "{err}");
    }

    #[test]
    fn arguments_follow_the_project() {
        let words = |p: &Project| p.args().iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();
        let mut p = Project { name: "web".into(), dir: "/co/web".into(), ..Default::default() };
        assert_eq!(words(&p), ["-p", "web", "--project-directory", "/co/web"], "compose's own discovery and .env");
        p.files = vec!["/co/web/compose.yaml".into(), "/co/web/prod.yaml".into()];
        p.env_file = Some("/co/web/prod.env".into());
        p.profiles = vec!["debug".into(), "tools".into()];
        p.secrets = vec![("DB_PASSWORD".into(), "hunter2".into())];
        assert_eq!(
            words(&p),
            [
                "-p",
                "web",
                "--project-directory",
                "/co/web",
                "-f",
                "/co/web/compose.yaml",
                "-f",
                "/co/web/prod.yaml",
                "--env-file",
                "/co/web/prod.env",
                "--profile",
                "debug",
                "--profile",
                "tools"
            ]
        );
        let compose = Compose { flavor: Flavor::V1, version: "1.29.2".into(), docker_host: "unix:///d.sock".into() };
        let cmd = compose.project(&p).arg("config");
        for shown in [cmd.display(), format!("{cmd:?}"), format!("{p:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{cmd:?}").contains("DB_PASSWORD") && cmd.display().ends_with("--profile tools config"));
    }

    /// `docker-compose -p cx config` (1.29.2) in a directory with compose.yaml, compose.override.yaml (`X: over`),
    /// `.env` (`TAG=fromdotenv`) and `env_file: ../shared/x.env` (`A=1`) on a service in profile `debug`.
    const DISCOVERED: &str = "services:\n  main:\n    environment:\n      X: over\n    image: main\n  web:\n    \
environment:\n      A: '1'\n    image: busybox:fromdotenv\n    profiles:\n    - debug\nversion: '3.9'\n\n";

    #[test]
    fn the_resolved_config_is_hashed_with_profiles_and_images() {
        let r = resolve(DISCOVERED.as_bytes()).unwrap();
        assert_eq!(r.images, [("main".into(), "main".into()), ("web".into(), "busybox:fromdotenv".into())]);
        assert_eq!(r.profiles.iter().collect::<Vec<_>>(), ["debug"]);
        assert_eq!(r.plan.len(), 2);
        // `sha256sum` of the same bytes.
        assert_eq!(r.config_sha256, "657cbefcafc2ceabc16422181a031f3e4e79434ebb162529465c450a1d56818b");
        let ids = [("main".to_string(), "sha256:aa".to_string()), ("busybox:fromdotenv".into(), String::new())];
        let h = config_hash(&r, &[], &ids);
        assert_eq!(h.len(), 64);
        assert_eq!(h, config_hash(&r, &[], &ids), "the same inputs give the same hash");
        // An env file outside the stack folder changes the resolved text; a profile or an image id changes the hash.
        let changed = resolve(DISCOVERED.replace("A: '1'", "A: '2'").as_bytes()).unwrap();
        assert_ne!(config_hash(&changed, &[], &ids), h);
        assert_ne!(config_hash(&r, &["debug".into()], &ids), h);
        let pulled = [ids[0].clone(), ("busybox:fromdotenv".into(), "sha256:bb".into())];
        assert_ne!(config_hash(&r, &[], &pulled), h);
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
