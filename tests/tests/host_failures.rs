//! Bad input end to end, through the real host-agent and a QEMU VM whose guest runs a real qemu-ga: a clone that
//! fails half-way (on btrfs, cp clones the first files of the bundle, then cannot clone the next: one on a tmpfs
//! mounted inside the bundle, taken for a volume that cannot clone; or a NOCOW one, a failure) and a full borg
//! target (a size-limited tmpfs, incompressible data in the guest's disk). Each leaves the VM running and thawed, no
//! clone, no open journal row, and says why; the full target's next run, once space is freed, succeeds. Knows the
//! agent's config format, journal and gRPC API only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::fixtures::{cmd, require_root};
use strata_tests::vmlab::{backup, Lab, VmSpec};

/// A tmpfs of a given size mounted on a directory; unmounted on Drop (also when a test panics).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs> {
        require_root("a tmpfs mount")?;
        std::fs::create_dir_all(path)?;
        cmd::run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path))?;
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    /// Gives it a new size, keeping what it holds.
    fn resize(&self, size: &str) -> Result<()> {
        cmd::run(Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.path))?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..20 {
            if Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Still busy: detach it, so that nothing outlives the test.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `SELECT …` on the agent's database.
fn sql(lab: &Lab, query: &str) -> Result<String> {
    let db = lab.dir.path().join("state/host.db");
    Ok(cmd::run_args("sqlite3", [db.to_str().context("utf-8")?, query])?.trim().to_string())
}

/// What every failure must leave: the VM running, its guest thawed, no clone next to the bundle, no open journal row.
async fn nothing_left(lab: &Lab, case: &str) -> Result<()> {
    ensure!(lab.state().await? == "running", "{case}: the vm is not running");
    ensure!(lab.guest_agent().freeze_status()? == "thawed", "{case}: the guest is not thawed");
    let parent = lab.vm_dir.parent().context("parent")?;
    let clones: Vec<_> = std::fs::read_dir(parent)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("strata-clone-"))
        .collect();
    ensure!(clones.is_empty(), "{case}: clone left behind: {clones:?}");
    let open = sql(lab, "SELECT group_concat(step || ' ' || detail, ', ') FROM journal WHERE done_unix IS NULL")?;
    ensure!(open.is_empty(), "{case}: open journal rows: {open}");
    Ok(())
}

/// Clone mode on btrfs, the bundle holding a tmpfs mounted on its subdirectory `nvram` (made last, so cp clones
/// the disk first): cp clones the disk, then fails on the cross-device file. The agent takes that as a volume that
/// cannot clone: the partial clone is removed and the run falls back to backing up the bundle with the VM paused,
/// saying why; the VM then runs and its guest is thawed, the journal is closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_clone_that_fails_half_way_falls_back_and_leaves_nothing_behind() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::with_guest(fs.path(), "")?;
    let nvram = Tmpfs::mount(&lab.vm_dir.join("nvram"), "1m")?;
    std::fs::write(nvram.path.join("state.bin"), b"firmware variables")?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    lab.restart(&VmSpec { mode: "clone", engine: "rsync", target: &target, extra: String::new() })?;
    lab.boot_guest().await?;

    let msg = tokio::time::timeout(Duration::from_secs(120), backup(&mut lab.client().await?, "lab")).await??;
    eprintln!("summary: {msg}");
    let clone = fs.path().join("strata-clone-lab");
    let why = format!(
        "{} cannot clone (cp: failed to clone '{}' from '{}': Invalid cross-device link): fell back to suspend mode",
        fs.path().display(),
        clone.join("nvram/state.bin").display(),
        lab.vm_dir.join("nvram/state.bin").display()
    );
    ensure!(msg.contains("backed up as lab-") && msg.contains(&why), "{msg}");
    ensure!(msg.contains("consistency: file systems frozen by the guest agent (1 file system)"), "{msg}");
    nothing_left(&lab, "clone half-way").await?;
    let row = sql(&lab, "SELECT mode, ok, message FROM history WHERE vm = 'lab'")?;
    ensure!(row.starts_with("suspend|1|") && row.contains(&why), "history: {row}");
    // The run backed up the whole bundle, the tmpfs file with it.
    let copied = std::fs::read_dir(&target)?.filter_map(|e| e.ok()).map(|e| e.path().join("nvram/state.bin"));
    ensure!(copied.into_iter().any(|p| p.is_file()), "the bundle's nvram file is not in the backup");
    let steps = sql(&lab, "SELECT group_concat(step, ',') FROM (SELECT step FROM journal ORDER BY id)")?;
    ensure!(steps.starts_with("freeze,quiesce,clone,resume"), "journal order: {steps}");
    drop(lab);
    drop(nvram);
    Ok(())
}

