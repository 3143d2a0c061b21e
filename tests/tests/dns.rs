//! The dns-agent end to end: the real binary on port 0, queried with `dig` and raw UDP/TCP packets, driven over mTLS
//! gRPC (dynamic records, ownership, reload), restarted on the same state dir; a real `unbound` as the upstream, and
//! a hostile upstream written here (huge answers, slow answers, records for names it does not own).
//! Knows the agent's config format, logs and gRPC API; nothing of its internals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use agent_core::tls;
use anyhow::{bail, ensure, Context, Result};
use hickory_resolver::proto::op::{Message, MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::{A, CNAME, TXT};
use hickory_resolver::proto::rr::{Name as HName, RData, Record as HRecord};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{
    DeleteRecordRequest, ListRecordsRequest, QueryLogRequest, Record, ReloadRequest, StatsRequest, StatusRequest,
    UpsertRecordRequest,
};
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use tonic::transport::Channel;
use tonic::Code;

const ZONES: &str = r#"
[[zones]]
name = "lab.home.arpa"
records = [
  { name = "nas", type = "A", value = "10.0.0.10", ttl = 120 },
  { name = "nas", type = "AAAA", value = "fd00::10" },
  { name = "www", type = "CNAME", value = "nas" },
  { name = "@", type = "MX", value = "10 mail.lab.home.arpa." },
  { name = "mail", type = "A", value = "10.0.0.11" },
  { name = "_http._tcp", type = "SRV", value = "10 5 8080 nas" },
  { name = "@", type = "TXT", value = "v=spf1 mx -all" },
  { name = "printer", type = "PTR", value = "printer.example." },
]

[[zones]]
name = "10.in-addr.arpa"
"#;

/// A dns-agent under test: its process, DNS address, config file and state.
struct Dns {
    agent: AgentProc,
    addr: SocketAddr,
    /// When the `dns udp listening` line was seen.
    listening_at: Instant,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn config_text(pki: &Pki, dir: &Path, extra: &str) -> Result<String> {
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    Ok(format!("{}[dns]\nlisten = [\"127.0.0.1:0\"]\n{extra}", base_config(&dir.join("state"), &pki.ca(), &cert, &key)))
}

impl Dns {
    fn start(pki: &Pki, extra: &str) -> Result<Dns> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("dns-agent.toml");
        std::fs::write(&config, config_text(pki, dir.path(), extra)?)?;
        let (agent, addr, listening_at) = start_on(&config)?;
        Ok(Dns { agent, addr, listening_at, config, _dir: dir })
    }

    /// Stops the agent (SIGTERM) and starts it again on the same config and state dir.
    fn restart(&mut self) -> Result<()> {
        let code = self.agent.terminate()?;
        ensure!(code == Some(0), "dns-agent exited with {code:?}");
        let (agent, addr, at) = start_on(&self.config)?;
        (self.agent, self.addr, self.listening_at) = (agent, addr, at);
        Ok(())
    }

    fn dig(&self, args: &[&str]) -> Result<Dig> {
        dig(self.addr, args)
    }

    async fn client(&self, pki: &Pki, role: Role, name: &str) -> Result<DnsClient<Channel>> {
        Ok(DnsClient::new(self.channel(pki, role, name).await?))
    }

    async fn channel(&self, pki: &Pki, role: Role, name: &str) -> Result<Channel> {
        let m = pki.material(&pki.ca(), role, name)?;
        Ok(m.connect(&self.agent.url(), Role::DnsAgent, Duration::from_secs(5)).await?)
    }

    fn assert_alive(&mut self) -> Result<()> {
        ensure!(self.agent_is_running()?, "dns-agent died; log:\n{}", self.agent.logs());
        Ok(())
    }

    /// Running (a process that exited but was not reaped yet is a zombie, `Z`, in /proc).
    fn agent_is_running(&self) -> Result<bool> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.agent.pid())).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
        Ok(!state.is_empty() && state != "Z" && state != "X")
    }
}

/// Starts the agent and waits for its `dns udp listening on ADDR` line (the harness waits for grpc and metrics).
fn start_on(config: &Path) -> Result<(AgentProc, SocketAddr, Instant)> {
    let agent = AgentProc::start_with_config(AgentKind::Dns, config)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = agent.logs();
        if let Some(rest) = logs.split("dns udp listening on ").nth(1) {
            let at = Instant::now();
            let addr: SocketAddr = rest.split_whitespace().next().unwrap_or("").parse().context("dns udp address")?;
            // TCP is bound before UDP is logged; its line follows at once.
            wait_for("the dns tcp line", Duration::from_secs(5), || {
                Ok(agent.logs().contains(&format!("dns tcp listening on {addr}")))
            })?;
            return Ok((agent, addr, at));
        }
        if Instant::now() > deadline {
            bail!("no `dns udp listening` line; log:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What `dig` printed, parsed.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<(String, String, String)>,
    authority: Vec<(String, String, String)>,
    raw: String,
}

impl Dig {
    fn aa(&self) -> bool {
        self.flags.iter().any(|f| f == "aa")
    }

    fn values(&self, rtype: &str) -> Vec<String> {
        self.answers.iter().filter(|a| a.1 == rtype).map(|a| a.2.clone()).collect()
    }
}

fn dig(addr: SocketAddr, args: &[&str]) -> Result<Dig> {
    let out = Command::new("/usr/bin/dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=3", "+tries=1", "+nocookie"])
        .args(args)
        .output()
        .context("running /usr/bin/dig (install dnsutils / bind9-dnsutils)")?;
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let status = raw
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string)
        .with_context(|| format!("dig {args:?} got no answer: {raw}"))?;
    let flags = raw
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let section = |title: &str| -> Vec<(String, String, String)> {
        let Some(body) = raw.split(&format!(";; {title} SECTION:\n")).nth(1) else { return Vec::new() };
        body.lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5).then(|| (f[0].to_string(), f[3].to_string(), f[4..].join(" ")))
            })
            .collect()
    };
    Ok(Dig { status, flags, answers: section("ANSWER"), authority: section("AUTHORITY"), raw })
}

fn record(name: &str, rtype: &str, value: &str) -> Record {
    Record { name: name.into(), r#type: rtype.into(), value: value.into(), ttl: 0, owner: String::new() }
}

fn upsert(r: Record) -> UpsertRecordRequest {
    UpsertRecordRequest { record: Some(r) }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a raw UDP packet; returns the reply, if one came within `wait`.
fn udp_exchange(addr: SocketAddr, packet: &[u8], wait: Duration) -> Result<Option<Vec<u8>>> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(wait))?;
    s.send_to(packet, addr)?;
    let mut buf = [0u8; 4096];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Ok(Some(buf[..n].to_vec())),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// (id, rcode, answer count) of a reply.
fn reply_header(r: &[u8]) -> (u16, u8, u16) {
    (u16::from_be_bytes([r[0], r[1]]), r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]]))
}

