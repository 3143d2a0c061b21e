//! Host coordination: the gate between backup jobs and the host agent's lease. `prepare` takes a lease (new jobs
//! wait from then on) and returns once the running jobs have finished; jobs wait at `enter` while a lease is live,
//! until it is released or expires. Knows time and counting; must not know what a job does, nor gRPC.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

/// The longest lease a host may take (a VM backup that takes longer renews it).
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub id: String,
    pub expires_unix: i64,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    lease: Option<(String, Instant)>,
    next_id: u64,
}

impl State {
    /// The live lease's deadline; an expired lease is dropped.
    fn live(&mut self) -> Option<Instant> {
        match &self.lease {
            Some((_, until)) if *until > Instant::now() => Some(*until),
            Some((id, _)) => {
                tracing::warn!(lease = %id, "host backup lease expired without a release; backups go on");
                self.lease = None;
                None
            }
            None => None,
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

/// A running job; dropping it lets a waiting `prepare` go on.
#[derive(Debug)]
pub(crate) struct JobGuard<'a> {
    gate: &'a Gate,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.gate.lock().running -= 1;
        self.gate.changed.notify_waiters();
    }
}

fn unix_after(d: Duration) -> i64 {
    (std::time::SystemTime::now() + d).duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while a host lease is live, then counts the job as running. `on_wait` is called once if it must wait.
    pub(crate) async fn enter(&self, on_wait: impl FnOnce(&str)) -> JobGuard<'_> {
        let mut on_wait = Some(on_wait);
        loop {
            let notified = self.changed.notified();
            let until = {
                let mut s = self.lock();
                match s.live() {
                    None => {
                        s.running += 1;
                        return JobGuard { gate: self };
                    }
                    Some(until) => {
                        if let (Some(f), Some((id, _))) = (on_wait.take(), s.lease.as_ref()) {
                            f(id);
                        }
                        until
                    }
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Takes a lease of `duration` (new jobs wait from now on) and waits until no job is running. A second prepare
    /// while a lease is live replaces it (the host renews). Cancelling the returned future leaves the lease in place
    /// until it expires.
    pub(crate) async fn prepare(&self, duration: Duration) -> Lease {
        let duration = duration.min(MAX_LEASE);
        let id = {
            let mut s = self.lock();
            s.next_id += 1;
            let id = format!("lease-{}-{}", std::process::id(), s.next_id);
            s.lease = Some((id.clone(), Instant::now() + duration));
            id
        };
        tracing::info!(lease = %id, ?duration, "host backup lease taken; waiting for running jobs");
        loop {
            let notified = self.changed.notified();
            if self.lock().running == 0 {
                break;
            }
            notified.await;
        }
        Lease { id, expires_unix: unix_after(duration) }
    }

    /// Ends the lease `id`; false when it is not the live lease (already expired or replaced).
    pub(crate) fn release(&self, id: &str) -> bool {
        let released = {
            let mut s = self.lock();
            match &s.lease {
                Some((live, _)) if live == id => {
                    s.lease = None;
                    true
                }
                _ => false,
            }
        };
        if released {
            tracing::info!(lease = %id, "host backup lease released");
            self.changed.notify_waiters();
        }
        released
    }

    /// The live lease's id, if any.
    pub(crate) fn current(&self) -> Option<String> {
        let mut s = self.lock();
        s.live()?;
        s.lease.as_ref().map(|(id, _)| id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_lease_waits_for_running_jobs_and_holds_new_ones_until_release_or_expiry() {
        let gate = Arc::new(Gate::default());
        let job = gate.enter(|_| panic!("no lease yet")).await;
        let g = gate.clone();
        let prepare = tokio::spawn(async move { g.prepare(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!prepare.is_finished(), "prepare must wait for the running job");
        drop(job);
        let lease = prepare.await.unwrap();
        assert_eq!(gate.current().as_deref(), Some(lease.id.as_str()));

        // A new job waits until the release.
        let g = gate.clone();
        let waiter = tokio::spawn(async move {
            let mut waited = false;
            let _j = g.enter(|_| waited = true).await;
            waited
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        assert!(!gate.release("lease-other"));
        assert!(gate.release(&lease.id));
        assert!(waiter.await.unwrap(), "the job was told it waited");

        // Or until expiry.
        let lease = gate.prepare(Duration::from_secs(30)).await;
        let start = tokio::time::Instant::now();
        let _j = gate.enter(|_| {}).await;
        assert!(start.elapsed() >= Duration::from_secs(29), "{:?}", start.elapsed());
        assert!(gate.current().is_none());
        assert!(!gate.release(&lease.id), "an expired lease is gone");
    }
}
