//! The dns-agent's forwarding end to end: a real `unbound` as the upstream (with a blocklist), a hostile upstream
//! written here (huge answers, slow answers, records for names it does not own), and the query log read through
//! `labctl`. Knows the agent's config format, logs and gRPC API; nothing of its internals.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use agent_core::tls;
use anyhow::{ensure, Context, Result};
use hickory_resolver::proto::op::{Message, MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::{A, CNAME, TXT};
use hickory_resolver::proto::rr::{Name as HName, RData, Record as HRecord};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{StatsRequest, StatusRequest};
use strata_tests::dnslab::{self, reply_header, udp_exchange, wait_for, Dns, ZONES};
use strata_tests::fixtures::dnswire::query_packet;
use strata_tests::fixtures::unbound::Unbound;
use strata_tests::harness::Pki;

/// A real unbound answering `fwd.example.` and `other.example.` (and passing `example.com.` through).
fn upstream() -> Result<Unbound> {
    let server = "  local-zone: \"example.\" static\n  \
                  local-data: \"fwd.example. 300 IN A 192.0.2.7\"\n  local-data: \"other.example. 300 IN A 192.0.2.8\"\n  \
                  local-data: \"short.example. 1 IN A 192.0.2.9\"\n  local-data: \"ok.ads.example.com. 300 IN A 192.0.2.10\"\n  \
                  local-zone: \"example.com.\" transparent\n";
    Unbound::start(server, "", "fwd.example")
}

#[test]
fn forwarding_via_unbound_and_blocklist_end_to_end() -> Result<()> {
    let pki = Pki::new()?;
    let unbound = upstream()?;
    let lists = tempfile::tempdir()?;
    let list = lists.path().join("ads.txt");
    // All three formats: hosts, plain domain, adblock; the allowlist wins over every list.
    std::fs::write(&list, "# ads\n0.0.0.0 ads.example.com\ntracker.example.net\n||adblock.example.org^\n")?;
    let extra = format!(
        "{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\n\n[blocklist]\nsources = [{:?}]\n\
         allow = [\"ok.ads.example.com\"]\n",
        unbound.port(),
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
    // ANY is forwarded (no longer NOTIMP) and the client gets what the upstream answers (at most one RRset of it,
    // RFC 8482; unbound answers ANY for its local data with no records at all).
    let any = dns.dig(&["other.example", "ANY"])?;
    let direct = dnslab::dig(format!("127.0.0.1:{}", unbound.port()).parse()?, &["other.example", "ANY"])?;
    assert_eq!((any.status.as_str(), &any.answers), (direct.status.as_str(), &direct.answers), "{}", any.raw);
    // A private address's PTR never leaves the agent (RFC 6303): answered from the empty zone, authoritatively.
    let private = dns.dig(&["-x", "192.168.1.5"])?;
    assert_eq!((private.status.as_str(), private.aa()), ("NXDOMAIN", true), "{}", private.raw);
    assert_eq!(private.authority.first().map(|a| (a.0.as_str(), a.1.as_str())), Some(("168.192.in-addr.arpa.", "SOA")));
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
    // The negative answer carries an SOA (RFC 2308), so caches keep it: owned by the name, minimum 60 s.
    let soa: Vec<_> = mx.authority.iter().map(|(n, t, v)| (n.as_str(), t.as_str(), v.split(' ').next_back())).collect();
    assert_eq!(soa, vec![("ads.example.com.", "SOA", Some("60"))], "{}", mx.raw);
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
    let unbound = upstream()?;
    let lists = tempfile::tempdir()?;
    let (ads, trackers) = (lists.path().join("ads.txt"), lists.path().join("trackers.txt"));
    std::fs::write(&ads, "0.0.0.0 ads.example.com\nshared.example.org\n")?;
    std::fs::write(&trackers, "tracker.example.net\nshared.example.org\n")?;
    let extra = format!(
        "query_log = true\n{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{}\"]\n\n[blocklist]\nsources = [{:?}, {:?}]\n",
        unbound.port(),
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
