//! The `[blocklist]` config section: the raw serde form, its validation (errors name the key), the sources and how
//! they are shown without credentials. Must not know list formats (beyond checking an `allow` name), the set, how
//! sources are read or when refreshes happen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::config::ConfigError;
use serde::Deserialize;

use super::hash::hash_bytes;
use super::parse::check_name;

/// Refresh interval when `refresh` is not set.
pub(crate) const DEFAULT_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Longest refresh interval accepted: `1y` as the duration grammar counts it (365.25 days).
pub(crate) const MAX_REFRESH: Duration = Duration::from_secs(31_557_600);

/// `[blocklist]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlocklist {
    pub sources: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    /// A duration (`agent_core::duration`: "30min", "24h", "7d"); default 24h.
    #[serde(default, deserialize_with = "agent_core::duration::deserialize_option")]
    pub refresh: Option<Duration>,
    /// "zero" (default) | "nxdomain".
    pub response: Option<String>,
}

/// `[blocklist]` validated.
#[derive(Debug, Clone)]
pub struct BlocklistConfig {
    pub sources: Vec<Source>,
    /// Lowercase, no trailing dot.
    pub allow: Vec<String>,
    pub refresh: Duration,
    pub response: BlockResponse,
}

/// Where a list comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Resolved relative to the config file.
    File(PathBuf),
    Url(String),
}

/// How a blocked name is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockResponse {
    /// A 0.0.0.0 / AAAA ::.
    Zero,
    /// NXDOMAIN.
    NxDomain,
}

impl Source {
    /// How the source is shown in status and logs: the path, or the URL without any `user:password@`.
    pub fn display(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) => redact_userinfo(u),
        }
    }

    /// Stable name of the cached copy: 16 hex digits of a hash of the source as configured.
    pub(super) fn cache_file_name(&self) -> String {
        let key = match self {
            Source::File(p) => format!("file:{}", p.display()),
            Source::Url(u) => format!("url:{u}"),
        };
        format!("{:016x}.txt", hash_bytes(key.as_bytes()))
    }
}

pub(super) fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl BlocklistConfig {
    /// Validates `[blocklist]`; errors name the key (`blocklist.sources[1]`, `blocklist.refresh`, …).
    pub fn validate(raw: RawBlocklist, config_path: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, msg: String| ConfigError::invalid(config_path, key, msg);
        if raw.sources.is_empty() {
            return Err(invalid("blocklist.sources".into(), "must list at least one file or URL".into()));
        }
        let mut sources = Vec::with_capacity(raw.sources.len());
        for (i, s) in raw.sources.iter().enumerate() {
            let key = format!("blocklist.sources[{i}]");
            let source = parse_source(s, config_path).map_err(|m| invalid(key.clone(), m))?;
            if sources.contains(&source) {
                return Err(invalid(key, format!("source `{s}` is listed twice")));
            }
            sources.push(source);
        }
        let mut allow = Vec::with_capacity(raw.allow.len());
        for (i, a) in raw.allow.iter().enumerate() {
            let name = a.trim();
            let name = name.strip_prefix("*.").unwrap_or(name);
            match check_name(name) {
                Some(n) => allow.push(n.to_ascii_lowercase()),
                None => return Err(invalid(format!("blocklist.allow[{i}]"), format!("`{a}` is not a domain name"))),
            }
        }
        let refresh = match raw.refresh {
            None => DEFAULT_REFRESH,
            Some(d) if d > MAX_REFRESH => {
                let d = agent_core::duration::format(d);
                return Err(invalid("blocklist.refresh".into(), format!("`{d}` is longer than 1y")));
            }
            Some(d) => d,
        };
        let response = match raw.response.as_deref() {
            None | Some("zero") => BlockResponse::Zero,
            Some("nxdomain") => BlockResponse::NxDomain,
            Some(other) => {
                return Err(invalid("blocklist.response".into(), format!("`{other}` is not \"zero\" or \"nxdomain\"")))
            }
        };
        Ok(BlocklistConfig { sources, allow, refresh, response })
    }
}

