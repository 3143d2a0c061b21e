//! DNSSEC rules of the forwarder, as pure functions: the `[forward] dnssec` modes, the trust anchor file, which
//! RRSIG/NSEC/NSEC3 records of an upstream answer belong to it (bailiwick), which DNSSEC records a client sees
//! (RFC 4035 §3.2.1), when a reply carries AD (RFC 6840 §5.8), the verdict of hickory's validation, and the
//! Extended DNS Error of a bogus answer (RFC 8914).
//! Knows nothing of sockets, upstream transports, the cache or the DNS server.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::dnssec::{Proof, TrustAnchors};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::trust_anchor::{Entry, Parser};

/// What the forwarder does with DNSSEC (`[forward] dnssec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnssecMode {
    /// `"off"`: upstreams are asked without DO; no DNSSEC record and no AD is ever passed on (the agent before
    /// DNSSEC support).
    Off,
    /// `"transparent"` (default): upstreams are always asked with DO (and with CD when the client sets it), the
    /// answer's RRSIG/NSEC/NSEC3 records and AD bit are kept (and cached) and given to clients that set DO, so a
    /// validating stub behind the agent validates. The agent itself trusts its upstream.
    #[default]
    Transparent,
    /// `"validate"`: as transparent, and the agent validates every answer to a query without CD itself with
    /// hickory's validator from the trust anchor: bogus → SERVFAIL with EDE 6, secure → AD, insecure → as
    /// forwarded (AD never comes from the upstream).
    Validate,
}

impl DnssecMode {
    /// Parses a mode's config name.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DnssecMode::Off),
            "transparent" => Ok(DnssecMode::Transparent),
            "validate" => Ok(DnssecMode::Validate),
            other => Err(format!("`{other}` is not a dnssec mode (use \"transparent\", \"validate\" or \"off\")")),
        }
    }

    /// Whether upstreams are asked with DO and DNSSEC records are kept.
    pub(crate) fn keeps_dnssec(self) -> bool {
        self != DnssecMode::Off
    }
}

impl fmt::Display for DnssecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DnssecMode::Off => "off",
            DnssecMode::Transparent => "transparent",
            DnssecMode::Validate => "validate",
        })
    }
}

/// The keys validation starts from: hickory's built-in root keys, and those of a `trust_anchor` file.
#[derive(Clone)]
pub struct Anchors {
    pub(crate) keys: Arc<TrustAnchors>,
    /// The zones the file holds keys for (lowercase).
    zones: Vec<Name>,
    /// What the file said (its DNSKEY records): a reload compares configs by their `Debug` text, so a rolled key
    /// must show there.
    file: Option<String>,
}

impl Anchors {
    /// hickory's built-in root keys (KSK-2017 and KSK-2024).
    pub(crate) fn builtin() -> Self {
        Anchors { keys: Arc::new(TrustAnchors::default()), zones: Vec::new(), file: None }
    }

    /// Reads a file of DNSKEY records in zone-file syntax (`example. IN DNSKEY 257 3 13 …`, as `ldns-keygen` and
    /// `dnssec-keygen` write a `.key` file). DS records are not accepted by hickory's parser.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        // hickory's parser knows no comments: drop everything from `;` (`.key` files end lines with `;{id = …}`).
        let cleaned: String = text.lines().map(|l| l.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        // The type follows the owner and an optional TTL and class.
        let has_type =
            |t: &str| cleaned.lines().any(|l| l.split_whitespace().skip(1).take(3).any(|w| w.eq_ignore_ascii_case(t)));
        if has_type("DS") {
            return Err("DS records are not supported as trust anchors; give the DNSKEY records".to_string());
        }
        let entries =
            Parser::new(cleaned.as_str()).parse().map_err(|e| format!("not a list of DNSKEY records: {e}"))?;
        let mut keys = TrustAnchors::default();
        let mut added = Vec::new();
        let mut zones: Vec<Name> = Vec::new();
        for entry in entries {
            let Entry::DNSKEY(record) = entry else { continue };
            let dnskey = record.data();
            keys.insert_with_name(dnskey.public_key(), record.name().into());
            added.push(format!("{} DNSKEY {dnskey}", record.name()));
            let zone = record.name().to_lowercase();
            if !zone.is_root() && !zones.contains(&zone) {
                zones.push(zone);
            }
        }
        if added.is_empty() {
            return Err("no DNSKEY record in the trust anchor file".to_string());
        }
        Ok(Anchors { keys: Arc::new(keys), zones, file: Some(added.join("; ")) })
    }

