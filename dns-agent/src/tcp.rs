//! DNS over plain TCP (RFC 7766) on the `[dns] listen` addresses: 2-byte length framing, pipelined queries answered
//! in order through the same `Handler` as UDP (a NOTIFY or a TSIG-signed query through `signed`, answered signed);
//! zone transfers (AXFR, IXFR) answered with `xfr`'s parts. Bounded: connections in all and per
//! client address, an idle timeout, messages of at most 65535 bytes. `serve_connection` takes any byte stream, so
//! an encrypted listener (DoT, `dot`) runs its streams through it; over an encrypted stream the answer to a padded
//! query is padded (RFC 8467).
//! Knows sockets and framing; must not know what the answers are (that is `handler` and `xfr`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::handler::Handler;
use crate::service::Dns;
use crate::signed;
use crate::tsig::{self, ResponseSigner};
use crate::udp::Capture;
use crate::wire::{self, Limit};
use crate::xfr;

/// Idle timeout of a TCP connection (also the longest a write may wait for the peer to read).
pub(crate) const TCP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Open TCP connections at most (all clients).
pub(crate) const MAX_CONNECTIONS: usize = 512;
/// Open TCP connections at most from one client address.
pub(crate) const MAX_PER_CLIENT: usize = 32;

/// Counts open connections, in all and per client address.
#[derive(Default)]
struct Limits {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let per = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= MAX_CONNECTIONS || per >= MAX_PER_CLIENT {
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, per + 1);
        Some(Permit { limits: self.clone(), ip })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// The running TCP listeners; [`TcpServer::shutdown`] stops accepting (open connections end at their timeout).
pub(crate) struct TcpServer {
    tasks: Vec<JoinHandle<()>>,
}

impl TcpServer {
    /// Serves every listener on the current tokio runtime.
    pub(crate) fn spawn(listeners: Vec<std::net::TcpListener>, handler: &Handler) -> std::io::Result<TcpServer> {
        let limits = Arc::new(Limits::default());
        let mut tasks = Vec::new();
        for l in listeners {
            let l = tokio::net::TcpListener::from_std(l)?;
            let handler = handler.clone();
            let limits = limits.clone();
            tasks.push(tokio::spawn(accept_loop(l, handler, limits)));
        }
        Ok(TcpServer { tasks })
    }

    pub(crate) fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

async fn accept_loop(l: tokio::net::TcpListener, handler: Handler, limits: Arc<Limits>) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            tracing::debug!(%peer, "dns tcp connection refused: too many open connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, &handler, Protocol::Tcp).await;
        });
    }
}

/// Serves one connection until the peer closes it, sends something that is not DNS framing, or stays idle for
/// [`TCP_TIMEOUT`]: each message is answered before the next is read, so pipelined answers come back in order.
/// `protocol` is what the stream is (`Tcp`, or `Tls` for DoT): over an encrypted one, the answer to a padded query
/// is padded (RFC 8467).
pub(crate) async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    peer: SocketAddr,
    handler: &Handler,
    protocol: Protocol,
) {
    let (mut r, mut w) = tokio::io::split(stream);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_TIMEOUT, r.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n < 12 {
            tracing::debug!(%peer, "dns tcp message shorter than a header: closing");
            return;
        }
        let mut buf = vec![0u8; n];
        match tokio::time::timeout(TCP_TIMEOUT, r.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if let Err(e) = answer(buf, peer, handler, protocol, &mut w).await {
            tracing::debug!(%peer, error = %e, "dns tcp connection ends");
            return;
        }
    }
}

/// Writes one framed message (with the idle timeout: a peer that stops reading is dropped).
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    write_raw(w, &framed).await
}

/// Writes bytes already framed (one or more messages), with the idle timeout.
pub(crate) async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, framed: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(TCP_TIMEOUT, async {
        w.write_all(framed).await?;
        w.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer does not read")),
    }
}

