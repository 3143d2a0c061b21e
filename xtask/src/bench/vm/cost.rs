//! `bench vm`'s cost part: what a clone-mode borg backup of a running QEMU VM costs when little changed, in one
//! agent with two VMs — `cost` (one 1 GiB raw disk) and `split` (eight raw extents, as Fusion's split disk, 128 MiB
//! each here) — against a bare `borg create` of the same bundle directory run twice (its second run is the files
//! cache hit). Times are the agent's own per-target transfer times from its history. Owns this setup and its
//! report; must not know the downtime part's (`super`'s) figures.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{VmBackupRequest, VmHistoryRequest, VmRef};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::harness::{base_config, AgentKind, AgentProc};

use super::{fill, make_vm_with, median, verdict, Bench, StopVm, GIB};

/// Extents of the split disk, and the bytes of each.
const EXTENTS: u64 = 8;
const EXTENT: u64 = GIB / EXTENTS;

/// Unchanged backups of `cost` after its first (the second is the one the target names).
const UNCHANGED_RUNS: usize = 3;

fn extent(i: u64) -> String {
    format!("split-f{i:03}.vmdk")
}

/// One backup: its id, the target's transfer time (its `borg create`), the whole run as the client waited for it
/// (the target's checks, guest freeze, pause, clone, resume, create, retention, history), the downtime, and what the
/// agent logged borg read.
struct Run {
    id: String,
    transfer: f64,
    whole: f64,
    downtime: f64,
    read: String,
}

/// Backs up `vm` through the agent, then reads its history row and the `borg read` line of its log.
async fn backup(c: &mut HostClient<tonic::transport::Channel>, agent: &AgentProc, vm: &str) -> Result<Run> {
    let t0 = Instant::now();
    let mut s = c.backup(VmBackupRequest { name: vm.into(), all: false }).await?.into_inner();
    let mut report = String::new();
    while let Some(p) = s.message().await? {
        if p.summary.is_some() {
            report = p.message;
        }
    }
    let whole = t0.elapsed().as_secs_f64();
    if report.contains("fell back") || !report.contains("backed up as ") {
        bail!("backup of {vm}: {report}");
    }
    let history = c.history(VmHistoryRequest { name: vm.into(), target: String::new() }).await?.into_inner();
    let row = history.entries.last().context("no history row")?;
    let line = agent.logs().lines().find(|l| l.contains(&row.id) && l.contains("borg read ")).map(str::to_string);
    let read = line.as_deref().and_then(|l| l.split("borg read ").nth(1)).unwrap_or("(not logged)");
    let read = read.split(" vm=").next().unwrap_or(read).to_string();
    Ok(Run { id: row.id.clone(), transfer: row.duration_seconds, whole, downtime: row.downtime_seconds, read })
}

