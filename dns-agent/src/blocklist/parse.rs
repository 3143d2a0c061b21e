//! One line of a list: the plain, hosts and adblock formats, and the domain-name check. Pure and allocation-free;
//! must not know hashes, the set, files or the network.

use std::net::IpAddr;

/// One line of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A name to block, as written (ASCII, may contain uppercase; trailing dot removed; a leading `*.` removed).
    Domain(&'a str),
    /// Blank, comment, header, or a localhost-style entry.
    Skip,
    /// A line that cannot be used (bad name, unsupported adblock rule, non-sinkhole hosts address, …).
    Invalid,
}

/// Names that hosts files map to themselves; never blocked.
const LOCAL_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Classifies one line. Pure and allocation-free. Formats: plain `d`, hosts `0.0.0.0 d` / `127.0.0.1 d` / `:: d` /
/// `::1 d` (only unspecified or loopback addresses), adblock `||d^` with optional `$options` (applied as a plain
/// block). Comments (`#`, `!`, a `#` after whitespace) and `[Adblock …]` headers are skipped. A hosts line with
/// several names yields its first name here; the list builder uses all of them.
pub(crate) fn parse_line(line: &str) -> Line<'_> {
    parse_line_rest(line).0
}

/// Like [`parse_line`], and also returns the further names of a hosts line (whitespace separated, maybe empty).
pub(super) fn parse_line_rest(line: &str) -> (Line<'_>, &str) {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let line = strip_comment(line).trim();
    if line.is_empty() || line.starts_with('!') || (line.starts_with('[') && line.ends_with(']')) {
        return (Line::Skip, "");
    }
    if let Some(rule) = line.strip_prefix("||") {
        return (parse_adblock(rule), "");
    }
    let (first, after) = line.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((line, ""));
    let after = after.trim_start();
    if after.is_empty() {
        return (domain_line(first), "");
    }
    let (name, rest) = after.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((after, ""));
    let sinkhole = match first {
        "0.0.0.0" | "127.0.0.1" | "::" | "::1" => true,
        _ => match first.split('%').next().unwrap_or(first).parse::<IpAddr>() {
            Ok(ip) => ip.is_unspecified() || ip.is_loopback(),
            Err(_) => return (Line::Invalid, ""),
        },
    };
    let parsed = domain_line(name);
    if parsed != Line::Skip && !sinkhole {
        return (Line::Invalid, "");
    }
    (parsed, if sinkhole { rest.trim_start() } else { "" })
}

/// Drops a comment: `#` at the start or after whitespace. (`a##b` cosmetic rules keep their `#` and are invalid.)
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn parse_adblock(rule: &str) -> Line<'_> {
    let (name, tail) = match rule.find('^') {
        Some(i) => (&rule[..i], &rule[i + 1..]),
        None => match rule.find('$') {
            Some(i) => rule.split_at(i),
            None => (rule, ""),
        },
    };
    let tail_ok = tail.is_empty() || tail == "|" || tail.starts_with('$');
    if !tail_ok {
        return Line::Invalid;
    }
    domain_line(name)
}

pub(super) fn domain_line(name: &str) -> Line<'_> {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let bare = name.strip_suffix('.').unwrap_or(name);
    if may_be_local(bare.as_bytes()) && LOCAL_NAMES.iter().any(|l| l.eq_ignore_ascii_case(bare)) {
        return Line::Skip;
    }
    match check_name(name) {
        Some(n) => Line::Domain(n),
        None => Line::Invalid,
    }
}

