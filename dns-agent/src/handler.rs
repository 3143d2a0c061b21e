//! The query path: one hickory `RequestHandler` that answers from local zones (authoritative), then the blocklist,
//! then the forwarder, and counts and logs every answer. Never panics on any request. The part that needs no
//! waiting (`decide`) is shared with the UDP loops (`udp`), which cache what it answers.
//! Knows DNS messages; must not know sockets, SQLite, gRPC or how zones and lists are built.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::blocklist::BlockResponse;
use crate::forward::dnssec;
use crate::forward::{Answer, AnswerSource, ForwardError};
use crate::metrics::Outcome;
use crate::querylog::LogEntry;
use crate::service::Dns;
use crate::zones::ZoneSet;

/// TTL of the 0.0.0.0 / :: answers for blocked names.
pub(crate) const BLOCKED_TTL: u32 = 60;
/// Largest UDP payload advertised in responses (the DNS flag day 2020 value).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// Answers DNS requests for the agent.
#[derive(Clone)]
pub(crate) struct Handler {
    dns: Arc<Dns>,
}

impl Handler {
    pub(crate) fn new(dns: Arc<Dns>) -> Self {
        Handler { dns }
    }

    pub(crate) fn dns(&self) -> &Arc<Dns> {
        &self.dns
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        // `[dns] allow_clients`: a stranger's query is refused here, counted and not logged (on every transport).
        if !self.dns.guard.admits(request.src().ip(), request.metadata.op_code, qtype_of(request)) {
            let edns = response_edns(request);
            return send(response_handle, crate::guard::refused(request, edns.as_ref())).await;
        }
        let started = Instant::now();
        let (info, outcome) = self.answer(request, response_handle).await;
        let latency = started.elapsed();
        let qtype = qtype_of(request);
        self.dns.metrics.record(qtype, outcome, latency);
        self.log_query(request.src().ip(), || query_name(request), qtype, outcome, latency);
        info
    }
}

/// The type of the request's first question (`NULL` when there is none): what metrics and the log call it.
pub(crate) fn qtype_of(request: &Request) -> RecordType {
    request.queries.queries().first().map(|q| q.query_type()).unwrap_or(RecordType::NULL)
}

/// The request's first question name as the query log shows it.
pub(crate) fn query_name(request: &Request) -> String {
    request.queries.queries().first().map(|q| q.name().to_string()).unwrap_or_default()
}

/// The EDNS version the agent speaks (RFC 6891).
const EDNS_VERSION: u8 = 0;

/// Whether `request` asks for an EDNS version above ours: answered BADVERS (RFC 6891 section 6.1.3).
fn bad_edns_version(request: &Request) -> bool {
    request.edns.as_ref().is_some_and(|e| e.version() > EDNS_VERSION)
}

/// The OPT record of a response to `request`: present when the request had one, always of our version (hickory's
/// emitter puts an extended rcode's upper 8 bits, BADVERS's among them, into it), with the request's DO bit
/// (RFC 3225).
pub(crate) fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        e.set_version(EDNS_VERSION);
        e.set_dnssec_ok(req.flags().dnssec_ok);
        e
    })
}

/// The OPT record of a forwarded answer's response: [`response_edns`], with the Extended DNS Error "DNSSEC Bogus"
/// (RFC 8914) when the agent's validation found the answer bogus.
pub(crate) fn forwarded_edns(request: &Request, ans: &Answer) -> Option<Edns> {
    let mut edns = response_edns(request);
    if ans.bogus {
        if let Some(e) = edns.as_mut() {
            e.options_mut().insert(dnssec::bogus_ede());
        }
    }
    edns
}

/// The client's DO bit.
fn dnssec_ok(request: &Request) -> bool {
    request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok)
}

/// The SOA in the authority section of a blocked name's NXDOMAIN or NODATA (RFC 2308): owned by the name itself
/// (the agent speaks for it as if it were a zone, as AdGuard Home does), its TTL and minimum
/// [`BLOCKED_TTL`] so that a cache keeps the negative answer as long as a blocked address; the server names lie
/// under `.invalid` (RFC 6761), so nothing can resolve or query them.
fn blocked_soa(qname: &LowerName) -> Record {
    static SERVERS: std::sync::LazyLock<(Name, Name)> = std::sync::LazyLock::new(|| {
        let name = |s: &str| Name::from_ascii(s).unwrap_or_else(|_| Name::root());
        (name("blocked.strata.invalid."), name("hostmaster.strata.invalid."))
    });
    let (mname, rname) = &*SERVERS;
    let soa = SOA::new(mname.clone(), rname.clone(), 1, 3600, 600, 86400, BLOCKED_TTL);
    Record::from_rdata(Name::from(qname.clone()), BLOCKED_TTL, RData::SOA(soa))
}

