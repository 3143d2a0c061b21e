//! Serving DNS over UDP: one thread per SO_REUSEPORT socket, each a plain loop (receive → answer → send) with no
//! task per packet, and its own cache of encoded answers. A query whose answer is ready without waiting (local
//! zones, dynamic records, the blocklist, errors) is answered in the loop, from the cache when the same packet (its
//! id aside) was answered before; anything that needs the forwarder goes to the tokio runtime and `Handler`.
//! Knows sockets and wire bytes; the answers themselves are `handler`'s.
//!
//! Correctness of the cache: an entry is the exact response `Handler` gave for the same request bytes (the 2-byte
//! id excepted, patched in), and `Ready` answers depend only on those bytes and on state covered by
//! [`Dns::generation`](crate::service::Dns::generation). Each loop reads the generation before anything else
//! and empties its cache when it moved; writers bump it after swapping the new state in. So once an upsert, a
//! delete, a reload or a blocklist refresh has returned, no loop serves an answer made before it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_proto::ProtoError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};

use crate::guard::UdpGuard;
use crate::handler::{forwarded, forwarded_edns, qtype_of, query_name, response_edns, Decision, Handler};
use crate::metrics::{self, MetricsShard, Outcome};
use crate::wire::{self, Limit};

/// Largest datagram read (longer ones are cut, as hickory's own UDP listener does).
pub(crate) const RECV_BUFFER: usize = 4096;
/// Requests longer than this are answered but never cached.
const MAX_CACHED_REQUEST: usize = 512;
/// Answers cached per loop; a full cache is emptied (random-name floods cannot grow it).
const MAX_ENTRIES: usize = 8192;
/// How often an idle loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Encodes a response for UDP as hickory's own UDP response handler does (at most the EDNS payload size, 512
/// bytes without EDNS; larger answers are truncated with TC set; a bare SERVFAIL if encoding fails), its names
/// compressed against `question` (the request's raw question section, see [`wire::encode`]).
pub(crate) fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    question: &[u8],
) -> Result<(ResponseInfo, Vec<u8>), ProtoError> {
    wire::encode(response, question, Limit::Datagram)
}

/// Sends a response to one client over one of the UDP sockets (the forwarding path, run on tokio).
#[derive(Clone)]
pub(crate) struct Responder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    /// The request's question section (names are compressed against it).
    question: Box<[u8]>,
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, &self.question)?;
        self.socket.send_to(&bytes, self.dst)?;
        Ok(info)
    }
}

/// `Handler`'s answer to one request as bytes (it lives in `wire`, shared with `signed`).
pub(crate) use crate::wire::Capture;

/// Whether a reply may be sent to `src` (hickory's rule: not port 0, not an unspecified or broadcast address).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// One cached answer.
struct Entry {
    /// The whole response; bytes 0..2 are the id of whoever asked last.
    reply: Vec<u8>,
    /// Metrics slot (query type × outcome) and what the query log shows.
    slot: usize,
    qtype: RecordType,
    outcome: Outcome,
    name: Box<str>,
    /// For an answer from the forwarder's cache: when its TTLs would change (it is not served from then on).
    until: Option<Instant>,
}

/// Encoded answers keyed by the request bytes after the id (flags, counts, question, EDNS: everything the answer
/// may depend on), valid for one generation.
#[derive(Default)]
struct AnswerCache {
    generation: u64,
    index: HashMap<Box<[u8]>, usize>,
    entries: Vec<Entry>,
}

impl AnswerCache {
    fn sync(&mut self, generation: u64) {
        if generation != self.generation {
            self.index.clear();
            self.entries.clear();
            self.generation = generation;
        }
    }

    /// Stores `entry` (replacing an expired one for the same request); returns where it is.
    fn insert(&mut self, key: &[u8], entry: Entry) -> usize {
        if let Some(&i) = self.index.get(key) {
            if let Some(slot) = self.entries.get_mut(i) {
                *slot = entry;
                return i;
            }
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.index.clear();
            self.entries.clear();
        }
        self.index.insert(key.into(), self.entries.len());
        self.entries.push(entry);
        self.entries.len() - 1
    }
}

/// What to do with one datagram.
pub(crate) enum Action<'a> {
    /// Send these bytes back.
    Reply(&'a [u8]),
    /// Nothing to send (unreadable header, a response, or not answerable).
    Drop,
    /// The answer needs the forwarder: hand the request to `Handler` on the runtime.
    Forward(Box<Request>),
    /// A request carrying a TSIG: `signed::answer` on the runtime.
    Signed(Box<Request>),
}

/// The per-socket state of one loop: the answer cache and the loop's own metrics counters.
pub(crate) struct Worker {
    handler: Handler,
    cache: AnswerCache,
    shard: MetricsShard,
    /// The last uncached reply.
    scratch: Vec<u8>,
    /// `[dns] allow_clients` and this loop's `[dns.rrl]` table.
    guard: UdpGuard,
}

