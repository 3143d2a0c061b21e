//! The archive names both agents give borg: `NAME-YYYYMMDDTHHMMSSZ`, the time of the backup in UTC (the "stamp"),
//! one scheme so that a VM's and a service's archives look alike in a repository. Pure functions over names; must
//! not know how borg is run (`mod.rs`) nor what NAME stands for (a VM, a service).

/// The glob of NAME's archives and nothing else: `NAME-????????T??????Z` (`NAME-*` would also match `NAME-2`'s).
pub fn archive_glob(name: &str) -> String {
    format!("{name}-????????T??????Z")
}

/// The stamp (`YYYYMMDDTHHMMSSZ`) of one of NAME's archive names, if it is one.
pub fn archive_stamp<'a>(name: &str, archive: &'a str) -> Option<&'a str> {
    let stamp = archive.strip_prefix(name)?.strip_prefix('-')?;
    is_stamp(stamp).then_some(stamp)
}

/// True for `YYYYMMDDTHHMMSSZ` (digits where the digits go; the values are not checked).
pub fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// A stamp as borg's `--timestamp` wants it: `YYYY-MM-DDTHH:MM:SS` (read as UTC: borg runs with `TZ=UTC`).
pub fn borg_timestamp(stamp: &str) -> Option<String> {
    let t = is_stamp(stamp).then_some(stamp)?;
    Some(format!("{}-{}-{}T{}:{}:{}", &t[0..4], &t[4..6], &t[6..8], &t[9..11], &t[11..13], &t[13..15]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_globs_and_stamps() {
        assert_eq!(archive_glob("lab"), "lab-????????T??????Z");
        assert_eq!(archive_stamp("lab", "lab-20260105T040000Z"), Some("20260105T040000Z"));
        for not_ours in ["lab-2-20260105T040000Z", "lab-20260105T040000Z.checkpoint", "lab-x", "lab20260105T040000Z"] {
            assert_eq!(archive_stamp("lab", not_ours), None, "{not_ours}");
        }
        assert!(is_stamp("20261125T030000Z") && !is_stamp("2026112ST030000Z") && !is_stamp("20261125T030000"));
        assert_eq!(borg_timestamp("20260105T040000Z").as_deref(), Some("2026-01-05T04:00:00"));
        assert_eq!(borg_timestamp("2026-01-05"), None);
    }
}
