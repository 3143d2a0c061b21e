//! The services-agent's backups and restores surviving a SIGKILL at every step (repaired on restart), a crash during
//! a restore followed by new writes, and restores refused before they touch anything (`..`, symlinks, system paths,
//! live data, a foreign mount): the real binary, zfs-fuse, borg and dockerd.
//! Knows the agent's config format, gRPC API, log lines and test hooks; nothing of its internals.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{BackupRequest, RestoreRequest};
use strata_tests::backuplab::{archive_of, probe, Lab};
use strata_tests::fixtures::cmd;

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
