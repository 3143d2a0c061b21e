//! `cargo xtask deps`: installs (apt, Debian only) and starts the real components the integration tests drive:
//! Docker, zfs-fuse, Borg, QEMU, btrfs, DNS tools, busybox-static, Prometheus (for `promtool`; its own server is not
//! started), tzdata, adduser, util-linux (`setpriv`), OpenSSH server and client, socat and ping (the off-site host),
//! qemu-guest-agent, and the guest kernel: Debian's `linux-image-amd64` kernel package is downloaded (`apt-get
//! download`, never installed on this machine) and the guest fixture unpacks what the test guest boots into its
//! cache directory. Idempotent; one output line per action.
//! Owns the machine set-up only; starting dockerd and zfs-fuse is the test fixtures' own code, reused here. The
//! system's own sshd is neither started nor stopped here: the tests start their own sshd (own config, host key and
//! address, in a network namespace) and never use port 22 of the root namespace, so whether the package's service
//! runs (it does where apt may start services) changes nothing for them.

use std::fs;
use std::process::{Command, Stdio};

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
    // Knot DNS (knotd, knotc) and its kdig: the zone-transfer interop tests and `bench dns-xfr` run it as the
    // dns-agent's secondary (and as the primary the agent is compared with).
    "knot",
    "knot-dnsutils",
    "unbound",
    "dnsmasq-base",
    "busybox-static",
    "sqlite3",
    "git",
    "iproute2",
    "rsync",
    "prometheus",
    "systemd",
    // The IANA tz database: schedules with a `timezone` are evaluated against it (the tests use Europe/Berlin).
    "tzdata",
    // The dns-agent package's postinst creates its system user with `adduser`; the unprivileged-agent test runs the
    // agent as its unit would with util-linux's `setpriv`.
    "adduser",
    "util-linux",
    // The off-site host of the backups (tests/src/offsite.rs): a real sshd in a network namespace, reached with
    // ssh; socat holds the two ends of the shaped link between the namespaces (the kernel has no `netem`); ping
    // measures the link's round trip.
    "openssh-server",
    "openssh-client",
    "socat",
    "iputils-ping",
    // The QEMU test guest (tests/src/fixtures/guest.rs): Debian's qemu-ga binary and its libraries go into its
    // initramfs; mkfs.ext4 makes its data disk; xz unpacks its kernel.
    "qemu-guest-agent",
    "e2fsprogs",
    "xz-utils",
    // The registry of the image-update tests (tests/src/fixtures/registry.rs): Docker Distribution 2, started by
    // each test on loopback with its own config and storage (the package's own service is not used).
    "docker-registry",
    // The DNSSEC test (tests/tests/dns_dnssec.rs): ldns-keygen and ldns-signzone sign its zone, drill -S chases
    // the signatures through the dns-agent.
    "ldnsutils",
    // The DoH/DoT tests (tests/tests/dns_doh.rs): kdig (+https, +https-get, +tls, +padding) and curl (--doh-url,
    // --http1.1/--http2 straight at /dns-query) are the real clients.
    "knot-dnsutils",
    "curl",
];

/// The metapackage naming the current Debian kernel package (its one `Depends:`).
const KERNEL_META: &str = "linux-image-amd64";

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
    ensure_guest_kernel(root)?;
    ensure_dockerd()?;
    ensure_zfs_fuse()?;
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

/// The test guest's kernel in the guest fixture's cache: kept while it is the one `linux-image-amd64` depends on (or
/// while apt cannot say which that is). Stale package lists (a newer kernel replaced the one they name) are updated
/// once and the download tried again.
fn ensure_guest_kernel(root: bool) -> Result<()> {
    use strata_tests::fixtures::guest;
    let cached = fs::read_to_string(std::path::Path::new(guest::KERNEL_DIR).join("VERSION")).unwrap_or_default();
    let have = (guest::kernel().is_ok() && guest::modules_complete()).then(|| cached.trim().to_string());
    let pkg = match (current_kernel_package()?, &have) {
        (Some(p), _) => p,
        (None, Some(h)) => {
            println!("deps: apt names no {KERNEL_META} dependency: keeping guest kernel {h}");
            return Ok(());
        }
        (None, None) if root => {
            apt(&["update"])?;
            current_kernel_package()?.with_context(|| format!("apt-cache depends {KERNEL_META} names no kernel"))?
        }
        (None, None) => bail!("`apt-cache depends {KERNEL_META}` names no kernel package (run apt-get update)"),
    };
    if have.as_deref() == Some(pkg.as_str()) {
        println!("deps: guest kernel {pkg} already in {}", guest::KERNEL_DIR);
        return Ok(());
    }
    if !root {
        bail!("unpacking the guest kernel into {} needs root: rerun as root", guest::KERNEL_DIR);
    }
    let scratch = tempfile::Builder::new().prefix("strata-deb-").tempdir()?;
    // apt's download sandbox user must be able to write there.
    Command::new("chmod").arg("0777").arg(scratch.path()).status()?;
    let download = |pkg: &str| -> Result<bool> {
        let status = Command::new("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(scratch.path())
            .status()
            .context("cannot run apt-get download")?;
        Ok(status.success())
    };
    let mut pkg = pkg;
    if !download(&pkg)? {
        apt(&["update"])?;
        pkg = current_kernel_package()?.with_context(|| format!("apt-cache depends {KERNEL_META} names no kernel"))?;
        if !download(&pkg)? {
            bail!("`apt-get download {pkg}` failed, after an apt-get update too");
        }
    }
    let deb = fs::read_dir(scratch.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {pkg} left no .deb"))?;
    guest::install_kernel(&deb, &pkg)?;
    println!("deps: guest kernel {pkg} unpacked into {}", guest::KERNEL_DIR);
    Ok(())
}

/// The kernel package `linux-image-amd64` depends on, as apt's package lists say.
fn current_kernel_package() -> Result<Option<String>> {
    let out = Command::new("apt-cache").args(["depends", KERNEL_META]).output().context("cannot run apt-cache")?;
    Ok(kernel_package(&String::from_utf8_lossy(&out.stdout)))
}

/// The kernel package in `apt-cache depends linux-image-amd64`'s output (`  Depends: linux-image-6.1.0-57-amd64`).
fn kernel_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let p = l.trim().strip_prefix("Depends:")?.trim();
        p.starts_with("linux-image-").then(|| p.to_string())
    })
}

fn ensure_dockerd() -> Result<()> {
    let engine = strata_tests::fixtures::docker::DockerEngine::ensure()?;
    println!("deps: dockerd answering (engine {})", engine.server_version());
    Ok(())
}

fn ensure_zfs_fuse() -> Result<()> {
    strata_tests::fixtures::zfs::ensure_daemon()?;
    println!("deps: zfs-fuse answering");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_package_is_the_metapackages_dependency() {
        // Captured: `apt-cache depends linux-image-amd64` on Debian 12 (bookworm-security, late 2026).
        assert_eq!(
            kernel_package("linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n").as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(kernel_package("linux-image-amd64\n"), None);
    }
}
