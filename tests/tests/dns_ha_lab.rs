//! The lab-level promise of two DNS servers (issue 14): the primary dns-agent runs inside a real Linux guest (QEMU,
//! `fixtures::guest` with a network: the real dns-agent binary on its data disk, started by the guest's init, its
//! port 53 forwarded to the host), a second dns-agent with the same zone config runs on the host, and the real
//! host-agent backs the guest's VM up in suspend mode (the guest's file systems frozen, the vCPUs stopped over QMP
//! while the disk goes to a borg repository, held paused a few seconds more by the agent's wait hook, then resumed
//! and thawed) while two clients with both servers configured (a glibc-style stub and hickory-resolver) and a probe
//! of the primary alone resolve a local name every 100 ms. Knows the agents' config formats and the fixtures;
//! asserts what the clients see.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{anyhow, bail, ensure, Context, Result};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::Resolver;
use strata_tests::dnslab::{self, Dns, ZONES};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::fixtures::guest::{self, GuestNet};
use strata_tests::harness::{self, base_config, AgentKind, AgentProc, Pki};
use strata_tests::vmlab::{backup, Lab, VmSpec};

/// The local name every query asks for, and its address in [`ZONES`].
const NAME: &str = "nas.lab.home.arpa.";
const ADDRESS: &str = "10.0.0.10";
/// The guest's data disk (the dns-agent's debug build is 53 MB of it).
const DISK_MB: u64 = 128;
/// How long the test holds the paused VM once its disk is copied (the host-agent's `resume` wait hook), standing in
/// for a bigger disk: copying 128 MiB takes 1-2 s here, a real VM's disk keeps it paused for minutes; 4 s is several
/// times the clients' 1 s timeout for one server, so several of their queries can only be answered by the second.
const HOLD: Duration = Duration::from_secs(4);
/// How often the client and the primary-only probe ask.
const EVERY: Duration = Duration::from_millis(100);
/// How long the primary-only probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// One query: when it was sent (since the start of the watch), how long it took, whether it was answered right.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    took: Duration,
    ok: bool,
    /// Answered by the second server configured (known for the stub only).
    secondary: bool,
}

/// A port free for both UDP and TCP on `ip`.
fn free_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both udp and tcp on {ip}")
}

