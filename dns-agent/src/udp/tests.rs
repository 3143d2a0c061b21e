//! Tests of the UDP loop: its answers match the handler's byte for byte, come from its cache, follow a change at once,
//! and come from the forwarder's cache when it has them. Real `Dns` over temp dirs and a fake upstream.

use agent_core::identity::{Identity, Role};
use agent_core::telemetry::Metrics;
use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::{Name, RData};

use super::*;
use crate::config::Config;
use crate::metrics::DnsMetrics;
use crate::records::LocalRecord;
use crate::service::Dns;

const SRC: &str = "127.0.0.1:5353";

async fn dns(dir: &std::path::Path, response: &str) -> Arc<Dns> {
    std::fs::write(dir.join("list.txt"), "ads.example.com\n").unwrap();
    let text = format!(
        "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
         [[zones]]\nname = \"lab.home.arpa\"\nrecords = [\
         {{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }},\
         {{ name = \"www\", type = \"CNAME\", value = \"nas\" }},\
         {{ name = \"ext\", type = \"CNAME\", value = \"example.org.\" }},\
         {{ name = \"big\", type = \"TXT\", value = \"{}\" }}]\n\
         [[zones]]\nname = \"10.in-addr.arpa\"\n\
         [blocklist]\nsources = [\"list.txt\"]\nresponse = \"{response}\"\n",
        "x".repeat(200)
    );
    std::fs::write(dir.join("dns.toml"), text).unwrap();
    let cfg = Config::load(&dir.join("dns.toml")).unwrap();
    let dns = Dns::new(cfg, DnsMetrics::new(&Metrics::new())).unwrap();
    dns.refresh_blocklist().await;
    dns
}

