//! The in-memory, immutable snapshot of every local zone that the query path reads: names → records, synthesized
//! SOA/NS and reverse PTRs, CNAME chains resolved ahead of time, the RFC 6303 empty zones. Rebuilt and swapped
//! whole on any change.
//! Knows DNS answers for local names; must not know sockets, SQLite, gRPC, forwarding or blocklists.

use std::collections::HashMap;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{NS, PTR, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::records::{reverse_name, Kind, LocalRecord};

/// TTL of the synthesized SOA and NS records, and the negative-caching TTL (SOA minimum).
pub(crate) const SOA_TTL: u32 = 60;
/// CNAME hops followed inside local zones before giving up.
const MAX_CHAIN: usize = 8;

/// The locally served empty zones of RFC 6303 section 4: the reverse zones of private, loopback, link-local,
/// documentation and unique-local addresses. Answered here (NXDOMAIN below the apex) so that their PTR queries never
/// leak to an upstream, unless a configured zone or another resolver (`served_elsewhere`) covers them.
const EMPTY_ZONES: &[&str] = &[
    "10.in-addr.arpa.",
    "16.172.in-addr.arpa.",
    "17.172.in-addr.arpa.",
    "18.172.in-addr.arpa.",
    "19.172.in-addr.arpa.",
    "20.172.in-addr.arpa.",
    "21.172.in-addr.arpa.",
    "22.172.in-addr.arpa.",
    "23.172.in-addr.arpa.",
    "24.172.in-addr.arpa.",
    "25.172.in-addr.arpa.",
    "26.172.in-addr.arpa.",
    "27.172.in-addr.arpa.",
    "28.172.in-addr.arpa.",
    "29.172.in-addr.arpa.",
    "30.172.in-addr.arpa.",
    "31.172.in-addr.arpa.",
    "168.192.in-addr.arpa.",
    "0.in-addr.arpa.",
    "127.in-addr.arpa.",
    "254.169.in-addr.arpa.",
    "2.0.192.in-addr.arpa.",
    "100.51.198.in-addr.arpa.",
    "113.0.203.in-addr.arpa.",
    "255.255.255.255.in-addr.arpa.",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "d.f.ip6.arpa.",
    "8.e.f.ip6.arpa.",
    "9.e.f.ip6.arpa.",
    "a.e.f.ip6.arpa.",
    "b.e.f.ip6.arpa.",
    "8.b.d.0.1.0.0.2.ip6.arpa.",
];

/// TTL of an empty zone's SOA and NS, and its SOA minimum (RFC 6303 section 3: 10800).
const EMPTY_ZONE_TTL: u32 = 10800;

/// One zone from the config: its origin (fully qualified, lowercase), its records and its name server.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneConfig {
    pub origin: Name,
    pub records: Vec<LocalRecord>,
    /// The timers of the zone's synthesized SOA (what its secondaries follow).
    pub soa: SoaTimers,
    pub ns: NsServer,
}

/// The refresh, retry, expire and minimum fields of a synthesized SOA, in seconds (`[[zones]] soa = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoaTimers {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

impl Default for SoaTimers {
    fn default() -> Self {
        SoaTimers { refresh: 3600, retry: 600, expire: 86400, minimum: SOA_TTL }
    }
}

/// A secondary zone's copy as the snapshot serves it (see `secondary`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SecondaryZone {
    pub origin: Name,
    /// SOA first; empty without a copy.
    pub records: std::sync::Arc<Vec<Record>>,
    /// False without a copy or once it expired: the zone answers SERVFAIL.
    pub serving: bool,
}

/// The name server of a zone's synthesized NS record (and its SOA MNAME), and the addresses served for it when it
/// lies in the zone (unless the zone has its own records at that name).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NsServer {
    /// `None`: `ns.ZONE`.
    pub name: Option<Name>,
    pub addresses: Vec<std::net::IpAddr>,
}

impl NsServer {
    /// The target name for the zone `origin`.
    pub(crate) fn target(&self, origin: &Name) -> Name {
        self.name.clone().unwrap_or_else(|| sub(origin, "ns"))
    }
}

/// One local zone as `ListZones` reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ZoneSummary {
    pub origin: Name,
    pub serial: u32,
    pub records: u64,
}

/// What a local zone answers for one question.
#[derive(Debug)]
pub(crate) struct LocalAnswer<'a> {
    pub rcode: ResponseCode,
    /// The records of the asked type at the name, or the CNAME chain that starts there.
    pub answers: &'a [Record],
    /// The records of the asked type at the end of a local CNAME chain.
    pub chained: &'a [Record],
    /// The zone's SOA, for the authority section of NXDOMAIN and NODATA answers.
    pub soa: Option<&'a Record>,
    /// The end of a CNAME chain that leaves the local zones: the caller may resolve it elsewhere.
    pub external: Option<&'a Name>,
}

