//! The config keys of the guard: `[dns] allow_clients` and `[dns.rrl]` (raw serde, unknown keys refused), validated
//! into a [`Policy`] with errors naming the key.
//! Knows the file format of these keys; must not know the rest of the config or how the policy is applied.

use std::path::Path;
use std::time::Duration;

use agent_core::config::ConfigError;
use serde::Deserialize;

use super::allow::PrefixList;
use super::rrl::{self, RrlConfig};
use super::Policy;

/// `[dns.rrl]` as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRrl {
    responses_per_second: Option<u32>,
    #[serde(default, deserialize_with = "agent_core::duration::deserialize_option")]
    window: Option<Duration>,
    slip: Option<u32>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
    exempt: Option<Vec<String>>,
}

/// Validates `allow_clients` (absent: the default list) and `[dns.rrl]` (absent: the defaults).
pub(crate) fn validate(
    path: &Path,
    allow_clients: Option<Vec<String>>,
    rrl: Option<RawRrl>,
) -> Result<Policy, ConfigError> {
    let invalid = |(key, message): (String, String)| ConfigError::invalid(path, key, message);
    let allow = match allow_clients {
        None => PrefixList::default_allow(),
        Some(items) => PrefixList::parse("dns.allow_clients", &items, false).map_err(invalid)?,
    };
    let raw = rrl.unwrap_or_default();
    let d = RrlConfig::default();
    let rate = raw.responses_per_second.unwrap_or(d.responses_per_second);
    if rate > rrl::MAX_RESPONSES_PER_SECOND {
        return Err(invalid((
            "dns.rrl.responses_per_second".into(),
            format!("at most {} (0 turns rate limiting off)", rrl::MAX_RESPONSES_PER_SECOND),
        )));
    }
    let window = raw.window.unwrap_or(d.window);
    if window < Duration::from_secs(1) || window > rrl::MAX_WINDOW {
        return Err(invalid(("dns.rrl.window".into(), "must be from 1s to 1h".into())));
    }
    let slip = raw.slip.unwrap_or(d.slip);
    if slip > 10 {
        return Err(invalid(("dns.rrl.slip".into(), "must be from 0 (never) to 10".into())));
    }
    let ipv4_prefix = raw.ipv4_prefix.unwrap_or(d.ipv4_prefix);
    if !(8..=32).contains(&ipv4_prefix) {
        return Err(invalid(("dns.rrl.ipv4_prefix".into(), "must be from 8 to 32".into())));
    }
    let ipv6_prefix = raw.ipv6_prefix.unwrap_or(d.ipv6_prefix);
    if !(16..=128).contains(&ipv6_prefix) {
        return Err(invalid(("dns.rrl.ipv6_prefix".into(), "must be from 16 to 128".into())));
    }
    let exempt = match raw.exempt {
        None => d.exempt,
        Some(items) => PrefixList::parse("dns.rrl.exempt", &items, true).map_err(invalid)?,
    };
    Ok(Policy { allow, rrl: RrlConfig { responses_per_second: rate, window, slip, ipv4_prefix, ipv6_prefix, exempt } })
}

impl Default for Policy {
    fn default() -> Self {
        Policy { allow: PrefixList::default_allow(), rrl: RrlConfig::default() }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::config::Config;

    const BASE: &str = "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n\
                        key = \"a.key\"\n[dns]\nlisten = [\"127.0.0.1\"]\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(std::path::Path::new("/etc/strata/dns.toml"), &format!("{BASE}{text}")).map_err(|e| e.to_string())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("").unwrap();
        let g = &c.dns.guard;
        assert!(g.allow.contains(ip("192.168.1.2")) && !g.allow.contains(ip("198.18.0.2")));
        assert_eq!(
            (g.rrl.responses_per_second, g.rrl.window.as_secs(), g.rrl.slip, g.rrl.ipv4_prefix, g.rrl.ipv6_prefix),
            (100, 15, 2, 24, 56)
        );
        assert!(g.rrl.exempt.contains(ip("127.0.0.1")) && !g.rrl.exempt.contains(ip("10.0.0.1")));
        assert_eq!(c.dns.guard, Config::parse(std::path::Path::new("x"), BASE).unwrap().dns.guard);
        assert_eq!(
            Config::parse(std::path::Path::new("x"), &BASE[..BASE.find("[dns]").unwrap()]).unwrap().dns.guard,
            *g
        );

        let c = parse(
            "allow_clients = [\"0.0.0.0/0\", \"::/0\"]\n[dns.rrl]\nresponses_per_second = 0\nwindow = \"1min\"\n\
             slip = 0\nipv4_prefix = 32\nipv6_prefix = 64\nexempt = []\n",
        )
        .unwrap();
        let g = &c.dns.guard;
        assert!(g.allow.contains(ip("8.8.8.8")) && g.allow.contains(ip("2001:db8::1")));
        assert_eq!(
            (g.rrl.responses_per_second, g.rrl.window.as_secs(), g.rrl.slip, g.rrl.ipv4_prefix, g.rrl.ipv6_prefix),
            (0, 60, 0, 32, 64)
        );
        assert!(g.rrl.exempt.prefixes().is_empty());
        assert_eq!(g.rrl.describe(), "off");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "allow_clients = [\"10.0.0.0/8\", \"lan\"]\n",
                "key `dns.allow_clients[1]`: `lan` is not an address or prefix",
            ),
            ("allow_clients = [\"10.0.0.1/8\"]\n", "key `dns.allow_clients[0]`: `10.0.0.1/8` has host bits set"),
            ("allow_clients = []\n", "key `dns.allow_clients`: must name at least one prefix"),
            ("[dns.rrl]\nexempt = [\"::1/200\"]\n", "key `dns.rrl.exempt[0]`"),
            ("[dns.rrl]\nwindow = \"2h\"\n", "key `dns.rrl.window`: must be from 1s to 1h"),
            ("[dns.rrl]\nwindow = \"10\"\n", "(key `window`)"),
            ("[dns.rrl]\nslip = 11\n", "key `dns.rrl.slip`"),
            ("[dns.rrl]\nipv4_prefix = 4\n", "key `dns.rrl.ipv4_prefix`: must be from 8 to 32"),
            ("[dns.rrl]\nipv6_prefix = 129\n", "key `dns.rrl.ipv6_prefix`: must be from 16 to 128"),
            ("[dns.rrl]\nresponses_per_second = 20000000\n", "key `dns.rrl.responses_per_second`: at most"),
            ("[dns.rrl]\nrate = 5\n", "unknown field `rate`"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?} for\n{text}");
        }
    }
}
