//! Two dns-agents in two network namespaces on one LAN, the second a secondary of the first by standard zone
//! transfer: a dynamic record added on the primary is answered by the secondary within a second (NOTIFY, IXFR);
//! with the primary killed the secondary answers every local and dynamic name; restarted while the primary is
//! still down it answers from its persisted copy at once; after the zone's SOA `expire` it answers SERVFAIL. Every
//! exchange between them (SOA checks, transfers, NOTIFYs) is TSIG-signed, as `docs/operations.md` recommends.
//! Knows the agents' config, DNS answers and gRPC API; nothing of their internals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{ListZonesRequest, StatusRequest};
use strata_tests::binrun::run;
use strata_tests::dnslab::{dig, record, upsert, wait_for, Dig};
use strata_tests::fixtures::netns::{Lan, Link, Netns};
use strata_tests::harness::{base_config_on, AgentKind, AgentProc, Pki};

const ZONE: &str = "lab.home.arpa";
/// The key both agents share (transfers, SOA checks and NOTIFYs are signed with it): 32 bytes, base64.
const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
/// The zone's SOA timers: a secondary checks every 10 s and gives the copy up 20 s after the last good check.
const EXPIRE: Duration = Duration::from_secs(20);

/// Names the zone serves from the primary's config: (name, type, the value the answer must hold).
const LOCAL: &[(&str, &str, &str)] = &[
    ("nas.lab.home.arpa", "A", "10.0.0.10"),
    ("nas.lab.home.arpa", "AAAA", "fd00::10"),
    ("www.lab.home.arpa", "CNAME", "nas.lab.home.arpa."),
    ("lab.home.arpa", "MX", "10 mail.lab.home.arpa."),
    ("mail.lab.home.arpa", "A", "10.0.0.11"),
    ("lab.home.arpa", "TXT", "\"v=spf1 mx -all\""),
];

struct Pair {
    pki: Pki,
    dir: tempfile::TempDir,
    primary: Option<AgentProc>,
    secondary: Option<AgentProc>,
    link1: Link,
    link2: Link,
    ns1: Netns,
    ns2: Netns,
    _lan: Lan,
}

impl Pair {
    fn new() -> Result<Pair> {
        let lan = Lan::new()?;
        let (ns1, ns2) = (Netns::new("dns1")?, Netns::new("dns2")?);
        let (link1, link2) = (lan.attach(&ns1)?, lan.attach(&ns2)?);
        let pki = Pki::new()?;
        let dir = tempfile::Builder::new().prefix("strata-dns-ha-").tempdir()?;
        Ok(Pair { pki, dir, primary: None, secondary: None, link1, link2, ns1, ns2, _lan: lan })
    }

    fn ip1(&self) -> Ipv4Addr {
        self.link1.addr()
    }

    fn ip2(&self) -> Ipv4Addr {
        self.link2.addr()
    }

