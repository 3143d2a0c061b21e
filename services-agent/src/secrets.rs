//! A service's `secrets_dir`: `KEY=VALUE` files outside the checkout, mode-checked and read for the compose process's
//! environment. Knows the directory's rules and the line format; must not know compose, Git or proto/tonic. A value
//! never appears in an error, a log line or `Debug` output: errors name the path, the mode, the line number.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Files read from one directory at most.
pub(crate) const MAX_FILES: usize = 64;
/// Bytes one secrets file may hold.
pub(crate) const MAX_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretsError {
    #[error("secrets {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("secrets {path}: mode {mode:o} lets others in: it must be {want} (chmod {want})")]
    Mode { path: PathBuf, mode: u32, want: &'static str },
    #[error("secrets {path}: owned by uid {uid}: it must belong to root or the agent's uid {agent}")]
    Owner { path: PathBuf, uid: u32, agent: u32 },
    #[error("secrets {path}: {what}")]
    Shape { path: PathBuf, what: String },
    #[error(
        "secrets {path} line {line}: not `KEY=VALUE` with KEY of letters, digits and `_` (the value is not shown)"
    )]
    Line { path: PathBuf, line: usize },
}

/// The agent's effective uid (the owner of its `/proc/self`).
fn agent_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

fn check(path: &Path, m: &std::fs::Metadata, want: &'static str) -> Result<(), SecretsError> {
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::Mode { path: path.to_path_buf(), mode, want });
    }
    let agent = agent_uid();
    if m.uid() != 0 && m.uid() != agent {
        return Err(SecretsError::Owner { path: path.to_path_buf(), uid: m.uid(), agent });
    }
    Ok(())
}

pub(crate) use agent_core::state::read_private_file;

/// Reads every regular file of `dir` (in name order; a later file's key wins) as `KEY=VALUE` lines (`#` comments
/// and blank lines skipped, the value taken as written up to the end of the line). The directory must be 0700 and
/// its files 0600 (or stricter), owned by root or the agent; symlinks and subdirectories are refused.
pub(crate) fn read(dir: &Path) -> Result<Vec<(String, String)>, SecretsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretsError::Io { path, source }
    };
    let m = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if !m.is_dir() {
        return Err(SecretsError::Shape {
            path: dir.into(),
            what: "is not a directory (nor may it be a symlink)".into(),
        });
    }
    check(dir, &m, "700")?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        names.push(entry.map_err(io(dir))?.path());
        if names.len() > MAX_FILES {
            return Err(SecretsError::Shape { path: dir.into(), what: format!("holds more than {MAX_FILES} files") });
        }
    }
    names.sort();
    let mut out: Vec<(String, String)> = Vec::new();
    for path in names {
        let m = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if !m.is_file() {
            return Err(SecretsError::Shape { path, what: "is not a regular file".into() });
        }
        check(&path, &m, "600")?;
        if m.len() > MAX_FILE_BYTES {
            return Err(SecretsError::Shape { path, what: format!("is larger than {MAX_FILE_BYTES} bytes") });
        }
        let text = std::fs::read(&path).map_err(io(&path))?;
        let text = String::from_utf8(text)
            .map_err(|_| SecretsError::Shape { path: path.clone(), what: "is not UTF-8 text".into() })?;
        for (k, v) in parse(&text).map_err(|line| SecretsError::Line { path: path.clone(), line })? {
            out.retain(|(x, _)| *x != k);
            out.push((k, v));
        }
    }
    Ok(out)
}

/// `KEY=VALUE` lines → pairs; `Err(line number)` (1-based) for the first line that is not one.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (k, v) = t.split_once('=').ok_or(i + 1)?;
        let key_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !key_ok || v.contains('\0') {
            return Err(i + 1);
        }
        out.push((k.to_string(), v.trim_end_matches('\r').to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-Very-Secret";

    #[test]
    fn lines_parse_or_name_their_number() {
        let text = format!("# db\n\nDB_PASSWORD={SECRET}\nEMPTY=\nURL=postgres://u:p@h/db?x=1\r\n");
        let got = parse(&text).unwrap();
        assert_eq!(
            got,
            [
                ("DB_PASSWORD".to_string(), SECRET.to_string()),
                ("EMPTY".into(), "".into()),
                ("URL".into(), "postgres://u:p@h/db?x=1".into())
            ]
        );
        for (bad, line) in
            [(format!("A=1\n{SECRET}\n"), 2), ("1A=x\n".into(), 1), ("A B=x\n".into(), 1), ("=x".into(), 1)]
        {
            assert_eq!(parse(&bad), Err(line), "{bad:?}");
        }
    }

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn modes_are_checked_and_values_never_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("web");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.env"), "DB_PASSWORD=old\nUSER=web\n").unwrap();
        std::fs::write(dir.join("b.env"), format!("DB_PASSWORD={SECRET}\n")).unwrap();
        mode(&dir.join("a.env"), 0o600);
        mode(&dir.join("b.env"), 0o400);
        mode(&dir, 0o755);
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()) && e.contains("mode 755") && e.contains("chmod 700"), "{e}");
        mode(&dir, 0o700);
        assert_eq!(
            read(&dir).unwrap(),
            [("USER".to_string(), "web".to_string()), ("DB_PASSWORD".into(), SECRET.into())],
            "a later file's key wins"
        );
        mode(&dir.join("b.env"), 0o640);
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains("b.env: mode 640") && e.contains("chmod 600") && !e.contains(SECRET), "{e}");
        mode(&dir.join("b.env"), 0o600);
        std::fs::write(dir.join("b.env"), format!("oops {SECRET}\n")).unwrap();
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains("b.env line 1") && !e.contains(SECRET), "{e}");
        std::fs::remove_file(dir.join("b.env")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("c.env")).unwrap();
        assert!(read(&dir).unwrap_err().to_string().contains("c.env: is not a regular file"));
        let e = read(&tmp.path().join("nope")).unwrap_err().to_string();
        assert!(e.starts_with("secrets ") && e.contains("nope"), "{e}");
    }
}
