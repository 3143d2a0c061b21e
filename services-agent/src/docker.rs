//! All bollard access: the local Docker engine (socket, negotiated API version), compose containers by their project
//! label, inspection, networks, logs, and the event watcher that keeps `live::Live` current (reconnecting with
//! backoff when the engine goes away), the few container actions a backup needs (stop/start, pause/unpause, exec
//! of a hook), and an update's image look-ups and re-tagging. Deploying is `compose`'s job. Must not know git,
//! proto/tonic, ZFS, Borg or the audit rules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_core::cli::Shutdown;
use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, ListNetworksOptions,
    LogsOptionsBuilder,
};
use bollard::Docker;
use futures::stream::{BoxStream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::DEFAULT_DOCKER_SOCKET;
use crate::live::Live;
use crate::model::{ContainerInfo, LogLine, NetworkInfo, PROJECT_LABEL, SERVICE_LABEL};

/// Every request but the event and log streams must answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A stop waits for the container's own grace period (compose's `stop_grace_period`), which may be long.
const ACTION_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum DockerError {
    #[error("docker engine unreachable: {0}")]
    Unreachable(String),
    #[error("docker engine: {0}")]
    Api(String),
}

fn api(e: bollard::errors::Error) -> DockerError {
    match &e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            DockerError::Api(format!("{status_code}: {message}"))
        }
        _ => DockerError::Unreachable(agent_core::tls::error_chain(&e)),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// A connection to the local engine that speaks the engine's API version.
#[derive(Clone)]
pub(crate) struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to the local socket and negotiates the API version (this Debian's engine speaks 1.41).
    pub(crate) async fn connect(socket: &Path) -> Result<Engine, DockerError> {
        let docker = if socket == Path::new(DEFAULT_DOCKER_SOCKET) {
            Docker::connect_with_socket_defaults()
        } else {
            Docker::connect_with_socket(&socket.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
        }
        .map_err(api)?;
        let mut docker = docker.negotiate_version().await.map_err(api)?;
        docker.set_timeout(REQUEST_TIMEOUT);
        Ok(Engine { docker })
    }

    /// The API version in use.
    pub(crate) fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Every container (running or not) that belongs to a compose project, inspected.
    pub(crate) async fn containers(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        let filters = HashMap::from([("label", vec![PROJECT_LABEL])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(api)?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            if let Some(id) = c.id {
                if let Some(info) = self.inspect(&id).await? {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }

    /// One container; `None` when it is gone or not part of a compose project.
    pub(crate) async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        match self.docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(r) => Ok(from_inspect(r)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api(e)),
        }
    }

    pub(crate) async fn networks(&self) -> Result<Vec<NetworkInfo>, DockerError> {
        let list = self.docker.list_networks(None::<ListNetworksOptions>).await.map_err(api)?;
        Ok(list
            .into_iter()
            .filter_map(|n| {
                let project = n.labels.as_ref().and_then(|l| l.get(PROJECT_LABEL)).cloned();
                Some(NetworkInfo { name: n.name?, project })
            })
            .collect())
    }

    /// Removes the networks compose created for `project` (labelled with it; a network the project only joined,
    /// such as the hub's, carries another project's label and stays). Returns the names removed and, for each that
    /// could not be (still in use by another project's container), why.
    pub(crate) async fn remove_project_networks(
        &self,
        project: &str,
    ) -> Result<(Vec<String>, Vec<String>), DockerError> {
        let (mut removed, mut left) = (Vec::new(), Vec::new());
        for n in self.networks().await?.into_iter().filter(|n| n.project.as_deref() == Some(project)) {
            match self.docker.remove_network(&n.name).await {
                Ok(()) => removed.push(n.name),
                Err(e) if is_not_found(&e) => {}
                Err(e) => left.push(format!("network {}: {}", n.name, api(e))),
            }
        }
        Ok((removed, left))
    }

    /// The ids of the project's containers that are running now (paused, exited and restarting ones excluded).
    pub(crate) async fn running_in_project(&self, project: &str) -> Result<Vec<String>, DockerError> {
        let label = format!("{PROJECT_LABEL}={project}");
        let filters = HashMap::from([("label", vec![label.as_str()]), ("status", vec!["running"])]);
        let opts = ListContainersOptionsBuilder::default().all(false).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(api)?;
        let mut ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        ids.sort();
        Ok(ids)
    }

    /// Every container of the project, running or not, with when it last started (Unix seconds with the
    /// sub-second part; `None` when it never started). Recovery uses it to tell whether a container may have written
    /// to the service's data since a point in time.
    pub(crate) async fn project_starts(&self, project: &str) -> Result<Vec<Started>, DockerError> {
        let label = format!("{PROJECT_LABEL}={project}");
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(api)?;
        let mut out = Vec::new();
        for id in list.into_iter().filter_map(|c| c.id) {
            match self.docker.inspect_container(&id, None::<InspectContainerOptions>).await {
                Ok(r) => {
                    let state = r.state.unwrap_or_default();
                    out.push(Started {
                        name: r.name.unwrap_or(id).trim_start_matches('/').to_string(),
                        running: state.running.unwrap_or(false) || state.paused.unwrap_or(false),
                        started_unix: state.started_at.as_deref().and_then(precise_unix),
                    });
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api(e)),
            }
        }
        Ok(out)
    }

    /// The running container of compose service `service` in `project`, if any.
    pub(crate) async fn service_container(&self, project: &str, service: &str) -> Result<Option<String>, DockerError> {
        let p = format!("{PROJECT_LABEL}={project}");
        let s = format!("{SERVICE_LABEL}={service}");
        let filters = HashMap::from([("label", vec![p.as_str(), s.as_str()]), ("status", vec!["running"])]);
        let opts = ListContainersOptionsBuilder::default().all(false).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(api)?;
        Ok(list.into_iter().find_map(|c| c.id))
    }

    /// The id (`sha256:…` of its config: it changes whenever the image does) of each image as present on the engine;
    /// `""` for an image that is not present (compose will pull or build it).
    pub(crate) async fn image_ids(&self, images: &[String]) -> Result<Vec<(String, String)>, DockerError> {
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            let id = match self.docker.inspect_image(image).await {
                Ok(i) => i.id.unwrap_or_default(),
                Err(e) if is_not_found(&e) => String::new(),
                Err(e) => return Err(api(e)),
            };
            out.push((image.clone(), id));
        }
        Ok(out)
    }

    fn long(&self) -> Docker {
        let mut d = self.docker.clone();
        d.set_timeout(ACTION_TIMEOUT);
        d
    }

    /// Stops a container, giving it its own grace period (`StopTimeout`) before the engine kills it.
    pub(crate) async fn stop(&self, id: &str) -> Result<(), DockerError> {
        match self.long().stop_container(id, None::<bollard::query_parameters::StopContainerOptions>).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    pub(crate) async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self.long().start_container(id, None::<bollard::query_parameters::StartContainerOptions>).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    pub(crate) async fn pause(&self, id: &str) -> Result<(), DockerError> {
        self.docker.pause_container(id).await.map_err(api)
    }

    /// Unpauses; a container that is not paused (any more) is fine.
    pub(crate) async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        match self.docker.unpause_container(id).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, message })
                if message.contains("not paused") =>
            {
                Ok(())
            }
            Err(e) => Err(api(e)),
        }
    }

    /// What each compose service of `project` runs (running or not): the image reference as configured and the
    /// image ID the container was created from, one per compose service (the first container), by service name.
    pub(crate) async fn project_images(&self, project: &str) -> Result<Vec<ServiceImage>, DockerError> {
        let label = format!("{PROJECT_LABEL}={project}");
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(api)?;
        let mut out: Vec<ServiceImage> = Vec::new();
        for id in list.into_iter().filter_map(|c| c.id) {
            let r = match self.docker.inspect_container(&id, None::<InspectContainerOptions>).await {
                Ok(r) => r,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(api(e)),
            };
            let config = r.config.unwrap_or_default();
            let service = config.labels.unwrap_or_default().get(SERVICE_LABEL).cloned().unwrap_or_default();
            let (Some(image), Some(image_id)) = (config.image, r.image) else { continue };
            if !service.is_empty() && !out.iter().any(|s| s.service == service) {
                out.push(ServiceImage { service, image, image_id });
            }
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }

    /// The ID of the local image `reference` (`None`: no such image here).
    pub(crate) async fn image_id(&self, reference: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api(e)),
        }
    }

    /// Points `reference` (`REPO[:TAG]`, tag `latest` when none) at the local image `id` (`docker tag`).
    pub(crate) async fn tag(&self, id: &str, reference: &str) -> Result<(), DockerError> {
        let (repo, tag) = split_reference(reference);
        let opts = bollard::query_parameters::TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.docker.tag_image(id, Some(opts)).await.map_err(api)
    }

    /// Runs `cmd` inside container `id` and waits for it (at most `timeout`): its exit code and the tail of its
    /// output (stdout and stderr merged).
    pub(crate) async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<(i64, String), DockerError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let opts = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let docker = self.long();
        let exec = docker.create_exec(id, opts).await.map_err(api)?;
        let run = async {
            let mut out = String::new();
            if let StartExecResults::Attached { mut output, .. } =
                docker.start_exec(&exec.id, None).await.map_err(api)?
            {
                while let Some(chunk) = output.next().await {
                    out.push_str(&String::from_utf8_lossy(&chunk.map_err(api)?.into_bytes()));
                    if out.len() > 64 * 1024 {
                        let cut = out.len() - 32 * 1024;
                        let cut = (cut..out.len()).find(|i| out.is_char_boundary(*i)).unwrap_or(out.len());
                        out.drain(..cut);
                    }
                }
            }
            let code = docker.inspect_exec(&exec.id).await.map_err(api)?.exit_code.unwrap_or(-1);
            Ok::<_, DockerError>((code, out))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(DockerError::Api(format!("exec in {id} did not finish within {timeout:?}"))),
        }
    }

    /// The log of one container, line by line (`tail` 0 means all), following it when asked.
    pub(crate) fn logs(
        &self,
        container: &str,
        follow: bool,
        tail: u32,
    ) -> BoxStream<'static, Result<LogLine, DockerError>> {
        let tail = if tail == 0 { "all".to_string() } else { tail.to_string() };
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(follow).tail(&tail).build();
        let name = container.to_string();
        self.docker
            .logs(container, Some(opts))
            .flat_map(move |chunk| {
                let lines: Vec<Result<LogLine, DockerError>> = match chunk {
                    Ok(out) => split_lines(&out.to_string())
                        .into_iter()
                        .map(|line| Ok(LogLine { container: name.clone(), line }))
                        .collect(),
                    Err(e) => vec![Err(api(e))],
                };
                futures::stream::iter(lines)
            })
            .boxed()
    }

    /// Container and network events from `since_unix` on.
    fn events(&self, since_unix: i64) -> BoxStream<'static, Result<EventMessage, DockerError>> {
        let filters = HashMap::from([("type", vec!["container", "network"])]);
        let since = since_unix.to_string();
        let opts = EventsOptionsBuilder::default().since(&since).filters(&filters).build();
        self.docker
            .events(Some(opts))
            .filter_map(|r| async move {
                match r {
                    // An event this client cannot decode is skipped, not taken for a lost engine.
                    Err(
                        e @ (bollard::errors::Error::JsonDataError { .. }
                        | bollard::errors::Error::JsonSerdeError { .. }),
                    ) => {
                        tracing::warn!(error = %e, "undecodable docker event skipped");
                        None
                    }
                    other => Some(other.map_err(api)),
                }
            })
            .boxed()
    }
}

