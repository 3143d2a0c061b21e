//! `[stacks.webhook]` of the services-agent config: where the push-trigger endpoint listens and which file holds its
//! shared secret (raw serde, unknown keys refused, validated into [`Webhook`]). Knows the file format and the secret
//! file's rules (regular, 0600, not empty); must not know HTTP or how a request is verified (that is `webhook`).
//! The secret itself is never kept in the config: only its path, so no Debug or log line can show it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agent_core::config::{self, ConfigError};
use serde::Deserialize;

/// Port of `[stacks.webhook] listen` when only an address is given.
pub const DEFAULT_WEBHOOK_PORT: u16 = 9444;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    listen: String,
    secret_file: PathBuf,
}

/// `[stacks.webhook]`: the HTTP endpoint a Git server's push webhook calls to trigger a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub listen: SocketAddr,
    /// The shared secret the request bodies are signed with (HMAC-SHA256): a file only its owner may read.
    pub secret_file: PathBuf,
}

/// Validates `[stacks.webhook]`: `listen` is `IP:PORT` or an IP (port 9444); the secret file is read once here so
/// that a missing, empty or group/other-readable file is refused at load, naming the key (never the content).
pub(super) fn validate(path: &Path, raw: RawWebhook) -> Result<Webhook, ConfigError> {
    let bad = |key: &str, msg: String| ConfigError::invalid(path, key, msg);
    let listen = config::parse_listen(&raw.listen, DEFAULT_WEBHOOK_PORT).ok_or_else(|| {
        bad("stacks.webhook.listen", format!("`{}` is not an address (IP:PORT, or an IP for port 9444)", raw.listen))
    })?;
    if raw.secret_file.as_os_str().is_empty() {
        return Err(bad("stacks.webhook.secret_file", "must not be empty".into()));
    }
    let secret_file = config::resolve(path, &raw.secret_file);
    read_secret(&secret_file)
        .map_err(|reason| bad("stacks.webhook.secret_file", format!("{}: {reason}", secret_file.display())))?;
    Ok(Webhook { listen, secret_file })
}

/// The webhook secret: the file's content without surrounding whitespace (an `echo SECRET > file` adds a newline
/// the Git server does not sign with). The file must be a regular file that neither group nor others can read, like
/// `stacks.credentials_file`. The reason never quotes the content.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = crate::secrets::read_private_file(path)?;
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        return Err("is empty".into());
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::Config;

    fn secret_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let f = dir.join("webhook.secret");
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    /// The example config with its `[stacks.webhook]` lines uncommented and the secret file in a temp dir.
    fn example_with_webhook(secret: &Path) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/services-agent.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            let line = match line.strip_prefix("# ") {
                Some(l) if l.starts_with("[stacks.webhook]") || l.starts_with("listen = \"0.0.0.0:9444\"") => l,
                Some(l) if l.starts_with("secret_file = \"/etc/strata/webhook.secret\"") => {
                    out.push_str(&format!("secret_file = {:?}\n", secret.display().to_string()));
                    continue;
                }
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_examples_webhook_section_parses() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path(), "s3cr3t\n", 0o600);
        let text = example_with_webhook(&secret);
        assert!(text.contains("\n[stacks.webhook]\n"), "the example documents [stacks.webhook]");
        let c = Config::parse(Path::new("/etc/strata/services-agent.toml"), &text).unwrap();
        let w = c.stacks.as_ref().unwrap().webhook.as_ref().unwrap();
        assert_eq!((w.listen, w.secret_file.as_path()), ("0.0.0.0:9444".parse().unwrap(), secret.as_path()));
        // The secret is never part of the config, so never of its Debug.
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(read_secret(&secret).unwrap(), b"s3cr3t");
    }

    #[test]
    fn bad_webhook_sections_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ok = secret_file(dir.path(), "s3cr3t", 0o600);
        let base = "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n\
            key = \"a.key\"\n[stacks]\nrepo = \"stacks-repo\"\ncheckout_dir = \"co\"\n[hub]\n\
            stack = \"proxy\"\nnetwork = \"hub\"\ndomain = \"lab.test\"\naddress = \"10.0.0.20\"\n";
        let parse = |section: &str| Config::parse(Path::new("/x.toml"), &format!("{base}[stacks.webhook]\n{section}"));
        let with = |listen: &str, file: &Path| format!("listen = {listen:?}\nsecret_file = {:?}\n", file.display());
        let c = parse(&with("127.0.0.1", &ok)).unwrap();
        let w = c.stacks.unwrap().webhook.unwrap();
        assert_eq!(w.listen, "127.0.0.1:9444".parse().unwrap());

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = dir.path().join("open");
        std::fs::write(&open, "T0PSECRET").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cases: &[(String, &str)] = &[
            (with("nowhere", &ok), "key `stacks.webhook.listen`: `nowhere` is not an address"),
            (with("0.0.0.0:9444", &dir.path().join("missing")), "key `stacks.webhook.secret_file`"),
            (with("0.0.0.0:9444", &empty), "is empty"),
            (with("0.0.0.0:9444", &open), "mode 0644 lets others read it: chmod 600"),
            (with("0.0.0.0:9444", dir.path()), "is not a regular file"),
            ("listen = \"0.0.0.0:9444\"\nsecret_file = \"\"\n".into(), "key `stacks.webhook.secret_file`: must not"),
            (with("0.0.0.0:9444", &ok) + "path = \"/x\"\n", "unknown field `path`"),
            ("listen = \"0.0.0.0:9444\"\n".into(), "missing field `secret_file`"),
        ];
        for (section, want) in cases {
            let err = parse(section).unwrap_err().to_string();
            assert!(err.contains(want), "{section}: {err}");
            assert!(!err.contains("T0PSECRET"), "{err}");
        }
    }
}
