//! OpenSSH's client as the backup engines reach a remote with it: the one `ssh` command line (the given key only,
//! `StrictHostKeyChecking=yes` against the given `known_hosts`, batch mode, connect and keep-alive timeouts, no user
//! config) that borg gets as `BORG_RSH` and rsync as `-e`; the `known_hosts` lookup done when a config is validated
//! (plain and hashed entries, `[host]:port`); the check of a private key's mode; and the reading of ssh's stderr into
//! host-key and connection failures. Must not know borg's or rsync's own commands, nor what is backed up.
//!
//! Nothing here is secret: the command names the key file, never its content, and ssh never prompts (batch mode).

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::runner::shell_quote;

/// Seconds ssh waits for the TCP connection and the key exchange (`ConnectTimeout`).
pub const CONNECT_TIMEOUT_SECS: u32 = 15;
/// Seconds between keep-alives on an idle link (`ServerAliveInterval`), and how many may go unanswered
/// (`ServerAliveCountMax`): a cut link ends the transfer after about their product instead of hanging.
pub const SERVER_ALIVE_INTERVAL_SECS: u32 = 10;
pub const SERVER_ALIVE_COUNT_MAX: u32 = 3;

/// How one remote is reached: the private key and the `known_hosts` holding the remote's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

impl SshOptions {
    /// The ssh command line, its words shell-quoted (borg splits `BORG_RSH` like a shell; rsync's `-e` too).
    /// `-F /dev/null`: root's `~/.ssh/config` cannot loosen any of it.
    pub fn command(&self) -> String {
        self.words(None)
    }

    /// [`SshOptions::command`] with ssh's own messages also written to `log` (`-E`): borg passes ssh's stderr on
    /// only sometimes, so the reason a connection failed is read from there.
    pub fn command_logging_to(&self, log: &Path) -> String {
        self.words(Some(log))
    }

    fn words(&self, log: Option<&Path>) -> String {
        let mut words: Vec<String> = vec!["ssh".into(), "-F".into(), "/dev/null".into()];
        if let Some(l) = log {
            words.push("-E".into());
            words.push(l.to_string_lossy().into_owned());
        }
        words.push("-i".into());
        words.push(self.key.to_string_lossy().into_owned());
        let options = [
            "IdentitiesOnly=yes".to_string(),
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.to_string_lossy()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "UpdateHostKeys=no".into(),
            "BatchMode=yes".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
            format!("ServerAliveInterval={SERVER_ALIVE_INTERVAL_SECS}"),
            format!("ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}"),
        ];
        for o in options {
            words.push("-o".into());
            words.push(o);
        }
        words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }
}

/// How `known_hosts` names a host: `host` on port 22, `[host]:port` otherwise.
pub fn host_pattern(host: &str, port: Option<u16>) -> String {
    match port {
        None | Some(22) => host.to_string(),
        Some(p) => format!("[{host}]:{p}"),
    }
}

/// Whether `known_hosts` text has a key for `host` (and `port`): a plain entry (a comma-separated name list), or a
/// hashed one (`|1|SALT|HMAC-SHA1`, as `ssh-keygen -H` writes). Revoked (`@revoked`) lines do not count; a
/// `@cert-authority` line does not either (we pin host keys, not CAs).
pub fn known_hosts_lists(text: &str, host: &str, port: Option<u16>) -> bool {
    let want = host_pattern(host, port);
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@')).any(|line| {
        let names = line.split_whitespace().next().unwrap_or("");
        match names.strip_prefix("|1|") {
            Some(hashed) => hashed_matches(hashed, &want),
            None => names.split(',').any(|n| n.eq_ignore_ascii_case(&want)),
        }
    })
}

/// `SALT|HASH` (both base64) of a hashed `known_hosts` name: HMAC-SHA1 of the name keyed with the salt.
fn hashed_matches(hashed: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else { return false };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// Why a private key file may not be used: missing, not a file, or readable/writable by group or others (ssh itself
/// refuses such a key; we refuse it before anything runs, naming it).
pub fn check_private_key(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("{} is accessible by others (mode {mode:o}): chmod 600 it", path.display()));
    }
    Ok(())
}

/// What went wrong reaching the remote, as ssh's stderr tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshFailure {
    /// The remote showed a host key other than the pinned one (a swapped server, or a man in the middle).
    HostKeyChanged,
    /// `known_hosts` has no key for the host.
    HostKeyUnknown,
    /// The remote refused our key.
    AuthRefused,
    /// No connection, or a connection that died: the reason as ssh printed it.
    Unreachable(String),
}

impl std::fmt::Display for SshFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SshFailure::HostKeyChanged => {
                f.write_str("the host key changed (not the one in known_hosts): refused, nothing was sent")
            }
            SshFailure::HostKeyUnknown => f.write_str("no host key for it in known_hosts: refused, nothing was sent"),
            SshFailure::AuthRefused => f.write_str("the remote refused the key (permission denied)"),
            SshFailure::Unreachable(why) => write!(f, "unreachable: {why}"),
        }
    }
}