/// Log chunks may hold several lines, or end with a newline: one entry per line.
fn split_lines(chunk: &str) -> Vec<String> {
    chunk.strip_suffix('\n').unwrap_or(chunk).split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect()
}

/// The container as the agent sees it; `None` without an id or a compose project label.
pub(crate) fn from_inspect(r: ContainerInspectResponse) -> Option<ContainerInfo> {
    let id = r.id?;
    let config = r.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let project = labels.get(PROJECT_LABEL)?.clone();
    let state = r.state.unwrap_or_default();
    let host = r.host_config.unwrap_or_default();
    let net = r.network_settings.unwrap_or_default();
    let mut networks: Vec<String> = net.networks.unwrap_or_default().into_keys().collect();
    networks.sort();
    let mut published = Vec::new();
    // Actual bindings when running, the configured ones otherwise (a stopped container still asks for them).
    for ports in [net.ports, host.port_bindings].into_iter().flatten() {
        for (port, bindings) in ports {
            for b in bindings.unwrap_or_default() {
                let p = format!("{}:{}->{port}", b.host_ip.unwrap_or_default(), b.host_port.unwrap_or_default());
                if !published.contains(&p) {
                    published.push(p);
                }
            }
        }
        if !published.is_empty() {
            break;
        }
    }
    published.sort();
    let mut binds: Vec<String> = r
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ.as_deref() == Some("bind"))
        .filter_map(|m| m.source)
        .collect();
    for b in host.binds.unwrap_or_default() {
        let src = b.split(':').next().unwrap_or_default().to_string();
        if src.starts_with('/') && !binds.contains(&src) {
            binds.push(src);
        }
    }
    let status = state.status.map(|s| s.to_string()).filter(|s| !s.is_empty());
    let running = state.running.unwrap_or(false);
    let status = status.unwrap_or_else(|| if running { "running".into() } else { "unknown".into() });
    let health = state.health.and_then(|h| h.status).map(|s| s.to_string()).filter(|s| !s.is_empty() && s != "none");
    let started_unix = state
        .started_at
        .as_deref()
        .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        .map(|t| t.unix_timestamp())
        .filter(|t| *t > 0);
    Some(ContainerInfo {
        id,
        name: r.name.unwrap_or_default().trim_start_matches('/').to_string(),
        service: labels.get(SERVICE_LABEL).cloned().unwrap_or_default(),
        project,
        image_id: r.image.clone().unwrap_or_default(),
        image: config.image.or(r.image).unwrap_or_default(),
        state: status,
        health,
        started_unix,
        restarts: u32::try_from(r.restart_count.unwrap_or(0)).unwrap_or(u32::MAX),
        oom_killed: state.oom_killed.unwrap_or(false),
        networks,
        published,
        network_mode: host.network_mode.unwrap_or_default(),
        privileged: host.privileged.unwrap_or(false),
        binds,
    })
}