fn query(id: u16, name: &str, t: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// What `Handler` answers for `packet` through hickory's own request parsing (the path the fast path replaces).
async fn via_handler(handler: &Handler, packet: &[u8]) -> Option<Vec<u8>> {
    let req = Request::from_bytes(packet.to_vec(), SRC.parse().unwrap(), Protocol::Udp).ok()?;
    let cap = Capture::new(&req);
    handler.handle_request::<_, TokioTime>(&req, cap.clone()).await;
    cap.take()
}

fn reply(w: &mut Worker, packet: &[u8]) -> Option<Vec<u8>> {
    match w.process(packet, SRC.parse().unwrap()) {
        Action::Reply(b) => Some(b.to_vec()),
        Action::Drop => None,
        Action::Forward(_) => panic!("no forwarder: nothing is forwarded"),
        Action::Signed(_) => panic!("no signed query here"),
    }
}

fn a_values(bytes: &[u8]) -> Vec<String> {
    Message::from_vec(bytes)
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_loop_answers_byte_for_byte_as_the_handler_and_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(dir.path(), "zero").await;
    let handler = Handler::new(dns.clone());
    let mut w = Worker::new(handler.clone());
    let mut twice_case = query(1, "NaS.lab.home.ARPA.", RecordType::A, None);
    twice_case[2] &= !0x01; // RD off
    let mut cd = query(1, "nas.lab.home.arpa.", RecordType::A, Some((4096, true)));
    cd[3] |= 0x10; // CD on
    let edns1 = {
        let mut m = Message::from_vec(&query(1, "nas.lab.home.arpa.", RecordType::A, Some((1232, false)))).unwrap();
        m.edns.as_mut().unwrap().set_version(1);
        m.to_vec().unwrap()
    };
    let notify = {
        let mut m = Message::from_vec(&query(1, "lab.home.arpa.", RecordType::SOA, None)).unwrap();
        m.metadata.op_code = OpCode::Notify;
        m.to_vec().unwrap()
    };
    let packets: Vec<Vec<u8>> = vec![
        query(1, "nas.lab.home.arpa.", RecordType::A, None),
        twice_case,
        cd,
        query(1, "nas.lab.home.arpa.", RecordType::A, Some((1232, false))),
        query(1, "nas.lab.home.arpa.", RecordType::A, Some((100, false))),
        query(1, "www.lab.home.arpa.", RecordType::A, None),
        query(1, "ext.lab.home.arpa.", RecordType::A, None),
        query(1, "nope.lab.home.arpa.", RecordType::A, None),
        query(1, "nas.lab.home.arpa.", RecordType::MX, None),
        query(1, "10.0.0.10.in-addr.arpa.", RecordType::PTR, None),
        query(1, "big.lab.home.arpa.", RecordType::TXT, None),
        query(1, "big.lab.home.arpa.", RecordType::TXT, Some((512, false))),
        query(1, "x.ads.example.com.", RecordType::A, None),
        query(1, "ads.example.com.", RecordType::AAAA, Some((4096, false))),
        query(1, "ads.example.com.", RecordType::MX, None),
        query(1, "example.org.", RecordType::A, None),
        query(1, "nas.lab.home.arpa.", RecordType::ANY, None),
        query(1, "lab.home.arpa.", RecordType::AXFR, None),
        query(1, "lab.home.arpa.", RecordType::SOA, None),
        edns1,
    ];
    // A NOTIFY wakes a secondary zone: answered as the handler does, never from the loop's cache.
    let want = via_handler(&handler, &notify).await.expect("the handler answers a notify");
    assert_eq!(reply(&mut w, &notify), Some(want));
    assert!(w.cache.entries.is_empty());
    for p in &packets {
        let want = via_handler(&handler, p).await.expect("the handler answers");
        for id in [1u16, 0xbeef, 7] {
            let mut p = p.clone();
            p[..2].copy_from_slice(&id.to_be_bytes());
            let mut want = want.clone();
            want[..2].copy_from_slice(&id.to_be_bytes());
            let got = reply(&mut w, &p).expect("answered");
            assert_eq!(got, want, "{:?}", Message::from_vec(&p).map(|m| m.queries));
        }
    }
    assert_eq!(w.cache.entries.len(), packets.len(), "one entry per distinct request");

    // Errors: short packets and responses dropped (unlike hickory's server, also an unparsable response), an
    // unparsable query FORMERR.
    let good = query(9, "nas.lab.home.arpa.", RecordType::A, None);
    assert!(reply(&mut w, &good[..11]).is_none());
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(reply(&mut w, &response).is_none(), "responses are not answered");
    let mut cut_response = good[..good.len() - 3].to_vec();
    cut_response[2] |= 0x80;
    assert!(reply(&mut w, &cut_response).is_none(), "an unparsable response gets no FORMERR either");
    let cut = reply(&mut w, &good[..good.len() - 3]).expect("FORMERR");
    assert_eq!((cut[..2].to_vec(), cut[3] & 0x0f), (vec![0, 9], 1));
    let mut two = good.clone();
    two[5] = 2;
    two.extend_from_slice(&good[12..]);
    assert_eq!(reply(&mut w, &two).expect("FORMERR")[3] & 0x0f, 1);
    let mut update = query(11, "lab.home.arpa.", RecordType::SOA, None);
    update[2] = 5 << 3;
    assert_eq!(reply(&mut w, &update).expect("NOTIMP")[3] & 0x0f, 4);

    // Counted in the metrics like any other query (the loop's shard is summed in): 13 local requests (ANY among
    // them), each once through the handler and three times through the loop.
    let totals = dns.metrics.totals();
    assert!(totals.contains(&("local", 13 * 4)) && totals.contains(&("blocked", 3 * 4)), "{totals:?}");
}

#[tokio::test]
async fn a_change_is_seen_by_the_very_next_query() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(dir.path(), "zero").await;
    let mut w = Worker::new(Handler::new(dns.clone()));
    let admin = Identity::new("lab.test", Role::Admin, "a").unwrap();
    let rec = |v: &str| LocalRecord::parse("app.lab.home.arpa", "A", v, None, "", None).unwrap();
    let q = query(3, "app.lab.home.arpa.", RecordType::A, None);

    assert_eq!(reply(&mut w, &q).map(|r| r[3] & 0x0f), Some(3), "NXDOMAIN before the upsert");
    assert_eq!(reply(&mut w, &q).map(|r| r[3] & 0x0f), Some(3), "cached NXDOMAIN");
    dns.upsert(&admin, rec("10.0.0.30")).unwrap();
    assert_eq!(a_values(&reply(&mut w, &q).unwrap()), vec!["10.0.0.30"]);
    assert_eq!(a_values(&reply(&mut w, &q).unwrap()), vec!["10.0.0.30"], "cached");
    dns.delete(&admin, "app.lab.home.arpa", "A", "10.0.0.30").unwrap();
    dns.upsert(&admin, rec("10.0.0.31")).unwrap();
    assert_eq!(a_values(&reply(&mut w, &q).unwrap()), vec!["10.0.0.31"], "the new value at once");
    dns.delete(&admin, "app.lab.home.arpa", "", "").unwrap();
    assert_eq!(reply(&mut w, &q).map(|r| r[3] & 0x0f), Some(3), "deleted: NXDOMAIN again");

    // The blocklist: a new list and a new response both apply to the next query.
    let blocked = query(4, "ads.example.com.", RecordType::A, None);
    assert_eq!(a_values(&reply(&mut w, &blocked).unwrap()), vec!["0.0.0.0"]);
    std::fs::write(dir.path().join("list.txt"), "other.example.com\n").unwrap();
    dns.refresh_blocklist().await;
    assert_eq!(reply(&mut w, &blocked).map(|r| r[3] & 0x0f), Some(5), "no longer blocked: REFUSED, no upstream");
    let text = std::fs::read_to_string(dir.path().join("dns.toml")).unwrap();
    std::fs::write(dir.path().join("dns.toml"), text.replace("response = \"zero\"", "response = \"nxdomain\""))
        .unwrap();
    dns.reload().unwrap();
    let other = query(5, "other.example.com.", RecordType::A, None);
    assert_eq!(reply(&mut w, &other).map(|r| r[3] & 0x0f), Some(3), "nxdomain response applies at once");
}