    /// The agent's config: DNS on port 53 of its LAN address, the shared TSIG key file, then `body`.
    fn config(&self, name: &str, ip: Ipv4Addr, body: &str) -> Result<PathBuf> {
        let (cert, key) = self.pki.issue_for(Role::DnsAgent, name, &[IpAddr::V4(ip)])?;
        let state = self.dir.path().join(name).join("state");
        let keys = self.dir.path().join(format!("{name}-tsig.toml"));
        std::fs::write(
            &keys,
            format!("[[key]]\nname = \"xfr-key\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{SECRET}\"\n"),
        )?;
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let text = base_config_on(&state, &self.pki.ca(), &cert, &key, IpAddr::V4(ip))
            + &format!("[dns]\nlisten = [\"{ip}:53\"]\ntsig_keys = {:?}\n{body}", keys.display().to_string());
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn start_primary(&mut self) -> Result<()> {
        let (ip1, ip2) = (self.ip1(), self.ip2());
        let body = format!(
            "[[zones]]\nname = \"{ZONE}\"\nrecords = [\n\
             {{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }},\n\
             {{ name = \"nas\", type = \"AAAA\", value = \"fd00::10\" }},\n\
             {{ name = \"www\", type = \"CNAME\", value = \"nas\" }},\n\
             {{ name = \"@\", type = \"MX\", value = \"10 mail.lab.home.arpa.\" }},\n\
             {{ name = \"mail\", type = \"A\", value = \"10.0.0.11\" }},\n\
             {{ name = \"@\", type = \"TXT\", value = \"v=spf1 mx -all\" }},\n]\n\
             soa = {{ refresh = \"10s\", retry = \"1s\", expire = \"{}s\" }}\n\
             transfer = {{ allow = [\"{ip2}/32\"], tsig = \"xfr-key\" }}\nnotify = [\"{ip2}:53\"]\n",
            EXPIRE.as_secs()
        );
        let config = self.config("dns1", ip1, &body)?;
        let agent = AgentProc::start_with_prefix(&self.ns1.exec_prefix(), AgentKind::Dns, &config, &[])?;
        agent.wait_log(&format!("dns tcp listening on {ip1}:53"), Duration::from_secs(5))?;
        self.primary = Some(agent);
        Ok(())
    }

    fn start_secondary(&mut self) -> Result<()> {
        let (ip1, ip2) = (self.ip1(), self.ip2());
        let body = format!("[[secondaries]]\nzone = \"{ZONE}\"\nprimaries = [\"{ip1}:53\"]\ntsig = \"xfr-key\"\n");
        let config = self.config("dns2", ip2, &body)?;
        let agent = AgentProc::start_with_prefix(&self.ns2.exec_prefix(), AgentKind::Dns, &config, &[])?;
        agent.wait_log(&format!("dns udp listening on {ip2}:53"), Duration::from_secs(5))?;
        self.secondary = Some(agent);
        Ok(())
    }

    fn secondary_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip2()), 53)
    }

    fn ask_secondary(&self, name: &str, rtype: &str) -> Result<Dig> {
        dig(self.secondary_addr(), &[name, rtype])
    }

    async fn client(&self, agent: &AgentProc) -> Result<DnsClient<tonic::transport::Channel>> {
        let m = self.pki.material(&self.pki.ca(), Role::Admin, "admin")?;
        Ok(DnsClient::new(m.connect(&agent.url(), Role::DnsAgent, Duration::from_secs(5)).await?))
    }

    /// labctl's inventory: `dns` the primary, `dns2` the secondary.
    fn inventory(&self) -> Result<String> {
        let (cert, key) = self.pki.issue(Role::Admin, "alice")?;
        let url = |a: &Option<AgentProc>| a.as_ref().map(|a| a.url()).unwrap_or_default();
        let path = self.dir.path().join("labctl.toml");
        std::fs::write(
            &path,
            format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\n[agents]\ndns = \"{}\"\ndns2 = \"{}\"\n",
                self.pki.ca(),
                cert,
                key,
                url(&self.primary),
                url(&self.secondary)
            ),
        )?;
        Ok(path.display().to_string())
    }

    /// `labctl --json dns zones`: its exit code and rows.
    fn labctl_zones(&self, inv: &str) -> Result<(Option<i32>, Vec<serde_json::Value>, String)> {
        let ran = run("labctl", ["--config", inv, "--timeout", "3", "--json", "dns", "zones"])?;
        let rows = serde_json::from_str(&ran.stdout).with_context(|| ran.to_string())?;
        Ok((ran.code, rows, ran.stderr))
    }

    fn logs(&self) -> String {
        let l = |a: &Option<AgentProc>| a.as_ref().map(|a| a.logs()).unwrap_or_default();
        format!("--- primary ---\n{}\n--- secondary ---\n{}", l(&self.primary), l(&self.secondary))
    }
}

