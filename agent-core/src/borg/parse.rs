//! What borg prints, read: `create --json`, `list --json`, the `prune --list` lines, the stderr lines of
//! `--progress --log-json`, a traceback borg stopped on, and a repository's `lock.roster`. Pure functions over text;
//! must not know how borg is run (`mod.rs`).

use serde::Deserialize;

use super::{ArchiveInfo, CreateStats, LockHolder};
use crate::cron::days_from_civil;

#[derive(Deserialize)]
struct CreateJson {
    archive: CreateArchiveJson,
    repository: RepositoryIdJson,
}

#[derive(Deserialize)]
struct CreateArchiveJson {
    name: String,
    duration: f64,
    stats: CreateStatsJson,
}

#[derive(Deserialize)]
struct CreateStatsJson {
    original_size: u64,
    compressed_size: u64,
    deduplicated_size: u64,
    nfiles: u64,
}

/// The archive's statistics (and the repository's id) from the stdout of `borg create --json`.
pub fn parse_create(out: &[u8]) -> Result<CreateStats, String> {
    let v: CreateJson = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    let repository_id = checked_id(v.repository.id)?;
    let (a, s) = (v.archive.name, v.archive.stats);
    Ok(CreateStats {
        archive: a,
        original_size: s.original_size,
        compressed_size: s.compressed_size,
        deduplicated_size: s.deduplicated_size,
        nfiles: s.nfiles,
        duration_seconds: v.archive.duration,
        repository_id,
        files_read: None,
    })
}

#[derive(Deserialize)]
struct ListJson {
    archives: Vec<ListEntry>,
}

#[derive(Deserialize)]
struct ListEntry {
    name: String,
    time: Option<String>,
    start: Option<String>,
}

/// Archives (in borg's order) from the stdout of `borg list --json REPO`, whose times (zone-less) are read as UTC.
pub fn parse_list(out: &[u8]) -> Result<Vec<ArchiveInfo>, String> {
    let v: ListJson = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    v.archives
        .into_iter()
        .map(|a| {
            let time = a.time.or(a.start).ok_or_else(|| format!("archive `{}` has no time", a.name))?;
            let time_unix = parse_time(&time).ok_or_else(|| format!("archive `{}` has a bad time `{time}`", a.name))?;
            Ok(ArchiveInfo { name: a.name, time_unix })
        })
        .collect()
}

#[derive(Deserialize)]
struct RepositoryJson {
    repository: RepositoryIdJson,
}

#[derive(Deserialize)]
struct RepositoryIdJson {
    id: String,
}

/// The repository's id (64 hex digits, chosen at `borg init`) from the stdout of `borg list --json` or
/// `borg info --json`: what tells one repository from another one put at the same location.
pub fn parse_repository_id(out: &[u8]) -> Result<String, String> {
    let v: RepositoryJson = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    checked_id(v.repository.id)
}

fn checked_id(id: String) -> Result<String, String> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(format!("`{id}` is not a repository id"))
    }
}

