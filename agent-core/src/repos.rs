//! Backup destinations as both agents' configs name them: one entry of `repos = [...]` (services) or
//! `targets = [...]` (host) — raw serde, then validated — with its location (a local path,
//! `ssh://user@host[:port]/path` or scp-style `user@host:path`, never turned into a local path), passphrase source,
//! SSH key and `known_hosts`, upload limit, append-only flag, retention and check intervals; and the checks every
//! list gets: unique labels and URLs, no location borg would read as an option, an SSH URL with its key and
//! `known_hosts` (and, before every run, [`RepoSpec::check_files`]: a private key only its owner can read, a
//! `known_hosts` that lists the host). Builds the [`Repo`] of an entry. Must not know what is backed
//! up, when, nor how borg or ssh are run (their modules do).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::borg::{Repo, Retention};
use crate::config::{self, ConfigError};
use crate::duration;
use crate::ssh::{self, SshOptions};

/// One entry of `repos = [...]` / `targets = [...]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepo {
    pub label: String,
    pub url: String,
    pub retention: Option<Retention>,
    pub passcommand: Option<String>,
    pub passphrase_file: Option<PathBuf>,
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub remote_path: Option<String>,
    pub upload_ratelimit: Option<String>,
    #[serde(default)]
    pub append_only: bool,
    pub checks: Option<RawChecks>,
}

impl RawRepo {
    /// The one repository of the single-URL shorthand (`repo = "…"`, `target = "…"`): labelled
    /// [`SHORTHAND_LABEL`], every other setting its owner's.
    pub fn shorthand(url: &str) -> RawRepo {
        RawRepo {
            label: SHORTHAND_LABEL.into(),
            url: url.into(),
            retention: None,
            passcommand: None,
            passphrase_file: None,
            ssh_key: None,
            known_hosts: None,
            remote_path: None,
            upload_ratelimit: None,
            append_only: false,
            checks: None,
        }
    }
}

/// `checks = { repository = "…", verify_data = "…" }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub repository: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub verify_data: Option<Duration>,
}

/// How often each borg check runs on schedule; `None` = never.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    pub repository: Option<Duration>,
    pub verify_data: Option<Duration>,
}

/// The shortest interval between two scheduled `borg check --repository-only` + `--archives-only` runs.
pub const MIN_REPOSITORY_CHECK: Duration = Duration::from_secs(3600);
/// The shortest interval between two scheduled `borg check --verify-data` runs (they read every chunk).
pub const MIN_VERIFY_DATA: Duration = Duration::from_secs(86_400);

impl RawChecks {
    /// Validated against a floor per check (below it a check would run nearly all the time; `1m` was once read as a
    /// month). `key` names the table in errors.
    pub fn validate(&self, path: &Path, key: &str) -> Result<Checks, ConfigError> {
        let floor = |k: &str, v: Option<Duration>, min: Duration, what: &str| match v {
            Some(d) if d < min => Err(ConfigError::invalid(
                path,
                format!("{key}.{k}"),
                format!(
                    "`{}` is too often: {what}; the shortest interval is {}",
                    duration::format(d),
                    duration::format(min)
                ),
            )),
            v => Ok(v),
        };
        Ok(Checks {
            repository: floor(
                "repository",
                self.repository,
                MIN_REPOSITORY_CHECK,
                "a repository check reads the whole repository index",
            )?,
            verify_data: floor(
                "verify_data",
                self.verify_data,
                MIN_VERIFY_DATA,
                "`borg check --verify-data` reads and decrypts every chunk of the repository",
            )?,
        })
    }
}

/// Where Borg's passphrase comes from; borg gets it through `BORG_PASSCOMMAND`, never argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passphrase {
    /// `passcommand`: run by borg (no shell) to print the passphrase.
    Command(String),
    /// `passphrase_file`: a file holding the passphrase (mode 0600 expected).
    File(PathBuf),
    /// Neither: an unencrypted repository (or one with a key file and no passphrase).
    None,
}

impl Passphrase {
    /// From the `passcommand` / `passphrase_file` pair of a table (`key` names it in errors); `None` when neither.
    pub fn from_raw(
        path: &Path,
        key: &str,
        command: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Passphrase>, ConfigError> {
        match (command, file) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                path,
                format!("{key}passphrase_file"),
                "give either passcommand or passphrase_file, not both",
            )),
            (Some(c), None) if c.trim().is_empty() => {
                Err(ConfigError::invalid(path, format!("{key}passcommand"), "must not be empty"))
            }
            (Some(c), None) => Ok(Some(Passphrase::Command(c.to_string()))),
            (None, Some(f)) => Ok(Some(Passphrase::File(config::resolve(path, f)))),
            (None, None) => Ok(None),
        }
    }
}

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path on this machine (absolute once validated).
    Local(PathBuf),
    /// Reached over SSH: `ssh://[user@]host[:port]/path` (`scp = false`) or `[user@]host:path` (`scp = true`).
    Ssh { user: Option<String>, host: String, port: Option<u16>, path: String, scp: bool },
}

