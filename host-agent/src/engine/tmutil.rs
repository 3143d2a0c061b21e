//! Time Machine on macOS through `tmutil`: the target must be a configured destination (`destinationinfo -X`, its
//! mount point); a backup makes sure the directory being backed up is not excluded (`isexcluded` /
//! `removeexclusion`), runs `startbackup --block --destination ID` and reads `latestbackup -d`; `listbackups -d`
//! lists; a restore finds the VM's bundle (or its clone) inside a backup and runs `tmutil restore` of its entries.
//! Knows the tmutil CLI and the layout of a backup (`BACKUP/VOLUME NAME/path`); must not know hypervisors.
//! NOT run against a real tmutil (no macOS here): the parsers are tested on outputs captured from Apple's manual and
//! real-world reports (cited in the tests), and the engine end to end through `tmutil-standin` (tests/tests/
//! host_timemachine.rs), a stand-in script named as one.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_core::borg::Retention;
use agent_core::repos::Location;
use agent_core::runner::{self, Cmd};

use super::{BackupInfo, Engine, EngineDef, EngineError, EngineFuture, Spec};
use crate::clone::CLONE_PREFIX;

/// A backup or a restore of a whole bundle: hours on a slow disk.
pub(super) const TMUTIL_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// A question (destinations, lists, exclusions): tmutil may mount a network destination first.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// The most entries a restored bundle may have at its top level (one `tmutil restore` argument each).
const MAX_BUNDLE_ENTRIES: usize = 4096;

/// `engine = "timemachine"`: this engine's row of `super::ENGINES`.
pub(super) const ENGINE: EngineDef = EngineDef {
    name: "timemachine",
    passcommand: false,
    keep_within: false,
    ssh: false,
    many: false,
    open: |spec| Arc::new(TimeMachine::new(spec)),
};

#[derive(Debug, Clone)]
pub(super) struct TimeMachine {
    /// How messages name the target.
    target: String,
    /// The `tmutil` program.
    program: PathBuf,
    /// The destination's mount point: the target's path.
    mount: PathBuf,
    vm: String,
    /// The VM's bundle: where it is found again inside a backup.
    bundle: PathBuf,
}

/// One Time Machine destination as `tmutil destinationinfo -X` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Destination {
    pub(super) id: String,
    pub(super) name: String,
    /// `Local` or `Network`.
    pub(super) kind: String,
    /// Where it is mounted, when it is.
    pub(super) mount_point: Option<PathBuf>,
}

impl TimeMachine {
    pub(super) fn new(spec: &Spec<'_>) -> Self {
        let mount = match &spec.target.location {
            Location::Local(p) => p.clone(),
            // The config refuses SSH targets for this engine; a path that matches no destination is refused at use.
            other => PathBuf::from(other.to_string()),
        };
        TimeMachine {
            target: spec.name(),
            program: spec.tmutil.to_path_buf(),
            mount,
            vm: spec.vm.to_string(),
            bundle: spec.bundle.to_path_buf(),
        }
    }

    fn failed(&self, message: String) -> EngineError {
        EngineError::Failed { target: self.target.clone(), message }
    }

    async fn tmutil(&self, args: &[&str], paths: &[&Path], timeout: Duration) -> Result<String, EngineError> {
        let mut c = Cmd::new(&self.program).args(args).timeout(timeout);
        for p in paths {
            c = c.arg(p);
        }
        let out = runner::run_ok(c).await.map_err(|source| EngineError::Run { target: self.target.clone(), source })?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The configured destination mounted at the target's path; refused naming what tmutil has instead.
    async fn destination(&self) -> Result<Destination, EngineError> {
        let out = self.tmutil(&["destinationinfo", "-X"], &[], QUERY_TIMEOUT).await?;
        let all = parse_destinations(&out).map_err(|m| self.failed(m))?;
        pick_destination(&all, &self.mount).map_err(|m| self.failed(m))
    }

    async fn backups(&self) -> Result<Vec<BackupInfo>, EngineError> {
        let out = self.tmutil(&["listbackups", "-d"], &[&self.mount], QUERY_TIMEOUT).await?;
        parse_listbackups(&out).map_err(|m| self.failed(m))
    }
}

/// `tmutil destinationinfo -X`: a plist dictionary whose `Destinations` array holds one dictionary per destination
/// (`ID`, `Name`, `Kind`, `MountPoint` when mounted; some tools saw `Mount Point`). No destination: an empty
/// dictionary.
pub(super) fn parse_destinations(xml: &str) -> Result<Vec<Destination>, String> {
    let v: plist::Value =
        plist::from_bytes(xml.as_bytes()).map_err(|e| format!("cannot parse `tmutil destinationinfo -X`: {e}"))?;
    let root = v.as_dictionary().ok_or("`tmutil destinationinfo -X` is not a dictionary")?;
    let Some(list) = root.get("Destinations") else { return Ok(Vec::new()) };
    let list = list.as_array().ok_or("`tmutil destinationinfo -X`: `Destinations` is not an array")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let d = d
            .as_dictionary()
            .ok_or_else(|| format!("`tmutil destinationinfo -X`: destination {i} is not a dictionary"))?;
        let s = |k: &str| d.get(k).and_then(plist::Value::as_string).map(str::to_string);
        let id = s("ID").ok_or_else(|| format!("`tmutil destinationinfo -X`: destination {i} has no ID"))?;
        out.push(Destination {
            name: s("Name").unwrap_or_default(),
            kind: s("Kind").unwrap_or_default(),
            mount_point: s("MountPoint").or_else(|| s("Mount Point")).map(PathBuf::from),
            id,
        });
    }
    Ok(out)
}