const DIGIT: u8 = 2;
/// Bytes allowed in a label: 0 no, 1 letter / `-` / `_`, [`DIGIT`] a digit.
static NAME_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_alphabetic() || c == b'-' || c == b'_' {
            1
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Checks a domain name (LDH labels plus `_`, 1–63 bytes each, ≤ 253 in all, a non-numeric last label so that no
/// IPv4 address passes); strips one trailing dot. One pass over the bytes: this runs for every line of every list.
pub(super) fn check_name(name: &str) -> Option<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    valid_labels(name.as_bytes()).then_some(name)
}

/// The rules of [`check_name`] for a name without its trailing dot.
#[inline]
pub(super) fn valid_labels(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let mut label_len = 0usize;
    let mut label_numeric = true;
    for &c in name {
        if c == b'.' {
            if label_len == 0 {
                return false;
            }
            label_len = 0;
            label_numeric = true;
        } else {
            match NAME_BYTE[c as usize] {
                0 => return false,
                class => label_numeric &= class == DIGIT,
            }
            label_len += 1;
            if label_len > 63 {
                return false;
            }
        }
    }
    label_len > 0 && !label_numeric
}

/// Whether a name (without trailing dot) could be one of [`LOCAL_NAMES`]: a cheap test before comparing.
#[inline]
pub(super) fn may_be_local(bare: &[u8]) -> bool {
    bare.len() <= 21 && matches!(bare.first(), Some(b'l' | b'L' | b'b' | b'B' | b'i' | b'I' | b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_line_table() {
        use Line::*;
        let cases: &[(&str, Line<'_>)] = &[
            ("example.com", Domain("example.com")),
            ("  Ads.Example.COM.  ", Domain("Ads.Example.COM")),
            ("0.0.0.0 ads.example.com", Domain("ads.example.com")),
            ("127.0.0.1\tads.example.com", Domain("ads.example.com")),
            (":: ads.example.com", Domain("ads.example.com")),
            ("::1 ads.example.com", Domain("ads.example.com")),
            ("0.0.0.0 ads.example.com # tracker", Domain("ads.example.com")),
            ("ads.example.com # comment", Domain("ads.example.com")),
            ("0.0.0.0 a.example.com b.example.com", Domain("a.example.com")),
            ("||ads.example.com^", Domain("ads.example.com")),
            ("||ads.example.com^$third-party", Domain("ads.example.com")),
            ("||ads.example.com^|", Domain("ads.example.com")),
            ("||ads.example.com", Domain("ads.example.com")),
            ("*.ads.example.com", Domain("ads.example.com")),
            ("_dmarc.example.com", Domain("_dmarc.example.com")),
            ("\u{feff}bom.example.com", Domain("bom.example.com")),
            ("ads.example.com\r", Domain("ads.example.com")),
            ("", Skip),
            ("   ", Skip),
            ("# comment", Skip),
            ("! adblock comment", Skip),
            ("[Adblock Plus 2.0]", Skip),
            ("127.0.0.1 localhost", Skip),
            ("::1 ip6-localhost", Skip),
            ("0.0.0.0 0.0.0.0", Skip),
            ("255.255.255.255 broadcasthost", Skip),
            ("fe80::1%lo0 localhost", Skip),
            ("0.0.0.0 0", Invalid),
            ("0.0.0.0 x", Domain("x")),
            ("10.in-addr.arpa", Domain("10.in-addr.arpa")),
            ("192.168.1.1 router.example.com", Invalid),
            ("not a domain", Invalid),
            ("bad_char!.example.com", Invalid),
            ("a..b", Invalid),
            (".leading.example.com", Invalid),
            ("ads.*.example.com", Invalid),
            ("||ads.*.example.com^", Invalid),
            ("@@||good.example.com^", Invalid),
            ("||example.com^*/banner", Invalid),
            ("||example.com/ads", Invalid),
            ("example.com##.banner", Invalid),
            ("/ads[0-9]+/", Invalid),
            ("1.2.3.4", Invalid),
            ("<html>", Invalid),
            ("ünïcode.example", Invalid),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(line), *want, "line {line:?}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert_eq!(parse_line(&long_label), Invalid);
        let ok_label = format!("{}.example.com", "a".repeat(63));
        assert_eq!(parse_line(&ok_label), Domain(ok_label.as_str()));
        let long_name = format!("{}com", "abcdefghi.".repeat(25)); // 253 bytes
        assert_eq!(long_name.len(), 253);
        assert_eq!(parse_line(&long_name), Domain(long_name.as_str()));
        assert_eq!(parse_line(&format!("a{long_name}")), Invalid);
    }
}
