//! The forwarder's answer cache: bounded in entries and in bytes (least recently used goes first), TTL-aware, with
//! the bookkeeping for prefetch and serve-stale (RFC 8767). Knows nothing of upstreams, transports or config files.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::serialize::binary::BinEncodable;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::upstream::Reply;
use super::{Answer, AnswerSource};

/// Positive answers are kept at most this long, whatever their TTL.
pub(crate) const MAX_POSITIVE_TTL: u32 = 86_400;
/// Negative answers (NXDOMAIN, NODATA) are kept at most this long.
pub(crate) const MAX_NEGATIVE_TTL: u32 = 3_600;
/// Negative answers without an SOA (nothing says how long they hold) are kept this long.
pub(crate) const NEGATIVE_TTL_WITHOUT_SOA: u32 = 5;
/// Nothing is kept for less than this (a TTL of 0 would make every query a miss).
pub(crate) const MIN_TTL: u32 = 1;
/// How long after expiry an entry may still be served when every upstream fails (RFC 8767 max-stale).
pub(crate) const MAX_STALE: Duration = Duration::from_secs(86_400);
/// TTL given to stale records (RFC 8767 §4 recommends 30 s).
pub(crate) const STALE_TTL: u32 = 30;
/// After a stale answer, further queries get the stale answer at once for this long, while one background refresh
/// at a time tries the upstreams (RFC 8767 stale-refresh-time).
pub(crate) const STALE_REFRESH: Duration = Duration::from_secs(30);
/// An entry is prefetched once it has been hit this many times…
pub(crate) const PREFETCH_MIN_HITS: u32 = 2;
/// …and less than this share of its TTL is left (or less than `PREFETCH_WINDOW`, when that is under half the TTL).
pub(crate) const PREFETCH_FRACTION: u32 = 10;
pub(crate) const PREFETCH_WINDOW: Duration = Duration::from_secs(5);

/// What a cache entry is about: the query, and which upstream group answered it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// Lowercase, fully qualified.
    pub(crate) name: Name,
    pub(crate) rtype: RecordType,
    pub(crate) group: usize,
    /// The client's CD bit: an answer asked for without validation upstream (CD) is never given for a query with
    /// validation, nor the other way round.
    pub(crate) cd: bool,
}

#[derive(Debug)]
struct Entry {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
    authenticated: bool,
    bogus: bool,
    stored: Instant,
    ttl: Duration,
    hits: u32,
    /// A background refresh of this entry is running.
    refreshing: bool,
    /// Every upstream failed at this time and a stale answer was given.
    failed_at: Option<Instant>,
    /// Position in the recency order.
    tick: u64,
    /// What the entry costs in memory ([`entry_cost`]).
    cost: usize,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.stored + self.ttl
    }

    fn answer(&self, now: Instant, source: AnswerSource) -> Answer {
        let elapsed = ceil_secs(now.saturating_duration_since(self.stored));
        let adjust = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = if source == AnswerSource::Stale { STALE_TTL } else { r.ttl.saturating_sub(elapsed) };
                    r
                })
                .collect()
        };
        Answer {
            rcode: self.rcode,
            answers: adjust(&self.answers),
            authority: adjust(&self.authority),
            authenticated: self.authenticated,
            bogus: self.bogus,
            source,
        }
    }
}

