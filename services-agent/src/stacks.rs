//! The stacks engine: syncing the repository and redeploying only the stacks whose resolved configuration (or an
//! image it uses) changed, taking down those that left the config (the `removed` child), lifecycle actions, and the
//! service report built from the live (event-fed) picture. One operation at a time changes stacks;
//! reads never wait for it. Must not know proto/tonic (the `grpc` module converts) nor bollard (that is `docker`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agent_core::cli::Shutdown;
use agent_core::clock::now_unix;
use futures::stream::{BoxStream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::audit;
use crate::compose::{self, Compose, ComposeError};
use crate::config::Config;
use crate::docker::{DockerError, Engine};
use crate::git::{GitError, Repo};
use crate::live::Live;
use crate::model::{ContainerInfo, ContainerRow, LogLine, PlannedService, ServiceRow, SyncReport, Violation};
use crate::store::{Store, StoreError};

mod removed;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StackError {
    #[error("service {0} is not in the config")]
    Unknown(String),
    #[error("stack {stack}: {source}")]
    Git { stack: String, source: GitError },
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stack {stack}: {source}; the running stack was left as it was")]
    Secrets { stack: String, source: crate::secrets::SecretsError },
    #[error("stack {stack}: no directory {stack} in the repository at commit {commit}")]
    NotInRepo { stack: String, commit: String },
    #[error("stack {0}: the stacks repository has not been synced yet")]
    NotSynced(String),
    #[error(
        "stack {stack}: refused before deploy{at}: {}; name the rule in the service's `allow` to permit it \
         (README, \"Trust model\")",
        violations.iter().map(|v| format!("service {} {}: {}", v.container, v.rule, v.detail)).collect::<Vec<_>>().join("; ")
    )]
    Refused { stack: String, at: String, violations: Vec<Violation> },
    #[error("stack {0} was not taken down for leaving the config: only a removed stack is acknowledged")]
    NotRemoved(String),
}

/// `p` with symlinks resolved as far as it exists (the rest appended as written): the path a bind would really
/// mount. A path with a `..` component is taken for `/` (it could climb out of any allowed root).
fn real_path(p: &Path) -> PathBuf {
    if p.components().any(|c| matches!(c, std::path::Component::ParentDir)) || !p.is_absolute() {
        return PathBuf::from("/");
    }
    let (mut existing, mut rest) = (p.to_path_buf(), Vec::new());
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent().map(Path::to_path_buf)) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// The agent's metrics.
#[derive(Clone, Default)]
pub(crate) struct StackMetrics {
    pub syncs: Counter,
    pub sync_failures: Counter,
    pub deploys: Counter,
    pub deploy_failures: Counter,
    pub docker_events: Counter,
    pub containers: Gauge,
}

impl StackMetrics {
    pub(crate) fn register(&self, m: &agent_core::telemetry::Metrics) {
        m.register("services_syncs", "Syncs of the stacks repository", self.syncs.clone());
        m.register(
            "services_sync_failures",
            "Syncs that failed to fetch or read the repository",
            self.sync_failures.clone(),
        );
        m.register("services_deploys", "Stack deploys (compose up) that succeeded", self.deploys.clone());
        m.register("services_deploy_failures", "Stack deploys refused or failed", self.deploy_failures.clone());
        m.register("services_docker_events", "Docker events received", self.docker_events.clone());
        m.register("services_containers", "Compose containers known to the agent", self.containers.clone());
    }
}

pub(crate) struct Stacks {
    /// The running config, swapped whole by a reload; each operation reads one snapshot of it.
    cfg: crate::SharedConfig,
    /// `None` when the config has no `[stacks]`: nothing to sync.
    repo: Option<Repo>,
    store: Store,
    pub live: Arc<Live>,
    compose: tokio::sync::Mutex<Option<Compose>>,
    /// One change at a time (sync, up, down, …).
    ops: tokio::sync::Mutex<()>,
    /// The last repository error (fetch, read), shown on every stack until a sync succeeds.
    repo_error: RwLock<Option<String>>,
    /// Wakes the poller for a sync now (a reload, a webhook) instead of at the next `poll`.
    sync_now: tokio::sync::Notify,
    pub metrics: StackMetrics,
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

impl Stacks {
    pub(crate) fn open(cfg: crate::SharedConfig) -> Result<Stacks, StoreError> {
        let loaded = cfg.load_full();
        let store = Store::open(&loaded.common.state_dir)?;
        let repo = loaded.stacks.as_ref().map(|s| Repo {
            url: s.repo.clone(),
            branch: s.branch.clone(),
            dir: s.checkout_dir.clone(),
            credentials: s.credentials_file.clone(),
        });
        Ok(Stacks {
            cfg,
            repo,
            store,
            live: Arc::new(Live::default()),
            compose: tokio::sync::Mutex::new(None),
            ops: tokio::sync::Mutex::new(()),
            repo_error: RwLock::new(None),
            sync_now: tokio::sync::Notify::new(),
            metrics: StackMetrics::default(),
        })
    }

