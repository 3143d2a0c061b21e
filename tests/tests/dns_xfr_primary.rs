//! The dns-agent as a zone-transfer primary, against a real Knot DNS (`knotd`) as its secondary: AXFR and IXFR with
//! TSIG, NOTIFY on every change, refused transfers (stranger, no key, wrong key) and serials across restarts.
//! Knows the agent's config format, logs and gRPC API, and knotd's; nothing of the agent's internals.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use agent_core::tls;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::DeleteRecordRequest;
use strata_tests::dnslab::{record, reply_header, udp_exchange, upsert, Dns};
use strata_tests::fixtures::cmd;
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::fixtures::knot::{free_port, Knot};
use strata_tests::harness::Pki;

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// The shared secret of the tests' TSIG key (base64 of 32 bytes).
const SECRET: &str = "c3RyYXRhLXhmci10ZXN0LWtleS0zMi1ieXRlcy1sb25n";
const OTHER_SECRET: &str = "bm90LXRoZS1yaWdodC1rZXktYXQtYWxsLTMyLWJ5dGVz";

/// The fixture runs knotd as a primary of a zone file the test gives, and knotd answers it.
#[test]
fn knot_fixture_serves_a_primary_zone() -> Result<()> {
    let zone = "$ORIGIN x.test.\n$TTL 60\n@ SOA ns hm 7 60 60 600 60\n@ NS ns\nns A 127.0.0.1\n";
    let knot = Knot::start(LOOPBACK, "zone:\n  - domain: x.test\n", &[("x.test.zone", zone)])?;
    ensure!(knot.serial("x.test") == Some(7), "knotd serves serial 7; log:\n{}", knot.log());
    knot.reload()?;
    knot.wait_log("control, received command 'reload'", 0, Duration::from_secs(5))?;
    Ok(())
}

/// Writes the keys file (0600) and returns the `[dns]` keys and the zone config of `lab.home.arpa` (transferable
/// by 127.0.0.1 with the key; NOTIFY to `notify`).
fn primary_config(dir: &Path, notify: Option<SocketAddr>) -> Result<String> {
    let keys = dir.join("tsig.toml");
    agent_core::state::write_atomic(
        &keys,
        format!("[[key]]\nname = \"xfr-key\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{SECRET}\"\n").as_bytes(),
        0o600,
    )?;
    let notify = notify.map(|a| format!("notify = [\"{a}\"]\n")).unwrap_or_default();
    Ok(format!(
        "tsig_keys = \"{}\"\n\n[[zones]]\nname = \"lab.home.arpa\"\nrecords = [\n  {{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }},\n  \
         {{ name = \"www\", type = \"CNAME\", value = \"nas\" }},\n]\ntransfer = {{ allow = [\"127.0.0.1/32\", \"fd00::/64\"], tsig = \"xfr-key\" }}\n{notify}",
        keys.display()
    ))
}

fn kdig(args: &[&str]) -> Result<String> {
    let out = cmd::output_within(Command::new("kdig").args(args), None, Duration::from_secs(15))?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn soa_serial(dns: &Dns) -> Result<u32> {
    let d = dns.dig(&["lab.home.arpa", "SOA"])?;
    let v = d.values("SOA");
    v.first().and_then(|s| s.split_whitespace().nth(2)).and_then(|s| s.parse().ok()).context(d.raw)
}

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    ensure!(strata_tests::fixtures::wait_until(within, &mut f), "{what}: not within {within:?}");
    Ok(t0.elapsed())
}