/// What the query path decided without waiting for anything.
pub(crate) enum Decision<'z> {
    /// The whole answer is known: local, blocked, or an error.
    Ready(Ready<'z>),
    /// A local CNAME chain that leaves the local zones, with a forwarder to follow it; `local` is the answer when
    /// the forwarder fails.
    External { local: Ready<'z>, target: &'z Name },
    /// Neither local nor blocked, and a forwarder is configured.
    Forward { meta: Metadata, qname: &'z LowerName },
}

/// A complete answer made of local data (records borrowed from the zone snapshot) or one synthesized record.
pub(crate) struct Ready<'z> {
    pub(crate) meta: Metadata,
    answers: &'z [Record],
    chained: &'z [Record],
    authority: Option<&'z Record>,
    synthesized: Option<Record>,
    /// The SOA of a negative answer the agent makes up (a blocked name's NXDOMAIN or NODATA).
    synthesized_soa: Option<Record>,
    pub(crate) outcome: Outcome,
}

impl<'z> Ready<'z> {
    fn error(meta: Metadata, code: ResponseCode) -> Self {
        let mut meta = meta;
        meta.response_code = code;
        Ready {
            meta,
            answers: &[],
            chained: &[],
            authority: None,
            synthesized: None,
            synthesized_soa: None,
            outcome: Outcome::Refused,
        }
    }

    /// The response message (encode it with a response handler or [`crate::udp::encode`]).
    pub(crate) fn message<'q>(
        &'q self,
        request: &'q Request,
        edns: Option<&'q Edns>,
    ) -> MessageResponse<
        'q,
        'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
    > {
        let answers = self.answers.iter().chain(self.chained.iter()).chain(self.synthesized.iter());
        build(request, edns, self.meta, answers, self.authority.into_iter().chain(self.synthesized_soa.iter()))
    }
}

fn build<'q, A, N>(
    request: &'q Request,
    edns: Option<&'q Edns>,
    meta: Metadata,
    answers: A,
    authority: N,
) -> MessageResponse<'q, 'q, A, N, std::iter::Empty<&'q Record>, std::iter::Empty<&'q Record>>
where
    A: Iterator<Item = &'q Record> + Send + 'q,
    N: Iterator<Item = &'q Record> + Send + 'q,
{
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = edns {
        builder.edns(e);
    }
    builder.build(meta, answers, authority, std::iter::empty(), std::iter::empty())
}

async fn send<'a, R, A, N, S, D>(mut handle: R, response: MessageResponse<'_, 'a, A, N, S, D>) -> ResponseInfo
where
    R: ResponseHandler,
    A: Iterator<Item = &'a Record> + Send + 'a,
    N: Iterator<Item = &'a Record> + Send + 'a,
    S: Iterator<Item = &'a Record> + Send + 'a,
    D: Iterator<Item = &'a Record> + Send + 'a,
{
    let meta = *response.metadata();
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send dns response");
            ResponseInfo::from(Header { metadata: meta, counts: HeaderCounts::default() })
        }
    }
}

/// Writes `name` as `a.b.c` (no trailing dot) into `buf` without allocating; `None` for the root or a name that
/// is not plain text (such names are never on a blocklist).
fn plain_name<'b>(name: &Name, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let mut len = 0;
    for label in name.iter() {
        let need = label.len() + usize::from(len > 0);
        if len + need > buf.len() || label.contains(&b'.') {
            return None;
        }
        if len > 0 {
            buf[len] = b'.';
            len += 1;
        }
        buf[len..len + label.len()].copy_from_slice(label);
        len += label.len();
    }
    if len == 0 {
        return None;
    }
    std::str::from_utf8(&buf[..len]).ok()
}

