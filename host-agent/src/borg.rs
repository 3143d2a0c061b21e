//! Borg 1.2: one repository per VM, an archive per run (`create --json`), `list --json`, `prune` + `compact`,
//! `extract`. The passphrase comes from the configured `BORG_PASSCOMMAND`, handed over in the environment, never argv.
//! Knows the borg CLI and its JSON; must not know hypervisors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd};
use serde::Deserialize;

use crate::config::{EngineKind, Retention, VmConfig};
use crate::engine::{parse_backup_id, BackupInfo, Engine, EngineError, EngineFuture};

/// A backup of a large disk can take long; the timeout only catches a hung borg.
pub const BORG_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct Borg {
    vm: String,
    repo: PathBuf,
    passcommand: Option<String>,
}

impl Borg {
    pub fn new(vm: &VmConfig) -> Self {
        Borg { vm: vm.name.clone(), repo: vm.target.clone(), passcommand: vm.passcommand.clone() }
    }

    fn cmd(&self) -> Cmd {
        let mut c = Cmd::new("borg").timeout(BORG_TIMEOUT).env("BORG_DISPLAY_PASSPHRASE", "no");
        if let Some(p) = &self.passcommand {
            c = c.secret_env("BORG_PASSCOMMAND", p);
        }
        c
    }

    fn check_repo(&self) -> Result<(), EngineError> {
        if !self.repo.join("config").is_file() {
            return Err(EngineError::MissingTarget { target: self.repo.clone() });
        }
        Ok(())
    }

    fn err(&self) -> impl Fn(agent_core::runner::RunError) -> EngineError + '_ {
        move |source| EngineError::Run { target: self.repo.clone(), source }
    }

    fn archive(&self, id: &str) -> String {
        format!("{}::{id}", self.repo.display())
    }
}

impl Engine for Borg {
    fn kind(&self) -> EngineKind {
        EngineKind::Borg
    }

    fn target(&self) -> &Path {
        &self.repo
    }

    fn create<'a>(&'a self, src: &'a Path, id: &'a str) -> EngineFuture<'a, BackupInfo> {
        Box::pin(async move {
            self.check_repo()?;
            // Archived relative to the bundle (cwd), so that an extract yields the bundle's files directly.
            let cmd = self.cmd().args(["create", "--json", "--lock-wait", "60", "--sparse"]);
            let cmd = cmd.arg(self.archive(id)).arg(".").current_dir(src);
            let out = runner::run_ok(cmd).await.map_err(self.err())?;
            let size = parse_create(&out.stdout)
                .map_err(|message| EngineError::Failed { target: self.repo.clone(), message })?;
            Ok(BackupInfo { id: id.to_string(), time_unix: parse_backup_id(&self.vm, id).unwrap_or(0), size })
        })
    }

    fn list(&self) -> EngineFuture<'_, Vec<BackupInfo>> {
        Box::pin(async move {
            self.check_repo()?;
            let cmd = self.cmd().args(["list", "--json", "--lock-wait", "60"]).arg(&self.repo);
            let out = runner::run_ok(cmd).await.map_err(self.err())?;
            let names = parse_list(&out.stdout)
                .map_err(|message| EngineError::Failed { target: self.repo.clone(), message })?;
            let mut v: Vec<BackupInfo> = names
                .into_iter()
                .filter_map(|n| parse_backup_id(&self.vm, &n).map(|t| BackupInfo { id: n, time_unix: t, size: 0 }))
                .collect();
            v.sort_by_key(|b| b.time_unix);
            Ok(v)
        })
    }

    fn prune<'a>(&'a self, r: &'a Retention) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if r.is_empty() {
                return Ok(());
            }
            self.check_repo()?;
            let cmd = self.cmd().args(prune_args(&self.vm, r)).arg(&self.repo);
            runner::run_ok(cmd).await.map_err(self.err())?;
            runner::run_ok(self.cmd().args(["compact", "--lock-wait", "60"]).arg(&self.repo))
                .await
                .map_err(self.err())?;
            Ok(())
        })
    }

    fn extract<'a>(&'a self, id: &'a str, dest: &'a Path) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            self.check_repo()?;
            let cmd = self.cmd().args(["extract", "--sparse", "--lock-wait", "60"]).arg(self.archive(id));
            match runner::run_ok(cmd.current_dir(dest)).await {
                Ok(_) => Ok(()),
                Err(agent_core::runner::RunError::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                    Err(EngineError::NoSuchBackup { target: self.repo.clone(), id: id.to_string() })
                }
                Err(e) => Err(self.err()(e)),
            }
        })
    }
}

