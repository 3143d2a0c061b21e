//! Borg 1.2 through its CLI: the one module that knows borg's commands, flags, environment, JSON, messages and exit
//! codes (init, create, list, prune, compact, extract, check, break-lock, the lock roster, byte progress). Every call goes through
//! [`crate::runner`]; the passphrase reaches borg only as `BORG_PASSCOMMAND` in a secret environment variable.
//! Must not know what is backed up (VMs, stacks, volumes), when backups run, or where a passphrase is kept beyond
//! the command that prints it. Owns the one archive-naming scheme both agents use (`NAME-YYYYMMDDTHHMMSSZ`:
//! `archive.rs`); `parse.rs` reads borg's output, `stderr.rs` what it says while it runs, `files.rs` an archive's file list and the paths named in it, `retention.rs` turns a retention into `borg prune` arguments.
//!
//! Every command runs with `TZ=UTC` (borg prints archive times without a zone, in local time), without prompts
//! (stdin is `/dev/null`, and `BORG_RELOCATED_REPO_ACCESS_IS_OK=no` / `BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no`
//! answer the questions borg would ask), and with `--lock-wait 60` where borg takes a lock.
//!
//! Error messages name the repository and never contain the passphrase or the passcommand: the runner redacts the
//! passcommand wherever it appears verbatim, and borg's own report of a failing passcommand (which quotes it word
//! by word, next to whatever the command printed) is replaced by [`BorgError::PasscommandFailed`].
//! A `BORG_PASSPHRASE` in the agent's own environment would take precedence over the passcommand (borg reads it
//! first): agents must not be started with one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runner::{self, Cmd, Output, RunError};

mod archive;
mod files;
mod parse;
mod retention;
mod stderr;

pub use archive::{archive_glob, archive_stamp, borg_timestamp, is_stamp};
pub use files::{archive_path, parse_file_lines, prefix_pattern, FileEntry};
pub use parse::{
    parse_config_id, parse_create, parse_list, parse_log_line, parse_pruned, parse_repository_id, parse_roster, LogLine,
};
pub use retention::{keep_within_arg, prune_args, Retention};
pub use stderr::FilesRead;

/// A backup of a large disk can take long; the timeout only catches a hung borg.
pub const BORG_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// Seconds borg waits for another borg's lock before giving up (`--lock-wait`; borg's default is 1).
const LOCK_WAIT: &str = "60";

/// What `borg create --json` reports about the archive it made.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateStats {
    pub archive: String,
    pub original_size: u64,
    pub compressed_size: u64,
    /// Bytes this archive added to the repository.
    pub deduplicated_size: u64,
    pub nfiles: u64,
    pub duration_seconds: f64,
    /// The id of the repository the archive went to.
    pub repository_id: String,
    /// The files borg read, when asked ([`Repo::report_read_files`]); the others were unchanged.
    pub files_read: Option<FilesRead>,
}

/// One archive as `borg list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub name: String,
    /// The archive's time (its start, or the `--timestamp` it was created with), Unix seconds.
    pub time_unix: i64,
}

/// What `borg check` verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// Segments and index (`--repository-only`): cheap, needs no key.
    Repository,
    /// Archive metadata (`--archives-only`): needs the key.
    Archives,
    /// Everything, decrypting and verifying every chunk (`--verify-data`): reads the whole repository.
    VerifyData,
}

impl CheckKind {
    fn flag(self) -> &'static str {
        match self {
            CheckKind::Repository => "--repository-only",
            CheckKind::Archives => "--archives-only",
            CheckKind::VerifyData => "--verify-data",
        }
    }
}

/// A process holding a lock on a local repository, from `REPO/lock.roster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Borg's host id: `HOSTNAME@NODE` (the node is borg's number for the machine).
    pub host: String,
    pub pid: u32,
    pub exclusive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BorgError {
    #[error("borg is not installed (no `borg` on PATH)")]
    NotInstalled,
    #[error("borg repository {repo} does not exist")]
    NoRepo { repo: String },
    #[error("wrong passphrase for borg repository {repo}")]
    WrongPassphrase { repo: String },
    #[error("no passphrase for borg repository {repo}: no passphrase command or file is configured")]
    NoPassphrase { repo: String },
    #[error("borg repository {repo}: the passphrase command failed (its arguments and output are not shown)")]
    PasscommandFailed { repo: String },
    #[error("borg repository {repo} is locked: {detail}")]
    Locked { repo: String, detail: String },
    #[error("borg repository {repo} has no archive `{archive}`")]
    NoSuchArchive { repo: String, archive: String },
    #[error("borg repository {repo} already has an archive `{archive}`")]
    ArchiveExists { repo: String, archive: String },
    #[error("borg repository {repo}: {message}")]
    Failed { repo: String, message: String },
    /// ssh could not reach the remote, or refused its host key.
    #[error("borg repository {repo}: ssh to {host}: {failure}")]
    Ssh { repo: String, host: String, failure: crate::ssh::SshFailure },
    /// The job this borg ran for was cancelled: borg was killed (or not started).
    #[error("borg repository {repo}: cancelled: {message}")]
    Cancelled { repo: String, message: String },
    #[error("borg repository {repo}: cannot parse {what}: {message}")]
    Parse { repo: String, what: String, message: String },
}

/// What a `create` of `paths` (relative to `cwd`) reads, as borg's original size counts it: the lengths of the
/// regular files below them (symbolic links not followed). The total of a create's byte progress.
/// Walked with a stack of its own, not recursion: the tree is the backed-up data, as deep as whoever wrote it made it.
pub fn source_bytes(cwd: &Path, paths: &[&str]) -> u64 {
    let mut todo: Vec<PathBuf> = paths.iter().map(|p| cwd.join(p)).collect();
    let mut total = 0u64;
    while let Some(p) = todo.pop() {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => total = total.saturating_add(m.len()),
            Ok(m) if m.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    todo.extend(rd.filter_map(Result::ok).map(|e| e.path()));
                }
            }
            _ => {}
        }
    }
    total
}