/// The destination mounted at `mount`, or why none is: nothing configured, or what is (so the operator sees the
/// name to use).
pub(super) fn pick_destination(all: &[Destination], mount: &Path) -> Result<Destination, String> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let want = canon(mount);
    if let Some(d) = all.iter().find(|d| d.mount_point.as_deref().is_some_and(|m| canon(m) == want)) {
        return Ok(d.clone());
    }
    if all.is_empty() {
        return Err("no Time Machine destination is configured (tmutil destinationinfo names none)".into());
    }
    let seen: Vec<String> = all
        .iter()
        .map(|d| match &d.mount_point {
            Some(m) => format!("`{}` ({}) at {}", d.name, d.kind, m.display()),
            None => format!("`{}` ({}, not mounted)", d.name, d.kind),
        })
        .collect();
    Err(format!(
        "{} is not the mount point of a Time Machine destination (tmutil names {})",
        mount.display(),
        seen.join(", ")
    ))
}

/// `tmutil isexcluded PATH` prints `[Excluded]    PATH` or `[Included]    PATH`.
pub(super) fn parse_isexcluded(out: &str) -> Option<bool> {
    let t = out.trim_start();
    if t.starts_with("[Excluded]") {
        Some(true)
    } else if t.starts_with("[Included]") {
        Some(false)
    } else {
        None
    }
}

/// Whether a line of tmutil's is one of the refusals it prints with exit status 0 (`latestbackup` does, and
/// `listbackups` on some versions): no destination, a destination it cannot mount, Full Disk Access missing.
fn refusal(line: &str) -> bool {
    ["No destinations configured", "Failed to mount", "Unable to", "requires Full Disk Access", "Error"]
        .iter()
        .any(|m| line.contains(m))
}

/// `tmutil listbackups -d MOUNT`: one completed backup per line, oldest first, named `…/YYYY-MM-DD-HHMMSS[.backup]`
/// (APFS: `/Volumes/.timemachine/UUID/DATE.backup/DATE.backup`; HFS+: `…/Backups.backupdb/HOST/DATE`). A backup
/// still being written (`.inProgress`) is not one. `No machine directory found for host.` is an empty list; any
/// other text is the error.
pub(super) fn parse_listbackups(out: &str) -> Result<Vec<BackupInfo>, String> {
    let mut v = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('/') {
            if line.ends_with(".inProgress") || line.ends_with(".interrupted") {
                continue;
            }
            v.push(BackupInfo { id: line.to_string(), time_unix: backup_time(line).unwrap_or(0), size: 0 });
        } else if line.starts_with("No machine directory found") {
            return Ok(Vec::new());
        } else if refusal(line) || v.is_empty() {
            return Err(format!("tmutil listbackups: {line}"));
        }
    }
    Ok(v)
}

/// `tmutil latestbackup -d MOUNT`: the path of the newest backup; its refusals come with exit status 0.
pub(super) fn parse_latest(out: &str) -> Result<BackupInfo, String> {
    let text = out.trim();
    match parse_listbackups(text)?.pop() {
        Some(b) if text.lines().count() == 1 => Ok(b),
        _ if text.is_empty() => Err("tmutil latestbackup named no backup".into()),
        _ => Err(format!("tmutil latestbackup: unexpected output {text:?}")),
    }
}

