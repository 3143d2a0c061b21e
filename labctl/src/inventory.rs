//! labctl's inventory file: the operator's mTLS files and the address of each agent.
//! Knows where the file is found and its format; must not know how agents are called.

use std::path::{Path, PathBuf};

use agent_core::config::{self, ConfigError};
use agent_core::identity::Role;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    agents: RawAgents,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgents {
    host: Option<String>,
    dns: Option<String>,
    /// A second dns-agent (a secondary of `dns`'s zones): `status` and `dns zones` include it; the other dns
    /// commands talk to `dns`.
    dns2: Option<String>,
    services: Option<String>,
}

/// One agent to talk to: its inventory key, the role its certificate must carry, and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddr {
    pub key: &'static str,
    pub role: Role,
    pub addr: String,
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub agents: Vec<AgentAddr>,
}

impl Inventory {
    /// `--config FILE`, else `$LABCTL_CONFIG`, else `~/.config/strata/labctl.toml`.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("LABCTL_CONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".config/strata/labctl.toml")
    }

    pub fn load(path: &Path) -> Result<Inventory, ConfigError> {
        let raw: Raw = config::load(path)?;
        let mut agents = Vec::new();
        for (key, role, addr) in [
            ("host", Role::HostAgent, raw.agents.host),
            ("dns", Role::DnsAgent, raw.agents.dns),
            ("dns2", Role::DnsAgent, raw.agents.dns2),
            ("services", Role::ServicesAgent, raw.agents.services),
        ] {
            if let Some(addr) = addr {
                if !addr.starts_with("https://") {
                    return Err(ConfigError::invalid(path, format!("agents.{key}"), "must be https://HOST:PORT"));
                }
                agents.push(AgentAddr { key, role, addr });
            }
        }
        Ok(Inventory {
            path: path.to_path_buf(),
            ca: config::resolve(path, &raw.ca),
            cert: config::resolve(path, &raw.cert),
            key: config::resolve(path, &raw.key),
            agents,
        })
    }

    pub fn agent(&self, key: &str) -> Option<&AgentAddr> {
        self.agents.iter().find(|a| a.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_inventory_parses_and_bad_ones_name_the_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/labctl.toml");
        let inv = Inventory::load(&path).unwrap();
        assert_eq!(inv.agents.len(), 3);
        assert_eq!(inv.agent("dns").unwrap().role, Role::DnsAgent);

        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("ca='a'\ncert='b'\nkey='c'\n[agents]\ndns='http://x:1'\n", "key `agents.dns`: must be https://HOST:PORT"),
            ("ca='a'\ncert='b'\nkey='c'\n[agents]\ndns2='x:1'\n", "key `agents.dns2`: must be https://HOST:PORT"),
            ("ca='a'\ncert='b'\nkey='c'\n[agents]\nweb='https://x:1'\n", ":5:1: unknown field `web`"),
            ("ca='a'\ncert='b'\n", "missing field `key`"),
        ];
        for (text, want) in cases {
            let p = dir.path().join("labctl.toml");
            std::fs::write(&p, text).unwrap();
            let err = Inventory::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }
}
