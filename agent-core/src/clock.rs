//! The wall clock as the agents record it: Unix time now. The one place that reads `SystemTime` for a timestamp;
//! must not know what the time is recorded for (journals, serials, schedules are the callers').

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero on a clock set before 1970). Callers convert: whole seconds with
/// `.as_secs()`, fractions with `.as_secs_f64()`.
pub fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

/// Whole seconds since the Unix epoch (what journals and schedules store).
pub fn now_unix() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_this_code_was_written_and_agrees_with_itself() {
        // 2026-01-01T00:00:00Z.
        assert!(now_unix() > 1_767_225_600);
        let (a, b) = (since_epoch(), now_unix());
        assert!(b - i64::try_from(a.as_secs()).unwrap() <= 1);
    }
}