/// The repository id from a local repository's `config` file (`[repository]` … `id = HEX`).
pub fn parse_config_id(text: &str) -> Result<String, String> {
    let id = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim())
        .ok_or("no `id` in the repository's config")?;
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(format!("`{id}` is not a repository id"))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]` as Unix seconds; without a zone the time is UTC.
pub(super) fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "" | "Z" | "+00:00" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            let (oh, om) = (oh.parse::<i64>().ok()?, om.parse::<i64>().ok()?);
            sign * (oh * 3600 + om * 60)
        }
    };
    let local = days_from_civil(i64::from(y), mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    Some(local - offset)
}

/// The names of the archives deleted, from the stderr of `borg prune --list`: lines such as
/// `Pruning archive (1/3):   NAME   Sat, 2026-01-03 00:00:00 [ID]` (borg 1.2; `Pruning archive:` in 1.1).
/// `Keeping archive` and `Would prune` (dry run) lines are not deletions.
pub fn parse_pruned(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Pruning archive")?;
            let rest = &rest[rest.find(':')? + 1..];
            // Drop ` [ID]`, then `Ddd, YYYY-MM-DD HH:MM:SS`: what remains is the name, padded to 36 columns.
            let rest = rest.trim_end().strip_suffix(']')?;
            let rest = &rest[..rest.rfind(" [")?];
            let (head, time) = rest.split_at_checked(rest.len().checked_sub(19)?)?;
            parse_time(&time.replacen(' ', "T", 1))?;
            let head = head.strip_suffix(' ')?;
            let name = &head[..head.rfind(' ')?];
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// One stderr line of borg run with `--progress --log-json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// `archive_progress` of `create`: the bytes read so far (borg's original size) and the files done.
    Created { original_size: u64, nfiles: u64 },
    /// `progress_percent` of `extract`: bytes written of the archive's total (known once borg has summed it).
    Extracted { done: u64, total: u64 },
    /// Any other progress report (a cache transaction, a `finished` marker, extract's first sum): nothing to show.
    OtherProgress,
    /// `file_status` of `create --list`: a file borg listed (with `--filter=AME`: one it read) and its status letter.
    FileStatus { status: String, path: String },
    /// A `log_message`: its text, as borg prints it without `--log-json` (warnings and errors are read from it).
    Message(String),
    /// Not borg's JSON (a traceback, ssh's own words): the line as it is.
    Text(String),
}

/// Reads one stderr line of borg's `--progress --log-json`. Never fails: what is not understood is [`LogLine::Text`].
pub fn parse_log_line(line: &str) -> LogLine {
    let text = || LogLine::Text(line.to_string());
    if !line.trim_start().starts_with('{') {
        return text();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return text() };
    let int = |key: &str| v.get(key).and_then(serde_json::Value::as_u64);
    let str_of = |key: &str| v.get(key).and_then(serde_json::Value::as_str).map(str::to_string);
    let finished = v.get("finished").and_then(serde_json::Value::as_bool).unwrap_or(false);
    match v.get("type").and_then(serde_json::Value::as_str) {
        Some("archive_progress") => match (finished, int("original_size"), int("nfiles")) {
            (false, Some(original_size), Some(nfiles)) => LogLine::Created { original_size, nfiles },
            _ => LogLine::OtherProgress,
        },
        Some("progress_percent") if v.get("msgid").and_then(serde_json::Value::as_str) == Some("extract") => {
            match (finished, int("current"), int("total")) {
                (false, Some(done), Some(total)) if total > 0 => LogLine::Extracted { done, total },
                _ => LogLine::OtherProgress,
            }
        }
        Some("progress_percent" | "progress_message") => LogLine::OtherProgress,
        Some("file_status") => match (str_of("status"), str_of("path")) {
            (Some(status), Some(path)) => LogLine::FileStatus { status, path },
            _ => text(),
        },
        Some("log_message") => match v.get("message").and_then(serde_json::Value::as_str) {
            Some(message) => LogLine::Message(message.to_string()),
            None => text(),
        },
        _ => text(),
    }
}

/// Lock holders from a repository's `lock.roster`: `{"exclusive": [[HOST, PID, THREAD]], "shared": [...]}`.
/// Anything malformed yields no holder.
pub fn parse_roster(json: &str) -> Vec<LockHolder> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    let mut holders = Vec::new();
    for (key, exclusive) in [("exclusive", true), ("shared", false)] {
        for entry in v.get(key).and_then(|e| e.as_array()).into_iter().flatten() {
            let host = entry.get(0).and_then(|h| h.as_str());
            let pid = entry.get(1).and_then(|p| p.as_u64()).and_then(|p| u32::try_from(p).ok());
            if let (Some(host), Some(pid)) = (host, pid) {
                holders.push(LockHolder { host: host.to_string(), pid, exclusive });
            }
        }
    }
    holders
}

