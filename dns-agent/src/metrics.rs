//! The DNS agent's own Prometheus metrics: queries by type and outcome, answer latency, cache and blocklist sizes,
//! queries and failures per upstream, each blocklist's refresh health, and the per-outcome totals the Stats RPC
//! reports. Registered into the agent's shared `Metrics` registry.
//! Knows prometheus-client and the outcome names; must not know DNS messages, sockets or gRPC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::telemetry::Metrics;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::MetricType;

/// How a query was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// From a local zone (including local NODATA).
    Local,
    /// From an upstream.
    Forwarded,
    /// From the forwarder's cache.
    Cached,
    /// From the forwarder's cache after expiry, because upstreams failed.
    Stale,
    /// Blocked by a blocklist.
    Blocked,
    /// SERVFAIL: the upstreams failed.
    Failed,
    /// REFUSED, NOTIMP or FORMERR: not a question this server answers.
    Refused,
    /// NXDOMAIN from a local zone or an upstream.
    NxDomain,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Local,
        Outcome::Forwarded,
        Outcome::Cached,
        Outcome::Stale,
        Outcome::Blocked,
        Outcome::Failed,
        Outcome::Refused,
        Outcome::NxDomain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Local => "local",
            Outcome::Forwarded => "forwarded",
            Outcome::Cached => "cached",
            Outcome::Stale => "stale",
            Outcome::Blocked => "blocked",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::NxDomain => "nxdomain",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Query types with their own label value; everything else is `other` (label cardinality stays bounded).
const QTYPES: [RecordType; 12] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::MX,
    RecordType::PTR,
    RecordType::SOA,
    RecordType::NS,
    RecordType::HTTPS,
    RecordType::SVCB,
    RecordType::ANY,
];

/// Query counters: one per (query type label, outcome).
const SLOTS: usize = (QTYPES.len() + 1) * Outcome::ALL.len();

fn qtype_index(t: RecordType) -> usize {
    QTYPES.iter().position(|q| *q == t).unwrap_or(QTYPES.len())
}

fn qtype_label(i: usize) -> String {
    QTYPES.get(i).map(|t| t.to_string()).unwrap_or_else(|| "other".to_string())
}

/// The counter slot of a query type and outcome (see [`MetricsShard::record_slot`]).
pub(crate) fn slot(qtype: RecordType, outcome: Outcome) -> usize {
    qtype_index(qtype) * Outcome::ALL.len() + outcome.index()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    list: String,
}

/// One upstream's counters, created once per upstream (when the forwarder is built) and shared by every group that
/// lists it: counting is one atomic add, no lock and no label lookup.
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamCounters {
    queries: Counter,
    failures: Counter,
}

impl UpstreamCounters {
    /// A query was sent to the upstream.
    pub(crate) fn sent(&self) {
        self.queries.inc();
    }

    /// A query sent to the upstream failed (timeout, network error, SERVFAIL/REFUSED…).
    pub(crate) fn failed(&self) {
        self.failures.inc();
    }
}

/// One blocklist source's refresh record, as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListHealth {
    /// The path or URL without credentials (the `list` label).
    pub list: String,
    /// The last refresh of this list failed.
    pub failing: bool,
    /// When it was last read successfully (Unix seconds); 0 if never.
    pub last_success_unix: i64,
}

/// Upper bounds (seconds) of the latency buckets; the last is +Inf.
fn latency_bounds() -> Vec<f64> {
    let mut b: Vec<f64> = exponential_buckets(0.000_05, 2.0, 16).collect();
    b.push(f64::INFINITY);
    b
}

/// One set of counters. The shared set is written by many threads (atomic adds); a shard by one thread only
/// (plain load + store, no locked instruction, no cache line shared with another writer).
#[derive(Debug)]
struct Counts {
    queries: Vec<AtomicU64>,
    /// Observations per latency bucket (not cumulative).
    latency: Vec<AtomicU64>,
    latency_sum_ns: AtomicU64,
}

