//! The host-agent's Time Machine engine end to end through `tmutil-standin` (tmutil cannot run on Linux): backups of
//! a stopped VM and of a running one in clone mode, restores checked like every engine's (the restored QEMU bundle
//! passes `qemu-img check`; a damaged copy is refused), and the refusals (a target that is not a destination, a
//! backup the destination does not have). Knows the agent's config format and gRPC API, and what tmutil prints (as
//! the engine's parsers were tested on); nothing of the agent's internals.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{VmBackupsRequest, VmRef};
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::vmlab::{backup, restore, sha256, Lab, VmSpec, BLOCK};

/// tmutil's verbs as the engine uses them, over a directory: `startbackup` copies the directory named in `volume`
/// into `DEST/ID/DATE.backup/DATE.backup/Macintosh HD - Data/ITS PATH/`, as Time Machine lays out a backup of the
/// startup disk's data volume on an APFS destination, minus excluded paths; `restore` copies like cp. Every call is
/// logged.
const STANDIN: &str = r#"#!/bin/sh
# tmutil-standin: answers like macOS's tmutil for the host-agent tests (tmutil cannot run on Linux).
D="$(dirname "$0")"
echo "$*" >> "$D/calls.log"
ID=0F0E0D0C-1111-2222-3333-444455556666
dest="$(cat "$D/dest" 2>/dev/null)"
vol="$(cat "$D/volume")"
store="$dest/$ID"
touch "$D/exclusions"
case "$1" in
  destinationinfo)
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<plist version="1.0">'
    if [ -z "$dest" ]; then echo '<dict/>'; else
      printf '<dict>\n\t<key>Destinations</key>\n\t<array>\n\t\t<dict>\n'
      printf '\t\t\t<key>Kind</key>\n\t\t\t<string>Local</string>\n\t\t\t<key>ID</key>\n\t\t\t<string>%s</string>\n' "$ID"
      printf '\t\t\t<key>Name</key>\n\t\t\t<string>%s</string>\n' "$(basename "$dest")"
      printf '\t\t\t<key>LastDestination</key>\n\t\t\t<integer>1</integer>\n'
      printf '\t\t\t<key>MountPoint</key>\n\t\t\t<string>%s</string>\n\t\t</dict>\n\t</array>\n</dict>\n' "$dest"
    fi
    echo '</plist>' ;;
  isexcluded) if grep -qxF "$2" "$D/exclusions"; then echo "[Excluded]    $2"; else echo "[Included]    $2"; fi ;;
  removeexclusion) grep -vxF "$2" "$D/exclusions" > "$D/exclusions.new"; mv "$D/exclusions.new" "$D/exclusions" ;;
  startbackup)
    [ "$4" = "$ID" ] || { echo "tmutil-standin: unknown destination $4" >&2; exit 1; }
    stamp="$(date -u +%Y-%m-%d-%H%M%S)"
    while [ -e "$store/$stamp.backup" ]; do sleep 1; stamp="$(date -u +%Y-%m-%d-%H%M%S)"; done
    b="$store/$stamp.backup/$stamp.backup/Macintosh HD - Data$vol"
    mkdir -p "$b" && cp -a "$vol/." "$b/" || exit 1
    while read -r x; do case "$x" in "$vol"/*) rm -rf "$b/${x#"$vol"/}" ;; esac; done < "$D/exclusions" ;;
  listbackups|latestbackup)
    [ "$3" = "$dest" ] || { echo "tmutil-standin: $3 is not a destination" >&2; exit 1; }
    n="$(ls -d "$store"/*.backup/*.backup 2>/dev/null | sort)"
    if [ -z "$n" ]; then echo "No machine directory found for host."
    elif [ "$1" = latestbackup ]; then echo "$n" | tail -n 1; else echo "$n"; fi ;;
  restore) shift; last=""; for a in "$@"; do last="$a"; done
    while [ $# -gt 1 ]; do cp -a "$1" "$last/" || exit 1; shift; done ;;
  *) echo "tmutil-standin: unknown verb $1" >&2; exit 64 ;;
esac
"#;

/// The stand-in in `dir`, backing up `volume` to the destination `dest` (none when `None`).
fn standin(dir: &Path, volume: &Path, dest: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let p = dir.join("tmutil-standin");
    std::fs::write(&p, STANDIN)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(dir.join("volume"), volume.display().to_string())?;
    if let Some(d) = dest {
        std::fs::create_dir_all(d)?;
        std::fs::write(dir.join("dest"), d.display().to_string())?;
    }
    Ok(p)
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// The VM `lab` in `mode`, backed up by Time Machine (through `tmutil`) to `target`.
fn spec<'a>(mode: &'a str, target: &'a Path, tmutil: &Path) -> VmSpec<'a> {
    VmSpec { mode, engine: "timemachine", target, extra: format!("tmutil = {tmutil:?}") }
}

/// A stopped VM: backed up as it is, restored into a new directory byte for byte and checked; a damaged copy is
/// refused by the check; the refusals name what is wrong.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_vm_backs_up_to_time_machine_and_restores_checked() -> Result<()> {
    let parent = tempfile::Builder::new().prefix("strata-tm-vol-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let tm = lab.dir.path().join("tm");
    let dest = lab.dir.path().join("TMBackup");
    let tmutil = standin(&tm, parent.path(), Some(&dest))?;
    std::fs::write(lab.vm_dir.join("data.raw"), vec![0x5a; 64 * BLOCK])?;
    // The bundle is excluded: the backup lifts the exclusion (and tmutil is asked first).
    std::fs::write(tm.join("exclusions"), format!("{}\n", lab.vm_dir.display()))?;
    lab.restart(&spec("suspend", &dest, &tmutil))?;
    let mut c = lab.client().await?;
    let msg = backup(&mut c, "lab").await.context("backup")?;
    ensure!(msg.contains("backed up as"), "{msg}");
    let log = calls(&tm);
    ensure!(log.contains("removeexclusion") && log.contains("startbackup --block --destination 0F0E0D0C"), "{log}");
    let listed = c.list_backups(VmBackupsRequest { name: "lab".into(), target: String::new() }).await?.into_inner();
    let id = listed.backups.last().context("no backup listed")?.id.clone();
    ensure!(id.starts_with(&dest.display().to_string()) && id.ends_with(".backup"), "{id}");
    let want = sha256(&lab.vm_dir.join("data.raw"))?;

    // The live disk changes; the restore brings back the backed-up one, checked by qemu-img.
    std::fs::write(lab.vm_dir.join("data.raw"), vec![0x11; 64 * BLOCK])?;
    let to = lab.dir.path().join("restored");
    let done = restore(&mut c, "lab", "", &to).await.context("restore")?;
    ensure!(done.contains("restored"), "{done}");
    ensure!(sha256(&to.join("data.raw"))? == want, "restored data disk differs from the backed-up one");
    ensure!(sha256(&to.join("disk.qcow2"))? == sha256(&lab.vm_dir.join("disk.qcow2"))?, "system disk differs");
    ensure!(calls(&tm).lines().any(|l| l.starts_with("restore ") && l.contains("/lab/")), "{}", calls(&tm));

    // A backup whose copy is damaged: the restored bundle fails its check and does not take `to`'s place.
    let copy = Path::new(&id).join("Macintosh HD - Data").join(lab.vm_dir.strip_prefix("/")?).join("disk.qcow2");
    std::fs::write(&copy, b"not a qcow2 image")?;
    let bad = lab.dir.path().join("restored-bad");
    let e = restore(&mut c, "lab", &id, &bad).await.err().context("a damaged copy was restored")?;
    ensure!(format!("{e:#}").contains("fails its check"), "{e:#}");
    ensure!(!bad.exists(), "a bundle that fails its check took the place of {}", bad.display());

    // A backup the destination does not have, and a target that is not a destination.
    let e = restore(&mut c, "lab", "/Volumes/elsewhere/2026-01-01-000000.backup", &lab.dir.path().join("x")).await;
    ensure!(format!("{:#}", e.as_ref().err().context("unknown backup restored")?).contains("no backup"), "{e:?}");
    let other = lab.dir.path().join("not-tm");
    std::fs::create_dir_all(&other)?;
    lab.restart(&spec("suspend", &other, &tmutil))?;
    let mut c = lab.client().await?;
    let e = backup(&mut c, "lab").await.err().context("a backup to a non-destination succeeded")?;
    let e = format!("{e:#}");
    ensure!(e.contains("is not the mount point of a Time Machine destination") && e.contains("TMBackup"), "{e}");
    Ok(())
}
/// A running VM in clone mode on btrfs: Time Machine backs up the clone (a copy made while the VM was paused), and a
/// restore takes the clone, not the live bundle the backup also holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_vm_in_clone_mode_restores_from_its_clone() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    let mut lab = Lab::new(fs.path())?;
    let tm = lab.dir.path().join("tm");
    let dest = lab.dir.path().join("TMBackup");
    let tmutil = standin(&tm, fs.path(), Some(&dest))?;
    lab.restart(&spec("clone", &dest, &tmutil))?;
    let mut c = lab.client().await?;
    let started = c.start(VmRef { name: "lab".into() }).await?.into_inner();
    ensure!(started.message.contains("running"), "{started:?}");
    let msg = backup(&mut c, "lab").await.context("backup")?;
    ensure!(msg.contains("clone mode") && !msg.contains("fell back"), "{msg}");
    ensure!(lab.state().await? == "running", "the vm is not running after its backup");
    let to = lab.dir.path().join("restored");
    restore(&mut c, "lab", "", &to).await.context("restore")?;
    let log = calls(&tm);
    let line = log.lines().find(|l| l.starts_with("restore ")).context("no restore call")?;
    ensure!(line.contains("/strata-clone-lab/"), "the restore did not read the clone: {line}");
    ensure!(sha256(&to.join("disk.qcow2"))? == sha256(&lab.vm_dir.join("disk.qcow2"))?, "system disk differs");
    Ok(())
}
