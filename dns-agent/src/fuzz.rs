//! Entry points over the agent's own parsers for fuzzing (`dns-agent/fuzz`, cargo-fuzz) and for the deterministic
//! garbage-input test that runs in CI. Each must return normally on any input: an error is fine, a panic is a bug.
//! Owns no parsing itself.

use std::path::Path;

use crate::blocklist::{self, Line};
use crate::forward::parse_upstream;
use crate::records::{Kind, LocalRecord};

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
        let _ = blocklist::parse_duration(text);
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
