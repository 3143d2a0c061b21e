//! Job notifications of every agent (backup, restore, check, drill…): healthchecks.io-style pings, ntfy messages and
//! a JSON webhook, posted with ureq on the blocking pool; and how targets are written in a config (`{ kind, url }`,
//! the URL checked once for all agents). Knows HTTP and those three conventions (and their names); must not know any
//! agent's objects (an event names its layer and its object's name: a service, a VM), how a job runs or what its
//! message says. Sending never fails the caller: problems are logged with the URL's userinfo and query redacted, and
//! no URL is ever printed whole (`Debug` of a target redacts it too).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::config::ConfigError;

/// Each request's deadline, connection included: the longest a notification can hold up a job.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest message body sent to healthchecks (bytes, cut at a character boundary).
pub const MAX_HEALTHCHECKS_BODY: usize = 10_000;
/// ntfy turns longer messages into attachments (or refuses them): cut before that.
pub const MAX_NTFY_BODY: usize = 4_000;
/// The one job kind `healthchecks` targets hear about: a check is the backup's heartbeat, and a passing drill or
/// check must not stand in for a missed backup.
pub const HEARTBEAT_JOB: &str = "backup";

/// A target's convention, as the config names it: `healthchecks`, `ntfy` or `webhook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    Healthchecks,
    Ntfy,
    Webhook,
}

/// A validated target (see [`targets`]).
#[derive(Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub kind: NotifyKind,
    /// May carry a token (path, userinfo or query): never logged whole.
    pub url: String,
}

impl fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyTarget").field("kind", &self.kind).field("url", &redact_url(&self.url)).finish()
    }
}

/// One target as a config writes it, in a `[[notify]]` table or an object's `notify = [{ kind, url }]`.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub kind: NotifyKind,
    pub url: String,
}

impl fmt::Debug for RawTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTarget").field("kind", &self.kind).field("url", &redact_url(&self.url)).finish()
    }
}

/// Validates the targets written at config key `key` of the file `path`: each URL is `http://` or `https://` with a
/// host and no whitespace. Errors name the key (`notify[1].url`), never the URL (it may hold a token).
pub fn targets(path: &Path, key: &str, raw: &[RawTarget]) -> Result<Vec<NotifyTarget>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        check_url(&t.url).map_err(|m| ConfigError::invalid(path, format!("{key}[{i}].url"), m))?;
        out.push(NotifyTarget { kind: t.kind, url: t.url.clone() });
    }
    Ok(out)
}

/// Why `url` cannot be a target's (the message does not repeat it).
fn check_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else { return Err("must be an http(s) URL".into()) };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("must be an http(s) URL with a host".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".into());
    }
    Ok(())
}

/// Which agent's objects an event is about: the one [`Layer`] of the lab (`freshness` owns it). Its name is the
/// webhook's `layer` (`services`, `host`); its object is what one of them is called (`service`, `vm`): ntfy titles
/// say it, and the webhook also gives the object's name under that key.
pub use crate::freshness::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Start,
    Success,
    Fail,
    /// The job was cancelled (`Cancel`): told as a failure is.
    Cancel,
}

impl Phase {
    /// `start`, `success`, `fail` or `cancelled` (the webhook's `phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Success => "success",
            Phase::Fail => "fail",
            Phase::Cancel => "cancelled",
        }
    }

    /// How a job that ended in an error is told: `Cancel` when it was cancelled (`agent_core::runner`'s scope).
    pub fn of_error() -> Phase {
        if crate::runner::is_cancelled() {
            Phase::Cancel
        } else {
            Phase::Fail
        }
    }
}

/// What happened; the webhook receives it as JSON (with the phase), see [`webhook_body`].
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub layer: Layer,
    /// The object's name: a service, a VM.
    pub name: String,
    /// The run's kind as the agent's history writes it: `backup`, `restore`, `check`, `verify-data`, `drill`.
    pub job: String,
    pub message: String,
    pub duration_seconds: f64,
    pub downtime_seconds: f64,
    pub archive: String,
    /// The host the agent runs on ([`this_host`]).
    pub host: String,
}

