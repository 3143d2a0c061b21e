//! The in-memory, immutable snapshot of every local zone that the query path reads: names → records, synthesized
//! SOA/NS and reverse PTRs, CNAME chains resolved ahead of time. Rebuilt and swapped whole on any change.
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

/// One zone from the config: its origin (fully qualified, lowercase) and its records.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneConfig {
    pub origin: Name,
    pub records: Vec<LocalRecord>,
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
}

/// Every local zone, ready to answer. Immutable: build a new one and swap it.
#[derive(Debug, Default)]
pub(crate) struct ZoneSet {
    /// Longest origin first, so the first zone that contains a name is the most specific.
    zones: Vec<ZoneInfo>,
    names: HashMap<LowerName, Entry>,
    records: usize,
}

impl ZoneSet {
    /// Builds the zones from the config's zones and the dynamic records. Records that cannot be served (outside
    /// every zone, or a CNAME beside other data once merged with the config) are skipped; the reasons are returned.
    pub(crate) fn build(config: &[ZoneConfig], dynamic: &[LocalRecord], serial: u32) -> (ZoneSet, Vec<String>) {
        let mut warnings = Vec::new();
        let mut zones: Vec<ZoneInfo> = config
            .iter()
            .map(|z| ZoneInfo {
                origin: LowerName::new(&z.origin),
                name: z.origin.clone(),
                soa: soa(&z.origin, serial),
            })
            .collect();
        zones.sort_by_key(|z| std::cmp::Reverse(z.name.num_labels()));
        let mut set = ZoneSet { zones, names: HashMap::new(), records: 0 };

        // Accepted records, per name, in the order given: config first, then dynamic.
        let mut by_name: HashMap<LowerName, Vec<&LocalRecord>> = HashMap::new();
        let mut accepted: Vec<&LocalRecord> = Vec::new();
        for r in config.iter().flat_map(|z| z.records.iter()).chain(dynamic.iter()) {
            if set.zone_index(&LowerName::new(&r.name)).is_none() {
                warnings.push(format!("record {} {} is not in any zone: not served", r.name, r.kind));
                continue;
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
            if set.zone_index(&lower).is_none() {
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
        // SOA and NS at every apex.
        for z in &set.zones {
            records.push(z.soa.clone());
            let ns = Name::from_ascii("ns").and_then(|n| n.append_domain(&z.name)).unwrap_or_else(|_| z.name.clone());
            records.push(Record::from_rdata(z.name.clone(), SOA_TTL, RData::NS(NS(ns))));
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

    pub(crate) fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// Records served from the config and the dynamic store (synthesized SOA, NS and PTR not counted).
    pub(crate) fn record_count(&self) -> usize {
        self.records
    }

    /// Answers a question for a local name; `None` when the name is in no local zone. Never allocates.
    pub(crate) fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Option<LocalAnswer<'_>> {
        let zone = self.zone_index(qname)?;
        let soa = Some(&self.zones[zone].soa);
        let mut ans =
            LocalAnswer { rcode: ResponseCode::NoError, answers: &[], chained: &[], soa: None, external: None };
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

fn soa(origin: &Name, serial: u32) -> Record {
    let sub = |l: &str| Name::from_ascii(l).and_then(|n| n.append_domain(origin)).unwrap_or_else(|_| origin.clone());
    let data = SOA::new(sub("ns"), sub("hostmaster"), serial, 3600, 600, 86400, SOA_TTL);
    Record::from_rdata(origin.clone(), SOA_TTL, RData::SOA(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(origin: &str, recs: &[(&str, &str, &str)]) -> ZoneConfig {
        let origin = Name::from_ascii(origin).unwrap();
        let records =
            recs.iter().map(|(n, k, v)| LocalRecord::parse(n, k, v, None, "", Some(&origin)).unwrap()).collect();
        ZoneConfig { origin, records }
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
        let (set, warnings) = ZoneSet::build(&[lab, rev], &[], 7);
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
    fn reverse_ptr_is_synthesized_in_reverse_zones() {
        let s = set();
        let ptr = s.lookup(&q("10.0.0.10.in-addr.arpa."), RecordType::PTR).unwrap();
        assert_eq!(ptr.answers.len(), 1);
        assert_eq!(&ptr.answers[0].data, &RData::PTR(PTR(Name::from_ascii("nas.lab.home.arpa.").unwrap())));
        // No reverse zone for the v6 address: not answered locally.
        let v6 = reverse_name("2001:db8::10".parse().unwrap());
        assert!(s.lookup(&LowerName::new(&v6), RecordType::PTR).is_none());
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
        let (s, warnings) = ZoneSet::build(&[lab], &dynamic, 1);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("conflicts with its A record"), "{warnings:?}");
        assert!(warnings[1].contains("not in any zone"), "{warnings:?}");
        assert_eq!(s.lookup(&q("photos.lab.home.arpa."), RecordType::A).unwrap().answers.len(), 1);
        assert_eq!(s.lookup(&q("nas.lab.home.arpa."), RecordType::A).unwrap().answers.len(), 1);
        assert_eq!(s.record_count(), 2);
    }

    #[test]
    fn nested_zones_use_the_most_specific() {
        let outer = zone("home.arpa.", &[("a", "A", "10.0.0.1")]);
        let inner = zone("lab.home.arpa.", &[("b", "A", "10.0.0.2")]);
        let (s, _) = ZoneSet::build(&[outer, inner], &[], 1);
        assert_eq!(s.zone_of(&Name::from_ascii("b.lab.home.arpa.").unwrap()).unwrap().to_ascii(), "lab.home.arpa.");
        assert_eq!(s.zone_of(&Name::from_ascii("a.home.arpa.").unwrap()).unwrap().to_ascii(), "home.arpa.");
        assert_eq!(s.lookup(&q("lab.home.arpa."), RecordType::SOA).unwrap().answers.len(), 1);
    }
}
