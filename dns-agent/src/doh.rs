//! DNS over HTTPS (RFC 8484) on the agent's own HTTP server: TLS (ALPN h2 and http/1.1) and HTTP/1.1 or HTTP/2 on
//! each `[dns] https_listen` address; GET `?dns=` and POST `application/dns-message` on `/dns-query`, answered by
//! `Handler` like any other query (a signed one through `signed`), with plain HTTP statuses for what is not a DNS query. Bounded: connections per
//! agent, TLS handshake, request headers, body size, streams per connection, idle time.
//! Knows HTTP and TLS; must not know what the answers are (that is `handler`) or how they are encoded (`wire`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hickory_proto::op::MessageType;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::RequestHandler;
use http::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::ResolvesServerCert;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::encrypted::{TlsListeners, TlsStream};
use crate::handler::Handler;
use crate::udp::Capture;
use crate::wire;

/// The DoH path (RFC 8484).
pub(crate) const DOH_PATH: &str = "/dns-query";
/// The media type of DNS messages (RFC 8484 section 6).
pub(crate) const DNS_MESSAGE: &str = "application/dns-message";
/// DoH connections open at once, over all listeners; more are closed at accept.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Concurrent HTTP/2 streams per connection.
pub(crate) const MAX_STREAMS: u32 = 100;
/// Largest DNS message taken in a POST body (a DNS message is at most 65535 octets).
pub(crate) const MAX_BODY: usize = 65535;
/// How much of a refused request's body is read (and dropped) before the refusal is sent.
const MAX_DRAIN: usize = 1 << 20;
/// Largest request head (request line or pseudo-headers, and headers): a GET's `dns` parameter of a 65535-octet
/// message does not fit, which ordinary queries never are.
const MAX_HEAD: usize = 16 * 1024;

/// The running DoH listeners; [`DohServer::shutdown`] stops them and closes their connections.
pub(crate) struct DohServer {
    listeners: TlsListeners,
}

impl DohServer {
    /// Serves every listener (must run inside the tokio runtime), presenting `certs`; `timeout` bounds the TLS
    /// handshake, reading a request's head and body, and an idle connection.
    pub(crate) fn spawn(
        listeners: Vec<std::net::TcpListener>,
        certs: Arc<dyn ResolvesServerCert>,
        handler: Handler,
        timeout: Duration,
    ) -> std::io::Result<DohServer> {
        let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
        let serve = move |tls, peer| serve_connection(tls, peer, handler.clone(), timeout);
        let listeners = TlsListeners::spawn("https", listeners, certs, alpn, MAX_CONNECTIONS, timeout, serve)?;
        Ok(DohServer { listeners })
    }

    /// Stops accepting and drops every open connection.
    pub(crate) async fn shutdown(&mut self) {
        self.listeners.shutdown().await;
    }
}

/// Serves one established connection with HTTP/1.1 or HTTP/2 until the client closes it or it has been idle (no
/// request in flight, nothing read or written) for `timeout`.
async fn serve_connection(tls: TlsStream, peer: SocketAddr, handler: Handler, timeout: Duration) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked { inner: tls, activity: activity.clone() });
    let in_flight = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let (handler, in_flight) = (handler.clone(), in_flight.clone());
        async move {
            in_flight.requests.fetch_add(1, Ordering::Relaxed);
            let response = respond(req, peer, &handler, timeout).await;
            in_flight.requests.fetch_sub(1, Ordering::Relaxed);
            in_flight.touch();
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .max_pending_accept_reset_streams(MAX_STREAMS as usize)
        .keep_alive_interval(timeout)
        .keep_alive_timeout(timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "dns https: connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(timeout / 4) => {
                if activity.requests.load(Ordering::Relaxed) == 0 && activity.idle() >= timeout {
                    tracing::debug!(%peer, "dns https: closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are being answered.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0), requests: AtomicUsize::new(0) })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A stream that notes in [`Activity`] whenever bytes move.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a request gets no DNS answer: its HTTP status and a short plain-text reason.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Checks what can be checked before reading a body: the path, the method, `Accept`, and for a POST its
/// `Content-Type` and `Content-Length`. Returns the DNS message of a GET (`None` for a POST: it is in the body).
pub(crate) fn check_head(parts: &http::request::Parts) -> Result<Option<Vec<u8>>, Refusal> {
    if parts.uri.path() != DOH_PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "not found: DNS queries go to /dns-query"));
    }
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET or POST"));
    }
    if !accepts_dns(parts.headers.get_all(ACCEPT).iter()) {
        return Err(refuse(StatusCode::NOT_ACCEPTABLE, "not acceptable: the answer is application/dns-message"));
    }
    if parts.method == Method::GET {
        let Some(param) = parts.uri.query().into_iter().flat_map(|q| q.split('&')).find_map(|p| p.strip_prefix("dns="))
        else {
            return Err(refuse(StatusCode::BAD_REQUEST, "bad request: no dns parameter"));
        };
        return decode_param(param).map(Some);
    }
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !media_type_is(content_type, DNS_MESSAGE) {
        return Err(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type: send application/dns-message"));
    }
    let length = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload too large: a DNS message is at most 65535 bytes"));
    }
    Ok(None)
}