/// The [`ProgressSink`] of a job's step that moves bytes: reports go to `rep` under `step` (`estimate` is the total
/// when borg gives none: [`source_bytes`] for a create). `None` when the job's updates go nowhere (a scheduled run):
/// borg then runs without `--progress`.
pub fn job_progress(
    rep: &crate::jobs::Reporter,
    step: &str,
    estimate: u64,
    message: impl Into<String>,
) -> Option<ProgressSink> {
    let report = rep.bytes(step, estimate, message)?;
    Some(std::sync::Arc::new(move |t: Transferred| report(t.done, t.total)))
}

/// A borg repository and how to open it: location, passphrase command and extra environment.
#[derive(Clone)]
pub struct Repo {
    location: String,
    passcommand: Option<String>,
    env: Vec<(String, String)>,
    /// `--remote-path`: the borg program on an SSH remote.
    remote_path: Option<String>,
    /// `--upload-ratelimit` of `create`, KiB/s.
    upload_ratelimit_kib: Option<u64>,
    /// How ssh reaches a remote repository (`BORG_RSH`, with `-E` to a log of its own per command).
    ssh: Option<crate::ssh::SshOptions>,
    /// Where `create` and `extract` report the bytes they moved (`--progress --log-json`), if anywhere.
    progress: Option<ProgressSink>,
    /// `create` compares files by mtime and size only ([`Repo::files_by_mtime`]).
    files_by_mtime: bool,
    /// `create` lists the files it reads ([`Repo::report_read_files`]).
    report_read: bool,
}

/// Bytes a `create` or `extract` has moved so far: `total` is known for an extract (borg sums the archive first),
/// not for a create (the caller knows what it hands borg).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub done: u64,
    pub total: Option<u64>,
}

/// Receives [`Transferred`] reports as borg prints them (about five a second); called on the task reading borg's
/// stderr, so it must not block.
pub type ProgressSink = std::sync::Arc<dyn Fn(Transferred) + Send + Sync>;

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.location)
            .field("passcommand", &self.passcommand.as_ref().map(|_| runner::MASK))
            .field("env", &self.env)
            .field("remote_path", &self.remote_path)
            .field("upload_ratelimit_kib", &self.upload_ratelimit_kib)
            .field("ssh", &self.ssh)
            .field("progress", &self.progress.is_some())
            .field("files_by_mtime", &self.files_by_mtime)
            .field("report_read", &self.report_read)
            .finish()
    }
}

impl Repo {
    /// A repository at a local path (made absolute, since commands run in other directories) or a remote
    /// location (`ssh://user@host:port/path`, `user@host:path`).
    pub fn new(location: impl Into<String>) -> Repo {
        let mut location = location.into();
        if is_local(&location) && !location.starts_with("file://") && Path::new(&location).is_relative() {
            if let Ok(abs) = std::path::absolute(&location) {
                location = abs.to_string_lossy().into_owned();
            }
        }
        Repo {
            location,
            passcommand: None,
            env: Vec::new(),
            remote_path: None,
            upload_ratelimit_kib: None,
            ssh: None,
            progress: None,
            files_by_mtime: false,
            report_read: false,
        }
    }

    /// `create` knows a file unchanged by its mtime and size alone (`--files-cache=mtime,size`; borg's default also
    /// compares inode and ctime): for a source made afresh at the same path for every backup with its files' mtimes
    /// kept (a copy-on-write clone: new inodes, new ctimes), so that borg does not read its unchanged files again.
    /// Borg keys its files cache on the absolute path (the directory it runs in joined with the path given).
    pub fn files_by_mtime(mut self) -> Repo {
        self.files_by_mtime = true;
        self
    }

    /// `create` lists the files borg reads (`--list --filter=AME`: added, modified, errored) into
    /// [`CreateStats::files_read`]; the unchanged ones it does not read.
    pub fn report_read_files(mut self) -> Repo {
        self.report_read = true;
        self
    }

    /// `create` and `extract` report the bytes they move to `sink` (borg runs with `--progress --log-json`; its
    /// warnings and errors are read from the log messages' text, as without).
    pub fn progress(mut self, sink: ProgressSink) -> Repo {
        self.progress = Some(sink);
        self
    }

    /// Reaches the (remote) repository with this ssh command line (`BORG_RSH`). Each command gets its own ssh log
    /// (`-E FILE`): borg passes ssh's own messages on only sometimes, and a refused host key must be named.
    pub fn ssh(mut self, options: crate::ssh::SshOptions) -> Repo {
        self.ssh = Some(options);
        self
    }

    /// The borg program on the remote (`--remote-path`), for a remote whose borg is not `borg` on its PATH.
    pub fn remote_path(mut self, program: &str) -> Repo {
        self.remote_path = Some(program.to_string());
        self
    }

    /// Limits `create`'s upload to `kib` KiB/s (`--upload-ratelimit`).
    pub fn upload_ratelimit(mut self, kib: u64) -> Repo {
        self.upload_ratelimit_kib = Some(kib);
        self
    }

    /// The command borg runs (split like a shell would, without a shell) to get the passphrase: `BORG_PASSCOMMAND`.
    pub fn passcommand(mut self, cmd: impl Into<String>) -> Repo {
        self.passcommand = Some(cmd.into());
        self
    }

