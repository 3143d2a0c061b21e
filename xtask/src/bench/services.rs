//! `cargo xtask bench services`: ListServices latency over mTLS with 50 running compose containers (answered from the
//! agent's event-fed memory) against the time of `docker ps` listing the same containers, printed as a ratio (target
//! ≥ 10×); then the time from a `git push` to the changed stack's new container running and healthy, announced by
//! the signed webhook vs found by the poll (`push`). Owns the stack generation, the agent's set-up and the printing;
//! reports, never fails on numbers.

mod push;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{ListServicesRequest, SyncRequest};
use strata_tests::fixtures::docker::{DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::git::GitRepo;
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};

use super::procs::release_bins;
use super::stats::{median, percentile};

const CONTAINERS: usize = 50;
const CALLS: usize = 2_000;
const DOCKER_PS_RUNS: usize = 30;
/// Pushes measured per path (webhook, poll).
const PUSH_ROUNDS: usize = 7;
/// `[stacks] poll` of the poll path (the default is 5 min; 2 s is the most eager setting one would run).
const POLL: Duration = Duration::from_secs(2);

/// Removes the bench's containers and networks, also on early return.
struct Cleanup(DockerEngine, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for project in ["proxy", "many", "app"].map(|s| format!("{}-{s}", self.1)) {
            let filter = format!("label=com.docker.compose.project={project}");
            let ids = self.0.docker(["ps", "-aq", "--filter", &filter]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.0.docker(["rm", "-f", "-v"].into_iter().chain(ids));
            }
            let _ = self.0.docker(["network", "rm", &format!("{project}_default")]);
        }
    }
}