/// Whether a request asks for a zone transfer (a query whose question is AXFR or IXFR).
fn transfer_question(header: &Header, buf: &[u8]) -> bool {
    if header.metadata.op_code != OpCode::Query || header.counts.queries == 0 {
        return false;
    }
    let mut d = BinDecoder::new(buf);
    if Header::read(&mut d).is_err() {
        return false;
    }
    Query::read(&mut d).is_ok_and(|q| matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR))
}

async fn answer<W: AsyncWrite + Unpin + Send>(
    buf: Vec<u8>,
    peer: SocketAddr,
    handler: &Handler,
    protocol: Protocol,
    w: &mut W,
) -> std::io::Result<()> {
    let Ok(header) = Header::read(&mut BinDecoder::new(&buf)) else { return Ok(()) };
    // A response (QR=1) is never answered.
    if header.metadata.message_type == MessageType::Response {
        return Ok(());
    }
    if transfer_question(&header, &buf) {
        return match Message::from_vec(&buf) {
            Ok(m) => serve_transfer(handler.dns(), &buf, &m, peer, w).await,
            Err(e) => {
                tracing::info!(%peer, error = %e, "unparsable transfer request: FORMERR");
                write_frame(w, &formerr(header.metadata.id)).await
            }
        };
    }
    let request = match Request::from_bytes(buf, peer, protocol) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "unparsable request: FORMERR");
            return write_frame(w, &formerr(header.metadata.id)).await;
        }
    };
    let pad = protocol.is_encrypted() && wire::wants_padding(request.edns.as_ref());
    // A NOTIFY, and a query carrying a TSIG: answered signed when they were (RFC 8945 §5.3).
    if signed::takes(handler, &request) {
        return match signed::answer(handler, &request, Limit::Stream, pad).await {
            Some(b) => write_frame(w, &b).await,
            None => Ok(()),
        };
    }
    let capture = Capture::stream(&request);
    handler.handle_request::<_, TokioTime>(&request, capture.clone()).await;
    match capture.take() {
        Some(mut b) => {
            if pad {
                wire::pad(&mut b, wire::RESPONSE_PAD_BLOCK);
            }
            write_frame(w, &b).await
        }
        None => Ok(()),
    }
}

fn formerr(id: u16) -> Vec<u8> {
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::FormErr;
    let mut out = Vec::with_capacity(12);
    let _ = Header { metadata, counts: HeaderCounts::default() }.emit(&mut BinEncoder::new(&mut out));
    out
}

/// A byte string that sorts names in canonical order (RFC 4034 §6.1): labels from the right, lowercased, each
/// ended by a 0 byte (which sorts a name before its children).
fn canonical_key(name: &hickory_proto::rr::Name) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    for label in name.iter().rev() {
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        key.push(0);
    }
    key
}

/// The serial of a zone's SOA record.
fn soa_serial(r: &Record) -> Option<u32> {
    match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}

