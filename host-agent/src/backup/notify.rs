//! What a VM's jobs tell its notification targets (the global `[[notify]]` ones and the VM's own), through the one
//! notification module `agent_core::notify`: a backup's start and end, a restore's or a drill's end (success, failure
//! or cancellation, with the backup id, the downtime and the duration). Knows which outcome is told how; must not know
//! how a job runs, HTTP or the targets' conventions (healthchecks, ntfy, webhook: `agent_core::notify`), and never
//! fails a job: a target that is down costs at most `agent_core::notify::REQUEST_TIMEOUT`.

use std::time::{Duration, Instant};

use agent_core::notify::{self, Event, Layer, NotifyTarget, Phase};

use super::{BackupReport, DrillReport, Host, HostError, RestoreReport};
use crate::config::VmConfig;

/// What this agent's notifications are about: VMs.
pub(crate) const LAYER: Layer = Layer::Host;

/// The job kinds told (the webhook's `job`): `backup` is the one healthchecks targets hear of.
pub(super) const BACKUP: &str = notify::HEARTBEAT_JOB;
pub(super) const RESTORE: &str = "restore";
pub(super) const DRILL: &str = "drill";

/// What an ended job says: its message, the backup it made or read, the VM's downtime.
pub(super) struct Said {
    message: String,
    archive: String,
    downtime: Duration,
}

impl From<&BackupReport> for Said {
    fn from(r: &BackupReport) -> Said {
        Said { message: r.summary(), archive: r.id.clone(), downtime: r.downtime }
    }
}

impl From<&RestoreReport> for Said {
    fn from(r: &RestoreReport) -> Said {
        Said { message: r.summary(), archive: r.archive.clone(), downtime: Duration::ZERO }
    }
}

impl From<&DrillReport> for Said {
    fn from(r: &DrillReport) -> Said {
        Said::from(&r.restore)
    }
}

impl Said {
    /// The error's text; a partial run also names its backup and the downtime it cost.
    fn of_error(e: &HostError) -> Said {
        let (archive, downtime) = match e {
            HostError::Partial { report } => (report.id.clone(), report.downtime),
            HostError::AllTargets { id, .. } => (id.clone(), Duration::ZERO),
            _ => (String::new(), Duration::ZERO),
        };
        Said { message: e.to_string(), archive, downtime }
    }
}

impl Host {
    /// The global targets, then the VM's own.
    fn notify_targets(&self, vm: &VmConfig) -> Vec<NotifyTarget> {
        self.config().notify.iter().chain(&vm.notify).cloned().collect()
    }

    /// Tells `vm`'s targets that `job` starts.
    pub(super) async fn tell_start(&self, vm: &VmConfig, job: &str) {
        let event = Event::new(LAYER, &vm.name, job, &notify::this_host());
        notify::send(&self.notify_targets(vm), Phase::Start, &event).await;
    }

    /// Tells `vm`'s targets how `job`, started at `started`, ended: its report, or its error (as `cancelled` when the
    /// job was cancelled).
    pub(super) async fn tell_end<'a, T>(
        &self,
        vm: &VmConfig,
        job: &str,
        started: Instant,
        ended: &'a Result<T, HostError>,
    ) where
        Said: From<&'a T>,
    {
        let (phase, said) = match ended {
            Ok(report) => (Phase::Success, Said::from(report)),
            Err(e) => (Phase::of_error(), Said::of_error(e)),
        };
        let event = Event {
            message: said.message,
            archive: said.archive,
            downtime_seconds: said.downtime.as_secs_f64(),
            duration_seconds: started.elapsed().as_secs_f64(),
            ..Event::new(LAYER, &vm.name, job, &notify::this_host())
        };
        notify::send(&self.notify_targets(vm), phase, &event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TargetRun;
    use crate::config::Mode;

    fn report(oks: &[bool]) -> BackupReport {
        let targets = oks
            .iter()
            .enumerate()
            .map(|(i, ok)| TargetRun {
                label: format!("t{i}"),
                url: format!("/b/t{i}"),
                ok: *ok,
                error: if *ok { String::new() } else { "no space left".into() },
                size: 10,
                duration: Duration::from_secs(1),
                warnings: vec![],
            })
            .collect();
        BackupReport {
            vm: "web".into(),
            id: "web-20261205T150000Z".into(),
            started_unix: 0,
            mode_used: Mode::Suspend,
            downtime: Duration::from_millis(1500),
            consistency: String::new(),
            size: 10,
            warnings: vec![],
            targets,
        }
    }

    #[test]
    fn each_outcome_says_its_backup_and_downtime() {
        let cases: Vec<(Said, &str, &str, f64)> = vec![
            (Said::from(&report(&[true])), "vm web backed up as web-20261205T150000Z", "web-20261205T150000Z", 1.5),
            (
                Said::of_error(&HostError::Partial { report: Box::new(report(&[true, false])) }),
                "partly backed up as web-20261205T150000Z: target `t1` failed: no space left",
                "web-20261205T150000Z",
                1.5,
            ),
            (
                Said::of_error(&HostError::AllTargets { vm: "web".into(), id: "web-1".into(), message: "m".into() }),
                "backup web-1 failed on every target",
                "web-1",
                0.0,
            ),
            (Said::of_error(&HostError::Busy("web".into())), "vm web: another operation is running on it", "", 0.0),
        ];
        for (said, message, archive, downtime) in cases {
            assert!(said.message.contains(message), "{message:?} in {:?}", said.message);
            assert_eq!((said.archive.as_str(), said.downtime.as_secs_f64()), (archive, downtime), "{message}");
        }
        assert_eq!((LAYER.as_str(), LAYER.object(), BACKUP), ("host", "vm", "backup"));
    }
}