/// A TSIG-signed plain query (the SOA query a secondary sends before a transfer) gets a signed answer, over UDP and
/// TCP: the real `kdig -y` verifies it (kdig exits 0 even when verification fails: its `WARNING: reply
/// verification` line is the verdict); with a wrong secret it gets NOTAUTH/BADSIG, unsigned.
#[test]
fn signed_soa_queries_get_signed_answers_over_udp_and_tcp() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let mut dns = Dns::start(&pki, &primary_config(dir.path(), None)?)?;
    let port = dns.addr.port().to_string();
    let good = format!("hmac-sha256:xfr-key:{SECRET}");
    let wrong = format!("hmac-sha256:xfr-key:{OTHER_SECRET}");
    for transport in ["+notcp", "+tcp"] {
        let run = |key: &str| {
            let args =
                ["-y", key, "@127.0.0.1", "-p", &port, transport, "+timeout=5", "+retry=0", "lab.home.arpa", "SOA"];
            cmd::output_within(Command::new("kdig").args(args), None, Duration::from_secs(15))
        };
        let ok = run(&good)?;
        let out = format!("{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
        ensure!(
            ok.status.success()
                && out.contains("status: NOERROR")
                && out.contains("lab.home.arpa.")
                && out.contains("\tSOA\t")
                && out.contains("xfr-key.")
                && !out.contains("WARNING"), // "reply verification ... (failed to verify TSIG)" when unsigned
            "{transport}: a signed SOA query gets a signed answer kdig verifies:\n{out}"
        );
        let bad = run(&wrong)?;
        let out = format!("{}{}", String::from_utf8_lossy(&bad.stdout), String::from_utf8_lossy(&bad.stderr));
        ensure!(
            // kdig shows the TSIG error of a NOTAUTH answer as its status, and cannot verify the unsigned error
            out.contains("status: BADSIG")
                && out.contains("BADSIG 0")
                && out.contains("failed to verify TSIG")
                && !out.contains("\tSOA\t"),
            "{transport}: a wrong secret gets NOTAUTH/BADSIG (kdig exit {:?}):\n{out}",
            bad.status.code()
        );
    }
    ensure!(dns.agent.logs().contains("signed query refused: tsig BADSIG (key xfr-key."), "the refusal is logged");
    dns.assert_alive()?;
    Ok(())
}