    /// Whether `name` lies at or under a zone the file holds keys for: its answers must validate.
    pub(crate) fn covers(&self, name: &Name) -> bool {
        self.zones.iter().any(|z| z.zone_of(name))
    }
}

impl fmt::Debug for Anchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            None => f.write_str("Anchors(built-in root keys)"),
            Some(keys) => write!(f, "Anchors(built-in root keys and {keys})"),
        }
    }
}

/// The DNSSEC record types a client gets only with DO, unless it asked for that type (RFC 4035 §3.2.1).
pub(crate) fn is_dnssec_type(t: RecordType) -> bool {
    matches!(t, RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3 | RecordType::DNSKEY | RecordType::DS)
}

/// Whether a forwarded record goes into the reply to a query of `qtype` whose DO bit is `dnssec_ok`.
pub(crate) fn visible(record: RecordType, qtype: RecordType, dnssec_ok: bool) -> bool {
    dnssec_ok || record == qtype || !is_dnssec_type(record)
}

/// AD in a reply: only when the answer is authenticated (by the upstream, or by the agent in `validate` mode) and
/// the client said it understands AD, by DO or by AD in its query (RFC 6840 §5.7–5.8).
pub(crate) fn reply_ad(authenticated: bool, client_do: bool, client_ad: bool) -> bool {
    authenticated && (client_do || client_ad)
}

fn rrsig_of(record: &Record) -> Option<(RecordType, &Name)> {
    match &record.data {
        RData::DNSSEC(DNSSECRData::RRSIG(sig)) => Some((sig.input().type_covered, &sig.input().signer_name)),
        _ => None,
    }
}

/// `kept` (records of the answer chain, RRsets in order) with each RRset followed by the RRSIGs of `all` that cover
/// it (same owner, type covered), so that cutting the list at a record keeps each RRset with its signatures.
pub(crate) fn with_signatures(kept: Vec<Record>, all: &[Record]) -> Vec<Record> {
    let mut out = Vec::with_capacity(kept.len() * 2);
    let mut iter = kept.into_iter().peekable();
    while let Some(record) = iter.next() {
        let (name, rtype) = (record.name.clone(), record.record_type());
        out.push(record);
        let last_of_set = iter.peek().is_none_or(|n| n.name != name || n.record_type() != rtype);
        if last_of_set && rtype != RecordType::RRSIG {
            out.extend(all.iter().filter(|r| r.name == name && rrsig_of(r).is_some_and(|(c, _)| c == rtype)).cloned());
        }
    }
    out
}

/// The DNSSEC proof records of an authority section that belong to an answer ending at `end`: the RRSIGs of the
/// kept SOA records, and the NSEC/NSEC3 records with their RRSIGs, signed by a zone at or above `end` and owned
/// inside that zone. Everything else (another zone's proofs, unsigned NSECs) is dropped.
pub(crate) fn proofs(end: &Name, soas: &[Record], authority: &[Record]) -> Vec<Record> {
    let in_zone = |r: &Record| {
        rrsig_of(r).is_some_and(|(covered, signer)| {
            signer.zone_of(end)
                && signer.zone_of(&r.name)
                && match covered {
                    RecordType::SOA => soas.iter().any(|s| s.name == r.name),
                    RecordType::NSEC | RecordType::NSEC3 => true,
                    _ => false,
                }
        })
    };
    let sigs: Vec<&Record> = authority.iter().filter(|r| in_zone(r)).collect();
    let mut out: Vec<Record> = Vec::new();
    for r in authority {
        let t = r.record_type();
        if matches!(t, RecordType::NSEC | RecordType::NSEC3)
            && sigs.iter().any(|s| s.name == r.name && rrsig_of(s).is_some_and(|(c, _)| c == t))
        {
            out.push(r.clone());
        }
    }
    out.extend(sigs.into_iter().cloned());
    out
}

