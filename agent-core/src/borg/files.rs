//! The files inside one archive: `borg list --json-lines ARCHIVE` read into [`FileEntry`]s, and the one check of a
//! path an operator names inside an archive ([`archive_path`]) before it reaches borg as a `pp:` pattern.
//! Pure functions over text; must not know how borg is run (`mod.rs`) nor what is backed up.

use serde::Deserialize;

use super::parse::parse_time;

/// One entry of an archive as `borg list --json-lines` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the archive's root (`sub/file`), never `.`.
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `fifo`, `chardev`, `blockdev`, `socket`, or borg's own letter.
    pub kind: String,
    pub size: u64,
    pub mtime_unix: i64,
    /// `-rw-r--r--` as borg prints it.
    pub mode: String,
    /// A symlink's target (empty otherwise).
    pub link_target: String,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    mode: String,
    path: String,
    #[serde(default)]
    linktarget: String,
    #[serde(default)]
    size: u64,
    mtime: String,
}

/// The entries of `borg list --json-lines ARCHIVE` (in borg's order), without the archive's root `.`; borg prints
/// zone-less mtimes, read as UTC (borg runs with `TZ=UTC`).
pub fn parse_file_lines(out: &[u8]) -> Result<Vec<FileEntry>, String> {
    let mut entries = Vec::new();
    for (i, line) in out.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: Line = serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if l.path == "." {
            continue;
        }
        let mtime_unix = parse_time(&l.mtime)
            .ok_or_else(|| format!("line {}: `{}` has a bad mtime `{}`", i + 1, l.path, l.mtime))?;
        let kind = match l.kind.as_str() {
            "-" => "file",
            "d" => "dir",
            "l" => "symlink",
            "h" => "hardlink",
            "p" => "fifo",
            "c" => "chardev",
            "b" => "blockdev",
            "s" => "socket",
            other => other,
        };
        entries.push(FileEntry {
            path: l.path,
            kind: kind.to_string(),
            size: l.size,
            mtime_unix,
            mode: l.mode,
            link_target: l.linktarget,
        });
    }
    Ok(entries)
}

/// A path inside an archive as an operator names it, checked: relative, no `.` or `..` component, no empty
/// component (a trailing `/` is dropped), no NUL or other control character, not starting with `-` (borg would read
/// it as an option). Returns it normalised (`sub/dir`); the error says what is wrong with it.
pub fn archive_path(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if p.chars().any(char::is_control) {
        return Err(format!("`{}` contains a control character", p.escape_default()));
    }
    if p.starts_with('/') {
        return Err(format!(
            "`{p}` is absolute: name it relative to the data's root (as `labctl services files` shows it)"
        ));
    }
    if p.starts_with('-') {
        return Err(format!("`{p}` starts with `-` (borg would read it as an option)"));
    }
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    for c in trimmed.split('/') {
        match c {
            "" => return Err(format!("`{p}` has an empty component (`//`)")),
            "." | ".." => return Err(format!("`{p}` has a `{c}` component")),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// The `pp:` (path prefix) pattern that selects `path` and everything under it, and nothing else: `borg` reads it
/// literally (no `sh:`/`re:` style, no shell wildcards).
pub fn prefix_pattern(path: &str) -> String {
    format!("pp:{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_json_lines_are_read() {
        let out = include_bytes!("../testdata/borg_list_json_lines.jsonl");
        let entries = parse_file_lines(out).unwrap();
        assert_eq!(entries.len(), 10, "{entries:?}");
        assert!(entries.iter().all(|e| e.path != "."));
        let by = |p: &str| entries.iter().find(|e| e.path == p).unwrap();
        assert_eq!(by("sub").kind, "dir");
        assert_eq!(by("a.txt").kind, "file");
        assert_eq!(by("a.txt").size, 6);
        assert_eq!(by("a.txt").mode, "-rw-r--r--");
        assert_eq!(by("a.txt").mtime_unix, 1_796_482_994);
        assert_eq!(by("link").kind, "symlink");
        assert_eq!(by("link").link_target, "a.txt");
        assert_eq!(by("sub/spa ce \u{fc}.txt").size, 2);
        assert_eq!(by("sparse.img").size, 5 * 1024 * 1024);
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        for (out, want) in [
            (&b"{\"type\": \"-\"}\n"[..], "line 1"),
            (b"\nnot json\n", "line 2"),
            (
                b"{\"type\":\"-\",\"mode\":\"x\",\"path\":\"a\",\"mtime\":\"yesterday\",\"size\":1}",
                "bad mtime `yesterday`",
            ),
        ] {
            let e = parse_file_lines(out).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert!(parse_file_lines(b"").unwrap().is_empty());
    }

    #[test]
    fn archive_paths_are_checked() {
        for (p, want) in [
            ("a.txt", Ok("a.txt")),
            ("sub/deep/", Ok("sub/deep")),
            ("re:x", Ok("re:x")),
            ("sp ace/ü", Ok("sp ace/ü")),
            ("", Err("is empty")),
            ("/etc/passwd", Err("is absolute")),
            ("-dash", Err("starts with `-`")),
            ("--help", Err("starts with `-`")),
            ("sub/../etc", Err("`..` component")),
            ("..", Err("`..` component")),
            ("./a", Err("`.` component")),
            ("a//b", Err("empty component")),
            ("a\0b", Err("NUL byte")),
            ("a\nb", Err("control character")),
        ] {
            match (archive_path(p), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{p:?}: {e}"),
                (got, w) => panic!("{p:?}: got {got:?}, want {w:?}"),
            }
        }
        assert_eq!(prefix_pattern("sub/x"), "pp:sub/x");
    }
}
