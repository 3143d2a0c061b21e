//! TSIG (RFC 8945): the shared-keys file named by `[dns] tsig_keys`, and signing and verifying of single messages
//! and multi-message streams (§5.3.1 chaining). Knows the keys file and the TSIG wire rules (byte level, HMAC by
//! hickory-proto's ring backend); must not know zones, transfers, sockets or the config file around it.
//! A secret never appears in an error, a log line or `Debug` output.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use agent_core::config::ConfigError;
use base64::Engine as _;
use hickory_proto::rr::rdata::tsig::{signed_bitmessage_to_buf, TsigAlgorithm, TsigError};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinEncodable;
use serde::Deserialize;

/// Seconds of clock difference accepted between signer and verifier (the usual 300 of BIND and Knot).
pub(crate) const FUDGE: u16 = 300;
/// Keys one file may hold.
const MAX_KEYS: usize = 256;
/// Unsigned messages a stream may carry between two signed ones (RFC 8945 §5.3.1: at most 99).
const MAX_UNSIGNED: usize = 99;
/// TSIG RR type code.
const TSIG_TYPE: u16 = 250;
/// CLASS ANY.
const CLASS_ANY: u16 = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeysFile {
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    algorithm: String,
    secret: String,
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKey").field("name", &self.name).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// One shared key: its name (lowercase, absolute), algorithm and secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TsigKey {
    name: Name,
    algorithm: TsigAlgorithm,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey({} {})", self.name, self.algorithm)
    }
}

impl TsigKey {
    /// A key from its parts (tests and the keys file); `name` is made absolute and lowercase.
    pub(crate) fn new(name: &Name, algorithm: TsigAlgorithm, secret: &[u8]) -> Result<TsigKey, String> {
        if !matches!(algorithm, TsigAlgorithm::HmacSha256 | TsigAlgorithm::HmacSha512) {
            return Err(format!("algorithm {algorithm} is not supported (use hmac-sha256 or hmac-sha512)"));
        }
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Ok(TsigKey { name, algorithm, secret: secret.into() })
    }

    pub(crate) fn name(&self) -> &Name {
        &self.name
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        // Only supported algorithms are ever constructed (`new`), so this cannot fail.
        self.algorithm.mac_data(&self.secret, data).unwrap_or_default()
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.algorithm.verify_mac(&self.secret, data, tag).is_ok()
    }
}

/// The keys of `[dns] tsig_keys`, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TsigKeys {
    by_name: BTreeMap<Name, TsigKey>,
}

/// Parses a key name as written in the config (`xfr-key` or `xfr-key.`), lowercase and absolute.
pub(crate) fn parse_key_name(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s).map_err(|e| format!("`{s}` is not a key name: {e}"))?;
    if n.is_root() {
        return Err("a key name must not be empty".into());
    }
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