/// What the agent's validation says of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every record proven from the trust anchor.
    Secure,
    /// Provably unsigned, or not covered by the trust anchor: given as forwarded, without AD.
    Insecure,
    /// Signed but failing validation (tampered, expired, missing signatures): SERVFAIL.
    Bogus,
}

/// The verdict from the proofs hickory's validator left on the records of an answer (RRSIGs aside: their proof
/// only marks the one signature used). Any bogus record makes the answer bogus; all secure (and at least one
/// record) makes it secure; anything else is insecure.
pub(crate) fn verdict<'a>(records: impl IntoIterator<Item = &'a Record>) -> Verdict {
    let mut any = false;
    let mut all_secure = true;
    for r in records.into_iter().filter(|r| r.record_type() != RecordType::RRSIG) {
        any = true;
        match r.proof {
            Proof::Bogus => return Verdict::Bogus,
            Proof::Secure => {}
            _ => all_secure = false,
        }
    }
    if any && all_secure {
        Verdict::Secure
    } else {
        Verdict::Insecure
    }
}

/// The verdict on an answer for a name at or under an anchored zone (`covered`): there an answer that is not proven
/// secure is bogus (RFC 4035 §5: data under a trust anchor must validate). hickory calls a DNSKEY set insecure when
/// its keys are not all anchors and the parent proves there is no DS — the case of a private zone anchored by its
/// KSK alone — which would let a tampered answer through as insecure.
pub(crate) fn under_anchor(verdict: Verdict, covered: bool) -> Verdict {
    match verdict {
        Verdict::Insecure if covered => Verdict::Bogus,
        v => v,
    }
}

/// EDNS option code of an Extended DNS Error (RFC 8914).
const EDE_OPTION: u16 = 15;
/// INFO-CODE 6, "DNSSEC Bogus".
const EDE_DNSSEC_BOGUS: u16 = 6;

