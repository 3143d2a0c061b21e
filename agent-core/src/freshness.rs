//! Backup freshness, the pure rule both agents share: from a backup's last success, its last run's outcome, its
//! `warn_after` and the clock, whether it is `ok`, `overdue`, `failing` or `never` backed up; the default
//! `warn_after` of a cron schedule (1.5 × its longest gap between due times, plus its jitter); the one-line reasons
//! that name such a backup. Knows time and cron schedules; must not know what is backed up, how, or where the
//! records come from (the agents feed them, `backups` keeps them).

use std::time::Duration;

use crate::cron::{Cron, TimeZone};

/// How many consecutive due times [`interval`] looks at: a weekday schedule's weekend gap, a monthly schedule's
/// short February all come round.
const INTERVAL_SAMPLES: usize = 40;

/// The layer a backup belongs to, as the `layer` metric label and `BackupFreshness.layer` spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// host-agent: whole VMs, to targets.
    Host,
    /// services-agent: services, to repositories.
    Services,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Host => "host",
            Layer::Services => "services",
        }
    }

    /// What a backed-up object is called in reasons ("vm dns", "service web").
    pub fn object(self) -> &'static str {
        match self {
            Layer::Host => "vm",
            Layer::Services => "service",
        }
    }

    /// What a place a backup goes to is called in reasons ("target nas", "repo local").
    pub fn place(self) -> &'static str {
        match self {
            Layer::Host => "target",
            Layer::Services => "repo",
        }
    }
}

/// A backup's verdict. One state per backup: `Overdue` wins over `Failing` (a backup failing for long enough
/// becomes overdue), both win over `Never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    /// Never backed up there, and not yet overdue.
    Never,
    /// The last run to it failed.
    Failing,
    /// Its last success (or, never having succeeded, the start of watching) is older than `warn_after`.
    Overdue,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Never => "never",
            State::Failing => "failing",
            State::Overdue => "overdue",
        }
    }
}

/// What is known of one backup (one name, one repository): Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// When the last run that reached the repository started.
    pub last_success: Option<i64>,
    /// When the last run to the repository started, whatever its outcome.
    pub last_run: Option<i64>,
    /// Why the last run to the repository failed; `None` when it succeeded or never ran.
    pub last_error: Option<String>,
}

/// One backup's freshness at one instant: what `Status` lists and the metrics and reasons say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub layer: Layer,
    pub name: String,
    pub repo: String,
    pub state: State,
    pub overdue: bool,
    pub failing: bool,
    pub record: Record,
    /// `None`: not watched for age (no schedule and no `warn_after`).
    pub warn_after: Option<Duration>,
    /// How old the last success is (or, never having succeeded, how long it has been watched), at the instant
    /// judged.
    pub age: Duration,
}

/// Judges a backup at `now`. `since` is when watching began (the agent's start): a backup that never succeeded is
/// overdue only once `warn_after` has passed since then, so a backup never run and not yet due is not overdue.
pub fn judge(
    layer: Layer,
    name: &str,
    repo: &str,
    record: &Record,
    warn_after: Option<Duration>,
    since: i64,
    now: i64,
) -> Freshness {
    let reference = record.last_success.unwrap_or(since);
    let age = Duration::from_secs(now.saturating_sub(reference).max(0) as u64);
    let overdue = warn_after.is_some_and(|w| age > w);
    let failing = record.last_error.is_some();
    let state = if overdue {
        State::Overdue
    } else if failing {
        State::Failing
    } else if record.last_success.is_none() {
        State::Never
    } else {
        State::Ok
    };
    Freshness {
        layer,
        name: name.to_string(),
        repo: repo.to_string(),
        state,
        overdue,
        failing,
        record: record.clone(),
        warn_after,
        age,
    }
}

impl Freshness {
    /// The reasons this backup makes its agent degraded, one line each, naming it first:
    /// `service web: backup failing (repo local): …`, `vm dns: backup overdue (target nas): last success 2h ago, warn
    /// after 1h30m`.
    pub fn reasons(&self) -> Vec<String> {
        let who = format!("{} {}", self.layer.object(), self.name);
        let place = format!("{} {}", self.layer.place(), self.repo);
        let mut out = Vec::new();
        if self.failing {
            let error = self.record.last_error.as_deref().unwrap_or_default();
            out.push(format!("{who}: backup failing ({place}): {error}"));
        }
        if self.overdue {
            let w = crate::duration::format(self.warn_after.unwrap_or_default());
            let age = ago(self.age);
            out.push(match self.record.last_success {
                Some(_) => format!("{who}: backup overdue ({place}): last success {age} ago, warn after {w}"),
                None => format!(
                    "{who}: backup overdue ({place}): no success in the {age} since the agent started, warn after {w}"
                ),
            });
        }
        out
    }
}

/// An age for a message: to the second under two minutes, whole minutes above (`1m35s`, `2h13m`).
fn ago(d: Duration) -> String {
    let secs = d.as_secs();
    let rounded = if secs < 120 { secs } else { secs - secs % 60 };
    crate::duration::format(Duration::from_secs(rounded))
}

