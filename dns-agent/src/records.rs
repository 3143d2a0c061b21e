//! Local DNS records: the supported types, parsing and validation of names, values and TTLs (pure functions).
//! Knows DNS record syntax; must not know where records come from (config file, gRPC, SQLite) nor how they are served.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::rr::rdata::{self, A, AAAA, MX, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL used when a record gives none (or 0 over gRPC).
pub(crate) const DEFAULT_TTL: u32 = 300;
/// Largest TTL accepted: one week.
pub(crate) const MAX_TTL: u32 = 604_800;
/// Largest TXT value accepted, in bytes.
pub(crate) const MAX_TXT_LEN: usize = 4000;

/// The record types that can be defined locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    A,
    Aaaa,
    Cname,
    Txt,
    Srv,
    Mx,
    Ptr,
}

impl Kind {
    pub const ALL: [Kind; 7] = [Kind::A, Kind::Aaaa, Kind::Cname, Kind::Txt, Kind::Srv, Kind::Mx, Kind::Ptr];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::A => "A",
            Kind::Aaaa => "AAAA",
            Kind::Cname => "CNAME",
            Kind::Txt => "TXT",
            Kind::Srv => "SRV",
            Kind::Mx => "MX",
            Kind::Ptr => "PTR",
        }
    }

    pub fn record_type(self) -> RecordType {
        match self {
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Cname => RecordType::CNAME,
            Kind::Txt => RecordType::TXT,
            Kind::Srv => RecordType::SRV,
            Kind::Mx => RecordType::MX,
            Kind::Ptr => RecordType::PTR,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = RecordError;
    fn from_str(s: &str) -> Result<Self, RecordError> {
        Kind::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            RecordError::new(
                Field::Type,
                format!("unknown record type `{s}` (expected one of A, AAAA, CNAME, TXT, SRV, MX, PTR)"),
            )
        })
    }
}

/// Which field of a record an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Type,
    Value,
    Ttl,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Type => "type",
            Field::Value => "value",
            Field::Ttl => "ttl",
        }
    }
}

/// A record that is not valid; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", field.as_str())]
pub struct RecordError {
    pub field: Field,
    pub message: String,
}

impl RecordError {
    pub fn new(field: Field, message: impl Into<String>) -> Self {
        RecordError { field, message: message.into() }
    }
}

/// One validated local record. `name` is fully qualified and lowercase; `value` is canonical (names fully
/// qualified and lowercase, addresses in their standard form), so equal records compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecord {
    pub name: Name,
    pub kind: Kind,
    pub value: String,
    pub ttl: u32,
    /// Identity URI of the writer; empty for records from the config file.
    pub owner: String,
    pub rdata: RData,
}

impl LocalRecord {
    /// Validates a record. Relative names (no trailing dot) in `name` and `value` are taken relative to `origin`
    /// when one is given, and as fully qualified otherwise. `ttl` of `None` means the default.
    pub fn parse(
        name: &str,
        kind: &str,
        value: &str,
        ttl: Option<u32>,
        owner: &str,
        origin: Option<&Name>,
    ) -> Result<LocalRecord, RecordError> {
        let name = parse_name(name, origin).map_err(|m| RecordError::new(Field::Name, m))?;
        let kind: Kind = kind.parse()?;
        let ttl = validate_ttl(ttl)?;
        let (rdata, value) = parse_value(kind, value, origin)?;
        if kind == Kind::Cname && rdata_target(&rdata) == Some(&name) {
            return Err(RecordError::new(Field::Value, format!("CNAME {name} points to itself")));
        }
        Ok(LocalRecord { name, kind, value, ttl, owner: owner.to_string(), rdata })
    }

    /// The record as hickory serves it.
    pub fn to_record(&self) -> Record {
        Record::from_rdata(self.name.clone(), self.ttl, self.rdata.clone())
    }

    /// The key that identifies a record for upsert and delete: a CNAME is one per name, others one per value.
    pub fn same_key(&self, other: &LocalRecord) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && (self.kind == Kind::Cname || self.value.eq_ignore_ascii_case(&other.value))
    }
}

fn rdata_target(r: &RData) -> Option<&Name> {
    match r {
        RData::CNAME(c) => Some(&c.0),
        _ => None,
    }
}

/// Validates a TTL: `None` gives the default; 0 and anything above one week are refused.
pub(crate) fn validate_ttl(ttl: Option<u32>) -> Result<u32, RecordError> {
    match ttl {
        None => Ok(DEFAULT_TTL),
        Some(0) => Err(RecordError::new(Field::Ttl, "must be at least 1 second")),
        Some(t) if t > MAX_TTL => Err(RecordError::new(Field::Ttl, format!("{t} is above the maximum of {MAX_TTL}"))),
        Some(t) => Ok(t),
    }
}

