//! Upstream DNS servers: parsing `udp://`, `tcp://`, `tls://`, `https://` addresses, querying a group of them in
//! order over hickory's transports, and keeping of each reply only what answers the question (the records of the
//! CNAME chain from the query name, the SOA of the zone it ends in); each query sent and each failure is counted on
//! the upstream's counters. Asks with DO and passes CD on (unless `dnssec = "off"`), keeps the RRSIG/NSEC/NSEC3
//! records that belong to the answer and its AD bit, and in `validate` mode validates with hickory's validator.
//! Knows nothing of caching, prefetch, serve-stale or config files.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::dnssec::Proof;
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::dnssec::DnssecDnsHandle;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use rustls::pki_types::ServerName;

use super::dnssec::{self, Anchors, DnssecMode, Verdict};
use crate::metrics::UpstreamCounters;

/// Default path of a DNS-over-HTTPS endpoint (RFC 8484).
const DEFAULT_DOH_PATH: &str = "/dns-query";

/// One upstream server, as written in the config.
///
/// `udp://` also falls back to TCP on the same address when an answer is truncated.
/// `https://` URLs are kept as written; [`parse_upstream`] accepts two forms, because the agent cannot resolve the
/// name of its own upstream without itself:
/// - `https://IP[:PORT][/PATH]` — connect to IP; the TLS name is the IP (the certificate needs an IP SAN);
/// - `https://HOST[:PORT][/PATH]#IP` — connect to IP; TLS name and HTTP authority are HOST.
///
/// PATH defaults to `/dns-query`, PORT to 443.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Tls { addr: SocketAddr, sni: String },
    Https { url: String },
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Udp(addr) => write!(f, "udp://{addr}"),
            Upstream::Tcp(addr) => write!(f, "tcp://{addr}"),
            Upstream::Tls { addr, sni } => write!(f, "tls://{addr}#{sni}"),
            Upstream::Https { url } => f.write_str(url),
        }
    }
}

/// Parses `udp://IP[:PORT]` (port 53), `tcp://IP[:PORT]` (53), `tls://IP[:PORT][#NAME]` (853; the TLS name defaults
/// to the IP) and `https://…` (see [`Upstream`]). IPv6 addresses with a port are written `[::1]:53`.
pub(crate) fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let s = s.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "upstream `{s}` has no scheme: write udp://IP:PORT, tcp://IP:PORT, tls://IP:PORT#NAME or https://HOST/PATH"
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "udp" => Ok(Upstream::Udp(parse_addr(rest, 53)?)),
        "tcp" => Ok(Upstream::Tcp(parse_addr(rest, 53)?)),
        "tls" => {
            let (addr, sni) = match rest.split_once('#') {
                Some((addr, sni)) => (parse_addr(addr, 853)?, sni.trim().to_ascii_lowercase()),
                None => {
                    let addr = parse_addr(rest, 853)?;
                    (addr, addr.ip().to_string())
                }
            };
            if sni.is_empty() {
                return Err(format!("upstream `{s}` has an empty TLS name after `#`"));
            }
            if ServerName::try_from(sni.as_str()).is_err() {
                return Err(format!("upstream `{s}`: `{sni}` is not a valid TLS server name"));
            }
            Ok(Upstream::Tls { addr, sni })
        }
        "https" => {
            parse_https(s)?;
            Ok(Upstream::Https { url: s.to_string() })
        }
        other => Err(format!("upstream `{s}` has unsupported scheme `{other}` (use udp, tcp, tls or https)")),
    }
}

/// `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`. Host names are refused: upstreams are addressed by IP.
fn parse_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("upstream address is empty".to_string());
    }
    let addr = if let Ok(addr) = s.parse::<SocketAddr>() {
        addr
    } else if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        SocketAddr::new(ip, default_port)
    } else {
        return Err(format!("upstream address `{s}` is not IP, IP:PORT or [IPv6]:PORT (host names are not allowed)"));
    };
    if addr.port() == 0 {
        return Err(format!("upstream address `{s}` has port 0"));
    }
    Ok(addr)
}

