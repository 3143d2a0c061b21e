//! The services-agent's backups end to end: the real binary, a real zfs-fuse pool, real borg and a real dockerd,
//! with a container writing to the service's dataset all the time and answering HTTP (the outside prober): a backup
//! equals its snapshot, retention, notifications, a held schedule, capped archive listings, catch-up at start. Crash
//! repair and restore safety are in `backup_restore.rs`.
//! Knows the agent's config format, gRPC API, log lines and test hooks; nothing of its internals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{BackupRequest, PrepareHostBackupRequest, ReleaseHostBackupRequest, ServiceRef};
use strata_tests::backuplab::{archive_of, probe, webhook, Lab};
use strata_tests::fixtures::cmd;
use strata_tests::fixtures::files::same_tree;

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

#[tokio::test(flavor = "multi_thread")]
async fn backup_equals_its_snapshot_downtime_agrees_with_a_prober_and_restores_reproduce_the_data() -> Result<()> {
    let mut lab = Lab::new("quiesce = \"stop\"\nlocal_snapshots = 5\n")?;
    lab.start(&[], "")?;

    // A backup while the writer writes, probed from outside.
    let stop = Arc::new(AtomicBool::new(false));
    let p = prober(lab.http_addr(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    // The prober's window ends only with its first answer after the restart (the host must find the container's
    // address again: the lab asks ARP every 50 ms), so wait for an answer rather than a fixed time.
    let addr = lab.http_addr();
    let back = tokio::task::spawn_blocking(move || {
        strata_tests::fixtures::wait_until(Duration::from_secs(10), || probe(addr))
    });
    ensure!(back.await?, "the service never answered again after the backup");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let outside = p.join().expect("prober");
    let archive = archive_of(&summary)?;
    let h = lab.history().await?;
    ensure!(h.len() == 1 && h[0].result == "ok" && h[0].kind == "backup", "history: {h:?}");
    let recorded = Duration::from_secs_f64(h[0].downtime_seconds);
    eprintln!("downtime: recorded by the agent {recorded:?}, seen by the prober {outside:?}");
    ensure!(recorded > Duration::ZERO, "a stop-mode backup of a running service has some downtime");
    // The prober sees the agent's window plus the time httpd and the host's ARP need to answer again, at 10 ms
    // resolution.
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
    let drill =
        Lab::drain(c.drill(ServiceRef { name: lab.service.clone(), ..Default::default() }).await?.into_inner()).await?;
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
        calls.spawn(async move {
            c.list_archives(ServiceRef { name, ..Default::default() }).await.map(|r| r.into_inner().archives.len())
        });
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
    ensure!(
        c.list_archives(ServiceRef { name: lab.service.clone(), ..Default::default() })
            .await?
            .into_inner()
            .archives
            .len()
            == 1
    );
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
