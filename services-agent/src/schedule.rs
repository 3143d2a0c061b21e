//! Scheduled jobs: each service's backup each time its cron `schedule` (read in the config's `timezone`) comes due,
//! delayed by its fixed jitter; once at start, for a service with `catch_up` whose scheduled time passed while the
//! agent was down (its last backup attempt is older); and its Borg checks when the last one (successful or not) is
//! older than the configured frequency. A service whose previous scheduled run is still going is skipped (logged),
//! never run twice at once. Knows time; must not know how a job is done (it calls `Backups`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::cli::Shutdown;

use crate::backup::{Backups, Reporter};
use crate::journal::{now_unix, Job, Trigger};

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(15);

/// Runs until `shutdown`. See the module docs. Several due times passed between two ticks (the machine slept) start
/// one backup.
pub(crate) async fn run(backups: Arc<Backups>, shutdown: Shutdown) {
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tz = backups.timezone().clone();
    let start = now_unix() as i64;
    // When each scheduled service's backup comes due next, and under which schedule (a reload may change it).
    let mut next: HashMap<String, Option<i64>> = HashMap::new();
    let mut under: HashMap<String, agent_core::cron::Cron> = HashMap::new();
    for name in backups.backed_up() {
        let Ok((_, b)) = &backups.settings(&name) else { continue };
        let Some(cron) = &b.schedule else { continue };
        next.insert(name.clone(), cron.next_after(start, &tz));
        under.insert(name.clone(), cron.clone());
        let last = backups.journal().last_run(&name, Job::Backup).ok().flatten().map(|t| t as i64);
        if b.catch_up && cron.missed(&tz, last, start) {
            tracing::info!(service = %name, "catch-up: a scheduled backup came due while the agent was down");
            spawn_job(&backups, &busy, &name, Job::Backup, agent_core::cron::jitter(&name, b.jitter));
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.clone().wait() => return,
        }
        let now = now_unix() as i64;
        follow_reloads(&backups, &mut tz, &mut next, &mut under, now);
        for (name, due) in next.iter_mut() {
            let Ok((_, b)) = &backups.settings(name) else { continue };
            let Some(cron) = &b.schedule else { continue };
            if due.is_some_and(|d| d <= now) {
                spawn_job(&backups, &busy, name, Job::Backup, agent_core::cron::jitter(name, b.jitter));
                *due = cron.next_after(now, &tz);
            }
        }
        // Checks: due when the last good one is older than the frequency.
        let now = now_unix();
        for name in backups.backed_up() {
            let Ok((_, b)) = &backups.settings(&name) else { continue };
            // Each run checks every repository (with its own kinds): due when the most often checked one is.
            let every = |f: fn(&crate::config::Checks) -> Option<Duration>| {
                b.repos.iter().filter_map(|r| f(&b.checks_of(r))).min()
            };
            for (kind, freq) in [(Job::Check, every(|c| c.repository)), (Job::VerifyData, every(|c| c.verify_data))] {
                let Some(freq) = freq else { continue };
                // The last attempt, good or not: a failing check is retried at its frequency, not every tick.
                let last = backups.journal().last_run(&name, kind).ok().flatten();
                if last.is_none_or(|t| now - t >= freq.as_secs_f64()) {
                    spawn_job(&backups, &busy, &name, kind, Duration::ZERO);
                }
            }
        }
    }
}

/// After a reload: services added with a schedule (or given a new schedule or time zone) are due at their next
/// time from `now`; those dropped or without a schedule any more are no longer scheduled.
fn follow_reloads(
    backups: &Backups,
    tz: &mut agent_core::cron::TimeZone,
    next: &mut HashMap<String, Option<i64>>,
    under: &mut HashMap<String, agent_core::cron::Cron>,
    now: i64,
) {
    let zone = backups.timezone();
    let moved = zone != *tz;
    *tz = zone;
    let mut scheduled = HashSet::new();
    for name in backups.backed_up() {
        let Ok((_, b)) = &backups.settings(&name) else { continue };
        let Some(cron) = &b.schedule else { continue };
        scheduled.insert(name.clone());
        if moved || under.get(&name) != Some(cron) {
            next.insert(name.clone(), cron.next_after(now, tz));
            under.insert(name, cron.clone());
        }
    }
    next.retain(|n, _| scheduled.contains(n));
    under.retain(|n, _| scheduled.contains(n));
}

fn spawn_job(backups: &Arc<Backups>, busy: &Arc<Mutex<HashSet<String>>>, name: &str, kind: Job, delay: Duration) {
    let key = format!("{name}/{kind}");
    if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
        if kind == Job::Backup {
            tracing::warn!(service = name, "scheduled backup skipped: the previous one is still running");
        }
        return;
    }
    let (backups, busy, name) = (backups.clone(), busy.clone(), name.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let rep = Reporter::none();
        // Outcomes are logged, recorded and notified by the jobs themselves.
        let _ = match kind {
            Job::Backup => backups.backup(&name, Trigger::Schedule, &rep).await.map(|_| ()),
            k => backups.check(&name, k, Trigger::Schedule, None, &rep).await.map(|_| ()),
        };
        busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    });
}
