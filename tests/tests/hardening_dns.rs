//! The dns-agent as its unit runs it, emulated: systemd is not PID 1 on the test machine, so `User=strata-dns`,
//! `AmbientCapabilities=CAP_NET_BIND_SERVICE` and `LoadCredential=grpc.key:PATH` are reproduced by hand: `setpriv`
//! drops to an unprivileged uid (nobody) with only `cap_net_bind_service` (bounding, ambient, effective) and
//! `no_new_privs`; the key is copied into a credentials directory owned by that uid (file 0400, directory 0500, as
//! systemd makes them) named by `CREDENTIALS_DIRECTORY`, while the configured key stays root-owned 0600. The real
//! binary then serves mTLS gRPC, DNS on port 53 and DoT on 853 (its key a credential too), re-reads the CRL as that
//! user (a revoked viewer is refused without a restart), and /proc shows what the process is allowed.
//! Knows the agent's config format, logs and gRPC API, and what systemd does for a unit; nothing of the internals.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::StatusRequest;
use strata_tests::harness::{base_config, bin, with_crl, AgentKind, AgentProc, Pki};

/// The unprivileged user the agent runs as here (Debian's `nobody`/`nogroup`).
const UID: u32 = 65534;
const GID: u32 = 65534;
/// `cap_net_bind_service` is capability 10.
const NET_BIND_SERVICE_MASK: &str = "0000000000000400";

