//! The host-agent end to end: the real binary driving a real QEMU/KVM VM (TCG when KVM is missing) whose data disk
//! changes while it runs, on ext4 (clone falls back to suspend) and on a btrfs loop filesystem (reflink clones), with
//! real borg and rsync; crash recovery after SIGKILL; encryption refusal (the VMware path is in `host_vmware`).
//! Knows the agent's config format, logs and gRPC API only.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{VmBackupsRequest, VmDrillRequest, VmFilesRequest, VmRef, VmRestoreRequest};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::fixtures::{cmd, unique_suffix, wait_until};
use strata_tests::harness::{bin, AgentKind, AgentProc};
use strata_tests::vmlab::{backup, restore, sha256, Lab, VmSpec, BLOCK, BLOCKS};

// ---------------------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------------------
// A small blocking QMP client on the test's own QMP socket (the VM gets a second `-qmp` through vm.toml `args`).

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp { writer: s.try_clone()?, reader: BufReader::new(s) };
        q.read()?;
        q.exec("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("qmp connection closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn exec(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let mut m = json!({ "execute": cmd });
        if let Some(a) = args {
            m["arguments"] = a;
        }
        self.writer.write_all(format!("{m}\n").as_bytes())?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("qmp {cmd}: {e}");
            }
        }
    }

    fn status(&mut self) -> Result<String> {
        Ok(self.exec("query-status", None)?["status"].as_str().unwrap_or("?").to_string())
    }
}

