//! `cargo xtask deps`: installs (apt, Debian only) and starts the real components the integration tests drive:
//! Docker, zfs-fuse, Borg, QEMU, btrfs, DNS tools, busybox-static. Idempotent; one output line per action.
//! Owns the machine set-up only; knows nothing about the agents or the test fixtures (it duplicates their small
//! daemon start logic because xtask cannot depend on the test crate).

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const PACKAGES: &[&str] = &[
    "docker.io",
    "docker-compose",
    "zfs-fuse",
    "borgbackup",
    "qemu-system-x86",
    "qemu-utils",
    "btrfs-progs",
    "dnsutils",
    "dnsperf",
    "unbound",
    "dnsmasq-base",
    "busybox-static",
    "sqlite3",
    "git",
    "iproute2",
];

const DOCKERD_LOG: &str = "/var/log/strata-dockerd.log";
const ZFS_FUSE_PID_FILE: &str = "/var/run/zfs-fuse.pid";

pub(crate) fn run() -> Result<()> {
    if Command::new("dpkg-query").arg("--version").output().is_err() {
        bail!("`cargo xtask deps` supports Debian-based systems only (no dpkg-query found)");
    }
    let root = is_root();
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("deps: all {} packages already installed", PACKAGES.len());
    } else {
        println!("deps: missing packages: {}", missing.join(" "));
        if !root {
            bail!(
                "installing packages needs root: rerun as root (e.g. `sudo -E cargo xtask deps`), or run \
                 `sudo apt-get install {}`",
                missing.join(" ")
            );
        }
        apt(&["update"])?;
        println!("deps: apt-get update done");
        let mut args = vec!["install".to_string(), "-y".into(), "--no-install-recommends".into()];
        let mut pkgs: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
        if missing.contains(&"qemu-system-x86") {
            // A backported qemu-utils (10.x) conflicts with Debian's qemu-system-x86 (7.2): pin it to the same version.
            let candidate = candidate_version("qemu-system-x86")?;
            pkgs.retain(|p| p != "qemu-utils");
            pkgs.push(format!("qemu-utils={candidate}"));
            args.push("--allow-downgrades".into());
            println!("deps: pinning qemu-utils to {candidate} (the qemu-system-x86 candidate)");
        }
        args.extend(pkgs);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        apt(&args)?;
        println!("deps: installed {}", missing.join(" "));
    }
    ensure_dockerd(root)?;
    ensure_zfs_fuse(root)?;
    if fs::File::open("/dev/kvm").is_ok() {
        println!("deps: /dev/kvm usable: QEMU tests run under KVM");
    } else {
        println!("deps: /dev/kvm not usable: QEMU tests fall back to TCG (slower)");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn candidate_version(pkg: &str) -> Result<String> {
    let out = Command::new("apt-cache").args(["policy", pkg]).output().context("cannot run apt-cache")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:").map(|v| v.trim().to_string()))
        .filter(|v| v != "(none)")
        .with_context(|| format!("apt-cache policy {pkg} shows no candidate version"))
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).stdin(Stdio::null()).output().is_ok_and(|o| o.status.success())
}

fn wait_for(timeout: Duration, probe: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        sleep(Duration::from_millis(200));
    }
    probe()
}

fn ensure_dockerd(root: bool) -> Result<()> {
    let up = || succeeds("docker", &["version", "--format", "{{.Server.Version}}"]);
    if up() {
        println!("deps: dockerd already answering");
        return Ok(());
    }
    if !root {
        bail!(
            "dockerd does not answer for this user (not running, or no access to /var/run/docker.sock); \
             starting it needs root: rerun `cargo xtask deps` as root"
        );
    }
    let log = OpenOptions::new().create(true).append(true).open(DOCKERD_LOG)?;
    Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start dockerd")?;
    if !wait_for(Duration::from_secs(30), up) {
        bail!("started dockerd but it did not answer within 30 s; see {DOCKERD_LOG}");
    }
    println!("deps: started dockerd (log: {DOCKERD_LOG})");
    Ok(())
}

fn ensure_zfs_fuse(root: bool) -> Result<()> {
    let up = || succeeds("zpool", &["list"]);
    if up() {
        println!("deps: zfs-fuse already answering");
        return Ok(());
    }
    if !root {
        bail!("zfs-fuse does not answer `zpool list`; starting it needs root: rerun `cargo xtask deps` as root");
    }
    if !zfs_fuse_alive() {
        // zfs-fuse exits silently while a stale pid file exists.
        if Path::new(ZFS_FUSE_PID_FILE).exists() {
            fs::remove_file(ZFS_FUSE_PID_FILE)?;
        }
        Command::new("zfs-fuse")
            .args(["--pidfile", ZFS_FUSE_PID_FILE])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .status()
            .context("cannot start zfs-fuse")?;
    }
    if !wait_for(Duration::from_secs(20), up) {
        bail!("zfs-fuse did not answer `zpool list` within 20 s");
    }
    println!("deps: started zfs-fuse");
    Ok(())
}

/// True when a live (non-zombie) zfs-fuse process exists.
fn zfs_fuse_alive() -> bool {
    let Ok(entries) = fs::read_dir("/proc") else { return false };
    entries.flatten().any(|e| {
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        stat.split_once(" (zfs-fuse) ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
