//! The services-agent end to end: the real binary driving a real dockerd through docker-compose, stacks from a real
//! local Git repository with real commits, images built FROM scratch (busybox-static), names registered in a real
//! dns-agent and answered by `dig`. Knows the agent's config format and gRPC API; nothing of its internals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{
    AuditRequest, ListServicesRequest, LogsRequest, Service, ServiceRef, StatusRequest, SyncRequest, SyncResponse,
};
use strata_tests::fixtures::docker::{DockerEngine, TestImage, DOCKER_SOCKET, TEST_IMAGE_TAG};
use strata_tests::fixtures::git::GitRepo;
use strata_tests::fixtures::{cmd, unique_suffix};
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use tonic::transport::Channel;

const DOMAIN: &str = "svc.test";
const HUB_ADDRESS: &str = "10.0.0.20";

/// The compose file of the hub: the only stack publishing a host port; it creates the shared hub network.
fn hub_compose(hub_net: &str) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  proxy:\n    image: {TEST_IMAGE_TAG}\n    ports: [\"127.0.0.1::8080\"]\n    \
         networks: [hub]\nnetworks:\n  hub:\n    name: {hub_net}\n"
    )
}

/// A spoke: its own default network plus the hub network; `extra` is added to the service.
fn spoke_compose(hub_net: &str, extra: &str) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  web:\n    image: {TEST_IMAGE_TAG}\n    networks: [default, hub]\n{extra}\
         networks:\n  hub:\n    external: true\n    name: {hub_net}\n"
    )
}

/// Removes every container and network of the test's compose projects (and the hub network) on Drop.
struct Cleanup {
    engine: DockerEngine,
    prefix: String,
}