#[derive(Debug)]
enum ChainEnd {
    /// The chain ends at a local name (which may lack the asked type).
    Local(LowerName),
    /// The chain ends at a name inside a local zone that does not exist.
    Missing(usize),
    /// The chain leaves the local zones.
    External(Name),
    /// Too many hops or a loop.
    Broken,
}

#[derive(Debug)]
struct Entry {
    zone: usize,
    /// Sorted by record type, so each type's records are one slice.
    records: Vec<Record>,
    /// Non-empty when the name holds a CNAME: every CNAME record along the chain, in order.
    chain: Vec<Record>,
    end: Option<ChainEnd>,
}

impl Entry {
    fn rrset(&self, t: RecordType) -> &[Record] {
        let code = u16::from(t);
        let start = self.records.partition_point(|r| u16::from(r.record_type()) < code);
        let len = self.records[start..].partition_point(|r| u16::from(r.record_type()) == code);
        &self.records[start..start + len]
    }
}

#[derive(Debug)]
struct ZoneInfo {
    origin: LowerName,
    name: Name,
    soa: Record,
    /// A copy from a primary (`SecondaryZone`): served as transferred, nothing synthesized.
    secondary: bool,
    /// False: every name in the zone answers SERVFAIL (a secondary without a current copy).
    serving: bool,
}

/// One RFC 6303 empty zone: its apex records, nothing else.
#[derive(Debug)]
struct EmptyZone {
    origin: LowerName,
    soa: Record,
    ns: Record,
}

/// Every local zone, ready to answer. Immutable: build a new one and swap it.
#[derive(Debug, Default)]
pub(crate) struct ZoneSet {
    /// Longest origin first, so the first zone that contains a name is the most specific.
    zones: Vec<ZoneInfo>,
    names: HashMap<LowerName, Entry>,
    records: usize,
    /// The RFC 6303 empty zones that no configured zone and nothing served elsewhere covers; looked at only for
    /// names under `arpa.` that no configured zone holds.
    empty: Vec<EmptyZone>,
}