/// What one compose service runs (see [`Engine::project_images`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceImage {
    pub service: String,
    /// The reference as configured (`registry:5000/lab/web:stable`).
    pub image: String,
    /// The ID of the image the container was created from (`sha256:…`).
    pub image_id: String,
}

/// `REPO[:TAG]` → (REPO, TAG), `latest` when no tag; a registry port is not a tag (`host:5000/x`). A digest
/// reference (`@sha256:…`) keeps its digest as the "tag" (it cannot be re-pointed; callers skip those).
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((repo, digest)) = reference.split_once('@') {
        return (repo, digest);
    }
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

/// A container of a project and when it last started (see [`Engine::project_starts`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Started {
    pub name: String,
    /// Running or paused now.
    pub running: bool,
    pub started_unix: Option<f64>,
}

/// Docker's RFC 3339 `StartedAt` (nanoseconds) as Unix seconds; `None` for the zero time of a never-started one.
pub(crate) fn precise_unix(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = t.unix_timestamp_nanos() as f64 / 1e9;
    (secs > 0.0).then_some(secs)
}

/// Container actions that change what we report.
fn relevant(action: &str) -> bool {
    matches!(
        action,
        "create" | "start" | "restart" | "die" | "stop" | "kill" | "pause" | "unpause" | "oom" | "rename" | "update"
    ) || action.starts_with("health_status")
}

