//! `cargo xtask dist`: a Debian package per agent and for labctl (binary, systemd unit, example config, maintainer
//! scripts), built with `dpkg-deb`, and a release tarball per binary. The unit is the agent's own
//! (`AGENT service-file`), so the package ships what `AGENT install` would write for the example config (the
//! dns-agent's unit hands over the example's `[grpc] key`; its postinst creates the unit's user). Owns packaging
//! only; what a unit contains is agent-core's `install`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project_root;

/// One package: what it ships and what it asks of the system.
pub(crate) struct Package {
    /// The binary, also the package's name after `strata-`.
    pub(crate) binary: &'static str,
    /// Whether it is an agent (a systemd unit and an example config) or the client.
    agent: bool,
    /// The system user its unit runs as (created by the postinst), and the `[grpc] key` the unit hands over with
    /// `LoadCredential=` (the example config's).
    user: Option<(&'static str, &'static str)>,
    /// Debian `Depends:` (what the binary cannot work without) and `Recommends:` (what its usual set-up drives).
    depends: &'static str,
    recommends: &'static str,
    summary: &'static str,
}

pub(crate) const PACKAGES: [Package; 4] = [
    Package {
        binary: "dns-agent",
        agent: true,
        user: Some(("strata-dns", "/etc/strata/pki/dns1.key")),
        depends: "adduser",
        recommends: "",
        summary: "Strata DNS agent: local zones, forwarding, blocklists, over mTLS gRPC",
    },
    Package {
        binary: "services-agent",
        agent: true,
        user: None,
        depends: "git, borgbackup",
        recommends: "docker.io | docker-ce, docker-compose | docker-compose-plugin, zfsutils-linux | zfs-fuse",
        summary: "Strata services agent: compose stacks from Git, ZFS + Borg backups",
    },
    Package {
        binary: "host-agent",
        agent: true,
        user: None,
        depends: "",
        recommends: "qemu-system-x86, qemu-utils, borgbackup, rsync",
        summary: "Strata host agent: cold backups of whole VM bundles (QEMU on Linux)",
    },
    Package {
        binary: "labctl",
        agent: false,
        user: None,
        depends: "",
        recommends: "",
        summary: "Strata client: PKI, status and every agent's commands",
    },
];

/// Where packages and tarballs are written.
pub(crate) fn out_dir() -> PathBuf {
    project_root().join("target/dist")
}

/// `cargo xtask dist`: release build (or the debug build, uncompressed), then the packages and tarballs. Prints
/// their paths.
pub(crate) fn run(debug: bool) -> Result<()> {
    let mut args = vec!["build"];
    if !debug {
        args.push("--release");
    }
    for p in &PACKAGES {
        args.extend(["-p", p.binary]);
    }
    crate::sh("cargo", &args)?;
    let built = if debug {
        build(&project_root().join("target/debug"), Compression::None)?
    } else {
        build(&project_root().join("target/release"), Compression::Xz)?
    };
    for path in built {
        println!("{}", path.display());
    }
    Ok(())
}

/// How packages are compressed: xz debs and gzip tarballs for releases, none for debug builds (≈ 190 MB binaries).
#[derive(Clone, Copy)]
pub(crate) enum Compression {
    Xz,
    None,
}

/// Builds every package and tarball from the binaries in `bin_dir`; returns the written files.
pub(crate) fn build(bin_dir: &Path, compression: Compression) -> Result<Vec<PathBuf>> {
    let out = out_dir();
    fs::create_dir_all(&out)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = text(Command::new("dpkg").arg("--print-architecture"))?;
    let mut written = Vec::new();
    for p in &PACKAGES {
        let binary = bin_dir.join(p.binary);
        if !binary.is_file() {
            bail!("{} is not built in {}", p.binary, bin_dir.display());
        }
        written.push(deb(p, &binary, version, &arch, compression, &out)?);
        written.push(tarball(p, &binary, version, &arch, compression, &out)?);
    }
    Ok(written)
}

