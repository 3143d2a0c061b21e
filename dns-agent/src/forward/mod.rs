//! Forwarding of names the agent does not own: the `[forward]` config section, upstream-group selection
//! (conditional forwarding by longest matching domain), the cache policy around it (prefetch, serve-stale), and
//! coalescing of identical misses (one upstream query however many clients wait for it).
//! Knows nothing of the DNS server, local zones or blocklists: callers hand it a name and a type.

mod cache;
pub(crate) mod dnssec;
mod upstream;

// Tests run programs directly.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::config::ConfigError;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use serde::Deserialize;

use crate::metrics::UpstreamCounters;
use cache::{Cache, Hit, Key};
use dnssec::{Anchors, DnssecMode};
use upstream::UpstreamGroup;
pub(crate) use upstream::{parse_upstream, Upstream};

/// Default number of cached answers.
pub(crate) const DEFAULT_CACHE_SIZE: usize = 10_000;
/// Largest accepted `cache_size`.
pub(crate) const MAX_CACHE_SIZE: usize = 10_000_000;
/// Default bound of the cache's memory, in bytes (32 MiB: about 60,000 ordinary answers, more than `cache_size`).
pub(crate) const DEFAULT_CACHE_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Smallest accepted `cache_max_bytes` (one large answer must fit).
pub(crate) const MIN_CACHE_MAX_BYTES: u64 = 256 * 1024;
/// Largest accepted `cache_max_bytes` (16 GiB).
pub(crate) const MAX_CACHE_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// How long one lookup may spend on the upstreams of its group, all of them together.
pub(crate) const UPSTREAM_BUDGET: Duration = Duration::from_secs(2);

/// `[forward]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Default 10000; 0 disables the cache (and with it prefetch and serve-stale).
    pub cache_size: Option<usize>,
    /// Bound of the cache's memory in bytes; default 32 MiB.
    pub cache_max_bytes: Option<u64>,
    #[serde(default)]
    pub conditional: Vec<RawConditional>,
    /// `"transparent"` (default), `"validate"` or `"off"` (see [`DnssecMode`]).
    pub dnssec: Option<String>,
    /// `validate` mode: file of DNSKEY records to trust besides hickory's built-in root keys.
    pub trust_anchor: Option<PathBuf>,
}

/// `[[forward.conditional]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConditional {
    pub domain: String,
    pub upstreams: Vec<String>,
}

/// `[forward]`, validated.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub upstreams: Vec<Upstream>,
    pub cache_size: usize,
    /// The cache never holds more than this many bytes of answers.
    pub cache_max_bytes: usize,
    /// (lowercase domain without trailing dot, its upstreams).
    pub conditional: Vec<(String, Vec<Upstream>)>,
    pub dnssec: DnssecMode,
    /// The keys `validate` mode trusts (loaded at config time, so a bad file fails the load or reload).
    pub anchors: Anchors,
}

