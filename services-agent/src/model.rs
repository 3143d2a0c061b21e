//! The agent's plain domain types: containers and networks as the agent sees them, services as it reports them,
//! audit violations. Owned data only; must not know bollard, proto/tonic, git or compose.

/// Label compose puts on every container and network of a project.
pub(crate) const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Label compose puts on every container: the compose service.
pub(crate) const SERVICE_LABEL: &str = "com.docker.compose.service";

/// One container of a compose project, as last inspected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub project: String,
    /// The compose service the container belongs to.
    pub service: String,
    /// The image as configured (`strata-test/busybox:1`).
    pub image: String,
    /// The id of the image it runs (`sha256:…`).
    pub image_id: String,
    /// created, running, paused, restarting, removing, exited, dead.
    pub state: String,
    /// healthy, unhealthy, starting; `None` when the image has no health check.
    pub health: Option<String>,
    /// When it last started, Unix seconds.
    pub started_unix: Option<i64>,
    pub restarts: u32,
    pub oom_killed: bool,
    /// Names of the networks it is attached to.
    pub networks: Vec<String>,
    /// Published host ports, `HOSTIP:HOSTPORT->PORT/PROTO` (HOSTPORT empty when not yet assigned).
    pub published: Vec<String>,
    pub network_mode: String,
    pub privileged: bool,
    /// Source paths of bind mounts.
    pub binds: Vec<String>,
}

impl ContainerInfo {
    /// The state to show: an unhealthy running container is "unhealthy", never just "running".
    pub(crate) fn shown_state(&self) -> &str {
        match (self.state.as_str(), self.health.as_deref()) {
            ("running", Some("unhealthy")) => "unhealthy",
            ("running", Some("starting")) => "starting",
            ("exited" | "dead", _) if self.oom_killed => "oom-killed",
            (s, _) => s,
        }
    }
}

/// A Docker network and the compose project that created it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkInfo {
    pub name: String,
    pub project: Option<String>,
}

/// One rule broken by one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Violation {
    pub container: String,
    pub rule: String,
    pub detail: String,
}

/// One container in a service report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow {
    pub name: String,
    pub id: String,
    pub image: String,
    /// The id of the image the container runs.
    pub image_digest: String,
    pub state: String,
    pub health: String,
    pub uptime_seconds: u64,
    pub restarts: u32,
}

/// One service (stack) in `ListServices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    /// running, unhealthy, degraded, paused, stopped, down, not deployed, unknown.
    pub state: String,
    /// healthy, unhealthy, starting, none.
    pub health: String,
    pub deployed_commit: String,
    /// What the running stack was deployed from (see `compose::config_hash`); empty before the first deploy.
    pub config_hash: String,
    /// The last error for this stack (sync, validation, deploy, Docker engine), empty when none.
    pub error: String,
    pub containers: Vec<ContainerRow>,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SyncReport {
    pub commit: String,
    pub redeployed: Vec<String>,
    pub errors: std::collections::BTreeMap<String, String>,
}

/// One line of a container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    pub container: String,
    pub line: String,
}

/// One archive in a service's repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ArchiveRow {
    pub name: String,
    pub time_unix: i64,
    /// 0 when the archive was not made by this agent (sizes come from its history).
    pub original_size: u64,
    pub deduplicated_size: u64,
}

/// One compose service as `config` resolved it, before anything is deployed: what the deploy gate judges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PlannedService {
    /// The compose service name.
    pub service: String,
    pub privileged: bool,
    /// `network_mode`, `pid`, `ipc` as written (`host` is the one the gate refuses).
    pub network_mode: String,
    pub pid: String,
    pub ipc: String,
    pub cap_add: Vec<String>,
    pub devices: Vec<String>,
    /// Host paths bind-mounted (absolute, as compose resolved them; through a named volume's `device` too), each
    /// with its real path (symlinks resolved by the caller) — the one the gate judges.
    pub binds: Vec<PlannedBind>,
}

/// A host path a planned container would bind-mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PlannedBind {
    /// As compose printed it.
    pub source: String,
    /// With symlinks resolved (filled by the caller; equal to `source` until then).
    pub real: std::path::PathBuf,
}