    /// The passphrase is the content of `path` (read by `cat`, through `BORG_PASSCOMMAND`).
    pub fn passphrase_file(self, path: &Path) -> Repo {
        let cmd = format!("cat {}", runner::shell_quote(&path.to_string_lossy()));
        self.passcommand(cmd)
    }

    /// An extra environment variable for every borg command (e.g. `BORG_BASE_DIR`, `BORG_RSH`); not secret.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Repo {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the repository is a path on this machine (not `ssh://…` nor `user@host:path`).
    pub fn is_local(&self) -> bool {
        is_local(&self.location)
    }

    /// `borg init --encryption=ENCRYPTION` (e.g. `repokey`, `repokey-blake2`, `none`).
    pub async fn init(&self, encryption: &str) -> Result<(), BorgError> {
        let cmd = self.cmd().arg("init").arg(format!("--encryption={encryption}")).arg(&self.location);
        self.exec(cmd, None).await.map(drop)
    }

    /// `borg create --json` of `paths` (relative to `cwd`, where borg runs, so archives hold relative paths) as
    /// `archive`, at `timestamp` (`YYYY-MM-DDTHH:MM:SS`, UTC) instead of now when given. Sparse files are detected
    /// (`--sparse`). Exit code 1 (files that vanished or could not be read) is a success with borg's warnings.
    pub async fn create(
        &self,
        archive: &str,
        cwd: &Path,
        paths: &[&str],
        timestamp: Option<&str>,
    ) -> Result<(CreateStats, Vec<String>), BorgError> {
        self.require_repo()?;
        let mut cmd = self.cmd().args(["create", "--json", "--lock-wait", LOCK_WAIT, "--sparse"]);
        if let Some(k) = self.upload_ratelimit_kib {
            cmd = cmd.arg("--upload-ratelimit").arg(k.to_string());
        }
        if let Some(t) = timestamp {
            cmd = cmd.arg("--timestamp").arg(t);
        }
        if self.files_by_mtime {
            cmd = cmd.arg("--files-cache=mtime,size");
        }
        if self.report_read {
            cmd = cmd.args(["--list", "--filter=AME"]);
        }
        let (cmd, seen) = self.with_log(cmd, self.report_read);
        // `--`: a path starting with `-` is a path, not an option.
        let cmd = cmd.arg("--").arg(self.archive_ref(archive)).args(paths).current_dir(cwd).cancellable();
        let shown = cmd.display();
        let (out, ssh_log) = self.run(cmd).await?;
        let warnings = match out.status.code() {
            Some(0) => Vec::new(),
            Some(code) if is_warning(code) => {
                out.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
            }
            _ => return Err(self.classify(&shown, &out, Some(archive), &ssh_log)),
        };
        let mut stats =
            parse_create(&out.stdout).map_err(|message| self.parse_error("`borg create --json`", message))?;
        stats.files_read = self.report_read.then(|| seen.files_read());
        self.progress_done(stats.original_size);
        Ok((stats, warnings))
    }

    /// Archives (matching the shell-style `glob` when given), oldest first.
    pub async fn list(&self, glob: Option<&str>) -> Result<Vec<ArchiveInfo>, BorgError> {
        self.require_repo()?;
        let mut cmd = self.cmd().args(["list", "--json", "--lock-wait", LOCK_WAIT]);
        if let Some(g) = glob {
            cmd = cmd.arg("--glob-archives").arg(g);
        }
        let out = self.exec(cmd.arg(&self.location), None).await?;
        let mut archives =
            parse_list(&out.stdout).map_err(|message| self.parse_error("`borg list --json`", message))?;
        archives.sort_by_key(|a| a.time_unix);
        Ok(archives)
    }

    /// The repository's id (`borg list --json --last 1`): recorded at the first backup, compared at every later
    /// one, so that a repository swapped in at the same location is noticed.
    /// A local repository's is read from its `config` file (no borg run, no lock).
    pub async fn id(&self) -> Result<String, BorgError> {
        self.require_repo()?;
        if let Some(dir) = self.local_path() {
            let text = std::fs::read_to_string(dir.join("config"))
                .map_err(|e| BorgError::Failed { repo: self.location.clone(), message: format!("config: {e}") })?;
            return parse_config_id(&text).map_err(|message| self.parse_error("the repository's config", message));
        }
        let cmd = self.cmd().args(["list", "--json", "--last", "1", "--lock-wait", LOCK_WAIT]).arg(&self.location);
        let out = self.exec(cmd, None).await?;
        parse_repository_id(&out.stdout).map_err(|message| self.parse_error("`borg list --json`", message))
    }

    /// Prunes the archives matching `glob` under `r` and returns the names of those deleted. Space is freed only by
    /// [`Repo::compact`]. An empty retention prunes nothing (borg is not run).
    pub async fn prune(&self, glob: &str, r: &Retention) -> Result<Vec<String>, BorgError> {
        if r.is_empty() {
            return Ok(Vec::new());
        }
        self.require_repo()?;
        let out = self.exec(self.cmd().args(prune_args(glob, r)).arg(&self.location), None).await?;
        Ok(parse_pruned(&out.stderr))
    }

    /// `borg compact`: frees the space of deleted archives.
    pub async fn compact(&self) -> Result<(), BorgError> {
        self.require_repo()?;
        let cmd = self.cmd().args(["compact", "--lock-wait", LOCK_WAIT]).arg(&self.location);
        self.exec(cmd, None).await.map(drop)
    }

    /// Extracts `archive` into the existing directory `dest` (borg runs there), recreating sparse files.
    pub async fn extract(&self, archive: &str, dest: &Path) -> Result<(), BorgError> {
        self.extract_paths(archive, dest, &[]).await
    }

