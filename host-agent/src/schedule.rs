//! Scheduled backups: the loop that starts each VM's backup when its schedule (an `agent_core::cron::Cron`, read in
//! the config's `timezone`) comes due, and once at start for a VM with `catch_up` whose scheduled time passed while
//! the agent was down. Knows when to start backups; must not know cron syntax or how a backup is done (it calls
//! `backup::Host`).

use std::sync::Arc;
use std::time::Duration;

use agent_core::clock::now_unix;
use agent_core::cron::Cron;

use crate::backup::Host;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(15);

/// Runs forever: every VM with a `schedule` is backed up each time it comes due. A run still going when the next one
/// is due makes the next one fail as busy (logged), never run twice at once. Several due times passed between two
/// ticks (the machine slept) start one run; due times passed while the agent was stopped start one run at start,
/// for VMs with `catch_up` only.
pub(crate) async fn run(host: Arc<Host>) {
    let tz = host.config().timezone.clone();
    let plans: Vec<(String, Cron, bool)> = host
        .config()
        .vms
        .iter()
        .filter_map(|v| v.schedule.as_ref().map(|s| (v.name.clone(), s, v.catch_up)))
        .filter_map(|(n, s, c)| match Cron::parse(s) {
            Ok(cron) => Some((n, cron, c)),
            Err(e) => {
                tracing::error!(vm = %n, "schedule `{s}` ignored: {e}");
                None
            }
        })
        .collect();
    if plans.is_empty() {
        return;
    }
    let now = now_unix();
    let mut next: Vec<Option<i64>> = plans.iter().map(|(_, c, _)| c.next_after(now, &tz)).collect();
    for (name, cron, catch_up) in &plans {
        if *catch_up && cron.missed(&tz, host.last_attempt(name), now) {
            tracing::info!(vm = %name, "catch-up: a scheduled backup came due while the agent was down");
            start(&host, name);
        }
    }
    loop {
        tokio::time::sleep(TICK).await;
        let now = now_unix();
        for ((name, cron, _), due) in plans.iter().zip(next.iter_mut()) {
            if due.is_some_and(|d| d <= now) {
                start(&host, name);
                *due = cron.next_after(now, &tz);
            }
        }
    }
}

fn start(host: &Arc<Host>, name: &str) {
    let (host, name) = (host.clone(), name.to_string());
    tokio::spawn(async move {
        match host.backup(&name, &agent_core::jobs::Reporter::none()).await {
            Ok(r) => tracing::info!(vm = %name, id = %r.id, downtime = ?r.downtime, "scheduled backup done"),
            Err(e) => tracing::error!(vm = %name, error = %e, "scheduled backup failed"),
        }
    });
}
