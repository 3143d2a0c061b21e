//! Borg 1.2 through its CLI: the one module that knows borg's commands, flags, environment, JSON, messages and exit
//! codes (init, create, list, prune, compact, extract, check, break-lock, the lock roster). Every call goes through
//! [`crate::runner`]; the passphrase reaches borg only as `BORG_PASSCOMMAND` in a secret environment variable.
//! Must not know what is backed up (VMs, stacks, volumes), how archives are named, when backups run, or where a
//! passphrase is kept beyond the command that prints it.
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

use serde::Deserialize;

use crate::cron::days_from_civil;
use crate::runner::{self, Cmd, Output, RunError};

/// A backup of a large disk can take long; the timeout only catches a hung borg.
pub const BORG_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// Seconds borg waits for another borg's lock before giving up (`--lock-wait`; borg's default is 1).
const LOCK_WAIT: &str = "60";

/// How many archives to keep (borg prune semantics): the `retention` table of both agents' configs, read as it is
/// (unknown keys refused). An empty retention keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep every archive younger than this (`--keep-within`, translated by [`keep_within_arg`]).
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub within: Option<Duration>,
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

impl Retention {
    /// No rule at all: nothing would be pruned.
    pub fn is_empty(&self) -> bool {
        self.within.is_none()
            && [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly].iter().all(|n| *n == 0)
    }
}

/// A duration in borg 1.2's `--keep-within`/`--within` units. Borg knows `H`, `d`, `w`, `m` (31 days) and `y`
/// (365 days) and nothing below an hour; our months and years are 30.44 and 365.25 days. So this writes whole
/// hours, rounded **up** (keeping at least what was asked: `30min` and `1h` both become `1H`, `90min` `2H`), as
/// weeks or days when that is exact, and never borg's `m` or `y` (`6months` becomes `4384H`, `1y` `8766H`).
pub fn keep_within_arg(d: Duration) -> String {
    let hours = d.as_secs().div_ceil(3600).max(1);
    match hours {
        h if h % (24 * 7) == 0 => format!("{}w", h / (24 * 7)),
        h if h % 24 == 0 => format!("{}d", h / 24),
        h => format!("{h}H"),
    }
}

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
    #[error("borg repository {repo}: cannot parse {what}: {message}")]
    Parse { repo: String, what: String, message: String },
}