/// Where and how to reach a DNS-over-HTTPS upstream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HttpsTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) path: String,
}

/// Splits an `https://` upstream URL into address, TLS name and path (see [`Upstream`] for the two accepted forms).
pub(crate) fn parse_https(url: &str) -> Result<HttpsTarget, String> {
    let rest = url
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or_else(|| format!("upstream `{url}` does not start with https://"))?;
    let (main, fragment) = match rest.split_once('#') {
        Some((m, f)) => (m, Some(f.trim())),
        None => (rest, None),
    };
    let (authority, path) = match main.find('/') {
        Some(i) => (&main[..i], &main[i..]),
        None => (main, ""),
    };
    let path = if path.is_empty() || path == "/" { DEFAULT_DOH_PATH } else { path };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("upstream `{url}` has an invalid path `{path}`"));
    }
    let (host, port) = split_host_port(authority).map_err(|e| format!("upstream `{url}`: {e}"))?;
    let port = port.unwrap_or(443);
    if let Ok(ip) = host.parse::<IpAddr>() {
        if fragment.is_some() {
            return Err(format!("upstream `{url}`: `#IP` is only for host names; the host is already an IP"));
        }
        return Ok(HttpsTarget {
            addr: SocketAddr::new(ip, port),
            server_name: ip.to_string(),
            path: path.to_string(),
        });
    }
    let host = host.to_ascii_lowercase();
    if !matches!(ServerName::try_from(host.as_str()), Ok(ServerName::DnsName(_))) {
        return Err(format!("upstream `{url}`: `{host}` is neither an IP address nor a valid host name"));
    }
    let Some(fragment) = fragment else {
        return Err(format!(
            "upstream `{url}`: host `{host}` is not an IP address; append the address to connect to as `#IP` \
             (e.g. https://dns.google/dns-query#8.8.8.8)"
        ));
    };
    let ip = fragment
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map_err(|_| format!("upstream `{url}`: `#{fragment}` is not an IP address"))?;
    Ok(HttpsTarget { addr: SocketAddr::new(ip, port), server_name: host, path: path.to_string() })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    if authority.is_empty() {
        return Err("the host is empty".to_string());
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or("`[` without `]` in the host")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or(format!("unexpected `{p}` after `]`"))?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("`{p}` is not a port number")),
            Ok(n) => Some(n),
        },
    };
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    Ok((host, port))
}

/// What an upstream answered, when it answered with data or a negative answer (not an error).
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    /// SOA records from the authority section, if any, and (unless `dnssec = "off"`) the RRSIG/NSEC/NSEC3 records
    /// that prove it.
    pub(crate) authority: Vec<Record>,
    /// Authenticated: the upstream set AD, or (`validate`) the agent's validation found it secure.
    pub(crate) authenticated: bool,
    /// The agent's validation found it bogus: rcode SERVFAIL, no records.
    pub(crate) bogus: bool,
}

impl Reply {
    fn bogus() -> Self {
        Reply { rcode: ResponseCode::ServFail, answers: vec![], authority: vec![], authenticated: false, bogus: true }
    }
}

/// How long a failed upstream is tried only after the healthy ones.
const HOLDDOWN: Duration = Duration::from_secs(10);
/// No single upstream gets less than this, however many are configured.
const MIN_PER_UPSTREAM: Duration = Duration::from_millis(500);

/// Consecutive failed queries after which an upstream counts as failing (for health, not for the query order).
pub(crate) const FAILING_AFTER: u32 = 3;
/// Failures older than this say nothing about now: an upstream whose last failure is older is not failing.
pub(crate) const FAILING_RECENT: Duration = Duration::from_secs(600);

/// An upstream's recent record: failed queries since its last answer, and the last failure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failures {
    pub(crate) consecutive: u32,
    pub(crate) last: Option<(Instant, String)>,
}

