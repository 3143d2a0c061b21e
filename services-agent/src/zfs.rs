//! The `zfs` CLI (zfs-fuse here, OpenZFS elsewhere): datasets, snapshots, clones, destroy and rollback, each run
//! through `agent_core::runner`, with output parsed by pure functions tested on captured zfs-fuse output.
//! Knows dataset and snapshot names and zfs's messages; must not know services, Borg, schedules or why a snapshot or
//! clone is made.
//!
//! zfs-fuse differences honoured here: `zfs list` has no `-p`; there is no `.zfs/snapshot` directory (read a snapshot
//! through [`clone`]); a destroy right after use can answer "dataset is busy" ([`destroy`] unmounts and retries).
//! The unmount before a retry is a plain `zfs unmount`, never `-f`: on zfs-fuse, `zfs unmount -f` of a mount with an
//! open file detaches it, leaves the dataset "busy" for good and wedges the daemon's FUSE side (new mounts and reads
//! hang until the daemon is restarted). A plain unmount fails harmlessly while the file is open; once it is closed,
//! the destroy succeeds within a second or two.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd, RunError};

/// Upper bound for one `zfs` command (a destroy or rollback of a large dataset can take a while).
pub(crate) const ZFS_TIMEOUT: Duration = Duration::from_secs(300);

/// How many times a "busy" destroy or rollback is tried in all.
const BUSY_ATTEMPTS: u32 = 12;
/// First wait after "busy"; doubled after each attempt up to [`MAX_BUSY_BACKOFF`] (≈ 40 s of waiting in all).
const FIRST_BUSY_BACKOFF: Duration = Duration::from_millis(60);
const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ZfsError {
    #[error("zfs is not installed: the `zfs` program was not found")]
    NotInstalled,
    #[error("zfs dataset {dataset} does not exist")]
    NoDataset { dataset: String },
    #[error("zfs snapshot {snapshot} does not exist")]
    NoSnapshot { snapshot: String },
    #[error("zfs dataset {name} is busy: {message}")]
    Busy { name: String, message: String },
    /// Any other failure, invalid names included; `what` is the command (`zfs snapshot -r tank/a@x`).
    #[error("`{what}` failed: {message}")]
    Failed { what: String, message: String },
    #[error("cannot parse the output of `{what}`: {output:?}")]
    Parse { what: String, output: String },
}

/// A snapshot of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub dataset: String,
    /// The part after `@`.
    pub name: String,
}

impl Snapshot {
    /// `dataset@name`.
    pub(crate) fn full(&self) -> String {
        format!("{}@{}", self.dataset, self.name)
    }
}

