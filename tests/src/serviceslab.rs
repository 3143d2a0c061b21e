//! One services test's world, shared by the services test files: a Git repository of compose stacks (a hub and its
//! spokes on a shared network), the services-agent on it, and the cleanup of every container and network it made.
//! Knows the agent's config format and gRPC API; asserts nothing itself (tests do).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{ListServicesRequest, Service, StatusRequest, SyncRequest, SyncResponse};
use tonic::transport::Channel;

use crate::fixtures::docker::{DockerEngine, TestImage, TEST_IMAGE_TAG};
use crate::fixtures::git::GitRepo;
use crate::fixtures::{cmd, unique_suffix};
use crate::harness::{base_config, AgentKind, AgentProc, Pki};

pub const DOMAIN: &str = "svc.test";

pub const HUB_ADDRESS: &str = "10.0.0.20";

/// The compose file of the hub: the only stack publishing a host port; it creates the shared hub network.
pub fn hub_compose(hub_net: &str) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  proxy:\n    image: {TEST_IMAGE_TAG}\n    ports: [\"127.0.0.1::8080\"]\n    \
         networks: [hub]\nnetworks:\n  hub:\n    name: {hub_net}\n"
    )
}

/// A spoke: its own default network plus the hub network; `extra` is added to the service.
pub fn spoke_compose(hub_net: &str, extra: &str) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  web:\n    image: {TEST_IMAGE_TAG}\n    networks: [default, hub]\n{extra}\
         networks:\n  hub:\n    external: true\n    name: {hub_net}\n"
    )
}

/// Removes every container and network of the test's compose projects (and the hub network) on Drop.
pub struct Cleanup {
    pub engine: DockerEngine,
    pub prefix: String,
}

