//! Address prefixes (`10.0.0.0/8`, `fd00::/8`, a bare address) and the client allow list of `[dns] allow_clients`:
//! parsing with errors naming the key, the default list, and a match that is a scan of a few masks with no
//! allocation (IPv4-mapped IPv6 addresses count as IPv4).
//! Knows addresses and config keys; must not know DNS messages, sockets or what is done with a refused client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The clients served when `[dns] allow_clients` is absent: loopback, the private ranges (RFC 1918), shared
/// address space (RFC 6598, CGNAT and Tailscale), link-local, and unique local IPv6 (RFC 4193). Nothing routable on
/// the Internet: the agent is not an open resolver unless the config says so.
pub(crate) const DEFAULT_ALLOW: [&str; 9] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
];

/// Most prefixes one list may hold (the match is a linear scan).
pub(crate) const MAX_PREFIXES: usize = 256;

/// An IPv4 or IPv6 network: the address with its host bits zero and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

/// An address as the lists see it: IPv4-mapped IPv6 (`::ffff:a.b.c.d`, how a dual-stack socket shows an IPv4
/// client) is the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Prefix {
    /// `A.B.C.D/N`, `X:Y::/N` or a bare address (a /32 or /128). Host bits must be zero (`10.0.0.1/8` is refused:
    /// it is likely a typo for either a host or a network).
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or prefix (write e.g. 10.0.0.0/8, fd00::/8, 10.0.0.5)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be a number from 0 to {max}"))?,
        };
        let p = match ip {
            IpAddr::V4(v4) => Prefix::V4 { net: u32::from(v4) & mask4(len), len },
            IpAddr::V6(v6) => Prefix::V6 { net: u128::from(v6) & mask6(len), len },
        };
        if p.network() != ip {
            return Err(format!("`{text}` has host bits set: write {}/{len}", p.network()));
        }
        Ok(p)
    }

    pub fn network(&self) -> IpAddr {
        match *self {
            Prefix::V4 { net, .. } => IpAddr::V4(Ipv4Addr::from(net)),
            Prefix::V6 { net, .. } => IpAddr::V6(Ipv6Addr::from(net)),
        }
    }

    /// Whether `ip` (already [`canonical`]) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Prefix::V4 { net, len }, IpAddr::V4(a)) => u32::from(a) & mask4(len) == net,
            (Prefix::V6 { net, len }, IpAddr::V6(a)) => u128::from(a) & mask6(len) == net,
            _ => false,
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = match self {
            Prefix::V4 { len, .. } | Prefix::V6 { len, .. } => len,
        };
        write!(f, "{}/{len}", self.network())
    }
}

/// A list of prefixes an address is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixList(Vec<Prefix>);

impl PrefixList {
    /// Parses `items` (config key `key`); an error names the entry, e.g. `dns.allow_clients[2]`. With `allow_empty`
    /// false an empty list is refused.
    pub fn parse(key: &str, items: &[String], allow_empty: bool) -> Result<PrefixList, (String, String)> {
        if items.is_empty() && !allow_empty {
            return Err((
                key.to_string(),
                "must name at least one prefix (to serve every client write [\"0.0.0.0/0\", \"::/0\"])".to_string(),
            ));
        }
        if items.len() > MAX_PREFIXES {
            return Err((key.to_string(), format!("at most {MAX_PREFIXES} prefixes")));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, s) in items.iter().enumerate() {
            let p = Prefix::parse(s).map_err(|m| (format!("{key}[{i}]"), m))?;
            if out.contains(&p) {
                return Err((format!("{key}[{i}]"), format!("{p} is listed twice")));
            }
            out.push(p);
        }
        Ok(PrefixList(out))
    }