/// Parses a domain name: `@` is `origin`; without a trailing dot the name is relative to `origin` (if any).
/// Labels are letters, digits, `-` and `_`, 1 to 63 characters, not starting or ending with `-`; 253 characters
/// at most. The result is fully qualified and lowercase.
pub(crate) fn parse_name(s: &str, origin: Option<&Name>) -> Result<Name, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s == "@" {
        return origin.cloned().ok_or_else(|| "`@` needs a zone".to_string());
    }
    let (body, absolute) = match s.strip_suffix('.') {
        Some(b) => (b, true),
        None => (s, false),
    };
    if body.is_empty() {
        return Err("the root name cannot hold local records".to_string());
    }
    for label in body.split('.') {
        check_label(label).map_err(|m| format!("`{s}`: {m}"))?;
    }
    let text = if absolute || origin.is_none() {
        format!("{body}.")
    } else {
        let origin = origin.map(|o| o.to_ascii()).unwrap_or_default();
        format!("{body}.{}", origin.trim_start_matches('.'))
    };
    if text.len() > 254 {
        return Err(format!("`{s}` is longer than 253 characters"));
    }
    Name::from_ascii(&text).map(|n| n.to_lowercase()).map_err(|e| format!("`{s}`: {e}"))
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".to_string());
    }
    if label.len() > 63 {
        return Err(format!("label `{label}` is longer than 63 characters"));
    }
    if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("label `{label}` has the character {c:?} (letters, digits, `-` and `_` only)"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label `{label}` starts or ends with `-`"));
    }
    Ok(())
}

/// Parses a record value of `kind`; returns the record data and the canonical text of the value.
pub(crate) fn parse_value(kind: Kind, value: &str, origin: Option<&Name>) -> Result<(RData, String), RecordError> {
    let bad = |m: String| RecordError::new(Field::Value, m);
    let trimmed = value.trim();
    if trimmed.is_empty() && kind != Kind::Txt {
        return Err(bad("must not be empty".to_string()));
    }
    let name = |s: &str| parse_name(s, origin).map_err(|m| RecordError::new(Field::Value, m));
    let number = |s: &str, what: &str| {
        s.parse::<u16>().map_err(|_| RecordError::new(Field::Value, format!("{what} `{s}` is not a number 0-65535")))
    };
    match kind {
        Kind::A => match trimmed.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Ok((RData::A(A(ip)), ip.to_string())),
            Ok(IpAddr::V6(_)) => Err(bad(format!("{trimmed} is an IPv6 address: use an AAAA record"))),
            Err(_) => Err(bad(format!("`{trimmed}` is not an IPv4 address"))),
        },
        Kind::Aaaa => match trimmed.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => Ok((RData::AAAA(AAAA(ip)), ip.to_string())),
            Ok(IpAddr::V4(_)) => Err(bad(format!("{trimmed} is an IPv4 address: use an A record"))),
            Err(_) => Err(bad(format!("`{trimmed}` is not an IPv6 address"))),
        },
        Kind::Cname => {
            let n = name(trimmed)?;
            Ok((RData::CNAME(rdata::CNAME(n.clone())), n.to_ascii()))
        }
        Kind::Ptr => {
            let n = name(trimmed)?;
            Ok((RData::PTR(rdata::PTR(n.clone())), n.to_ascii()))
        }
        Kind::Mx => {
            let parts: Vec<&str> = trimmed.split_whitespace().collect();
            let [pref, host] = parts[..] else {
                return Err(bad(format!("`{trimmed}` is not `PREFERENCE HOST` (e.g. `10 mail.example.`)")));
            };
            let pref = number(pref, "preference")?;
            let host = name(host)?;
            let canonical = format!("{pref} {}", host.to_ascii());
            Ok((RData::MX(MX::new(pref, host)), canonical))
        }
        Kind::Srv => {
            let parts: Vec<&str> = trimmed.split_whitespace().collect();
            let [prio, weight, port, target] = parts[..] else {
                return Err(bad(format!(
                    "`{trimmed}` is not `PRIORITY WEIGHT PORT TARGET` (e.g. `10 5 8080 svc.example.`)"
                )));
            };
            let (prio, weight, port) = (number(prio, "priority")?, number(weight, "weight")?, number(port, "port")?);
            let target = name(target)?;
            let canonical = format!("{prio} {weight} {port} {}", target.to_ascii());
            Ok((RData::SRV(SRV::new(prio, weight, port, target)), canonical))
        }
        Kind::Txt => {
            if value.len() > MAX_TXT_LEN {
                return Err(bad(format!("{} bytes is longer than the maximum of {MAX_TXT_LEN}", value.len())));
            }
            if value.chars().any(|c| c.is_control()) {
                return Err(bad("must not contain control characters".to_string()));
            }
            Ok((RData::TXT(TXT::new(txt_chunks(value))), value.to_string()))
        }
    }
}

