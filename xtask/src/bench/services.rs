//! `cargo xtask bench services`: ListServices latency over mTLS with 50 running compose containers (answered from the
//! agent's event-fed memory) against the time of `docker ps` listing the same containers, printed as a ratio (target
//! ≥ 10×). Owns the stack generation and the measurement; reports, never fails on numbers.

use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{ListServicesRequest, SyncRequest};
use strata_tests::fixtures::docker::{DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};

use super::procs::release_bins;
use super::stats::{median, percentile};

const CONTAINERS: usize = 50;
const CALLS: usize = 2_000;
const DOCKER_PS_RUNS: usize = 30;

fn git(dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let st = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@strata.invalid", "-C"])
        .arg(dir)
        .args(args)
        .status()
        .context("running git")?;
    if !st.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

/// Removes the bench's containers and networks, also on early return.
struct Cleanup(DockerEngine, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for project in [format!("{}-proxy", self.1), format!("{}-many", self.1)] {
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
    let origin = dir.path().join("origin");

    // The hub (one container) and a spoke of CONTAINERS - 1 services.
    std::fs::create_dir_all(origin.join(format!("{prefix}-proxy")))?;
    std::fs::create_dir_all(origin.join(format!("{prefix}-many")))?;
    std::fs::write(
        origin.join(format!("{prefix}-proxy/docker-compose.yml")),
        format!("version: \"3.7\"\nservices:\n  proxy:\n    image: {TEST_IMAGE_TAG}\n"),
    )?;
    let mut many = String::from("version: \"3.7\"\nservices:\n");
    for i in 0..CONTAINERS - 1 {
        many.push_str(&format!("  s{i}:\n    image: {TEST_IMAGE_TAG}\n"));
    }
    std::fs::write(origin.join(format!("{prefix}-many/docker-compose.yml")), many)?;
    git(&origin, &["init", "-q", "-b", "main"])?;
    git(&origin, &["add", "-A"])?;
    git(&origin, &["commit", "-qm", "bench stacks"])?;

    let pki = Pki::new()?;
    let (cert, key) = pki.issue(Role::ServicesAgent, "services1")?;
    let mut text = base_config(&dir.path().join("state"), &pki.ca(), &cert, &key);
    text.push_str(&format!(
        "[stacks]\nrepo = {:?}\ncheckout_dir = {:?}\npoll = \"1h\"\n[hub]\nstack = \"{prefix}-proxy\"\n\
         network = \"{prefix}-hub\"\ndomain = \"bench.test\"\naddress = \"10.0.0.20\"\n\
         [[services]]\nname = \"{prefix}-many\"\n",
        origin.display().to_string(),
        dir.path().join("checkout").display().to_string(),
    ));
    let config = dir.path().join("services-agent.toml");
    std::fs::write(&config, text)?;
    let agent = AgentProc::start_with_config(AgentKind::Services, &config)?;
    let admin = pki.material(&pki.ca(), Role::Admin, "bench-admin")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;

    let (lat, running) = rt.block_on(async {
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
        Ok::<_, anyhow::Error>((lat, running))
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
    drop(agent);
    Ok(())
}
