//! Ctrl-C on a long job: the real `labctl vm backup` / `labctl services backup` against a real host-agent /
//! services-agent (real Borg, zfs-fuse, dockerd), SIGINT while it follows the job. labctl says the job goes on and
//! where to see it, exits 130, and the job completes on the agent without it; `labctl services watch` re-attaches
//! to it. Knows the agents' config formats and labctl's output; nothing of their internals.

use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_tests::binrun::interrupt_at;
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::cmd;
use strata_tests::harness::{base_config, bin, write_inventory, AgentKind, AgentProc, Pki};
use strata_tests::servicejob::ServiceJob;

#[test]
fn ctrl_c_on_vm_backup_says_the_job_goes_on_and_vm_watch_follows_it_to_its_end() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let borg = BorgRepo::init("correct horse battery staple")?;
    let passcommand =
        borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("passcommand")?;
    // Every borg call of the job asks for the passphrase first: a slow secret store makes the job last seconds.
    let slow = format!("sh -c 'sleep 2; {passcommand}'");
    // An off QEMU VM (a bundle directory, no QMP socket): backed up as it is.
    let vm = dir.path().join("lab");
    std::fs::create_dir(&vm)?;
    std::fs::write(vm.join("disk.raw"), vec![7u8; 64 * 1024])?;
    let (cert, key) = pki.issue(Role::HostAgent, AgentKind::Host.cert_name())?;
    let config = dir.path().join("host-agent.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"stop\"\nengine = \"borg\"\n\
             target = {:?}\npasscommand = {slow:?}\nretention = {{ last = 5 }}\n",
            base_config(&dir.path().join("state"), &pki.ca(), &cert, &key),
            vm.display().to_string(),
            borg.path().display().to_string(),
        ),
    )?;
    let host = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let (admin, admin_key) = pki.issue(Role::Admin, "alice")?;
    let inv = dir.path().join("labctl.toml");
    write_inventory(&inv, &pki.ca(), &admin, &admin_key, &[&host])?;

    let (status, seen) = interrupt_at(&inv, &["vm", "backup", "lab"], "check: ", Duration::from_secs(10))?;
    ensure!(status.code() == Some(130), "labctl exit {status:?}, stderr {seen:?}");
    let said = "interrupted: the backup goes on on the host-agent; `labctl vm watch lab` follows it again, \
                `labctl vm ls` shows each vm's last backup";
    ensure!(seen.iter().any(|l| l == said), "want {said:?} in {seen:?}");

    // `labctl vm watch lab` re-attaches and follows the job to its summary.
    let watch = Command::new(bin("labctl")?).arg("--config").arg(&inv).args(["vm", "watch", "lab"]).output()?;
    let (out, err) = (String::from_utf8_lossy(&watch.stdout), String::from_utf8_lossy(&watch.stderr));
    ensure!(watch.status.success(), "watch: {:?}\nstdout: {out}\nstderr: {err}\nlog:\n{}", watch.status, host.logs());
    ensure!(out.starts_with("vm lab backed up as "), "no summary from the watch: {out}\nstderr: {err}");

    // The agent finishes the job without labctl: `vm ls` (the agent's history) shows the backup.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ls = cmd::run(Command::new(bin("labctl")?).arg("--config").arg(&inv).args(["--json", "vm", "ls"]))?;
        let vms: Vec<serde_json::Value> = serde_json::from_str(&ls).with_context(|| format!("vm ls: {ls}"))?;
        if vms.iter().any(|v| v["name"] == "lab" && v["last_backup_unix"].as_i64().is_some_and(|t| t > 0)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the backup never completed after labctl left: {ls}\nagent log:\n{}", host.logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(borg.list_archives()?.len() == 1, "one archive in the repository");
    Ok(())
}

/// Issue 18 item 4: after Ctrl-C, `labctl services watch NAME` re-attaches to the running backup and follows it to
/// its end (its remaining steps on stderr, its summary on stdout, exit 0), as `labctl services backup` would have.
#[test]
fn after_ctrl_c_services_watch_reattaches_to_the_backup_and_sees_it_finish() -> Result<()> {
    // Every borg call of the job asks for the passphrase first: a slow secret store makes the job last seconds.
    let lab = ServiceJob::start("wt", 5, "")?;
    let (agent, inv, service, borg) = (&lab.agent, &lab.inv, &lab.service, &lab.borg);

    let (status, seen) = interrupt_at(inv, &["services", "backup", service], "preflight: ", Duration::from_secs(10))?;
    ensure!(status.code() == Some(130), "labctl exit {status:?}, stderr {seen:?}\nagent log:\n{}", agent.logs());
    let said = format!(
        "interrupted: the backup goes on on the services-agent; `labctl services watch {service}` follows it again, \
         `labctl services history {service}` shows its outcome"
    );
    ensure!(seen.contains(&said), "want {said:?} in {seen:?}");

    let watch = Command::new(bin("labctl")?).arg("--config").arg(inv).args(["services", "watch", service]).output()?;
    let (out, err) = (String::from_utf8_lossy(&watch.stdout), String::from_utf8_lossy(&watch.stderr));
    ensure!(
        watch.status.success(),
        "watch: {:?}\nstdout: {out}\nstderr: {err}\nagent log:\n{}",
        watch.status,
        agent.logs()
    );
    // It saw the job's later steps and its summary.
    ensure!(err.lines().any(|l| l.starts_with("borg-create: ")), "no later step in the watch: {err}");
    ensure!(out.starts_with(&format!("{service}: archive ")), "no summary from the watch: {out}");
    ensure!(borg.list_archives()?.len() == 1, "one archive in the repository");
    // The job left the registry: nothing to watch any more.
    let again = Command::new(bin("labctl")?).arg("--config").arg(inv).args(["services", "watch", service]).output()?;
    let err = String::from_utf8_lossy(&again.stderr);
    ensure!(again.status.code() == Some(1) && err.contains("no running job"), "watch after the end: {again:?}");
    Ok(())
}
