//! The backup `Engine` trait (create, list, prune, extract), the set of engines (`ENGINES`: the config's name ↔ the
//! constructor and what each can do, one row per file of this folder: `borg`, `rsync`, `tmutil`), backup ids
//! (`VM-YYYYMMDDTHHMMSSZ`), and the retention rule rsync applies itself. An engine writes to ONE target of a VM (a
//! local path or an SSH location); a VM with several targets opens one engine per target. Knows ids and retention;
//! must not know any engine's program, any hypervisor, or the agent's config file (an engine is opened from a
//! `Spec`).

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use agent_core::borg::Retention;
use agent_core::cron::{civil, days_from_civil};
use agent_core::jobs::Reporter;
use agent_core::repos::{Passphrase, RepoSpec};
use agent_core::runner::RunError;

mod borg;
mod rsync;
mod tmutil;

/// Every backup engine. A new engine is a file in this folder (with its `EngineDef`) and one row here.
const ENGINES: [&EngineDef; 3] = [&borg::ENGINE, &rsync::ENGINE, &tmutil::ENGINE];

/// One backup engine: the name a VM's `engine = "…"` gives it, the keys it takes, and its constructor.
pub(crate) struct EngineDef {
    name: &'static str,
    /// Takes `passcommand` (the repository's passphrase command).
    passcommand: bool,
    /// Applies `retention.within` itself.
    keep_within: bool,
    /// Reaches a target over SSH (and limits its upload rate).
    ssh: bool,
    /// Writes to several targets of one VM (Time Machine writes where its own settings say: one target).
    many: bool,
    open: fn(&Spec<'_>) -> Arc<dyn Engine>,
}

/// What an engine is opened with: one VM and one of its targets.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub vm: &'a str,
    pub target: &'a RepoSpec,
    /// The passphrase source of a target that names none (the VM's `passcommand`).
    pub passphrase: &'a Passphrase,
    /// The VM's bundle (where Time Machine finds it again inside a backup).
    pub bundle: &'a Path,
    /// The `tmutil` program (the `timemachine` engine).
    pub tmutil: &'a Path,
}

impl Spec<'_> {
    /// How errors name the target: its label and location.
    pub fn name(&self) -> String {
        target_name(self.target)
    }
}

/// "`offsite` (borg@backup.example:lab)": a target as messages name it.
pub(crate) fn target_name(t: &RepoSpec) -> String {
    format!("`{}` ({})", t.label, t.url())
}

/// An engine of [`ENGINES`], as a config names it (deserialized from its name).
#[derive(Clone, Copy)]
pub struct EngineKind(&'static EngineDef);

impl EngineKind {
    /// The engine called `name`, if there is one.
    pub fn named(name: &str) -> Option<EngineKind> {
        ENGINES.iter().find(|d| d.name == name).map(|d| EngineKind(d))
    }

    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    /// Whether it takes `passcommand`.
    pub fn takes_passcommand(self) -> bool {
        self.0.passcommand
    }

    /// Whether it applies `retention.within`.
    pub fn keeps_within(self) -> bool {
        self.0.keep_within
    }

    /// Whether it reaches SSH targets (and applies `upload_ratelimit`).
    pub fn reaches_ssh(self) -> bool {
        self.0.ssh
    }

    /// Whether a VM may give it several targets.
    pub fn many_targets(self) -> bool {
        self.0.many
    }

    /// The names of the engines for which `has` holds, in `ENGINES` order (for error messages).
    pub fn names_where(has: fn(EngineKind) -> bool) -> Vec<&'static str> {
        ENGINES.iter().map(|d| EngineKind(d)).filter(|k| has(*k)).map(EngineKind::as_str).collect()
    }

    /// This engine for one VM.
    pub fn open(self, spec: &Spec<'_>) -> Arc<dyn Engine> {
        (self.0.open)(spec)
    }
}

impl PartialEq for EngineKind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for EngineKind {}

impl std::fmt::Debug for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineKind({:?})", self.0.name)
    }
}

impl<'de> serde::Deserialize<'de> for EngineKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = EngineKind;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a backup engine name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<EngineKind, E> {
                // The words of serde's derived enums, so that the message reads as every other unknown value's.
                EngineKind::named(s).ok_or_else(|| {
                    let names: Vec<String> = ENGINES.iter().map(|d| format!("`{}`", d.name)).collect();
                    E::custom(format!("unknown variant `{s}`, expected one of {}", names.join(", ")))
                })
            }
        }
        d.deserialize_str(Name)
    }
}

pub(crate) type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// One stored backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: String,
    pub time_unix: i64,
    /// Bytes of the source as stored (0 when the engine does not say).
    pub size: u64,
}