fn ceil_secs(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// What the cache knows about a query.
#[derive(Debug)]
pub(crate) enum Hit {
    /// A fresh answer; `refresh` says the caller should refresh the entry in the background (the entry is now
    /// marked as refreshing, so only one caller is told).
    Fresh {
        answer: Answer,
        refresh: bool,
        /// Until then the cache gives this very answer (same TTLs): its age's next whole second, or its expiry.
        until: Instant,
    },
    /// Expired, but the upstreams failed moments ago: a stale answer without asking them again. `refresh` as above.
    StaleHeld {
        answer: Answer,
        refresh: bool,
    },
    Miss,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, Key>,
    next_tick: u64,
    /// Sum of the entries' costs.
    bytes: usize,
}

impl Inner {
    fn touch(&mut self, key: &Key) {
        let tick = self.next_tick;
        if let Some(entry) = self.map.get_mut(key) {
            self.order.remove(&entry.tick);
            entry.tick = tick;
            self.order.insert(tick, key.clone());
            self.next_tick += 1;
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.map.remove(key) {
            self.order.remove(&entry.tick);
            self.bytes -= entry.cost;
        }
    }

    /// Removes the least recently used entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, oldest)) = self.order.pop_first() else { return false };
        if let Some(entry) = self.map.remove(&oldest) {
            self.bytes -= entry.cost;
        }
        true
    }
}

/// Bookkeeping per entry beyond its records: the key and entry in the map, the key again in the recency order, and
/// allocator overhead.
const ENTRY_OVERHEAD: usize = 2 * size_of::<Key>() + size_of::<Entry>() + size_of::<u64>() + 64;
/// Heap bookkeeping of one item inside record data (a TXT character-string, an SVCB parameter): its pointer and
/// length, and the allocator's minimum chunk.
const ITEM_OVERHEAD: usize = 48;

/// What one record costs in memory: its struct, its wire length standing for the heap behind its name and data, and
/// the per-item overhead of data made of many small allocations (where the wire length alone would underestimate
/// it many times over: a TXT record of 1-byte strings).
fn record_cost(r: &Record) -> usize {
    let wire = r.to_bytes().map(|b| b.len()).unwrap_or(usize::from(u16::MAX));
    let items = match &r.data {
        RData::TXT(t) => t.txt_data.len(),
        RData::SVCB(s) => s.svc_params.len(),
        RData::HTTPS(h) => h.0.svc_params.len(),
        _ => 0,
    };
    size_of::<Record>() + wire + items * ITEM_OVERHEAD
}

/// What an entry holding `records` costs, [`ENTRY_OVERHEAD`] included.
pub(crate) fn entry_cost<'a>(key: &Key, records: impl Iterator<Item = &'a Record>) -> usize {
    ENTRY_OVERHEAD + 2 * key.name.len() + records.map(record_cost).sum::<usize>()
}

/// A cache of at most `capacity` answers and `max_bytes` bytes (as [`entry_cost`] counts them). A capacity of 0
/// disables it (then there is no prefetch and no serve-stale either); an answer larger than `max_bytes` alone is
/// given to the client but not kept.
#[derive(Debug)]
pub(crate) struct Cache {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// `Inner::bytes`, readable without the lock (metrics).
    bytes: AtomicUsize,
}

