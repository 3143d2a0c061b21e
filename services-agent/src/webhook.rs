//! The push trigger: an HTTP endpoint (`POST /hooks/git`) for Gitea, Forgejo and GitHub push webhooks. A request
//! whose body carries a valid HMAC-SHA256 signature made with the configured secret (and, when the payload names a
//! `ref`, is a push to the configured branch) wakes the stacks poller for a sync now; every other request is refused,
//! counted in `services_webhook_requests{result}` and logged with the peer's address (never the secret or the body).
//! Bounded: connections, header and body time, body size, one request per connection.
//! An edge module: knows HTTP (hyper), the signature headers and the payload's `ref`; must not know compose, git or
//! how a sync runs (it calls the trigger it is handed).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_core::cli::Shutdown;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::webhook::read_secret;

/// The one path webhooks are posted to.
pub(crate) const PATH: &str = "/hooks/git";
/// The largest body accepted (a push of many commits stays far below); a larger one is refused with 413.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// The endpoint's bounds besides the body size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections: usize,
    /// Time for the request line and headers (then the connection is closed).
    pub header: Duration,
    /// Time for the body, once the headers are in (a slow sender is refused with 408).
    pub body: Duration,
    /// A connection's whole life, whatever it does.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 32,
            header: Duration::from_secs(10),
            body: Duration::from_secs(10),
            connection: Duration::from_secs(30),
        }
    }
}

/// The signature headers, in the order they are looked at: GitHub's (also sent by Gitea and Forgejo),
/// `sha256=HEX`; Gitea's and Forgejo's own, bare hex.
const SIGNATURE_HEADERS: [(&str, Option<&str>); 3] =
    [("x-hub-signature-256", Some("sha256=")), ("x-gitea-signature", None), ("x-forgejo-signature", None)];

/// What became of one request; each has its status and its `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Valid signature, the configured branch (or no `ref`): a sync was requested.
    Accepted,
    /// Valid signature, a push to another ref: answered, nothing synced.
    OtherRef,
    NotFound,
    WrongMethod,
    TooLarge,
    Unsigned,
    BadSignature,
    /// The body did not arrive in time.
    Timeout,
    /// The body could not be read (the connection broke).
    BadRequest,
    /// The secret file cannot be read now, or the config no longer has `[stacks.webhook]`.
    Unavailable,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 10] = [
        Outcome::Accepted,
        Outcome::OtherRef,
        Outcome::NotFound,
        Outcome::WrongMethod,
        Outcome::TooLarge,
        Outcome::Unsigned,
        Outcome::BadSignature,
        Outcome::Timeout,
        Outcome::BadRequest,
        Outcome::Unavailable,
    ];

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted => StatusCode::ACCEPTED,
            Outcome::OtherRef => StatusCode::OK,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::WrongMethod => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Unsigned => StatusCode::UNAUTHORIZED,
            Outcome::BadSignature => StatusCode::FORBIDDEN,
            Outcome::Timeout => StatusCode::REQUEST_TIMEOUT,
            Outcome::BadRequest => StatusCode::BAD_REQUEST,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `result` label of `services_webhook_requests`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::OtherRef => "other_ref",
            Outcome::NotFound => "not_found",
            Outcome::WrongMethod => "wrong_method",
            Outcome::TooLarge => "too_large",
            Outcome::Unsigned => "unsigned",
            Outcome::BadSignature => "bad_signature",
            Outcome::Timeout => "timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// The answer's body: one line for the person reading the Git server's delivery log.
    fn message(self) -> &'static str {
        match self {
            Outcome::Accepted => "sync requested\n",
            Outcome::OtherRef => "not the configured branch: nothing to sync\n",
            Outcome::NotFound => "not found: webhooks are posted to /hooks/git\n",
            Outcome::WrongMethod => "method not allowed: POST only\n",
            Outcome::TooLarge => "payload too large (limit 1 MiB)\n",
            Outcome::Unsigned => {
                "unsigned: set the webhook's secret (X-Hub-Signature-256, X-Gitea-Signature or X-Forgejo-Signature)\n"
            }
            Outcome::BadSignature => "bad signature\n",
            Outcome::Timeout => "request body too slow\n",
            Outcome::BadRequest => "request body could not be read\n",
            Outcome::Unavailable => "webhook not available: see the agent's log\n",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `services_webhook_requests{result}`: every request the endpoint answered, by outcome (all present from start).
#[derive(Clone, Default)]
pub(crate) struct WebhookMetrics {
    requests: Family<ResultLabels, Counter>,
}

impl WebhookMetrics {
    pub(crate) fn register(&self, m: &agent_core::telemetry::Metrics) {
        for o in Outcome::ALL {
            let _ = self.requests.get_or_create(&ResultLabels { result: o.label() });
        }
        m.register(
            "services_webhook_requests",
            "Requests to the push-trigger webhook, by result (accepted, other_ref or a refusal)",
            self.requests.clone(),
        );
    }

    fn count(&self, o: Outcome) {
        self.requests.get_or_create(&ResultLabels { result: o.label() }).inc();
    }
}

/// The checks made before the body is read: path, method, a declared length over the limit, and a signature header.
pub(crate) fn precheck(method: &Method, path: &str, headers: &HeaderMap) -> Option<Outcome> {
    if path != PATH {
        return Some(Outcome::NotFound);
    }
    if method != Method::POST {
        return Some(Outcome::WrongMethod);
    }
    let declared = headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Some(Outcome::TooLarge);
    }
    if signature(headers).is_none() {
        return Some(Outcome::Unsigned);
    }
    None
}

