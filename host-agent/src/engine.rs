//! The backup `Engine` trait (create, list, prune, extract) shared by borg, rsync and Time Machine, backup ids
//! (`VM-YYYYMMDDTHHMMSSZ`), and the retention rule rsync applies itself. Knows ids and retention; must not know
//! any engine's program or any hypervisor.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use agent_core::cron::{civil, days_from_civil};
use agent_core::runner::RunError;

use crate::config::{EngineKind, Retention, VmConfig};

pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// One stored backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: String,
    pub time_unix: i64,
    /// Bytes of the source as stored (0 when the engine does not say).
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("backup target {} does not exist", target.display())]
    MissingTarget { target: PathBuf },
    #[error("backup target {}: {source}", target.display())]
    Run { target: PathBuf, source: RunError },
    #[error("backup target {}: {message}", target.display())]
    Failed { target: PathBuf, message: String },
    #[error("backup target {}: no backup `{id}`", target.display())]
    NoSuchBackup { target: PathBuf, id: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where backups of one VM go.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;
    fn target(&self) -> &Path;
    /// Backs up the directory `src` as backup `id`.
    fn create<'a>(&'a self, src: &'a Path, id: &'a str) -> EngineFuture<'a, BackupInfo>;
    /// Backups of this VM, oldest first.
    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>>;
    /// Applies retention (and frees space where the engine needs it).
    fn prune<'a>(&'a self, retention: &'a Retention) -> EngineFuture<'a, ()>;
    /// Restores backup `id` into the existing empty directory `dest`.
    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()>;
}

pub fn for_vm(vm: &VmConfig) -> Arc<dyn Engine> {
    match vm.engine {
        EngineKind::Borg => Arc::new(crate::borg::Borg::new(vm)),
        EngineKind::Rsync => Arc::new(crate::rsync::Rsync::new(vm)),
        EngineKind::Timemachine => Arc::new(crate::tmutil::TimeMachine::new(vm)),
    }
}

/// The id of the backup of `vm` taken at `unix`: `VM-YYYYMMDDTHHMMSSZ` (UTC).
pub fn backup_id(vm: &str, unix: i64) -> String {
    format!("{vm}-{}", stamp(unix))
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
pub fn stamp(unix: i64) -> String {
    let (y, m, d) = civil(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// The Unix time of a backup id of `vm`, if it is one.
pub fn parse_backup_id(vm: &str, id: &str) -> Option<i64> {
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
pub fn keep(backups: &[BackupInfo], r: &Retention) -> HashSet<String> {
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