impl TsigKeys {
    /// Reads the keys file: it must be private (no group or other bits), TOML `[[key]] name, algorithm, secret`
    /// (base64). Errors name the file and the key, never the secret.
    pub(crate) fn load(path: &Path) -> Result<TsigKeys, ConfigError> {
        let bytes =
            agent_core::state::read_private_file(path).map_err(|m| ConfigError::invalid(path, "tsig keys file", m))?;
        let text =
            String::from_utf8(bytes).map_err(|_| ConfigError::invalid(path, "tsig keys file", "is not UTF-8 text"))?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<TsigKeys, ConfigError> {
        let raw: RawKeysFile = agent_core::config::parse(path, text)?;
        if raw.key.len() > MAX_KEYS {
            return Err(ConfigError::invalid(path, "key", format!("more than {MAX_KEYS} keys")));
        }
        let mut by_name = BTreeMap::new();
        for (i, k) in raw.key.into_iter().enumerate() {
            let at = |field: &str| format!("key[{i}].{field}");
            let name = parse_key_name(&k.name).map_err(|m| ConfigError::invalid(path, at("name"), m))?;
            let algorithm = match k.algorithm.to_ascii_lowercase().trim_end_matches('.') {
                "hmac-sha256" => TsigAlgorithm::HmacSha256,
                "hmac-sha512" => TsigAlgorithm::HmacSha512,
                other => {
                    return Err(ConfigError::invalid(
                        path,
                        at("algorithm"),
                        format!("key {name}: algorithm `{other}` is not supported (use hmac-sha256 or hmac-sha512)"),
                    ))
                }
            };
            let secret = base64::engine::general_purpose::STANDARD.decode(k.secret.trim()).map_err(|_| {
                ConfigError::invalid(path, at("secret"), format!("key {name}: the secret is not base64 (not shown)"))
            })?;
            if secret.len() < 16 {
                return Err(ConfigError::invalid(
                    path,
                    at("secret"),
                    format!("key {name}: the secret is shorter than 16 bytes (not shown)"),
                ));
            }
            let key =
                TsigKey::new(&name, algorithm, &secret).map_err(|m| ConfigError::invalid(path, at("algorithm"), m))?;
            if by_name.insert(name.clone(), key).is_some() {
                return Err(ConfigError::invalid(path, at("name"), format!("key {name} is listed twice")));
            }
        }
        Ok(TsigKeys { by_name })
    }

    /// The key named `name` (case-insensitive).
    pub(crate) fn get(&self, name: &Name) -> Option<&TsigKey> {
        self.by_name.get(&name.to_lowercase())
    }

    #[cfg(test)]
    pub(crate) fn from_keys(keys: impl IntoIterator<Item = TsigKey>) -> TsigKeys {
        TsigKeys { by_name: keys.into_iter().map(|k| (k.name.clone(), k)).collect() }
    }
}

/// Why a signed request or response was not accepted; the TSIG error code a server answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TsigFailure {
    /// The key is unknown, or the algorithm is not the key's (BADKEY).
    BadKey(Name),
    /// The MAC does not match (BADSIG).
    BadSig(Name),
    /// Signed outside the fudge window (BADTIME); the signer's time.
    BadTime { key: Name, signed: u64 },
    /// Not a well-formed signed message, or a stream that broke the chaining rules.
    Malformed(String),
}

impl std::fmt::Display for TsigFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TsigFailure::BadKey(k) => write!(f, "tsig BADKEY (key {k} unknown here or with another algorithm)"),
            TsigFailure::BadSig(k) => write!(f, "tsig BADSIG (key {k}: the MAC does not match)"),
            TsigFailure::BadTime { key, signed } => {
                write!(f, "tsig BADTIME (key {key}: signed at {signed}, outside {FUDGE} s of this clock)")
            }
            TsigFailure::Malformed(m) => write!(f, "tsig: {m}"),
        }
    }
}

impl TsigFailure {
    /// The RFC 8945 error code (0 for a malformed message, answered FORMERR without TSIG).
    pub(crate) fn code(&self) -> u16 {
        match self {
            TsigFailure::BadSig(_) => u16::from(TsigError::BadSig),
            TsigFailure::BadKey(_) => u16::from(TsigError::BadKey),
            TsigFailure::BadTime { .. } => u16::from(TsigError::BadTime),
            TsigFailure::Malformed(_) => 0,
        }
    }
}

/// A verified request's state for signing its response (or each message of a response stream).
#[derive(Debug, Clone)]
pub(crate) struct ResponseSigner {
    key: TsigKey,
    prior_mac: Vec<u8>,
    first: bool,
}

impl ResponseSigner {
    pub(crate) fn key(&self) -> &TsigKey {
        &self.key
    }

    /// Appends a TSIG RR to the encoded response `msg` (ARCOUNT is incremented): the first message covers the
    /// request's MAC and all TSIG variables, later ones the prior MAC and the timers (RFC 8945 §5.3.1).
    pub(crate) fn sign(&mut self, msg: &mut Vec<u8>, now: u64) {
        let mac = append_signed(&self.key, msg, &self.prior_mac, self.first, now, 0, &[]);
        self.prior_mac = mac;
        self.first = false;
    }
}

/// The error answer to a request whose TSIG failed: append with `append_error_tsig`.
#[derive(Debug, Clone)]
pub(crate) struct RequestRejection {
    pub failure: TsigFailure,
    /// The key and request MAC, when the key is known (BADTIME responses are signed).
    signed_by: Option<(TsigKey, Vec<u8>, u64)>,
}

impl RequestRejection {
    /// A request signed with a valid key other than the one required: answered like an unknown key (BADKEY).
    pub(crate) fn bad_key(key: &Name) -> RequestRejection {
        RequestRejection { failure: TsigFailure::BadKey(key.clone()), signed_by: None }
    }