/// The request's signature from the first signature header present: `Some(None)` when it is not valid hex (or lacks
/// GitHub's `sha256=`), `None` when no signature header is present (or it is empty).
fn signature(headers: &HeaderMap) -> Option<Option<Vec<u8>>> {
    SIGNATURE_HEADERS.iter().find_map(|(name, prefix)| {
        let v = headers.get(*name)?.to_str().map(str::trim).unwrap_or("?");
        if v.is_empty() {
            return None;
        }
        Some(match prefix {
            Some(p) => v.strip_prefix(p).and_then(from_hex),
            None => from_hex(v),
        })
    })
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    s.as_bytes().chunks(2).map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8)).collect()
}

/// True when `sig` is the HMAC-SHA256 of `body` under `secret` (compared in constant time).
pub(crate) fn verify(secret: &[u8], body: &[u8], sig: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, sig).is_ok()
}

/// The ref a push payload names (`refs/heads/main`), read loosely: `None` for a payload without one (a ping) or
/// that is not JSON.
fn pushed_ref(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("ref")?.as_str().map(str::to_string)
}

/// The verdict on a request that passed [`precheck`], from its headers and whole body.
pub(crate) fn judge(headers: &HeaderMap, body: &[u8], secret: &[u8], branch: &str) -> Outcome {
    match signature(headers) {
        None => Outcome::Unsigned,
        Some(None) => Outcome::BadSignature,
        Some(Some(sig)) if !verify(secret, body, &sig) => Outcome::BadSignature,
        Some(Some(_)) => match pushed_ref(body) {
            Some(r) if r != format!("refs/heads/{branch}") => Outcome::OtherRef,
            _ => Outcome::Accepted,
        },
    }
}

/// The endpoint's state: the running config (secret file and branch are read per request, so a reload or a new
/// secret applies at once), what to call on a valid push, and the counters.
pub(crate) struct Webhook {
    pub cfg: crate::SharedConfig,
    pub trigger: Box<dyn Fn() + Send + Sync>,
    pub metrics: WebhookMetrics,
    pub limits: Limits,
}

impl Webhook {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let outcome = self.outcome(req, peer).await;
        self.metrics.count(outcome);
        match outcome {
            Outcome::Accepted => {
                tracing::info!(%peer, "webhook: signed push, sync requested");
                (self.trigger)();
            }
            Outcome::OtherRef => tracing::info!(%peer, "webhook: signed push to another branch, nothing to sync"),
            o => tracing::warn!(%peer, result = o.label(), status = o.status().as_u16(), "webhook: request refused"),
        }
        let mut resp = Response::new(Full::new(Bytes::from_static(outcome.message().as_bytes())));
        *resp.status_mut() = outcome.status();
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if outcome == Outcome::WrongMethod {
            resp.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }

