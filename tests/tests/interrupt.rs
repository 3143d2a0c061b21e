//! Ctrl-C on a long job: the real `labctl vm backup` against a real host-agent and a real Borg repository, SIGINT
//! while it follows the job. labctl says the job goes on and where to see it, exits 130, and the backup completes on
//! the agent without it. Knows the host-agent's config format and labctl's output; nothing of their internals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::cmd;
use strata_tests::harness::{base_config, bin, write_inventory, AgentKind, AgentProc, Pki};

#[test]
fn ctrl_c_on_vm_backup_says_the_job_goes_on_and_it_completes() -> Result<()> {
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

    let mut labctl = Command::new(bin("labctl")?)
        .arg("--config")
        .arg(&inv)
        .args(["vm", "backup", "lab"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning labctl")?;
    let (tx, rx) = mpsc::channel();
    let stderr = labctl.stderr.take().context("stderr piped")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    // Interrupt once labctl follows the job (its first progress line).
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).with_context(|| format!("no progress line: {seen:?}"))?;
        seen.push(line);
        if seen.last().is_some_and(|l| l.starts_with("check: ")) {
            break;
        }
    }
    cmd::run(Command::new("kill").args(["-INT", &labctl.id().to_string()]))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = labctl.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = labctl.kill();
            bail!("labctl did not exit within 10 s of SIGINT: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    seen.extend(rx.try_iter());
    ensure!(status.code() == Some(130), "labctl exit {status:?}, stderr {seen:?}");
    let said = "interrupted: the backup goes on on the host-agent; `labctl vm ls` shows each vm's last backup";
    ensure!(seen.iter().any(|l| l == said), "want {said:?} in {seen:?}");

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