/// The longest gap between consecutive due times of `cron` after `now` (read in `tz`): a schedule's interval, the
/// weekend's for a weekday schedule. `None` when it fires fewer than twice in the years searched.
pub fn interval(cron: &Cron, tz: &TimeZone, now: i64) -> Option<Duration> {
    let mut prev = cron.next_after(now, tz)?;
    let mut longest = None;
    for _ in 0..INTERVAL_SAMPLES {
        let Some(next) = cron.next_after(prev, tz) else { break };
        longest = longest.max(Some(next - prev));
        prev = next;
    }
    longest.map(|s| Duration::from_secs(s as u64))
}

/// The default `warn_after` of a backup on `cron` delayed by up to `jitter`: 1.5 × its [`interval`] plus the jitter
/// (one missed run, with room for a slow one). `None` when the schedule has no interval.
pub fn default_warn_after(cron: &Cron, tz: &TimeZone, jitter: Duration, now: i64) -> Option<Duration> {
    interval(cron, tz, now).map(|i| i + i / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    fn rec(last_success: Option<i64>, last_run: Option<i64>, error: Option<&str>) -> Record {
        Record { last_success, last_run, last_error: error.map(str::to_string) }
    }

    #[test]
    fn judges_each_state() {
        let w = Some(Duration::from_secs(90 * 60));
        // (record, warn_after, since, now, state, overdue, failing)
        let cases = [
            (rec(None, None, None), w, 0, H, State::Never, false, false),
            (rec(None, None, None), None, 0, 100 * H, State::Never, false, false),
            // Never succeeded and watched longer than warn_after: overdue.
            (rec(None, None, None), w, 0, 2 * H, State::Overdue, true, false),
            (rec(Some(10 * H), Some(10 * H), None), w, 0, 11 * H, State::Ok, false, false),
            // Exactly warn_after old is not yet overdue.
            (rec(Some(10 * H), Some(10 * H), None), w, 0, 10 * H + 90 * 60, State::Ok, false, false),
            (rec(Some(10 * H), Some(10 * H), None), w, 0, 10 * H + 90 * 60 + 1, State::Overdue, true, false),
            (rec(Some(10 * H), Some(11 * H), Some("repo gone")), w, 0, 11 * H, State::Failing, false, true),
            (rec(None, Some(H), Some("repo gone")), w, 0, H, State::Failing, false, true),
            // Failing long enough becomes overdue, and still says failing.
            (rec(Some(10 * H), Some(12 * H), Some("repo gone")), w, 0, 12 * H, State::Overdue, true, true),
            // No warn_after (no schedule): never overdue, failing still shows.
            (rec(Some(0), Some(100 * H), Some("x")), None, 0, 100 * H, State::Failing, false, true),
            // A clock that went back is not an age.
            (rec(Some(10 * H), Some(10 * H), None), w, 0, 9 * H, State::Ok, false, false),
        ];
        for (i, (r, w, since, now, state, overdue, failing)) in cases.into_iter().enumerate() {
            let f = judge(Layer::Services, "web", "local", &r, w, since, now);
            assert_eq!((f.state, f.overdue, f.failing), (state, overdue, failing), "case {i}: {r:?} at {now}");
        }
    }

    #[test]
    fn reasons_name_the_backup_and_the_place() {
        let w = Some(Duration::from_secs(H as u64 + 1800));
        let f = judge(Layer::Host, "dns", "nas", &rec(Some(0), Some(2 * H), Some("borg: lock")), w, 0, 2 * H + 30);
        assert_eq!(
            f.reasons(),
            [
                "vm dns: backup failing (target nas): borg: lock",
                "vm dns: backup overdue (target nas): last success 2h ago, warn after 1h30m",
            ]
        );
        let f = judge(Layer::Services, "web", "local", &rec(None, None, None), w, 0, 2 * H);
        assert_eq!(
            f.reasons(),
            ["service web: backup overdue (repo local): no success in the 2h since the agent started, warn after 1h30m"]
        );
        assert!(judge(Layer::Services, "web", "local", &rec(Some(0), Some(0), None), w, 0, 60).reasons().is_empty());
        assert_eq!(ago(Duration::from_secs(95)), "1m35s");
        assert_eq!(ago(Duration::from_secs(2 * 3600 + 13 * 60 + 59)), "2h13m");
    }

    #[test]
    fn default_warn_after_is_one_and_a_half_intervals_plus_jitter() {
        let utc = TimeZone::UTC;
        let now = 1_767_225_600; // 2026-01-01T00:00Z, a Thursday
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        // (schedule, jitter, warn_after)
        let cases = [
            ("* * * * *", 0, minutes(1).map(|d| d + d / 2)),
            ("*/15 * * * *", 0, minutes(15 + 7).map(|d| d + Duration::from_secs(30))),
            ("@hourly", 300, minutes(90 + 5)),
            ("0 2 * * *", 0, minutes(36 * 60)),
            // Weekdays: the weekend's three days are the interval.
            ("0 2 * * 1-5", 0, minutes(3 * 36 * 60)),
            // Irregular minutes: the longest gap (50 min from :10 to the next hour's :00).
            ("0,10 * * * *", 0, minutes(75)),
            ("0 0 31 2 *", 0, None),
        ];
        for (s, jitter, want) in cases {
            let cron = Cron::parse(s).unwrap();
            assert_eq!(default_warn_after(&cron, &utc, Duration::from_secs(jitter), now), want, "{s}");
        }
    }
}