/// Answers one AXFR or IXFR request read from a TCP connection: REFUSED unless the zone is served here and lets
/// `peer` transfer it; NOTAUTH (with the TSIG error) when its key is missing or wrong; otherwise the zone (AXFR), the
/// changes since the client's serial (IXFR, AXFR when the journal does not reach back), or just the SOA (current).
pub(crate) async fn serve_transfer<W: AsyncWrite + Unpin + Send>(
    dns: &Dns,
    raw: &[u8],
    request: &Message,
    peer: SocketAddr,
    w: &mut W,
) -> std::io::Result<()> {
    let started = Instant::now();
    let Some(q) = request.queries.first() else { return Ok(()) };
    let qname = q.name().to_lowercase();
    let qtype = q.query_type();
    let zone = qname.to_ascii();
    let asked = if qtype == RecordType::IXFR { "ixfr" } else { "axfr" };
    let metrics = &dns.metrics.xfr;
    let cfg = dns.config();
    let now = agent_core::clock::now_unix() as u64;
    let id = request.metadata.id;
    let refuse = |why: &str| {
        tracing::warn!(%peer, zone, kind = asked, "zone transfer refused: {why}");
        metrics.transfer(&zone, "out", asked, "refused");
        xfr::out::error_reply(id, &qname, qtype, ResponseCode::Refused)
    };
    let Some(policy) = cfg.transfers.get(&qname).filter(|p| !p.allow.is_empty()) else {
        return write_frame(w, &refuse("the zone is not served here or allows no transfers")).await;
    };
    if !policy.allows(peer.ip()) {
        return write_frame(w, &refuse("the peer is not in the zone's transfer.allow")).await;
    }
    let notauth = |why: String| {
        tracing::warn!(%peer, zone, kind = asked, "zone transfer refused (NOTAUTH): {why}");
        metrics.transfer(&zone, "out", asked, "notauth");
        xfr::out::error_reply(id, &qname, qtype, ResponseCode::NotAuth)
    };
    let mut signer: Option<ResponseSigner> = match (request.signature(), &policy.tsig) {
        (None, None) => None,
        (None, Some(k)) => return write_frame(w, &notauth(format!("no TSIG (the zone asks for key {k})"))).await,
        (Some(_), want) => match tsig::verify_request(&cfg.dns.tsig, raw, now) {
            Err(rejection) => {
                let mut msg = notauth(rejection.failure.to_string());
                rejection.append_error_tsig(&mut msg, now);
                return write_frame(w, &msg).await;
            }
            Ok(s) => match want {
                Some(k) if k != s.key().name() => {
                    let rejection = tsig::RequestRejection::bad_key(s.key().name());
                    let mut msg = notauth(format!("signed with key {}, the zone asks for {k}", s.key().name()));
                    rejection.append_error_tsig(&mut msg, now);
                    return write_frame(w, &msg).await;
                }
                _ => Some(s),
            },
        },
    };

    let zones = std::sync::Arc::clone(&*dns.zones());
    let Some((soa, rest)) = zones.zone_records(&qname) else {
        return write_frame(w, &refuse("the zone is not served here")).await;
    };
    let current = soa_serial(soa).unwrap_or(0);
    // IXFR: the client's serial is the SOA in the authority section.
    let client = (qtype == RecordType::IXFR).then(|| request.authorities.iter().find_map(soa_serial)).flatten();
    let mut stream = xfr::out::Stream::new(id, &qname, qtype);
    if let Some(c) = client.filter(|c| *c == current || xfr::journal::serial_lt(current, *c)) {
        // Current (or ahead of us): just the SOA.
        send_all(&mut stream, &[soa], &mut signer, now, w).await?;
        tracing::debug!(%peer, zone, client = c, "ixfr client is current");
        log_served(&zone, peer, "ixfr", 1, &stream, started);
        metrics.transfer(&zone, "out", "ixfr", "ok");
        return Ok(());
    }
    let deltas = client.and_then(|c| dns.xfr.journal.since(&qname, c)).filter(|(cur, _)| *cur == current);
    let (kind, sent_records) = match deltas {
        Some((_, deltas)) => {
            let recs = xfr::out::ixfr_records(soa, &deltas);
            let refs: Vec<&Record> = recs.iter().collect();
            send_all(&mut stream, &refs, &mut signer, now, w).await?;
            ("ixfr", refs.len() as u64)
        }
        None => {
            // The zone's messages at this serial are encoded once (sorted, compressed) and kept; each transfer patches
            // in its id and signs them.
            let cached = dns.xfr.axfr_messages(&qname, qtype, current, || {
                // In canonical order (names compared label by label from the right), as Knot and BIND send a zone:
                // the secondary builds its tree from sorted names faster.
                let mut all: Vec<&Record> = std::iter::once(soa).chain(rest).collect();
                all[1..].sort_by_cached_key(|r| canonical_key(&r.name));
                all.push(soa);
                let mut enc = xfr::out::Stream::new(0, &qname, qtype);
                let mut pos = 0;
                let mut msgs = Vec::new();
                while pos < all.len() {
                    msgs.push(enc.next_message(&all, &mut pos));
                }
                (msgs, all.len() as u64)
            });
            send_encoded(&mut stream, &cached.0, id, &mut signer, now, w).await?;
            ("axfr", cached.1)
        }
    };
    log_served(&zone, peer, kind, sent_records, &stream, started);
    metrics.transfer(&zone, "out", kind, "ok");
    Ok(())
}

