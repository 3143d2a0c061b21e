//! The dns-agent config file: raw serde structs (unknown keys refused) validated into `Config`.
//! Knows the file format; must not know how the agent acts on it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use agent_core::config::{self, CommonConfig, ConfigError, GrpcSection, MetricsSection};
use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::blocklist::{BlocklistConfig, RawBlocklist};
use crate::forward::{ForwardConfig, RawForward};
use crate::records::{check_cname_exclusive, parse_name, Field, LocalRecord};
use crate::scope::{RawScope, Scopes};
use crate::secondary::{RawSecondary, SecondaryConfig};
use crate::zones::{SoaTimers, ZoneConfig};

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9442;
/// Port of `[dns] listen` entries given as an address only.
pub const DEFAULT_DNS_PORT: u16 = 53;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    grpc: GrpcSection,
    metrics: Option<MetricsSection>,
    dns: Option<RawDns>,
    #[serde(default)]
    zones: Vec<RawZone>,
    forward: Option<RawForward>,
    blocklist: Option<RawBlocklist>,
    #[serde(default)]
    services_agents: std::collections::BTreeMap<String, RawScope>,
    #[serde(default)]
    secondaries: Vec<RawSecondary>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    listen: Vec<String>,
    #[serde(default)]
    query_log: bool,
    #[serde(default)]
    tls_listen: Vec<String>,
    #[serde(default)]
    https_listen: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// Absent: loopback and the private ranges (`guard::allow::DEFAULT_ALLOW`).
    allow_clients: Option<Vec<String>>,
    rrl: Option<crate::guard::config::RawRrl>,
    tsig_keys: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: String,
    #[serde(default)]
    records: Vec<RawRecord>,
    transfer: Option<crate::xfr::policy::RawTransfer>,
    #[serde(default)]
    notify: Vec<String>,
    soa: Option<RawSoa>,
    ns: Option<RawNs>,
}

/// `[[zones]] soa = { refresh = "1h", retry = "10m", expire = "1d", minimum = "60s" }`: the synthesized SOA's
/// timers (durations in the one grammar of `agent_core::duration`); each key optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSoa {
    #[serde(default, deserialize_with = "agent_core::duration::deserialize_option")]
    refresh: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "agent_core::duration::deserialize_option")]
    retry: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "agent_core::duration::deserialize_option")]
    expire: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "agent_core::duration::deserialize_option")]
    minimum: Option<std::time::Duration>,
}

/// `[[zones]] ns = { name = "dns1.lab.home.arpa.", addresses = ["10.0.0.53"] }`: the zone's name server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNs {
    name: Option<String>,
    addresses: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    value: String,
    ttl: Option<u32>,
}

/// Port of `[dns] tls_listen` entries given as an address only (DNS over TLS).
pub const DEFAULT_DOT_PORT: u16 = 853;
/// Port of `[dns] https_listen` entries given as an address only (DNS over HTTPS).
pub const DEFAULT_DOH_PORT: u16 = 443;

/// `[dns]`, validated. Without a `[dns]` section the agent serves no DNS (gRPC and metrics only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSection {
    pub listen: Vec<SocketAddr>,
    pub query_log: bool,
    /// DNS over TLS (RFC 7858) listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// DNS over HTTPS (RFC 8484, path `/dns-query`) listeners.
    pub https_listen: Vec<SocketAddr>,
    /// Certificate chain and key (PEM) for DoT and DoH; set whenever either has a listener.
    pub tls: Option<TlsFiles>,
    /// Who may ask (`allow_clients`) and the UDP response rate limit (`[dns.rrl]`).
    pub guard: crate::guard::Policy,
    /// The TSIG keys file (`tsig_keys`, private) and its keys.
    pub tsig_keys: Option<PathBuf>,
    pub tsig: crate::tsig::TsigKeys,
}

