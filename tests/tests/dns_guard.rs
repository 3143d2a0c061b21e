//! The dns-agent is not an open resolver: with the default `allow_clients`, a client from an address outside the
//! private ranges (a network namespace on a veth pair addressed from 198.18.0.0/15, the benchmarking range) gets
//! REFUSED over UDP and TCP, and never an answer another client's question put in the UDP answer cache, while
//! loopback keeps getting answers (never a cached REFUSED); response rate limiting drops and slips (TC=1) a burst
//! from one prefix, counts both in the metrics, and leaves another prefix alone, whose limited client still gets
//! its answer over TCP.
//! Knows the agent's config format, log lines and metric names; nothing of its internals.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_tests::dnslab::{self, start_on, ZONES};
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::fixtures::netns::{claim_subnet, Netns};
use strata_tests::fixtures::{cmd, wait_until};
use strata_tests::harness::{base_config, AgentProc, Pki};

/// A veth pair from the root namespace into `ns`, addressed 198.18.X.1 (root) and 198.18.X.2 (`ns`), X claimed
/// like the fixture's test LANs. Deleted on Drop.
struct StrangerLink {
    root_dev: String,
    root: Ipv4Addr,
    client: Ipv4Addr,
}

impl StrangerLink {
    fn new(ns: &Netns) -> Result<StrangerLink> {
        let (x, root_dev) = claim_subnet(|root_dev| {
            let out = Command::new("ip")
                .args(["link", "add", root_dev, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])
                .output()?;
            if out.status.success() {
                return Ok(true);
            }
            if String::from_utf8_lossy(&out.stderr).contains("exists") {
                return Ok(false);
            }
            bail!("`ip link add {root_dev} type veth …` failed: {}", String::from_utf8_lossy(&out.stderr).trim())
        })?;
        let link = StrangerLink { root_dev, root: Ipv4Addr::new(198, 18, x, 1), client: Ipv4Addr::new(198, 18, x, 2) };
        cmd::run_args("ip", ["addr", "add", &format!("{}/24", link.root), "dev", &link.root_dev])?;
        cmd::run_args("ip", ["link", "set", &link.root_dev, "up"])?;
        ns.ip(["addr", "add", &format!("{}/24", link.client), "dev", "eth0"])?;
        ns.ip(["link", "set", "eth0", "up"])?;
        Ok(link)
    }
}

impl Drop for StrangerLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.root_dev]).output();
    }
}

/// Starts an agent with the test zones, listening on `listen`, with `extra` appended to `[dns]`.
fn start(pki: &Pki, dir: &std::path::Path, listen: &str, extra: &str) -> Result<(AgentProc, SocketAddr)> {
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let text = format!(
        "{}[dns]\nlisten = [\"{listen}\"]\n{extra}\n{ZONES}",
        base_config(&dir.join("state"), &pki.ca(), &cert, &key)
    );
    let config = dir.join("dns-agent.toml");
    std::fs::write(&config, text)?;
    let (agent, addr, _) = start_on(&config)?;
    Ok((agent, addr))
}

/// (status, answer count, flags) of a `dig` run inside `ns`.
fn dig_in(ns: &Netns, server: SocketAddr, args: &[&str]) -> Result<(String, usize, String)> {
    let out = ns
        .command("/usr/bin/dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=3", "+tries=1", "+nocookie"])
        .args(args)
        .output()
        .context("running dig in the namespace")?;
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let status = raw.split("status: ").nth(1).and_then(|s| s.split(',').next()).map(str::to_string);
    let answers = raw.split("ANSWER: ").nth(1).and_then(|s| s.split(',').next()).and_then(|n| n.trim().parse().ok());
    let flags = raw.split(";; flags: ").nth(1).and_then(|s| s.split(';').next()).unwrap_or("").to_string();
    match (status, answers) {
        (Some(s), Some(n)) => Ok((s, n, flags)),
        _ => bail!("dig {args:?} from the namespace got no answer:\n{raw}"),
    }
}

/// The value of a metric sample line `name{labels} VALUE` (or `name VALUE`).
fn metric(agent: &AgentProc, sample: &str) -> Result<u64> {
    let text = agent.metrics_text()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no {sample} in the metrics:\n{text}"))
}