    /// The entries of `archive` (`borg list --json-lines`), only `prefix` and what lies under it when given (a path
    /// checked by [`archive_path`], passed as a `pp:` pattern after `--`). Borg's whole answer is read before it is
    /// parsed: callers page the result, not borg's output.
    pub async fn list_files(&self, archive: &str, prefix: Option<&str>) -> Result<Vec<FileEntry>, BorgError> {
        self.require_repo()?;
        let mut cmd =
            self.cmd().args(["list", "--json-lines", "--lock-wait", LOCK_WAIT, "--"]).arg(self.archive_ref(archive));
        if let Some(p) = prefix {
            cmd = cmd.arg(prefix_pattern(p));
        }
        let out = self.exec(cmd.cancellable(), Some(archive)).await?;
        parse_file_lines(&out.stdout).map_err(|message| self.parse_error("`borg list --json-lines`", message))
    }

    /// Extracts only `paths` (each checked by [`archive_path`]; a directory with everything under it; none: the whole
    /// archive) of `archive` into the existing directory `dest`, at their paths relative to it. A path the archive
    /// does not hold is an error (borg: "never matched").
    pub async fn extract_paths(&self, archive: &str, dest: &Path, paths: &[&str]) -> Result<(), BorgError> {
        self.require_repo()?;
        let (cmd, seen) = self.with_log(self.cmd().args(["extract", "--sparse", "--lock-wait", LOCK_WAIT]), false);
        let cmd = cmd.arg("--").arg(self.archive_ref(archive)).args(paths.iter().map(|p| prefix_pattern(p)));
        self.exec(cmd.current_dir(dest).cancellable(), Some(archive)).await?;
        self.progress_done(seen.last_total());
        Ok(())
    }

    /// `borg check` of the given kind; any problem found is an error.
    pub async fn check(&self, kind: CheckKind) -> Result<(), BorgError> {
        self.require_repo()?;
        let cmd = self.cmd().args(["check", "--lock-wait", LOCK_WAIT, kind.flag()]).arg(&self.location).cancellable();
        self.exec(cmd, None).await.map(drop)
    }

    /// `borg break-lock`: removes every lock, also those of running borgs. Only for locks known to be stale.
    pub async fn break_lock(&self) -> Result<(), BorgError> {
        self.require_repo()?;
        self.exec(self.cmd().arg("break-lock").arg(&self.location), None).await.map(drop)
    }

    /// Who holds a lock on this repository now, from its `lock.roster`. Empty for a remote repository, an unlocked
    /// one, or a roster that cannot be read.
    pub fn lock_holders(&self) -> Vec<LockHolder> {
        match self.local_path() {
            Some(dir) => std::fs::read_to_string(dir.join("lock.roster")).map(|s| parse_roster(&s)).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    fn cmd(&self) -> Cmd {
        let mut c = Cmd::new("borg")
            .timeout(BORG_TIMEOUT)
            .env("TZ", "UTC")
            .env("BORG_DISPLAY_PASSPHRASE", "no")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "no")
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "no")
            .env("BORG_EXIT_CODES", "modern");
        for (key, value) in &self.env {
            c = c.env(key, value);
        }
        if let Some(p) = &self.passcommand {
            c = c.secret_env("BORG_PASSCOMMAND", p.clone());
        }
        // A common option: it goes before the subcommand's own.
        if let Some(p) = &self.remote_path {
            c = c.arg("--remote-path").arg(p);
        }
        c
    }

    /// `--log-json` and a stderr filter ([`stderr::filter`]) when there is a progress sink (then `--progress`) or
    /// `listing` (the files `--list` names are collected); what the filter saw is in the returned cell.
    fn with_log(&self, cmd: Cmd, listing: bool) -> (Cmd, std::sync::Arc<stderr::Seen>) {
        let seen = std::sync::Arc::new(stderr::Seen::default());
        if self.progress.is_none() && !listing {
            return (cmd, seen);
        }
        let cmd = if self.progress.is_some() { cmd.arg("--progress") } else { cmd };
        (cmd.arg("--log-json").stderr_lines(stderr::filter(self.progress.clone(), seen.clone())), seen)
    }

    /// Tells the sink, if any, that a transfer of `total` bytes is complete.
    fn progress_done(&self, total: u64) {
        if let (Some(sink), true) = (&self.progress, total > 0) {
            sink(Transferred { done: total, total: Some(total) });
        }
    }

    fn archive_ref(&self, archive: &str) -> String {
        format!("{}::{archive}", self.location)
    }

    fn local_path(&self) -> Option<PathBuf> {
        self.is_local().then(|| PathBuf::from(self.location.strip_prefix("file://").unwrap_or(&self.location)))
    }

    /// A local repository is a directory with a `config` file; checked without running borg.
    fn require_repo(&self) -> Result<(), BorgError> {
        match self.local_path() {
            Some(dir) if !dir.join("config").is_file() => Err(BorgError::NoRepo { repo: self.location.clone() }),
            _ => Ok(()),
        }
    }

