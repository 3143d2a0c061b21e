//! A zone's transfer policy from `[[zones]]`: who may transfer it (`transfer.allow`, `transfer.tsig`) and whom to
//! NOTIFY (`notify`), validated. Knows these keys' grammar; must not know sockets, TSIG wire rules or zone data.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::guard::allow::{canonical, Prefix};
use crate::tsig::{parse_key_name, TsigKeys};

/// Port of `notify` entries given as an address only.
pub(crate) const DEFAULT_NOTIFY_PORT: u16 = 53;
/// Entries one `allow` or `notify` list may hold.
const MAX_ENTRIES: usize = 64;

/// `transfer = { allow = [...], tsig = "KEY" }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransfer {
    #[serde(default)]
    allow: Vec<String>,
    tsig: Option<String>,
}

/// One zone's transfer policy, validated. A zone without one is never transferred and NOTIFYs no one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferPolicy {
    /// Peers allowed to transfer the zone (AXFR/IXFR over TCP).
    pub allow: Vec<Prefix>,
    /// The key transfers (and NOTIFYs) must be signed with, when set.
    pub tsig: Option<Name>,
    /// Secondaries to NOTIFY on every change.
    pub notify: Vec<SocketAddr>,
}

impl TransferPolicy {
    /// Whether `peer` may transfer the zone.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.allow.iter().any(|n| n.contains(peer))
    }
}

/// Validates a zone's `transfer` and `notify` keys; `key` is the zone's key (`zones[0]`). Errors are
/// `(key, message)`.
pub(crate) fn validate(
    key: &str,
    transfer: Option<RawTransfer>,
    notify: Vec<String>,
    keys: &TsigKeys,
) -> Result<Option<TransferPolicy>, (String, String)> {
    if transfer.is_none() && notify.is_empty() {
        return Ok(None);
    }
    let mut policy = TransferPolicy::default();
    if let Some(t) = transfer {
        if t.allow.len() > MAX_ENTRIES {
            return Err((format!("{key}.transfer.allow"), format!("more than {MAX_ENTRIES} entries")));
        }
        for (i, s) in t.allow.iter().enumerate() {
            let net = Prefix::parse(s).map_err(|m| (format!("{key}.transfer.allow[{i}]"), m))?;
            policy.allow.push(net);
        }
        if let Some(name) = t.tsig {
            let k = format!("{key}.transfer.tsig");
            let n = parse_key_name(&name).map_err(|m| (k.clone(), m))?;
            if keys.get(&n).is_none() {
                return Err((k, format!("no key \"{name}\" in dns.tsig_keys")));
            }
            policy.tsig = Some(n);
        }
    }
    if notify.len() > MAX_ENTRIES {
        return Err((format!("{key}.notify"), format!("more than {MAX_ENTRIES} entries")));
    }
    for (i, s) in notify.iter().enumerate() {
        let addr = agent_core::config::parse_listen(s, DEFAULT_NOTIFY_PORT)
            .ok_or_else(|| (format!("{key}.notify[{i}]"), format!("`{s}` is not an IP address or IP:PORT")))?;
        if policy.notify.contains(&addr) {
            return Err((format!("{key}.notify[{i}]"), format!("{addr} is listed twice")));
        }
        policy.notify.push(addr);
    }
    Ok(Some(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(allow: &[&str], tsig: Option<&str>) -> Option<RawTransfer> {
        Some(RawTransfer { allow: allow.iter().map(|s| s.to_string()).collect(), tsig: tsig.map(str::to_string) })
    }

    #[test]
    fn allow_matches_addresses_and_prefixes() {
        let p = validate(
            "zones[0]",
            raw(&["10.0.0.54", "fd00::/64", "192.168.1.0/24"], None),
            vec![],
            &TsigKeys::default(),
        )
        .unwrap()
        .unwrap();
        let cases = [
            ("10.0.0.54", true),
            ("10.0.0.55", false),
            ("fd00::1234", true),
            ("fd00:0:0:1::1", false),
            ("192.168.1.200", true),
            ("::ffff:10.0.0.54", true),
            ("127.0.0.1", false),
        ];
        for (addr, want) in cases {
            assert_eq!(p.allows(addr.parse().unwrap()), want, "{addr}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let keys = TsigKeys::default();
        let cases: Vec<(Option<RawTransfer>, Vec<&str>, &str)> = vec![
            (
                raw(&["10.0.0.1", "nope"], None),
                vec![],
                "zones[0].transfer.allow[1]: `nope` is not an address or prefix",
            ),
            (raw(&["10.0.0.0/33"], None), vec![], "zones[0].transfer.allow[0]"),
            (raw(&["192.168.1.7/24"], None), vec![], "zones[0].transfer.allow[0]: `192.168.1.7/24` has host bits set"),
            (raw(&[], Some("x")), vec![], "zones[0].transfer.tsig: no key \"x\" in dns.tsig_keys"),
            (None, vec!["10.0.0.1", "here"], "zones[0].notify[1]: `here` is not"),
            (None, vec!["10.0.0.1", "10.0.0.1:53"], "zones[0].notify[1]: 10.0.0.1:53 is listed twice"),
        ];
        for (t, notify, want) in cases {
            let (k, m) = validate("zones[0]", t, notify.into_iter().map(String::from).collect(), &keys).unwrap_err();
            assert!(format!("{k}: {m}").contains(want), "want {want:?} in {k}: {m}");
        }
        let p = validate("zones[0]", None, vec!["10.0.0.9".into()], &keys).unwrap().unwrap();
        assert_eq!(p.notify, vec!["10.0.0.9:53".parse().unwrap()]);
        assert!(validate("zones[0]", None, vec![], &keys).unwrap().is_none());
    }
}
