//! Five-field cron expressions (`minute hour day-of-month month day-of-week`, with month and weekday names and the
//! `@daily`-style macros) evaluated in UTC, the civil calendar
//! (days since 1970 ↔ year, month, day) and a stable per-name jitter. Knows cron and time; must not know what is
//! scheduled or how a scheduled job runs.

use std::time::Duration;

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

    /// Whether the minute starting at `unix` (UTC) matches. Day-of-month and day-of-week are OR-ed when both are
    /// restricted, as cron does.
    pub fn matches(&self, unix: i64) -> bool {
        let secs = unix.rem_euclid(86_400);
        let (minute, hour) = ((secs / 60 % 60) as u32, (secs / 3600) as u32);
        self.minutes.contains(&minute) && self.hours.contains(&hour) && self.day_matches(unix.div_euclid(86_400))
    }

    /// The start of the first matching minute strictly after `unix` (UTC), or `None` when none comes within about
    /// eight years (an impossible date such as `0 0 31 2 *`).
    pub fn next_after(&self, unix: i64) -> Option<i64> {
        // The first minute start after `unix`.
        let first = unix.div_euclid(60) * 60 + 60;
        let first_day = first.div_euclid(86_400);
        for day in first_day..first_day + SEARCH_DAYS {
            if !self.day_matches(day) {
                continue;
            }
            let day_start = day * 86_400;
            for &h in &self.hours {
                for &m in &self.minutes {
                    let t = day_start + i64::from(h) * 3600 + i64::from(m) * 60;
                    if t >= first {
                        return Some(t);
                    }
                }
            }
        }
        None
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

    #[test]
    fn cron_matches_like_cron() {
        let c = Cron::parse("0 4 * * 0").unwrap();
        assert!(c.matches(at("20261129T040000")), "Sunday 04:00");
        assert!(!c.matches(at("20261129T040100")));
        assert!(!c.matches(at("20261130T040000")), "Monday");
        let c = Cron::parse("*/15 1-2 1 * 7").unwrap();
        assert!(c.matches(at("20261201T013000")), "1st of the month");
        assert!(c.matches(at("20261129T024500")), "or a Sunday");
        assert!(!c.matches(at("20261130T024500")));
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
        assert_eq!(c.next_after(at("20261125T175707")), Some(at("20261129T040000")));
        // Exactly on a match: strictly after, so the next week.
        assert_eq!(c.next_after(at("20261129T040000")), Some(at("20261206T040000")));
        // A second before a match: that match.
        assert_eq!(c.next_after(at("20261129T035959")), Some(at("20261129T040000")));

        let every = Cron::parse("* * * * *").unwrap();
        assert_eq!(every.next_after(at("20261125T175707")), Some(at("20261125T175800")));
        assert_eq!(every.next_after(at("20261125T175800")), Some(at("20261125T175900")));
        // Before 1970 too.
        assert_eq!(every.next_after(-1), Some(0));

        // Over a month and a year boundary.
        let c = Cron::parse("30 1 1 1 *").unwrap();
        assert_eq!(c.next_after(at("20261125T000000")), Some(at("20270101T013000")));
        // February 29th: from 2097, the next one is in 2104 (2100 is not a leap year).
        let leap = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(leap.next_after(at("20260101T000000")), Some(at("20280229T000000")));
        assert_eq!(leap.next_after(at("20970101T000000")), Some(at("21040229T000000")));
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(0), None, "February 31st never comes");

        // next_after agrees with matches over a week of minutes.
        let c = Cron::parse("*/20 3-4 1,15 * 1-5").unwrap();
        let mut t = at("20261225T000000");
        for _ in 0..50 {
            let n = c.next_after(t).unwrap();
            assert!(c.matches(n) && n > t && n % 60 == 0, "{n}");
            assert!((t.div_euclid(60) + 1..n / 60).all(|m| !c.matches(m * 60)), "a match skipped before {n}");
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
