//! The one long-job protocol end to end (issue 12 item 1): the real `labctl --json` against a real host-agent
//! (rsync engine, an off QEMU bundle) and a real services-agent (zfs-fuse, Borg, dockerd). Every job's stream ends
//! with one update (step `done`) carrying its typed summary, then `{"summaries": [...]}`; the human output prints
//! the summary on stdout and the steps on stderr. Knows the agents' config formats and labctl's output; nothing of
//! their internals. Borg's byte progress (issue 15 item 6): a 1 GiB VM backup and restore move in bytes,
//! monotonically, to 100 %.

use std::path::Path;
use std::process::Command;

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::{cmd, files};
use strata_tests::harness::{base_config, bin, write_inventory, AgentKind, AgentProc, Pki};
use strata_tests::servicejob::ServiceJob;

/// `labctl --config INV ARGS`: exit status, stdout, stderr.
fn labctl(inv: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(bin("labctl")?).arg("--config").arg(inv).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A job's `--json` output: its updates, the last one's summary of `kind`, and the `summaries` of the last line.
fn job_json(what: &str, out: &str, kind: &str) -> Result<(Vec<Value>, Value, Vec<String>)> {
    let lines: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what}: not JSON lines:\n{out}"))?;
    ensure!(lines.len() >= 3, "{what}: want steps, the summary and the summaries line:\n{out}");
    let (updates, tail) = lines.split_at(lines.len() - 1);
    let summaries: Vec<String> = serde_json::from_value(tail[0]["summaries"].clone())
        .with_context(|| format!("{what}: the last line is not {{summaries}}:\n{out}"))?;
    let last = updates.last().context("no update")?;
    ensure!(last["step"] == "done", "{what}: the last update is not step done: {last}");
    ensure!(
        updates[..updates.len() - 1].iter().all(|u| u.get("summary").is_none()),
        "{what}: a summary before the last update:\n{out}"
    );
    let summary = last["summary"][kind].clone();
    ensure!(!summary.is_null(), "{what}: the last update has no {kind} summary: {last}");
    ensure!(
        last["message"].as_str().is_some_and(|m| m.lines().map(str::to_string).collect::<Vec<_>>() == summaries),
        "{what}: summaries {summaries:?} are not the last update's message {last}"
    );
    Ok((updates.to_vec(), summary, summaries))
}

