//! The `[[secondaries]]` config section (zones this agent copies from primaries by zone transfer): the raw serde
//! form and its validation (errors name the key). Must not know how transfers are made or when.

use std::net::SocketAddr;
use std::path::Path;

use agent_core::config::ConfigError;
use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::records::parse_name;
use crate::tsig::{parse_key_name, TsigKey, TsigKeys};

/// Port of a primary given as an address only.
pub(crate) const DEFAULT_PRIMARY_PORT: u16 = 53;
/// Most primaries one secondary zone may list.
const MAX_PRIMARIES: usize = 16;

/// One `[[secondaries]]` entry as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecondary {
    pub(crate) zone: String,
    pub(crate) primaries: Vec<String>,
    /// The name of a key in `[dns] tsig_keys`; transfers and NOTIFYs are signed with it when set.
    pub(crate) tsig: Option<String>,
}

/// A zone copied from its primaries, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryConfig {
    /// Fully qualified, lowercase.
    pub origin: Name,
    /// Tried in order; NOTIFY is accepted from their addresses only.
    pub primaries: Vec<SocketAddr>,
    /// Signs SOA queries and transfers (whose answers must be signed with it) and must sign NOTIFYs.
    pub(crate) tsig: Option<TsigKey>,
}

/// Validates every `[[secondaries]]` entry. `zones` are the origins of `[[zones]]` (a zone is one or the other);
/// `tsig_keys` the keys of `[dns] tsig_keys`.
pub(crate) fn validate(
    path: &Path,
    raw: Vec<RawSecondary>,
    zones: &[Name],
    tsig_keys: &TsigKeys,
) -> Result<Vec<SecondaryConfig>, ConfigError> {
    let mut out: Vec<SecondaryConfig> = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("secondaries[{i}]");
        let origin =
            parse_name(&s.zone, None).map_err(|m| ConfigError::invalid(path, format!("{key}.zone"), m))?.to_lowercase();
        if out.iter().any(|o| o.origin == origin) {
            return Err(ConfigError::invalid(path, format!("{key}.zone"), format!("zone {origin} is listed twice")));
        }
        if zones.iter().any(|z| z.to_lowercase() == origin) {
            return Err(ConfigError::invalid(
                path,
                format!("{key}.zone"),
                format!("zone {origin} is also a [[zones]] entry: a zone is primary or secondary, not both"),
            ));
        }
        if s.primaries.is_empty() {
            return Err(ConfigError::invalid(path, format!("{key}.primaries"), "must name at least one primary"));
        }
        if s.primaries.len() > MAX_PRIMARIES {
            return Err(ConfigError::invalid(
                path,
                format!("{key}.primaries"),
                format!("at most {MAX_PRIMARIES} primaries per zone"),
            ));
        }
        let mut primaries = Vec::new();
        for (pi, p) in s.primaries.iter().enumerate() {
            let pkey = format!("{key}.primaries[{pi}]");
            let addr = agent_core::config::parse_listen(p, DEFAULT_PRIMARY_PORT)
                .ok_or_else(|| ConfigError::invalid(path, &pkey, format!("`{p}` is not an IP address or IP:PORT")))?;
            if addr.port() == 0 || addr.ip().is_unspecified() {
                return Err(ConfigError::invalid(path, &pkey, format!("{addr} cannot be connected to")));
            }
            if primaries.contains(&addr) {
                return Err(ConfigError::invalid(path, &pkey, format!("{addr} is listed twice")));
            }
            primaries.push(addr);
        }
        let tsig = match &s.tsig {
            None => None,
            Some(k) => {
                let name = parse_key_name(k).map_err(|m| ConfigError::invalid(path, format!("{key}.tsig"), m))?;
                let found = tsig_keys.get(&name).cloned().ok_or_else(|| {
                    ConfigError::invalid(path, format!("{key}.tsig"), format!("no key \"{k}\" in dns.tsig_keys"))
                })?;
                Some(found)
            }
        };
        out.push(SecondaryConfig { origin, primaries, tsig });
    }
    Ok(out)
}
