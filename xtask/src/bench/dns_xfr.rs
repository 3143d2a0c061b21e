//! `cargo xtask bench dns-xfr`: a 100,000-record zone transferred by AXFR to a fresh knotd secondary, from the
//! dns-agent (release build) and from a knotd primary serving the same zone, alternating in one run: the secondary's
//! own figures (seconds, messages, bytes from its log) and the time ratio. Owns the zone generation and the
//! measurement; reports, never fails on numbers.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_tests::fixtures::knot::{free_port, Knot};
use strata_tests::harness::{self, AgentKind, AgentProc, Pki};

use super::procs::release_bins;
use super::stats::median;

const ZONE: &str = "xfr.bench";
const RECORDS: usize = 100_000;
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What a knotd secondary logged for one AXFR.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Transfer {
    seconds: f64,
    messages: u64,
    bytes: u64,
}

/// Parses knotd's `AXFR, incoming, remote …, finished, 0.43 seconds, 178 messages, 2937447 bytes` line.
fn parse_finished(log: &str) -> Option<Transfer> {
    let line = log.lines().find(|l| l.contains("AXFR, incoming") && l.contains("finished"))?;
    let field = |unit: &str| -> Option<f64> {
        let at = line.find(&format!(" {unit}"))?;
        line[..at].rsplit([' ', ',']).next()?.parse().ok()
    };
    Some(Transfer { seconds: field("seconds")?, messages: field("messages")? as u64, bytes: field("bytes")? as u64 })
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
}

/// Wall-clock seconds of `kdig ZONE AXFR` from `primary` (the client's view, end to end), and the bytes it received.
fn kdig_axfr(primary: SocketAddr) -> Result<f64> {
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new("kdig")
        .args([&format!("@{}", primary.ip()), "-p", &primary.port().to_string(), ZONE, "AXFR", "+noall", "+stats"])
        .output()
        .context("running kdig (run `cargo xtask deps`)")?;
    let secs = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("Received") {
        bail!("kdig AXFR from {primary} failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}

/// One AXFR of the zone from `primary` into a fresh knotd secondary.
fn transfer_from(primary: SocketAddr) -> Result<Transfer> {
    let conf = format!(
        "remote:\n  - id: primary\n    address: {}@{}\n\nzone:\n  - domain: {ZONE}\n    master: primary\n    \
         zonefile-sync: -1\n    journal-content: none\n",
        primary.ip(),
        primary.port()
    );
    let secondary = Knot::start(LOOPBACK, &conf, &[])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(t) = parse_finished(&secondary.log()) {
            return Ok(t);
        }
        if std::time::Instant::now() > deadline {
            bail!("no finished AXFR from {primary} within 120 s; knotd log:\n{}", secondary.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn run(rounds: usize) -> Result<()> {
    release_bins(&["dns-agent"])?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    // The same zone for both primaries: SOA, NS and 100,000 A records.
    let mut agent_records =
        format!("[[zones]]\nname = \"{ZONE}\"\ntransfer = {{ allow = [\"127.0.0.1\"] }}\nrecords = [\n");
    let mut zone_file =
        format!("$ORIGIN {ZONE}.\n$TTL 300\n@ 60 SOA ns hostmaster 1 3600 600 86400 60\n@ 60 NS ns.{ZONE}.\n");
    for i in 0..RECORDS {
        let _ = writeln!(agent_records, "  {{ name = \"host{i}\", type = \"A\", value = \"{}\", ttl = 300 }},", ip(i));
        let _ = writeln!(zone_file, "host{i} A {}", ip(i));
    }
    agent_records.push_str("]\n");

    let pki = Pki::new()?;
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let mut text = harness::base_config(&dir.join("state"), &pki.ca(), &cert, &key);
    text.push_str("[dns]\nlisten = [\"127.0.0.1:0\"]\n");
    text.push_str(&agent_records);
    let config = dir.join("dns-agent.toml");
    std::fs::write(&config, text)?;
    let agent = AgentProc::start_with_config(AgentKind::Dns, &config)?;
    let agent_addr = agent.logged_addr("dns udp")?;

    let knot_primary = Knot::start_at(
        SocketAddr::new(LOOPBACK, free_port(LOOPBACK)?),
        &format!("acl:\n  - id: xfr\n    address: 127.0.0.1\n    action: transfer\n\nzone:\n  - domain: {ZONE}\n    acl: xfr\n"),
        &[(&format!("{ZONE}.zone"), &zone_file)],
    )?;
    if !strata_tests::fixtures::wait_until(Duration::from_secs(60), || knot_primary.serial(ZONE).is_some()) {
        bail!("the knotd primary does not serve {ZONE}; its log:\n{}", knot_primary.log());
    }

    println!(
        "\nbench dns-xfr: {RECORDS} A records (plus SOA and NS), AXFR to a fresh knotd secondary, no TSIG, \
         {rounds} rounds alternating, release build"
    );
    let servers = [("dns-agent", agent_addr), ("knotd", knot_primary.addr())];
    let mut got: Vec<Vec<Transfer>> = vec![Vec::new(); servers.len()];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let t = transfer_from(servers[i].1).with_context(|| format!("from {}", servers[i].0))?;
            got[i].push(t);
            wall[i].push(kdig_axfr(servers[i].1)?);
        }
    }
    let mut medians = Vec::new();
    for (i, (name, _)) in servers.iter().enumerate() {
        let secs: Vec<f64> = got[i].iter().map(|t| t.seconds).collect();
        let m = median(&secs);
        let last = got[i].last().copied().context("no transfer")?;
        println!(
            "  {name:<10} median {m:.3} s (rounds: {}), {} bytes in {} messages",
            secs.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(", "),
            last.bytes,
            last.messages
        );
        medians.push((m, last.bytes));
    }
    let (mine, knot) = (medians[0], medians[1]);
    println!(
        "  ratio dns-agent / knotd: time {:.2}× (target ≤ 1.0×), bytes {:.2}× (knotd's log: it times from the first \
         message, to 10 ms)",
        mine.0 / knot.0.max(1e-9),
        mine.1 as f64 / knot.1.max(1) as f64
    );
    let walls: Vec<f64> = wall.iter().map(|w| median(w)).collect();
    for (i, (name, _)) in servers.iter().enumerate() {
        println!(
            "  kdig AXFR wall clock (request to last record, end to end) from {name:<10} median {:.3} s",
            walls[i]
        );
    }
    println!("  ratio dns-agent / knotd, kdig wall clock: {:.2}× (target ≤ 1.0×)", walls[0] / walls[1].max(1e-9));
    let logs = agent.logs();
    if let Some(line) = logs.lines().rev().find(|l| l.contains("zone transfer served")) {
        println!("  dns-agent's own log of its last transfer: {}", line.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knots_finished_line() {
        let log = "2026-12-05T23:00:01+0000 info: [xfr.bench.] AXFR, incoming, remote 127.0.0.1@41234, started\n\
                   2026-12-05T23:00:02+0000 info: [xfr.bench.] AXFR, incoming, remote 127.0.0.1@41234, finished, \
                   0.43 seconds, 178 messages, 2937447 bytes\n";
        assert_eq!(parse_finished(log), Some(Transfer { seconds: 0.43, messages: 178, bytes: 2_937_447 }));
        assert_eq!(parse_finished("nothing"), None);
    }
}