impl ForwardConfig {
    /// Checks every upstream and domain; errors name keys such as `forward.upstreams[0]` or
    /// `forward.conditional[1].domain`.
    pub fn validate(raw: RawForward, config_path: &Path) -> Result<Self, ConfigError> {
        let parse_list = |list: &[String], key: &str| -> Result<Vec<Upstream>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    parse_upstream(s).map_err(|e| ConfigError::invalid(config_path, format!("{key}[{i}]"), e))
                })
                .collect()
        };
        let upstreams = parse_list(&raw.upstreams, "forward.upstreams")?;
        let cache_size = raw.cache_size.unwrap_or(DEFAULT_CACHE_SIZE);
        if cache_size > MAX_CACHE_SIZE {
            return Err(ConfigError::invalid(
                config_path,
                "forward.cache_size",
                format!("cache size {cache_size} is above the maximum of {MAX_CACHE_SIZE}"),
            ));
        }
        let cache_max_bytes = raw.cache_max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES);
        if !(MIN_CACHE_MAX_BYTES..=MAX_CACHE_MAX_BYTES).contains(&cache_max_bytes) {
            return Err(ConfigError::invalid(
                config_path,
                "forward.cache_max_bytes",
                format!(
                    "{cache_max_bytes} bytes is outside {MIN_CACHE_MAX_BYTES}..={MAX_CACHE_MAX_BYTES} (256 KiB to 16 GiB)"
                ),
            ));
        }
        let cache_max_bytes = usize::try_from(cache_max_bytes).unwrap_or(usize::MAX);
        let mut conditional: Vec<(String, Vec<Upstream>)> = Vec::with_capacity(raw.conditional.len());
        for (i, c) in raw.conditional.iter().enumerate() {
            let key = format!("forward.conditional[{i}]");
            let domain = normalise_domain(&c.domain)
                .map_err(|e| ConfigError::invalid(config_path, format!("{key}.domain"), e))?;
            if let Some(j) = conditional.iter().position(|(d, _)| *d == domain) {
                return Err(ConfigError::invalid(
                    config_path,
                    format!("{key}.domain"),
                    format!("domain `{domain}` is already listed in forward.conditional[{j}]"),
                ));
            }
            if c.upstreams.is_empty() {
                return Err(ConfigError::invalid(
                    config_path,
                    format!("{key}.upstreams"),
                    format!("conditional domain `{domain}` has no upstreams"),
                ));
            }
            let list = parse_list(&c.upstreams, &format!("{key}.upstreams"))?;
            conditional.push((domain, list));
        }
        let dnssec = match raw.dnssec.as_deref() {
            None => DnssecMode::default(),
            Some(s) => DnssecMode::parse(s).map_err(|e| ConfigError::invalid(config_path, "forward.dnssec", e))?,
        };
        let anchors = match &raw.trust_anchor {
            None => Anchors::builtin(),
            Some(_) if dnssec != DnssecMode::Validate => {
                return Err(ConfigError::invalid(
                    config_path,
                    "forward.trust_anchor",
                    format!("a trust anchor is only used with dnssec = \"validate\" (dnssec is \"{dnssec}\")"),
                ))
            }
            Some(p) => Anchors::load(&agent_core::config::resolve(config_path, p))
                .map_err(|e| ConfigError::invalid(config_path, "forward.trust_anchor", e))?,
        };
        Ok(ForwardConfig { upstreams, cache_size, cache_max_bytes, conditional, dnssec, anchors })
    }
}

/// Lowercase ASCII (IDNs as punycode), no trailing dot; the root and malformed names are refused.
fn normalise_domain(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    let bare = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if bare.is_empty() {
        return Err(format!(
            "conditional domain `{s}` is empty or the root; forward.upstreams already covers every other name"
        ));
    }
    let name =
        Name::from_utf8(bare).map_err(|e| format!("conditional domain `{s}` is not a valid domain name: {e}"))?;
    if bare.split('.').any(str::is_empty) {
        return Err(format!("conditional domain `{s}` has an empty label"));
    }
    let ascii = name.to_lowercase().to_ascii();
    Ok(ascii.strip_suffix('.').unwrap_or(&ascii).to_string())
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerSource {
    /// Just asked upstream.
    Forwarded,
    /// From the cache, still within its TTL (TTLs decremented by the time spent in cache).
    Cached,
    /// From the cache, expired, because every upstream failed (RFC 8767); TTLs are 30 s.
    Stale,
}

/// The answer to a forwarded query. NXDOMAIN has `rcode` NXDomain; NODATA has NoError and no answers; either
/// carries the zone's SOA in `authority` when the upstream sent one.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// SOA of a negative answer; with it (and in positive answers) the NSEC/NSEC3 and RRSIG records of the proof.
    pub authority: Vec<Record>,
    /// The upstream set AD, or (`validate`) the agent found the answer secure.
    pub authenticated: bool,
    /// `validate`: the agent found the answer bogus (rcode SERVFAIL, no records).
    pub bogus: bool,
    pub source: AnswerSource,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream configured")]
    NoUpstream,
    #[error("every upstream failed: {0}")]
    Failed(String),
}

struct Inner {
    /// Index 0: `forward.upstreams`; then one per conditional domain, in config order.
    groups: Vec<UpstreamGroup>,
    /// Lowercase FQDN of each conditional domain → its group index.
    conditional: HashMap<Name, usize>,
    cache: Cache,
    /// Misses being asked upstream now: later identical misses wait for the same answer.
    inflight: Mutex<HashMap<Key, Arc<InFlight>>>,
    #[cfg(test)]
    upstream_queries: std::sync::atomic::AtomicU64,
}