/// Splits text into character-strings of at most 255 bytes, on character boundaries.
fn txt_chunks(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in value.chars() {
        if cur.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// Refuses a CNAME beside other data at the same name, in either direction. `existing` are the records already
/// at `new.name` (other names are ignored); a record with the same key as `new` is being replaced, not kept.
pub(crate) fn check_cname_exclusive<'a>(
    new: &LocalRecord,
    existing: impl IntoIterator<Item = &'a LocalRecord>,
) -> Result<(), RecordError> {
    for old in existing {
        if old.name != new.name || old.same_key(new) {
            continue;
        }
        if new.kind == Kind::Cname {
            return Err(RecordError::new(
                Field::Type,
                format!("CNAME at {} is not allowed beside its {} record(s)", new.name, old.kind),
            ));
        }
        if old.kind == Kind::Cname {
            return Err(RecordError::new(
                Field::Type,
                format!("{} at {} is not allowed beside its CNAME record", new.kind, new.name),
            ));
        }
    }
    Ok(())
}

/// The reverse name of an address (`10.0.0.10` → `10.0.0.10.in-addr.arpa.`), lowercase.
pub(crate) fn reverse_name(ip: IpAddr) -> Name {
    let text = match ip {
        IpAddr::V4(v4) => reverse_v4(v4),
        IpAddr::V6(v6) => reverse_v6(v6),
    };
    // Always a valid name: digits and hex letters only.
    Name::from_ascii(text).unwrap_or_else(|_| Name::root())
}

fn reverse_v4(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
}

fn reverse_v6(ip: Ipv6Addr) -> String {
    let mut s = String::with_capacity(74);
    for b in ip.octets().iter().rev() {
        s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
    }
    s.push_str("ip6.arpa.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, type, value, ttl, expected name, expected value, expected ttl.
    type ValidCase<'a> = (&'a str, &'a str, &'a str, Option<u32>, &'a str, &'a str, u32);
    /// name, type, value, ttl, field in error, expected message part.
    type InvalidCase<'a> = (&'a str, &'a str, &'a str, Option<u32>, Field, &'a str);

    fn zone() -> Name {
        Name::from_ascii("lab.home.arpa.").unwrap()
    }

    #[test]
    fn valid_records_parse_to_canonical_values() {
        let z = zone();
        let cases: &[ValidCase<'_>] = &[
            ("nas", "A", "10.0.0.10", Some(60), "nas.lab.home.arpa.", "10.0.0.10", 60),
            ("NAS.lab.home.arpa.", "a", " 10.0.0.10 ", None, "nas.lab.home.arpa.", "10.0.0.10", 300),
            ("v6", "AAAA", "2001:DB8:0::1", None, "v6.lab.home.arpa.", "2001:db8::1", 300),
            ("www", "CNAME", "nas", None, "www.lab.home.arpa.", "nas.lab.home.arpa.", 300),
            ("ext", "CNAME", "Example.COM.", None, "ext.lab.home.arpa.", "example.com.", 300),
            ("@", "MX", "10 mail", None, "lab.home.arpa.", "10 mail.lab.home.arpa.", 300),
            (
                "_http._tcp",
                "SRV",
                "10 5 8080 svc.lab.home.arpa.",
                None,
                "_http._tcp.lab.home.arpa.",
                "10 5 8080 svc.lab.home.arpa.",
                300,
            ),
            ("t", "TXT", "v=spf1 -all", None, "t.lab.home.arpa.", "v=spf1 -all", 300),
            (
                "10.0.0.10.in-addr.arpa.",
                "PTR",
                "nas.lab.home.arpa.",
                None,
                "10.0.0.10.in-addr.arpa.",
                "nas.lab.home.arpa.",
                300,
            ),
        ];
        for (name, kind, value, ttl, want_name, want_value, want_ttl) in cases {
            let r = LocalRecord::parse(name, kind, value, *ttl, "", Some(&z))
                .unwrap_or_else(|e| panic!("{name} {kind} {value}: {e}"));
            assert_eq!(r.name.to_ascii(), *want_name, "{name}");
            assert_eq!(r.value, *want_value, "{name}");
            assert_eq!(r.ttl, *want_ttl, "{name}");
            assert_eq!(r.to_record().record_type(), r.kind.record_type());
        }
    }

    #[test]
    fn invalid_records_name_the_field() {
        let z = zone();
        let long_label = "a".repeat(64);
        let long_name = vec!["abcdefghi"; 30].join(".");
        let long_txt = "x".repeat(MAX_TXT_LEN + 1);
        let cases: &[InvalidCase<'_>] = &[
            ("", "A", "10.0.0.1", None, Field::Name, "must not be empty"),
            ("bad name", "A", "10.0.0.1", None, Field::Name, "character ' '"),
            ("a..b", "A", "10.0.0.1", None, Field::Name, "empty label"),
            ("-x", "A", "10.0.0.1", None, Field::Name, "starts or ends with `-`"),
            (&long_label, "A", "10.0.0.1", None, Field::Name, "longer than 63"),
            (&long_name, "A", "10.0.0.1", None, Field::Name, "longer than 253"),
            ("*.wild", "A", "10.0.0.1", None, Field::Name, "character '*'"),
            (".", "A", "10.0.0.1", None, Field::Name, "root name"),
            ("x", "NAPTR", "whatever", None, Field::Type, "unknown record type `NAPTR`"),
            ("x", "", "whatever", None, Field::Type, "unknown record type"),
            ("x", "A", "2001:db8::1", None, Field::Value, "IPv6 address: use an AAAA record"),
            ("x", "AAAA", "10.0.0.1", None, Field::Value, "IPv4 address: use an A record"),
            ("x", "A", "10.0.0.300", None, Field::Value, "not an IPv4 address"),
            ("x", "A", "", None, Field::Value, "must not be empty"),
            ("x", "CNAME", "x", None, Field::Value, "points to itself"),
            ("x", "CNAME", "bad_name!", None, Field::Value, "character '!'"),
            ("x", "MX", "mail", None, Field::Value, "PREFERENCE HOST"),
            ("x", "MX", "high mail", None, Field::Value, "preference `high`"),
            ("x", "SRV", "10 5 svc", None, Field::Value, "PRIORITY WEIGHT PORT TARGET"),
            ("x", "SRV", "10 5 70000 svc", None, Field::Value, "port `70000`"),
            ("x", "TXT", &long_txt, None, Field::Value, "longer than the maximum"),
            ("x", "TXT", "bell\u{7}", None, Field::Value, "control characters"),
            ("x", "A", "10.0.0.1", Some(0), Field::Ttl, "at least 1"),
            ("x", "A", "10.0.0.1", Some(MAX_TTL + 1), Field::Ttl, "above the maximum"),
        ];
        for (name, kind, value, ttl, field, want) in cases {
            let e = LocalRecord::parse(name, kind, value, *ttl, "", Some(&z)).unwrap_err();
            assert_eq!(e.field, *field, "{name} {kind} {value}: {e}");
            assert!(e.message.contains(want), "{name} {kind} {value}: want {want:?} in {e}");
        }
    }

    #[test]
    fn cname_is_exclusive_in_both_directions() {
        let z = zone();
        let r = |n: &str, k: &str, v: &str| LocalRecord::parse(n, k, v, None, "", Some(&z)).unwrap();
        let a = r("x", "A", "10.0.0.1");
        let a2 = r("x", "A", "10.0.0.2");
        let c = r("x", "CNAME", "nas");
        let c2 = r("x", "CNAME", "other");
        let elsewhere = r("y", "A", "10.0.0.1");
        assert!(check_cname_exclusive(&a2, [&a, &elsewhere]).is_ok());
        assert!(check_cname_exclusive(&c, [&elsewhere]).is_ok());
        assert!(check_cname_exclusive(&c2, [&c]).is_ok(), "replacing a CNAME is not a conflict");
        let e = check_cname_exclusive(&c, [&a]).unwrap_err();
        assert_eq!(e.field, Field::Type);
        assert!(e.message.contains("beside its A record"), "{e}");
        let e = check_cname_exclusive(&a, [&c]).unwrap_err();
        assert!(e.message.contains("beside its CNAME"), "{e}");
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("10.0.0.10".parse().unwrap()).to_ascii(), "10.0.0.10.in-addr.arpa.");
        let v6 = reverse_name("2001:db8::1".parse().unwrap()).to_ascii();
        assert!(v6.starts_with("1.0.0.0.0.0.0.0.") && v6.ends_with("8.b.d.0.1.0.0.2.ip6.arpa."), "{v6}");
        assert_eq!(v6.split('.').count(), 32 + 3);
    }

    #[test]
    fn long_txt_is_split_into_strings() {
        let v = "é".repeat(200);
        let chunks = txt_chunks(&v);
        assert!(chunks.iter().all(|c| c.len() <= 255));
        assert_eq!(chunks.concat(), v);
        assert_eq!(txt_chunks(""), vec![String::new()]);
    }
}
