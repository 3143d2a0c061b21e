//! Tests of forwarding against real `unbound` upstreams started per test, and of config parsing.
//! Knows nothing of the DNS server side.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;

const UNBOUND_CANDIDATES: &[&str] = &["/usr/sbin/unbound", "/usr/local/sbin/unbound", "/opt/homebrew/sbin/unbound"];

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port free for both UDP and TCP on 127.0.0.1 (nothing listens on it afterwards).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// An `unbound` serving `up.test.` from local data, killed on drop.
struct Unbound {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Unbound {
    fn start() -> Self {
        let binary = UNBOUND_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("unbound is not installed (looked in /usr/sbin, /usr/local/sbin, /opt/homebrew/sbin)");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  logfile: ""
  use-syslog: no
  verbosity: 0
  num-threads: 1
  do-ip6: no
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: no
  local-zone: "up.test." static
  local-data: "up.test. 3600 IN SOA ns.up.test. admin.up.test. 1 3600 600 86400 5"
  local-data: "a.up.test. 60 IN A 192.0.2.1"
  local-data: "short.up.test. 2 IN A 192.0.2.2"
  local-data: "stale.up.test. 1 IN A 192.0.2.3"
  local-data: "a.deep.up.test. 60 IN A 192.0.2.4"
"#
        );
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf).expect("write unbound.conf");
        let child = Command::new(&binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unbound");
        let mut unbound = Unbound { child, port, _dir: dir };
        unbound.wait_ready(&conf_path);
        unbound
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn wait_ready(&mut self, conf: &Path) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_str("a.up.test.").expect("name"), RecordType::A));
        let bytes = msg.to_vec().expect("encode");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("unbound ({}) exited with {status}: {err}", conf.display());
            }
            let _ = socket.send_to(&bytes, self.addr());
            let mut buf = [0u8; 512];
            if socket.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("unbound on port {} did not answer within 5 s", self.port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.stop();
    }
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("name")
}

fn config(upstreams: Vec<Upstream>, cache_size: usize, conditional: Vec<(&str, Vec<Upstream>)>) -> ForwardConfig {
    ForwardConfig {
        upstreams,
        cache_size,
        cache_max_bytes: usize::try_from(DEFAULT_CACHE_MAX_BYTES).unwrap(),
        conditional: conditional.into_iter().map(|(d, u)| (d.to_string(), u)).collect(),
        dnssec: dnssec::DnssecMode::default(),
        anchors: dnssec::Anchors::builtin(),
    }
}

fn dead_upstream() -> Upstream {
    Upstream::Udp(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())))
}

fn first_a(answer: &Answer) -> (Ipv4Addr, u32) {
    answer
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        })
        .expect("an A record")
}

#[tokio::test]
async fn forwards_caches_and_tells_nxdomain_from_nodata() {
    install_crypto();
    let unbound = Unbound::start();
    let fwd = Forwarder::new(&config(vec![Upstream::Udp(unbound.addr())], 100, vec![]));

    let first = fwd.lookup(&name("a.up.test."), RecordType::A, false).await.expect("forwarded");
    assert_eq!(first.source, AnswerSource::Forwarded);
    assert_eq!(first.rcode, ResponseCode::NoError);
    assert_eq!(first_a(&first), (Ipv4Addr::new(192, 0, 2, 1), 60));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Same name, other case and without the trailing dot: one cache entry.
    let second = fwd.lookup(&name("A.Up.Test"), RecordType::A, false).await.expect("cached");
    assert_eq!(second.source, AnswerSource::Cached);
    let (ip, ttl) = first_a(&second);
    assert_eq!(ip, Ipv4Addr::new(192, 0, 2, 1));
    assert!((57..=58).contains(&ttl), "ttl {ttl} should be decremented by the ~1.1 s spent in cache");

    let nx = fwd.lookup(&name("missing.up.test."), RecordType::A, false).await.expect("nxdomain");
    assert_eq!((nx.rcode, nx.source), (ResponseCode::NXDomain, AnswerSource::Forwarded));
    assert!(nx.answers.is_empty());
    assert!(nx.authority.iter().any(|r| r.record_type() == RecordType::SOA), "nxdomain keeps the SOA: {nx:?}");
    assert!(nx.authority.iter().all(|r| r.ttl <= 5), "negative ttl is the SOA minimum: {nx:?}");

    let nodata = fwd.lookup(&name("a.up.test."), RecordType::AAAA, false).await.expect("nodata");
    assert_eq!((nodata.rcode, nodata.source), (ResponseCode::NoError, AnswerSource::Forwarded));
    assert!(nodata.answers.is_empty());
    assert!(nodata.authority.iter().any(|r| r.record_type() == RecordType::SOA), "nodata keeps the SOA");

    let nx_again = fwd.lookup(&name("missing.up.test."), RecordType::A, false).await.expect("cached nxdomain");
    assert_eq!((nx_again.rcode, nx_again.source), (ResponseCode::NXDomain, AnswerSource::Cached));
    assert_eq!(fwd.cache_len(), 3);
    assert_eq!(fwd.upstream_queries(), 3);

    // Plain TCP reaches the same server.
    let tcp = Forwarder::new(&config(vec![Upstream::Tcp(unbound.addr())], 100, vec![]));
    let answer = tcp.lookup(&name("a.up.test."), RecordType::A, false).await.expect("over tcp");
    assert_eq!(first_a(&answer).0, Ipv4Addr::new(192, 0, 2, 1));
}

