//! Scheduled jobs: each service's backup at the minutes its cron `schedule` matches (UTC), delayed by its fixed
//! jitter, and its Borg checks when the last one (successful or not) is older than the configured frequency. A service whose
//! previous scheduled run is still going is skipped for that minute (logged), never run twice at once. Knows time;
//! must not know how a job is done (it calls `Backups`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::cli::Shutdown;

use crate::backup::{Backups, Reporter};
use crate::journal::now_unix;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(15);

/// Runs until `shutdown`. See the module docs.
pub async fn run(backups: Arc<Backups>, shutdown: Shutdown) {
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last_minute = (now_unix() as i64) / 60;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.clone().wait() => return,
        }
        let minute = (now_unix() as i64) / 60;
        for m in (last_minute + 1)..=minute {
            for name in backups.backed_up() {
                let Ok((_, b)) = backups.settings(&name) else { continue };
                if !b.schedule.as_ref().is_some_and(|c| c.matches(m * 60)) {
                    continue;
                }
                let jitter = agent_core::cron::jitter(&name, b.jitter);
                spawn_job(&backups, &busy, &name, "backup", jitter);
            }
        }
        last_minute = minute;
        // Checks: due when the last good one is older than the frequency.
        let now = now_unix();
        for name in backups.backed_up() {
            let Ok((_, b)) = backups.settings(&name) else { continue };
            for (kind, freq) in [("check", b.checks.repository), ("verify-data", b.checks.verify_data)] {
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

fn spawn_job(
    backups: &Arc<Backups>,
    busy: &Arc<Mutex<HashSet<String>>>,
    name: &str,
    kind: &'static str,
    delay: Duration,
) {
    let key = format!("{name}/{kind}");
    if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
        if kind == "backup" {
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
            "backup" => backups.backup(&name, "schedule", &rep).await.map(|_| ()),
            k => backups.check(&name, k, "schedule", &rep).await.map(|_| ()),
        };
        busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    });
}