impl Location {
    /// Reads a URL; a relative local path is resolved against `base` (the config file's directory's rule).
    pub fn parse(url: &str, config_path: &Path) -> Result<Location, String> {
        if url.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if url.starts_with('-') {
            return Err(format!("`{url}` starts with `-`: borg would read it as an option"));
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("`{}` holds a space or a control character", url.escape_debug()));
        }
        if let Some(rest) = url.strip_prefix("ssh://") {
            let (authority, path) =
                rest.split_once('/').ok_or_else(|| format!("`{url}` has no path after the host"))?;
            let (user, hostport) = split_user(authority)?;
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let port = p.parse::<u16>().map_err(|_| format!("`{p}` in `{url}` is not a port"))?;
                    (h, Some(port))
                }
                _ => (hostport, None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            check_host(host, url)?;
            if path.is_empty() {
                return Err(format!("`{url}` has no path after the host"));
            }
            return Ok(Location::Ssh { user, host: host.into(), port, path: format!("/{path}"), scp: false });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(format!("`{url}`: only local paths, ssh:// and user@host:path are supported"));
        }
        // Borg's rule: `[user@]host:path` when the part before the first `/` holds a colon.
        let head = url.split('/').next().unwrap_or("");
        if !url.starts_with(['/', '.', '~']) && !url.starts_with("file://") && head.contains(':') {
            let (authority, path) = url.split_once(':').unwrap_or((url, ""));
            let (user, host) = split_user(authority)?;
            check_host(host, url)?;
            if path.is_empty() {
                return Err(format!("`{url}` has no path after `host:`"));
            }
            return Ok(Location::Ssh { user, host: host.into(), port: None, path: path.into(), scp: true });
        }
        let local = url.strip_prefix("file://").unwrap_or(url);
        Ok(Location::Local(config::resolve(config_path, Path::new(local))))
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Location::Local(_))
    }

    /// The remote's host and port, for messages and the `known_hosts` lookup.
    pub fn host(&self) -> Option<(&str, Option<u16>)> {
        match self {
            Location::Local(_) => None,
            Location::Ssh { host, port, .. } => Some((host, *port)),
        }
    }
}

/// The location as borg (and rsync, for the scp form) reads it.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Ssh { user, host, port, path, scp } => {
                let user = user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
                let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
                if *scp {
                    write!(f, "{user}{host}:{path}")
                } else {
                    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                    write!(f, "ssh://{user}{host}{port}{path}")
                }
            }
        }
    }
}

fn split_user(authority: &str) -> Result<(Option<String>, &str), String> {
    match authority.rsplit_once('@') {
        Some((u, h)) => {
            if u.is_empty() || u.contains(':') || u.starts_with('-') {
                return Err(format!("`{u}` is not a user name (a password does not belong in the URL)"));
            }
            Ok((Some(u.to_string()), h))
        }
        None => Ok((None, authority)),
    }
}

fn check_host(host: &str, url: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("`{host}` in `{url}` is not a host name or address"))
    }
}

/// One validated destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub label: String,
    pub location: Location,
    /// `None`: the owner's retention applies.
    pub retention: Option<Retention>,
    /// `None`: the owner's passphrase source applies.
    pub passphrase: Option<Passphrase>,
    /// Set exactly for an SSH location.
    pub ssh: Option<SshOptions>,
    /// `--remote-path`: the borg program on the remote.
    pub remote_path: Option<String>,
    /// `--upload-ratelimit`, in KiB/s.
    pub upload_ratelimit_kib: Option<u64>,
    /// Never pruned nor compacted by the agent (the trusted side runs the retention).
    pub append_only: bool,
    /// `None`: the owner's check intervals apply.
    pub checks: Option<Checks>,
}