fn log_served(zone: &str, peer: SocketAddr, kind: &str, records: u64, s: &xfr::out::Stream, started: Instant) {
    tracing::info!(
        %peer,
        zone,
        kind,
        records,
        messages = s.messages,
        bytes = s.bytes,
        ms = started.elapsed().as_millis() as u64,
        "zone transfer served"
    );
}

async fn send_all<W: AsyncWrite + Unpin + Send>(
    stream: &mut xfr::out::Stream,
    records: &[&Record],
    signer: &mut Option<ResponseSigner>,
    now: u64,
    w: &mut W,
) -> std::io::Result<()> {
    // Messages are small (see `out`): several go out in one write.
    const BATCH: usize = 60 * 1024;
    let mut pos = 0;
    let mut batch = Vec::with_capacity(BATCH + 4096);
    loop {
        let mut msg = stream.next_message(records, &mut pos);
        if let Some(s) = signer.as_mut() {
            s.sign(&mut msg, now);
        }
        batch.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        batch.extend_from_slice(&msg);
        let done = pos >= records.len();
        // The first message goes out at once (the secondary starts on it while the rest is encoded).
        if done || batch.len() >= BATCH || stream.messages == 1 {
            write_raw(w, &batch).await?;
            batch.clear();
        }
        if done {
            return Ok(());
        }
    }
}