#[test]
fn answerable_sources() {
    assert!(answerable("127.0.0.1:53".parse().unwrap()));
    assert!(!answerable("127.0.0.1:0".parse().unwrap()));
    assert!(!answerable("0.0.0.0:53".parse().unwrap()));
    assert!(!answerable("255.255.255.255:53".parse().unwrap()));
    assert!(!answerable("[::]:53".parse().unwrap()));
}

/// A fake upstream answering every A query with 192.0.2.7 (TTL 60); counts the queries it got.
fn fake_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            for query in &q.queries {
                m.add_query(query.clone());
                if query.query_type() == RecordType::A {
                    let rdata = RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 7));
                    m.add_answer(Record::from_rdata(query.name().clone(), 60, rdata));
                }
            }
            let _ = sock.send_to(&m.to_vec().unwrap(), from);
        }
    });
    (addr, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_forwarders_cache_are_given_in_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, asked) = fake_upstream();
    let text = format!(
        "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
         [dns]\nlisten = [\"127.0.0.1:0\"]\nquery_log = true\n[forward]\nupstreams = [\"udp://{upstream}\"]\n"
    );
    std::fs::write(dir.path().join("dns.toml"), text).unwrap();
    let dns = Dns::new(Config::load(&dir.path().join("dns.toml")).unwrap(), DnsMetrics::new(&Metrics::new())).unwrap();
    let handler = Handler::new(dns.clone());
    let mut w = Worker::new(handler.clone());
    let q = query(21, "fwd.example.", RecordType::A, None);

    // A miss goes to the runtime; the handler asks the upstream and fills the forwarder's cache.
    let Action::Forward(req) = w.process(&q, SRC.parse().unwrap()) else { panic!("a miss is forwarded") };
    let cap = Capture::new(&req);
    handler.handle_request::<_, TokioTime>(&req, cap.clone()).await;
    let first = Message::from_vec(&cap.take().unwrap()).unwrap();
    assert_eq!(a_values(&first.to_vec().unwrap()), vec!["192.0.2.7"]);

    // Then the loop answers from the forwarder's cache itself, as the handler would (TTLs aside), and keeps it.
    let fast = Message::from_vec(&reply(&mut w, &q).expect("answered in the loop")).unwrap();
    let slow = Message::from_vec(&via_handler(&handler, &q).await.unwrap()).unwrap();
    assert_eq!((fast.metadata, fast.queries.clone()), (slow.metadata, slow.queries.clone()));
    assert_eq!(fast.answers.len(), 1);
    assert_eq!(fast.answers[0].data, slow.answers[0].data);
    assert!(fast.answers[0].ttl.abs_diff(slow.answers[0].ttl) <= 1 && fast.answers[0].ttl <= 60);
    assert_eq!(a_values(&reply(&mut w, &q).unwrap()), vec!["192.0.2.7"]);
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the upstream was asked once");
    let totals = dns.metrics.totals();
    assert!(totals.contains(&("forwarded", 1)) && totals.contains(&("cached", 3)), "{totals:?}");
    // And in the query log, hits from the loop's own cache included.
    let log: Vec<(String, Outcome)> = dns.query_log.recent(0).into_iter().map(|e| (e.name, e.outcome)).collect();
    let name = "fwd.example.".to_string();
    assert_eq!(
        log,
        vec![
            (name.clone(), Outcome::Cached),
            (name.clone(), Outcome::Cached),
            (name.clone(), Outcome::Cached),
            (name, Outcome::Forwarded)
        ]
    );
}