/// The (local, taken as UTC) time in a backup name `YYYY-MM-DD-HHMMSS`.
fn backup_time(path: &str) -> Option<i64> {
    let name = path.trim_end_matches('/').rsplit('/').next()?;
    let name = name.strip_suffix(".backup").unwrap_or(name);
    let compact: String = name.chars().filter(char::is_ascii_digit).collect();
    if compact.len() != 14 {
        return None;
    }
    super::parse_backup_id("t", &format!("t-{}T{}Z", &compact[..8], &compact[8..]))
}

/// Where `wanted` (an absolute path on this Mac) is inside `backup`, whose entries are one directory per backed-up
/// volume, named as the volume: a path on a volume mounted at `/Volumes/NAME` is `BACKUP/NAME/rest`; any other path
/// is on the startup disk's data volume, kept whole under the one volume directory that holds it
/// (`BACKUP/Macintosh HD - Data/Users/me/VMs/lab`). `Ok(None)`: not in this backup; `Err`: under several volumes
/// (which one is meant cannot be told).
pub(super) fn locate(backup: &Path, wanted: &Path) -> Result<Option<PathBuf>, String> {
    let parts: Vec<&std::ffi::OsStr> =
        wanted.components().filter_map(|c| if let Component::Normal(p) = c { Some(p) } else { None }).collect();
    let is_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if let [volumes, name, rest @ ..] = &parts[..] {
        if *volumes == "Volumes" {
            let p: PathBuf =
                std::iter::once(backup.as_os_str()).chain(std::iter::once(*name)).chain(rest.iter().copied()).collect();
            return Ok(is_dir(&p).then_some(p));
        }
    }
    let whole: PathBuf = parts.iter().collect();
    let found: Vec<PathBuf> = std::fs::read_dir(backup)
        .map_err(|e| format!("cannot read backup {}: {e}", backup.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join(&whole)))
        .filter(|p| is_dir(p))
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            Err(format!("{} is in the backup more than once: {}", wanted.display(), names.join(", ")))
        }
    }
}

impl TimeMachine {
    /// The copy of this VM inside `backup`: the clone a clone-mode run backed up (a consistent copy) before the
    /// bundle itself (which Time Machine may have copied while the VM ran).
    fn bundle_in(&self, backup: &Path) -> Result<PathBuf, EngineError> {
        let parent = self.bundle.parent().unwrap_or(Path::new("/"));
        let clone = parent.join(format!("{CLONE_PREFIX}{}", self.vm));
        for wanted in [&clone, &self.bundle] {
            if let Some(p) = locate(backup, wanted).map_err(|m| self.failed(m))? {
                return Ok(p);
            }
        }
        Err(self.failed(format!(
            "backup {} holds neither {} nor {}",
            backup.display(),
            clone.display(),
            self.bundle.display()
        )))
    }
}

impl Engine for TimeMachine {
    fn target(&self) -> &str {
        &self.target
    }