impl Counts {
    fn new(buckets: usize) -> Self {
        Counts {
            queries: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Latency bucket bounds in nanoseconds (the last is `u64::MAX`), for the hot path.
    bounds_ns: Vec<u64>,
    bounds: Vec<f64>,
    shared: Counts,
    /// One per single-writer shard (the UDP loops); read when metrics are scraped.
    shards: Mutex<Vec<Arc<Counts>>>,
}

impl Inner {
    fn bucket(&self, ns: u64) -> usize {
        self.bounds_ns.partition_point(|b| *b < ns).min(self.bounds_ns.len() - 1)
    }

    /// Sums `f` over the shared counts and every shard.
    fn sum(&self, f: impl Fn(&Counts) -> u64) -> u64 {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        f(&self.shared) + shards.iter().map(|c| f(c)).sum::<u64>()
    }
}

/// The agent's DNS metrics. Counting a query is a few atomic operations (counters exist up front); the UDP loops
/// count into their own [`MetricsShard`] without any locked instruction.
#[derive(Clone)]
pub(crate) struct DnsMetrics {
    inner: Arc<Inner>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    blocklist_entries: Gauge,
    upstream_queries: Family<UpstreamLabels, Counter>,
    upstream_failures: Family<UpstreamLabels, Counter>,
    list_failing: Family<ListLabels, Gauge>,
    list_success: Family<ListLabels, Gauge>,
    /// The lists shown now (those of the config in use), to drop the series of lists no longer configured.
    lists_shown: Arc<Mutex<Vec<String>>>,
    /// Zone transfers, NOTIFYs and serials.
    pub xfr: XfrMetrics,
}

impl DnsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn new(registry: &Metrics) -> Self {
        let bounds = latency_bounds();
        let bounds_ns =
            bounds.iter().map(|b| if b.is_finite() { (b * 1e9).round() as u64 } else { u64::MAX }).collect();
        let inner =
            Arc::new(Inner { bounds_ns, shared: Counts::new(bounds.len()), bounds, shards: Mutex::new(Vec::new()) });
        let m = DnsMetrics {
            inner,
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            blocklist_entries: Gauge::default(),
            upstream_queries: Family::default(),
            upstream_failures: Family::default(),
            list_failing: Family::default(),
            list_success: Family::default(),
            lists_shown: Arc::default(),
            xfr: XfrMetrics::default(),
        };
        m.xfr.register(registry);
        registry.register("dns_queries", "DNS queries by query type and outcome", QueryCounters(m.inner.clone()));
        registry.register(
            "dns_query_duration_seconds",
            "Time to answer a DNS query",
            LatencyHistogram(m.inner.clone()),
        );
        registry.register("dns_cache_entries", "Entries in the forwarder's cache", m.cache_entries.clone());
        registry.register(
            "dns_cache_bytes",
            "Bytes held by the forwarder's cache (bounded by forward.cache_max_bytes)",
            m.cache_bytes.clone(),
        );
        registry.register(
            "dns_blocklist_entries",
            "Distinct names in the blocklist in use",
            m.blocklist_entries.clone(),
        );
        registry.register("dns_upstream_queries", "Queries sent to each upstream", m.upstream_queries.clone());
        registry.register(
            "dns_upstream_failures",
            "Queries sent to each upstream that failed (timeout, network error, SERVFAIL or REFUSED)",
            m.upstream_failures.clone(),
        );
        registry.register(
            "dns_blocklist_refresh_failing",
            "1 when the last refresh of this blocklist source failed (an older copy may still be in use)",
            m.list_failing.clone(),
        );
        registry.register(
            "dns_blocklist_last_refresh_success_timestamp_seconds",
            "When this blocklist source was last read successfully (Unix seconds; 0 if never)",
            m.list_success.clone(),
        );
        m
    }

    /// The counters of `upstream` (its address as configured); the same ones for every call with the same name, so
    /// they keep counting across reloads.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamCounters {
        let labels = UpstreamLabels { upstream: upstream.to_string() };
        UpstreamCounters {
            queries: self.upstream_queries.get_or_create(&labels).clone(),
            failures: self.upstream_failures.get_or_create(&labels).clone(),
        }
    }

    /// Shows each configured blocklist source's refresh health; series of sources no longer listed are dropped.
    pub(crate) fn set_blocklists(&self, lists: &[ListHealth]) {
        let mut shown = self.lists_shown.lock().unwrap_or_else(|e| e.into_inner());
        for gone in shown.iter().filter(|l| !lists.iter().any(|h| &h.list == *l)) {
            let labels = ListLabels { list: gone.clone() };
            self.list_failing.remove(&labels);
            self.list_success.remove(&labels);
        }
        for h in lists {
            let labels = ListLabels { list: h.list.clone() };
            self.list_failing.get_or_create(&labels).set(i64::from(h.failing));
            self.list_success.get_or_create(&labels).set(h.last_success_unix);
        }
        *shown = lists.iter().map(|h| h.list.clone()).collect();
    }

