//! Issue 13 item 7, the host layer: a VM with several backup targets, on the real host-agent driving a real QEMU VM
//! with real borg. One quiesce per run for all targets; a target that fails (its repository removed) makes the run
//! partial, naming it and why, while the others get the backup; per-target history rows (`labctl vm history`) and
//! metrics; restores with `--target`, or from the first reachable target, byte-identical; an append-only target is
//! never pruned. And the off-site half (the `offsite` host: a real sshd in a namespace behind a 40 ms, 50 Mbit/s
//! link): a VM with a local target and an off-site Borg-over-SSH target (append-only) and an rsync-over-SSH one
//! (`rrsync`), restored from the off-site copies byte-identical; a changed host key fails the off-site target alone,
//! naming it and the host, nothing sent, and its metric goes stale while the local one is fresh. Knows the agent's
//! config format, metrics, gRPC API and labctl's JSON only.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use strata_proto::v1::{ListVmsRequest, VmBackupsRequest, VmDrillRequest, VmHistoryRequest, VmRef};
use strata_tests::binrun::run;
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::cmd;
use strata_tests::harness::write_inventory;
use strata_tests::offsite::OffsiteHost;
use strata_tests::vmlab::{backup, restore_from, sha256, Lab};

/// The backup id in a summary or error: the word after `backed up as`.
fn id_of(text: &str) -> Result<String> {
    let rest = text.split("backed up as ").nth(1).with_context(|| format!("no backup id in {text:?}"))?;
    Ok(rest.split(|c: char| c.is_whitespace() || c == ':').next().unwrap_or("").to_string())
}

/// The value of the series `name{labels}` in Prometheus text.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("strata_{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

fn passcommand(r: &BorgRepo) -> Result<String> {
    r.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("no BORG_PASSCOMMAND")
}