/// True while a process (a `docker-compose up` the killed agent left behind) names one of this test's projects.
fn compose_running(prefix: &str) -> bool {
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
struct Lab {
    engine: DockerEngine,
    pki: Pki,
    origin: GitRepo,
    prefix: String,
    dir: tempfile::TempDir,
    agent: Option<AgentProc>,
    dns_agent: Option<String>,
    /// `[docker] socket`, when not the default.
    docker_socket: Option<PathBuf>,
    /// `[stacks] repo` and `credentials_file` instead of the origin's directory.
    repo: Option<(String, Option<PathBuf>)>,
    /// Extra environment of the agent (e.g. `RUST_LOG`).
    env: Vec<(&'static str, &'static str)>,
    _cleanup: Cleanup,
}

impl Lab {
    fn new() -> Result<Lab> {
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
            _cleanup: cleanup,
        })
    }

    fn name(&self, stack: &str) -> String {
        format!("{}-{stack}", self.prefix)
    }

    fn hub_net(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Writes the agent config for these services (`(stack, dns names, allow)`) and (re)starts the agent.
    fn start(&mut self, services: &[(&str, &[&str], &[&str])]) -> Result<()> {
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
        }
        let config = self.dir.path().join("services-agent.toml");
        std::fs::write(&config, text)?;
        self.agent = Some(AgentProc::start_with_env(AgentKind::Services, &config, &self.env)?);
        Ok(())
    }

    fn agent(&self) -> &AgentProc {
        self.agent.as_ref().expect("agent started")
    }

    async fn channel(&self) -> Result<Channel> {
        let admin = self.pki.material(&self.pki.ca(), Role::Admin, "alice")?;
        Ok(admin.connect(&self.agent().url(), Role::ServicesAgent, Duration::from_secs(300)).await?)
    }

    async fn client(&self) -> Result<ServicesClient<Channel>> {
        Ok(ServicesClient::new(self.channel().await?))
    }

    async fn sync(&self) -> Result<SyncResponse> {
        Ok(self.client().await?.sync(SyncRequest {}).await?.into_inner())
    }

    async fn services(&self) -> Result<BTreeMap<String, Service>> {
        let r = self.client().await?.list_services(ListServicesRequest {}).await?.into_inner();
        Ok(r.services.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    async fn service(&self, stack: &str) -> Result<Service> {
        let name = self.name(stack);
        self.services().await?.remove(&name).with_context(|| format!("{name} not listed"))
    }

    /// Waits until `probe` holds for the service, returning it.
    async fn wait_service(&self, stack: &str, within: Duration, probe: impl Fn(&Service) -> bool) -> Result<Service> {
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

    async fn status_summary(&self) -> Result<String> {
        Ok(AgentClient::new(self.channel().await?).status(StatusRequest {}).await?.into_inner().summary)
    }
}

fn ids(s: &Service) -> Vec<String> {
    s.containers.iter().map(|c| c.id.clone()).collect()
}

fn running(s: &Service) -> bool {
    s.state == "running" && !s.containers.is_empty() && s.containers.iter().all(|c| c.state == "running")
}

#[tokio::test(flavor = "multi_thread")]
async fn git_sync_redeploys_only_changed_stacks_and_refuses_invalid_compose_files() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, ""))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("b")), &spoke_compose(&hub, ""))?;
    lab.origin.write(&format!("{}/README", lab.name("nofile")), "no compose file here\n")?;
    let first = lab.origin.commit("hub and two spokes")?;
    lab.start(&[("a", &[], &[]), ("b", &[], &[]), ("nofile", &[], &[]), ("absent", &[], &[])])?;

    // The agent also syncs once at start: whichever sync came first deployed the three stacks.
    let r = lab.sync().await?;
    assert_eq!(r.commit, first);
    let nofile = r.errors.get(&lab.name("nofile")).context("the stack without a compose file has an error")?;
    assert!(nofile.contains("no compose file"), "{nofile}");
    let absent = r.errors.get(&lab.name("absent")).context("the stack missing from the repository has an error")?;
    assert!(absent.contains(&format!("no directory {} in the repository", lab.name("absent"))), "{absent}");
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    for stack in ["proxy", "a", "b"] {
        let s = lab.wait_service(stack, Duration::from_secs(10), running).await?;
        assert_eq!(s.deployed_commit, first, "{stack}");
        assert_eq!(s.error, "", "{stack}");
        assert_eq!(s.containers[0].image, TEST_IMAGE_TAG);
    }
    let listed = lab.service("nofile").await?;
    assert!(listed.error.contains("no compose file"), "{listed:?}");
    assert_eq!(listed.state, "not deployed");
    let a_ids = ids(&lab.service("a").await?);
    let b_ids = ids(&lab.service("b").await?);

    // A sync with nothing new redeploys nothing.
    assert!(lab.sync().await?.redeployed.is_empty());

    // A change to b only.
    lab.origin.write(
        &format!("{}/docker-compose.yml", lab.name("b")),
        &spoke_compose(&hub, "    environment: [\"REVISION=2\"]\n"),
    )?;
    let second = lab.origin.commit("b: revision 2")?;
    let r = lab.sync().await?;
    assert_eq!((r.commit.as_str(), r.redeployed.clone()), (second.as_str(), vec![lab.name("b")]));
    let a = lab.wait_service("a", Duration::from_secs(10), running).await?;
    let b = lab.wait_service("b", Duration::from_secs(10), |s| running(s) && ids(s) != b_ids).await?;
    assert_eq!(ids(&a), a_ids, "a was not touched");
    assert_eq!(a.deployed_commit, first);
    assert_eq!(b.deployed_commit, second);

    // An invalid compose file for a: refused by `config`, a keeps running untouched, the error is listed.
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, "    ports: 12\n"))?;
    lab.origin.commit("a: broken")?;
    let r = lab.sync().await?;
    assert!(r.redeployed.is_empty(), "{:?}", r.redeployed);
    let err = r.errors.get(&lab.name("a")).context("a has an error")?;
    assert!(err.contains("invalid compose file") && err.contains("ports"), "{err}");
    let a = lab.service("a").await?;
    assert!(running(&a), "{a:?}");
    assert_eq!(ids(&a), a_ids, "the running stack stays as it was");
    assert_eq!(a.deployed_commit, first);
    assert!(a.error.contains("invalid compose file"), "{a:?}");
    let summary = lab.status_summary().await?;
    assert!(summary.contains(&format!("errors in {}", lab.name("a"))), "{summary}");
    // The operator sees it in `labctl services ls` (the real binary, table and JSON).
    let (cert, key) = lab.pki.issue(Role::Admin, "alice")?;
    let inventory = lab.dir.path().join("labctl.toml");
    strata_tests::harness::write_inventory(&inventory, &lab.pki.ca(), &cert, &key, &[lab.agent()])?;
    let labctl = strata_tests::harness::bin("labctl")?;
    for json in [false, true] {
        let mut cmd = std::process::Command::new(&labctl);
        cmd.arg("--config").arg(&inventory);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.args(["services", "ls"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&lab.name("a")) && text.contains("invalid compose file"), "json={json}: {text}");
    }
    // Issue 18: the error is one line of the table however long the compose output; `-v` prints it whole below.
    eprintln!("stack a's error: {:?}", a.error);
    for verbose in [false, true] {
        let mut cmd = std::process::Command::new(&labctl);
        cmd.arg("--config").arg(&inventory).args(["services", "ls"]);
        if verbose {
            cmd.arg("-v");
        }
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let row = text.lines().find(|l| l.starts_with(&lab.name("a"))).unwrap_or_default();
        assert!(row.contains("invalid compose file") && row.chars().count() < 200, "verbose={verbose}: {text}");
        let whole = a.error.lines().map(str::trim).filter(|l| !l.is_empty()).all(|l| text.contains(l));
        assert_eq!(
            whole,
            verbose || !a.error.trim().contains('\n') && a.error.trim().chars().count() <= 80,
            "verbose={verbose}: {text}"
        );
    }
    let metrics = lab.agent().metrics_text()?;
    for m in ["strata_services_deploys_total 4", "strata_services_deploy_failures_total", "strata_services_syncs_total"]
    {
        assert!(metrics.contains(m), "{m} in {metrics}");
    }

    // Reverting a to the deployed content clears its error without a redeploy.
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, ""))?;
    lab.origin.commit("a: fixed")?;
    let r = lab.sync().await?;
    assert!(r.redeployed.is_empty() && !r.errors.contains_key(&lab.name("a")), "{r:?}");
    let a = lab.service("a").await?;
    assert_eq!((a.error.as_str(), ids(&a)), ("", a_ids));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_flags_foreign_networks_published_ports_and_the_docker_socket() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    let a_net = format!("{}_default", lab.name("a"));
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, ""))?;
    let joins_a = format!(
        "version: \"3.7\"\nservices:\n  web:\n    image: {TEST_IMAGE_TAG}\n    networks: [hub, a]\nnetworks:\n  \
         hub:\n    external: true\n    name: {hub}\n  a:\n    external: true\n    name: {a_net}\n"
    );
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("joins")), &joins_a)?;
    lab.origin.write(
        &format!("{}/docker-compose.yml", lab.name("ports")),
        &spoke_compose(&hub, "    ports: [\"127.0.0.1::8080\"]\n"),
    )?;
    let socket = "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock:ro\"]\n";
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("sock")), &spoke_compose(&hub, socket))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("allowed")), &spoke_compose(&hub, socket))?;
    lab.origin.commit("a correct layout and three bad spokes")?;

    // The correct layout alone: clean.
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{:?}", r.errors);
    lab.wait_service("a", Duration::from_secs(10), running).await?;
    let v = lab.client().await?.audit(AuditRequest {}).await?.into_inner().violations;
    assert!(v.is_empty(), "a correct layout is clean: {v:?}");
    assert!(lab.status_summary().await?.contains("0 audit violations"));

    // The bad spokes join (and one that mounts the socket with an exception). The socket without one never
    // deploys: the deploy gate refuses it before `up`.
    lab.start(&[
        ("a", &[], &[]),
        ("joins", &[], &[]),
        ("ports", &[], &[]),
        ("sock", &[], &[]),
        ("allowed", &[], &["docker-socket"]),
    ])?;
    let r = lab.sync().await?;
    assert_eq!(r.errors.keys().collect::<Vec<_>>(), [&lab.name("sock")], "{:?}", r.errors);
    let refused = &r.errors[&lab.name("sock")];
    assert!(refused.contains("refused before deploy") && refused.contains("docker-socket"), "{refused}");
    assert_eq!(lab.service("sock").await?.state, "not deployed");
    for s in ["joins", "ports", "allowed"] {
        lab.wait_service(s, Duration::from_secs(10), running).await?;
    }
    let v = lab.client().await?.audit(AuditRequest {}).await?.into_inner().violations;
    let got: Vec<(String, String)> = v.iter().map(|v| (v.container.clone(), v.rule.clone())).collect();
    assert_eq!(
        got,
        [
            (format!("{}_web_1", lab.name("joins")), "foreign-network".to_string()),
            (format!("{}_web_1", lab.name("ports")), "published-port".to_string()),
        ],
        "{v:#?}"
    );
    assert!(v[0].detail.contains(&a_net), "{}", v[0].detail);
    assert!(lab.status_summary().await?.contains("2 audit violations"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_events_reach_status_within_a_second_and_lifecycle_rpcs_work() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let chatty = "    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; echo hello-from-chatty; \
                  while true; do echo tick; sleep 0.2; done\"]\n";
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("chatty")), &spoke_compose(&hub, chatty))?;
    let sick = "    healthcheck:\n      test: [\"CMD\", \"false\"]\n      interval: 1s\n      retries: 1\n";
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("sick")), &spoke_compose(&hub, sick))?;
    lab.origin.commit("stacks")?;
    lab.start(&[("chatty", &[], &[]), ("sick", &[], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{:?}", r.errors);
    let chatty_svc = lab.wait_service("chatty", Duration::from_secs(10), running).await?;

    // An unhealthy container is shown as unhealthy, never as just running.
    let s = lab.wait_service("sick", Duration::from_secs(20), |s| s.state == "unhealthy").await?;
    assert_eq!((s.health.as_str(), s.containers[0].state.as_str()), ("unhealthy", "unhealthy"));

    // docker kill: the die event reaches ListServices within a second.
    let victim = chatty_svc.containers[0].name.clone();
    lab.engine.docker(["kill", &victim])?;
    let killed = Instant::now();
    let s = lab
        .wait_service("chatty", Duration::from_secs(5), |s| s.containers.iter().any(|c| c.state == "exited"))
        .await?;
    let seen = killed.elapsed();
    assert!(seen < Duration::from_secs(1), "the kill was seen after {seen:?}");
    assert_eq!(s.state, "stopped");

    // Lifecycle: up, logs (with and without follow), pause, unpause, restart, down (and sync keeps it down), up.
    let mut c = lab.client().await?;
    let chatty_name = lab.name("chatty");
    let r = |n: &str| ServiceRef { name: n.to_string() };
    c.up(r(&chatty_name)).await?;
    lab.wait_service("chatty", Duration::from_secs(10), running).await?;
    let mut logs = c.logs(LogsRequest { name: chatty_name.clone(), follow: false, tail: 0 }).await?.into_inner();
    let mut lines = Vec::new();
    while let Some(l) = logs.message().await? {
        lines.push(l.line);
    }
    assert!(lines.iter().any(|l| l == "hello-from-chatty"), "{lines:?}");
    let mut follow = c.logs(LogsRequest { name: chatty_name.clone(), follow: true, tail: 1 }).await?.into_inner();
    let mut ticks = 0;
    while ticks < 3 {
        let l = tokio::time::timeout(Duration::from_secs(5), follow.message()).await??.context("stream ended")?;
        assert_eq!(l.container, victim);
        ticks += usize::from(l.line == "tick");
    }
    drop(follow);
    c.pause(r(&chatty_name)).await?;
    lab.wait_service("chatty", Duration::from_secs(5), |s| s.state == "paused").await?;
    c.unpause(r(&chatty_name)).await?;
    lab.wait_service("chatty", Duration::from_secs(5), running).await?;
    c.restart(r(&chatty_name)).await?;
    lab.wait_service("chatty", Duration::from_secs(10), running).await?;
    c.down(r(&chatty_name)).await?;
    lab.wait_service("chatty", Duration::from_secs(5), |s| s.state == "down" && s.containers.is_empty()).await?;
    assert!(lab.sync().await?.redeployed.is_empty(), "sync leaves a stack taken down alone");
    assert_eq!(lab.service("chatty").await?.state, "down");
    c.up(r(&chatty_name)).await?;
    lab.wait_service("chatty", Duration::from_secs(10), running).await?;

    // Bad requests.
    let e = c.up(r("../etc")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("name: "), "{e:?}");
    let e = c.down(r("not-configured")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_repository_is_an_error_per_stack_and_the_agent_keeps_serving() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = pki.issue(Role::ServicesAgent, "services1")?;
    let mut text = base_config(&dir.path().join("state"), &pki.ca(), &cert, &key);
    text.push_str(&format!(
        "[stacks]\nrepo = {:?}\ncheckout_dir = \"checkout\"\npoll = \"1h\"\n[hub]\nstack = \"proxy\"\nnetwork = \"hub\"\n\
         domain = \"{DOMAIN}\"\naddress = \"{HUB_ADDRESS}\"\n[[services]]\nname = \"photos\"\n",
        dir.path().join("no-such-repo").display().to_string()
    ));
    let config = dir.path().join("services-agent.toml");
    std::fs::write(&config, text)?;
    let agent = AgentProc::start_with_config(AgentKind::Services, &config)?;
    let admin = pki.material(&pki.ca(), Role::Admin, "alice")?;
    let ch = admin.connect(&agent.url(), Role::ServicesAgent, Duration::from_secs(60)).await?;
    let r = ServicesClient::new(ch.clone()).sync(SyncRequest {}).await?.into_inner();
    assert_eq!(r.errors.len(), 2, "{r:?}");
    assert!(r.errors["photos"].contains("git clone of the stacks repository failed"), "{r:?}");
    let list = ServicesClient::new(ch.clone()).list_services(ListServicesRequest {}).await?.into_inner();
    assert!(list.services.iter().all(|s| s.error.contains("git clone")), "{list:?}");
    let status = AgentClient::new(ch).status(StatusRequest {}).await?.into_inner();
    assert!(status.summary.contains("errors in proxy photos"), "{}", status.summary);
    Ok(())
}

/// A free TCP port on loopback (the dns-agent must come back on the same address).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the dns-agent serving `DOMAIN` with gRPC on `grpc_port`; returns it and its DNS address.
fn start_dns_agent(pki: &Pki, dir: &Path, grpc_port: u16) -> Result<(AgentProc, SocketAddr)> {
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let text = base_config(&dir.join("state"), &pki.ca(), &cert, &key).replacen(
        "127.0.0.1:0",
        &format!("127.0.0.1:{grpc_port}"),
        1,
    ) + &format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n[[zones]]\nname = \"{DOMAIN}\"\n\
         [services_agents.services1]\nunder = \"{DOMAIN}\"\n"
    );
    std::fs::create_dir_all(dir)?;
    let config = dir.join("dns-agent.toml");
    std::fs::write(&config, text)?;
    let agent = AgentProc::start_with_config(AgentKind::Dns, &config)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(rest) = agent.logs().split("dns udp listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or("").parse().context("dns udp address")?;
            return Ok((agent, addr));
        }
        if Instant::now() > deadline {
            bail!("the dns-agent logged no `dns udp listening on` line:\n{}", agent.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The A records `dig` gets for NAME from the dns-agent.
fn dig_a(server: SocketAddr, name: &str) -> Result<Vec<String>> {
    let out = cmd::run(Command::new("dig").arg(format!("@{}", server.ip())).args([
        "-p",
        &server.port().to_string(),
        "+short",
        "+time=1",
        "+tries=1",
        name,
        "A",
    ]))?;
    Ok(out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

async fn wait_dig(server: SocketAddr, name: &str, want: &[&str], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = dig_a(server, name)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("dig {name}: want {want:?} within {within:?}, got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_names_follow_the_config_and_survive_a_dns_agent_outage() -> Result<()> {
    cmd::require("dig", "bind9-dnsutils")?;
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("photos")), &spoke_compose(&hub, ""))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("wiki")), &spoke_compose(&hub, ""))?;
    lab.origin.commit("two services with names")?;
    let port = free_port()?;
    lab.dns_agent = Some(format!("https://127.0.0.1:{port}"));
    // DNS labels have no '_': the names are the stack names with '-'.
    let photos_dns = lab.name("photos").replace('_', "-");
    let wiki_dns = lab.name("wiki").replace('_', "-");
    let photos = format!("{photos_dns}.{DOMAIN}");
    let wiki = format!("{wiki_dns}.{DOMAIN}");

    // The dns-agent is down: deploys still succeed, and do not wait for it.
    lab.start(&[("photos", &[photos_dns.as_str()], &[]), ("wiki", &[wiki_dns.as_str(), "docs"], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{r:?}");
    lab.wait_service("photos", Duration::from_secs(10), running).await?;
    let summary = lab.status_summary().await?;
    assert!(summary.contains("dns names pending"), "{summary}");

    // It comes up: the names appear.
    let dns_dir = lab.dir.path().join("dns");
    let (dns, server) = start_dns_agent(&lab.pki, &dns_dir, port)?;
    wait_dig(server, &photos, &[HUB_ADDRESS], Duration::from_secs(20)).await?;
    wait_dig(server, &wiki, &[HUB_ADDRESS], Duration::from_secs(5)).await?;
    wait_dig(server, &format!("docs.{DOMAIN}"), &[HUB_ADDRESS], Duration::from_secs(5)).await?;

    // wiki leaves the config: its names disappear, photos stays.
    lab.start(&[("photos", &[photos_dns.as_str()], &[])])?;
    wait_dig(server, &wiki, &[], Duration::from_secs(20)).await?;
    wait_dig(server, &format!("docs.{DOMAIN}"), &[], Duration::from_secs(5)).await?;
    assert_eq!(dig_a(server, &photos)?, [HUB_ADDRESS]);
    let summary = lab.status_summary().await?;
    assert!(summary.contains("1 dns names"), "{summary}");
    drop(dns);
    Ok(())
}

/// A unix socket forwarding to the real engine: stopping it looks to the agent like the engine going away (without
/// disturbing the shared dockerd other tests use).
struct EngineProxy {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EngineProxy {
    fn start(path: &Path) -> Result<EngineProxy> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) cuts every forwarded connection, the event stream included.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(DOCKER_SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        Ok(EngineProxy { path: path.to_path_buf(), task })
    }

    fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_engine_that_is_down_or_restarts_is_an_error_per_stack_and_the_agent_recovers() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, ""))?;
    lab.origin.commit("hub and a spoke")?;
    let socket = lab.dir.path().join("engine.sock");
    lab.docker_socket = Some(socket.clone());
    lab.start(&[("a", &[], &[])])?;

    // No engine: every stack says so, and the agent keeps answering.
    let r = lab.sync().await?;
    assert_eq!(r.errors.len(), 2, "{r:?}");
    let a = lab.wait_service("a", Duration::from_secs(5), |s| s.error.contains("docker engine unreachable")).await?;
    assert_eq!(a.state, "unknown");
    assert!(lab.status_summary().await?.contains("docker engine unreachable"));

    // The engine appears: the agent reconnects by itself and deploys what it could not (no Sync call needed).
    let proxy = EngineProxy::start(&socket)?;
    let a = lab.wait_service("a", Duration::from_secs(60), |s| running(s) && s.error.is_empty()).await?;
    assert_eq!(lab.service("proxy").await?.error, "");

    // It goes away and comes back (a restart): the error shows, then clears, the containers are still there.
    proxy.stop();
    let gone = lab.wait_service("a", Duration::from_secs(5), |s| s.error.contains("docker engine unreachable")).await?;
    assert_eq!(gone.state, "unknown");
    let proxy = EngineProxy::start(&socket)?;
    let back = lab.wait_service("a", Duration::from_secs(10), |s| running(s) && s.error.is_empty()).await?;
    assert_eq!(ids(&back), ids(&a));
    proxy.stop();
    Ok(())
}

/// A git smart-HTTP server on loopback for one test: Basic authentication against one `USER:PASSWORD`, then
/// `git http-backend` (the real CGI program) serving the repositories under `root`. It records every
/// Authorization header it was sent, so the test sees the credentials reach the server.
struct GitHttp {
    addr: SocketAddr,
    authorizations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    out
}

impl GitHttp {
    fn start(root: PathBuf, user_pass: &str) -> Result<GitHttp> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let want = format!("Basic {}", base64(user_pass.as_bytes()));
        let authorizations = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopping) = (authorizations.clone(), stop.clone());
        let serve = move |stream: std::net::TcpStream| -> Result<()> {
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut request = String::new();
            reader.read_line(&mut request)?;
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let mut parts = request.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut body = Vec::new();
            if let Some(n) = headers.get("content-length") {
                body.resize(n.parse()?, 0);
                reader.read_exact(&mut body)?;
            } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim(), 16)?;
                    let mut chunk = vec![0; n + 2];
                    reader.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            }
            let mut out = stream;
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            seen.lock().unwrap().push(auth.clone());
            if auth != want {
                out.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"stacks\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return Ok(());
            }
            let mut cgi = Command::new("git")
                .arg("http-backend")
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("GATEWAY_INTERFACE", "CGI/1.1")
                .env("REQUEST_METHOD", method)
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("CONTENT_TYPE", headers.get("content-type").map_or("", String::as_str))
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("HTTP_CONTENT_ENCODING", headers.get("content-encoding").map_or("", String::as_str))
                .env("REMOTE_USER", "bot")
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            cgi.stdin.take().context("stdin")?.write_all(&body)?;
            let reply = cgi.wait_with_output()?.stdout;
            let split = reply.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
            let split = split.or_else(|| reply.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
            let (head_len, sep) = split.context("CGI reply without headers")?;
            let head = String::from_utf8_lossy(&reply[..head_len]).to_string();
            let content = &reply[head_len + sep..];
            let mut status = "200 OK".to_string();
            let mut response = String::new();
            for line in head.lines() {
                match line.split_once(':') {
                    Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
                    Some(_) => response.push_str(&format!("{}\r\n", line.trim_end())),
                    None => {}
                }
            }
            out.write_all(
                format!(
                    "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    content.len()
                )
                .as_bytes(),
            )?;
            out.write_all(content)?;
            Ok(())
        };
        let thread = std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(stream) {
                            eprintln!("git http test server: {e:#}");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(GitHttp { addr, authorizations, stop, thread: Some(thread) })
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watches every process's argv (`/proc/*/cmdline`) until stopped; returns the command lines containing `needle`
/// and how many git processes it saw (so that a watch that saw nothing is not taken for a clean one).
struct ArgvWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl ArgvWatch {
    fn start(needle: &'static str, git_marker: String) -> ArgvWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut leaks, mut gits) = (Vec::new(), std::collections::BTreeSet::new());
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(raw) = std::fs::read(p.path().join("cmdline")) else { continue };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if line.contains(needle) {
                        leaks.push(line.clone());
                    }
                    if line.contains("git") && line.contains(&git_marker) {
                        gits.insert(p.file_name().to_string_lossy().to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (leaks, gits.len())
        });
        ArgvWatch { stop, thread }
    }

    fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Git credentials over http: from `credentials_file` through GIT_ASKPASS, they reach the server (a real git
/// smart-HTTP server, `git http-backend` behind Basic authentication) and never appear in any process's argv during
/// the sync, in `.git/config`, in the agent's log (at debug level, where every argv is logged) or in ListServices,
/// also when the server refuses them. A token in the `repo` URL itself is refused by `check` and `run`, naming the
/// key and `credentials_file`, without printing the token.
#[tokio::test(flavor = "multi_thread")]
async fn git_credentials_come_from_a_file_and_never_show_in_argv_logs_or_rpc_answers() -> Result<()> {
    const TOKEN: &str = "ghp_Str4taT0kenNeverShown";
    const WRONG: &str = "ghp_Wr0ngT0kenNeverShown";
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let first = lab.origin.commit("hub")?;
    let root = lab.dir.path().join("served");
    std::fs::create_dir(&root)?;
    cmd::run(
        Command::new("git").arg("clone").arg("-q").arg("--bare").arg(&lab.origin.dir).arg(root.join("stacks.git")),
    )?;
    let server = GitHttp::start(root, &format!("bot:{TOKEN}"))?;
    let url = format!("http://{}/stacks.git", server.addr);

    // A token in the URL: refused by `check` (exit 78) and by `run`, naming the key, never showing the token.
    let (cert, key) = lab.pki.issue(Role::ServicesAgent, "services1")?;
    let mut text = base_config(&lab.dir.path().join("state-refused"), &lab.pki.ca(), &cert, &key);
    text.push_str(&format!(
        "[stacks]\nrepo = \"http://bot:{TOKEN}@{}/stacks.git\"\ncheckout_dir = \"co\"\n[hub]\nstack = \"p\"\n\
         network = \"hub\"\ndomain = \"{DOMAIN}\"\naddress = \"{HUB_ADDRESS}\"\n",
        server.addr
    ));
    let refused = lab.dir.path().join("refused.toml");
    std::fs::write(&refused, text)?;
    for sub in ["check", "run"] {
        let out = Command::new(strata_tests::harness::bin("services-agent")?)
            .args([sub, "--config"])
            .arg(&refused)
            .output()?;
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(78), "{sub}: {all}");
        assert!(all.contains("key `stacks.repo`") && all.contains("stacks.credentials_file"), "{sub}: {all}");
        assert!(!all.contains(TOKEN), "{sub} printed the token: {all}");
    }

    // The token in a 0600 file; the agent logs every argv it runs (debug).
    let creds = lab.dir.path().join("git-credentials");
    std::fs::write(&creds, format!("bot:{TOKEN}\n"))?;
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    lab.repo = Some((url.clone(), Some(creds.clone())));
    lab.env = vec![("RUST_LOG", "debug")];
    let watch = ArgvWatch::start(TOKEN, server.addr.to_string());
    lab.start(&[])?;
    let r = lab.sync().await?;
    let proxy = lab.wait_service("proxy", Duration::from_secs(20), running).await?;
    let (leaks, gits) = watch.finish();
    ensure!(r.errors.is_empty(), "{r:?}\n{}", lab.agent().logs());
    assert_eq!((r.commit.as_str(), proxy.deployed_commit.as_str()), (first.as_str(), first.as_str()));
    assert!(leaks.is_empty(), "the token showed in argv: {leaks:?}");
    assert!(gits > 0, "the watch saw no git process talking to {}", server.addr);
    let sent = server.authorizations.lock().unwrap().clone();
    let want = format!("Basic {}", base64(format!("bot:{TOKEN}").as_bytes()));
    assert!(sent.contains(&want), "the server never got the credentials: {sent:?}");
    let git_config = std::fs::read_to_string(lab.dir.path().join("checkout/.git/config"))?;
    assert!(git_config.contains(&url) && !git_config.contains(TOKEN), "{git_config}");

    // The server refuses the credentials now: the error reaches ListServices and the log, neither shows a token.
    std::fs::write(&creds, format!("bot:{WRONG}\n"))?;
    let watch = ArgvWatch::start(WRONG, server.addr.to_string());
    let r = lab.sync().await?;
    let (leaks, gits) = watch.finish();
    let err = r.errors.get(&lab.name("proxy")).context("a refused fetch is an error")?.clone();
    assert!(err.contains("git fetch of branch main failed") && err.contains("Authentication failed"), "{err}");
    assert!(leaks.is_empty() && gits > 0, "argv: {leaks:?} ({gits} git processes seen)");
    let listed = format!("{:?}", lab.services().await?);
    assert!(listed.contains("Authentication failed"), "{listed}");
    let logs = lab.agent().logs();
    assert!(logs.contains("GIT_ASKPASS") || logs.contains("fetch"), "the debug log shows the git commands: {logs}");
    for secret in [TOKEN, WRONG] {
        for (what, text) in
            [("ListServices", &listed), ("the agent log", &logs), ("the sync answer", &format!("{r:?}"))]
        {
            assert!(!text.contains(secret), "{what} shows a token: {text}");
        }
    }
    Ok(())
}

/// Mounts of a running container, `SOURCE:DESTINATION` (from `docker inspect`).
fn mounts(engine: &DockerEngine, container: &str) -> Result<Vec<String>> {
    let out = engine.docker(["inspect", "-f", "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}", container])?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Write access to the stacks repo is not root on the VM: a commit bind-mounting `/etc` (as written, and through a
/// symlink committed in the stack's directory) is refused by the deploy gate before anything stops: the running
/// stack keeps its containers, the refusal shows in ListServices and `labctl services ls` like a broken commit.
/// The operator permits it by naming the rule in the service's `allow`.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_mounting_host_etc_is_refused_before_anything_stops() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let data = "    volumes: [\"./data:/data\"]\n";
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, data))?;
    lab.origin.write(&format!("{}/data/hello", lab.name("a")), "hi\n")?;
    let first = lab.origin.commit("a spoke with its own data directory")?;
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "a bind of the stack's own directory passes the gate: {:?}", r.errors);
    let a = lab.wait_service("a", Duration::from_secs(10), running).await?;
    let a_ids = ids(&a);
    let started = lab.engine.docker(["inspect", "-f", "{{.State.StartedAt}}", &a.containers[0].name])?;

    // /etc as written, then through a symlink in the stack's directory: each refused before `up`.
    let etc = spoke_compose(&hub, "    volumes: [\"/etc:/host-etc:ro\"]\n");
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &etc)?;
    lab.origin.commit("a: mount the host's /etc")?;
    let link = lab.origin.dir.join(lab.name("a")).join("innocent");
    std::os::unix::fs::symlink("/etc", &link)?;
    let mut refusals = Vec::new();
    for (what, compose) in [
        ("as written", etc.clone()),
        ("through a symlink", spoke_compose(&hub, "    volumes: [\"./innocent:/host-etc:ro\"]\n")),
    ] {
        lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &compose)?;
        lab.origin.commit(&format!("a: /etc {what}"))?;
        let r = lab.sync().await?;
        assert!(r.redeployed.is_empty(), "{what}: {r:?}");
        let err = r.errors.get(&lab.name("a")).with_context(|| format!("{what}: no refusal in {r:?}"))?.clone();
        assert!(
            err.contains("refused before deploy") && err.contains("host-mount") && err.contains("/etc"),
            "{what}: {err}"
        );
        assert!(err.contains("the running stack was left as it was") && err.contains("allow"), "{what}: {err}");
        let a = lab.service("a").await?;
        assert!(running(&a) && ids(&a) == a_ids, "{what}: the running stack was touched: {a:?}");
        assert_eq!(a.deployed_commit, first, "{what}");
        assert!(a.error.contains("refused before deploy"), "{what}: {a:?}");
        let now = lab.engine.docker(["inspect", "-f", "{{.State.StartedAt}}", &a.containers[0].name])?;
        assert_eq!(now, started, "{what}: the container was restarted");
        assert!(!mounts(&lab.engine, &a.containers[0].name)?.iter().any(|m| m.starts_with("/etc")), "{what}");
        refusals.push(err);
    }
    assert!(refusals[1].contains("(really /etc)"), "{}", refusals[1]);

    // The operator sees it in `labctl services ls`.
    let (cert, key) = lab.pki.issue(Role::Admin, "alice")?;
    let inventory = lab.dir.path().join("labctl.toml");
    strata_tests::harness::write_inventory(&inventory, &lab.pki.ca(), &cert, &key, &[lab.agent()])?;
    let out = Command::new(strata_tests::harness::bin("labctl")?)
        .arg("--config")
        .arg(&inventory)
        .args(["services", "ls"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&lab.name("a")) && text.contains("refused before deploy"), "{text}");

    // The operator says so: `allow = ["host-mount"]`, and the same commit (the symlink) deploys.
    lab.start(&[("a", &[], &["host-mount"])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{:?}", r.errors);
    let a = lab.wait_service("a", Duration::from_secs(20), |s| running(s) && ids(s) != a_ids).await?;
    assert!(mounts(&lab.engine, &a.containers[0].name)?.iter().any(|m| m.ends_with(":/host-etc")), "allowed: {a:?}");
    Ok(())
}