impl Worker {
    pub(crate) fn new(handler: Handler) -> Self {
        let shard = handler.dns().metrics.shard();
        let guard = UdpGuard::new(&handler.dns().guard);
        Worker { handler, cache: AnswerCache::default(), shard, scratch: Vec::new(), guard }
    }

    pub(crate) fn handler(&self) -> &Handler {
        &self.handler
    }

    /// Answers one datagram from `src` as hickory's server and `Handler` would, byte for byte: fewer than 12
    /// bytes or a response (QR=1, even an unparsable one) are dropped, an unparsable query gets FORMERR (not counted, as before), everything
    /// else is answered and counted. Never panics.
    pub(crate) fn process(&mut self, packet: &[u8], src: SocketAddr) -> Action<'_> {
        let started = Instant::now();
        if packet.len() < 12 {
            return Action::Drop;
        }
        // `[dns] allow_clients`, before the answer cache: a stranger never gets a cached answer, and its REFUSED is
        // never cached for anyone.
        if !self.guard.admits(&self.handler.dns().guard, packet, src.ip()) {
            return self.refuse(packet, src, started);
        }
        self.cache.sync(self.handler.dns().generation());
        let cacheable = packet.len() <= MAX_CACHED_REQUEST;
        if cacheable {
            if let Some(&i) = self.cache.index.get(&packet[2..]) {
                if self.cache.entries.get(i).is_some_and(|e| e.until.is_none_or(|u| started < u)) {
                    let e = &mut self.cache.entries[i];
                    e.reply[..2].copy_from_slice(&packet[..2]);
                    let latency = started.elapsed();
                    self.shard.record_slot(e.slot, latency);
                    let name = &e.name;
                    self.handler.log_query(src.ip(), || name.to_string(), e.qtype, e.outcome, latency);
                    return self.guard.limit(packet, &e.reply, src.ip(), started).map_or(Action::Drop, Action::Reply);
                }
            }
        }

        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            return Action::Drop;
        };
        // A response (QR=1) is never answered, parsable or not: answering would make the agent a reflector.
        if header.metadata.message_type == MessageType::Response {
            return Action::Drop;
        }
        let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(id = header.metadata.id, %src, %error, "unparsable request: FORMERR");
                let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else { return Action::Drop };
                let response =
                    MessageResponseBuilder::new(&queries, None).error_msg(&header.metadata, ResponseCode::FormErr);
                return match encode(response, &[]) {
                    Ok((_, bytes)) => {
                        self.scratch = bytes;
                        self.guard.limit(packet, &self.scratch, src.ip(), started).map_or(Action::Drop, Action::Reply)
                    }
                    Err(_) => Action::Drop,
                };
            }
        };
        // NOTIFY wakes a secondary zone's refresh: answered here (signed when it was), never cached.
        if request.metadata.op_code == OpCode::Notify && request.edns.as_ref().is_none_or(|e| e.version() == 0) {
            let Some((reply, outcome)) = self.handler.notify_reply(&request) else { return Action::Drop };
            let qtype = qtype_of(&request);
            let latency = started.elapsed();
            self.shard.record_slot(metrics::slot(qtype, outcome), latency);
            self.handler.log_query(src.ip(), || query_name(&request), qtype, outcome, latency);
            self.scratch = reply;
            return Action::Reply(&self.scratch);
        }
        // A query carrying a TSIG is verified and its answer signed on the runtime (`signed`), never cached: its
        // bytes carry a time and a MAC, and a cached answer would go out unsigned.
        if request.signature.is_some() {
            return Action::Signed(Box::new(request));
        }
        let dns = self.handler.dns().clone();
        let zones = dns.zones();
        let forwarder = dns.forwarder();
        let edns = response_edns(&request);
        let qtype = qtype_of(&request);
        let got = match self.handler.decide(&request, &zones, forwarder.is_some()) {
            Decision::Ready(ready) => encode(ready.message(&request, edns.as_ref()), request.queries.as_bytes())
                .map(|(_, bytes)| (bytes, ready.outcome, Keep::Always)),
            // Forwarding: answered here only when the forwarder's cache has it (a fresh answer is kept while its
            // TTLs stay the same); a miss waits for an upstream on the runtime.
            Decision::Forward { meta, qname } => {
                match forwarder.as_ref().and_then(|f| f.lookup_cached(qname, qtype, request.metadata.checking_disabled))
                {
                    Some((ans, until)) => {
                        let edns = forwarded_edns(&request, &ans);
                        let (response, outcome) = forwarded(&request, edns.as_ref(), meta, &ans, &zones);
                        let keep = until.map_or(Keep::Never, Keep::Until);
                        encode(response, request.queries.as_bytes()).map(|(_, bytes)| (bytes, outcome, keep))
                    }
                    None => return Action::Forward(Box::new(request)),
                }
            }
            Decision::External { .. } => return Action::Forward(Box::new(request)),
        };
        let Ok((reply, outcome, keep)) = got else { return Action::Drop };
        let slot = metrics::slot(qtype, outcome);
        let latency = started.elapsed();
        self.shard.record_slot(slot, latency);
        self.handler.log_query(src.ip(), || query_name(&request), qtype, outcome, latency);
        let until = match keep {
            Keep::Always => None,
            Keep::Until(t) => Some(t),
            Keep::Never => {
                self.scratch = reply;
                return self.guard.limit(packet, &self.scratch, src.ip(), started).map_or(Action::Drop, Action::Reply);
            }
        };
        if !cacheable {
            self.scratch = reply;
            return self.guard.limit(packet, &self.scratch, src.ip(), started).map_or(Action::Drop, Action::Reply);
        }
        let name = query_name(&request).into_boxed_str();
        let i = self.cache.insert(&packet[2..], Entry { reply, slot, qtype, outcome, name, until });
        match self.cache.entries.get(i) {
            Some(e) => self.guard.limit(packet, &e.reply, src.ip(), started).map_or(Action::Drop, Action::Reply),
            None => Action::Drop,
        }
    }

    /// The REFUSED reply to a client outside `[dns] allow_clients`: never cached, rate-limited like any other.
    fn refuse(&mut self, packet: &[u8], src: SocketAddr, now: Instant) -> Action<'_> {
        let Ok(request) = Request::from_bytes(packet.to_vec(), src, Protocol::Udp) else { return Action::Drop };
        if request.metadata.message_type == MessageType::Response {
            return Action::Drop;
        }
        let edns = response_edns(&request);
        let Ok((_, bytes)) = encode(crate::guard::refused(&request, edns.as_ref()), request.queries.as_bytes()) else {
            return Action::Drop;
        };
        self.scratch = bytes;
        self.guard.limit(packet, &self.scratch, src.ip(), now).map_or(Action::Drop, Action::Reply)
    }
}