/// `[dns] allow_clients` (the default list here) is checked before the cache: a stranger asking what loopback just
/// had cached gets REFUSED, byte for byte what the handler (TCP, DoT, DoH) says, and loopback never gets that REFUSED.
#[tokio::test]
async fn a_stranger_is_refused_before_the_cache_as_the_handler_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(dir.path(), "zero").await;
    let handler = Handler::new(dns.clone());
    let mut w = Worker::new(handler.clone());
    let stranger: SocketAddr = "198.18.0.2:5353".parse().unwrap();
    let q = query(7, "nas.lab.home.arpa.", RecordType::A, Some((1232, false)));
    let ask = |w: &mut Worker, src: SocketAddr| match w.process(&q, src) {
        Action::Reply(b) => Message::from_vec(b).unwrap(),
        _ => panic!("no reply"),
    };
    for _ in 0..2 {
        let local = ask(&mut w, SRC.parse().unwrap());
        assert_eq!((local.metadata.response_code, local.answers.len()), (ResponseCode::NoError, 1));
        let refused = ask(&mut w, stranger);
        assert_eq!((refused.metadata.response_code, refused.answers.len()), (ResponseCode::Refused, 0));
        assert!(!refused.metadata.recursion_available && refused.edns.is_some(), "{refused:?}");
    }
    let udp = match w.process(&q, stranger) {
        Action::Reply(b) => b.to_vec(),
        _ => panic!("no reply"),
    };
    let req = Request::from_bytes(q.clone(), stranger, Protocol::Udp).unwrap();
    let cap = Capture::new(&req);
    handler.handle_request::<_, TokioTime>(&req, cap.clone()).await;
    assert_eq!(cap.take(), Some(udp), "the loop and the handler refuse alike");
    // A NOTIFY is not a query: its own path answers it, whoever sends it (FORMERR here: its question is not an SOA).
    let mut notify = q.clone();
    notify[2] = 0x20;
    match w.process(&notify, stranger) {
        Action::Reply(b) => assert_eq!(Message::from_vec(b).unwrap().metadata.response_code, ResponseCode::FormErr),
        _ => panic!("no reply"),
    }
    assert_eq!(dns.metrics.guard.refused_clients.get(), 4);
}

/// A `Dns` with the zone of `dns` and a keys file holding `xfr-key` (`secret`).
async fn dns_with_key(dir: &std::path::Path, secret: &[u8]) -> Arc<Dns> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let keys = format!("[[key]]\nname = \"xfr-key\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{b64}\"\n");
    agent_core::state::write_atomic(&dir.join("tsig.toml"), keys.as_bytes(), 0o600).unwrap();
    let x = "x".repeat(99);
    let text = format!("state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
         [dns]\nlisten = [\"127.0.0.1:0\"]\ntsig_keys = \"tsig.toml\"\n\
         [[zones]]\nname = \"lab.home.arpa\"\nrecords = [{{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }}, \
         {{ name = \"big\", type = \"TXT\", value = \"a{x}\" }}, {{ name = \"big\", type = \"TXT\", value = \"b{x}\" }}, \
         {{ name = \"big\", type = \"TXT\", value = \"c{x}\" }}, {{ name = \"big\", type = \"TXT\", value = \"d{x}\" }}]\n");
    std::fs::write(dir.join("dns.toml"), text).unwrap();
    Dns::new(Config::load(&dir.join("dns.toml")).unwrap(), DnsMetrics::new(&Metrics::new())).unwrap()
}

