//! Response rate limiting for UDP, as in BIND's RRL: each response is charged to a bucket named by the client's
//! prefix (IPv4 /24, IPv6 /56 by default) and the response's kind (an answer for one name and type, an NXDOMAIN
//! under one parent name, or an error); a bucket earns `responses_per_second` and may owe up to `window` seconds of
//! them; a response from an empty bucket is dropped, except every `slip`-th, which is sent truncated (TC=1, no
//! records) so that a real client asks again over TCP. The table is fixed-size and set-associative: a flood from
//! random prefixes evicts idle buckets and never grows it. Time is passed in (an `Instant`), so tests drive it.
//! Knows wire bytes of a question and a response's header and the arithmetic; must not know sockets, config files
//! or metrics.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::allow::{canonical, PrefixList};

/// `[dns.rrl]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second each bucket earns; 0 turns rate limiting off.
    pub responses_per_second: u32,
    /// How much a bucket may owe: a client over budget stays limited until it has been quiet this long.
    pub window: Duration,
    /// Every `slip`-th limited response is sent truncated; 0: none (all dropped), 1: all.
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Clients never limited (their source cannot be forged from outside: loopback by default).
    pub exempt: PrefixList,
}

pub(crate) const DEFAULT_RESPONSES_PER_SECOND: u32 = 100;
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(15);
pub(crate) const DEFAULT_SLIP: u32 = 2;
pub(crate) const DEFAULT_IPV4_PREFIX: u8 = 24;
pub(crate) const DEFAULT_IPV6_PREFIX: u8 = 56;
/// Largest `window` accepted.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Largest `responses_per_second` accepted (a bucket's balance must fit the arithmetic below with room to spare).
pub(crate) const MAX_RESPONSES_PER_SECOND: u32 = 10_000_000;

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            responses_per_second: DEFAULT_RESPONSES_PER_SECOND,
            window: DEFAULT_WINDOW,
            slip: DEFAULT_SLIP,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            exempt: PrefixList::loopback(),
        }
    }
}

impl RrlConfig {
    /// How the config reads in a log line or the bench's header.
    pub fn describe(&self) -> String {
        if self.responses_per_second == 0 {
            return "off".to_string();
        }
        format!(
            "{}/s per bucket, window {}s, slip {}, /{} and /{} per client, exempt [{}]",
            self.responses_per_second,
            self.window.as_secs(),
            self.slip,
            self.ipv4_prefix,
            self.ipv6_prefix,
            self.exempt.describe()
        )
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Send,
    Drop,
    /// Send it truncated ([`truncate`]).
    Slip,
}

/// Sets of the table; each holds [`WAYS`] buckets (4,096 in all, 32 bytes each, per UDP loop).
const SETS: usize = 1024;
const WAYS: usize = 4;
/// Balance units per response (balances count millionths of a response, so that a microsecond earns `rate`).
const UNIT: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// 0: free.
    key: u64,
    /// In millionths of a response; at most one second's worth, at least `-window` seconds' worth.
    balance: i64,
    /// Microseconds since the table's epoch when last charged.
    last_us: u64,
    /// Limited responses so far (for the slip count).
    limited: u64,
}

/// The buckets of one UDP loop (single-threaded: no locks).
#[derive(Debug)]
pub(crate) struct RrlTable {
    cfg: RrlConfig,
    epoch: Instant,
    buckets: Vec<[Bucket; WAYS]>,
}

impl RrlTable {
    /// `None` when rate limiting is off.
    pub(crate) fn new(cfg: &RrlConfig, epoch: Instant) -> Option<RrlTable> {
        (cfg.responses_per_second > 0).then(|| RrlTable {
            cfg: cfg.clone(),
            epoch,
            buckets: vec![[Bucket::default(); WAYS]; SETS],
        })
    }

    pub(crate) fn config(&self) -> &RrlConfig {
        &self.cfg
    }

    fn cap(&self) -> i64 {
        i64::from(self.cfg.responses_per_second) * UNIT
    }

    fn floor(&self) -> i64 {
        -(i64::from(self.cfg.responses_per_second) * i64::try_from(self.cfg.window.as_micros()).unwrap_or(i64::MAX))
    }

