//! rsync: one dated copy per run under the target (`TARGET/ID/`), unchanged files hard-linked to the previous copy
//! with `--link-dest`, retention by removing old copies. A target is a local directory or an SSH location
//! (`user@host:path`, `ssh://user@host:port/path`) reached with `-e` = `agent_core::ssh::SshOptions::command`; a
//! remote target is driven with the rsync protocol alone (no remote shell: a forced `rrsync DIR` works, the url's
//! path written from DIR's root, `user@host:/vms/lab`): listed with
//! `--list-only`, a copy made complete by a `ID.done` marker sent after it, old copies deleted by an `--delete` of
//! an empty directory filtered to them. Knows the rsync CLI and its output; must not know hypervisors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_core::borg::Retention;
use agent_core::repos::Location;
use agent_core::runner::{self, Cmd, RunError};

use super::{keep, parse_backup_id, BackupInfo, Engine, EngineDef, EngineError, EngineFuture, Spec};

pub(super) const RSYNC_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// Listing and marking a remote target: only a hung link takes longer.
const RSYNC_SHORT_TIMEOUT: Duration = Duration::from_secs(300);

/// A local copy still being written: never listed, removed by the next run.
const PARTIAL: &str = ".partial";

/// A remote copy `ID/` counts only once `ID.done` exists next to it (sent after the copy).
const DONE: &str = ".done";

/// `engine = "rsync"`: this engine's row of `super::ENGINES`.
pub(super) const ENGINE: EngineDef = EngineDef {
    name: "rsync",
    passcommand: false,
    keep_within: false,
    ssh: true,
    many: true,
    open: |spec| Arc::new(Rsync::new(spec)),
};

/// Where the copies are.
#[derive(Debug, Clone)]
enum Dest {
    Local(PathBuf),
    Remote(Remote),
}

/// A remote target as rsync reaches it.
#[derive(Debug, Clone)]
struct Remote {
    /// `[user@]host:path` without a trailing slash.
    base: String,
    /// Its path part (absolute, or relative to the remote user's home).
    path: String,
    /// `host` or `host:port`, for messages.
    host: String,
    /// The `-e` program: the ssh command line (with `-p PORT` for an `ssh://` location with a port).
    rsh: String,
    /// `--rsync-path`: the rsync program on the remote.
    rsync_path: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct Rsync {
    vm: String,
    /// How messages name the target.
    target: String,
    dest: Dest,
    /// `--bwlimit`, in KiB/s.
    bwlimit_kib: Option<u64>,
}

impl Rsync {
    pub(super) fn new(spec: &Spec<'_>) -> Self {
        let t = spec.target;
        let dest = match (&t.location, &t.ssh) {
            (Location::Local(dir), _) => Dest::Local(dir.clone()),
            // Validated: an SSH location always has its key and known_hosts; without them ssh would not connect.
            (Location::Ssh { user, host, port, path, .. }, ssh) => {
                let mut rsh = ssh.as_ref().map_or_else(|| "ssh -o BatchMode=yes".to_string(), |s| s.command());
                if let Some(p) = port {
                    rsh.push_str(&format!(" -p {p}"));
                }
                let base = remote_base(user.as_deref(), host, path);
                let path = base.split_once(':').map_or(String::new(), |(_, p)| p.to_string());
                Dest::Remote(Remote {
                    base,
                    path,
                    host: port.map_or_else(|| host.clone(), |p| format!("{host}:{p}")),
                    rsh,
                    rsync_path: t.remote_path.clone(),
                })
            }
        };
        Rsync { vm: spec.vm.to_string(), target: spec.name(), dest, bwlimit_kib: t.upload_ratelimit_kib }
    }

    /// An rsync command with this target's `-e`, `--rsync-path` and `--bwlimit` (the latter when `upload`).
    fn cmd(&self, timeout: Duration, upload: bool) -> Cmd {
        let mut c = Cmd::new("rsync").timeout(timeout);
        if let Dest::Remote(r) = &self.dest {
            c = c.arg("-e").arg(&r.rsh);
            if let Some(p) = &r.rsync_path {
                c = c.arg(format!("--rsync-path={p}"));
            }
        }
        if let (Some(k), true) = (self.bwlimit_kib, upload) {
            c = c.arg(format!("--bwlimit={k}"));
        }
        c
    }

