//! The bounded in-memory query log (`[dns] query_log = true`): the most recent queries, each with a sequence number
//! (a cursor for following the log), its outcome, the blocklist that blocked it and its latency; filters
//! (client prefix, name substring, outcome) and a cap on entries per answer. Nothing is written to disk. Knows log
//! entries; must not know DNS messages, sockets or gRPC.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hickory_proto::rr::RecordType;

use crate::metrics::Outcome;

/// Entries kept; the oldest go first.
pub(crate) const CAPACITY: usize = 10_000;

/// The most entries one answer carries, whatever the request's limit.
pub(crate) const MAX_ANSWER: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Given by the log when recorded: 1, 2, 3, … since the agent started (never reused, survives `set_enabled`).
    pub seq: u64,
    pub time_unix_ms: i64,
    pub client: IpAddr,
    pub name: String,
    pub qtype: RecordType,
    pub outcome: Outcome,
    /// Receipt to response, measured in the handler.
    pub latency_us: u32,
    /// For a blocked query: the blocklist source that blocked it (its path or URL); empty otherwise.
    pub list: String,
}

/// Which entries a reader wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The client's address is in this prefix (`10.0.0.0/24`, or one address as `/32` / `/128`).
    pub client: Option<(IpAddr, u8)>,
    /// Lowercase; the query name (without its trailing dot) contains it.
    pub name: Option<String>,
    pub outcome: Option<Outcome>,
    /// Only entries recorded after this sequence number (a follower's cursor); they come oldest first.
    pub after_seq: Option<u64>,
}

impl Filter {
    fn matches(&self, e: &LogEntry) -> bool {
        self.client.is_none_or(|(net, len)| in_prefix(e.client, net, len))
            && self.outcome.is_none_or(|o| o == e.outcome)
            && self.name.as_deref().is_none_or(|n| e.name.to_ascii_lowercase().contains(n))
            && self.after_seq.is_none_or(|s| e.seq > s)
    }
}

/// Parses a client filter: an address or `ADDRESS/LEN`.
pub(crate) fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.trim().parse().map_err(|_| format!("`{s}` is not an IP address or ADDRESS/LEN prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => {
            l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| format!("`{s}`: prefix length must be 0-{max}"))?
        }
    };
    Ok((ip, len))
}

fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let bits = |ip: IpAddr| -> Option<(u128, u32)> {
        match ip {
            IpAddr::V4(a) => Some((u128::from(u32::from(a)), 32)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if net.is_ipv4() => Some((u128::from(u32::from(v4)), 32)),
                _ => Some((u128::from(a), 128)),
            },
        }
    };
    let (Some((a, wa)), Some((b, wb))) = (bits(ip), bits(net)) else { return false };
    if wa != wb {
        return false;
    }
    let len = u32::from(len).min(wa);
    if len == 0 {
        return true;
    }
    let shift = wa - len;
    (a >> shift) == (b >> shift)
}

/// One answer: the entries, and the newest sequence number the log has given (a follower's next cursor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub entries: Vec<LogEntry>,
    pub last_seq: u64,
    /// More entries matched than the answer carries (the limit or [`MAX_ANSWER`]).
    pub truncated: bool,
}

/// A ring buffer of recent queries; recording does nothing (and takes no lock) while disabled.
#[derive(Debug)]
pub(crate) struct QueryLog {
    enabled: AtomicBool,
    capacity: usize,
    entries: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<LogEntry>,
    last_seq: u64,
}