/// One A query for [`NAME`] to `server` over UDP: answered NOERROR with at least one record within `timeout`.
fn ask(sock: &UdpSocket, server: SocketAddr, id: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    if sock.send_to(&query_packet(id, NAME, 1), server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match sock.recv_from(&mut buf) {
            // A late answer to an earlier query, or from another server, is skipped (as glibc's stub does).
            Ok((n, from)) if from == server && n >= 12 && buf[..2] == id.to_be_bytes() => {
                return buf[3] & 0x0F == 0 && u16::from_be_bytes([buf[6], buf[7]]) >= 1;
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// The longest run of failed samples: (from the first failure's send to the next success's send, failures in it).
fn longest_outage(samples: &[Sample]) -> (Duration, usize) {
    let (mut best, mut start, mut count, mut best_count) = (Duration::ZERO, None, 0, 0);
    for s in samples {
        match (s.ok, start) {
            (false, None) => (start, count) = (Some(s.at), 1),
            (false, Some(_)) => count += 1,
            (true, Some(from)) => {
                if s.at - from > best {
                    (best, best_count) = (s.at - from, count);
                }
                start = None;
            }
            (true, None) => {}
        }
    }
    (best, best_count)
}

/// hickory-resolver with both servers: asked one at a time (hickory's default of asking two at once would hide a
/// dead server), a 1 s timeout, a second attempt, hickory's default order (by measured response times: after a
/// timeout the other server goes first), no cache (every query reaches a server). Not `UserProvidedOrder`: with it,
/// hickory 0.26 gives up on a query when the first server times out (its pool's deadline is the one timeout) and
/// its retry asks the same first server again: it failed a query across a 4.5 s outage here.
fn two_server_client(primary: SocketAddr, secondary: SocketAddr) -> Result<Resolver<TokioRuntimeProvider>> {
    let server = |addr: SocketAddr| {
        let mut conn = ConnectionConfig::new(ProtocolConfig::Udp);
        conn.port = addr.port();
        NameServerConfig::new(addr.ip(), true, vec![conn])
    };
    let config = ResolverConfig::from_parts(None, vec![], vec![server(primary), server(secondary)]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 2;
    opts.num_concurrent_reqs = 1;
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.use_hosts_file = ResolveHosts::Never;
    Ok(Resolver::builder_with_config(config, TokioRuntimeProvider::default()).with_options(opts).build()?)
}

/// The guest's data disk tree: the dns-agent binary and its libraries, its config (the same zones as the host's
/// server), TLS files and an `rc` the guest's init runs.
fn stage_guest_disk(root: &Path, pki: &Pki) -> Result<()> {
    let agent = guest::stage_program(root, &harness::bin("dns-agent")?)?;
    let (cert, key) = pki.issue(Role::DnsAgent, "dns-guest")?;
    std::fs::create_dir_all(root.join("pki"))?;
    for (from, name) in [(pki.ca(), "ca.pem"), (cert, "dns.pem"), (key, "dns.key")] {
        std::fs::copy(&from, root.join("pki").join(name))?;
    }
    let in_guest = Path::new("/mnt/data");
    let config = format!(
        "{}[dns]\nlisten = [\"0.0.0.0:53\"]\n{ZONES}",
        base_config(
            &in_guest.join("state"),
            &in_guest.join("pki/ca.pem"),
            &in_guest.join("pki/dns.pem"),
            &in_guest.join("pki/dns.key")
        )
    );
    std::fs::write(root.join("dns-agent.toml"), config)?;
    let rc = format!(
        "#!/bin/sh\necho \"guest: starting the dns-agent\"\n\
         RUST_LOG=info exec {agent} --log-format human run --config /mnt/data/dns-agent.toml\n"
    );
    std::fs::write(root.join("rc"), rc)?;
    std::fs::set_permissions(root.join("rc"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// The primary's VM backed up in suspend mode: the primary really stops answering for a while, the two-server client
/// never fails, and the primary answers again afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_with_both_servers_keeps_resolving_while_the_primary_vm_is_backed_up_suspended() -> Result<()> {
    let t_all = Instant::now();
    let pki = Pki::new()?;
    let stage = tempfile::Builder::new().prefix("strata-guest-disk-").tempdir()?;
    stage_guest_disk(stage.path(), &pki)?;
    let loopback2: IpAddr = [127, 0, 0, 2].into();
    let primary = SocketAddr::new(loopback2, free_port(loopback2)?);
    let net = GuestNet { forwards: vec![("udp", primary, 53), ("tcp", primary, 53)] };
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::with_net_guest(parent.path(), stage.path(), DISK_MB, &net)?;
    let borg = BorgRepo::init("correct horse battery staple")?;
    let passcommand =
        borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("passcommand")?;
    let spec = VmSpec {
        mode: "suspend",
        engine: "borg",
        target: borg.path(),
        extra: format!("passcommand = {passcommand:?}"),
    };
    let config = lab.write_config(&spec)?;
    let go = lab.dir.path().join("go");
    let hook = format!("resume:{}", go.display());
    lab.agent = Some(AgentProc::start_with_env(AgentKind::Host, &config, &[("STRATA_TEST_WAIT_AT", hook.as_str())])?);
    lab.boot_guest().await?;

    // The guest runs the dns-agent under TCG (≈ 2-4 s here after qemu-ga answers): give it time, say what it took.
    let t0 = Instant::now();
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let mut id = 1u16;
    while !ask(&sock, primary, id, Duration::from_millis(500)) {
        id = id.wrapping_add(1);
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the guest's dns-agent never answered on {primary}; console:\n{}", console(&lab));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the guest's dns-agent answered {:?} after qemu-ga was up", t0.elapsed());
    let secondary = Dns::start(&pki, ZONES)?;
    for (who, addr) in [("primary", primary), ("secondary", secondary.addr)] {
        answers_over_udp_and_tcp(who, addr)?;
    }

    // Watch, every 100 ms each: the primary alone, a glibc-style stub and hickory-resolver, both with both servers.
    let stop = Arc::new(AtomicBool::new(false));
    let watch_start = Instant::now();
    let probe = every_100ms(&stop, watch_start, move |id| (ask(&sock, primary, id, PROBE_TIMEOUT), false));
    let stub_sock = UdpSocket::bind("127.0.0.1:0")?;
    let servers = [primary, secondary.addr];
    let stub = every_100ms(&stop, watch_start, move |id| stub_query(&stub_sock, &servers, id));
    let hickory = watch(two_server_client(primary, secondary.addr)?, &stop, watch_start);
    let local_before = local_answers(&secondary)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b0 = watch_start.elapsed();
    let mut c = lab.client().await?;
    let call = tokio::spawn(async move { backup(&mut c, "lab").await });
    lab.agent()?.wait_log("test hook: waiting at step resume", Duration::from_secs(120))?;
    let copied = watch_start.elapsed();
    tokio::time::sleep(HOLD).await;
    std::fs::write(&go, b"")?;
    let summary = tokio::time::timeout(Duration::from_secs(60), call).await???;
    let b1 = watch_start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let join = |h: std::thread::JoinHandle<Vec<Sample>>| h.join().map_err(|_| anyhow!("a watch thread panicked"));
    let (probes, stub, hickory) = (join(probe)?, join(stub)?, hickory.await?);
    let secondary_answered = local_answers(&secondary)? - local_before;

    ensure!(summary.contains("(suspend mode, downtime"), "backup summary: {summary}");
    eprintln!("backup ran from {b0:?} to {b1:?} of the watch (disk copied at {copied:?}, held {HOLD:?}): {summary}");
    let (outage, missed) = longest_outage(&probes);
    eprintln!(
        "primary alone: {} probes, {} unanswered; longest outage {outage:?} ({missed} probes in a row)",
        probes.len(),
        probes.iter().filter(|s| !s.ok).count()
    );
    // At least the hold, give or take one probe's timeout and interval at either end.
    let least = HOLD.saturating_sub(PROBE_TIMEOUT + EVERY);
    ensure!(outage >= least, "the primary's outage ({outage:?}) is shorter than the hold: {probes:?}");
    // And no longer than the pause: the guest answers while its file systems are frozen, before and after it.
    let downtime: f64 = summary
        .split("downtime ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no downtime in the summary: {summary}"))?;
    let most = Duration::from_secs_f64(downtime) + PROBE_TIMEOUT + EVERY;
    ensure!(outage <= most, "the primary's outage ({outage:?}) is longer than the pause ({downtime}s): {probes:?}");
    ensure!(probes.first().is_some_and(|s| s.ok) && probes.last().is_some_and(|s| s.ok), "{probes:?}");
    let down: Vec<Duration> = probes.iter().filter(|s| !s.ok).map(|s| s.at).collect();
    ensure!(
        down.iter().all(|at| *at >= b0 && *at <= b1),
        "primary unanswered outside the backup ({b0:?}..{b1:?}): {down:?}"
    );
    for (what, answers) in [("glibc-style stub", &stub), ("hickory-resolver", &hickory)] {
        let failed: Vec<&Sample> = answers.iter().filter(|s| !s.ok).collect();
        let slowest = answers.iter().map(|s| s.took).max().unwrap_or_default();
        let slow: Vec<(Duration, Duration)> =
            answers.iter().filter(|s| s.took > Duration::from_millis(200)).map(|s| (s.at, s.took)).collect();
        eprintln!(
            "{what}: {} queries, {} failed, slowest {slowest:?}; over 200 ms (sent at, took): {slow:?}",
            answers.len(),
            failed.len(),
        );
        ensure!(failed.is_empty(), "{what}: {} queries failed: {failed:?}", failed.len());
        ensure!(answers.len() >= 20, "{what}: too few queries: {}", answers.len());
        ensure!(slowest < Duration::from_millis(2500), "{what}: a query took {slowest:?}");
    }
    // The stub asked the primary first every time: answers from the secondary are the fail-over at work.
    let failovers = stub.iter().filter(|s| s.secondary).count();
    eprintln!("glibc-style stub: {failovers} answers from the secondary (after the primary's 1 s timeout)");
    ensure!(failovers >= 2 && failovers < stub.len(), "the stub's answers from the secondary: {failovers}");
    eprintln!("the secondary answered {secondary_answered} queries for {NAME} during the watch");
    ensure!(secondary_answered >= failovers as u64, "secondary counted {secondary_answered} < {failovers}");

    ensure!(lab.state().await? == "running", "the vm runs after the backup");
    answers_over_udp_and_tcp("the primary after the backup", primary)?;
    ensure!(borg.list_archives()?.len() == 1, "one archive in the repository");
    eprintln!("dns ha lab: whole test took {:?}", t_all.elapsed());
    Ok(())
}

/// `dig` asks `addr` for [`NAME`] over UDP, then over TCP (the guest's port 53 is forwarded for both).
fn answers_over_udp_and_tcp(who: &str, addr: SocketAddr) -> Result<()> {
    for transport in ["+notcp", "+tcp"] {
        let d = dnslab::dig(addr, &[transport, NAME, "A"])?;
        ensure!(d.status == "NOERROR" && d.values("A") == [ADDRESS], "{who} at {addr} ({transport}): {}", d.raw);
    }
    Ok(())
}

/// Runs `query` (given a fresh query id; answers whether it succeeded and whether the secondary answered) every
/// [`EVERY`] on a thread of its own until `stop`.
fn every_100ms(
    stop: &Arc<AtomicBool>,
    watch_start: Instant,
    mut query: impl FnMut(u16) -> (bool, bool) + Send + 'static,
) -> std::thread::JoinHandle<Vec<Sample>> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut id = 0u16;
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            id = id.wrapping_add(1);
            let (ok, secondary) = query(id);
            out.push(Sample { at: sent - watch_start, took: sent.elapsed(), ok, secondary });
            std::thread::sleep(EVERY.saturating_sub(sent.elapsed()));
        }
        out
    })
}

/// One lookup the way glibc's stub resolver does it with `options timeout:1 attempts:2`: the servers in the order
/// configured, each given 1 s, the round tried twice; whether it was answered, and whether by a later server.
fn stub_query(sock: &UdpSocket, servers: &[SocketAddr], id: u16) -> (bool, bool) {
    for _attempt in 0..2 {
        for (i, server) in servers.iter().enumerate() {
            if ask(sock, *server, id, Duration::from_secs(1)) {
                return (true, i > 0);
            }
        }
    }
    (false, false)
}

/// The dns-agent's count of A queries it answered from its zones (`strata_dns_queries_total`).
fn local_answers(dns: &Dns) -> Result<u64> {
    let text = dns.agent.metrics_text()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("strata_dns_queries_total{qtype=\"A\",outcome=\"local\"}"))
        .with_context(|| format!("no local A count in the metrics:\n{text}"))?;
    Ok(line.rsplit(' ').next().unwrap_or("").trim().parse()?)
}

/// Resolves [`NAME`] with `resolver` every [`EVERY`] until `stop`.
fn watch(
    resolver: Resolver<TokioRuntimeProvider>,
    stop: &Arc<AtomicBool>,
    watch_start: Instant,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let ok = match resolver.lookup(NAME, RecordType::A).await {
                Ok(a) => a.answers().iter().any(|r| r.data.to_string() == ADDRESS),
                Err(_) => false,
            };
            out.push(Sample { at: sent - watch_start, took: sent.elapsed(), ok, secondary: false });
            tokio::time::sleep(EVERY.saturating_sub(sent.elapsed())).await;
        }
        out
    })
}

fn console(lab: &Lab) -> String {
    std::fs::read_to_string(&lab.console).unwrap_or_default()
}
