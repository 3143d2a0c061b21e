//! Loading TOML config files into typed structs, with errors that name the file, line and key; the common sections.
//! Knows no agent's own sections: each agent's config module owns those and calls `load`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Exit code for an invalid config (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}{key}", key = key.as_deref().map(|k| format!(" (key `{k}`)")).unwrap_or_default())]
    Parse { path: PathBuf, line: usize, column: usize, key: Option<String>, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

impl ConfigError {
    pub fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { path: path.to_path_buf(), key: key.into(), message: message.into() }
    }
}

/// Reads and deserializes a TOML file. Structs should use `#[serde(deny_unknown_fields)]`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    parse(path, &text)
}

/// Deserializes TOML text; `path` is only used to name the source in errors.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column, key) = match e.span() {
            // A missing field is reported on the table that lacks it, not on a key of that table.
            Some(span) if e.message().starts_with("missing field") => {
                let (line, column, _) = locate(text, span.start);
                (line, column, None)
            }
            Some(span) => locate(text, span.start),
            None => (0, 0, None),
        };
        ConfigError::Parse { path: path.into(), line, column, key, message: e.message().trim().to_string() }
    })
}

/// 1-based line and column of a byte offset, and the key written on that line (`key = value`), if any.
fn locate(text: &str, offset: usize) -> (usize, usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    // In an inline table (`checks = { verify_data = "1M" }`) the key is the last one written before the error.
    let inline_key = before[line_start..].rsplit_once('=').and_then(|(k, _)| {
        let k = k.rsplit(['{', ',']).next().unwrap_or(k).trim().trim_matches('"');
        (!k.is_empty() && !k.contains(' ') && !k.contains('[') && before[line_start..].contains('{'))
            .then(|| k.to_string())
    });
    let key = inline_key.or_else(|| {
        line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.contains(' '))
            .or_else(|| {
                let t = line_text.trim();
                t.starts_with('[').then(|| t.trim_matches(|c| c == '[' || c == ']').to_string())
            })
    });
    (line, column, key)
}

/// Resolves a path from a config file against the directory of that file; absolute even when the config file was
/// named by a relative path (programs run in other directories: borg runs where it backs up from).
pub fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        let joined = config_path.parent().unwrap_or(Path::new(".")).join(p);
        std::path::absolute(&joined).unwrap_or(joined)
    }
}

/// `[grpc]`: where the agent listens and the files of its mTLS identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSection {
    pub listen: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate revocation list(s) of the lab CA (`labctl pki revoke` writes `DIR/crl.pem`): re-read whenever the
    /// file changes, without a restart; revoked client certificates are refused in the handshake.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// `[metrics]`: where Prometheus metrics are served. `listen` is `IP` or `IP:PORT`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<String>,
}

/// The sections every agent's config has, validated.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub state_dir: PathBuf,
    pub grpc: GrpcSection,
    pub metrics_listen: SocketAddr,
}

impl CommonConfig {
    /// Validates the common sections; relative paths are taken relative to the config file.
    pub fn validate(
        path: &Path,
        state_dir: PathBuf,
        grpc: GrpcSection,
        metrics: Option<MetricsSection>,
        default_metrics_port: u16,
    ) -> Result<Self, ConfigError> {
        if state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(path, "state_dir", "must not be empty"));
        }
        let metrics_listen = match metrics.and_then(|m| m.listen) {
            None => SocketAddr::new(IpAddr::from([127, 0, 0, 1]), default_metrics_port),
            Some(s) => parse_listen(&s, default_metrics_port).ok_or_else(|| {
                ConfigError::invalid(path, "metrics.listen", format!("`{s}` is not an IP address or IP:PORT"))
            })?,
        };
        let grpc = GrpcSection {
            listen: grpc.listen,
            ca: resolve(path, &grpc.ca),
            cert: resolve(path, &grpc.cert),
            key: resolve(path, &grpc.key),
            crl: grpc.crl.as_deref().map(|c| resolve(path, c)),
        };
        Ok(CommonConfig { state_dir: resolve(path, &state_dir), grpc, metrics_listen })
    }
}

