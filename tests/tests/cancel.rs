//! Cancelling a long job (issue 18 item 4): the real `labctl services backup --cancel-on-interrupt` with SIGINT
//! against a real services-agent (zfs-fuse, borg, dockerd), the `Cancel` RPC on a real host-agent backing up a
//! paused QEMU VM with borg, and Cancel's refusals (a viewer, no such job, a bad id). Knows the agents' config
//! formats, their gRPC API, their state databases' history tables (read with the sqlite3 CLI) and labctl's output;
//! nothing of their internals.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{JobRef, ListVmsRequest, VmBackupRequest, VmRef};
use strata_tests::backuplab::PASSPHRASE;
use strata_tests::binrun::interrupt_at;
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::docker::{Container, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::http::Receiver;
use strata_tests::fixtures::{cmd, wait_until};
use strata_tests::harness::{base_config, bin, AgentKind, AgentProc, Pki};
use strata_tests::servicejob::{slow_passcommand, ServiceJob};

/// (a) `labctl services backup NAME --cancel-on-interrupt` + SIGINT while borg creates the archive: labctl says it
/// cancels, follows the job to its end and exits 1; the container runs (not paused), the history row says
/// `cancelled`, the repository holds no archive (nor a `.checkpoint`), and the next backup succeeds (no stale lock).
#[test]
fn ctrl_c_with_cancel_on_interrupt_cancels_a_services_backup_and_the_next_one_succeeds() -> Result<()> {
    let lab = ServiceJob::start("cx", 3, "quiesce = \"pause\"\n")?;
    let (agent, inv, service, borg, pool) = (&lab.agent, &lab.inv, &lab.service, &lab.borg, &lab.pool);
    TestImage::build(&lab.engine, TEST_IMAGE_TAG)?;
    // The service's container (the compose project's labels): paused around the snapshot, running after.
    let project = format!("com.docker.compose.project={service}");
    let volume = format!("{}:/data", lab.mount().display());
    let app = Container::run(
        &lab.engine,
        TEST_IMAGE_TAG,
        &["--label", &project, "--label", "com.docker.compose.service=app", "-v", &volume],
        &["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"],
    )?;

    let args = ["services", "backup", service.as_str(), "--cancel-on-interrupt"];
    let (status, seen) = interrupt_at(inv, &args, "borg-create: ", Duration::from_secs(60))?;
    let logs = || agent.logs();
    ensure!(status.code() == Some(1), "labctl exit {status:?}, stderr {seen:?}\nagent log:\n{}", logs());
    let cancelling = format!("interrupted: cancelling the job backup-{service}-");
    ensure!(seen.iter().any(|l| l.starts_with(&cancelling)), "want {cancelling:?}… in {seen:?}");
    ensure!(seen.iter().any(|l| l.contains("following it to its end")), "no follow line in {seen:?}");
    ensure!(seen.iter().any(|l| l.contains("Cancelled") || l.contains("cancelled:")), "no final status in {seen:?}");

    ensure!(app.inspect("{{.State.Status}}")? == "running", "the container is not running after the cancel");
    let history = cmd::run(
        Command::new(bin("labctl")?).arg("--config").arg(inv).args(["--json", "services", "history", service]),
    )?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&history).with_context(|| format!("history: {history}"))?;
    ensure!(rows.len() == 1 && rows[0]["result"] == "cancelled", "want one cancelled row: {history}");
    ensure!(rows[0]["kind"] == "backup", "{history}");
    ensure!(borg.list_archives()?.is_empty(), "a cancelled backup left archives: {:?}", borg.list_archives()?);
    // Clones and mounts of the run are gone, as after a failure.
    let left = cmd::run_args("zfs", ["list", "-H", "-o", "name", "-r", pool.name()])?;
    ensure!(!left.lines().any(|l| l.contains("/strata-")), "left behind: {left}");

    // The next backup takes the repository (no stale lock) and succeeds.
    let again = Command::new(bin("labctl")?).arg("--config").arg(inv).args(["services", "backup", service]).output()?;
    let (out, err) = (String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    ensure!(again.status.success(), "next backup: {:?}\nstdout: {out}\nstderr: {err}\nlog:\n{}", again.status, logs());
    let archives = borg.list_archives()?;
    ensure!(archives.len() == 1 && !archives[0].ends_with(".checkpoint"), "archives: {archives:?}");
    ensure!(app.inspect("{{.State.Status}}")? == "running", "the container is not running after the backup");
    Ok(())
}

/// (b) A host-agent backup of a running QEMU VM in suspend mode (paused for the copy), cancelled through the `Cancel`
/// RPC while borg copies: the stream ends with CANCELLED, the VM runs again, the history row says cancelled, no
/// journal step stays open, the repository has no archive and the VM's webhook is told `start`, then `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_backup_cancelled_through_the_rpc_resumes_the_paused_vm_and_records_cancelled() -> Result<()> {
    cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    cmd::require("qemu-img", "qemu-utils")?;
    cmd::require("sqlite3", "sqlite3")?;
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let vm = dir.path().join("lab");
    std::fs::create_dir(&vm)?;
    cmd::run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(vm.join("disk.qcow2")).arg("16M"))?;
    std::fs::write(vm.join("vm.toml"), "memory_mb = 128\ncpus = 1\ndisks = [\"disk.qcow2\"]\n")?;
    let borg = BorgRepo::init(PASSPHRASE)?;
    let slow = slow_passcommand(&borg, 3)?;
    let hook = Receiver::start()?;
    let (cert, key) = pki.issue(Role::HostAgent, AgentKind::Host.cert_name())?;
    let state = dir.path().join("state");
    let config = dir.path().join("host-agent.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"suspend\"\nengine = \"borg\"\n\
             target = {:?}\npasscommand = {slow:?}\nshutdown_timeout = \"2s\"\n\
             notify = [{{ kind = \"webhook\", url = \"{}/hook\" }}]\n",
            base_config(&state, &pki.ca(), &cert, &key),
            vm.display().to_string(),
            borg.path().display().to_string(),
            hook.base,
        ),
    )?;
    let agent = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let admin = pki.material(&pki.ca(), Role::Admin, "admin")?;
    let mut c = HostClient::new(admin.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?);
    let qemu_pid = || std::fs::read_to_string(state.join("qemu/lab.pid")).ok().map(|s| s.trim().to_string());
    let result = async {
        c.start(VmRef { name: "lab".into() }).await?;
        let vm_state = |vms: Vec<strata_proto::v1::Vm>| vms.into_iter().find(|v| v.name == "lab").map(|v| v.state);
        ensure!(
            vm_state(c.list_vms(ListVmsRequest {}).await?.into_inner().vms).as_deref() == Some("running"),
            "the vm did not start"
        );

        let mut s = c.backup(VmBackupRequest { name: "lab".into(), all: false }).await?.into_inner();
        // Cancel once the VM is paused and borg copies its disk.
        let job_id = loop {
            let p = s.message().await?.context("the backup ended before its copy step")?;
            if p.step == "backup" {
                ensure!(p.message.contains("while the vm is paused"), "not paused for the copy: {p:?}");
                break p.job_id;
            }
        };
        let answer = c.cancel(JobRef { id: job_id.clone(), name: String::new() }).await?.into_inner();
        ensure!(answer.job_id == job_id, "cancelled {} instead of {job_id}", answer.job_id);
        let end = loop {
            match s.message().await {
                Ok(Some(p)) => ensure!(p.summary.is_none(), "the backup finished after its cancel: {p:?}"),
                Ok(None) => bail!("the stream ended without the job's error"),
                Err(e) => break e,
            }
        };
        ensure!(end.code() == tonic::Code::Cancelled, "want CANCELLED, got {end:?}");
        ensure!(end.message().starts_with(&format!("job {job_id} cancelled: ")), "{}", end.message());

        ensure!(
            vm_state(c.list_vms(ListVmsRequest {}).await?.into_inner().vms).as_deref() == Some("running"),
            "the vm is not running again after the cancel"
        );
        let db = state.join("host.db");
        let db = db.to_str().context("utf-8")?;
        let rows = cmd::run_args("sqlite3", [db, "SELECT ok, message FROM history WHERE vm = 'lab'"])?;
        ensure!(rows.trim().starts_with("0|cancelled: vm lab: "), "history: {rows}");
        let open = cmd::run_args("sqlite3", [db, "SELECT step FROM journal WHERE done_unix IS NULL"])?;
        ensure!(open.trim().is_empty(), "open journal steps after the cancel: {open}");
        ensure!(borg.list_archives()?.is_empty(), "archives: {:?}", borg.list_archives()?);
        let phases = || -> Vec<String> {
            let events = hook.requests().into_iter().filter_map(|r| serde_json::from_str(&r.body).ok());
            events.map(|e: serde_json::Value| e["phase"].as_str().unwrap_or("").to_string()).collect()
        };
        wait_until(Duration::from_secs(15), || phases().len() >= 2);
        ensure!(phases() == ["start", "cancelled"], "webhook phases {:?}", phases());
        Ok(())
    }
    .await;
    if let Some(pid) = qemu_pid() {
        let _ = Command::new("kill").args(["-9", &pid]).status();
        wait_until(Duration::from_secs(5), || !Path::new(&format!("/proc/{pid}")).exists());
    }
    result.with_context(|| format!("host-agent log:\n{}", agent.logs()))
}