impl RepoSpec {
    /// What the files an SSH repository needs must be, checked before every run that uses it (files change after
    /// the config is read; an example config must parse on any machine): the private key readable by its owner only,
    /// and `known_hosts` listing the host. Nothing is sent when this fails.
    pub fn check_files(&self) -> Result<(), String> {
        let (Some(o), Some((host, port))) = (&self.ssh, self.location.host()) else { return Ok(()) };
        ssh::check_private_key(&o.key).map_err(|m| format!("ssh_key {m}"))?;
        let text = std::fs::read_to_string(&o.known_hosts)
            .map_err(|e| format!("known_hosts {}: {e}", o.known_hosts.display()))?;
        if !ssh::known_hosts_lists(&text, host, port) {
            return Err(format!(
                "known_hosts {} has no key for `{}` (add it with `ssh-keyscan`, checked against the remote's \
                 fingerprint): refused, nothing was sent",
                o.known_hosts.display(),
                ssh::host_pattern(host, port)
            ));
        }
        Ok(())
    }

    /// The location as borg reads it.
    pub fn url(&self) -> String {
        self.location.to_string()
    }

    /// The borg repository of this destination (with `fallback` as its passphrase source when it has none).
    pub fn repo(&self, fallback: &Passphrase) -> Repo {
        let mut r = Repo::new(self.url());
        match self.passphrase.as_ref().unwrap_or(fallback) {
            Passphrase::Command(c) => r = r.passcommand(c.clone()),
            Passphrase::File(f) => r = r.passphrase_file(f),
            Passphrase::None => {}
        }
        if let Some(s) = &self.ssh {
            r = r.ssh(s.clone());
        }
        if let Some(p) = &self.remote_path {
            r = r.remote_path(p);
        }
        if let Some(k) = self.upload_ratelimit_kib {
            r = r.upload_ratelimit(k);
        }
        r
    }
}

/// The label the single-repository shorthand (`repo = "…"`, `target = "…"`) gets.
pub const SHORTHAND_LABEL: &str = "default";

/// Validates the single-URL shorthand (`repo = "…"`, `target = "…"`; `key` is its config key, `list_key` the list
/// it stands for): one entry labelled [`SHORTHAND_LABEL`] with its owner's settings, errors named as written. An SSH
/// location is refused: the shorthand has no room for its key and `known_hosts`.
pub fn validate_shorthand(path: &Path, key: &str, list_key: &str, url: &str) -> Result<RepoSpec, ConfigError> {
    if Location::parse(url, path).is_ok_and(|l| !l.is_local()) {
        return Err(ConfigError::invalid(
            path,
            key,
            format!("`{url}` is an SSH location: give it in `{list_key} = [...]` with its ssh_key and known_hosts"),
        ));
    }
    validate_one(path, key, &RawRepo::shorthand(url)).map_err(|e| match e {
        ConfigError::Invalid { message, .. } => ConfigError::invalid(path, key, message),
        e => e,
    })
}

