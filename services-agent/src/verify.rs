//! The file-by-file comparison the restore drill uses: a manifest of a directory tree (kind, permission bits, size,
//! SHA-256 of each file's contents, symlink targets) and the differences between two manifests.
//! Knows files and directories only; must not know ZFS, Borg, services or where either tree came from.
//! Everything here is blocking: async callers use `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    /// Sockets, fifos, devices.
    Other,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Other => "other",
        })
    }
}

/// One path of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub kind: Kind,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Bytes for files; 0 for everything else (directory sizes differ between filesystems).
    pub size: u64,
    /// SHA-256 of a file's contents; `None` for everything else.
    pub hash: Option<[u8; 32]>,
    /// A symlink's target as stored (not resolved); `None` for everything else.
    pub target: Option<PathBuf>,
}

/// How one path differs between the expected tree (the source) and the actual one (the restore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    pub path: PathBuf,
    /// "missing in restore", "extra in restore", "kind file vs dir", "mode 644 vs 600", "size 3 vs 4",
    /// "content differs", "target a vs b" (expected first).
    pub what: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub files: u64,
    pub dirs: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
}

/// Every path below `root` (relative to it; `root` itself excluded), without following symlinks (`root` itself may
/// be one).
pub(crate) fn manifest(root: &Path) -> Result<BTreeMap<PathBuf, Entry>, VerifyError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    if !fs::metadata(root).map_err(io_err(root))?.is_dir() {
        return Err(VerifyError::NotADirectory { path: root.to_path_buf() });
    }
    let mut entries = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel_dir) = pending.pop() {
        let dir = root.join(&rel_dir);
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            let path = item.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let rel = rel_dir.join(item.file_name());
            let file_type = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if file_type.is_file() {
                Entry { kind: Kind::File, mode, size: meta.len(), hash: Some(hash_file(&path)?), target: None }
            } else if file_type.is_dir() {
                pending.push(rel.clone());
                Entry { kind: Kind::Dir, mode, size: 0, hash: None, target: None }
            } else if file_type.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err(&path))?;
                Entry { kind: Kind::Symlink, mode, size: 0, hash: None, target: Some(target) }
            } else {
                Entry { kind: Kind::Other, mode, size: 0, hash: None, target: None }
            };
            entries.insert(rel, entry);
        }
    }
    Ok(entries)
}

fn hash_file(path: &Path) -> Result<[u8; 32], VerifyError> {
    let io_err = |source| VerifyError::Io { path: path.to_path_buf(), source };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(hasher.finalize().into())
}

/// The differences, in path order (several for one path when e.g. both its mode and content differ). A size
/// difference implies different content and is reported alone; symlink permission bits are not compared (they mean
/// nothing on Linux); a kind difference is reported alone.
pub(crate) fn compare(expected: &BTreeMap<PathBuf, Entry>, actual: &BTreeMap<PathBuf, Entry>) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut push = |path: &Path, what: String| out.push(Difference { path: path.to_path_buf(), what });
    let mut paths: Vec<&PathBuf> = expected.keys().chain(actual.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let (e, a) = match (expected.get(path), actual.get(path)) {
            (Some(e), Some(a)) => (e, a),
            (Some(_), None) => {
                push(path, "missing in restore".into());
                continue;
            }
            (None, _) => {
                push(path, "extra in restore".into());
                continue;
            }
        };
        if e.kind != a.kind {
            push(path, format!("kind {} vs {}", e.kind, a.kind));
            continue;
        }
        if e.kind != Kind::Symlink && e.mode != a.mode {
            push(path, format!("mode {:o} vs {:o}", e.mode, a.mode));
        }
        if e.size != a.size {
            push(path, format!("size {} vs {}", e.size, a.size));
        } else if e.hash != a.hash {
            push(path, "content differs".into());
        }
        if e.target != a.target {
            let show = |t: &Option<PathBuf>| t.as_ref().map_or("none".to_string(), |t| t.display().to_string());
            push(path, format!("target {} vs {}", show(&e.target), show(&a.target)));
        }
    }
    out
}