/// PEM files of the certificate DoT and DoH clients see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (reload reads it again).
    pub path: PathBuf,
    pub common: CommonConfig,
    pub dns: DnsSection,
    pub zones: Vec<ZoneConfig>,
    /// Transfer policy (`transfer`, `notify`) of each zone that has one.
    pub transfers: std::collections::BTreeMap<Name, crate::xfr::policy::TransferPolicy>,
    pub forward: Option<ForwardConfig>,
    pub blocklist: Option<BlocklistConfig>,
    /// What each services-agent may write (`[services_agents.NAME]`); none may write without its section.
    pub services_agents: Scopes,
    /// Zones copied from primaries by zone transfer (`[[secondaries]]`).
    pub secondaries: Vec<SecondaryConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = config::parse(path, text)?;
        let common = CommonConfig::validate(path, raw.state_dir, raw.grpc, raw.metrics, DEFAULT_METRICS_PORT)?;
        let dns = match raw.dns {
            None => DnsSection::default(),
            Some(d) => validate_dns(path, d)?,
        };
        let ns: Vec<Option<RawNs>> = raw.zones.iter_mut().map(|z| z.ns.take()).collect();
        let (mut zones, transfers) = validate_zones(path, raw.zones, &dns.tsig)?;
        validate_ns(path, &mut zones, ns, &dns.listen)?;
        let forward = raw.forward.map(|f| ForwardConfig::validate(f, path)).transpose()?;
        let blocklist = raw.blocklist.map(|b| BlocklistConfig::validate(b, path)).transpose()?;
        let services_agents = Scopes::validate(raw.services_agents, &zones, path)?;
        let origins: Vec<Name> = zones.iter().map(|z| z.origin.clone()).collect();
        let secondaries = crate::secondary::validate(path, raw.secondaries, &origins, &dns.tsig)?;
        Ok(Config {
            path: path.to_path_buf(),
            common,
            dns,
            zones,
            transfers,
            forward,
            blocklist,
            services_agents,
            secondaries,
        })
    }
}