/// Writes 4 KiB blocks into the VM's raw data disk through QEMU (`qemu-io` over HMP) whenever the VM runs, like a
/// guest would; logs each completed write `(block, byte)` in order.
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(usize, u8)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn spawn(qmp_path: PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let handle = std::thread::spawn(move || {
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut qmp: Option<Qmp> = None;
            while !s.load(Ordering::Relaxed) {
                let Some(q) = qmp.as_mut() else {
                    qmp = Qmp::connect(&qmp_path).ok();
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                match q.status() {
                    Ok(st) if st == "running" => {
                        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        let block = (seed >> 33) as usize % BLOCKS;
                        let n = l.lock().unwrap().len();
                        let byte = (n % 250 + 1) as u8;
                        let line = format!("qemu-io virtio1 \"write -P {byte} {} 4k\"", block * BLOCK);
                        match q.exec("human-monitor-command", Some(json!({ "command-line": line }))) {
                            Ok(v) if v.as_str().unwrap_or("").is_empty() => l.lock().unwrap().push((block, byte)),
                            _ => qmp = None,
                        }
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => qmp = None,
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Writer { stop, log, handle: Some(handle) }
    }

    fn writes(&self) -> Vec<(usize, u8)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The number of logged writes after which the (initially zero) data disk equals `restored`, if there is one.
fn matching_prefix(restored: &[u8], writes: &[(usize, u8)]) -> Option<usize> {
    if restored.len() != BLOCKS * BLOCK {
        return None;
    }
    let mut model = vec![0u8; BLOCKS];
    let uniform: Vec<Option<u8>> =
        restored.chunks(BLOCK).map(|c| if c.iter().all(|b| *b == c[0]) { Some(c[0]) } else { None }).collect();
    let mut wrong = (0..BLOCKS).filter(|&i| uniform[i] != Some(model[i])).count();
    if wrong == 0 {
        return Some(0);
    }
    for (k, &(block, byte)) in writes.iter().enumerate() {
        let before = uniform[block] == Some(model[block]);
        model[block] = byte;
        let after = uniform[block] == Some(model[block]);
        match (before, after) {
            (true, false) => wrong += 1,
            (false, true) => wrong -= 1,
            _ => {}
        }
        if wrong == 0 {
            return Some(k + 1);
        }
    }
    None
}

/// Every mode × engine on the filesystem holding `vm_parent`: each backup restores to a data disk byte-identical to
/// a state the running disk had at backup time, a system disk identical to the live one, and the VM runs afterwards.
async fn modes_and_engines(vm_parent: &Path, reflinks: bool) -> Result<()> {
    let mut lab = Lab::new(vm_parent)?;
    let borg = BorgRepo::init("correct horse battery staple")?;
    let passcommand =
        borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("passcommand")?;
    let rsync_target = lab.dir.path().join("rsync");
    std::fs::create_dir(&rsync_target)?;
    cmd::require("rsync", "rsync")?;

    let first = VmSpec { mode: "suspend", engine: "rsync", target: &rsync_target, extra: String::new() };
    lab.restart(&first)?;
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    ensure!(lab.state().await? == "running", "the vm did not start");
    let writer = Writer::spawn(lab.test_qmp.clone());
    ensure!(wait_until(Duration::from_secs(20), || writer.writes().len() > 20), "the writer cannot write to the vm");

    let mut restored_count = 0;
    for mode in ["stop", "suspend", "clone"] {
        for engine in ["borg", "rsync"] {
            let case = format!("{mode}/{engine}");
            let (target, extra) = match engine {
                "borg" => (borg.path(), format!("passcommand = {passcommand:?}\nretention = {{ last = 20 }}")),
                _ => (rsync_target.as_path(), "retention = { last = 20 }".to_string()),
            };
            lab.restart(&VmSpec { mode, engine, target, extra })?;
            let mut c = lab.client().await?;
            let msg = backup(&mut c, "lab").await.with_context(|| format!("{case}: backup"))?;
            ensure!(msg.contains("backed up as lab-"), "{case}: {msg}");
            let id =
                msg.split("backed up as ").nth(1).and_then(|s| s.split_whitespace().next()).context("id")?.to_string();
            let fell_back = msg.contains("fell back to suspend mode");
            if mode == "clone" {
                ensure!(fell_back != reflinks, "{case}: reflinks={reflinks} but the report says: {msg}");
                let clones: Vec<_> = std::fs::read_dir(vm_parent)?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("strata-clone-"))
                    .collect();
                ensure!(clones.is_empty(), "{case}: clone left behind");
            }

            // The VM runs again and its disk keeps changing.
            ensure!(lab.state().await? == "running", "{case}: vm not running after the backup");
            let n = writer.writes().len();
            ensure!(
                wait_until(Duration::from_secs(20), || writer.writes().len() > n + 5),
                "{case}: the disk stopped changing"
            );

            let req = VmBackupsRequest { name: "lab".into(), target: String::new() };
            let backups = c.list_backups(req).await?.into_inner().backups;
            let b = backups.iter().find(|b| b.id == id).with_context(|| format!("{case}: {id} not listed"))?;
            ensure!(b.downtime_seconds > 0.0, "{case}: downtime not recorded: {b:?}");

            // What the backup holds: listed for a borg target (paged), refused saying why for the others.
            let req = |token: String| VmFilesRequest {
                name: "lab".into(),
                archive: id.clone(),
                page_token: token,
                limit: 1,
                ..Default::default()
            };
            let files = c.list_files(req(String::new())).await;
            if engine == "borg" {
                let first = files.with_context(|| format!("{case}: list files"))?.into_inner();
                ensure!(first.archive == id && first.entries.len() == 1 && first.total >= 2, "{case}: {first:?}");
                let mut all = first.entries;
                let mut token = first.next_page_token;
                while !token.is_empty() {
                    let page = c.list_files(req(token)).await?.into_inner();
                    all.extend(page.entries);
                    token = page.next_page_token;
                }
                let disk =
                    all.iter().find(|f| f.path.ends_with("data.raw")).with_context(|| format!("{case}: {all:?}"))?;
                let live = std::fs::metadata(lab.vm_dir.join("data.raw"))?.len();
                ensure!(disk.r#type == "file" && disk.size == live, "{case}: {disk:?} vs {live} bytes live");
            } else {
                let e = files.err().with_context(|| format!("{case}: an rsync backup's files were listed"))?;
                ensure!(
                    e.code() == tonic::Code::FailedPrecondition && e.message().contains("only borg does"),
                    "{case}: {e:?}"
                );
            }

            let to = lab.dir.path().join(format!("restored-{mode}-{engine}"));
            restore(&mut c, "lab", &id, &to).await.with_context(|| format!("{case}: restore"))?;
            let data = std::fs::read(to.join("data.raw"))?;
            let writes = writer.writes();
            let k = matching_prefix(&data, &writes).with_context(|| {
                format!("{case}: restored data disk matches no state the disk had ({} writes)", writes.len())
            })?;
            ensure!(k > 0, "{case}: the backup holds no write at all");
            ensure!(
                sha256(&to.join("disk.qcow2"))? == sha256(&lab.vm_dir.join("disk.qcow2"))?,
                "{case}: system disk differs"
            );
            // Never over an existing bundle without --force.
            let again = restore(&mut c, "lab", &id, &to).await;
            ensure!(again.as_ref().is_err_and(|e| format!("{e:?}").contains("already exists")), "{case}: {again:?}");
            restored_count += 1;
            eprintln!("{case}: ok ({id}, downtime {:.3}s, captured write {k} of {})", b.downtime_seconds, writes.len());
        }
    }
    ensure!(restored_count == 6);

    // A drill restores the latest backup into scratch space, checks it (qemu-img check) and removes it.
    let mut c = lab.client().await?;
    let mut s = c.drill(VmDrillRequest { name: "lab".into(), target: String::new() }).await?.into_inner();
    let mut report = String::new();
    while let Some(p) = s.message().await? {
        report = p.message;
    }
    ensure!(report.starts_with("drill ok") && report.contains("scratch copy removed"), "{report}");
    ensure!(!lab.dir.path().join("state/drill").read_dir()?.any(|e| e.is_ok()), "drill left its scratch copy");
    // --force moves an existing bundle aside instead of overwriting it.
    let to = lab.dir.path().join("restored-clone-rsync");
    let req = VmRestoreRequest {
        name: "lab".into(),
        archive: String::new(),
        to: to.display().to_string(),
        force: true,
        start: false,
        target: String::new(),
    };
    let mut s = c.restore(req).await?.into_inner();
    let mut last = String::new();
    while let Some(p) = s.message().await? {
        last = p.message;
    }
    ensure!(last.contains("the previous bundle was moved to"), "{last}");
    ensure!(to.join("vm.toml").is_file(), "nothing restored at {}", to.display());

    // Disaster recovery in place: refused while the VM runs; once stopped, the latest backup replaces the bundle
    // (the old one is moved aside, not deleted) and the VM starts from it.
    let req = |start: bool| VmRestoreRequest {
        name: "lab".into(),
        archive: String::new(),
        to: lab.vm_dir.display().to_string(),
        force: true,
        start,
        target: String::new(),
    };
    let running = async { c.clone().restore(req(true)).await?.into_inner().message().await };
    ensure!(
        running.await.is_err_and(|e| e.message().contains("stop it before restoring")),
        "restored over a running vm"
    );
    c.stop(VmRef { name: "lab".into() }).await?;
    ensure!(lab.state().await? == "off", "the vm did not stop");
    let mut s = c.restore(req(true)).await?.into_inner();
    let mut last = String::new();
    while let Some(p) = s.message().await? {
        last = p.message;
    }
    ensure!(last.contains("moved to") && last.contains("started as lab"), "{last}");
    ensure!(lab.state().await? == "running", "the restored vm does not run");
    let aside = std::fs::read_dir(vm_parent)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("lab.replaced-"));
    ensure!(aside, "the previous bundle was not kept");
    drop(writer);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mode_and_engine_restores_identical_disks_on_ext4() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    modes_and_engines(parent.path(), false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mode_and_engine_restores_identical_disks_on_btrfs_with_reflinks() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    modes_and_engines(fs.path(), true).await
}

// ---------------------------------------------------------------------------------------------------------------

/// Starts the agent with extra environment (the crash hook), returning the child, its gRPC address and its log.
type Logs = Arc<Mutex<Vec<String>>>;

fn spawn_agent(config: &Path, env: &[(&str, &str)]) -> Result<(Child, String, Logs)> {
    let mut child = Command::new(bin("host-agent")?)
        .args(["--log-format", "human", "run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().context("stderr")?;
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            sink.lock().unwrap().push(line);
        }
    });
    let find = |pat: &str| logs.lock().unwrap().iter().find_map(|l| l.split(pat).nth(1).map(|s| s.trim().to_string()));
    if !wait_until(Duration::from_secs(20), || find("grpc listening on ").is_some()) {
        let _ = child.kill();
        bail!("host-agent did not start: {}", logs.lock().unwrap().join("\n"));
    }
    let addr = find("grpc listening on ").context("addr")?;
    Ok((child, format!("https://{addr}"), logs))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_paused_then_restart_resumes_the_vm_and_removes_only_our_clone() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::new(fs.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let bystander = fs.path().join("strata-clones-are-not-mine");
    std::fs::create_dir(&bystander)?;
    let spec = VmSpec { mode: "clone", engine: "rsync", target: &target, extra: String::new() };
    let config = lab.write_config(&spec)?;

    let (mut child, url, logs) = spawn_agent(&config, &[("STRATA_TEST_CRASH_AT", "resume")])?;
    let tls = lab.pki.material(&lab.pki.ca(), Role::Admin, "admin")?;
    let mut c = HostClient::new(tls.connect(&url, Role::HostAgent, Duration::from_secs(10)).await?);
    c.start(VmRef { name: "lab".into() }).await?;
    let mut bc = c.clone();
    let call = tokio::spawn(async move { backup(&mut bc, "lab").await });
    let held = wait_until(Duration::from_secs(30), || {
        logs.lock().unwrap().iter().any(|l| l.contains("test hook: holding at step resume"))
    });
    ensure!(held, "the agent never reached the crash hook: {}", logs.lock().unwrap().join("\n"));
    let mut q = Qmp::connect(&lab.test_qmp)?;
    ensure!(q.status()? == "paused", "the vm should be paused at the crash point");
    let clones = || -> Result<Vec<String>> {
        Ok(std::fs::read_dir(fs.path())?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("strata-clone-"))
            .collect())
    };
    ensure!(clones()?.len() == 1, "one clone should exist at the crash point: {:?}", clones()?);
    Command::new("kill").args(["-KILL", &child.id().to_string()]).status()?;
    child.wait()?;
    let _ = call.await;
    ensure!(q.status()? == "paused", "nothing resumed the vm yet");

    lab.agent = Some(AgentProc::start_with_config(AgentKind::Host, &config)?);
    // Recovery runs right after the listeners are bound, before serving.
    let resumed = wait_until(Duration::from_secs(30), || q.status().is_ok_and(|s| s == "running"));
    ensure!(resumed, "the restarted agent did not resume the vm: {}", lab.agent()?.logs());
    let removed = wait_until(Duration::from_secs(10), || clones().is_ok_and(|c| c.is_empty()));
    ensure!(removed, "our clone was not removed: {:?}", clones()?);
    ensure!(bystander.is_dir() && lab.vm_dir.join("data.raw").is_file(), "recovery removed something not ours");
    // The clone is gone before its log line is written: wait for the line.
    lab.agent()?.wait_log("removed clone", Duration::from_secs(10))?;
    let log = lab.agent()?.logs();
    ensure!(log.contains("resumed vm lab") && log.contains("removed clone"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_write_failure_while_paused_resumes_the_vm_first_then_fails_the_backup() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let spec = VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: String::new() };
    let config = lab.write_config(&spec)?;
    let go = lab.dir.path().join("go");
    let hook = format!("quiesce:{}", go.display());
    lab.agent = Some(AgentProc::start_with_env(AgentKind::Host, &config, &[("STRATA_TEST_WAIT_AT", hook.as_str())])?);
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    let mut q = Qmp::connect(&lab.test_qmp)?;
    ensure!(q.status()? == "running", "the vm runs");
    let mut bc = c.clone();
    let call = tokio::spawn(async move { backup(&mut bc, "lab").await });
    lab.agent()?.wait_log("test hook: waiting at step quiesce", Duration::from_secs(60))?;
    // The journal's database becomes unwritable (a stand-in for a full disk): a second connection holds its write
    // lock, as another process would.
    let db = agent_core::state::open_db(&lab.dir.path().join("state"), "host")?;
    db.execute_batch("BEGIN IMMEDIATE")?;
    std::fs::write(&go, b"")?;
    let paused = wait_until(Duration::from_secs(20), || q.status().is_ok_and(|s| s == "paused"));
    ensure!(paused, "the vm was never paused: {}", lab.agent()?.logs());
    // While the journal still cannot be written, the vm runs again.
    let running = wait_until(Duration::from_secs(30), || q.status().is_ok_and(|s| s == "running"));
    ensure!(running, "the vm stays {} while the journal is locked:\n{}", q.status()?, lab.agent()?.logs());
    db.execute_batch("ROLLBACK")?;
    drop(db);
    // Then the backup fails, naming the journal.
    let err = tokio::time::timeout(Duration::from_secs(60), call).await??.unwrap_err().to_string();
    ensure!(err.contains("journal") && err.contains("resumed first"), "{err}");
    ensure!(lab.state().await? == "running", "the vm runs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_restore_targets_are_confined_and_force_moves_aside_only_a_vm_bundle() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    lab.restart(&VmSpec { mode: "stop", engine: "rsync", target: &target, extra: String::new() })?;
    let mut c = lab.client().await?;
    backup(&mut c, "lab").await.context("backup of the vm while it is off")?;
    let attempt = |to: String, force: bool| {
        let mut c = c.clone();
        async move {
            let req = VmRestoreRequest {
                name: "lab".into(),
                archive: String::new(),
                to,
                force,
                start: false,
                target: String::new(),
            };
            let mut s = c.restore(req).await?.into_inner();
            let mut last = String::new();
            while let Some(p) = s.message().await? {
                last = p.message;
            }
            Ok::<_, tonic::Status>(last)
        }
    };
    let base = lab.dir.path().to_path_buf();
    // A non-empty directory that is not a VM bundle is not moved aside, even with --force.
    let precious = base.join("precious");
    std::fs::create_dir(&precious)?;
    std::fs::write(precious.join("mine"), b"not a vm")?;
    let err = attempt(precious.display().to_string(), true).await.unwrap_err();
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    let m = err.message();
    ensure!(m.contains(&precious.display().to_string()) && m.contains("not a VM bundle"), "{m}");
    ensure!(std::fs::read(precious.join("mine"))? == b"not a vm", "the directory was touched");
    let moved = std::fs::read_dir(&base)?.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.starts_with("precious.replaced-") || n.contains("strata-restore")
    });
    ensure!(!moved, "something was moved aside or staged next to {}", precious.display());
    // `..`, a symlinked component and a system directory are refused, naming the path and why.
    std::fs::create_dir(base.join("real"))?;
    std::os::unix::fs::symlink(base.join("real"), base.join("link"))?;
    let system = format!("/etc/strata-vm-restore-{}", unique_suffix());
    let cases = [
        (format!("{}/real/../escaped", base.display()), "`..`", base.join("escaped")),
        (format!("{}/link/lab", base.display()), "link is a symlink", base.join("real/lab")),
        (system.clone(), "system directory /etc", PathBuf::from(&system)),
        ("/etc".to_string(), "system directory /etc", PathBuf::from("/etc/vm.toml")),
    ];
    for (to, why, landed) in cases {
        let err = attempt(to.clone(), true).await.unwrap_err();
        ensure!(err.message().contains(&to) && err.message().contains(why), "{to}: {}", err.message());
        ensure!(!landed.exists(), "{to}: something was restored at {}", landed.display());
    }
    // A VM bundle is still moved aside with --force.
    let ok = base.join("real/lab");
    attempt(ok.display().to_string(), false).await.map_err(|s| anyhow!("restore: {s}"))?;
    let last = attempt(ok.display().to_string(), true).await.map_err(|s| anyhow!("restore --force: {s}"))?;
    ensure!(last.contains("the previous bundle was moved to"), "{last}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unencrypted_or_missing_target_is_refused_and_the_vm_keeps_running() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let spec =
        VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: "require_encrypted_target = true".into() };
    lab.restart(&spec)?;
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    let err = backup(&mut c, "lab").await.expect_err("an unencrypted target must be refused");
    let text = format!("{err:?}");
    ensure!(text.contains("is not encrypted") && text.contains("require_encrypted_target"), "{text}");
    ensure!(lab.state().await? == "running", "vm not running after a refused backup");
    ensure!(std::fs::read_dir(&target)?.next().is_none(), "something was written to the refused target");

    let missing = lab.dir.path().join("no-such-target");
    lab.restart(&VmSpec { mode: "clone", engine: "rsync", target: &missing, extra: String::new() })?;
    let mut c = lab.client().await?;
    let err = backup(&mut c, "lab").await.expect_err("a missing target must fail");
    ensure!(format!("{err:?}").contains("does not exist"), "{err:?}");
    ensure!(lab.state().await? == "running", "vm not running after a failed backup");

    // An unreachable guest is a warning, or an abort when require_guest is set; the VM runs either way.
    let guest = "guest = \"https://127.0.0.1:9\"\n".to_string();
    lab.restart(&VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: guest.clone() })?;
    let mut c = lab.client().await?;
    let msg = backup(&mut c, "lab").await?;
    ensure!(
        msg.contains("backed up as") && msg.contains("guest https://127.0.0.1:9 did not prepare for the backup"),
        "{msg}"
    );
    // A real services-agent over mTLS, reached with the host-agent's identity: it grants the lease (its running
    // jobs finished, new ones held) and the host releases it after the VM resumed.
    let services = AgentProc::start(AgentKind::Services, &lab.pki)?;
    let real = format!("guest = \"{}\"\n", services.url());
    lab.restart(&VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: real })?;
    let mut c = lab.client().await?;
    let msg = backup(&mut c, "lab").await?;
    ensure!(msg.contains("backed up as") && !msg.contains("did not prepare"), "{msg}");
    services.wait_log("host backup lease taken", Duration::from_secs(5))?;
    services.wait_log("host backup lease released", Duration::from_secs(5))?;
    eprintln!("real services-agent guest: {msg}");
    drop(services);
    let strict = format!("{guest}require_guest = true\n");
    lab.restart(&VmSpec { mode: "clone", engine: "rsync", target: &target, extra: strict })?;
    let mut c = lab.client().await?;
    let err = backup(&mut c, "lab").await.expect_err("require_guest must abort");
    ensure!(format!("{err:?}").contains("require_guest is set"), "{err:?}");
    ensure!(lab.state().await? == "running", "vm not running after an aborted backup");

    let ghost = VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: String::new() };
    let text = lab.config_text(&[("ghost", &lab.dir.path().join("no-vm"), &ghost)])?;
    let path = lab.dir.path().join("ghost.toml");
    std::fs::write(&path, text)?;
    let ghost_agent = AgentProc::start_with_config(AgentKind::Host, &path)?;
    let tls = lab.pki.material(&lab.pki.ca(), Role::Admin, "admin")?;
    let mut gc = HostClient::new(tls.connect(&ghost_agent.url(), Role::HostAgent, Duration::from_secs(10)).await?);
    let err = backup(&mut gc, "ghost").await.expect_err("a missing vm must fail");
    ensure!(format!("{err:?}").contains("does not exist"), "{err:?}");
    let err = backup(&mut gc, "nope").await.expect_err("an unknown vm must fail");
    ensure!(format!("{err:?}").contains("no vm `nope`"), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_backs_up_a_vm_once_at_start_when_its_schedule_came_due_while_the_agent_was_down() -> Result<()> {
    cmd::require("rsync", "rsync")?;
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let copies = || std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0);
    // Yearly in Berlin: it does not come due during the test. The VM was never backed up: with catch_up = false
    // nothing runs at start.
    let start = |lab: &mut Lab, catch_up: bool| -> Result<()> {
        if let Some(mut a) = lab.agent.take() {
            a.terminate()?;
        }
        let spec = VmSpec {
            mode: "stop",
            engine: "rsync",
            target: &target,
            extra: format!("schedule = \"@yearly\"\ncatch_up = {catch_up}"),
        };
        let text = format!("timezone = \"Europe/Berlin\"\n{}", lab.config_text(&[("lab", &lab.vm_dir, &spec)])?);
        let path = lab.dir.path().join("host-agent.toml");
        std::fs::write(&path, text)?;
        lab.agent = Some(AgentProc::start_with_config(AgentKind::Host, &path)?);
        Ok(())
    };
    start(&mut lab, false)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(copies() == 0, "a backup ran without catch_up");
    ensure!(!lab.agent()?.logs().contains("catch-up"), "{}", lab.agent()?.logs());

    // catch_up = true and no backup ever tried: one backup at start, by the scheduler.
    start(&mut lab, true)?;
    lab.agent()?.wait_log("catch-up: a scheduled backup came due while the agent was down", Duration::from_secs(20))?;
    lab.agent()?.wait_log("scheduled backup done", Duration::from_secs(60))?;
    ensure!(copies() == 1, "one copy after the catch-up, found {}", copies());

    // Started again: the last attempt is after the last due time (January 1st), so nothing more runs.
    start(&mut lab, true)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(!lab.agent()?.logs().contains("catch-up"), "caught up twice: {}", lab.agent()?.logs());
    ensure!(copies() == 1, "{} copies", copies());
    Ok(())
}