fn parse_source(s: &str, config_path: &Path) -> Result<Source, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("source must not be empty".into());
    }
    let lower = t.get(..8).unwrap_or(t).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let rest = &t[t.find("://").map_or(0, |i| i + 3)..];
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{}` is not a valid URL", redact_userinfo(t)));
        }
        return Ok(Source::Url(t.to_string()));
    }
    if t.contains("://") {
        return Err(format!("`{}` uses an unsupported scheme: use a file path or an http(s) URL", redact_userinfo(t)));
    }
    Ok(Source::File(agent_core::config::resolve(config_path, Path::new(t))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::hash::hash_name;
    use crate::blocklist::test_support::names;

    const PINNED_NAME: u64 = 7_778_057_823_852_268_235;
    const PINNED_FILE: &str = "c64f911b6366d5ea.txt";

    #[test]
    fn hash_is_stable_and_case_insensitive() {
        assert_eq!(hash_name("Example.COM"), hash_name("example.com"));
        assert_ne!(hash_name("example.com"), hash_name("examplecom"));
        assert_ne!(hash_name("ab.c"), hash_name("a.bc"));
        // Pinned: no RandomState; cache file names must survive restarts and upgrades.
        assert_eq!(hash_name("example.com"), PINNED_NAME);
        assert_eq!(Source::Url("https://example.org/hosts".into()).cache_file_name(), PINNED_FILE);
    }

    fn raw(sources: &[&str]) -> RawBlocklist {
        RawBlocklist { sources: names(sources), allow: vec![], refresh: None, response: None }
    }

    #[test]
    fn validate_resolves_and_defaults() {
        let p = Path::new("/etc/strata/dns.toml");
        let mut r = raw(&["lists/ads.txt", "/abs/x.txt", "https://example.org/hosts"]);
        r.allow = names(&["Good.Example.com."]);
        let c = BlocklistConfig::validate(r, p).unwrap();
        assert_eq!(
            c.sources,
            vec![
                Source::File("/etc/strata/lists/ads.txt".into()),
                Source::File("/abs/x.txt".into()),
                Source::Url("https://example.org/hosts".into())
            ]
        );
        assert_eq!(c.allow, names(&["good.example.com"]));
        assert_eq!(c.refresh, DEFAULT_REFRESH);
        assert_eq!(c.response, BlockResponse::Zero);
    }

    #[test]
    fn validate_errors_name_the_key() {
        let p = Path::new("/etc/strata/dns.toml");
        let with = |f: &dyn Fn(&mut RawBlocklist)| {
            let mut r = raw(&["a.txt", "https://example.org/x"]);
            f(&mut r);
            r
        };
        let cases: Vec<(RawBlocklist, &str)> = vec![
            (raw(&[]), "key `blocklist.sources`: must list"),
            (raw(&["a.txt", ""]), "key `blocklist.sources[1]`: source must not be empty"),
            (raw(&["a.txt", "ftp://x/y"]), "key `blocklist.sources[1]`: `ftp://x/y` uses an unsupported scheme"),
            (raw(&["https:///x"]), "key `blocklist.sources[0]`: `https:///x` is not a valid URL"),
            (raw(&["https://u:pw@h/x y"]), "`https://***@h/x y` is not a valid URL"),
            (raw(&["a.txt", "a.txt"]), "key `blocklist.sources[1]`: source `a.txt` is listed twice"),
            (with(&|r| r.allow = names(&["ok.com", "bad host"])), "key `blocklist.allow[1]`: `bad host` is not"),
            (
                with(&|r| r.refresh = Some(Duration::from_secs(366 * 86_400))),
                "key `blocklist.refresh`: `52w2d` is longer",
            ),
            (with(&|r| r.response = Some("refused".into())), "key `blocklist.response`: `refused` is not"),
        ];
        for (r, want) in cases {
            let e = BlocklistConfig::validate(r, p).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?} in {e:?}");
            assert!(e.starts_with("/etc/strata/dns.toml: key `blocklist."), "{e}");
        }
        let mut r = raw(&["a.txt"]);
        r.refresh = Some(Duration::from_secs(1800));
        r.response = Some("nxdomain".into());
        let c = BlocklistConfig::validate(r, p).unwrap();
        assert_eq!((c.refresh, c.response), (Duration::from_secs(1800), BlockResponse::NxDomain));
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(redact_userinfo("https://u:p@h.example/x@y"), "https://***@h.example/x@y");
        assert_eq!(redact_userinfo("https://h.example/x"), "https://h.example/x");
        assert_eq!(redact_userinfo("plain"), "plain");
    }
}
