//! The dns-agent as a secondary: of a real Knot DNS primary (AXFR, then IXFR after a change to knot's zone and
//! `knotc zone-reload`, NOTIFY from knot honoured, TSIG-signed), and of a fake primary written here that sends bad
//! input (a truncated stream, a malformed message, a serial going backwards, a zone of only its SOA, a record
//! outside the zone, unsigned answers to a signed request) — the served copy never changes and every refusal is
//! logged with the primary — plus NOTIFYs from a stranger, for an unknown zone and without the zone's TSIG, and
//! the copy's expiry (SERVFAIL). Knows the agent's config, logs, DNS answers and gRPC API; nothing of its internals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{Context, Result};
use strata_proto::v1::ListZonesRequest;
use strata_tests::binrun::run;
use strata_tests::dnslab::{reply_header, wait_for, Dns};
use strata_tests::fixtures::knot::Knot;
use strata_tests::harness::{write_inventory, Pki};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="; // 32 bytes, base64

/// `[dns] tsig_keys` file for the agent (private, as the agent requires).
fn keys_file(dir: &std::path::Path, secret: &str) -> Result<std::path::PathBuf> {
    let p = dir.join("tsig.toml");
    std::fs::write(&p, format!("[[key]]\nname = \"xfr-key\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{secret}\"\n"))?;
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(p)
}

fn zone_file(serial: u32, extra: &str) -> String {
    format!(
        "$ORIGIN sec.test.\n$TTL 300\n@ SOA ns.sec.test. hostmaster.sec.test. {serial} 3600 600 86400 60\n@ NS ns\n\
         ns A 10.0.1.1\nwww A 10.0.1.2\nmail A 10.0.1.3\n@ MX 10 mail\nt TXT \"hello\"\n{extra}"
    )
}