impl ZoneSet {
    /// Builds the zones from the config's zones and the dynamic records. Records that cannot be served (outside
    /// every zone, or a CNAME beside other data once merged with the config) are skipped; the reasons are returned.
    /// `served_elsewhere` are domains another resolver answers (conditional forwarding): an RFC 6303 empty zone
    /// related to one of them (equal, above or below) is not served, nor one at or below a configured zone.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn build(
        config: &[ZoneConfig],
        dynamic: &[LocalRecord],
        serial: u32,
        served_elsewhere: &[Name],
    ) -> (ZoneSet, Vec<String>) {
        Self::build_with_secondaries(config, dynamic, serial, served_elsewhere, &[])
    }

    /// [`ZoneSet::build`] with secondary zones' copies beside the configured zones.
    pub(crate) fn build_with_secondaries(
        config: &[ZoneConfig],
        dynamic: &[LocalRecord],
        serial: u32,
        served_elsewhere: &[Name],
        secondaries: &[SecondaryZone],
    ) -> (ZoneSet, Vec<String>) {
        let mut warnings = Vec::new();
        let mut zones: Vec<ZoneInfo> = config
            .iter()
            .map(|z| ZoneInfo {
                origin: LowerName::new(&z.origin),
                name: z.origin.clone(),
                soa: with_mname(soa(&z.origin, serial, &z.soa), z.ns.target(&z.origin)),
                secondary: false,
                serving: true,
            })
            .collect();
        zones.extend(secondaries.iter().map(|s| {
            let copy_soa = s.records.first().filter(|r| r.record_type() == RecordType::SOA);
            ZoneInfo {
                origin: LowerName::new(&s.origin),
                name: s.origin.clone(),
                soa: copy_soa.cloned().unwrap_or_else(|| soa(&s.origin, 0, &SoaTimers::default())),
                secondary: true,
                serving: s.serving && copy_soa.is_some(),
            }
        }));
        zones.sort_by_key(|z| std::cmp::Reverse(z.name.num_labels()));
        let mut empty = empty_zones(config, served_elsewhere);
        empty.retain(|e| !secondaries.iter().any(|s| s.origin.zone_of(&Name::from(e.origin.clone()))));
        let mut set = ZoneSet { zones, names: HashMap::new(), records: 0, empty };

        // Accepted records, per name, in the order given: config first, then dynamic.
        let mut by_name: HashMap<LowerName, Vec<&LocalRecord>> = HashMap::new();
        let mut accepted: Vec<&LocalRecord> = Vec::new();
        for r in config.iter().flat_map(|z| z.records.iter()).chain(dynamic.iter()) {
            match set.zone_index(&LowerName::new(&r.name)) {
                None => {
                    warnings.push(format!("record {} {} is not in any zone: not served", r.name, r.kind));
                    continue;
                }
                Some(z) if set.zones[z].secondary => {
                    let zone = &set.zones[z].name;
                    warnings.push(format!("record {} {} is in secondary zone {zone}: not served", r.name, r.kind));
                    continue;
                }
                Some(_) => {}
            }
            let at = by_name.entry(LowerName::new(&r.name)).or_default();
            if at.iter().any(|o| o.kind == r.kind && o.rdata == r.rdata) {
                continue; // the same record twice
            }
            let clash = at.iter().find(|o| (o.kind == Kind::Cname) != (r.kind == Kind::Cname) || o.kind == Kind::Cname);
            if let Some(o) = clash {
                warnings.push(format!(
                    "record {} {} {} conflicts with its {} record: not served",
                    r.name, r.kind, r.value, o.kind
                ));
                continue;
            }
            at.push(r);
            accepted.push(r);
        }
        set.records = accepted.len();

        let mut records: Vec<Record> = accepted.iter().map(|r| r.to_record()).collect();
        // Reverse PTRs for every address that falls in a local (reverse) zone, unless the name has a CNAME.
        for r in &accepted {
            let ip = match &r.rdata {
                RData::A(a) => std::net::IpAddr::V4(a.0),
                RData::AAAA(a) => std::net::IpAddr::V6(a.0),
                _ => continue,
            };
            let rev = reverse_name(ip);
            let lower = LowerName::new(&rev);
            if set.zone_index(&lower).is_none_or(|z| set.zones[z].secondary) {
                continue;
            }
            let existing = by_name.get(&lower).map(Vec::as_slice).unwrap_or_default();
            if existing.iter().any(|o| o.kind == Kind::Cname) {
                continue;
            }
            let ptr = RData::PTR(PTR(r.name.clone()));
            if existing.iter().any(|o| o.rdata == ptr) || records.iter().any(|o| o.name == rev && o.data == ptr) {
                continue;
            }
            records.push(Record::from_rdata(rev, r.ttl, ptr));
        }
        // SOA and NS at every configured apex; a secondary zone's copy as transferred (SOA first).
        for s in secondaries.iter().filter(|s| s.serving) {
            records.extend(s.records.iter().cloned());
        }
        for z in set.zones.iter().filter(|z| !z.secondary) {
            records.push(z.soa.clone());
        }
        // The NS target's addresses, when it is in its zone and the zone says nothing else about that name.
        for z in config {
            let target = z.ns.target(&z.origin);
            records.push(Record::from_rdata(z.origin.clone(), SOA_TTL, RData::NS(NS(target.clone()))));
            if !z.origin.zone_of(&target) || by_name.contains_key(&LowerName::new(&target)) {
                continue;
            }
            for ip in &z.ns.addresses {
                let data = match *ip {
                    std::net::IpAddr::V4(v4) => RData::A(v4.into()),
                    std::net::IpAddr::V6(v6) => RData::AAAA(v6.into()),
                };
                records.push(Record::from_rdata(target.clone(), SOA_TTL, data));
            }
        }

        for rec in records {
            let lower = LowerName::new(&rec.name);
            let Some(zone) = set.zone_index(&lower) else { continue };
            set.names
                .entry(lower)
                .or_insert_with(|| Entry { zone, records: Vec::new(), chain: Vec::new(), end: None })
                .records
                .push(rec);
        }
        // Empty non-terminals exist (NODATA, not NXDOMAIN): every ancestor of a name up to its zone's apex.
        let mut ents = Vec::new();
        for (name, e) in &set.names {
            let origin = &set.zones[e.zone].origin;
            let mut cur = name.base_name();
            while cur.num_labels() > origin.num_labels() && !set.names.contains_key(&cur) {
                ents.push((cur.clone(), e.zone));
                cur = cur.base_name();
            }
        }
        for (name, zone) in ents {
            set.names.entry(name).or_insert_with(|| Entry { zone, records: Vec::new(), chain: Vec::new(), end: None });
        }
        for e in set.names.values_mut() {
            e.records.sort_by_key(|r| u16::from(r.record_type()));
        }
        // Resolve CNAME chains once.
        let starts: Vec<LowerName> =
            set.names.iter().filter(|(_, e)| !e.rrset(RecordType::CNAME).is_empty()).map(|(n, _)| n.clone()).collect();
        for start in starts {
            let (chain, end) = set.follow(&start);
            if let Some(e) = set.names.get_mut(&start) {
                e.chain = chain;
                e.end = Some(end);
            }
        }
        (set, warnings)
    }

    fn follow(&self, start: &LowerName) -> (Vec<Record>, ChainEnd) {
        let mut chain = Vec::new();
        let mut cur = start.clone();
        loop {
            let Some(e) = self.names.get(&cur) else {
                return match self.zone_index(&cur) {
                    Some(z) => (chain, ChainEnd::Missing(z)),
                    None => (chain, ChainEnd::External(Name::from(&cur))),
                };
            };
            let Some(c) = e.rrset(RecordType::CNAME).first() else {
                return (chain, ChainEnd::Local(cur));
            };
            if chain.len() >= MAX_CHAIN {
                return (chain, ChainEnd::Broken);
            }
            chain.push(c.clone());
            let RData::CNAME(target) = &c.data else { return (chain, ChainEnd::Broken) };
            cur = LowerName::new(&target.0);
            if &cur == start {
                return (chain, ChainEnd::Broken);
            }
        }
    }

    fn zone_index(&self, name: &LowerName) -> Option<usize> {
        self.zones.iter().position(|z| z.origin.zone_of(name))
    }

    /// The most specific local zone holding `name`, if any.
    pub(crate) fn zone_of(&self, name: &Name) -> Option<&Name> {
        self.zone_index(&LowerName::new(name)).map(|i| &self.zones[i].name)
    }

    /// Whether `name` falls in a local zone (no allocation: for filtering forwarded answers on the hot path).
    pub(crate) fn is_local(&self, name: &Name) -> bool {
        self.zones.iter().any(|z| z.name.zone_of(name))
    }

    /// Each configured zone's origin, SOA serial and record count (every record served in it, SOA and NS included),
    /// in the order of the snapshot (longest origin first).
    pub(crate) fn summaries(&self) -> Vec<ZoneSummary> {
        let mut counts = vec![0u64; self.zones.len()];
        for e in self.names.values() {
            counts[e.zone] += e.records.len() as u64;
        }
        self.zones
            .iter()
            .zip(counts)
            .filter(|(z, _)| !z.secondary)
            .map(|(z, records)| {
                let serial = match &z.soa.data {
                    RData::SOA(soa) => soa.serial,
                    _ => 0,
                };
                ZoneSummary { origin: z.name.clone(), serial, records }
            })
            .collect()
    }

    /// The SOA of the configured zone `origin` and every other record it serves (NS, synthesized PTRs, config and
    /// dynamic records), unordered: what a zone transfer sends. `None` when `origin` is not a configured zone.
    pub(crate) fn zone_records<'a>(
        &'a self,
        origin: &Name,
    ) -> Option<(&'a Record, impl Iterator<Item = &'a Record> + Send + 'a)> {
        let lower = LowerName::new(origin);
        let zone = self.zones.iter().position(|z| z.origin == lower && !z.secondary)?;
        let records = self
            .names
            .values()
            .filter(move |e| e.zone == zone)
            .flat_map(|e| e.records.iter())
            .filter(|r| r.record_type() != RecordType::SOA);
        Some((&self.zones[zone].soa, records))
    }

    /// Sets the SOA serial of each configured zone to `serial_of(origin)` (zones it gives `None` keep theirs).
    pub(crate) fn set_serials(&mut self, serial_of: impl Fn(&Name) -> Option<u32>) {
        for z in self.zones.iter_mut().filter(|z| !z.secondary) {
            let Some(serial) = serial_of(&z.name) else { continue };
            if let RData::SOA(soa) = &mut z.soa.data {
                soa.serial = serial;
            }
            if let Some(e) = self.names.get_mut(&z.origin) {
                for r in e.records.iter_mut().filter(|r| r.record_type() == RecordType::SOA) {
                    *r = z.soa.clone();
                }
            }
        }
    }

    /// The origins of the configured zones (secondary zones' copies keep their primary's serial: not listed).
    pub(crate) fn origins(&self) -> impl Iterator<Item = &Name> {
        self.zones.iter().filter(|z| !z.secondary).map(|z| &z.name)
    }

    pub(crate) fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// Records served from the config and the dynamic store (synthesized SOA, NS and PTR not counted).
    pub(crate) fn record_count(&self) -> usize {
        self.records
    }

    /// Answers a question for a local name; `None` when the name is in no local zone. Never allocates.
    pub(crate) fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Option<LocalAnswer<'_>> {
        let Some(zone) = self.zone_index(qname) else { return self.empty_lookup(qname, qtype) };
        let soa = Some(&self.zones[zone].soa);
        let mut ans =
            LocalAnswer { rcode: ResponseCode::NoError, answers: &[], chained: &[], soa: None, external: None };
        if !self.zones[zone].serving {
            ans.rcode = ResponseCode::ServFail;
            return Some(ans);
        }
        let Some(e) = self.names.get(qname) else {
            ans.rcode = ResponseCode::NXDomain;
            ans.soa = soa;
            return Some(ans);
        };
        if qtype == RecordType::ANY {
            // RFC 8482 section 4.1: one RRset of the name (its CNAME, or its first type) answers ANY.
            ans.answers = match (e.chain.first(), e.records.first()) {
                (Some(_), _) => &e.chain[..1],
                (None, Some(first)) => e.rrset(first.record_type()),
                (None, None) => &[],
            };
            if ans.answers.is_empty() {
                ans.soa = soa;
            }
            return Some(ans);
        }
        if e.chain.is_empty() || qtype == RecordType::CNAME {
            ans.answers = e.rrset(qtype);
            if ans.answers.is_empty() {
                ans.soa = soa;
            }
            return Some(ans);
        }
        ans.answers = &e.chain;
        match &e.end {
            Some(ChainEnd::Local(target)) => {
                if let Some(t) = self.names.get(target) {
                    ans.chained = t.rrset(qtype);
                    if ans.chained.is_empty() {
                        ans.soa = Some(&self.zones[t.zone].soa);
                    }
                }
            }
            Some(ChainEnd::Missing(z)) => {
                ans.rcode = ResponseCode::NXDomain;
                ans.soa = Some(&self.zones[*z].soa);
            }
            Some(ChainEnd::External(name)) => ans.external = Some(name),
            Some(ChainEnd::Broken) | None => {}
        }
        Some(ans)
    }
}