    /// The running config (one snapshot: a reload during the caller's operation does not change what it reads).
    fn cfg(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    async fn compose(&self) -> Result<Compose, ComposeError> {
        let mut c = self.compose.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let found = Compose::detect(&self.cfg().docker_socket).await?;
        tracing::info!(flavor = ?found.flavor, version = found.version, "compose found");
        *c = Some(found.clone());
        Ok(found)
    }

    fn stack_dir(&self, repo: &Repo, name: &str) -> PathBuf {
        repo.dir.join(name)
    }

    fn known(&self, name: &str) -> Result<(), StackError> {
        match self.cfg().service(name) {
            Some(_) => Ok(()),
            None => Err(StackError::Unknown(name.to_string())),
        }
    }

    /// The deploy gate over what compose would run for `name` (see [`audit::gate`]): refused unless allowed.
    fn gate(&self, repo: &Repo, name: &str, mut plan: Vec<PlannedService>, at: String) -> Result<(), StackError> {
        let cfg = self.cfg();
        let svc = cfg.service(name).ok_or_else(|| StackError::Unknown(name.to_string()))?;
        let roots = audit::GateRoots {
            roots: cfg.stacks.iter().flat_map(|s| s.bind_roots.iter()).map(|r| real_path(r)).collect(),
            stack_dir: real_path(&self.stack_dir(repo, name)),
        };
        for b in plan.iter_mut().flat_map(|p| p.binds.iter_mut()) {
            b.real = real_path(Path::new(&b.source));
        }
        let violations = audit::gate(svc, &plan, &roots);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(StackError::Refused { stack: name.to_string(), at, violations })
        }
    }

    fn set_repo_error(&self, e: Option<String>) {
        *self.repo_error.write().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// Fetches the repository and redeploys the stacks whose directory changed since they were deployed (or that have
    /// no container at all). An invalid compose file is refused before anything is stopped: that stack keeps
    /// running as it was and carries the error. Stacks taken down with `Down` stay down.
    pub(crate) async fn sync(&self) -> SyncReport {
        let _op = self.ops.lock().await;
        let mut report = SyncReport::default();
        let Some(repo) = &self.repo else { return report };
        self.metrics.syncs.inc();
        let fetched = async {
            let commit = repo.sync().await?;
            let trees = repo.trees().await?;
            Ok::<_, GitError>((commit, trees))
        }
        .await;
        let (commit, trees) = match fetched {
            Ok(x) => x,
            Err(e) => {
                self.metrics.sync_failures.inc();
                // Every URL userinfo masked: this text goes to the log and to every caller of ListServices.
                let msg = crate::git::redact_userinfo(&format!("sync: {e}"));
                tracing::warn!(error = msg, "sync failed; running stacks left as they are");
                for s in &self.cfg().services {
                    report.errors.insert(s.name.clone(), msg.clone());
                }
                self.set_repo_error(Some(msg));
                return report;
            }
        };
        self.set_repo_error(None);
        report.commit = commit.clone();
        let compose = match self.compose().await {
            Ok(c) => c,
            Err(e) => {
                for s in &self.cfg().services {
                    if let Err(se) = self.store.set_error(&s.name, &e.to_string()) {
                        tracing::error!(stack = s.name, error = %se, "cannot record the error");
                    }
                    report.errors.insert(s.name.clone(), e.to_string());
                }
                return report;
            }
        };
        // Stacks that left the config or the repository go first (their ports and names are free for the rest).
        self.take_down_leaving(&compose, &commit, &trees, &mut report).await;
        // The stacks whose directory changed first (the hub before them: its network is the spokes'), then the
        // rest: a push deploys the stack it changed without waiting for every other stack's `config` (about 0.3 s
        // each with compose v1).
        let cfg = self.cfg();
        let mut order: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        let hub = cfg.hub.as_ref().map(|h| h.stack.as_str());
        order.sort_by_cached_key(|name| {
            let changed = self.store.get(name).map_or(true, |r| Some(&r.tree) != trees.get(*name));
            (!changed, Some(*name) != hub)
        });
        for name in order {
            let name = &name.to_string();
            match self.sync_stack(&compose, repo, name, &commit, &trees).await {
                Ok(true) => report.redeployed.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.metrics.deploy_failures.inc();
                    let msg = e.to_string();
                    tracing::warn!(stack = name, error = msg, "stack not deployed");
                    if let Err(se) = self.store.set_error(name, &msg) {
                        tracing::error!(stack = name, error = %se, "cannot record the error");
                    }
                    report.errors.insert(name.clone(), msg);
                }
            }
        }
        // Reported in config order, whatever order they were deployed in.
        report.redeployed.sort_by_key(|n| cfg.services.iter().position(|s| &s.name == n));
        tracing::info!(commit = short(&commit), redeployed = ?report.redeployed, errors = report.errors.len(), "sync done");
        report
    }

