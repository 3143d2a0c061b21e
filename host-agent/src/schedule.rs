//! Scheduled backups: the loop that starts each VM's backup when its schedule (an `agent_core::cron::Cron`, UTC)
//! matches. Knows when to start backups; must not know cron syntax or how a backup is done (it calls `backup::Host`).

use std::sync::Arc;
use std::time::Duration;

use agent_core::cron::Cron;

use crate::backup::Host;

/// Runs forever: every VM with a `schedule` is backed up at each matching minute (UTC). A run still going when the
/// next one is due makes the next one fail as busy (logged), never run twice at once.
pub async fn run(host: Arc<Host>) {
    let plans: Vec<(String, Cron)> = host
        .config()
        .vms
        .iter()
        .filter_map(|v| v.schedule.as_ref().map(|s| (v.name.clone(), s)))
        .filter_map(|(n, s)| match Cron::parse(s) {
            Ok(c) => Some((n, c)),
            Err(e) => {
                tracing::error!(vm = %n, "schedule `{s}` ignored: {e}");
                None
            }
        })
        .collect();
    if plans.is_empty() {
        return;
    }
    let mut last_minute = now_unix() / 60;
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let minute = now_unix() / 60;
        if minute == last_minute {
            continue;
        }
        for m in (last_minute + 1)..=minute {
            for (name, cron) in &plans {
                if cron.matches(m * 60) {
                    let (host, name) = (host.clone(), name.clone());
                    tokio::spawn(async move {
                        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                        match host.backup(&name, &tx).await {
                            Ok(r) => {
                                tracing::info!(vm = %name, id = %r.id, downtime = ?r.downtime, "scheduled backup done")
                            }
                            Err(e) => tracing::error!(vm = %name, error = %e, "scheduled backup failed"),
                        }
                        drop(tx);
                        let _ = drain.await;
                    });
                }
            }
        }
        last_minute = minute;
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