impl Cache {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Cache { capacity, max_bytes, inner: Mutex::new(Inner::default()), bytes: AtomicUsize::new(0) }
    }

    /// Bytes held by the cached answers (as [`entry_cost`] counts them); never above `max_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Looks a query up, counting the hit and deciding on prefetch.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Hit {
        let mut inner = self.lock();
        let Some(entry) = inner.map.get_mut(key) else { return Hit::Miss };
        let expires = entry.expires();
        if now < expires {
            entry.hits = entry.hits.saturating_add(1);
            let left = expires - now;
            let window = (entry.ttl / PREFETCH_FRACTION).max(PREFETCH_WINDOW.min(entry.ttl / 2));
            let refresh = !entry.refreshing && entry.hits >= PREFETCH_MIN_HITS && left < window;
            entry.refreshing |= refresh;
            let answer = entry.answer(now, AnswerSource::Cached);
            let age = Duration::from_secs(u64::from(ceil_secs(now.saturating_duration_since(entry.stored))));
            let until = (entry.stored + age).min(expires);
            inner.touch(key);
            return Hit::Fresh { answer, refresh, until };
        }
        if now.saturating_duration_since(expires) > MAX_STALE {
            inner.remove(key);
            self.bytes.store(inner.bytes, Ordering::Relaxed);
            return Hit::Miss;
        }
        if entry.failed_at.is_some_and(|t| now.saturating_duration_since(t) < STALE_REFRESH) {
            let refresh = !entry.refreshing;
            entry.refreshing = true;
            let answer = entry.answer(now, AnswerSource::Stale);
            inner.touch(key);
            return Hit::StaleHeld { answer, refresh };
        }
        Hit::Miss
    }

    /// The expired answer to give when every upstream failed, if it expired less than `MAX_STALE` ago.
    pub(crate) fn stale(&self, key: &Key, now: Instant) -> Option<Answer> {
        let mut inner = self.lock();
        let entry = inner.map.get_mut(key)?;
        let expires = entry.expires();
        if now < expires {
            // Refreshed meanwhile by someone else.
            return Some(entry.answer(now, AnswerSource::Cached));
        }
        if now.saturating_duration_since(expires) > MAX_STALE {
            inner.remove(key);
            self.bytes.store(inner.bytes, Ordering::Relaxed);
            return None;
        }
        entry.failed_at = Some(now);
        let answer = entry.answer(now, AnswerSource::Stale);
        inner.touch(key);
        Some(answer)
    }

    /// A background refresh failed: let a later hit try again.
    pub(crate) fn refresh_failed(&self, key: &Key, now: Instant) {
        if let Some(entry) = self.lock().map.get_mut(key) {
            entry.refreshing = false;
            if now >= entry.expires() {
                entry.failed_at = Some(now);
            }
        }
    }

    /// Normalises an upstream reply (TTL caps) and stores it, evicting the least recently used entries beyond
    /// capacity or the byte bound. Returns what the client gets (source `Forwarded`).
    pub(crate) fn insert(&self, key: Key, reply: Reply, now: Instant) -> Answer {
        let (ttl, answers, authority) = normalise(&reply, key.rtype);
        let answer = Answer {
            rcode: reply.rcode,
            answers: answers.clone(),
            authority: authority.clone(),
            authenticated: reply.authenticated,
            bogus: reply.bogus,
            source: AnswerSource::Forwarded,
        };
        if self.capacity == 0 {
            return answer;
        }
        let cost = entry_cost(&key, answers.iter().chain(authority.iter()));
        let mut inner = self.lock();
        inner.remove(&key);
        if cost > self.max_bytes {
            self.bytes.store(inner.bytes, Ordering::Relaxed);
            return answer;
        }
        while inner.map.len() >= self.capacity || inner.bytes + cost > self.max_bytes {
            if !inner.evict_oldest() {
                break;
            }
        }
        let tick = inner.next_tick;
        inner.next_tick += 1;
        inner.order.insert(tick, key.clone());
        let entry = Entry {
            rcode: reply.rcode,
            answers,
            authority,
            authenticated: reply.authenticated,
            bogus: reply.bogus,
            stored: now,
            ttl: Duration::from_secs(u64::from(ttl)),
            hits: 0,
            refreshing: false,
            failed_at: None,
            tick,
            cost,
        };
        inner.map.insert(key, entry);
        inner.bytes += cost;
        self.bytes.store(inner.bytes, Ordering::Relaxed);
        answer
    }
}

