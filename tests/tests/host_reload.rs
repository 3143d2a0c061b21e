//! The host-agent's reload (SIGHUP and the Reload RPC) against the real agent and a real QEMU VM: a VM added is
//! served, an invalid file changes nothing, a backup running across a reload finishes under the settings it started
//! with.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{ListVmsRequest, ReloadRequest, VmRef};
use strata_tests::fixtures::cmd;
use strata_tests::vmlab::{backup, Lab, VmSpec};

fn hup(lab: &Lab) -> Result<()> {
    cmd::run(std::process::Command::new("kill").arg("-HUP").arg(lab.agent()?.pid().to_string()))?;
    Ok(())
}

async fn vm_names(lab: &Lab) -> Result<Vec<String>> {
    let vms = lab.client().await?.list_vms(ListVmsRequest {}).await?.into_inner().vms;
    Ok(vms.into_iter().map(|v| v.name).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_reload_apply_a_valid_file_refuse_an_invalid_one_and_a_running_backup_keeps_its_settings(
) -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let first = lab.dir.path().join("first");
    let second = lab.dir.path().join("second");
    std::fs::create_dir(&first)?;
    std::fs::create_dir(&second)?;
    let spec = |target| VmSpec { mode: "stop", engine: "rsync", target, extra: String::new() };
    lab.restart(&spec(&first))?;
    let path = lab.dir.path().join("host-agent.toml");
    let good = std::fs::read_to_string(&path)?;
    let mut c = lab.client().await?;

    // Unchanged: nothing to apply.
    let r = c.reload(ReloadRequest {}).await?.into_inner();
    ensure!(!r.changed && r.message == "config reloaded: nothing to apply", "{r:?}");

    // Invalid: refused over gRPC naming the key, and on SIGHUP logged; the running config keeps serving.
    std::fs::write(&path, good.replace("mode = \"stop\"", "mode = \"sometimes\""))?;
    let err = c.reload(ReloadRequest {}).await.unwrap_err();
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    ensure!(err.message().contains("mode") && err.message().contains("running config is kept"), "{}", err.message());
    hup(&lab)?;
    lab.agent()?.wait_log("reload refused, keeping the running config", Duration::from_secs(10))?;
    ensure!(vm_names(&lab).await? == ["lab"], "the running config changed");

    // SIGHUP with a second VM added: it is served.
    let lab2 = parent.path().join("lab2");
    std::fs::create_dir(&lab2)?;
    std::fs::write(
        &path,
        format!(
            "{good}[[vms]]\nname = \"lab2\"\nbackend = \"qemu\"\npath = {lab2:?}\nmode = \"stop\"\nengine = \"rsync\"\n\
             target = {second:?}\n"
        ),
    )?;
    hup(&lab)?;
    lab.agent()?.wait_log("applied vms (added lab2)", Duration::from_secs(10))?;
    ensure!(vm_names(&lab).await? == ["lab", "lab2"], "lab2 not served after SIGHUP");
    std::fs::write(&path, &good)?;
    let r = c.reload(ReloadRequest {}).await?.into_inner();
    ensure!(r.changed && r.message == "config reloaded: applied vms (removed lab2)", "{r:?}");

    // A backup running across a reload that moves the VM's target: it finishes into the target it started with.
    // The VM runs no OS, so its clean shutdown waits the whole shutdown_timeout (2 s) before the hard stop.
    c.start(VmRef { name: "lab".into() }).await?;
    let mut bc = c.clone();
    let running = tokio::spawn(async move { backup(&mut bc, "lab").await });
    lab.agent()?.wait_log("shutting down vm lab", Duration::from_secs(20)).context("the backup's shutdown")?;
    std::fs::write(&path, good.replace(&format!("{first:?}"), &format!("{second:?}")))?;
    hup(&lab)?;
    lab.agent()?.wait_log("applied vms (changed lab)", Duration::from_secs(10))?;
    let done = running.await??;
    ensure!(done.contains("backed up as lab-"), "{done}");
    let logs = lab.agent()?.logs();
    let (reloaded, copied) = (logs.find("applied vms (changed lab)"), logs.find("while the vm is stopped"));
    ensure!(reloaded.is_some() && reloaded < copied, "the reload did not happen while the backup ran:\n{logs}");
    ensure!(std::fs::read_dir(&first)?.count() > 0, "the running backup did not land in its original target");
    ensure!(std::fs::read_dir(&second)?.count() == 0, "the running backup took the reloaded target");
    Ok(())
}
