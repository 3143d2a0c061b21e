//! One backup test's world, shared by the backup test files: a zfs-fuse pool with the service's dataset, a Borg
//! repository, a writer container (the service, answering HTTP) and the services-agent with its config.
//! Knows the agent's config format, gRPC API, log lines and test hooks; asserts nothing itself (tests do).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{BackupRequest, HistoryEntry, HistoryRequest, Progress, RestoreRequest, ServiceRef};
use tonic::transport::Channel;

use crate::fixtures::borg::BorgRepo;
use crate::fixtures::docker::{Container, DockerEngine, TestImage, TEST_IMAGE_TAG};
use crate::fixtures::git::GitRepo;
use crate::fixtures::zfs::ZfsPool;
use crate::fixtures::{cmd, unique_suffix};
use crate::harness::{base_config, AgentKind, AgentProc, Pki};

/// The passphrase of the lab's repositories (the agent reads it from a 0600 file).
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The writer: answers HTTP on 8080 and rewrites files in /data every 20 ms; exits at once on SIGTERM.
const WRITER: &str = "trap 'exit 0' TERM; httpd -p 8080 -h /www; mkdir -p /data/d; i=0; \
    while true; do i=$((i+1)); echo $i > /data/counter; \
    dd if=/dev/urandom of=/data/d/blob.$((i % 8)) bs=4096 count=4 2>/dev/null; sleep 0.02; done";

/// One test's world: a pool with the service's dataset, a Borg repo, the writer container (labelled as the compose
/// project of the service, on its own network with a fixed address), and the services-agent.
pub struct Lab {
    pub engine: DockerEngine,
    pub pki: Pki,
    pub pool: ZfsPool,
    pub dataset: String,
    pub repo: BorgRepo,
    pub service: String,
    pub dir: tempfile::TempDir,
    pub network: String,
    pub ip: String,
    pub writer: Option<Container>,
    pub agent: Option<AgentProc>,
    /// Extra `[[services]]` lines.
    pub extra: String,
    /// Extra top-level lines (before the first table).
    pub top: String,
    /// `repos = …` (an inline TOML array) instead of `repo = ` the lab's repository.
    pub repos: Option<String>,
    /// Held for the whole test: zfs-fuse fails to create mountpoints when pools and datasets are made in parallel
    /// ("failed to create mountpoint"), so these tests take turns.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Lab {
    pub fn new(extra: &str) -> Result<Lab> {
        Lab::with_pool(extra, crate::fixtures::zfs::DEFAULT_SIZE_MB)
    }

    /// A lab whose pool's vdev is `pool_mb` MiB (room for the data a benchmark writes).
    pub fn with_pool(extra: &str, pool_mb: u64) -> Result<Lab> {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let engine = DockerEngine::ensure()?;
        TestImage::build(&engine, TEST_IMAGE_TAG)?;
        cmd::require("git", "git")?;
        let pool = ZfsPool::create_sized(pool_mb)?;
        let dataset = pool.create_dataset("appdata/app")?;
        let repo = BorgRepo::init(PASSPHRASE)?;
        let suffix = unique_suffix();
        let service = format!("bk{}", suffix.replace('_', "x"));
        let dir = tempfile::tempdir()?;
        // Its own network so that the writer keeps its address across a stop/start.
        let n: u32 = std::process::id() % 200 + 20;
        let k: u32 = suffix.rsplit('_').next().and_then(|s| s.parse().ok()).unwrap_or(0) % 250;
        let network = format!("{service}-net");
        let subnet = format!("10.{n}.{k}.0/24");
        let id = engine.docker(["network", "create", "--subnet", &subnet, &network])?;
        // Probes of the stopped writer leave the host's neighbour entry for its address failed; the kernel asks
        // again only every `retrans_time_ms` (1 s by default), which outside probers would count as downtime.
        // Ask every 50 ms on this lab's own bridge.
        let bridge = format!("br-{}", id.trim().get(..12).context("docker network id")?);
        let knob = format!("/proc/sys/net/ipv4/neigh/{bridge}/retrans_time_ms");
        std::fs::write(&knob, "50").with_context(|| format!("writing {knob}"))?;
        let ip = format!("10.{n}.{k}.10");
        let mut lab = Lab {
            engine,
            pki: Pki::new()?,
            pool,
            dataset,
            repo,
            service,
            dir,
            network,
            ip,
            writer: None,
            agent: None,
            extra: extra.to_string(),
            top: String::new(),
            repos: None,
            _turn: turn,
        };
        lab.start_writer()?;
        Ok(lab)
    }

    pub fn mount(&self) -> PathBuf {
        self.pool.dataset_mountpoint("appdata/app")
    }