impl QueryLog {
    pub(crate) fn new(enabled: bool, capacity: usize) -> Self {
        QueryLog { enabled: AtomicBool::new(enabled), capacity: capacity.max(1), entries: Mutex::default() }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns logging on or off (reload); turning it off forgets what was logged.
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if !on {
            self.lock().entries.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an entry built by `entry` (only called when enabled, so disabled logging costs nothing); its `seq` is
    /// set here.
    pub(crate) fn record(&self, entry: impl FnOnce() -> LogEntry) {
        if !self.enabled() {
            return;
        }
        let mut e = entry();
        let mut q = self.lock();
        q.last_seq += 1;
        e.seq = q.last_seq;
        if q.entries.len() >= self.capacity {
            q.entries.pop_front();
        }
        q.entries.push_back(e);
    }

    /// Up to `limit` most recent entries, newest first (`limit` 0 means all, capped at [`MAX_ANSWER`]).
    #[cfg(test)]
    pub(crate) fn recent(&self, limit: usize) -> Vec<LogEntry> {
        self.query(&Filter::default(), limit).entries
    }

    /// The entries `filter` selects, at most `limit` (0: [`MAX_ANSWER`]; never more than it): the most recent ones
    /// newest first, or, with a cursor (`after_seq`), the oldest ones after it, oldest first, so that a follower
    /// asking again from the last one it got misses nothing the ring still holds.
    pub(crate) fn query(&self, filter: &Filter, limit: usize) -> Page {
        let cap = if limit == 0 { MAX_ANSWER } else { limit.min(MAX_ANSWER) };
        let q = self.lock();
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut take = |e: &LogEntry| {
            if !filter.matches(e) {
                return true;
            }
            if entries.len() == cap {
                truncated = true;
                return false;
            }
            entries.push(e.clone());
            true
        };
        match filter.after_seq {
            Some(after) => {
                // Sequence numbers are consecutive in the ring: skip straight to the first one after the cursor.
                let first = q.entries.front().map_or(0, |e| e.seq);
                let skip = usize::try_from(after.saturating_sub(first).saturating_add(1)).unwrap_or(usize::MAX);
                for e in q.entries.iter().skip(if after >= first { skip } else { 0 }) {
                    if !take(e) {
                        break;
                    }
                }
            }
            None => {
                for e in q.entries.iter().rev() {
                    if !take(e) {
                        break;
                    }
                }
            }
        }
        Page { entries, last_seq: q.last_seq, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> LogEntry {
        LogEntry {
            seq: 0,
            list: String::new(),
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

    fn logged(client: &str, name: &str, outcome: Outcome) -> LogEntry {
        LogEntry { client: client.parse().unwrap(), name: name.into(), outcome, ..entry(0) }
    }

    #[test]
    fn filters_narrow_and_answers_are_capped() {
        let log = QueryLog::new(true, 100);
        log.record(|| logged("10.0.0.5", "ads.example.", Outcome::Blocked));
        log.record(|| logged("10.0.0.6", "photos.lab.", Outcome::Local));
        log.record(|| logged("192.168.1.9", "Photos.Lab.", Outcome::Forwarded));
        log.record(|| logged("::ffff:10.0.0.7", "x.example.", Outcome::NxDomain));
        let names = |f: Filter| -> Vec<String> { log.query(&f, 0).entries.into_iter().map(|e| e.name).collect() };
        let net = parse_prefix("10.0.0.0/24").unwrap();
        assert_eq!(
            names(Filter { client: Some(net), ..Filter::default() }),
            ["x.example.", "photos.lab.", "ads.example."]
        );
        let one = parse_prefix("10.0.0.6").unwrap();
        assert_eq!(names(Filter { client: Some(one), ..Filter::default() }), ["photos.lab."]);
        assert_eq!(names(Filter { name: Some("photos".into()), ..Filter::default() }), ["Photos.Lab.", "photos.lab."]);
        assert_eq!(names(Filter { outcome: Some(Outcome::Blocked), ..Filter::default() }), ["ads.example."]);
        let both = Filter { name: Some("photos".into()), client: Some(net), ..Filter::default() };
        assert_eq!(names(both), ["photos.lab."]);
        assert_eq!(parse_prefix("::/0").unwrap().1, 0);
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::1/129"] {
            assert!(parse_prefix(bad).unwrap_err().contains(bad), "{bad}");
        }

        // The cap: never more than MAX_ANSWER per answer, and the answer says so.
        let big = QueryLog::new(true, MAX_ANSWER + 50);
        for i in 0..(MAX_ANSWER as i64 + 50) {
            big.record(|| entry(i));
        }
        let page = big.query(&Filter::default(), 0);
        assert!(page.truncated && page.entries.len() == MAX_ANSWER);
        assert_eq!(big.query(&Filter::default(), 1_000_000).entries.len(), MAX_ANSWER);
        let page = big.query(&Filter::default(), 10);
        assert!(page.truncated && page.entries.len() == 10 && page.entries[0].seq == page.last_seq);
    }

    #[test]
    fn a_cursor_gives_what_came_after_it_oldest_first() {
        let log = QueryLog::new(true, 4);
        for i in 1..=3 {
            log.record(|| entry(i));
        }
        let page = log.query(&Filter { after_seq: Some(0), ..Filter::default() }, 0);
        assert_eq!(page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(page.last_seq, 3);
        let after = |s: u64| -> Vec<u64> {
            log.query(&Filter { after_seq: Some(s), ..Filter::default() }, 0).entries.iter().map(|e| e.seq).collect()
        };
        assert!(after(3).is_empty());
        for i in 4..=7 {
            log.record(|| entry(i));
        }
        // The ring holds 4..=7: a cursor older than the ring gets all it holds (the follower sees the gap).
        assert_eq!(after(1), [4, 5, 6, 7]);
        assert_eq!(after(5), [6, 7]);
        assert!(after(7).is_empty() && after(100).is_empty());
        // Sequence numbers go on across a disable/enable: a cursor never sees an old number again.
        log.set_enabled(false);
        log.set_enabled(true);
        log.record(|| entry(8));
        assert_eq!(after(7), [8]);
    }
}
