//! Whether a path lives on encrypted storage. Linux: the mount's block-device chain (from `findmnt` and
//! `lsblk --json`) holds a dm-crypt / LUKS device. macOS: `diskutil info -plist` says FileVault or encrypted APFS.
//! Knows findmnt, lsblk and diskutil output; must not know VMs or backups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encryption {
    pub encrypted: bool,
    /// How that was decided, e.g. `mount / on vda (disk): no crypt device`.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EncryptionError {
    #[error("{}: cannot tell whether it is encrypted: {message}", path.display())]
    Unknown { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BlockDev {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub fstype: Option<String>,
    pub mountpoint: Option<String>,
    #[serde(default)]
    pub children: Vec<BlockDev>,
}

#[derive(Deserialize)]
struct Lsblk {
    blockdevices: Vec<BlockDev>,
}

/// Parses `lsblk --json -o NAME,TYPE,FSTYPE,MOUNTPOINT`.
pub(crate) fn parse_lsblk(json: &str) -> Result<Vec<BlockDev>, String> {
    serde_json::from_str::<Lsblk>(json).map(|l| l.blockdevices).map_err(|e| format!("cannot parse lsblk --json: {e}"))
}

fn is_crypt(d: &BlockDev) -> bool {
    d.kind.as_deref() == Some("crypt") || d.fstype.as_deref() == Some("crypto_LUKS")
}

/// The chain of devices from a top-level disk down to the one mounted at `mountpoint`, if any.
fn chain<'a>(devs: &'a [BlockDev], mountpoint: &str) -> Option<Vec<&'a BlockDev>> {
    for d in devs {
        if d.mountpoint.as_deref() == Some(mountpoint) {
            return Some(vec![d]);
        }
        if let Some(mut below) = chain(&d.children, mountpoint) {
            below.insert(0, d);
            return Some(below);
        }
    }
    None
}

/// Decides from lsblk's tree whether the device mounted at `mountpoint` sits on dm-crypt/LUKS.
/// `None` when no block device is mounted there (tmpfs, overlay, a network filesystem).
pub(crate) fn mount_encryption(devs: &[BlockDev], mountpoint: &str) -> Option<Encryption> {
    let c = chain(devs, mountpoint)?;
    let names: Vec<String> = c.iter().map(|d| format!("{} ({})", d.name, d.kind.as_deref().unwrap_or("?"))).collect();
    let crypt = c.iter().find(|d| is_crypt(d));
    Some(Encryption {
        encrypted: crypt.is_some(),
        detail: match crypt {
            Some(d) => format!("mount {mountpoint} on {}: dm-crypt device {}", names.join(" > "), d.name),
            None => format!("mount {mountpoint} on {}: no crypt device", names.join(" > ")),
        },
    })
}

/// Decides from `diskutil info -plist` whether a macOS volume is encrypted (FileVault or encrypted APFS).
pub(crate) fn parse_diskutil(plist_text: &str) -> Result<Encryption, String> {
    let v: plist::Value =
        plist::from_bytes(plist_text.as_bytes()).map_err(|e| format!("cannot parse diskutil plist: {e}"))?;
    let dict = v.as_dictionary().ok_or("diskutil plist is not a dictionary")?;
    let flag = |k: &str| dict.get(k).and_then(plist::Value::as_boolean).unwrap_or(false);
    let name = dict.get("VolumeName").and_then(plist::Value::as_string).unwrap_or("?");
    let (fv, enc) = (flag("FileVault"), flag("Encryption"));
    Ok(Encryption { encrypted: fv || enc, detail: format!("volume {name}: FileVault={fv} Encryption={enc}") })
}

/// The nearest existing ancestor of `path` (a backup target may not exist yet).
fn existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    p
}