#[tokio::test]
async fn serves_stale_after_the_upstream_dies_and_fails_fast_without_cache() {
    install_crypto();
    let mut unbound = Unbound::start();
    let fwd = Forwarder::new(&config(vec![Upstream::Udp(unbound.addr())], 100, vec![]));
    let fresh = fwd.lookup(&name("stale.up.test."), RecordType::A, false).await.expect("forwarded");
    assert_eq!(fresh.source, AnswerSource::Forwarded);
    unbound.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let stale = fwd.lookup(&name("stale.up.test."), RecordType::A, false).await.expect("stale answer");
    assert!(started.elapsed() < Duration::from_secs(3), "stale took {:?}", started.elapsed());
    assert_eq!(stale.source, AnswerSource::Stale);
    assert_eq!(first_a(&stale), (Ipv4Addr::new(192, 0, 2, 3), 30));

    // Right after a failure, the stale answer comes without waiting for the dead upstream again.
    let started = Instant::now();
    let again = fwd.lookup(&name("stale.up.test."), RecordType::A, false).await.expect("stale again");
    assert_eq!(again.source, AnswerSource::Stale);
    assert!(started.elapsed() < Duration::from_millis(200), "held stale took {:?}", started.elapsed());

    let started = Instant::now();
    let err =
        fwd.lookup(&name("never.up.test."), RecordType::A, false).await.expect_err("nothing cached, upstream dead");
    assert!(started.elapsed() < Duration::from_secs(3), "failure took {:?}", started.elapsed());
    assert!(matches!(err, ForwardError::Failed(ref m) if m.contains("udp://127.0.0.1")), "{err}");
}

#[tokio::test]
async fn conditional_forwarding_picks_the_longest_matching_domain() {
    install_crypto();
    let unbound = Unbound::start();
    let up = Upstream::Udp(unbound.addr());
    let fwd = Forwarder::new(&config(
        vec![dead_upstream()],
        100,
        vec![("up.test", vec![up.clone()]), ("deep.up.test", vec![dead_upstream()])],
    ));

    let answer = fwd.lookup(&name("a.up.test."), RecordType::A, false).await.expect("via up.test group");
    assert_eq!((answer.source, first_a(&answer).0), (AnswerSource::Forwarded, Ipv4Addr::new(192, 0, 2, 1)));
    // a.deep.up.test exists upstream, but deep.up.test is the longer match and its upstream is dead.
    let err = fwd.lookup(&name("a.deep.up.test."), RecordType::A, false).await.expect_err("deep.up.test group is dead");
    assert!(matches!(err, ForwardError::Failed(_)));
    let err = fwd.lookup(&name("other.test."), RecordType::A, false).await.expect_err("default group is dead");
    assert!(matches!(err, ForwardError::Failed(_)));
    // The domain itself belongs to its group; a suffix that is not a label boundary does not.
    let apex = fwd.lookup(&name("UP.test."), RecordType::SOA, false).await.expect("apex via up.test group");
    assert_eq!(apex.rcode, ResponseCode::NoError);
    assert!(fwd.lookup(&name("notup.test."), RecordType::A, false).await.is_err());

    // Upstreams are tried in order; a dead first one costs at most its share of the budget.
    let ordered = Forwarder::new(&config(vec![dead_upstream(), up.clone()], 100, vec![]));
    let started = Instant::now();
    let answer = ordered.lookup(&name("a.up.test."), RecordType::A, false).await.expect("second upstream answers");
    assert_eq!(first_a(&answer).0, Ipv4Addr::new(192, 0, 2, 1));
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());

    // Without default upstreams, names outside every conditional domain have nowhere to go.
    let only_conditional = Forwarder::new(&config(vec![], 100, vec![("up.test", vec![up])]));
    assert!(matches!(
        only_conditional.lookup(&name("example.com."), RecordType::A, false).await,
        Err(ForwardError::NoUpstream)
    ));
    assert!(only_conditional.lookup(&name("a.up.test."), RecordType::A, false).await.is_ok());
}