/// `setpriv` as the unit's `User=` + `AmbientCapabilities=` + `CapabilityBoundingSet=` + `NoNewPrivileges=`.
fn as_unit_user() -> Vec<String> {
    [
        "setpriv",
        &format!("--reuid={UID}"),
        &format!("--regid={GID}"),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

/// The values of a `/proc/PID/status` line, e.g. `Uid:` → real, effective, saved, filesystem.
fn status_field(status: &str, field: &str) -> Vec<String> {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A loopback address of its own (127.53.x.y), so that port 53 is free whatever else runs here.
fn loopback_53() -> SocketAddr {
    let n = std::process::id();
    SocketAddr::from(([127, 53, (n % 250 + 1) as u8, (n / 250 % 250 + 1) as u8], 53))
}

#[test]
fn dns_agent_runs_unprivileged_with_its_key_from_credentials_directory() -> Result<()> {
    let pki = Pki::new()?;
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let dir = tempfile::tempdir()?;
    // What the unit's user must read is world-readable (the PKI's directory, CA, certificate, the config); the key
    // and the CA key stay root-owned 0600.
    for d in [dir.path(), pki.dir()] {
        mode(d, 0o755)?;
    }
    for f in [pki.ca(), cert.clone(), pki.crl()] {
        mode(&f, 0o644)?;
    }
    mode(&key, 0o600)?;
    // StateDirectory=: owned by the user.
    let state = dir.path().join("state");
    fs::create_dir(&state)?;
    chown(&state, Some(UID), Some(GID))?;
    mode(&state, 0o750)?;
    // LoadCredential=grpc.key:KEY: a copy owned by the user, 0400, in a 0500 directory.
    let creds = dir.path().join("credentials");
    fs::create_dir(&creds)?;
    // The DoT key (here the same key file) is a second credential: LoadCredential=dns.tls_key:KEY.
    let cred = creds.join(agent_core::credentials::GRPC_KEY);
    for name in [agent_core::credentials::GRPC_KEY, "dns.tls_key"] {
        let c = creds.join(name);
        fs::copy(&key, &c)?;
        chown(&c, Some(UID), Some(GID))?;
        mode(&c, 0o400)?;
    }
    chown(&creds, Some(UID), Some(GID))?;
    mode(&creds, 0o500)?;

    let dns_addr = loopback_53();
    let dot_addr = SocketAddr::new(dns_addr.ip(), 853);
    let config = dir.path().join("dns-agent.toml");
    fs::write(
        &config,
        format!(
            "{}[dns]\nlisten = [\"{dns_addr}\"]\ntls_listen = [\"{dot_addr}\"]\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
             [[zones]]\nname = \"lab.home.arpa\"\n\
             records = [{{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }}]\n",
            with_crl(&base_config(&state, &pki.ca(), &cert, &key), &pki.crl()),
            cert = cert.display().to_string(),
            key = key.display().to_string(),
        ),
    )?;
    mode(&config, 0o644)?;

    // Without the credential the agent refuses at once, exit 78, naming it.
    let empty = dir.path().join("no-credentials");
    fs::create_dir(&empty)?;
    let prefix = as_unit_user();
    let out = Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(bin("dns-agent")?)
        .args(["run", "--config"])
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &empty)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(78), "missing credential: exit {:?}, stderr:\n{stderr}", out.status);
    ensure!(
        stderr.contains("credential grpc.key is missing")
            && stderr.contains(&format!("LoadCredential=grpc.key:{}", key.display())),
        "missing credential: {stderr}"
    );

    let creds_env = creds.display().to_string();
    let agent =
        AgentProc::start_with_prefix(&prefix, AgentKind::Dns, &config, &[("CREDENTIALS_DIRECTORY", &creds_env)])?;
    agent.wait_log(&format!("reading credential {}", cred.display()), Duration::from_secs(5))?;
    agent.wait_log(&format!("dns udp listening on {dns_addr}"), Duration::from_secs(10))?;
    agent.wait_log(&format!("reading credential {}", creds.join("dns.tls_key").display()), Duration::from_secs(5))?;
    agent.wait_log(&format!("dns tls listening on {dot_addr}"), Duration::from_secs(10))?;

    // What the process may do, from /proc: not root, no group, only cap_net_bind_service.
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    ensure!(status_field(&status, "Uid:") == vec![UID.to_string(); 4], "{status}");
    ensure!(status_field(&status, "Gid:") == vec![GID.to_string(); 4], "{status}");
    ensure!(status_field(&status, "Groups:").is_empty(), "{status}");
    for cap in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        ensure!(status_field(&status, cap) == [NET_BIND_SERVICE_MASK], "{cap} {status}");
    }
    ensure!(status_field(&status, "NoNewPrivs:") == ["1"], "{status}");
    // The same credentials cannot read /etc/shadow nor the configured key.
    for secret in [Path::new("/etc/shadow"), &key, &pki.dir().join("ca.key")] {
        let out = Command::new(&prefix[0]).args(&prefix[1..]).arg("cat").arg(secret).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains("Permission denied"), "{} readable: {err}", secret.display());
    }

    // mTLS gRPC with the key from the credential (below).
    // DNS on port 53 and DoT on 853 (CAP_NET_BIND_SERVICE at work; DoT with the key from its credential).
    for (port, tls) in [(53, "+notls"), (853, "+tls")] {
        let dig = Command::new("/usr/bin/dig")
            .args([&format!("@{}", dns_addr.ip()), "-p", &port.to_string(), tls, "+time=3", "+tries=1", "+short"])
            .args(["nas.lab.home.arpa", "A"])
            .output()
            .context("running /usr/bin/dig (install dnsutils / bind9-dnsutils)")?;
        let answer = String::from_utf8_lossy(&dig.stdout);
        ensure!(answer.trim() == "10.0.0.10", "dig {tls} answered {answer:?}; log:\n{}", agent.logs());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        tls::install_crypto_provider();
        let m = pki.material(&pki.ca(), Role::Viewer, "viewer1")?;
        let ch = m.connect(&agent.url(), Role::DnsAgent, Duration::from_secs(5)).await?;
        let status = AgentClient::new(ch).status(StatusRequest {}).await?.into_inner();
        ensure!(status.summary.starts_with("1 zone"), "{status:?}");
        anyhow::Ok(())
    })?;
    // The CRL is re-read as that user when it changes: a revoked viewer is refused without a restart.
    let out = Command::new(bin("labctl")?).args(["pki", "revoke", "--dir"]).arg(pki.dir()).arg("viewer1").output()?;
    ensure!(out.status.success(), "labctl pki revoke: {}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(async {
        let m = pki.material(&pki.ca(), Role::Viewer, "viewer1")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let refused = match m.connect(&agent.url(), Role::DnsAgent, Duration::from_secs(5)).await {
                Err(_) => true,
                Ok(ch) => AgentClient::new(ch).status(StatusRequest {}).await.is_err(),
            };
            if refused {
                return anyhow::Ok(());
            }
            ensure!(std::time::Instant::now() < deadline, "revoked viewer1 still served; log:\n{}", agent.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    let logs = agent.logs();
    ensure!(
        logs.contains("revoked=1")
            && logs.contains("certificate revocation list loaded")
            && !logs.contains("not reloaded"),
        "the CRL was not re-read by the agent's user:\n{logs}"
    );
    // The state dir is the user's: the agent wrote its database there.
    ensure!(fs::read_dir(&state)?.next().is_some(), "nothing written in {}", state.display());
    Ok(())
}
