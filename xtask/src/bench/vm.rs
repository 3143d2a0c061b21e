//! `cargo xtask bench vm`: the VM downtime of a host-agent backup in `clone` mode (pause, reflink clone, resume) at
//! 1 GiB and 8 GiB of disk, beside suspend-copy-resume (`suspend` mode copying the same disk while paused), with a
//! real QEMU VM on a btrfs loop filesystem and fresh rsync targets (so nothing is hard-linked from an earlier copy);
//! and what a clone-mode borg backup costs when little changed (`cost.rs`). Owns the setup and the measurement;
//! reports against the targets, never fails on numbers.
//!
//! `STRATA_BIN_DIR=DIR` runs the binaries in DIR instead of building release ones (figures of a debug build are
//! only a smoke test); `STRATA_BENCH_VM_QUICK=1` measures the downtime at 1 GiB only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{VmBackupRequest, VmBackupsRequest, VmRef};
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};

use super::procs::release_bins;
use super::stats::median;

mod cost;

const GIB: u64 = 1 << 30;
/// Clone-mode backups per disk size: its downtime is milliseconds, where one sample is mostly scheduling noise.
const CLONE_RUNS: usize = 5;

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}: run `cargo xtask deps`"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A VM directory with one raw disk of `size` bytes filled with data (not sparse, so the copy is real).
fn make_vm(dir: &Path, size: u64) -> Result<()> {
    make_vm_with(dir, &[("disk.raw", size)])
}

/// A VM directory whose raw disks are `disks` (name, bytes), each filled with data; `vm.toml` written last.
fn make_vm_with(dir: &Path, disks: &[(&str, u64)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, size) in disks {
        fill(&dir.join(name), *size, name)?;
    }
    let names: Vec<String> = disks.iter().map(|(n, _)| format!("{n:?}")).collect();
    std::fs::write(dir.join("vm.toml"), format!("memory_mb = 128\ncpus = 1\ndisks = [{}]\n", names.join(", ")))?;
    Ok(())
}

/// Writes `size` bytes of data (lines of `word`) over `file` in place (its size kept when it exists), written back
/// before measuring: otherwise the next pause pays for flushing gigabytes of fresh page cache.
fn fill(file: &Path, size: u64, word: &str) -> Result<()> {
    let f = file.display();
    let script = format!(
        "yes 'strata-bench-data {word}' | head -c {size} | dd of='{f}' bs=1M iflag=fullblock conv=notrunc status=none"
    );
    output(Command::new("sh").arg("-c").arg(script))?;
    output(Command::new("sync").arg("-f").arg(file))?;
    Ok(())
}

/// Kills the bench VM (it holds its disk open) when dropped, also on an error path.
struct StopVm(PathBuf);