    /// Charges one response of kind `kind` (from [`kind_of`]) to `client` at `now`.
    pub(crate) fn charge(&mut self, client: IpAddr, kind: u64, now: Instant) -> Verdict {
        let client = canonical(client);
        if self.cfg.exempt.contains(client) {
            return Verdict::Send;
        }
        let key = mix(kind ^ mix(prefix_bits(client, self.cfg.ipv4_prefix, self.cfg.ipv6_prefix))) | 1;
        let now_us = u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX);
        let (rate, cap, floor) = (i64::from(self.cfg.responses_per_second), self.cap(), self.floor());
        let refilled = |b: &Bucket| {
            let earned = i64::try_from(now_us.saturating_sub(b.last_us)).unwrap_or(i64::MAX).saturating_mul(rate);
            b.balance.saturating_add(earned).min(cap)
        };
        let set = &mut self.buckets[(key as usize) % SETS];
        let way = match set.iter().position(|b| b.key == key) {
            Some(w) => w,
            None => {
                // A free bucket, else one that has earned its full budget back (it remembers nothing), else the one
                // charged longest ago.
                let w = set
                    .iter()
                    .position(|b| b.key == 0)
                    .or_else(|| set.iter().position(|b| refilled(b) >= cap))
                    .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| set[w].last_us).unwrap_or(0));
                set[w] = Bucket { key, balance: cap, last_us: now_us, limited: 0 };
                w
            }
        };
        let b = &mut set[way];
        b.balance = refilled(b) - UNIT;
        b.last_us = now_us;
        if b.balance >= 0 {
            return Verdict::Send;
        }
        b.balance = b.balance.max(floor);
        b.limited += 1;
        match self.cfg.slip {
            0 => Verdict::Drop,
            s if b.limited.is_multiple_of(u64::from(s)) => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }
}

/// The client's network: its address with everything after the configured prefix length zeroed, tagged by family.
fn prefix_bits(ip: IpAddr, v4: u8, v6: u8) -> u64 {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(v4.min(32))).unwrap_or(0);
            u64::from(u32::from(a) & m) | 4 << 56
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(v6.min(128))).unwrap_or(0);
            let n = u128::from(a) & m;
            mix((n >> 64) as u64) ^ (n as u64) ^ 6 << 56
        }
    }
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// Where the question's name ends in a message (offset of QTYPE), if it is a plain uncompressed name.
fn name_end(msg: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
}

/// The response kind a reply is charged as, from the request's question and the reply's rcode: an answer (or
/// NODATA) is one bucket per name and type, an NXDOMAIN one per parent name (random names under one domain share
/// it), anything else (REFUSED, SERVFAIL, FORMERR…) one bucket. Case does not matter. No allocation.
pub(crate) fn kind_of(request: &[u8], reply: &[u8]) -> u64 {
    const ERROR: u64 = 3;
    let rcode = reply.get(3).map_or(2, |b| b & 0x0f);
    let Some(end) = name_end(request) else { return ERROR };
    let name = &request[12..end];
    match rcode {
        0 => {
            let mut h = fnv(FNV_OFFSET, 1);
            for &b in name.iter().chain(request.get(end..end + 2).unwrap_or(&[])) {
                h = fnv(h, b.to_ascii_lowercase());
            }
            h
        }
        3 => {
            // Skip the first label.
            let skip = name.first().map_or(0, |l| usize::from(*l) + 1).min(name.len());
            let mut h = fnv(FNV_OFFSET, 2);
            for &b in &name[skip..] {
                h = fnv(h, b.to_ascii_lowercase());
            }
            h
        }
        _ => ERROR,
    }
}