fn deb(p: &Package, binary: &Path, version: &str, arch: &str, compression: Compression, out: &Path) -> Result<PathBuf> {
    let name = format!("strata-{}", p.binary);
    let stage = out.join(format!("stage-{name}"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let exec = format!("/usr/bin/{}", p.binary);
    install_file(binary, &stage.join(exec.trim_start_matches('/')), 0o755)?;
    let doc = stage.join("usr/share/doc").join(&name);
    if p.agent {
        let example = project_root().join("examples").join(format!("{}.toml", p.binary));
        install_file(&example, &doc.join("examples").join(format!("{}.toml", p.binary)), 0o644)?;
        let config = format!("/etc/strata/{}.toml", p.binary);
        let mut service_file = Command::new(binary);
        service_file.args(["service-file", "--exec", &exec, "--config", &config]);
        if let Some((_, key)) = p.user {
            service_file.args(["--key", key]);
        }
        let unit = text(&mut service_file)?;
        write_file(&stage.join(format!("lib/systemd/system/{name}.service")), &format!("{unit}\n"), 0o644)?;
        write_file(&stage.join("DEBIAN/postinst"), &postinst(p, &name, &config), 0o755)?;
        write_file(&stage.join("DEBIAN/prerm"), &prerm(&name), 0o755)?;
        write_file(&stage.join("DEBIAN/postrm"), POSTRM, 0o755)?;
    }
    write_file(&doc.join("copyright"), "Strata. License: MIT OR Apache-2.0.\n", 0o644)?;
    write_file(&stage.join("DEBIAN/control"), &control(p, &name, version, arch, &stage)?, 0o644)?;
    let deb = out.join(format!("{name}_{version}_{arch}.deb"));
    let z = match compression {
        Compression::Xz => "-Zxz",
        Compression::None => "-Znone",
    };
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(["--root-owner-group", z, "--build"]).arg(&stage).arg(&deb);
    text(&mut cmd)?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

fn control(p: &Package, name: &str, version: &str, arch: &str, stage: &Path) -> Result<String> {
    let kib = du_kib(stage)?;
    let mut c = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Strata developers <strata@localhost>\n\
         Installed-Size: {kib}\nSection: admin\nPriority: optional\n"
    );
    if !p.depends.is_empty() {
        c.push_str(&format!("Depends: {}\n", p.depends));
    }
    if !p.recommends.is_empty() {
        c.push_str(&format!("Recommends: {}\n", p.recommends));
    }
    c.push_str(&format!("Description: {}\n", p.summary));
    if p.agent {
        c.push_str(&format!(
            " The unit strata-{b} is installed but not enabled: write /etc/strata/{b}.toml (example in\n \
             /usr/share/doc/{name}/examples), check it with `{b} check --config /etc/strata/{b}.toml`,\n \
             then `systemctl enable --now {name}`.\n",
            b = p.binary
        ));
    }
    Ok(c)
}

/// Creates the unit's system user when it is missing (idempotent: an existing user is left as it is), reloads
/// systemd when it runs; never enables or starts the agent (it has no config yet on a first install).
fn postinst(p: &Package, unit: &str, config: &str) -> String {
    let binary = p.binary;
    let user = match p.user {
        Some((user, _)) => format!(
            "  if ! getent passwd {user} >/dev/null; then\n    \
             adduser --system --group --no-create-home --home /nonexistent --quiet {user}\n  fi\n"
        ),
        None => String::new(),
    };
    format!(
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n{user}  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n  \
         if [ ! -e {config} ]; then\n    echo \"{unit}: write {config} (see /usr/share/doc/strata-{binary}/examples), then: \
         {binary} check --config {config} && systemctl enable --now {unit}\"\n  fi\nfi\nexit 0\n"
    )
}

fn prerm(unit: &str) -> String {
    format!(
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n  \
         systemctl disable --now {unit}.service || true\nfi\nexit 0\n"
    )
}

const POSTRM: &str =
    "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\nexit 0\n";

/// `NAME-VERSION-linux-ARCH.tar.gz` (`.tar` uncompressed): the binary, and for agents the example config.
fn tarball(
    p: &Package,
    binary: &Path,
    version: &str,
    arch: &str,
    compression: Compression,
    out: &Path,
) -> Result<PathBuf> {
    let top = format!("{}-{version}-linux-{arch}", p.binary);
    let stage = out.join(format!("stage-tar-{}", p.binary));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let dir = stage.join(&top);
    install_file(binary, &dir.join(p.binary), 0o755)?;
    if p.agent {
        let example = project_root().join("examples").join(format!("{}.toml", p.binary));
        install_file(&example, &dir.join(format!("{}.toml.example", p.binary)), 0o644)?;
    }
    let (tar, flags) = match compression {
        Compression::Xz => (out.join(format!("{top}.tar.gz")), "-czf"),
        Compression::None => (out.join(format!("{top}.tar")), "-cf"),
    };
    let mut cmd = Command::new("tar");
    cmd.args(["--owner=0", "--group=0", flags]).arg(&tar).arg("-C").arg(&stage).arg(&top);
    text(&mut cmd)?;
    fs::remove_dir_all(&stage)?;
    Ok(tar)
}

fn install_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_file(to: &Path, text: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn du_kib(dir: &Path) -> Result<u64> {
    let out = text(Command::new("du").args(["-sk"]).arg(dir))?;
    out.split_whitespace().next().and_then(|n| n.parse().ok()).with_context(|| format!("du -sk printed {out:?}"))
}

/// Runs `cmd`; its trimmed stdout, or an error with its stderr.
fn text(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    //! The packages installed for real with `dpkg -i` on this machine (root, Debian), then removed.

    use std::path::Path;
    use std::process::Command;

    use strata_tests::harness::{base_config, AgentKind, Pki};

    use super::*;

    /// `dpkg -P` of every strata package, ignoring "not installed".
    fn purge() {
        for p in &PACKAGES {
            let _ = Command::new("dpkg").args(["-P", &format!("strata-{}", p.binary)]).output();
        }
    }

    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            purge();
        }
    }

    /// `systemd-analyze verify` on an installed unit: exit 0 and nothing said about this unit.
    fn verify(unit: &Path) -> Result<()> {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(unit)
            .output()
            .context("systemd-analyze (Debian package systemd) is required: run `cargo xtask deps`")?;
        let name = unit.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> =
            stderr.lines().filter(|l| l.contains(name) || l.contains(&*unit.to_string_lossy())).collect();
        if !out.status.success() || !ours.is_empty() {
            bail!("systemd-analyze verify {} ({}): {stderr}", unit.display(), out.status);
        }
        Ok(())
    }

    #[test]
    fn packages_install_with_dpkg_and_their_binaries_and_units_work() -> Result<()> {
        let bin_dir = strata_tests::harness::bin("dns-agent")?.parent().context("bin dir")?.to_path_buf();
        let built = build(&bin_dir, Compression::None)?;
        purge();
        let _cleanup = Purge;
        let debs: Vec<&PathBuf> = built.iter().filter(|p| p.extension().is_some_and(|e| e == "deb")).collect();
        assert_eq!(debs.len(), PACKAGES.len(), "{built:?}");
        let mut dpkg = Command::new("dpkg");
        dpkg.arg("-i").args(&debs);
        text(&mut dpkg)?;

        let pki = Pki::new()?;
        for p in &PACKAGES {
            let installed = Path::new("/usr/bin").join(p.binary);
            let version = text(Command::new(&installed).arg("--version"))?;
            assert!(version.ends_with(env!("CARGO_PKG_VERSION")), "{}: --version printed {version:?}", p.binary);
            let Some(kind) = AgentKind::ALL.iter().copied().find(|k| k.binary() == p.binary) else { continue };
            let unit = Path::new("/lib/systemd/system").join(format!("strata-{}.service", p.binary));
            let unit_text = fs::read_to_string(&unit)?;
            let exec = format!("ExecStart={} run --config /etc/strata/{}.toml", installed.display(), p.binary);
            assert!(unit_text.contains(&exec), "{}: no `{exec}` in\n{unit_text}", unit.display());
            verify(&unit)?;
            if let Some((user, key)) = p.user {
                let credential = format!("LoadCredential=grpc.key:{key}\n");
                for want in [format!("User={user}\n"), credential] {
                    assert!(unit_text.contains(&want), "{}: no {want:?} in\n{unit_text}", unit.display());
                }
                // The postinst made the user, and running it again (dpkg-reconfigure, upgrades) is harmless.
                let id = text(Command::new("id").arg(user))?;
                assert!(id.contains(&format!("({user})")), "{id}");
                let postinst = format!("/var/lib/dpkg/info/strata-{}.postinst", p.binary);
                text(Command::new(&postinst).arg("configure"))?;
                assert_eq!(text(Command::new("id").arg(user))?, id, "{postinst} changed the user");
            }
            // `check` from the installed path, on a config of this lab.
            let dir = tempfile::tempdir()?;
            let (cert, key) = pki.issue(kind.role(), kind.cert_name())?;
            let config = dir.path().join("agent.toml");
            fs::write(&config, base_config(&dir.path().join("state"), &pki.ca(), &cert, &key))?;
            let checked = text(Command::new(&installed).arg("check").arg("--config").arg(&config))?;
            assert!(checked.contains("ok"), "{}: check printed {checked:?}", p.binary);
            let example = Path::new("/usr/share/doc").join(format!("strata-{}/examples/{}.toml", p.binary, p.binary));
            assert!(example.is_file(), "{} missing", example.display());
        }
        Ok(())
    }
}