/// `labctl --json ARGS` against the lab's agent: the parsed document, or the run's output as the error.
fn labctl(lab: &Lab, args: &[&str]) -> Result<Value> {
    let inv = lab.dir.path().join("labctl.toml");
    let (cert, key) = lab.pki.issue(agent_core::identity::Role::Admin, "alice")?;
    write_inventory(&inv, &lab.pki.ca(), &cert, &key, &[lab.agent()?])?;
    let mut argv = vec!["--config".to_string(), inv.display().to_string(), "--json".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let ran = run("labctl", &argv)?;
    if ran.code != Some(0) {
        bail!("labctl {}: {ran}", args.join(" "));
    }
    // One document; or a job's JSON lines (its updates, then its summaries): the last line but one is the summary's.
    if let Ok(doc) = serde_json::from_str(&ran.stdout) {
        return Ok(doc);
    }
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let doc = lines.len().checked_sub(2).map_or("", |i| lines[i]);
    serde_json::from_str(doc).with_context(|| format!("labctl {}: not JSON: {ran}", args.join(" ")))
}

/// The disks of a restored bundle are the live VM's, byte for byte (no guest writes to them).
fn same_disks(restored: &Path, live: &Path) -> Result<()> {
    for disk in ["disk.qcow2", "data.raw"] {
        ensure!(
            sha256(&restored.join(disk))? == sha256(&live.join(disk))?,
            "{disk} of {} differs from the live vm's",
            restored.display()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_local_targets_one_failing_makes_the_run_partial_and_either_target_restores_identical_disks() -> Result<()>
{
    cmd::require("borg", "borgbackup")?;
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let local = BorgRepo::init("the local passphrase")?;
    let second = BorgRepo::init("the second passphrase")?;
    // The VM's passcommand is the fallback of `local`; `second` names its own.
    let section = |retention: &str, append_only: bool| -> Result<String> {
        Ok(format!(
            "mode = \"clone\"\nengine = \"borg\"\npasscommand = {:?}\nretention = {{ {retention} }}\n\
             targets = [{{ label = \"local\", url = {:?} }}, \
                        {{ label = \"second\", url = {:?}, passcommand = {:?}, append_only = {append_only} }}]\n",
            passcommand(&local)?,
            local.path(),
            second.path(),
            passcommand(&second)?,
        ))
    };
    lab.restart_with(&section("last = 20", false)?)?;
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    ensure!(lab.state().await? == "running", "the vm did not start");
    let vms = c.list_vms(ListVmsRequest {}).await?.into_inner().vms;
    ensure!(vms[0].targets == ["local", "second"], "{vms:?}");
    let pauses = |lab: &Lab| lab.agent().map(|a| a.logs().matches("pausing vm lab").count());

    // Both targets get the backup of one clone: one pause.
    let msg = backup(&mut c, "lab").await?;
    ensure!(
        msg.contains("vm lab backed up as lab-") && msg.contains("`local` ok") && msg.contains("`second` ok"),
        "{msg}"
    );
    let id1 = id_of(&msg)?;
    ensure!(local.list_archives()? == [id1.clone()] && second.list_archives()? == [id1.clone()], "archives");
    ensure!(pauses(&lab)? == 1, "paused {} times for one run", pauses(&lab)?);
    let text = lab.agent()?.metrics_text()?;
    let fresh = |t: &str, target: &str| {
        metric(t, "backup_last_success_timestamp_seconds", &format!("layer=\"host\",name=\"lab\",repo=\"{target}\""))
    };
    let (l1, s1) = (fresh(&text, "local").context("no local series")?, fresh(&text, "second").context("no second")?);
    ensure!(l1 == s1 && l1 > 1.7e9, "{text}");

    // The second target's repository is gone: the run is partial, the local target gets the backup, the vm runs.
    let aside = second.scratch_dir().join("repo.aside");
    std::fs::rename(second.path(), &aside)?;
    let err = backup(&mut c, "lab").await.expect_err("a missing target must make the run partial");
    let text = format!("{err:#}");
    ensure!(
        text.contains("partly backed up as lab-")
            && text.contains("target `second` failed")
            && text.contains(&format!("backup target `second` ({}) does not exist", second.path().display())),
        "{text}"
    );
    let id2 = id_of(&text)?;
    ensure!(local.list_archives()? == [id1.clone(), id2.clone()], "the local target lacks {id2}");
    ensure!(lab.state().await? == "running", "the vm does not run after a partial backup");
    ensure!(pauses(&lab)? == 2, "paused {} times for two runs", pauses(&lab)?);
    // The metrics show the stale target while the local one is fresh.
    let text = lab.agent()?.metrics_text()?;
    let (l2, s2) = (fresh(&text, "local").context("local")?, fresh(&text, "second").context("second")?);
    ensure!(l2 > l1 && s2 == s1, "local {l1} → {l2}, second {s1} → {s2}");
    let failures = metric(&text, "backup_failures_total", "layer=\"host\",name=\"lab\",repo=\"second\"");
    ensure!(failures == Some(1.0), "{text}");
    ensure!(metric(&text, "backup_failures_total", "layer=\"host\",name=\"lab\",repo=\"local\"").is_none(), "{text}");

    // The history: one row per run and target, each run's status on its rows (gRPC and labctl alike).
    let h = c.history(VmHistoryRequest { name: "lab".into(), target: String::new() }).await?.into_inner().entries;
    let rows: Vec<(&str, &str, bool, &str)> =
        h.iter().map(|e| (e.id.as_str(), e.target.as_str(), e.ok, e.run_status.as_str())).collect();
    let want = [
        (id1.as_str(), "local", true, "ok"),
        (id1.as_str(), "second", true, "ok"),
        (id2.as_str(), "local", true, "partial"),
        (id2.as_str(), "second", false, "partial"),
    ];
    ensure!(rows == want, "{rows:?}");
    ensure!(h[3].message.contains("does not exist") && h[2].size > 0 && h[2].duration_seconds > 0.0, "{h:?}");
    let rows = labctl(&lab, &["vm", "history", "lab", "--target", "second"])?;
    let rows = rows.as_array().context("history is not an array")?;
    ensure!(rows.len() == 2 && rows[1]["result"] == "failed" && rows[1]["run"] == "partial", "{rows:?}");

    // Back in place: restored from the second target by label, byte-identical to the live vm and to the local copy.
    std::fs::rename(&aside, second.path())?;
    let listed = c.list_backups(VmBackupsRequest { name: "lab".into(), target: "second".into() }).await?.into_inner();
    ensure!(listed.target == "second" && listed.backups.len() == 1 && listed.backups[0].id == id1, "{listed:?}");
    let from_second = lab.dir.path().join("from-second");
    let to = from_second.display().to_string();
    let summary = labctl(&lab, &["vm", "restore", "lab", "--target", "second", "--archive", &id1, "--to", &to])?;
    ensure!(summary["summary"]["vm_restore"]["target"] == "second", "{summary}");
    same_disks(&from_second, &lab.vm_dir)?;
    let from_local = lab.dir.path().join("from-local");
    let msg = restore_from(&mut c, "lab", "local", &id1, &from_local).await?;
    ensure!(msg.contains(&format!("restored {id1} of vm lab from target `local`")), "{msg}");
    same_disks(&from_local, &from_second)?;
    let err = restore_from(&mut c, "lab", "nope", "", &lab.dir.path().join("x")).await.expect_err("no such target");
    ensure!(format!("{err:#}").contains("no target `nope` (its targets: local, second)"), "{err:#}");

    // The local target unreachable: a restore without --target reads from the first reachable one that has backups.
    let local_aside = local.scratch_dir().join("repo.aside");
    std::fs::rename(local.path(), &local_aside)?;
    let fallback = lab.dir.path().join("fallback");
    let msg = restore_from(&mut c, "lab", "", "", &fallback).await?;
    ensure!(msg.contains(&format!("restored {id1} of vm lab from target `second`")), "{msg}");
    same_disks(&fallback, &lab.vm_dir)?;
    std::fs::rename(&local_aside, local.path())?;

    // An append-only target is never pruned: `last = 1` thins the local target only.
    lab.restart_with(&section("last = 1", true)?)?;
    let mut c = lab.client().await?;
    let msg = backup(&mut c, "lab").await?;
    let id3 = id_of(&msg)?;
    ensure!(local.list_archives()? == [id3.clone()], "local: {:?}", local.list_archives()?);
    ensure!(second.list_archives()? == [id1, id3], "second: {:?}", second.list_archives()?);

    // Another repository put where `second` was (even with the same passphrase): refused, never written to or read.
    std::fs::rename(second.path(), second.scratch_dir().join("repo.swapped-out"))?;
    cmd::run(second.command().args(["init", "--encryption=repokey"]).arg(second.path()))?;
    let err = backup(&mut c, "lab").await.expect_err("a swapped repository makes the run partial");
    let text = format!("{err:#}");
    ensure!(text.contains("target `second` failed") && text.contains("is not the one backed up to before"), "{text}");
    ensure!(second.list_archives()?.is_empty(), "nothing was written to the swapped repository");
    let err = c
        .list_backups(VmBackupsRequest { name: "lab".into(), target: "second".into() })
        .await
        .expect_err("listing the swapped repository is refused");
    ensure!(err.message().contains("is not the one backed up to before"), "{err:?}");
    Ok(())
}

/// Issue 13 item 7, must show: a VM with a local and an off-site target, restored from the off-site one, disks
/// byte-identical. Borg over SSH to an append-only key, then rsync over SSH through `rrsync` with `--link-dest` on
/// the remote; then the off-site host's key changes: that target fails alone, naming itself and the host.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_with_a_local_and_an_offsite_target_restores_from_the_offsite_one_byte_identical() -> Result<()> {
    cmd::require("rsync", "rsync")?;
    let mut host = OffsiteHost::start()?;
    let trusted = host.trusted_init("lab", "the off-site passphrase")?;
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let local = BorgRepo::init("the local passphrase")?;
    let offsite_pass = lab.dir.path().join("offsite.pass");
    std::fs::write(&offsite_pass, "the off-site passphrase")?;
    std::fs::set_permissions(&offsite_pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let borg_section = format!(
        "mode = \"clone\"\nengine = \"borg\"\npasscommand = {:?}\nretention = {{ last = 5 }}\n\
         targets = [{{ label = \"local\", url = {:?} }}, \
                    {{ label = \"offsite\", url = {:?}, ssh_key = {:?}, known_hosts = {:?}, passphrase_file = {:?}, \
                       append_only = true }}]\n",
        passcommand(&local)?,
        local.path(),
        host.url("lab"),
        host.key_path(),
        host.known_hosts_path(),
        offsite_pass,
    );
    lab.restart_with(&borg_section)?;
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    ensure!(lab.state().await? == "running", "the vm did not start");

    let msg = backup(&mut c, "lab").await?;
    ensure!(msg.contains("`local` ok") && msg.contains("`offsite` ok"), "{msg}");
    let id = id_of(&msg)?;
    let repo = host.repo_path("lab").display().to_string();
    ensure!(trusted.archives(&repo)? == [id.clone()], "off-site archives: {:?}", trusted.archives(&repo)?);
    ensure!(local.list_archives()? == [id.clone()], "local archives");

    // Restored from the off-site copy: the disks are the live VM's, byte for byte; a drill from there passes too.
    let from_offsite = lab.dir.path().join("from-offsite");
    let msg = restore_from(&mut c, "lab", "offsite", "", &from_offsite).await?;
    ensure!(msg.contains(&format!("restored {id} of vm lab from target `offsite`")), "{msg}");
    same_disks(&from_offsite, &lab.vm_dir)?;
    let mut s = c.drill(VmDrillRequest { name: "lab".into(), target: "offsite".into() }).await?.into_inner();
    let mut drill = String::new();
    while let Some(p) = s.message().await? {
        drill = p.message;
    }
    ensure!(drill.starts_with("drill ok") && drill.contains("from target `offsite`"), "{drill}");

    // rsync over SSH: the off-site host admits a second key only for `rrsync -no-del DISK` (paths from DISK's root,
    // nothing deleted: an append-only target).
    let rsync_key = host.authorize_key("rsync", &format!("rrsync -no-del {}", host.disk().display()))?;
    let remote_dir = host.disk().join("rsync-lab");
    std::fs::create_dir(&remote_dir)?;
    let local_dir = lab.dir.path().join("rsync-local");
    std::fs::create_dir(&local_dir)?;
    let rsync_section = format!(
        "mode = \"suspend\"\nengine = \"rsync\"\nretention = {{ last = 5 }}\n\
         targets = [{{ label = \"local\", url = {:?} }}, \
                    {{ label = \"offsite\", url = \"root@{}:/rsync-lab\", ssh_key = {:?}, known_hosts = {:?}, \
                       append_only = true }}]\n",
        local_dir,
        host.addr(),
        rsync_key.private,
        host.known_hosts_path(),
    );
    lab.restart_with(&rsync_section)?;
    let mut c = lab.client().await?;
    let first = id_of(&backup(&mut c, "lab").await?)?;
    let msg = backup(&mut c, "lab").await?;
    ensure!(msg.contains("`local` ok") && msg.contains("`offsite` ok"), "{msg}");
    let second = id_of(&msg)?;
    // The second copy on the remote hard-links the unchanged files of the first (`--link-dest`): the raw data disk
    // (nothing writes it; QEMU touches the qcow2's header when it pauses, so that one is copied again).
    {
        use std::os::unix::fs::MetadataExt;
        let ino = |id: &str| std::fs::metadata(remote_dir.join(id).join("data.raw")).map(|m| m.ino());
        ensure!(ino(&first)? == ino(&second)?, "data.raw: not hard-linked to the previous copy on the remote");
    }
    ensure!(remote_dir.join(format!("{second}.done")).is_dir(), "no completion marker for {second}");
    let from_rsync = lab.dir.path().join("from-rsync-offsite");
    let msg = restore_from(&mut c, "lab", "offsite", &first, &from_rsync).await?;
    ensure!(msg.contains(&format!("restored {first} of vm lab from target `offsite`")), "{msg}");
    same_disks(&from_rsync, &lab.vm_dir)?;

    // The off-site host's key changes (a reinstall, or a man in the middle): that target fails alone, naming it and
    // the host, and nothing reaches it; the local target gets the backup; the metrics show which one is stale.
    lab.restart_with(&borg_section)?;
    let mut c = lab.client().await?;
    host.rotate_host_key()?;
    let before = trusted.archives(&repo)?;
    let err = backup(&mut c, "lab").await.expect_err("a changed host key must fail the off-site target");
    let text = format!("{err:#}");
    let addr = host.addr().to_string();
    ensure!(
        text.contains("partly backed up as")
            && text.contains("target `offsite` failed")
            && text.contains(&format!("ssh to {addr}"))
            && text.contains("the host key changed")
            && text.contains("nothing was sent"),
        "{text}"
    );
    let latest = id_of(&text)?;
    ensure!(local.list_archives()?.contains(&latest), "the local target lacks {latest}");
    ensure!(trusted.archives(&repo)? == before, "something reached the off-site repository");
    let metrics = lab.agent()?.metrics_text()?;
    let fresh = |target: &str| {
        metric(
            &metrics,
            "backup_last_success_timestamp_seconds",
            &format!("layer=\"host\",name=\"lab\",repo=\"{target}\""),
        )
    };
    let (l, o) = (fresh("local").context("local series")?, fresh("offsite").context("offsite series")?);
    ensure!(l > o, "the off-site target should be stale: local {l}, offsite {o}");
    ensure!(
        metric(&metrics, "backup_failures_total", "layer=\"host\",name=\"lab\",repo=\"offsite\"") == Some(1.0),
        "{metrics}"
    );
    ensure!(lab.state().await? == "running", "the vm does not run");
    Ok(())
}
