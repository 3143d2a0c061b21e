//! Scheduled backups: five-field cron expressions (`minute hour day-of-month month day-of-week`), evaluated in UTC,
//! and the loop that starts each VM's backup when its schedule matches. Knows cron and time; must not know how a
//! backup is done (it calls `backup::Host`).

use std::sync::Arc;
use std::time::Duration;

use crate::backup::Host;

/// A parsed cron expression: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    days_restricted: bool,
    weekdays_restricted: bool,
}

fn field(f: &str, min: u32, max: u32) -> Result<Vec<u32>, String> {
    let mut v = Vec::new();
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("bad step in `{part}`"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step 0 in `{part}`"));
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let p = |x: &str| x.parse::<u32>().map_err(|_| format!("`{x}` is not a number"));
            (p(a)?, p(b)?)
        } else {
            let n = range.parse::<u32>().map_err(|_| format!("`{range}` is not a number"))?;
            (n, if part.contains('/') { max } else { n })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("`{part}` is outside {min}-{max}"));
        }
        v.extend((lo..=hi).step_by(step as usize));
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

impl Cron {
    pub fn parse(s: &str) -> Result<Cron, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("`{s}` must have 5 fields (minute hour day month weekday)"));
        }
        // Day of week: 0-7, both 0 and 7 are Sunday.
        let mut weekdays: Vec<u32> = field(f[4], 0, 7)?.into_iter().map(|d| d % 7).collect();
        weekdays.sort_unstable();
        weekdays.dedup();
        Ok(Cron {
            minutes: field(f[0], 0, 59)?,
            hours: field(f[1], 0, 23)?,
            days: field(f[2], 1, 31)?,
            months: field(f[3], 1, 12)?,
            weekdays,
            days_restricted: f[2] != "*",
            weekdays_restricted: f[4] != "*",
        })
    }

    /// Whether the minute starting at `unix` (UTC) matches. Day-of-month and day-of-week are OR-ed when both are
    /// restricted, as cron does.
    pub fn matches(&self, unix: i64) -> bool {
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400);
        let (minute, hour) = ((secs / 60 % 60) as u32, (secs / 3600) as u32);
        let (_, month, day) = crate::engine::civil(days);
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4).rem_euclid(7) as u32;
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => self.days.contains(&day) || self.weekdays.contains(&weekday),
            (true, false) => self.days.contains(&day),
            (false, true) => self.weekdays.contains(&weekday),
            (false, false) => true,
        };
        self.minutes.contains(&minute) && self.hours.contains(&hour) && self.months.contains(&month) && day_ok
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: &str) -> i64 {
        crate::engine::parse_backup_id("t", &format!("t-{id}")).unwrap()
    }

    #[test]
    fn cron_matches_like_cron() {
        let c = Cron::parse("0 4 * * 0").unwrap();
        assert!(c.matches(at("20261129T040000Z")), "Sunday 04:00");
        assert!(!c.matches(at("20261129T040100Z")));
        assert!(!c.matches(at("20261130T040000Z")), "Monday");
        let c = Cron::parse("*/15 1-2 1 * 7").unwrap();
        assert!(c.matches(at("20261201T013000Z")), "1st of the month");
        assert!(c.matches(at("20261129T024500Z")), "or a Sunday");
        assert!(!c.matches(at("20261130T024500Z")));
        for bad in ["* * * *", "61 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }
}