/// The `dns` parameter of a GET: base64url, without padding (RFC 8484 section 4.1); padding is tolerated.
fn decode_param(param: &str) -> Result<Vec<u8>, Refusal> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let param = param.trim_end_matches("%3D").trim_end_matches("%3d");
    ENGINE.decode(param).map_err(|_| refuse(StatusCode::BAD_REQUEST, "bad request: dns parameter is not base64url"))
}

/// `type/subtype` of a media type, parameters and case aside.
fn media_type_is(value: &str, want: &str) -> bool {
    value.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}

/// Whether `Accept` allows application/dns-message: absent, or any listed range `*/*`, `application/*` or
/// `application/dns-message` whose q-value is not 0.
fn accepts_dns<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    let mut any = false;
    for v in values {
        any = true;
        let Ok(v) = v.to_str() else { continue };
        for range in v.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
            });
            let matches = media == "*/*"
                || media.eq_ignore_ascii_case("application/*")
                || media.eq_ignore_ascii_case(DNS_MESSAGE);
            if matches && !refused {
                return true;
            }
        }
    }
    !any
}

/// Answers one HTTP request.
async fn respond(
    req: Request<Incoming>,
    peer: SocketAddr,
    handler: &Handler,
    timeout: Duration,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let query = match check_head(&parts) {
        Ok(Some(query)) => query,
        Ok(None) => match read_body(body, peer, timeout).await {
            Ok(query) => query,
            Err(r) => return refused(r),
        },
        Err(r) => {
            // Read what the client is sending (bounded) so that it sees the status, not a reset stream.
            let _ = read_body(body, peer, timeout).await;
            return refused(r);
        }
    };
    match answer(query, peer, handler).await {
        Ok(bytes) => {
            let max_age = wire::min_ttl(&bytes).unwrap_or(0);
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            let h = response.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}")) {
                h.insert(CACHE_CONTROL, v);
            }
            response
        }
        Err(r) => refused(r),
    }
}

/// Reads a request body within `timeout`: the DNS message when it is at most [`MAX_BODY`] octets; a longer one
/// is read on (and dropped) up to [`MAX_DRAIN`] octets before 413, so that an HTTP/2 client gets the status rather
/// than a reset stream.
async fn read_body(mut body: Incoming, peer: SocketAddr, timeout: Duration) -> Result<Vec<u8>, Refusal> {
    let mut message = Vec::new();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                tracing::debug!(%peer, error = %e, "dns https: cannot read a request body");
                refuse(StatusCode::BAD_REQUEST, "bad request: unreadable body")
            })?;
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen <= MAX_BODY {
                    message.extend_from_slice(&data);
                } else if seen > MAX_DRAIN {
                    break;
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) if seen <= MAX_BODY => Ok(message),
        Ok(Ok(())) => {
            Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload too large: a DNS message is at most 65535 bytes"))
        }
        Ok(Err(r)) => Err(r),
        Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "request timeout: the body came too slowly")),
    }
}

/// The answer to a DNS message from `peer`, as the handler gives it (padded when the query is, RFC 8467).
async fn answer(query: Vec<u8>, peer: SocketAddr, handler: &Handler) -> Result<Vec<u8>, Refusal> {
    let not_dns = || refuse(StatusCode::BAD_REQUEST, "bad request: not a DNS query message");
    let request = hickory_server::server::Request::from_bytes(query, peer, Protocol::Https).map_err(|e| {
        tracing::debug!(%peer, error = %e, "dns https: unparsable dns message");
        not_dns()
    })?;
    if request.metadata.message_type != MessageType::Query {
        return Err(not_dns());
    }
    // A NOTIFY, and a query carrying a TSIG: answered signed when they were (RFC 8945 §5.3).
    if crate::signed::takes(handler, &request) {
        let pad = wire::wants_padding(request.edns.as_ref());
        return crate::signed::answer(handler, &request, wire::Limit::Stream, pad)
            .await
            .ok_or_else(|| refuse(StatusCode::INTERNAL_SERVER_ERROR, "no answer"));
    }
    let capture = Capture::stream(&request);
    handler.handle_request::<_, TokioTime>(&request, capture.clone()).await;
    let mut bytes = capture.take().ok_or_else(|| refuse(StatusCode::INTERNAL_SERVER_ERROR, "no answer"))?;
    if wire::wants_padding(request.edns.as_ref()) {
        wire::pad(&mut bytes, wire::RESPONSE_PAD_BLOCK);
    }
    Ok(bytes)
}