/// The cache lifetime of a reply and its records with TTLs capped to it: positive answers live for the smallest
/// record TTL (at most a day); negative ones (NXDOMAIN, NODATA) for min(SOA TTL, SOA minimum) (at most an hour).
fn normalise(reply: &Reply, rtype: RecordType) -> (u32, Vec<Record>, Vec<Record>) {
    let negative = reply.rcode == ResponseCode::NXDomain
        || !reply.answers.iter().any(|r| rtype == RecordType::ANY || r.record_type() == rtype);
    let min_answer = reply.answers.iter().map(|r| r.ttl).min();
    let ttl = if negative {
        let soa_ttl = reply
            .authority
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL_WITHOUT_SOA)
            .min(MAX_NEGATIVE_TTL);
        min_answer.map_or(soa_ttl, |a| a.min(soa_ttl))
    } else {
        min_answer.unwrap_or(MIN_TTL).min(MAX_POSITIVE_TTL)
    };
    let cap = if negative { MAX_NEGATIVE_TTL } else { MAX_POSITIVE_TTL };
    let capped = |records: &[Record], limit: u32| -> Vec<Record> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.ttl = r.ttl.min(limit);
                r
            })
            .collect()
    };
    // The SOA of a negative answer carries the negative TTL itself (RFC 2308 §3).
    let authority = capped(&reply.authority, if negative { ttl } else { cap });
    (ttl.max(MIN_TTL), capped(&reply.answers, cap), authority)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn key(name: &str, rtype: RecordType) -> Key {
        Key { name: Name::from_str(name).unwrap(), rtype, group: 0, cd: false }
    }

    fn plain_reply() -> Reply {
        Reply { rcode: ResponseCode::NoError, answers: vec![], authority: vec![], authenticated: false, bogus: false }
    }

    fn a_reply(name: &str, ttl: u32) -> Reply {
        let record = Record::from_rdata(Name::from_str(name).unwrap(), ttl, RData::A(A::new(192, 0, 2, 1)));
        Reply { rcode: ResponseCode::NoError, answers: vec![record], authority: vec![], ..plain_reply() }
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let soa = SOA::new(
            Name::from_str("ns.t.").unwrap(),
            Name::from_str("admin.t.").unwrap(),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        Record::from_rdata(Name::from_str("t.").unwrap(), ttl, RData::SOA(soa))
    }

    #[test]
    fn least_recently_used_goes_first() {
        let cache = Cache::new(2, usize::MAX);
        let t0 = Instant::now();
        cache.insert(key("a.t.", RecordType::A), a_reply("a.t.", 60), t0);
        cache.insert(key("b.t.", RecordType::A), a_reply("b.t.", 60), t0);
        assert!(matches!(cache.get(&key("a.t.", RecordType::A), t0), Hit::Fresh { .. }));
        cache.insert(key("c.t.", RecordType::A), a_reply("c.t.", 60), t0);
        assert_eq!(cache.len(), 2);
        assert!(matches!(cache.get(&key("a.t.", RecordType::A), t0), Hit::Fresh { .. }));
        assert!(matches!(cache.get(&key("b.t.", RecordType::A), t0), Hit::Miss));
        assert!(matches!(cache.get(&key("c.t.", RecordType::A), t0), Hit::Fresh { .. }));
        // Replacing an entry does not grow the cache.
        cache.insert(key("c.t.", RecordType::A), a_reply("c.t.", 60), t0);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lock().order.len(), 2);
    }

    #[test]
    fn ttls_are_capped_decremented_and_negative_ttl_comes_from_the_soa() {
        let cache = Cache::new(10, usize::MAX);
        let t0 = Instant::now();
        let answer = cache.insert(key("a.t.", RecordType::A), a_reply("a.t.", 10 * 86_400), t0);
        assert_eq!(answer.answers[0].ttl, MAX_POSITIVE_TTL);
        let Hit::Fresh { answer, until, .. } = cache.get(&key("a.t.", RecordType::A), t0 + Duration::from_millis(2500))
        else {
            panic!("expected a fresh hit");
        };
        assert_eq!(answer.answers[0].ttl, MAX_POSITIVE_TTL - 3);
        assert_eq!(until, t0 + Duration::from_secs(3), "the same TTLs until the age reaches 3 s");
        assert_eq!(answer.source, AnswerSource::Cached);

        let nx =
            Reply { rcode: ResponseCode::NXDomain, answers: vec![], authority: vec![soa(3600, 7)], ..plain_reply() };
        let answer = cache.insert(key("nx.t.", RecordType::A), nx, t0);
        assert_eq!(answer.authority[0].ttl, 7);
        let Hit::Fresh { until, .. } = cache.get(&key("nx.t.", RecordType::A), t0 + Duration::from_millis(6500)) else {
            panic!("expected a fresh hit");
        };
        assert_eq!(until, t0 + Duration::from_secs(7), "never past the expiry");
        assert!(matches!(cache.get(&key("nx.t.", RecordType::A), t0 + Duration::from_secs(8)), Hit::Miss));
        let stale = cache.stale(&key("nx.t.", RecordType::A), t0 + Duration::from_secs(8)).unwrap();
        assert_eq!(
            (stale.rcode, stale.source, stale.authority[0].ttl),
            (ResponseCode::NXDomain, AnswerSource::Stale, STALE_TTL)
        );
        // Just failed: the stale answer comes at once, and one refresh is asked for.
        assert!(matches!(
            cache.get(&key("nx.t.", RecordType::A), t0 + Duration::from_secs(9)),
            Hit::StaleHeld { refresh: true, .. }
        ));
        assert!(matches!(
            cache.get(&key("nx.t.", RecordType::A), t0 + Duration::from_secs(9)),
            Hit::StaleHeld { refresh: false, .. }
        ));
        // Beyond max-stale it is gone.
        assert!(cache.stale(&key("nx.t.", RecordType::A), t0 + MAX_STALE + Duration::from_secs(10)).is_none());
        assert_eq!(cache.len(), 1);

        let huge_soa = Reply {
            rcode: ResponseCode::NoError,
            answers: vec![],
            authority: vec![soa(99_999, 99_999)],
            ..plain_reply()
        };
        let answer = cache.insert(key("a.t.", RecordType::AAAA), huge_soa, t0);
        assert_eq!(answer.authority[0].ttl, MAX_NEGATIVE_TTL);
        let no_soa = Reply { rcode: ResponseCode::NXDomain, answers: vec![], authority: vec![], ..plain_reply() };
        cache.insert(key("x.t.", RecordType::A), no_soa, t0);
        assert!(matches!(cache.get(&key("x.t.", RecordType::A), t0 + Duration::from_secs(6)), Hit::Miss));
        let zero = cache.insert(key("z.t.", RecordType::A), a_reply("z.t.", 0), t0);
        assert_eq!(zero.answers[0].ttl, 0);
        assert!(matches!(cache.get(&key("z.t.", RecordType::A), t0 + Duration::from_millis(500)), Hit::Fresh { .. }));
    }

    #[test]
    fn prefetch_is_asked_for_once_when_popular_and_nearly_expired() {
        let cache = Cache::new(10, usize::MAX);
        let t0 = Instant::now();
        let k = key("a.t.", RecordType::A);
        cache.insert(k.clone(), a_reply("a.t.", 100), t0);
        // Early hits never prefetch.
        assert!(matches!(cache.get(&k, t0 + Duration::from_secs(1)), Hit::Fresh { refresh: false, .. }));
        assert!(matches!(cache.get(&k, t0 + Duration::from_secs(2)), Hit::Fresh { refresh: false, .. }));
        // Less than 10% left, hit twice before: one refresh.
        assert!(matches!(cache.get(&k, t0 + Duration::from_secs(95)), Hit::Fresh { refresh: true, .. }));
        assert!(matches!(cache.get(&k, t0 + Duration::from_secs(96)), Hit::Fresh { refresh: false, .. }));
        cache.refresh_failed(&k, t0 + Duration::from_secs(96));
        assert!(matches!(cache.get(&k, t0 + Duration::from_secs(97)), Hit::Fresh { refresh: true, .. }));

        // An entry hit only once near its end is not prefetched.
        let k2 = key("b.t.", RecordType::A);
        cache.insert(k2.clone(), a_reply("b.t.", 100), t0);
        assert!(matches!(cache.get(&k2, t0 + Duration::from_secs(95)), Hit::Fresh { refresh: false, .. }));
    }

    fn txt_reply(name: &str, strings: usize, len: usize) -> Reply {
        let txt = hickory_proto::rr::rdata::TXT::new(vec!["x".repeat(len); strings]);
        let record = Record::from_rdata(Name::from_str(name).unwrap(), 60, RData::TXT(txt));
        Reply { rcode: ResponseCode::NoError, answers: vec![record], authority: vec![], ..plain_reply() }
    }

    #[test]
    fn bytes_stay_under_the_bound_and_oversized_answers_are_not_kept() {
        let max = 200_000;
        let cache = Cache::new(10_000, max);
        let t0 = Instant::now();
        for i in 0..100 {
            let n = format!("big{i}.t.");
            cache.insert(key(&n, RecordType::TXT), txt_reply(&n, 40, 250), t0);
            assert!(cache.bytes() <= max, "{} bytes after {i}", cache.bytes());
        }
        let len = cache.len();
        assert!((10..20).contains(&len), "about 10 KB each: {len} entries");
        // The newest stay, the oldest went.
        assert!(matches!(cache.get(&key("big99.t.", RecordType::TXT), t0), Hit::Fresh { .. }));
        assert!(matches!(cache.get(&key("big0.t.", RecordType::TXT), t0), Hit::Miss));
        // Many tiny strings are costed per string, not by their few wire bytes.
        let tiny = txt_reply("tiny.t.", 1000, 1);
        let cost = entry_cost(&key("tiny.t.", RecordType::TXT), tiny.answers.iter());
        assert!(cost > 1000 * ITEM_OVERHEAD, "{cost}");
        let exact: usize = cache.lock().map.values().map(|e| e.cost).sum();
        assert_eq!(cache.bytes(), exact);
        // Larger than the whole bound: answered, not kept, and nothing else is evicted for it.
        let small = Cache::new(10, 50_000);
        small.insert(key("a.t.", RecordType::A), a_reply("a.t.", 60), t0);
        let answer = small.insert(key("huge.t.", RecordType::TXT), txt_reply("huge.t.", 255, 255), t0);
        assert_eq!(answer.answers.len(), 1);
        assert!(matches!(small.get(&key("huge.t.", RecordType::TXT), t0), Hit::Miss));
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn cd_and_validated_answers_are_kept_apart() {
        let cache = Cache::new(10, usize::MAX);
        let t0 = Instant::now();
        let plain = key("a.t.", RecordType::A);
        let cd = Key { cd: true, ..plain.clone() };
        // A bogus answer (validate mode) for the ordinary query; the CD query's data is another entry.
        let bogus = Reply { rcode: ResponseCode::ServFail, bogus: true, ..plain_reply() };
        cache.insert(plain.clone(), bogus, t0);
        assert!(matches!(cache.get(&cd, t0), Hit::Miss), "a CD query never gets the validated answer");
        cache.insert(cd.clone(), Reply { authenticated: false, ..a_reply("a.t.", 60) }, t0);
        let Hit::Fresh { answer, .. } = cache.get(&plain, t0) else { panic!("expected a fresh hit") };
        assert_eq!((answer.rcode, answer.bogus, answer.answers.len()), (ResponseCode::ServFail, true, 0));
        let Hit::Fresh { answer, .. } = cache.get(&cd, t0) else { panic!("expected a fresh hit") };
        assert_eq!((answer.rcode, answer.bogus, answer.answers.len()), (ResponseCode::NoError, false, 1));
        // AD is kept with the entry.
        cache.insert(plain.clone(), Reply { authenticated: true, ..a_reply("a.t.", 60) }, t0);
        let Hit::Fresh { answer, .. } = cache.get(&plain, t0) else { panic!("expected a fresh hit") };
        assert!(answer.authenticated);
    }

    #[test]
    fn disabled_cache_keeps_nothing() {
        let cache = Cache::new(0, usize::MAX);
        let answer = cache.insert(key("a.t.", RecordType::A), a_reply("a.t.", 60), Instant::now());
        assert_eq!(answer.source, AnswerSource::Forwarded);
        assert_eq!(cache.len(), 0);
    }
}