    /// Appends the TSIG RR of an error response (RCODE NOTAUTH) to `msg`: unsigned with BADKEY/BADSIG; for
    /// BADTIME signed, with the request's time and this clock in Other Data (RFC 8945 §5.2.3).
    pub(crate) fn append_error_tsig(&self, msg: &mut Vec<u8>, now: u64) {
        match (&self.failure, &self.signed_by) {
            (TsigFailure::BadTime { .. }, Some((key, request_mac, signed))) => {
                let other = time48(now);
                append_signed(key, msg, request_mac, true, *signed, u16::from(TsigError::BadTime), &other);
            }
            (TsigFailure::BadKey(k) | TsigFailure::BadSig(k) | TsigFailure::BadTime { key: k, .. }, _) => {
                let alg = self.signed_by.as_ref().map(|s| s.0.algorithm.clone()).unwrap_or(TsigAlgorithm::HmacSha256);
                append_rr(msg, k, &alg, now, &[], self.failure.code(), &[]);
            }
            (TsigFailure::Malformed(_), _) => {}
        }
    }
}

/// Verifies a request's TSIG (its last additional record; the caller saw one there). `Ok` gives the signer of
/// the response.
pub(crate) fn verify_request(keys: &TsigKeys, msg: &[u8], now: u64) -> Result<ResponseSigner, Box<RequestRejection>> {
    let reject = |failure| Box::new(RequestRejection { failure, signed_by: None });
    let (tbs, rr) = signed_bitmessage_to_buf(msg, None, true)
        .map_err(|e| reject(TsigFailure::Malformed(format!("cannot read the TSIG record: {e}"))))?;
    let tsig = &rr.data;
    let key = match keys.get(&rr.name) {
        Some(k) if k.algorithm == tsig.algorithm => k.clone(),
        _ => return Err(reject(TsigFailure::BadKey(rr.name.to_lowercase()))),
    };
    if tsig.mac.len() != key.mac(b"").len() || !key.verify(&tbs, &tsig.mac) {
        return Err(reject(TsigFailure::BadSig(key.name.clone())));
    }
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Err(Box::new(RequestRejection {
            failure: TsigFailure::BadTime { key: key.name.clone(), signed: tsig.time },
            signed_by: Some((key, tsig.mac.clone(), tsig.time)),
        }));
    }
    Ok(ResponseSigner { key, prior_mac: tsig.mac.clone(), first: true })
}

/// Signs a request (NOTIFY, SOA query, AXFR/IXFR) in place; the returned verifier checks the response stream.
pub(crate) fn sign_request(key: &TsigKey, msg: &mut Vec<u8>, now: u64) -> StreamVerifier {
    let mac = append_signed(key, msg, &[], true, now, 0, &[]);
    StreamVerifier {
        key: key.clone(),
        prior_mac: mac,
        first: true,
        unsigned: Vec::new(),
        unsigned_count: 0,
        last_time: 0,
    }
}

/// Verifies the responses to a signed request, one message at a time (RFC 8945 §5.3.1: the first must be
/// signed; up to 99 unsigned messages may come between two signed ones; the last must be signed — `finish`).
#[derive(Debug)]
pub(crate) struct StreamVerifier {
    key: TsigKey,
    prior_mac: Vec<u8>,
    first: bool,
    unsigned: Vec<u8>,
    unsigned_count: usize,
    last_time: u64,
}

