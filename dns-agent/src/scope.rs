//! What each services-agent may write: the `[services_agents.NAME]` config sections (names strictly under one
//! domain, a few record types) and the check of one record against them. Deny by default: a services-agent without
//! a section writes nothing. Pure: knows names and record kinds; must not know gRPC, SQLite or how records are served.

use std::collections::BTreeMap;
use std::path::Path;

use agent_core::config::ConfigError;
use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::records::{parse_name, Kind};
use crate::zones::ZoneConfig;

/// Record types a services-agent may write when its section names none.
pub(crate) const DEFAULT_TYPES: [Kind; 3] = [Kind::A, Kind::Aaaa, Kind::Cname];

/// Leftmost labels never given to a services-agent: clients look them up by themselves (proxy auto-discovery,
/// ISATAP tunnels, the loopback name), so whoever holds them can steer every client of the lab.
pub(crate) const RESERVED_LABELS: [&str; 3] = ["wpad", "isatap", "localhost"];

/// `[services_agents.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    /// Names strictly below this domain (never the domain itself).
    pub under: String,
    /// Record types; default A, AAAA, CNAME.
    pub types: Option<Vec<String>>,
}

/// One services-agent's scope, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub under: Name,
    pub types: Vec<Kind>,
}

/// Every services-agent's scope, by the NAME of its certificate (`spiffe://DOMAIN/services-agent/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub BTreeMap<String, Scope>);