#[test]
fn local_zones_answer_every_type_authoritatively() -> Result<()> {
    let pki = Pki::new()?;
    let dns = Dns::start(&pki, ZONES)?;

    let a = dns.dig(&["nas.lab.home.arpa", "A"])?;
    assert_eq!(a.status, "NOERROR", "{}", a.raw);
    assert!(a.aa(), "answers from a local zone are authoritative: {}", a.raw);
    assert_eq!(a.values("A"), vec!["10.0.0.10"]);
    assert_eq!(a.answers[0].1, "A");
    assert!(a.raw.contains("120\tIN\tA"), "ttl from the config: {}", a.raw);

    let cases: &[(&str, &str, &str, &str)] = &[
        ("NAS.Lab.Home.Arpa", "AAAA", "AAAA", "fd00::10"),
        ("www.lab.home.arpa", "CNAME", "CNAME", "nas.lab.home.arpa."),
        ("lab.home.arpa", "MX", "MX", "10 mail.lab.home.arpa."),
        ("_http._tcp.lab.home.arpa", "SRV", "SRV", "10 5 8080 nas.lab.home.arpa."),
        ("lab.home.arpa", "TXT", "TXT", "\"v=spf1 mx -all\""),
        ("printer.lab.home.arpa", "PTR", "PTR", "printer.example."),
        ("lab.home.arpa", "NS", "NS", "ns.lab.home.arpa."),
    ];
    for (name, qtype, rtype, want) in cases {
        let d = dns.dig(&[name, qtype])?;
        assert_eq!(d.status, "NOERROR", "{name} {qtype}: {}", d.raw);
        assert!(d.aa(), "{name} {qtype}: {}", d.raw);
        assert_eq!(d.values(rtype), vec![want.to_string()], "{name} {qtype}: {}", d.raw);
    }
    let soa = dns.dig(&["lab.home.arpa", "SOA"])?;
    assert!(soa.values("SOA")[0].starts_with("ns.lab.home.arpa. hostmaster.lab.home.arpa."), "{}", soa.raw);

    // A CNAME answer carries the target's records when they are local.
    let chain = dns.dig(&["www.lab.home.arpa", "A"])?;
    assert_eq!(chain.values("CNAME"), vec!["nas.lab.home.arpa."], "{}", chain.raw);
    assert_eq!(chain.values("A"), vec!["10.0.0.10"], "{}", chain.raw);

    // NXDOMAIN (no such name) versus NODATA (the name exists, not that type): both with the SOA.
    let nx = dns.dig(&["nope.lab.home.arpa", "A"])?;
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert!(nx.aa() && nx.authority.iter().any(|r| r.1 == "SOA"), "{}", nx.raw);
    let nodata = dns.dig(&["nas.lab.home.arpa", "TXT"])?;
    assert_eq!(nodata.status, "NOERROR", "{}", nodata.raw);
    assert!(nodata.answers.is_empty() && nodata.authority.iter().any(|r| r.1 == "SOA"), "{}", nodata.raw);
    let ent = dns.dig(&["_tcp.lab.home.arpa", "A"])?;
    assert_eq!(ent.status, "NOERROR", "an empty non-terminal exists: {}", ent.raw);

    // Reverse lookups are synthesized from A records in the reverse zone.
    let rev = dns.dig(&["-x", "10.0.0.10"])?;
    assert_eq!(rev.status, "NOERROR", "{}", rev.raw);
    assert!(rev.aa(), "{}", rev.raw);
    assert_eq!(rev.values("PTR"), vec!["nas.lab.home.arpa."]);
    assert_eq!(dns.dig(&["-x", "10.9.9.9"])?.status, "NXDOMAIN");

    // TCP.
    let tcp = dns.dig(&["+tcp", "mail.lab.home.arpa", "A"])?;
    assert_eq!((tcp.status.as_str(), tcp.values("A")), ("NOERROR", vec!["10.0.0.11".to_string()]), "{}", tcp.raw);

    // No upstream configured: names outside the zones are refused; ANY is not implemented.
    assert_eq!(dns.dig(&["example.com", "A"])?.status, "REFUSED");
    assert_eq!(dns.dig(&["nas.lab.home.arpa", "ANY"])?.status, "NOTIMP");

    let text = dns.agent.metrics_text()?;
    assert!(text.contains("strata_dns_queries_total{qtype=\"A\",outcome=\"local\"}"), "{text}");
    assert!(text.contains("strata_dns_queries_total{qtype=\"A\",outcome=\"refused\"} 1"), "{text}");
    assert!(text.contains("strata_dns_query_duration_seconds_count"), "{text}");

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        tls::install_crypto_provider();
        let ch = dns.channel(&pki, Role::Viewer, "viewer1").await?;
        let status = AgentClient::new(ch.clone()).status(StatusRequest {}).await?.into_inner();
        assert_eq!(status.summary, "2 zones, 8 records, 0 blocked names, 0 upstreams");
        let stats = DnsClient::new(ch).stats(StatsRequest {}).await?.into_inner();
        assert!(stats.queries_by_outcome["local"] >= 10, "{stats:?}");
        assert_eq!(stats.queries_by_outcome["nxdomain"], 2, "{stats:?}");
        assert_eq!(stats.queries_by_outcome["refused"], 2, "{stats:?}");
        anyhow::Ok(())
    })?;
    Ok(())
}

