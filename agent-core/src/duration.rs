//! The one duration grammar of every config file (humantime-style: `90s`, `10min`, `1h30m`, `7d`, `2w`, `6months`,
//! `1y`), its parser and its serde deserializer. `m` is minutes everywhere; months are `mo`/`month(s)`; a bare `M`
//! is refused as ambiguous. Must not know which key means what (floors and ceilings belong to each agent's config),
//! nor any external program's units (borg's are translated in [`crate::borg`]).
//!
//! Grammar: one or more `NUMBER UNIT` parts, optionally separated by spaces, added up; NUMBER is a non-negative
//! integer; the total must be more than zero. Units (case-sensitive, as humantime):
//!
//! | unit | spellings |
//! |------|-----------|
//! | second | `s`, `sec`, `secs`, `second`, `seconds` |
//! | minute | `m`, `min`, `mins`, `minute`, `minutes` |
//! | hour | `h`, `hr`, `hrs`, `hour`, `hours` |
//! | day | `d`, `day`, `days` |
//! | week (7 days) | `w`, `week`, `weeks` |
//! | month (30.44 days, 2,630,016 s, as humantime) | `mo`, `month`, `months` |
//! | year (365.25 days, 31,557,600 s, as humantime) | `y`, `year`, `years` |

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Seconds in a month of this grammar (30.44 days, humantime's month).
pub const MONTH_SECS: u64 = 2_630_016;
/// Seconds in a year of this grammar (365.25 days, humantime's year).
pub const YEAR_SECS: u64 = 31_557_600;

/// Why a duration was refused; the message quotes the text and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration: write a number and a unit, e.g. 90s, 10min, 1h30m, 7d, 2w, 6months, 1y")]
    Syntax(String),
    #[error("`{0}` has a number without a unit: write e.g. `{0}s` or `{0}min`")]
    NoUnit(String),
    #[error("`{text}`: `M` is ambiguous: write `min` (or `m`) for minutes, `mo` (or `months`) for months")]
    AmbiguousM { text: String },
    #[error("`{text}`: unknown unit `{unit}` (units: s, min, h, d, w, mo, y)")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is too long")]
    Overflow(String),
    #[error("`{0}` must be more than zero")]
    Zero(String),
}

fn unit_secs(unit: &str) -> Option<u64> {
    Some(match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        "mo" | "month" | "months" => MONTH_SECS,
        "y" | "year" | "years" => YEAR_SECS,
        _ => return None,
    })
}

/// Parses a duration of the grammar above.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let syntax = || DurationError::Syntax(text.to_string());
    if t.is_empty() {
        return Err(syntax());
    }
    let mut rest = t;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(syntax());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| DurationError::Overflow(text.to_string()))?;
        rest = rest[digits..].trim_start();
        let letters = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        if letters == 0 {
            return Err(if rest.is_empty() && total == 0 && t.bytes().all(|b| b.is_ascii_digit()) {
                DurationError::NoUnit(t.to_string())
            } else {
                syntax()
            });
        }
        let unit = &rest[..letters];
        let secs = match unit_secs(unit) {
            Some(s) => s,
            None if unit == "M" => return Err(DurationError::AmbiguousM { text: text.to_string() }),
            None => return Err(DurationError::UnknownUnit { text: text.to_string(), unit: unit.to_string() }),
        };
        total = n
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        rest = rest[letters..].trim_start();
    }
    // Durations beyond a thousand years are typos, and would overflow `Instant` arithmetic.
    if total > 1000 * YEAR_SECS {
        return Err(DurationError::Overflow(text.to_string()));
    }
    if total == 0 {
        return Err(DurationError::Zero(text.to_string()));
    }
    Ok(Duration::from_secs(total))
}

/// Writes a duration back in the grammar (the largest exact units: `1h30m`, `2w`, `90s`), for messages.
pub fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"90s\", \"10min\", \"1h30m\", \"7d\", \"2w\", \"6months\", \"1y\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} is a bare number: write a duration string with a unit, e.g. \"{v}s\"")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} is a bare number: write a duration string with a unit, e.g. \"{v}s\"")))
    }
}

/// Serde `deserialize_with` for a `Duration` field written in this grammar.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// Serde `deserialize_with` for an `Option<Duration>` field (use with `#[serde(default)]`).
pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

/// Texts every duration key accepts, and their value in seconds: the table the per-agent tests run over all of
/// their duration keys, so that every key is shown to take the same grammar.
pub const ACCEPTED: &[(&str, u64)] = &[
    ("90s", 90),
    ("1m", 60),
    ("10min", 600),
    ("1h30m", 5400),
    ("1h 30min", 5400),
    ("36h", 129_600),
    ("7d", 604_800),
    ("2w", 1_209_600),
    ("6months", 6 * MONTH_SECS),
    ("1mo", MONTH_SECS),
    ("1y", YEAR_SECS),
];

/// Texts every duration key refuses (as a TOML string).
pub const REFUSED: &[&str] = &["1M", "5", "0s", "2x", "soon", "-5m", "1.5h", ""];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        for (text, secs) in ACCEPTED {
            assert_eq!(parse(text), Ok(Duration::from_secs(*secs)), "{text:?}");
        }
        let more = [
            ("30 seconds", 30),
            ("1 minute", 60),
            ("2hours", 7200),
            ("1hr", 3600),
            ("3 days", 259_200),
            ("1week", 604_800),
            ("2 years", 2 * YEAR_SECS),
            ("1y6mo", YEAR_SECS + 6 * MONTH_SECS),
            ("  5m ", 300),
            ("0s 1s", 1),
        ];
        for (text, secs) in more {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text:?}");
        }
        for text in REFUSED {
            assert!(parse(text).is_err(), "{text:?}");
        }
        assert_eq!(parse("1M"), Err(DurationError::AmbiguousM { text: "1M".into() }));
        assert_eq!(parse("5"), Err(DurationError::NoUnit("5".into())));
        assert!(matches!(parse("2x"), Err(DurationError::UnknownUnit { .. })));
        assert_eq!(parse("0min"), Err(DurationError::Zero("0min".into())));
        assert!(matches!(parse("99999999999999999999d"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse("999999999999999999d"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse("1001y"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse("m"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse("5m 3"), Err(DurationError::Syntax(_))));
        let msg = parse("1M").unwrap_err().to_string();
        assert!(msg.contains("`min`") && msg.contains("`mo`"), "{msg}");
    }

    #[test]
    fn format_round_trips() {
        for secs in [1, 59, 60, 90, 3600, 5400, 86_400, 604_800, 694_861] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d), "{secs}");
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn serde_reads_strings_and_refuses_numbers() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(deserialize_with = "deserialize")]
            a: Duration,
            #[serde(default, deserialize_with = "deserialize_option")]
            b: Option<Duration>,
        }
        let t: T = toml::from_str("a = \"1h30m\"\n").unwrap();
        assert_eq!((t.a, t.b), (Duration::from_secs(5400), None));
        let t: T = toml::from_str("a = \"1m\"\nb = \"2w\"\n").unwrap();
        assert_eq!((t.a, t.b), (Duration::from_secs(60), Some(Duration::from_secs(1_209_600))));
        let e = toml::from_str::<T>("a = 120\n").unwrap_err().to_string();
        assert!(e.contains("\"120s\""), "{e}");
        let e = toml::from_str::<T>("a = \"1M\"\n").unwrap_err().to_string();
        assert!(e.contains("ambiguous"), "{e}");
    }
}