fn refused(r: Refusal) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", r.reason))));
    *response.status_mut() = r.status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if r.status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static("GET, POST"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn heads_are_checked_in_order() {
        // "AAABAAABAAAAAAAAA2ZvbwAAAQAB" is a query for foo. A in base64url (no padding).
        let q = "/dns-query?dns=AAABAAABAAAAAAAAA2ZvbwAAAQAB";
        let status = |method, uri, headers: &[(&str, &str)]| match check_head(&head(method, uri, headers)) {
            Ok(_) => StatusCode::OK,
            Err(r) => r.status,
        };
        let dns = [("content-type", DNS_MESSAGE)];
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], StatusCode);
        let cases: &[Case<'_>] = &[
            ("GET", q, &[], StatusCode::OK),
            ("GET", q, &[("accept", "*/*")], StatusCode::OK),
            ("GET", q, &[("accept", "application/*")], StatusCode::OK),
            ("GET", q, &[("accept", "text/html, application/dns-message;q=0.9")], StatusCode::OK),
            ("GET", q, &[("accept", "text/html")], StatusCode::NOT_ACCEPTABLE),
            ("GET", q, &[("accept", "application/dns-message;q=0")], StatusCode::NOT_ACCEPTABLE),
            ("GET", "/dns-query", &[], StatusCode::BAD_REQUEST),
            ("GET", "/dns-query?name=foo", &[], StatusCode::BAD_REQUEST),
            ("GET", "/dns-query?dns=!!!", &[], StatusCode::BAD_REQUEST),
            ("GET", "/resolve?dns=AAAB", &[], StatusCode::NOT_FOUND),
            ("PUT", "/dns-query", &dns, StatusCode::METHOD_NOT_ALLOWED),
            ("DELETE", "/other", &[], StatusCode::NOT_FOUND),
            ("POST", "/dns-query", &dns, StatusCode::OK),
            ("POST", "/dns-query", &[("content-type", "Application/DNS-Message; charset=x")], StatusCode::OK),
            ("POST", "/dns-query", &[], StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("POST", "/dns-query", &[("content-type", "application/json")], StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("POST", "/dns-query", &[dns[0], ("content-length", "65536")], StatusCode::PAYLOAD_TOO_LARGE),
            ("POST", "/dns-query", &[dns[0], ("content-length", "65535")], StatusCode::OK),
        ];
        for (method, uri, headers, want) in cases {
            assert_eq!(status(*method, *uri, headers), *want, "{method} {uri} {headers:?}");
        }
        let got = check_head(&head("GET", &format!("{q}&ct=x"), &[])).unwrap().unwrap();
        assert_eq!(got, [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'f', b'o', b'o', 0, 0, 1, 0, 1]);
        assert_eq!(decode_param("AAAB%3D").unwrap(), decode_param("AAAB").unwrap());
    }

    /// A query signed with a key of `[dns] tsig_keys` gets a signed answer over DoH too (padded first when asked).
    #[tokio::test]
    async fn a_signed_query_gets_a_signed_answer() {
        use crate::tsig::{parse_key_name, sign_request, TsigKey};
        use hickory_proto::op::{Edns, Message, OpCode, Query};
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
        use hickory_proto::rr::{Name, RecordType};
        let secret = b"0123456789abcdef0123456789abcdef";
        let dir = tempfile::tempdir().unwrap();
        let keys = format!(
            "[[key]]\nname = \"k\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{}\"\n",
            base64::engine::general_purpose::STANDARD.encode(secret)
        );
        agent_core::state::write_atomic(&dir.path().join("tsig.toml"), keys.as_bytes(), 0o600).unwrap();
        let text = "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
                    [dns]\nlisten = [\"127.0.0.1:0\"]\ntsig_keys = \"tsig.toml\"\n[[zones]]\nname = \"lab.home.arpa\"\n";
        std::fs::write(dir.path().join("dns.toml"), text).unwrap();
        let cfg = crate::config::Config::load(&dir.path().join("dns.toml")).unwrap();
        let metrics = crate::metrics::DnsMetrics::new(&agent_core::telemetry::Metrics::new());
        let handler = Handler::new(crate::service::Dns::new(cfg, metrics).unwrap());
        let key = TsigKey::new(&parse_key_name("k").unwrap(), TsigAlgorithm::HmacSha256, secret).unwrap();
        let now = u64::try_from(agent_core::clock::now_unix()).unwrap();
        let mut m = Message::new(3, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("lab.home.arpa.").unwrap(), RecordType::SOA));
        let mut e = Edns::new();
        e.options_mut().insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(12, vec![]));
        m.set_edns(e);
        let mut q = m.to_vec().unwrap();
        let mut verifier = sign_request(&key, &mut q, now);
        let bytes = answer(q, "127.0.0.1:4443".parse().unwrap(), &handler).await.unwrap();
        assert!(verifier.verify(&bytes, true, now).unwrap(), "the answer is signed");
        let got = Message::from_vec(&bytes).unwrap();
        assert_eq!(got.answers.len(), 1, "{got:?}");
        assert!(got.edns.is_some_and(|e| e.option(hickory_proto::rr::rdata::opt::EdnsCode::Padding).is_some()));
    }

    /// A DoH server on 127.0.0.1 with `timeout`, a self-signed certificate and no zones.
    async fn server(timeout: Duration) -> (DohServer, SocketAddr, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
        std::fs::write(dir.path().join("dns.toml"), text).unwrap();
        let cfg = crate::config::Config::load(&dir.path().join("dns.toml")).unwrap();
        let metrics = crate::metrics::DnsMetrics::new(&agent_core::telemetry::Metrics::new());
        let dns = crate::service::Dns::new(cfg, metrics).unwrap();
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![key.cert.der().clone()], signing);
        let certs = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        (DohServer::spawn(vec![l], certs, Handler::new(dns), timeout).unwrap(), addr, dir)
    }

    /// How long until the server closes `c` (a read ends or fails), if it does within 10 s.
    async fn closed_after(c: &mut tokio::net::TcpStream) -> Option<Duration> {
        use tokio::io::AsyncReadExt;
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_at_the_timeout_and_one_over_the_cap_at_once() {
        let timeout = Duration::from_secs(2);
        let (mut s, addr, _dir) = server(timeout).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = closed_after(&mut silent).await.expect("a silent connection is closed");
        assert!(t >= timeout - Duration::from_millis(200) && t < timeout * 2, "{t:?}");

        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = closed_after(&mut extra).await.expect("one over the cap is closed");
        assert!(t < timeout / 2, "closed at accept, not at the handshake timeout: {t:?}");
        // Once the held ones are gone, there is room again.
        drop(held);
        tokio::time::sleep(timeout + Duration::from_millis(500)).await;
        let mut again = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = closed_after(&mut again).await.expect("closed at its timeout");
        assert!(t >= timeout - Duration::from_millis(200), "{t:?}");
        s.shutdown().await;
    }

    /// A TLS client connection (HTTP/1.1 by ALPN) to the test server, trusting its certificate blindly.
    async fn tls_client(addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        #[derive(Debug)]
        struct AnyCert;
        impl rustls::client::danger::ServerCertVerifier for AnyCert {
            fn verify_server_cert(
                &self,
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &[rustls::pki_types::CertificateDer<'_>],
                _: &rustls::pki_types::ServerName<'_>,
                _: &[u8],
                _: rustls::pki_types::UnixTime,
            ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
                Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
            }
            fn verify_tls13_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
                Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap()
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_and_a_stalled_request_head_are_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let timeout = Duration::from_secs(1);
        let (mut s, addr, _dir) = server(timeout).await;
        // A whole request answered (REFUSED: no zones, no upstream), then the connection kept alive and idle.
        let mut c = tls_client(addr).await;
        let get = "GET /dns-query?dns=AAABAAABAAAAAAAAA2ZvbwAAAQAB HTTP/1.1\r\nHost: localhost\r\n\r\n";
        c.write_all(get.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        assert!(head.starts_with("http/1.1 200") && head.contains("content-type: application/dns-message"), "{head}");
        let start = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
        assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "closed, not {end:?}");
        assert!(start.elapsed() >= timeout - Duration::from_millis(300), "{:?}", start.elapsed());
        // Half a request head, then nothing: closed within the timeout (hyper's header timer or the idle watch).
        let mut c = tls_client(addr).await;
        c.write_all(b"GET /dns-query?dns=AAAB HTTP/1.1\r\nHost: loc").await.unwrap();
        let start = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
        assert!(end.is_ok() && start.elapsed() < timeout * 3, "{end:?} after {:?}", start.elapsed());
        s.shutdown().await;
    }

    #[test]
    fn a_refused_method_names_the_allowed_ones() {
        let r = refused(refuse(StatusCode::METHOD_NOT_ALLOWED, "x"));
        assert_eq!(r.headers().get(ALLOW).unwrap(), "GET, POST");
        assert!(refused(refuse(StatusCode::NOT_FOUND, "x")).headers().get(ALLOW).is_none());
    }
}