/// Validates a list (`key` is its config key, e.g. `services[2].repos`): each entry, then unique labels and URLs.
pub fn validate_list(path: &Path, key: &str, raws: &[RawRepo]) -> Result<Vec<RepoSpec>, ConfigError> {
    if raws.is_empty() {
        return Err(ConfigError::invalid(path, key, "must list at least one repository"));
    }
    let mut out: Vec<RepoSpec> = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let spec = validate_one(path, &k, raw)?;
        if let Some(other) = out.iter().find(|o| o.label == spec.label) {
            return Err(ConfigError::invalid(path, format!("{k}.label"), format!("`{}` is used twice", other.label)));
        }
        if let Some(other) = out.iter().find(|o| o.url() == spec.url()) {
            return Err(ConfigError::invalid(
                path,
                format!("{k}.url"),
                format!("`{}` is already the URL of repository `{}`", spec.url(), other.label),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

/// A label: `[a-z0-9][a-z0-9_-]*`, at most 32 bytes (it becomes a metric label and a CLI argument).
pub fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Validates one entry (`key` names it, e.g. `services[0].repos[1]`).
pub fn validate_one(path: &Path, key: &str, raw: &RawRepo) -> Result<RepoSpec, ConfigError> {
    let bad = |k: &str, msg: String| ConfigError::invalid(path, format!("{key}.{k}"), msg);
    if !valid_label(&raw.label) {
        return Err(bad("label", format!("`{}` is not a label ([a-z0-9][a-z0-9_-]*, at most 32 bytes)", raw.label)));
    }
    let location = Location::parse(&raw.url, path).map_err(|m| bad("url", m))?;
    let passphrase =
        Passphrase::from_raw(path, &format!("{key}."), raw.passcommand.as_deref(), raw.passphrase_file.as_deref())?;
    let ssh = match (&location, &raw.ssh_key, &raw.known_hosts) {
        (Location::Local(_), None, None) => None,
        (Location::Local(_), Some(_), _) => return Err(bad("ssh_key", "is for an SSH url only".into())),
        (Location::Local(_), None, Some(_)) => return Err(bad("known_hosts", "is for an SSH url only".into())),
        (Location::Ssh { .. }, None, _) => {
            return Err(bad("ssh_key", "missing: an SSH repository needs its own private key file".into()))
        }
        (Location::Ssh { .. }, Some(_), None) => {
            return Err(bad(
                "known_hosts",
                "missing: an SSH repository needs a known_hosts file with its host key".into(),
            ))
        }
        (Location::Ssh { .. }, Some(k), Some(kh)) => {
            Some(SshOptions { key: config::resolve(path, k), known_hosts: config::resolve(path, kh) })
        }
    };
    if raw.remote_path.is_some() && location.is_local() {
        return Err(bad("remote_path", "is for an SSH url only".into()));
    }
    if let Some(p) = &raw.remote_path {
        if p.trim().is_empty() || p.starts_with('-') || p.chars().any(char::is_control) {
            return Err(bad("remote_path", format!("`{}` is not a program path", p.escape_debug())));
        }
    }
    let upload_ratelimit_kib = match &raw.upload_ratelimit {
        None => None,
        Some(r) => Some(parse_rate_kib(r).map_err(|m| bad("upload_ratelimit", m))?),
    };
    let checks = match &raw.checks {
        None => None,
        Some(c) => Some(c.validate(path, &format!("{key}.checks"))?),
    };
    Ok(RepoSpec {
        label: raw.label.clone(),
        location,
        retention: raw.retention.clone(),
        passphrase,
        ssh,
        remote_path: raw.remote_path.clone(),
        upload_ratelimit_kib,
        append_only: raw.append_only,
        checks,
    })
}

/// A rate in bytes per second (`20MiB`, `500KiB/s`, `1.5MB`, `2GiB`) as whole KiB/s (borg's unit), at least 1.
pub fn parse_rate_kib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{text}` is not a rate (e.g. `20MiB`, `500KiB/s`)"))?;
    let mult: f64 = match unit.trim() {
        "B" => 1.0,
        "KiB" | "K" => 1024.0,
        "kB" | "KB" => 1000.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        u => return Err(format!("`{u}` in `{text}` is not a unit (B, KiB, MiB, GiB, kB, MB, GB)")),
    };
    let kib = (n * mult / 1024.0).round();
    if !kib.is_finite() || kib < 1.0 {
        return Err(format!("`{text}` is below 1 KiB/s"));
    }
    Ok(kib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(url: &str) -> Result<Location, String> {
        Location::parse(url, Path::new("/etc/strata/services-agent.toml"))
    }

    #[test]
    fn locations_are_read_as_borg_reads_them_and_never_mangled() {
        type Host<'a> = Option<(&'a str, Option<u16>)>;
        let cases: &[(&str, &str, Host<'_>)] = &[
            ("/mnt/backup/borg/photos", "/mnt/backup/borg/photos", None),
            ("borg/photos", "/etc/strata/borg/photos", None),
            ("file:///srv/x", "/srv/x", None),
            (
                "ssh://borg@backup.example:22/./photos",
                "ssh://borg@backup.example:22/./photos",
                Some(("backup.example", Some(22))),
            ),
            ("ssh://backup.example/srv/photos", "ssh://backup.example/srv/photos", Some(("backup.example", None))),
            ("ssh://u@[2001:db8::1]:2222/x", "ssh://u@[2001:db8::1]:2222/x", Some(("2001:db8::1", Some(2222)))),
            ("borg@backup.example:photos", "borg@backup.example:photos", Some(("backup.example", None))),
            ("nas:/srv/borg/photos", "nas:/srv/borg/photos", Some(("nas", None))),
        ];
        for (url, shown, host) in cases {
            let l = p(url).unwrap();
            assert_eq!(&l.to_string(), shown, "{url}");
            assert_eq!(l.host(), *host, "{url}");
            assert_eq!(l.is_local(), host.is_none(), "{url}");
            // What we hand borg, borg reads as the same kind of location.
            assert_eq!(Repo::new(l.to_string()).is_local(), l.is_local(), "{url}");
        }
        for (url, why) in [
            ("-x", "starts with `-`"),
            ("--remote-path=evil", "starts with `-`"),
            ("", "must not be empty"),
            ("ssh://host", "no path"),
            ("ssh://u@h:port/x", "not a port"),
            ("ssh://u:pw@h/x", "not a user name"),
            ("ssh://-oProxyCommand=x/y", "not a host"),
            ("https://h/x", "only local paths"),
            ("a b", "space"),
            ("host:", "no path"),
        ] {
            let e = p(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn rates() {
        for (t, kib) in [("20MiB", 20480), ("500KiB/s", 500), ("1.5MB", 1465), ("2GiB", 2_097_152), ("1024B", 1)] {
            assert_eq!(parse_rate_kib(t), Ok(kib), "{t}");
        }
        for t in ["", "20", "fast", "20 parsecs", "10B", "-1MiB"] {
            assert!(parse_rate_kib(t).is_err(), "{t}");
        }
    }

    fn raw(label: &str, url: &str) -> RawRepo {
        RawRepo { label: label.into(), ..RawRepo::shorthand(url) }
    }

    #[test]
    fn lists_refuse_what_would_fail_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        let key = dir.path().join("id");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open_key = dir.path().join("id-open");
        std::fs::write(&open_key, "k").unwrap();
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let kh = dir.path().join("known_hosts");
        std::fs::write(&kh, "[backup.example]:2222 ssh-ed25519 AAAA\n").unwrap();
        let remote = |label: &str, url: &str, k: &Path| RawRepo {
            ssh_key: Some(k.to_path_buf()),
            known_hosts: Some(kh.clone()),
            ..raw(label, url)
        };

        let files = |l: &[RawRepo]| validate_list(&cfg, "r", l).unwrap()[0].check_files();
        assert_eq!(files(&[remote("a", "ssh://backup.example:2222/x", &key)]), Ok(()));
        for (list, want) in [
            (vec![remote("a", "ssh://backup.example:2222/x", &open_key)], "ssh_key "),
            (vec![remote("a", "ssh://backup.example/x", &key)], "has no key for `backup.example`"),
            (vec![remote("a", "ssh://other:2222/x", &key)], "has no key for `[other]:2222`"),
            (vec![remote("a", "ssh://backup.example:2222/x", &dir.path().join("nokey"))], "No such file"),
        ] {
            let e = files(&list).unwrap_err();
            assert!(e.contains(want), "{e}\nwanted: {want}");
        }

        let ok = validate_list(
            &cfg,
            "services[0].repos",
            &[raw("local", "/b/photos"), remote("offsite", "ssh://borg@backup.example:2222/./photos", &key)],
        )
        .unwrap();
        assert_eq!(ok[1].ssh.as_ref().unwrap().key, key);
        assert!(ok[1].repo(&Passphrase::None).location().starts_with("ssh://"));
        assert_eq!(ok[0].check_files(), Ok(()));

        let cases: Vec<(Vec<RawRepo>, &str)> = vec![
            (vec![], "services[0].repos`: must list at least one"),
            (vec![raw("a", "/b/x"), raw("a", "/b/y")], "repos[1].label`: `a` is used twice"),
            (vec![raw("a", "/b/x"), raw("b", "/b/x")], "repos[1].url`: `/b/x` is already the URL of repository `a`"),
            (vec![raw("a", "-b")], "repos[0].url`: `-b` starts with `-`"),
            (vec![raw("A b", "/x")], "repos[0].label`"),
            (vec![raw("a", "ssh://h:2222/x")], "repos[0].ssh_key`: missing"),
            (
                vec![RawRepo { known_hosts: None, ..remote("a", "ssh://h:2222/x", &key) }],
                "repos[0].known_hosts`: missing",
            ),
            (vec![RawRepo { ssh_key: Some(key.clone()), ..raw("a", "/x") }], "repos[0].ssh_key`: is for an SSH url"),
            (vec![RawRepo { upload_ratelimit: Some("fast".into()), ..raw("a", "/x") }], "upload_ratelimit"),
            (
                vec![RawRepo {
                    checks: Some(RawChecks { repository: Some(Duration::from_secs(60)), verify_data: None }),
                    ..raw("a", "/x")
                }],
                "repos[0].checks.repository`: `1m` is too often",
            ),
            (
                vec![RawRepo { passcommand: Some("x".into()), passphrase_file: Some("/p".into()), ..raw("a", "/x") }],
                "not both",
            ),
        ];
        let short = |url: &str| validate_shorthand(&cfg, "services[0].repo", "repos", url).map_err(|e| e.to_string());
        assert_eq!(short("/b/photos").unwrap().label, "default");
        let e = short("borg@nas:photos").unwrap_err();
        assert!(e.contains("key `services[0].repo`: `borg@nas:photos` is an SSH location: give it in `repos"), "{e}");
        assert!(short("-x").unwrap_err().contains("key `services[0].repo`: `-x` starts with `-`"));

        for (list, want) in cases {
            let e = validate_list(&cfg, "services[0].repos", &list).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwanted: {want}");
            assert!(e.starts_with(&cfg.display().to_string()), "{e}");
        }
    }
}