/// True when the dataset (or `dataset@snapshot`) exists.
pub(crate) async fn exists(dataset: &str) -> Result<bool, ZfsError> {
    let cmd = zfs().args(["list", "-H", "-o", "name", dataset]);
    check_name(&cmd, dataset, NameKind::Any)?;
    match exec(cmd, dataset).await {
        Ok(_) => Ok(true),
        Err(ZfsError::NoDataset { .. } | ZfsError::NoSnapshot { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The dataset and its descendant filesystems, parents before their children.
pub(crate) async fn filesystems(dataset: &str) -> Result<Vec<String>, ZfsError> {
    let cmd = zfs().args(["list", "-H", "-o", "name", "-t", "filesystem", "-r", dataset]);
    check_name(&cmd, dataset, NameKind::Dataset)?;
    let mut names = parse_names(&exec(cmd, dataset).await?);
    // zfs lists depth-first by name, which already puts parents first; a stable sort by depth guarantees it.
    names.sort_by_key(|n| n.matches('/').count());
    Ok(names)
}

/// Where the dataset is mounted; `None` when its mountpoint is `none`, `legacy` or `-`.
pub(crate) async fn mountpoint(dataset: &str) -> Result<Option<PathBuf>, ZfsError> {
    let cmd = zfs().args(["get", "-H", "-o", "value", "mountpoint", dataset]);
    check_name(&cmd, dataset, NameKind::Any)?;
    let what = cmd.display();
    let out = exec(cmd, dataset).await?;
    match parse_mountpoint(&out) {
        Some(path) => Ok(Some(path)),
        None if matches!(out.lines().next(), Some("none" | "legacy" | "-")) => Ok(None),
        None => Err(ZfsError::Parse { what, output: out }),
    }
}

/// `zfs snapshot -r DATASET@NAME`: one atomic snapshot of the dataset and all its descendants.
pub(crate) async fn snapshot_recursive(dataset: &str, name: &str) -> Result<(), ZfsError> {
    let full = format!("{dataset}@{name}");
    let cmd = zfs().args(["snapshot", "-r", &full]);
    check_name(&cmd, dataset, NameKind::Dataset)?;
    check_name(&cmd, &full, NameKind::Snapshot)?;
    exec(cmd, dataset).await.map(drop)
}

/// The snapshots of this dataset only (not of its descendants), oldest first (by creation transaction group, which
/// unlike `creation` also orders snapshots taken within the same second).
pub(crate) async fn snapshots(dataset: &str) -> Result<Vec<Snapshot>, ZfsError> {
    let cmd = zfs().args(["list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-d", "1", dataset]);
    check_name(&cmd, dataset, NameKind::Dataset)?;
    Ok(parse_snapshots(&exec(cmd, dataset).await?, dataset))
}

/// `zfs clone -o mountpoint=M SNAPSHOT TARGET`: a writable dataset showing the snapshot's content at `mountpoint`.
pub(crate) async fn clone(snapshot: &str, target: &str, mountpoint: &Path) -> Result<(), ZfsError> {
    let mut option = OsString::from("mountpoint=");
    option.push(mountpoint);
    let cmd = zfs().args(["clone", "-o"]).arg(option).args([snapshot, target]);
    check_name(&cmd, snapshot, NameKind::Snapshot)?;
    check_name(&cmd, target, NameKind::Dataset)?;
    if !mountpoint.is_absolute() {
        return Err(invalid(&cmd, &mountpoint.display().to_string(), "a mountpoint must be an absolute path"));
    }
    exec(cmd, snapshot).await.map(drop)
}

/// `zfs create -o mountpoint=M DATASET`: a new empty filesystem (scratch space for an extraction).
pub(crate) async fn create(dataset: &str, mountpoint: &Path) -> Result<(), ZfsError> {
    let mut option = OsString::from("mountpoint=");
    option.push(mountpoint);
    let cmd = zfs().args(["create", "-o"]).arg(option).arg(dataset);
    check_name(&cmd, dataset, NameKind::Dataset)?;
    if !mountpoint.is_absolute() {
        return Err(invalid(&cmd, &mountpoint.display().to_string(), "a mountpoint must be an absolute path"));
    }
    exec(cmd, dataset).await.map(drop)
}

/// Destroys a dataset or a snapshot (`recursive`: `-r`, its descendants, or for a snapshot the same snapshot of the
/// descendants). A name that does not exist is `Ok`. On "busy" the dataset is unmounted (plain `zfs unmount`, see the
/// module notes on `-f`) and the destroy retried with backoff.
pub(crate) async fn destroy(name: &str, recursive: bool) -> Result<(), ZfsError> {
    let make = || {
        let cmd = zfs().arg("destroy");
        let cmd = if recursive { cmd.arg("-r") } else { cmd };
        cmd.arg(name)
    };
    check_name(&make(), name, NameKind::Any)?;
    ignore_missing(retry_busy(make, name, true).await)
}

/// `zfs destroy -r DATASET@NAME`: the snapshot on the dataset and on its descendants. Missing is `Ok`.
pub(crate) async fn destroy_snapshot_recursive(snapshot_full: &str) -> Result<(), ZfsError> {
    let make = || zfs().args(["destroy", "-r", snapshot_full]);
    check_name(&make(), snapshot_full, NameKind::Snapshot)?;
    ignore_missing(retry_busy(make, snapshot_full, false).await)
}

/// `zfs rollback DATASET@NAME`: the dataset returns to its most recent snapshot. Never `-r`: when later snapshots
/// exist (another tool's, or the operator's) zfs refuses, and the error names them; nothing is destroyed. Its
/// descendants are not rolled back. Retried while "busy".
pub(crate) async fn rollback(snapshot_full: &str) -> Result<(), ZfsError> {
    let make = || zfs().args(["rollback", snapshot_full]);
    check_name(&make(), snapshot_full, NameKind::Snapshot)?;
    retry_busy(make, snapshot_full, false).await
}

/// The direct child filesystems of `parent` whose last component starts with `prefix`, sorted by name.
pub(crate) async fn children_with_prefix(parent: &str, prefix: &str) -> Result<Vec<String>, ZfsError> {
    let cmd = zfs().args(["list", "-H", "-o", "name", "-t", "filesystem", "-d", "1", parent]);
    check_name(&cmd, parent, NameKind::Dataset)?;
    let out = exec(cmd, parent).await?;
    Ok(children_in(&out, parent, prefix))
}

/// The pool a dataset or snapshot lives in (`tank` for `tank/a/b@s`).
pub(crate) fn pool_of(dataset: &str) -> &str {
    dataset.split(['/', '@']).next().unwrap_or_default()
}

/// The names `zfs list -H -o name` printed, one per line. Names may contain spaces: lines are not trimmed.
pub(crate) fn parse_names(out: &str) -> Vec<String> {
    out.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).map(String::from).collect()
}

/// The snapshots of exactly `dataset` in `zfs list -H -o name -t snapshot` output, in the order listed.
pub(crate) fn parse_snapshots(out: &str, dataset: &str) -> Vec<Snapshot> {
    parse_names(out)
        .iter()
        .filter_map(|line| line.split_once('@'))
        .filter(|(ds, name)| *ds == dataset && !name.is_empty() && !name.contains('@'))
        .map(|(ds, name)| Snapshot { dataset: ds.to_string(), name: name.to_string() })
        .collect()
}

/// The path in `zfs get -H -o value mountpoint` output; `None` for `none`, `legacy`, `-` or anything not absolute.
pub(crate) fn parse_mountpoint(out: &str) -> Option<PathBuf> {
    let value = out.lines().next()?.trim_end_matches('\r');
    value.starts_with('/').then(|| PathBuf::from(value))
}

fn children_in(out: &str, parent: &str, prefix: &str) -> Vec<String> {
    let mut children: Vec<String> = parse_names(out)
        .into_iter()
        .filter(|name| {
            name.strip_prefix(parent)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|last| !last.contains('/') && last.starts_with(prefix))
        })
        .collect();
    children.sort();
    children
}

fn zfs() -> Cmd {
    Cmd::new("zfs").env("LC_ALL", "C").timeout(ZFS_TIMEOUT)
}

/// Runs one zfs command; its stdout on success. `object` is what a failure is about when zfs's message names nothing.
async fn exec(cmd: Cmd, object: &str) -> Result<String, ZfsError> {
    let what = cmd.display();
    let out = match runner::run(cmd).await {
        Ok(out) => out,
        Err(RunError::NotFound { .. }) => return Err(ZfsError::NotInstalled),
        Err(RunError::Timeout { after, .. }) => {
            return Err(ZfsError::Failed { what, message: format!("timed out after {after:?} and was killed") })
        }
        Err(e) => return Err(ZfsError::Failed { what, message: e.to_string() }),
    };
    if !out.status.success() {
        return Err(classify(&what, object, out.status.code(), &out.stderr));
    }
    String::from_utf8(out.stdout)
        .map_err(|e| ZfsError::Parse { what, output: String::from_utf8_lossy(e.as_bytes()).into_owned() })
}

/// Turns a failed zfs command's stderr into an error.
fn classify(what: &str, object: &str, code: Option<i32>, stderr: &str) -> ZfsError {
    let message = stderr.trim();
    if code == Some(127) || message.contains("command not found") {
        return ZfsError::NotInstalled;
    }
    let line_with = |needle: &str| message.lines().find(|l| l.contains(needle));
    if let Some(line) = line_with("dataset does not exist") {
        let name = quoted(line).unwrap_or(object).to_string();
        return if name.contains('@') {
            ZfsError::NoSnapshot { snapshot: name }
        } else {
            ZfsError::NoDataset { dataset: name }
        };
    }
    if let Some(line) = line_with("parent does not exist") {
        // "cannot create 'tank/a/b': parent does not exist" is about tank/a.
        let name = quoted(line).unwrap_or(object);
        let parent = name.rsplit_once('/').map_or(name, |(parent, _)| parent);
        return ZfsError::NoDataset { dataset: parent.to_string() };
    }
    if let Some(line) = line_with("is busy").or_else(|| line_with("umount failed")) {
        // "umount: /mnt/x: target is busy." names a path, not a dataset.
        let name = quoted(line).filter(|n| !n.starts_with('/')).unwrap_or(object).to_string();
        return ZfsError::Busy { name, message: message.to_string() };
    }
    let message = match (message.is_empty(), code) {
        (false, _) => message.to_string(),
        (true, Some(code)) => format!("exit code {code} (no stderr)"),
        (true, None) => "terminated by a signal (no stderr)".to_string(),
    };
    ZfsError::Failed { what: what.to_string(), message }
}

/// The first `'…'` in a line of zfs's output.
fn quoted(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once('\'')?;
    let (name, _) = rest.split_once('\'')?;
    (!name.is_empty()).then_some(name)
}

/// Runs `make()` until it is not busy; `unmount` first unmounts the busy dataset (never for snapshots).
async fn retry_busy(make: impl Fn() -> Cmd, name: &str, unmount: bool) -> Result<(), ZfsError> {
    let mut backoff = FIRST_BUSY_BACKOFF;
    let mut attempt = 1;
    loop {
        match exec(make(), name).await {
            Ok(_) => return Ok(()),
            Err(ZfsError::Busy { name: busy, message }) if attempt < BUSY_ATTEMPTS => {
                tracing::info!(dataset = %busy, attempt, %message, "zfs dataset busy, retrying");
                if unmount {
                    unmount_quietly(name).await;
                    if busy != name {
                        unmount_quietly(&busy).await;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BUSY_BACKOFF);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `zfs unmount` (which also unmounts the descendants); failures do not matter, the retry will tell. Never `-f`.
async fn unmount_quietly(dataset: &str) {
    if dataset.contains('@') || name_problem(dataset, NameKind::Dataset).is_some() {
        return;
    }
    if let Err(e) = exec(zfs().args(["unmount", dataset]), dataset).await {
        tracing::debug!(dataset, error = %e, "zfs unmount before retrying failed");
    }
}

fn ignore_missing(result: Result<(), ZfsError>) -> Result<(), ZfsError> {
    match result {
        Err(ZfsError::NoDataset { .. } | ZfsError::NoSnapshot { .. }) => Ok(()),
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameKind {
    Dataset,
    Snapshot,
    Any,
}

fn check_name(cmd: &Cmd, name: &str, kind: NameKind) -> Result<(), ZfsError> {
    match name_problem(name, kind) {
        Some(reason) => Err(invalid(cmd, name, reason)),
        None => Ok(()),
    }
}

fn invalid(cmd: &Cmd, name: &str, reason: &str) -> ZfsError {
    ZfsError::Failed { what: cmd.display(), message: format!("invalid name {name:?}: {reason}") }
}

/// Why `name` cannot be handed to zfs as that kind of name (zfs itself checks the finer rules).
fn name_problem(name: &str, kind: NameKind) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.starts_with(['-', '/', '@']) {
        return Some("must start with a pool name");
    }
    if name.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    if name.split(['/', '@']).any(str::is_empty) {
        return Some("has an empty component");
    }
    let ats = name.matches('@').count();
    match kind {
        NameKind::Dataset if ats > 0 => Some("a dataset name cannot contain '@'"),
        NameKind::Snapshot if ats != 1 => Some("a snapshot name must be DATASET@NAME"),
        NameKind::Snapshot if name.split_once('@').is_some_and(|(_, snap)| snap.contains('/')) => {
            Some("a snapshot name cannot contain '/' after '@'")
        }
        NameKind::Any if ats > 1 => Some("more than one '@'"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from zfs-fuse 0.7 (Debian) on a throwaway pool `capz` (file vdev, mounted at /var/tmp/capmnt) with
    // datasets capz/app, capz/app/db (created first) and capz/app/cache, snapshots taken with
    // `zfs snapshot -r capz/app@s1`, `… -r capz/app@s2` and `zfs snapshot capz/app@a0`.

    /// `zfs list -H -o name -t filesystem -r capz/app`
    const LIST_FILESYSTEMS: &str = "capz/app\ncapz/app/cache\ncapz/app/db\n";
    /// `zfs list -H -o name -t snapshot -r capz/app` (descendants included)
    const LIST_SNAPSHOTS_RECURSIVE: &str =
        "capz/app@s1\ncapz/app@s2\ncapz/app@a0\ncapz/app/cache@s1\ncapz/app/cache@s2\ncapz/app/db@s1\ncapz/app/db@s2\n";
    /// `zfs list -H -o name -t snapshot -s createtxg -d 1 capz/app`
    const LIST_SNAPSHOTS_OWN: &str = "capz/app@s1\ncapz/app@s2\ncapz/app@a0\n";
    /// `zfs list -H -o name -t snapshot -s creation -r capz/app`: `creation` has one-second resolution.
    const LIST_SNAPSHOTS_BY_CREATION: &str =
        "capz/app@s1\ncapz/app/cache@s1\ncapz/app/db@s1\ncapz/app@s2\ncapz/app@a0\ncapz/app/cache@s2\ncapz/app/db@s2\n";
    /// `zfs list -H -o name -t filesystem -d 1 capz`, with clones and a dataset whose mountpoint has a space.
    const LIST_CHILDREN: &str =
        "capz\ncapz/app\ncapz/leg\ncapz/nomnt\ncapz/sp\ncapz/strata-clone-x\ncapz/strata-clone-y\n";
    /// `zfs get -H -o value mountpoint` for capz/app, capz/sp, a snapshot, `mountpoint=none`, `mountpoint=legacy`.
    const MOUNTPOINT: &str = "/var/tmp/capmnt/app\n";
    const MOUNTPOINT_SPACE: &str = "/var/tmp/capmnt/with space\n";
    const MOUNTPOINT_SNAPSHOT: &str = "-\n";
    const MOUNTPOINT_NONE: &str = "none\n";
    const MOUNTPOINT_LEGACY: &str = "legacy\n";

    // stderr of failures (exit code 1 unless noted).
    const NO_DATASET: &str = "cannot open 'capz/nope': dataset does not exist\n";
    const NO_DATASET_SNAPSHOT: &str = "cannot open 'capz/nope': dataset does not exist\nno snapshots were created\n";
    const NO_SNAPSHOT_CLONE: &str = "cannot open 'capz/app@nope': dataset does not exist\n";
    const NO_PARENT: &str = "cannot create 'capz/nope/child': parent does not exist\n";
    const NO_SNAPSHOT_DESTROY_R: &str =
        "cannot destroy 'capz/app@nope': dataset does not exist\nno snapshots destroyed\n";
    const BUSY: &str = "cannot destroy 'capz/strata-clone-app-1': dataset is busy\n";
    const BUSY_CHILD: &str = "cannot destroy 'capz/strata-clone-x/sub': dataset is busy\n";
    const BUSY_UMOUNT: &str = "umount: /var/tmp/capmnt-clone: target is busy.\n\
cannot unmount '/var/tmp/capmnt-clone': umount failed: umount child process failed\n";
    const ALREADY_EXISTS: &str =
        "cannot create snapshot 'capz/app@s1': dataset already exists\nno snapshots were created\n";
    const HAS_CLONES: &str = "cannot destroy 'capz/app@s1': snapshot has dependent clones\n\
use '-R' to destroy the following datasets:\ncapz/strata-clone-app-1\n";
    const NO_DAEMON: &str = "connect: Connection refused\nPlease make sure that the zfs-fuse daemon is running.\n\
internal error: failed to initialize ZFS library\n";

    fn snap(dataset: &str, name: &str) -> Snapshot {
        Snapshot { dataset: dataset.into(), name: name.into() }
    }

    #[test]
    fn names_and_pools() {
        assert_eq!(parse_names(LIST_FILESYSTEMS), ["capz/app", "capz/app/cache", "capz/app/db"]);
        assert_eq!(parse_names(""), Vec::<String>::new());
        assert_eq!(parse_names("a\r\n\n  \ncapz/app@bad name\n"), ["a", "capz/app@bad name"]);
        for (name, pool) in [("capz", "capz"), ("capz/app/db", "capz"), ("capz@s", "capz"), ("", ""), ("/x", "")] {
            assert_eq!(pool_of(name), pool, "{name}");
        }
        assert_eq!(snap("capz/app", "s1").full(), "capz/app@s1");
    }

    #[test]
    fn snapshots_of_one_dataset_only() {
        let own = vec![snap("capz/app", "s1"), snap("capz/app", "s2"), snap("capz/app", "a0")];
        assert_eq!(parse_snapshots(LIST_SNAPSHOTS_OWN, "capz/app"), own);
        assert_eq!(parse_snapshots(LIST_SNAPSHOTS_RECURSIVE, "capz/app"), own);
        assert_eq!(parse_snapshots(LIST_SNAPSHOTS_BY_CREATION, "capz/app"), own);
        assert_eq!(
            parse_snapshots(LIST_SNAPSHOTS_RECURSIVE, "capz/app/db"),
            [snap("capz/app/db", "s1"), snap("capz/app/db", "s2")]
        );
        assert!(parse_snapshots(LIST_SNAPSHOTS_RECURSIVE, "capz").is_empty());
        assert!(parse_snapshots("capz/app\ncapz/app@\ngarbage\n", "capz/app").is_empty());
    }

    #[test]
    fn mountpoints() {
        assert_eq!(parse_mountpoint(MOUNTPOINT), Some(PathBuf::from("/var/tmp/capmnt/app")));
        assert_eq!(parse_mountpoint(MOUNTPOINT_SPACE), Some(PathBuf::from("/var/tmp/capmnt/with space")));
        for out in [MOUNTPOINT_SNAPSHOT, MOUNTPOINT_NONE, MOUNTPOINT_LEGACY, "", "\n", "relative\n"] {
            assert_eq!(parse_mountpoint(out), None, "{out:?}");
        }
    }

    #[test]
    fn children_by_prefix() {
        assert_eq!(children_in(LIST_CHILDREN, "capz", "strata-clone-"), ["capz/strata-clone-x", "capz/strata-clone-y"]);
        assert_eq!(children_in(LIST_CHILDREN, "capz", "").len(), 6, "the parent itself is not its child");
        assert!(children_in(LIST_CHILDREN, "capz", "nothing").is_empty());
        // Grandchildren and look-alike siblings (`capz2/…`) are not children.
        assert_eq!(children_in("capz\ncapz/c-1/c-2\ncapz2/c-3\ncapz/c-4\n", "capz", "c-"), ["capz/c-4"]);
    }

    #[test]
    fn failures_are_classified() {
        let what = "zfs destroy capz/x";
        let c = |stderr: &str| classify(what, "capz/obj@s", Some(1), stderr);
        assert!(matches!(c(NO_DATASET), ZfsError::NoDataset { dataset } if dataset == "capz/nope"));
        assert!(matches!(c(NO_DATASET_SNAPSHOT), ZfsError::NoDataset { dataset } if dataset == "capz/nope"));
        assert!(matches!(c(NO_PARENT), ZfsError::NoDataset { dataset } if dataset == "capz/nope"));
        assert!(matches!(c(NO_SNAPSHOT_CLONE), ZfsError::NoSnapshot { snapshot } if snapshot == "capz/app@nope"));
        assert!(matches!(c(NO_SNAPSHOT_DESTROY_R), ZfsError::NoSnapshot { snapshot } if snapshot == "capz/app@nope"));
        assert!(matches!(c("dataset does not exist"), ZfsError::NoSnapshot { snapshot } if snapshot == "capz/obj@s"));
        assert!(matches!(c(BUSY), ZfsError::Busy { name, .. } if name == "capz/strata-clone-app-1"));
        assert!(matches!(c(BUSY_CHILD), ZfsError::Busy { name, .. } if name == "capz/strata-clone-x/sub"));
        match c(BUSY_UMOUNT) {
            ZfsError::Busy { name, message } => {
                assert_eq!(name, "capz/obj@s");
                assert!(message.starts_with("umount: /var/tmp/capmnt-clone: target is busy."), "{message}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        for stderr in [ALREADY_EXISTS, HAS_CLONES, NO_DAEMON] {
            match c(stderr) {
                ZfsError::Failed { what: w, message } => {
                    assert_eq!(w, what);
                    assert_eq!(message, stderr.trim());
                }
                other => panic!("expected Failed for {stderr:?}, got {other:?}"),
            }
        }
        assert!(matches!(c("sh: 1: zfs: command not found"), ZfsError::NotInstalled));
        assert!(matches!(classify(what, "x", Some(127), ""), ZfsError::NotInstalled));
        let empty = classify(what, "x", Some(2), "").to_string();
        assert_eq!(empty, "`zfs destroy capz/x` failed: exit code 2 (no stderr)");
        assert_eq!(c(NO_DATASET).to_string(), "zfs dataset capz/nope does not exist");
        assert_eq!(c(NO_SNAPSHOT_CLONE).to_string(), "zfs snapshot capz/app@nope does not exist");
    }

    #[test]
    fn bad_names_are_refused_before_running_zfs() {
        use NameKind::*;
        let cases = [
            ("capz/app", Dataset, true),
            ("capz", Dataset, true),
            ("capz/app@bad name", Snapshot, true),
            ("capz/app@s", Any, true),
            ("capz/app", Any, true),
            ("", Any, false),
            ("-r", Dataset, false),
            ("/capz", Dataset, false),
            ("@s", Snapshot, false),
            ("capz//app", Dataset, false),
            ("capz/app/", Dataset, false),
            ("capz/app\n", Dataset, false),
            ("capz/app@s", Dataset, false),
            ("capz/app", Snapshot, false),
            ("capz/app@", Snapshot, false),
            ("capz/app@a@b", Snapshot, false),
            ("capz/app@a/b", Snapshot, false),
            ("capz/app@a@b", Any, false),
        ];
        for (name, kind, ok) in cases {
            assert_eq!(name_problem(name, kind).is_none(), ok, "{name:?} as {kind:?}");
        }
    }

    #[tokio::test]
    async fn invalid_input_is_an_error_naming_it() {
        let err = snapshot_recursive("capz/app", "a/b").await.unwrap_err();
        assert!(
            matches!(&err, ZfsError::Failed { what, message } if what == "zfs snapshot -r capz/app@a/b"
                && message.contains("\"capz/app@a/b\"")),
            "{err:?}"
        );
        let err = clone("capz/app@s", "capz/c", Path::new("relative")).await.unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        assert!(destroy("-rf", true).await.is_err());
    }

    /// Drives the real zfs-fuse: needs root and the `zfs-fuse` package; never skips.
    #[tokio::test]
    async fn real_zfs_fuse_round_trip() {
        real::ensure_daemon().await;
        let pool = real::Pool::create().await;
        let p = pool.name.clone();
        let app = format!("{p}/app");
        let db = format!("{p}/app/db");
        real::zfs_ok(&["create", &app]).await;
        real::zfs_ok(&["create", &db]).await;

        let app_mnt = mountpoint(&app).await.unwrap().expect("app is mounted");
        assert_eq!(app_mnt, pool.dir().join("mnt/app"));
        std::fs::write(app_mnt.join("f.txt"), "one\n").unwrap();
        std::fs::write(app_mnt.join("db/d.txt"), "db one\n").unwrap();

        assert!(exists(&app).await.unwrap());
        assert!(!exists(&format!("{p}/nope")).await.unwrap());
        assert_eq!(filesystems(&app).await.unwrap(), [app.clone(), db.clone()]);
        let err = filesystems(&format!("{p}/nope")).await.unwrap_err();
        assert!(matches!(&err, ZfsError::NoDataset { dataset } if *dataset == format!("{p}/nope")), "{err:?}");

        snapshot_recursive(&app, "s1").await.unwrap();
        assert!(exists(&format!("{app}@s1")).await.unwrap());
        std::fs::write(app_mnt.join("f.txt"), "two\n").unwrap();
        snapshot_recursive(&app, "s2").await.unwrap();
        assert_eq!(snapshots(&app).await.unwrap(), [snap(&app, "s1"), snap(&app, "s2")]);
        assert_eq!(snapshots(&db).await.unwrap(), [snap(&db, "s1"), snap(&db, "s2")]);
        let err = snapshot_recursive(&app, "s1").await.unwrap_err();
        assert!(matches!(&err, ZfsError::Failed { message, .. } if message.contains("already exists")), "{err:?}");
        let err = snapshot_recursive(&format!("{p}/nope"), "s1").await.unwrap_err();
        assert!(matches!(err, ZfsError::NoDataset { .. }), "{err:?}");

        // Read a snapshot through a clone (zfs-fuse has no .zfs/snapshot).
        let clone_name = format!("{p}/strata-clone-app-1");
        let clone_mnt = pool.dir().join("clone");
        clone(&format!("{app}@s1"), &clone_name, &clone_mnt).await.unwrap();
        assert_eq!(mountpoint(&clone_name).await.unwrap(), Some(clone_mnt.clone()));
        assert_eq!(std::fs::read_to_string(clone_mnt.join("f.txt")).unwrap(), "one\n");
        let err = clone(&format!("{app}@nope"), &format!("{p}/strata-clone-app-2"), &clone_mnt).await.unwrap_err();
        assert!(matches!(&err, ZfsError::NoSnapshot { snapshot } if *snapshot == format!("{app}@nope")), "{err:?}");
        assert_eq!(mountpoint(&format!("{app}@s1")).await.unwrap(), None);

        let scratch_mnt = pool.dir().join("scratch");
        create(&format!("{p}/other"), &scratch_mnt).await.unwrap();
        assert_eq!(mountpoint(&format!("{p}/other")).await.unwrap(), Some(scratch_mnt.clone()));
        std::fs::write(scratch_mnt.join("x"), "x").unwrap();
        let err = create(&format!("{p}/nope/child"), &pool.dir().join("nope")).await.unwrap_err();
        assert!(matches!(&err, ZfsError::NoDataset { dataset } if *dataset == format!("{p}/nope")), "{err:?}");
        assert_eq!(children_with_prefix(&p, "strata-clone-").await.unwrap(), [clone_name.as_str()]);
        assert_eq!(children_with_prefix(&app, "").await.unwrap(), [db.as_str()]);

        // A destroy while a file of the clone is open waits for it to be closed (plain unmount + retry).
        let holder = std::fs::File::open(clone_mnt.join("f.txt")).unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            drop(holder);
        });
        destroy(&clone_name, false).await.unwrap();
        release.await.unwrap();
        assert!(!exists(&clone_name).await.unwrap());
        destroy(&clone_name, false).await.unwrap();
        destroy(&format!("{app}@nope"), false).await.unwrap();
        assert!(children_with_prefix(&p, "strata-clone-").await.unwrap().is_empty());

        // A rollback past a later snapshot is refused, naming it, and destroys nothing.
        std::fs::write(app_mnt.join("f.txt"), "three\n").unwrap();
        let err = rollback(&format!("{app}@s1")).await.unwrap_err();
        assert!(err.to_string().contains(&format!("{app}@s2")), "{err}");
        assert_eq!(snapshots(&app).await.unwrap(), [snap(&app, "s1"), snap(&app, "s2")]);
        assert_eq!(std::fs::read_to_string(app_mnt.join("f.txt")).unwrap(), "three\n");
        rollback(&format!("{app}@s2")).await.unwrap();
        assert_eq!(std::fs::read_to_string(app_mnt.join("f.txt")).unwrap(), "two\n");
        destroy(&format!("{app}@s2"), false).await.unwrap();
        rollback(&format!("{app}@s1")).await.unwrap();
        assert_eq!(std::fs::read_to_string(app_mnt.join("f.txt")).unwrap(), "one\n");
        assert_eq!(snapshots(&app).await.unwrap(), [snap(&app, "s1")]);
        assert_eq!(snapshots(&db).await.unwrap(), [snap(&db, "s1"), snap(&db, "s2")], "rollback is not recursive");
        let err = rollback(&format!("{app}@nope")).await.unwrap_err();
        assert!(matches!(err, ZfsError::NoSnapshot { .. }), "{err:?}");

        destroy_snapshot_recursive(&format!("{app}@s1")).await.unwrap();
        assert!(snapshots(&app).await.unwrap().is_empty());
        assert_eq!(snapshots(&db).await.unwrap(), [snap(&db, "s2")]);
        destroy_snapshot_recursive(&format!("{app}@s1")).await.unwrap();

        destroy(&app, true).await.unwrap();
        assert!(!exists(&app).await.unwrap());
        assert!(!exists(&db).await.unwrap());
    }

    /// A minimal copy of tests/src/fixtures/zfs.rs: the daemon and a throwaway pool, both through the runner.
    mod real {
        use std::path::Path;
        use std::time::{Duration, Instant};

        use agent_core::runner::{self, Cmd, RunError};

        const PID_FILE: &str = "/var/run/zfs-fuse.pid";
        const START_TIMEOUT: Duration = Duration::from_secs(20);

        async fn zpool_list() -> Result<runner::Output, RunError> {
            runner::run(Cmd::new("zpool").arg("list").timeout(Duration::from_secs(10))).await
        }

        pub(super) async fn zfs_ok(args: &[&str]) {
            if let Err(e) = runner::run_ok(Cmd::new("zfs").args(args)).await {
                panic!("{e}");
            }
        }

        /// Makes sure `zpool list` answers, starting `zfs-fuse` when no such process exists; fails (never skips).
        pub(super) async fn ensure_daemon() {
            let first = match zpool_list().await {
                Ok(out) if out.status.success() => return,
                Ok(out) => out.stderr,
                Err(e) => panic!("zfs-fuse is not installed ({e}); run `cargo xtask deps`"),
            };
            assert!(
                first.contains("daemon") || first.contains("connect"),
                "`zpool list` failed for a reason other than a missing daemon: {}",
                first.trim()
            );
            let uid = std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().next().unwrap_or("").to_string()));
            assert_eq!(uid.as_deref(), Some("0"), "the zfs-fuse daemon is not running and only root can start it");
            if !daemon_alive() {
                // zfs-fuse refuses to start (exit 1, no message) while a stale pid file exists.
                let _ = std::fs::remove_file(PID_FILE);
                // It daemonises (setsid, stdio on /dev/null), so the runner sees the launcher exit at once.
                if let Err(e) = runner::run_ok(Cmd::new("zfs-fuse").args(["--pidfile", PID_FILE])).await {
                    panic!("the zfs-fuse daemon is not running and cannot be started: {e}");
                }
            }
            let started = Instant::now();
            while started.elapsed() < START_TIMEOUT {
                if zpool_list().await.is_ok_and(|o| o.status.success()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("the zfs-fuse daemon is not running: `zpool list` did not answer within {START_TIMEOUT:?}");
        }

        /// True when a live (non-zombie) `zfs-fuse` process exists.
        fn daemon_alive() -> bool {
            let Ok(entries) = std::fs::read_dir("/proc") else { return false };
            entries.flatten().any(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                stat.split_once(" (zfs-fuse) ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        }

        /// A pool on a sparse file vdev in a tempdir under /var/tmp, mounted at `DIR/mnt`; destroyed on Drop.
        pub(super) struct Pool {
            pub(super) name: String,
            dir: Option<tempfile::TempDir>,
        }

        impl Pool {
            pub(super) async fn create() -> Pool {
                let dir = tempfile::Builder::new().prefix("strata-sa-zfs-").tempdir_in("/var/tmp").unwrap();
                let vdev = dir.path().join("vdev.img");
                std::fs::File::create(&vdev).unwrap().set_len(128 * 1024 * 1024).unwrap();
                let name = format!("strata_sa{}", std::process::id());
                let pool = Pool { name, dir: Some(dir) };
                let create = Cmd::new("zpool").arg("create").arg("-m").arg(pool.dir().join("mnt")).arg(&pool.name);
                if let Err(e) = runner::run_ok(create.arg(&vdev)).await {
                    panic!("{e}");
                }
                pool
            }

            pub(super) fn dir(&self) -> &Path {
                self.dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path())
            }
        }

        impl Drop for Pool {
            fn drop(&mut self) {
                let mut last = String::new();
                for attempt in 0..10u32 {
                    match runner::run_blocking(Cmd::new("zpool").args(["destroy", "-f", &self.name])) {
                        Ok(out) if out.status.success() || out.stderr.contains("no such pool") => return,
                        Ok(out) => last = out.stderr.trim().to_string(),
                        Err(e) => last = e.to_string(),
                    }
                    // Not `-f`: it wedges zfs-fuse when a file is still open (see the module notes).
                    let _ = runner::run_blocking(Cmd::new("zfs").args(["unmount", &self.name]));
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt + 1)));
                }
                // Keep the vdev: removing it under a live pool would leave zfs-fuse with a broken pool.
                if let Some(dir) = self.dir.take() {
                    eprintln!("leaking zfs pool {} ({}): {last}", self.name, dir.keep().display());
                }
            }
        }
    }
}
