//! Consistent guests end to end: the real host-agent backing up a QEMU VM whose guest is a real Linux running
//! Debian's qemu-ga (`fixtures::guest`): the guest's file systems are frozen just before the pause and thawed right
//! after the resume; a SIGKILL between freeze and thaw is repaired on restart (the VM resumed first, then thawed);
//! a VM without a guest agent is backed up crash-consistent, saying so, at no noticeable cost. Knows the agent's
//! config format, logs, journal and gRPC API only.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{VmBackupRequest, VmRef};
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::fixtures::{cmd, guest};
use strata_tests::harness::{AgentKind, AgentProc};
use strata_tests::vmlab::{backup, Lab, VmSpec};

/// `SELECT …` on the agent's database.
fn sql(lab: &Lab, query: &str) -> Result<String> {
    let db = lab.dir.path().join("state/host.db");
    Ok(cmd::run_args("sqlite3", [db.to_str().context("utf-8")?, query])?.trim().to_string())
}

/// The VM's status through the test's own QMP socket (works while no agent runs).
fn qmp_status(lab: &Lab) -> Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(&lab.test_qmp)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    w.write_all(b"{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"query-status\"}\n")?;
    for line in BufReader::new(s).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        if let Some(status) = v["return"]["status"].as_str() {
            return Ok(status.to_string());
        }
    }
    anyhow::bail!("no query-status answer")
}

/// A clone-mode backup (reflink clones on btrfs) of a running guest: frozen while the agent is about to pause it
/// (seen from the guest's own agent), thawed after; the history and the summary say the file systems were frozen.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_freezes_the_guest_before_the_pause_and_thaws_it_after() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::with_guest(fs.path(), "")?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let config = lab.write_config(&VmSpec { mode: "clone", engine: "rsync", target: &target, extra: String::new() })?;
    let go = lab.dir.path().join("go");
    let hook = format!("quiesce:{}", go.display());
    lab.agent = Some(AgentProc::start_with_env(AgentKind::Host, &config, &[("STRATA_TEST_WAIT_AT", hook.as_str())])?);
    lab.boot_guest().await?;
    let qga = lab.guest_agent();
    ensure!(qga.freeze_status()? == "thawed", "the guest starts thawed");

    let mut c = lab.client().await?;
    let call = tokio::spawn(async move { backup(&mut c, "lab").await });
    lab.agent()?.wait_log("test hook: waiting at step quiesce", Duration::from_secs(60))?;
    // Frozen before the pause: the VM still runs, so its agent answers.
    // (The agent's own API waits while its hook holds a worker: ask QEMU.)
    ensure!(qmp_status(&lab)? == "running", "the vm is not paused yet");
    ensure!(qga.freeze_status()? == "frozen", "the guest is not frozen before the pause: {}", lab.agent()?.logs());
    std::fs::write(&go, b"")?;
    let msg = tokio::time::timeout(Duration::from_secs(120), call).await???;
    ensure!(msg.contains("consistency: file systems frozen by the guest agent (1 file system)"), "{msg}");
    ensure!(lab.state().await? == "running", "the vm runs after the backup");
    ensure!(qga.freeze_status()? == "thawed", "the guest is thawed after the backup");
    let row = sql(&lab, "SELECT mode, ok, message FROM history WHERE vm = 'lab'")?;
    ensure!(row == "clone|1|consistency: file systems frozen by the guest agent (1 file system)", "history: {row}");
    let open = sql(&lab, "SELECT step FROM journal WHERE done_unix IS NULL")?;
    ensure!(open.is_empty(), "open journal steps: {open}");
    let steps = sql(&lab, "SELECT group_concat(step, ',') FROM (SELECT step FROM journal ORDER BY id)")?;
    ensure!(steps.starts_with("freeze,quiesce,clone,resume"), "journal order: {steps}");
    Ok(())
}

