//! NOTIFY out (RFC 1996): tells a zone's `notify` peers over UDP that its serial changed, TSIG-signed when the zone
//! has a key, retried with backoff until a peer acknowledges (a newer serial supersedes an older one in flight), and
//! counts what is still unacknowledged per zone. Knows NOTIFY messages and UDP; must not know zones, the config file
//! or the query path.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};

use crate::metrics::XfrMetrics;
use crate::tsig::{self, TsigKey};

/// How long one attempt waits for the acknowledgement.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between attempts: doubles from the first to the last value.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Attempts before giving up on one serial (about half an hour with the backoff above).
const MAX_ATTEMPTS: u32 = 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    serial: u32,
    acked: bool,
}

/// NOTIFYs in flight, by zone and peer.
#[derive(Default, Clone)]
pub(crate) struct Notifier {
    state: Arc<Mutex<HashMap<(Name, SocketAddr), Pending>>>,
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Name, SocketAddr), Pending>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// NOTIFYs not yet acknowledged for `zone`.
    pub(crate) fn pending(&self, zone: &Name) -> u32 {
        self.lock().iter().filter(|((z, _), p)| z == zone && !p.acked).count() as u32
    }

    /// Sends a NOTIFY for `soa` (the zone's apex SOA) to every peer, each on its own task, retried until
    /// acknowledged or superseded. Peers no longer listed for the zone are forgotten. Needs a tokio runtime (without
    /// one, nothing is sent).
    pub(crate) fn send(
        &self,
        zone: &Name,
        soa: &Record,
        peers: &[SocketAddr],
        key: Option<TsigKey>,
        metrics: &XfrMetrics,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let serial = match &soa.data {
            hickory_proto::rr::RData::SOA(s) => s.serial,
            _ => return,
        };
        {
            let mut st = self.lock();
            st.retain(|(z, p), _| z != zone || peers.contains(p));
            for p in peers {
                st.insert((zone.clone(), *p), Pending { serial, acked: false });
            }
        }
        for peer in peers {
            let job = Job {
                state: self.state.clone(),
                zone: zone.clone(),
                soa: soa.clone(),
                serial,
                peer: *peer,
                key: key.clone(),
                metrics: metrics.clone(),
            };
            rt.spawn(job.run());
        }
    }
}

struct Job {
    state: Arc<Mutex<HashMap<(Name, SocketAddr), Pending>>>,
    zone: Name,
    soa: Record,
    serial: u32,
    peer: SocketAddr,
    key: Option<TsigKey>,
    metrics: XfrMetrics,
}

impl Job {
    /// Whether this job's serial is still the one to announce to its peer.
    fn current(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.get(&(self.zone.clone(), self.peer)).is_some_and(|p| p.serial == self.serial && !p.acked)
    }

    async fn run(self) {
        let zone = self.zone.to_ascii();
        let mut backoff = BACKOFF_FIRST;
        for attempt in 1..=MAX_ATTEMPTS {
            if !self.current() {
                return;
            }
            match self.attempt().await {
                Ok(()) => {
                    let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(p) = st.get_mut(&(self.zone.clone(), self.peer)).filter(|p| p.serial == self.serial) {
                        p.acked = true;
                    }
                    drop(st);
                    self.metrics.notify(&zone, "ok");
                    tracing::info!(zone, peer = %self.peer, serial = self.serial, attempt, "notify acknowledged");
                    return;
                }
                Err((result, why)) => {
                    self.metrics.notify(&zone, result);
                    tracing::warn!(zone, peer = %self.peer, serial = self.serial, attempt, "notify not acknowledged: {why}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.metrics.notify(&zone, "gave_up");
        tracing::warn!(zone, peer = %self.peer, serial = self.serial, "notify: giving up after {MAX_ATTEMPTS} attempts");
    }

    /// One NOTIFY and its acknowledgement. `Err` is (metric result, reason).
    async fn attempt(&self) -> Result<(), (&'static str, String)> {
        let err = |e: std::io::Error| ("error", e.to_string());
        let id: u16 = rand_id();
        let mut msg = notify_message(id, &self.zone, &self.soa).map_err(|e| ("error", e))?;
        let mut verifier =
            self.key.as_ref().map(|k| tsig::sign_request(k, &mut msg, agent_core::clock::now_unix() as u64));
        let local: IpAddr =
            if self.peer.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await.map_err(err)?;
        sock.send_to(&msg, self.peer).await.map_err(err)?;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
        loop {
            let (n, from) = match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Ok(r) => r.map_err(err)?,
                Err(_) => return Err(("timeout", format!("no answer within {ATTEMPT_TIMEOUT:?}"))),
            };
            if from != self.peer {
                continue;
            }
            let Ok(reply) = Message::from_vec(&buf[..n]) else { continue };
            if reply.id != id || reply.message_type != MessageType::Response {
                continue;
            }
            if let Some(v) = verifier.as_mut() {
                v.verify(&buf[..n], reply.signature().is_some(), agent_core::clock::now_unix() as u64)
                    .map_err(|e| ("error", format!("the answer's {e}")))?;
            }
            if reply.op_code != OpCode::Notify || reply.response_code != ResponseCode::NoError {
                return Err(("error", format!("answered {} ({:?})", reply.response_code, reply.op_code)));
            }
            return Ok(());
        }
    }
}

/// A message id nobody can predict (it carries no secret, but answers are matched by it).
fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_be_bytes(b)
}

/// A NOTIFY for `zone`: AA set, the question `zone SOA IN`, the new SOA in the answer section (RFC 1996 §3.7).
pub(crate) fn notify_message(id: u16, zone: &Name, soa: &Record) -> Result<Vec<u8>, String> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(zone.clone(), RecordType::SOA));
    m.add_answer(soa.clone());
    m.to_vec().map_err(|e| format!("cannot encode the notify: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::RData;

    fn soa(serial: u32) -> Record {
        let z = Name::from_ascii("lab.").unwrap();
        Record::from_rdata(z.clone(), 60, RData::SOA(SOA::new(z.clone(), z, serial, 1, 1, 1, 1)))
    }

    /// A peer that acknowledges (with the id and opcode of the NOTIFY) clears the zone's pending count; a silent
    /// peer keeps it pending; a newer serial supersedes the old one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notifies_until_acknowledged() {
        let zone = Name::from_ascii("lab.").unwrap();
        let acker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ack_addr = acker.local_addr().unwrap();
        let got = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = acker.recv_from(&mut buf).unwrap();
            let m = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::new(m.id, MessageType::Response, OpCode::Notify);
            r.add_query(m.queries[0].clone());
            acker.send_to(&r.to_vec().unwrap(), from).unwrap();
            (m.op_code, m.authoritative, m.answers.len())
        });
        let n = Notifier::default();
        let metrics = XfrMetrics::default();
        n.send(&zone, &soa(5), &[ack_addr, silent.local_addr().unwrap()], None, &metrics);
        assert_eq!(n.pending(&zone), 2);
        assert_eq!(tokio::task::spawn_blocking(move || got.join().unwrap()).await.unwrap(), (OpCode::Notify, true, 1));
        let t0 = std::time::Instant::now();
        while n.pending(&zone) != 1 && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n.pending(&zone), 1, "the silent peer stays pending");
        n.send(&zone, &soa(6), &[silent.local_addr().unwrap()], None, &metrics);
        assert_eq!(n.pending(&zone), 1, "the acknowledged peer that is no longer listed is forgotten");
        assert_eq!(n.lock().values().map(|p| p.serial).collect::<Vec<_>>(), vec![6]);
    }
}