fn listen_addrs(path: &Path, key: &str, raw: &[String], default_port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let addr = s
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, default_port)))
            .ok_or_else(|| {
                ConfigError::invalid(path, format!("{key}[{i}]"), format!("`{s}` is not an IP address or IP:PORT"))
            })?;
        if out.contains(&addr) {
            return Err(ConfigError::invalid(path, format!("{key}[{i}]"), format!("{addr} is listed twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

fn validate_dns(path: &Path, raw: RawDns) -> Result<DnsSection, ConfigError> {
    let listen = listen_addrs(path, "dns.listen", &raw.listen, DEFAULT_DNS_PORT)?;
    if listen.is_empty() {
        return Err(ConfigError::invalid(path, "dns.listen", "must name at least one address (e.g. \"0.0.0.0:53\")"));
    }
    let tls_listen = listen_addrs(path, "dns.tls_listen", &raw.tls_listen, DEFAULT_DOT_PORT)?;
    let https_listen = listen_addrs(path, "dns.https_listen", &raw.https_listen, DEFAULT_DOH_PORT)?;
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsFiles { cert: config::resolve(path, &cert), key: config::resolve(path, &key) })
        }
        (None, None) => None,
        (Some(_), None) => return Err(ConfigError::invalid(path, "dns.tls_key", "is required with dns.tls_cert")),
        (None, Some(_)) => return Err(ConfigError::invalid(path, "dns.tls_cert", "is required with dns.tls_key")),
    };
    if tls.is_none() && !(tls_listen.is_empty() && https_listen.is_empty()) {
        return Err(ConfigError::invalid(
            path,
            "dns.tls_cert",
            "is required for dns.tls_listen and dns.https_listen (with dns.tls_key)",
        ));
    }
    let guard = crate::guard::config::validate(path, raw.allow_clients, raw.rrl)?;
    let tsig_keys = raw.tsig_keys.map(|p| config::resolve(path, &p));
    let tsig = match &tsig_keys {
        Some(p) => crate::tsig::TsigKeys::load(p)?,
        None => crate::tsig::TsigKeys::default(),
    };
    Ok(DnsSection { listen, query_log: raw.query_log, tls_listen, https_listen, tls, guard, tsig_keys, tsig })
}

type Transfers = std::collections::BTreeMap<Name, crate::xfr::policy::TransferPolicy>;

fn validate_zones(
    path: &Path,
    raw: Vec<RawZone>,
    keys: &crate::tsig::TsigKeys,
) -> Result<(Vec<ZoneConfig>, Transfers), ConfigError> {
    let mut zones: Vec<ZoneConfig> = Vec::new();
    let mut transfers = Transfers::new();
    for (zi, z) in raw.into_iter().enumerate() {
        let key = format!("zones[{zi}]");
        let origin = parse_name(&z.name, None).map_err(|m| ConfigError::invalid(path, format!("{key}.name"), m))?;
        if zones.iter().any(|o| o.origin == origin) {
            return Err(ConfigError::invalid(path, format!("{key}.name"), format!("zone {origin} is listed twice")));
        }
        if let Some(policy) = crate::xfr::policy::validate(&key, z.transfer, z.notify, keys)
            .map_err(|(k, m)| ConfigError::invalid(path, k, m))?
        {
            transfers.insert(origin.clone(), policy);
        }
        let mut records: Vec<LocalRecord> = Vec::new();
        // Name → its records' indexes, so that the checks below look at the records of one name, not all of them
        // (linear per record, not quadratic per zone).
        let mut by_name: std::collections::HashMap<Name, Vec<usize>> = std::collections::HashMap::new();
        for (ri, r) in z.records.into_iter().enumerate() {
            let rkey = format!("{key}.records[{ri}]");
            let field_key = |f: Field| format!("{rkey}.{}", f.as_str());
            let rec = LocalRecord::parse(&r.name, &r.kind, &r.value, r.ttl, "", Some(&origin))
                .map_err(|e| ConfigError::invalid(path, field_key(e.field), e.message))?;
            if !origin.zone_of(&rec.name) {
                return Err(ConfigError::invalid(
                    path,
                    field_key(Field::Name),
                    format!("{} is not in zone {origin}", rec.name),
                ));
            }
            let same_name = by_name.entry(rec.name.to_lowercase()).or_default();
            check_cname_exclusive(&rec, same_name.iter().map(|&i| &records[i]))
                .map_err(|e| ConfigError::invalid(path, field_key(e.field), e.message))?;
            if rec.kind == crate::records::Kind::Cname && same_name.iter().any(|&i| records[i].same_key(&rec)) {
                return Err(ConfigError::invalid(
                    path,
                    field_key(Field::Type),
                    format!("{} has a second CNAME record", rec.name),
                ));
            }
            same_name.push(records.len());
            records.push(rec);
        }
        let soa = match z.soa {
            None => SoaTimers::default(),
            Some(raw) => validate_soa(path, &format!("{key}.soa"), raw)?,
        };
        zones.push(ZoneConfig { origin, records, soa, ns: Default::default() });
    }
    Ok((zones, transfers))
}

/// A zone's SOA timers: each one whole seconds that fit the SOA field; refresh, retry and expire not zero.
fn validate_soa(path: &Path, key: &str, raw: RawSoa) -> Result<SoaTimers, ConfigError> {
    let d = SoaTimers::default();
    let secs = |name: &str, v: Option<std::time::Duration>, default: u32, min: u64| {
        let Some(v) = v else { return Ok(default) };
        let s = v.as_secs();
        if s < min {
            return Err(ConfigError::invalid(path, format!("{key}.{name}"), format!("must be at least {min}s")));
        }
        u32::try_from(s)
            .ok()
            .filter(|s| *s <= i32::MAX as u32)
            .ok_or_else(|| ConfigError::invalid(path, format!("{key}.{name}"), "is longer than the SOA field holds"))
    };
    let t = SoaTimers {
        refresh: secs("refresh", raw.refresh, d.refresh, 1)?,
        retry: secs("retry", raw.retry, d.retry, 1)?,
        expire: secs("expire", raw.expire, d.expire, 1)?,
        minimum: secs("minimum", raw.minimum, d.minimum, 0)?,
    };
    if t.expire < t.refresh {
        return Err(ConfigError::invalid(path, format!("{key}.expire"), "must not be shorter than refresh"));
    }
    Ok(t)
}

/// Each zone's name server (`zones[i].ns`): the name (relative to the zone without a trailing dot; default
/// `ns.ZONE`) and its addresses (default: the specific addresses of `[dns] listen`, none for 0.0.0.0 or ::).
/// Addresses are served only for a name in the zone.
fn validate_ns(
    path: &Path,
    zones: &mut [ZoneConfig],
    raw: Vec<Option<RawNs>>,
    listen: &[SocketAddr],
) -> Result<(), ConfigError> {
    let own: Vec<IpAddr> = listen.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()).collect();
    for (zi, (zone, raw)) in zones.iter_mut().zip(raw).enumerate() {
        let key = format!("zones[{zi}].ns");
        let raw = raw.unwrap_or(RawNs { name: None, addresses: None });
        let name = raw
            .name
            .map(|n| parse_name(&n, Some(&zone.origin)))
            .transpose()
            .map_err(|m| ConfigError::invalid(path, format!("{key}.name"), m))?;
        let in_zone = name.as_ref().is_none_or(|n| zone.origin.zone_of(n));
        let addresses = match raw.addresses {
            None if in_zone => own.clone(),
            None => Vec::new(),
            Some(list) => {
                if let Some(n) = name.as_ref().filter(|_| !in_zone && !list.is_empty()) {
                    let why = format!("{n} is not in zone {}: its own zone serves its addresses", zone.origin);
                    return Err(ConfigError::invalid(path, format!("{key}.addresses"), why));
                }
                let mut out = Vec::new();
                for (i, a) in list.iter().enumerate() {
                    let ip = a.trim().parse::<IpAddr>().map_err(|_| {
                        ConfigError::invalid(
                            path,
                            format!("{key}.addresses[{i}]"),
                            format!("`{a}` is not an IP address"),
                        )
                    })?;
                    if ip.is_unspecified() {
                        let why = format!("{ip} is not an address a client can reach");
                        return Err(ConfigError::invalid(path, format!("{key}.addresses[{i}]"), why));
                    }
                    out.push(ip);
                }
                out
            }
        };
        zone.ns = crate::zones::NsServer { name, addresses };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dns-agent.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.common.grpc.listen.port(), 7442);
        assert_eq!(cfg.common.metrics_listen.port(), 9442);
        assert_eq!(cfg.dns.listen, vec!["0.0.0.0:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(cfg.zones.len(), 2);
        assert!(cfg.zones[0].records.len() >= 7, "every record type is shown");
        assert!(cfg.forward.is_some() && cfg.blocklist.is_some());
        assert!(cfg.services_agents.0.contains_key("services1"));
        assert_eq!(cfg.zones[0].soa, SoaTimers { refresh: 3600, retry: 600, expire: 604_800, minimum: 60 });
        assert_eq!(cfg.secondaries.len(), 1);
        assert_eq!(cfg.secondaries[0].primaries, ["10.0.0.54:53".parse::<SocketAddr>().unwrap()]);
    }

    const BASE: &str =
        "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";

    fn load(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dns.toml");
        std::fs::write(&p, format!("{BASE}{text}")).unwrap();
        Config::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn secondaries_and_soa_timers_validate() {
        let c = load(
            "[[zones]]\nname = \"lab.home.arpa\"\nsoa = { refresh = \"2s\", retry = \"1s\", expire = \"10s\" }\n\
             [[secondaries]]\nzone = \"Other.Home.Arpa\"\nprimaries = [\"10.0.0.53\", \"[fd00::53]:5353\"]\n",
        )
        .unwrap();
        assert_eq!(c.zones[0].soa, SoaTimers { refresh: 2, retry: 1, expire: 10, minimum: 60 });
        assert_eq!(c.secondaries[0].origin.to_ascii(), "other.home.arpa.");
        let p: Vec<String> = c.secondaries[0].primaries.iter().map(|p| p.to_string()).collect();
        assert_eq!(p, ["10.0.0.53:53", "[fd00::53]:5353"]);
        assert_eq!(c.secondaries[0].tsig, None);
        assert_eq!(load("").unwrap().zones.len(), 0);
    }

    #[test]
    fn sections_validate() {
        let c = load("[dns]\nlisten = [\"127.0.0.1\", \"[::1]:5353\"]\nquery_log = true\n").unwrap();
        assert_eq!(c.dns.listen[0].port(), 53);
        assert_eq!(c.dns.listen[1].port(), 5353);
        assert!(c.dns.query_log);
        let c = load("[dns]\nlisten = [\"::1\"]\ntls_listen = [\"127.0.0.1\"]\nhttps_listen = [\"127.0.0.1\"]\ntls_cert = \"c.pem\"\ntls_key = \"c.key\"\n").unwrap();
        assert_eq!((c.dns.tls_listen[0].port(), c.dns.https_listen[0].port()), (853, 443));
        assert!(c.dns.tls.as_ref().is_some_and(|t| t.cert.is_absolute() && t.key.ends_with("c.key")));
        let c = load("").unwrap();
        assert!(c.dns.listen.is_empty() && c.zones.is_empty() && c.forward.is_none() && c.blocklist.is_none());
    }

    #[test]
    fn each_zone_names_its_name_server_and_its_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let zones = "[[zones]]\nname = \"a.lab\"\n\
                     [[zones]]\nname = \"b.lab\"\nns = { name = \"dns1\", addresses = [\"10.0.0.53\", \"fd00::53\"] }\n\
                     [[zones]]\nname = \"c.lab\"\nns = { name = \"ns1.example.\" }\n\
                     [[zones]]\nname = \"d.lab\"\nns = { addresses = [] }\n";
        let c = load(&format!("[dns]\nlisten = [\"0.0.0.0:53\", \"10.0.0.2:53\", \"[::]:53\"]\n{zones}")).unwrap();
        let ns: Vec<_> = c.zones.iter().map(|z| (z.ns.target(&z.origin).to_ascii(), z.ns.addresses.clone())).collect();
        assert_eq!(
            ns,
            vec![
                ("ns.a.lab.".to_string(), vec![ip("10.0.0.2")]),
                ("dns1.b.lab.".to_string(), vec![ip("10.0.0.53"), ip("fd00::53")]),
                ("ns1.example.".to_string(), vec![]),
                ("ns.d.lab.".to_string(), vec![]),
            ]
        );
        let wildcard = load("[dns]\nlisten = [\"0.0.0.0\"]\n[[zones]]\nname = \"a.lab\"\n").unwrap();
        assert!(wildcard.zones[0].ns.addresses.is_empty(), "no address is known for a wildcard listener");
    }

    /// The duration key of this config (`blocklist.refresh`) takes the shared grammar tables of
    /// `agent_core::duration` like every other agent's keys.
    #[test]
    fn every_duration_key_takes_the_one_grammar() {
        let text = |v: &str| format!("[blocklist]\nsources = [\"/l.txt\"]\nrefresh = {v:?}\n");
        for (v, secs) in agent_core::duration::ACCEPTED {
            let c = load(&text(v)).unwrap_or_else(|e| panic!("refresh = {v:?}: {e}"));
            assert_eq!(c.blocklist.unwrap().refresh, std::time::Duration::from_secs(*secs), "{v:?}");
        }
        for v in agent_core::duration::REFUSED {
            let e = load(&text(v)).unwrap_err();
            assert!(e.contains("(key `refresh`)"), "refresh = {v:?}: {e}");
        }
        assert!(load(&text("2y")).unwrap_err().contains("key `blocklist.refresh`: `104w2d12h` is longer than 1y"));
    }

    #[test]
    fn errors_name_the_key() {
        let z = |records: &str| format!("[[zones]]\nname = \"lab.home.arpa\"\nrecords = [{records}]\n");
        let sec = |body: &str| format!("[[secondaries]]\n{body}\n");
        let cases = [
            ("[dns]\nlisten = [\"here\"]\n".to_string(), "key `dns.listen[0]`: `here` is not an IP address"),
            ("[dns]\nlisten = []\n".to_string(), "key `dns.listen`: must name at least one"),
            ("[dns]\nlisten = [\"127.0.0.1:53\", \"127.0.0.1:53\"]\n".to_string(), "key `dns.listen[1]`: 127.0.0.1:53 is listed twice"),
            ("[dns]\nlisten = [\"127.0.0.1:53\"]\ncolour = 1\n".to_string(), "unknown field `colour`"),
            ("[dns]\nlisten = [\"127.0.0.1\"]\ntls_listen = [\"127.0.0.1\"]\n".to_string(), "key `dns.tls_cert`: is required for"),
            ("[dns]\nlisten = [\"127.0.0.1\"]\ntls_cert = \"c.pem\"\n".to_string(), "key `dns.tls_key`: is required with"),
            ("[dns]\nlisten = [\"127.0.0.1\"]\nhttps_listen = [\"x\"]\n".to_string(), "key `dns.https_listen[0]`: `x` is not"),
            ("[[zones]]\nname = \"bad zone\"\n".to_string(), "key `zones[0].name`"),
            (format!("{}{}", z(""), z("")), "key `zones[1].name`: zone lab.home.arpa. is listed twice"),
            (z("{ name = \"a\", type = \"A\", value = \"::1\" }"), "key `zones[0].records[0].value`: ::1 is an IPv6 address"),
            (
                z("{ name = \"a\", type = \"A\", value = \"10.0.0.1\" }, { name = \"a\", type = \"CNAME\", value = \"b\" }"),
                "key `zones[0].records[1].type`: CNAME at a.lab.home.arpa. is not allowed beside its A record",
            ),
            (
                z("{ name = \"a\", type = \"CNAME\", value = \"b\" }, { name = \"a\", type = \"TXT\", value = \"x\" }"),
                "key `zones[0].records[1].type`: TXT at a.lab.home.arpa. is not allowed beside its CNAME",
            ),
            (
                z("{ name = \"a\", type = \"CNAME\", value = \"b\" }, { name = \"a\", type = \"CNAME\", value = \"c\" }"),
                "key `zones[0].records[1].type`: a.lab.home.arpa. has a second CNAME",
            ),
            (
                z("{ name = \"b\", type = \"A\", value = \"10.0.0.2\" }, { name = \"A\", type = \"AAAA\", value = \"::1\" }, \
                   { name = \"a\", type = \"CNAME\", value = \"b\" }"),
                "key `zones[0].records[2].type`: CNAME at a.lab.home.arpa. is not allowed beside its AAAA record",
            ),
            (z("{ name = \"a.example.com.\", type = \"A\", value = \"10.0.0.1\" }"), "key `zones[0].records[0].name`: a.example.com. is not in zone"),
            (z("{ name = \"a\", type = \"HINFO\", value = \"x\" }"), "key `zones[0].records[0].type`: unknown record type"),
            (z("{ name = \"a\", type = \"A\", value = \"10.0.0.1\", ttl = 0 }"), "key `zones[0].records[0].ttl`"),
            (z("{ name = \"a\", type = \"A\", value = \"10.0.0.1\", colour = 1 }"), "unknown field `colour`"),
            (format!("{}soa = {{ expire = \"0s\" }}\n", z("")), "(key `expire`)"),
            (format!("{}soa = {{ refresh = \"2d\" }}\n", z("")), "key `zones[0].soa.expire`: must not be shorter"),
            (format!("{}soa = {{ colour = \"2d\" }}\n", z("")), "unknown field `colour`"),
            (sec("zone = \"bad zone\"\nprimaries = [\"10.0.0.53\"]"), "key `secondaries[0].zone`"),
            (sec("zone = \"s.arpa\"\nprimaries = []"), "key `secondaries[0].primaries`: must name at least one"),
            (
                sec("zone = \"s.arpa\"\nprimaries = [\"10.0.0.53\", \"here\"]"),
                "key `secondaries[0].primaries[1]`: `here` is not an IP address",
            ),
            (
                sec("zone = \"s.arpa\"\nprimaries = [\"10.0.0.53\", \"10.0.0.53:53\"]"),
                "key `secondaries[0].primaries[1]`: 10.0.0.53:53 is listed twice",
            ),
            (sec("zone = \"s.arpa\"\nprimaries = [\"0.0.0.0\"]"), "key `secondaries[0].primaries[0]`: 0.0.0.0:53 cannot"),
            (
                sec("zone = \"s.arpa\"\nprimaries = [\"10.0.0.53\"]\ntsig = \"nokey\""),
                "key `secondaries[0].tsig`: no key \"nokey\" in dns.tsig_keys",
            ),
            (
                format!("{}{}", sec("zone = \"s.arpa\"\nprimaries = [\"10.0.0.53\"]"), sec("zone = \"S.arpa.\"\nprimaries = [\"10.0.0.54\"]")),
                "key `secondaries[1].zone`: zone s.arpa. is listed twice",
            ),
            (
                format!("{}{}", z(""), sec("zone = \"lab.home.arpa\"\nprimaries = [\"10.0.0.53\"]")),
                "key `secondaries[0].zone`: zone lab.home.arpa. is also a [[zones]] entry",
            ),
            (sec("zone = \"s.arpa\"\nprimaries = [\"10.0.0.53\"]\ncolour = 1"), "unknown field `colour`"),
            (format!("{}ns = {{ name = \"bad name\" }}\n", z("")), "key `zones[0].ns.name`"),
            (format!("{}ns = {{ addresses = [\"x\"] }}\n", z("")), "key `zones[0].ns.addresses[0]`: `x` is not an IP address"),
            (format!("{}ns = {{ addresses = [\"0.0.0.0\"] }}\n", z("")), "key `zones[0].ns.addresses[0]`: 0.0.0.0 is not"),
            (
                format!("{}ns = {{ name = \"dns.example.\", addresses = [\"10.0.0.53\"] }}\n", z("")),
                "key `zones[0].ns.addresses`: dns.example. is not in zone lab.home.arpa.",
            ),
            (format!("{}ns = {{ colour = 1 }}\n", z("")), "unknown field `colour`"),
            (format!("{}transfer = {{ allow = [\"x\"] }}\n", z("")), "key `zones[0].transfer.allow[0]`: `x` is not an address or prefix"),
            (format!("{}transfer = {{ tsig = \"k\" }}\n", z("")), "key `zones[0].transfer.tsig`: no key \"k\" in dns.tsig_keys"),
            (format!("{}notify = [\"10.0.0.1:99999\"]\n", z("")), "key `zones[0].notify[0]`"),
            ("[dns]\nlisten = [\"127.0.0.1\"]\ntsig_keys = \"/nonexistent/tsig.toml\"\n".to_string(), "/nonexistent/tsig.toml: key `tsig keys file`: cannot read it"),
        ];
        for (text, want) in cases {
            let e = load(&text).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?} for\n{text}");
        }
    }
}