impl Event {
    /// An event of `job` on object `name`, with nothing measured or said yet.
    pub fn new(layer: Layer, name: &str, job: &str, host: &str) -> Event {
        Event {
            layer,
            name: name.to_string(),
            job: job.to_string(),
            message: String::new(),
            duration_seconds: 0.0,
            downtime_seconds: 0.0,
            archive: String::new(),
            host: host.to_string(),
        }
    }
}

/// The name of this host for events: the kernel's host name (Linux), else `/etc/hostname`, else `unknown`.
pub fn this_host() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Sends `event` to every target at once and waits for all (each bounded by [`REQUEST_TIMEOUT`]). Never fails:
/// errors are logged. ntfy targets are not told about `Start`; healthchecks targets only about [`HEARTBEAT_JOB`].
pub async fn send(targets: &[NotifyTarget], phase: Phase, event: &Event) {
    let requests: Vec<Request> = targets.iter().filter_map(|t| request_for(t, phase, event)).collect();
    if requests.is_empty() {
        return;
    }
    let agent = http_agent(event.layer);
    let tasks = requests.into_iter().map(|request| {
        let agent = agent.clone();
        let shown = redact_url(&request.url);
        async move {
            match tokio::task::spawn_blocking(move || deliver(&agent, &request)).await {
                Ok(Ok(())) => tracing::debug!(url = %shown, "notification sent"),
                Ok(Err(error)) => tracing::warn!(url = %shown, %error, "notification failed"),
                Err(e) => tracing::warn!(url = %shown, error = %e, "notification task failed"),
            }
        }
    });
    futures::future::join_all(tasks).await;
}

/// One POST.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// What `target` is sent for `phase`; `None` when it is not told.
fn request_for(target: &NotifyTarget, phase: Phase, event: &Event) -> Option<Request> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match target.kind {
        NotifyKind::Healthchecks => {
            if event.job != HEARTBEAT_JOB {
                return None;
            }
            let url = match phase {
                Phase::Start => append_path(&target.url, "start"),
                Phase::Success => target.url.clone(),
                Phase::Fail | Phase::Cancel => append_path(&target.url, "fail"),
            };
            let body = truncate(&event.message, MAX_HEALTHCHECKS_BODY).as_bytes().to_vec();
            Some(Request { url, headers: vec![("Content-Type", TEXT.into())], body })
        }
        NotifyKind::Ntfy => {
            let (word, tag) = match phase {
                Phase::Start => return None,
                Phase::Success => ("ok", "white_check_mark"),
                Phase::Fail => ("failed", "rotating_light"),
                Phase::Cancel => ("cancelled", "stop_sign"),
            };
            let title = format!("strata {} {} {} {word}", event.job, event.layer.object(), event.name);
            let mut headers =
                vec![("Content-Type", TEXT.into()), ("Title", header_value(&title)), ("Tags", tag.into())];
            if matches!(phase, Phase::Fail | Phase::Cancel) {
                headers.push(("Priority", "high".into()));
            }
            let message = if event.message.trim().is_empty() { title.as_str() } else { event.message.as_str() };
            Some(Request {
                url: target.url.clone(),
                headers,
                body: truncate(message, MAX_NTFY_BODY).as_bytes().to_vec(),
            })
        }
        NotifyKind::Webhook => Some(Request {
            url: target.url.clone(),
            headers: vec![("Content-Type", "application/json".into())],
            body: webhook_body(phase, event),
        }),
    }
}