    /// Deploys one stack when its config hash changed (the resolved config, its profiles, the ids of its images) or
    /// it has no container; `Ok(true)` when it was redeployed. A commit that leaves the resolved config as it was
    /// (a README) touches nothing: the stack stays at the commit it was deployed from.
    async fn sync_stack(
        &self,
        compose: &Compose,
        repo: &Repo,
        name: &str,
        commit: &str,
        trees: &BTreeMap<String, String>,
    ) -> Result<bool, StackError> {
        let rec = self.store.get(name)?;
        if !rec.wanted {
            return Ok(false);
        }
        let tree = trees
            .get(name)
            .ok_or_else(|| StackError::NotInRepo { stack: name.to_string(), commit: short(commit).to_string() })?;
        let project = self.project(repo, name)?;
        let running = !self.live.project(name).is_empty() || !self.live.seeded();
        let kept = format!(" (commit {}; the running stack was left as it was)", short(commit));
        let resolved = compose.validate(&project).await.map_err(|e| match e {
            ComposeError::Invalid { stack, message } => {
                ComposeError::Invalid { stack, message: format!("{message}{kept}") }
            }
            other => other,
        })?;
        let hash = self.config_hash(name, &project, &resolved).await?;
        // A record from before config hashes: the tree decided then, and still does once.
        let adopted = rec.config_hash.is_empty() && rec.tree == *tree && !rec.commit.is_empty();
        if running && (rec.config_hash == hash || adopted) {
            if rec.config_hash != hash {
                self.store.set_config_hash(name, &hash)?;
            }
            if !rec.error.is_empty() {
                self.store.set_error(name, "")?;
            }
            return Ok(false);
        }
        self.gate(repo, name, resolved.plan.clone(), kept)?;
        compose.up(&project).await?;
        self.store.set_deployed(name, commit, tree)?;
        // Images pulled or built by `up` have ids now: the hash of what runs.
        self.store.set_config_hash(name, &self.config_hash(name, &project, &resolved).await?)?;
        self.metrics.deploys.inc();
        tracing::info!(stack = name, commit = short(commit), "stack deployed");
        Ok(true)
    }

    /// Records the config hash of what `project` runs now (after an image update or its rollback changed the image
    /// ids outside a sync), so that the next sync does not take the update for a change to deploy. The caller holds
    /// the stack's change lock ([`Stacks::for_update`]).
    pub(crate) async fn record_hash(&self, compose: &Compose, project: &compose::Project) -> Result<(), StackError> {
        let resolved = compose.validate(project).await?;
        let hash = self.config_hash(&project.name, project, &resolved).await?;
        self.store.set_config_hash(&project.name, &hash)?;
        Ok(())
    }

    /// The config hash of `resolved` as `project` runs it, with the ids of its images as the engine has them now.
    async fn config_hash(
        &self,
        name: &str,
        project: &compose::Project,
        resolved: &compose::Resolved,
    ) -> Result<String, StackError> {
        let images: Vec<String> = resolved
            .images
            .iter()
            .map(|(service, image)| if image.is_empty() { format!("{name}_{service}") } else { image.clone() })
            .collect();
        let ids = Engine::connect(&self.cfg().docker_socket).await?.image_ids(&images).await?;
        Ok(compose::config_hash(resolved, &project.profiles, &ids))
    }