    pub fn start_writer(&mut self) -> Result<()> {
        let project = format!("com.docker.compose.project={}", self.service);
        let volume = format!("{}:/data", self.mount().display());
        let args = [
            "--label",
            &project,
            "--label",
            "com.docker.compose.service=app",
            "--network",
            &self.network,
            "--ip",
            &self.ip,
            "-v",
            &volume,
        ];
        self.writer = Some(Container::run(&self.engine, TEST_IMAGE_TAG, &args, &["/bin/sh", "-c", WRITER])?);
        let addr = self.http_addr();
        let up = crate::fixtures::wait_until(Duration::from_secs(10), || probe(addr));
        ensure!(up, "the writer never answered HTTP at {addr}");
        Ok(())
    }

    pub fn http_addr(&self) -> SocketAddr {
        format!("{}:8080", self.ip).parse().expect("address")
    }

    pub fn writer(&self) -> &Container {
        self.writer.as_ref().expect("writer")
    }

    pub fn config(&self, service_extra: &str) -> Result<PathBuf> {
        let (cert, key) = self.pki.issue(Role::ServicesAgent, "services1")?;
        let origin = self.dir.path().join("origin");
        if !origin.exists() {
            let repo = GitRepo::init(origin.clone())?;
            repo.write("README", "stacks\n")?;
            repo.commit("init")?;
        }
        let pass = self.dir.path().join("passphrase");
        std::fs::write(&pass, PASSPHRASE)?;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600))?;
        let mut text = self.top.clone();
        text.push_str(&base_config(&self.dir.path().join("state"), &self.pki.ca(), &cert, &key));
        text.push_str(&format!(
            "[stacks]\nrepo = {:?}\ncheckout_dir = {:?}\npoll = \"1h\"\n\
             [hub]\nstack = \"{svc}-proxy\"\nnetwork = \"{svc}-hub\"\ndomain = \"bk.test\"\naddress = \"10.0.0.20\"\n\
             [backup]\nparallel = 2\nsnapshot_mount_dir = {:?}\n\
             [[services]]\nname = \"{svc}\"\ndataset = \"{}\"\n{}\npassphrase_file = {:?}\n{}{}\n",
            origin.display().to_string(),
            self.dir.path().join("checkout").display().to_string(),
            self.dir.path().join("snapshots").display().to_string(),
            self.dataset,
            match &self.repos {
                Some(list) => format!("repos = {list}"),
                None => format!("repo = {:?}", self.repo.path().display().to_string()),
            },
            pass.display().to_string(),
            self.extra,
            service_extra,
            svc = self.service,
        ));
        let path = self.dir.path().join("services-agent.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// (Re)starts the agent with `env` (the test hooks) and `service_extra` config lines.
    pub fn start(&mut self, env: &[(&str, &str)], service_extra: &str) -> Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.kill()?;
        }
        let config = self.config(service_extra)?;
        let base = self.repo.scratch_dir().join("agent-base");
        std::fs::create_dir_all(&base)?;
        let mut all = vec![("BORG_BASE_DIR", base.to_str().context("utf-8")?)];
        all.extend_from_slice(env);
        self.agent = Some(AgentProc::start_with_env(AgentKind::Services, &config, &all)?);
        Ok(())
    }

    pub fn agent(&self) -> &AgentProc {
        self.agent.as_ref().expect("agent")
    }

    pub async fn client(&self) -> Result<ServicesClient<Channel>> {
        let admin = self.pki.material(&self.pki.ca(), Role::Admin, "alice")?;
        let ch = admin.connect(&self.agent().url(), Role::ServicesAgent, Duration::from_secs(600)).await?;
        Ok(ServicesClient::new(ch))
    }

    /// Runs a job stream to its end: the final `done` message, or the error status.
    pub async fn drain(stream: tonic::Streaming<Progress>) -> std::result::Result<String, tonic::Status> {
        let mut stream = stream;
        let mut last = None;
        while let Some(p) = stream.message().await? {
            if p.step == "done" {
                last = Some(p.message);
            }
        }
        last.ok_or_else(|| tonic::Status::internal("stream ended without done"))
    }

    pub async fn backup(&self) -> std::result::Result<String, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let s = c.backup(BackupRequest { name: self.service.clone(), all: false }).await?.into_inner();
        Self::drain(s).await
    }

    pub async fn restore(&self, archive: &str, snapshot: &str, to: &str) -> std::result::Result<String, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = RestoreRequest {
            name: self.service.clone(),
            archive: archive.into(),
            snapshot: snapshot.into(),
            to: to.into(),
            ..Default::default()
        };
        Self::drain(c.restore(req).await?.into_inner()).await
    }

    /// `labctl services restore NAME --resume` (true) or `--abandon` (false).
    pub async fn decide(&self, resume: bool) -> std::result::Result<String, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = RestoreRequest { name: self.service.clone(), resume, abandon: !resume, ..Default::default() };
        Self::drain(c.restore(req).await?.into_inner()).await
    }

    /// Starts the restore `req` with the agent set to hold at `step`, then SIGKILLs the agent there.
    pub async fn crash_restore_at(&mut self, step: &str, req: RestoreRequest) -> Result<()> {
        self.start(&[("STRATA_TEST_CRASH_AT", step)], "")?;
        let client = self.client().await?;
        // The call never finishes: the agent holds, then dies.
        let call = tokio::spawn(async move {
            let mut c = client;
            if let Ok(r) = c.restore(req).await {
                let _ = Lab::drain(r.into_inner()).await;
            }
        });
        self.agent().wait_log(&format!("test hook: holding at step {step}"), Duration::from_secs(60))?;
        self.agent.as_mut().expect("agent").kill()?;
        call.abort();
        Ok(())
    }

    pub async fn history(&self) -> Result<Vec<HistoryEntry>> {
        let mut c = self.client().await?;
        let r = c.history(HistoryRequest { name: self.service.clone(), limit: 100 }).await?.into_inner();
        Ok(r.entries)
    }

    pub async fn archives(&self) -> Result<Vec<String>> {
        let mut c = self.client().await?;
        let r = c.list_archives(ServiceRef { name: self.service.clone(), ..Default::default() }).await?.into_inner();
        Ok(r.archives.into_iter().map(|a| a.name).collect())
    }

    /// Our snapshots on the dataset (names after `@`).
    pub fn snapshots(&self) -> Result<Vec<String>> {
        Ok(self
            .pool
            .list_snapshots()?
            .into_iter()
            .filter_map(|s| s.strip_prefix(&format!("{}@", self.dataset)).map(String::from))
            .collect())
    }

    /// Datasets of ours (clones, scratch) left in the pool, and mounts left under the snapshot dir.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let out = cmd::run_args("zfs", ["list", "-H", "-o", "name", "-r", self.pool.name()])?;
        let mut left: Vec<String> = out.lines().filter(|l| l.contains("/strata-")).map(String::from).collect();
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let snapdir = self.dir.path().join("snapshots").display().to_string();
        left.extend(mounts.lines().filter(|l| l.contains(&snapdir)).map(String::from));
        Ok(left)
    }

    pub fn writer_running(&self) -> Result<bool> {
        Ok(self.writer().inspect("{{.State.Status}}")? == "running")
    }

    /// Extracts `archive` with the borg CLI into a fresh directory.
    pub fn extract(&self, archive: &str) -> Result<tempfile::TempDir> {
        self.extract_from(self.repo.path(), archive)
    }

    /// Extracts `archive` of the repository at `repo` (a local path: the lab's, or an off-site one seen from its
    /// trusted side; the same passphrase) with the borg CLI into a fresh directory.
    pub fn extract_from(&self, repo: &Path, archive: &str) -> Result<tempfile::TempDir> {
        let dest = tempfile::tempdir()?;
        let target = format!("{}::{archive}", repo.display());
        cmd::run(self.repo.command().args(["extract", &target]).current_dir(dest.path()))?;
        Ok(dest)
    }

    /// Mounts a clone of `DATASET@snap` (the way to read a snapshot on zfs-fuse) until the guard drops.
    pub fn read_snapshot(&self, snap: &str) -> Result<SnapshotView> {
        let clone = format!("{}/tview{}", self.pool.name(), unique_suffix().replace('_', "x"));
        let at = self.dir.path().join(format!("view-{}", unique_suffix()));
        cmd::run_args(
            "zfs",
            ["clone", "-o", &format!("mountpoint={}", at.display()), &format!("{}@{snap}", self.dataset), &clone],
        )?;
        Ok(SnapshotView { clone, at })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.agent.take();
        self.writer.take();
        let _ = self.engine.docker(["network", "rm", &self.network]);
    }
}

pub struct SnapshotView {
    pub clone: String,
    pub at: PathBuf,
}

impl Drop for SnapshotView {
    fn drop(&mut self) {
        for _ in 0..10 {
            if Command::new("zfs").args(["destroy", "-r", &self.clone]).status().is_ok_and(|s| s.success()) {
                return;
            }
            // Busy right after use: wait (a forced unmount can hang zfs-fuse).
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// One HTTP GET of the writer within 100 ms.
pub fn probe(addr: SocketAddr) -> bool {
    let t = Duration::from_millis(100);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, t) else { return false };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && buf.windows(11).any(|w| w == b"strata-test")
}

pub fn archive_of(summary: &str) -> Result<String> {
    summary
        .split_whitespace()
        .skip_while(|w| *w != "archive")
        .nth(1)
        .map(String::from)
        .with_context(|| format!("no archive in {summary:?}"))
}

/// A webhook receiver on 127.0.0.1: every request body, in order.
pub fn webhook() -> Result<(String, Arc<std::sync::Mutex<Vec<String>>>)> {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bodies.clone();
    let base = crate::fixtures::http::serve(move |r| sink.lock().unwrap().push(r.body))?;
    Ok((format!("{base}/hook"), bodies))
}