/// `borg prune` arguments for `r`, limited to this VM's archives.
pub fn prune_args(vm: &str, r: &Retention) -> Vec<String> {
    let mut a =
        vec!["prune".to_string(), "--lock-wait".into(), "60".into(), "--glob-archives".into(), format!("{vm}-*")];
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
    archive: ArchiveJson,
}

#[derive(Deserialize)]
struct ArchiveJson {
    stats: StatsJson,
}

#[derive(Deserialize)]
struct StatsJson {
    original_size: u64,
}

/// The original size from `borg create --json`.
pub fn parse_create(out: &[u8]) -> Result<u64, String> {
    let v: CreateJson = serde_json::from_slice(out).map_err(|e| format!("cannot parse `borg create --json`: {e}"))?;
    Ok(v.archive.stats.original_size)
}

#[derive(Deserialize)]
struct ListJson {
    archives: Vec<ListEntry>,
}

#[derive(Deserialize)]
struct ListEntry {
    name: String,
}

/// Archive names from `borg list --json REPO`.
pub fn parse_list(out: &[u8]) -> Result<Vec<String>, String> {
    let v: ListJson = serde_json::from_slice(out).map_err(|e| format!("cannot parse `borg list --json`: {e}"))?;
    Ok(v.archives.into_iter().map(|a| a.name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from borg 1.2.4 (Debian) on this machine.
    const CREATE: &str = r#"{
    "archive": {
        "command_line": ["/usr/bin/borg", "create", "--json", "/tmp/bcap/r::lab-20261125T175707Z", "."],
        "duration": 0.034582,
        "end": "2026-11-25T18:07:06.000000",
        "id": "e577bb4ab3866b9fc079a6f943bf99fe22349ea3cc2422f54ec8795df4923517",
        "limits": {"max_archive_size": 2.4986315938899684e-05},
        "name": "lab-20261125T175707Z",
        "start": "2026-11-25T18:07:06.000000",
        "stats": {"compressed_size": 100567, "deduplicated_size": 100567, "nfiles": 1, "original_size": 100527}
    },
    "cache": {
        "path": "/tmp/bcap/base/.cache/borg/b6c005fa1432698cfea838f269182afd507a3531be00534f0c8a210b198b74e6",
        "stats": {"total_chunks": 3, "total_csize": 100043, "total_size": 100000, "total_unique_chunks": 3,
                  "unique_csize": 100800, "unique_size": 100769}
    },
    "encryption": {"mode": "repokey"},
    "repository": {"id": "b6c005fa1432698cfea838f269182afd507a3531be00534f0c8a210b198b74e6",
                   "last_modified": "2026-11-25T18:07:06.000000", "location": "/tmp/bcap/r"}
}"#;
    const LIST: &str = r#"{
    "archives": [{"archive": "lab-20261125T175707Z", "barchive": "lab-20261125T175707Z",
                  "id": "e577bb4ab3866b9fc079a6f943bf99fe22349ea3cc2422f54ec8795df4923517",
                  "name": "lab-20261125T175707Z", "start": "2026-11-25T18:07:06.000000",
                  "time": "2026-11-25T18:07:06.000000"}],
    "encryption": {"mode": "repokey"},
    "repository": {"id": "b6c005fa1432698cfea838f269182afd507a3531be00534f0c8a210b198b74e6",
                   "last_modified": "2026-11-25T18:07:06.000000", "location": "/tmp/bcap/r"}
}"#;

    #[test]
    fn json_outputs_parse() {
        assert_eq!(parse_create(CREATE.as_bytes()).unwrap(), 100_527);
        assert_eq!(parse_list(LIST.as_bytes()).unwrap(), vec!["lab-20261125T175707Z"]);
        assert!(parse_create(b"{}").unwrap_err().contains("borg create --json"));
    }

    #[test]
    fn prune_args_follow_retention() {
        let r = Retention { weekly: 4, monthly: 6, ..Default::default() };
        assert_eq!(
            prune_args("services", &r).join(" "),
            "prune --lock-wait 60 --glob-archives services-* --keep-weekly 4 --keep-monthly 6"
        );
    }
}