#[test]
fn dynamic_records_ownership_validation_and_restart() -> Result<()> {
    let pki = Pki::new()?;
    let scopes =
        "\n[services_agents.svc1]\nunder = \"lab.home.arpa\"\n[services_agents.svc2]\nunder = \"lab.home.arpa\"\n";
    let mut dns = Dns::start(&pki, &format!("{ZONES}{scopes}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    tls::install_crypto_provider();

    rt.block_on(async {
        let mut admin = dns.client(&pki, Role::Admin, "admin1").await?;
        let saved = admin.upsert_record(upsert(record("photos.lab.home.arpa.", "A", "10.0.0.20"))).await?.into_inner();
        assert_eq!(saved.owner, format!("spiffe://{}/admin/admin1", strata_tests::harness::DOMAIN));
        assert_eq!(saved.ttl, 300);
        anyhow::Ok(())
    })?;
    // Served at once.
    let d = dns.dig(&["photos.lab.home.arpa", "A"])?;
    assert_eq!((d.status.as_str(), d.aa(), d.values("A")), ("NOERROR", true, vec!["10.0.0.20".to_string()]));
    assert_eq!(dns.dig(&["-x", "10.0.0.20"])?.values("PTR"), vec!["photos.lab.home.arpa."]);

    rt.block_on(async {
        // A viewer may not write (the authorization table refuses it before any handler).
        let mut viewer = dns.client(&pki, Role::Viewer, "viewer1").await?;
        let e = viewer.upsert_record(upsert(record("v.lab.home.arpa.", "A", "10.0.0.1"))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        // A services-agent writes its own records, not another's.
        let mut svc1 = dns.client(&pki, Role::ServicesAgent, "svc1").await?;
        let mut svc2 = dns.client(&pki, Role::ServicesAgent, "svc2").await?;
        svc1.upsert_record(upsert(record("app.lab.home.arpa", "A", "10.0.0.30"))).await?;
        svc1.upsert_record(upsert(record("app.lab.home.arpa", "A", "10.0.0.31"))).await?;
        let owner1 = format!("spiffe://{}/services-agent/svc1", strata_tests::harness::DOMAIN);
        for e in [
            svc2.upsert_record(upsert(record("app.lab.home.arpa", "A", "10.0.0.32"))).await.unwrap_err(),
            svc2.delete_record(DeleteRecordRequest { name: "app.lab.home.arpa".into(), ..Default::default() })
                .await
                .unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("app.lab.home.arpa.") && e.message().contains(&owner1), "{e:?}");
        }
        let e = svc2.upsert_record(upsert(record("photos.lab.home.arpa", "A", "10.0.0.40"))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("/admin/admin1"), "{e:?}");
        let e = svc1.upsert_record(upsert(record("nas.lab.home.arpa", "A", "10.0.0.41"))).await.unwrap_err();
        assert!(e.code() == Code::PermissionDenied && e.message().contains("config file"), "{e:?}");

        // Invalid records: INVALID_ARGUMENT naming the field.
        let mut admin = dns.client(&pki, Role::Admin, "admin1").await?;
        let cases = [
            (record("x.lab.home.arpa", "A", "fd00::1"), "record.value: fd00::1 is an IPv6 address"),
            (record("x.lab.home.arpa", "AAAA", "10.0.0.1"), "record.value: 10.0.0.1 is an IPv4 address"),
            (record("x.lab.home.arpa", "NAPTR", "x"), "record.type: unknown record type"),
            (record("bad name.lab.home.arpa", "A", "10.0.0.1"), "record.name: "),
            (record("x.example.com", "A", "10.0.0.1"), "record.name: x.example.com. is not in any zone"),
            (record("nas.lab.home.arpa", "CNAME", "mail.lab.home.arpa."), "record.type: CNAME at nas.lab.home.arpa."),
            (record("www.lab.home.arpa", "TXT", "x"), "record.type: TXT at www.lab.home.arpa. is not allowed beside"),
            (Record { ttl: 10_000_000, ..record("x.lab.home.arpa", "A", "10.0.0.1") }, "record.ttl: "),
        ];
        for (r, want) in cases {
            let e = admin.upsert_record(upsert(r.clone())).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{r:?}: {e:?}");
            assert!(e.message().starts_with(want), "{r:?}: want {want:?}, got {:?}", e.message());
        }
        let e = admin.upsert_record(UpsertRecordRequest { record: None }).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "record: is required"));

        // The owner deletes its own record; deleting a config record is refused.
        let n = svc1
            .delete_record(DeleteRecordRequest {
                name: "app.lab.home.arpa".into(),
                r#type: "A".into(),
                value: "10.0.0.31".into(),
            })
            .await?
            .into_inner();
        assert_eq!(n.deleted, 1);
        let e = admin
            .delete_record(DeleteRecordRequest {
                name: "nas.lab.home.arpa".into(),
                r#type: "A".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

        let list = admin.list_records(ListRecordsRequest { zone: "lab.home.arpa".into() }).await?.into_inner();
        assert_eq!(list.records.len(), 8 + 2, "{list:?}");
        assert!(list
            .records
            .iter()
            .any(|r| r.name == "app.lab.home.arpa." && r.owner == owner1 && r.value == "10.0.0.30"));
        anyhow::Ok(())
    })?;
    assert_eq!(dns.dig(&["app.lab.home.arpa", "A"])?.values("A"), vec!["10.0.0.30"]);

    // Still there after a restart on the same state dir.
    dns.restart()?;
    let d = dns.dig(&["photos.lab.home.arpa", "A"])?;
    assert_eq!((d.status.as_str(), d.values("A")), ("NOERROR", vec!["10.0.0.20".to_string()]), "{}", d.raw);
    assert_eq!(dns.dig(&["app.lab.home.arpa", "A"])?.values("A"), vec!["10.0.0.30"]);
    Ok(())
}

#[test]
fn reload_refuses_an_invalid_config_and_sighup_applies_a_valid_one() -> Result<()> {
    let pki = Pki::new()?;
    let mut dns = Dns::start(&pki, ZONES)?;
    let rt = tokio::runtime::Runtime::new()?;
    tls::install_crypto_provider();
    let good = std::fs::read_to_string(&dns.config)?;

    // Invalid: refused with the reason; the running zones keep serving.
    std::fs::write(&dns.config, good.replace("10.0.0.11", "10.0.0.999"))?;
    rt.block_on(async {
        let mut admin = dns.client(&pki, Role::Admin, "admin1").await?;
        let e = admin.reload(ReloadRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("zones[0].records[4].value") && e.message().contains("10.0.0.999"), "{e:?}");
        anyhow::Ok(())
    })?;
    assert_eq!(dns.dig(&["mail.lab.home.arpa", "A"])?.values("A"), vec!["10.0.0.11"]);

    // SIGHUP with a valid change: applied without a restart.
    let listen = "listen = [\"127.0.0.1:0\"]\n";
    let changed = good.replace("10.0.0.11", "10.0.0.12").replacen(listen, &format!("{listen}query_log = true\n"), 1);
    std::fs::write(&dns.config, &changed)?;
    let status = Command::new("kill").args(["-HUP", &dns.agent.pid().to_string()]).status()?;
    ensure!(status.success());
    wait_for("the SIGHUP reload", Duration::from_secs(5), || {
        Ok(dns.dig(&["mail.lab.home.arpa", "A"])?.values("A") == vec!["10.0.0.12"])
    })?;
    dns.assert_alive()?;
    assert!(dns.agent.logs().contains("applied dns.query_log, zones"), "{}", dns.agent.logs());

    rt.block_on(async {
        let mut admin = dns.client(&pki, Role::Admin, "admin1").await?;
        // The query log is on now and shows the query just made.
        let log = admin.query_log(QueryLogRequest { limit: 10, ..Default::default() }).await?.into_inner();
        assert!(
            log.entries.iter().any(|e| e.name == "mail.lab.home.arpa." && e.r#type == "A" && e.outcome == "local"),
            "{log:?}"
        );
        // Unchanged config: nothing to apply. A listen change needs a restart, and says so.
        let r = admin.reload(ReloadRequest {}).await?.into_inner();
        assert!(!r.changed, "{r:?}");
        std::fs::write(&dns.config, changed.replace(listen, "listen = [\"127.0.0.1:5399\"]\n"))?;
        let r = admin.reload(ReloadRequest {}).await?.into_inner();
        assert!(r.changed, "{r:?}");
        assert_eq!(r.message, "config reloaded: nothing to apply; dns.listen changed: restart the agent to apply");
        anyhow::Ok(())
    })?;
    Ok(())
}

#[test]
fn offline_start_serves_local_records_within_100ms() -> Result<()> {
    let pki = Pki::new()?;
    // TEST-NET-1 addresses: nothing answers there.
    let extra = format!(
        "{ZONES}\n[forward]\nupstreams = [\"udp://192.0.2.1:53\"]\n\n[blocklist]\nsources = [\"http://192.0.2.1/hosts\"]\n"
    );
    let dns = Dns::start(&pki, &extra)?;
    let reply = udp_exchange(dns.addr, &query_packet(7, "nas.lab.home.arpa", 1), Duration::from_millis(100))?;
    let elapsed = dns.listening_at.elapsed();
    let reply = reply.context("no answer within 100 ms")?;
    assert_eq!(reply_header(&reply), (7, 0, 1));
    assert!(elapsed < Duration::from_millis(100), "answered {elapsed:?} after the listening line");
    // A non-local name fails (SERVFAIL) instead of hanging forever; local names keep answering.
    let d = dig(dns.addr, &["example.com", "A"])?;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    assert_eq!(dns.dig(&["nas.lab.home.arpa"])?.values("A"), vec!["10.0.0.10"]);
    Ok(())
}

#[test]
fn malformed_packets_never_kill_the_agent() -> Result<()> {
    let pki = Pki::new()?;
    let mut dns = Dns::start(&pki, ZONES)?;
    let good = query_packet(9, "nas.lab.home.arpa", 1);
    let short = Duration::from_millis(300);

    // Garbage, a header alone, a truncated question, an oversized datagram: dropped or answered, never fatal.
    for p in [vec![0xde, 0xad, 0xbe], vec![0u8; 12], good[..good.len() - 3].to_vec(), vec![0x55; 4000]] {
        if let Some(r) = udp_exchange(dns.addr, &p, short)? {
            let rcode = r.get(3).map(|b| b & 0x0f);
            assert!(matches!(rcode, Some(1..=5) | Some(0)), "unexpected reply {r:?}");
        }
    }
    // A truncated question gets FORMERR (the header is readable).
    let r = udp_exchange(dns.addr, &good[..good.len() - 3], short)?.context("no FORMERR")?;
    assert_eq!(reply_header(&r).1, 1, "FORMERR");
    // Two questions: FORMERR. Opcode UPDATE: NOTIMP. A response packet: ignored.
    let mut two = query_packet(10, "nas.lab.home.arpa", 1);
    two[5] = 2;
    two.extend_from_slice(&good[12..]);
    assert_eq!(reply_header(&udp_exchange(dns.addr, &two, short)?.context("no reply to 2 questions")?).1, 1);
    let mut update = query_packet(11, "lab.home.arpa", 6);
    update[2] = 5 << 3;
    assert_eq!(reply_header(&udp_exchange(dns.addr, &update, short)?.context("no reply to UPDATE")?).1, 4);
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(udp_exchange(dns.addr, &response, short)?.is_none(), "responses are not answered");
    // Unknown type (65000) in a local zone: NODATA, not an error.
    let r = udp_exchange(dns.addr, &query_packet(12, "nas.lab.home.arpa", 65000), short)?.context("no reply")?;
    assert_eq!(reply_header(&r), (12, 0, 0));

    // A small flood.
    let s = UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..2000u16 {
        let p = if i % 2 == 0 {
            query_packet(i, "nas.lab.home.arpa", 1)
        } else {
            vec![(i & 0xff) as u8; (i % 40) as usize]
        };
        s.send_to(&p, dns.addr)?;
    }
    // TCP: a bogus length prefix and garbage, then a connection that closes mid-message.
    {
        let mut t = TcpStream::connect(dns.addr)?;
        t.write_all(&[0xff, 0xff, 1, 2, 3])?;
        drop(t);
        let mut t = TcpStream::connect(dns.addr)?;
        t.write_all(&[0, 30, 0, 1])?;
    }
    // Still alive and answering, over UDP and TCP.
    dns.assert_alive()?;
    let r = udp_exchange(dns.addr, &good, Duration::from_secs(2))?.context("no answer after the garbage")?;
    assert_eq!(reply_header(&r), (9, 0, 1));
    let mut t = TcpStream::connect(dns.addr)?;
    t.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut framed = (good.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&good);
    t.write_all(&framed)?;
    let mut len = [0u8; 2];
    t.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut body)?;
    assert_eq!(reply_header(&body), (9, 0, 1));
    dns.assert_alive()?;
    Ok(())
}

/// A real unbound on 127.0.0.1:PORT answering `fwd.example.` and `other.example.`; killed on Drop.
struct Unbound {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Unbound {
    fn start() -> Result<Unbound> {
        let dir = tempfile::tempdir()?;
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.local_addr()?.port()
        };
        let conf = dir.path().join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  \
                 directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  do-ip6: no\n  \
                 access-control: 127.0.0.0/8 allow\n  local-zone: \"example.\" static\n  \
                 local-data: \"fwd.example. 300 IN A 192.0.2.7\"\n  local-data: \"other.example. 300 IN A 192.0.2.8\"\n  \
                 local-data: \"short.example. 1 IN A 192.0.2.9\"\n  local-data: \"ok.ads.example.com. 300 IN A 192.0.2.10\"\n  \
                 local-zone: \"example.com.\" transparent\n\
                 remote-control:\n  control-enable: no\n",
                d = dir.path().display()
            ),
        )?;
        let child = Command::new("/usr/sbin/unbound")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting /usr/sbin/unbound")?;
        let u = Unbound { child, port, _dir: dir };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for("unbound to answer", Duration::from_secs(10), || {
            Ok(udp_exchange(addr, &query_packet(1, "fwd.example", 1), Duration::from_millis(200))?.is_some())
        })?;
        Ok(u)
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn forwarding_via_unbound_and_blocklist_end_to_end() -> Result<()> {
    let pki = Pki::new()?;
    let unbound = Unbound::start()?;
    let lists = tempfile::tempdir()?;
    let list = lists.path().join("ads.txt");
    // All three formats: hosts, plain domain, adblock; the allowlist wins over every list.
    std::fs::write(&list, "# ads\n0.0.0.0 ads.example.com\ntracker.example.net\n||adblock.example.org^\n")?;
    let extra = format!(
        "{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\n\n[blocklist]\nsources = [{:?}]\n\
         allow = [\"ok.ads.example.com\"]\n",
        unbound.port,
        list.display().to_string()
    );
    let extra = extra.replace(
        "  { name = \"printer\"",
        "  { name = \"ext\", type = \"CNAME\", value = \"fwd.example.\" },\n  { name = \"printer\"",
    );
    let dns = Dns::start(&pki, &extra)?;

    let f = dns.dig(&["fwd.example", "A"])?;
    assert_eq!((f.status.as_str(), f.values("A")), ("NOERROR", vec!["192.0.2.7".to_string()]), "{}", f.raw);
    assert!(!f.aa(), "forwarded answers are not authoritative");
    assert!(f.flags.iter().any(|x| x == "ra"), "recursion available with an upstream: {}", f.raw);
    let again = dns.dig(&["fwd.example", "A"])?;
    assert_eq!(again.values("A"), vec!["192.0.2.7"]);
    assert_eq!(dns.dig(&["missing.example", "A"])?.status, "NXDOMAIN");
    // A local CNAME to an outside name is followed through the forwarder.
    let ext = dns.dig(&["ext.lab.home.arpa", "A"])?;
    assert_eq!(ext.values("CNAME"), vec!["fwd.example."], "{}", ext.raw);
    assert_eq!(ext.values("A"), vec!["192.0.2.7"], "{}", ext.raw);
    // Local zones still come first.
    assert!(dns.dig(&["nas.lab.home.arpa", "A"])?.aa());

    // Blocked names (the list loads in the background): A → 0.0.0.0, AAAA → ::, other types NODATA.
    wait_for("the blocklist to load", Duration::from_secs(10), || {
        Ok(dns.dig(&["ads.example.com", "A"])?.values("A") == vec!["0.0.0.0"])
    })?;
    assert_eq!(dns.dig(&["sub.tracker.example.net", "AAAA"])?.values("AAAA"), vec!["::"]);
    let mx = dns.dig(&["ads.example.com", "MX"])?;
    assert_eq!((mx.status.as_str(), mx.answers.len()), ("NOERROR", 0), "{}", mx.raw);
    assert_eq!(dns.dig(&["x.adblock.example.org", "A"])?.values("A"), vec!["0.0.0.0"], "adblock format, subdomain");
    let allowed = dns.dig(&["ok.ads.example.com", "A"])?;
    assert_eq!(allowed.values("A"), vec!["192.0.2.10"], "the allowlist wins over the list: {}", allowed.raw);

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        tls::install_crypto_provider();
        let ch = dns.channel(&pki, Role::Admin, "admin1").await?;
        let stats = DnsClient::new(ch.clone()).stats(StatsRequest {}).await?.into_inner();
        assert!(stats.queries_by_outcome["forwarded"] >= 1, "{stats:?}");
        assert!(stats.queries_by_outcome["cached"] >= 1, "{stats:?}");
        assert!(stats.queries_by_outcome["blocked"] >= 3, "{stats:?}");
        assert!(stats.blocklist_entries >= 2 && stats.cache_entries >= 1, "{stats:?}");
        let bl = DnsClient::new(ch.clone()).get_blocklist(strata_proto::v1::GetBlocklistRequest {}).await?.into_inner();
        assert_eq!(bl.sources.len(), 1, "{bl:?}");
        assert!(bl.sources[0].error.is_empty() && bl.sources[0].entries >= 2, "{bl:?}");
        let status = AgentClient::new(ch).status(StatusRequest {}).await?.into_inner();
        assert_eq!(status.summary, "2 zones, 9 records, 3 blocked names, 1 upstream");
        anyhow::Ok(())
    })?;

    // The upstream goes away: a fresh entry is answered from the cache, an expired one as stale (RFC 8767, TTL 30).
    let short = dns.dig(&["short.example", "A"])?;
    assert_eq!(short.values("A"), vec!["192.0.2.9"], "{}", short.raw);
    drop(unbound);
    std::thread::sleep(Duration::from_millis(2100));
    let cached = dns.dig(&["fwd.example", "A"])?;
    assert_eq!(
        (cached.status.as_str(), cached.values("A")),
        ("NOERROR", vec!["192.0.2.7".to_string()]),
        "{}",
        cached.raw
    );
    let stale = dns.dig(&["short.example", "A"])?;
    assert_eq!((stale.status.as_str(), stale.values("A")), ("NOERROR", vec!["192.0.2.9".to_string()]), "{}", stale.raw);
    assert!(stale.raw.contains("\t30\tIN\tA\t192.0.2.9"), "a stale answer carries TTL 30: {}", stale.raw);
    assert_eq!(dns.dig(&["never-seen.example", "A"])?.status, "SERVFAIL", "no upstream and nothing cached");
    rt.block_on(async {
        let ch = dns.channel(&pki, Role::Admin, "admin1").await?;
        let stats = DnsClient::new(ch).stats(StatsRequest {}).await?.into_inner();
        assert!(stats.queries_by_outcome["stale"] >= 1, "{stats:?}");
        anyhow::Ok(())
    })?;
    Ok(())
}