    /// Runs `cmd`; any exit code but 0 is an error.
    async fn exec(&self, cmd: Cmd, archive: Option<&str>) -> Result<Output, BorgError> {
        let shown = cmd.display();
        let (out, ssh_log) = self.run(cmd).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.classify(&shown, &out, archive, &ssh_log))
        }
    }

    /// Runs `cmd` (with `BORG_RSH` for a remote); returns its output and what ssh logged.
    async fn run(&self, cmd: Cmd) -> Result<(Output, String), BorgError> {
        let Some(ssh) = &self.ssh else {
            return runner::run(cmd).await.map(|o| (o, String::new())).map_err(|e| self.run_error(e));
        };
        let log = SshLog::new().map_err(|e| BorgError::Failed {
            repo: self.location.clone(),
            message: format!("cannot create a log file for ssh: {e}"),
        })?;
        let cmd = cmd.env("BORG_RSH", ssh.command_logging_to(&log.0));
        let out = runner::run(cmd).await.map_err(|e| self.run_error(e))?;
        Ok((out, std::fs::read_to_string(&log.0).unwrap_or_default()))
    }

    fn run_error(&self, e: RunError) -> BorgError {
        match e {
            RunError::NotFound { .. } => BorgError::NotInstalled,
            e @ RunError::Cancelled { .. } => {
                BorgError::Cancelled { repo: self.location.clone(), message: e.to_string() }
            }
            other => BorgError::Failed { repo: self.location.clone(), message: other.to_string() },
        }
    }

    fn parse_error(&self, what: &str, message: String) -> BorgError {
        BorgError::Parse { repo: self.location.clone(), what: what.to_string(), message }
    }

    /// The error a failed borg command (`shown` is its redacted argv) reported on stderr, or its ssh in its log.
    fn classify(&self, shown: &str, out: &Output, archive: Option<&str>, ssh_log: &str) -> BorgError {
        let repo = self.location.clone();
        let stderr = out.stderr.as_str();
        let lines = || stderr.lines().map(str::trim);
        if !self.is_local() {
            if let Some(failure) = crate::ssh::classify(ssh_log).or_else(|| crate::ssh::classify(stderr)) {
                return BorgError::Ssh { host: remote_host(&repo), repo, failure };
            }
        }
        if stderr.contains("passcommand supplied in BORG_PASSCOMMAND failed") {
            return BorgError::PasscommandFailed { repo };
        }
        if lines().any(|l| l.starts_with("passphrase supplied in") && l.contains("is incorrect")) {
            return BorgError::WrongPassphrase { repo };
        }
        if stderr.contains("can not acquire a passphrase") {
            return BorgError::NoPassphrase { repo };
        }
        if let Some(line) = lines().find(|l| l.contains("Failed to create/acquire the lock")) {
            let holders = self.lock_holders();
            let detail = if holders.is_empty() {
                line.to_string()
            } else {
                let who: Vec<String> = holders
                    .iter()
                    .map(|h| format!("{} pid {} ({})", h.host, h.pid, if h.exclusive { "exclusive" } else { "shared" }))
                    .collect();
                format!("{line}; held by {}", who.join(", "))
            };
            return BorgError::Locked { repo, detail };
        }
        if lines().any(|l| {
            (l.starts_with("Repository ") && l.trim_end_matches('.').ends_with(" does not exist"))
                || l.ends_with("is not a valid repository. Check repo config.")
        }) {
            return BorgError::NoRepo { repo };
        }
        let archive_line = |suffix: &str| {
            lines()
                .find_map(|l| l.strip_prefix("Archive ")?.trim_end_matches('.').strip_suffix(suffix).map(String::from))
        };
        if let Some(name) = archive_line(" does not exist") {
            return BorgError::NoSuchArchive { repo, archive: archive.map_or(name, String::from) };
        }
        if let Some(name) = archive_line(" already exists") {
            return BorgError::ArchiveExists { repo, archive: archive.map_or(name, String::from) };
        }
        // The runner's own message, from a stderr tail (a traceback: borg's messages and its exception) cleared of
        // anything about the passcommand.
        let passcommand = self.passcommand.as_deref().filter(|p| !p.is_empty());
        let text = parse::unhandled_error(stderr).unwrap_or_else(|| stderr.to_string());
        let kept: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().contains("passcommand"))
            .map(|l| passcommand.map_or_else(|| l.to_string(), |p| l.replace(p, runner::MASK)))
            .collect();
        let skip = kept.len().saturating_sub(runner::STDERR_TAIL_LINES);
        let message =
            RunError::Failed { cmd: shown.to_string(), code: out.status.code(), stderr: kept[skip..].join("\n") };
        BorgError::Failed { repo, message: message.to_string() }
    }
}

/// Exit codes that mean "done, with warnings": 1 (legacy), 100-127 (`BORG_EXIT_CODES=modern`, borg ≥ 1.4).
fn is_warning(code: i32) -> bool {
    code == 1 || (100..=127).contains(&code)
}

/// A file of its own for one ssh's log (`-E`), mode 0600, removed when dropped. Nothing secret goes there (ssh logs
/// host keys' fingerprints and errors).
struct SshLog(PathBuf);

impl SshLog {
    fn new() -> std::io::Result<SshLog> {
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("strata-ssh-{}-{n}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(SshLog(path))
    }
}

impl Drop for SshLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `host[:port]` part of a remote location, for messages.
fn remote_host(location: &str) -> String {
    let rest = location.split_once("://").map_or(location, |(_, r)| r);
    let authority = match location.contains("://") {
        true => rest.split('/').next().unwrap_or(rest),
        false => rest.split(':').next().unwrap_or(rest),
    };
    authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_string()
}

/// Borg's own rule: a location is remote when it is a URL other than `file://`, or scp-style `[user@]host:path`.
fn is_local(location: &str) -> bool {
    if location.starts_with("file://") {
        return true;
    }
    if location.contains("://") {
        return false;
    }
    if location.starts_with(['/', '.', '~']) {
        return true;
    }
    let head = location.split('/').next().unwrap_or("");
    !head.contains(':')
}

// Tests run programs directly.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::days_from_civil;