impl Handler {
    /// What a NOTIFY (RFC 1996) gets: for a secondary zone from one of its primaries (TSIG-verified when the zone
    /// has a key), NOERROR with AA (and the zone is refreshed); for an unknown zone or a bad TSIG NOTAUTH; from a
    /// stranger REFUSED; anything malformed FORMERR. Also the signer of the answer when the NOTIFY was signed.
    fn notify_verdict(&self, request: &Request) -> (Metadata, Option<crate::tsig::ResponseSigner>, Outcome) {
        use crate::secondary::NotifyVerdict;
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_desired = false;
        meta.checking_disabled = false;
        let mut signer = None;
        let code = match request.queries.queries() {
            [q] if q.query_type() == RecordType::SOA && q.query_class() == DNSClass::IN => {
                let raw = request.as_slice();
                let signed = hickory_proto::op::Message::from_vec(raw).is_ok_and(|m| m.signature.is_some());
                let zone = Name::from(q.name().clone());
                let (verdict, sig) = self.dns.secondaries.notify(&zone, request.src(), raw, signed);
                signer = sig;
                match verdict {
                    NotifyVerdict::Accepted => ResponseCode::NoError,
                    NotifyVerdict::UnknownZone | NotifyVerdict::BadTsig => ResponseCode::NotAuth,
                    NotifyVerdict::Stranger => ResponseCode::Refused,
                }
            }
            _ => {
                tracing::warn!(peer = %request.src(), "malformed notify (not one SOA question of class IN): FORMERR");
                ResponseCode::FormErr
            }
        };
        meta.authoritative = code == ResponseCode::NoError;
        meta.response_code = code;
        let outcome = if code == ResponseCode::NoError { Outcome::Local } else { Outcome::Refused };
        (meta, signer, outcome)
    }

    /// The encoded answer to a NOTIFY, TSIG-signed when the NOTIFY was (the UDP loops send it as it is).
    pub(crate) fn notify_reply(&self, request: &Request) -> Option<(Vec<u8>, Outcome)> {
        let (meta, signer, outcome) = self.notify_verdict(request);
        let edns = response_edns(request);
        let none = std::iter::empty::<&Record>;
        let mut bytes = Vec::with_capacity(128);
        let response = build(request, edns.as_ref(), meta, none(), none());
        response.destructive_emit(&mut hickory_proto::serialize::binary::BinEncoder::new(&mut bytes)).ok()?;
        if let Some(mut s) = signer {
            s.sign(&mut bytes, u64::try_from(agent_core::clock::now_unix()).unwrap_or(0));
        }
        Some((bytes, outcome))
    }

    /// A NOTIFY through a response handler (DoH; UDP and TCP answer with `notify_reply`): hickory's response handler
    /// cannot carry a TSIG computed here, so that answer goes unsigned.
    async fn notify<R: ResponseHandler>(&self, request: &Request, handle: R) -> (ResponseInfo, Outcome) {
        let (meta, _signer, outcome) = self.notify_verdict(request);
        let edns = response_edns(request);
        let none = std::iter::empty::<&Record>;
        (send(handle, build(request, edns.as_ref(), meta, none(), none())).await, outcome)
    }
}

/// The records of a forwarded answer that may be given: the chain up to the first record at a local-zone name, and
/// the authority records outside the local zones. Upstreams never speak for local names (the forwarder already
/// dropped whatever lay outside the question's chain). DNSSEC records only to a client that set DO (or asked for
/// their type: RFC 4035 §3.2.1). Lazy, without allocation.
fn not_local<'q>(
    zones: &'q ZoneSet,
    ans: &'q Answer,
    request: &Request,
) -> (impl Iterator<Item = &'q Record> + Send + 'q, impl Iterator<Item = &'q Record> + Send + 'q) {
    let (qtype, dnssec_ok) = (qtype_of(request), dnssec_ok(request));
    let visible = move |r: &&Record| dnssec::visible(r.record_type(), qtype, dnssec_ok);
    let answers = ans.answers.iter().take_while(move |r| !zones.is_local(&r.name)).filter(visible);
    let authority = ans.authority.iter().filter(move |r| !zones.is_local(&r.name)).filter(visible);
    (answers, authority)
}

