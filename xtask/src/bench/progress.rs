//! `cargo xtask bench progress`: what byte progress costs a backup. The same 1 GiB of incompressible data (8 files)
//! backed up by `agent_core::borg` through the agents' one job runner (`agent_core::jobs::run`, a watcher draining
//! the stream as labctl does), with byte progress (the source walk for the total, `--progress --log-json`, each
//! line parsed and reported) and without (a job whose work runs borg as a scheduled run does), alternating,
//! each run into a fresh repository so that every run reads, chunks, encrypts and writes all of it.
//! Measures the only step that differs between the two (the agents' other steps run the same code either way).
//! Owns the setup and the measurement; never fails on numbers.

use std::time::Instant;

use agent_core::borg::Repo;
use agent_core::jobs::{Jobs, Registry, Update};
use anyhow::Result;
use futures::StreamExt;
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::files::write_random_files;

use super::stats::median;

const FILES: usize = 8;
const FILE_BYTES: usize = 128 << 20;
/// Pairs of runs (one with progress, one without; the order alternates).
const PAIRS: usize = 5;

pub(super) fn run() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let data = tempfile::Builder::new().prefix("strata-bench-progress-").tempdir()?;
    println!("progress: writing {FILES} files of {} MiB of random data", FILE_BYTES >> 20);
    write_random_files(data.path(), FILES, FILE_BYTES)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut updates_seen = 0;
    for i in 0..PAIRS * 2 {
        let progress = (i % 4 == 0) || (i % 4 == 3);
        let (secs, updates) = rt.block_on(one_run(data.path(), progress))?;
        println!("progress: run {} {}: {secs:.2} s ({updates} byte updates)", i + 1, label(progress));
        if progress {
            with.push(secs);
            updates_seen += updates;
        } else {
            without.push(secs);
        }
    }
    let (w, wo) = (median(&with), median(&without));
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (wf, wof) = (fastest(&with), fastest(&without));
    println!();
    println!("bench progress: 1 GiB borg create through the job runner, {PAIRS} runs each, one run of the bench");
    println!(
        "  with byte progress     median {w:.2} s, fastest {wf:.2} s   ({} byte updates per run)",
        updates_seen / PAIRS
    );
    println!("  without                median {wo:.2} s, fastest {wof:.2} s");
    println!("  ratio                  median {:.3}x, fastest {:.3}x   (target <= 1.02x)", w / wo, wf / wof);
    Ok(())
}

fn label(progress: bool) -> &'static str {
    if progress {
        "with progress"
    } else {
        "without"
    }
}

/// One backup of `data` into a new repository, as a job: its wall time and how many byte updates its watcher saw.
async fn one_run(data: &std::path::Path, progress: bool) -> Result<(f64, usize)> {
    let fixture = BorgRepo::init("bench progress passphrase")?;
    let mut repo = Repo::new(fixture.path().display().to_string());
    for (k, v) in fixture.env() {
        repo = if k == "BORG_PASSCOMMAND" { repo.passcommand(v) } else { repo.env(&k, v) };
    }
    let jobs: Registry<u64, String> = Jobs::new(4, 4);
    let root = data.to_path_buf();
    let t = Instant::now();
    let watcher = agent_core::jobs::run(
        &jobs,
        "backup",
        "bench",
        move |rep| async move {
            let mut repo = repo;
            if progress {
                let walk = root.clone();
                let total = tokio::task::spawn_blocking(move || agent_core::borg::source_bytes(&walk, &["."]))
                    .await
                    .unwrap_or(0);
                if let Some(sink) = agent_core::borg::job_progress(&rep, "borg-create", total, "bench") {
                    repo = repo.progress(sink);
                }
            }
            let (stats, _) = repo.create("bench-1", &root, &["."], None).await.map_err(|e| e.to_string())?;
            Ok(stats.original_size)
        },
        |_, e| e,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let items: Vec<_> = watcher.into_stream().collect().await;
    let secs = t.elapsed().as_secs_f64();
    let mut bytes_updates = 0;
    for item in items {
        match item.map_err(|e| anyhow::anyhow!("bench backup: {e}"))? {
            Update::Progress(p) if p.bytes => bytes_updates += 1,
            Update::Progress(_) => {}
            Update::Done(size) => anyhow::ensure!(size >= (FILES * FILE_BYTES) as u64, "backed up {size} bytes"),
        }
    }
    Ok((secs, bytes_updates))
}
