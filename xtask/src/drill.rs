//! `cargo xtask drill`: a disaster-recovery drill on the whole lab (`lab.rs`). Services layer: app1's dataset is
//! destroyed and restored from its latest Borg archive; host layer: the VM bundle is deleted and restored from its
//! backup. Each gets an RTO and a data check, printed as a table; any failed check exits non-zero. Owns the drill's
//! steps and checks; building the lab is `lab.rs`'s job, and it knows the agents only through labctl and gRPC.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use strata_tests::fixtures::cmd;

use crate::lab::{self, http_get, sha256, wait_for, Lab, VM_NAME};
use crate::sh;

/// The service the drill destroys (quiesced with `stop` for its backups).
const APP: &str = "app1";

struct Row {
    layer: &'static str,
    what: String,
    rto: Option<Duration>,
    check: String,
    ok: bool,
}

pub(crate) fn run() -> Result<()> {
    sh("cargo", &["build", "--workspace", "--bins"])?;
    lab::catch_signals()?;
    let lab = Lab::up("drill")?;
    println!("\ndrill: lab set up in {:.1} s; the drill starts\n", lab.setup_time().as_secs_f64());
    let mut rows = vec![layer("services", format!("{APP}: dataset destroyed, restored from Borg"), || services(&lab))];
    if !lab::interrupted() {
        rows.push(layer("host", format!("{VM_NAME}: bundle deleted, restored"), || host(&lab)));
    }
    println!("\n{:<9} {:<44} {:>7}  DATA CHECK", "LAYER", "WHAT", "RTO (s)");
    for r in &rows {
        let rto = r.rto.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
        println!("{:<9} {:<44} {:>7}  {}", r.layer, r.what, rto, r.check);
    }
    drop(lab);
    let failed = rows.iter().filter(|r| !r.ok).count();
    ensure!(failed == 0 && !lab::interrupted(), "{failed} of {} drill layers failed", rows.len());
    Ok(())
}

fn layer(layer: &'static str, what: String, f: impl FnOnce() -> Result<(Duration, String)>) -> Row {
    match f() {
        Ok((rto, check)) => Row { layer, what, rto: Some(rto), check: format!("ok: {check}"), ok: true },
        Err(e) => {
            eprintln!("drill: the {layer} layer failed: {e:#}");
            Row { layer, what, rto: None, check: format!("FAILED: {e}"), ok: false }
        }
    }
}

/// Down, destroy the dataset (and its snapshots), recreate it empty, restore the latest archive in place, up; the RTO
/// runs from the destroy until the app is healthy and answers through the hub. Every file of the archive must be back.
fn services(lab: &Lab) -> Result<(Duration, String)> {
    let app = lab.apps.iter().find(|a| a.name == APP).context("no app1 in the lab")?;
    let archive = app.repo.list_archives()?.pop().context("app1 has no archive")?;
    let reference = tempfile::Builder::new().prefix("strata-drill-").tempdir()?;
    let target = format!("{}::{archive}", app.repo.path().display());
    cmd::run(app.repo.command().args(["extract", &target]).current_dir(reference.path()))?;
    let want = tree(reference.path())?;
    let index = want.get(Path::new("index.html")).context("the archive has no index.html")?.1.clone();
    println!("drill: {archive} holds {} entries (read with borg extract)", want.len());

    lab.labctl(&["services", "down", APP])?;
    wait_for("app1 down", Duration::from_secs(60), || {
        lab.services().is_ok_and(|s| s.iter().any(|s| s.name == APP && s.containers.is_empty()))
    })?;
    let t0 = Instant::now();
    destroy(&app.dataset)?;
    cmd::run_args("zfs", ["create", &app.dataset])?;
    let empty = std::fs::read_dir(&app.mount).map(|mut d| d.next().is_none()).unwrap_or(false);
    ensure!(empty, "the recreated dataset is not mounted empty at {}", app.mount.display());
    println!("drill: destroyed {} with its snapshots, recreated it empty (a new disk)", app.dataset);
    lab.labctl(&["services", "restore", APP])?;
    lab.labctl(&["services", "up", APP])?;
    lab.wait_ready(&[APP], Duration::from_secs(120))?;
    let path = format!("/cgi-bin/svc/{APP}/index.html");
    wait_for("app1 answering through the hub", Duration::from_secs(60), || {
        http_get(lab.hub_port, &path).is_some_and(|(code, body)| code == 200 && body == index)
    })?;
    let rto = t0.elapsed();

    let got = tree(&app.mount)?;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v)).map(|(k, _)| k).collect();
    ensure!(missing.is_empty() && differ.is_empty(), "restored data: missing {missing:?}, different {differ:?}");
    let since = got.len() - want.len();
    Ok((rto, format!("{} entries equal the archive (mode, bytes); {since} written since", want.len())))
}

/// `zfs destroy -r`, retried while busy, never forced (a forced unmount of a busy dataset hangs zfs-fuse).
fn destroy(dataset: &str) -> Result<()> {
    let mut last = String::new();
    for _ in 0..30 {
        let out = cmd::output(Command::new("zfs").args(["destroy", "-r", dataset]))?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        std::thread::sleep(Duration::from_secs(1));
    }
    anyhow::bail!("zfs destroy -r {dataset} kept failing: {last}")
}

/// Stop, delete the bundle, restore it to its place, start; the RTO runs from the delete until QMP says running.
/// The disks must equal the backed-up ones (sha256) and the system disk must pass `qemu-img check`.
fn host(lab: &Lab) -> Result<(Duration, String)> {
    lab.labctl(&["vm", "stop", VM_NAME])?;
    wait_for("the vm off", Duration::from_secs(60), || lab.vm_info().is_ok_and(|v| v.state == "off"))?;
    let t0 = Instant::now();
    std::fs::remove_dir_all(&lab.vm.dir)?;
    println!("drill: deleted the bundle {}", lab.vm.dir.display());
    let to = lab.vm.dir.display().to_string();
    lab.labctl(&["vm", "restore", VM_NAME, "--to", &to])?;
    let _ = std::fs::remove_file(&lab.vm.qmp);
    lab.labctl(&["vm", "start", VM_NAME])?;
    wait_for("the vm running (QMP)", Duration::from_secs(60), || lab.qmp_status().is_ok_and(|s| s == "running"))?;
    let rto = t0.elapsed();

    for (disk, want) in &lab.vm.hashes {
        let got = sha256(&lab.vm.dir.join(disk))?;
        ensure!(&got == want, "{disk}: sha256 {got}, backed up {want}");
    }
    cmd::run(Command::new("qemu-img").args(["check", "-U", "-q"]).arg(lab.vm.dir.join("disk.qcow2")))?;
    Ok((rto, format!("{} disks sha256-equal the backed-up ones; qemu-img check clean", lab.vm.hashes.len())))
}

/// Path → (mode, bytes) of every file and directory under `root` (symlinks as their target).
fn tree(root: &Path) -> Result<BTreeMap<PathBuf, (u32, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            let meta = std::fs::symlink_metadata(&p)?;
            let mode = meta.permissions().mode() & 0o7777;
            let bytes = if meta.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&p)?.into_os_string().into_encoded_bytes()
            } else {
                std::fs::read(&p)?
            };
            out.insert(p.strip_prefix(root)?.to_path_buf(), (mode, bytes));
        }
    }
    Ok(out)
}