    /// How compose runs a configured stack of the checkout: its directory, its `files` (each must exist) or the one
    /// file compose discovers, its env file, profiles and secrets (mode-checked, read now).
    fn project(&self, repo: &Repo, name: &str) -> Result<compose::Project, StackError> {
        let cfg = self.cfg();
        let svc = cfg.service(name).ok_or_else(|| StackError::Unknown(name.to_string()))?;
        let dir = self.stack_dir(repo, name);
        let c = &svc.compose;
        let exists = |key: &'static str, rel: &Path| {
            let p = dir.join(rel);
            match p.is_file() {
                true => Ok(p),
                false => Err(ComposeError::MissingFile { stack: name.into(), key, path: rel.to_path_buf() }),
            }
        };
        let files = c.files.iter().map(|f| exists("files", f)).collect::<Result<Vec<_>, _>>()?;
        if files.is_empty() {
            compose::find_file(name, &dir)?;
        }
        let env_file = c.env_file.as_deref().map(|f| exists("env_files", f)).transpose()?;
        let secrets = match &c.secrets_dir {
            Some(d) => crate::secrets::read(d).map_err(|source| StackError::Secrets { stack: name.into(), source })?,
            None => Vec::new(),
        };
        Ok(compose::Project { name: name.into(), dir, files, env_file, profiles: c.profiles.clone(), secrets })
    }

    /// The project of a configured stack in the checkout.
    fn file(&self, name: &str) -> Result<(&Repo, compose::Project), StackError> {
        self.known(name)?;
        let repo = self.repo.as_ref().ok_or_else(|| StackError::NotSynced(name.to_string()))?;
        if !repo.dir.join(".git").is_dir() {
            return Err(StackError::NotSynced(name.to_string()));
        }
        Ok((repo, self.project(repo, name)?))
    }

    /// What an image update of `name` needs: the stack's change lock (no sync or lifecycle action meanwhile), the
    /// compose program and the stack's compose project.
    pub(crate) async fn for_update(
        &self,
        name: &str,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Compose, compose::Project), StackError> {
        let op = self.ops.lock().await;
        let (_, project) = self.file(name)?;
        Ok((op, self.compose().await?, project))
    }

    /// Validates and deploys the stack from the checkout; it stays wanted up.
    pub(crate) async fn up(&self, name: &str) -> Result<String, StackError> {
        let _op = self.ops.lock().await;
        let compose = self.compose().await?;
        let outcome = async {
            let (repo, project) = self.file(name)?;
            let resolved = compose.validate(&project).await?;
            self.gate(repo, name, resolved.plan.clone(), String::new())?;
            compose.up(&project).await?;
            self.config_hash(name, &project, &resolved).await
        }
        .await;
        let hash = match outcome {
            Ok(h) => h,
            Err(e) => {
                self.store.set_error(name, &e.to_string())?;
                return Err(e);
            }
        };
        let repo = self.repo.as_ref().ok_or_else(|| StackError::NotSynced(name.to_string()))?;
        self.store.set_wanted(name, true)?;
        let commit = repo.head().await.map_err(|source| StackError::Git { stack: name.into(), source })?;
        let trees = repo.trees().await.map_err(|source| StackError::Git { stack: name.into(), source })?;
        self.store.set_deployed(name, &commit, trees.get(name).map_or("", |t| t.as_str()))?;
        self.store.set_config_hash(name, &hash)?;
        Ok(format!("{name} is up at commit {}", short(&commit)))
    }

    /// Stops and removes the stack's containers (volumes stay); sync leaves it down until `Up`.
    pub(crate) async fn down(&self, name: &str) -> Result<String, StackError> {
        let _op = self.ops.lock().await;
        let (_, project) = self.file(name)?;
        self.compose().await?.down(&project).await?;
        self.store.set_wanted(name, false)?;
        Ok(format!("{name} is down"))
    }

    pub(crate) async fn restart(&self, name: &str) -> Result<String, StackError> {
        let _op = self.ops.lock().await;
        let (_, project) = self.file(name)?;
        self.compose().await?.restart(&project).await?;
        Ok(format!("{name} restarted"))
    }