#[test]
fn vm_backup_restore_and_drill_end_with_their_typed_summaries() -> Result<()> {
    cmd::require("rsync", "rsync")?;
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    // An off QEMU VM (a bundle with its vm.toml, no QMP socket): backed up as it is, restorable and checkable.
    let vm = dir.path().join("lab");
    std::fs::create_dir(&vm)?;
    std::fs::write(vm.join("disk.raw"), vec![7u8; 64 * 1024])?;
    std::fs::write(vm.join("vm.toml"), "memory_mb = 64\ncpus = 1\ndisks = [\"disk.raw\"]\n")?;
    let target = dir.path().join("backups");
    std::fs::create_dir(&target)?;
    let (cert, key) = pki.issue(Role::HostAgent, AgentKind::Host.cert_name())?;
    let config = dir.path().join("host-agent.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"stop\"\nengine = \"rsync\"\n\
             target = {:?}\nretention = {{ last = 5 }}\n",
            base_config(&dir.path().join("state"), &pki.ca(), &cert, &key),
            vm.display().to_string(),
            target.display().to_string(),
        ),
    )?;
    let host = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let (admin, admin_key) = pki.issue(Role::Admin, "alice")?;
    let inv = dir.path().join("labctl.toml");
    write_inventory(&inv, &pki.ca(), &admin, &admin_key, &[&host])?;
    let ctx = || format!("host-agent log:\n{}", host.logs());

    let (ok, out, err) = labctl(&inv, &["--json", "vm", "backup", "lab"])?;
    ensure!(ok, "vm backup: {out}\n{err}\n{}", ctx());
    let (updates, summary, summaries) = job_json("vm backup", &out, "vm_backups")?;
    ensure!(updates.iter().all(|u| u.get("step").is_some() && u.get("total").is_some()), "{out}");
    let b = &summary[0];
    let id = b["id"].as_str().context("id")?.to_string();
    ensure!(b["vm"] == "lab" && id.starts_with("lab-") && b["mode"] == "stop", "{summary}");
    ensure!(b["downtime_seconds"] == 0.0 && b["warnings"] == serde_json::json!([]), "an off vm has no downtime: {b}");
    ensure!(b["size"].as_u64().is_some_and(|n| n >= 64 * 1024), "the bundle's size: {b}");
    ensure!(summaries.len() == 1 && summaries[0].starts_with(&format!("vm lab backed up as {id} ")), "{summaries:?}");
    // The size is the one the agent's history lists.
    let (ok, listed, _) = labctl(&inv, &["--json", "vm", "backups", "lab"])?;
    let listed: Vec<Value> = serde_json::from_str(&listed).with_context(|| format!("vm backups: {listed}"))?;
    ensure!(ok && listed.iter().any(|l| l["id"] == id.as_str() && l["size"] == b["size"]), "{listed:?} vs {b}");

    // Restore, as a person reads it: the steps on stderr, the summary alone on stdout.
    let to = dir.path().join("restored");
    let to_s = to.display().to_string();
    let (ok, out, err) = labctl(&inv, &["vm", "restore", "lab", "--to", &to_s])?;
    ensure!(ok, "vm restore: {out}\n{err}\n{}", ctx());
    ensure!(
        out == format!("restored {id} of vm lab from target `default` into {to_s}\n"),
        "vm restore stdout: {out:?}"
    );
    ensure!(err.lines().any(|l| l.starts_with("extract: ")) && !err.contains("restored "), "stderr: {err}");
    ensure!(to.join("vm.toml").is_file(), "nothing restored at {to_s}");

    // Again with --force, in JSON: the bundle moved aside is in the summary.
    let (ok, out, err) = labctl(&inv, &["--json", "vm", "restore", "lab", "--to", &to_s, "--force"])?;
    ensure!(ok, "vm restore --force: {out}\n{err}\n{}", ctx());
    let (_, r, _) = job_json("vm restore", &out, "vm_restore")?;
    ensure!(r["archive"] == id.as_str() && r["to"] == to_s.as_str() && r["started_as"] == "", "{r}");
    let aside = r["moved_aside"].as_str().context("moved_aside")?;
    ensure!(aside.contains("restored.replaced-") && Path::new(aside).join("vm.toml").is_file(), "{r}");

    let (ok, out, err) = labctl(&inv, &["--json", "vm", "drill", "lab"])?;
    ensure!(ok, "vm drill: {out}\n{err}\n{}", ctx());
    let (_, d, summaries) = job_json("vm drill", &out, "vm_drill")?;
    ensure!(d["restore"]["archive"] == id.as_str() && d["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{d}");
    ensure!(summaries.len() == 1 && summaries[0].starts_with("drill ok in "), "{summaries:?}");
    Ok(())
}

/// The byte updates of one step in a job's `--json` updates: `(done, total)` in order; checks they never go back,
/// never pass their total, and end at 100 %.
fn byte_updates(what: &str, updates: &[Value], step: &str) -> Result<Vec<(u64, u64)>> {
    let bytes: Vec<(u64, u64)> = updates
        .iter()
        .filter(|u| u["bytes"] == true && u["step"] == step)
        .map(|u| (u["done"].as_u64().unwrap_or(0), u["total"].as_u64().unwrap_or(0)))
        .collect();
    ensure!(bytes.len() >= 3, "{what}: too few byte updates of {step}: {bytes:?}");
    ensure!(bytes.windows(2).all(|w| w[0].0 <= w[1].0), "{what}: bytes went back: {bytes:?}");
    ensure!(bytes.iter().all(|(d, t)| d <= t), "{what}: past its total: {bytes:?}");
    let (done, total) = *bytes.last().context("no byte update")?;
    ensure!(done == total, "{what}: ended at {done} of {total}: {bytes:?}");
    Ok(bytes)
}