impl StreamVerifier {
    /// Checks one response message. `Ok(true)`: signed and valid; `Ok(false)`: unsigned, covered by the next signed
    /// one. A message carries a TSIG when `has_tsig` (the caller parsed it).
    pub(crate) fn verify(&mut self, msg: &[u8], has_tsig: bool, now: u64) -> Result<bool, TsigFailure> {
        if !has_tsig {
            if self.first {
                return Err(TsigFailure::Malformed("the first response is not signed".into()));
            }
            self.unsigned_count += 1;
            if self.unsigned_count > MAX_UNSIGNED {
                return Err(TsigFailure::Malformed(format!("more than {MAX_UNSIGNED} unsigned messages in a row")));
            }
            self.unsigned.extend_from_slice(msg);
            return Ok(false);
        }
        let (body, rr) = signed_bitmessage_to_buf(msg, None, self.first)
            .map_err(|e| TsigFailure::Malformed(format!("cannot read the TSIG record: {e}")))?;
        let tsig = &rr.data;
        if rr.name.to_lowercase() != self.key.name || tsig.algorithm != self.key.algorithm {
            return Err(TsigFailure::BadKey(rr.name.to_lowercase()));
        }
        if tsig.error.is_some() {
            return Err(match tsig.error {
                Some(TsigError::BadKey) => TsigFailure::BadKey(self.key.name.clone()),
                Some(TsigError::BadTime) => TsigFailure::BadTime { key: self.key.name.clone(), signed: tsig.time },
                _ => TsigFailure::BadSig(self.key.name.clone()),
            });
        }
        let mut tbs = Vec::with_capacity(2 + self.prior_mac.len() + self.unsigned.len() + body.len());
        push_mac(&mut tbs, &self.prior_mac);
        tbs.extend_from_slice(&self.unsigned);
        tbs.extend_from_slice(&body);
        if !self.key.verify(&tbs, &tsig.mac) {
            return Err(TsigFailure::BadSig(self.key.name.clone()));
        }
        if now.abs_diff(tsig.time) > u64::from(tsig.fudge) || tsig.time < self.last_time {
            return Err(TsigFailure::BadTime { key: self.key.name.clone(), signed: tsig.time });
        }
        self.prior_mac = tsig.mac.clone();
        self.last_time = tsig.time;
        self.first = false;
        self.unsigned.clear();
        self.unsigned_count = 0;
        Ok(true)
    }

    /// Called after the last message: the stream must end on a signed message.
    #[allow(dead_code)] // the transfer client (secondary side) calls it; tested here
    pub(crate) fn finish(&self) -> Result<(), TsigFailure> {
        if self.first || self.unsigned_count > 0 {
            return Err(TsigFailure::Malformed("the last response message is not signed".into()));
        }
        Ok(())
    }
}

fn push_mac(buf: &mut Vec<u8>, mac: &[u8]) {
    if !mac.is_empty() {
        buf.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        buf.extend_from_slice(mac);
    }
}