/// Every name of `names` answered by the secondary, authoritatively, with its value.
fn answers_all(pair: &Pair, names: &[(&str, &str, &str)]) -> Result<()> {
    for (name, rtype, want) in names {
        let d = pair.ask_secondary(name, rtype)?;
        ensure!(d.status == "NOERROR" && d.aa(), "{name} {rtype}: {}", d.raw);
        ensure!(d.values(rtype).iter().any(|v| v == want), "{name} {rtype}: want {want}: {}", d.raw);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_in_another_namespace_follows_the_primary_and_outlives_it_until_expire() -> Result<()> {
    let mut pair = Pair::new()?;
    pair.start_primary()?;
    pair.start_secondary()?;
    wait_for("the secondary's first copy", Duration::from_secs(15), || Ok(answers_all(&pair, LOCAL).is_ok()))
        .with_context(|| pair.logs())?;

    // (a) A dynamic record added on the primary: answered by the secondary within 1 s (NOTIFY, then IXFR).
    let mut c = pair.client(pair.primary.as_ref().context("primary")?).await?;
    let added = Instant::now();
    c.upsert_record(upsert(record("app.lab.home.arpa", "A", "10.0.0.30"))).await?;
    wait_for("the dynamic record on the secondary", Duration::from_secs(5), || {
        Ok(pair.ask_secondary("app.lab.home.arpa", "A")?.values("A") == ["10.0.0.30"])
    })
    .with_context(|| pair.logs())?;
    let took = added.elapsed();
    assert!(took < Duration::from_secs(1), "answered by the secondary after {took:?}\n{}", pair.logs());
    let mut names = LOCAL.to_vec();
    names.push(("app.lab.home.arpa", "A", "10.0.0.30"));

    // `labctl dns zones` shows the zone on both agents: the primary's row and the secondary's, same serial.
    let inv = pair.inventory()?;
    let (code, rows, stderr) = pair.labctl_zones(&inv)?;
    assert_eq!(code, Some(0), "{rows:?} {stderr}");
    let row = |rows: &[serde_json::Value], agent: &str| {
        rows.iter().find(|r| r["agent"] == agent && r["zone"] == "lab.home.arpa.").cloned().unwrap_or_default()
    };
    let (p, s) = (row(&rows, "dns"), row(&rows, "dns2"));
    assert_eq!((p["role"].as_str(), s["role"].as_str()), (Some("primary"), Some("secondary")), "{rows:?}");
    assert_eq!(p["serial"], s["serial"], "the secondary is current: {rows:?}");
    assert_eq!(s["last_transfer_kind"], "IXFR", "{rows:?}");

    // (b) The primary killed: the secondary answers every local and dynamic name.
    pair.primary.as_mut().context("primary")?.kill()?;
    let killed = Instant::now();
    answers_all(&pair, &names).with_context(|| pair.logs())?;
    // labctl still shows the secondary's zone, and says the primary is unreachable (exit 1).
    let (code, rows, stderr) = pair.labctl_zones(&inv)?;
    assert_eq!(code, Some(1), "{rows:?} {stderr}");
    assert_eq!(row(&rows, "dns2")["serving"], true, "{rows:?}");
    assert!(rows.iter().any(|r| r["agent"] == "dns" && r["error"].is_string()), "{rows:?}");
    assert!(stderr.starts_with("error: ") && stderr.contains("dns"), "{stderr}");

    // (c) The secondary restarted while the primary is down: it answers from its persisted copy at once.
    let sec = pair.secondary.as_mut().context("secondary")?;
    ensure!(sec.terminate()? == Some(0), "the secondary did not stop cleanly:\n{}", sec.logs());
    pair.start_secondary()?;
    answers_all(&pair, &names).with_context(|| pair.logs())?;
    let mut c2 = pair.client(pair.secondary.as_ref().context("secondary")?).await?;
    let zones = c2.list_zones(ListZonesRequest {}).await?.into_inner().zones;
    let z = zones.iter().find(|z| z.zone == "lab.home.arpa.").context("the zone in ListZones")?;
    assert_eq!((z.role.as_str(), z.serving), ("secondary", true), "{z:?}");
    assert_eq!(z.peers, [format!("{}:53", pair.ip1())], "{z:?}");
    ensure!(killed.elapsed() < EXPIRE, "the restart took until the expiry; cannot tell (c) from (d)");
    // The failing refresh makes the secondary degraded (`labctl status`), naming the zone.
    let ch = pair.pki.material(&pair.pki.ca(), Role::Viewer, "viewer")?;
    let ch = ch
        .connect(&pair.secondary.as_ref().context("secondary")?.url(), Role::DnsAgent, Duration::from_secs(5))
        .await?;
    let status = AgentClient::new(ch).status(StatusRequest {}).await?.into_inner();
    assert!(
        status
            .degraded
            .iter()
            .any(|d| d.starts_with("secondary zone lab.home.arpa.: refresh failing, serving its copy until")),
        "{status:?}"
    );
    // Records of a secondary zone are written on its primary only.
    let e = c2.upsert_record(upsert(record("x.lab.home.arpa", "A", "10.0.0.99"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("is in a secondary zone"), "{e:?}");

    // (d) After `expire` without a successful refresh: SERVFAIL (never forwarded, never stale beyond expire).
    wait_for("SERVFAIL after expire", EXPIRE + Duration::from_secs(15), || {
        Ok(pair.ask_secondary("nas.lab.home.arpa", "A")?.status == "SERVFAIL")
    })
    .with_context(|| pair.logs())?;
    let after = killed.elapsed();
    assert!(after + Duration::from_secs(11) >= EXPIRE, "SERVFAIL {after:?} after the primary died, expire {EXPIRE:?}");
    assert_eq!(pair.ask_secondary("app.lab.home.arpa", "A")?.status, "SERVFAIL");
    let zones = c2.list_zones(ListZonesRequest {}).await?.into_inner().zones;
    let z = zones.iter().find(|z| z.zone == "lab.home.arpa.").context("the zone in ListZones")?;
    assert!(!z.serving && !z.last_error.is_empty(), "{z:?}");
    Ok(())
}