/// The whole config file of an agent that has no sections of its own (yet): `state_dir`, `[grpc]`, `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommonOnly {
    state_dir: PathBuf,
    grpc: GrpcSection,
    metrics: Option<MetricsSection>,
}

/// Loads and validates a config file holding only the common sections; any other key is refused.
pub fn load_common(path: &Path, default_metrics_port: u16) -> Result<CommonConfig, ConfigError> {
    let raw: RawCommonOnly = load(path)?;
    CommonConfig::validate(path, raw.state_dir, raw.grpc, raw.metrics, default_metrics_port)
}

/// The answer to a reload, the same on every agent: `config reloaded: applied A, B; X, Y changed: restart the agent
/// to apply` (or `… nothing to apply`).
pub fn reload_message<A: AsRef<str>, R: AsRef<str>>(applied: &[A], restart: &[R]) -> String {
    let applied: Vec<&str> = applied.iter().map(AsRef::as_ref).collect();
    let restart: Vec<&str> = restart.iter().map(AsRef::as_ref).collect();
    let mut message = if applied.is_empty() {
        "config reloaded: nothing to apply".to_string()
    } else {
        format!("config reloaded: applied {}", applied.join(", "))
    };
    if !restart.is_empty() {
        message.push_str(&format!("; {} changed: restart the agent to apply", restart.join(", ")));
    }
    message
}

/// `IP:PORT`, or an IP alone with `default_port`.
pub fn parse_listen(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        state_dir: PathBuf,
        grpc: GrpcSection,
        metrics: Option<MetricsSection>,
        count: Option<u32>,
    }

    const GOOD: &str =
        "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";

    #[test]
    fn errors_name_file_line_and_key() {
        let p = Path::new("/etc/strata/x.toml");
        let cases = [
            (format!("{GOOD}colour = 1\n"), "x.toml:7:1: unknown field `colour`"),
            (
                format!("count = \"many\"\n{GOOD}"),
                "x.toml:1:9: invalid type: string \"many\", expected u32 (key `count`)",
            ),
            (GOOD.replace("127.0.0.1:0", "nowhere"), "x.toml:3:10: invalid socket address syntax (key `listen`)"),
            (GOOD.replace("key = \"a.key\"\n", ""), "missing field `key`"),
            (GOOD.replace("state_dir = \"s\"\n", ""), "x.toml:1:1: missing field `state_dir`"),
            ("state_dir = [".to_string(), "x.toml:1:"),
        ];
        for (text, want) in cases {
            let err = parse::<Sample>(p, &text).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    #[test]
    fn common_sections_validate_and_resolve() {
        let p = Path::new("/etc/strata/x.toml");
        let s: Sample = parse(p, GOOD).unwrap();
        let c = CommonConfig::validate(p, s.state_dir, s.grpc, s.metrics, 9442).unwrap();
        assert_eq!(c.grpc.ca, Path::new("/etc/strata/ca.pem"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9442".parse().unwrap());
        let s: Sample = parse(p, &format!("{GOOD}[metrics]\nlisten = \"0.0.0.0\"\n")).unwrap();
        let c = CommonConfig::validate(p, s.state_dir, s.grpc, s.metrics, 9442).unwrap();
        assert_eq!(c.metrics_listen, "0.0.0.0:9442".parse().unwrap());
        let s: Sample = parse(p, &format!("{GOOD}[metrics]\nlisten = \"here\"\n")).unwrap();
        let e = CommonConfig::validate(p, s.state_dir, s.grpc, s.metrics, 9442).unwrap_err().to_string();
        assert_eq!(e, "/etc/strata/x.toml: key `metrics.listen`: `here` is not an IP address or IP:PORT");
    }

    /// `--config host.toml` (relative): its paths are still absolute, so a program run elsewhere finds them.
    #[test]
    fn paths_of_a_relative_config_are_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(Path::new("host.toml"), Path::new("known_hosts")), cwd.join("known_hosts"));
        assert_eq!(resolve(Path::new("etc/host.toml"), Path::new("k")), cwd.join("etc/k"));
        assert_eq!(resolve(Path::new("host.toml"), Path::new("/k")), Path::new("/k"));
    }
}