#[test]
fn dns_over_tls_and_https() -> Result<()> {
    let pki = Pki::new()?;
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let extra = format!(
        "tls_listen = [\"127.0.0.1:0\"]\nhttps_listen = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\n{ZONES}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let dns = Dns::start(&pki, &extra)?;
    let addr_of = |what: &str| -> Result<SocketAddr> {
        let line = format!("dns {what} listening on ");
        wait_for(&format!("the `{line}` line"), Duration::from_secs(5), || Ok(dns.agent.logs().contains(&line)))?;
        let logs = dns.agent.logs();
        let rest = logs.split(line.as_str()).nth(1).with_context(|| format!("no `{line}` line:\n{logs}"))?;
        Ok(rest.split_whitespace().next().unwrap_or("").parse()?)
    };
    let ca = format!("+tls-ca={}", pki.ca().display());
    // The certificate is verified against the lab CA (its SANs include 127.0.0.1).
    let dot = dig(addr_of("tls")?, &[&ca, "nas.lab.home.arpa", "A"])?;
    assert!(dot.raw.contains("(TLS)"), "{}", dot.raw);
    assert_eq!((dot.status.as_str(), dot.aa(), dot.values("A")), ("NOERROR", true, vec!["10.0.0.10".to_string()]));
    let doh = dig(addr_of("https")?, &["+https", &ca, "www.lab.home.arpa", "A"])?;
    assert!(doh.raw.contains("(HTTPS)"), "{}", doh.raw);
    assert_eq!(doh.values("A"), vec!["10.0.0.10"], "{}", doh.raw);
    assert_eq!(dig(addr_of("https")?, &["+https", &ca, "nope.lab.home.arpa", "A"])?.status, "NXDOMAIN");
    Ok(())
}

/// hickory's own resolver, as a second real client beside dig, over UDP and over TCP.
#[test]
fn hickory_resolver_client_over_udp_and_tcp() -> Result<()> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::rr::{RData, RecordType};
    use hickory_resolver::Resolver;

    let pki = Pki::new()?;
    let dns = Dns::start(&pki, ZONES)?;
    let rt = tokio::runtime::Runtime::new()?;
    for protocol in [ProtocolConfig::Udp, ProtocolConfig::Tcp] {
        let mut conn = ConnectionConfig::new(protocol.clone());
        conn.port = dns.addr.port();
        let server = NameServerConfig::new(dns.addr.ip(), true, vec![conn]);
        let config = ResolverConfig::from_parts(None, vec![], vec![server]);
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default()).build()?;
        rt.block_on(async {
            let a = resolver.lookup("nas.lab.home.arpa.", RecordType::A).await?;
            let addrs: Vec<String> = a.answers().iter().map(|r| r.data.to_string()).collect();
            ensure!(addrs == ["10.0.0.10"], "{protocol:?}: A {addrs:?}");
            let www = resolver.lookup("www.lab.home.arpa.", RecordType::A).await?;
            let kinds: Vec<RecordType> = www.answers().iter().map(|r| r.record_type()).collect();
            ensure!(kinds.contains(&RecordType::CNAME) && kinds.contains(&RecordType::A), "{protocol:?}: {kinds:?}");
            let mx = resolver.lookup("lab.home.arpa.", RecordType::MX).await?;
            ensure!(
                mx.answers()
                    .iter()
                    .any(|r| matches!(&r.data, RData::MX(m) if m.exchange.to_ascii() == "mail.lab.home.arpa.")),
                "{protocol:?}: MX {mx:?}"
            );
            let missing = resolver.lookup("nope.lab.home.arpa.", RecordType::A).await;
            let err = missing.err().context("nope.lab.home.arpa resolved")?;
            ensure!(err.to_string().to_lowercase().contains("nxdomain") || err.is_nx_domain(), "{protocol:?}: {err}");
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// A hostile upstream: a DNS server on 127.0.0.1 (UDP and TCP on one port) that answers every query with what its
/// `answer` function builds, after `delay`, and counts the queries it got. Over UDP an answer longer than 512 bytes
/// is sent truncated (TC), so that the agent asks again over TCP. Its threads stop when it is dropped.
struct FakeUpstream {
    port: u16,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

type Answerer = Arc<dyn Fn(&Message) -> Message + Send + Sync>;

impl FakeUpstream {
    fn start(delay: Duration, answer: impl Fn(&Message) -> Message + Send + Sync + 'static) -> Result<FakeUpstream> {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            if let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr()?) {
                break (udp, tcp);
            }
        };
        let port = udp.local_addr()?.port();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Answerer = Arc::new(answer);
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        tcp.set_nonblocking(true)?;
        let udp = Arc::new(udp);
        {
            let (queries, stop, answer) = (queries.clone(), stop.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, src)) = udp.recv_from(&mut buf) else { continue };
                    let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let (udp, answer) = (udp.clone(), answer.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        let mut reply = answer(&query);
                        let mut bytes = reply.to_vec().unwrap_or_default();
                        if bytes.len() > 512 {
                            reply.answers.clear();
                            reply.authorities.clear();
                            reply.additionals.clear();
                            reply.metadata.truncation = true;
                            bytes = reply.to_vec().unwrap_or_default();
                        }
                        let _ = udp.send_to(&bytes, src);
                    });
                }
            });
        }
        {
            let (queries, stop) = (queries.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut conn, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let (queries, stop, answer) = (queries.clone(), stop.clone(), answer.clone());
                    std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                        while !stop.load(Ordering::Relaxed) {
                            let mut len = [0u8; 2];
                            match conn.read_exact(&mut len) {
                                Ok(()) => {}
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    continue
                                }
                                Err(_) => return,
                            }
                            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if conn.read_exact(&mut msg).is_err() {
                                return;
                            }
                            let Ok(query) = Message::from_vec(&msg) else { return };
                            queries.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(delay);
                            let bytes = answer(&query).to_vec().unwrap_or_default();
                            let Ok(n) = u16::try_from(bytes.len()) else { return };
                            if conn.write_all(&n.to_be_bytes()).and_then(|_| conn.write_all(&bytes)).is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        Ok(FakeUpstream { port, queries, stop })
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reply skeleton for `query`: same id and question, NOERROR, RA.
fn reply_to(query: &Message) -> Message {
    let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = query.queries.clone();
    m
}

fn hname(s: &str) -> HName {
    HName::from_ascii(s).expect("name")
}

/// Resident set size of a process, from /proc/PID/status.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS number")
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn forwarder_cache_is_bounded_in_bytes_against_a_hostile_upstream() -> Result<()> {
    const MAX_BYTES: u64 = 4 * 1024 * 1024;
    const NAMES: usize = 4000;
    // Every TXT answer is about 25 KB on the wire (100 strings of 250 bytes), valid for an hour.
    let upstream = FakeUpstream::start(Duration::ZERO, |q| {
        let mut r = reply_to(q);
        if let Some(question) = q.queries.first() {
            let txt = TXT::new(vec!["x".repeat(250); 100]);
            r.add_answer(HRecord::from_rdata(question.name().clone(), 3600, RData::TXT(txt)));
        }
        r
    })?;
    let pki = Pki::new()?;
    let dns = Dns::start(
        &pki,
        &format!(
            "{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\ncache_max_bytes = {MAX_BYTES}\n",
            upstream.port
        ),
    )?;
    let ask = |i: usize| -> Result<()> {
        let packet = query_packet(i as u16, &format!("n{i}.hostile.example"), 16);
        let reply = udp_exchange(dns.addr, &packet, Duration::from_secs(5))?.context("no reply")?;
        ensure!(reply_header(&reply).1 == 0, "n{i}: rcode {}", reply_header(&reply).1);
        Ok(())
    };
    for i in 0..20 {
        ask(i)?;
    }
    let before = rss_kib(dns.agent.pid())?;
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..8).map(|w| s.spawn(move || (20 + w..NAMES).step_by(8).try_for_each(ask))).collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a query thread panicked"))??;
        }
        Ok(())
    })?;
    let after = rss_kib(dns.agent.pid())?;
    let wire_mib = NAMES * 25_000 / (1024 * 1024);
    eprintln!(
        "{NAMES} hostile answers (~{wire_mib} MiB on the wire) in {:?}: RSS {before} KiB -> {after} KiB",
        started.elapsed()
    );
    // The cache's own count, as the agent exports it (gauges are updated every 5 s).
    let mut bytes = None;
    wait_for("the cache byte gauge", Duration::from_secs(10), || {
        let text = dns.agent.metrics_text()?;
        bytes = metric(&text, "strata_dns_cache_bytes").filter(|b| *b > 0);
        Ok(bytes.is_some())
    })?;
    let bytes = bytes.unwrap_or_default();
    ensure!(bytes <= MAX_BYTES, "the cache holds {bytes} bytes, above its bound of {MAX_BYTES}");
    ensure!(bytes > MAX_BYTES / 2, "the cache should be nearly full: {bytes} bytes");
    // Unbounded, the answers alone would take ~95 MiB; bounded, the agent grows by the cache and allocator slack.
    ensure!(
        after.saturating_sub(before) < 48 * 1024,
        "the agent's RSS grew from {before} KiB to {after} KiB with a {MAX_BYTES}-byte cache bound"
    );
    Ok(())
}