    /// Counts one answered query.
    pub(crate) fn record(&self, qtype: RecordType, outcome: Outcome, latency: Duration) {
        let c = &self.inner.shared;
        c.queries[slot(qtype, outcome)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        c.latency[self.inner.bucket(ns)].fetch_add(1, Ordering::Relaxed);
        c.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A new set of counters for one thread, counted in every total from now on.
    pub(crate) fn shard(&self) -> MetricsShard {
        let counts = Arc::new(Counts::new(self.inner.bounds.len()));
        self.inner.shards.lock().unwrap_or_else(|e| e.into_inner()).push(counts.clone());
        MetricsShard { inner: self.inner.clone(), counts }
    }

    pub(crate) fn set_sizes(&self, cache_entries: usize, cache_bytes: usize, blocklist_entries: usize) {
        self.cache_entries.set(cache_entries as i64);
        self.cache_bytes.set(i64::try_from(cache_bytes).unwrap_or(i64::MAX));
        self.blocklist_entries.set(blocklist_entries as i64);
    }

    /// Queries answered so far, per outcome name.
    pub(crate) fn totals(&self) -> Vec<(&'static str, u64)> {
        let n = Outcome::ALL.len();
        Outcome::ALL
            .iter()
            .map(|o| {
                let i = o.index();
                let total =
                    self.inner.sum(|c| (0..=QTYPES.len()).map(|q| c.queries[q * n + i].load(Ordering::Relaxed)).sum());
                (o.as_str(), total)
            })
            .collect()
    }
}

/// Counters owned by one thread: `record_slot` takes `&mut self`, so there is a single writer and a plain load and
/// store suffice. Readers (scrapes) see every count at once; nothing is buffered.
#[derive(Debug)]
pub(crate) struct MetricsShard {
    inner: Arc<Inner>,
    counts: Arc<Counts>,
}

fn bump(c: &AtomicU64, by: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

impl MetricsShard {
    /// Counts one answered query; `slot` from [`slot`].
    pub(crate) fn record_slot(&mut self, slot: usize, latency: Duration) {
        if let Some(q) = self.counts.queries.get(slot) {
            bump(q, 1);
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.counts.latency[self.inner.bucket(ns)], 1);
        bump(&self.counts.latency_sum_ns, ns);
    }
}

/// `dns_queries_total{qtype, outcome}`, summed over the shared counters and the shards.
#[derive(Debug)]
struct QueryCounters(Arc<Inner>);

impl EncodeMetric for QueryCounters {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let n = Outcome::ALL.len();
        for q in 0..=QTYPES.len() {
            for o in Outcome::ALL {
                let i = q * n + o.index();
                let v = self.0.sum(|c| c.queries[i].load(Ordering::Relaxed));
                let labels = QueryLabels { qtype: qtype_label(q), outcome: o.as_str() };
                encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram of durations updated with atomics only (prometheus-client's `Histogram` takes a mutex per
/// observation, which every query on every core would contend for).
#[derive(Debug)]
struct LatencyHistogram(Arc<Inner>);

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, inner.sum(|c| c.latency[i].load(Ordering::Relaxed))))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = inner.sum(|c| c.latency_sum_ns.load(Ordering::Relaxed)) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_type_and_outcome() {
        let reg = Metrics::new();
        let m = DnsMetrics::new(&reg);
        m.record(RecordType::A, Outcome::Local, Duration::from_micros(80));
        m.record(RecordType::A, Outcome::Local, Duration::from_micros(80));
        m.record(RecordType::NULL, Outcome::Refused, Duration::from_micros(10));
        m.set_sizes(5, 4096, 1_000_000);
        let text = reg.encode();
        assert!(text.contains("strata_dns_queries_total{qtype=\"A\",outcome=\"local\"} 2"), "{text}");
        assert!(text.contains("strata_dns_queries_total{qtype=\"other\",outcome=\"refused\"} 1"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_count 3"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_bucket{le=\"0.00005\"} 1"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("strata_dns_blocklist_entries 1000000"), "{text}");
        assert!(text.contains("strata_dns_cache_bytes 4096"), "{text}");
        let totals = m.totals();
        assert!(totals.contains(&("local", 2)) && totals.contains(&("refused", 1)) && totals.contains(&("stale", 0)));
    }

    #[test]
    fn upstream_counters_are_shared_by_name() {
        let reg = Metrics::new();
        let m = DnsMetrics::new(&reg);
        let text = reg.encode();
        // Before any upstream exists the families have no sample, and prometheus-client then writes nothing for
        // them, not even HELP and TYPE.
        assert!(!text.contains("strata_dns_upstream"), "{text}");
        let a = m.upstream("udp://192.0.2.1:53");
        let again = m.upstream("udp://192.0.2.1:53");
        let b = m.upstream("tls://192.0.2.2:853#dns.example");
        a.sent();
        again.sent();
        again.failed();
        b.sent();
        let text = reg.encode();
        assert!(text.contains("strata_dns_upstream_queries_total{upstream=\"udp://192.0.2.1:53\"} 2"), "{text}");
        assert!(text.contains("strata_dns_upstream_failures_total{upstream=\"udp://192.0.2.1:53\"} 1"), "{text}");
        assert!(text.contains("strata_dns_upstream_queries_total{upstream=\"tls://192.0.2.2:853#dns.example\"} 1"));
        assert!(text.contains("strata_dns_upstream_failures_total{upstream=\"tls://192.0.2.2:853#dns.example\"} 0"));
    }

    #[test]
    fn blocklist_health_follows_the_configured_lists() {
        let reg = Metrics::new();
        let m = DnsMetrics::new(&reg);
        let h = |list: &str, failing, last_success_unix| ListHealth { list: list.into(), failing, last_success_unix };
        m.set_blocklists(&[h("/etc/lists/ads.txt", false, 1_700_000_000), h("https://lists.example/hosts", true, 0)]);
        let text = reg.encode();
        let cases = [
            "strata_dns_blocklist_refresh_failing{list=\"/etc/lists/ads.txt\"} 0",
            "strata_dns_blocklist_refresh_failing{list=\"https://lists.example/hosts\"} 1",
            "strata_dns_blocklist_last_refresh_success_timestamp_seconds{list=\"/etc/lists/ads.txt\"} 1700000000",
            "strata_dns_blocklist_last_refresh_success_timestamp_seconds{list=\"https://lists.example/hosts\"} 0",
        ];
        for want in cases {
            assert!(text.contains(want), "no {want} in\n{text}");
        }
        // A reload drops a list: its series go; the other's change.
        m.set_blocklists(&[h("https://lists.example/hosts", false, 1_700_000_100)]);
        let text = reg.encode();
        assert!(!text.contains("ads.txt"), "{text}");
        assert!(
            text.contains("strata_dns_blocklist_refresh_failing{list=\"https://lists.example/hosts\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn outcome_index_is_its_position() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }

    #[test]
    fn shards_count_in_every_total() {
        let reg = Metrics::new();
        let m = DnsMetrics::new(&reg);
        m.record(RecordType::A, Outcome::Local, Duration::from_micros(80));
        let mut s1 = m.shard();
        let mut s2 = m.shard();
        s1.record_slot(slot(RecordType::A, Outcome::Local), Duration::from_micros(20));
        s2.record_slot(slot(RecordType::A, Outcome::Local), Duration::from_millis(20));
        s2.record_slot(slot(RecordType::AAAA, Outcome::Blocked), Duration::from_micros(1));
        let text = reg.encode();
        assert!(text.contains("strata_dns_queries_total{qtype=\"A\",outcome=\"local\"} 3"), "{text}");
        assert!(text.contains("strata_dns_queries_total{qtype=\"AAAA\",outcome=\"blocked\"} 1"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_count 4"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_bucket{le=\"0.00005\"} 2"), "{text}");
        let totals = m.totals();
        assert!(totals.contains(&("local", 3)) && totals.contains(&("blocked", 1)), "{totals:?}");
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    zone: String,
    /// "out" (served by this agent as primary) or "in" (fetched as secondary).
    direction: &'static str,
    /// "axfr" or "ixfr".
    kind: &'static str,
    /// "ok", "refused", "notauth", "failed".
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    zone: String,
    /// "ok" (acknowledged), "timeout", "error", "gave_up".
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SerialLabels {
    zone: String,
    /// "primary" or "secondary".
    role: &'static str,
}

/// `strata_dns_transfers_total{zone,direction,kind,result}`, `strata_dns_notify_sent_total{zone,result}` and
/// `strata_dns_zone_serial{zone,role}`.
#[derive(Clone, Debug, Default)]
pub(crate) struct XfrMetrics {
    transfers: Family<TransferLabels, Counter>,
    notify_sent: Family<NotifyLabels, Counter>,
    serial: Family<SerialLabels, Gauge>,
}

impl XfrMetrics {
    fn register(&self, registry: &Metrics) {
        registry.register(
            "dns_transfers",
            "Zone transfers by zone, direction (out: served, in: fetched), kind (axfr, ixfr) and result",
            self.transfers.clone(),
        );
        registry.register("dns_notify_sent", "NOTIFY messages sent by zone and result", self.notify_sent.clone());
        registry.register(
            "dns_zone_serial",
            "Each zone's SOA serial by role (primary, secondary)",
            self.serial.clone(),
        );
    }

    pub(crate) fn transfer(&self, zone: &str, direction: &'static str, kind: &'static str, result: &'static str) {
        self.transfers.get_or_create(&TransferLabels { zone: zone.to_string(), direction, kind, result }).inc();
    }

    pub(crate) fn notify(&self, zone: &str, result: &'static str) {
        self.notify_sent.get_or_create(&NotifyLabels { zone: zone.to_string(), result }).inc();
    }

    pub(crate) fn serial(&self, zone: &str, role: &'static str, serial: u32) {
        self.serial.get_or_create(&SerialLabels { zone: zone.to_string(), role }).set(i64::from(serial));
    }
}
