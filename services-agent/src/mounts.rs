//! The kernel's mount table (`/proc/self/mountinfo`): what is mounted at and below a directory, so that an in-place
//! restore touches only its dataset's own filesystems. Parsed by a pure function tested on captured zfs-fuse lines.
//! Knows the mountinfo format; must not know zfs commands, services or restores.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// `fuse.zfs` (zfs-fuse), `zfs` (OpenZFS), `ext4`, `tmpfs`, …
    pub fstype: String,
    /// The dataset for ZFS, the device for block filesystems.
    pub source: String,
}

impl Mount {
    /// True when this is the ZFS dataset `dataset` or one of its descendants.
    pub(crate) fn is_dataset_or_child(&self, dataset: &str) -> bool {
        matches!(self.fstype.as_str(), "zfs" | "fuse.zfs")
            && (self.source == dataset || self.source.strip_prefix(dataset).is_some_and(|r| r.starts_with('/')))
    }
}

/// The current mount table of this process, in mount order (a later mount at the same point is on top).
pub(crate) fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(Mount { point: PathBuf::from(unescape(point)), fstype: unescape(fstype), source: unescape(source) })
        })
        .collect()
}

/// Why `dataset`, mounted at `mount`, cannot be restored in place as its own filesystems, if it cannot: it is not
/// what is mounted there (not mounted, or something is mounted over it), or a mount that is not the dataset or one
/// of its descendants lies inside it (a bind mount, another dataset, a tmpfs: no snapshot of the dataset covers it).
pub(crate) fn foreign_inside(all: &[Mount], dataset: &str, mount: &Path) -> Option<String> {
    match all.iter().rev().find(|m| m.point == mount) {
        None => return Some(format!("{} is not mounted (nothing is mounted at {})", dataset, mount.display())),
        Some(m) if m.fstype.starts_with("fuse.zfs") || m.fstype == "zfs" => {
            if m.source != dataset {
                return Some(format!("{} is mounted at {}, not {dataset}", m.source, mount.display()));
            }
        }
        Some(m) => {
            return Some(format!("{} ({}) is mounted over {dataset} at {}", m.source, m.fstype, mount.display()))
        }
    }
    all.iter().filter(|m| m.point != mount && m.point.starts_with(mount)).find(|m| !m.is_dataset_or_child(dataset)).map(
        |m| {
            format!(
                "{} is a mount of {} ({}) inside the dataset: no snapshot of {dataset} covers it (unmount it, or \
                 move it out of the dataset, then restore)",
                m.point.display(),
                m.source,
                m.fstype
            )
        },
    )
}

/// The mount points strictly inside `mount` of `dataset`'s descendants (its child datasets; nothing else),
/// parents before children.
pub(crate) fn children_inside(all: &[Mount], dataset: &str, mount: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = all
        .iter()
        .filter(|m| m.point != mount && m.point.starts_with(mount) && m.is_dataset_or_child(dataset))
        .map(|m| m.point.clone())
        .collect();
    v.sort_by_key(|p| p.components().count());
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on this machine: a zfs-fuse pool `safetymi` with `app`, its child `app/db`, and `other` mounted
    /// inside `app`; plus a bind mount and a path with a space, in the kernel's escaping.
    const MOUNTINFO: &str = "\
46 27 0:40 / /zfs-kstat rw,nosuid,nodev,relatime - fuse kstat rw,user_id=0,group_id=0,allow_other
47 27 0:41 / /var/tmp/safety-mi-YFxH/mnt rw,relatime - fuse.zfs safetymi rw,user_id=0,group_id=0,default_permissions,allow_other
48 47 0:42 / /var/tmp/safety-mi-YFxH/mnt/app rw,relatime - fuse.zfs safetymi/app rw,user_id=0,group_id=0,default_permissions,allow_other
49 48 0:43 / /var/tmp/safety-mi-YFxH/mnt/app/db rw,relatime - fuse.zfs safetymi/app/db rw,user_id=0,group_id=0,default_permissions,allow_other
50 48 0:44 / /var/tmp/safety-mi-YFxH/mnt/app/foreign rw,relatime - fuse.zfs safetymi/other rw,user_id=0,group_id=0,default_permissions,allow_other
51 48 8:1 /srv/media /var/tmp/safety-mi-YFxH/mnt/app/with\\040space rw,relatime shared:1 - ext4 /dev/sda1 rw
";

    #[test]
    fn mountinfo_parses_with_escapes() {
        let all = parse(MOUNTINFO);
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[2],
            Mount {
                point: PathBuf::from("/var/tmp/safety-mi-YFxH/mnt/app"),
                fstype: "fuse.zfs".into(),
                source: "safetymi/app".into()
            }
        );
        assert_eq!(all[5].point, PathBuf::from("/var/tmp/safety-mi-YFxH/mnt/app/with space"));
        assert_eq!((all[5].fstype.as_str(), all[5].source.as_str()), ("ext4", "/dev/sda1"));
        assert!(parse("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn only_the_dataset_and_its_children_may_be_inside() {
        let all = parse(MOUNTINFO);
        let app = Path::new("/var/tmp/safety-mi-YFxH/mnt/app");
        // `other` and the bind mount are foreign; the child `db` is not.
        let why = foreign_inside(&all, "safetymi/app", app).unwrap();
        assert!(why.starts_with("/var/tmp/safety-mi-YFxH/mnt/app/foreign is a mount of safetymi/other"), "{why}");
        let without_other: Vec<Mount> = all.iter().filter(|m| m.source != "safetymi/other").cloned().collect();
        let why = foreign_inside(&without_other, "safetymi/app", app).unwrap();
        assert!(why.contains("with space is a mount of /dev/sda1 (ext4)"), "{why}");
        let clean: Vec<Mount> = without_other.iter().filter(|m| m.fstype != "ext4").cloned().collect();
        assert_eq!(foreign_inside(&clean, "safetymi/app", app), None);
        assert_eq!(children_inside(&clean, "safetymi/app", app), [app.join("db")]);
        assert_eq!(children_inside(&all, "safetymi/app", app), [app.join("db")], "never a foreign one");
        // A look-alike dataset name is not a child; a missing or covered mount is refused.
        assert!(!clean[3].is_dataset_or_child("safetymi/ap"));
        assert!(foreign_inside(&clean, "safetymi/app", Path::new("/nowhere")).unwrap().contains("not mounted"));
        let mut covered = clean.clone();
        covered.push(Mount { point: app.into(), fstype: "tmpfs".into(), source: "tmpfs".into() });
        assert!(foreign_inside(&covered, "safetymi/app", app).unwrap().contains("is mounted over safetymi/app"));
        assert!(foreign_inside(&clean, "safetymi/app/db", &app.join("db")).is_none());
        assert!(foreign_inside(&clean, "safetymi/x", app).unwrap().contains("not safetymi/x"));
    }
}
