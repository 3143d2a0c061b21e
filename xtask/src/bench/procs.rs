//! The processes the benchmarks measure: the one release build of the agents (and pointing the harness at it) and a
//! process's resident memory. Must not know any benchmark's setup or figures.

use anyhow::{Context, Result};

use crate::{project_root, sh};

/// The binaries every benchmark builds, whichever it runs: one feature set for all of them, so that running the
/// benchmarks one after another reuses one release build instead of rebuilding the shared dependencies each time.
const RELEASE_PACKAGES: [&str; 4] = ["host-agent", "dns-agent", "services-agent", "labctl"];

/// Builds the release binaries (`needed` must be among [`RELEASE_PACKAGES`]) and points the harness at them.
pub(super) fn release_bins(needed: &[&str]) -> Result<()> {
    if let Some(p) = needed.iter().find(|p| !RELEASE_PACKAGES.contains(p)) {
        anyhow::bail!("release_bins: {p} is not one of the benchmark packages {RELEASE_PACKAGES:?}");
    }
    let mut args = vec!["build", "--release"];
    for p in RELEASE_PACKAGES {
        args.extend(["-p", p]);
    }
    sh("cargo", &args)?;
    // The harness starts binaries from here (cargo's target dir: CARGO_TARGET_DIR when set).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    std::env::set_var("STRATA_BIN_DIR", target.join("release"));
    Ok(())
}

/// Resident set size of a process, in bytes (VmRSS).
pub(super) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}