#[test]
fn identical_misses_in_flight_make_one_upstream_query() -> Result<()> {
    const CLIENTS: usize = 40;
    let upstream = FakeUpstream::start(Duration::from_millis(500), |q| {
        let mut r = reply_to(q);
        if let Some(question) = q.queries.first() {
            r.add_answer(HRecord::from_rdata(question.name().clone(), 300, RData::A(A::new(192, 0, 2, 55))));
        }
        r
    })?;
    let pki = Pki::new()?;
    let dns = Dns::start(&pki, &format!("{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\n", upstream.port))?;
    // hickory's first exchange with a new upstream may send the query twice: warm the connection up first.
    assert_eq!(dns.dig(&["warm-up.example", "A"])?.values("A"), vec!["192.0.2.55"]);
    let before = upstream.queries();
    let barrier = std::sync::Barrier::new(CLIENTS);
    let replies: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    udp_exchange(dns.addr, &query_packet(i as u16, "same.example", 1), Duration::from_secs(5))?
                        .context("no reply")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))).collect()
    });
    for (i, r) in replies.into_iter().enumerate() {
        let r = r?;
        assert_eq!(reply_header(&r), (i as u16, 0, 1), "client {i}");
    }
    assert_eq!(upstream.queries() - before, 1, "{CLIENTS} identical misses at once must make one upstream query");
    // And a cache hit afterwards asks nothing.
    assert_eq!(dns.dig(&["same.example", "A"])?.values("A"), vec!["192.0.2.55"]);
    assert_eq!(upstream.queries() - before, 1);
    Ok(())
}