/// The webhook's JSON object: `layer`, `name` and the same name under the layer's object key (`service`, `vm`),
/// `job`, `phase`, `message`, `duration_seconds`, `downtime_seconds` (a non-finite one is `null`), `archive`, `host`.
fn webhook_body(phase: Phase, event: &Event) -> Vec<u8> {
    use serde_json::Value;
    let mut m = serde_json::Map::new();
    m.insert("layer".into(), event.layer.as_str().into());
    m.insert("name".into(), event.name.clone().into());
    m.insert(event.layer.object().into(), event.name.clone().into());
    m.insert("job".into(), event.job.clone().into());
    m.insert("phase".into(), phase.as_str().into());
    m.insert("message".into(), event.message.clone().into());
    m.insert("duration_seconds".into(), Value::from(event.duration_seconds));
    m.insert("downtime_seconds".into(), Value::from(event.downtime_seconds));
    m.insert("archive".into(), event.archive.clone().into());
    m.insert("host".into(), event.host.clone().into());
    // Serializing strings and numbers cannot fail; stay safe anyway.
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// Posts one request; the error text has the URL's secrets redacted.
fn deliver(agent: &ureq::Agent, request: &Request) -> Result<(), String> {
    let mut post = agent.post(&request.url);
    for (name, value) in &request.headers {
        post = post.header(*name, value);
    }
    match post.send(&request.body[..]) {
        Ok(_) => Ok(()),
        Err(e) => Err(redact_text(&e.to_string(), &request.url)),
    }
}

/// An HTTP client bounded by [`REQUEST_TIMEOUT`], naming itself `strata-LAYER-agent/VERSION`.
fn http_agent(layer: Layer) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .user_agent(format!("strata-{}-agent/{}", layer.as_str(), env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

/// `https://hc/ping/ID` + `start` → `https://hc/ping/ID/start`, keeping a query string after the path.
fn append_path(url: &str, segment: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = format!("{}/{segment}", base.trim_end_matches('/'));
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Printable ASCII only (HTTP header values); anything else becomes `?`.
fn header_value(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect()
}

/// The URL with its userinfo and its query replaced by `***` (both may carry tokens).
fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, true),
        None => (url, false),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if query {
        out.push_str("?***");
    }
    out
}

/// `text` with `url` (or its secret parts, should they appear alone) redacted.
fn redact_text(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some((_, query)) = url.split_once('?') {
        if !query.is_empty() {
            out = out.replace(query, "***");
        }
    }
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            // The password alone first: it may show up without the user name.
            let password = userinfo.split_once(':').map_or("", |(_, p)| p);
            for secret in [userinfo, password] {
                if !secret.is_empty() {
                    out = out.replace(secret, "***");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    /// What the test server received.
    #[derive(Debug)]
    struct Received {
        method: String,
        path: String,
        /// Lower-cased names.
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1:0: answers 200 (500 for paths starting `/status500`) and reports each
    /// request before answering it, so a finished `send` means every request is in the channel.
    fn server() -> (String, mpsc::Receiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || serve_one(stream, &tx));
            }
        });
        (base, rx)
    }

    fn serve_one(mut stream: TcpStream, tx: &mpsc::Sender<Received>) {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let status = if path.starts_with("/status500") { "500 Internal Server Error" } else { "200 OK" };
        tx.send(Received { method, path, headers, body }).unwrap();
        let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }

    const SERVICES: Layer = Layer::Services;
    const HOST: Layer = Layer::Host;

    fn event() -> Event {
        Event {
            message: "archive photos-2026 created".into(),
            duration_seconds: 12.5,
            downtime_seconds: 1.25,
            archive: "photos-2026".into(),
            ..Event::new(SERVICES, "photos", "backup", "hub")
        }
    }

    fn target(kind: NotifyKind, url: String) -> NotifyTarget {
        NotifyTarget { kind, url }
    }

    fn drain(rx: &mpsc::Receiver<Received>) -> Vec<Received> {
        rx.try_iter().collect()
    }

    #[test]
    fn kinds_parse() {
        use serde::de::{value::StrDeserializer, Deserialize};
        let parse = |s: &str| NotifyKind::deserialize(StrDeserializer::<serde::de::value::Error>::new(s)).ok();
        assert_eq!(parse("healthchecks"), Some(NotifyKind::Healthchecks));
        assert_eq!(parse("ntfy"), Some(NotifyKind::Ntfy));
        assert_eq!(parse("webhook"), Some(NotifyKind::Webhook));
        assert_eq!(parse("Ntfy"), None);
        assert_eq!(parse(""), None);
    }

    #[tokio::test]
    async fn each_kind_sends_what_its_service_expects() {
        let (base, rx) = server();
        let ev = event();
        let text = "text/plain; charset=utf-8";

        // (kind, url path, phase, expected method+path, expected headers, expected body; None = nothing sent)
        type Case = (NotifyKind, &'static str, Phase, Option<(&'static str, Vec<(&'static str, &'static str)>)>);
        let cases: Vec<Case> = vec![
            (
                NotifyKind::Healthchecks,
                "/ping/abc",
                Phase::Start,
                Some(("/ping/abc/start", vec![("content-type", text)])),
            ),
            (
                NotifyKind::Healthchecks,
                "/ping/abc/",
                Phase::Success,
                Some(("/ping/abc/", vec![("content-type", text)])),
            ),
            (
                NotifyKind::Healthchecks,
                "/ping/abc",
                Phase::Fail,
                Some(("/ping/abc/fail", vec![("content-type", text)])),
            ),
            (NotifyKind::Healthchecks, "/p/k/x?rid=1", Phase::Fail, Some(("/p/k/x/fail?rid=1", vec![]))),
            (NotifyKind::Ntfy, "/lab", Phase::Start, None),
            (
                NotifyKind::Ntfy,
                "/lab",
                Phase::Success,
                Some(("/lab", vec![("title", "strata backup service photos ok"), ("tags", "white_check_mark")])),
            ),
            (
                NotifyKind::Ntfy,
                "/lab",
                Phase::Fail,
                Some((
                    "/lab",
                    vec![
                        ("title", "strata backup service photos failed"),
                        ("tags", "rotating_light"),
                        ("priority", "high"),
                    ],
                )),
            ),
            (NotifyKind::Webhook, "/hook", Phase::Start, Some(("/hook", vec![("content-type", "application/json")]))),
            (NotifyKind::Webhook, "/hook", Phase::Success, Some(("/hook", vec![]))),
            (NotifyKind::Webhook, "/hook", Phase::Fail, Some(("/hook", vec![]))),
            // A cancelled job is told as a failure is, under its own name where the target has one.
            (NotifyKind::Healthchecks, "/ping/abc", Phase::Cancel, Some(("/ping/abc/fail", vec![]))),
            (
                NotifyKind::Ntfy,
                "/lab",
                Phase::Cancel,
                Some((
                    "/lab",
                    vec![
                        ("title", "strata backup service photos cancelled"),
                        ("tags", "stop_sign"),
                        ("priority", "high"),
                    ],
                )),
            ),
            (NotifyKind::Webhook, "/hook", Phase::Cancel, Some(("/hook", vec![]))),
        ];
        for (kind, path, phase, expected) in cases {
            let case = format!("{kind:?} {path} {phase:?}");
            send(&[target(kind, format!("{base}{path}"))], phase, &ev).await;
            let got = drain(&rx);
            let Some((want_path, want_headers)) = expected else {
                assert!(got.is_empty(), "{case}: nothing should be sent, got {got:?}");
                continue;
            };
            assert_eq!(got.len(), 1, "{case}: {got:?}");
            let r = &got[0];
            assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", want_path), "{case}");
            for (name, value) in want_headers {
                assert_eq!(r.headers.get(name).map(String::as_str), Some(value), "{case}: header {name}");
            }
            if kind == NotifyKind::Ntfy && phase == Phase::Success {
                assert!(!r.headers.contains_key("priority"), "{case}");
            }
            match kind {
                NotifyKind::Healthchecks | NotifyKind::Ntfy => assert_eq!(r.body, ev.message.as_bytes(), "{case}"),
                NotifyKind::Webhook => {
                    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    let want = serde_json::json!({
                        "layer": "services", "name": "photos", "service": "photos", "job": "backup",
                        "phase": phase.as_str(),
                        "message": "archive photos-2026 created", "duration_seconds": 12.5,
                        "downtime_seconds": 1.25, "archive": "photos-2026", "host": "hub",
                    });
                    assert_eq!(json, want, "{case}");
                }
            }
        }
    }

    #[tokio::test]
    async fn targets_are_sent_together_and_failures_only_log() {
        let (base, rx) = server();
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://user:pa55@{}/x?token=s3cret", l.local_addr().unwrap())
        };
        let targets = [
            target(NotifyKind::Healthchecks, format!("{base}/hc")),
            target(NotifyKind::Ntfy, format!("{base}/topic")),
            target(NotifyKind::Webhook, format!("{base}/hook")),
            target(NotifyKind::Webhook, closed.clone()),
            target(NotifyKind::Webhook, format!("{base}/status500")),
        ];
        let started = std::time::Instant::now();
        send(&targets, Phase::Fail, &event()).await;
        assert!(started.elapsed() < REQUEST_TIMEOUT, "unreachable targets must not hold the others up");
        let mut paths: Vec<String> = drain(&rx).into_iter().map(|r| r.path).collect();
        paths.sort();
        assert_eq!(paths, ["/hc/fail", "/hook", "/status500", "/topic"]);

        // What gets logged for the unreachable one: an error without the URL's secrets.
        let request = request_for(&targets[3], Phase::Fail, &event()).unwrap();
        let error = deliver(&http_agent(SERVICES), &request).unwrap_err();
        assert!(!error.contains("pa55") && !error.contains("s3cret"), "{error}");
        let request = request_for(&targets[4], Phase::Fail, &event()).unwrap();
        let error = deliver(&http_agent(SERVICES), &request).unwrap_err();
        assert!(error.contains("500"), "{error}");
        drain(&rx);

        // No targets, or only ntfy at Start: nothing happens.
        send(&[], Phase::Start, &event()).await;
        send(&targets[1..2], Phase::Start, &event()).await;
        assert!(drain(&rx).is_empty());
    }

    #[test]
    fn bodies_are_cut_and_headers_are_ascii() {
        let mut ev = event();
        ev.message = "€".repeat(5_000); // 15,000 bytes
        let hc = request_for(&target(NotifyKind::Healthchecks, "http://h/p".into()), Phase::Success, &ev).unwrap();
        assert_eq!(hc.body.len(), 9_999);
        assert!(std::str::from_utf8(&hc.body).is_ok());
        ev.name = "fotos-ü\n".into();
        let ntfy = request_for(&target(NotifyKind::Ntfy, "http://h/t".into()), Phase::Success, &ev).unwrap();
        assert!(ntfy.body.len() <= MAX_NTFY_BODY);
        assert!(ntfy.headers.contains(&("Title", "strata backup service fotos-?? ok".into())), "{:?}", ntfy.headers);
        ev.message = " ".into();
        let ntfy = request_for(&target(NotifyKind::Ntfy, "http://h/t".into()), Phase::Fail, &ev).unwrap();
        assert_eq!(ntfy.body, b"strata backup service fotos-\xc3\xbc\n failed");
    }

    #[test]
    fn urls_are_redacted() {
        let cases = [
            ("https://hc-ping.com/uuid", "https://hc-ping.com/uuid"),
            ("https://user:pw@ntfy.example/topic", "https://***@ntfy.example/topic"),
            ("https://ntfy.example/topic?auth=tok", "https://ntfy.example/topic?***"),
            ("http://a:b@h:8080/x?y=z", "http://***@h:8080/x?***"),
            ("http://h/a@b", "http://h/a@b"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        let text = redact_text("cannot reach http://u:pw@h/x?k=v (pw, k=v)", "http://u:pw@h/x?k=v");
        assert_eq!(text, "cannot reach http://***@h/x?*** (***, ***)");
        assert_eq!(append_path("https://hc/ping/id/", "start"), "https://hc/ping/id/start");
        assert_eq!(append_path("https://hc/ping/id?create=1", "fail"), "https://hc/ping/id/fail?create=1");
    }

    #[tokio::test]
    async fn each_layer_names_its_object_and_healthchecks_hear_only_of_backups() {
        let (base, rx) = server();
        let targets = [
            target(NotifyKind::Healthchecks, format!("{base}/hc")),
            target(NotifyKind::Ntfy, format!("{base}/topic")),
            target(NotifyKind::Webhook, format!("{base}/hook")),
        ];
        // (layer, job, phase, what is sent: (path, ntfy title or webhook JSON's object key))
        let cases: [(Layer, &str, Phase, &[&str]); 5] = [
            (HOST, "backup", Phase::Start, &["/hc/start", "/hook"]),
            (HOST, "backup", Phase::Fail, &["/hc/fail", "/hook", "/topic"]),
            (HOST, "drill", Phase::Success, &["/hook", "/topic"]),
            (SERVICES, "restore", Phase::Cancel, &["/hook", "/topic"]),
            (SERVICES, "check", Phase::Start, &["/hook"]),
        ];
        for (layer, job, phase, want) in cases {
            let case = format!("{} {job} {phase:?}", layer.as_str());
            let ev = Event { message: String::new(), ..Event::new(layer, "web", job, "hv1") };
            send(&targets, phase, &ev).await;
            let mut got = drain(&rx);
            got.sort_by(|a, b| a.path.cmp(&b.path));
            let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
            assert_eq!(paths, want, "{case}");
            for r in &got {
                let agent = r.headers.get("user-agent").cloned().unwrap_or_default();
                assert!(agent.starts_with(&format!("strata-{}-agent/", layer.as_str())), "{case}: {agent}");
                match r.path.as_str() {
                    "/topic" => {
                        let title = r.headers.get("title").cloned().unwrap_or_default();
                        assert!(title.starts_with(&format!("strata {job} {} web ", layer.object())), "{case}: {title}");
                        // No message: the title is the body.
                        assert_eq!(r.body, title.as_bytes(), "{case}");
                    }
                    "/hook" => {
                        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                        let obj = json.as_object().unwrap();
                        assert_eq!(obj["layer"], layer.as_str(), "{case}");
                        assert_eq!((&obj["name"], &obj[layer.object()]), (&"web".into(), &"web".into()), "{case}");
                        assert_eq!((&obj["job"], &obj["phase"]), (&job.into(), &phase.as_str().into()), "{case}");
                        let other = if layer == HOST { "service" } else { "vm" };
                        assert!(!obj.contains_key(other), "{case}: {json}");
                        assert_eq!(obj.len(), 10, "{case}: {json}");
                    }
                    _ => {}
                }
            }
        }
        // A duration that is not a number is `null`, not an unsendable body.
        let ev = Event { duration_seconds: f64::NAN, ..Event::new(HOST, "web", "backup", "hv1") };
        let json: serde_json::Value = serde_json::from_slice(&webhook_body(Phase::Success, &ev)).unwrap();
        assert_eq!(json["duration_seconds"], serde_json::Value::Null);
    }

    #[test]
    fn config_targets_are_checked_without_showing_their_url() {
        let raw = |url: &str| RawTarget { kind: NotifyKind::Webhook, url: url.into() };
        let path = Path::new("/etc/strata/host-agent.toml");
        let good = ["https://hc-ping.com/5f1c", "http://127.0.0.1:8080/hook?token=x", "https://u:p@ntfy.example/t"];
        for url in good {
            let t = targets(path, "notify", &[raw(url)]).unwrap();
            assert_eq!(t, [NotifyTarget { kind: NotifyKind::Webhook, url: url.into() }], "{url}");
        }
        let bad = [
            ("ftp://h/s3cret", "must be an http(s) URL"),
            ("hc-ping.com/s3cret", "must be an http(s) URL"),
            ("https://", "with a host"),
            ("https:///s3cret", "with a host"),
            ("http://u:s3cret@/x", "with a host"),
            ("https://h/s3cret token", "whitespace"),
            ("https://h/s3cret\n", "whitespace"),
        ];
        for (url, want) in bad {
            let err = targets(path, "vms[2].notify", &[raw("https://ok.example/"), raw(url)]).unwrap_err().to_string();
            assert!(err.contains("key `vms[2].notify[1].url`") && err.contains(want), "{url}: {err}");
            assert!(!err.contains("s3cret"), "{url}: {err}");
        }
        // Printed for debugging (a config dumped whole), the secrets stay out.
        let t = NotifyTarget { kind: NotifyKind::Ntfy, url: "https://u:s3cret@h/t?auth=s3cret".into() };
        let shown = format!("{t:?} {:?}", raw(&t.url));
        assert!(!shown.contains("s3cret") && shown.contains("https://***@h/t?***"), "{shown}");
    }

    #[test]
    fn errors_are_told_as_failures_unless_the_job_was_cancelled() {
        assert_eq!(Phase::of_error(), Phase::Fail);
        let token = tokio_util::sync::CancellationToken::new();
        token.cancel();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let phase = rt.block_on(crate::runner::with_cancel(token, async { Phase::of_error() }));
        assert_eq!(phase, Phase::Cancel);
        assert!(!this_host().is_empty());
    }
}
