//! The DNS agent's own Prometheus metrics: queries by type and outcome, answer latency, cache and blocklist sizes,
//! and the per-outcome totals the Stats RPC reports. Registered into the agent's shared `Metrics` registry.
//! Knows prometheus-client and the outcome names; must not know DNS messages, sockets or gRPC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
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

fn qtype_index(t: RecordType) -> usize {
    QTYPES.iter().position(|q| *q == t).unwrap_or(QTYPES.len())
}

fn qtype_label(i: usize) -> String {
    QTYPES.get(i).map(|t| t.to_string()).unwrap_or_else(|| "other".to_string())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: String,
    outcome: &'static str,
}

/// The agent's DNS metrics. Counting a query is a few atomic operations (counters are created up front).
#[derive(Clone)]
pub struct DnsMetrics {
    /// Indexed by `qtype_index * 8 + outcome index`.
    queries: Arc<Vec<Counter>>,
    totals: Arc<[AtomicU64; 8]>,
    latency: LatencyHistogram,
    cache_entries: Gauge,
    blocklist_entries: Gauge,
}

impl DnsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Metrics) -> Self {
        let family = Family::<QueryLabels, Counter>::default();
        let mut queries = Vec::with_capacity((QTYPES.len() + 1) * Outcome::ALL.len());
        for qt in 0..=QTYPES.len() {
            for o in Outcome::ALL {
                queries
                    .push(family.get_or_create(&QueryLabels { qtype: qtype_label(qt), outcome: o.as_str() }).clone());
            }
        }
        let latency = LatencyHistogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let m = DnsMetrics {
            queries: Arc::new(queries),
            totals: Arc::new(Default::default()),
            latency,
            cache_entries: Gauge::default(),
            blocklist_entries: Gauge::default(),
        };
        registry.register("dns_queries", "DNS queries by query type and outcome", family);
        registry.register("dns_query_duration_seconds", "Time to answer a DNS query", m.latency.clone());
        registry.register("dns_cache_entries", "Entries in the forwarder's cache", m.cache_entries.clone());
        registry.register(
            "dns_blocklist_entries",
            "Distinct names in the blocklist in use",
            m.blocklist_entries.clone(),
        );
        m
    }

    /// Counts one answered query.
    pub fn record(&self, qtype: RecordType, outcome: Outcome, latency: Duration) {
        let i = qtype_index(qtype) * Outcome::ALL.len() + outcome.index();
        if let Some(c) = self.queries.get(i) {
            c.inc();
        }
        self.totals[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }

    pub fn set_sizes(&self, cache_entries: usize, blocklist_entries: usize) {
        self.cache_entries.set(cache_entries as i64);
        self.blocklist_entries.set(blocklist_entries as i64);
    }

    /// Queries answered so far, per outcome name.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        Outcome::ALL.iter().map(|o| (o.as_str(), self.totals[o.index()].load(Ordering::Relaxed))).collect()
    }
}

/// A histogram of durations updated with atomics only (prometheus-client's `Histogram` takes a mutex per
/// observation, which every query on every core would contend for).
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug)]
struct LatencyInner {
    /// Upper bounds in seconds; the last is +Inf.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative).
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut bounds: Vec<f64> = bounds.into_iter().collect();
        bounds.push(f64::INFINITY);
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        LatencyHistogram { inner: Arc::new(LatencyInner { bounds, counts, sum_ns: AtomicU64::new(0) }) }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.inner.bounds.partition_point(|b| *b < secs).min(self.inner.counts.len() - 1);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> =
            self.inner.bounds.iter().zip(&self.inner.counts).map(|(b, c)| (*b, c.load(Ordering::Relaxed))).collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
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
        m.set_sizes(5, 1_000_000);
        let text = reg.encode();
        assert!(text.contains("strata_dns_queries_total{qtype=\"A\",outcome=\"local\"} 2"), "{text}");
        assert!(text.contains("strata_dns_queries_total{qtype=\"other\",outcome=\"refused\"} 1"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_count 3"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_bucket{le=\"0.00005\"} 1"), "{text}");
        assert!(text.contains("strata_dns_query_duration_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("strata_dns_blocklist_entries 1000000"), "{text}");
        let totals = m.totals();
        assert!(totals.contains(&("local", 2)) && totals.contains(&("refused", 1)) && totals.contains(&("stale", 0)));
    }
}