/// The response carrying a forwarded (or cached) answer, and how it counts; AD as RFC 6840 §5.8 says
/// ([`dnssec::reply_ad`]). `edns` is [`forwarded_edns`]'s.
pub(crate) fn forwarded<'q>(
    request: &'q Request,
    edns: Option<&'q Edns>,
    meta: Metadata,
    ans: &'q Answer,
    zones: &'q ZoneSet,
) -> (
    MessageResponse<
        'q,
        'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
    >,
    Outcome,
) {
    let mut m = meta;
    m.response_code = ans.rcode;
    m.authentic_data = dnssec::reply_ad(ans.authenticated, dnssec_ok(request), request.metadata.authentic_data);
    let by_source = match ans.source {
        AnswerSource::Forwarded => Outcome::Forwarded,
        AnswerSource::Cached => Outcome::Cached,
        AnswerSource::Stale => Outcome::Stale,
    };
    let outcome = outcome_of_rcode(ans.rcode, by_source);
    let (answers, authority) = not_local(zones, ans, request);
    (build(request, edns, m, answers, authority), outcome)
}

fn outcome_of_rcode(rcode: ResponseCode, otherwise: Outcome) -> Outcome {
    match rcode {
        ResponseCode::NXDomain => Outcome::NxDomain,
        ResponseCode::ServFail => Outcome::Failed,
        ResponseCode::Refused | ResponseCode::NotImp | ResponseCode::FormErr => Outcome::Refused,
        _ => otherwise,
    }
}

impl Handler {
    /// Adds a query to the query log (a no-op, with no lock, while the log is off).
    pub(crate) fn log_query(
        &self,
        client: std::net::IpAddr,
        name: impl FnOnce() -> String,
        qtype: RecordType,
        outcome: Outcome,
        latency: std::time::Duration,
    ) {
        self.dns.query_log.record(|| {
            let name = name();
            // Which list blocked it: looked up again here, only while the log is on (the answer path stays lean).
            let list = match outcome {
                Outcome::Blocked => self.dns.blocklists.blocked_by(&name).unwrap_or_default(),
                _ => String::new(),
            };
            LogEntry {
                seq: 0,
                time_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                client,
                name,
                qtype,
                outcome,
                latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
                list,
            }
        });
    }

    /// Decides the answer from the local zones, the blocklist and whether a forwarder exists, without waiting for
    /// anything. A `Ready` answer depends only on the request's bytes (its id aside) and on state covered by
    /// [`Dns::generation`], which is what lets the UDP loops cache it.
    pub(crate) fn decide<'z>(&self, request: &'z Request, zones: &'z ZoneSet, forwarding: bool) -> Decision<'z> {
        let mut meta = Metadata::response_from_request(&request.metadata);
        let query = request.metadata.op_code == OpCode::Query;
        if query {
            meta.recursion_available = forwarding;
        } else {
            // RD, RA and CD belong to queries (RFC 1035 4.1.1, RFC 4035 3.2.2): a reply to another opcode has none.
            meta.recursion_desired = false;
            meta.checking_disabled = false;
        }
        let error = |code| Decision::Ready(Ready::error(meta, code));
        if bad_edns_version(request) {
            return error(ResponseCode::BADVERS);
        }
        if !query {
            return error(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return error(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return error(ResponseCode::Refused);
        }
        let qtype = query.query_type();
        // ANY goes on: local zones and upstreams answer it with one RRset (RFC 8482), a blocked name as any type.
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::OPT) {
            return error(ResponseCode::Refused);
        }
        let qname = query.name();

        // 1. Local zones: authoritative.
        if let Some(local) = zones.lookup(qname, qtype) {
            let mut m = meta;
            m.authoritative = true;
            m.response_code = local.rcode;
            let outcome = outcome_of_rcode(local.rcode, Outcome::Local);
            let ready = Ready {
                meta: m,
                answers: local.answers,
                chained: local.chained,
                authority: local.soa,
                synthesized: None,
                synthesized_soa: None,
                outcome,
            };
            return match local.external {
                // A local CNAME to an outside name: resolve the target for the (stub) client.
                Some(target) if forwarding => Decision::External { local: ready, target },
                _ => Decision::Ready(ready),
            };
        }

        // 2. Blocklist.
        let mut buf = [0u8; 256];
        if plain_name(qname, &mut buf).is_some_and(|plain| self.dns.blocklists.is_blocked(plain)) {
            let mut m = meta;
            let record = match (self.dns.blocklists.response(), qtype) {
                (BlockResponse::NxDomain, _) => {
                    m.response_code = ResponseCode::NXDomain;
                    None
                }
                (BlockResponse::Zero, RecordType::A) => {
                    Some(Record::from_rdata(Name::from(qname.clone()), BLOCKED_TTL, RData::A(A(Ipv4Addr::UNSPECIFIED))))
                }
                (BlockResponse::Zero, RecordType::AAAA) => Some(Record::from_rdata(
                    Name::from(qname.clone()),
                    BLOCKED_TTL,
                    RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED)),
                )),
                (BlockResponse::Zero, _) => None,
            };
            // NXDOMAIN and NODATA carry an SOA (RFC 2308), so that caches downstream keep the answer.
            let soa = record.is_none().then(|| blocked_soa(qname));
            return Decision::Ready(Ready {
                meta: m,
                answers: &[],
                chained: &[],
                authority: None,
                synthesized: record,
                synthesized_soa: soa,
                outcome: Outcome::Blocked,
            });
        }

