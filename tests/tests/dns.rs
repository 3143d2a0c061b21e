//! The dns-agent end to end on its own: local zones and dynamic records (ownership, validation, restart on the same
//! state dir), reload, an offline start, malformed packets, DoT/DoH, a hickory-resolver client and the
//! services-agents' scopes; the real binary on port 0, queried with `dig` and raw UDP/TCP packets, driven over mTLS
//! gRPC. Knows the agent's config format, logs and gRPC API; nothing of its internals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{
    DeleteRecordRequest, ListRecordsRequest, QueryLogRequest, Record, ReloadRequest, StatsRequest, StatusRequest,
    UpsertRecordRequest,
};
use strata_tests::dnslab::{dig, record, reply_header, udp_exchange, upsert, wait_for, Dns, ZONES};
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::harness::Pki;
use tonic::Code;

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

    // No upstream configured: names outside the zones are refused.
    assert_eq!(dns.dig(&["example.com", "A"])?.status, "REFUSED");
    // ANY: one RRset of the name (RFC 8482), over UDP and TCP.
    for proto in ["+notcp", "+tcp"] {
        let any = dns.dig(&[proto, "nas.lab.home.arpa", "ANY"])?;
        assert_eq!(any.status, "NOERROR", "{}", any.raw);
        let types: std::collections::BTreeSet<&str> = any.answers.iter().map(|a| a.1.as_str()).collect();
        assert_eq!((types.len(), any.answers.is_empty()), (1, false), "one RRset: {}", any.raw);
    }

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
        assert_eq!(stats.queries_by_outcome["refused"], 1, "{stats:?}");
        anyhow::Ok(())
    })?;

    // EDNS version 1: BADVERS, with an OPT saying version 0; dig then retries with that version unless told not to.
    for proto in ["+notcp", "+tcp"] {
        let bad = dns.dig(&[proto, "+edns=1", "+noednsneg", "nas.lab.home.arpa", "A"])?;
        assert_eq!((bad.status.as_str(), bad.answers.len()), ("BADVERS", 0), "{}", bad.raw);
        assert!(bad.raw.contains("EDNS: version: 0"), "{}", bad.raw);
        let negotiated = dns.dig(&[proto, "+edns=1", "+ednsneg", "nas.lab.home.arpa", "A"])?;
        assert_eq!(negotiated.values("A"), vec!["10.0.0.10"], "{}", negotiated.raw);
    }
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
    let mut cut_response = good[..good.len() - 3].to_vec();
    cut_response[2] |= 0x80;
    assert!(udp_exchange(dns.addr, &cut_response, short)?.is_none(), "nor unparsable ones (no FORMERR)");
    // NOTIFY for a zone that is not one of its [[secondaries]], with RD and CD set: NOTAUTH, and the reply carries
    // neither, nor RA.
    let mut notify = query_packet(13, "lab.home.arpa", 6);
    notify[2] = (4 << 3) | 0x01;
    notify[3] |= 0x10;
    let r = udp_exchange(dns.addr, &notify, short)?.context("no reply to NOTIFY")?;
    assert_eq!((reply_header(&r).1, r[2] & 0x01, r[3] & 0x90), (9, 0, 0), "{r:?}");
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
