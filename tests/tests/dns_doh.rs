//! DNS over HTTPS and DoT as real clients use them: curl resolving a name through `--doh-url`, `kdig +https` (POST)
//! and `+https-get`, curl against `/dns-query` over HTTP/1.1 and HTTP/2 (GET and POST), the HTTP statuses for what is
//! not a DNS query, responses padded to 468-octet blocks when kdig pads its query (`+padding`), and a 255-octet name
//! answered over UDP within 512 bytes as unbound answers it (names compressed against the question).
//! Knows the agent's config format, log lines and the DNS wire format; nothing of its internals.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_tests::dnslab::{reply_header, udp_exchange, wait_for, Dns, ZONES};
use strata_tests::fixtures::cmd::{output_within, require};
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::fixtures::http::Receiver;
use strata_tests::fixtures::unbound::Unbound;
use strata_tests::harness::Pki;

/// A zone whose `web` name points at the test's own HTTP receiver (curl resolves it through DoH).
const WEB_ZONE: &str =
    "\n[[zones]]\nname = \"doh.test\"\nrecords = [{ name = \"web\", type = \"A\", value = \"127.0.0.1\" }]\n";
/// How long any client command may take.
const LIMIT: Duration = Duration::from_secs(20);

/// An agent serving DoT and DoH with a certificate from the test's CA (valid for 127.0.0.1).
struct Encrypted {
    dns: Dns,
    dot: SocketAddr,
    doh: SocketAddr,
}