        // 3. Forwarding.
        if !forwarding {
            return error(ResponseCode::Refused);
        }
        Decision::Forward { meta, qname }
    }

    async fn answer<R: ResponseHandler>(&self, request: &Request, handle: R) -> (ResponseInfo, Outcome) {
        if request.metadata.op_code == OpCode::Notify && !bad_edns_version(request) {
            return self.notify(request, handle).await;
        }
        let zones = Arc::clone(&*self.dns.zones());
        let forwarder = self.dns.forwarder();
        let edns = response_edns(request);
        let edns = edns.as_ref();
        let qtype = qtype_of(request);
        let cd = request.metadata.checking_disabled;
        match (self.decide(request, &zones, forwarder.is_some()), forwarder.as_ref()) {
            (Decision::Ready(ready), _) => (send(handle, ready.message(request, edns)).await, ready.outcome),
            // The local part is not signed: no AD. A bogus target is left out, as a failed one.
            (Decision::External { local, target }, Some(fwd)) => match fwd.lookup(target, qtype, cd).await {
                Ok(ext) if !ext.bogus => {
                    let mut m = local.meta;
                    m.response_code = ext.rcode;
                    let (ext_answers, ext_authority) = not_local(&zones, &ext, request);
                    let answers = local.answers.iter().chain(local.chained.iter()).chain(ext_answers);
                    let response = build(request, edns, m, answers, ext_authority);
                    (send(handle, response).await, local.outcome)
                }
                Ok(_) | Err(_) => (send(handle, local.message(request, edns)).await, local.outcome),
            },
            (Decision::Forward { meta, qname }, Some(fwd)) => {
                let refuse = |code: ResponseCode| {
                    let mut m = meta;
                    m.response_code = code;
                    m
                };
                let none = std::iter::empty::<&Record>;
                match fwd.lookup(qname, qtype, cd).await {
                    Ok(ans) => {
                        let edns = forwarded_edns(request, &ans);
                        let (response, outcome) = forwarded(request, edns.as_ref(), meta, &ans, &zones);
                        (send(handle, response).await, outcome)
                    }
                    Err(ForwardError::NoUpstream) => {
                        let response = build(request, edns, refuse(ResponseCode::Refused), none(), none());
                        (send(handle, response).await, Outcome::Refused)
                    }
                    Err(ForwardError::Failed(e)) => {
                        tracing::debug!(name = %qname, %qtype, error = e, "forwarding failed");
                        let response = build(request, edns, refuse(ResponseCode::ServFail), none(), none());
                        (send(handle, response).await, Outcome::Failed)
                    }
                }
            }
            // The forwarder was there when deciding: this cannot happen, but never panic.
            (Decision::External { local, .. }, None) => {
                (send(handle, local.message(request, edns)).await, local.outcome)
            }
            (Decision::Forward { meta, .. }, None) => {
                let refused = Ready::error(meta, ResponseCode::Refused);
                (send(handle, refused.message(request, edns)).await, Outcome::Refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use agent_core::telemetry::Metrics;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;

    use crate::config::Config;
    use crate::metrics::DnsMetrics;
    use crate::udp::Capture;

    async fn ask(h: &Handler, op: OpCode, questions: &[(&str, RecordType)]) -> Message {
        ask_with(h, op, questions, |_| {}).await
    }

    /// Asks with the message first changed by `edit` (flags, EDNS).
    async fn ask_with(
        h: &Handler,
        op: OpCode,
        questions: &[(&str, RecordType)],
        edit: impl FnOnce(&mut Message),
    ) -> Message {
        let mut m = Message::new(42, MessageType::Query, op);
        for (n, t) in questions {
            m.add_query(Query::query(Name::from_ascii(n).unwrap(), *t));
        }
        edit(&mut m);
        let req = Request::from_bytes(m.to_vec().unwrap(), "127.0.0.1:5353".parse().unwrap(), Protocol::Udp).unwrap();
        let cap = Capture::new(&req);
        h.handle_request::<_, TokioTime>(&req, cap.clone()).await;
        let bytes = cap.take().expect("a response");
        Message::from_vec(&bytes).unwrap()
    }

    async fn handler(dir: &std::path::Path, response: &str) -> Handler {
        std::fs::write(dir.join("list.txt"), "ads.example.com\n").unwrap();
        let text = format!(
            "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
             [[zones]]\nname = \"lab.home.arpa\"\nrecords = [{{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }}]\n\
             [blocklist]\nsources = [\"list.txt\"]\nresponse = \"{response}\"\n"
        );
        std::fs::write(dir.join("dns.toml"), text).unwrap();
        let cfg = Config::load(&dir.join("dns.toml")).unwrap();
        let dns = Dns::new(cfg, DnsMetrics::new(&Metrics::new())).unwrap();
        dns.refresh_blocklist().await;
        Handler::new(dns)
    }

    #[tokio::test]
    async fn answers_local_blocked_refused_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "zero").await;
        let rc = |m: &Message| m.metadata.response_code;

        let local = ask(&h, OpCode::Query, &[("nas.lab.home.arpa.", RecordType::A)]).await;
        assert_eq!((rc(&local), local.metadata.authoritative, local.answers.len()), (ResponseCode::NoError, true, 1));
        assert!(!local.metadata.recursion_available, "no upstream");

        let zero = ask(&h, OpCode::Query, &[("x.ads.example.com.", RecordType::A)]).await;
        assert_eq!(zero.answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)));
        let zero6 = ask(&h, OpCode::Query, &[("ads.example.com.", RecordType::AAAA)]).await;
        assert_eq!(zero6.answers[0].data, RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED)));
        let nodata = ask(&h, OpCode::Query, &[("ads.example.com.", RecordType::MX)]).await;
        assert_eq!((rc(&nodata), nodata.answers.len()), (ResponseCode::NoError, 0));
        let soa_of = |m: &Message| match m.authorities.as_slice() {
            [r] => match &r.data {
                RData::SOA(soa) => Some((r.name.to_ascii(), r.ttl, soa.minimum)),
                _ => None,
            },
            _ => None,
        };
        assert_eq!(soa_of(&nodata), Some(("ads.example.com.".into(), BLOCKED_TTL, BLOCKED_TTL)), "RFC 2308");
        assert_eq!(soa_of(&zero), None, "a positive answer has no SOA");

        let refused = ask(&h, OpCode::Query, &[("example.org.", RecordType::A)]).await;
        assert_eq!(rc(&refused), ResponseCode::Refused, "no upstream configured");
        let any = ask(&h, OpCode::Query, &[("nas.lab.home.arpa.", RecordType::ANY)]).await;
        assert_eq!((rc(&any), any.answers.len()), (ResponseCode::NoError, 1), "RFC 8482: one RRset");
        let any_blocked = ask(&h, OpCode::Query, &[("ads.example.com.", RecordType::ANY)]).await;
        assert_eq!((rc(&any_blocked), any_blocked.answers.len()), (ResponseCode::NoError, 0));
        let axfr = ask(&h, OpCode::Query, &[("lab.home.arpa.", RecordType::AXFR)]).await;
        assert_eq!(rc(&axfr), ResponseCode::Refused);
        let two =
            ask(&h, OpCode::Query, &[("nas.lab.home.arpa.", RecordType::A), ("nas.lab.home.arpa.", RecordType::AAAA)])
                .await;
        assert_eq!(rc(&two), ResponseCode::FormErr);
        let none = ask(&h, OpCode::Query, &[]).await;
        assert_eq!(rc(&none), ResponseCode::FormErr);
        let notify = ask_with(&h, OpCode::Notify, &[("lab.home.arpa.", RecordType::SOA)], |m| {
            m.metadata.recursion_desired = true;
            m.metadata.checking_disabled = true;
        })
        .await;
        assert_eq!(rc(&notify), ResponseCode::NotAuth, "a NOTIFY for a zone that is not a secondary one");
        assert_eq!(notify.metadata.id, 42);
        let flags =
            |m: &Message| (m.metadata.recursion_desired, m.metadata.recursion_available, m.metadata.checking_disabled);
        assert_eq!(flags(&notify), (false, false, false), "no RD, RA or CD on a reply to another opcode");

        let totals = h.dns.metrics.totals();
        assert!(totals.contains(&("blocked", 4)) && totals.contains(&("local", 2)), "{totals:?}");
        assert!(totals.contains(&("refused", 5)), "{totals:?}");

        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "nxdomain").await;
        let nx = ask(&h, OpCode::Query, &[("ads.example.com.", RecordType::A)]).await;
        assert_eq!((rc(&nx), nx.answers.len()), (ResponseCode::NXDomain, 0));
        assert_eq!(soa_of(&nx), Some(("ads.example.com.".into(), BLOCKED_TTL, BLOCKED_TTL)), "RFC 2308");
    }

    #[tokio::test]
    async fn an_edns_version_above_zero_gets_badvers_with_an_opt_of_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "zero").await;
        let with_version = |v: u8| {
            move |m: &mut Message| {
                let mut e = Edns::new();
                e.set_version(v);
                e.set_max_payload(1232);
                m.edns = Some(e);
            }
        };
        let q = [("nas.lab.home.arpa.", RecordType::A)];
        let bad = ask_with(&h, OpCode::Query, &q, with_version(1)).await;
        // Message::from_vec joins the header's 4 low bits and the OPT's 8 high bits into one rcode: 16, which
        // hickory reads back as BADSIG (TSIG's code 16 shares the number with BADVERS).
        assert_eq!((u16::from(bad.metadata.response_code), bad.answers.len()), (16, 0));
        assert_eq!(u16::from(ResponseCode::BADVERS), 16);
        assert_eq!(bad.edns.as_ref().map(|e| e.version()), Some(0), "the OPT says which version we speak");
        let ok = ask_with(&h, OpCode::Query, &q, with_version(0)).await;
        assert_eq!((ok.metadata.response_code, ok.answers.len()), (ResponseCode::NoError, 1));
        assert_eq!(ok.edns.as_ref().map(|e| (e.version(), e.rcode_high())), Some((0, 0)));
    }

    #[tokio::test]
    async fn the_do_bit_is_copied_into_every_reply_and_nothing_local_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "zero").await;
        // (name, DO): a local name, a blocked one, one refused (no upstream).
        let cases = [
            ("nas.lab.home.arpa.", true),
            ("nas.lab.home.arpa.", false),
            ("ads.example.com.", true),
            ("example.org.", true),
        ];
        for (name, dnssec_ok) in cases {
            let m = ask_with(&h, OpCode::Query, &[(name, RecordType::A)], |m| {
                let mut e = Edns::new();
                e.set_dnssec_ok(dnssec_ok);
                m.metadata.authentic_data = true;
                m.edns = Some(e);
            })
            .await;
            assert_eq!(m.edns.as_ref().map(|e| e.flags().dnssec_ok), Some(dnssec_ok), "{name} DO={dnssec_ok}");
            assert!(!m.metadata.authentic_data, "{name}: local data is not signed");
        }
    }

    #[test]
    fn plain_names_without_allocation() {
        let mut buf = [0u8; 256];
        let n = Name::from_ascii("Ads.Example.COM.").unwrap();
        assert_eq!(plain_name(&n, &mut buf), Some("Ads.Example.COM"));
        assert_eq!(plain_name(&Name::root(), &mut buf), None);
        let odd = Name::from_labels(vec![&b"a.b"[..], &b"c"[..]]).unwrap();
        assert_eq!(plain_name(&odd, &mut buf), None, "a label holding a dot");
        let binary = Name::from_labels(vec![&[0xffu8, 0xfe][..]]).unwrap();
        assert_eq!(plain_name(&binary, &mut buf), None);
    }
}