/// Sends messages encoded before (id 0): each gets `id`, and a TSIG when the request was signed.
async fn send_encoded<W: AsyncWrite + Unpin + Send>(
    stream: &mut xfr::out::Stream,
    messages: &[Vec<u8>],
    id: u16,
    signer: &mut Option<ResponseSigner>,
    now: u64,
    w: &mut W,
) -> std::io::Result<()> {
    const BATCH: usize = 60 * 1024;
    let mut batch = Vec::with_capacity(BATCH + 4096);
    for (i, m) in messages.iter().enumerate() {
        let mut msg = m.clone();
        msg[..2].copy_from_slice(&id.to_be_bytes());
        if let Some(s) = signer.as_mut() {
            s.sign(&mut msg, now);
        }
        stream.bytes += m.len() as u64;
        stream.messages += 1;
        batch.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        batch.extend_from_slice(&msg);
        if i == 0 || i + 1 == messages.len() || batch.len() >= BATCH {
            write_raw(w, &batch).await?;
            batch.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::{parse_key_name, sign_request, TsigKey};
    use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
    use hickory_proto::rr::Name;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// An agent with a zone, a secondary zone from 127.0.0.1 (key `xfr-key`) and the keys file.
    fn dns(dir: &std::path::Path) -> Arc<Dns> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let keys = format!("[[key]]\nname = \"xfr-key\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{b64}\"\n");
        agent_core::state::write_atomic(&dir.join("tsig.toml"), keys.as_bytes(), 0o600).unwrap();
        let text = "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
             [dns]\nlisten = [\"127.0.0.1:0\"]\ntsig_keys = \"tsig.toml\"\n\
             [[zones]]\nname = \"lab.home.arpa\"\nrecords = [{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }]\n\
             [[secondaries]]\nzone = \"s.arpa\"\nprimaries = [\"127.0.0.1\"]\ntsig = \"xfr-key\"\n";
        std::fs::write(dir.join("dns.toml"), text).unwrap();
        let cfg = crate::config::Config::load(&dir.join("dns.toml")).unwrap();
        let metrics = crate::metrics::DnsMetrics::new(&agent_core::telemetry::Metrics::new());
        Dns::new(cfg, metrics).unwrap()
    }

    /// One message over a connection served by `serve_connection`: the answer's bytes.
    async fn exchange(handler: &Handler, msg: &[u8]) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let h = handler.clone();
        let task = tokio::spawn(async move { serve_connection(server, peer, &h, Protocol::Tcp).await });
        write_frame(&mut client, msg).await.unwrap();
        let mut len = [0u8; 2];
        client.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        client.read_exact(&mut buf).await.unwrap();
        drop(client);
        task.await.unwrap();
        buf
    }

    /// Over TCP a signed query (the SOA query a secondary sends first) and a signed NOTIFY get signed answers that
    /// verify; a wrong secret gets NOTAUTH with BADSIG, unsigned; an unsigned query an unsigned answer.
    #[tokio::test]
    async fn signed_queries_and_notify_over_tcp_are_answered_signed() {
        let dir = tempfile::tempdir().unwrap();
        let handler = Handler::new(dns(dir.path()));
        let key = |secret: &[u8]| {
            TsigKey::new(&parse_key_name("xfr-key").unwrap(), TsigAlgorithm::HmacSha256, secret).unwrap()
        };
        let now = u64::try_from(agent_core::clock::now_unix()).unwrap();
        let msg = |op: OpCode, zone: &str| {
            let mut m = Message::new(31, MessageType::Query, op);
            m.add_query(Query::query(Name::from_ascii(zone).unwrap(), RecordType::SOA));
            m.to_vec().unwrap()
        };
        // (opcode, zone, signing secret, rcode wanted, TSIG error wanted)
        let cases = [
            (OpCode::Query, "lab.home.arpa.", Some(SECRET), ResponseCode::NoError, None),
            (OpCode::Notify, "s.arpa.", Some(SECRET), ResponseCode::NoError, None),
            (
                OpCode::Query,
                "lab.home.arpa.",
                Some(&b"another secret, not the real one"[..]),
                ResponseCode::NotAuth,
                Some(TsigError::BadSig),
            ),
            (OpCode::Query, "lab.home.arpa.", None, ResponseCode::NoError, None),
        ];
        for (op, zone, secret, rcode, error) in cases {
            let mut q = msg(op, zone);
            let verifier = secret.map(|s| sign_request(&key(s), &mut q, now));
            let reply = exchange(&handler, &q).await;
            let m = Message::from_vec(&reply).unwrap();
            let what = format!("{op:?} {zone} signed={}", secret.is_some());
            assert_eq!((m.metadata.id, m.metadata.response_code), (31, rcode), "{what}");
            match (verifier, error) {
                (Some(mut v), None) => {
                    assert!(v.verify(&reply, m.signature().is_some(), now).unwrap(), "{what}: signed");
                    v.finish().unwrap();
                    assert!(m.metadata.authoritative, "{what}");
                }
                (Some(_), Some(e)) => {
                    let sig = m.signature().expect("the error answer carries a TSIG");
                    assert_eq!((sig.data.error, sig.data.mac.is_empty()), (Some(e), true), "{what}");
                }
                (None, _) => assert!(m.signature().is_none() && m.answers.len() == 1, "{what}"),
            }
        }
    }

    #[test]
    fn limits_count_per_client_and_in_all() {
        let limits = Arc::new(Limits::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<Permit> = (0..MAX_PER_CLIENT).map(|_| limits.admit(a).unwrap()).collect();
        assert!(limits.admit(a).is_none(), "one client is capped");
        let other = limits.admit(b).expect("another client still gets in");
        drop(held);
        assert!(limits.admit(a).is_some(), "closing frees the places");
        drop(other);
        assert_eq!(limits.open.lock().unwrap().0, 0);
    }
}