fn start(pki: &Pki, zones: &str) -> Result<Encrypted> {
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let extra = format!(
        "tls_listen = [\"127.0.0.1:0\"]\nhttps_listen = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\n{zones}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let dns = Dns::start(pki, &extra)?;
    let addr_of = |what: &str| -> Result<SocketAddr> {
        let line = format!("dns {what} listening on ");
        wait_for(&format!("the `{line}` line"), Duration::from_secs(5), || Ok(dns.agent.logs().contains(&line)))?;
        let logs = dns.agent.logs();
        let rest = logs.split(line.as_str()).nth(1).with_context(|| format!("no `{line}` line:\n{logs}"))?;
        Ok(rest.split_whitespace().next().unwrap_or("").parse()?)
    };
    let (dot, doh) = (addr_of("tls")?, addr_of("https")?);
    Ok(Encrypted { dns, dot, doh })
}

/// Runs a client to its end within [`LIMIT`]; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = output_within(cmd, None, LIMIT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// `kdig @ADDR -p PORT ARGS…` with the test's CA.
fn kdig(addr: SocketAddr, ca: &Path, args: &[&str]) -> Result<String> {
    require("kdig", "knot-dnsutils")?;
    run(Command::new("kdig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), &format!("+tls-ca={}", ca.display()), "+timeout=5", "+retry=0"])
        .args(args))
}

/// The size kdig reports for the reply (`;; Received N B`).
fn received_bytes(kdig_out: &str) -> Result<usize> {
    let n = kdig_out.split(";; Received ").nth(1).and_then(|s| s.split_whitespace().next());
    n.and_then(|n| n.parse().ok()).with_context(|| format!("no `;; Received N B` line:\n{kdig_out}"))
}

/// base64url without padding (RFC 4648 section 5), as a DoH GET carries a message.
fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// What curl saw of one request: status, HTTP version, headers (lowercase) and body.
struct Curl {
    status: u16,
    version: String,
    headers: String,
    body: Vec<u8>,
}

/// `curl` against the DoH endpoint with `args`; `path` is the request target.
fn curl(doh: SocketAddr, ca: &Path, path: &str, args: &[&str]) -> Result<Curl> {
    require("curl", "curl")?;
    let dir = tempfile::tempdir()?;
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(format!("https://{doh}{path}")))?;
    let mut w = out.split_whitespace();
    let status = w.next().and_then(|s| s.parse().ok()).with_context(|| format!("curl printed {out:?}"))?;
    let version = w.next().unwrap_or("").to_string();
    Ok(Curl {
        status,
        version,
        headers: std::fs::read_to_string(&headers).unwrap_or_default().to_lowercase(),
        body: std::fs::read(&body).unwrap_or_default(),
    })
}

#[test]
fn doh_answers_curl_and_kdig_over_http1_and_http2() -> Result<()> {
    let pki = Pki::new()?;
    let e = start(&pki, &format!("{ZONES}{WEB_ZONE}"))?;
    let ca = pki.ca();

    // curl resolves the host of an ordinary URL through the agent's DoH (its own Accept is */*) and fetches it.
    let web = Receiver::start()?;
    let port = web.base.rsplit(':').next().unwrap_or("");
    require("curl", "curl")?;
    run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["--doh-url", &format!("https://{}/dns-query", e.doh)])
        .arg(format!("http://web.doh.test:{port}/through-doh")))?;
    let paths: Vec<String> = web.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/through-doh"], "curl reached the receiver by the name the agent resolved");

    // kdig: POST (+https) and GET (+https-get).
    for (method, session) in [("+https", "(HTTP/2-POST)"), ("+https-get", "(HTTP/2-GET)")] {
        let out = kdig(e.doh, &ca, &[method, "nas.lab.home.arpa", "A"])?;
        assert!(out.contains("status: NOERROR") && out.contains("10.0.0.10"), "{method}: {out}");
        assert!(out.contains(&format!("HTTP session {session}")), "{method}: {out}");
        let nx = kdig(e.doh, &ca, &[method, "nope.lab.home.arpa", "A"])?;
        assert!(nx.contains("status: NXDOMAIN"), "{method}: {nx}");
    }

    // curl straight at /dns-query, HTTP/1.1 and HTTP/2, GET and POST, with Accept absent, */* or the media type.
    let query = query_packet(0, "nas.lab.home.arpa", 1);
    let dir = tempfile::tempdir()?;
    let q_file = dir.path().join("q.bin");
    std::fs::write(&q_file, &query)?;
    let data = format!("@{}", q_file.display());
    let get = format!("/dns-query?dns={}", base64url(&query));
    let dns_type = "content-type: application/dns-message";
    for (version, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let cases: [(&str, Vec<&str>); 4] = [
            (&get, vec![version]),
            (&get, vec![version, "-H", "accept: */*"]),
            ("/dns-query", vec![version, "-H", dns_type, "--data-binary", &data]),
            (
                "/dns-query",
                vec![version, "-H", dns_type, "-H", "accept: application/dns-message", "--data-binary", &data],
            ),
        ];
        for (path, args) in cases {
            let c = curl(e.doh, &ca, path, &args)?;
            assert_eq!((c.status, c.version.as_str()), (200, want), "{args:?}: {}", c.headers);
            assert!(c.headers.contains("content-type: application/dns-message"), "{}", c.headers);
            assert!(c.headers.contains("cache-control: max-age=120"), "the record's TTL: {}", c.headers);
            assert_eq!(reply_header(&c.body), (0, 0, 1), "{args:?}");
        }
    }

    // What is not a DNS query gets an HTTP status, over both versions.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 70_000])?;
    let big = format!("@{}", big.display());
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a dns message")?;
    let junk = format!("@{}", junk.display());
    for version in ["--http1.1", "--http2"] {
        let cases: [(&str, Vec<&str>, u16); 9] = [
            ("/dns-query", vec![], 400),
            ("/dns-query?dns=%%%", vec![], 400),
            ("/dns-query", vec!["-H", dns_type, "--data-binary", &junk], 400),
            ("/other", vec![], 404),
            (&get, vec!["-X", "PUT"], 405),
            (&get, vec!["-X", "DELETE"], 405),
            ("/dns-query", vec!["-H", "content-type: application/json", "--data-binary", &data], 415),
            ("/dns-query", vec!["-H", dns_type, "--data-binary", &big], 413),
            (&get, vec!["-H", "accept: text/html"], 406),
        ];
        for (path, mut args, want) in cases {
            args.insert(0, version);
            let c = curl(e.doh, &ca, path, &args)?;
            assert_eq!(c.status, want, "{path} {args:?}: {}", c.headers);
            if want == 405 {
                assert!(c.headers.contains("allow: get, post"), "{}", c.headers);
            }
        }
    }
    // Still answering after all that.
    assert_eq!(curl(e.doh, &ca, &get, &["--http2"])?.status, 200);
    e.dns.dig(&["nas.lab.home.arpa", "A"])?;
    Ok(())
}

#[test]
fn encrypted_answers_are_padded_to_468_byte_blocks_when_the_query_is() -> Result<()> {
    let pki = Pki::new()?;
    let e = start(&pki, ZONES)?;
    let ca = pki.ca();
    for (transport, addr) in [("+tls", e.dot), ("+https", e.doh)] {
        let padded = kdig(addr, &ca, &[transport, "+padding", "nas.lab.home.arpa", "A"])?;
        assert!(padded.contains("10.0.0.10"), "{transport}: {padded}");
        let n = received_bytes(&padded)?;
        assert!(n > 0 && n % 468 == 0, "{transport} +padding: {n} bytes\n{padded}");
        assert!(padded.contains("PADDING"), "{transport}: {padded}");
        let plain = kdig(addr, &ca, &[transport, "+nopadding", "nas.lab.home.arpa", "A"])?;
        let n = received_bytes(&plain)?;
        assert!(n % 468 != 0 && n < 468, "{transport} without +padding: {n} bytes\n{plain}");
    }
    // Never over plain UDP or TCP, even when asked.
    let udp = kdig(e.dns.addr, &ca, &["+notls", "+padding", "nas.lab.home.arpa", "A"])?;
    assert!(received_bytes(&udp)? < 468, "{udp}");
    Ok(())
}