/// The Extended DNS Error option of a bogus answer's SERVFAIL: INFO-CODE 6 with a short EXTRA-TEXT.
pub(crate) fn bogus_ede() -> EdnsOption {
    let mut data = EDE_DNSSEC_BOGUS.to_be_bytes().to_vec();
    data.extend_from_slice(b"dnssec validation failed");
    EdnsOption::Unknown(EDE_OPTION, data)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::dnssec::rdata::{SigInput, NSEC, RRSIG};
    use hickory_proto::dnssec::Algorithm;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::SerialNumber;

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(name: &str) -> Record {
        Record::from_rdata(n(name), 60, RData::A(A::new(192, 0, 2, 1)))
    }

    fn sig(owner: &str, covered: RecordType, signer: &str) -> Record {
        let input = SigInput {
            type_covered: covered,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: n(owner).num_labels(),
            original_ttl: 60,
            sig_expiration: SerialNumber::new(2_000_000_000),
            sig_inception: SerialNumber::new(1_000_000_000),
            key_tag: 1,
            signer_name: n(signer),
        };
        Record::from_rdata(n(owner), 60, RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, vec![1, 2, 3]))))
    }

    fn nsec(owner: &str, next: &str) -> Record {
        let data = NSEC::new(n(next), [RecordType::A, RecordType::RRSIG, RecordType::NSEC]);
        Record::from_rdata(n(owner), 60, RData::DNSSEC(DNSSECRData::NSEC(data)))
    }

    fn soa(owner: &str) -> Record {
        let data = SOA::new(n("ns.t."), n("admin.t."), 1, 3600, 600, 86400, 60);
        Record::from_rdata(n(owner), 60, RData::SOA(data))
    }

    #[test]
    fn modes_parse_by_name() {
        for (text, mode) in
            [("off", DnssecMode::Off), ("transparent", DnssecMode::Transparent), ("validate", DnssecMode::Validate)]
        {
            assert_eq!(DnssecMode::parse(text), Ok(mode));
            assert_eq!(mode.to_string(), text);
        }
        assert!(DnssecMode::parse("on").unwrap_err().contains("not a dnssec mode"));
        assert_eq!(DnssecMode::default(), DnssecMode::Transparent);
    }

    #[test]
    fn dnssec_records_only_with_do_unless_asked_for() {
        use RecordType as T;
        // (record type, query type, DO, visible)
        let cases = [
            (T::A, T::A, false, true),
            (T::RRSIG, T::A, false, false),
            (T::RRSIG, T::A, true, true),
            (T::NSEC, T::A, false, false),
            (T::NSEC3, T::AAAA, false, false),
            (T::NSEC3, T::AAAA, true, true),
            (T::DNSKEY, T::DNSKEY, false, true),
            (T::RRSIG, T::DNSKEY, false, false),
            (T::DS, T::DS, false, true),
            (T::DS, T::A, false, false),
            (T::RRSIG, T::RRSIG, false, true),
            (T::SOA, T::A, false, true),
            (T::CNAME, T::A, false, true),
        ];
        for (record, qtype, dnssec_ok, want) in cases {
            assert_eq!(visible(record, qtype, dnssec_ok), want, "{record} in a reply to {qtype}, DO={dnssec_ok}");
        }
    }

    #[test]
    fn ad_only_when_authenticated_and_the_client_understands_it() {
        // (authenticated, client DO, client AD, reply AD)
        let cases = [
            (true, true, false, true),
            (true, false, true, true),
            (true, true, true, true),
            (true, false, false, false),
            (false, true, true, false),
            (false, false, false, false),
        ];
        for (auth, d, ad, want) in cases {
            assert_eq!(reply_ad(auth, d, ad), want, "authenticated={auth} DO={d} AD={ad}");
        }
    }

    #[test]
    fn each_rrset_is_followed_by_its_signatures_only() {
        let all = vec![
            a("www.t."),
            sig("www.t.", RecordType::A, "t."),
            sig("www.t.", RecordType::AAAA, "t."),
            sig("other.t.", RecordType::A, "t."),
            a("x.t."),
            sig("x.t.", RecordType::A, "t."),
        ];
        let kept = vec![a("www.t."), a("www.t."), a("x.t.")];
        let out = with_signatures(kept, &all);
        let shape: Vec<(String, RecordType)> = out.iter().map(|r| (r.name.to_string(), r.record_type())).collect();
        let want = [
            ("www.t.", RecordType::A),
            ("www.t.", RecordType::A),
            ("www.t.", RecordType::RRSIG),
            ("x.t.", RecordType::A),
            ("x.t.", RecordType::RRSIG),
        ];
        assert_eq!(shape, want.map(|(n, t)| (n.to_string(), t)).to_vec());
        assert!(with_signatures(vec![], &all).is_empty());
    }

    #[test]
    fn proofs_keep_the_zones_nsecs_and_signatures_only() {
        let soas = vec![soa("t.")];
        let authority = vec![
            soa("t."),
            sig("t.", RecordType::SOA, "t."),
            nsec("a.t.", "c.t."),
            sig("a.t.", RecordType::NSEC, "t."),
            // Unsigned NSEC: dropped.
            nsec("d.t.", "e.t."),
            // Another zone's proof: dropped.
            nsec("a.other.", "b.other."),
            sig("a.other.", RecordType::NSEC, "other."),
            // An RRSIG over something else: dropped.
            sig("t.", RecordType::NS, "t."),
        ];
        let out = proofs(&n("b.t."), &soas, &authority);
        let shape: Vec<(String, RecordType)> = out.iter().map(|r| (r.name.to_string(), r.record_type())).collect();
        let want = [("a.t.", RecordType::NSEC), ("t.", RecordType::RRSIG), ("a.t.", RecordType::RRSIG)];
        assert_eq!(shape, want.map(|(n, t)| (n.to_string(), t)).to_vec());
        // Without the SOA kept, its signature goes too.
        assert_eq!(proofs(&n("b.t."), &[], &authority).len(), 2);
    }

    #[test]
    fn verdict_from_the_records_proofs() {
        let with = |proofs: &[Proof]| -> Vec<Record> {
            proofs
                .iter()
                .map(|p| {
                    let mut r = a("x.t.");
                    r.proof = *p;
                    r
                })
                .collect()
        };
        let mut unproven_sig = sig("x.t.", RecordType::A, "t.");
        unproven_sig.proof = Proof::Indeterminate;
        // (record proofs, verdict)
        let cases: Vec<(Vec<Proof>, Verdict)> = vec![
            (vec![Proof::Secure, Proof::Secure], Verdict::Secure),
            (vec![Proof::Secure, Proof::Bogus], Verdict::Bogus),
            (vec![Proof::Insecure], Verdict::Insecure),
            (vec![Proof::Secure, Proof::Indeterminate], Verdict::Insecure),
            (vec![], Verdict::Insecure),
        ];
        for (proofs, want) in cases {
            let mut records = with(&proofs);
            records.push(unproven_sig.clone());
            assert_eq!(verdict(&records), want, "{proofs:?}");
        }
    }

    #[test]
    fn answers_under_an_anchored_zone_must_be_secure() {
        // (verdict, covered by an anchor, final verdict)
        let cases = [
            (Verdict::Secure, true, Verdict::Secure),
            (Verdict::Insecure, true, Verdict::Bogus),
            (Verdict::Bogus, true, Verdict::Bogus),
            (Verdict::Secure, false, Verdict::Secure),
            (Verdict::Insecure, false, Verdict::Insecure),
            (Verdict::Bogus, false, Verdict::Bogus),
        ];
        for (verdict, covered, want) in cases {
            assert_eq!(under_anchor(verdict, covered), want, "{verdict:?} covered={covered}");
        }
        let key = "Example.TEST. IN DNSKEY 257 3 13 \
                   mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n";
        let anchors = Anchors::parse(key).expect("parses");
        for (name, want) in [("example.test.", true), ("www.EXAMPLE.test.", true), ("test.", false), ("x.org.", false)]
        {
            assert_eq!(anchors.covers(&n(name).to_lowercase()), want, "{name}");
        }
        assert!(!Anchors::builtin().covers(&n("example.test.")), "the root keys cover everything only by the chain");
    }

    #[test]
    fn the_ede_is_code_6() {
        let EdnsOption::Unknown(code, data) = bogus_ede() else { panic!("an unknown-option EDE") };
        assert_eq!((code, &data[..2]), (15, &[0u8, 6][..]));
    }

    #[test]
    fn trust_anchor_files_hold_dnskeys() {
        // As ldns-keygen writes a KSK's .key file.
        let key = "example.test.\tIN\tDNSKEY\t257 3 13 \
                   mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ== ;{id = 2371}\n";
        let anchors = Anchors::parse(key).expect("parses");
        assert!(format!("{anchors:?}").contains("example.test. DNSKEY 257 3 13 mdss"), "{anchors:?}");
        assert_eq!(anchors.keys.len(), 2, "the built-in root keys stay");
        let ds = "example.test. IN DS 2371 13 2 ABCD\n";
        assert!(Anchors::parse(ds).unwrap_err().contains("DS records are not supported"));
        assert!(Anchors::parse("\n; nothing\n").unwrap_err().contains("no DNSKEY"));
        assert!(Anchors::parse("example.test. IN DNSKEY 257 3 13 !!!\n").is_err());
    }
}