/// Reads ssh's own lines in a failed command's stderr (borg prefixes a remote's lines with `Remote: `).
pub fn classify(stderr: &str) -> Option<SshFailure> {
    let lines: Vec<&str> = stderr.lines().map(|l| l.trim().trim_start_matches("Remote: ").trim()).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("Host key for ") && has("has changed") {
        return Some(SshFailure::HostKeyChanged);
    }
    if has("Host key verification failed") {
        return Some(SshFailure::HostKeyUnknown);
    }
    if has("Permission denied (") {
        return Some(SshFailure::AuthRefused);
    }
    let unreachable = [
        "Connection timed out",
        "Connection refused",
        "No route to host",
        "Network is unreachable",
        "Could not resolve hostname",
        "Timeout, server ",
        "Connection reset by peer",
        "Broken pipe",
        "Connection closed by remote host",
        "Connection to ",
    ];
    lines
        .iter()
        .find(|l| unreachable.iter().any(|u| l.contains(u)))
        .map(|l| SshFailure::Unreachable(l.trim_end_matches('.').to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_pins_everything() {
        let o =
            SshOptions { key: "/etc/strata/secrets/off site".into(), known_hosts: "/etc/strata/known_hosts".into() };
        let c = o.command();
        assert!(c.starts_with("ssh -F /dev/null -i '/etc/strata/secrets/off site' "), "{c}");
        let logged = o.command_logging_to(Path::new("/tmp/strata-ssh-1-0.log"));
        assert!(logged.starts_with("ssh -F /dev/null -E /tmp/strata-ssh-1-0.log -i "), "{logged}");
        for o in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/etc/strata/known_hosts",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "ConnectTimeout=15",
            "ServerAliveInterval=10",
        ] {
            assert!(c.contains(&format!("-o {o}")), "{c} lacks {o}");
        }
    }

    #[test]
    fn known_hosts_plain_and_hashed() {
        // `ssh-keygen -H` of a file with `backup.example` and `[10.0.0.2]:2222`.
        let text = "# comment\n\
            @revoked revoked.example ssh-ed25519 AAAA\n\
            backup.example,192.0.2.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n\
            [nas.lan]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n";
        assert!(known_hosts_lists(text, "backup.example", Some(22)));
        assert!(known_hosts_lists(text, "192.0.2.7", None));
        assert!(known_hosts_lists(text, "nas.lan", Some(2222)));
        assert!(!known_hosts_lists(text, "nas.lan", None));
        assert!(!known_hosts_lists(text, "backup.example", Some(2222)));
        assert!(!known_hosts_lists(text, "revoked.example", None));

        // Made by: printf 'backup.example ssh-ed25519 AAAA\n[10.0.0.2]:2222 ssh-ed25519 AAAA\n' > kh;
        // ssh-keygen -H -f kh (OpenSSH 9.2).
        let hashed = hashed_fixture();
        assert!(known_hosts_lists(&hashed, "backup.example", None), "{hashed}");
        assert!(known_hosts_lists(&hashed, "10.0.0.2", Some(2222)), "{hashed}");
        assert!(!known_hosts_lists(&hashed, "10.0.0.2", None));
        assert!(!known_hosts_lists(&hashed, "other.example", None));
        assert!(!known_hosts_lists("|1|not base64|x ssh-ed25519 AAAA\n", "x", None));
    }

    /// A hashed known_hosts written by the real `ssh-keygen -H` (captured in testdata).
    fn hashed_fixture() -> String {
        include_str!("testdata/known_hosts_hashed").to_string()
    }

    #[test]
    fn private_keys_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        assert!(check_private_key(&key).unwrap_err().contains("No such file"));
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_private_key(&key).unwrap_err();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private_key(&key).unwrap();
        assert!(check_private_key(dir.path()).unwrap_err().contains("not a file"));
    }

    #[test]
    fn ssh_failures_from_captured_stderr() {
        let cases: &[(&str, Option<SshFailure>)] = &[
            (include_str!("testdata/ssh_host_key_changed.txt"), Some(SshFailure::HostKeyChanged)),
            (include_str!("testdata/ssh_host_key_unknown.txt"), Some(SshFailure::HostKeyUnknown)),
            (include_str!("testdata/ssh_host_key_changed.ssh_log.txt"), Some(SshFailure::HostKeyChanged)),
            (include_str!("testdata/ssh_host_key_unknown.ssh_log.txt"), Some(SshFailure::HostKeyUnknown)),
            (
                include_str!("testdata/ssh_link_cut_mid_create.ssh_log.txt"),
                Some(SshFailure::Unreachable("Timeout, server 10.213.231.2 not responding".into())),
            ),
            ("Remote: root@10.0.0.2: Permission denied (publickey).\n", Some(SshFailure::AuthRefused)),
            ("just a borg error\n", None),
        ];
        for (stderr, want) in cases {
            assert_eq!(&classify(stderr), want, "{stderr}");
        }
        let timeout = classify(include_str!("testdata/ssh_connect_timeout.txt"));
        assert!(matches!(timeout, Some(SshFailure::Unreachable(_))), "{timeout:?}");
    }
}