impl ZoneSet {
    /// Answers from an RFC 6303 empty zone: SOA and NS at its apex, NODATA for other types there, NXDOMAIN below.
    fn empty_lookup(&self, qname: &LowerName, qtype: RecordType) -> Option<LocalAnswer<'_>> {
        if self.empty.is_empty() || qname.iter().next_back() != Some(&b"arpa"[..]) {
            return None;
        }
        let z = self.empty.iter().find(|z| z.origin.zone_of(qname))?;
        let mut ans =
            LocalAnswer { rcode: ResponseCode::NoError, answers: &[], chained: &[], soa: None, external: None };
        if *qname != z.origin {
            ans.rcode = ResponseCode::NXDomain;
        } else if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            ans.answers = std::slice::from_ref(&z.soa);
        } else if qtype == RecordType::NS {
            ans.answers = std::slice::from_ref(&z.ns);
        }
        if ans.answers.is_empty() {
            ans.soa = Some(&z.soa);
        }
        Some(ans)
    }
}

/// The RFC 6303 empty zones to serve beside `config`'s zones.
fn empty_zones(config: &[ZoneConfig], served_elsewhere: &[Name]) -> Vec<EmptyZone> {
    let nobody = Name::from_ascii("nobody.invalid.").unwrap_or_else(|_| Name::root());
    EMPTY_ZONES
        .iter()
        .filter_map(|z| Name::from_ascii(z).ok())
        .filter(|z| !config.iter().any(|c| c.origin.zone_of(z)))
        .filter(|z| !served_elsewhere.iter().any(|d| d.zone_of(z) || z.zone_of(d)))
        .map(|z| {
            let data = SOA::new(z.clone(), nobody.clone(), 1, 604_800, 86_400, 2_419_200, EMPTY_ZONE_TTL);
            EmptyZone {
                origin: LowerName::new(&z),
                soa: Record::from_rdata(z.clone(), EMPTY_ZONE_TTL, RData::SOA(data)),
                ns: Record::from_rdata(z.clone(), EMPTY_ZONE_TTL, RData::NS(NS(z))),
            }
        })
        .collect()
}