/// Knot as the agent's secondary: the first transfer is an AXFR signed with the key; a dynamic record added over
/// gRPC is NOTIFYed and reaches knot by IXFR within seconds, its removal too, and a record added by a reload;
/// ListZones shows the NOTIFY peer; the serial stays across an unchanged reload and an agent restart.
#[test]
fn knot_secondary_follows_axfr_ixfr_and_notify_with_tsig() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let knot_addr = SocketAddr::new(LOOPBACK, free_port(LOOPBACK)?);
    let mut dns = Dns::start(&pki, &primary_config(dir.path(), Some(knot_addr))?)?;
    let serial0 = soa_serial(&dns)?;
    let knot_conf = format!(
        "key:\n  - id: xfr-key\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\nremote:\n  - id: agent\n    address: {}@{}\n    \
         key: xfr-key\n\nacl:\n  - id: from-agent\n    address: 127.0.0.1\n    key: xfr-key\n    action: notify\n\nzone:\n  \
         - domain: lab.home.arpa\n    master: agent\n    acl: from-agent\n",
        dns.addr.ip(),
        dns.addr.port()
    );
    let knot = Knot::start_at(knot_addr, &knot_conf, &[])?;
    wait("knot transfers the zone", Duration::from_secs(20), || knot.serial("lab.home.arpa") == Some(serial0))
        .with_context(|| knot.log())?;
    ensure!(knot.log().contains("AXFR, incoming"), "first transfer is an AXFR:\n{}", knot.log());
    let nas = kdig(&["@127.0.0.1", "-p", &knot_addr.port().to_string(), "+short", "nas.lab.home.arpa", "A"])?;
    ensure!(nas.trim() == "10.0.0.10", "knot answers the agent's record: {nas}");

    let rt = tokio::runtime::Runtime::new()?;
    tls::install_crypto_provider();
    let mut admin = rt.block_on(dns.client(&pki, Role::Admin, "admin1"))?;
    let log_mark = knot.log().len();
    rt.block_on(admin.upsert_record(upsert(record("new.lab.home.arpa.", "A", "10.0.0.99"))))?;
    let serial1 = soa_serial(&dns)?;
    ensure!(serial1 > serial0, "the serial moves on: {serial0} -> {serial1}");
    let port = knot_addr.port().to_string();
    let took = wait("knot answers the new name", Duration::from_secs(5), || {
        kdig(&["@127.0.0.1", "-p", &port, "+short", "new.lab.home.arpa", "A"]).is_ok_and(|o| o.trim() == "10.0.0.99")
    })
    .with_context(|| format!("{}\nagent:\n{}", knot.log(), dns.agent.logs()))?;
    eprintln!("the new record reached knot in {took:?}");
    let since = knot.log()[log_mark..].to_string();
    ensure!(since.contains("notify, incoming"), "the agent NOTIFYed knot:\n{since}");
    ensure!(since.contains("IXFR, incoming"), "knot fetched the change by IXFR:\n{since}");
    ensure!(!since.contains("fallback to AXFR"), "no fallback to AXFR:\n{since}");

    rt.block_on(admin.delete_record(DeleteRecordRequest {
        name: "new.lab.home.arpa".into(),
        r#type: "A".into(),
        value: "10.0.0.99".into(),
    }))?;
    let serial2 = soa_serial(&dns)?;
    ensure!(serial2 > serial1, "the serial moves on after a removal: {serial1} -> {serial2}");
    wait("knot forgets the removed name", Duration::from_secs(5), || {
        knot.serial("lab.home.arpa") == Some(serial2)
            && kdig(&["@127.0.0.1", "-p", &port, "new.lab.home.arpa", "A"]).is_ok_and(|o| o.contains("NXDOMAIN"))
    })
    .with_context(|| knot.log())?;

    // ListZones: the NOTIFY peer, nothing pending once knot acknowledged.
    let zones = rt.block_on(async {
        let mut viewer = dns.client(&pki, Role::Viewer, "viewer1").await?;
        anyhow::Ok(viewer.list_zones(strata_proto::v1::ListZonesRequest::default()).await?.into_inner().zones)
    })?;
    let z = zones.iter().find(|z| z.zone == "lab.home.arpa.").context("lab.home.arpa in ListZones")?;
    ensure!(z.serial == serial2 && z.peers == vec![knot_addr.to_string()], "{z:?}");
    wait("notifies acknowledged", Duration::from_secs(5), || {
        rt.block_on(async {
            let mut viewer = dns.client(&pki, Role::Viewer, "viewer1").await.ok()?;
            let zones = viewer.list_zones(strata_proto::v1::ListZonesRequest::default()).await.ok()?.into_inner().zones;
            zones.iter().find(|z| z.zone == "lab.home.arpa.").map(|z| z.notifies_pending == 0)
        })
        .unwrap_or(false)
    })?;

    let metrics = dns.agent.metrics_text()?;
    for want in [
        "strata_dns_transfers_total{zone=\"lab.home.arpa.\",direction=\"out\",kind=\"axfr\",result=\"ok\"}",
        "strata_dns_transfers_total{zone=\"lab.home.arpa.\",direction=\"out\",kind=\"ixfr\",result=\"ok\"}",
        "strata_dns_notify_sent_total{zone=\"lab.home.arpa.\",result=\"ok\"}",
        &format!("strata_dns_zone_serial{{zone=\"lab.home.arpa.\",role=\"primary\"}} {serial2}"),
    ] {
        ensure!(metrics.contains(want), "metrics lack {want}:\n{metrics}");
    }

    // A reload that changes the zone's records: the next serial, NOTIFY, knot follows.
    let text = std::fs::read_to_string(&dns.config)?;
    let text = text.replace(
        "{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" },",
        "{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" },\n  { name = \"printer\", type = \"A\", value = \"10.0.0.77\" },",
    );
    std::fs::write(&dns.config, text)?;
    cmd::run_args("kill", ["-HUP", &dns.agent.pid().to_string()])?;
    wait("the reload bumps the serial", Duration::from_secs(5), || soa_serial(&dns).is_ok_and(|s| s == serial2 + 1))?;
    let serial3 = serial2 + 1;
    wait("knot follows the reload", Duration::from_secs(5), || {
        kdig(&["@127.0.0.1", "-p", &port, "+short", "printer.lab.home.arpa", "A"])
            .is_ok_and(|o| o.trim() == "10.0.0.77")
    })
    .with_context(|| knot.log())?;
    // A reload that changes nothing keeps the serial.
    cmd::run_args("kill", ["-HUP", &dns.agent.pid().to_string()])?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(soa_serial(&dns)? == serial3, "an unchanged reload keeps the serial");

    // Restart on the same state: same content, same serial; never back.
    drop(admin);
    dns.restart()?;
    ensure!(soa_serial(&dns)? == serial3, "the serial survives a restart unchanged");
    Ok(())
}

