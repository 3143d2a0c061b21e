//! `qemu-img check` of a restored disk. Knows the qemu-img CLI; must not know backups.

use std::path::Path;
use std::time::Duration;

use agent_core::runner::{self, Cmd};

/// Checks a qcow2 image; the error names the image and carries qemu-img's complaint.
pub(super) async fn check(image: &Path) -> Result<(), String> {
    let cmd = Cmd::new("qemu-img").args(["check", "-q", "-f", "qcow2"]).arg(image).timeout(Duration::from_secs(600));
    runner::run_ok(cmd).await.map(drop).map_err(|e| format!("qemu-img check {}: {e}", image.display()))
}