#[test]
fn a_1gib_vm_backup_and_restore_move_in_bytes_to_100_percent() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let vm = dir.path().join("lab");
    // 1 GiB of random data (not compressible nor deduplicated) in an off QEMU bundle.
    const GIB: u64 = 1 << 30;
    files::write_random_files(&vm.join("disks"), 8, (GIB / 8) as usize)?;
    let disks: Vec<String> = (0..8).map(|i| format!("\"disks/file-{i}.bin\"")).collect();
    std::fs::write(vm.join("vm.toml"), format!("memory_mb = 64\ncpus = 1\ndisks = [{}]\n", disks.join(", ")))?;
    let borg = BorgRepo::init("progress passphrase")?;
    let passcommand = borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").context("passcommand")?.1;
    let (cert, key) = pki.issue(Role::HostAgent, AgentKind::Host.cert_name())?;
    let config = dir.path().join("host-agent.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"stop\"\nengine = \"borg\"\n\
             target = {:?}\npasscommand = {passcommand:?}\n",
            base_config(&dir.path().join("state"), &pki.ca(), &cert, &key),
            vm.display().to_string(),
            borg.path().display().to_string(),
        ),
    )?;
    let host = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let (admin, admin_key) = pki.issue(Role::Admin, "alice")?;
    let inv = dir.path().join("labctl.toml");
    write_inventory(&inv, &pki.ca(), &admin, &admin_key, &[&host])?;
    let ctx = || format!("host-agent log:\n{}", host.logs());

    let (ok, out, err) = labctl(&inv, &["--json", "vm", "backup", "lab"])?;
    ensure!(ok, "vm backup: {out}\n{err}\n{}", ctx());
    let (updates, _, _) = job_json("vm backup", &out, "vm_backups")?;
    let created = byte_updates("vm backup", &updates, "transfer")?;
    let total = created.last().context("no update")?.1;
    // The total is what borg read: the disks, vm.toml and the archive's own metadata.
    ensure!((GIB..GIB + 65536).contains(&total), "vm backup: total {total} is not the bundle's size");
    ensure!(created.iter().any(|&(d, _)| d > 0 && d < total), "vm backup: never in between: {created:?}");
    ensure!(
        updates.iter().any(|u| u["bytes"] == true && u["eta_seconds"].as_f64().is_some()),
        "vm backup: no eta in any byte update"
    );

    let to = dir.path().join("restored");
    let (ok, out, err) = labctl(&inv, &["--json", "vm", "restore", "lab", "--to", &to.display().to_string()])?;
    ensure!(ok, "vm restore: {out}\n{err}\n{}", ctx());
    let (updates, _, _) = job_json("vm restore", &out, "vm_restore")?;
    let extracted = byte_updates("vm restore", &updates, "transfer")?;
    // Borg's extract total is the files' bytes (the archive's metadata is not among them).
    let restored = extracted.last().context("no update")?.1;
    ensure!((GIB..=total).contains(&restored), "vm restore: total {restored}, the backup read {total}");
    Ok(())
}

#[test]
fn services_backup_and_check_end_with_their_typed_summaries() -> Result<()> {
    let lab = ServiceJob::start("jb", 0, "")?;
    let (agent, inv, service, dataset, borg) = (&lab.agent, &lab.inv, &lab.service, &lab.dataset, &lab.borg);
    let ctx = || format!("services-agent log:\n{}", agent.logs());

    let (ok, out, err) = labctl(inv, &["--json", "services", "backup", service])?;
    ensure!(ok, "services backup: {out}\n{err}\n{}", ctx());
    let (updates, summary, summaries) = job_json("services backup", &out, "service_backups")?;
    let b = &summary[0];
    // borg create's bytes, ending at the archive's original size.
    let last_bytes = updates.iter().rev().find(|u| u["bytes"] == true && u["step"] == "borg-create");
    ensure!(
        last_bytes.is_some_and(|u| u["done"] == u["total"] && u["done"] == b["original_size"]),
        "services backup: no byte progress of borg-create ending at the original size: {out}"
    );
    let archive = b["archive"].as_str().context("archive")?.to_string();
    ensure!(b["service"] == service.as_str() && archive.starts_with(service.as_str()), "{b}");
    ensure!(b["snapshot"].as_str().is_some_and(|s| s.starts_with(&format!("{dataset}@strata-"))), "{b}");
    ensure!(b["original_size"].as_u64().is_some_and(|n| n > 0), "{b}");
    ensure!(
        summaries.len() == 1 && summaries[0].starts_with(&format!("{service}: archive {archive} ")),
        "{summaries:?}"
    );
    ensure!(borg.list_archives()?.len() == 1, "one archive in the repository");

    // The check, as a person reads it: its summary alone on stdout.
    let (ok, out, err) = labctl(inv, &["services", "check", service])?;
    ensure!(ok, "services check: {out}\n{err}\n{}", ctx());
    ensure!(out.starts_with("borg check of ") && out.lines().count() == 1, "services check stdout: {out:?}");
    ensure!(err.lines().any(|l| l.starts_with("check: ")), "services check stderr: {err}");

    let (ok, out, err) = labctl(inv, &["--json", "services", "check", service])?;
    ensure!(ok, "services check --json: {out}\n{err}\n{}", ctx());
    let (_, c, _) = job_json("services check", &out, "service_check")?;
    ensure!(c["service"] == service.as_str(), "{c}");
    Ok(())
}