impl Failures {
    /// Why the upstream counts as failing at `now`, if it does.
    pub(crate) fn failing(&self, upstream: &str, now: Instant) -> Option<String> {
        let (at, error) = self.last.as_ref()?;
        let ago = now.saturating_duration_since(*at);
        (self.consecutive >= FAILING_AFTER && ago <= FAILING_RECENT).then(|| {
            format!("upstream {upstream}: last {} queries failed ({} s ago: {error})", self.consecutive, ago.as_secs())
        })
    }
}

struct Member {
    upstream: Upstream,
    pool: Result<NameServerPool<TokioRuntimeProvider>, String>,
    down_until: Mutex<Option<Instant>>,
    failures: Mutex<Failures>,
    counters: UpstreamCounters,
    mode: DnssecMode,
    /// `validate` mode: the pool behind hickory's validator (used for queries without CD).
    validator: Option<DnssecDnsHandle<NameServerPool<TokioRuntimeProvider>>>,
    anchors: Anchors,
}

/// A set of upstreams tried in order (those that failed recently last), within a total time budget.
pub(crate) struct UpstreamGroup {
    members: Vec<Member>,
    budget: Duration,
    per_upstream: Duration,
}

impl UpstreamGroup {
    /// Builds one hickory name-server pool per upstream, counting on `counters(upstream)`. Connections are opened
    /// lazily, on the first query. In `validate` mode each pool is wrapped in hickory's validator, trusting
    /// `anchors`.
    pub(crate) fn new(
        upstreams: &[Upstream],
        tls: Option<&rustls::ClientConfig>,
        budget: Duration,
        counters: &dyn Fn(&Upstream) -> UpstreamCounters,
        (mode, anchors): (DnssecMode, &Anchors),
    ) -> Self {
        let n = u32::try_from(upstreams.len().max(1)).unwrap_or(u32::MAX);
        let per_upstream = (budget / n).max(MIN_PER_UPSTREAM).min(budget);
        let members = upstreams
            .iter()
            .map(|u| {
                let pool = build_pool(u, tls, per_upstream);
                let validator = match (&pool, mode) {
                    (Ok(p), DnssecMode::Validate) => {
                        Some(DnssecDnsHandle::with_trust_anchor(p.clone(), anchors.keys.clone()))
                    }
                    _ => None,
                };
                Member {
                    upstream: u.clone(),
                    pool,
                    down_until: Mutex::new(None),
                    failures: Mutex::new(Failures::default()),
                    counters: counters(u),
                    mode,
                    validator,
                    anchors: anchors.clone(),
                }
            })
            .collect();
        UpstreamGroup { members, budget, per_upstream }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// One reason per upstream when every upstream of the group is failing (see [`Failures::failing`]); nothing
    /// while any of them answers, or when the group is empty.
    pub(crate) fn failing(&self, now: Instant) -> Vec<String> {
        let reasons: Vec<String> = self
            .members
            .iter()
            .filter_map(|m| m.failures.lock().unwrap_or_else(|e| e.into_inner()).failing(&m.upstream.to_string(), now))
            .collect();
        if reasons.len() == self.members.len() {
            reasons
        } else {
            Vec::new()
        }
    }

    /// Asks the upstreams in order until one answers with data, NXDOMAIN or NODATA. Errors (timeouts, refused
    /// connections, SERVFAIL, REFUSED…) move on to the next one; the error lists what each said. `cd` is the
    /// client's CD bit, passed on (and in `validate` mode: no validation by the agent either).
    pub(crate) async fn query(&self, name: &Name, rtype: RecordType, cd: bool) -> Result<Reply, String> {
        let start = Instant::now();
        let deadline = start + self.budget;
        let mut order: Vec<(bool, usize)> =
            self.members.iter().enumerate().map(|(i, m)| (m.is_down(start), i)).collect();
        order.sort_unstable();
        let mut failures = Vec::new();
        for (_, i) in order {
            let member = &self.members[i];
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                failures.push(format!("{}: not tried, out of time", member.upstream));
                continue;
            }
            member.counters.sent();
            match member.query(name, rtype, cd, remaining.min(self.per_upstream)).await {
                Ok(reply) => {
                    member.set_down(None);
                    *member.failures.lock().unwrap_or_else(|e| e.into_inner()) = Failures::default();
                    return Ok(reply);
                }
                Err(e) => {
                    member.counters.failed();
                    tracing::debug!(upstream = %member.upstream, %name, %rtype, error = %e, "upstream failed");
                    member.set_down(Some(Instant::now() + HOLDDOWN));
                    {
                        let mut f = member.failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.consecutive = f.consecutive.saturating_add(1);
                        f.last = Some((Instant::now(), e.clone()));
                    }
                    failures.push(format!("{}: {e}", member.upstream));
                }
            }
        }
        if failures.is_empty() {
            return Err("no upstream configured".to_string());
        }
        Err(failures.join("; "))
    }
}

