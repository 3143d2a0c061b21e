//! `cargo xtask bench dns`: dns-agent beside unbound and dnsmasq in one run on the same data. First the same 1,000
//! local records and query file under dnsperf, the servers interleaved round by round (qps, p99, ratios); then a
//! 1,000,000-domain blocklist (load time and added RSS), and RSS across 10 refreshes. Owns the data generation and
//! the measurement; reports, never fails on numbers.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{GetBlocklistRequest, RefreshBlocklistRequest};
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::harness::{self, AgentKind, AgentProc, Pki};

use super::procs::{release_bins, rss_bytes};
use super::stats::{median, percentile};

const ZONE: &str = "bench.test";
const RECORDS: usize = 1_000;
const BLOCKED: usize = 1_000_000;
/// The agent's guard in the qps runs: the default `allow_clients` (loopback is in it; every query is checked), and
/// rate limiting with nothing exempt, so that every response is charged to its bucket (the default exempts
/// loopback, which would skip that work here); the budget is above what one name gets in these runs (about 300/s
/// per name), so nothing is dropped.
const AGENT_GUARD: &str = "[dns.rrl]\nresponses_per_second = 10000\nexempt = []\n";

/// A local port that was free a moment ago (UDP and TCP are bound by the servers themselves).
fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn record_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

/// Deterministic, realistic-looking blocked names (a small xorshift; no randomness crate needed).
fn blocked_names(n: usize) -> impl Iterator<Item = String> {
    let tlds = ["com", "net", "org", "io", "info", "biz"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n).map(move |i| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        format!("ads{:x}-{i}.tracker{}.{}", x & 0xffff_ffff, x % 977, tlds[(x % 6) as usize])
    })
}

/// Waits until `server` answers a query for `name`; returns when it did.
fn wait_answering(server: SocketAddr, name: &str, timeout: Duration) -> Result<Instant> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    let mut id = 1u16;
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        sock.send_to(&query_packet(id, name, 1), server)?;
        // Every probe asks the same name, so a reply to any of them counts (matching only the latest id would
        // fall one query behind for good after a reply slower than the read timeout).
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let ours = u16::from_be_bytes([buf[0], buf[1]]);
            if n >= 12 && from == server && buf[2] & 0x80 != 0 && (1..=id).contains(&ours) {
                return Ok(Instant::now());
            }
        }
    }
    bail!("{server} did not answer {name} within {timeout:?}")
}

/// A server process with its stderr kept in a file, shown when it does not answer.
struct Proc(Child, PathBuf);

impl Proc {
    fn wait(&self, addr: SocketAddr, name: &str, timeout: Duration) -> Result<Instant> {
        wait_answering(addr, name, timeout).with_context(|| {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            format!("its log ({}):\n{log}", self.1.display())
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(name: &str, log: PathBuf, cmd: &mut Command) -> Result<Proc> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {name} (run `cargo xtask deps`)"))?;
    Ok(Proc(child, log))
}

fn unbound(dir: &Path, port: u16, extra: &str) -> Result<Proc> {
    let conf = dir.join(format!("unbound-{port}.conf"));
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1@{port}\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  \
             directory: \"{d}\"\n  pidfile: \"{d}/unbound-{port}.pid\"\n  use-syslog: no\n  logfile: \"\"\n  \
             num-threads: 2\n  so-reuseport: yes\n  access-control: 127.0.0.0/8 allow\n  verbosity: 0\n{extra}"
        ),
    )?;
    spawn("unbound", dir.join(format!("unbound-{port}.log")), Command::new("unbound").arg("-d").arg("-c").arg(&conf))
}

fn dnsmasq(port: u16, hosts: &Path) -> Result<Proc> {
    let log = hosts.with_extension(format!("dnsmasq-{port}.log"));
    spawn(
        "dnsmasq",
        log,
        Command::new("dnsmasq")
            .args(["--keep-in-foreground", "--bind-interfaces", "--listen-address=127.0.0.1", "--no-resolv"])
            .args(["--no-hosts", "--cache-size=10000", "--user=root", "--pid-file="])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display())),
    )
}