#[tokio::test]
async fn cache_stays_within_its_size() {
    install_crypto();
    let unbound = Unbound::start();
    let fwd = Forwarder::new(&config(vec![Upstream::Udp(unbound.addr())], 3, vec![]));
    for i in 0..6 {
        let a = fwd.lookup(&name(&format!("n{i}.up.test.")), RecordType::A, false).await.expect("nxdomain");
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert!(fwd.cache_len() <= 3);
    }
    assert_eq!(fwd.cache_len(), 3);
    let recent = fwd.lookup(&name("n5.up.test."), RecordType::A, false).await.expect("recent");
    assert_eq!(recent.source, AnswerSource::Cached);
    let evicted = fwd.lookup(&name("n0.up.test."), RecordType::A, false).await.expect("evicted");
    assert_eq!(evicted.source, AnswerSource::Forwarded);
    assert_eq!(fwd.cache_len(), 3);
}

#[tokio::test]
async fn prefetch_refreshes_a_popular_entry_before_it_expires() {
    install_crypto();
    let unbound = Unbound::start();
    let fwd = Forwarder::new(&config(vec![Upstream::Udp(unbound.addr())], 100, vec![]));
    let n = name("short.up.test."); // TTL 2 s: prefetch window is the last second
    let start = Instant::now();
    assert_eq!(fwd.lookup(&n, RecordType::A, false).await.expect("forwarded").source, AnswerSource::Forwarded);
    assert_eq!(fwd.lookup(&n, RecordType::A, false).await.expect("hit 1").source, AnswerSource::Cached);
    tokio::time::sleep_until((start + Duration::from_millis(1300)).into()).await;
    assert_eq!(fwd.lookup(&n, RecordType::A, false).await.expect("hit 2").source, AnswerSource::Cached);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fwd.upstream_queries(), 2, "one background refresh after the second hit");

    // Past the original TTL (2 s) the name is still served from cache: the refresh at ~1.3 s renewed it.
    tokio::time::sleep_until((start + Duration::from_millis(2500)).into()).await;
    let later = fwd.lookup(&n, RecordType::A, false).await.expect("refreshed");
    assert_eq!(later.source, AnswerSource::Cached);
    assert_eq!(first_a(&later).0, Ipv4Addr::new(192, 0, 2, 2));
    assert!(first_a(&later).1 <= 2);
    assert_eq!(fwd.upstream_queries(), 2);
}