/// Every error names its target as [`target_name`] does (label and location).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("backup target {target} does not exist")]
    MissingTarget { target: String },
    #[error("backup target {target}: {source}")]
    Run { target: String, source: RunError },
    #[error("backup target {target}: {message}")]
    Failed { target: String, message: String },
    #[error("backup target {target}: no backup `{id}`")]
    NoSuchBackup { target: String, id: String },
    #[error("backup target {target}: ssh to {host}: {failure}")]
    Ssh { target: String, host: String, failure: agent_core::ssh::SshFailure },
    #[error("backup target {target}: {}: {source}", path.display())]
    Io { target: String, path: PathBuf, source: std::io::Error },
}

/// Where backups of one VM go: one target.
pub trait Engine: Send + Sync {
    /// The target as messages name it ([`target_name`]).
    fn target(&self) -> &str;
    /// Backs up the directory `src` as backup `id`.
    fn create<'a>(&'a self, src: &'a Path, id: &'a str) -> EngineFuture<'a, BackupInfo>;
    /// [`Engine::create`], reporting the bytes it moves to `rep` where the engine can measure them (borg).
    fn create_reporting<'a>(&'a self, src: &'a Path, id: &'a str, rep: &'a Reporter) -> EngineFuture<'a, BackupInfo> {
        let _ = rep;
        self.create(src, id)
    }
    /// [`Engine::create_reporting`] of a copy-on-write clone of the bundle, made afresh for every backup at the same
    /// path with the bundle's mtimes (new inodes, new ctimes): an engine that knows unchanged files by inode or
    /// ctime compares mtime and size instead, so that the clone's unchanged files are not read again (borg; rsync
    /// compares size and mtime already).
    fn create_clone<'a>(&'a self, src: &'a Path, id: &'a str, rep: &'a Reporter) -> EngineFuture<'a, BackupInfo> {
        self.create_reporting(src, id, rep)
    }
    /// Backups of this VM, oldest first.
    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>>;
    /// Applies retention (and frees space where the engine needs it).
    fn prune<'a>(&'a self, retention: &'a Retention) -> EngineFuture<'a, ()>;
    /// Restores backup `id` into the existing empty directory `dest`.
    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()>;
    /// [`Engine::extract`], reporting the bytes it moves to `rep` where the engine can measure them (borg).
    fn extract_reporting<'a>(&'a self, id: &'a str, dest: &'a Path, rep: &'a Reporter) -> EngineFuture<'a, ()> {
        let _ = rep;
        self.extract(id, dest)
    }
    /// What tells the target's repository from another one put at the same place (borg: the repository id);
    /// `None` for an engine whose target has no such identity (rsync, Time Machine).
    fn repository_id(&self) -> EngineFuture<'_, Option<String>> {
        Box::pin(async { Ok(None) })
    }
    /// The files backup `id` holds (borg: `borg list --json-lines`). Only Borg targets list files: an rsync
    /// target's backup is a plain directory on the target, and Time Machine's are browsed with `tmutil`.
    fn files<'a>(&'a self, id: &'a str) -> EngineFuture<'a, Vec<agent_core::borg::FileEntry>> {
        Box::pin(async move {
            Err(EngineError::Failed {
                target: self.target().to_string(),
                message: format!(
                    "cannot list the files of backup `{id}`: only Borg targets list files (an rsync target's backup \
                     is a plain directory on the target; Time Machine's are browsed with `tmutil`)"
                ),
            })
        })
    }
}