/// Transfers the agent must refuse, and nothing changes because of them: a source outside `transfer.allow`, no
/// TSIG, a wrong secret, an unknown key, AXFR over UDP. A correct request gets the whole zone, SOA first and last.
#[test]
fn transfers_refused_to_strangers_and_bad_keys() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let mut dns = Dns::start(&pki, &primary_config(dir.path(), None)?)?;
    let serial = soa_serial(&dns)?;
    let port = dns.addr.port().to_string();
    let axfr = |extra: &[&str]| {
        let mut a = vec!["@127.0.0.1", "-p", &port, "+timeout=5", "+retry=0", "lab.home.arpa", "AXFR"];
        a.extend_from_slice(extra);
        kdig(&a)
    };
    let good = format!("hmac-sha256:xfr-key:{SECRET}");
    let ok = axfr(&["-y", &good])?;
    let soas = ok.lines().filter(|l| l.contains("\tSOA\t")).count();
    ensure!(soas == 2 && ok.contains("nas.lab.home.arpa.") && ok.contains("TSIG"), "a signed AXFR:\n{ok}");

    let wrong = format!("hmac-sha256:xfr-key:{OTHER_SECRET}");
    let unknown = format!("hmac-sha256:nobody:{SECRET}");
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("a stranger's address", vec!["-b", "127.0.0.2", "-y", &good], "REFUSED"),
        ("no TSIG", vec![], "NOTAUTH"),
        // kdig names the TSIG error of a NOTAUTH answer
        ("a wrong secret", vec!["-y", &wrong], "BADSIG"),
        ("an unknown key", vec!["-y", &unknown], "BADKEY"),
    ];
    for (what, extra, want) in cases {
        let out = axfr(&extra)?;
        ensure!(out.contains(want) && !out.contains("nas.lab.home.arpa."), "{what}: want {want}:\n{out}");
    }
    let logs = dns.agent.logs();
    for want in [
        "zone transfer refused: the peer is not in the zone's transfer.allow peer=127.0.0.2",
        "no TSIG (the zone asks for key xfr-key.)",
        "tsig BADSIG (key xfr-key.",
        "tsig BADKEY (key nobody.",
    ] {
        ensure!(
            logs.contains(want) || logs.contains(&want.replace(" peer=127.0.0.2", "")),
            "log lacks {want:?}:\n{logs}"
        );
    }
    ensure!(logs.contains("127.0.0.2"), "the refused peer is named:\n{logs}");
    // AXFR and IXFR over UDP stay refused.
    for qtype in [252u16, 251] {
        let reply = udp_exchange(dns.addr, &query_packet(7, "lab.home.arpa", qtype), Duration::from_secs(2))?
            .context("an answer over UDP")?;
        ensure!(reply_header(&reply).1 == 5, "qtype {qtype} over UDP: REFUSED, got {:?}", reply_header(&reply));
    }
    dns.assert_alive()?;
    ensure!(soa_serial(&dns)? == serial, "refused transfers change nothing");
    Ok(())
}

fn read_frame(s: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// The agent's own TCP listener: queries pipelined in one write are answered in order on the same connection; more
/// than 32 connections from one address are not kept open; a message shorter than a header closes the connection.
#[test]
fn tcp_answers_pipelined_queries_in_order_and_caps_connections() -> Result<()> {
    use std::io::Write;
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let dns = Dns::start(&pki, &primary_config(dir.path(), None)?)?;
    let mut s = std::net::TcpStream::connect(dns.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut batch = Vec::new();
    for (id, name) in [(1u16, "nas.lab.home.arpa"), (2, "www.lab.home.arpa"), (3, "missing.lab.home.arpa")] {
        let q = query_packet(id, name, 1);
        batch.extend_from_slice(&(q.len() as u16).to_be_bytes());
        batch.extend_from_slice(&q);
    }
    s.write_all(&batch)?;
    let got: Vec<(u16, u8, u16)> =
        (0..3).map(|_| read_frame(&mut s).map(|r| reply_header(&r))).collect::<Result<_, _>>()?;
    ensure!(got == vec![(1, 0, 1), (2, 0, 2), (3, 3, 0)], "answers in order (id, rcode, answers): {got:?}");
    s.write_all(&[0, 5, 1, 2, 3, 4, 5])?;
    ensure!(read_frame(&mut s).is_err(), "a runt message closes the connection");

    // The runt connection's place is freed just after the agent closes it (its task ends after the stream is
    // dropped): give that a moment, or it still counts against the 32 when the next connections arrive.
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    // Every connection stays open until the count is done: one closed early would free its place for a connection
    // the agent has not accepted yet (under load the accept loop can lag behind the 40 connects).
    let mut held: Vec<std::net::TcpStream> =
        (0..40).filter_map(|_| std::net::TcpStream::connect(dns.addr).ok()).collect();
    let mut open = 0;
    for c in held.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let q = query_packet(9, "nas.lab.home.arpa", 1);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        if c.write_all(&framed).is_ok() && read_frame(c).is_ok() {
            open += 1;
        }
    }
    drop(held);
    ensure!(open == 32, "{open} of 40 connections from one address were served (cap 32)");
    Ok(())
}