    pub(crate) async fn pause(&self, name: &str) -> Result<String, StackError> {
        let _op = self.ops.lock().await;
        let (_, project) = self.file(name)?;
        self.compose().await?.pause(&project).await?;
        Ok(format!("{name} paused"))
    }

    pub(crate) async fn unpause(&self, name: &str) -> Result<String, StackError> {
        let _op = self.ops.lock().await;
        let (_, project) = self.file(name)?;
        self.compose().await?.unpause(&project).await?;
        Ok(format!("{name} unpaused"))
    }

    /// The logs of every container of the stack, merged as they come.
    pub(crate) async fn logs(
        &self,
        name: &str,
        follow: bool,
        tail: u32,
    ) -> Result<BoxStream<'static, Result<LogLine, DockerError>>, StackError> {
        self.known(name)?;
        let engine = Engine::connect(&self.cfg().docker_socket).await?;
        let streams: Vec<_> = self.live.project(name).iter().map(|c| engine.logs(&c.name, follow, tail)).collect();
        Ok(futures::stream::select_all(streams).boxed())
    }

    /// The hub-and-spoke audit of the configured stacks, from the live picture.
    pub(crate) fn audit(&self) -> Vec<Violation> {
        let Some(hub) = &self.cfg().hub else { return Vec::new() };
        let (containers, networks) = self.live.snapshot();
        audit::audit(&self.cfg().services, hub, &containers, &networks)
    }

    /// One row per configured service, from memory (no Docker call).
    pub(crate) fn list(&self) -> Vec<ServiceRow> {
        let now = now_unix();
        let engine_error = self.live.engine_error();
        let repo_error = self.repo_error.read().unwrap_or_else(|e| e.into_inner()).clone();
        let removed = self.removed_names();
        let mut rows: Vec<ServiceRow> = self
            .cfg()
            .services
            .iter()
            .map(|svc| {
                let rec = self.store.get(&svc.name);
                let (commit, wanted, stack_error, config_hash) = match &rec {
                    Ok(r) => (r.commit.clone(), r.wanted, r.error.clone(), r.config_hash.clone()),
                    Err(e) => (String::new(), true, e.to_string(), String::new()),
                };
                let containers = self.live.project(&svc.name);
                let errors: Vec<String> = [repo_error.clone(), Some(stack_error), engine_error.clone()]
                    .into_iter()
                    .flatten()
                    .filter(|e| !e.is_empty())
                    .collect();
                let (mut state, health) = aggregate(&containers, wanted, !commit.is_empty(), engine_error.is_some());
                if removed.contains(&svc.name) {
                    state = removed::REMOVED.to_string();
                }
                ServiceRow {
                    name: svc.name.clone(),
                    state,
                    health,
                    deployed_commit: commit,
                    config_hash,
                    error: errors.join("; "),
                    containers: containers.iter().map(|c| row(c, now)).collect(),
                }
            })
            .collect();
        rows.extend(self.unlisted_rows());
        rows
    }

    /// The one-line summary of `Agent/Status`.
    pub(crate) fn summary(&self) -> String {
        let rows = self.list();
        let running = rows.iter().filter(|r| r.state == "running").count();
        let failing: Vec<&str> = rows.iter().filter(|r| !r.error.is_empty()).map(|r| r.name.as_str()).collect();
        let containers: usize = rows.iter().map(|r| r.containers.len()).sum();
        let violations = self.audit().len();
        let mut s = format!(
            "{} stacks ({running} running), {containers} containers, {violations} audit violations",
            rows.len()
        );
        if !failing.is_empty() {
            s.push_str(&format!(", errors in {}", failing.join(" ")));
        }
        if let Some(e) = self.live.engine_error() {
            s.push_str(&format!("; {e}"));
        }
        s
    }

    /// The stacks' part of `Agent/Status`: the summary, and a reason for the engine not answering, the stacks
    /// repository failing, and each wanted stack that is not running or whose last sync or deploy failed.
    pub(crate) fn health(&self, h: &mut agent_core::health::Health) {
        h.summary(self.summary());
        if let Some(e) = self.live.engine_error() {
            h.degraded(docker_reason(&self.cfg().docker_socket, &e));
            // Every stack's state is unknown: one reason says why.
            return;
        }
        if self.cfg().stacks.is_none() {
            return;
        }
        if let Some(e) = self.repo_error.read().unwrap_or_else(|e| e.into_inner()).clone() {
            h.degraded(format!("stacks repository: {e}"));
        }
        for svc in &self.cfg().services {
            let (wanted, deployed, error) = match self.store.get(&svc.name) {
                Ok(r) => (r.wanted, !r.commit.is_empty(), r.error),
                Err(e) => (true, false, e.to_string()),
            };
            let (state, _) = aggregate(&self.live.project(&svc.name), wanted, deployed, false);
            if let Some(r) = stack_reason(&svc.name, &state, wanted, &error) {
                h.degraded(r);
            }
        }
    }

    /// Asks the poller for a sync now; requests made while a sync runs are served by one more sync after it.
    pub(crate) fn request_sync(&self) {
        self.sync_now.notify_one();
    }

    /// Syncs now and then every `[stacks] poll` (or at once when [`Stacks::request_sync`] asks) until `shutdown`.
    pub(crate) async fn poll(self: Arc<Self>, shutdown: Shutdown) {
        let Some(every) = self.cfg().stacks.as_ref().map(|s| s.poll) else { return };
        let stop = shutdown.wait();
        tokio::pin!(stop);
        // Let the watcher take its first snapshot so "no containers" is not mistaken for "engine not read yet".
        for _ in 0..50 {
            if self.live.seeded() {
                break;
            }
            tokio::select! { _ = &mut stop => return, _ = tokio::time::sleep(Duration::from_millis(100)) => {} }
        }
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = self.sync() => {}
            }
            // Also sync when the engine comes back: a deploy refused while it was away is retried at once.
            tokio::select! {
                _ = &mut stop => return,
                // The running config's interval: a reload changes it from the next wait on.
                _ = tokio::time::sleep(self.cfg().stacks.as_ref().map_or(every, |s| s.poll)) => {}
                _ = self.live.reconnected() => tracing::info!("docker engine back: syncing"),
                _ = self.sync_now.notified() => tracing::info!("sync requested"),
            }
        }
    }
}