/// The truncated form of `reply` into `out`: its header with TC set and no records, and its question.
pub(crate) fn truncate(reply: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let Some(header) = reply.get(..12) else { return };
    let question = name_end(reply).map(|e| e + 4).filter(|e| *e <= reply.len() && reply[4..6] == [0, 1]);
    out.extend_from_slice(header);
    out[2] |= 0x02;
    out[4..12].copy_from_slice(&[0, u8::from(question.is_some()), 0, 0, 0, 0, 0, 0]);
    if let Some(end) = question {
        out.extend_from_slice(&reply[12..end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p
    }

    fn reply_with(rcode: u8) -> Vec<u8> {
        vec![0, 0, 0x81, 0x80 | rcode, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    fn cfg(rate: u32, window_s: u64, slip: u32) -> RrlConfig {
        RrlConfig {
            responses_per_second: rate,
            window: Duration::from_secs(window_s),
            slip,
            exempt: PrefixList::parse("x", &[], true).unwrap(),
            ..RrlConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Verdicts of `n` responses sent `gap` apart, as a string: `.` sent, `x` dropped, `t` slipped.
    fn run(t: &mut RrlTable, at: &mut Instant, client: &str, kind: u64, n: usize, gap: Duration) -> String {
        (0..n)
            .map(|_| {
                let v = t.charge(ip(client), kind, *at);
                *at += gap;
                match v {
                    Verdict::Send => '.',
                    Verdict::Drop => 'x',
                    Verdict::Slip => 't',
                }
            })
            .collect()
    }

    #[test]
    fn budget_and_slip_arithmetic() {
        let epoch = Instant::now();
        // (rate, window s, slip, responses in a burst, the verdicts)
        let cases = [
            (5, 15, 2, 12, ".....xtxtxtx"),
            (5, 15, 1, 8, ".....ttt"),
            (5, 15, 0, 8, ".....xxx"),
            (5, 15, 3, 11, ".....xxtxxt"),
            (1, 15, 2, 3, ".xt"),
        ];
        for (rate, window, slip, n, want) in cases {
            let mut t = RrlTable::new(&cfg(rate, window, slip), epoch).unwrap();
            let mut at = epoch;
            assert_eq!(run(&mut t, &mut at, "198.18.0.2", 7, n, Duration::ZERO), want, "{rate}/s slip {slip}");
        }
    }

    #[test]
    fn budget_refills_with_time_and_debt_lasts_the_window() {
        let epoch = Instant::now();
        let mut t = RrlTable::new(&cfg(10, 2, 2), epoch).unwrap();
        let mut at = epoch;
        // 10 per second spaced evenly forever: never limited.
        assert_eq!(run(&mut t, &mut at, "198.18.0.2", 1, 50, Duration::from_millis(100)), ".".repeat(50));
        // A flood: the first 10 (the full second of credit) go, then limited; the debt floors at 2 s worth (20).
        let burst = run(&mut t, &mut at, "198.18.0.2", 1, 1000, Duration::ZERO);
        assert_eq!(&burst[..10], "..........");
        assert!(!burst[10..].contains('.'), "{burst}");
        // Quiet for 1 s: still 10 in debt, limited.
        at += Duration::from_secs(1);
        assert_ne!(run(&mut t, &mut at, "198.18.0.2", 1, 1, Duration::ZERO), ".");
        // The debt is repaid after the window (2 s from the floor): sent again.
        at += Duration::from_millis(2100);
        assert_eq!(run(&mut t, &mut at, "198.18.0.2", 1, 1, Duration::ZERO), ".");
    }

    #[test]
    fn buckets_are_per_prefix_and_kind() {
        let epoch = Instant::now();
        let mut t = RrlTable::new(&cfg(3, 15, 0), epoch).unwrap();
        let mut at = epoch;
        assert_eq!(run(&mut t, &mut at, "198.18.0.2", 1, 5, Duration::ZERO), "...xx");
        // The same /24: the same bucket.
        assert_eq!(run(&mut t, &mut at, "198.18.0.200", 1, 1, Duration::ZERO), "x");
        assert_eq!(run(&mut t, &mut at, "::ffff:198.18.0.9", 1, 1, Duration::ZERO), "x", "mapped IPv4 is IPv4");
        // Another /24, another kind: their own budgets.
        assert_eq!(run(&mut t, &mut at, "198.18.1.2", 1, 3, Duration::ZERO), "...");
        assert_eq!(run(&mut t, &mut at, "198.18.0.2", 2, 3, Duration::ZERO), "...");
        // IPv6: /56 by default.
        assert_eq!(run(&mut t, &mut at, "2001:db8:0:1::1", 1, 4, Duration::ZERO), "...x");
        assert_eq!(run(&mut t, &mut at, "2001:db8:0:ff::2", 1, 1, Duration::ZERO), "x", "same /56");
        assert_eq!(run(&mut t, &mut at, "2001:db8:0:100::1", 1, 1, Duration::ZERO), ".", "another /56");
    }

    #[test]
    fn exempt_clients_are_never_limited() {
        let epoch = Instant::now();
        let mut t = RrlTable::new(&RrlConfig { responses_per_second: 1, ..RrlConfig::default() }, epoch).unwrap();
        let mut at = epoch;
        assert_eq!(run(&mut t, &mut at, "127.0.0.1", 1, 100, Duration::ZERO), ".".repeat(100));
        assert_eq!(run(&mut t, &mut at, "::1", 1, 100, Duration::ZERO), ".".repeat(100));
        assert_eq!(run(&mut t, &mut at, "10.0.0.1", 1, 2, Duration::ZERO), ".x");
        assert!(RrlTable::new(&cfg(0, 15, 2), epoch).is_none(), "0/s is off");
    }

    #[test]
    fn a_flood_from_random_prefixes_does_not_grow_the_table_and_a_limited_client_stays_limited() {
        let epoch = Instant::now();
        let mut t = RrlTable::new(&cfg(5, 15, 0), epoch).unwrap();
        let mut at = epoch;
        assert_eq!(run(&mut t, &mut at, "198.18.0.2", 9, 6, Duration::ZERO), ".....x");
        let mut x: u32 = 1;
        for i in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            t.charge(IpAddr::V4(x.into()), 1, at);
            at += Duration::from_micros(1);
            // The limited client keeps asking, so its bucket is never the one charged longest ago.
            if i % 64 == 0 {
                t.charge(ip("198.18.0.2"), 9, at);
            }
        }
        assert_eq!(t.buckets.len(), SETS);
        assert_eq!(run(&mut t, &mut at, "198.18.0.2", 9, 1, Duration::ZERO), "x");
    }

    #[test]
    fn kinds_from_the_wire() {
        let (ok, nx, refused) = (reply_with(0), reply_with(3), reply_with(5));
        let k = |q: &[u8], r: &[u8]| kind_of(q, r);
        assert_eq!(k(&query("nas.lab.home.arpa", 1), &ok), k(&query("NAS.Lab.home.arpa", 1), &ok), "case");
        assert_ne!(k(&query("nas.lab.home.arpa", 1), &ok), k(&query("nas.lab.home.arpa", 28), &ok), "type");
        assert_ne!(k(&query("nas.lab.home.arpa", 1), &ok), k(&query("nas2.lab.home.arpa", 1), &ok), "name");
        assert_eq!(k(&query("x1.example.com", 1), &nx), k(&query("y2.example.com", 28), &nx), "one parent");
        assert_ne!(k(&query("x1.example.com", 1), &nx), k(&query("x1.example.org", 1), &nx));
        assert_ne!(k(&query("x1.example.com", 1), &nx), k(&query("x1.example.com", 1), &ok));
        assert_eq!(k(&query("a.example", 1), &refused), k(&query("b.other", 16), &reply_with(2)), "errors: one");
        assert_eq!(k(&[0; 5], &ok), k(&query("a.b", 1), &refused), "no question: an error");
        let mut compressed = query("a.b", 1);
        compressed[12] = 0xc0;
        assert_eq!(k(&compressed, &ok), k(&[], &refused));
    }

    #[test]
    fn truncated_replies_keep_the_header_and_question_only() {
        let mut reply = query("nas.lab.home.arpa", 1);
        reply[2] = 0x85;
        reply[3] = 0x80;
        reply[6..8].copy_from_slice(&[0, 1]);
        reply[10..12].copy_from_slice(&[0, 1]);
        let question_end = reply.len();
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 10]);
        let mut out = Vec::new();
        truncate(&reply, &mut out);
        assert_eq!(out.len(), question_end);
        assert_eq!(&out[..4], &[0x12, 0x34, 0x87, 0x80], "id, QR AA RD and now TC, RA");
        assert_eq!(&out[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[12..], &reply[12..question_end]);
        truncate(&[1, 2, 3], &mut out);
        assert!(out.is_empty());
        truncate(&reply_with(5), &mut out);
        assert_eq!(out, vec![0, 0, 0x83, 0x85, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