impl Member {
    fn is_down(&self, now: Instant) -> bool {
        let guard = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        guard.is_some_and(|t| t > now)
    }

    fn set_down(&self, until: Option<Instant>) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    async fn query(&self, name: &Name, rtype: RecordType, cd: bool, timeout: Duration) -> Result<Reply, String> {
        let pool = self.pool.as_ref().map_err(Clone::clone)?;
        let keep = self.mode.keeps_dnssec();
        let mut options = DnsRequestOptions::default();
        // Always DO (unless off): the cache then serves clients with and without DO alike, stripping for the latter.
        options.edns_set_dnssec_ok = keep;
        let mut request = DnsRequest::from_query(Query::query(name.clone(), rtype), options);
        request.metadata.checking_disabled = cd && keep;
        let validator = self.validator.as_ref().filter(|_| !cd);
        let send = async {
            match validator {
                Some(v) => v.send(request).first_answer().await,
                None => pool.send(request).first_answer().await,
            }
        };
        let result = tokio::time::timeout(timeout, send).await.map_err(|_| format!("timed out after {timeout:?}"))?;
        // A negative answer whose NSEC proof hickory found wanting: bogus, or insecure (given as forwarded).
        let mut proven_insecure = false;
        let response = match result {
            Ok(response) => response,
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => {
                return match no_records.response_code {
                    code @ (ResponseCode::NoError | ResponseCode::NXDomain) => {
                        let all = no_records.authorities.as_deref().unwrap_or_default();
                        let mut authority = soa_of_zone(name, all.iter());
                        if authority.is_empty() {
                            if let Some(soa) = no_records.soa {
                                authority = soa_of_zone(name, std::iter::once(&soa.into_record_of_rdata()));
                            }
                        }
                        if keep {
                            let proofs = dnssec::proofs(name, &authority, all);
                            authority.extend(proofs);
                        }
                        // hickory's pool keeps no header of a negative answer: its AD bit is lost.
                        Ok(Reply { rcode: code, answers: Vec::new(), authority, authenticated: false, bogus: false })
                    }
                    other => Err(format!("answered {other}")),
                };
            }
            Err(NetError::Dns(DnsError::Nsec { response, proof, .. })) if validator.is_some() => {
                if proof == Proof::Bogus || self.anchors.covers(name) {
                    tracing::info!(upstream = %self.upstream, %name, %rtype, "dnssec validation failed: bogus denial of existence");
                    return Ok(Reply::bogus());
                }
                proven_insecure = true;
                *response
            }
            Err(e) => return Err(e.to_string()),
        };
        match response.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let (kept, end) = answer_chain(name, rtype, &response.answers);
                let mut authority = soa_of_zone(&end, response.authorities.iter());
                let proofs = if keep { dnssec::proofs(&end, &authority, &response.authorities) } else { Vec::new() };
                let authenticated = match validator {
                    Some(_) => match dnssec::under_anchor(
                        dnssec::verdict(kept.iter().chain(&authority).chain(&proofs)),
                        self.anchors.covers(name) || self.anchors.covers(&end),
                    ) {
                        Verdict::Bogus => {
                            tracing::info!(upstream = %self.upstream, %name, %rtype, "dnssec validation failed: bogus answer");
                            return Ok(Reply::bogus());
                        }
                        Verdict::Secure => !proven_insecure,
                        Verdict::Insecure => false,
                    },
                    None => keep && response.metadata.authentic_data,
                };
                let answers = if keep { dnssec::with_signatures(kept, &response.answers) } else { kept };
                authority.extend(proofs);
                Ok(Reply { rcode: response.response_code, answers, authority, authenticated, bogus: false })
            }
            other => Err(format!("answered {other}")),
        }
    }
}

