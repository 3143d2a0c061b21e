//! The bounded in-memory query log (`[dns] query_log = true`): the most recent queries, newest first, for the
//! QueryLog RPC. Nothing is written to disk. Knows log entries; must not know DNS messages, sockets or gRPC.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hickory_proto::rr::RecordType;

use crate::metrics::Outcome;

/// Entries kept; the oldest go first.
pub const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub time_unix_ms: i64,
    pub client: IpAddr,
    pub name: String,
    pub qtype: RecordType,
    pub outcome: Outcome,
    pub latency_us: u32,
}

/// A ring buffer of recent queries; recording does nothing (and takes no lock) while disabled.
#[derive(Debug)]
pub struct QueryLog {
    enabled: AtomicBool,
    capacity: usize,
    entries: Mutex<VecDeque<LogEntry>>,
}

impl QueryLog {
    pub fn new(enabled: bool, capacity: usize) -> Self {
        QueryLog { enabled: AtomicBool::new(enabled), capacity: capacity.max(1), entries: Mutex::new(VecDeque::new()) }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns logging on or off (reload); turning it off forgets what was logged.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if !on {
            self.lock().clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LogEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an entry built by `entry` (only called when enabled, so disabled logging costs nothing).
    pub fn record(&self, entry: impl FnOnce() -> LogEntry) {
        if !self.enabled() {
            return;
        }
        let e = entry();
        let mut q = self.lock();
        if q.len() >= self.capacity {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Up to `limit` most recent entries, newest first (`limit` 0 means all).
    pub fn recent(&self, limit: usize) -> Vec<LogEntry> {
        let q = self.lock();
        let n = if limit == 0 { q.len() } else { limit.min(q.len()) };
        q.iter().rev().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> LogEntry {
        LogEntry {
            time_unix_ms: i,
            client: "127.0.0.1".parse().unwrap(),
            name: format!("n{i}.lab."),
            qtype: RecordType::A,
            outcome: Outcome::Local,
            latency_us: 5,
        }
    }

    #[test]
    fn bounded_newest_first_and_off_by_default() {
        let log = QueryLog::new(false, 3);
        log.record(|| entry(0));
        assert!(log.recent(0).is_empty(), "disabled log records nothing");
        log.set_enabled(true);
        for i in 1..=5 {
            log.record(|| entry(i));
        }
        let times: Vec<i64> = log.recent(0).iter().map(|e| e.time_unix_ms).collect();
        assert_eq!(times, vec![5, 4, 3]);
        assert_eq!(log.recent(1)[0].time_unix_ms, 5);
        log.set_enabled(false);
        assert!(log.recent(0).is_empty());
    }
}
