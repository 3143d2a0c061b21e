//! The host-agent's clone-mode backups cost what changed: a real QEMU VM on a btrfs loop filesystem (reflink
//! clones) whose bundle holds split extents, backed up with real borg through the real binary. The clone is made at
//! one path per VM with the bundle's mtimes, borg compares mtime and size only, and the agent logs which files borg
//! read: a second backup of an unchanged bundle reads only the newest file (borg never caches the file with the
//! newest mtime of a run), a changed extent is read and restored byte for byte, a clone a crashed run left behind
//! is removed first. Knows the agent's config format, logs and gRPC API only.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{VmFilesRequest, VmRef};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::fixtures::cmd;
use strata_tests::vmlab::{backup, restore, sha256, Lab, VmSpec};

/// Split extents in the bundle beside the VM's disks (as Fusion's `-s001.vmdk` files), 256 KiB each.
const EXTENTS: usize = 4;
const EXTENT: usize = 256 << 10;

fn extent(i: usize) -> String {
    format!("lab-s00{i}.vmdk")
}

/// Bytes of extent `i`, version `v`: different for every extent and version.
fn extent_bytes(i: usize, v: u8) -> Vec<u8> {
    (0..EXTENT).map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8 * 7 + v)).collect()
}

/// What the agent logged borg read for backup `id` (`borg read N of M files (the others unchanged): a, b`): the
/// files read, the files in the archive, the line.
fn files_read(lab: &Lab, id: &str) -> Result<(Vec<String>, usize, String)> {
    let logs = lab.agent()?.logs();
    let line = logs.lines().find(|l| l.contains(id) && l.contains("borg read "));
    let line = line.with_context(|| format!("no `borg read` line for {id}:\n{logs}"))?.to_string();
    let rest = line.split("borg read ").nth(1).unwrap_or("");
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok()).with_context(|| format!("bad line: {line}"));
    let mut words = rest.split_whitespace();
    let (read, of, total) = (num(words.next())?, words.next(), num(words.next())?);
    ensure!(of == Some("of"), "bad line: {line}");
    let names = rest.split(" (the others unchanged)").nth(1).unwrap_or("");
    let names = names.strip_prefix(": ").map(|n| n.split(" vm=").next().unwrap_or("")).unwrap_or("");
    let names: Vec<String> = names.split(", ").filter(|n| !n.is_empty()).map(str::to_string).collect();
    ensure!(names.len() == read, "every file read is named: {line}");
    Ok((names, total, line))
}