/// What borg said before stopping on an error it does not handle (its stderr as the runner keeps it, a `--log-json`
/// run's messages as text): borg's own messages before the traceback ("No space left on device, cleaning up partial
/// transaction to free space.") and the exception the traceback ends with, its frames and borg's platform lines left
/// out. `None` when there is no traceback.
pub(super) fn unhandled_error(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    let start = lines.iter().position(|l| *l == "Traceback (most recent call last):")?;
    let end = lines[start..].iter().position(|l| l.starts_with("Platform: ")).map_or(lines.len(), |i| start + i);
    let mut out: Vec<String> =
        lines[..start].iter().filter(|l| !l.is_empty() && **l != "Local Exception").map(|l| l.to_string()).collect();
    // The last exception line: "OSError: [Errno 28] No space left on device" (not a frame, nor the code under it).
    let exception = lines[start..end].iter().rev().find(|l| {
        l.split_once(": ").is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
    });
    out.push(format!("borg stopped on an error it does not handle: {}", exception.unwrap_or(&"(no exception line)")));
    Some(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Everything below in capital letters was captured from borg 1.2.4 (Debian) on this machine, TZ=UTC.

    /// `borg create --progress --log-json repo::a1 d` of a 300 MiB file (stderr).
    const CREATE_PROGRESS: &str = include_str!("../testdata/borg_create_progress.jsonl");
    /// `borg create --progress --log-json repo::missing /tmp/bp/nonexist d2`: exit code 1, a warning.
    const CREATE_WARNING: &str = include_str!("../testdata/borg_create_warning.jsonl");
    /// `borg create --progress --log-json /tmp/bp/norepo::x d`: exit code 2.
    const CREATE_NOREPO: &str = include_str!("../testdata/borg_create_norepo.jsonl");
    /// `borg extract --progress --log-json repo::a1`, its first five lines and last three.
    const EXTRACT_PROGRESS: &str = include_str!("../testdata/borg_extract_progress.jsonl");
    /// `borg create --json --progress --list --filter=AME --log-json repo::lab-1 .` of 20 MiB of random data to a
    /// repository on an 8 MiB tmpfs: exit code 2, a traceback.
    const CREATE_ENOSPC: &str = include_str!("../testdata/borg_create_enospc.jsonl");

    #[test]
    fn an_unhandled_error_is_borgs_messages_and_the_exception_without_the_traceback() {
        // The stderr as the runner keeps it: each log message's text (`stderr::filter`).
        let kept: Vec<String> = CREATE_ENOSPC
            .lines()
            .filter_map(|l| match parse_log_line(l) {
                LogLine::Message(t) | LogLine::Text(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(
            unhandled_error(&kept.join("\n")).unwrap(),
            "data.raw: read: [Errno 28] No space left on device\n\
             No space left on device, cleaning up partial transaction to free space.\n\
             borg stopped on an error it does not handle: OSError: [Errno 28] No space left on device"
        );
        assert_eq!(unhandled_error("Repository /r does not exist."), None);
        assert_eq!(
            unhandled_error(
                "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\nKeyError: 'k'"
            ),
            Some("borg stopped on an error it does not handle: KeyError: 'k'".into())
        );
    }

    #[test]
    fn progress_lines_give_bytes_and_log_messages_their_text() {
        let created: Vec<(u64, u64)> = CREATE_PROGRESS
            .lines()
            .filter_map(|l| match parse_log_line(l) {
                LogLine::Created { original_size, nfiles } => Some((original_size, nfiles)),
                LogLine::OtherProgress => None,
                other => panic!("{other:?} from {l}"),
            })
            .collect();
        assert_eq!(created, [(0, 0), (82_678_466, 0), (151_408_954, 0), (236_875_146, 0)]);

        let warning: Vec<LogLine> = CREATE_WARNING
            .lines()
            .map(parse_log_line)
            .filter(|l| !matches!(l, LogLine::OtherProgress | LogLine::Created { .. }))
            .collect();
        assert_eq!(
            warning,
            [LogLine::Message("/tmp/bp/nonexist: [Errno 2] No such file or directory: 'nonexist'".into())]
        );
        let norepo: Vec<LogLine> = CREATE_NOREPO.lines().map(parse_log_line).collect();
        assert_eq!(norepo, [LogLine::Message("Repository /tmp/bp/norepo does not exist.".into())]);

        let extracted: Vec<LogLine> = EXTRACT_PROGRESS.lines().map(parse_log_line).collect();
        assert_eq!(extracted[0], LogLine::OtherProgress, "the first line only says borg is summing the archive");
        assert_eq!(extracted[1], LogLine::Extracted { done: 1_122_976, total: 314_572_800 });
        assert_eq!(extracted[6], LogLine::Extracted { done: 314_572_800, total: 314_572_800 });
        assert_eq!(extracted[7], LogLine::OtherProgress);

        for (line, want) in [
            ("Traceback (most recent call last):", LogLine::Text("Traceback (most recent call last):".into())),
            ("{not json", LogLine::Text("{not json".into())),
            (r#"{"type": "log_message"}"#, LogLine::Text(r#"{"type": "log_message"}"#.into())),
            (
                r#"{"type": "file_status", "status": "M", "path": "disk.raw"}"#,
                LogLine::FileStatus { status: "M".into(), path: "disk.raw".into() },
            ),
            (
                r#"{"type": "file_status", "status": "M"}"#,
                LogLine::Text(r#"{"type": "file_status", "status": "M"}"#.into()),
            ),
            (r#"{"type": "archive_progress", "original_size": -1, "nfiles": 0}"#, LogLine::OtherProgress),
            (r#"{"type": "progress_percent", "msgid": "check", "current": 1, "total": 2}"#, LogLine::OtherProgress),
            ("", LogLine::Text(String::new())),
        ] {
            assert_eq!(parse_log_line(line), want, "{line}");
        }
    }

    /// `borg create --json --lock-wait 60 --timestamp 2026-01-05T04:00:00 /tmp/bcap2/r::svc-20260105T040000Z .`
    const CREATE: &str = r#"{
    "archive": {
        "command_line": [
            "/usr/bin/borg",
            "create",
            "--json",
            "--lock-wait",
            "60",
            "--timestamp",
            "2026-01-05T04:00:00",
            "/tmp/bcap2/r::svc-20260105T040000Z",
            "."
        ],
        "duration": 0.008067,
        "end": "2026-01-05T04:00:00.000000",
        "id": "ec04c2a9d07c028af6bdb262e6c2743b70b8be3b283c714530b32cb606c0308a",
        "limits": {
            "max_archive_size": 2.5987675928817417e-05
        },
        "name": "svc-20260105T040000Z",
        "start": "2026-01-05T04:00:00.000000",
        "stats": {
            "compressed_size": 5637,
            "deduplicated_size": 5637,
            "nfiles": 2,
            "original_size": 5577
        }
    },
    "cache": {
        "path": "/tmp/bcap2/base/.cache/borg/9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b",
        "stats": {
            "total_chunks": 4,
            "total_csize": 5092,
            "total_size": 5006,
            "total_unique_chunks": 4,
            "unique_csize": 5948,
            "unique_size": 6043
        }
    },
    "encryption": {
        "mode": "repokey"
    },
    "repository": {
        "id": "9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b",
        "last_modified": "2026-11-25T19:56:18.000000",
        "location": "/tmp/bcap2/r"
    }
}
"#;

    /// `borg list --json /tmp/bcap2/r` after a second archive made with `--timestamp 2026-01-06T04:00:00`.
    const LIST: &str = r#"{
    "archives": [
        {
            "archive": "svc-20260105T040000Z",
            "barchive": "svc-20260105T040000Z",
            "id": "ec04c2a9d07c028af6bdb262e6c2743b70b8be3b283c714530b32cb606c0308a",
            "name": "svc-20260105T040000Z",
            "start": "2026-01-05T04:00:00.000000",
            "time": "2026-01-05T04:00:00.000000"
        },
        {
            "archive": "svc-20260106T040000Z",
            "barchive": "svc-20260106T040000Z",
            "id": "f366fe34932e102f1dfbf852d9d163332182c8239cfb75c9bdde515cb1a0a9e4",
            "name": "svc-20260106T040000Z",
            "start": "2026-01-06T04:00:00.000000",
            "time": "2026-01-06T04:00:00.000000"
        }
    ],
    "encryption": {
        "mode": "repokey"
    },
    "repository": {
        "id": "9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b",
        "last_modified": "2026-11-25T19:56:19.000000",
        "location": "/tmp/bcap2/r"
    }
}
"#;

    /// stderr of `borg prune --list --lock-wait 60 --glob-archives '*' --keep-within 1d --keep-last 1 /tmp/bcap3/r`
    /// over four archives, one of them with a name longer than the 36-column padding, one with spaces.
    const PRUNE: &str = "\
Keeping archive (rule: secondly #1):     svc-20260104T000000Z                 Sun, 2026-01-04 00:00:00 [2c8b0b9ae9a481f7277a47b32531bfac29372f311778f9d2bfc26df1a7d079cf]
Pruning archive (1/3):                   a-very-long-archive-name-that-exceeds-thirty-six-characters Sat, 2026-01-03 00:00:00 [3cf45105c34da8e2d9ff3473b5e7884646b31a9bc6607ab0a5247bfe07e8ce21]
Pruning archive (2/3):                   name with  spaces                    Fri, 2026-01-02 00:00:00 [6468cef014f95754df6bd6cb8a04863d66f8f8eef5a0c28985de1eaafa24bf01]
Pruning archive (3/3):                   svc-20260101T000000Z                 Thu, 2026-01-01 00:00:00 [1e02780bad7abcd40a4364f9d48deb1df2e3e239422a25d851c81b46264326b7]
";

    /// stderr of `borg prune --list --dry-run --keep-within 2d --glob-archives '*' /tmp/bcap2/r` (nothing deleted).
    const PRUNE_DRY_RUN: &str = "\
Keeping archive (rule: within #1):       sp                                   Wed, 2026-11-25 19:58:58 [7ffc711ef1362495c215ad60f02112f6beadfbe5a5b4ee7ee3d7188813654fa5]
Would prune:                             svc-20260106T040000Z                 Tue, 2026-01-06 04:00:00 [f366fe34932e102f1dfbf852d9d163332182c8239cfb75c9bdde515cb1a0a9e4]
";

    /// `lock.roster` while `borg with-lock /tmp/bcap2/r sleep 6` ran, and while two `borg extract --stdout` did.
    const ROSTER_EXCLUSIVE: &str = r#"{"exclusive": [["vm@3281355014145", 3757, 0]]}"#;
    const ROSTER_SHARED: &str = r#"{"shared": [["vm@3281355014145", 4223, 0], ["vm@3281355014145", 4219, 0]]}"#;

    #[test]
    fn repository_ids() {
        // `borg list --json --last 1` of a repokey repository (borg 1.2.4).
        let out = br#"{"archives": [{"archive": "a1", "barchive": "a1", "id": "13850f9c6a356b00a06f199f0e87eb06d86f924268cd9f8c2328bbca062012e0", "name": "a1", "start": "2026-12-05T09:55:22.000000", "time": "2026-12-05T09:55:22.000000"}], "encryption": {"mode": "repokey"}, "repository": {"id": "416f3a447d74ad40191c44819f7a095920d3c8e6776fa8a4e9ca03bdcbb272fd", "last_modified": "2026-12-05T09:55:22.000000", "location": "/tmp/cap/r2"}}"#;
        assert_eq!(
            parse_repository_id(out).unwrap(),
            "416f3a447d74ad40191c44819f7a095920d3c8e6776fa8a4e9ca03bdcbb272fd"
        );
        assert!(parse_repository_id(br#"{"repository": {"id": "../x"}}"#).unwrap_err().contains("not a repository id"));
        assert!(parse_repository_id(b"{}").is_err());
        // A local repository's `config` (borg 1.2.4, `borg init -e repokey`; the key line shortened).
        let config = "[repository]\nversion = 1\nsegments_per_dir = 1000\nmax_segment_size = 524288000\n\
            append_only = 0\nstorage_quota = 0\nadditional_free_space = 0\n\
            id = 416f3a447d74ad40191c44819f7a095920d3c8e6776fa8a4e9ca03bdcbb272fd\nkey = hqlhbGdvcml0aG2m\n";
        assert_eq!(
            parse_config_id(config).unwrap(),
            "416f3a447d74ad40191c44819f7a095920d3c8e6776fa8a4e9ca03bdcbb272fd"
        );
        assert!(parse_config_id("[repository]\n").is_err());
    }

    #[test]
    fn create_and_list_json_parse() {
        let stats = parse_create(CREATE.as_bytes()).unwrap();
        assert_eq!(
            stats,
            CreateStats {
                archive: "svc-20260105T040000Z".into(),
                original_size: 5577,
                compressed_size: 5637,
                deduplicated_size: 5637,
                nfiles: 2,
                duration_seconds: 0.008067,
                repository_id: "9bf30216893b24b9dca1f43a76d44ab0851203a8e5ec8fcde0aaab1c1e15772b".into(),
                files_read: None,
            }
        );
        assert!(parse_create(b"{}").is_err());
        assert!(parse_create(b"").is_err());

        let day = |d: u32| days_from_civil(2026, 1, d) * 86_400;
        assert_eq!(
            parse_list(LIST.as_bytes()).unwrap(),
            vec![
                ArchiveInfo { name: "svc-20260105T040000Z".into(), time_unix: day(5) + 4 * 3600 },
                ArchiveInfo { name: "svc-20260106T040000Z".into(), time_unix: day(6) + 4 * 3600 },
            ]
        );
        assert_eq!(day(5) + 4 * 3600, 1_767_585_600);
        assert_eq!(parse_list(br#"{"archives": []}"#).unwrap(), vec![]);
        let bad = br#"{"archives": [{"name": "x", "time": "yesterday"}]}"#;
        assert!(parse_list(bad).unwrap_err().contains("bad time `yesterday`"));
    }

    #[test]
    fn times_are_utc_unless_zoned() {
        assert_eq!(parse_time("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:01.999999"), Some(1));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1969-12-31T23:00:00-01:00"), Some(0));
        for bad in ["", "2026-01-05", "2026-13-05T00:00:00", "2026-01-05 04:00:00", "2026-01-05T04:00:00 UTC"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn pruned_names_come_from_pruning_lines_only() {
        assert_eq!(
            parse_pruned(PRUNE),
            [
                "a-very-long-archive-name-that-exceeds-thirty-six-characters",
                "name with  spaces",
                "svc-20260101T000000Z"
            ]
        );
        assert_eq!(parse_pruned(PRUNE_DRY_RUN), Vec::<String>::new());
        // borg 1.1 wrote no counter.
        let old = "Pruning archive: svc-1                                Thu, 2026-01-01 00:00:00 [1e02]";
        assert_eq!(parse_pruned(old), ["svc-1"]);
        assert_eq!(parse_pruned("Pruning archive (1/1): garbage\n\n"), Vec::<String>::new());
    }

    #[test]
    fn roster_parses() {
        let h = |pid, exclusive| LockHolder { host: "vm@3281355014145".into(), pid, exclusive };
        assert_eq!(parse_roster(ROSTER_EXCLUSIVE), vec![h(3757, true)]);
        assert_eq!(parse_roster(ROSTER_SHARED), vec![h(4223, false), h(4219, false)]);
        assert_eq!(parse_roster("{}"), vec![]);
        assert_eq!(parse_roster("not json"), vec![]);
        assert_eq!(parse_roster(r#"{"exclusive": [["h"]], "shared": "x"}"#), vec![]);
    }
}