fn soa(origin: &Name, serial: u32, t: &SoaTimers) -> Record {
    let sub = |l: &str| sub(origin, l);
    let secs = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let data =
        SOA::new(sub("ns"), sub("hostmaster"), serial, secs(t.refresh), secs(t.retry), secs(t.expire), t.minimum);
    Record::from_rdata(origin.clone(), SOA_TTL, RData::SOA(data))
}

/// `label.origin` (the origin itself if that is not a name).
fn sub(origin: &Name, label: &str) -> Name {
    Name::from_ascii(label).and_then(|n| n.append_domain(origin)).unwrap_or_else(|_| origin.clone())
}

/// The SOA record `soa` with `mname` as its primary name server.
fn with_mname(mut soa: Record, mname: Name) -> Record {
    if let RData::SOA(data) = &mut soa.data {
        data.mname = mname;
    }
    soa
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(origin: &str, recs: &[(&str, &str, &str)]) -> ZoneConfig {
        let origin = Name::from_ascii(origin).unwrap();
        let records =
            recs.iter().map(|(n, k, v)| LocalRecord::parse(n, k, v, None, "", Some(&origin)).unwrap()).collect();
        ZoneConfig { origin, records, soa: SoaTimers::default(), ns: NsServer::default() }
    }

    fn q(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn set() -> ZoneSet {
        let lab = zone(
            "lab.home.arpa.",
            &[
                ("nas", "A", "10.0.0.10"),
                ("nas", "AAAA", "2001:db8::10"),
                ("www", "CNAME", "nas"),
                ("alias", "CNAME", "www"),
                ("ext", "CNAME", "example.com."),
                ("dangling", "CNAME", "nothing"),
                ("_http._tcp", "SRV", "10 5 8080 nas"),
                ("@", "MX", "10 nas"),
                ("t", "TXT", "hello"),
            ],
        );
        let rev = zone("10.in-addr.arpa.", &[]);
        let (set, warnings) = ZoneSet::build(&[lab, rev], &[], 7, &[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        set
    }

    #[test]
    fn answers_nxdomain_nodata_and_chains() {
        let s = set();
        let a = s.lookup(&q("NAS.lab.home.arpa."), RecordType::A).unwrap();
        assert_eq!((a.rcode, a.answers.len(), a.soa.is_none()), (ResponseCode::NoError, 1, true));

        let nodata = s.lookup(&q("nas.lab.home.arpa."), RecordType::MX).unwrap();
        assert_eq!((nodata.rcode, nodata.answers.len()), (ResponseCode::NoError, 0));
        assert!(nodata.soa.is_some());

        let nx = s.lookup(&q("nope.lab.home.arpa."), RecordType::A).unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert!(nx.soa.is_some());

        let ent = s.lookup(&q("_tcp.lab.home.arpa."), RecordType::A).unwrap();
        assert_eq!((ent.rcode, ent.answers.len()), (ResponseCode::NoError, 0), "empty non-terminal is NODATA");

        let chain = s.lookup(&q("alias.lab.home.arpa."), RecordType::AAAA).unwrap();
        assert_eq!(chain.answers.len(), 2, "alias → www → nas");
        assert_eq!(chain.chained.len(), 1);
        let only_cname = s.lookup(&q("www.lab.home.arpa."), RecordType::CNAME).unwrap();
        assert_eq!((only_cname.answers.len(), only_cname.chained.len()), (1, 0));

        let ext = s.lookup(&q("ext.lab.home.arpa."), RecordType::A).unwrap();
        assert_eq!(ext.external.map(|n| n.to_ascii()), Some("example.com.".to_string()));
        let dangling = s.lookup(&q("dangling.lab.home.arpa."), RecordType::A).unwrap();
        assert_eq!((dangling.rcode, dangling.answers.len()), (ResponseCode::NXDomain, 1));

        assert!(s.lookup(&q("example.com."), RecordType::A).is_none());
        let soa = s.lookup(&q("lab.home.arpa."), RecordType::SOA).unwrap();
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(s.lookup(&q("lab.home.arpa."), RecordType::NS).unwrap().answers.len(), 1);
        assert_eq!(s.lookup(&q("lab.home.arpa."), RecordType::MX).unwrap().answers.len(), 1);
        assert_eq!((s.zone_count(), s.record_count()), (2, 9));
        let sums: Vec<(String, u32)> = s.summaries().iter().map(|z| (z.origin.to_ascii(), z.serial)).collect();
        assert_eq!(sums.len(), 2);
        assert!(sums.iter().all(|(_, serial)| *serial == 7), "{sums:?}");
        let total: u64 = s.summaries().iter().map(|z| z.records).sum();
        assert!(total > 9, "served records include the synthesized SOA, NS and PTRs: {total}");
    }

    #[test]
    fn any_gets_one_rrset_of_the_name() {
        let s = set();
        let types = |n: &str| {
            let a = s.lookup(&q(n), RecordType::ANY).unwrap();
            (a.rcode, a.answers.iter().map(|r| r.record_type()).collect::<Vec<_>>(), a.soa.is_some())
        };
        // nas has A and AAAA: one of them, whole.
        assert_eq!(types("nas.lab.home.arpa."), (ResponseCode::NoError, vec![RecordType::A], false));
        assert_eq!(types("alias.lab.home.arpa."), (ResponseCode::NoError, vec![RecordType::CNAME], false));
        assert_eq!(types("_tcp.lab.home.arpa."), (ResponseCode::NoError, vec![], true), "empty non-terminal");
        assert_eq!(types("nope.lab.home.arpa."), (ResponseCode::NXDomain, vec![], true));
        let apex = types("lab.home.arpa.");
        assert_eq!((apex.0, apex.1.len()), (ResponseCode::NoError, 1), "{apex:?}");
    }

    #[test]
    fn rfc6303_empty_zones_answer_private_reverse_names_unless_covered() {
        let s = set();
        let ask = |s: &ZoneSet, n: &str, t: RecordType| {
            s.lookup(&q(n), t)
                .map(|a| (a.rcode, a.answers.iter().map(|r| r.record_type()).collect::<Vec<_>>(), a.soa.is_some()))
        };
        let nx = Some((ResponseCode::NXDomain, vec![], true));
        assert_eq!(ask(&s, "5.1.168.192.in-addr.arpa.", RecordType::PTR), nx);
        assert_eq!(ask(&s, "1.0.20.172.in-addr.arpa.", RecordType::PTR), nx);
        assert_eq!(ask(&s, "B.8.E.F.ip6.arpa.", RecordType::PTR), nx, "case does not matter");
        assert_eq!(
            ask(&s, "168.192.in-addr.arpa.", RecordType::SOA),
            Some((ResponseCode::NoError, vec![RecordType::SOA], false))
        );
        assert_eq!(
            ask(&s, "168.192.in-addr.arpa.", RecordType::NS),
            Some((ResponseCode::NoError, vec![RecordType::NS], false))
        );
        assert_eq!(ask(&s, "168.192.in-addr.arpa.", RecordType::A), Some((ResponseCode::NoError, vec![], true)));
        // Public space and names outside .arpa: not ours.
        assert_eq!(ask(&s, "8.8.8.8.in-addr.arpa.", RecordType::PTR), None);
        assert_eq!(ask(&s, "1.0.32.172.in-addr.arpa.", RecordType::PTR), None, "172.32/12 is public");
        // The configured 10.in-addr.arpa answers its own names (synthesized PTRs), not an empty zone.
        assert_eq!(ask(&s, "10.0.0.10.in-addr.arpa.", RecordType::PTR).map(|a| a.1), Some(vec![RecordType::PTR]));
        // A conditionally forwarded domain above, at or below an empty zone keeps it from being served.
        for elsewhere in ["in-addr.arpa.", "168.192.in-addr.arpa.", "1.168.192.in-addr.arpa."] {
            let (s, _) = ZoneSet::build(&[], &[], 1, &[Name::from_ascii(elsewhere).unwrap()]);
            assert_eq!(ask(&s, "5.1.168.192.in-addr.arpa.", RecordType::PTR), None, "{elsewhere}");
        }
        let (s, _) = ZoneSet::build(&[], &[], 1, &[Name::from_ascii("1.168.192.in-addr.arpa.").unwrap()]);
        assert_eq!(ask(&s, "1.0.20.172.in-addr.arpa.", RecordType::PTR), nx, "other empty zones stay");
        assert_eq!(s.zone_count(), 0, "empty zones are not counted as configured zones");
    }

    #[test]
    fn reverse_ptr_is_synthesized_in_reverse_zones() {
        let s = set();
        let ptr = s.lookup(&q("10.0.0.10.in-addr.arpa."), RecordType::PTR).unwrap();
        assert_eq!(ptr.answers.len(), 1);
        assert_eq!(&ptr.answers[0].data, &RData::PTR(PTR(Name::from_ascii("nas.lab.home.arpa.").unwrap())));
        // No configured reverse zone for the v6 address: no PTR. 2001:db8::/32 is documentation space, so its RFC
        // 6303 empty zone says NXDOMAIN; a public address is not answered locally at all.
        let v6 = reverse_name("2001:db8::10".parse().unwrap());
        let doc = s.lookup(&LowerName::new(&v6), RecordType::PTR).unwrap();
        assert_eq!((doc.rcode, doc.answers.len()), (ResponseCode::NXDomain, 0));
        let public = reverse_name("2a00:1450::10".parse().unwrap());
        assert!(s.lookup(&LowerName::new(&public), RecordType::PTR).is_none());
    }

    #[test]
    fn dynamic_records_merge_and_conflicts_are_skipped() {
        let lab = zone("lab.home.arpa.", &[("nas", "A", "10.0.0.10")]);
        let origin = lab.origin.clone();
        let d = |n: &str, k: &str, v: &str| LocalRecord::parse(n, k, v, None, "x", Some(&origin)).unwrap();
        let dynamic = vec![
            d("photos", "A", "10.0.0.20"),
            d("nas", "CNAME", "photos"),
            d("nas", "A", "10.0.0.10"),
            d("x.other.", "A", "10.0.0.1"),
        ];
        let (s, warnings) = ZoneSet::build(&[lab], &dynamic, 1, &[]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("conflicts with its A record"), "{warnings:?}");
        assert!(warnings[1].contains("not in any zone"), "{warnings:?}");
        assert_eq!(s.lookup(&q("photos.lab.home.arpa."), RecordType::A).unwrap().answers.len(), 1);
        assert_eq!(s.lookup(&q("nas.lab.home.arpa."), RecordType::A).unwrap().answers.len(), 1);
        assert_eq!(s.record_count(), 2);
    }

    #[test]
    fn secondary_copies_are_served_as_transferred_until_they_stop_serving() {
        use hickory_proto::rr::rdata::A;
        let origin = Name::from_ascii("sec.home.arpa.").unwrap();
        let soa_rec = soa(&origin, 42, &SoaTimers { refresh: 5, retry: 2, expire: 30, minimum: 60 });
        let a = Record::from_rdata(Name::from_ascii("x.sec.home.arpa.").unwrap(), 300, RData::A(A::new(10, 0, 0, 9)));
        let copy = std::sync::Arc::new(vec![soa_rec, a]);
        let sec = |serving| SecondaryZone { origin: origin.clone(), records: copy.clone(), serving };
        let local = zone("home.arpa.", &[("y", "A", "10.0.0.8")]);
        let origin2 = origin.clone();
        let dynamic = vec![LocalRecord::parse("z.sec.home.arpa.", "A", "10.0.0.7", None, "o", Some(&origin2)).unwrap()];
        let (s, warnings) =
            ZoneSet::build_with_secondaries(std::slice::from_ref(&local), &dynamic, 1, &[], &[sec(true)]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("is in secondary zone sec.home.arpa."), "{warnings:?}");
        let x = s.lookup(&q("x.sec.home.arpa."), RecordType::A).unwrap();
        assert_eq!((x.rcode, x.answers.len()), (ResponseCode::NoError, 1));
        let soa = s.lookup(&q("sec.home.arpa."), RecordType::SOA).unwrap();
        assert!(matches!(&soa.answers[0].data, RData::SOA(d) if d.serial == 42 && d.expire == 30));
        assert_eq!(s.lookup(&q("sec.home.arpa."), RecordType::NS).unwrap().answers.len(), 0, "nothing synthesized");
        assert_eq!(s.lookup(&q("z.sec.home.arpa."), RecordType::A).unwrap().rcode, ResponseCode::NXDomain);
        assert_eq!(s.lookup(&q("y.home.arpa."), RecordType::A).unwrap().answers.len(), 1);
        assert_eq!(s.summaries().len(), 1, "secondary zones are reported by the secondary module");
        for stopped in
            [sec(false), SecondaryZone { origin: origin.clone(), records: Default::default(), serving: true }]
        {
            let (s, _) = ZoneSet::build_with_secondaries(std::slice::from_ref(&local), &[], 1, &[], &[stopped]);
            let x = s.lookup(&q("x.sec.home.arpa."), RecordType::A).unwrap();
            assert_eq!((x.rcode, x.answers.len()), (ResponseCode::ServFail, 0));
            assert_eq!(s.lookup(&q("sec.home.arpa."), RecordType::SOA).unwrap().rcode, ResponseCode::ServFail);
        }
    }

    #[test]
    fn nested_zones_use_the_most_specific() {
        let outer = zone("home.arpa.", &[("a", "A", "10.0.0.1")]);
        let inner = zone("lab.home.arpa.", &[("b", "A", "10.0.0.2")]);
        let (s, _) = ZoneSet::build(&[outer, inner], &[], 1, &[]);
        assert_eq!(s.zone_of(&Name::from_ascii("b.lab.home.arpa.").unwrap()).unwrap().to_ascii(), "lab.home.arpa.");
        assert_eq!(s.zone_of(&Name::from_ascii("a.home.arpa.").unwrap()).unwrap().to_ascii(), "home.arpa.");
        assert_eq!(s.lookup(&q("lab.home.arpa."), RecordType::SOA).unwrap().answers.len(), 1);
    }

    #[test]
    fn the_ns_target_has_its_addresses_unless_the_zone_has_records_there() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut own = zone("lab.home.arpa.", &[]);
        own.ns.addresses = vec![ip("10.0.0.2"), ip("fd00::2")];
        let mut named = zone("b.test.", &[("dns1", "A", "10.0.0.9")]);
        named.ns = NsServer { name: Some(Name::from_ascii("dns1.b.test.").unwrap()), addresses: vec![ip("10.0.0.53")] };
        let mut outside = zone("c.test.", &[]);
        outside.ns.name = Some(Name::from_ascii("ns1.example.").unwrap());
        let (s, warnings) = ZoneSet::build(&[own, named, outside], &[], 1, &[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let data = |name: &str, t| -> Vec<String> {
            s.lookup(&q(name), t).map(|a| a.answers.iter().map(|r| r.data.to_string()).collect()).unwrap_or_default()
        };
        assert_eq!(data("lab.home.arpa.", RecordType::NS), vec!["ns.lab.home.arpa."]);
        assert_eq!(data("ns.lab.home.arpa.", RecordType::A), vec!["10.0.0.2"]);
        assert_eq!(data("ns.lab.home.arpa.", RecordType::AAAA), vec!["fd00::2"]);
        // A configured name: the NS and the SOA MNAME name it; the zone's own A record wins over the addresses.
        assert_eq!(data("b.test.", RecordType::NS), vec!["dns1.b.test."]);
        assert!(
            data("b.test.", RecordType::SOA)[0].starts_with("dns1.b.test. "),
            "{:?}",
            data("b.test.", RecordType::SOA)
        );
        assert_eq!(data("dns1.b.test.", RecordType::A), vec!["10.0.0.9"]);
        // Outside the zone: the NS only (its own zone serves its addresses).
        assert_eq!(data("c.test.", RecordType::NS), vec!["ns1.example."]);
        assert_eq!(s.record_count(), 1, "synthesized records are not counted");
    }
}
