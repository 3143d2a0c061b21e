//! Time Machine on macOS through `tmutil`: make sure the directory being backed up is not excluded
//! (`isexcluded` / `removeexclusion`), `startbackup --block`, `latestbackup`, `listbackups`.
//! Knows the tmutil CLI; must not know hypervisors. NOT tested against a real tmutil (no macOS here): the parsers
//! are tested on the documented output shapes only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_core::borg::Retention;
use agent_core::runner::{self, Cmd};

use super::{BackupInfo, Engine, EngineDef, EngineError, EngineFuture, Spec};

pub(super) const TMUTIL_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

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
}

impl TimeMachine {
    pub(super) fn new(spec: &Spec<'_>) -> Self {
        TimeMachine { target: spec.name() }
    }

    async fn tmutil(&self, args: &[&str], path: Option<&Path>) -> Result<String, EngineError> {
        let mut c = Cmd::new("tmutil").args(args).timeout(TMUTIL_TIMEOUT);
        if let Some(p) = path {
            c = c.arg(p);
        }
        let out = runner::run_ok(c).await.map_err(|source| EngineError::Run { target: self.target.clone(), source })?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
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

/// `tmutil listbackups` prints one backup path per line, oldest first, named `…/YYYY-MM-DD-HHMMSS[.backup]`.
pub(super) fn parse_listbackups(out: &str) -> Vec<BackupInfo> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(|l| BackupInfo { id: l.to_string(), time_unix: backup_time(l).unwrap_or(0), size: 0 })
        .collect()
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

impl Engine for TimeMachine {
    fn target(&self) -> &str {
        &self.target
    }

    fn create<'a>(&'a self, src: &'a Path, _id: &'a str) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            let out = self.tmutil(&["isexcluded"], Some(src)).await?;
            match parse_isexcluded(&out) {
                Some(false) => {}
                Some(true) => {
                    self.tmutil(&["removeexclusion"], Some(src)).await?;
                }
                None => {
                    return Err(EngineError::Failed {
                        target: self.target.clone(),
                        message: format!("cannot read `tmutil isexcluded` output: {}", out.trim()),
                    })
                }
            }
            self.tmutil(&["startbackup", "--block"], None).await?;
            let latest = self.tmutil(&["latestbackup"], None).await?;
            parse_listbackups(&latest).pop().ok_or_else(|| EngineError::Failed {
                target: self.target.clone(),
                message: "tmutil latestbackup named no backup after startbackup --block".into(),
            })
        })
    }

    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>> {
        Box::pin(async move { Ok(parse_listbackups(&self.tmutil(&["listbackups"], None).await?)) })
    }

    fn prune<'a>(&'a self, _r: &'a Retention) -> EngineFuture<'a, ()> {
        // Time Machine thins its own backups; strata does not delete them.
        Box::pin(async { Ok(()) })
    }

    fn extract<'a>(&'a self, id: &'a str, _dest: &'a Path) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            Err(EngineError::Failed {
                target: self.target.clone(),
                message: format!("restoring from Time Machine is not built: use `tmutil restore` from {id}"),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse() {
        assert_eq!(parse_isexcluded("[Excluded]    /Volumes/VMs/strata-clone-x\n"), Some(true));
        assert_eq!(parse_isexcluded("[Included]    /Volumes/VMs/strata-clone-x\n"), Some(false));
        assert_eq!(parse_isexcluded("garbage"), None);
        let out = "/Volumes/.timemachine/ABC/2026-11-24-040012.backup/2026-11-24-040012.backup\n\
                   /Volumes/.timemachine/ABC/2026-11-25-040007.backup/2026-11-25-040007.backup\n";
        let v = parse_listbackups(out);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].time_unix, crate::engine::parse_backup_id("t", "t-20261125T040007Z").unwrap());
    }
}