    /// A failed rsync run as an error naming the target: ssh's own failure (host key, refused key, unreachable)
    /// when its stderr tells one, a missing target directory, or the run's error.
    fn run_err(&self, e: RunError) -> EngineError {
        let target = self.target.clone();
        if let (RunError::Failed { stderr, .. }, Dest::Remote(r)) = (&e, &self.dest) {
            if let Some(failure) = agent_core::ssh::classify(stderr) {
                return EngineError::Ssh { target, host: r.host.clone(), failure };
            }
        }
        match &e {
            RunError::Failed { stderr, .. } if is_missing_dir(stderr) => EngineError::MissingTarget { target },
            _ => EngineError::Run { target, source: e },
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
        let (target, path) = (self.target.clone(), path.to_path_buf());
        move |source| EngineError::Io { target, path, source }
    }

    /// The complete copies, oldest first, and (remote) the names of the incomplete ones and of stray markers.
    async fn copies(&self) -> Result<(Vec<BackupInfo>, Vec<String>), EngineError> {
        match &self.dest {
            Dest::Local(dir) => {
                if !dir.is_dir() {
                    return Err(EngineError::MissingTarget { target: self.target.clone() });
                }
                let mut v = Vec::new();
                for e in std::fs::read_dir(dir).map_err(self.io(dir))? {
                    let e = e.map_err(self.io(dir))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(t) = parse_backup_id(&self.vm, &name).filter(|_| e.path().is_dir()) {
                        v.push(BackupInfo { id: name, time_unix: t, size: 0 });
                    }
                }
                v.sort_by_key(|b| b.time_unix);
                Ok((v, Vec::new()))
            }
            Dest::Remote(r) => {
                let cmd = self.cmd(RSYNC_SHORT_TIMEOUT, false).arg("--list-only").arg(format!("{}/", r.base));
                let out = runner::run_ok(cmd).await.map_err(|e| self.run_err(e))?;
                Ok(remote_copies(&self.vm, &parse_list_only(&String::from_utf8_lossy(&out.stdout))))
            }
        }
    }

    async fn create_local(&self, dir: &Path, src: &Path, id: &str) -> Result<u64, EngineError> {
        let previous = self.copies().await?.0.pop().map(|b| dir.join(b.id));
        let partial = dir.join(format!("{id}{PARTIAL}"));
        let final_dir = dir.join(id);
        if partial.exists() {
            tokio::fs::remove_dir_all(&partial).await.map_err(self.io(&partial))?;
        }
        let link = previous.map(|p| p.display().to_string());
        let cmd = self.cmd(RSYNC_TIMEOUT, true).args(copy_args(src, &partial.display().to_string(), link.as_deref()));
        if let Err(e) = runner::run_ok(cmd.cancellable()).await {
            let _ = tokio::fs::remove_dir_all(&partial).await;
            return Err(self.run_err(e));
        }
        tokio::fs::rename(&partial, &final_dir).await.map_err(self.io(&final_dir))?;
        Ok(dir_size(&final_dir))
    }

    async fn create_remote(&self, r: &Remote, src: &Path, id: &str) -> Result<u64, EngineError> {
        let link = self.copies().await?.0.pop().map(|b| link_dest(&r.path, &b.id));
        let dest = format!("{}/{id}", r.base);
        let cmd = self.cmd(RSYNC_TIMEOUT, true).arg("--stats").args(copy_args(src, &dest, link.as_deref()));
        let out = runner::run_ok(cmd.cancellable()).await.map_err(|e| self.run_err(e))?;
        let size = parse_total_size(&String::from_utf8_lossy(&out.stdout)).unwrap_or(0);
        // The marker: an empty directory (the source's top directory, nothing under it) sent after the copy.
        let marker = self.cmd(RSYNC_SHORT_TIMEOUT, false).args(["-d", "--exclude=*"]);
        let marker = marker.arg(format!("{}/", src.display())).arg(format!("{}/{id}{DONE}/", r.base));
        runner::run_ok(marker).await.map_err(|e| self.run_err(e))?;
        Ok(size)
    }

    /// Deletes `names` (top-level entries) on the remote: an `--delete` of an empty directory, filtered to them.
    async fn delete_remote(&self, r: &Remote, names: &[String]) -> Result<(), EngineError> {
        if names.is_empty() {
            return Ok(());
        }
        let empty =
            tempfile::Builder::new().prefix("strata-rsync-empty-").tempdir().map_err(self.io(Path::new("/tmp")))?;
        let cmd = self.cmd(RSYNC_TIMEOUT, false).args(delete_args(names));
        let cmd = cmd.arg(format!("{}/", empty.path().display())).arg(format!("{}/", r.base));
        runner::run_ok(cmd).await.map_err(|e| self.run_err(e))?;
        Ok(())
    }
}

/// `[user@]host:path` of an SSH location as rsync reads it. Borg's `ssh://host/./x` and `ssh://host/~/x` (relative
/// to the home directory) become `x` and `~/x`.
fn remote_base(user: Option<&str>, host: &str, path: &str) -> String {
    let path =
        path.strip_prefix("/./").or_else(|| path.strip_prefix('/').filter(|p| p.starts_with('~'))).unwrap_or(path);
    let path = path.trim_end_matches('/');
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    match user {
        Some(u) => format!("{u}@{host}:{path}"),
        None => format!("{host}:{path}"),
    }
}

/// `--link-dest` of a new copy on a remote whose copies are under `path`: `PATH/PREVIOUS` when `path` is absolute
/// (`rrsync` refuses `..`, and reads a leading `/` as its directory's root, as it reads the url's path), else
/// relative to the new copy, `../PREVIOUS`.
fn link_dest(path: &str, previous: &str) -> String {
    if path.starts_with('/') {
        format!("{path}/{previous}")
    } else {
        format!("../{previous}")
    }
}

/// rsync's error for a source or destination directory that is not there.
fn is_missing_dir(stderr: &str) -> bool {
    stderr.lines().any(|l| l.contains("change_dir") && l.contains("No such file or directory"))
}

/// The rsync argv (without the program) copying `src/` into the new (empty) directory `dest/`, hard-linking unchanged
/// files to `link_dest` (absolute, or relative to `dest`). No `--delete`: nothing is there to delete, and an
/// append-only remote (`rrsync -no-del`) refuses it.
pub(super) fn copy_args(src: &Path, dest: &str, link_dest: Option<&str>) -> Vec<String> {
    let mut a = vec!["-a".to_string(), "--sparse".into(), "--numeric-ids".into()];
    if let Some(l) = link_dest {
        a.push(format!("--link-dest={l}"));
    }
    a.push(format!("{}/", src.display()));
    a.push(format!("{dest}/"));
    a
}

/// The filter deleting exactly the top-level entries `names` (and what is under them) when an empty directory is
/// synced over the target with `--delete`; everything else is excluded, so kept.
fn delete_args(names: &[String]) -> Vec<String> {
    let mut a = vec!["-r".to_string(), "--delete".into()];
    a.extend(names.iter().map(|n| format!("--include=/{n}/***")));
    a.push("--exclude=*".into());
    a
}

/// One entry of `rsync --list-only DIR/`: whether it is a directory, and its name (`.` is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    pub dir: bool,
    pub name: String,
}

/// `rsync --list-only` lines: `PERMS SIZE DATE TIME NAME` (the name may hold spaces).
pub(super) fn parse_list_only(out: &str) -> Vec<Listed> {
    out.lines()
        .filter_map(|l| {
            let mut rest = l.trim_start();
            let mut fields = Vec::new();
            for _ in 0..4 {
                let end = rest.find(char::is_whitespace)?;
                fields.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            let name = rest.trim_end();
            (!name.is_empty() && name != ".").then(|| Listed { dir: fields[0].starts_with('d'), name: name.into() })
        })
        .collect()
}

/// The complete copies of `vm` in a remote listing (a directory `ID` with its `ID.done`), oldest first, and the
/// leftovers to delete: copies without their marker (a transfer that died), markers without their copy.
fn remote_copies(vm: &str, listed: &[Listed]) -> (Vec<BackupInfo>, Vec<String>) {
    let has = |name: &str| listed.iter().any(|l| l.name == name);
    let mut copies = Vec::new();
    let mut leftovers = Vec::new();
    for l in listed {
        if let Some(t) = parse_backup_id(vm, &l.name).filter(|_| l.dir) {
            if has(&format!("{}{DONE}", l.name)) {
                copies.push(BackupInfo { id: l.name.clone(), time_unix: t, size: 0 });
            } else {
                leftovers.push(l.name.clone());
            }
        } else if let Some(id) = l.name.strip_suffix(DONE).filter(|id| parse_backup_id(vm, id).is_some()) {
            if !listed.iter().any(|o| o.dir && o.name == id) {
                leftovers.push(l.name.clone());
            }
        }
    }
    copies.sort_by_key(|b| b.time_unix);
    (copies, leftovers)
}

/// `Total file size: 102,408 bytes` of `rsync --stats`: the bytes of the copy.
pub(super) fn parse_total_size(out: &str) -> Option<u64> {
    let line = out.lines().find_map(|l| l.trim().strip_prefix("Total file size:"))?;
    line.trim().trim_end_matches("bytes").trim().replace(',', "").parse().ok()
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

impl Engine for Rsync {
    fn target(&self) -> &str {
        &self.target
    }

    fn create<'a>(&'a self, src: &'a Path, id: &'a str) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            let size = match &self.dest {
                Dest::Local(dir) => self.create_local(dir, src, id).await?,
                Dest::Remote(r) => self.create_remote(r, src, id).await?,
            };
            Ok(BackupInfo { id: id.to_string(), time_unix: parse_backup_id(&self.vm, id).unwrap_or(0), size })
        })
    }

    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>> {
        Box::pin(async move { Ok(self.copies().await?.0) })
    }

    fn prune<'a>(&'a self, r: &'a Retention) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let (all, leftovers) = self.copies().await?;
            let kept = keep(&all, r);
            let old: Vec<&BackupInfo> = all.iter().filter(|b| !kept.contains(&b.id)).collect();
            match &self.dest {
                Dest::Local(dir) => {
                    for b in old {
                        let p = dir.join(&b.id);
                        tracing::info!(vm = %self.vm, copy = %p.display(), "retention: removing old copy");
                        tokio::fs::remove_dir_all(&p).await.map_err(self.io(&p))?;
                    }
                }
                Dest::Remote(remote) => {
                    let mut names = leftovers;
                    for b in old {
                        tracing::info!(vm = %self.vm, target = %self.target, copy = %b.id, "retention: removing old copy");
                        names.push(format!("{}{DONE}", b.id));
                        names.push(b.id.clone());
                    }
                    self.delete_remote(remote, &names).await?;
                }
            }
            Ok(())
        })
    }

    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if !self.copies().await?.0.iter().any(|b| b.id == id) {
                return Err(EngineError::NoSuchBackup { target: self.target.clone(), id: id.to_string() });
            }
            let from = match &self.dest {
                Dest::Local(dir) => dir.join(id).display().to_string(),
                Dest::Remote(r) => format!("{}/{id}", r.base),
            };
            let cmd = self.cmd(RSYNC_TIMEOUT, false).args(["-a", "--sparse", "--numeric-ids"]);
            let cmd = cmd.arg(format!("{from}/")).arg(format!("{}/", dest.display()));
            runner::run_ok(cmd.cancellable()).await.map_err(|e| self.run_err(e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_args_link_to_the_previous_copy() {
        let a = copy_args(Path::new("/c/lab"), "/t/lab-2.partial", Some("/t/lab-1"));
        assert_eq!(a.join(" "), "-a --sparse --numeric-ids --link-dest=/t/lab-1 /c/lab/ /t/lab-2.partial/");
        let a = copy_args(Path::new("/c/lab"), "u@h:lab/lab-2", Some("../lab-1"));
        assert_eq!(a.join(" "), "-a --sparse --numeric-ids --link-dest=../lab-1 /c/lab/ u@h:lab/lab-2/");
    }

    #[test]
    fn remote_locations_as_rsync_reads_them() {
        assert_eq!(remote_base(Some("backup"), "nas", "vms/lab"), "backup@nas:vms/lab");
        assert_eq!(remote_base(None, "nas", "/srv/vms/lab/"), "nas:/srv/vms/lab");
        assert_eq!(remote_base(Some("u"), "nas", "/./lab"), "u@nas:lab");
        assert_eq!(remote_base(Some("u"), "nas", "/~/lab"), "u@nas:~/lab");
        assert_eq!(remote_base(Some("u"), "2001:db8::1", "/x"), "u@[2001:db8::1]:/x");
        assert_eq!(link_dest("/srv/vms/lab", "lab-1"), "/srv/vms/lab/lab-1");
        assert_eq!(link_dest("vms/lab", "lab-1"), "../lab-1");
        let d = delete_args(&["lab-1".into(), "lab-1.done".into()]);
        assert_eq!(d.join(" "), "-r --delete --include=/lab-1/*** --include=/lab-1.done/*** --exclude=*");
    }

    /// Captured from rsync 3.5.0: `rsync --list-only DIR/` of a target with two complete copies of `lab`, one
    /// without its marker, a copy of the VM `lab-2` and a file of someone else's.
    #[test]
    fn listings_and_stats_parse() {
        let listed = parse_list_only(include_str!("testdata/rsync_list_only.txt"));
        assert_eq!(listed.len(), 6, "{listed:?}");
        assert_eq!(listed[0], Listed { dir: false, name: "notes for me.txt".into() });
        let (copies, leftovers) = remote_copies("lab", &listed);
        let ids: Vec<&str> = copies.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["lab-20260105T040000Z"]);
        assert_eq!(leftovers, ["lab-20260106T040000Z"]);
        let (copies, leftovers) = remote_copies("lab-2", &listed);
        assert_eq!((copies.len(), leftovers.len()), (1, 0));
        assert_eq!(parse_total_size(include_str!("testdata/rsync_stats.txt")), Some(102_408));
        assert_eq!(parse_total_size("nothing"), None);
        assert!(is_missing_dir(include_str!("testdata/rsync_missing_dir.txt")));
        assert!(!is_missing_dir("rsync: connection unexpectedly closed"));
        // A marker whose copy is gone is a leftover.
        let stray = [Listed { dir: true, name: "lab-20260105T040000Z.done".into() }];
        assert_eq!(remote_copies("lab", &stray).1, ["lab-20260105T040000Z.done"]);
    }
}
