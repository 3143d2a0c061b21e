//! The services-agent's backups end to end: the real binary, a real zfs-fuse pool, real borg and a real dockerd,
//! with a container writing to the service's dataset all the time and answering HTTP (the outside prober).
//! Knows the agent's config format, gRPC API, log lines and test hooks; nothing of its internals.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{
    BackupRequest, HistoryEntry, HistoryRequest, PrepareHostBackupRequest, Progress, ReleaseHostBackupRequest,
    RestoreRequest, ServiceRef,
};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::docker::{Container, DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::git::GitRepo;
use strata_tests::fixtures::zfs::ZfsPool;
use strata_tests::fixtures::{cmd, unique_suffix};
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use tonic::transport::Channel;

const PASSPHRASE: &str = "correct horse battery staple";

/// The writer: answers HTTP on 8080 and rewrites files in /data every 20 ms; exits at once on SIGTERM.
const WRITER: &str = "trap 'exit 0' TERM; httpd -p 8080 -h /www; mkdir -p /data/d; i=0; \
    while true; do i=$((i+1)); echo $i > /data/counter; \
    dd if=/dev/urandom of=/data/d/blob.$((i % 8)) bs=4096 count=4 2>/dev/null; sleep 0.02; done";

/// One test's world: a pool with the service's dataset, a Borg repo, the writer container (labelled as the compose
/// project of the service, on its own network with a fixed address), and the services-agent.
struct Lab {
    engine: DockerEngine,
    pki: Pki,
    pool: ZfsPool,
    dataset: String,
    repo: BorgRepo,
    service: String,
    dir: tempfile::TempDir,
    network: String,
    ip: String,
    writer: Option<Container>,
    agent: Option<AgentProc>,
    /// Extra `[[services]]` lines.
    extra: String,
    /// Extra top-level lines (before the first table).
    top: String,
    /// Held for the whole test: zfs-fuse fails to create mountpoints when pools and datasets are made in parallel
    /// ("failed to create mountpoint"), so these tests take turns.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Lab {
    fn new(extra: &str) -> Result<Lab> {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let engine = DockerEngine::ensure()?;
        TestImage::build(&engine, TEST_IMAGE_TAG)?;
        cmd::require("git", "git")?;
        let pool = ZfsPool::create()?;
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
        engine.docker(["network", "create", "--subnet", &subnet, &network])?;
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
            _turn: turn,
        };
        lab.start_writer()?;
        Ok(lab)
    }

    fn mount(&self) -> PathBuf {
        self.pool.dataset_mountpoint("appdata/app")
    }

    fn start_writer(&mut self) -> Result<()> {
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
        let up = strata_tests::fixtures::wait_until(Duration::from_secs(10), || probe(addr));
        ensure!(up, "the writer never answered HTTP at {addr}");
        Ok(())
    }

    fn http_addr(&self) -> SocketAddr {
        format!("{}:8080", self.ip).parse().expect("address")
    }

    fn writer(&self) -> &Container {
        self.writer.as_ref().expect("writer")
    }

    fn config(&self, service_extra: &str) -> Result<PathBuf> {
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
             [[services]]\nname = \"{svc}\"\ndataset = \"{}\"\nrepo = {:?}\npassphrase_file = {:?}\n{}{}\n",
            origin.display().to_string(),
            self.dir.path().join("checkout").display().to_string(),
            self.dir.path().join("snapshots").display().to_string(),
            self.dataset,
            self.repo.path().display().to_string(),
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
    fn start(&mut self, env: &[(&str, &str)], service_extra: &str) -> Result<()> {
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

    fn agent(&self) -> &AgentProc {
        self.agent.as_ref().expect("agent")
    }

    async fn client(&self) -> Result<ServicesClient<Channel>> {
        let admin = self.pki.material(&self.pki.ca(), Role::Admin, "alice")?;
        let ch = admin.connect(&self.agent().url(), Role::ServicesAgent, Duration::from_secs(600)).await?;
        Ok(ServicesClient::new(ch))
    }

    /// Runs a job stream to its end: the final `done` message, or the error status.
    async fn drain(stream: tonic::Streaming<Progress>) -> std::result::Result<String, tonic::Status> {
        let mut stream = stream;
        let mut last = None;
        while let Some(p) = stream.message().await? {
            if p.step == "done" {
                last = Some(p.message);
            }
        }
        last.ok_or_else(|| tonic::Status::internal("stream ended without done"))
    }

    async fn backup(&self) -> std::result::Result<String, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let s = c.backup(BackupRequest { name: self.service.clone(), all: false }).await?.into_inner();
        Self::drain(s).await
    }

    async fn restore(&self, archive: &str, snapshot: &str, to: &str) -> std::result::Result<String, tonic::Status> {
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
    async fn decide(&self, resume: bool) -> std::result::Result<String, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = RestoreRequest { name: self.service.clone(), resume, abandon: !resume, ..Default::default() };
        Self::drain(c.restore(req).await?.into_inner()).await
    }

    /// Starts the restore `req` with the agent set to hold at `step`, then SIGKILLs the agent there.
    async fn crash_restore_at(&mut self, step: &str, req: RestoreRequest) -> Result<()> {
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

    async fn history(&self) -> Result<Vec<HistoryEntry>> {
        let mut c = self.client().await?;
        let r = c.history(HistoryRequest { name: self.service.clone(), limit: 100 }).await?.into_inner();
        Ok(r.entries)
    }

    async fn archives(&self) -> Result<Vec<String>> {
        let mut c = self.client().await?;
        let r = c.list_archives(ServiceRef { name: self.service.clone() }).await?.into_inner();
        Ok(r.archives.into_iter().map(|a| a.name).collect())
    }

    /// Our snapshots on the dataset (names after `@`).
    fn snapshots(&self) -> Result<Vec<String>> {
        Ok(self
            .pool
            .list_snapshots()?
            .into_iter()
            .filter_map(|s| s.strip_prefix(&format!("{}@", self.dataset)).map(String::from))
            .collect())
    }

    /// Datasets of ours (clones, scratch) left in the pool, and mounts left under the snapshot dir.
    fn leftovers(&self) -> Result<Vec<String>> {
        let out = cmd::run_args("zfs", ["list", "-H", "-o", "name", "-r", self.pool.name()])?;
        let mut left: Vec<String> = out.lines().filter(|l| l.contains("/strata-")).map(String::from).collect();
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let snapdir = self.dir.path().join("snapshots").display().to_string();
        left.extend(mounts.lines().filter(|l| l.contains(&snapdir)).map(String::from));
        Ok(left)
    }

    fn writer_running(&self) -> Result<bool> {
        Ok(self.writer().inspect("{{.State.Status}}")? == "running")
    }

    /// Extracts `archive` with the borg CLI into a fresh directory.
    fn extract(&self, archive: &str) -> Result<tempfile::TempDir> {
        let dest = tempfile::tempdir()?;
        let target = format!("{}::{archive}", self.repo.path().display());
        cmd::run(self.repo.command().args(["extract", &target]).current_dir(dest.path()))?;
        Ok(dest)
    }

    /// Mounts a clone of `DATASET@snap` (the way to read a snapshot on zfs-fuse) until the guard drops.
    fn read_snapshot(&self, snap: &str) -> Result<SnapshotView> {
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

struct SnapshotView {
    clone: String,
    at: PathBuf,
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
fn probe(addr: SocketAddr) -> bool {
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

/// Probes `addr` every 10 ms until stopped; returns the longest time without an answer.
fn prober(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut last_ok = Instant::now();
        let mut worst = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            if probe(addr) {
                worst = worst.max(last_ok.elapsed());
                last_ok = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        worst
    })
}

/// Path → (mode, bytes) of every file and directory under `root` (symlinks as their target).
fn tree(root: &Path) -> Result<BTreeMap<PathBuf, (u32, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p)?;
            let rel = p.strip_prefix(root)?.to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, (mode, Vec::new()));
                stack.push(p);
            } else if meta.file_type().is_symlink() {
                out.insert(rel, (mode, std::fs::read_link(&p)?.into_os_string().into_encoded_bytes()));
            } else {
                out.insert(rel, (mode, std::fs::read(&p)?));
            }
        }
    }
    Ok(out)
}