/// Longest CNAME chain followed in an upstream's answer.
const MAX_CHAIN: usize = 16;

/// What of an upstream's answer section answers `name`/`rtype`: the `rtype` records at `name`, or its CNAME and
/// then the same at each target in turn, in chain order. Every other record (another name, another type, a loop
/// past [`MAX_CHAIN`]) is out of bailiwick and dropped, as is everything in the additional section. Also returns
/// the name the chain ends at. For ANY, one RRset at `name` (the type of its first record there; RFC 8482).
pub(crate) fn answer_chain(name: &Name, rtype: RecordType, answers: &[Record]) -> (Vec<Record>, Name) {
    if rtype == RecordType::ANY {
        let at_name = || answers.iter().filter(|r| r.name == *name);
        let first = at_name().next().map(Record::record_type);
        return (at_name().filter(|r| Some(r.record_type()) == first).cloned().collect(), name.clone());
    }
    let mut kept: Vec<Record> = Vec::new();
    let mut current = name.clone();
    for _ in 0..=MAX_CHAIN {
        let before = kept.len();
        kept.extend(answers.iter().filter(|r| r.name == current && r.record_type() == rtype).cloned());
        if kept.len() > before || rtype == RecordType::CNAME {
            break;
        }
        let Some(cname) = answers.iter().find(|r| r.name == current && r.record_type() == RecordType::CNAME) else {
            break;
        };
        let RData::CNAME(target) = &cname.data else { break };
        kept.push(cname.clone());
        current = target.0.clone();
    }
    (kept, current)
}

/// The SOA records among `records` whose owner is `name` or one of its ancestors (the zone a negative answer is
/// about); SOAs of unrelated zones are dropped.
fn soa_of_zone<'a>(name: &Name, records: impl Iterator<Item = &'a Record>) -> Vec<Record> {
    records.filter(|r| r.record_type() == RecordType::SOA && r.name.zone_of(name)).cloned().collect()
}

fn build_pool(
    upstream: &Upstream,
    tls: Option<&rustls::ClientConfig>,
    timeout: Duration,
) -> Result<NameServerPool<TokioRuntimeProvider>, String> {
    let with_port = |protocol: ProtocolConfig, port: u16| {
        let mut c = ConnectionConfig::new(protocol);
        c.port = port;
        c
    };
    let (ip, connections) = match upstream {
        Upstream::Udp(addr) => {
            (addr.ip(), vec![with_port(ProtocolConfig::Udp, addr.port()), with_port(ProtocolConfig::Tcp, addr.port())])
        }
        Upstream::Tcp(addr) => (addr.ip(), vec![with_port(ProtocolConfig::Tcp, addr.port())]),
        Upstream::Tls { addr, sni } => {
            (addr.ip(), vec![with_port(ProtocolConfig::Tls { server_name: Arc::from(sni.as_str()) }, addr.port())])
        }
        Upstream::Https { url } => {
            let t = parse_https(url)?;
            let protocol = ProtocolConfig::Https {
                server_name: Arc::from(t.server_name.as_str()),
                path: Arc::from(t.path.as_str()),
            };
            (t.addr.ip(), vec![with_port(protocol, t.addr.port())])
        }
    };
    let encrypted = matches!(upstream, Upstream::Tls { .. } | Upstream::Https { .. });
    let tls = match tls {
        Some(c) => c.clone(),
        None if encrypted => return Err("no TLS client configuration available".to_string()),
        // Plain upstreams never use it; an empty root store is fine.
        None => plain_tls_placeholder()?,
    };
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.num_concurrent_reqs = 1;
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    let cx = PoolContext::new(opts, TlsConfig { config: tls });
    let server = NameServerConfig::new(ip, true, connections);
    Ok(NameServerPool::from_config([server], Arc::new(cx), TokioRuntimeProvider::default()))
}