impl Drop for StopVm {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            let dead = |p: &str| !Path::new(&format!("/proc/{p}")).exists();
            for _ in 0..50 {
                if dead(pid.trim()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

struct Bench {
    pki: Pki,
    work: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    /// One backup of the VM `bench` at `vm_dir` in `mode` into a fresh rsync target; returns the recorded downtime.
    fn downtime(&self, vm_dir: &Path, mode: &str, label: &str) -> Result<f64> {
        let target = self.work.join(format!("target-{label}"));
        std::fs::create_dir_all(&target)?;
        let (cert, key) = self.pki.issue(Role::HostAgent, "host1")?;
        let mut text = base_config(&self.work.join("state"), &self.pki.ca(), &cert, &key);
        text.push_str(&format!(
            "[[vms]]\nname = \"bench\"\nbackend = \"qemu\"\npath = {vm_dir:?}\nmode = \"{mode}\"\nengine = \"rsync\"\n\
             target = {target:?}\n"
        ));
        let config = self.work.join(format!("{label}.toml"));
        std::fs::write(&config, text)?;
        let agent = AgentProc::start_with_config(AgentKind::Host, &config)?;
        let admin = self.pki.material(&self.pki.ca(), Role::Admin, "bench-admin")?;
        let result = self.rt.block_on(async {
            let ch = admin.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?;
            let mut c = HostClient::new(ch);
            c.start(VmRef { name: "bench".into() }).await?;
            let mut s = c.backup(VmBackupRequest { name: "bench".into(), all: false }).await?.into_inner();
            let mut report = String::new();
            while let Some(p) = s.message().await? {
                if p.summary.is_some() {
                    report = p.message;
                }
            }
            if mode == "clone" && report.contains("fell back") {
                bail!("clone mode fell back to suspend: {report}");
            }
            let req = VmBackupsRequest { name: "bench".into(), target: String::new() };
            let list = c.list_backups(req).await?.into_inner().backups;
            let last = list.last().context("no backup listed")?;
            anyhow::Ok(last.downtime_seconds)
        });
        drop(agent);
        std::fs::remove_dir_all(&target)?;
        // The copy just written (and deleted) is still being written back: without this, the next measurement's
        // pause and clone would share the disk with gigabytes of the previous run's writeback (8 GiB runs most).
        output(Command::new("sync").arg("-f").arg(&self.work))?;
        result
    }
}

/// `cargo xtask bench vm` (wired by the lead in `bench::Which`).
pub(crate) fn run() -> Result<()> {
    match std::env::var_os("STRATA_BIN_DIR") {
        Some(d) => eprintln!("bench vm: binaries of {} (STRATA_BIN_DIR), not a release build", Path::new(&d).display()),
        None => release_bins(&["host-agent"])?,
    }
    let quick = std::env::var_os("STRATA_BENCH_VM_QUICK").is_some_and(|v| v == "1");
    for (program, package) in [
        ("mkfs.btrfs", "btrfs-progs"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("rsync", "rsync"),
        ("borg", "borgbackup"),
    ] {
        if output(Command::new("sh").arg("-c").arg(format!("command -v {program}"))).is_err() {
            bail!("component `{program}` (Debian package `{package}`) is not installed; run `cargo xtask deps`");
        }
    }
    // 8 GiB disk + its clone's copy + the suspend copy, with room to spare.
    let fs = Btrfs::create(30 * GIB)?;
    let bench = Bench {
        pki: Pki::new()?,
        work: fs.path().join("work"),
        rt: tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?,
    };
    std::fs::create_dir_all(&bench.work)?;
    let mut rows = Vec::new();
    let sizes: &[u64] = if quick { &[1] } else { &[1, 8] };
    for &gib in sizes {
        let vm_dir = fs.path().join(format!("vm-{gib}g"));
        eprintln!("bench vm: writing a {gib} GiB disk…");
        make_vm(&vm_dir, gib * GIB)?;
        let guard = StopVm(bench.work.join("state/qemu/bench.pid"));
        let mut clones = Vec::new();
        for k in 0..CLONE_RUNS {
            let d = bench.downtime(&vm_dir, "clone", &format!("clone-{gib}-{k}"))?;
            eprintln!("bench vm: {gib} GiB: clone {d:.4}s");
            clones.push(d);
        }
        let suspend = bench.downtime(&vm_dir, "suspend", &format!("suspend-{gib}"))?;
        eprintln!("bench vm: {gib} GiB: suspend-copy-resume {suspend:.3}s");
        drop(guard);
        std::fs::remove_dir_all(&vm_dir)?;
        rows.push((gib, clones, suspend));
    }
    println!("VM downtime per backup (QEMU on btrfs, rsync; one run; clone: median of {CLONE_RUNS} backups)");
    println!("{:<8} {:>12} {:>22} {:>10}   clone each", "DISK", "CLONE", "SUSPEND-COPY-RESUME", "RATIO");
    for (gib, c, s) in &rows {
        let m = median(c);
        let each: Vec<String> = c.iter().map(|d| format!("{d:.4}")).collect();
        println!(
            "{:<8} {:>11.4}s {:>21.3}s {:>9.1}x   {}",
            format!("{gib} GiB"),
            m,
            s,
            s / m.max(1e-6),
            each.join(" ")
        );
    }
    let c1 = median(&rows[0].1);
    println!("target clone downtime <= 2 s: {} ({c1:.3}s at 1 GiB)", verdict(c1 <= 2.0));
    if let Some((_, c, s8)) = rows.get(1) {
        let c8 = median(c);
        println!("target clone downtime <= 2 s at 8 GiB: {} ({c8:.3}s)", verdict(c8 <= 2.0));
        println!("target clone 8 GiB / 1 GiB <= 1.3: {} ({:.2})", verdict(c8 / c1.max(1e-6) <= 1.3), c8 / c1.max(1e-6));
        println!(
            "target >= 10x less downtime than suspend-copy at 8 GiB: {} ({:.1}x)",
            verdict(s8 / c8.max(1e-6) >= 10.0),
            s8 / c8.max(1e-6)
        );
    }
    println!();
    cost::run(&bench, fs.path())
}

/// How a figure compares with its target.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
