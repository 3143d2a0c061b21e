//! `cargo xtask bench backup`: the downtime and the cost of the services-agent's per-service backups (quiesce →
//! recursive ZFS snapshot → resume → `borg create` from a clone) of a live service at 10 MiB and 1 GiB of
//! incompressible data, beside the naive way (stop the containers, `borg create` the live data, start them again)
//! and beside a bare `borg create` of the same data. Real components: zfs-fuse (pool on a sparse file in /var/tmp),
//! a repokey Borg repository per measurement, dockerd with two busybox containers per service (one appends its clock
//! to a file on the dataset every 10 ms, so the data changes during every backup and the longest gap in that file
//! is an independent view of the downtime), and the release services-agent over mTLS.
//! Owns the setup and the measurement; `report` holds the figures and prints them against the targets; never fails
//! on numbers.

mod report;

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{BackupRequest, HistoryRequest};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::cmd;
use strata_tests::fixtures::docker::{Container, DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::zfs::ZfsPool;
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use tonic::transport::Channel;

use super::procs::release_bins;
use report::{report, report_journal, Figures, Run};

const MIB: u64 = 1 << 20;
/// Room for 1 GiB + 10 MiB of data, their snapshots and clones (clones share blocks), with margin.
const POOL_MB: u64 = 4096;
/// Pause-mode backups per size into a fresh repository each (the agent's whole-run figure).
const FIRST_RUNS: usize = 5;
/// Pause-mode backups per size after the first ones (incremental).
const PAUSE_RUNS: usize = 12;
const STOP_RUNS: usize = 3;
const NAIVE_RUNS: usize = 1;
const PASSPHRASE: &str = "strata bench backup passphrase";
const PROJECT_LABEL: &str = "com.docker.compose.project";

/// Appends the host clock (`/proc/uptime` is not namespaced) every 10 ms; exits at once on SIGTERM.
const WRITER: &str = "trap 'exit 0' TERM INT; \
                      while :; do read up idle < /proc/uptime; echo \"$up\" >> /data/writer.log; usleep 10000; done";

/// This host's `/proc/uptime` (the clock the writers log).
fn uptime() -> Result<f64> {
    let t = std::fs::read_to_string("/proc/uptime")?;
    t.split_whitespace().next().and_then(|u| u.parse().ok()).context("cannot parse /proc/uptime")
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    cmd::run(
        Command::new("git")
            .args(["-c", "user.name=bench", "-c", "user.email=bench@strata.invalid", "-C"])
            .arg(dir)
            .args(args),
    )
    .map(drop)
}

/// `borg create` of `dir` (as `.`, from inside it, with the agent's flags) into `repo`; returns its wall time.
/// Exit code 1 (a file changed while read: the writer's log) is a warning, as for the agent.
fn borg_create(repo: &BorgRepo, dir: &Path, archive: &str) -> Result<f64> {
    let target = format!("{}::{archive}", repo.path().display());
    let mut c = repo.command();
    c.args(["create", "--json", "--lock-wait", "60", "--sparse", "--", &target, "."]).current_dir(dir);
    let t = Instant::now();
    let out = cmd::output(&mut c)?;
    let secs = t.elapsed().as_secs_f64();
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!("`borg create {target}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(secs)
}

/// Kills, by pid, the processes the agent started for its jobs (they carry `STRATA_JOB_OWNER=OWNER`): a borg left
/// running by a killed agent would keep the clone mounted and the pool busy.
fn kill_jobs(owner: &str) {
    let marker = format!("STRATA_JOB_OWNER={owner}");
    let find = || -> Vec<String> {
        let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
        procs
            .flatten()
            .filter(|p| p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
            .filter(|p| {
                let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
                env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
            })
            .map(|p| p.file_name().to_string_lossy().into_owned())
            .collect()
    };
    for signal in ["-TERM", "-KILL"] {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            let _ = Command::new("kill").args([signal, pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !find().is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The agent (restarted with another config per phase); on Drop it is killed and so are its job processes.
struct Agent {
    proc: Option<AgentProc>,
    owner: String,
    /// Log lines of the current process already looked at.
    seen: usize,
}

impl Agent {
    fn start(&mut self, config: &Path) -> Result<&AgentProc> {
        self.stop();
        self.seen = 0;
        Ok(self.proc.insert(AgentProc::start_with_config(AgentKind::Services, config)?))
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.terminate();
        }
        kill_jobs(&self.owner);
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One size: a service (compose project) with its own dataset, containers and repositories.
struct Subject {
    label: &'static str,
    size: u64,
    name: String,
    dataset: String,
    mount: PathBuf,
    /// The agent's repositories, each fresh when it became the current (last) one.
    agent_repos: Vec<BorgRepo>,
    passphrase_file: PathBuf,
}

impl Subject {
    fn agent_repo(&self) -> &BorgRepo {
        self.agent_repos.last().expect("one repository at least")
    }
}

/// The longest gap between consecutive clock lines of the writer from just before `from` to its first line at or
/// after `to` (waited for: the writer must be writing again), and when it began.
fn writer_gap(mount: &Path, from: f64, to: f64) -> Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(mount.join("writer.log"))?;
        let v: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let first = v.iter().rposition(|t| *t <= from);
        let last = v.iter().position(|t| *t >= to);
        if let (Some(first), Some(last)) = (first, last) {
            let widest = v[first..=last].windows(2).map(|w| (w[1] - w[0], w[0])).max_by(|a, b| a.0.total_cmp(&b.0));
            return Ok(widest.unwrap_or((0.0, from)));
        }
        if Instant::now() > deadline {
            bail!("the writer logged nothing around {from:.2}..{to:.2} in {} (is it running?)", mount.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which of the programs an agent's backup runs are alive, sampled every 20 ms on the writers' clock: the
/// transitions `(uptime, "zfs destroy, borg create")` ("" when none), to tell what the service waited on.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, String)>>,
}

impl Sampler {
    /// Samples `zfs` commands naming `pool` and `borg` commands naming `needle` (the service).
    fn start(pool: &str, needle: &str) -> Sampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pool, needle, flag) = (pool.to_string(), needle.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut out: Vec<(f64, String)> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let now = uptime().unwrap_or(0.0);
                let mut alive: Vec<String> = Vec::new();
                for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                    let comm = comm.trim();
                    if !(comm == "zfs" || comm.starts_with("borg")) {
                        continue;
                    }
                    let argv = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                    let argv: Vec<String> =
                        argv.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                    let joined = argv.join(" ");
                    let label = if comm == "zfs" && joined.contains(&pool) {
                        argv.get(1).map(|sub| format!("zfs {sub}"))
                    } else if joined.contains(&needle) {
                        // `borg create …` (python: argv[0] is the interpreter or borg itself).
                        argv.iter()
                            .position(|a| a.ends_with("borg"))
                            .and_then(|i| argv.get(i + 1))
                            .map(|sub| format!("borg {sub}"))
                    } else {
                        None
                    };
                    if let Some(l) = label {
                        if !alive.contains(&l) {
                            alive.push(l);
                        }
                    }
                }
                alive.sort();
                let now_label = alive.join(", ");
                if out.last().is_none_or(|(_, l)| *l != now_label) {
                    out.push((now, now_label));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(f64, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// What was going on at uptime `t`: the programs alive then (or during the `span` after it) and the last progress
/// step the agent had announced.
fn at_time(t: f64, span: f64, marks: &[(f64, String)], procs: &[(f64, String)]) -> String {
    let step = marks.iter().rev().find(|(m, _)| *m <= t).map_or("before the first progress message", |(_, s)| s);
    let mut during: Vec<&str> = Vec::new();
    let active_at = |x: f64| procs.iter().rev().find(|(m, _)| *m <= x).map(|(_, l)| l.as_str());
    if let Some(l) = active_at(t) {
        during.push(l);
    }
    for (m, l) in procs {
        if *m > t && *m < t + span && !during.contains(&l.as_str()) {
            during.push(l);
        }
    }
    let during: Vec<&str> = during.into_iter().filter(|l| !l.is_empty()).collect();
    if during.is_empty() {
        format!("after progress step {step}; no zfs/borg command running")
    } else {
        format!("after progress step {step}; running: {}", during.join(" then "))
    }
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

/// `zfs create -p POOL/REL`, mounted. zfs-fuse fails to create mountpoints while others create pools and datasets at
/// the same time ("failed to create mountpoint"): on a failure, mount what was created, else try again.
fn create_dataset(pool: &ZfsPool, rel: &str) -> Result<String> {
    let full = format!("{}/{rel}", pool.name());
    let mut last = None;
    for attempt in 1..=10u64 {
        match pool.create_dataset(rel) {
            Ok(d) if mounted(&pool.dataset_mountpoint(rel)) => return Ok(d),
            Ok(_) => last = Some(anyhow::anyhow!("{full} created but not mounted")),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(300 * attempt));
        // Mount, top down, whichever of our datasets exists unmounted.
        let mut name = pool.name().to_string();
        let mut ok = true;
        for part in rel.split('/') {
            name = format!("{name}/{part}");
            let sub = name.strip_prefix(&format!("{}/", pool.name())).unwrap_or(&name).to_string();
            let exists = Command::new("zfs").args(["list", "-H", "-o", "name", &name]).output();
            if !exists.is_ok_and(|o| o.status.success()) {
                ok = false;
                break;
            }
            if !mounted(&pool.dataset_mountpoint(&sub)) && cmd::run_args("zfs", ["mount", &name]).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(full);
        }
        eprintln!("bench backup: creating {full} (attempt {attempt}): {:#}", last.as_ref().expect("set"));
    }
    Err(last.expect("set").context(format!("creating {full}")))
}

struct Bench {
    pki: Pki,
    work: PathBuf,
    origin: PathBuf,
    prefix: String,
    pool: String,
    rt: tokio::runtime::Runtime,
    /// What looked wrong in the agent along the way (printed with the figures).
    notes: RefCell<Vec<String>>,
}

impl Bench {
    /// The agent's config: an (empty) stacks repository and hub, required for `[[services]]`; every subject backed up
    /// with `quiesce`.
    fn config(&self, subjects: &[Subject], quiesce: &str) -> Result<PathBuf> {
        let (cert, key) = self.pki.issue(Role::ServicesAgent, "services1")?;
        let mut text = base_config(&self.work.join("state"), &self.pki.ca(), &cert, &key);
        text.push_str(&format!(
            "[stacks]\nrepo = {:?}\ncheckout_dir = {:?}\npoll = \"1h\"\n\
             [hub]\nstack = \"{p}-proxy\"\nnetwork = \"{p}-hub\"\ndomain = \"bench.test\"\naddress = \"10.0.0.20\"\n\
             [backup]\nparallel = 2\nsnapshot_mount_dir = {:?}\n",
            self.origin.display().to_string(),
            self.work.join("checkout").display().to_string(),
            self.work.join("snapshots").display().to_string(),
            p = self.prefix,
        ));
        for s in subjects {
            text.push_str(&format!(
                "[[services]]\nname = {:?}\ndataset = {:?}\nrepo = {:?}\npassphrase_file = {:?}\nquiesce = \"{quiesce}\"\n\
                 local_snapshots = 3\n",
                s.name,
                s.dataset,
                s.agent_repo().path().display().to_string(),
                s.passphrase_file.display().to_string(),
            ));
        }
        let path = self.work.join(format!("services-agent-{quiesce}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    async fn client(&self, agent: &AgentProc) -> Result<ServicesClient<Channel>> {
        let admin = self.pki.material(&self.pki.ca(), Role::Admin, "bench-admin")?;
        let ch = admin.connect(&agent.url(), Role::ServicesAgent, Duration::from_secs(3600)).await?;
        Ok(ServicesClient::new(ch))
    }

    /// Notes the WARN and ERROR lines of the agent's log not seen before, except the sync's complaint that the
    /// stacks repository has no directory for the services (by design here: the containers are started by hand).
    fn agent_log_notes(&self, agent: &mut Agent) {
        let mut expected = 0;
        let logs = agent.logs();
        let new: Vec<&str> = logs.lines().skip(agent.seen).collect();
        agent.seen += new.len();
        let busy: Vec<&&str> = new.iter().filter(|l| l.contains("zfs dataset busy, retrying")).collect();
        if let Some(first) = busy.first() {
            let n = format!(
                "agent log: {} \"zfs dataset busy, retrying\" line(s) since the last look, the first: {}",
                busy.len(),
                first.split_once(' ').map_or(**first, |(_, rest)| rest).trim()
            );
            eprintln!("bench backup: NOTE {n}");
            self.notes.borrow_mut().push(n);
        }
        for line in new {
            if !(line.contains(" WARN ") || line.contains(" ERROR ")) {
                continue;
            }
            if line.contains("stack not deployed") {
                expected += 1;
                continue;
            }
            // Without the timestamp, so that a repeated message is noted once.
            let msg: String = line.split_once(' ').map_or(line, |(_, rest)| rest).chars().take(400).collect();
            let n = format!("agent log: {}", msg.trim());
            let mut notes = self.notes.borrow_mut();
            if !notes.contains(&n) {
                eprintln!("bench backup: NOTE {n}");
                notes.push(n);
            }
        }
        eprintln!("bench backup: agent log: {expected} expected warning(s) about the stacks repository without stacks");
    }

    /// [`Bench::backup`], tried again (up to 3 times) after a failure, which is noted.
    fn backup_noted(&self, engine: &DockerEngine, agent: &Agent, s: &Subject) -> Result<Run> {
        let mut attempt = 1;
        loop {
            match self.backup(engine, agent, s) {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 3 => {
                    let n = format!("backup of {} failed (attempt {attempt}, tried again): {e:#}", s.name);
                    eprintln!("bench backup: NOTE {n}");
                    self.notes.borrow_mut().push(n);
                    self.check_after(engine, s)?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One Backup RPC of `s`; the downtime and duration are the agent's own, read back from History. Afterwards the
    /// service must be running again, with no clone left and at most `local_snapshots` snapshots.
    fn backup(&self, engine: &DockerEngine, agent: &Agent, s: &Subject) -> Result<Run> {
        let proc = agent.proc.as_ref().context("agent not started")?;
        let sampler = Sampler::start(&self.pool, &s.name);
        let mut marks: Vec<(f64, String)> = Vec::new();
        let result = self.rt.block_on(async {
            let mut c = self.client(proc).await?;
            let from = uptime()?;
            let t = Instant::now();
            let mut stream = c.backup(BackupRequest { name: s.name.clone(), all: false }).await?.into_inner();
            let mut done = false;
            let mut borg_at = None;
            loop {
                match stream.message().await {
                    Ok(Some(p)) => {
                        marks.push((uptime()?, p.step.clone()));
                        done |= p.step == "done";
                        if p.step == "borg-create" {
                            borg_at = Some(t.elapsed().as_secs_f64());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => bail!("backup of {} failed: {:?}: {}", s.name, e.code(), e.message()),
                }
            }
            let wall = t.elapsed().as_secs_f64();
            let to = uptime()?;
            if !done {
                bail!("the backup stream of {} ended without a \"done\" message", s.name);
            }
            let h = c.history(HistoryRequest { name: s.name.clone(), limit: 1 }).await?.into_inner();
            let e = h.entries.into_iter().next().context("History has no entry after a backup")?;
            anyhow::Ok((from, to, wall, borg_at, e))
        });
        let procs = sampler.finish();
        let (from, to, wall, borg_at, entry) = result?;
        if entry.kind != "backup" || !(entry.result == "ok" || entry.result == "warning") {
            bail!("last History entry of {} is {} {}: {}", s.name, entry.kind, entry.result, entry.error);
        }
        let (gap, gap_at) = writer_gap(&s.mount, from, to)?;
        // A silence of the writer well beyond the downtime the agent measured: the service waited on something else.
        if gap > entry.downtime_seconds + 0.15 {
            let n = format!(
                "backup of {}: the writer was silent {gap:.2} s, the agent measured {:.3} s of downtime; the silence \
                 began {:.2} s into the run, {}",
                s.name,
                entry.downtime_seconds,
                gap_at - from,
                at_time(gap_at, gap, &marks, &procs)
            );
            eprintln!("bench backup: NOTE {n}");
            self.notes.borrow_mut().push(n);
        }
        self.check_after(engine, s)?;
        let before_borg = borg_at.unwrap_or(f64::NAN);
        let mark = |step: &str| marks.iter().find(|(_, m)| m == step).map(|(t, _)| *t);
        let borg = match (mark("borg-create"), mark("destroy-clone")) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        Ok(Run {
            downtime: entry.downtime_seconds,
            duration: entry.duration_seconds,
            wall,
            gap,
            before_borg,
            borg_on: wall - before_borg,
            borg,
        })
    }

    /// What must hold after every backup, noted (and the containers repaired) when it does not: both containers
    /// running (not paused), no clone dataset left, the local snapshots pruned to `local_snapshots`.
    fn check_after(&self, engine: &DockerEngine, s: &Subject) -> Result<()> {
        let note = |n: String| {
            eprintln!("bench backup: NOTE {n}");
            self.notes.borrow_mut().push(n);
        };
        let filter = format!("label={PROJECT_LABEL}={}", s.name);
        let running = engine.docker(["ps", "-q", "--filter", &filter, "--filter", "status=running"])?;
        let n = running.split_whitespace().count();
        if n != 2 {
            let states = engine.docker(["ps", "-a", "--filter", &filter, "--format", "{{.Names}} {{.State}}"])?;
            note(format!("after a backup of {}: {n} of 2 containers running ({})", s.name, states.trim()));
            let all = engine.docker(["ps", "-aq", "--filter", &filter])?;
            for id in all.split_whitespace() {
                let _ = engine.docker(["unpause", id]);
                let _ = engine.docker(["start", id]);
            }
        }
        let datasets = cmd::run_args("zfs", ["list", "-H", "-o", "name", "-r", &self.pool])?;
        if let Some(c) = datasets.lines().find(|l| l.contains("strata-clone-")) {
            note(format!("after a backup of {}: clone {c} left behind", s.name));
        }
        let snaps = cmd::run_args("zfs", ["list", "-H", "-o", "name", "-t", "snapshot", "-r", &self.pool])?;
        let ours = snaps.lines().filter(|l| l.starts_with(&format!("{}@strata-", s.dataset))).count();
        if ours > 3 {
            note(format!("after a backup of {}: {ours} local snapshots (local_snapshots = 3)", s.name));
        }
        Ok(())
    }

    /// `borg create` into `repo` from a fresh clone of a new snapshot of the subject's dataset, mounted in the work
    /// dir (the agent's read path without the agent); returns borg's time only. Snapshot and clone are destroyed.
    fn bare_from_clone(&self, s: &Subject, repo: &BorgRepo, n: usize) -> Result<f64> {
        let snap = format!("{}@bench-bare-{n}", s.dataset);
        let clone = format!("{}/bench-bare-clone", self.pool);
        let mount = self.work.join("bare-clone");
        cmd::run_args("zfs", ["snapshot", &snap])?;
        let cloned = cmd::run(
            Command::new("zfs")
                .arg("clone")
                .arg("-o")
                .arg(format!("mountpoint={}", mount.display()))
                .args([&snap, &clone]),
        );
        let created = cloned.and_then(|_| {
            if !mounted(&mount) {
                cmd::run_args("zfs", ["mount", &clone])?;
            }
            borg_create(repo, &mount, &format!("{}-bare-clone", s.name))
        });
        let mut destroyed = Ok(String::new());
        for _ in 0..10 {
            destroyed = cmd::run_args("zfs", ["destroy", "-r", &clone]);
            if destroyed.is_ok() || !Command::new("zfs").args(["list", &clone]).output()?.status.success() {
                destroyed = Ok(String::new());
                break;
            }
            let _ = Command::new("zfs").args(["unmount", "-f", &clone]).output();
            std::thread::sleep(Duration::from_millis(300));
        }
        let snap_destroyed = cmd::run_args("zfs", ["destroy", &snap]);
        let secs = created?;
        destroyed?;
        snap_destroyed?;
        Ok(secs)
    }

    /// The naive way: `docker stop` every container of the project, `borg create` the live mountpoint into `repo`,
    /// `docker start` them; the downtime is the whole span.
    fn naive(&self, engine: &DockerEngine, s: &Subject, repo: &BorgRepo) -> Result<Run> {
        let filter = format!("label={PROJECT_LABEL}={}", s.name);
        let ids = engine.docker(["ps", "-q", "--filter", &filter])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            bail!("no running container in project {}", s.name);
        }
        let from = uptime()?;
        let t = Instant::now();
        engine.docker(["stop"].into_iter().chain(ids.iter().copied()))?;
        let created = borg_create(repo, &s.mount, &format!("{}-naive", s.name));
        // Started again whatever borg did.
        engine.docker(["start"].into_iter().chain(ids.iter().copied()))?;
        let span = t.elapsed().as_secs_f64();
        created?;
        // The writer's first line after the restart closes the gap.
        std::thread::sleep(Duration::from_millis(300));
        let (gap, _) = writer_gap(&s.mount, from, uptime()? - 0.2)?;
        Ok(Run {
            downtime: span,
            duration: span,
            wall: span,
            gap,
            before_borg: f64::NAN,
            borg_on: f64::NAN,
            borg: f64::NAN,
        })
    }
}

/// `cargo xtask bench backup`.
pub(crate) fn run() -> Result<()> {
    release_bins(&["services-agent"])?;
    for (program, package) in [("borg", "borgbackup"), ("git", "git"), ("head", "coreutils")] {
        cmd::require(program, package)?;
    }
    let engine = DockerEngine::ensure()?;
    TestImage::build(&engine, TEST_IMAGE_TAG)?;

    // Dropped in reverse order: agent (and its borg), containers, repositories, pool, work dir.
    let work = tempfile::Builder::new().prefix("strata-bench-backup-").tempdir_in("/var/tmp")?;
    let pool = ZfsPool::create_sized(POOL_MB)?;
    let prefix = format!("bkb{}", std::process::id());
    let bench = Bench {
        pki: Pki::new()?,
        work: work.path().to_path_buf(),
        origin: work.path().join("origin"),
        prefix: prefix.clone(),
        pool: pool.name().to_string(),
        rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?,
        notes: RefCell::new(Vec::new()),
    };
    // A stacks repository without the services' directories: the agent deploys nothing, the containers below are
    // the projects (the agent finds them by their compose project label).
    std::fs::create_dir_all(&bench.origin)?;
    std::fs::write(bench.origin.join("README"), "bench backup: no stacks\n")?;
    git(&bench.origin, &["init", "-q", "-b", "main"])?;
    git(&bench.origin, &["add", "-A"])?;
    git(&bench.origin, &["commit", "-qm", "bench"])?;
    // Every borg of this bench (the agent's too) keeps its caches and keys here, not in ~root.
    std::env::set_var("BORG_BASE_DIR", work.path().join("borg-base"));
    std::env::remove_var("BORG_PASSPHRASE");
    std::env::remove_var("BORG_PASSCOMMAND");

    let mut subjects = Vec::new();
    let mut containers: Vec<Container> = Vec::new();
    for (size, label, short) in [(10 * MIB, "10 MiB", "small"), (1024 * MIB, "1 GiB", "large")] {
        let name = format!("{prefix}-{short}");
        let rel = format!("appdata/{name}");
        let dataset = create_dataset(&pool, &rel)?;
        let mount = pool.dataset_mountpoint(&rel);
        eprintln!("bench backup: writing {label} of random data into {dataset}…");
        let t = Instant::now();
        let data = mount.join("data.bin");
        cmd::run(Command::new("sh").arg("-c").arg(format!("head -c {size} /dev/urandom > '{}'", data.display())))?;
        // On disk before measuring: otherwise the first snapshot pays for committing the fresh data.
        cmd::run(Command::new("sync").arg("-f").arg(&data))?;
        eprintln!("bench backup: {label} written in {:.1} s", t.elapsed().as_secs_f64());
        let agent_repos = vec![BorgRepo::init(PASSPHRASE)?];
        let passphrase_file = work.path().join(format!("{short}.passphrase"));
        std::fs::write(&passphrase_file, PASSPHRASE)?;
        std::fs::set_permissions(&passphrase_file, std::fs::Permissions::from_mode(0o600))?;
        let volume = format!("{}:/data", mount.display());
        let project = format!("{PROJECT_LABEL}={name}");
        for (service, command) in [("writer", vec!["/bin/sh", "-c", WRITER]), ("web", vec![])] {
            let service = format!("com.docker.compose.service={service}");
            let args = ["--label", &project, "--label", &service, "-v", &volume];
            containers.push(Container::run(&engine, TEST_IMAGE_TAG, &args, &command)?);
        }
        subjects.push(Subject { label, size, name, dataset, mount, agent_repos, passphrase_file });
    }
    let mut agent =
        Agent { proc: None, owner: format!("services-agent:{}", work.path().join("state").display()), seen: 0 };
    // Let the writers write.
    std::thread::sleep(Duration::from_secs(1));

    let result = measure(&bench, &engine, &mut agent, &mut subjects);
    if result.is_err() {
        eprintln!("---- services-agent log ----\n{}\n---- end ----", agent.logs());
    }
    drop(agent);
    drop(containers);
    drop(subjects);
    drop(pool);
    drop(work);
    result
}

/// Host load, to judge how noisy the figures are.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn measure(bench: &Bench, engine: &DockerEngine, agent: &mut Agent, subjects: &mut [Subject]) -> Result<()> {
    let load_before = loadavg();
    let mut figures: Vec<Figures> = subjects
        .iter()
        .map(|s| Figures {
            label: s.label,
            size: s.size,
            first: vec![],
            pause: vec![],
            stop: vec![],
            naive: vec![],
            bare: vec![],
            bare_clone: vec![],
        })
        .collect();
    let bare = |s: &Subject| -> Result<f64> {
        let repo = BorgRepo::init(PASSPHRASE)?;
        eprintln!("bench backup: {}: bare borg create into a fresh repository…", s.label);
        // The process sampler that watches agent runs watches this one too: both sides carry its cost.
        let sampler = Sampler::start(&bench.pool, &s.name);
        let secs = borg_create(&repo, &s.mount, &format!("{}-bare", s.name));
        sampler.finish();
        let secs = secs?;
        eprintln!("bench backup: {}: bare {secs:.2} s", s.label);
        Ok(secs)
    };
    let mut clones = 0;
    let mut bare_clone = |s: &Subject| -> Result<f64> {
        clones += 1;
        let repo = BorgRepo::init(PASSPHRASE)?;
        eprintln!("bench backup: {}: bare borg create from a fresh clone into a fresh repository…", s.label);
        let sampler = Sampler::start(&bench.pool, &s.name);
        let secs = bench.bare_from_clone(s, &repo, clones);
        sampler.finish();
        let secs = secs?;
        eprintln!("bench backup: {}: bare from a clone {secs:.2} s", s.label);
        Ok(secs)
    };

    // First backups (pause mode), each into a fresh repository (the agent restarted on a config naming it), and bare
    // creates into fresh repositories, alternating, so that neither side gets the warmer cache or the quieter host.
    for k in 0..FIRST_RUNS {
        if k > 0 {
            for s in subjects.iter_mut() {
                s.agent_repos.push(BorgRepo::init(PASSPHRASE)?);
            }
        }
        agent.start(&bench.config(subjects, "pause")?)?;
        for (s, f) in subjects.iter().zip(&mut figures) {
            // The clone's zfs work first, so that the agent's snapshot does not directly follow our destroys.
            f.bare_clone.push(bare_clone(s)?);
            f.bare.push(bare(s)?);
            eprintln!("bench backup: {}: agent backup (pause) into a fresh repository…", s.label);
            let r = bench.backup_noted(engine, agent, s)?;
            eprintln!("bench backup: {}: first {r:?}", s.label);
            f.first.push(r);
        }
        bench.agent_log_notes(agent);
    }
    for (s, f) in subjects.iter().zip(&mut figures) {
        f.bare.push(bare(s)?);
        f.bare_clone.push(bare_clone(s)?);
        for _ in 0..PAUSE_RUNS {
            let r = bench.backup_noted(engine, agent, s)?;
            eprintln!("bench backup: {}: pause {r:?}", s.label);
            f.pause.push(r);
        }
    }
    bench.agent_log_notes(agent);

    agent.start(&bench.config(subjects, "stop")?)?;
    for (s, f) in subjects.iter().zip(&mut figures) {
        for _ in 0..STOP_RUNS {
            let r = bench.backup_noted(engine, agent, s)?;
            eprintln!("bench backup: {}: stop {r:?}", s.label);
            f.stop.push(r);
        }
    }
    bench.agent_log_notes(agent);
    agent.stop();

    for (s, f) in subjects.iter().zip(&mut figures) {
        for _ in 0..NAIVE_RUNS {
            let repo = BorgRepo::init(PASSPHRASE)?;
            eprintln!("bench backup: {}: naive stop, borg create into a fresh repository, start…", s.label);
            let r = bench.naive(engine, s, &repo)?;
            eprintln!("bench backup: {}: naive {r:?}", s.label);
            f.naive.push(r);
        }
    }
    let load = format!("{load_before} before, {} after", loadavg());
    let journal = journal_write_cost(&bench.work)?;
    report(&figures, &bench.notes.borrow(), &load);
    report_journal(&journal, &figures);
    Ok(())
}

/// The mean time of one journal write (an INSERT or UPDATE in its own transaction, as `Journal::begin`/`done` make)
/// in a WAL database on the state directory's filesystem, with `synchronous=NORMAL` and with `FULL` (what the agents
/// run with since the hardening issue), measured side by side in alternating rounds.
fn journal_write_cost(work: &Path) -> Result<[(&'static str, Duration); 2]> {
    const ROUNDS: u32 = 5;
    const WRITES: u32 = 100;
    let dir = work.join("journal-cost");
    let mut total = [Duration::ZERO; 2];
    for _ in 0..ROUNDS {
        for (i, mode) in ["NORMAL", "FULL"].iter().enumerate() {
            let db = agent_core::state::open_db(&dir, &format!("journal-{mode}"))?;
            db.pragma_update(None, "synchronous", mode)?;
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS j (id INTEGER PRIMARY KEY, step TEXT, started REAL, done REAL)",
            )?;
            let t = Instant::now();
            for n in 0..WRITES / 2 {
                db.execute("INSERT INTO j (step, started) VALUES (?1, ?2)", ("snapshot", f64::from(n)))?;
                let id = db.last_insert_rowid();
                db.execute("UPDATE j SET done = ?1 WHERE id = ?2", (f64::from(n), id))?;
            }
            total[i] += t.elapsed();
        }
    }
    let per = |d: Duration| d / (ROUNDS * WRITES);
    Ok([("NORMAL", per(total[0])), ("FULL", per(total[1]))])
}