fn row(c: &ContainerInfo, now: i64) -> ContainerRow {
    let up = c.state == "running" || c.state == "paused";
    ContainerRow {
        name: c.name.clone(),
        id: c.id.clone(),
        image: c.image.clone(),
        image_digest: c.image_id.clone(),
        state: c.shown_state().to_string(),
        health: c.health.clone().unwrap_or_else(|| "none".into()),
        uptime_seconds: match (up, c.started_unix) {
            (true, Some(t)) => u64::try_from(now - t).unwrap_or(0),
            _ => 0,
        },
        restarts: c.restarts,
    }
}

/// The state and health of a service from its containers.
pub(crate) fn aggregate(
    containers: &[ContainerInfo],
    wanted: bool,
    deployed: bool,
    engine_down: bool,
) -> (String, String) {
    let health = if containers.iter().any(|c| c.health.as_deref() == Some("unhealthy")) {
        "unhealthy"
    } else if containers.iter().any(|c| c.health.as_deref() == Some("starting")) {
        "starting"
    } else if containers.iter().any(|c| c.health.is_some()) {
        "healthy"
    } else {
        "none"
    };
    let state = if engine_down {
        "unknown"
    } else if containers.is_empty() {
        match (wanted, deployed) {
            (false, _) => "down",
            (true, false) => "not deployed",
            (true, true) => "missing",
        }
    } else {
        let states: Vec<&str> = containers.iter().map(|c| c.shown_state()).collect();
        if states.contains(&"unhealthy") {
            "unhealthy"
        } else if states.iter().all(|s| *s == "running") {
            "running"
        } else if states.iter().all(|s| *s == "running" || *s == "starting") {
            "starting"
        } else if states.iter().all(|s| *s == "paused") {
            "paused"
        } else if states.iter().all(|s| matches!(*s, "exited" | "dead" | "created" | "oom-killed")) {
            "stopped"
        } else {
            "degraded"
        }
    };
    (state.to_string(), health.to_string())
}

/// The reason the agent is degraded when the engine at `socket` does not answer (`error` as the watcher keeps it).
pub(crate) fn docker_reason(socket: &Path, error: &str) -> String {
    let error = error.strip_prefix("docker engine unreachable: ").unwrap_or(error);
    format!("docker: cannot reach the engine at {}: {error}", socket.display())
}

