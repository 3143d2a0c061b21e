//! Entry points over the agent's own parsers for fuzzing (`dns-agent/fuzz`, cargo-fuzz) and for the deterministic
//! garbage-input test that runs in CI. Each must return normally on any input: an error is fine, a panic is a bug.
//! Owns no parsing itself.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use hickory_proto::op::MessageType;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};

use crate::blocklist::{self, Line};
use crate::forward::parse_upstream;
use crate::records::{Kind, LocalRecord};
use crate::udp::Capture;
use crate::wire::Limit;

/// A whole config file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(Path::new("/fuzz/dns-agent.toml"), text);
    }
}

/// Blocklist lines, one per input line, and a list built from the whole input.
pub fn blocklist(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(line) = std::str::from_utf8(line) {
            if let Line::Domain(d) = blocklist::parse_line(line) {
                assert!(!d.is_empty(), "parse_line returned an empty domain for {line:?}");
            }
        }
    }
    let list = blocklist::Blocklist::from_texts([data], &[]);
    let _ = list.is_blocked("example.com");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = agent_core::duration::parse(text);
        let _ = parse_upstream(text);
    }
}

/// A record as a gRPC caller would send it: `NAME\tTYPE\tVALUE`, for every type.
pub fn record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\t');
    let (name, kind, value) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let origin = hickory_proto::rr::Name::from_ascii("lab.test.").ok();
    let _ = LocalRecord::parse(name, kind, value, Some(300), "fuzz", origin.as_ref());
    for k in ["A", "AAAA", "CNAME", "TXT", "SRV", "MX", "PTR"] {
        let _ = LocalRecord::parse(name, k, value, None, "", None);
    }
    let _ = kind.parse::<Kind>();
}

/// A datagram as the UDP loop gets it, served from a zone and a blocklist (no upstream). Whatever the loop sends
/// must be what `Handler` sends for the same request through hickory's parsing, byte for byte, the first time and
/// again from the loop's cache; a reply always carries the request's id and the response bit.
pub fn packet(data: &[u8]) {
    let target = match packet_target() {
        Ok(t) => t,
        Err(e) => panic!("cannot set up the packet target: {e}"),
    };
    let mut t = target.lock().unwrap_or_else(|e| e.into_inner());
    let src = std::net::SocketAddr::from(([127, 0, 0, 1], 5353));
    let run = |t: &mut PacketTarget| match t.worker.process(data, src) {
        crate::udp::Action::Reply(b) => Some(b.to_vec()),
        crate::udp::Action::Drop => None,
        crate::udp::Action::Forward(_) => panic!("forwarded without an upstream"),
        // Signed (no keys here): answered NOTAUTH or FORMERR on the runtime, never by the loop itself.
        crate::udp::Action::Signed(request) => {
            let handler = t.worker.handler().clone();
            let reply = t.runtime.block_on(crate::signed::answer(&handler, &request, Limit::Datagram, false));
            if let Some(r) = reply {
                assert!(r.len() >= 12 && r[..2] == data[..2] && r[2] & 0x80 != 0, "reply {r:?} to {data:?}");
            }
            None
        }
    };
    let first = run(&mut t);
    let again = run(&mut t);
    assert_eq!(first, again, "the cached answer differs from the first");
    if let Some(r) = &first {
        assert!(r.len() >= 12 && r[..2] == data[..2] && r[2] & 0x80 != 0, "reply {r:?} to {data:?}");
    }
    if let Ok(request) = Request::from_bytes(data.to_vec(), src, Protocol::Udp) {
        if request.metadata.message_type == MessageType::Query && request.signature.is_none() {
            let capture = Capture::new(&request);
            let handler = t.worker.handler().clone();
            t.runtime.block_on(handler.handle_request::<_, TokioTime>(&request, capture.clone()));
            let want = capture.take();
            assert_eq!(first, want, "the loop and the handler disagree on {data:?}");
        }
    }
}

struct PacketTarget {
    runtime: tokio::runtime::Runtime,
    worker: crate::udp::Worker,
}

/// The loop under test, built once: a zone with a few types, a CNAME chain, a reverse zone and a blocklist.
fn packet_target() -> Result<&'static Mutex<PacketTarget>, &'static String> {
    static TARGET: OnceLock<Result<Mutex<PacketTarget>, String>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let dir = std::env::temp_dir().join(format!("dns-agent-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|x| e(&x))?;
            std::fs::write(dir.join("list.txt"), "ads.example.com\n||track.example.net^\n").map_err(|x| e(&x))?;
            let text = format!(
                "state_dir = {:?}\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
                 [[zones]]\nname = \"lab.test\"\nrecords = [\
                 {{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }},\
                 {{ name = \"nas\", type = \"AAAA\", value = \"fd00::10\" }},\
                 {{ name = \"www\", type = \"CNAME\", value = \"nas\" }},\
                 {{ name = \"@\", type = \"MX\", value = \"10 nas\" }},\
                 {{ name = \"t\", type = \"TXT\", value = \"{}\" }}]\n\
                 [[zones]]\nname = \"10.in-addr.arpa\"\n\
                 [blocklist]\nsources = [\"list.txt\"]\n",
                dir.join("state").display().to_string(),
                "x".repeat(250)
            );
            let path = dir.join("dns.toml");
            std::fs::write(&path, text).map_err(|x| e(&x))?;
            let cfg = crate::config::Config::load(&path).map_err(|x| e(&x))?;
            let metrics = crate::metrics::DnsMetrics::new(&agent_core::telemetry::Metrics::new());
            let dns = crate::service::Dns::new(cfg, metrics).map_err(|x| e(&x))?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|x| e(&x))?;
            runtime.block_on(dns.refresh_blocklist());
            // Everything is in memory now (nothing here writes): leave no files behind.
            let _ = std::fs::remove_dir_all(&dir);
            let worker = crate::udp::Worker::new(crate::handler::Handler::new(dns));
            Ok(Mutex::new(PacketTarget { runtime, worker }))
        })
        .as_ref()
}