/// Clone mode on btrfs, the bundle holding a second, NOCOW file (`chattr +C`, as libvirt makes disk images on
/// btrfs; made last, so cp clones the disk first): the kernel refuses to clone it into a copy-on-write file
/// ("Invalid argument"), which the agent does not take for a volume that cannot clone: the run fails naming the file
/// and why; the partial clone is removed, the VM runs and its guest is thawed, the journal is closed, nothing was
/// sent to the target.
#[tokio::test(flavor = "multi_thread")]
async fn a_clone_that_fails_half_way_otherwise_fails_the_run_and_leaves_nothing_behind() -> Result<()> {
    cmd::require("chattr", "e2fsprogs")?;
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::with_guest(fs.path(), "")?;
    let nocow = lab.vm_dir.join("efivars.fd");
    std::fs::File::create(&nocow)?;
    cmd::run(Command::new("chattr").arg("+C").arg(&nocow))?;
    std::fs::write(&nocow, vec![0x5au8; 65536])?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    lab.restart(&VmSpec { mode: "clone", engine: "rsync", target: &target, extra: String::new() })?;
    lab.boot_guest().await?;

    let failed = tokio::time::timeout(Duration::from_secs(120), backup(&mut lab.client().await?, "lab")).await?;
    let failed = failed.err().context("a backup whose clone failed succeeded")?;
    let err = failed.downcast_ref::<tonic::Status>().context("not a status")?.message().to_string();
    eprintln!("clone failed: {err}");
    let why = format!(
        "cp: failed to clone '{}' from '{}': Invalid argument",
        fs.path().join("strata-clone-lab/efivars.fd").display(),
        nocow.display()
    );
    ensure!(err.starts_with("vm lab: clone of ") && err.contains(&why), "{err}");
    nothing_left(&lab, "clone failed").await?;
    let row = sql(&lab, "SELECT mode, ok, message FROM history WHERE vm = 'lab'")?;
    ensure!(row.starts_with("clone|0|") && row.contains(&why), "history: {row}");
    ensure!(std::fs::read_dir(&target)?.next().is_none(), "something was sent to the target");
    let steps = sql(&lab, "SELECT group_concat(step, ',') FROM (SELECT step FROM journal ORDER BY id)")?;
    ensure!(steps == "freeze,quiesce,clone,resume", "journal: {steps}");
    Ok(())
}

/// Clone mode on btrfs to a borg repository on an 8 MiB tmpfs, the guest's disk holding 20 MiB of random data:
/// the transfer fails for want of space, saying so; the VM runs and is thawed (it was resumed before the transfer),
/// the clone is removed, the journal closed, the history row failed. Once the volume is bigger, the next run
/// succeeds to the same repository.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_target_volume_fails_a_clone_run_and_the_next_one_succeeds_once_freed() -> Result<()> {
    full_target("clone").await
}

/// [`a_full_target_volume_fails_a_clone_run_and_the_next_one_succeeds_once_freed`] in suspend mode: the transfer
/// fails while the VM is paused and its guest frozen; both are undone all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_target_volume_fails_a_suspend_run_and_the_next_one_succeeds_once_freed() -> Result<()> {
    full_target("suspend").await
}

/// A backup of `mode` to a full borg target, then to the same target with room.
async fn full_target(mode: &str) -> Result<()> {
    cmd::require("debugfs", "e2fsprogs")?;
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::with_guest(fs.path(), "")?;
    // Incompressible data inside the guest's file system, written before it boots.
    let random = lab.dir.path().join("random.bin");
    cmd::run(Command::new("head").args(["-c", "20M", "/dev/urandom"]).stdout(std::fs::File::create(&random)?))?;
    let data = lab.vm_dir.join("data.raw");
    cmd::run(
        Command::new("debugfs").arg("-w").arg("-R").arg(format!("write {} random.bin", random.display())).arg(&data),
    )?;

    let borg = BorgRepo::init("correct horse battery staple")?;
    let volume = Tmpfs::mount(&borg.scratch_dir().join("volume"), "8m")?;
    let repo = volume.path.join("repo");
    cmd::run(borg.command().args(["init", "--encryption=repokey"]).arg(&repo))?;
    let passcommand =
        borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("passcommand")?;
    let spec = VmSpec { mode, engine: "borg", target: &repo, extra: format!("passcommand = {passcommand:?}") };
    lab.restart(&spec)?;
    lab.boot_guest().await?;

    let failed = tokio::time::timeout(Duration::from_secs(120), backup(&mut lab.client().await?, "lab")).await?;
    let failed = failed.err().context("a backup to a full volume succeeded")?;
    let err = failed.downcast_ref::<tonic::Status>().context("not a status")?.message().to_string();
    eprintln!("full target: {err}");
    // borg's own words, without its traceback.
    let said = "No space left on device, cleaning up partial transaction to free space.\nborg stopped on an error it \
                does not handle: OSError: [Errno 28] No space left on device";
    ensure!(err.contains(said), "the error does not name the space problem: {err}");
    ensure!(!err.contains("Traceback") && !err.contains("File \"/usr/lib"), "a traceback in the error: {err}");
    nothing_left(&lab, "full target").await?;
    let row = sql(&lab, "SELECT mode, ok, message FROM history WHERE vm = 'lab'")?;
    ensure!(row.starts_with(&format!("{mode}|0|")) && row.contains(said), "history: {row}");

    volume.resize("64m")?;
    let msg = tokio::time::timeout(Duration::from_secs(120), backup(&mut lab.client().await?, "lab")).await??;
    ensure!(msg.contains("backed up as lab-"), "after freeing space: {msg}");
    nothing_left(&lab, "after freeing space").await?;
    let rows = sql(&lab, "SELECT group_concat(ok, ',') FROM (SELECT ok FROM history WHERE vm = 'lab' ORDER BY rowid)")?;
    ensure!(rows == "0,1", "history: {rows}");
    let archives = cmd::run(borg.command().args(["list", "--short"]).arg(&repo))?;
    ensure!(archives.lines().count() == 1, "one archive in the repository: {archives}");
    drop(lab);
    drop(volume);
    Ok(())
}
