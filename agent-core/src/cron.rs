//! Five-field cron expressions (`minute hour day-of-month month day-of-week`, with month and weekday names and the
//! `@daily`-style macros) evaluated on the wall clock of an IANA time zone (daylight-saving transitions included),
//! the catch-up rule ("did a due time pass while we were down?"), the civil calendar (days since 1970 ↔ year, month,
//! day) and a stable per-name jitter. Knows cron, time zones and time; must not know what is scheduled or how a
//! scheduled job runs.

use std::time::Duration;

use jiff::tz::AmbiguousOffset;
pub use jiff::tz::TimeZone;

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

/// Names a field accepts (case-insensitive), numbered from the field's `min`.
const MONTH_NAMES: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAY_NAMES: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The five fields a macro stands for (as in cron(8) and systemd's calendar shorthands).
fn macro_fields(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

fn field(f: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let number = |x: &str| -> Result<u32, String> {
        if let Ok(n) = x.parse::<u32>() {
            return Ok(n);
        }
        let lower = x.to_ascii_lowercase();
        match names.iter().position(|n| *n == lower) {
            Some(i) => Ok(min + i as u32),
            None if names.is_empty() => Err(format!("`{x}` is not a number")),
            None => Err(format!("`{x}` is not a number or one of {}", names.join(","))),
        }
    };
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
            (number(a)?, number(b)?)
        } else {
            let n = number(range)?;
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

/// How many days [`Cron::next_after`] looks ahead: enough for a schedule on February 29th to come round even across
/// a century year that is not a leap year (2096 → 2104).
const SEARCH_DAYS: i64 = 8 * 366 + 2;

impl Cron {
    /// Five fields (numbers, `*`, ranges, lists, steps; `JAN`–`DEC` and `SUN`–`SAT` in any case, also in ranges
    /// such as `MON-FRI`) or one of `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
    pub fn parse(s: &str) -> Result<Cron, String> {
        let expanded = match s.trim() {
            m if m.starts_with('@') => macro_fields(m).ok_or_else(|| {
                format!("`{m}` is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly")
            })?,
            _ => s,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "`{s}` must have 5 fields (minute hour day month weekday) or be a macro such as @daily"
            ));
        }
        // Day of week: 0-7, both 0 and 7 are Sunday.
        let mut weekdays: Vec<u32> = field(f[4], 0, 7, WEEKDAY_NAMES)?.into_iter().map(|d| d % 7).collect();
        weekdays.sort_unstable();
        weekdays.dedup();
        Ok(Cron {
            minutes: field(f[0], 0, 59, &[])?,
            hours: field(f[1], 0, 23, &[])?,
            days: field(f[2], 1, 31, &[])?,
            months: field(f[3], 1, 12, MONTH_NAMES)?,
            weekdays,
            days_restricted: f[2] != "*",
            weekdays_restricted: f[4] != "*",
        })
    }

    /// The first instant strictly after `unix` at which the schedule fires, reading its fields on the wall clock
    /// of `tz`; `None` when none comes within about eight years (an impossible date such as `0 0 31 2 *`).
    ///
    /// Daylight-saving transitions follow cronie/Vixie cron: a wall-clock time skipped by a spring-forward gap fires
    /// once, at the first instant after the gap (a 02:30 job runs at 03:00 on that day; several skipped times give
    /// one run); a wall-clock time repeated by a fall-back fold fires once, on its first occurrence (a 02:30 job
    /// runs once, and `*/15 * * * *` does not fire again during the repeated hour).
    pub fn next_after(&self, unix: i64, tz: &TimeZone) -> Option<i64> {
        // The wall-clock → instant mapping used here never decreases, so no time on an earlier local day can map
        // after `unix`: start on the local day of `unix`.
        let offset = i64::from(tz.to_offset(jiff::Timestamp::from_second(unix).ok()?).seconds());
        let first_day = (unix + offset).div_euclid(86_400);
        for day in first_day..first_day + SEARCH_DAYS {
            if !self.day_matches(day) {
                continue;
            }
            for &h in &self.hours {
                for &m in &self.minutes {
                    let t = instant(tz, day * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60)?;
                    if t > unix {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    /// The catch-up rule: whether a job on this schedule that last ran (started) at `last` has a due time that
    /// passed unrun by `now` — it never ran, or the first due time after its last run is not after `now`. However
    /// many due times passed, the answer is one run.
    pub fn missed(&self, tz: &TimeZone, last: Option<i64>, now: i64) -> bool {
        match last {
            None => true,
            Some(t) => self.next_after(t, tz).is_some_and(|due| due <= now),
        }
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, month, day) = civil(days);
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4).rem_euclid(7) as u32;
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => self.days.contains(&day) || self.weekdays.contains(&weekday),
            (true, false) => self.days.contains(&day),
            (false, true) => self.weekdays.contains(&weekday),
            (false, false) => true,
        };
        self.months.contains(&month) && day_ok
    }
}

/// The instant (Unix seconds) at which the wall-clock time `local` (seconds since 1970-01-01T00:00 on the civil
/// calendar of `tz`) fires: itself when it exists once, its first occurrence when a fold repeats it, and the end of
/// the gap (the transition) when a gap skips it. `None` outside the years jiff represents (±9999).
fn instant(tz: &TimeZone, local: i64) -> Option<i64> {
    let (y, mo, d) = civil(local.div_euclid(86_400));
    let secs = local.rem_euclid(86_400);
    let dt = jiff::civil::DateTime::new(
        i16::try_from(y).ok()?,
        mo as i8,
        d as i8,
        (secs / 3600) as i8,
        (secs / 60 % 60) as i8,
        (secs % 60) as i8,
        0,
    )
    .ok()?;
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => Some(local - i64::from(offset.seconds())),
        AmbiguousOffset::Fold { before, .. } => Some(local - i64::from(before.seconds())),
        AmbiguousOffset::Gap { before, after } => {
            // `local` read with the offset after the gap is an instant before the transition, read with the offset
            // before it an instant after: the transition is the first instant in between whose offset is `after`.
            let (mut lo, mut hi) = (local - i64::from(after.seconds()), local - i64::from(before.seconds()));
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if tz.to_offset(jiff::Timestamp::from_second(mid).ok()?) == after {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Some(hi)
        }
    }
}

/// The time zone named `name` in the IANA tz database (`Europe/Berlin`, `America/New_York`, `UTC`), read from the
/// system's copy (`/usr/share/zoneinfo` on Linux and macOS). The error says what is wrong, for the config key.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name.starts_with(['/', '.']) || name.contains("..") {
        return Err(format!("`{name}` is not an IANA time zone name (e.g. \"Europe/Berlin\", \"UTC\")"));
    }
    TimeZone::get(name).map_err(|_| {
        format!(
            "`{name}` is not a time zone of the system's tz database (IANA names such as \"Europe/Berlin\" or \"UTC\"; \
             on Debian the database is the `tzdata` package)"
        )
    })
}

/// A stable offset in `[0, max)`, in whole seconds, derived from `name` alone: each job keeps firing at the same
/// offset after its scheduled minute, and jobs sharing a schedule spread out. Zero when `max` is under a second.
pub fn jitter(name: &str, max: Duration) -> Duration {
    let range = max.as_secs();
    if range == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: unlike std's hasher, its output is fixed forever.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    Duration::from_secs(hash % range)
}

/// (year, month, day) of a day number since 1970-01-01 (proleptic Gregorian calendar).
pub fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

/// The day number since 1970-01-01 of a (year, month, day); the inverse of [`civil`] for valid dates.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Howard Hinnant's days_from_civil.
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix time of `YYYYMMDDTHHMMSS` (UTC).
    fn at(s: &str) -> i64 {
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap();
        days_from_civil(i64::from(n(0..4)), n(4..6), n(6..8)) * 86_400
            + i64::from(n(9..11)) * 3600
            + i64::from(n(11..13)) * 60
            + i64::from(n(13..15))
    }

    const UTC: TimeZone = TimeZone::UTC;

    /// Whether `c` fires at the minute starting at `t` (UTC).
    fn fires_at(c: &Cron, t: i64) -> bool {
        let fires = c.next_after(t - 1, &UTC) == Some(t);
        assert_eq!(fires, matches_utc(c, t), "next_after and the fields disagree at {t}");
        fires
    }

    /// The fields read directly, in UTC: the reference `next_after` is checked against.
    fn matches_utc(c: &Cron, t: i64) -> bool {
        let secs = t.rem_euclid(86_400);
        c.minutes.contains(&((secs / 60 % 60) as u32))
            && c.hours.contains(&((secs / 3600) as u32))
            && c.day_matches(t.div_euclid(86_400))
    }

    #[test]
    fn cron_matches_like_cron() {
        let c = Cron::parse("0 4 * * 0").unwrap();
        assert!(fires_at(&c, at("20261129T040000")), "Sunday 04:00");
        assert!(!fires_at(&c, at("20261129T040100")));
        assert!(!fires_at(&c, at("20261130T040000")), "Monday");
        let c = Cron::parse("*/15 1-2 1 * 7").unwrap();
        assert!(fires_at(&c, at("20261201T013000")), "1st of the month");
        assert!(fires_at(&c, at("20261129T024500")), "or a Sunday");
        assert!(!fires_at(&c, at("20261130T024500")));
        for bad in ["* * * *", "61 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_macros_mean_their_numeric_forms() {
        let same = [
            ("30 2 * * MON-FRI", "30 2 * * 1-5"),
            ("30 2 * * mon,Wed,FRI", "30 2 * * 1,3,5"),
            ("0 0 * * SUN", "0 0 * * 0"),
            ("0 0 * * sat,sun", "0 0 * * 6,0"),
            ("0 0 1 JAN-MAR/2 *", "0 0 1 1-3/2 *"),
            ("0 0 1 dec *", "0 0 1 12 *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@HOURLY", "0 * * * *"),
        ];
        for (named, numeric) in same {
            assert_eq!(Cron::parse(named), Cron::parse(numeric), "{named}");
        }
        for bad in ["@reboot", "@every 5m", "0 0 * * MONDAY", "0 0 * JANUARY *", "0 0 MON * *", "0 0 * * FRI-MON"] {
            let err = Cron::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(Cron::parse("0 0 * * MONDAY").unwrap_err().contains("sun,mon,tue,wed,thu,fri,sat"));
    }

    #[test]
    fn next_after_is_the_next_matching_minute_strictly_after() {
        let c = Cron::parse("0 4 * * 0").unwrap();
        // Wednesday 2026-11-25 → Sunday 2026-11-29 04:00.
        assert_eq!(c.next_after(at("20261125T175707"), &UTC), Some(at("20261129T040000")));
        // Exactly on a match: strictly after, so the next week.
        assert_eq!(c.next_after(at("20261129T040000"), &UTC), Some(at("20261206T040000")));
        // A second before a match: that match.
        assert_eq!(c.next_after(at("20261129T035959"), &UTC), Some(at("20261129T040000")));

        let every = Cron::parse("* * * * *").unwrap();
        assert_eq!(every.next_after(at("20261125T175707"), &UTC), Some(at("20261125T175800")));
        assert_eq!(every.next_after(at("20261125T175800"), &UTC), Some(at("20261125T175900")));
        // Before 1970 too.
        assert_eq!(every.next_after(-1, &UTC), Some(0));

        // Over a month and a year boundary.
        let c = Cron::parse("30 1 1 1 *").unwrap();
        assert_eq!(c.next_after(at("20261125T000000"), &UTC), Some(at("20270101T013000")));
        // February 29th: from 2097, the next one is in 2104 (2100 is not a leap year).
        let leap = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(leap.next_after(at("20260101T000000"), &UTC), Some(at("20280229T000000")));
        assert_eq!(leap.next_after(at("20970101T000000"), &UTC), Some(at("21040229T000000")));
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(0, &UTC), None, "February 31st never comes");

        // next_after agrees with the fields over a week of minutes.
        let c = Cron::parse("*/20 3-4 1,15 * 1-5").unwrap();
        let mut t = at("20261225T000000");
        for _ in 0..50 {
            let n = c.next_after(t, &UTC).unwrap();
            assert!(matches_utc(&c, n) && n > t && n % 60 == 0, "{n}");
            assert!((t.div_euclid(60) + 1..n / 60).all(|m| !matches_utc(&c, m * 60)), "a match skipped before {n}");
            t = n;
        }
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let max = Duration::from_secs(300);
        assert_eq!(jitter("services", max), jitter("services", max));
        // Fixed forever (FNV-1a 64; 0xaf63dc4c8601ec8c is its published value for "a"), so a job's offset survives
        // restarts and upgrades.
        assert_eq!(jitter("a", Duration::from_secs(u64::MAX)), Duration::from_secs(0xaf63_dc4c_8601_ec8c));
        let offsets: std::collections::HashSet<Duration> =
            ["a", "b", "c", "gitea", "nextcloud", "services"].iter().map(|n| jitter(n, max)).collect();
        assert!(offsets.len() > 3, "names should spread out: {offsets:?}");
        assert!(offsets.iter().all(|d| *d < max));
        assert_eq!(jitter("services", Duration::ZERO), Duration::ZERO);
        assert_eq!(jitter("services", Duration::from_millis(999)), Duration::ZERO);
    }

    /// Unix time of `YYYYMMDDTHHMM` read on the wall clock with a fixed `offset` in hours (e.g. +1 for CET).
    fn at_offset(s: &str, offset: i64) -> i64 {
        at(&format!("{s}00")) - offset * 3600
    }

    #[test]
    fn a_zone_shifts_the_wall_clock() {
        let berlin = zone("Europe/Berlin").unwrap();
        let c = Cron::parse("15 3 * * *").unwrap();
        // Winter: CET (+1); summer: CEST (+2).
        assert_eq!(c.next_after(at("20260110T000000"), &berlin), Some(at_offset("20260110T0315", 1)));
        assert_eq!(c.next_after(at("20260710T000000"), &berlin), Some(at_offset("20260710T0315", 2)));
        // The local day decides the weekday: Monday 00:30 in Berlin is still Sunday in UTC.
        let monday = Cron::parse("30 0 * * MON").unwrap();
        let t = monday.next_after(at("20260105T120000"), &berlin).unwrap();
        assert_eq!(t, at_offset("20260112T0030", 1));
        assert_eq!(civil(t.div_euclid(86_400)), (2026, 1, 11), "a Sunday in UTC");
        let ny = zone("America/New_York").unwrap();
        assert_eq!(c.next_after(at("20260110T000000"), &ny), Some(at_offset("20260110T0315", -5)));
        assert_eq!(c.next_after(at("20260110T000000"), &zone("UTC").unwrap()), Some(at("20260110T031500")));
    }

    /// Spring forward in Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:00-02:59 does not exist.
    #[test]
    fn a_time_skipped_by_spring_forward_runs_once_at_the_end_of_the_gap() {
        let berlin = zone("Europe/Berlin").unwrap();
        let gap_end = at_offset("20260329T0300", 2);
        assert_eq!(gap_end, at("20260329T010000"));
        let c = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(c.next_after(at("20260328T120000"), &berlin), Some(gap_end), "runs at 03:00 CEST");
        assert_eq!(c.next_after(gap_end, &berlin), Some(at_offset("20260330T0230", 2)), "once, then the next day");
        // Several skipped times: one run at the end of the gap, then the schedule goes on at 03:00.
        let c = Cron::parse("*/20 2,3 * * *").unwrap();
        let before = at_offset("20260329T0159", 1);
        assert_eq!(c.next_after(before, &berlin), Some(gap_end));
        assert_eq!(c.next_after(gap_end, &berlin), Some(at_offset("20260329T0320", 2)));
        // A time outside the gap is untouched.
        let c = Cron::parse("30 1 * * *").unwrap();
        assert_eq!(c.next_after(at("20260328T120000"), &berlin), Some(at_offset("20260329T0130", 1)));
    }

    /// Fall back in Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happens twice.
    #[test]
    fn a_time_repeated_by_fall_back_runs_once_on_its_first_occurrence() {
        let berlin = zone("Europe/Berlin").unwrap();
        let c = Cron::parse("30 2 * * *").unwrap();
        let first = at_offset("20261025T0230", 2);
        assert_eq!(c.next_after(at("20261024T120000"), &berlin), Some(first));
        assert_eq!(c.next_after(first, &berlin), Some(at_offset("20261026T0230", 1)), "not again an hour later");
        // Every 15 minutes: the repeated hour is not run twice; 03:00 CET comes two hours after 02:00 CEST.
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(c.next_after(at_offset("20261025T0245", 2), &berlin), Some(at_offset("20261025T0300", 1)));
        assert_eq!(at_offset("20261025T0300", 1) - at_offset("20261025T0245", 2), 75 * 60);
    }

    #[test]
    fn zones_are_iana_names() {
        for good in ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Asia/Kolkata"] {
            assert!(zone(good).is_ok(), "{good}");
        }
        for bad in ["", "Europe/Berln", "CEST+2", "+02:00", "../../etc/passwd", "/etc/localtime", "Mars/Olympus"] {
            let e = zone(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")) && e.contains("Europe/Berlin"), "{bad}: {e}");
        }
    }

    /// The catch-up rule, data-driven: (last run, now) → run once at start?
    #[test]
    fn catch_up_runs_once_when_a_due_time_passed_unrun() {
        let daily = Cron::parse("0 3 * * *").unwrap();
        let now = at("20261205T120000");
        let cases: [(&str, Option<i64>, bool); 6] = [
            ("never ran", None, true),
            ("ran after the last due time", Some(at("20261205T030500")), false),
            ("ran exactly at the last due time", Some(at("20261205T030000")), false),
            ("missed one", Some(at("20261204T030000")), true),
            ("missed ten", Some(at("20261125T030000")), true),
            ("ran in the future (clock went back)", Some(at("20261206T030000")), false),
        ];
        for (what, last, want) in cases {
            assert_eq!(daily.missed(&UTC, last, now), want, "{what}");
        }
        // Ten missed days are still one answer, not ten: the caller runs one job.
        assert!(daily.missed(&UTC, Some(at("20261125T030000")), now));
        // The zone decides: 03:00 in New York is 08:00 UTC, still to come at 07:00 UTC.
        let ny = zone("America/New_York").unwrap();
        assert!(!daily.missed(&ny, Some(at("20261204T090000")), at("20261205T070000")));
        assert!(daily.missed(&ny, Some(at("20261204T090000")), at("20261205T080000")));
        // A schedule that never comes is never missed once it ran.
        assert!(!Cron::parse("0 0 31 2 *").unwrap().missed(&UTC, Some(0), now));
    }

    #[test]
    fn civil_round_trips() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(20_512), (2026, 2, 28));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        for d in (-800_000..800_000).step_by(997) {
            let (y, m, dd) = civil(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