#[test]
fn forwarded_answers_lose_out_of_bailiwick_records_and_never_shadow_local_names() -> Result<()> {
    // The upstream answers every question with its own record, plus records for a local name (in the answer,
    // authority and additional sections) and for an unrelated name; `into.example` is a CNAME into the local zone
    // followed by a forged address for it.
    let upstream = FakeUpstream::start(Duration::ZERO, |q| {
        let mut r = reply_to(q);
        let Some(question) = q.queries.first() else { return r };
        let qname = question.name().clone();
        let forged = |n: &str| HRecord::from_rdata(hname(n), 3600, RData::A(A::new(6, 6, 6, 6)));
        if qname == hname("into.example.") {
            r.add_answer(HRecord::from_rdata(qname, 60, RData::CNAME(CNAME(hname("nas.lab.home.arpa.")))));
            r.add_answer(forged("nas.lab.home.arpa."));
            return r;
        }
        r.add_answer(HRecord::from_rdata(qname, 60, RData::A(A::new(192, 0, 2, 80))));
        r.add_answer(forged("nas.lab.home.arpa."));
        r.add_answer(forged("other.example."));
        r.add_authority(forged("mail.lab.home.arpa."));
        r.add_additional(forged("nas.lab.home.arpa."));
        r
    })?;
    let pki = Pki::new()?;
    let dns = Dns::start(&pki, &format!("{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\n", upstream.port))?;
    for round in ["forwarded", "cached"] {
        let d = dns.dig(&["evil.example", "A"])?;
        assert_eq!(d.status, "NOERROR", "{round}: {}", d.raw);
        assert_eq!(d.answers, vec![("evil.example.".into(), "A".into(), "192.0.2.80".into())], "{round}: {}", d.raw);
        assert!(!d.raw.contains("6.6.6.6"), "{round}: an out-of-bailiwick record reached the client: {}", d.raw);
        let into = dns.dig(&["into.example", "A"])?;
        assert_eq!(into.values("CNAME"), vec!["nas.lab.home.arpa."], "{round}: {}", into.raw);
        assert!(!into.raw.contains("6.6.6.6"), "{round}: a forwarded record shadowed a local name: {}", into.raw);
    }
    // The local names still answer from the local zone.
    let nas = dns.dig(&["nas.lab.home.arpa", "A"])?;
    assert_eq!((nas.aa(), nas.values("A")), (true, vec!["10.0.0.10".to_string()]), "{}", nas.raw);
    assert_eq!(dns.dig(&["mail.lab.home.arpa", "A"])?.values("A"), vec!["10.0.0.11"]);
    Ok(())
}