fn same_tree(a: &Path, b: &Path) -> Result<()> {
    let (ta, tb) = (tree(a)?, tree(b)?);
    let ka: Vec<_> = ta.keys().collect();
    let kb: Vec<_> = tb.keys().collect();
    ensure!(ka == kb, "different files: {} has {ka:?}, {} has {kb:?}", a.display(), b.display());
    for (k, v) in &ta {
        let w = &tb[k];
        ensure!(v.0 == w.0, "{}: mode {:o} vs {:o}", k.display(), v.0, w.0);
        ensure!(v.1 == w.1, "{}: contents differ ({} vs {} bytes)", k.display(), v.1.len(), w.1.len());
    }
    ensure!(!ta.is_empty(), "nothing to compare under {}", a.display());
    Ok(())
}

fn archive_of(summary: &str) -> Result<String> {
    summary
        .split_whitespace()
        .skip_while(|w| *w != "archive")
        .nth(1)
        .map(String::from)
        .with_context(|| format!("no archive in {summary:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_equals_its_snapshot_downtime_agrees_with_a_prober_and_restores_reproduce_the_data() -> Result<()> {
    let mut lab = Lab::new("quiesce = \"stop\"\nlocal_snapshots = 5\n")?;
    lab.start(&[], "")?;

    // A backup while the writer writes, probed from outside.
    let stop = Arc::new(AtomicBool::new(false));
    let p = prober(lab.http_addr(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let outside = p.join().expect("prober");
    let archive = archive_of(&summary)?;
    let h = lab.history().await?;
    ensure!(h.len() == 1 && h[0].result == "ok" && h[0].kind == "backup", "history: {h:?}");
    let recorded = Duration::from_secs_f64(h[0].downtime_seconds);
    eprintln!("downtime: recorded by the agent {recorded:?}, seen by the prober {outside:?}");
    ensure!(recorded > Duration::ZERO, "a stop-mode backup of a running service has some downtime");
    // The prober sees the agent's window plus the time httpd needs to answer again, at 10 ms resolution.
    ensure!(
        outside + Duration::from_millis(100) >= recorded && outside <= recorded + Duration::from_millis(1500),
        "prober {outside:?} and agent {recorded:?} disagree"
    );
    ensure!(lab.writer_running()?, "the writer runs again after the backup");

    // The archive equals its snapshot byte for byte.
    let ts = archive.rsplit('-').next().context("timestamp")?;
    let snap = format!("strata-{ts}");
    ensure!(lab.snapshots()?.contains(&snap), "snapshot {snap} kept: {:?}", lab.snapshots()?);
    let extracted = lab.extract(&archive)?;
    {
        let view = lab.read_snapshot(&snap)?;
        same_tree(&view.at, extracted.path())?;
    }
    ensure!(lab.leftovers()?.is_empty(), "leftovers: {:?}", lab.leftovers()?);

    // The drill agrees.
    let mut c = lab.client().await?;
    let drill = Lab::drain(c.drill(ServiceRef { name: lab.service.clone() }).await?.into_inner()).await?;
    ensure!(drill.contains("drill passed"), "{drill}");

    // Restore to a path: the archive's data, the live data untouched.
    let to = lab.dir.path().join("restored");
    let msg = lab.restore(&archive, "", &to.display().to_string()).await?;
    ensure!(msg.contains("not touched"), "{msg}");
    same_tree(extracted.path(), &to)?;
    let err = lab.restore(&archive, "", &to.display().to_string()).await.unwrap_err();
    ensure!(err.message().contains("not an empty directory"), "{err:?}");

    // Restore in place (the writer stopped, so that the data holds still): a marker written after the backup is
    // gone from the live data and kept in the safety snapshot.
    lab.engine.docker(["stop", lab.writer().name()])?;
    std::fs::write(lab.mount().join("after-backup"), b"precious")?;
    let msg = lab.restore(&archive, "", "").await.map_err(|s| anyhow::anyhow!("restore: {s}"))?;
    ensure!(msg.contains("safety snapshot"), "{msg}");
    same_tree(extracted.path(), &lab.mount())?;
    let safety: Vec<String> = lab.snapshots()?.into_iter().filter(|s| s.starts_with("strata-prerestore-")).collect();
    ensure!(safety.len() == 1, "one safety snapshot: {safety:?}");
    {
        let view = lab.read_snapshot(&safety[0])?;
        ensure!(std::fs::read(view.at.join("after-backup"))? == b"precious", "the safety snapshot holds the old data");
    }

    // Restore in place from the local snapshot, too.
    std::fs::write(lab.mount().join("after-backup"), b"again")?;
    tokio::time::sleep(Duration::from_secs(1)).await; // the next safety snapshot gets another second
    lab.restore("", &snap, "").await.map_err(|s| anyhow::anyhow!("restore from snapshot: {s}"))?;
    same_tree(extracted.path(), &lab.mount())?;

    // No safety snapshot, no restore: the live data stays as it is.
    std::fs::write(lab.mount().join("after-backup"), b"keep me")?;
    lab.start(&[("STRATA_TEST_FAIL_AT", "safety-snapshot")], "")?;
    let err = lab.restore(&archive, "", "").await.unwrap_err();
    ensure!(err.message().contains("refusing to restore without a safety snapshot"), "{err:?}");
    ensure!(std::fs::read(lab.mount().join("after-backup"))? == b"keep me", "live data untouched");
    ensure!(lab.leftovers()?.is_empty(), "leftovers: {:?}", lab.leftovers()?);

    // An extraction that fails half-way: the data from before the restore is put back before anything starts.
    lab.start(&[("STRATA_TEST_FAIL_AT", "extract")], "")?;
    tokio::time::sleep(Duration::from_secs(1)).await; // the safety snapshot gets its own second
    let err = lab.restore(&archive, "", "").await.unwrap_err();
    ensure!(err.message().contains("the data is back as it was before the restore"), "{err:?}");
    ensure!(std::fs::read(lab.mount().join("after-backup"))? == b"keep me", "the data before the restore is back");
    ensure!(lab.leftovers()?.is_empty(), "leftovers: {:?}", lab.leftovers()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_exactly_the_archives_its_rules_select() -> Result<()> {
    let mut lab = Lab::new("retention = { daily = 2, monthly = 2 }\n")?;
    // Archives at fixed times, made with the borg CLI as an earlier run would have.
    let seed = lab.dir.path().join("seed");
    std::fs::create_dir_all(&seed)?;
    std::fs::write(seed.join("f"), b"x")?;
    for ts in ["20250110T120000Z", "20250120T120000Z", "20250210T120000Z", "20250220T120000Z", "20250310T120000Z"] {
        let iso = format!("{}-{}-{}T{}:{}:{}", &ts[0..4], &ts[4..6], &ts[6..8], &ts[9..11], &ts[11..13], &ts[13..15]);
        let target = format!("{}::{}-{ts}", lab.repo.path().display(), lab.service);
        cmd::run(
            lab.repo.command().env("TZ", "UTC").args(["create", "--timestamp", &iso, &target, "."]).current_dir(&seed),
        )?;
    }
    lab.start(&[], "")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let new = archive_of(&summary)?;
    // daily = 2: the new archive and 2025-03-10; monthly = 2 then adds the newest of the next two months not
    // already kept: 2025-02-20 and 2025-01-20.
    let s = &lab.service;
    let mut want =
        vec![format!("{s}-20250120T120000Z"), format!("{s}-20250220T120000Z"), format!("{s}-20250310T120000Z"), new];
    want.sort();
    let mut got = lab.archives().await?;
    got.sort();
    ensure!(got == want, "kept {got:?}, want {want:?}");
    ensure!(summary.contains("pruned 2"), "{summary}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_at_every_backup_step_is_repaired_on_restart() -> Result<()> {
    // A hook, so that the hook steps do something; retention, so that prune and compact run.
    let extra = "quiesce = \"pause\"\nlocal_snapshots = 2\nretention = { last = 1 }\n\
                 hooks = [{ when = \"before-snapshot\", container = \"app\", command = [\"sync\"] }]\n";
    let mut lab = Lab::new(extra)?;
    lab.start(&[], "")?;
    lab.backup().await.map_err(|s| anyhow::anyhow!("first backup: {s}\n{}", lab.agent().logs()))?;
    let steps = [
        "preflight",
        "pre-hooks",
        "quiesce",
        "snapshot",
        "resume",
        "post-hooks",
        "clone",
        "borg-create",
        "destroy-clone",
        "prune",
        "compact",
        "local-snapshots",
    ];
    for step in steps {
        lab.start(&[("STRATA_TEST_CRASH_AT", step)], "")?;
        let url = lab.agent().url();
        let client = lab.client().await?;
        let name = lab.service.clone();
        // The call never finishes: the agent holds, then dies.
        let call = tokio::spawn(async move {
            let mut c = client;
            let _ = c.backup(BackupRequest { name, all: false }).await;
            drop(url);
        });
        lab.agent().wait_log(&format!("test hook: holding at step {step}"), Duration::from_secs(60))?;
        lab.agent.as_mut().expect("agent").kill()?;
        call.abort();

        lab.start(&[], "")?;
        let ctx = || format!("after a crash at {step}; agent log:\n{}", lab.agent().logs());
        // The agent serves only once its recovery is done: the first answer says it is.
        let h = lab.history().await?;
        let died = h.iter().find(|e| e.result == "failed").with_context(ctx)?;
        ensure!(died.error.contains(&format!("during step {step}")), "history says {:?} {}", died.error, ctx());
        let running =
            strata_tests::fixtures::wait_until(Duration::from_secs(10), || lab.writer_running().unwrap_or(false));
        ensure!(running, "the writer is not running {}", ctx());
        ensure!(
            probe(lab.http_addr())
                || strata_tests::fixtures::wait_until(Duration::from_secs(5), || probe(lab.http_addr())),
            "the writer does not answer {}",
            ctx()
        );
        let left = lab.leftovers()?;
        ensure!(left.is_empty(), "leftovers {left:?} {}", ctx());
        cmd::run(lab.repo.command().args(["check"]).arg(lab.repo.path())).with_context(ctx)?;
        lab.backup().await.map_err(|s| anyhow::anyhow!("the next backup failed: {s} {}", ctx()))?;
        let snaps: Vec<String> = lab.snapshots()?.into_iter().filter(|s| !s.contains("prerestore")).collect();
        ensure!(snaps.len() <= 2, "local_snapshots = 2 keeps two, found {snaps:?} {}", ctx());
        eprintln!("crash at {step}: repaired");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_at_every_restore_step_is_repaired_on_restart() -> Result<()> {
    let mut lab = Lab::new("quiesce = \"pause\"\nlocal_snapshots = 3\n")?;
    lab.start(&[], "")?;
    std::fs::write(lab.mount().join("kept"), b"in the archive")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let archive = archive_of(&summary)?;
    let snap = format!("strata-{}", archive.rsplit('-').next().context("timestamp")?);
    // Written after the backup: present while the data is the data from before a restore, gone once restored.
    std::fs::write(lab.mount().join("after-backup"), b"precious")?;

    // (step, restore from the local snapshot rather than the archive, the data restored when the agent died)
    let steps = [
        ("preflight", false, false),
        ("restore-stop", false, false),
        ("safety-snapshot", false, false),
        ("restore-data", false, false),
        ("extract", false, false),
        ("scratch", true, false),
        ("wait-healthy", false, true),
    ];
    for (step, from_snapshot, restored) in steps {
        let req = RestoreRequest {
            name: lab.service.clone(),
            archive: if from_snapshot { String::new() } else { archive.clone() },
            snapshot: if from_snapshot { snap.clone() } else { String::new() },
            ..Default::default()
        };
        lab.crash_restore_at(step, req).await?;

        lab.start(&[], "")?;
        let ctx = || format!("after a crash at restore step {step}; agent log:\n{}", lab.agent().logs());
        let h = lab.history().await?;
        let died = h.iter().find(|e| e.kind == "restore" && e.result == "failed").with_context(ctx)?;
        ensure!(died.error.contains(&format!("during step {step}")), "history says {:?} {}", died.error, ctx());
        let running =
            strata_tests::fixtures::wait_until(Duration::from_secs(10), || lab.writer_running().unwrap_or(false));
        ensure!(running, "the writer is not running {}", ctx());
        ensure!(
            strata_tests::fixtures::wait_until(Duration::from_secs(5), || probe(lab.http_addr())),
            "the writer does not answer {}",
            ctx()
        );
        let left = lab.leftovers()?;
        ensure!(left.is_empty(), "leftovers {left:?} {}", ctx());
        // Whole data either way: from before the restore (rolled back if it had been touched), or the restored one.
        let kept = std::fs::read(lab.mount().join("kept")).ok();
        ensure!(kept.as_deref() == Some(b"in the archive".as_slice()), "`kept` lost {}", ctx());
        let marker = std::fs::read(lab.mount().join("after-backup")).ok();
        if restored {
            ensure!(marker.is_none(), "the restored data has the marker written after the backup {}", ctx());
            std::fs::write(lab.mount().join("after-backup"), b"precious")?;
        } else {
            ensure!(marker.as_deref() == Some(b"precious".as_slice()), "data from before the restore lost {}", ctx());
        }
        eprintln!("crash at restore step {step}: repaired");
        tokio::time::sleep(Duration::from_secs(1)).await; // each safety snapshot gets its own second
    }

    // And a restore after all that works.
    lab.restore(&archive, "", "").await.map_err(|s| anyhow::anyhow!("the restore after the crashes failed: {s}"))?;
    ensure!(!lab.mount().join("after-backup").exists(), "restored in place");
    ensure!(lab.writer_running()?, "the writer runs after the restore");
    ensure!(lab.leftovers()?.is_empty(), "leftovers: {:?}", lab.leftovers()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_restore_then_new_writes_keeps_them_until_the_operator_decides() -> Result<()> {
    let mut lab = Lab::new("quiesce = \"pause\"\n")?;
    lab.start(&[], "")?;
    std::fs::write(lab.mount().join("kept"), b"in the archive")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let archive = archive_of(&summary)?;
    std::fs::write(lab.mount().join("after-backup"), b"precious")?;
    let in_place = RestoreRequest { name: lab.service.clone(), archive: archive.clone(), ..Default::default() };
    let still_stopped = |lab: &Lab| -> Result<()> {
        // Give anything that would start it a moment.
        std::thread::sleep(Duration::from_secs(2));
        ensure!(
            !lab.writer_running()?,
            "the service was started although its restore is held:\n{}",
            lab.agent().logs()
        );
        Ok(())
    };

    // 1. The agent dies while replacing the data; the service is started by hand and writes; the agent restarts.
    lab.crash_restore_at("extract", in_place.clone()).await?;
    ensure!(!lab.writer_running()?, "the restore had stopped the writer");
    lab.engine.docker(["start", lab.writer().name()])?;
    let wrote = strata_tests::fixtures::wait_until(Duration::from_secs(10), || lab.mount().join("counter").exists());
    ensure!(wrote, "the writer started by hand wrote nothing");
    std::fs::write(lab.mount().join("new-after-crash"), b"new data")?;
    lab.engine.docker(["stop", lab.writer().name()])?;
    lab.start(&[], "")?;
    let ctx = |lab: &Lab| format!("agent log:\n{}", lab.agent().logs());
    // The agent answers once its recovery is done.
    let h = lab.history().await?;
    // The new data is kept: no rollback.
    ensure!(
        std::fs::read(lab.mount().join("new-after-crash")).ok().as_deref() == Some(b"new data".as_slice()),
        "the data written after the crash is gone; {}",
        ctx(&lab)
    );
    ensure!(lab.mount().join("counter").exists(), "the writer's data is gone; {}", ctx(&lab));
    // The conflict is reported: in the history, in the log; the service stays stopped.
    let held = h.iter().find(|e| e.kind == "restore" && e.result == "failed").with_context(|| ctx(&lab))?;
    for needle in ["not rolled back", "started at", "--resume", "--abandon"] {
        ensure!(held.error.contains(needle), "history error {:?} lacks {needle:?}; {}", held.error, ctx(&lab));
    }
    ensure!(lab.agent().logs().contains("was not rolled back"), "{}", ctx(&lab));
    still_stopped(&lab)?;
    // Nothing else touches the held data: a plain restore and a backup are refused, naming the reason.
    let err = lab.restore(&archive, "", "").await.unwrap_err();
    ensure!(err.message().contains("waits for a decision") && err.message().contains("--resume"), "{err:?}");
    let err = lab.backup().await.unwrap_err();
    ensure!(err.message().contains("waits for a decision"), "{err:?}");
    ensure!(lab.mount().join("new-after-crash").exists(), "a refused job touched the data");
    // The agent restarting again changes nothing.
    lab.start(&[], "")?;
    lab.history().await?;
    ensure!(lab.mount().join("new-after-crash").exists(), "a second start rolled back; {}", ctx(&lab));
    still_stopped(&lab)?;
    // --abandon: the data stays as it is and the service starts.
    let msg = lab.decide(false).await.map_err(|s| anyhow::anyhow!("abandon: {s}\n{}", ctx(&lab)))?;
    ensure!(msg.contains("abandoned") && msg.contains("strata-prerestore-"), "{msg}");
    ensure!(lab.writer_running()?, "abandon starts the service");
    ensure!(std::fs::read(lab.mount().join("new-after-crash"))? == b"new data", "abandon kept the data");
    let err = lab.decide(true).await.unwrap_err();
    ensure!(err.message().contains("nothing to resume"), "{err:?}");
    lab.start(&[], "")?;
    lab.history().await?;
    ensure!(lab.mount().join("new-after-crash").exists(), "nothing is rolled back after an abandon");

    // 2. The agent dies while replacing the data; another tool takes a snapshot and data is written; --resume.
    tokio::time::sleep(Duration::from_secs(1)).await; // the next safety snapshot gets its own second
    lab.crash_restore_at("extract", in_place).await?;
    let other = format!("{}@othertool-1", lab.dataset);
    cmd::run_args("zfs", ["snapshot", other.as_str()])?;
    std::fs::write(lab.mount().join("second-new"), b"written after the other snapshot")?;
    lab.start(&[], "")?;
    let h = lab.history().await?;
    ensure!(lab.mount().join("second-new").exists(), "rolled back over another tool's snapshot; {}", ctx(&lab));
    ensure!(lab.snapshots()?.contains(&"othertool-1".to_string()), "another tool's snapshot was destroyed");
    let held = h.iter().find(|e| e.kind == "restore" && e.result == "failed").with_context(|| ctx(&lab))?;
    ensure!(held.error.contains("newer than the safety snapshot") && held.error.contains(&other), "{:?}", held.error);
    still_stopped(&lab)?;
    let before: Vec<String> = lab.snapshots()?;
    let msg = lab.decide(true).await.map_err(|s| anyhow::anyhow!("resume: {s}\n{}", ctx(&lab)))?;
    ensure!(msg.contains("resumed the interrupted restore"), "{msg}");
    // Restored from the interrupted restore's own archive, the service running, every snapshot kept.
    ensure!(std::fs::read(lab.mount().join("kept"))? == b"in the archive", "restored");
    ensure!(!lab.mount().join("after-backup").exists() && !lab.mount().join("second-new").exists(), "restored");
    ensure!(lab.writer_running()?, "resume starts the service");
    let after = lab.snapshots()?;
    ensure!(before.iter().all(|s| after.contains(s)), "snapshots lost: {before:?} -> {after:?}");
    // The data written before the resume is in the resume's own safety snapshot.
    let newest = after.iter().filter(|s| s.starts_with("strata-prerestore-")).max().context("safety")?.clone();
    ensure!(!before.contains(&newest), "resume took a new safety snapshot: {after:?}");
    {
        let view = lab.read_snapshot(&newest)?;
        ensure!(view.at.join("second-new").exists(), "the resume's safety snapshot holds the data from before it");
    }
    ensure!(lab.leftovers()?.is_empty(), "leftovers: {:?}", lab.leftovers()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_refuses_dotdot_symlinks_system_paths_and_live_data_before_touching_anything() -> Result<()> {
    let mut lab = Lab::new("")?;
    lab.start(&[], "")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let archive = archive_of(&summary)?;
    let base = lab.dir.path().to_path_buf();
    std::fs::create_dir(base.join("real"))?;
    std::os::unix::fs::symlink(base.join("real"), base.join("link"))?;
    let system = format!("/etc/strata-restore-{}", lab.service);
    let cases: Vec<(String, &str, PathBuf)> = vec![
        (format!("{}/real/../escaped", base.display()), "`..`", base.join("escaped")),
        (format!("{}/link/x", base.display()), "link is a symlink", base.join("real/x")),
        (system.clone(), "system directory /etc", PathBuf::from(&system)),
        (format!("{}/inside", lab.mount().display()), "live data of dataset", lab.mount().join("inside")),
        (format!("{}/state/x", base.display()), "state directory", base.join("state/x")),
    ];
    for (to, why, landed) in cases {
        let err = lab.restore(&archive, "", &to).await.unwrap_err();
        ensure!(err.code() == tonic::Code::FailedPrecondition, "{to}: {err:?}");
        ensure!(err.message().contains(&to) && err.message().contains(why), "{to}: {}", err.message());
        ensure!(!landed.exists(), "{to}: something was restored at {}", landed.display());
    }
    ensure!(lab.writer_running()?, "the service was not touched");
    // A plain path still works.
    let ok = base.join("real/restored");
    let msg = lab.restore(&archive, "", &ok.display().to_string()).await.map_err(|s| anyhow::anyhow!("{s}"))?;
    ensure!(msg.contains("not touched") && ok.join("counter").exists(), "{msg}");
    Ok(())
}

/// A bind mount, unmounted on drop.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_place_restore_over_a_foreign_mount_inside_the_dataset_is_refused_and_leaves_it_untouched() -> Result<()>
{
    let mut lab = Lab::new("")?;
    lab.start(&[], "")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let archive = archive_of(&summary)?;
    // Something mounted inside the dataset that no snapshot of it covers (a host directory bind-mounted there).
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("foreign.txt"), b"in no snapshot")?;
    let inner = lab.mount().join("media");
    std::fs::create_dir(&inner)?;
    cmd::run(Command::new("mount").arg("--bind").arg(outside.path()).arg(&inner))?;
    let bind = BindMount(inner.clone());
    let before = lab.snapshots()?;
    let err = lab.restore(&archive, "", "").await.unwrap_err();
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    let m = err.message();
    ensure!(m.contains(&inner.display().to_string()) && m.contains("inside the dataset"), "{m}");
    ensure!(std::fs::read(inner.join("foreign.txt"))? == b"in no snapshot", "the mounted data was touched");
    ensure!(std::fs::read(outside.path().join("foreign.txt"))? == b"in no snapshot", "the mounted data was touched");
    ensure!(lab.writer_running()?, "a refused restore leaves the service running");
    ensure!(lab.snapshots()? == before, "a refused restore takes no safety snapshot");
    // Once it is unmounted, the restore goes ahead.
    drop(bind);
    lab.restore(&archive, "", "").await.map_err(|s| anyhow::anyhow!("restore after unmounting: {s}"))?;
    ensure!(std::fs::read(outside.path().join("foreign.txt"))? == b"in no snapshot", "never touched");
    Ok(())
}

/// A webhook receiver on 127.0.0.1: every request body, in order.
fn webhook() -> Result<(String, Arc<std::sync::Mutex<Vec<String>>>)> {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(|s| s.ok()) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(clone) = stream.try_clone() else { continue };
            let mut reader = std::io::BufReader::new(clone);
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.trim().is_empty() {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok() {
                sink.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    Ok((url, bodies))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_write_failure_while_quiesced_resumes_the_service_first_then_fails_and_notifies() -> Result<()> {
    let (url, bodies) = webhook()?;
    let mut lab = Lab::new(&format!("quiesce = \"pause\"\nnotify = [{{ kind = \"webhook\", url = \"{url}\" }}]\n"))?;
    let go = lab.dir.path().join("go");
    let hook = format!("quiesce:{}", go.display());
    lab.start(&[("STRATA_TEST_WAIT_AT", hook.as_str())], "")?;
    let client = lab.client().await?;
    let name = lab.service.clone();
    let call = tokio::spawn(async move {
        let mut c = client;
        match c.backup(BackupRequest { name, all: false }).await {
            Ok(s) => Lab::drain(s.into_inner()).await,
            Err(e) => Err(e),
        }
    });
    lab.agent().wait_log("test hook: waiting at step quiesce", Duration::from_secs(60))?;
    // The journal's database becomes unwritable (a stand-in for a full disk): a second connection holds its write
    // lock, as another process would.
    let db = agent_core::state::open_db(&lab.dir.path().join("state"), "services")?;
    db.execute_batch("BEGIN IMMEDIATE")?;
    std::fs::write(&go, b"")?;
    let status = || lab.writer().inspect("{{.State.Status}}").unwrap_or_default();
    ensure!(
        strata_tests::fixtures::wait_until(Duration::from_secs(10), || status() == "paused"),
        "the writer was never paused: {}",
        status()
    );
    // While the journal still cannot be written, the service runs again and answers.
    let back = strata_tests::fixtures::wait_until(Duration::from_secs(20), || status() == "running");
    ensure!(back, "the writer stays {} while the journal is locked:\n{}", status(), lab.agent().logs());
    ensure!(
        strata_tests::fixtures::wait_until(Duration::from_secs(5), || probe(lab.http_addr())),
        "the writer does not answer"
    );
    db.execute_batch("ROLLBACK")?;
    drop(db);
    // Then the run fails, naming the journal, and is recorded and notified.
    let err = tokio::time::timeout(Duration::from_secs(60), call).await??.unwrap_err();
    ensure!(err.message().contains("journal") && err.message().contains("resumed first"), "{err:?}");
    let h = lab.history().await?;
    ensure!(h.first().is_some_and(|e| e.result == "failed" && e.error.contains("journal")), "{h:?}");
    let failed = strata_tests::fixtures::wait_until(Duration::from_secs(10), || {
        bodies.lock().unwrap().iter().any(|b| b.contains("\"fail\"") && b.contains("journal"))
    });
    ensure!(failed, "no failure notification: {:?}", bodies.lock().unwrap());
    ensure!(lab.writer_running()?, "the writer runs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_host_backup_holds_a_scheduled_backup_until_release_or_expiry() -> Result<()> {
    let mut lab = Lab::new("quiesce = \"pause\"\nschedule = \"* * * * *\"\n")?;
    lab.start(&[], "")?;
    let mut c = lab.client().await?;
    let lease = c.prepare_host_backup(PrepareHostBackupRequest { lease_seconds: 600 }).await?.into_inner();
    ensure!(!lease.lease_id.is_empty() && lease.expires_unix > 0, "{lease:?}");
    // The scheduler fires within ~75 s (next minute + its 15 s tick) and must wait.
    lab.agent().wait_log("backup waits for the host backup lease", Duration::from_secs(100))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(lab.history().await?.is_empty(), "nothing ran under the lease");
    c.release_host_backup(ReleaseHostBackupRequest { lease_id: lease.lease_id.clone() }).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = lab.history().await?;
        if h.iter().any(|e| e.result == "ok") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the held backup did not run after the release: {h:?}\n{}", lab.agent().logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = c.release_host_backup(ReleaseHostBackupRequest { lease_id: lease.lease_id }).await.unwrap_err();
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");

    // A lease nobody releases holds jobs until it expires.
    let lease = c.prepare_host_backup(PrepareHostBackupRequest { lease_seconds: 3 }).await?.into_inner();
    let t0 = Instant::now();
    lab.backup().await.map_err(|s| anyhow::anyhow!("backup after expiry: {s}"))?;
    ensure!(
        t0.elapsed() >= Duration::from_millis(2500),
        "the backup waited for the lease {lease:?}: {:?}",
        t0.elapsed()
    );
    let err = c.prepare_host_backup(PrepareHostBackupRequest { lease_seconds: 0 }).await.unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument && err.message().contains("lease_seconds"), "{err:?}");
    Ok(())
}

/// Processes whose argv runs borg on `repo` (Debian's borg is a Python script: `python3 /usr/bin/borg … REPO`).
fn borgs_on(repo: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    // (pid, parent pid) of each process whose command line is borg's on this repository.
    let borgs: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok().map(|pid| (pid, e.path())))
        .filter(|(_, path)| {
            let Ok(cmdline) = std::fs::read(path.join("cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.iter().any(|a| a.ends_with(b"borg")) && args.contains(&repo.as_bytes())
        })
        .filter_map(|(pid, path)| Some((pid, parent_pid(&std::fs::read_to_string(path.join("stat")).ok()?)?)))
        .collect();
    // A child forked by a borg (its passphrase command, before it execs) carries its parent's command line for a
    // moment: it is part of that borg's run, not another borg on the repository.
    borgs.iter().filter(|(_, ppid)| !borgs.iter().any(|(pid, _)| pid == ppid)).count()
}

/// The parent pid in a `/proc/PID/stat` line (`PID (COMM) STATE PPID …`; COMM may hold spaces and parentheses).
fn parent_pid(stat: &str) -> Option<u32> {
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_archive_listings_run_one_borg_per_repository_and_are_capped_per_caller() -> Result<()> {
    let mut lab = Lab::new("")?;
    lab.start(&[], "")?;
    lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let repo = lab.repo.path().to_string_lossy().into_owned();
    // Samples how many borg processes run on the repository at once while the calls go on.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, repo) = (stop.clone(), repo.clone());
        std::thread::spawn(move || {
            let (mut most, mut samples_with_borg) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let n = borgs_on(&repo);
                most = most.max(n);
                samples_with_borg += usize::from(n > 0);
                std::thread::sleep(Duration::from_millis(2));
            }
            (most, samples_with_borg)
        })
    };
    // 40 concurrent ListArchives from one viewer (the hostile review's case: 40 borg processes, 428 MiB).
    let viewer = lab.pki.material(&lab.pki.ca(), Role::Viewer, "eve")?;
    let channel = viewer.connect(&lab.agent().url(), Role::ServicesAgent, Duration::from_secs(600)).await?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut c = ServicesClient::new(channel.clone());
        let name = lab.service.clone();
        calls.spawn(async move { c.list_archives(ServiceRef { name }).await.map(|r| r.into_inner().archives.len()) });
    }
    // Meanwhile the admin lists too: another caller is not held to the viewer's cap.
    let admin_sees = lab.archives().await?;
    let mut results = Vec::new();
    while let Some(r) = calls.join_next().await {
        results.push(r?);
    }
    stop.store(true, Ordering::Relaxed);
    let (most, samples_with_borg) = sampler.join().expect("sampler");

    ensure!(admin_sees.len() == 1, "the admin's listing: {admin_sees:?}");
    let listed: Vec<usize> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let refused: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(!listed.is_empty() && listed.iter().all(|n| *n == 1), "admitted listings: {listed:?}");
    ensure!(!refused.is_empty(), "40 concurrent listings of one caller were all admitted");
    for s in &refused {
        ensure!(
            s.code() == tonic::Code::ResourceExhausted && s.message().contains("viewer/eve"),
            "a refusal must be RESOURCE_EXHAUSTED naming the caller: {s:?}"
        );
    }
    ensure!(samples_with_borg > 0, "the sampler never saw a borg on {repo}: it proves nothing");
    ensure!(most <= 1, "{most} borg processes ran on {repo} at once");
    // A place is given back when a call ends: the viewer may list again.
    let mut c = ServicesClient::new(channel);
    ensure!(c.list_archives(ServiceRef { name: lab.service.clone() }).await?.into_inner().archives.len() == 1);
    Ok(())
}

/// The trigger of each backup run in the agent's journal, oldest first (read with the sqlite3 CLI, agent stopped or
/// not: SQLite readers do not block it).
fn run_triggers(lab: &Lab) -> Result<Vec<String>> {
    let db = lab.dir.path().join("state/services.db");
    let out = cmd::run_args(
        "sqlite3",
        [db.to_str().context("utf-8")?, "SELECT trigger FROM runs WHERE kind = 'backup' ORDER BY id"],
    )?;
    Ok(out.lines().map(String::from).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_runs_one_backup_at_start_when_the_schedule_came_due_while_the_agent_was_down() -> Result<()> {
    cmd::require("sqlite3", "sqlite3")?;
    // Yearly, on January 1st at 00:00 in Berlin: it came due while the agent was "down" (the history below says the
    // last backup was in 2020) and does not come due again during the test.
    let mut lab = Lab::new("quiesce = \"none\"\nschedule = \"@yearly\"\n")?;
    lab.start(&[], "")?;
    lab.backup().await.map_err(|s| anyhow::anyhow!("first backup: {s}"))?;
    lab.agent.as_mut().expect("agent").kill()?;
    // The history says the last backup was long ago: 2020-06-01.
    let db = lab.dir.path().join("state/services.db");
    cmd::run_args("sqlite3", [db.to_str().context("utf-8")?, "UPDATE runs SET started_unix = 1590969600"])?;
    ensure!(run_triggers(&lab)? == ["manual"], "{:?}", run_triggers(&lab)?);

    // catch_up = false (the default): nothing runs at start, nor at the first ticks.
    lab.top = "timezone = \"Europe/Berlin\"\n".into();
    lab.start(&[], "catch_up = false\n")?;
    lab.agent().wait_log("serving as", Duration::from_secs(30))?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    ensure!(run_triggers(&lab)? == ["manual"], "a backup ran without catch_up: {:?}", run_triggers(&lab)?);

    // catch_up = true: one backup at start, by the scheduler, however many years were missed.
    lab.start(&[], "catch_up = true\n")?;
    lab.agent().wait_log("catch-up: a scheduled backup came due while the agent was down", Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let h = lab.history().await?;
        if h.iter().filter(|e| e.result == "ok").count() == 2 {
            break;
        }
        if Instant::now() > deadline {
            bail!("no catch-up backup ran: {h:?}\n{}", lab.agent().logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(run_triggers(&lab)? == ["manual", "schedule"], "{:?}", run_triggers(&lab)?);

    // Started again: the last attempt is now after the last due time, so nothing more runs.
    lab.start(&[], "catch_up = true\n")?;
    lab.agent().wait_log("serving as", Duration::from_secs(30))?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    ensure!(run_triggers(&lab)? == ["manual", "schedule"], "caught up twice: {:?}", run_triggers(&lab)?);
    ensure!(!lab.agent().logs().contains("catch-up"), "{}", lab.agent().logs());
    Ok(())
}