impl Scopes {
    /// Checks each section: `under` is a name inside a configured zone, types are known. Errors name the key
    /// (`services_agents.NAME.under`).
    pub fn validate(
        raw: BTreeMap<String, RawScope>,
        zones: &[ZoneConfig],
        config_path: &Path,
    ) -> Result<Scopes, ConfigError> {
        let mut out = BTreeMap::new();
        for (agent, r) in raw {
            let key = format!("services_agents.{agent}");
            if agent.is_empty()
                || !agent.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::invalid(
                    config_path,
                    key,
                    format!("`{agent}` is not a certificate name (lowercase letters, digits, `-`, `_`)"),
                ));
            }
            let under =
                parse_name(&r.under, None).map_err(|m| ConfigError::invalid(config_path, format!("{key}.under"), m))?;
            if !zones.iter().any(|z| z.origin.zone_of(&under)) {
                return Err(ConfigError::invalid(
                    config_path,
                    format!("{key}.under"),
                    format!("{under} is not in any configured zone"),
                ));
            }
            let types = match r.types {
                None => DEFAULT_TYPES.to_vec(),
                Some(list) => {
                    let mut kinds = Vec::with_capacity(list.len());
                    for (i, t) in list.iter().enumerate() {
                        let k: Kind = t.parse().map_err(|e: crate::records::RecordError| {
                            ConfigError::invalid(config_path, format!("{key}.types[{i}]"), e.message)
                        })?;
                        if !kinds.contains(&k) {
                            kinds.push(k);
                        }
                    }
                    if kinds.is_empty() {
                        return Err(ConfigError::invalid(
                            config_path,
                            format!("{key}.types"),
                            "is empty: remove the section to let this services-agent write nothing",
                        ));
                    }
                    kinds
                }
            };
            out.insert(agent, Scope { under, types });
        }
        Ok(Scopes(out))
    }

    /// Whether services-agent `agent` may write a `kind` record at `name`; the refusal says why, naming the name.
    /// `zone_apexes` are the configured zones' names (never writable by a services-agent).
    pub fn check(&self, agent: &str, name: &Name, kind: Kind, zone_apexes: &[&Name]) -> Result<(), Refusal> {
        let Some(scope) = self.0.get(agent) else {
            return Err(Refusal::name(
                name,
                format!(
                    "cannot be written: services-agent {agent} has no [services_agents.{agent}] section in the \
                     dns-agent config, so it may write no record"
                ),
            ));
        };
        if zone_apexes.contains(&name) {
            return Err(Refusal::name(name, "is a zone apex: only an admin may write there".to_string()));
        }
        if !scope.under.zone_of(name) || &scope.under == name {
            return Err(Refusal::name(
                name,
                format!("is outside services-agent {agent}'s names (strictly under {})", scope.under),
            ));
        }
        if let Some(label) = name.iter().next() {
            let label = String::from_utf8_lossy(label).to_ascii_lowercase();
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(Refusal::name(
                    name,
                    format!("is reserved: clients look `{label}` up on their own, so only an admin may write it"),
                ));
            }
        }
        if let Some(label) = name.iter().find(|l| l.first() == Some(&b'_')) {
            let label = String::from_utf8_lossy(label);
            return Err(Refusal::name(
                name,
                format!(
                    "has the reserved label `{label}` (_acme-challenge, service labels): only an admin may write it"
                ),
            ));
        }
        if !scope.types.contains(&kind) {
            let allowed: Vec<&str> = scope.types.iter().map(|k| k.as_str()).collect();
            return Err(Refusal {
                field: "type",
                message: format!(
                    "{kind} at {name} is not allowed for services-agent {agent} (it may write {})",
                    allowed.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// Why a services-agent may not write a record: the request field it is about, and the reason naming the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `name` or `type`.
    pub field: &'static str,
    pub message: String,
}

impl Refusal {
    fn name(name: &Name, why: String) -> Self {
        Refusal { field: "name", message: format!("{name} {why}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones() -> Vec<ZoneConfig> {
        vec![ZoneConfig {
            origin: Name::from_ascii("lab.home.arpa.").unwrap(),
            records: Vec::new(),
            soa: Default::default(),
            ns: Default::default(),
        }]
    }

    fn scopes(text: &str) -> Result<Scopes, String> {
        #[derive(Deserialize)]
        struct File {
            services_agents: BTreeMap<String, RawScope>,
        }
        let path = Path::new("dns.toml");
        let f: File = agent_core::config::parse(path, text).map_err(|e| e.to_string())?;
        Scopes::validate(f.services_agents, &zones(), path).map_err(|e| e.to_string())
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn sections_validate_with_errors_naming_the_key() {
        let s = scopes("[services_agents.svc1]\nunder = \"apps.lab.home.arpa\"\n").unwrap();
        assert_eq!(s.0["svc1"], Scope { under: n("apps.lab.home.arpa."), types: DEFAULT_TYPES.to_vec() });
        let s = scopes("[services_agents.svc1]\nunder = \"lab.home.arpa\"\ntypes = [\"a\", \"TXT\", \"A\"]\n").unwrap();
        assert_eq!(s.0["svc1"].types, vec![Kind::A, Kind::Txt]);
        for (text, want) in [
            (
                "[services_agents.svc1]\nunder = \"example.com\"\n",
                "key `services_agents.svc1.under`: example.com. is not in any configured zone",
            ),
            ("[services_agents.svc1]\nunder = \"bad name\"\n", "key `services_agents.svc1.under`"),
            (
                "[services_agents.svc1]\nunder = \"lab.home.arpa\"\ntypes = [\"NAPTR\"]\n",
                "key `services_agents.svc1.types[0]`: unknown record type",
            ),
            (
                "[services_agents.svc1]\nunder = \"lab.home.arpa\"\ntypes = []\n",
                "key `services_agents.svc1.types`: is empty",
            ),
            ("[services_agents.Svc1]\nunder = \"lab.home.arpa\"\n", "key `services_agents.Svc1`"),
            ("[services_agents.svc1]\nunder = \"lab.home.arpa\"\ncolour = 1\n", "unknown field `colour`"),
        ] {
            let e = scopes(text).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
    }

    #[test]
    fn a_services_agent_writes_only_its_names_and_types() {
        let s = scopes(
            "[services_agents.svc1]\nunder = \"lab.home.arpa\"\n[services_agents.svc2]\nunder = \"two.lab.home.arpa\"\n",
        )
        .unwrap();
        let apex = n("lab.home.arpa.");
        let apexes = [&apex];
        assert_eq!(s.check("svc1", &n("photos.lab.home.arpa."), Kind::A, &apexes), Ok(()));
        assert_eq!(s.check("svc2", &n("app.two.lab.home.arpa."), Kind::Cname, &apexes), Ok(()));
        let refused = |agent: &str, name: &str, kind: Kind| s.check(agent, &n(name), kind, &apexes).unwrap_err();
        let cases = [
            (
                refused("svc2", "photos.lab.home.arpa.", Kind::A),
                "name",
                "photos.lab.home.arpa. is outside services-agent svc2's names (strictly under two.lab.home.arpa.)",
            ),
            (refused("svc2", "two.lab.home.arpa.", Kind::A), "name", "two.lab.home.arpa. is outside"),
            (refused("svc1", "lab.home.arpa.", Kind::A), "name", "lab.home.arpa. is a zone apex"),
            (
                refused("svc1", "wpad.lab.home.arpa.", Kind::A),
                "name",
                "wpad.lab.home.arpa. is reserved: clients look `wpad` up",
            ),
            (refused("svc1", "WPAD.lab.home.arpa.", Kind::A), "name", "WPAD.lab.home.arpa. is reserved"),
            (
                refused("svc1", "_acme-challenge.x.lab.home.arpa.", Kind::Cname),
                "name",
                "_acme-challenge.x.lab.home.arpa. has the reserved label `_acme-challenge`",
            ),
            (
                refused("svc1", "x.lab.home.arpa.", Kind::Txt),
                "type",
                "TXT at x.lab.home.arpa. is not allowed for services-agent svc1 (it may write A, AAAA, CNAME)",
            ),
            (refused("svc1", "x.lab.home.arpa.", Kind::Ptr), "type", "PTR at x.lab.home.arpa."),
            (
                refused("svc3", "x.lab.home.arpa.", Kind::A),
                "name",
                "x.lab.home.arpa. cannot be written: services-agent svc3 has no [services_agents.svc3] section",
            ),
        ];
        for (r, field, want) in cases {
            assert_eq!(r.field, field, "{r:?}");
            assert!(r.message.contains(want), "want {want:?} in {:?}", r.message);
        }
    }
}