    #[test]
    fn locations_and_passcommands() {
        for local in ["/srv/borg/x", "./x", "x", "file:///srv/x", "~/x", "dir/with:colon"] {
            assert!(Repo::new(local).is_local(), "{local}");
        }
        for remote in ["ssh://u@nas:22/./x", "u@nas:x", "nas:/srv/x", "sftp://nas/x"] {
            assert!(!Repo::new(remote).is_local(), "{remote}");
        }
        assert!(Path::new(Repo::new("rel/repo").location()).is_absolute());
        assert_eq!(Repo::new("ssh://u@nas/./x").location(), "ssh://u@nas/./x");
        assert_eq!(Repo::new("ssh://u@nas/./x").lock_holders(), vec![]);

        let repo = Repo::new("/r").passphrase_file(Path::new("/tmp/pw it's"));
        assert_eq!(repo.passcommand.as_deref(), Some(r"cat '/tmp/pw it'\''s'"));
        assert!(!format!("{repo:?}").contains("pw it"), "{repo:?}");
    }

    #[test]
    fn source_bytes_sums_regular_files_below_the_paths_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let deep = (0..300).fold(dir.path().join("a"), |p, i| p.join(format!("d{i}")));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), [1u8; 700]).unwrap();
        std::fs::write(dir.path().join("a/g"), [1u8; 300]).unwrap();
        std::fs::write(dir.path().join("other"), [1u8; 5000]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("other"), dir.path().join("a/link")).unwrap();
        assert_eq!(source_bytes(dir.path(), &["a"]), 1000);
        assert_eq!(source_bytes(dir.path(), &["a", "other", "missing"]), 6000);
    }

    /// An `Output` with the given exit code and stderr.
    fn failed(code: i32, stderr: &str) -> Output {
        use std::os::unix::process::ExitStatusExt;
        Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: Vec::new(),
            stderr: stderr.into(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn errors_are_classified_from_captured_stderr() {
        let repo = Repo::new("/tmp/bcap2/r").passcommand("cat /tmp/bcap2/pwfile");
        let classify = |stderr: &str| repo.classify("borg list /tmp/bcap2/r", &failed(2, stderr), None, "");
        let e = classify(
            "passphrase supplied in BORG_PASSPHRASE, by BORG_PASSCOMMAND or via BORG_PASSPHRASE_FD is incorrect.\n",
        );
        assert!(matches!(e, BorgError::WrongPassphrase { .. }), "{e:?}");
        assert_eq!(e.to_string(), "wrong passphrase for borg repository /tmp/bcap2/r");
        let e = classify(
            "cat: /tmp/bcap2/nofile: No such file or directory\npasscommand supplied in BORG_PASSCOMMAND failed: \
             Command '['cat', '/tmp/bcap2/nofile']' returned non-zero exit status 1.\n",
        );
        assert!(matches!(e, BorgError::PasscommandFailed { .. }), "{e:?}");
        assert!(!e.to_string().contains("nofile"), "{e}");
        let e = classify(
            "/usr/lib/python3.11/getpass.py:91: GetPassWarning: Can not control echo on the terminal.\nWarning: \
             Password input may be echoed.\nEnter passphrase for key /tmp/bcap2/r: can not acquire a passphrase: \
             BORG_PASSPHRASE is not set. BORG_PASSCOMMAND is not set. Interactive password query failed.\n",
        );
        assert!(matches!(e, BorgError::NoPassphrase { .. }), "{e:?}");
        let e = classify("Repository /tmp/bcap2/nope does not exist.\n");
        assert!(matches!(e, BorgError::NoRepo { .. }), "{e:?}");
        assert_eq!(e.to_string(), "borg repository /tmp/bcap2/r does not exist");
        let e = classify("/tmp/bcap2/emptydir is not a valid repository. Check repo config.\n");
        assert!(matches!(e, BorgError::NoRepo { .. }), "{e:?}");
        let e = classify("Failed to create/acquire the lock /tmp/bcap2/r/lock.exclusive (timeout).\n");
        assert!(
            matches!(&e, BorgError::Locked { detail, .. }
                if detail == "Failed to create/acquire the lock /tmp/bcap2/r/lock.exclusive (timeout)."),
            "{e:?}"
        );
        let e = classify("Archive nosuch does not exist\n");
        assert!(matches!(&e, BorgError::NoSuchArchive { archive, .. } if archive == "nosuch"), "{e:?}");
        let e = classify("Archive warn1 already exists\n");
        assert!(matches!(&e, BorgError::ArchiveExists { archive, .. } if archive == "warn1"), "{e:?}");

        let e = classify(
            "Remote: ssh: connect to host 127.0.0.1 port 1: Connection refused\nConnection closed by remote host. \
             Is borg working on the server?\nsomething about cat /tmp/bcap2/pwfile\n",
        );
        let BorgError::Failed { message, .. } = &e else { panic!("{e:?}") };
        assert!(message.contains("exit code 2") && message.contains("Connection refused"), "{message}");

        // A remote: ssh's own failures are named, with the host.
        let remote = Repo::new("ssh://borg@backup.example:2222/./photos");
        let classify = |stderr: &str| remote.classify("borg list", &failed(2, stderr), None, "").to_string();
        assert_eq!(
            classify(include_str!("../testdata/ssh_host_key_changed.txt")),
            "borg repository ssh://borg@backup.example:2222/./photos: ssh to backup.example:2222: the host key \
             changed (not the one in known_hosts): refused, nothing was sent"
        );
        assert!(classify(include_str!("../testdata/ssh_connect_timeout.txt")).contains("unreachable: "));
        // borg passes ssh's lines on only sometimes: ssh's own log (`-E`) names the failure when stderr does not.
        let e = remote.classify(
            "borg list",
            &failed(2, "Connection closed by remote host. Is borg working on the server?\n"),
            None,
            include_str!("../testdata/ssh_host_key_changed.ssh_log.txt"),
        );
        assert!(e.to_string().contains("the host key changed"), "{e}");
        assert_eq!(remote_host("u@nas:x"), "nas");
        assert_eq!(remote_host("ssh://nas/x"), "nas");
        assert!(!message.contains("/tmp/bcap2/pwfile") && message.contains("something about ***"), "{message}");
    }

    /// A scratch area: a source tree, a passphrase file, and BORG_BASE_DIR, all in one temp dir.
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Scratch {
            let dir = tempfile::Builder::new().prefix("strata-borg-test-").tempdir().unwrap();
            std::fs::create_dir(dir.path().join("base")).unwrap();
            std::fs::create_dir_all(dir.path().join("src/sub")).unwrap();
            Scratch { dir }
        }

        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }

        fn secret(&self, name: &str, passphrase: &str) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.path(name);
            std::fs::write(&p, passphrase).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        }

        fn repo(&self, passphrase_file: &Path) -> Repo {
            Repo::new(self.path("repo").to_string_lossy())
                .passphrase_file(passphrase_file)
                .env("BORG_BASE_DIR", self.path("base").to_string_lossy())
        }
    }

    const PASSPHRASE: &str = "correct horse battery staple";

    /// `within = "30min"` against the real borg: it keeps 30 minutes' worth, rounded up to the hour borg knows
    /// (an archive of 10 and of 50 minutes ago kept, one of 3 hours ago pruned); each translated unit is accepted.
    #[tokio::test]
    async fn real_borg_keeps_within() {
        let s = Scratch::new();
        let repo = s.repo(&s.secret("pw", PASSPHRASE));
        repo.init("repokey").await.unwrap();
        std::fs::write(s.path("src/a.txt"), "x\n").unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let stamp = |ago_min: i64| {
            let t = now - ago_min * 60;
            let (y, m, d) = crate::cron::civil(t.div_euclid(86_400));
            let sec = t.rem_euclid(86_400);
            format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sec / 3600, sec % 3600 / 60, sec % 60)
        };
        for (name, ago) in [("w-10min", 10), ("w-50min", 50), ("w-3h", 180)] {
            repo.create(name, &s.path("src"), &["."], Some(&stamp(ago))).await.unwrap();
        }
        let r = Retention { within: Some(crate::duration::parse("30min").unwrap()), ..Default::default() };
        assert_eq!(repo.prune("w-*", &r).await.unwrap(), ["w-3h"]);
        let mut left: Vec<String> = repo.list(None).await.unwrap().into_iter().map(|a| a.name).collect();
        left.sort();
        assert_eq!(left, ["w-10min", "w-50min"]);
        // Every form the translation writes is one borg accepts (and keeps both, younger than any of them).
        for ours in ["90s", "1h30m", "2d", "2w", "6months", "1y"] {
            let r = Retention { within: Some(crate::duration::parse(ours).unwrap()), ..Default::default() };
            assert_eq!(repo.prune("w-*", &r).await.unwrap(), Vec::<String>::new(), "{ours}");
        }
    }

    /// `--progress --log-json` against the real borg: create reports bytes read, rising to the data's size; extract
    /// reports bytes of the archive's total; warnings and errors still read as without it.
    #[tokio::test]
    async fn real_borg_reports_bytes_moved() {
        let s = Scratch::new();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Transferred>>> = Default::default();
        let log = seen.clone();
        let sink: ProgressSink = std::sync::Arc::new(move |t| log.lock().unwrap().push(t));
        let repo = s.repo(&s.secret("pw", PASSPHRASE)).progress(sink);
        repo.init("repokey").await.unwrap();
        let size = 96 << 20;
        // Not compressible nor deduplicated within itself: borg reads it at a pace that shows.
        let mut data = vec![0u8; size];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(s.path("src/big.bin"), &data).unwrap();
        let (stats, warnings) = repo.create("p1", &s.path("src"), &["big.bin", "missing-file"], None).await.unwrap();
        assert!(warnings.len() == 1 && warnings[0].contains("missing-file"), "{warnings:?}");
        let created = std::mem::take(&mut *seen.lock().unwrap());
        assert!(!created.is_empty(), "no progress from create");
        assert!(created.iter().all(|t| t.done <= stats.original_size), "{created:?}");
        let last = *created.last().unwrap();
        assert_eq!(last, Transferred { done: stats.original_size, total: Some(stats.original_size) }, "the end");
        assert!(created[..created.len() - 1].iter().all(|t| t.total.is_none()), "{created:?}");
        assert!(created.windows(2).all(|w| w[0].done <= w[1].done), "not monotonic: {created:?}");

        let dest = s.path("restored");
        std::fs::create_dir(&dest).unwrap();
        repo.extract("p1", &dest).await.unwrap();
        assert_eq!(std::fs::read(dest.join("big.bin")).unwrap().len(), size);
        let extracted = std::mem::take(&mut *seen.lock().unwrap());
        assert!(extracted.windows(2).all(|w| w[0].done <= w[1].done), "not monotonic: {extracted:?}");
        assert_eq!(extracted.last().map(|t| (t.done, t.total)), Some((size as u64, Some(size as u64))));
        let e = repo.extract("nosuch", &dest).await.unwrap_err();
        assert!(matches!(&e, BorgError::NoSuchArchive { archive, .. } if archive == "nosuch"), "{e:?}");
    }

    /// The whole life of a repository, against the real borg.
    #[tokio::test]
    async fn real_borg_round_trip() {
        let s = Scratch::new();
        // A passphrase file whose path needs quoting for BORG_PASSCOMMAND.
        let pw = s.secret("pass phrase's file", PASSPHRASE);
        let repo = s.repo(&pw);

        // No `config` yet: NoRepo, without running borg.
        let e = repo.list(None).await.unwrap_err();
        assert!(matches!(e, BorgError::NoRepo { .. }), "{e:?}");
        assert_eq!(repo.lock_holders(), vec![]);

        repo.init("repokey").await.unwrap();
        let src = s.path("src");
        std::fs::write(src.join("a.txt"), "first\n").unwrap();
        std::fs::write(src.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();

        let (stats, warnings) =
            repo.create("svc-20260105T040000Z", &src, &["."], Some("2026-01-05T04:00:00")).await.unwrap();
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(stats.archive, "svc-20260105T040000Z");
        // original_size counts the archive's metadata stream too, not only the files' 100,006 bytes.
        assert_eq!(stats.nfiles, 2);
        assert!((100_006..101_000).contains(&stats.original_size), "{stats:?}");
        assert!(stats.deduplicated_size > 0 && stats.duration_seconds >= 0.0, "{stats:?}");

        std::fs::write(src.join("a.txt"), "second\n").unwrap();
        let (stats, _) = repo.create("svc-20260106T040000Z", &src, &["."], Some("2026-01-06T04:00:00")).await.unwrap();
        assert!((100_007..101_000).contains(&stats.original_size), "{stats:?}");
        // Outside the glob below, and made with a warning: a path that does not exist is exit code 1.
        let (stats, warnings) = repo.create("other", &src, &["a.txt", "missing-file"], None).await.unwrap();
        assert_eq!(stats.nfiles, 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("missing-file") && warnings[0].contains("No such file"), "{warnings:?}");
        let e = repo.create("other", &src, &["."], None).await.unwrap_err();
        assert!(matches!(&e, BorgError::ArchiveExists { archive, .. } if archive == "other"), "{e:?}");

        let day = |d: u32| days_from_civil(2026, 1, d) * 86_400 + 4 * 3600;
        let glob = "svc-????????T??????Z";
        let listed = repo.list(Some(glob)).await.unwrap();
        assert_eq!(
            listed,
            vec![
                ArchiveInfo { name: "svc-20260105T040000Z".into(), time_unix: day(5) },
                ArchiveInfo { name: "svc-20260106T040000Z".into(), time_unix: day(6) },
            ]
        );
        let all = repo.list(None).await.unwrap();
        assert_eq!(
            all.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["svc-20260105T040000Z", "svc-20260106T040000Z", "other"]
        );

        assert_eq!(repo.prune(glob, &Retention::default()).await.unwrap(), Vec::<String>::new());
        let keep_one = Retention { last: 1, ..Default::default() };
        assert_eq!(repo.prune(glob, &keep_one).await.unwrap(), ["svc-20260105T040000Z"]);
        repo.compact().await.unwrap();
        let names: Vec<String> = repo.list(None).await.unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["svc-20260106T040000Z", "other"]);

        repo.check(CheckKind::Repository).await.unwrap();
        repo.check(CheckKind::Archives).await.unwrap();

        let dest = s.path("restored");
        std::fs::create_dir(&dest).unwrap();
        repo.extract("svc-20260106T040000Z", &dest).await.unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("a.txt")).unwrap(), "second\n");
        assert_eq!(std::fs::read(dest.join("sub/b.bin")).unwrap(), vec![7u8; 100_000]);
        let e = repo.extract("svc-20260105T040000Z", &dest).await.unwrap_err();
        assert!(matches!(&e, BorgError::NoSuchArchive { archive, .. } if archive == "svc-20260105T040000Z"), "{e:?}");
        assert!(e.to_string().contains(repo.location()), "{e}");

        // A lock held by another borg shows in the roster, and is gone when it ends.
        let mut holder = std::process::Command::new("borg")
            .args(["with-lock", repo.location(), "sleep", "3"])
            .env("BORG_PASSCOMMAND", repo.passcommand.as_deref().unwrap())
            .env("BORG_BASE_DIR", s.path("base"))
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let holders = loop {
            let holders = repo.lock_holders();
            if !holders.is_empty() || std::time::Instant::now() > deadline {
                break holders;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert!(holders[0].exclusive && holders[0].pid == holder.id() && holders[0].host.contains('@'), "{holders:?}");
        assert!(holder.wait().unwrap().success());
        assert_eq!(repo.lock_holders(), vec![]);
        repo.break_lock().await.unwrap();

        // A wrong passphrase, and a passphrase command that fails: neither message shows a secret or the command.
        let wrong_pass = "not-the-passphrase-4711";
        let wrong = s.repo(&s.secret("wrong", wrong_pass));
        let e = wrong.list(None).await.unwrap_err();
        assert!(matches!(e, BorgError::WrongPassphrase { .. }), "{e:?}");
        let failing = s.repo(&s.path("no-such-passphrase-file"));
        let e2 = failing.extract("svc-20260106T040000Z", &dest).await.unwrap_err();
        assert!(matches!(e2, BorgError::PasscommandFailed { .. }), "{e2:?}");
        for text in [e.to_string(), format!("{e:?}"), e2.to_string(), format!("{e2:?}")] {
            assert!(text.contains(repo.location()), "{text}");
            for secret in [wrong_pass, PASSPHRASE, "no-such-passphrase-file", "cat "] {
                assert!(!text.contains(secret), "{text} shows {secret}");
            }
        }

        // borg missing from PATH (a remote location, so that nothing is checked locally first).
        let nowhere = Repo::new("ssh://nobody@127.0.0.1:1/./x").env("PATH", s.path("base").to_string_lossy());
        let e = nowhere.list(None).await.unwrap_err();
        assert!(matches!(e, BorgError::NotInstalled), "{e:?}");
    }
}