/// Asks the system whether `path` is on encrypted storage.
pub(crate) async fn check(path: &Path) -> Result<Encryption, EncryptionError> {
    let p = existing(path);
    let unknown = |message: String| EncryptionError::Unknown { path: path.to_path_buf(), message };
    let out = |c: Cmd| async { runner::run_ok(c.timeout(Duration::from_secs(20))).await.map(|o| o.stdout) };
    if cfg!(target_os = "macos") {
        let o = out(Cmd::new("diskutil").args(["info", "-plist"]).arg(&p)).await.map_err(|e| unknown(e.to_string()))?;
        return parse_diskutil(&String::from_utf8_lossy(&o)).map_err(unknown);
    }
    let o = out(Cmd::new("findmnt").args(["-n", "-o", "TARGET", "--target"]).arg(&p))
        .await
        .map_err(|e| unknown(e.to_string()))?;
    let mount = String::from_utf8_lossy(&o).trim().to_string();
    let o = out(Cmd::new("lsblk").args(["--json", "-o", "NAME,TYPE,FSTYPE,MOUNTPOINT"]))
        .await
        .map_err(|e| unknown(e.to_string()))?;
    let devs = parse_lsblk(&String::from_utf8_lossy(&o)).map_err(unknown)?;
    Ok(mount_encryption(&devs, &mount)
        .unwrap_or(Encryption { encrypted: false, detail: format!("mount {mount} is not on a block device") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on this machine (a VM disk, no encryption).
    const PLAIN: &str = r#"{
   "blockdevices": [
      {"name": "zram0", "type": "disk", "fstype": null, "mountpoint": null},
      {"name": "vda", "type": "disk", "fstype": null, "mountpoint": "/"}
   ]
}"#;

    /// The shape lsblk prints for a LUKS partition opened as `cryptroot` (util-linux lsblk --json; dm-crypt cannot
    /// run here, so this one is written from that format, not captured).
    const LUKS: &str = r#"{
   "blockdevices": [
      {"name": "nvme0n1", "type": "disk", "fstype": null, "mountpoint": null,
         "children": [
            {"name": "nvme0n1p1", "type": "part", "fstype": "vfat", "mountpoint": "/boot/efi"},
            {"name": "nvme0n1p2", "type": "part", "fstype": "crypto_LUKS", "mountpoint": null,
               "children": [
                  {"name": "cryptroot", "type": "crypt", "fstype": "btrfs", "mountpoint": "/srv/backup"}
               ]
            }
         ]
      },
      {"name": "loop0", "type": "loop", "fstype": "btrfs", "mountpoint": "/mnt/vms"}
   ]
}"#;

    #[test]
    fn lsblk_chains_decide() {
        let d = parse_lsblk(PLAIN).unwrap();
        let e = mount_encryption(&d, "/").unwrap();
        assert!(!e.encrypted);
        assert_eq!(e.detail, "mount / on vda (disk): no crypt device");
        assert!(mount_encryption(&d, "/tmp").is_none());
        let d = parse_lsblk(LUKS).unwrap();
        let e = mount_encryption(&d, "/srv/backup").unwrap();
        assert!(e.encrypted, "{e:?}");
        assert!(e.detail.contains("nvme0n1 (disk) > nvme0n1p2 (part) > cryptroot (crypt)"), "{e:?}");
        assert!(!mount_encryption(&d, "/boot/efi").unwrap().encrypted);
        assert!(!mount_encryption(&d, "/mnt/vms").unwrap().encrypted);
        assert!(parse_lsblk("{").is_err());
    }

    /// Abridged `diskutil info -plist /Volumes/Backup` (macOS 14, an encrypted APFS volume); keys as diskutil names them.
    const DISKUTIL_ENCRYPTED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>APFSContainerReference</key><string>disk5</string>
	<key>DeviceIdentifier</key><string>disk5s1</string>
	<key>Encryption</key><true/>
	<key>FileVault</key><true/>
	<key>FilesystemType</key><string>apfs</string>
	<key>MountPoint</key><string>/Volumes/Backup</string>
	<key>VolumeName</key><string>Backup</string>
</dict>
</plist>"#;

    #[test]
    fn diskutil_plists_decide() {
        let e = parse_diskutil(DISKUTIL_ENCRYPTED).unwrap();
        assert!(e.encrypted);
        assert_eq!(e.detail, "volume Backup: FileVault=true Encryption=true");
        let plain = DISKUTIL_ENCRYPTED.replace("<true/>", "<false/>");
        assert!(!parse_diskutil(&plain).unwrap().encrypted);
        assert!(parse_diskutil("not a plist").is_err());
    }

    #[tokio::test]
    async fn this_machine_is_unencrypted() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&dir.path().join("not/yet/there")).await.unwrap();
        assert!(!e.encrypted, "{e:?}");
    }
}