/// (c) and (d): Cancel is for admins (a viewer gets PERMISSION_DENIED from either agent, before any lookup); an
/// unknown job is NOT_FOUND; a malformed reference is INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_admin_only_and_refuses_unknown_or_malformed_jobs_naming_the_field() -> Result<()> {
    let pki = Pki::new()?;
    let host = AgentProc::start(AgentKind::Host, &pki)?;
    let services = AgentProc::start(AgentKind::Services, &pki)?;
    let admin = pki.material(&pki.ca(), Role::Admin, "admin")?;
    let viewer = pki.material(&pki.ca(), Role::Viewer, "viewer")?;
    let r = |id: &str, name: &str| JobRef { id: id.into(), name: name.into() };
    let cases = [
        (r("backup-lab-1764900000", ""), tonic::Code::NotFound, "no running job backup-lab-1764900000"),
        (r("", "lab"), tonic::Code::NotFound, "no running job lab"),
        (r("a b", ""), tonic::Code::InvalidArgument, "id: `a b` is not a job id"),
        (r("", ""), tonic::Code::InvalidArgument, "id: give a job id"),
        (r("x", "lab"), tonic::Code::InvalidArgument, "name: give a job id"),
    ];
    let time = Duration::from_secs(10);
    let mut h = HostClient::new(admin.connect(&host.url(), Role::HostAgent, time).await?);
    let mut s = ServicesClient::new(admin.connect(&services.url(), Role::ServicesAgent, time).await?);
    for (job, code, message) in cases {
        for (agent, answer) in
            [("host", h.cancel(job.clone()).await.map(drop)), ("services", s.cancel(job.clone()).await.map(drop))]
        {
            let e = answer.err().with_context(|| format!("{agent}: Cancel {job:?} succeeded"))?;
            ensure!(e.code() == code && e.message().starts_with(message), "{agent} {job:?}: {e:?}");
        }
    }
    let mut h = HostClient::new(viewer.connect(&host.url(), Role::HostAgent, time).await?);
    let mut s = ServicesClient::new(viewer.connect(&services.url(), Role::ServicesAgent, time).await?);
    for answer in [h.cancel(r("", "lab")).await.map(drop), s.cancel(r("", "lab")).await.map(drop)] {
        ensure!(answer.as_ref().err().map(|e| e.code()) == Some(tonic::Code::PermissionDenied), "viewer: {answer:?}");
    }
    Ok(())
}