#[test]
fn a_client_outside_the_private_ranges_is_refused_on_udp_and_tcp_and_never_served_from_the_cache() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let ns = Netns::new("stranger")?;
    let link = StrangerLink::new(&ns)?;
    // The default allow list: no `allow_clients` key.
    let (agent, addr) = start(&pki, dir.path(), "0.0.0.0:0", "")?;
    let local: SocketAddr = (Ipv4Addr::LOCALHOST, addr.port()).into();
    let from_outside: SocketAddr = (link.root, addr.port()).into();
    agent.wait_log("dns clients: allow_clients [127.0.0.0/8, ::1/128, 10.0.0.0/8", Duration::from_secs(5))?;

    // Loopback asks first, from many source ports, so that every UDP loop (one per core) caches the answer.
    for _ in 0..16 {
        let d = dnslab::dig(local, &["nas.lab.home.arpa", "A"])?;
        assert_eq!((d.status.as_str(), d.values("A")), ("NOERROR", vec!["10.0.0.10".to_string()]));
    }
    // The stranger asks the same question, byte for byte (the same dig options): REFUSED, no answer, no RA.
    for _ in 0..4 {
        let (status, answers, flags) = dig_in(&ns, from_outside, &["nas.lab.home.arpa", "A"])?;
        assert_eq!((status.as_str(), answers), ("REFUSED", 0), "udp, flags {flags}");
        assert!(!flags.split_whitespace().any(|f| f == "ra" || f == "aa"), "{flags}");
    }
    let (status, answers, _) = dig_in(&ns, from_outside, &["example.org", "A"])?;
    assert_eq!((status.as_str(), answers), ("REFUSED", 0), "a name the agent does not serve");
    // Counted, not logged one by one (hickory's TCP server, below, logs every TCP request it serves itself).
    assert_eq!(metric(&agent, "strata_dns_refused_clients_total")?, 5);
    assert!(!agent.logs().contains(&link.client.to_string()), "no log line per refused query:\n{}", agent.logs());
    let (status, answers, _) = dig_in(&ns, from_outside, &["+tcp", "nas.lab.home.arpa", "A"])?;
    assert_eq!((status.as_str(), answers), ("REFUSED", 0), "tcp");
    // Loopback again: answers, never a REFUSED cached from the stranger's questions.
    for _ in 0..16 {
        let d = dnslab::dig(local, &["nas.lab.home.arpa", "A"])?;
        assert_eq!((d.status.as_str(), d.answers.len()), ("NOERROR", 1));
        let d = dnslab::dig(local, &["+tcp", "nas.lab.home.arpa", "A"])?;
        assert_eq!((d.status.as_str(), d.answers.len()), ("NOERROR", 1));
    }
    assert_eq!(metric(&agent, "strata_dns_refused_clients_total")?, 6, "5 over udp, 1 over tcp");
    Ok(())
}

/// Sends `n` queries for `name` from `sock` at once and collects the replies for a second: (full answers,
/// truncated replies, missing).
fn burst(sock: &UdpSocket, server: SocketAddr, name: &str, n: u16) -> Result<(usize, usize, usize)> {
    for id in 1..=n {
        sock.send_to(&query_packet(id, name, 1), server)?;
    }
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let (mut full, mut truncated) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline && full + truncated < usize::from(n) {
        let Ok((len, _)) = sock.recv_from(&mut buf) else { continue };
        let (_, rcode, answers) = dnslab::reply_header(&buf[..len]);
        let tc = buf[2] & 0x02 != 0;
        match (tc, rcode, answers) {
            (false, 0, 1) => full += 1,
            (true, 0, 0) => truncated += 1,
            other => bail!("unexpected reply (tc, rcode, answers) = {other:?}"),
        }
    }
    Ok((full, truncated, usize::from(n) - full - truncated))
}

#[test]
fn rate_limiting_drops_and_slips_a_burst_from_one_prefix_and_spares_another() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let rrl = "[dns.rrl]\nresponses_per_second = 5\nwindow = \"2s\"\nslip = 2\nexempt = []\n";
    let (agent, addr) = start(&pki, dir.path(), "127.0.0.1:0", rrl)?;
    agent
        .wait_log("rrl 5/s per bucket, window 2s, slip 2, /24 and /56 per client, exempt []", Duration::from_secs(5))?;

    // One client (127.0.0.1, prefix 127.0.0.0/24) asks the same question 41 times at once: 5 answered (the
    // bucket's second of credit), then every other one slipped and the rest dropped.
    let limited = UdpSocket::bind("127.0.0.1:0")?;
    let (full, truncated, missing) = burst(&limited, addr, "nas.lab.home.arpa", 41)?;
    assert!((5..=7).contains(&full), "answered {full}, truncated {truncated}, missing {missing}");
    assert!(truncated >= 16 && missing >= 16, "answered {full}, truncated {truncated}, missing {missing}");
    // Counted: what was missing was dropped, what came truncated was slipped.
    let counted = || -> Result<(u64, u64)> {
        Ok((
            metric(&agent, "strata_dns_rrl_total{action=\"dropped\"}")?,
            metric(&agent, "strata_dns_rrl_total{action=\"slipped\"}")?,
        ))
    };
    assert_eq!(counted()?, (missing as u64, truncated as u64));

    // Another /24 (127.0.1.0/24) is not affected.
    let other = UdpSocket::bind("127.0.1.1:0")?;
    assert_eq!(burst(&other, addr, "nas.lab.home.arpa", 5)?, (5, 0, 0));
    // Another name from the limited prefix has its own budget.
    assert_eq!(burst(&limited, addr, "mail.lab.home.arpa", 3)?, (3, 0, 0));
    // The limited client, told to retry over TCP by the truncated replies, gets its answer there.
    let d = dnslab::dig(addr, &["+tcp", "nas.lab.home.arpa", "A"])?;
    assert_eq!((d.status.as_str(), d.answers.len()), ("NOERROR", 1));
    // After the window, the limited client is served again.
    assert!(
        wait_until(Duration::from_secs(8), || burst(&limited, addr, "nas.lab.home.arpa", 1)
            .is_ok_and(|r| r == (1, 0, 0))),
        "still limited after the window"
    );
    Ok(())
}