#[test]
fn parse_upstream_accepts_the_documented_forms() {
    let sa = |s: &str| SocketAddr::from_str(s).expect("addr");
    let ok: &[(&str, Upstream)] = &[
        ("udp://10.0.0.1:53", Upstream::Udp(sa("10.0.0.1:53"))),
        ("udp://10.0.0.1", Upstream::Udp(sa("10.0.0.1:53"))),
        ("UDP://10.0.0.1:5353", Upstream::Udp(sa("10.0.0.1:5353"))),
        ("tcp://[::1]:5300", Upstream::Tcp(sa("[::1]:5300"))),
        ("tcp://::1", Upstream::Tcp(sa("[::1]:53"))),
        (
            "tls://1.1.1.1:853#cloudflare-dns.com",
            Upstream::Tls { addr: sa("1.1.1.1:853"), sni: "cloudflare-dns.com".into() },
        ),
        (
            "tls://1.1.1.1#Cloudflare-DNS.com",
            Upstream::Tls { addr: sa("1.1.1.1:853"), sni: "cloudflare-dns.com".into() },
        ),
        ("tls://9.9.9.9", Upstream::Tls { addr: sa("9.9.9.9:853"), sni: "9.9.9.9".into() }),
        ("https://1.1.1.1/dns-query", Upstream::Https { url: "https://1.1.1.1/dns-query".into() }),
        (
            "https://dns.google/dns-query#8.8.8.8",
            Upstream::Https { url: "https://dns.google/dns-query#8.8.8.8".into() },
        ),
    ];
    for (s, want) in ok {
        assert_eq!(parse_upstream(s).as_ref(), Ok(want), "{s}");
    }
    let targets = [
        ("https://1.1.1.1/dns-query", "1.1.1.1:443", "1.1.1.1", "/dns-query"),
        ("https://[2606:4700::1111]:8443", "[2606:4700::1111]:8443", "2606:4700::1111", "/dns-query"),
        ("https://dns.google:444/resolve#8.8.4.4", "8.8.4.4:444", "dns.google", "/resolve"),
    ];
    for (url, addr, server_name, path) in targets {
        let t = upstream::parse_https(url).expect(url);
        assert_eq!((t.addr, t.server_name.as_str(), t.path.as_str()), (sa(addr), server_name, path), "{url}");
    }
    let bad: &[(&str, &str)] = &[
        ("10.0.0.1:53", "no scheme"),
        ("quic://1.1.1.1", "unsupported scheme `quic`"),
        ("udp://dns.example:53", "host names are not allowed"),
        ("udp://10.0.0.1:0", "port 0"),
        ("udp://10.0.0.1:99999", "not IP"),
        ("udp://", "empty"),
        ("tls://1.1.1.1:853#", "empty TLS name"),
        ("tls://1.1.1.1:853#bad name", "not a valid TLS server name"),
        ("https://dns.google/dns-query", "append the address"),
        ("https://dns.google/dns-query#not-an-ip", "is not an IP address"),
        ("https://1.1.1.1/dns-query#1.0.0.1", "only for host names"),
        ("https://:443/dns-query", "host is empty"),
        ("https://1.1.1.1:x/dns-query", "not a port number"),
        ("https://[::1/dns-query", "without `]`"),
    ];
    for (s, want) in bad {
        let err = parse_upstream(s).expect_err(s);
        assert!(err.contains(want), "{s}: `{err}` should contain `{want}`");
    }
}