    async fn outcome(&self, req: Request<Incoming>, peer: SocketAddr) -> Outcome {
        if let Some(o) = precheck(req.method(), req.uri().path(), req.headers()) {
            return o;
        }
        let cfg = self.cfg.load_full();
        let Some((secret_file, branch)) =
            cfg.stacks.as_ref().and_then(|s| Some((s.webhook.as_ref()?.secret_file.clone(), s.branch.clone())))
        else {
            tracing::warn!(%peer, "webhook: the config has no [stacks.webhook] any more; restart to close the port");
            return Outcome::Unavailable;
        };
        let (parts, body) = req.into_parts();
        let body = match tokio::time::timeout(self.limits.body, Limited::new(body, MAX_BODY).collect()).await {
            Err(_) => return Outcome::Timeout,
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Outcome::TooLarge,
            Ok(Err(_)) => return Outcome::BadRequest,
            Ok(Ok(b)) => b.to_bytes(),
        };
        let secret = match read_secret(&secret_file) {
            Ok(s) => s,
            Err(reason) => {
                tracing::error!(file = %secret_file.display(), "webhook: secret file {reason}");
                return Outcome::Unavailable;
            }
        };
        judge(&parts.headers, &body, &secret, &branch)
    }
}

/// Serves the endpoint on `listener` until `shutdown`: at most `limits.connections` at once, one request each.
pub(crate) async fn serve(listener: tokio::net::TcpListener, hook: Arc<Webhook>, shutdown: Shutdown) {
    let limits = hook.limits;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let hook = hook.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let hook = hook.clone();
                async move { Ok::<_, Infallible>(hook.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            match tokio::time::timeout(limits.connection, conn).await {
                Err(_) => tracing::warn!(%peer, "webhook: connection closed after {:?}", limits.connection),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "webhook: connection ended"),
                Ok(Ok(())) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries"), also computed on this machine with
    /// `printf '%s' 'Hello, World!' | openssl dgst -sha256 -hmac "It's a Secret to Everybody"`.
    const GITHUB_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIG: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    /// `printf '%s' '{"ref":"refs/heads/main"}' | openssl dgst -sha256 -hmac "It's a Secret to Everybody"`.
    const PUSH_MAIN: &[u8] = br#"{"ref":"refs/heads/main"}"#;
    const PUSH_MAIN_SIG: &str = "6a42699496d8c4fb346af1c930df527931a321e28ada69dbc5ee82f438517fd2";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn known_vectors_verify_and_anything_else_does_not() {
        let sig = from_hex(GITHUB_SIG).unwrap();
        assert!(verify(GITHUB_SECRET, GITHUB_BODY, &sig));
        assert!(verify(GITHUB_SECRET, PUSH_MAIN, &from_hex(PUSH_MAIN_SIG).unwrap()));
        assert!(!verify(b"another secret", GITHUB_BODY, &sig));
        assert!(!verify(GITHUB_SECRET, b"Hello, World?", &sig));
        assert!(!verify(GITHUB_SECRET, GITHUB_BODY, &sig[..31]));
        assert!(!verify(GITHUB_SECRET, GITHUB_BODY, &[]));
        assert_eq!(from_hex("0aFf"), Some(vec![0x0a, 0xff]));
        for bad in ["abc", "zz", "+1", "é"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
    }

    /// Every signature header with the push to `main`, and each way of getting it wrong, against the status it gets.
    #[test]
    fn headers_bodies_and_branches_map_to_outcomes() {
        let hub = format!("sha256={PUSH_MAIN_SIG}");
        let upper = PUSH_MAIN_SIG.to_uppercase();
        let other_sig = "0".repeat(64);
        let other_branch = br#"{"ref":"refs/heads/dev","after":"x"}"#;
        let tag = br#"{"ref":"refs/tags/v1"}"#;
        let sign = |body: &[u8]| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, GITHUB_SECRET);
            ring::hmac::sign(&key, body).as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let (dev_sig, tag_sig, ping_sig, text_sig) =
            (sign(other_branch), sign(tag), sign(br#"{"zen":"hi","hook_id":1}"#), sign(b"payload=%7B%7D"));
        type Case<'a> = (Vec<(&'static str, &'a str)>, &'a [u8], Outcome);
        let cases: Vec<Case<'_>> = vec![
            (vec![("x-hub-signature-256", &hub)], PUSH_MAIN, Outcome::Accepted),
            (vec![("x-gitea-signature", PUSH_MAIN_SIG)], PUSH_MAIN, Outcome::Accepted),
            (vec![("x-forgejo-signature", PUSH_MAIN_SIG)], PUSH_MAIN, Outcome::Accepted),
            (vec![("x-gitea-signature", &upper)], PUSH_MAIN, Outcome::Accepted),
            (vec![("x-gitea-signature", &ping_sig)], br#"{"zen":"hi","hook_id":1}"#, Outcome::Accepted),
            (vec![("x-gitea-signature", &text_sig)], b"payload=%7B%7D", Outcome::Accepted),
            (vec![("x-gitea-signature", &dev_sig)], other_branch, Outcome::OtherRef),
            (vec![("x-gitea-signature", &tag_sig)], tag, Outcome::OtherRef),
            (vec![], PUSH_MAIN, Outcome::Unsigned),
            (vec![("x-gitea-signature", "")], PUSH_MAIN, Outcome::Unsigned),
            (vec![("x-hub-signature", "sha1=abcd")], PUSH_MAIN, Outcome::Unsigned),
            (vec![("x-gitea-signature", &other_sig)], PUSH_MAIN, Outcome::BadSignature),
            (vec![("x-hub-signature-256", PUSH_MAIN_SIG)], PUSH_MAIN, Outcome::BadSignature),
            (vec![("x-gitea-signature", "not hex")], PUSH_MAIN, Outcome::BadSignature),
            (vec![("x-gitea-signature", &dev_sig)], PUSH_MAIN, Outcome::BadSignature),
            // GitHub's header is looked at first: a wrong one is not rescued by a right Gitea one.
            (
                vec![("x-hub-signature-256", "sha256=00"), ("x-gitea-signature", PUSH_MAIN_SIG)],
                PUSH_MAIN,
                Outcome::BadSignature,
            ),
        ];
        for (h, body, want) in cases {
            let h = headers(&h);
            assert_eq!(judge(&h, body, GITHUB_SECRET, "main"), want, "{h:?} {}", String::from_utf8_lossy(body));
        }
        // Another configured branch turns the push to main into one to ignore.
        let h = headers(&[("x-gitea-signature", PUSH_MAIN_SIG)]);
        assert_eq!(judge(&h, PUSH_MAIN, GITHUB_SECRET, "release/2026"), Outcome::OtherRef);
    }

    #[test]
    fn path_method_size_and_signature_are_checked_before_the_body() {
        let signed = headers(&[("x-gitea-signature", PUSH_MAIN_SIG)]);
        let big = headers(&[("x-gitea-signature", PUSH_MAIN_SIG), ("content-length", "1048577")]);
        let limit = headers(&[("x-gitea-signature", PUSH_MAIN_SIG), ("content-length", "1048576")]);
        let cases = [
            (Method::POST, PATH, &signed, None),
            (Method::POST, PATH, &limit, None),
            (Method::POST, "/hooks/git/", &signed, Some(Outcome::NotFound)),
            (Method::POST, "/", &signed, Some(Outcome::NotFound)),
            (Method::GET, "/metrics", &signed, Some(Outcome::NotFound)),
            (Method::GET, PATH, &signed, Some(Outcome::WrongMethod)),
            (Method::PUT, PATH, &signed, Some(Outcome::WrongMethod)),
            (Method::POST, PATH, &big, Some(Outcome::TooLarge)),
            (Method::POST, PATH, &HeaderMap::new(), Some(Outcome::Unsigned)),
        ];
        for (method, path, h, want) in cases {
            assert_eq!(precheck(&method, path, h), want, "{method} {path} {h:?}");
        }
    }

    /// The server on 127.0.0.1:0 with `limits`, a config whose secret is [`GITHUB_SECRET`], and a count of triggers.
    async fn server(
        dir: &std::path::Path,
        limits: Limits,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, tokio::sync::watch::Sender<bool>) {
        use std::os::unix::fs::PermissionsExt;
        let secret = dir.join("webhook.secret");
        std::fs::write(&secret, GITHUB_SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [stacks]\nrepo = \"r\"\ncheckout_dir = \"co\"\n[stacks.webhook]\nlisten = \"127.0.0.1:0\"\n\
             secret_file = {:?}\n[hub]\nstack = \"proxy\"\nnetwork = \"hub\"\ndomain = \"lab.test\"\naddress = \"10.0.0.20\"\n",
            secret.display().to_string()
        );
        let cfg = crate::config::Config::parse(&dir.join("services-agent.toml"), &text).unwrap();
        let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = fired.clone();
        let hook = Webhook {
            cfg: Arc::new(arc_swap::ArcSwap::from_pointee(cfg)),
            trigger: Box::new(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
            metrics: WebhookMetrics::default(),
            limits,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = Shutdown::new();
        tokio::spawn(serve(listener, Arc::new(hook), shutdown));
        (addr, fired, stop)
    }

    /// Writes `head` and `body` (then keeps the connection open), returning the answer's status line, or "" when
    /// the server closed without one.
    async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> (String, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let t = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).to_string();
        (text.lines().next().unwrap_or("").to_string(), t.elapsed())
    }

    fn post(len: usize, sig: &str) -> String {
        format!("POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nX-Gitea-Signature: {sig}\r\n\r\n")
    }

    /// The bounds on the wire: a body slower than `limits.body` gets 408, a connection sending no headers is closed
    /// after `limits.header` without an answer, and beyond `limits.connections` a request waits for a free slot.
    #[tokio::test]
    async fn the_server_answers_signed_pushes_and_bounds_time_and_connections() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            connections: 1,
            header: Duration::from_millis(300),
            body: Duration::from_millis(300),
            connection: Duration::from_secs(5),
        };
        let (addr, fired, _stop) = server(dir.path(), limits).await;
        let (status, _) = send(addr, &post(PUSH_MAIN.len(), PUSH_MAIN_SIG), PUSH_MAIN).await;
        assert_eq!((status.as_str(), fired.load(std::sync::atomic::Ordering::SeqCst)), ("HTTP/1.1 202 Accepted", 1));
        let (status, _) = send(addr, &post(PUSH_MAIN.len(), &"0".repeat(64)), PUSH_MAIN).await;
        assert_eq!((status.as_str(), fired.load(std::sync::atomic::Ordering::SeqCst)), ("HTTP/1.1 403 Forbidden", 1));

        // Half the body, then silence.
        let (status, took) = send(addr, &post(PUSH_MAIN.len(), PUSH_MAIN_SIG), &PUSH_MAIN[..5]).await;
        assert_eq!(status, "HTTP/1.1 408 Request Timeout");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");

        // Half the headers, then silence: closed without an answer.
        let (status, took) = send(addr, "POST /hooks/git HTTP/1.1\r\nHost: x\r\n", b"").await;
        assert_eq!(status, "");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");

        // The one slot held by a silent connection: the next request is answered only once it is closed.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, took) = send(addr, &post(PUSH_MAIN.len(), PUSH_MAIN_SIG), PUSH_MAIN).await;
        assert_eq!(status, "HTTP/1.1 202 Accepted");
        assert!(took >= Duration::from_millis(200), "answered in {took:?} while the only slot was taken");
        drop(idle);
    }

    #[test]
    fn each_outcome_has_its_status_and_label() {
        let got: Vec<(u16, &str)> = Outcome::ALL.iter().map(|o| (o.status().as_u16(), o.label())).collect();
        assert_eq!(
            got,
            [
                (202, "accepted"),
                (200, "other_ref"),
                (404, "not_found"),
                (405, "wrong_method"),
                (413, "too_large"),
                (401, "unsigned"),
                (403, "bad_signature"),
                (408, "timeout"),
                (400, "bad_request"),
                (503, "unavailable"),
            ]
        );
    }
}