    fn create<'a>(&'a self, src: &'a Path, _id: &'a str) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            let dest = self.destination().await?;
            let out = self.tmutil(&["isexcluded"], &[src], QUERY_TIMEOUT).await?;
            match parse_isexcluded(&out) {
                Some(false) => {}
                Some(true) => {
                    self.tmutil(&["removeexclusion"], &[src], QUERY_TIMEOUT).await?;
                }
                None => return Err(self.failed(format!("cannot read `tmutil isexcluded` output: {}", out.trim()))),
            }
            self.tmutil(&["startbackup", "--block", "--destination", &dest.id], &[], TMUTIL_TIMEOUT).await?;
            let latest = self.tmutil(&["latestbackup", "-d"], &[&self.mount], QUERY_TIMEOUT).await?;
            let b = parse_latest(&latest).map_err(|m| self.failed(m))?;
            // The backup must hold what was asked for: a backup that skipped it (an exclusion tmutil kept) is no
            // backup of this VM.
            locate(Path::new(&b.id), src)
                .map_err(|m| self.failed(m))?
                .ok_or_else(|| self.failed(format!("Time Machine backup {} does not hold {}", b.id, src.display())))?;
            Ok(b)
        })
    }

    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>> {
        Box::pin(async move {
            self.destination().await?;
            self.backups().await
        })
    }

    fn prune<'a>(&'a self, _r: &'a Retention) -> EngineFuture<'a, ()> {
        // Time Machine thins its own backups; strata does not delete them.
        Box::pin(async { Ok(()) })
    }

    /// `tmutil restore` of each top-level entry of the VM's copy in backup `id` into `dest` (tmutil's destination
    /// follows cp: an existing directory receives the entries). `id` must be one of the destination's backups.
    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if !self.backups().await?.iter().any(|b| b.id == id) {
                return Err(EngineError::NoSuchBackup { target: self.target.clone(), id: id.to_string() });
            }
            let src = self.bundle_in(Path::new(id))?;
            let io = |path: &Path, source| EngineError::Io { target: self.target.clone(), path: path.into(), source };
            // Read one past the bound: a directory of millions of entries is refused without listing it all.
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&src)
                .map_err(|e| io(&src, e))?
                .take(MAX_BUNDLE_ENTRIES + 1)
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(|e| io(&src, e))?;
            if entries.is_empty() {
                return Err(self.failed(format!("{} is empty in the backup", src.display())));
            }
            if entries.len() > MAX_BUNDLE_ENTRIES {
                return Err(self.failed(format!(
                    "{} has more than the {MAX_BUNDLE_ENTRIES} entries a bundle restore takes",
                    src.display()
                )));
            }
            entries.sort();
            let mut paths: Vec<&Path> = entries.iter().map(PathBuf::as_path).collect();
            paths.push(dest);
            self.tmutil(&["restore"], &paths, TMUTIL_TIMEOUT).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tmutil destinationinfo -X` as captured on a Mac with one local destination, mounted and not, from the
    /// fixtures of BrianHenryIE/SwiftTimeMachine (Tests/SwiftTimeMachine/Resources/destinationinfo-xml1.txt and
    /// -xml2.txt); the plain `destinationinfo` of the same destination prints `Mount Point   : /Volumes/9168227426-F4`.
    const DESTINATIONS_MOUNTED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Destinations</key>
	<array>
		<dict>
			<key>Kind</key>
			<string>Local</string>
			<key>ID</key>
			<string>511D3A0B-8810-4704-B45B-E2A2FFC26DAE</string>
			<key>Name</key>
			<string>9168227426-F4</string>
			<key>LastDestination</key>
			<integer>1</integer>
			<key>MountPoint</key>
			<string>/Volumes/9168227426-F4</string>
		</dict>
	</array>
</dict>
</plist>"#;

    #[test]
    fn destinations_parse_and_the_target_must_be_one() {
        let d = parse_destinations(DESTINATIONS_MOUNTED).unwrap();
        assert_eq!(
            d,
            [Destination {
                id: "511D3A0B-8810-4704-B45B-E2A2FFC26DAE".into(),
                name: "9168227426-F4".into(),
                kind: "Local".into(),
                mount_point: Some("/Volumes/9168227426-F4".into()),
            }]
        );
        assert_eq!(pick_destination(&d, Path::new("/Volumes/9168227426-F4")).unwrap().id, d[0].id);
        let e = pick_destination(&d, Path::new("/Volumes/Other")).unwrap_err();
        assert_eq!(
            e,
            "/Volumes/Other is not the mount point of a Time Machine destination (tmutil names `9168227426-F4` \
             (Local) at /Volumes/9168227426-F4)"
        );
        // The same destination unmounted: no MountPoint key.
        let unmounted = DESTINATIONS_MOUNTED
            .replace("\t\t\t<key>MountPoint</key>\n\t\t\t<string>/Volumes/9168227426-F4</string>\n", "");
        let d = parse_destinations(&unmounted).unwrap();
        assert_eq!(d[0].mount_point, None);
        assert!(pick_destination(&d, Path::new("/Volumes/9168227426-F4")).unwrap_err().contains("not mounted"));
        // No destination: an empty dictionary (reported by a tool that captured it on macOS, 2026).
        let empty = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n<dict/>\n</plist>\n";
        assert_eq!(parse_destinations(empty).unwrap(), []);
        assert_eq!(
            pick_destination(&[], Path::new("/Volumes/TM")).unwrap_err(),
            "no Time Machine destination is configured (tmutil destinationinfo names none)"
        );
        assert!(parse_destinations("No destinations configured.").unwrap_err().starts_with("cannot parse"));
    }

    #[test]
    fn backup_lists_parse() {
        assert_eq!(parse_isexcluded("[Excluded]    /Volumes/VMs/strata-clone-x\n"), Some(true));
        assert_eq!(parse_isexcluded("[Included]    /Volumes/VMs/strata-clone-x\n"), Some(false));
        assert_eq!(parse_isexcluded("garbage"), None);
        // APFS destinations (macOS 11+): the shape quoted in a thinning script's comments on GitHub,
        // `/Volumes/.timemachine/xxxxxxxx-…/2022-02-22-113846.backup/2022-02-22-113846.backup`.
        let apfs = "/Volumes/.timemachine/43210DFB-AEEE-4BB1-856B-4FCFC4475480/2026-06-22-071617.backup/2026-06-22-071617.backup\n\
                    /Volumes/.timemachine/43210DFB-AEEE-4BB1-856B-4FCFC4475480/2026-06-23-071702.backup/2026-06-23-071702.backup\n\
                    /Volumes/.timemachine/43210DFB-AEEE-4BB1-856B-4FCFC4475480/2026-06-24-071530.backup/2026-06-24-071530.backup.inProgress\n";
        let v = parse_listbackups(apfs).unwrap();
        assert_eq!(v.len(), 2, "the backup in progress is not one");
        assert_eq!(v[1].time_unix, crate::engine::parse_backup_id("t", "t-20260623T071702Z").unwrap());
        // HFS+ destinations: the listing in real-world-systems.com's annotated tmutil manual.
        let hfs = "/Volumes/bakvol/Backups.backupdb/mymac/2011-08-25-210025\n";
        assert_eq!(parse_listbackups(hfs).unwrap()[0].time_unix, 1_314_306_025);
        assert_eq!(parse_listbackups("No machine directory found for host.\n").unwrap(), []);
        // latestbackup's refusals come with exit status 0 (same manual; and a monitoring script's notes).
        let refused = "Failed to mount backup destination, error: Error Domain=com.apple.backupd.ErrorDomain \
                       Code=18 \"Failed to mount destination.\"";
        assert!(parse_latest(refused).unwrap_err().contains("Failed to mount backup destination"));
        assert!(parse_latest("No destinations configured.\n").unwrap_err().contains("No destinations configured"));
        assert_eq!(parse_latest(hfs).unwrap().id, "/Volumes/bakvol/Backups.backupdb/mymac/2011-08-25-210025");
        assert!(parse_latest("").is_err());
    }

    #[test]
    fn the_bundle_is_found_under_its_volume() {
        let b = tempfile::tempdir().unwrap();
        let backup = b.path();
        let data = backup.join("Macintosh HD - Data/Users/me/VMs/lab");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(backup.join("VMs/strata-clone-lab")).unwrap();
        std::fs::create_dir_all(backup.join("VMs/lab")).unwrap();
        // On the data volume, the path is kept whole under the volume's name.
        assert_eq!(locate(backup, Path::new("/Users/me/VMs/lab")).unwrap(), Some(data.clone()));
        // On a volume mounted at /Volumes/VMs, under that volume's name.
        let clone = locate(backup, Path::new("/Volumes/VMs/strata-clone-lab")).unwrap();
        assert_eq!(clone, Some(backup.join("VMs/strata-clone-lab")));
        assert_eq!(locate(backup, Path::new("/Volumes/VMs/web")).unwrap(), None);
        assert_eq!(locate(backup, Path::new("/Volumes/Other/lab")).unwrap(), None);
        assert_eq!(locate(backup, Path::new("/Users/you/VMs/lab")).unwrap(), None);
        // Two volume directories holding the same whole path: which one is meant cannot be told.
        std::fs::create_dir_all(backup.join("Old Data/Users/me/VMs/lab")).unwrap();
        let e = locate(backup, Path::new("/Users/me/VMs/lab")).unwrap_err();
        assert!(e.starts_with("/Users/me/VMs/lab is in the backup more than once"), "{e}");
        std::fs::remove_dir_all(backup.join("Old Data")).unwrap();

        // A VM finds its clone first, then its bundle.
        let tm = |bundle: &str| TimeMachine {
            target: "`tm` (/Volumes/TM)".into(),
            program: "tmutil".into(),
            mount: "/Volumes/TM".into(),
            vm: "lab".into(),
            bundle: bundle.into(),
        };
        assert_eq!(tm("/Volumes/VMs/lab").bundle_in(backup).unwrap(), backup.join("VMs/strata-clone-lab"));
        assert_eq!(tm("/Users/me/VMs/lab").bundle_in(backup).unwrap(), data);
        let e = tm("/Volumes/Other/lab").bundle_in(backup).unwrap_err().to_string();
        assert!(e.ends_with("holds neither /Volumes/Other/strata-clone-lab nor /Volumes/Other/lab"), "{e}");
    }
}