/// One upstream query that every identical miss waits for: the first to arrive runs it; if its caller goes away
/// before it finishes, the next waiter runs it instead.
type InFlight = tokio::sync::OnceCell<Result<Answer, String>>;

/// Takes an in-flight entry out of the map when its last user is done (finished or cancelled), unless a newer
/// entry for the key has replaced it.
struct InFlightGuard<'a> {
    inner: &'a Inner,
    key: &'a Key,
    cell: Arc<InFlight>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
        // Two references left: the map's and ours. Any other waiter still needs the entry (a cancelled first caller
        // leaves its query to them).
        if map.get(self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) && Arc::strong_count(&self.cell) <= 2 {
            map.remove(self.key);
        }
    }
}

/// Forwards queries to upstream groups through a shared cache. Cheap to share: wrap it in an `Arc`.
pub(crate) struct Forwarder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("groups", &self.inner.groups.len())
            .field("cache_len", &self.inner.cache.len())
            .finish()
    }
}

impl Forwarder {
    /// A forwarder whose upstream counters are not shown anywhere (tests).
    #[cfg(test)]
    pub(crate) fn new(cfg: &ForwardConfig) -> Self {
        Self::with_counters(cfg, &|_| UpstreamCounters::default())
    }

    /// Builds one upstream group for `forward.upstreams` and one per conditional domain; each upstream counts its
    /// queries and failures on `counters(upstream)` (fetched once here, never per query). No connection is opened
    /// until the first query. TLS and HTTPS upstreams trust the system CA bundle.
    pub(crate) fn with_counters(cfg: &ForwardConfig, counters: &dyn Fn(&Upstream) -> UpstreamCounters) -> Self {
        let any_encrypted = cfg
            .upstreams
            .iter()
            .chain(cfg.conditional.iter().flat_map(|(_, u)| u.iter()))
            .any(|u| matches!(u, Upstream::Tls { .. } | Upstream::Https { .. }));
        let tls = if any_encrypted {
            upstream::system_tls_config()
                .inspect_err(|e| tracing::error!(error = %e, "tls and https upstreams will fail"))
                .ok()
        } else {
            None
        };
        let dnssec = (cfg.dnssec, &cfg.anchors);
        let mut groups = vec![UpstreamGroup::new(&cfg.upstreams, tls.as_ref(), UPSTREAM_BUDGET, counters, dnssec)];
        let mut conditional = HashMap::new();
        for (domain, upstreams) in &cfg.conditional {
            match Name::from_ascii(format!("{domain}.")) {
                Ok(name) => {
                    conditional.insert(name.to_lowercase(), groups.len());
                    groups.push(UpstreamGroup::new(upstreams, tls.as_ref(), UPSTREAM_BUDGET, counters, dnssec));
                }
                Err(e) => tracing::error!(%domain, error = %e, "conditional domain is not a valid name; ignored"),
            }
        }
        Forwarder {
            inner: Arc::new(Inner {
                groups,
                conditional,
                cache: Cache::new(cfg.cache_size, cfg.cache_max_bytes),
                inflight: Mutex::new(HashMap::new()),
                #[cfg(test)]
                upstream_queries: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Answers from the cache, or asks the group of the longest matching conditional domain (else the default
    /// group). Popular entries about to expire are refreshed in the background; when every upstream fails, an
    /// answer that expired less than a day ago is given as `Stale`. `cd` is the client's CD bit (RFC 4035
    /// §3.2.2): passed upstream, and part of the cache key.
    pub(crate) async fn lookup(&self, name: &Name, rtype: RecordType, cd: bool) -> Result<Answer, ForwardError> {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        let group = self.inner.group_for(&name).ok_or(ForwardError::NoUpstream)?;
        let key = Key { name, rtype, group, cd };
        match self.inner.cache.get(&key, Instant::now()) {
            Hit::Fresh { answer, refresh, .. } | Hit::StaleHeld { answer, refresh } => {
                if refresh {
                    tokio::spawn(Inner::refresh(self.inner.clone(), key));
                }
                return Ok(answer);
            }
            Hit::Miss => {}
        }
        match self.inner.ask_once(&key).await {
            Ok(answer) => Ok(answer),
            Err(e) => match self.inner.cache.stale(&key, Instant::now()) {
                Some(answer) => {
                    tracing::debug!(name = %key.name, rtype = %key.rtype, error = %e, "serving stale answer");
                    Ok(answer)
                }
                None => Err(ForwardError::Failed(e)),
            },
        }
    }

    /// What [`lookup`](Self::lookup) would answer from the cache, without waiting: `None` when it would have to ask
    /// an upstream (a miss, or no upstream for the name). Counts the hit and starts prefetch exactly as `lookup`
    /// does (on the current tokio runtime). With a fresh answer comes the instant until which the cache would give
    /// this very answer, TTLs included (callers may keep its encoding until then); stale answers come without.
    pub(crate) fn lookup_cached(&self, name: &Name, rtype: RecordType, cd: bool) -> Option<(Answer, Option<Instant>)> {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        let group = self.inner.group_for(&name)?;
        let key = Key { name, rtype, group, cd };
        let now = Instant::now();
        let (answer, refresh, until) = match self.inner.cache.get(&key, now) {
            Hit::Fresh { answer, refresh, until } => (answer, refresh, Some(until)),
            Hit::StaleHeld { answer, refresh } => (answer, refresh, None),
            Hit::Miss => return None,
        };
        if refresh {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(Inner::refresh(self.inner.clone(), key));
                }
                Err(_) => self.inner.cache.refresh_failed(&key, now),
            }
        }
        Some((answer, until))
    }

    /// Number of cached answers (fresh or stale).
    /// Why forwarding is failing: for each group (the default one, each conditional domain) whose every upstream
    /// failed its last queries recently, one reason per upstream. Empty while every group has an upstream answering.
    pub(crate) fn failing(&self) -> Vec<String> {
        let now = Instant::now();
        let mut domains: Vec<(usize, String)> =
            self.inner.conditional.iter().map(|(name, &i)| (i, name.to_string())).collect();
        domains.sort();
        let mut out = self.inner.groups.first().map(|g| g.failing(now)).unwrap_or_default();
        for (i, domain) in domains {
            if let Some(g) = self.inner.groups.get(i) {
                out.extend(g.failing(now).into_iter().map(|r| format!("{r} (forwarding {domain})")));
            }
        }
        out
    }

    pub(crate) fn cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    /// Bytes the cached answers take (bounded by `cache_max_bytes`). Takes no lock.
    pub(crate) fn cache_bytes(&self) -> usize {
        self.inner.cache.bytes()
    }

    #[cfg(test)]
    fn upstream_queries(&self) -> u64 {
        self.inner.upstream_queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Inner {
    fn group_for(&self, name: &Name) -> Option<usize> {
        if !self.conditional.is_empty() {
            for labels in (1..=name.num_labels()).rev() {
                if let Some(&g) = self.conditional.get(&name.trim_to(usize::from(labels))) {
                    return Some(g);
                }
            }
        }
        (!self.groups[0].is_empty()).then_some(0)
    }

    /// Asks upstream for a missed key and caches the reply, or waits for the same question already asked by
    /// another caller: N identical misses at once make one upstream query.
    async fn ask_once(&self, key: &Key) -> Result<Answer, String> {
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            let cell = map.entry(key.clone()).or_default();
            // A finished query whose waiters are still leaving: its answer is already in the cache (or failed); a
            // new miss asks again.
            if cell.initialized() {
                *cell = Arc::default();
            }
            cell.clone()
        };
        let guard = InFlightGuard { inner: self, key, cell };
        let result = guard
            .cell
            .get_or_init(|| async {
                match self.ask(key).await {
                    Ok(reply) => Ok(self.cache.insert(key.clone(), reply, Instant::now())),
                    Err(e) => Err(e),
                }
            })
            .await
            .clone();
        drop(guard);
        result
    }

    async fn ask(&self, key: &Key) -> Result<upstream::Reply, String> {
        #[cfg(test)]
        self.upstream_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.groups[key.group].query(&key.name, key.rtype, key.cd).await
    }

    /// Background refresh (prefetch, or retry after serving stale); at most one per key runs at a time.
    async fn refresh(self: Arc<Self>, key: Key) {
        match self.ask(&key).await {
            Ok(reply) => {
                self.cache.insert(key, reply, Instant::now());
            }
            Err(e) => {
                tracing::debug!(name = %key.name, rtype = %key.rtype, error = %e, "background refresh failed");
                self.cache.refresh_failed(&key, Instant::now());
            }
        }
    }
}
