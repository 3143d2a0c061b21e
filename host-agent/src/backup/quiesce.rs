//! How a backup run takes its VM down: the VM's `exclusive` group (one lock per group, held from quiesce to resume,
//! so two VMs of a group are never down together), then ONE journaled quiesce — shut down (stop mode), paused in
//! memory where the backend can (clone mode: `Hypervisor::pause`, falling back to the backend's `quiesce` with a
//! warning), else the backend's `quiesce`. The journal row says how the VM is at each point, so that recovery brings
//! it back the right way. Knows that order; must not know any hypervisor's commands or what follows the quiesce.

use std::time::Instant;

use agent_core::jobs::Reporter;
use tokio::sync::OwnedMutexGuard;

use super::{send, target_error, Host, HostError};
use crate::config::{Mode, VmConfig};
use crate::hypervisor::{HvError, Hypervisor, Quiesced};
use crate::journal::step;

/// A quiesce tried: its open journal row, what that row says, when it began, and how it went.
pub(super) struct Quiesce {
    pub jq: i64,
    /// What the journal row says: how the VM was (or was being) quiesced.
    pub planned: Quiesced,
    pub t0: Instant,
    pub outcome: Result<Quiesced, HvError>,
}

impl Host {
    /// Waits until no other VM of `vm`'s exclusive group is quiesced (saying so in the progress), and holds the
    /// group until the guard is dropped (at resume). `None` for a VM in no group.
    pub(super) async fn exclusive(&self, vm: &VmConfig, tx: &Reporter) -> Option<OwnedMutexGuard<()>> {
        let group = vm.exclusive.as_ref()?;
        let lock = self.group_lock(group);
        if let Ok(g) = lock.clone().try_lock_owned() {
            return Some(g);
        }
        let waiting = format!("waiting: another vm of exclusive group `{group}` is quiesced");
        send(tx, "quiesce", 0, 6, format!("vm {}: {waiting}", vm.name)).await;
        let t0 = Instant::now();
        let g = lock.lock_owned().await;
        let waited = t0.elapsed().as_secs_f64();
        send(tx, "quiesce", 0, 6, format!("vm {}: waited {waited:.1}s for exclusive group `{group}`", vm.name)).await;
        Some(g)
    }

    /// Journals, then quiesces `vm` for a backup in its mode. A failed pause (unsupported, an error, a timeout) is a
    /// warning in `warnings` and the backend's `quiesce` instead, journaled before it is tried. `Err` only when the
    /// journal cannot be written (the VM is then resumed first; the caller thaws what it froze).
    pub(super) async fn quiesce_for_backup(
        &self,
        vm: &VmConfig,
        hv: &dyn Hypervisor,
        tx: &Reporter,
        warnings: &mut Vec<String>,
    ) -> Result<Quiesce, HostError> {
        let name = vm.name.as_str();
        let j = &self.journal;
        let pause = if vm.mode == Mode::Clone { hv.pause() } else { None };
        let mut planned = match (vm.mode, &pause) {
            (Mode::Stop, _) => Quiesced::Stopped,
            (_, Some(_)) => Quiesced::Paused,
            (_, None) => hv.quiesces_as(),
        };
        let jq = j.begin(name, step::QUIESCE, planned.as_str())?;
        let doing = match planned {
            Quiesced::Stopped => "shutting down",
            Quiesced::Suspended => "suspending",
            Quiesced::Paused => "pausing",
        };
        send(tx, "quiesce", 1, 6, format!("{doing} vm {name}")).await;
        let t0 = Instant::now();
        let outcome = match pause {
            _ if vm.mode == Mode::Stop => hv.shutdown().await.map(|()| Quiesced::Stopped),
            Some(pausing) => match pausing.await {
                Ok(()) => Ok(Quiesced::Paused),
                Err(e) => {
                    // A pause that timed out may still happen: the backend's resume brings the VM back from either.
                    planned = hv.quiesces_as();
                    let w = format!(
                        "could not pause ({}): {} instead (a longer downtime)",
                        target_error(name, &HostError::from(e)),
                        planned.as_str()
                    );
                    send(tx, "quiesce", 1, 6, format!("vm {name}: {w}")).await;
                    warnings.push(w);
                    if let Err(e) = j.set_detail(jq, planned.as_str()) {
                        return Err(self.resume_on_journal_error(name, hv, Quiesced::Paused, jq, None, e).await);
                    }
                    hv.quiesce().await
                }
            },
            None => hv.quiesce().await,
        };
        Ok(Quiesce { jq, planned, t0, outcome })
    }
}