fn time48(t: u64) -> [u8; 6] {
    let b = t.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn name_wire(n: &Name) -> Vec<u8> {
    let mut n = n.to_lowercase();
    n.set_fqdn(true);
    n.to_bytes().unwrap_or_else(|_| vec![0])
}

/// Computes the MAC of `msg` (with the prior MAC, if any, first; full TSIG variables when `full`, else the timers)
/// and appends the TSIG RR. Returns the MAC.
fn append_signed(
    key: &TsigKey,
    msg: &mut Vec<u8>,
    prior_mac: &[u8],
    full: bool,
    time: u64,
    error: u16,
    other: &[u8],
) -> Vec<u8> {
    let mut tbs = Vec::with_capacity(msg.len() + prior_mac.len() + 128);
    push_mac(&mut tbs, prior_mac);
    tbs.extend_from_slice(msg);
    if full {
        tbs.extend_from_slice(&name_wire(&key.name));
        tbs.extend_from_slice(&CLASS_ANY.to_be_bytes());
        tbs.extend_from_slice(&0u32.to_be_bytes());
        tbs.extend_from_slice(&name_wire(&key.algorithm.to_name()));
        tbs.extend_from_slice(&time48(time));
        tbs.extend_from_slice(&FUDGE.to_be_bytes());
        tbs.extend_from_slice(&error.to_be_bytes());
        tbs.extend_from_slice(&(other.len() as u16).to_be_bytes());
        tbs.extend_from_slice(other);
    } else {
        tbs.extend_from_slice(&time48(time));
        tbs.extend_from_slice(&FUDGE.to_be_bytes());
    }
    let mac = key.mac(&tbs);
    append_rr(msg, &key.name, &key.algorithm, time, &mac, error, other);
    mac
}

/// Appends a TSIG RR to an encoded message and increments ARCOUNT. The original ID is the message's ID.
fn append_rr(msg: &mut Vec<u8>, key: &Name, alg: &TsigAlgorithm, time: u64, mac: &[u8], error: u16, other: &[u8]) {
    if msg.len() < 12 {
        return;
    }
    let id = [msg[0], msg[1]];
    let ar = u16::from_be_bytes([msg[10], msg[11]]).saturating_add(1);
    msg[10..12].copy_from_slice(&ar.to_be_bytes());
    let mut rdata = name_wire(&alg.to_name());
    rdata.extend_from_slice(&time48(time));
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(mac);
    rdata.extend_from_slice(&id);
    rdata.extend_from_slice(&error.to_be_bytes());
    rdata.extend_from_slice(&(other.len() as u16).to_be_bytes());
    rdata.extend_from_slice(other);
    msg.extend_from_slice(&name_wire(key));
    msg.extend_from_slice(&TSIG_TYPE.to_be_bytes());
    msg.extend_from_slice(&CLASS_ANY.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    msg.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    msg.extend_from_slice(&rdata);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{RecordType, TSigner};

    const NOW: u64 = 1_790_000_000;

    fn key(name: &str, secret: &[u8]) -> TsigKey {
        TsigKey::new(&parse_key_name(name).unwrap(), TsigAlgorithm::HmacSha256, secret).unwrap()
    }

    fn axfr_query() -> Message {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.add_query(Query::query(Name::from_ascii("lab.home.arpa.").unwrap(), RecordType::AXFR));
        m
    }

    fn hickory_signer(k: &TsigKey) -> TSigner {
        TSigner::new(k.secret.to_vec(), k.algorithm.clone(), k.name.clone(), FUDGE).unwrap()
    }

    /// A request signed by hickory's own signer verifies here, and a three-message response stream signed here
    /// (first with the full variables, then chained timers) verifies with hickory's chained verifier.
    #[test]
    fn interoperates_with_hickory_both_ways() {
        let k = key("xfr-key", b"0123456789abcdef0123456789abcdef");
        let keys = TsigKeys::from_keys([k.clone()]);
        let mut q = axfr_query();
        let mut hv = q.finalize(&hickory_signer(&k), NOW).unwrap().unwrap();
        let bytes = q.to_vec().unwrap();
        let mut signer = verify_request(&keys, &bytes, NOW + 10).unwrap();
        for i in 0..3u16 {
            let mut r = Message::response(4242, OpCode::Query);
            r.metadata.message_type = MessageType::Response;
            r.add_query(Query::query(Name::from_ascii(format!("n{i}.lab.home.arpa.")).unwrap(), RecordType::A));
            let mut out = r.to_vec().unwrap();
            signer.sign(&mut out, NOW + 11 + u64::from(i));
            hv.verify(&out).unwrap_or_else(|e| panic!("message {i}: {e}"));
        }
        // and the other way: a request signed here verifies with hickory's verifier
        let mut q = axfr_query().to_vec().unwrap();
        let _v = sign_request(&k, &mut q, NOW);
        hickory_signer(&k).verify_message_byte(&q, None, true).unwrap();
    }

    /// A stream signed here verifies with the stream verifier, including unsigned messages in between; tampering,
    /// a wrong key, a stale clock and an unsigned last message are refused.
    #[test]
    fn streams_chain_and_failures_are_named() {
        let k = key("xfr-key", b"0123456789abcdef0123456789abcdef");
        let keys = TsigKeys::from_keys([k.clone()]);
        let mut q = axfr_query().to_vec().unwrap();
        let mut client = sign_request(&k, &mut q, NOW);
        let mut server = verify_request(&keys, &q, NOW).unwrap();
        let resp = |i: u16| {
            let mut r = Message::response(4242, OpCode::Query);
            r.add_query(Query::query(Name::from_ascii(format!("m{i}.lab.")).unwrap(), RecordType::A));
            r.to_vec().unwrap()
        };
        let mut m0 = resp(0);
        server.sign(&mut m0, NOW);
        let m1 = resp(1); // unsigned: the next MAC covers it
        let mut m2 = resp(2);
        let mut tbs = Vec::new();
        push_mac(&mut tbs, &server.prior_mac);
        tbs.extend_from_slice(&m1);
        tbs.extend_from_slice(&m2);
        tbs.extend_from_slice(&time48(NOW));
        tbs.extend_from_slice(&FUDGE.to_be_bytes());
        let mac = k.mac(&tbs);
        append_rr(&mut m2, &k.name, &k.algorithm, NOW, &mac, 0, &[]);
        assert!(client.verify(&m0, true, NOW).unwrap());
        assert!(!client.verify(&m1, false, NOW).unwrap());
        assert!(client.finish().is_err(), "a stream must not end on an unsigned message");
        assert!(client.verify(&m2, true, NOW).unwrap());
        client.finish().unwrap();
        // replaying m2 after itself breaks the chain
        assert_eq!(client.verify(&m2, true, NOW), Err(TsigFailure::BadSig(k.name.clone())));

        // a clean stream verifies to the end
        let mut q = axfr_query().to_vec().unwrap();
        let mut client = sign_request(&k, &mut q, NOW);
        let mut server = verify_request(&keys, &q, NOW).unwrap();
        for i in 0..3 {
            let mut out = Message::response(4242, OpCode::Query).to_vec().unwrap();
            server.sign(&mut out, NOW + i);
            assert!(client.verify(&out, true, NOW).unwrap());
        }
        client.finish().unwrap();

        // request failures: unknown key, other secret, tampered bytes, stale clock
        let other = key("xfr-key", b"another secret, not the real one");
        let stranger = key("nobody", b"0123456789abcdef0123456789abcdef");
        let cases: Vec<(TsigKey, u64, bool, TsigFailure)> = vec![
            (stranger.clone(), NOW, false, TsigFailure::BadKey(stranger.name.clone())),
            (other, NOW, false, TsigFailure::BadSig(k.name.clone())),
            (k.clone(), NOW, true, TsigFailure::BadSig(k.name.clone())),
            (k.clone(), NOW - 301, false, TsigFailure::BadTime { key: k.name.clone(), signed: NOW - 301 }),
        ];
        for (signing, at, tamper, want) in cases {
            let mut q = axfr_query().to_vec().unwrap();
            let _ = sign_request(&signing, &mut q, at);
            if tamper {
                q[13] ^= 1; // a byte of the question name
            }
            let e = verify_request(&keys, &q, NOW).unwrap_err();
            assert_eq!(e.failure, want);
            let mut resp = Message::response(4242, OpCode::Query).to_vec().unwrap();
            e.append_error_tsig(&mut resp, NOW);
            let parsed = Message::from_vec(&resp).unwrap();
            let sig = parsed.signature().expect("error responses carry a TSIG");
            assert_eq!(sig.data.error.map(u16::from), Some(want.code()), "{want}");
            assert_eq!(sig.data.mac.is_empty(), !matches!(want, TsigFailure::BadTime { .. }), "{want}");
        }
    }

    #[test]
    fn keys_file_is_private_and_errors_name_key_not_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tsig.toml");
        let good = "[[key]]\nname = \"xfr-key\"\nalgorithm = \"hmac-sha256\"\nsecret = \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\"\n";
        agent_core::state::write_atomic(&p, good.as_bytes(), 0o644).unwrap();
        let e = TsigKeys::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("tsig.toml"), "{e}");
        agent_core::state::write_atomic(&p, good.as_bytes(), 0o600).unwrap();
        let keys = TsigKeys::load(&p).unwrap();
        let k = keys.get(&Name::from_ascii("XFR-KEY.").unwrap()).expect("names are case-insensitive");
        assert_eq!(format!("{k:?}"), "TsigKey(xfr-key. hmac-sha256)");
        let cases = [
            (
                "name = \"a\"\nalgorithm = \"hmac-md5\"\nsecret = \"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\"",
                "key `key[0].algorithm`: key a.: algorithm `hmac-md5`",
            ),
            (
                "name = \"a\"\nalgorithm = \"hmac-sha256\"\nsecret = \"!!SECRET!!\"",
                "key `key[0].secret`: key a.: the secret is not base64",
            ),
            (
                "name = \"a\"\nalgorithm = \"hmac-sha256\"\nsecret = \"c2hvcnQ=\"",
                "key `key[0].secret`: key a.: the secret is shorter",
            ),
            (
                "name = \"a\"\nalgorithm = \"hmac-sha256\"\nsecret = \"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\"\ncolour = 1",
                "unknown field `colour`",
            ),
        ];
        for (body, want) in cases {
            agent_core::state::write_atomic(&p, format!("[[key]]\n{body}\n").as_bytes(), 0o600).unwrap();
            let e = TsigKeys::load(&p).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("SECRET") && !e.contains("c2"), "want {want:?} in {e:?}");
        }
        let twice = format!("{good}{good}");
        agent_core::state::write_atomic(&p, twice.as_bytes(), 0o600).unwrap();
        assert!(TsigKeys::load(&p)
            .unwrap_err()
            .to_string()
            .contains("key `key[1].name`: key xfr-key. is listed twice"));
    }
}
