//! `cargo xtask bench offsite`: what the services-agent's backup to an off-site repository costs beside a bare
//! `borg create` of the same data to the same remote, over the shaped link of the off-site host (`strata_tests::
//! offsite`: a real sshd in a network namespace, 20 ms each way, 50 Mbit/s, the agent's key held to `borg serve
//! --append-only`). 1 GiB of incompressible data in 1,024 files on a zfs-fuse dataset of a live service (the test
//! lab's writer container); the release services-agent over mTLS. Three phases, each the agent's whole run (the RPC,
//! wall clock) beside bare borg (`BORG_RSH` = the same ssh command, its own repository on the same disk): the first
//! run, a second run with nothing changed (median of three), and a run after 1 % of the files changed.
//! Owns the setup and the measurement; never fails on numbers.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use strata_proto::v1::BackupRequest;
use strata_tests::backuplab::{Lab, PASSPHRASE};
use strata_tests::fixtures::files::write_random_files;
use strata_tests::offsite::{BorgClient, OffsiteHost};

use super::procs::release_bins;
use super::stats::median;

/// 1,024 files of 1 MiB.
const FILES: usize = 1024;
const MIB: usize = 1 << 20;
/// Room for 1 GiB of data, its snapshots and the clone (clones share blocks).
const POOL_MB: u64 = 3072;
const SECOND_RUNS: usize = 3;

pub(super) fn run() -> Result<()> {
    release_bins(&["services-agent"])?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let off = OffsiteHost::start()?;
    off.trusted_init("agent", PASSPHRASE)?;
    off.trusted_init("bare", PASSPHRASE)?;
    let mut lab = Lab::with_pool("quiesce = \"pause\"\n", POOL_MB)?;
    lab.repos = Some(format!(
        "[{{ label = \"offsite\", url = {:?}, ssh_key = {:?}, known_hosts = {:?}, append_only = true }}]",
        off.url("agent"),
        off.key_path().display().to_string(),
        off.known_hosts_path().display().to_string()
    ));
    let data = lab.mount().join("data");
    println!("offsite: writing {FILES} files of 1 MiB of random data");
    write_random_files(&data, FILES, MIB)?;
    lab.start(&[], "")?;
    let bare = off.agent_client("bare", PASSPHRASE)?;
    let bare_url = off.url("bare");
    let mount = lab.mount();
    let mut n = 0;
    let mut bare_run = |what: &str| -> Result<f64> {
        n += 1;
        let t = bare_create(&bare, &bare_url, &mount, &format!("bare-{n}"))?;
        println!("offsite: {what}: bare borg create {t:.1} s");
        Ok(t)
    };
    let agent_run = |what: &str| -> Result<f64> {
        let t = rt.block_on(agent_backup(&lab))?;
        println!("offsite: {what}: the agent's run {t:.1} s");
        Ok(t)
    };

    let (a1, b1) = (agent_run("first run")?, bare_run("first run")?);
    let mut a2 = Vec::new();
    let mut b2 = Vec::new();
    for _ in 0..SECOND_RUNS {
        a2.push(agent_run("unchanged")?);
        b2.push(bare_run("unchanged")?);
    }
    println!("offsite: rewriting 1 % of the files ({} of {FILES})", FILES / 100);
    write_random_files(&data, FILES / 100, MIB)?;
    let (a3, b3) = (agent_run("1 % changed")?, bare_run("1 % changed")?);

    let (a2, b2) = (median(&a2), median(&b2));
    println!();
    println!("bench offsite — 1 GiB, 1,024 files, to an append-only repository over ssh (40 ms RTT, 50 Mbit/s)");
    println!("  first run:      agent {a1:8.1} s   bare borg {b1:8.1} s   ratio {:.3}   (target ≤ 1.05)", a1 / b1);
    println!(
        "  unchanged:      agent {a2:8.2} s   bare borg {b2:8.2} s   ratio {:.3}   (target ≤ 1.2; medians of {SECOND_RUNS})",
        a2 / b2
    );
    println!(
        "  1 % changed:    agent {a3:8.2} s   bare borg {b3:8.2} s   agent vs its first run {:.3}   (target ≤ 0.10)",
        a3 / a1
    );
    Ok(())
}

/// One backup through the agent's gRPC API, its wall time.
async fn agent_backup(lab: &Lab) -> Result<f64> {
    let mut c = lab.client().await?;
    let t = Instant::now();
    let s = c.backup(BackupRequest { name: lab.service.clone(), all: false }).await?.into_inner();
    Lab::drain(s).await.map_err(|e| anyhow::anyhow!("backup: {e}"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// `borg create` of `dir` (as `.`, from inside it, with the agent's flags) over ssh; its wall time. Exit code 1
/// (a file changed while read: the writer's) is a warning, as for the agent.
fn bare_create(client: &BorgClient, url: &str, dir: &Path, archive: &str) -> Result<f64> {
    let target = format!("{url}::{archive}");
    let mut c = client.command();
    c.args(["create", "--json", "--lock-wait", "60", "--sparse", "--", &target, "."]).current_dir(dir);
    let t = Instant::now();
    let out = c.output().context("running borg create")?;
    let secs = t.elapsed().as_secs_f64();
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!("`borg create {target}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(secs)
}