fn backup_id(msg: &str) -> Result<String> {
    let id = msg.split("backed up as ").nth(1).and_then(|s| s.split_whitespace().next());
    Ok(id.with_context(|| format!("no backup id in: {msg}"))?.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_clone_backup_reads_only_what_changed_and_restores_it() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::new(fs.path())?;
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for i in 1..=EXTENTS {
        let p = lab.vm_dir.join(extent(i));
        std::fs::write(&p, extent_bytes(i, 0))?;
        std::fs::File::options().write(true).open(&p)?.set_modified(old)?;
    }
    // vm.toml is the bundle's newest file: the one borg reads every run.
    let toml = std::fs::read(lab.vm_dir.join("vm.toml"))?;
    std::fs::write(lab.vm_dir.join("vm.toml"), toml)?;
    let bystander = fs.path().join("strata-clones-are-not-mine");
    std::fs::create_dir(&bystander)?;

    let borg = BorgRepo::init("correct horse battery staple")?;
    let passcommand =
        borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("passcommand")?;
    let extra = format!("passcommand = {passcommand:?}\nretention = {{ last = 20 }}");
    lab.restart(&VmSpec { mode: "clone", engine: "borg", target: borg.path(), extra })?;
    let mut c = lab.client().await?;
    c.start(VmRef { name: "lab".into() }).await?;
    ensure!(lab.state().await? == "running", "the vm did not start");
    let files = 3 + EXTENTS;

    let first = backup_id(&backup(&mut c, "lab").await?)?;
    let (read, total, line) = files_read(&lab, &first)?;
    ensure!(read.len() == files && total == files, "the first backup reads everything: {line}");

    // A directory at the clone's path that the journal does not name is not this agent's to remove: the run is
    // refused before the vm is touched, naming it, and the directory is left as it was.
    let leftover = fs.path().join("strata-clone-lab");
    std::fs::create_dir(&leftover)?;
    std::fs::write(leftover.join("stale"), b"not the agent's")?;
    let refused = backup(&mut c, "lab").await.err().context("a run removed a clone path no journal row names")?;
    ensure!(format!("{refused:#}").contains("no open journal row says this agent made it"), "{refused:#}");
    ensure!(std::fs::read(leftover.join("stale"))? == b"not the agent's", "the unnamed directory was touched");
    ensure!(lab.state().await? == "running", "the vm is not running after the refusal");
    // The same directory named by an open `clone` row (what a run whose removal failed leaves): removed before the
    // new clone, the row closed.
    let db = lab.dir.path().join("state/host.db");
    let insert = format!(
        "INSERT INTO journal (vm, step, detail, started_unix) VALUES ('lab', 'clone', '{}', 1)",
        leftover.display()
    );
    cmd::run_args("sqlite3", [db.to_str().context("utf-8")?, insert.as_str()])?;
    let msg = backup(&mut c, "lab").await?;
    ensure!(!msg.contains("fell back"), "clone mode fell back: {msg}");
    let second = backup_id(&msg)?;
    ensure!(lab.agent()?.logs().contains("left by an earlier run"), "the leftover removal is not logged");
    let open = cmd::run_args(
        "sqlite3",
        [db.to_str().context("utf-8")?, "SELECT count(*) FROM journal WHERE done_unix IS NULL"],
    )?;
    ensure!(open.trim() == "0", "journal rows left open: {open}");
    // Borg never keeps the newest-mtime file of a run that read files in its files cache (its guard against
    // timestamp granularity), so vm.toml, the newest, may be read again; no disk or extent is.
    let (read, total, line) = files_read(&lab, &second)?;
    ensure!(total == files, "{line}");
    ensure!(read.iter().all(|f| f == "vm.toml"), "an unchanged running vm's disks and extents are read: {line}");

    // One extent changes (size kept): the third backup reads it, and it restores byte for byte.
    let changed = lab.vm_dir.join(extent(2));
    std::fs::write(&changed, extent_bytes(2, 1))?;
    let third = backup_id(&backup(&mut c, "lab").await?)?;
    let (read, _, line) = files_read(&lab, &third)?;
    ensure!(read.contains(&extent(2)), "the changed extent is read: {line}");
    ensure!(read.iter().all(|f| *f == extent(2) || f == "vm.toml"), "unchanged files are read: {line}");
    ensure!(lab.state().await? == "running", "the vm is not running after the backups");
    let names: Vec<String> = std::fs::read_dir(fs.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into()))
        .collect::<std::io::Result<_>>()?;
    ensure!(!names.iter().any(|n| n.starts_with("strata-clone-")), "a clone is left: {names:?}");
    ensure!(bystander.exists(), "a directory not named like our clones was touched");

    // The archive carries the bundle's mtimes (the clone kept them), and restores what the bundle holds.
    let req = VmFilesRequest { name: "lab".into(), archive: third.clone(), limit: 100, ..Default::default() };
    let entries = c.list_files(req).await?.into_inner().entries;
    let kept = entries.iter().find(|e| e.path.ends_with(&extent(1))).context("extent 1 not in the archive")?;
    ensure!(kept.mtime_unix == 1_600_000_000, "the clone did not keep the mtime: {kept:?}");
    let to = lab.dir.path().join("restored");
    restore(&mut c, "lab", &third, &to).await?;
    for i in 1..=EXTENTS {
        let want = extent_bytes(i, if i == 2 { 1 } else { 0 });
        ensure!(std::fs::read(to.join(extent(i)))? == want, "extent {i} restored wrong");
    }
    let same = |p: &Path| -> Result<bool> { Ok(sha256(&lab.vm_dir.join(p))? == sha256(&to.join(p))?) };
    ensure!(same(Path::new("disk.qcow2"))? && same(Path::new("vm.toml"))?, "restored disks differ from the bundle");
    Ok(())
}