#[test]
fn validate_names_the_offending_key() {
    let path = Path::new("/etc/strata/dns.toml");
    let raw = |upstreams: &[&str], cache_size: Option<usize>, conditional: &[(&str, &[&str])]| RawForward {
        upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
        cache_size,
        cache_max_bytes: None,
        conditional: conditional
            .iter()
            .map(|(d, u)| RawConditional {
                domain: d.to_string(),
                upstreams: u.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
        dnssec: None,
        trust_anchor: None,
    };

    let good = ForwardConfig::validate(
        raw(
            &["udp://10.0.0.1:53", "tls://1.1.1.1:853#cloudflare-dns.com"],
            None,
            &[("Corp.Example.", &["udp://10.8.0.1:53"]), ("bücher.example", &["tcp://10.8.0.2"])],
        ),
        path,
    )
    .expect("valid");
    assert_eq!(good.cache_size, DEFAULT_CACHE_SIZE);
    assert_eq!(good.cache_max_bytes as u64, DEFAULT_CACHE_MAX_BYTES);
    assert_eq!(good.upstreams.len(), 2);
    assert_eq!(good.conditional[0], ("corp.example".to_string(), vec![Upstream::Udp("10.8.0.1:53".parse().unwrap())]));
    assert_eq!(good.conditional[1].0, "xn--bcher-kva.example");

    let cases: Vec<(RawForward, &str, &str)> = vec![
        (raw(&["udp://10.0.0.1", "bogus"], None, &[]), "forward.upstreams[1]", "no scheme"),
        (raw(&[], Some(MAX_CACHE_SIZE + 1), &[]), "forward.cache_size", "above the maximum"),
        (
            RawForward { cache_max_bytes: Some(1000), ..raw(&[], None, &[]) },
            "forward.cache_max_bytes",
            "1000 bytes is outside 262144..=",
        ),
        (
            raw(&[], None, &[("a.example", &["udp://10.0.0.1"]), ("", &["udp://10.0.0.1"])]),
            "forward.conditional[1].domain",
            "empty or the root",
        ),
        (raw(&[], None, &[(".", &["udp://10.0.0.1"])]), "forward.conditional[0].domain", "root"),
        (raw(&[], None, &[("a..example", &["udp://10.0.0.1"])]), "forward.conditional[0].domain", ""),
        (raw(&[], None, &[("a.example", &[])]), "forward.conditional[0].upstreams", "no upstreams"),
        (
            raw(&[], None, &[("a.example", &["udp://10.0.0.1", "tcp://x"])]),
            "forward.conditional[0].upstreams[1]",
            "not IP",
        ),
        (
            raw(&[], None, &[("a.example", &["udp://10.0.0.1"]), ("A.example.", &["udp://10.0.0.2"])]),
            "forward.conditional[1].domain",
            "already listed in forward.conditional[0]",
        ),
        (
            RawForward { dnssec: Some("on".into()), ..raw(&[], None, &[]) },
            "forward.dnssec",
            "`on` is not a dnssec mode",
        ),
        (
            RawForward { trust_anchor: Some("anchors".into()), ..raw(&[], None, &[]) },
            "forward.trust_anchor",
            "only used with dnssec = \"validate\" (dnssec is \"transparent\")",
        ),
        (
            RawForward {
                dnssec: Some("validate".into()),
                trust_anchor: Some("/nonexistent/anchors".into()),
                ..raw(&[], None, &[])
            },
            "forward.trust_anchor",
            "cannot read /nonexistent/anchors",
        ),
    ];
    for (raw, want_key, want_msg) in cases {
        match ForwardConfig::validate(raw.clone(), path) {
            Err(ConfigError::Invalid { key, message, .. }) => {
                assert_eq!(key, want_key, "{raw:?}");
                assert!(message.contains(want_msg), "{raw:?}: `{message}` should contain `{want_msg}`");
            }
            other => panic!("{raw:?}: expected an invalid-config error, got {other:?}"),
        }
    }
    // The modes, and a trust anchor file relative to the config file.
    assert_eq!(good.dnssec, dnssec::DnssecMode::Transparent, "the default");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("anchors"),
        "example.test. IN DNSKEY 257 3 13 \
         mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ== ;{id = 2371}\n",
    )
    .expect("write anchors");
    let validating = RawForward {
        dnssec: Some("validate".into()),
        trust_anchor: Some("anchors".into()),
        ..raw(&["udp://10.0.0.1"], None, &[])
    };
    let cfg = ForwardConfig::validate(validating, &dir.path().join("dns.toml")).expect("valid");
    assert_eq!(cfg.dnssec, dnssec::DnssecMode::Validate);
    let off = ForwardConfig::validate(RawForward { dnssec: Some("off".into()), ..raw(&[], None, &[]) }, path);
    assert_eq!(off.expect("valid").dnssec, dnssec::DnssecMode::Off);
    // Only conditional forwarding, cache disabled: fine.
    let only = ForwardConfig::validate(raw(&[], Some(0), &[("lab", &["udp://10.0.0.1"])]), path).expect("valid");
    assert!(only.upstreams.is_empty());
    assert_eq!(only.cache_size, 0);
}

#[test]
fn config_section_parses_from_toml() {
    #[derive(Debug, serde::Deserialize)]
    struct File {
        forward: RawForward,
    }
    let text = r#"
[forward]
upstreams = ["udp://10.0.0.1:53", "tls://1.1.1.1:853#cloudflare-dns.com"]
cache_size = 10000
[[forward.conditional]]
domain = "corp.example"
upstreams = ["udp://10.8.0.1:53"]
"#;
    let path = Path::new("dns.toml");
    let file: File = agent_core::config::parse(path, text).expect("parses");
    let cfg = ForwardConfig::validate(file.forward, path).expect("valid");
    assert_eq!(cfg.conditional.len(), 1);
    assert_eq!(
        cfg.upstreams[1],
        Upstream::Tls { addr: "1.1.1.1:853".parse().unwrap(), sni: "cloudflare-dns.com".into() }
    );
    let unknown = agent_core::config::parse::<File>(path, "[forward]\nupstream = []\n");
    assert!(unknown.is_err(), "unknown keys are refused");
}

#[tokio::test]
async fn a_group_whose_every_upstream_fails_is_reported_until_one_answers() {
    install_crypto();
    let unbound = Unbound::start();
    let up = Upstream::Udp(unbound.addr());
    let dead = dead_upstream();
    let fwd = Forwarder::new(&config(vec![dead.clone()], 100, vec![("up.test", vec![up.clone()])]));
    for i in 0..upstream::FAILING_AFTER {
        assert_eq!(fwd.failing(), Vec::<String>::new(), "after {i} failures");
        fwd.lookup(&name(&format!("n{i}.other.test.")), RecordType::A, false).await.expect_err("dead upstream");
    }
    let reasons = fwd.failing();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].starts_with(&format!("upstream {dead}: last 3 queries failed (")), "{reasons:?}");
    // The conditional group answers: only the default group is reported.
    fwd.lookup(&name("a.up.test."), RecordType::A, false).await.expect("via up.test");
    assert_eq!(fwd.failing().len(), 1);

    // One dead and one live upstream: the group answers, nothing is failing.
    let mixed = Forwarder::new(&config(vec![dead_upstream(), up], 100, vec![]));
    for i in 0..upstream::FAILING_AFTER {
        mixed.lookup(&name(&format!("n{i}.up.test.")), RecordType::A, false).await.expect("second upstream answers");
    }
    assert_eq!(mixed.failing(), Vec::<String>::new());
}

