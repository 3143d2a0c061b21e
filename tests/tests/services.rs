//! The services-agent end to end: the real binary driving a real dockerd through docker-compose, stacks from a real
//! local Git repository with real commits, images built FROM scratch (busybox-static), names registered in a real
//! dns-agent and answered by `dig`: Git sync, the audit, Docker events, an unreachable repository or Docker engine.
//! Credentials and host-path safety are in `services_safety.rs`.
//! Knows the agent's config format and gRPC API; nothing of its internals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{AuditRequest, ListServicesRequest, LogsRequest, ServiceRef, StatusRequest, SyncRequest};
use strata_tests::fixtures::cmd;
use strata_tests::fixtures::docker::{DOCKER_SOCKET, TEST_IMAGE_TAG};
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use strata_tests::serviceslab::{hub_compose, ids, running, spoke_compose, Lab, DOMAIN, HUB_ADDRESS};

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
    let r = |n: &str| ServiceRef { name: n.to_string(), ..Default::default() };
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