/// How long an answer may be served from the loop's cache.
enum Keep {
    /// Until the generation moves.
    Always,
    /// Until then (or the generation moves).
    Until(Instant),
    /// Not at all (a stale answer).
    Never,
}

/// The UDP loops; [`UdpServer::shutdown`] stops them.
pub(crate) struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpServer {
    /// Serves each socket on its own thread; forwarding runs on `runtime`.
    pub(crate) fn spawn(
        sockets: Vec<UdpSocket>,
        handler: &Handler,
        runtime: tokio::runtime::Handle,
    ) -> io::Result<UdpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(POLL))?;
            let worker = Worker::new(handler.clone());
            let (stop, runtime) = (stop.clone(), runtime.clone());
            let socket = Arc::new(socket);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || serve(socket, worker, runtime, stop))?,
            );
        }
        Ok(UdpServer { stop, threads })
    }

    /// Stops the loops (each within [`POLL`]) and waits for them; forwarded queries in flight finish on their own.
    pub(crate) async fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn serve(socket: Arc<UdpSocket>, mut worker: Worker, runtime: tokio::runtime::Handle, stop: Arc<AtomicBool>) {
    // The forwarder's prefetch spawns on the runtime from here.
    let _runtime = runtime.enter();
    let mut buf = vec![0u8; RECV_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "error receiving on a dns udp socket");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if !answerable(src) {
            tracing::warn!("address can not be responded to {src}");
            continue;
        }
        // `process` never panics by design (the fuzz target checks it); should it ever, the socket keeps being
        // served, as a panicking per-request task in hickory's server would not take its socket down either.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match worker.process(&buf[..n], src) {
            Action::Reply(bytes) => {
                if let Err(e) = socket.send_to(bytes, src) {
                    tracing::debug!(error = %e, %src, "cannot send dns response");
                }
                None
            }
            Action::Drop => None,
            Action::Forward(request) => Some((request, false)),
            Action::Signed(request) => Some((request, true)),
        }));
        match handled {
            Ok(None) => {}
            Ok(Some((request, true))) => {
                let handler = worker.handler().clone();
                let socket = socket.clone();
                runtime.spawn(async move {
                    let reply = crate::signed::answer(&handler, &request, Limit::Datagram, false).await;
                    if let Some(bytes) = reply {
                        if let Err(e) = socket.send_to(&bytes, src) {
                            tracing::debug!(error = %e, %src, "cannot send dns response");
                        }
                    }
                });
            }
            Ok(Some((request, false))) => {
                let handler = worker.handler().clone();
                let question = request.queries.as_bytes().into();
                let responder = Responder { socket: socket.clone(), dst: src, question };
                runtime.spawn(async move {
                    handler.handle_request::<_, TokioTime>(&request, responder).await;
                });
            }
            Err(_) => {
                tracing::error!(%src, "dns query handling panicked; answer cache emptied");
                worker.cache = AnswerCache::default();
            }
        }
    }
}

#[cfg(test)]
mod tests;
