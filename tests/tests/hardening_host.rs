//! QEMU confinement end to end: the real host-agent starts a real `qemu-system-x86_64` with `runas` configured, and
//! the VM process is checked from /proc: its user, its environment (none of the agent's, a canary included), its
//! seccomp sandbox and argv; the agent still drives it over QMP afterwards (pause, resume, stop).
//! Knows the host-agent's config format and gRPC API; nothing of its internals.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{ListVmsRequest, VmRef};
use strata_tests::fixtures::{cmd, wait_until};
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};

/// A variable in the agent's environment that must never reach QEMU.
const CANARY: (&str, &str) = ("STRATA_TEST_CANARY_SECRET", "canary-7f3a9c");

fn proc_file(pid: &str, file: &str) -> Result<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).with_context(|| format!("/proc/{pid}/{file}"))?;
    Ok(String::from_utf8_lossy(&bytes).to_string())
}

/// The values of a `/proc/PID/status` line (`Uid:` → real, effective, saved, filesystem).
fn status_field(status: &str, field: &str) -> Vec<String> {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
        .unwrap_or_default()
}

async fn state(c: &mut HostClient<tonic::transport::Channel>) -> Result<String> {
    let vms = c.list_vms(ListVmsRequest {}).await?.into_inner().vms;
    Ok(vms.into_iter().find(|v| v.name == "lab").map(|v| v.state).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_runs_as_the_runas_user_sandboxed_without_the_agents_environment() -> Result<()> {
    cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    cmd::require("qemu-img", "qemu-utils")?;
    tls::install_crypto_provider();
    let pki = Pki::new()?;
    let dir = tempfile::Builder::new().prefix("strata-hardening-").tempdir()?;
    let vm_dir = dir.path().join("lab");
    std::fs::create_dir_all(&vm_dir)?;
    cmd::run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(vm_dir.join("disk.qcow2")).arg("16M"))?;
    std::fs::write(vm_dir.join("vm.toml"), "memory_mb = 128\ncpus = 1\ndisks = [\"disk.qcow2\"]\n")?;
    let (cert, key) = pki.issue(Role::HostAgent, "host1")?;
    let state_dir = dir.path().join("state");
    let config = dir.path().join("host-agent.toml");
    std::fs::write(
        &config,
        base_config(&state_dir, &pki.ca(), &cert, &key)
            + &format!(
                "[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {vm_dir:?}\nmode = \"suspend\"\nengine = \"rsync\"\n\
                 target = {:?}\nshutdown_timeout = \"2s\"\nrunas = \"nobody\"\n",
                dir.path().join("target")
            ),
    )?;
    let agent = AgentProc::start_with_env(AgentKind::Host, &config, &[CANARY])?;
    let admin = pki.material(&pki.ca(), Role::Admin, "admin")?;
    let mut c = HostClient::new(admin.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?);
    c.start(VmRef { name: "lab".into() }).await?;
    let pid_file = state_dir.join("qemu/lab.pid");
    let pid = std::fs::read_to_string(&pid_file).with_context(|| pid_file.display().to_string())?.trim().to_string();
    let result = async {
        // The agent really has the canary (so its absence below means something).
        ensure!(proc_file(&agent.pid().to_string(), "environ")?.contains(CANARY.1), "the agent lacks the canary");

        let status = proc_file(&pid, "status")?;
        let nobody = cmd::run(Command::new("id").args(["-u", "nobody"]))?.trim().to_string();
        ensure!(status_field(&status, "Uid:") == vec![nobody.clone(); 4], "qemu's uids: {status}");
        ensure!(status_field(&status, "Seccomp:") == vec!["2".to_string()], "qemu has no seccomp filter: {status}");

        let environ: Vec<String> =
            proc_file(&pid, "environ")?.split('\0').filter(|v| !v.is_empty()).map(str::to_string).collect();
        ensure!(
            !environ.iter().any(|v| v.contains(CANARY.0) || v.contains(CANARY.1)),
            "the canary reached qemu: {environ:?}"
        );
        ensure!(environ.iter().all(|v| v.starts_with("PATH=")), "qemu got more than PATH: {environ:?}");

        let argv: Vec<String> = proc_file(&pid, "cmdline")?.split('\0').map(str::to_string).collect();
        let after = |flag: &str| argv.iter().position(|a| a == flag).and_then(|i| argv.get(i + 1)).cloned();
        ensure!(
            after("-sandbox").is_some_and(|s| s.starts_with("on,")) && after("-runas").as_deref() == Some("nobody"),
            "argv: {argv:?}"
        );

        // Still driven over QMP after the drop: pause, resume, stop.
        c.suspend(VmRef { name: "lab".into() }).await?;
        ensure!(state(&mut c).await? == "paused", "not paused");
        c.resume(VmRef { name: "lab".into() }).await?;
        ensure!(state(&mut c).await? == "running", "not running again");
        c.stop(VmRef { name: "lab".into() }).await?;
        ensure!(
            wait_until(Duration::from_secs(10), || !Path::new(&format!("/proc/{pid}")).exists()),
            "qemu still runs"
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("host-agent log:\n{}", agent.logs());
        let _ = Command::new("kill").args(["-9", &pid]).status();
    }
    result
}
