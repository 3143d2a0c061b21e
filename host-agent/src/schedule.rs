//! Scheduled backups: the loop that starts each VM's backup when its schedule (an `agent_core::cron::Cron`, read in
//! the config's `timezone`) comes due, and once at start for a VM with `catch_up` whose scheduled time passed while
//! the agent was down. Knows when to start backups; must not know cron syntax or how a backup is done (it calls
//! `backup::Host`).

use std::sync::Arc;
use std::time::Duration;

use agent_core::clock::now_unix;
use agent_core::cron::Cron;

use crate::backup::Host;
use crate::config::Config;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(15);

/// Runs forever: every VM with a `schedule` is backed up each time it comes due. A run still going when the next one
/// is due makes the next one fail as busy (logged), never run twice at once. Several due times passed between two
/// ticks (the machine slept) start one run; due times passed while the agent was stopped start one run at start,
/// for VMs with `catch_up` only. After a reload the plans are read again at the next tick: a VM whose schedule did
/// not change keeps its next due time, a new or changed one is due at its next time from then.
pub(crate) async fn run(host: Arc<Host>) {
    let mut cfg = host.config();
    let mut plans = plans_of(&cfg);
    let now = now_unix();
    let mut next: Vec<Option<i64>> = plans.iter().map(|p| p.cron.next_after(now, &cfg.timezone)).collect();
    for p in &plans {
        if p.catch_up && p.cron.missed(&cfg.timezone, host.last_attempt(&p.vm), now) {
            tracing::info!(vm = %p.vm, "catch-up: a scheduled backup came due while the agent was down");
            start(&host, &p.vm);
        }
    }
    loop {
        tokio::time::sleep(TICK).await;
        let now = now_unix();
        let running = host.config();
        if !Arc::ptr_eq(&running, &cfg) {
            let new = plans_of(&running);
            next = new
                .iter()
                .map(|p| match plans.iter().position(|o| o.vm == p.vm && o.text == p.text) {
                    Some(i) if running.timezone == cfg.timezone => next[i],
                    _ => p.cron.next_after(now, &running.timezone),
                })
                .collect();
            (plans, cfg) = (new, running);
        }
        for (p, due) in plans.iter().zip(next.iter_mut()) {
            if due.is_some_and(|d| d <= now) {
                start(&host, &p.vm);
                *due = p.cron.next_after(now, &cfg.timezone);
            }
        }
    }
}

/// One VM's schedule.
struct Plan {
    vm: String,
    /// The schedule as written (a reload that keeps it keeps the VM's next due time).
    text: String,
    cron: Cron,
    catch_up: bool,
}

fn plans_of(cfg: &Config) -> Vec<Plan> {
    cfg.vms
        .iter()
        .filter_map(|v| v.schedule.as_ref().map(|s| (v, s)))
        .filter_map(|(v, s)| match Cron::parse(s) {
            Ok(cron) => Some(Plan { vm: v.name.clone(), text: s.clone(), cron, catch_up: v.catch_up }),
            Err(e) => {
                tracing::error!(vm = %v.name, "schedule `{s}` ignored: {e}");
                None
            }
        })
        .collect()
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