#[test]
fn each_services_agent_writes_only_its_own_names_and_types() -> Result<()> {
    let pki = Pki::new()?;
    let scopes = "\n[services_agents.services1]\nunder = \"lab.home.arpa\"\n\
                  [services_agents.services2]\nunder = \"two.lab.home.arpa\"\n";
    let dns = Dns::start(&pki, &format!("{ZONES}{scopes}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    tls::install_crypto_provider();
    rt.block_on(async {
        // Two services-agents, each with its own certificate from the lab CA.
        let mut one = dns.client(&pki, Role::ServicesAgent, "services1").await?;
        let mut two = dns.client(&pki, Role::ServicesAgent, "services2").await?;
        let mut three = dns.client(&pki, Role::ServicesAgent, "services3").await?;
        one.upsert_record(upsert(record("photos.lab.home.arpa", "A", "10.0.0.20"))).await?;
        two.upsert_record(upsert(record("app.two.lab.home.arpa", "A", "10.0.0.21"))).await?;
        two.upsert_record(upsert(record("www.two.lab.home.arpa", "CNAME", "app.two.lab.home.arpa."))).await?;
        two.upsert_record(upsert(record("app.two.lab.home.arpa", "AAAA", "fd00::21"))).await?;
        let refused = [
            (record("other.lab.home.arpa", "A", "10.0.0.66"), "record.name: other.lab.home.arpa. is outside services-agent services2's names (strictly under two.lab.home.arpa.)"),
            (record("two.lab.home.arpa", "A", "10.0.0.66"), "record.name: two.lab.home.arpa. is outside"),
            (record("lab.home.arpa", "A", "10.0.0.66"), "record.name: lab.home.arpa. is a zone apex"),
            (record("wpad.two.lab.home.arpa", "A", "10.0.0.66"), "record.name: wpad.two.lab.home.arpa. is reserved"),
            (record("_acme-challenge.app.two.lab.home.arpa", "CNAME", "x.example."), "record.name: _acme-challenge.app.two.lab.home.arpa. has the reserved label"),
            (record("app.two.lab.home.arpa", "TXT", "v=spf1 -all"), "record.type: TXT at app.two.lab.home.arpa. is not allowed for services-agent services2 (it may write A, AAAA, CNAME)"),
            (record("ptr.two.lab.home.arpa", "PTR", "nas.lab.home.arpa."), "record.type: PTR at ptr.two.lab.home.arpa. is not allowed"),
            (record("66.0.0.10.in-addr.arpa", "PTR", "evil.example."), "record.name: 66.0.0.10.in-addr.arpa. is outside"),
        ];
        for (r, want) in refused {
            let e = two.upsert_record(upsert(r.clone())).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{r:?}: {e:?}");
            assert!(e.message().starts_with(want), "{r:?}: want {want:?}, got {:?}", e.message());
        }
        // Even the wider scope has no apex and no wpad; a services-agent without a section writes nothing.
        let e = one.upsert_record(upsert(record("wpad.lab.home.arpa", "A", "10.0.0.66"))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = three.upsert_record(upsert(record("x.lab.home.arpa", "A", "10.0.0.66"))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("services-agent services3 has no [services_agents.services3] section"), "{e:?}");
        // An admin still may.
        let mut admin = dns.client(&pki, Role::Admin, "admin1").await?;
        admin.upsert_record(upsert(record("wpad.lab.home.arpa", "A", "10.0.0.2"))).await?;
        anyhow::Ok(())
    })?;
    assert_eq!(dns.dig(&["www.two.lab.home.arpa", "A"])?.values("A"), vec!["10.0.0.21"]);
    assert_eq!(dns.dig(&["wpad.lab.home.arpa", "A"])?.values("A"), vec!["10.0.0.2"]);
    let other = dns.dig(&["other.lab.home.arpa", "A"])?;
    assert_eq!(other.status, "NXDOMAIN", "{}", other.raw);
    Ok(())
}

/// `labctl` with the inventory `inv`; killed on Drop (for `--follow`).
struct Labctl(Child);

impl Drop for Labctl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `labctl --config INV --json dns log ARGS…` to its end: (success, stdout, stderr).
fn labctl_log(inv: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(strata_tests::harness::bin("labctl")?)
        .arg("--config")
        .arg(inv)
        .args(["--json", "dns", "log"])
        .args(args)
        .output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into()))
}

/// The entries `labctl --json dns log ARGS…` prints.
fn log_entries(inv: &Path, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let (ok, out, err) = labctl_log(inv, args)?;
    ensure!(ok, "labctl dns log {args:?} failed: {err}");
    serde_json::from_str(&out).with_context(|| format!("not a JSON array: {out}"))
}

fn names_of(entries: &[serde_json::Value]) -> Vec<String> {
    entries.iter().map(|e| e["name"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn query_log_shows_outcome_blocking_list_and_latency_filters_narrow_and_follow_prints_new_queries() -> Result<()> {
    let pki = Pki::new()?;
    let unbound = Unbound::start()?;
    let lists = tempfile::tempdir()?;
    let (ads, trackers) = (lists.path().join("ads.txt"), lists.path().join("trackers.txt"));
    std::fs::write(&ads, "0.0.0.0 ads.example.com\nshared.example.org\n")?;
    std::fs::write(&trackers, "tracker.example.net\nshared.example.org\n")?;
    let extra = format!(
        "query_log = true\n{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\n\n[blocklist]\nsources = [{:?}, {:?}]\n",
        unbound.port,
        ads.display().to_string(),
        trackers.display().to_string()
    );
    let dns = Dns::start(&pki, &extra)?;
    let (cert, key) = pki.issue(Role::Admin, "alice")?;
    let inv = lists.path().join("labctl.toml");
    strata_tests::harness::write_inventory(&inv, &pki.ca(), &cert, &key, &[&dns.agent])?;

    wait_for("the blocklist to load", Duration::from_secs(10), || {
        Ok(dns.dig(&["ads.example.com", "A"])?.values("A") == vec!["0.0.0.0"])
    })?;
    assert_eq!(dns.dig(&["x.tracker.example.net", "A"])?.values("A"), vec!["0.0.0.0"]);
    assert_eq!(dns.dig(&["shared.example.org", "A"])?.values("A"), vec!["0.0.0.0"]);
    assert!(dns.dig(&["nas.lab.home.arpa", "A"])?.aa());
    assert_eq!(dns.dig(&["fwd.example", "A"])?.values("A"), vec!["192.0.2.7"]);
    assert_eq!(dns.dig(&["missing.example", "A"])?.status, "NXDOMAIN");

    // Every entry: its outcome, latency in ms, and for a blocked one the list (source) that blocked it.
    let all = log_entries(&inv, &["--limit", "100"])?;
    let find = |name: &str| all.iter().find(|e| e["name"] == name).cloned();
    let ads_entry = find("ads.example.com.").context("ads.example.com in the log")?;
    assert_eq!(ads_entry["outcome"], "blocked", "{ads_entry}");
    assert_eq!(ads_entry["list"], ads.display().to_string(), "{ads_entry}");
    let tracker = find("x.tracker.example.net.").context("tracker in the log")?;
    assert_eq!(tracker["list"], trackers.display().to_string(), "{tracker}");
    let shared = find("shared.example.org.").context("shared in the log")?;
    assert_eq!(shared["list"], ads.display().to_string(), "listed by both: the first source: {shared}");
    for (name, outcome) in
        [("nas.lab.home.arpa.", "local"), ("fwd.example.", "forwarded"), ("missing.example.", "nxdomain")]
    {
        let e = find(name).with_context(|| format!("{name} in {all:?}"))?;
        assert_eq!(e["outcome"], outcome, "{e}");
        assert_eq!(e["list"], "", "{e}");
    }
    // A repeated query answered from the UDP answer cache may take under a microsecond: 0 is a fair latency there.
    let forwarded = find("fwd.example.").context("fwd.example")?;
    assert!(forwarded["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "a forwarded query takes time: {forwarded}");
    for e in &all {
        let ms = e["latency_ms"].as_f64().with_context(|| format!("latency_ms in {e}"))?;
        assert!((0.0..5000.0).contains(&ms), "{e}");
        assert!(e["seq"].as_u64().is_some_and(|s| s > 0), "{e}");
    }
    // Newest first, by sequence number.
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");

    // Filters narrow, applied by the agent.
    let blocked = log_entries(&inv, &["--outcome", "blocked", "--limit", "100"])?;
    assert!(blocked.iter().all(|e| e["outcome"] == "blocked") && blocked.len() >= 3, "{blocked:?}");
    assert!(blocked.len() < all.len(), "{blocked:?}");
    assert_eq!(names_of(&log_entries(&inv, &["--name", "LAB.home"])?), ["nas.lab.home.arpa."]);
    assert_eq!(log_entries(&inv, &["--client", "127.0.0.0/8", "--limit", "100"])?.len(), all.len());
    assert!(log_entries(&inv, &["--client", "10.0.0.0/8"])?.is_empty());
    assert_eq!(log_entries(&inv, &["--limit", "2"])?.len(), 2);
    let (ok, _, err) = labctl_log(&inv, &["--outcome", "eaten"])?;
    assert!(!ok && err.contains("outcome") && err.contains("eaten"), "{err}");
    let (ok, _, err) = labctl_log(&inv, &["--client", "10.0.0.0/40"])?;
    assert!(!ok && err.contains("client"), "{err}");

    // --follow prints a query made after it started (one JSON object per line), and only what its filter selects.
    let calls = || dns.agent.logs().matches("/strata.v1.Dns/QueryLog").count();
    let before = calls();
    let mut child = Command::new(strata_tests::harness::bin("labctl")?)
        .arg("--config")
        .arg(&inv)
        .args(["--json", "dns", "log", "--follow", "--name", "follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("piped")?;
    let follower = Labctl(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let it make its first call (the cursor) before the query: the agent logs every call it allows.
    wait_for("labctl's first QueryLog call", Duration::from_secs(10), || Ok(calls() > before))?;
    assert_eq!(dns.dig(&["nas.lab.home.arpa", "A"])?.status, "NOERROR");
    assert_eq!(dns.dig(&["follow-me.lab.home.arpa", "A"])?.status, "NXDOMAIN");
    let line = rx.recv_timeout(Duration::from_secs(10)).context("no line from labctl dns log --follow")?;
    let e: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
    assert_eq!(
        (e["name"].as_str(), e["outcome"].as_str()),
        (Some("follow-me.lab.home.arpa."), Some("nxdomain")),
        "{e}"
    );
    assert!(e["latency_ms"].as_f64().is_some(), "{e}");
    assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err(), "only the filtered query is printed");
    drop(follower);
    Ok(())
}