fn plain_tls_placeholder() -> Result<rustls::ClientConfig, String> {
    client_config_with_roots(rustls::RootCertStore::empty())
}

fn client_config_with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where distributions keep the system CA bundle; `SSL_CERT_FILE` comes first when set.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A TLS client configuration trusting the system CA bundle (hickory is built without webpki-roots here, so its own
/// default would trust nothing). Errors name the files tried.
pub(crate) fn system_tls_config() -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("SSL_CERT_FILE") {
        candidates.push(p.into());
    }
    candidates.extend(CA_BUNDLES.iter().map(std::path::PathBuf::from));
    let mut roots = rustls::RootCertStore::empty();
    for path in &candidates {
        let Ok(pem) = std::fs::read(path) else { continue };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added > 0 {
            break;
        }
    }
    if roots.is_empty() {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("no CA certificates found for tls/https upstreams (tried {})", tried.join(", ")));
    }
    client_config_with_roots(roots)
}

#[cfg(test)]
mod chain_tests {
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, CNAME, SOA};

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(name: &str, last: u8) -> Record {
        Record::from_rdata(n(name), 60, RData::A(A::new(192, 0, 2, last)))
    }

    fn cname(name: &str, target: &str) -> Record {
        Record::from_rdata(n(name), 60, RData::CNAME(CNAME(n(target))))
    }

    #[test]
    fn only_the_chain_from_the_question_is_kept() {
        let answers = vec![
            a("nas.lab.home.arpa.", 66),
            cname("WWW.example.com.", "cdn.example.net."),
            a("other.example.org.", 66),
            a("cdn.example.net.", 1),
            a("cdn.example.net.", 2),
        ];
        let (kept, end) = answer_chain(&n("www.example.com."), RecordType::A, &answers);
        assert_eq!(kept, vec![answers[1].clone(), answers[3].clone(), answers[4].clone()]);
        assert_eq!(end, n("cdn.example.net."));
        // A CNAME question stops at the CNAME; a loop stops after MAX_CHAIN hops.
        assert_eq!(answer_chain(&n("www.example.com."), RecordType::CNAME, &answers).0, vec![answers[1].clone()]);
        let looped = vec![cname("a.t.", "b.t."), cname("b.t.", "a.t.")];
        assert_eq!(answer_chain(&n("a.t."), RecordType::A, &looped).0.len(), MAX_CHAIN + 1);
        // Nothing at the name: nothing kept.
        assert!(answer_chain(&n("x.t."), RecordType::A, &answers).0.is_empty());
        // ANY: the first RRset at the name, nothing else (RFC 8482).
        let mixed = vec![a("other.t.", 9), a("m.t.", 1), cname("m.t.", "x.t."), a("m.t.", 2)];
        let (kept, end) = answer_chain(&n("m.t."), RecordType::ANY, &mixed);
        assert_eq!((kept, end), (vec![mixed[1].clone(), mixed[3].clone()], n("m.t.")));
        assert!(answer_chain(&n("x.t."), RecordType::ANY, &mixed).0.is_empty());
    }

    #[test]
    fn only_the_soa_of_the_question_zone_is_kept() {
        let soa = |owner: &str| {
            let data = SOA::new(n("ns.t."), n("admin.t."), 1, 3600, 600, 86400, 60);
            Record::from_rdata(n(owner), 60, RData::SOA(data))
        };
        let records = [soa("example.com."), soa("lab.home.arpa."), a("example.com.", 1)];
        let kept = soa_of_zone(&n("x.example.com."), records.iter());
        assert_eq!(kept, vec![records[0].clone()]);
    }
}