#[test]
fn failures_count_only_when_consecutive_and_recent() {
    let at = Instant::now();
    let mut f = upstream::Failures { consecutive: 2, last: Some((at, "timed out".into())) };
    assert_eq!(f.failing("udp://192.0.2.1:53", at), None, "two failures are a blip");
    f.consecutive = 5;
    assert_eq!(
        f.failing("udp://192.0.2.1:53", at + Duration::from_secs(12)).as_deref(),
        Some("upstream udp://192.0.2.1:53: last 5 queries failed (12 s ago: timed out)")
    );
    assert_eq!(f.failing("udp://192.0.2.1:53", at + upstream::FAILING_RECENT + Duration::from_secs(1)), None);
    assert_eq!(upstream::Failures::default().failing("x", at), None);
}

#[tokio::test]
async fn each_upstream_counts_the_queries_sent_to_it_and_their_failures() {
    install_crypto();
    let unbound = Unbound::start();
    let up = Upstream::Udp(unbound.addr());
    let dead = dead_upstream();
    let registry = agent_core::telemetry::Metrics::new();
    let metrics = crate::metrics::DnsMetrics::new(&registry);
    let fwd = Forwarder::with_counters(&config(vec![dead.clone(), up.clone()], 100, vec![]), &|u| {
        metrics.upstream(&u.to_string())
    });
    let sample = |family: &str, u: &Upstream| -> Option<u64> {
        let prefix = format!("strata_dns_upstream_{family}_total{{upstream=\"{u}\"}} ");
        registry.encode().lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
    };
    // The dead one is asked first and fails; the second answers.
    fwd.lookup(&name("a.up.test."), RecordType::A, false).await.expect("second upstream answers");
    // The dead one is held down now, so asked last: the live one answers alone.
    fwd.lookup(&name("b.up.test."), RecordType::A, false).await.expect("live upstream answers");
    // A cache hit asks nobody.
    fwd.lookup(&name("a.up.test."), RecordType::A, false).await.expect("cached");
    let counts =
        [(sample("queries", &dead), sample("failures", &dead)), (sample("queries", &up), sample("failures", &up))];
    assert_eq!(counts, [(Some(1), Some(1)), (Some(2), Some(0))], "{}", registry.encode());
}