/// A borg repository and how to open it: location, passphrase command and extra environment.
#[derive(Clone)]
pub struct Repo {
    location: String,
    passcommand: Option<String>,
    env: Vec<(String, String)>,
}

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.location)
            .field("passcommand", &self.passcommand.as_ref().map(|_| runner::MASK))
            .field("env", &self.env)
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
        Repo { location, passcommand: None, env: Vec::new() }
    }

    /// The command borg runs (split like a shell would, without a shell) to get the passphrase: `BORG_PASSCOMMAND`.
    pub fn passcommand(mut self, cmd: impl Into<String>) -> Repo {
        self.passcommand = Some(cmd.into());
        self
    }

    /// The passphrase is the content of `path` (read by `cat`, through `BORG_PASSCOMMAND`).
    pub fn passphrase_file(self, path: &Path) -> Repo {
        let cmd = format!("cat {}", shell_quote(&path.to_string_lossy()));
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
        if let Some(t) = timestamp {
            cmd = cmd.arg("--timestamp").arg(t);
        }
        // `--`: a path starting with `-` is a path, not an option.
        let cmd = cmd.arg("--").arg(self.archive_ref(archive)).args(paths).current_dir(cwd);
        let shown = cmd.display();
        let out = runner::run(cmd).await.map_err(|e| self.run_error(e))?;
        let warnings = match out.status.code() {
            Some(0) => Vec::new(),
            Some(code) if is_warning(code) => {
                out.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
            }
            _ => return Err(self.classify(&shown, &out, Some(archive))),
        };
        let stats = parse_create(&out.stdout).map_err(|message| self.parse_error("`borg create --json`", message))?;
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
        self.require_repo()?;
        let cmd = self.cmd().args(["extract", "--sparse", "--lock-wait", LOCK_WAIT]);
        let cmd = cmd.arg("--").arg(self.archive_ref(archive)).current_dir(dest);
        self.exec(cmd, Some(archive)).await.map(drop)
    }

    /// `borg check` of the given kind; any problem found is an error.
    pub async fn check(&self, kind: CheckKind) -> Result<(), BorgError> {
        self.require_repo()?;
        let cmd = self.cmd().args(["check", "--lock-wait", LOCK_WAIT, kind.flag()]).arg(&self.location);
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
        c
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
        let out = runner::run(cmd).await.map_err(|e| self.run_error(e))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.classify(&shown, &out, archive))
        }
    }

    fn run_error(&self, e: RunError) -> BorgError {
        match e {
            RunError::NotFound { .. } => BorgError::NotInstalled,
            other => BorgError::Failed { repo: self.location.clone(), message: other.to_string() },
        }
    }

    fn parse_error(&self, what: &str, message: String) -> BorgError {
        BorgError::Parse { repo: self.location.clone(), what: what.to_string(), message }
    }

    /// The error a failed borg command (`shown` is its redacted argv) reported on stderr.
    fn classify(&self, shown: &str, out: &Output, archive: Option<&str>) -> BorgError {
        let repo = self.location.clone();
        let stderr = out.stderr.as_str();
        let lines = || stderr.lines().map(str::trim);
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
        // The runner's own message, from a stderr tail cleared of anything about the passcommand.
        let passcommand = self.passcommand.as_deref().filter(|p| !p.is_empty());
        let kept: Vec<String> = lines()
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

/// POSIX-shell quoting, which borg's shlex split of `BORG_PASSCOMMAND` undoes.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:,=+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `borg prune` arguments (without the repository) for the archives matching `glob` under `r`, listing each
/// archive kept or pruned on stderr.
pub fn prune_args(glob: &str, r: &Retention) -> Vec<String> {
    let mut a: Vec<String> =
        ["prune", "--list", "--lock-wait", LOCK_WAIT, "--glob-archives", glob].iter().map(|s| s.to_string()).collect();
    if let Some(w) = r.within {
        a.extend(["--keep-within".to_string(), keep_within_arg(w)]);
    }
    for (flag, n) in [
        ("--keep-last", r.last),
        ("--keep-hourly", r.hourly),
        ("--keep-daily", r.daily),
        ("--keep-weekly", r.weekly),
        ("--keep-monthly", r.monthly),
        ("--keep-yearly", r.yearly),
    ] {
        if n > 0 {
            a.extend([flag.to_string(), n.to_string()]);
        }
    }
    a
}

#[derive(Deserialize)]
struct CreateJson {
    archive: CreateArchiveJson,
}

#[derive(Deserialize)]
struct CreateArchiveJson {
    name: String,
    duration: f64,
    stats: CreateStatsJson,
}

#[derive(Deserialize)]
struct CreateStatsJson {
    original_size: u64,
    compressed_size: u64,
    deduplicated_size: u64,
    nfiles: u64,
}

/// The archive's statistics from the stdout of `borg create --json`.
pub fn parse_create(out: &[u8]) -> Result<CreateStats, String> {
    let v: CreateJson = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    let (a, s) = (v.archive.name, v.archive.stats);
    Ok(CreateStats {
        archive: a,
        original_size: s.original_size,
        compressed_size: s.compressed_size,
        deduplicated_size: s.deduplicated_size,
        nfiles: s.nfiles,
        duration_seconds: v.archive.duration,
    })
}

#[derive(Deserialize)]
struct ListJson {
    archives: Vec<ListEntry>,
}

#[derive(Deserialize)]
struct ListEntry {
    name: String,
    time: Option<String>,
    start: Option<String>,
}

/// Archives (in borg's order) from the stdout of `borg list --json REPO`, whose times (zone-less) are read as UTC.
pub fn parse_list(out: &[u8]) -> Result<Vec<ArchiveInfo>, String> {
    let v: ListJson = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    v.archives
        .into_iter()
        .map(|a| {
            let time = a.time.or(a.start).ok_or_else(|| format!("archive `{}` has no time", a.name))?;
            let time_unix = parse_time(&time).ok_or_else(|| format!("archive `{}` has a bad time `{time}`", a.name))?;
            Ok(ArchiveInfo { name: a.name, time_unix })
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]` as Unix seconds; without a zone the time is UTC.
fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "" | "Z" | "+00:00" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            let (oh, om) = (oh.parse::<i64>().ok()?, om.parse::<i64>().ok()?);
            sign * (oh * 3600 + om * 60)
        }
    };
    let local = days_from_civil(i64::from(y), mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    Some(local - offset)
}

/// The names of the archives deleted, from the stderr of `borg prune --list`: lines such as
/// `Pruning archive (1/3):   NAME   Sat, 2026-01-03 00:00:00 [ID]` (borg 1.2; `Pruning archive:` in 1.1).
/// `Keeping archive` and `Would prune` (dry run) lines are not deletions.
pub fn parse_pruned(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Pruning archive")?;
            let rest = &rest[rest.find(':')? + 1..];
            // Drop ` [ID]`, then `Ddd, YYYY-MM-DD HH:MM:SS`: what remains is the name, padded to 36 columns.
            let rest = rest.trim_end().strip_suffix(']')?;
            let rest = &rest[..rest.rfind(" [")?];
            let (head, time) = rest.split_at_checked(rest.len().checked_sub(19)?)?;
            parse_time(&time.replacen(' ', "T", 1))?;
            let head = head.strip_suffix(' ')?;
            let name = &head[..head.rfind(' ')?];
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Lock holders from a repository's `lock.roster`: `{"exclusive": [[HOST, PID, THREAD]], "shared": [...]}`.
/// Anything malformed yields no holder.
pub fn parse_roster(json: &str) -> Vec<LockHolder> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    let mut holders = Vec::new();
    for (key, exclusive) in [("exclusive", true), ("shared", false)] {
        for entry in v.get(key).and_then(|e| e.as_array()).into_iter().flatten() {
            let host = entry.get(0).and_then(|h| h.as_str());
            let pid = entry.get(1).and_then(|p| p.as_u64()).and_then(|p| u32::try_from(p).ok());
            if let (Some(host), Some(pid)) = (host, pid) {
                holders.push(LockHolder { host: host.to_string(), pid, exclusive });
            }
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    // Everything below in capital letters was captured from borg 1.2.4 (Debian) on this machine, TZ=UTC.

    /// `borg create --json --lock-wait 60 --timestamp 2026-01-05T04:00:00 /tmp/bcap2/r::svc-20260105T040000Z .`
    const CREATE: &str = r#"{
    "archive": {
        "command_line": [
            "/usr/bin/borg",
            "create",
            "--json",
            "--lock-wait",
            "60",
            "--timestamp",
            "2026-01-05T04:00:00",
            "/tmp/bcap2/r::svc-20260105T040000Z",
            "."
        ],
        "duration": 0.008067,
        "end": "2026-01-05T04:00:00.000000",
        "id": "ec04c2a9d07c028af6bdb262e6c2743b70b8be3b283c714530b32cb606c0308a",
        "limits": {
            "max_archive_size": 2.5987675928817417e-05
        },
        "name": "svc-20260105T040000Z",
        "start": "2026-01-05T04:00:00.000000",
        "stats": {
            "compressed_size": 5637,
            "deduplicated_size": 5637,
            "nfiles": 2,
            "original_size": 5577
        }
    },
    "cache": {
        "path": "/tmp/bcap2/base/.cache/borg/9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b",
        "stats": {
            "total_chunks": 4,
            "total_csize": 5092,
            "total_size": 5006,
            "total_unique_chunks": 4,
            "unique_csize": 5948,
            "unique_size": 6043
        }
    },
    "encryption": {
        "mode": "repokey"
    },
    "repository": {
        "id": "9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b",
        "last_modified": "2026-11-25T19:56:18.000000",
        "location": "/tmp/bcap2/r"
    }
}
"#;

    /// `borg list --json /tmp/bcap2/r` after a second archive made with `--timestamp 2026-01-06T04:00:00`.
    const LIST: &str = r#"{
    "archives": [
        {
            "archive": "svc-20260105T040000Z",
            "barchive": "svc-20260105T040000Z",
            "id": "ec04c2a9d07c028af6bdb262e6c2743b70b8be3b283c714530b32cb606c0308a",
            "name": "svc-20260105T040000Z",
            "start": "2026-01-05T04:00:00.000000",
            "time": "2026-01-05T04:00:00.000000"
        },
        {
            "archive": "svc-20260106T040000Z",
            "barchive": "svc-20260106T040000Z",
            "id": "f366fe34932e102f1dfbf852d9d163332182c8239cfb75c9bdde515cb1a0a9e4",
            "name": "svc-20260106T040000Z",
            "start": "2026-01-06T04:00:00.000000",
            "time": "2026-01-06T04:00:00.000000"
        }
    ],
    "encryption": {
        "mode": "repokey"
    },
    "repository": {
        "id": "9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b",
        "last_modified": "2026-11-25T19:56:19.000000",
        "location": "/tmp/bcap2/r"
    }
}
"#;

    /// stderr of `borg prune --list --lock-wait 60 --glob-archives '*' --keep-within 1d --keep-last 1 /tmp/bcap3/r`
    /// over four archives, one of them with a name longer than the 36-column padding, one with spaces.
    const PRUNE: &str = "\
Keeping archive (rule: secondly #1):     svc-20260104T000000Z                 Sun, 2026-01-04 00:00:00 [2c8b0b9ae9a481f7277a47b32531bfac29372f311778f9d2bfc26df1a7d079cf]
Pruning archive (1/3):                   a-very-long-archive-name-that-exceeds-thirty-six-characters Sat, 2026-01-03 00:00:00 [3cf45105c34da8e2d9ff3473b5e7884646b31a9bc6607ab0a5247bfe07e8ce21]
Pruning archive (2/3):                   name with  spaces                    Fri, 2026-01-02 00:00:00 [6468cef014f95754df6bd6cb8a04863d66f8f8eef5a0c28985de1eaafa24bf01]
Pruning archive (3/3):                   svc-20260101T000000Z                 Thu, 2026-01-01 00:00:00 [1e02780bad7abcd40a4364f9d48deb1df2e3e239422a25d851c81b46264326b7]
";

    /// stderr of `borg prune --list --dry-run --keep-within 2d --glob-archives '*' /tmp/bcap2/r` (nothing deleted).
    const PRUNE_DRY_RUN: &str = "\
Keeping archive (rule: within #1):       sp                                   Wed, 2026-11-25 19:58:58 [7ffc711ef1362495c215ad60f02112f6beadfbe5a5b4ee7ee3d7188813654fa5]
Would prune:                             svc-20260106T040000Z                 Tue, 2026-01-06 04:00:00 [f366fe34932e102f1dfbf852d9d163332182c8239cfb75c9bdde515cb1a0a9e4]
";

    /// `lock.roster` while `borg with-lock /tmp/bcap2/r sleep 6` ran, and while two `borg extract --stdout` did.
    const ROSTER_EXCLUSIVE: &str = r#"{"exclusive": [["vm@3281355014145", 3757, 0]]}"#;
    const ROSTER_SHARED: &str = r#"{"shared": [["vm@3281355014145", 4223, 0], ["vm@3281355014145", 4219, 0]]}"#;

    #[test]
    fn create_and_list_json_parse() {
        let stats = parse_create(CREATE.as_bytes()).unwrap();
        assert_eq!(
            stats,
            CreateStats {
                archive: "svc-20260105T040000Z".into(),
                original_size: 5577,
                compressed_size: 5637,
                deduplicated_size: 5637,
                nfiles: 2,
                duration_seconds: 0.008067,
            }
        );
        assert!(parse_create(b"{}").is_err());
        assert!(parse_create(b"").is_err());

        let day = |d: u32| days_from_civil(2026, 1, d) * 86_400;
        assert_eq!(
            parse_list(LIST.as_bytes()).unwrap(),
            vec![
                ArchiveInfo { name: "svc-20260105T040000Z".into(), time_unix: day(5) + 4 * 3600 },
                ArchiveInfo { name: "svc-20260106T040000Z".into(), time_unix: day(6) + 4 * 3600 },
            ]
        );
        assert_eq!(day(5) + 4 * 3600, 1_767_585_600);
        assert_eq!(parse_list(br#"{"archives": []}"#).unwrap(), vec![]);
        let bad = br#"{"archives": [{"name": "x", "time": "yesterday"}]}"#;
        assert!(parse_list(bad).unwrap_err().contains("bad time `yesterday`"));
    }

    #[test]
    fn times_are_utc_unless_zoned() {
        assert_eq!(parse_time("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:01.999999"), Some(1));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1969-12-31T23:00:00-01:00"), Some(0));
        for bad in ["", "2026-01-05", "2026-13-05T00:00:00", "2026-01-05 04:00:00", "2026-01-05T04:00:00 UTC"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn pruned_names_come_from_pruning_lines_only() {
        assert_eq!(
            parse_pruned(PRUNE),
            [
                "a-very-long-archive-name-that-exceeds-thirty-six-characters",
                "name with  spaces",
                "svc-20260101T000000Z"
            ]
        );
        assert_eq!(parse_pruned(PRUNE_DRY_RUN), Vec::<String>::new());
        // borg 1.1 wrote no counter.
        let old = "Pruning archive: svc-1                                Thu, 2026-01-01 00:00:00 [1e02]";
        assert_eq!(parse_pruned(old), ["svc-1"]);
        assert_eq!(parse_pruned("Pruning archive (1/1): garbage\n\n"), Vec::<String>::new());
    }

    #[test]
    fn roster_parses() {
        let h = |pid, exclusive| LockHolder { host: "vm@3281355014145".into(), pid, exclusive };
        assert_eq!(parse_roster(ROSTER_EXCLUSIVE), vec![h(3757, true)]);
        assert_eq!(parse_roster(ROSTER_SHARED), vec![h(4223, false), h(4219, false)]);
        assert_eq!(parse_roster("{}"), vec![]);
        assert_eq!(parse_roster("not json"), vec![]);
        assert_eq!(parse_roster(r#"{"exclusive": [["h"]], "shared": "x"}"#), vec![]);
    }

    #[test]
    fn keep_within_in_borg_units() {
        // Each unit of our grammar, and what borg 1.2 is given (hours rounded up; borg has no minutes).
        let cases = [
            ("90s", "1H"),
            ("30min", "1H"),
            ("1h", "1H"),
            ("1h30m", "2H"),
            ("36h", "36H"),
            ("1d", "1d"),
            ("2d", "2d"),
            ("1w", "1w"),
            ("2w", "2w"),
            ("10d", "10d"),
            ("1mo", "731H"),
            ("6months", "4384H"),
            ("1y", "8766H"),
        ];
        for (ours, borgs) in cases {
            let d = crate::duration::parse(ours).unwrap();
            assert_eq!(keep_within_arg(d), borgs, "{ours}");
            // Never less than asked: borg's reading of the argument (hours) covers the duration.
            let hours: u64 = match borgs.split_at(borgs.len() - 1) {
                (n, "H") => n.parse().unwrap(),
                (n, "d") => n.parse::<u64>().unwrap() * 24,
                (n, "w") => n.parse::<u64>().unwrap() * 24 * 7,
                _ => unreachable!(),
            };
            assert!(hours * 3600 >= d.as_secs() && (hours - 1) * 3600 < d.as_secs(), "{ours}");
        }
    }

    #[test]
    fn prune_args_follow_retention() {
        let r = Retention { weekly: 4, monthly: 6, ..Default::default() };
        assert_eq!(
            prune_args("svc-????????T??????Z", &r).join(" "),
            "prune --list --lock-wait 60 --glob-archives svc-????????T??????Z --keep-weekly 4 --keep-monthly 6"
        );
        let r = Retention {
            within: Some(Duration::from_secs(2 * 86_400)),
            last: 1,
            hourly: 2,
            daily: 3,
            weekly: 4,
            monthly: 5,
            yearly: 6,
        };
        assert_eq!(
            prune_args("*", &r).join(" "),
            "prune --list --lock-wait 60 --glob-archives * --keep-within 2d --keep-last 1 --keep-hourly 2 \
             --keep-daily 3 --keep-weekly 4 --keep-monthly 5 --keep-yearly 6"
        );
        assert!(Retention::default().is_empty());
        assert!(!Retention { within: Some(Duration::from_secs(60)), ..Default::default() }.is_empty());
        assert!(!Retention { yearly: 1, ..Default::default() }.is_empty());
    }

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

        assert_eq!(shell_quote("/etc/strata/borg.pass"), "/etc/strata/borg.pass");
        assert_eq!(shell_quote("/tmp/pw it's"), r"'/tmp/pw it'\''s'");
        let repo = Repo::new("/r").passphrase_file(Path::new("/tmp/pw it's"));
        assert_eq!(repo.passcommand.as_deref(), Some(r"cat '/tmp/pw it'\''s'"));
        assert!(!format!("{repo:?}").contains("pw it"), "{repo:?}");
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
        let classify = |stderr: &str| repo.classify("borg list /tmp/bcap2/r", &failed(2, stderr), None);
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
