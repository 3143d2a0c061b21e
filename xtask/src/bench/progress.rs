//! `cargo xtask bench progress`: what byte progress costs the agent's backup run. The release host-agent backs up an
//! off QEMU VM with a 1 GiB disk of incompressible data (rewritten before every run, so that each run reads, chunks,
//! encrypts and writes all of it) to a borg repository, on a one-minute schedule. Within each minute it makes one run
//! that labctl would make (started over gRPC and watched: byte progress on, so the source is walked for the total and
//! borg runs with `--progress --log-json`, each line parsed and streamed) and one the scheduler makes (nobody watches:
//! borg without `--progress`). Each run's time is the agent's own record of its transfer to the target (`History`,
//! `duration_seconds`: walk and borg for the watched runs; the rest of a run is the same code either way); the watched
//! runs' wall time over gRPC is printed beside. Owns the setup and the measurement; never fails on numbers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{VmBackupRequest, VmHistoryRequest};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::files::write_random_files;
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use tonic::transport::Channel;

use super::procs::release_bins;
use super::stats::median;

const GIB: usize = 1 << 30;
/// Minutes measured: one watched and one scheduled run in each.
const ROUNDS: usize = 5;

pub(super) fn run() -> Result<()> {
    release_bins(&["host-agent"])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let pki = Pki::new()?;
    let work = tempfile::Builder::new().prefix("strata-bench-progress-").tempdir()?;
    let vm = work.path().join("lab");
    let disk = || write_random_files(&vm, 1, GIB);
    disk()?;
    std::fs::write(vm.join("vm.toml"), "memory_mb = 64\ncpus = 1\ndisks = [\"file-0.bin\"]\n")?;
    let borg = BorgRepo::init("bench progress passphrase")?;
    let passcommand = borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").context("passcommand")?.1;
    let (cert, key) = pki.issue(Role::HostAgent, AgentKind::Host.cert_name())?;
    let config = work.path().join("host-agent.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"stop\"\nengine = \"borg\"\n\
             target = {:?}\npasscommand = {passcommand:?}\nschedule = \"* * * * *\"\n",
            base_config(&work.path().join("state"), &pki.ca(), &cert, &key),
            vm.display().to_string(),
            borg.path().display().to_string(),
        ),
    )?;
    let agent = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let admin = pki.material(&pki.ca(), Role::Admin, "bench-admin")?;
    let mut c = rt.block_on(async {
        anyhow::Ok(HostClient::new(admin.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?))
    })?;
    let (mut watched, mut scheduled, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    let mut ours: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    println!(
        "progress: 1 GiB VM backups by the release host-agent, {ROUNDS} minutes of one watched and one scheduled run"
    );
    while scheduled.len() < ROUNDS {
        // The scheduler's next run (at most a minute and its 15 s tick away).
        let entry = rt.block_on(next_entry(&mut c, &mut seen, &ours, Duration::from_secs(100)))?;
        println!("progress: scheduled run {}: {:.2} s", entry.0, entry.1);
        scheduled.push(entry.1);
        disk()?;
        let t = Instant::now();
        let id = rt.block_on(watched_backup(&mut c))?;
        let wall = t.elapsed().as_secs_f64();
        ours.insert(id.clone());
        let recorded = rt.block_on(duration_of(&mut c, &id))?;
        seen.insert(id.clone());
        println!("progress: watched run {id}: {recorded:.2} s ({wall:.2} s over gRPC with its stream)");
        watched.push(recorded);
        walls.push(wall);
        disk()?;
    }
    drop(agent);
    let (w, s) = (median(&watched), median(&scheduled));
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!();
    println!("bench progress: the host-agent's 1 GiB borg transfer, {ROUNDS} runs each, one run of the bench");
    println!("  watched (byte progress)  median {w:.2} s, fastest {:.2} s", fastest(&watched));
    println!("  scheduled (none)         median {s:.2} s, fastest {:.2} s", fastest(&scheduled));
    println!(
        "  ratio                    median {:.3}x, fastest {:.3}x   (target <= 1.02x)",
        w / s,
        fastest(&watched) / fastest(&scheduled)
    );
    println!("  watched runs' wall time over gRPC: median {:.2} s", median(&walls));
    Ok(())
}

/// One backup over gRPC, its stream read to the end as labctl reads it; the backup's id.
async fn watched_backup(c: &mut HostClient<Channel>) -> Result<String> {
    let mut s = c.backup(VmBackupRequest { name: "lab".into(), all: false }).await?.into_inner();
    let (mut bytes, mut id) = (0, None);
    while let Some(p) = s.message().await? {
        bytes += usize::from(p.bytes);
        if let Some(summary) = p.summary {
            use strata_proto::v1::summary::Kind;
            if let Some(Kind::VmBackups(b)) = summary.kind {
                id = b.backups.into_iter().next().map(|b| b.id);
            }
        }
    }
    if bytes == 0 {
        bail!("the watched backup streamed no byte progress");
    }
    id.context("the watched backup ended without its summary")
}

/// The recorded transfer time of backup `id`.
async fn duration_of(c: &mut HostClient<Channel>, id: &str) -> Result<f64> {
    let h = c.history(VmHistoryRequest { name: "lab".into(), target: String::new() }).await?.into_inner();
    let e = h.entries.into_iter().find(|e| e.id == id).with_context(|| format!("{id} not in the history"))?;
    if !e.ok {
        bail!("backup {id} failed: {}", e.message);
    }
    Ok(e.duration_seconds)
}

/// Waits for a successful backup in the history that is neither ours nor seen: the scheduler's; its id and time.
async fn next_entry(
    c: &mut HostClient<Channel>,
    seen: &mut HashSet<String>,
    ours: &HashSet<String>,
    within: Duration,
) -> Result<(String, f64)> {
    let deadline = Instant::now() + within;
    loop {
        let h = c.history(VmHistoryRequest { name: "lab".into(), target: String::new() }).await?.into_inner();
        for e in h.entries {
            if seen.insert(e.id.clone()) && !ours.contains(&e.id) {
                if !e.ok {
                    bail!("scheduled backup {} failed: {}", e.id, e.message);
                }
                return Ok((e.id, e.duration_seconds));
            }
        }
        if Instant::now() > deadline {
            bail!("no scheduled backup within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