/// A real unbound serving `name` as local data.
fn unbound_serving(name: &str) -> Result<Unbound> {
    let server = format!("  local-zone: \"lab.home.arpa.\" static\n  local-data: \"{name} 300 IN A 10.0.0.99\"\n");
    Unbound::start(&server, "", name)
}

#[test]
fn a_255_octet_name_is_answered_in_512_bytes_over_udp_as_unbound_does() -> Result<()> {
    // 47 + 3 × 63 octets of labels under lab.home.arpa: 255 octets on the wire.
    let labels = format!("{}.{}.{}.{}", "d".repeat(47), "c".repeat(63), "b".repeat(63), "a".repeat(63));
    let name = format!("{labels}.lab.home.arpa");
    let record = format!("  {{ name = \"{labels}\", type = \"A\", value = \"10.0.0.99\" }},\n]");
    let zones = ZONES.replacen("\n]", &format!("\n{record}"), 1);
    let pki = Pki::new()?;
    let dns = Dns::start(&pki, &zones)?;
    let unbound = unbound_serving(&name)?;
    let query = query_packet(7, &name, 1);
    assert_eq!(query.len(), 12 + 255 + 4, "a 255-octet name");
    let ours = udp_exchange(dns.addr, &query, Duration::from_secs(2))?.context("no answer from the agent")?;
    let theirs = udp_exchange(unbound.addr, &query, Duration::from_secs(2))?.context("no answer from unbound")?;
    let tc = |r: &[u8]| r[2] & 0x02 != 0;
    assert_eq!((reply_header(&ours), tc(&ours)), ((7, 0, 1), false), "{ours:?}");
    assert_eq!((reply_header(&theirs), tc(&theirs)), ((7, 0, 1), false));
    assert_eq!(ours.len(), theirs.len(), "the agent's answer is as small as unbound's");
    assert_eq!(ours.len(), 287, "12 header + 259 question + 16 answer (its name a pointer)");
    // dig reads the address out of it; over TCP the answer is compressed the same way.
    let d = dns.dig(&[&name, "A"])?;
    assert_eq!(d.values("A"), vec!["10.0.0.99"], "{}", d.raw);
    let tcp = dns.dig(&[&name, "A", "+tcp", "+noedns"])?;
    assert_eq!(tcp.values("A"), vec!["10.0.0.99"], "{}", tcp.raw);
    assert!(tcp.raw.contains("MSG SIZE  rcvd: 287"), "{}", tcp.raw);
    Ok(())
}

#[test]
fn the_ns_target_has_an_address_the_agents_own_or_the_configured_one() -> Result<()> {
    let pki = Pki::new()?;
    let zones =
        format!("{ZONES}\n[[zones]]\nname = \"b.test\"\nns = {{ name = \"dns1\", addresses = [\"10.0.0.53\"] }}\n");
    let dns = Dns::start(&pki, &zones)?;
    // The default target, ns.ZONE, has the address the agent listens on (127.0.0.1 here).
    let ns = dns.dig(&["lab.home.arpa", "NS"])?;
    assert_eq!(ns.values("NS"), vec!["ns.lab.home.arpa."], "{}", ns.raw);
    let a = dns.dig(&["ns.lab.home.arpa", "A"])?;
    assert_eq!(
        (a.status.as_str(), a.aa(), a.values("A")),
        ("NOERROR", true, vec!["127.0.0.1".to_string()]),
        "{}",
        a.raw
    );
    // A configured one: its name in NS and SOA, its address.
    let b = dns.dig(&["b.test", "NS"])?;
    assert_eq!(b.values("NS"), vec!["dns1.b.test."], "{}", b.raw);
    assert!(dns.dig(&["b.test", "SOA"])?.values("SOA")[0].starts_with("dns1.b.test. "));
    assert_eq!(dns.dig(&["dns1.b.test", "A"])?.values("A"), vec!["10.0.0.53"]);
    assert_eq!(dns.dig(&["dns1.b.test", "AAAA"])?.status, "NOERROR", "NODATA, not NXDOMAIN");
    Ok(())
}