pub(crate) fn run() -> Result<()> {
    release_bins(&["services-agent"])?;
    let engine = DockerEngine::ensure()?;
    TestImage::build(&engine, TEST_IMAGE_TAG)?;
    let prefix = format!("bench{}", std::process::id());
    let _cleanup = Cleanup(engine.clone(), prefix.clone());
    let dir = tempfile::tempdir()?;
    let origin = GitRepo::init(dir.path().join("origin"))?;

    // The hub (one container), a spoke of CONTAINERS - 2 services and the one-container stack the pushes change.
    origin.write(
        &format!("{prefix}-proxy/docker-compose.yml"),
        &format!("version: \"3.7\"\nservices:\n  proxy:\n    image: {TEST_IMAGE_TAG}\n"),
    )?;
    let mut many = String::from("version: \"3.7\"\nservices:\n");
    for i in 0..CONTAINERS - 2 {
        many.push_str(&format!("  s{i}:\n    image: {TEST_IMAGE_TAG}\n"));
    }
    origin.write(&format!("{prefix}-many/docker-compose.yml"), &many)?;
    let app = format!("{prefix}-app");
    origin.write(&format!("{app}/docker-compose.yml"), &push::app_compose(0))?;
    origin.commit("bench stacks")?;
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, push::SECRET)?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;

    let pki = Pki::new()?;
    let (cert, key) = pki.issue(Role::ServicesAgent, "services1")?;
    // `stacks_extra`: the rest of `[stacks]` (the poll, the webhook).
    let config_text = |stacks_extra: &str| {
        let mut text = base_config(&dir.path().join("state"), &pki.ca(), &cert, &key);
        text.push_str(&format!(
            "[stacks]\nrepo = {:?}\ncheckout_dir = {:?}\n{stacks_extra}[hub]\nstack = \"{prefix}-proxy\"\n\
             network = \"{prefix}-hub\"\ndomain = \"bench.test\"\naddress = \"10.0.0.20\"\n\
             [[services]]\nname = \"{prefix}-many\"\n[[services]]\nname = \"{app}\"\n",
            origin.dir.display().to_string(),
            dir.path().join("checkout").display().to_string(),
        ));
        text
    };
    let config = dir.path().join("services-agent.toml");
    std::fs::write(
        &config,
        config_text(&format!(
            "poll = \"1h\"\n[stacks.webhook]\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        )),
    )?;
    let mut agent = AgentProc::start_with_config(AgentKind::Services, &config)?;
    let hook = agent.logged_addr("webhook")?;
    let admin = pki.material(&pki.ca(), Role::Admin, "bench-admin")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;

    let (lat, running, mut c) = rt.block_on(async {
        let ch = admin.connect(&agent.url(), Role::ServicesAgent, Duration::from_secs(900)).await?;
        let mut c = ServicesClient::new(ch);
        println!("\nbench services: deploying {CONTAINERS} containers with docker-compose…");
        let t = Instant::now();
        let r = c.sync(SyncRequest {}).await?.into_inner();
        if !r.errors.is_empty() {
            bail!("sync failed: {:?}", r.errors);
        }
        println!("deployed in {:.1} s", t.elapsed().as_secs_f64());
        // Wait until the event stream has shown every container running.
        let deadline = Instant::now() + Duration::from_secs(120);
        let running = loop {
            let s = c.list_services(ListServicesRequest {}).await?.into_inner().services;
            let running: usize = s.iter().flat_map(|s| s.containers.iter()).filter(|c| c.state == "running").count();
            if running >= CONTAINERS {
                break running;
            }
            if Instant::now() > deadline {
                bail!("only {running} of {CONTAINERS} containers running after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for _ in 0..100 {
            c.list_services(ListServicesRequest {}).await?;
        }
        let mut lat = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            let r = c.list_services(ListServicesRequest {}).await?.into_inner();
            lat.push(t.elapsed());
            std::hint::black_box(r);
        }
        Ok::<_, anyhow::Error>((lat, running, c))
    })?;

    // The same 50 containers: their names all start with the prefix.
    let name_filter = format!("name={prefix}-");
    let mut ps = Vec::with_capacity(DOCKER_PS_RUNS);
    let mut listed = 0;
    for _ in 0..DOCKER_PS_RUNS {
        let t = Instant::now();
        let out = engine.command().args(["ps", "--filter", &name_filter]).output()?;
        ps.push(t.elapsed());
        listed = String::from_utf8_lossy(&out.stdout).lines().count().saturating_sub(1);
    }

    let (l50, l99) = (median(&lat), percentile(&lat, 0.99));
    let (ps50, ps99) = (median(&ps), percentile(&ps, 0.99));
    println!("{running} containers running ({listed} listed by docker ps)");
    println!("{:<44} {:>12} {:>12}", "", "p50 µs", "p99 µs");
    println!("{:<44} {:>12} {:>12}", "ListServices over mTLS (event-fed memory)", l50.as_micros(), l99.as_micros());
    println!("{:<44} {:>12} {:>12}", "docker ps (same containers)", ps50.as_micros(), ps99.as_micros());
    let ratio = ps50.as_secs_f64() / l50.as_secs_f64().max(1e-9);
    println!(
        "ratio docker ps / ListServices: {ratio:.1}x (target >= 10x){}",
        if ratio >= 10.0 { "" } else { "  BELOW TARGET" }
    );

    // The push path: this agent (poll 1 h), told by the signed webhook.
    println!("\npushing {PUSH_ROUNDS} commits to {app}, each announced by a signed webhook (poll 1 h)…");
    let pushed = rt.block_on(push::rounds(&mut c, &origin, &app, &push::Path::Webhook(hook), 1, PUSH_ROUNDS))?;
    drop(c);
    // Where a webhook round's time goes, from the agent's own log: sync requested → the app deployed → sync done.
    let (deployed, done) = push::sync_phases(&agent.logs(), &app);
    println!(
        "agent log, per webhook round (p50): sync requested -> {app} deployed {:.0} ms, -> sync done {:.0} ms \
         ({} rounds read)",
        ms_of(median(&deployed)),
        ms_of(median(&done)),
        deployed.len()
    );
    // The poll path: the same agent, state and stacks, restarted with `poll = 2s` and no webhook.
    agent.terminate()?;
    std::fs::write(&config, config_text(&format!("poll = \"{}s\"\n", POLL.as_secs())))?;
    let agent = AgentProc::start_with_config(AgentKind::Services, &config)?;
    println!("pushing {PUSH_ROUNDS} commits to {app}, found by the poll (every {} s)…", POLL.as_secs());
    let polled = rt.block_on(async {
        let ch = admin.connect(&agent.url(), Role::ServicesAgent, Duration::from_secs(900)).await?;
        let mut c = ServicesClient::new(ch);
        push::rounds(&mut c, &origin, &app, &push::Path::Poll(POLL), 1 + PUSH_ROUNDS, PUSH_ROUNDS).await
    })?;
    let ms = ms_of;
    println!("{:<44} {:>8} {:>8} {:>8}", "git push -> new container running + healthy", "p50 ms", "min ms", "max ms");
    for (what, s) in [("signed webhook (poll 1 h)", &pushed), (&*format!("poll every {} s", POLL.as_secs()), &polled)] {
        let (min, max) = (s.iter().min().copied().unwrap_or_default(), s.iter().max().copied().unwrap_or_default());
        println!("{what:<44} {:>8.0} {:>8.0} {:>8.0}", ms(median(s)), ms(min), ms(max));
    }
    println!(
        "ratio poll / webhook (medians): {:.1}x; each round: webhook {:?} ms, poll {:?} ms",
        median(&polled).as_secs_f64() / median(&pushed).as_secs_f64().max(1e-9),
        pushed.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        polled.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
    );
    println!("(arithmetic, not measured: with the default poll of 5 min a push waits 150 s for it on average)");
    drop(agent);
    Ok(())
}

fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