/// The serial of `zone`'s SOA as the agent answers it.
fn served_serial(dns: &Dns, zone: &str) -> Option<u32> {
    let d = dns.dig(&[zone, "SOA"]).ok()?;
    d.values("SOA").first()?.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until one line of the agent's log holds every needle.
fn wait_line(dns: &Dns, needles: &[&str], within: Duration) -> Result<()> {
    wait_for(&format!("a log line with {needles:?}"), within, || {
        Ok(dns.agent.logs().lines().any(|l| needles.iter().all(|n| l.contains(n))))
    })
    .with_context(|| format!("log:\n{}", dns.agent.logs()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_of_knot_transfers_axfr_then_ixfr_on_notify() -> Result<()> {
    let pki = Pki::new()?;
    let body = format!(
        "key:\n  - id: xfr-key\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\n\
         remote:\n  - id: agent\n    address: 127.0.0.1@1\n    key: xfr-key\n\n\
         acl:\n  - id: agent-xfr\n    address: 127.0.0.1\n    key: xfr-key\n    action: transfer\n\n\
         zone:\n  - domain: sec.test\n    zonefile-load: difference\n    notify: agent\n    acl: agent-xfr\n"
    );
    let zone = zone_file(1, "");
    let knot = Knot::start("127.0.0.1".parse()?, &body, &[("sec.test.zone", &zone)])?;
    let keys_dir = tempfile::tempdir()?;
    let keys = keys_file(keys_dir.path(), SECRET)?;
    let dns = Dns::start(
        &pki,
        &format!(
            "tsig_keys = \"{}\"\n\n[[secondaries]]\nzone = \"sec.test\"\nprimaries = [\"{}\"]\ntsig = \"xfr-key\"\n",
            keys.display(),
            knot.addr()
        ),
    )?;

    // The first transfer (AXFR) at start.
    wait_for("the AXFR", Duration::from_secs(10), || Ok(served_serial(&dns, "sec.test") == Some(1)))
        .with_context(|| dns.agent.logs())?;
    let www = dns.dig(&["www.sec.test", "A"])?;
    assert_eq!((www.status.as_str(), www.aa()), ("NOERROR", true), "{}", www.raw);
    assert_eq!(www.values("A"), ["10.0.1.2"]);
    assert_eq!(dns.dig(&["sec.test", "MX"])?.values("MX"), ["10 mail.sec.test."]);
    assert_eq!(dns.dig(&["sec.test", "NS"])?.values("NS"), ["ns.sec.test."], "the primary's NS, not a synthesized one");
    assert_eq!(dns.dig(&["nope.sec.test", "A"])?.status, "NXDOMAIN");
    wait_line(&dns, &["secondary zone transferred", "kind=\"AXFR\"", "serial=1"], Duration::from_secs(2))?;

    // Point knot's NOTIFY at the agent now that its port is known.
    let conf = knot.dir().join("knot.conf");
    let text = std::fs::read_to_string(&conf)?.replace("127.0.0.1@1", &format!("127.0.0.1@{}", dns.addr.port()));
    std::fs::write(&conf, text)?;
    knot.reload()?;

    // A change on knot: the zone file edited, `knotc zone-reload`; knot NOTIFYs, the agent takes an IXFR.
    std::fs::write(knot.storage().join("sec.test.zone"), zone_file(2, "new A 10.0.1.9\n"))?;
    let changed = Instant::now();
    knot.knotc(&["zone-reload", "sec.test"])?;
    wait_for("the IXFR after knot's NOTIFY", Duration::from_secs(10), || {
        Ok(dns.dig(&["new.sec.test", "A"])?.values("A") == ["10.0.1.9"])
    })
    .with_context(|| format!("agent log:\n{}\nknot log:\n{}", dns.agent.logs(), knot.log()))?;
    assert!(changed.elapsed() < Duration::from_secs(5), "NOTIFY, not the 3600 s refresh: {:?}", changed.elapsed());
    wait_line(&dns, &["notify from a primary", "zone=sec.test."], Duration::from_secs(2))?;
    wait_line(&dns, &["secondary zone transferred", "kind=\"IXFR\"", "serial=2"], Duration::from_secs(2))?;
    assert_eq!(served_serial(&dns, "sec.test"), Some(2));
    assert_eq!(dns.dig(&["www.sec.test", "A"])?.values("A"), ["10.0.1.2"], "the rest of the zone stays");

    // Status: ListZones and the metrics.
    let mut client = dns.client(&pki, Role::Admin, "admin").await?;
    let zones = client.list_zones(ListZonesRequest {}).await?.into_inner().zones;
    let z = zones.iter().find(|z| z.zone == "sec.test.").context("sec.test. in ListZones")?;
    assert_eq!((z.role.as_str(), z.serial, z.serving), ("secondary", 2, true), "{z:?}");
    assert_eq!(z.last_transfer_kind, "IXFR", "{z:?}");
    assert_eq!(z.peers, [knot.addr().to_string()], "{z:?}");
    assert!(z.last_error.is_empty() && z.lag_seconds >= 0 && z.lag_seconds < 30, "{z:?}");
    assert!(z.expires_unix > z.last_transfer_unix + 86_000, "{z:?}");
    assert!(z.records >= 7, "{z:?}");
    let metrics = dns.agent.metrics_text()?;
    for want in [
        "strata_dns_transfers_total{zone=\"sec.test.\",direction=\"in\",kind=\"axfr\",result=\"ok\"} 1",
        "strata_dns_transfers_total{zone=\"sec.test.\",direction=\"in\",kind=\"ixfr\",result=\"ok\"} 1",
        "strata_dns_notify_received_total{zone=\"sec.test.\",result=\"accepted\"}",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }

    // `labctl dns zones`: the table and the JSON rows.
    let (cert, key) = pki.issue(Role::Admin, "alice")?;
    let inv = keys_dir.path().join("labctl.toml");
    write_inventory(&inv, &pki.ca(), &cert, &key, &[&dns.agent])?;
    let inv = inv.display().to_string();
    let table = run("labctl", ["--config", inv.as_str(), "dns", "zones"])?;
    assert_eq!(table.code, Some(0), "{table}");
    let line = table.stdout.lines().find(|l| l.contains("sec.test.")).unwrap_or_default().to_string();
    for want in ["dns", "secondary", " 2 ", "IXFR", "serving"] {
        assert!(
            line.contains(want),
            "{want:?} in {line:?}
{table}"
        );
    }
    assert!(table.stdout.starts_with("AGENT") && table.stdout.contains("LAST TRANSFER"), "{table}");
    let json = run("labctl", ["--config", inv.as_str(), "--json", "dns", "zones"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).with_context(|| json.to_string())?;
    let row = rows.iter().find(|r| r["zone"] == "sec.test.").context("sec.test. row")?;
    assert_eq!(
        (row["role"].as_str(), row["serial"].as_u64(), row["serving"].as_bool()),
        (Some("secondary"), Some(2), Some(true)),
        "{row}"
    );
    assert_eq!(row["last_transfer_kind"], "IXFR", "{row}");
    assert_eq!(row["agent"], "dns", "{row}");

    wait_for("the serial and lag gauges", Duration::from_secs(8), || {
        let text = dns.agent.metrics_text()?;
        Ok(text.contains("strata_dns_zone_serial{zone=\"sec.test.\",role=\"secondary\"} 2")
            && text.contains("strata_dns_secondary_seconds_behind{zone=\"sec.test.\"}"))
    })?;

    // Knot gone, the agent restarted: the persisted copy is served at once (the failed refresh is reported).
    drop(knot);
    let mut dns = dns;
    dns.restart()?;
    assert_eq!(dns.dig(&["new.sec.test", "A"])?.values("A"), ["10.0.1.9"], "{}", dns.agent.logs());
    assert_eq!(served_serial(&dns, "sec.test"), Some(2));
    wait_line(&dns, &["zone=sec.test.", "persisted copy loaded", "serving=true"], Duration::from_secs(2))?;
    wait_line(&dns, &["zone=sec.test.", "secondary zone refresh failed", "cannot connect"], Duration::from_secs(10))?;
    let mut client = dns.client(&pki, Role::Admin, "admin").await?;
    let zones = client.list_zones(ListZonesRequest {}).await?.into_inner().zones;
    let z = zones.iter().find(|z| z.zone == "sec.test.").context("sec.test. in ListZones")?;
    assert!(z.serving && z.serial == 2 && z.last_error.contains("cannot connect"), "{z:?}");
    Ok(())
}

// ---- A fake primary that sends what it is told ----

/// What the fake primary answers.
#[derive(Debug, Clone)]
enum Mode {
    /// SOA `serial` (expire `expire` seconds) and the zone: the SOA, `a` and `b` A records (and more), the SOA.
    Serve { serial: u32, expire: u32, extra: Vec<(&'static str, u8)> },
    /// A transfer cut after its first record.
    Truncated { serial: u32 },
    /// A transfer message that is not DNS.
    Malformed { serial: u32 },
    /// A transfer of the SOA alone.
    OnlySoa { serial: u32 },
    /// A transfer holding a record of another zone.
    OutOfZone { serial: u32 },
    /// A transfer never answered (the connection stays open, silent).
    Stall { serial: u32 },
    /// Connections closed at once.
    Down,
}

fn name_wire(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn rr(out: &mut Vec<u8>, name: &str, rtype: u16, rdata: &[u8]) {
    name_wire(out, name);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&300u32.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The SOA of `zone`: refresh 3600 s, retry 1 s, expire `expire` s, minimum 60 s.
fn soa_rr(out: &mut Vec<u8>, zone: &str, serial: u32, expire: u32) {
    let mut rdata = Vec::new();
    name_wire(&mut rdata, &format!("ns.{zone}"));
    name_wire(&mut rdata, &format!("hostmaster.{zone}"));
    for v in [serial, 3600, 1, expire, 60] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    rr(out, zone, 6, &rdata);
}

fn a_rr(out: &mut Vec<u8>, name: &str, last: u8) {
    rr(out, name, 1, &[10, 0, 0, last]);
}

/// A response to `query` with `answers` records already encoded.
fn response(query: &[u8], qend: usize, count: u16, answers: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&query[..2]);
    m.extend_from_slice(&[0x84, 0x00, 0, 1]);
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&query[12..qend]);
    m.extend_from_slice(answers);
    m
}

fn send(stream: &mut std::net::TcpStream, msg: &[u8]) {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    let _ = stream.write_all(&framed);
}

/// Serves one connection: one query, the answer `mode` says.
fn serve_one(mut stream: std::net::TcpStream, mode: &Mode) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if matches!(mode, Mode::Down) {
        return;
    }
    let mut len = [0u8; 2];
    if stream.read_exact(&mut len).is_err() {
        return;
    }
    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
    if stream.read_exact(&mut q).is_err() || q.len() < 17 {
        return;
    }
    // The question: name labels from byte 12, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    while i < q.len() && q[i] != 0 {
        let l = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + l]).to_string());
        i += 1 + l;
    }
    let zone = format!("{}.", labels.join("."));
    let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
    let qend = i + 5;
    let expire = match mode {
        Mode::Serve { expire, .. } => *expire,
        _ => 600,
    };
    let serial = match mode {
        Mode::Serve { serial, .. }
        | Mode::Truncated { serial }
        | Mode::Malformed { serial }
        | Mode::OnlySoa { serial }
        | Mode::OutOfZone { serial }
        | Mode::Stall { serial } => *serial,
        Mode::Down => return,
    };
    let mut body = Vec::new();
    if qtype == 6 {
        soa_rr(&mut body, &zone, serial, expire);
        send(&mut stream, &response(&q, qend, 1, &body));
        return;
    }
    let count = match mode {
        Mode::Serve { extra, .. } => {
            soa_rr(&mut body, &zone, serial, expire);
            a_rr(&mut body, &format!("a.{zone}"), 1);
            a_rr(&mut body, &format!("b.{zone}"), 2);
            for (n, last) in extra {
                a_rr(&mut body, &format!("{n}.{zone}"), *last);
            }
            soa_rr(&mut body, &zone, serial, expire);
            4 + extra.len() as u16
        }
        Mode::Truncated { .. } => {
            soa_rr(&mut body, &zone, serial, expire);
            a_rr(&mut body, &format!("a.{zone}"), 66);
            2
        }
        Mode::Malformed { .. } => {
            send(&mut stream, &[q[0], q[1], 0x84, 0, 0, 1, 0, 9, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
            return;
        }
        Mode::OnlySoa { .. } => {
            soa_rr(&mut body, &zone, serial, expire);
            soa_rr(&mut body, &zone, serial, expire);
            2
        }
        Mode::OutOfZone { .. } => {
            soa_rr(&mut body, &zone, serial, expire);
            a_rr(&mut body, "a.elsewhere.test.", 66);
            soa_rr(&mut body, &zone, serial, expire);
            3
        }
        Mode::Stall { .. } => {
            std::thread::sleep(Duration::from_secs(15));
            return;
        }
        Mode::Down => return,
    };
    send(&mut stream, &response(&q, qend, count, &body));
}

/// Starts the fake primary on 127.0.0.1; its mode can be changed at any time.
fn fake_primary() -> Result<(SocketAddr, Arc<Mutex<Mode>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mode = Arc::new(Mutex::new(Mode::Serve { serial: 10, expire: 600, extra: Vec::new() }));
    let m = mode.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mode = m.lock().unwrap().clone();
            std::thread::spawn(move || serve_one(stream, &mode));
        }
    });
    Ok((addr, mode))
}

/// A NOTIFY for `zone` sent from `from` (an address of 127/8); the reply's RCODE and whether AA is set.
fn notify(dns: &Dns, from: &str, zone: &str) -> Result<(u8, bool)> {
    let s = UdpSocket::bind(format!("{from}:0"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut p = vec![0x4e, 0x21, 0x20, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    name_wire(&mut p, zone);
    p.extend_from_slice(&[0, 6, 0, 1]);
    s.send_to(&p, dns.addr)?;
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf).context("no answer to the notify")?;
    let (id, rcode, _) = reply_header(&buf[..n]);
    assert_eq!(id, 0x4e21);
    Ok((rcode, buf[2] & 0x04 != 0))
}

const NOERROR: u8 = 0;
const REFUSED: u8 = 5;
const NOTAUTH: u8 = 9;

#[test]
fn bad_input_from_a_primary_never_changes_the_served_copy() -> Result<()> {
    let pki = Pki::new()?;
    let (primary, mode) = fake_primary()?;
    let keys_dir = tempfile::tempdir()?;
    let keys = keys_file(keys_dir.path(), SECRET)?;
    let dns = Dns::start(
        &pki,
        &format!(
            "tsig_keys = \"{}\"\n\n[[secondaries]]\nzone = \"bad.test\"\nprimaries = [\"{primary}\"]\n\n\
             [[secondaries]]\nzone = \"signed.test\"\nprimaries = [\"{primary}\"]\ntsig = \"xfr-key\"\n",
            keys.display()
        ),
    )?;
    let peer = primary.to_string();
    wait_for("the first copy", Duration::from_secs(10), || Ok(served_serial(&dns, "bad.test") == Some(10)))
        .with_context(|| dns.agent.logs())?;
    let a = |dns: &Dns| -> Result<Vec<String>> { Ok(dns.dig(&["a.bad.test", "A"])?.values("A")) };
    assert_eq!(a(&dns)?, ["10.0.0.1"]);

    // Each bad transfer: the primary is told what to send, a NOTIFY from its address starts a refresh at once.
    let cases: Vec<(Mode, &str)> = vec![
        (Mode::Truncated { serial: 11 }, "truncated: the stream ended before the closing SOA"),
        (Mode::Malformed { serial: 12 }, "malformed message"),
        (
            Mode::Serve { serial: 9, expire: 600, extra: vec![("c", 3)] },
            "serial went backwards: the copy has 10, the primary sent 9",
        ),
        (Mode::OnlySoa { serial: 13 }, "the zone holds only its SOA"),
        (Mode::OutOfZone { serial: 14 }, "record a.elsewhere.test. A is outside zone bad.test."),
        // A primary that stops sending is dropped after the idle timeout (10 s; IXFR, then AXFR).
        (Mode::Stall { serial: 14 }, "timed out waiting for the primary (stalled)"),
    ];
    for (m, want) in cases {
        *mode.lock().unwrap() = m.clone();
        assert_eq!(notify(&dns, "127.0.0.1", "bad.test")?, (NOERROR, true), "{m:?}");
        wait_line(&dns, &["zone=bad.test.", &format!("primary={peer}"), want], Duration::from_secs(30))?;
        assert_eq!(served_serial(&dns, "bad.test"), Some(10), "{m:?}: the copy is unchanged");
        assert_eq!(a(&dns)?, ["10.0.0.1"], "{m:?}");
        assert_eq!(dns.dig(&["c.bad.test", "A"])?.status, "NXDOMAIN", "{m:?}");
    }

    // NOTIFYs refused: a stranger's (REFUSED), for a zone the agent does not copy (NOTAUTH), and an unsigned one
    // for a zone with a TSIG key (NOTAUTH); each logged with the peer.
    assert_eq!(notify(&dns, "127.0.0.2", "bad.test")?, (REFUSED, false));
    wait_line(&dns, &["notify refused", "peer=127.0.0.2:", "zone=bad.test."], Duration::from_secs(2))?;
    assert_eq!(notify(&dns, "127.0.0.1", "other.test")?, (NOTAUTH, false));
    wait_line(&dns, &["notify refused", "not a secondary zone", "zone=other.test."], Duration::from_secs(2))?;
    assert_eq!(notify(&dns, "127.0.0.1", "signed.test")?, (NOTAUTH, false));
    wait_line(&dns, &["notify refused: bad or missing tsig", "peer=127.0.0.1:"], Duration::from_secs(2))?;

    // TSIG: the primary answers the signed zone's requests unsigned: refused, no copy, SERVFAIL.
    wait_line(
        &dns,
        &["zone=signed.test.", &format!("primary={peer}"), "the first response is not signed"],
        Duration::from_secs(5),
    )?;
    assert_eq!(dns.dig(&["a.signed.test", "A"])?.status, "SERVFAIL", "no copy: SERVFAIL, never forwarded");

    // A good transfer goes through after all that (once the stalled AXFR timed out too).
    *mode.lock().unwrap() = Mode::Serve { serial: 15, expire: 4, extra: vec![("c", 3)] };
    assert_eq!(notify(&dns, "127.0.0.1", "bad.test")?, (NOERROR, true));
    wait_for("serial 15", Duration::from_secs(25), || Ok(served_serial(&dns, "bad.test") == Some(15)))?;
    assert_eq!(dns.dig(&["c.bad.test", "A"])?.values("A"), ["10.0.0.3"]);
    let metrics = dns.agent.metrics_text()?;
    for want in [
        "strata_dns_transfers_total{zone=\"bad.test.\",direction=\"in\",kind=\"ixfr\",result=\"refused\"}",
        "strata_dns_notify_received_total{zone=\"bad.test.\",result=\"refused\"} 1",
        "strata_dns_notify_received_total{zone=\"signed.test.\",result=\"bad_tsig\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }

    // The primary goes away: the copy (its SOA's expire is 4 s) is served until expire passes, then SERVFAIL.
    let transferred = Instant::now();
    *mode.lock().unwrap() = Mode::Down;
    assert_eq!(notify(&dns, "127.0.0.1", "bad.test")?, (NOERROR, true));
    wait_line(&dns, &["zone=bad.test.", "secondary zone refresh failed"], Duration::from_secs(5))?;
    assert_eq!(a(&dns)?, ["10.0.0.1"], "served while not expired");
    wait_for("the expiry", Duration::from_secs(10), || Ok(dns.dig(&["a.bad.test", "A"])?.status == "SERVFAIL"))?;
    assert!(transferred.elapsed() >= Duration::from_secs(3), "not before expire: {:?}", transferred.elapsed());
    wait_line(&dns, &["zone=bad.test.", "expired without a successful refresh"], Duration::from_secs(2))?;
    Ok(())
}