/// The id of the backup of `vm` taken at `unix`: `VM-YYYYMMDDTHHMMSSZ` (UTC).
pub(crate) fn backup_id(vm: &str, unix: i64) -> String {
    format!("{vm}-{}", stamp(unix))
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
pub(crate) fn stamp(unix: i64) -> String {
    let (y, m, d) = civil(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// The Unix time of a backup id of `vm`, if it is one.
pub(crate) fn parse_backup_id(vm: &str, id: &str) -> Option<i64> {
    let s = id.strip_prefix(vm)?.strip_prefix('-')?;
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(4..6)?, n(6..8)?, n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se)
}

/// The backups to keep under `r` (borg prune semantics): the `last` newest, then per rule the newest backup of each
/// of the N most recent hours/days/weeks/months/years that have one. An empty retention keeps everything.
pub(crate) fn keep(backups: &[BackupInfo], r: &Retention) -> HashSet<String> {
    if r.is_empty() {
        return backups.iter().map(|b| b.id.clone()).collect();
    }
    let mut newest_first: Vec<&BackupInfo> = backups.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(b.time_unix));
    let mut kept: HashSet<String> = newest_first.iter().take(r.last as usize).map(|b| b.id.clone()).collect();
    let day = |t: i64| t.div_euclid(86_400);
    let rules: [(u32, &dyn Fn(i64) -> i64); 5] = [
        (r.hourly, &|t| t.div_euclid(3600)),
        (r.daily, &day),
        // 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday.
        (r.weekly, &|t| (day(t) + 3).div_euclid(7)),
        (r.monthly, &|t| {
            let (y, m, _) = civil(day(t));
            y * 12 + i64::from(m)
        }),
        (r.yearly, &|t| civil(day(t)).0),
    ];
    for (n, bucket) in rules {
        let mut seen = HashSet::new();
        for b in &newest_first {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(b.time_unix)) {
                kept.insert(b.id.clone());
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::repos::RawRepo;

    #[test]
    fn engines_are_named_once_and_open_by_name() {
        use serde::de::value::{Error, StrDeserializer};
        use serde::Deserialize;
        let name = StrDeserializer::<Error>::new;
        let names: Vec<&str> = ENGINES.iter().map(|d| d.name).collect();
        assert_eq!(names, ["borg", "rsync", "timemachine"]);
        let cfg = Path::new("/etc/strata/host-agent.toml");
        let target = agent_core::repos::validate_one(cfg, "t", &RawRepo::shorthand("/b/lab")).unwrap();
        for n in names {
            let k = EngineKind::named(n).unwrap();
            assert_eq!(k.as_str(), n);
            assert_eq!(EngineKind::deserialize(name(n)).unwrap(), k);
            let spec = Spec {
                vm: "lab",
                target: &target,
                passphrase: &Passphrase::None,
                bundle: Path::new("/vms/lab"),
                tmutil: Path::new("tmutil"),
            };
            assert_eq!(k.open(&spec).target(), "`default` (/b/lab)");
        }
        assert_eq!(EngineKind::names_where(EngineKind::takes_passcommand), ["borg"]);
        assert_eq!(EngineKind::names_where(EngineKind::keeps_within), ["borg"]);
        assert_eq!(EngineKind::names_where(EngineKind::reaches_ssh), ["borg", "rsync"]);
        assert_eq!(EngineKind::names_where(EngineKind::many_targets), ["borg", "rsync"]);
        let e = EngineKind::deserialize(name("tape")).unwrap_err().to_string();
        assert_eq!(e, "unknown variant `tape`, expected one of `borg`, `rsync`, `timemachine`");
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(stamp(0), "19700101T000000Z");
        assert_eq!(backup_id("lab", 1_795_629_427), "lab-20261125T175707Z");
        assert_eq!(parse_backup_id("lab", "lab-20261125T175707Z"), Some(1_795_629_427));
        for t in [0, 951_782_400, 4_102_444_799] {
            assert_eq!(parse_backup_id("x", &backup_id("x", t)), Some(t));
        }
        assert_eq!(parse_backup_id("lab", "lab2-20261125T175707Z"), None);
        assert_eq!(parse_backup_id("lab", "lab-20261325T175707Z"), None);
        assert_eq!(parse_backup_id("lab", "lab-latest"), None);
    }

    #[test]
    fn retention_keeps_the_newest_per_period() {
        let day = 86_400;
        // One backup a day for 60 days starting on Monday 2026-01-05.
        let start = parse_backup_id("v", "v-20260105T040000Z").unwrap();
        let all: Vec<BackupInfo> = (0..60)
            .map(|i| BackupInfo { id: backup_id("v", start + i * day), time_unix: start + i * day, size: 0 })
            .collect();
        let k = keep(&all, &Retention { last: 2, ..Default::default() });
        assert_eq!(k.len(), 2);
        assert!(k.contains(&all[59].id) && k.contains(&all[58].id));
        let k = keep(&all, &Retention { weekly: 4, monthly: 6, ..Default::default() });
        // Weekly (Monday weeks): Mar 5, Mar 1, Feb 22, Feb 15; monthly: Mar 5, Feb 28, Jan 31.
        let mut ids: Vec<&String> = k.iter().collect();
        ids.sort();
        let want = [
            "v-20260131T040000Z",
            "v-20260215T040000Z",
            "v-20260222T040000Z",
            "v-20260228T040000Z",
            "v-20260301T040000Z",
            "v-20260305T040000Z",
        ];
        assert_eq!(ids, want.iter().collect::<Vec<_>>(), "{k:?}");
        assert_eq!(keep(&all, &Retention::default()).len(), 60);
    }
}
