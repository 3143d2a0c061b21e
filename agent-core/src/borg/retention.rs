//! Which archives to keep: the `retention` table of the agents' configs and the `borg prune` arguments it
//! becomes. Must not know how borg is run (`mod.rs`) nor how archives are named (`archive.rs`).

use std::time::Duration;

use serde::Deserialize;

use super::LOCK_WAIT;

/// How many archives to keep (borg prune semantics): the `retention` table of both agents' configs, read as it is
/// (unknown keys refused). An empty retention keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep every archive younger than this (`--keep-within`, translated by [`keep_within_arg`]).
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub within: Option<Duration>,
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

impl Retention {
    /// No rule at all: nothing would be pruned.
    pub fn is_empty(&self) -> bool {
        self.within.is_none()
            && [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly].iter().all(|n| *n == 0)
    }
}

/// A duration in borg 1.2's `--keep-within`/`--within` units. Borg knows `H`, `d`, `w`, `m` (31 days) and `y`
/// (365 days) and nothing below an hour; our months and years are 30.44 and 365.25 days. So this writes whole
/// hours, rounded **up** (keeping at least what was asked: `30min` and `1h` both become `1H`, `90min` `2H`), as
/// weeks or days when that is exact, and never borg's `m` or `y` (`6months` becomes `4384H`, `1y` `8766H`).
pub fn keep_within_arg(d: Duration) -> String {
    let hours = d.as_secs().div_ceil(3600).max(1);
    match hours {
        h if h % (24 * 7) == 0 => format!("{}w", h / (24 * 7)),
        h if h % 24 == 0 => format!("{}d", h / 24),
        h => format!("{h}H"),
    }
}

/// `borg prune` arguments (without the repository) for the archives matching `glob` under `r`, listing each
/// archive kept or pruned on stderr.
pub fn prune_args(glob: &str, r: &Retention) -> Vec<String> {
    let mut a: Vec<String> =
        ["prune", "--list", "--lock-wait", LOCK_WAIT, "--glob-archives", glob].iter().map(|s| s.to_string()).collect();
    if let Some(w) = r.within {
        a.extend(["--keep-within".to_string(), keep_within_arg(w)]);
    }
    for (flag, n) in [
        ("--keep-last", r.last),
        ("--keep-hourly", r.hourly),
        ("--keep-daily", r.daily),
        ("--keep-weekly", r.weekly),
        ("--keep-monthly", r.monthly),
        ("--keep-yearly", r.yearly),
    ] {
        if n > 0 {
            a.extend([flag.to_string(), n.to_string()]);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_within_in_borg_units() {
        // Each unit of our grammar, and what borg 1.2 is given (hours rounded up; borg has no minutes).
        let cases = [
            ("90s", "1H"),
            ("30min", "1H"),
            ("1h", "1H"),
            ("1h30m", "2H"),
            ("36h", "36H"),
            ("1d", "1d"),
            ("2d", "2d"),
            ("1w", "1w"),
            ("2w", "2w"),
            ("10d", "10d"),
            ("1mo", "731H"),
            ("6months", "4384H"),
            ("1y", "8766H"),
        ];
        for (ours, borgs) in cases {
            let d = crate::duration::parse(ours).unwrap();
            assert_eq!(keep_within_arg(d), borgs, "{ours}");
            // Never less than asked: borg's reading of the argument (hours) covers the duration.
            let hours: u64 = match borgs.split_at(borgs.len() - 1) {
                (n, "H") => n.parse().unwrap(),
                (n, "d") => n.parse::<u64>().unwrap() * 24,
                (n, "w") => n.parse::<u64>().unwrap() * 24 * 7,
                _ => unreachable!(),
            };
            assert!(hours * 3600 >= d.as_secs() && (hours - 1) * 3600 < d.as_secs(), "{ours}");
        }
    }

    #[test]
    fn prune_args_follow_retention() {
        let r = Retention { weekly: 4, monthly: 6, ..Default::default() };
        assert_eq!(
            prune_args("svc-????????T??????Z", &r).join(" "),
            "prune --list --lock-wait 60 --glob-archives svc-????????T??????Z --keep-weekly 4 --keep-monthly 6"
        );
        let r = Retention {
            within: Some(Duration::from_secs(2 * 86_400)),
            last: 1,
            hourly: 2,
            daily: 3,
            weekly: 4,
            monthly: 5,
            yearly: 6,
        };
        assert_eq!(
            prune_args("*", &r).join(" "),
            "prune --list --lock-wait 60 --glob-archives * --keep-within 2d --keep-last 1 --keep-hourly 2 \
             --keep-daily 3 --keep-weekly 4 --keep-monthly 5 --keep-yearly 6"
        );
        assert!(Retention::default().is_empty());
        assert!(!Retention { within: Some(Duration::from_secs(60)), ..Default::default() }.is_empty());
        assert!(!Retention { yearly: 1, ..Default::default() }.is_empty());
    }
}
