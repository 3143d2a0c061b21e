//! A backup run's guest freeze: the guest's file systems frozen through its agent just before the quiesce (journaled
//! first) and thawed right after the resume, with what that makes the copy (file-system consistent, or
//! crash-consistent and why). Knows the order freeze → quiesce → resume → thaw and the journal's freeze row; must
//! not know any guest agent's protocol (the hypervisor backend speaks it) nor proto types.

use std::time::Instant;

use agent_core::jobs::Reporter;

use super::{send, Host, HostError};
use crate::hypervisor::{GuestFreeze, Hypervisor};
use crate::journal::step;

impl Host {
    /// Asks the guest's agent (if one answers) to freeze the guest's file systems, journaled first. Returns the
    /// freeze row to close once thawed (`None`: nothing is frozen) and says in `consistency` what the copy will be.
    /// A freeze that fails or times out is thawed at once (the agent may have frozen some) and the run goes on
    /// crash-consistent, with a warning.
    pub(super) async fn freeze_journaled(
        &self,
        name: &str,
        hv: &dyn Hypervisor,
        tx: &Reporter,
        consistency: &mut String,
        warnings: &mut Vec<String>,
    ) -> Result<Option<i64>, HostError> {
        let jf = self.journal.begin(name, step::FREEZE, "guest agent")?;
        let t0 = Instant::now();
        match hv.freeze_guest().await {
            Ok(GuestFreeze::Frozen(n)) => {
                let plural = if n == 1 { "" } else { "s" };
                *consistency = format!("consistency: file systems frozen by the guest agent ({n} file system{plural})");
                let took = t0.elapsed().as_secs_f64();
                send(
                    tx,
                    "freeze",
                    1,
                    6,
                    format!("vm {name}: the guest agent froze {n} file system{plural} in {took:.3}s"),
                )
                .await;
                Ok(Some(jf))
            }
            Ok(GuestFreeze::NoAgent(why)) => {
                self.journal.done(jf)?;
                *consistency = format!("crash-consistent: no guest agent ({why})");
                send(tx, "freeze", 1, 6, format!("vm {name}: {consistency}")).await;
                Ok(None)
            }
            Err(e) => {
                *consistency = "crash-consistent: the guest agent did not freeze the file systems".into();
                let thawed = self.thaw_journaled(name, hv, jf).await;
                warnings.push(match &thawed {
                    Ok(()) => {
                        format!("freezing the guest's file systems failed ({e}): thawed, backing up crash-consistent")
                    }
                    Err(t) => format!("freezing the guest's file systems failed ({e}); {t}: retried after the resume"),
                });
                tracing::warn!(vm = name, "{}", warnings.last().map(String::as_str).unwrap_or(""));
                Ok(thawed.err().map(|_| jf))
            }
        }
    }

    /// Thaws the guest's file systems and closes their freeze row `jf`; on failure the row stays open (the next
    /// start thaws them).
    pub(super) async fn thaw_journaled(&self, name: &str, hv: &dyn Hypervisor, jf: i64) -> Result<(), String> {
        match hv.thaw_guest().await {
            Ok(n) => {
                tracing::info!(vm = name, thawed = ?n, "guest file systems thawed");
                self.journal
                    .done(jf)
                    .map_err(|e| format!("the journal could not be written ({e}); the guest was thawed first"))
            }
            Err(e) => Err(format!("thawing the guest's file systems failed: {e}")),
        }
    }
}