/// How many files and directories a manifest holds, and the files' total size.
pub(crate) fn summary(m: &BTreeMap<PathBuf, Entry>) -> Summary {
    m.values().fold(Summary::default(), |mut s, e| {
        match e.kind {
            Kind::File => {
                s.files += 1;
                s.bytes = s.bytes.saturating_add(e.size);
            }
            Kind::Dir => s.dirs += 1,
            Kind::Symlink | Kind::Other => {}
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// One node of a test tree: `f` file (content, mode), `d` directory (mode), `l` symlink (target).
    enum Node {
        F(&'static str, &'static str, u32),
        D(&'static str, u32),
        L(&'static str, &'static str),
    }
    use Node::{D, F, L};

    const BASE: &[Node] = &[
        F("a.txt", "abc", 0o644),
        D("sub", 0o755),
        F("sub/b.bin", "0123456789", 0o600),
        D("sub/empty", 0o700),
        L("link", "sub/b.bin"),
    ];

    fn build(nodes: &[Node]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for node in nodes {
            match node {
                F(p, content, mode) => {
                    let path = dir.path().join(p);
                    fs::write(&path, content).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                }
                D(p, mode) => {
                    let path = dir.path().join(p);
                    fs::create_dir_all(&path).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                }
                L(p, target) => symlink(target, dir.path().join(p)).unwrap(),
            }
        }
        dir
    }

    /// BASE with the node at `path` replaced (`Some`) or removed (`None`), plus `extra` nodes.
    fn variant(path: &str, replacement: Option<Node>, extra: Vec<Node>) -> Vec<Node> {
        let name = |n: &Node| match n {
            F(p, ..) | D(p, ..) | L(p, ..) => *p,
        };
        let clone = |n: &Node| match n {
            F(p, c, m) => F(p, c, *m),
            D(p, m) => D(p, *m),
            L(p, t) => L(p, t),
        };
        let mut nodes: Vec<Node> = Vec::new();
        let mut replacement = replacement;
        for n in BASE {
            if name(n) == path {
                nodes.extend(replacement.take());
            } else {
                nodes.push(clone(n));
            }
        }
        nodes.extend(replacement);
        nodes.extend(extra);
        nodes
    }

    fn diffs(actual: &[Node]) -> Vec<(String, String)> {
        let (e, a) = (build(BASE), build(actual));
        compare(&manifest(e.path()).unwrap(), &manifest(a.path()).unwrap())
            .into_iter()
            .map(|d| (d.path.display().to_string(), d.what))
            .collect()
    }

    #[test]
    fn each_kind_of_difference_is_found() {
        let d = |p: &str, w: &str| (p.to_string(), w.to_string());
        type Case = (&'static str, Vec<Node>, Vec<(String, String)>);
        let cases: Vec<Case> = vec![
            ("identical", variant("", None, vec![]), vec![]),
            ("missing file", variant("a.txt", None, vec![]), vec![d("a.txt", "missing in restore")]),
            (
                "missing dir and its content",
                variant("sub/empty", None, vec![]),
                vec![d("sub/empty", "missing in restore")],
            ),
            ("extra file", variant("", None, vec![F("new", "", 0o644)]), vec![d("new", "extra in restore")]),
            ("content", variant("a.txt", Some(F("a.txt", "abd", 0o644)), vec![]), vec![d("a.txt", "content differs")]),
            ("size", variant("a.txt", Some(F("a.txt", "abcd", 0o644)), vec![]), vec![d("a.txt", "size 3 vs 4")]),
            ("mode", variant("a.txt", Some(F("a.txt", "abc", 0o600)), vec![]), vec![d("a.txt", "mode 644 vs 600")]),
            (
                "mode and content",
                variant("a.txt", Some(F("a.txt", "xyz", 0o4755)), vec![]),
                vec![d("a.txt", "mode 644 vs 4755"), d("a.txt", "content differs")],
            ),
            (
                "dir mode",
                variant("sub/empty", Some(D("sub/empty", 0o755)), vec![]),
                vec![d("sub/empty", "mode 700 vs 755")],
            ),
            (
                "file became a dir",
                variant("a.txt", Some(D("a.txt", 0o644)), vec![]),
                vec![d("a.txt", "kind file vs dir")],
            ),
            (
                "symlink became a file",
                variant("link", Some(F("link", "0123456789", 0o600)), vec![]),
                vec![d("link", "kind symlink vs file")],
            ),
            (
                "symlink target",
                variant("link", Some(L("link", "a.txt")), vec![]),
                vec![d("link", "target sub/b.bin vs a.txt")],
            ),
        ];
        for (name, actual, expected) in cases {
            assert_eq!(diffs(&actual), expected, "{name}");
        }
        // A whole directory missing: it and everything below it.
        let (e, a) = (build(BASE), build(&[F("a.txt", "abc", 0o644), L("link", "sub/b.bin")]));
        let missing: Vec<String> = compare(&manifest(e.path()).unwrap(), &manifest(a.path()).unwrap())
            .into_iter()
            .filter(|d| d.what == "missing in restore")
            .map(|d| d.path.display().to_string())
            .collect();
        assert_eq!(missing, ["sub", "sub/b.bin", "sub/empty"]);
    }

    #[test]
    fn manifest_records_kind_mode_size_hash_and_target_without_following_links() {
        let dir = build(BASE);
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "x").unwrap();
        symlink(outside.path(), dir.path().join("dirlink")).unwrap();
        let m = manifest(dir.path()).unwrap();
        let keys: Vec<String> = m.keys().map(|k| k.display().to_string()).collect();
        assert_eq!(keys, ["a.txt", "dirlink", "link", "sub", "sub/b.bin", "sub/empty"]);

        let a = &m[Path::new("a.txt")];
        assert_eq!((a.kind.clone(), a.mode, a.size), (Kind::File, 0o644, 3));
        // SHA-256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = a.hash.unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, abc);
        let sub = &m[Path::new("sub")];
        assert_eq!((sub.kind.clone(), sub.mode, sub.size, sub.hash), (Kind::Dir, 0o755, 0, None));
        let link = &m[Path::new("dirlink")];
        assert_eq!((link.kind.clone(), link.target.as_deref()), (Kind::Symlink, Some(outside.path())));

        assert_eq!(summary(&m), Summary { files: 2, dirs: 2, bytes: 13 });
        assert_eq!(summary(&BTreeMap::new()), Summary::default());
    }

    #[test]
    fn bad_roots_are_errors_naming_them() {
        let dir = build(BASE);
        let err = manifest(&dir.path().join("a.txt")).unwrap_err();
        assert!(matches!(err, VerifyError::NotADirectory { .. }), "{err:?}");
        assert!(err.to_string().ends_with("a.txt is not a directory"), "{err}");
        let err = manifest(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read ") && err.to_string().contains("nope"), "{err}");
        // An empty tree is an empty manifest.
        let empty = tempfile::tempdir().unwrap();
        assert!(manifest(empty.path()).unwrap().is_empty());
    }
}