/// Seconds a bare `borg create` of `dir` into `repo` takes, run `runs` times: each run's.
fn bare_creates(repo: &BorgRepo, dir: &Path, runs: usize) -> Result<Vec<f64>> {
    let mut took = Vec::new();
    for k in 0..runs {
        let archive = format!("{}::bare-{k}", repo.path().display());
        let t0 = Instant::now();
        let out = repo.command().current_dir(dir).args(["create", &archive, "."]).output()?;
        took.push(t0.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("bare borg create: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(took)
}

/// Runs the cost part on the btrfs filesystem at `root` and prints its figures against the targets.
pub(super) fn run(bench: &Bench, root: &Path) -> Result<()> {
    let (whole, split) = (root.join("vm-cost"), root.join("vm-split"));
    eprintln!("bench vm: cost: writing a 1 GiB disk and a split disk of {EXTENTS} x {} MiB…", EXTENT >> 20);
    make_vm_with(&whole, &[("disk.raw", GIB)])?;
    let names: Vec<String> = (1..=EXTENTS).map(extent).collect();
    let disks: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), EXTENT)).collect();
    make_vm_with(&split, &disks)?;
    let (repo_cost, repo_split, repo_bare) =
        (BorgRepo::init("bench")?, BorgRepo::init("bench")?, BorgRepo::init("bench")?);
    let passcommand =
        |r: &BorgRepo| r.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).unwrap_or_default();
    let (cert, key) = bench.pki.issue(Role::HostAgent, "host1")?;
    let mut text = base_config(&bench.work.join("state"), &bench.pki.ca(), &cert, &key);
    for (name, dir, repo) in [("cost", &whole, &repo_cost), ("split", &split, &repo_split)] {
        text.push_str(&format!(
            "[[vms]]\nname = \"{name}\"\nbackend = \"qemu\"\npath = {dir:?}\nmode = \"clone\"\nengine = \"borg\"\n\
             target = {:?}\npasscommand = {:?}\n",
            repo.path(),
            passcommand(repo)
        ));
    }
    let config = bench.work.join("cost.toml");
    std::fs::write(&config, text)?;
    let agent = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let _stop_cost = StopVm(bench.work.join("state/qemu/cost.pid"));
    let _stop_split = StopVm(bench.work.join("state/qemu/split.pid"));
    let admin = bench.pki.material(&bench.pki.ca(), Role::Admin, "bench-admin")?;
    let (cost_runs, split_first, split_changed) = bench.rt.block_on(async {
        let ch = admin.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?;
        let mut c = HostClient::new(ch);
        c.start(VmRef { name: "cost".into() }).await?;
        c.start(VmRef { name: "split".into() }).await?;
        let mut cost_runs = Vec::new();
        for k in 0..=UNCHANGED_RUNS {
            let r = backup(&mut c, &agent, "cost").await?;
            eprintln!(
                "bench vm: cost: backup {k}: create {:.3}s, whole run {:.3}s, downtime {:.4}s; borg read {}",
                r.transfer, r.whole, r.downtime, r.read
            );
            cost_runs.push(r);
        }
        let first = backup(&mut c, &agent, "split").await?;
        eprintln!("bench vm: split: first backup {:.3}s; borg read {}", first.transfer, first.read);
        // One extent changes while the VM runs (its size kept, as a guest's write leaves it).
        fill(&split.join(extent(3)), EXTENT, "changed")?;
        let changed = backup(&mut c, &agent, "split").await?;
        eprintln!("bench vm: split: one extent changed {:.3}s; borg read {}", changed.transfer, changed.read);
        anyhow::Ok((cost_runs, first, changed))
    })?;
    eprintln!("bench vm: cost: bare borg create of the same bundle, twice…");
    let bare = bare_creates(&repo_bare, &whole, 2)?;
    drop(agent);

    let second = &cost_runs[1];
    let unchanged: Vec<f64> = cost_runs[1..].iter().map(|r| r.transfer).collect();
    let ratio = second.transfer / bare[1].max(1e-6);
    let share = split_changed.transfer / split_first.transfer.max(1e-6);
    let downtimes: Vec<f64> = cost_runs.iter().chain([&split_first, &split_changed]).map(|r| r.downtime).collect();
    let worst = downtimes.iter().cloned().fold(0.0, f64::max);
    println!(
        "VM backup cost (QEMU on btrfs, clone mode, borg; one run; CREATE is the target's transfer (its borg create), \
         WHOLE the run as the client waited for it)"
    );
    println!("{:<48} {:>10} {:>10}   borg read", "BACKUP", "CREATE", "WHOLE");
    for (k, r) in cost_runs.iter().enumerate() {
        let what =
            if k == 0 { "1 GiB disk: first".to_string() } else { format!("1 GiB disk, unchanged: backup {}", k + 1) };
        println!("{:<48} {:>9.3}s {:>9.3}s   {}", what, r.transfer, r.whole, r.read);
    }
    println!("{:<48} {:>9.3}s", "bare borg create of the bundle: first", bare[0]);
    println!("{:<48} {:>9.3}s", "bare borg create of the bundle: second (cache hit)", bare[1]);
    println!(
        "{:<48} {:>9.3}s {:>9.3}s   {}",
        format!("split {EXTENTS} x {} MiB: first", EXTENT >> 20),
        split_first.transfer,
        split_first.whole,
        split_first.read
    );
    println!(
        "{:<48} {:>9.3}s {:>9.3}s   {}",
        "split: one extent changed", split_changed.transfer, split_changed.whole, split_changed.read
    );
    println!(
        "target second unchanged backup <= 1.5x a bare borg create's cache hit: {} ({:.2}x: {:.3}s vs {:.3}s; \
         median of the unchanged backups {:.3}s)",
        verdict(ratio <= 1.5),
        ratio,
        second.transfer,
        bare[1],
        median(&unchanged)
    );
    println!(
        "  the whole second run: {:.3}s ({:.2}x the bare cache hit): the rest is the agent's per-run work around the \
         create (the target's borg list and repository id, pause, clone, resume, retention, history)",
        second.whole,
        second.whole / bare[1].max(1e-6)
    );
    println!(
        "target one changed extent of {EXTENTS} <= 25 % of the first backup: {} ({:.1} %: {:.3}s vs {:.3}s; whole runs \
         {:.1} %: {:.3}s vs {:.3}s)",
        verdict(share <= 0.25),
        share * 100.0,
        split_changed.transfer,
        split_first.transfer,
        split_changed.whole / split_first.whole.max(1e-6) * 100.0,
        split_changed.whole,
        split_first.whole
    );
    println!(
        "target clone downtime <= 2 s in these backups: {} (worst {worst:.4}s, median {:.4}s; backups {}, {})",
        verdict(worst <= 2.0),
        median(&downtimes),
        second.id,
        split_changed.id
    );
    let _ = Command::new("sync").arg("-f").arg(root).status();
    Ok(())
}