fn dns_agent_config(dir: &Path, pki: &Pki, extra: &str) -> Result<PathBuf> {
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    let state = dir.join(format!("state-{}", std::process::id() ^ extra.len() as u32));
    let mut text = harness::base_config(&state, &pki.ca(), &cert, &key);
    text.push_str("[dns]\nlisten = [\"127.0.0.1:0\"]\n");
    text.push_str(extra);
    let path = dir.join(format!("dns-agent-{}.toml", extra.len()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The agent's UDP DNS address, from its `dns udp listening on ADDR` line.
fn agent_dns_addr(agent: &AgentProc) -> Result<SocketAddr> {
    agent.logged_addr("dns udp")
}

/// dnsperf at full speed for `seconds`: queries per second.
fn dnsperf_qps(server: SocketAddr, queries: &Path, seconds: u32) -> Result<f64> {
    let out = Command::new("dnsperf")
        .args(["-s", &server.ip().to_string(), "-p", &server.port().to_string(), "-d"])
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-c", "8", "-q", "256", "-T", "1"])
        .output()
        .context("running dnsperf (run `cargo xtask deps`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no qps in dnsperf output:\n{text}"))?;
    let lost = text.lines().find(|l| l.contains("Queries lost:")).unwrap_or("").trim().to_string();
    if !lost.contains(" 0 (") {
        eprintln!("bench dns: {server}: {lost}");
    }
    Ok(qps)
}

/// dnsperf rate-limited (5,000 qps) and verbose for `seconds`: every latency, in seconds.
fn dnsperf_latencies(server: SocketAddr, queries: &Path, seconds: u32) -> Result<Vec<f64>> {
    let out = Command::new("dnsperf")
        .args(["-s", &server.ip().to_string(), "-p", &server.port().to_string(), "-d"])
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-Q", "5000", "-c", "4", "-v"])
        .output()?;
    let lat: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    if lat.is_empty() {
        bail!("dnsperf -v printed no latencies for {server}");
    }
    Ok(lat)
}

/// Rounds the `seconds` per server are split into (at least 2 s each), so that the servers are measured
/// interleaved: load from other work on the machine then falls on all of them alike.
fn rounds(seconds: u32) -> u32 {
    (seconds / 2).clamp(1, 5)
}

pub(crate) fn run(seconds: u32, blocklist_only: bool) -> Result<()> {
    release_bins(&["dns-agent"])?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let pki = Pki::new()?;
    if blocklist_only {
        return blocklist(dir, &pki);
    }

    // The same 1,000 records for every server, and one query file.
    let mut agent_records = String::from("[[zones]]\nname = \"bench.test\"\nrecords = [\n");
    let mut unbound_records = format!("  local-zone: \"{ZONE}.\" static\n");
    let mut hosts = String::new();
    let mut queries = String::new();
    for i in 0..RECORDS {
        let (name, ip) = (format!("host{i:04}"), record_ip(i));
        let _ = writeln!(agent_records, "  {{ name = \"{name}\", type = \"A\", value = \"{ip}\", ttl = 300 }},");
        let _ = writeln!(unbound_records, "  local-data: \"{name}.{ZONE}. 300 IN A {ip}\"");
        let _ = writeln!(hosts, "{ip} {name}.{ZONE}");
        let _ = writeln!(queries, "{name}.{ZONE} A");
    }
    agent_records.push_str("]\n");
    let query_file = dir.join("queries.txt");
    std::fs::write(&query_file, &queries)?;
    let hosts_file = dir.join("hosts.txt");
    std::fs::write(&hosts_file, &hosts)?;

    let rounds = rounds(seconds);
    let per_round = seconds.div_ceil(rounds).max(1);
    println!(
        "\nbench dns: {RECORDS} local A records, dnsperf {rounds} × {per_round} s per server (8 clients), servers \
         interleaved round by round, release build"
    );
    // All three run at once (idle while another is measured), so each round measures them back to back.
    let agent_config = dns_agent_config(dir, &pki, &format!("{AGENT_GUARD}{agent_records}"))?;
    let agent = AgentProc::start_with_config(AgentKind::Dns, &agent_config)?;
    let agent_addr = agent_dns_addr(&agent)?;
    wait_answering(agent_addr, "host0001.bench.test", Duration::from_secs(5))?;
    let unbound_port = free_port()?;
    let u = unbound(dir, unbound_port, &unbound_records)?;
    let unbound_addr: SocketAddr = ([127, 0, 0, 1], unbound_port).into();
    u.wait(unbound_addr, "host0001.bench.test", Duration::from_secs(10))?;
    let dnsmasq_port = free_port()?;
    let d = dnsmasq(dnsmasq_port, &hosts_file)?;
    let dnsmasq_addr: SocketAddr = ([127, 0, 0, 1], dnsmasq_port).into();
    d.wait(dnsmasq_addr, "host0001.bench.test", Duration::from_secs(10))?;
    let servers = [("dns-agent", agent_addr), ("unbound", unbound_addr), ("dnsmasq", dnsmasq_addr)];

    let mut qps: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        // Rotate who goes first, so that no server always follows the same one.
        for k in 0..servers.len() {
            let i = (k + round as usize) % servers.len();
            qps[i].push(dnsperf_qps(servers[i].1, &query_file, per_round)?);
        }
        for k in 0..servers.len() {
            let i = (k + round as usize) % servers.len();
            lat[i].extend(dnsperf_latencies(servers[i].1, &query_file, 1)?);
        }
    }
    let guard_line = agent.logs().lines().find_map(|l| l.split_once("dns clients: ").map(|(_, g)| g.to_string()));
    let held_back = agent.metrics_text().map(|t| {
        t.lines()
            .filter(|l| l.starts_with("strata_dns_rrl_total") || l.starts_with("strata_dns_refused_clients_total"))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    })?;
    drop((agent, u, d));

    let unbound_qps = median(&qps[1]);
    println!("{:<10} {:>12} {:>10} {:>16}   qps per round", "server", "qps", "p99 µs", "qps vs unbound");
    for (i, (name, _)) in servers.iter().enumerate() {
        let q = median(&qps[i]);
        let p99 = percentile(&lat[i], 0.99) * 1e6;
        let each: Vec<String> = qps[i].iter().map(|v| format!("{v:.0}")).collect();
        println!("{name:<10} {q:>12.0} {p99:>10.0} {:>15.2}x   {}", q / unbound_qps, each.join(" "));
    }
    println!("qps: median of the rounds; p99: over every round's rate-limited (5,000 qps) run");
    println!("dns-agent checks on every query: {}", guard_line.as_deref().unwrap_or("(no `dns clients` log line)"));
    println!("dns-agent guard counters after the runs: {held_back}");
    println!("target: dns-agent local-record qps ≥ 1.0× unbound");

    blocklist(dir, &pki)
}

fn blocklist(dir: &Path, pki: &Pki) -> Result<()> {
    println!("\nbench dns: {BLOCKED} blocked domains");
    let list = dir.join("blocklist.txt");
    let mut unbound_zones = String::with_capacity(BLOCKED * 48);
    let mut hosts = String::with_capacity(BLOCKED * 40);
    let mut last = String::new();
    for name in blocked_names(BLOCKED) {
        let _ = writeln!(unbound_zones, "  local-zone: \"{name}.\" always_nxdomain");
        let _ = writeln!(hosts, "0.0.0.0 {name}");
        last = name;
    }
    std::fs::write(&list, &hosts)?;
    println!("{:<10} {:>14} {:>16}", "server", "load s", "added RSS MB");

    // dns-agent: baseline RSS without a list, then the explicit refresh time and RSS with it.
    let base = AgentProc::start_with_config(AgentKind::Dns, &dns_agent_config(dir, pki, "")?)?;
    agent_dns_addr(&base)?;
    std::thread::sleep(Duration::from_millis(500));
    let base_rss = rss_bytes(base.pid())?;
    drop(base);
    let extra = format!("[blocklist]\nsources = [{:?}]\nresponse = \"nxdomain\"\n", list.display().to_string());
    let agent = AgentProc::start_with_config(AgentKind::Dns, &dns_agent_config(dir, pki, &extra)?)?;
    let addr = agent_dns_addr(&agent)?;
    let admin = pki.material(&pki.ca(), Role::Admin, "bench-admin")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = agent.url();
    let mut client = rt.block_on(async {
        let ch = admin.connect(&url, Role::DnsAgent, Duration::from_secs(60)).await?;
        anyhow::Ok(DnsClient::new(ch))
    })?;
    // Wait for the background load at start, then time an explicit full refresh.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(client.get_blocklist(GetBlocklistRequest {}))?.into_inner().entries < BLOCKED as u64 {
        if Instant::now() > deadline {
            bail!("dns-agent did not load the blocklist within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_answering(addr, &last, Duration::from_secs(5))?;
    let t = Instant::now();
    let st = rt.block_on(client.refresh_blocklist(RefreshBlocklistRequest {}))?.into_inner();
    let agent_load = t.elapsed();
    if st.entries != BLOCKED as u64 {
        bail!("dns-agent loaded {} entries, expected {BLOCKED}", st.entries);
    }
    let agent_rss = rss_bytes(agent.pid())?;
    println!(
        "{:<10} {:>14.3} {:>16.1}",
        "dns-agent",
        agent_load.as_secs_f64(),
        (agent_rss as f64 - base_rss as f64) / 1e6
    );

    // RSS across 10 refreshes.
    // Each is a full load too (read, parse, index, swap): their times show how steady the first one was.
    let (mut rss, mut loads) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        rt.block_on(client.refresh_blocklist(RefreshBlocklistRequest {}))?;
        loads.push(t.elapsed().as_secs_f64());
        rss.push(rss_bytes(agent.pid())?);
    }
    let each: Vec<String> = loads.iter().map(|l| format!("{l:.3}")).collect();
    println!("  dns-agent load s of the 10 refreshes: {} (median {:.3})", each.join(" "), median(&loads));
    // The agent's own account of the start-up load and the first refresh (read, parse, index).
    for line in agent.logs().lines().filter(|l| l.contains("blocklist loaded")).take(2) {
        println!("  agent log: {}", line.trim());
    }
    drop(agent);

    // unbound with local-zone lines, dnsmasq with addn-hosts: load = start until the last name answers.
    // Baselines serve one probe record, so "answering" means the same thing as for the loaded runs.
    let port = free_port()?;
    let empty =
        unbound(dir, port, "  local-zone: \"probe.test.\" static\n  local-data: \"p.probe.test. 60 IN A 10.9.9.9\"\n")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    empty.wait(addr, "p.probe.test", Duration::from_secs(10))?;
    let unbound_base = rss_bytes(empty.0.id())?;
    drop(empty);
    let port = free_port()?;
    let t = Instant::now();
    let u = unbound(dir, port, &unbound_zones)?;
    let loaded = u.wait(([127, 0, 0, 1], port).into(), &last, Duration::from_secs(120))?;
    let unbound_rss = rss_bytes(u.0.id())?;
    println!(
        "{:<10} {:>14.3} {:>16.1}",
        "unbound",
        (loaded - t).as_secs_f64(),
        (unbound_rss as f64 - unbound_base as f64) / 1e6
    );
    drop(u);

    let empty_hosts = dir.join("empty-hosts.txt");
    std::fs::write(&empty_hosts, "10.9.9.9 p.probe.test\n")?;
    let port = free_port()?;
    let e = dnsmasq(port, &empty_hosts)?;
    e.wait(([127, 0, 0, 1], port).into(), "p.probe.test", Duration::from_secs(10))?;
    let dnsmasq_base = rss_bytes(e.0.id())?;
    drop(e);
    let port = free_port()?;
    let t = Instant::now();
    let d = dnsmasq(port, &list)?;
    let loaded = d.wait(([127, 0, 0, 1], port).into(), &last, Duration::from_secs(120))?;
    let dnsmasq_rss = rss_bytes(d.0.id())?;
    println!(
        "{:<10} {:>14.3} {:>16.1}",
        "dnsmasq",
        (loaded - t).as_secs_f64(),
        (dnsmasq_rss as f64 - dnsmasq_base as f64) / 1e6
    );
    drop(d);

    let mb: Vec<String> = rss.iter().map(|r| format!("{:.1}", *r as f64 / 1e6)).collect();
    let growth = rss.last().copied().unwrap_or(0) as f64 - rss.first().copied().unwrap_or(0) as f64;
    println!("\ndns-agent RSS after each of 10 refreshes (MB): {}", mb.join(" "));
    println!("growth from refresh 1 to 10: {:.1} MB", growth / 1e6);
    println!("targets: load ≤ 0.5 s, ≤ 25 MB added RSS, no RSS growth across refreshes");
    Ok(())
}