/// Why stack `name` makes the agent degraded, if it does: wanted but not running (paused counts as running: the
/// operator or a backup paused it), or its last sync or deploy failed (`error`, empty when none).
pub(crate) fn stack_reason(name: &str, state: &str, wanted: bool, error: &str) -> Option<String> {
    let up = matches!(state, "running" | "starting" | "paused");
    match (wanted && !up, error.is_empty()) {
        (true, true) => Some(format!("stack {name}: {state}")),
        (true, false) => Some(format!("stack {name}: {state}: {error}")),
        (false, false) => Some(format!("stack {name}: {error}")),
        (false, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example's compose keys, as the stack's project will use them.
    #[test]
    fn the_example_config_names_compose_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/services-agent.toml");
        let cfg = Config::load(&path).unwrap();
        let c = &cfg.service("wiki").unwrap().compose;
        assert_eq!(c.files, [PathBuf::from("compose.yaml"), PathBuf::from("compose.prod.yaml")]);
        assert_eq!(
            (c.env_file.as_deref(), c.profiles.as_slice()),
            (Some(Path::new("prod.env")), &["search".into()][..])
        );
        assert_eq!(c.secrets_dir.as_deref(), Some(Path::new("/etc/strata/stack-secrets/wiki")));
        assert_eq!(cfg.service("photos").unwrap().compose, Default::default(), "compose's own discovery");
    }

    #[test]
    fn a_stack_degrades_the_agent_when_wanted_and_not_up_or_failing() {
        assert_eq!(stack_reason("web", "running", true, ""), None);
        assert_eq!(stack_reason("web", "paused", true, ""), None);
        assert_eq!(stack_reason("web", "down", false, ""), None, "stopped by the operator");
        assert_eq!(stack_reason("web", "missing", true, "").as_deref(), Some("stack web: missing"));
        assert_eq!(
            stack_reason("web", "not deployed", true, "no compose file").as_deref(),
            Some("stack web: not deployed: no compose file")
        );
        assert_eq!(
            stack_reason("web", "running", true, "invalid compose file").as_deref(),
            Some("stack web: invalid compose file"),
            "still running the old commit, but the new one failed"
        );
        assert_eq!(
            docker_reason(Path::new("/run/d.sock"), "docker engine unreachable: no such file"),
            "docker: cannot reach the engine at /run/d.sock: no such file"
        );
    }

    fn c(state: &str, health: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: "id".into(),
            name: "n".into(),
            project: "p".into(),
            service: "web".into(),
            image: "img".into(),
            state: state.into(),
            health: health.map(String::from),
            started_unix: Some(100),
            restarts: 2,
            ..Default::default()
        }
    }

    fn agg(cs: &[ContainerInfo]) -> (String, String) {
        aggregate(cs, true, true, false)
    }

    #[test]
    fn an_unhealthy_container_is_never_just_running() {
        assert_eq!(
            agg(&[c("running", Some("unhealthy")), c("running", None)]),
            ("unhealthy".into(), "unhealthy".into())
        );
        assert_eq!(agg(&[c("running", Some("healthy")), c("running", None)]), ("running".into(), "healthy".into()));
        assert_eq!(agg(&[c("running", None)]), ("running".into(), "none".into()));
        assert_eq!(agg(&[c("running", Some("starting"))]).0, "starting");
        assert_eq!(agg(&[c("running", None), c("exited", None)]).0, "degraded");
        assert_eq!(agg(&[c("paused", None)]).0, "paused");
        assert_eq!(agg(&[c("exited", None)]).0, "stopped");
        let mut oom = c("exited", None);
        oom.oom_killed = true;
        assert_eq!(oom.shown_state(), "oom-killed");
        assert_eq!(agg(&[oom]).0, "stopped");
        assert_eq!(aggregate(&[], true, false, false).0, "not deployed");
        assert_eq!(aggregate(&[], false, true, false).0, "down");
        assert_eq!(aggregate(&[], true, true, false).0, "missing");
        assert_eq!(aggregate(&[c("running", None)], true, true, true).0, "unknown");
        let r = row(&c("running", Some("unhealthy")), 160);
        assert_eq!((r.state.as_str(), r.uptime_seconds, r.restarts), ("unhealthy", 60, 2));
        assert_eq!(row(&c("exited", None), 160).uptime_seconds, 0);
    }
}