/// True while a process (a `docker-compose up` the killed agent left behind) names one of this test's projects.
pub fn compose_running(prefix: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.flatten().any(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("compose") && cmdline.contains(&format!("{prefix}-"))
    })
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Container names are PROJECT_SERVICE_N and every project of the test starts with the prefix. A deploy the
        // killed agent had started can still be creating containers: remove until none is left and none is coming.
        let name = format!("name={}-", self.prefix);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids = self.engine.docker(["ps", "-aq", "--filter", &name]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            let busy = compose_running(&self.prefix);
            if !ids.is_empty() {
                let _ = self.engine.docker(["rm", "-f", "-v"].into_iter().chain(ids));
            } else if !busy {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("cleanup: gave up waiting for the containers of {} after 60 s", self.prefix);
                break;
            }
            if busy {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        let nets = self.engine.docker(["network", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
        for n in nets.split_whitespace().filter(|n| n.starts_with(&self.prefix)) {
            let _ = self.engine.docker(["network", "rm", n]);
        }
    }
}

/// One test's world: a PKI, an origin repository, a per-test name prefix, and the services-agent (restartable
/// with another set of `[[services]]`).
pub struct Lab {
    pub engine: DockerEngine,
    pub pki: Pki,
    pub origin: GitRepo,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub agent: Option<AgentProc>,
    pub dns_agent: Option<String>,
    /// `[docker] socket`, when not the default.
    pub docker_socket: Option<PathBuf>,
    /// `[stacks] repo` and `credentials_file` instead of the origin's directory.
    pub repo: Option<(String, Option<PathBuf>)>,
    /// Extra environment of the agent (e.g. `RUST_LOG`).
    pub env: Vec<(&'static str, &'static str)>,
    /// Extra keys of one service's `[[services]]` entry, by stack (TOML lines).
    pub service_keys: BTreeMap<String, String>,
    /// Extra tables appended to the config (e.g. `[[notify]]`).
    pub tail: String,
    _cleanup: Cleanup,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let engine = DockerEngine::ensure()?;
        TestImage::build(&engine, TEST_IMAGE_TAG)?;
        cmd::require("docker-compose", "docker-compose")?;
        cmd::require("git", "git")?;
        // Compose project names: lowercase letters, digits, '-' and '_'.
        let prefix = format!("st{}", unique_suffix());
        let dir = tempfile::tempdir()?;
        let origin = GitRepo::init(dir.path().join("origin"))?;
        let cleanup = Cleanup { engine: engine.clone(), prefix: prefix.clone() };
        Ok(Lab {
            engine,
            pki: Pki::new()?,
            origin,
            prefix,
            dir,
            agent: None,
            dns_agent: None,
            docker_socket: None,
            repo: None,
            env: Vec::new(),
            service_keys: BTreeMap::new(),
            tail: String::new(),
            _cleanup: cleanup,
        })
    }

    pub fn name(&self, stack: &str) -> String {
        format!("{}-{stack}", self.prefix)
    }

    pub fn hub_net(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Writes the agent config for these services (`(stack, dns names, allow)`) and (re)starts the agent.
    pub fn start(&mut self, services: &[(&str, &[&str], &[&str])]) -> Result<()> {
        if let Some(mut old) = self.agent.take() {
            old.terminate()?;
        }
        let (cert, key) = self.pki.issue(Role::ServicesAgent, "services1")?;
        let mut text = base_config(&self.dir.path().join("state"), &self.pki.ca(), &cert, &key);
        let (repo, credentials) = self.repo.clone().unwrap_or((self.origin.dir.display().to_string(), None));
        if let Some(file) = credentials {
            text.push_str(&format!("[stacks]\ncredentials_file = {:?}\n", file.display().to_string()));
        } else {
            text.push_str("[stacks]\n");
        }
        text.push_str(&format!(
            "repo = {repo:?}\nbranch = \"main\"\ncheckout_dir = {:?}\npoll = \"1h\"\n\
             [hub]\nstack = {:?}\nnetwork = {:?}\ndomain = \"{DOMAIN}\"\naddress = \"{HUB_ADDRESS}\"\n",
            self.dir.path().join("checkout").display().to_string(),
            self.name("proxy"),
            self.hub_net(),
        ));
        if let Some(socket) = &self.docker_socket {
            text.push_str(&format!("[docker]\nsocket = {:?}\n", socket.display().to_string()));
        }
        if let Some(addr) = &self.dns_agent {
            text.push_str(&format!("[dns]\nagent = {addr:?}\n"));
        }
        for (stack, dns, allow) in services {
            text.push_str(&format!("[[services]]\nname = {:?}\ndns = {dns:?}\nallow = {allow:?}\n", self.name(stack)));
            text.push_str(self.service_keys.get(*stack).map_or("", String::as_str));
        }
        text.push_str(&self.tail);
        let config = self.dir.path().join("services-agent.toml");
        std::fs::write(&config, text)?;
        self.agent = Some(AgentProc::start_with_env(AgentKind::Services, &config, &self.env)?);
        Ok(())
    }

    pub fn agent(&self) -> &AgentProc {
        self.agent.as_ref().expect("agent started")
    }

    pub async fn channel(&self) -> Result<Channel> {
        let admin = self.pki.material(&self.pki.ca(), Role::Admin, "alice")?;
        Ok(admin.connect(&self.agent().url(), Role::ServicesAgent, Duration::from_secs(300)).await?)
    }

    pub async fn client(&self) -> Result<ServicesClient<Channel>> {
        Ok(ServicesClient::new(self.channel().await?))
    }

    pub async fn sync(&self) -> Result<SyncResponse> {
        Ok(self.client().await?.sync(SyncRequest {}).await?.into_inner())
    }

    pub async fn services(&self) -> Result<BTreeMap<String, Service>> {
        let r = self.client().await?.list_services(ListServicesRequest {}).await?.into_inner();
        Ok(r.services.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    pub async fn service(&self, stack: &str) -> Result<Service> {
        let name = self.name(stack);
        self.services().await?.remove(&name).with_context(|| format!("{name} not listed"))
    }

    /// Waits until `probe` holds for the service, returning it.
    pub async fn wait_service(
        &self,
        stack: &str,
        within: Duration,
        probe: impl Fn(&Service) -> bool,
    ) -> Result<Service> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.service(stack).await?;
            if probe(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "service {stack} did not reach the expected state within {within:?}: {s:?}\nagent log:\n{}",
                    self.agent().logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status_summary(&self) -> Result<String> {
        Ok(AgentClient::new(self.channel().await?).status(StatusRequest {}).await?.into_inner().summary)
    }
}

pub fn ids(s: &Service) -> Vec<String> {
    s.containers.iter().map(|c| c.id.clone()).collect()
}

pub fn running(s: &Service) -> bool {
    s.state == "running" && !s.containers.is_empty() && s.containers.iter().all(|c| c.state == "running")
}