/// SIGKILL while the guest is frozen and the VM paused (the agent held right after journaling the resume): the
/// restarted agent resumes the VM, then thaws the guest (a paused guest's agent cannot answer), and closes the rows.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_freeze_and_thaw_is_repaired_on_restart() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::with_guest(parent.path(), "")?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let config =
        lab.write_config(&VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: String::new() })?;
    lab.agent = Some(AgentProc::start_with_env(AgentKind::Host, &config, &[("STRATA_TEST_CRASH_AT", "resume")])?);
    lab.boot_guest().await?;
    let mut c = lab.client().await?;
    let call = tokio::spawn(async move { backup(&mut c, "lab").await });
    lab.agent()?.wait_log("test hook: holding at step resume", Duration::from_secs(120))?;
    ensure!(qmp_status(&lab)? == "paused", "the vm is paused at the crash point");
    let open = sql(&lab, "SELECT group_concat(step, ',') FROM journal WHERE done_unix IS NULL")?;
    ensure!(open == "freeze,quiesce,resume", "open journal steps at the crash point: {open}");
    lab.agent.as_mut().context("agent")?.kill()?;
    let _ = call.await;
    ensure!(qmp_status(&lab)? == "paused", "nothing resumed the vm yet");

    lab.agent = Some(AgentProc::start_with_config(AgentKind::Host, &config)?);
    let agent = lab.agent()?;
    agent.wait_log("thawed the file systems of vm lab (1) frozen by a crashed run", Duration::from_secs(60))?;
    let log = agent.logs();
    let resumed = log.find("resumed vm lab").context("no resume logged")?;
    let thawed = log.find("thawed the file systems of vm lab").context("no thaw logged")?;
    ensure!(resumed < thawed, "the vm must be resumed before the guest is thawed:\n{log}");
    ensure!(lab.state().await? == "running", "the vm runs after recovery");
    ensure!(lab.guest_agent().freeze_status()? == "thawed", "the guest is thawed after recovery");
    let open = sql(&lab, "SELECT step FROM journal WHERE done_unix IS NULL")?;
    ensure!(open.is_empty(), "open journal steps after recovery: {open}");
    Ok(())
}

/// A guest agent slower to freeze than the agent waits (its freeze hook sleeps 25 s, the agent waits 20 s): the
/// agent thaws all the same (the thaw waits for the late freeze to finish, then undoes it) and backs up
/// crash-consistent with a warning; the guest ends thawed and running, the journal closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_freeze_that_times_out_is_thawed_and_the_backup_goes_on_crash_consistent() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::with_guest(parent.path(), &guest::slow_freeze(25))?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    lab.restart(&VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: String::new() })?;
    lab.boot_guest().await?;
    let t0 = Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(120), backup(&mut lab.client().await?, "lab")).await??;
    let took = t0.elapsed();
    ensure!(msg.contains("crash-consistent: the guest agent did not freeze the file systems"), "{msg}");
    ensure!(
        msg.contains("freezing the guest's file systems failed (")
            && msg.contains("did not answer guest-fsfreeze-freeze within 20s): thawed, backing up crash-consistent"),
        "{msg}"
    );
    ensure!(std::fs::read_to_string(&lab.console)?.contains("guest: freeze hook sleeping"), "the hook never ran");
    ensure!(lab.state().await? == "running", "the vm runs after the backup");
    ensure!(lab.guest_agent().freeze_status()? == "thawed", "the guest is thawed after the backup");
    let open = sql(&lab, "SELECT step FROM journal WHERE done_unix IS NULL")?;
    ensure!(open.is_empty(), "open journal steps: {open}");
    eprintln!("a freeze that timed out: backup took {took:?}");
    Ok(())
}

/// A VM whose guest has no agent (no OS at all): backed up crash-consistent, saying so in the summary and history,
/// and asking costs no noticeable time (QEMU tells whether the guest opened the agent's port).
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_without_a_guest_agent_is_backed_up_crash_consistent() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    lab.restart(&VmSpec { mode: "suspend", engine: "rsync", target: &target, extra: String::new() })?;
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    let mut s = c.backup(VmBackupRequest { name: "lab".into(), all: false }).await?.into_inner();
    let mut seen: Vec<(Instant, String, String)> = Vec::new();
    while let Some(p) = s.message().await? {
        seen.push((Instant::now(), p.step.clone(), p.message.clone()));
    }
    let at = seen.iter().position(|(_, step, _)| step == "freeze").context("no freeze step reported")?;
    let (t, _, msg) = &seen[at];
    ensure!(msg.contains("crash-consistent: no guest agent"), "{msg}");
    let asked = t.duration_since(seen[at - 1].0);
    ensure!(asked < Duration::from_millis(1500), "asking for a guest agent took {asked:?}: {seen:?}");
    let summary = &seen.last().context("no summary")?.2;
    ensure!(summary.contains("crash-consistent: no guest agent"), "{summary}");
    let row = sql(&lab, "SELECT ok, message FROM history WHERE vm = 'lab'")?;
    ensure!(row.starts_with("1|crash-consistent: no guest agent ("), "history: {row}");
    ensure!(lab.state().await? == "running", "the vm runs after the backup");
    Ok(())
}