/// A signed query never touches the loop's cache and gets a signed answer (verified as a client verifies it); an
/// unknown key, a wrong secret or a stale time gets NOTAUTH with the TSIG error (BADTIME signed, the others not);
/// the same query unsigned is still answered (and cached) by the loop.
#[tokio::test]
async fn signed_queries_get_signed_answers_and_bad_ones_notauth() {
    use crate::tsig::{parse_key_name, sign_request, TsigKey};
    use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_with_key(dir.path(), SECRET).await;
    let handler = Handler::new(dns.clone());
    let mut w = Worker::new(handler.clone());
    let key = |name: &str, secret: &[u8]| {
        TsigKey::new(&parse_key_name(name).unwrap(), TsigAlgorithm::HmacSha256, secret).unwrap()
    };
    let now = u64::try_from(agent_core::clock::now_unix()).unwrap();
    // (signing key, signed at, the TSIG error wanted)
    let cases: [(TsigKey, u64, Option<TsigError>); 4] = [
        (key("xfr-key", SECRET), now, None),
        (key("nobody", SECRET), now, Some(TsigError::BadKey)),
        (key("xfr-key", b"another secret, not the real one"), now, Some(TsigError::BadSig)),
        (key("xfr-key", SECRET), now - 1000, Some(TsigError::BadTime)),
    ];
    for (signing, at, want) in cases {
        for edns in [None, Some((1232, false))] {
            // The same bytes twice: the second is not answered from any cache either.
            for _ in 0..2 {
                let mut q = query(99, "nas.lab.home.arpa.", RecordType::A, edns);
                let mut verifier = sign_request(&signing, &mut q, at);
                let Action::Signed(req) = w.process(&q, SRC.parse().unwrap()) else { panic!("{want:?}: not signed") };
                let reply = crate::signed::answer(&handler, &req, Limit::Datagram, false).await.unwrap();
                let m = Message::from_vec(&reply).unwrap();
                let sig = m.signature().expect("the answer carries a TSIG");
                assert_eq!(m.metadata.id, 99);
                match want {
                    None => {
                        assert_eq!(a_values(&reply), vec!["10.0.0.10"]);
                        assert_eq!(m.edns.is_some(), edns.is_some());
                        assert!(verifier.verify(&reply, true, now).unwrap(), "the answer verifies");
                        verifier.finish().unwrap();
                    }
                    Some(code) => {
                        assert_eq!(m.metadata.response_code, ResponseCode::NotAuth, "{code:?}");
                        assert!(m.answers.is_empty());
                        assert_eq!(sig.data.error, Some(code));
                        assert_eq!(sig.data.mac.is_empty(), code != TsigError::BadTime, "{code:?}");
                    }
                }
            }
        }
    }
    // An answer the TSIG would push past 512 octets (four TXT records of 100) is cut to fit with it, TC set, signed.
    let mut q = query(77, "big.lab.home.arpa.", RecordType::TXT, None);
    let unsigned = via_handler(&handler, &q).await.unwrap();
    assert_eq!(Message::from_vec(&unsigned).unwrap().answers.len(), 4, "the whole answer fits unsigned");
    let mut verifier = sign_request(&key("xfr-key", SECRET), &mut q, now);
    let Action::Signed(req) = w.process(&q, SRC.parse().unwrap()) else { panic!("not signed") };
    let cut = crate::signed::answer(&handler, &req, Limit::Datagram, false).await.unwrap();
    let m = Message::from_vec(&cut).unwrap();
    assert!(cut.len() <= 512 && m.metadata.truncation && m.answers.len() < 4, "{} octets: {m:?}", cut.len());
    assert!(verifier.verify(&cut, true, now).unwrap(), "the truncated answer is signed");
    // Unsigned, the same question is the loop's: answered and cached as before.
    let q = query(5, "nas.lab.home.arpa.", RecordType::A, None);
    let first = reply(&mut w, &q).unwrap();
    assert_eq!(reply(&mut w, &q), Some(first.clone()));
    assert!(Message::from_vec(&first).unwrap().signature().is_none());
}