    /// Whether any prefix holds `ip` (IPv4-mapped IPv6 counts as IPv4). No allocation.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|p| p.contains(ip))
    }

    pub fn prefixes(&self) -> &[Prefix] {
        &self.0
    }

    /// The default allow list ([`DEFAULT_ALLOW`]).
    pub fn default_allow() -> PrefixList {
        PrefixList(DEFAULT_ALLOW.iter().filter_map(|s| Prefix::parse(s).ok()).collect())
    }

    /// Loopback only (the default of `[dns.rrl] exempt`).
    pub fn loopback() -> PrefixList {
        PrefixList(DEFAULT_ALLOW[..2].iter().filter_map(|s| Prefix::parse(s).ok()).collect())
    }

    /// Written back as the config would (`10.0.0.0/8, ::1/128`).
    pub fn describe(&self) -> String {
        self.0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_or_say_why() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.5", "10.0.0.5/32"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
            (" 192.168.1.0 / 24 ", "192.168.1.0/24"),
        ];
        for (text, want) in ok {
            assert_eq!(Prefix::parse(text).map(|p| p.to_string()), Ok(want.to_string()), "{text}");
        }
        let bad = [
            ("10.0.0.1/8", "host bits set: write 10.0.0.0/8"),
            ("10.0.0.0/33", "from 0 to 32"),
            ("fd00::/129", "from 0 to 128"),
            ("fd00::/x", "from 0 to 128"),
            ("lan", "not an address or prefix"),
            ("10.0.0/8", "not an address or prefix"),
            ("", "not an address or prefix"),
        ];
        for (text, want) in bad {
            let e = Prefix::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn matching() {
        let list = PrefixList::parse("k", &["10.0.0.0/8".into(), "192.168.1.128/25".into(), "fd00::/8".into()], false)
            .unwrap();
        let cases = [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.168.1.128", true),
            ("192.168.1.255", true),
            ("192.168.1.127", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::ffff:10.9.9.9", true),
            ("::ffff:11.9.9.9", false),
            // An IPv4-compatible (not mapped) address is IPv6.
            ("::10.9.9.9", false),
        ];
        for (a, want) in cases {
            assert_eq!(list.contains(ip(a)), want, "{a}");
        }
        let all = PrefixList::parse("k", &["0.0.0.0/0".into(), "::/0".into()], false).unwrap();
        for a in ["1.1.1.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(all.contains(ip(a)), "{a}");
        }
    }

    #[test]
    fn the_default_list_serves_the_lan_and_nobody_else() {
        let d = PrefixList::default_allow();
        assert_eq!(d.prefixes().len(), DEFAULT_ALLOW.len(), "every default entry parses");
        let cases = [
            ("127.0.0.1", true),
            ("127.53.1.1", true),
            ("::1", true),
            ("10.213.4.2", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.178.20", true),
            ("192.169.0.1", false),
            ("100.64.0.1", true),
            ("100.127.255.254", true),
            ("100.128.0.1", false),
            ("169.254.10.10", true),
            ("fe80::1", true),
            ("fd00::10", true),
            ("fc00::1", true),
            ("::ffff:192.168.1.2", true),
            ("198.18.0.2", false),
            ("8.8.8.8", false),
            ("192.0.2.1", false),
            ("2001:db8::1", false),
            ("::ffff:8.8.8.8", false),
            ("::", false),
        ];
        for (a, want) in cases {
            assert_eq!(d.contains(ip(a)), want, "{a}");
        }
        assert!(PrefixList::loopback().contains(ip("127.0.0.2")) && !PrefixList::loopback().contains(ip("10.0.0.1")));
    }

    #[test]
    fn list_errors_name_the_entry() {
        let e = PrefixList::parse("dns.allow_clients", &["10.0.0.0/8".into(), "nas".into()], false).unwrap_err();
        assert_eq!(e.0, "dns.allow_clients[1]");
        let e = PrefixList::parse("dns.allow_clients", &["10.0.0.0/8".into(), "10.0.0.0/8".into()], false).unwrap_err();
        assert_eq!(e, ("dns.allow_clients[1]".into(), "10.0.0.0/8 is listed twice".into()));
        let e = PrefixList::parse("dns.allow_clients", &[], false).unwrap_err();
        assert!(e.0 == "dns.allow_clients" && e.1.contains("0.0.0.0/0"), "{e:?}");
        assert!(PrefixList::parse("dns.rrl.exempt", &[], true).unwrap().prefixes().is_empty());
    }
}