/// Keeps `live` current from the engine's event stream until `shutdown`: seeds it with every compose container, then
/// applies each event as it arrives. When the engine goes away the state is marked down (with the error) and the
/// watcher reconnects with backoff, reseeding from scratch.
pub(crate) async fn watch(
    live: Arc<Live>,
    socket: PathBuf,
    events_seen: Counter,
    containers: Gauge,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(250);
    loop {
        let session = async {
            let engine = Engine::connect(&socket).await?;
            // Ask for events from a little before the snapshot so nothing falls between the two.
            let since = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
            let mut events = engine.events(since);
            let list = engine.containers().await?;
            let networks = engine.networks().await?;
            live.reset(list, networks, engine.api_version());
            containers.set(live.container_count() as i64);
            tracing::info!(api = engine.api_version(), containers = live.container_count(), "docker engine watched");
            while let Some(ev) = events.next().await {
                let ev = ev?;
                events_seen.inc();
                apply(&engine, &live, ev).await?;
                containers.set(live.container_count() as i64);
            }
            Err::<(), DockerError>(DockerError::Unreachable("the event stream ended".into()))
        };
        tokio::select! {
            _ = &mut stop => return,
            r = session => {
                if let Err(e) = r {
                    let before = live.engine_error();
                    let msg = e.to_string();
                    if before.is_none() {
                        tracing::warn!(error = msg, "docker engine lost; reconnecting");
                        backoff = Duration::from_millis(250);
                    } else if before.as_deref() != Some(msg.as_str()) {
                        // Logged once per distinct reason, not on every retry.
                        tracing::warn!(error = msg, "docker engine unreachable; retrying");
                    }
                    live.set_engine_down(msg);
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn apply(engine: &Engine, live: &Live, ev: EventMessage) -> Result<(), DockerError> {
    let action = ev.action.unwrap_or_default();
    let actor = ev.actor.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    match ev.typ {
        Some(EventMessageTypeEnum::CONTAINER) => {
            let Some(id) = actor.id else { return Ok(()) };
            if !attrs.contains_key(PROJECT_LABEL) && !live.has_container(&id) {
                return Ok(());
            }
            if action == "destroy" {
                live.remove(&id);
            } else if relevant(&action) {
                match engine.inspect(&id).await? {
                    Some(c) => live.upsert(c),
                    None => live.remove(&id),
                }
            }
        }
        Some(EventMessageTypeEnum::NETWORK) => {
            if matches!(action.as_str(), "create" | "destroy") {
                live.set_networks(engine.networks().await?);
            }
            if let Some(id) = attrs.get("container") {
                if live.has_container(id) {
                    match engine.inspect(id).await? {
                        Some(c) => live.upsert(c),
                        None => live.remove(id),
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docker inspect` of a docker-compose 1.29 container on Engine 20.10 (API 1.41): unhealthy health check,
    /// a published port, the Docker socket bind-mounted, two networks.
    const INSPECT: &str = include_str!("../testdata/inspect-compose-v1-api-1.41.json");

    #[test]
    fn inspect_output_of_api_1_41_converts() {
        let all: Vec<ContainerInspectResponse> = serde_json::from_str(INSPECT).unwrap();
        let c = from_inspect(all.into_iter().next().unwrap()).unwrap();
        assert_eq!(c.id, "ea8270b6c2c71ee6faa45134db7a0802dc43ab12eb80145e220c9f593314e342");
        assert_eq!(c.name, "capweb_web_1");
        assert_eq!((c.project.as_str(), c.service.as_str()), ("capweb", "web"));
        assert_eq!(c.image, "strata-test/busybox:1");
        assert!(c.image_id.starts_with("sha256:"), "{}", c.image_id);
        assert_eq!(c.state, "running");
        assert_eq!(c.health.as_deref(), Some("unhealthy"));
        assert_eq!(c.shown_state(), "unhealthy");
        assert_eq!(c.started_unix, Some(1795628947));
        assert_eq!(c.restarts, 0);
        assert_eq!(c.networks, ["capture-hub", "capweb_default"]);
        assert_eq!(c.published, ["127.0.0.1:32768->8080/tcp"]);
        assert_eq!(c.binds, ["/var/run/docker.sock"]);
        assert!(!c.privileged);
        assert_eq!(c.network_mode, "capture-hub");
    }

    #[test]
    fn start_times_keep_their_sub_second_part() {
        let all: Vec<ContainerInspectResponse> = serde_json::from_str(INSPECT).unwrap();
        let at = all[0].state.as_ref().unwrap().started_at.clone().unwrap();
        let t = precise_unix(&at).unwrap();
        assert_eq!(t.floor() as i64, 1795628947, "{at}");
        assert!(t.fract() > 0.0, "{at} has nanoseconds");
        assert_eq!(precise_unix("0001-01-01T00:00:00Z"), None, "never started");
        assert_eq!(precise_unix("garbage"), None);
    }

    #[test]
    fn containers_without_a_project_are_not_ours() {
        let mut all: Vec<ContainerInspectResponse> = serde_json::from_str(INSPECT).unwrap();
        let mut r = all.remove(0);
        r.config.as_mut().unwrap().labels.as_mut().unwrap().remove(PROJECT_LABEL);
        assert_eq!(from_inspect(r), None);
    }

    #[test]
    fn references_split_into_repo_and_tag() {
        for (r, want) in [
            ("127.0.0.1:5000/lab/web:stable", ("127.0.0.1:5000/lab/web", "stable")),
            ("127.0.0.1:5000/lab/web", ("127.0.0.1:5000/lab/web", "latest")),
            ("busybox", ("busybox", "latest")),
            ("strata-test/busybox:1", ("strata-test/busybox", "1")),
            ("x/y@sha256:ab", ("x/y", "sha256:ab")),
        ] {
            assert_eq!(split_reference(r), want, "{r}");
        }
    }

    #[test]
    fn log_chunks_split_into_lines() {
        assert_eq!(split_lines("a\nb\n"), ["a", "b"]);
        assert_eq!(split_lines("one\r\n"), ["one"]);
        assert_eq!(split_lines("partial"), ["partial"]);
        assert!(relevant("health_status: unhealthy") && relevant("die") && !relevant("exec_create: sh"));
    }
}
