//! Who may ask, and how fast: `[dns] allow_clients` (queries from anyone else are answered REFUSED and counted,
//! never logged one by one) and `[dns.rrl]` response rate limiting on UDP. [`Guard`] is the shared, reloadable
//! policy, consulted at the entry of `Handler::handle_request` (TCP, DoT, DoH, forwarded UDP); [`UdpGuard`] is one
//! UDP loop's copy of it with that loop's own rate-limit table (state per SO_REUSEPORT socket: a client spread
//! over several sockets by the kernel's hash gets up to that many budgets; one client's flow hashes to one socket).
//! Only QUERY messages are subject to `allow_clients`, and not zone transfers (AXFR/IXFR over TCP): NOTIFY and
//! transfers have their own allow lists.
//! Knows client addresses, opcodes and a response's header; must not know sockets, config files or the answers.

pub(crate) mod allow;
pub(crate) mod config;
pub(crate) mod rrl;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::metrics::GuardCounters;
use allow::PrefixList;
use rrl::{RrlConfig, RrlTable, Verdict};

/// The policy in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allow: PrefixList,
    pub rrl: RrlConfig,
}

impl Policy {
    /// One line for the log and the bench's header.
    pub(crate) fn describe(&self) -> String {
        format!("allow_clients [{}]; rrl {}", self.allow.describe(), self.rrl.describe())
    }
}

/// The shared, reloadable policy and its counters.
pub(crate) struct Guard {
    policy: ArcSwap<Policy>,
    /// Bumped after every change of `policy` (the UDP loops compare it on every datagram: one atomic load).
    version: AtomicU64,
    counters: GuardCounters,
}

/// Whether `allow_clients` applies to a message: a QUERY that is not a zone transfer.
fn subject(op: OpCode, qtype: RecordType) -> bool {
    op == OpCode::Query && !matches!(qtype, RecordType::AXFR | RecordType::IXFR)
}

impl Guard {
    pub(crate) fn new(policy: Policy, counters: GuardCounters) -> Guard {
        Guard { policy: ArcSwap::from_pointee(policy), version: AtomicU64::new(0), counters }
    }

    /// Puts `policy` in force; whether it changed.
    pub(crate) fn set(&self, policy: Policy) -> bool {
        if *self.policy.load_full() == policy {
            return false;
        }
        self.policy.store(Arc::new(policy));
        self.version.fetch_add(1, Ordering::Release);
        true
    }

    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Whether a message with this opcode and question type from `client` is answered; a refusal is counted.
    pub(crate) fn admits(&self, client: IpAddr, op: OpCode, qtype: RecordType) -> bool {
        if !subject(op, qtype) || self.policy.load().allow.contains(client) {
            return true;
        }
        self.counters.refused_clients.inc();
        false
    }
}

/// The REFUSED reply to a client outside `allow_clients`: the question, no records, no RA.
pub(crate) fn refused<'q>(
    request: &'q Request,
    edns: Option<&'q Edns>,
) -> MessageResponse<
    'q,
    'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
> {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.response_code = ResponseCode::Refused;
    meta.recursion_available = false;
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = edns {
        builder.edns(e);
    }
    builder.build_no_records(meta)
}

/// One UDP loop's guard: a copy of the policy (refreshed when the shared one changes) and its rate-limit table.
pub(crate) struct UdpGuard {
    version: u64,
    policy: Arc<Policy>,
    table: Option<RrlTable>,
    epoch: Instant,
    counters: GuardCounters,
    /// A truncated reply being sent.
    slip: Vec<u8>,
}

impl UdpGuard {
    pub(crate) fn new(shared: &Guard) -> UdpGuard {
        let version = shared.version.load(Ordering::Acquire);
        let policy = shared.policy();
        let epoch = Instant::now();
        let table = RrlTable::new(&policy.rrl, epoch);
        UdpGuard { version, policy, table, epoch, counters: shared.counters.clone(), slip: Vec::new() }
    }

    /// Whether the datagram `packet` (at least a header) from `client` is answered, following `shared` first if it
    /// changed. A refusal is counted. One atomic load and a scan of the allow list; no allocation.
    pub(crate) fn admits(&mut self, shared: &Guard, packet: &[u8], client: IpAddr) -> bool {
        let version = shared.version.load(Ordering::Acquire);
        if version != self.version {
            let policy = shared.policy();
            if policy.rrl != self.policy.rrl {
                self.table = RrlTable::new(&policy.rrl, self.epoch);
            }
            (self.version, self.policy) = (version, policy);
        }
        // QR and the opcode: the top 5 bits of byte 2. A response (QR=1) is dropped later, whoever sends it; AXFR and
        // IXFR over UDP are refused whoever asks, so only the opcode matters here.
        let query = packet.get(2).is_some_and(|b| b & 0xf8 == 0);
        if !query || self.policy.allow.contains(client) {
            return true;
        }
        self.counters.refused_clients.inc();
        false
    }

    /// What to send for `reply` to `request` from `client` at `now`: the reply, its truncated form, or nothing.
    pub(crate) fn limit<'a>(
        &'a mut self,
        request: &[u8],
        reply: &'a [u8],
        client: IpAddr,
        now: Instant,
    ) -> Option<&'a [u8]> {
        let Some(table) = self.table.as_mut() else { return Some(reply) };
        if table.config().exempt.contains(client) {
            return Some(reply);
        }
        match table.charge(client, rrl::kind_of(request, reply), now) {
            Verdict::Send => Some(reply),
            Verdict::Drop => {
                self.counters.rrl_dropped.inc();
                None
            }
            Verdict::Slip => {
                self.counters.rrl_slipped.inc();
                rrl::truncate(reply, &mut self.slip);
                Some(&self.slip)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(flags: u8, qtype: u16) -> Vec<u8> {
        let mut p = vec![0, 7, flags, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0];
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p
    }

    fn policy(allow: &[&str], rate: u32) -> Policy {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Policy {
            allow: PrefixList::parse("k", &allow, false).unwrap(),
            rrl: RrlConfig {
                responses_per_second: rate,
                slip: 1,
                exempt: PrefixList::parse("k", &[], true).unwrap(),
                ..RrlConfig::default()
            },
        }
    }

    #[test]
    fn who_is_subject_to_allow_clients() {
        let counters = GuardCounters::default();
        let g = Guard::new(policy(&["10.0.0.0/8"], 0), counters.clone());
        let stranger: IpAddr = "198.18.0.2".parse().unwrap();
        let cases = [
            (OpCode::Query, RecordType::A, false),
            (OpCode::Query, RecordType::ANY, false),
            (OpCode::Query, RecordType::AXFR, true),
            (OpCode::Query, RecordType::IXFR, true),
            (OpCode::Notify, RecordType::SOA, true),
            (OpCode::Update, RecordType::SOA, true),
        ];
        for (op, t, want) in cases {
            assert_eq!(g.admits(stranger, op, t), want, "{op:?} {t}");
        }
        assert!(g.admits("10.1.1.1".parse().unwrap(), OpCode::Query, RecordType::A));
        assert_eq!(counters.refused_clients.get(), 2);

        let mut u = UdpGuard::new(&g);
        // (flags byte 2, admitted): RD query, plain query, NOTIFY (opcode 4), UPDATE (5), a response (dropped by the
        // loop, not refused).
        for (flags, want) in [(0x01, false), (0x00, false), (0x20, true), (0x28, true), (0x80, true)] {
            assert_eq!(u.admits(&g, &query(flags, 1), stranger), want, "flags {flags:#x}");
        }
        assert_eq!(counters.refused_clients.get(), 4);
    }

    #[test]
    fn udp_loops_follow_a_reload() {
        let counters = GuardCounters::default();
        let g = Guard::new(policy(&["10.0.0.0/8"], 0), counters.clone());
        let mut u = UdpGuard::new(&g);
        let (q, reply) = (query(1, 1), vec![0, 7, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]);
        let client: IpAddr = "198.18.0.2".parse().unwrap();
        let now = Instant::now();
        assert!(!u.admits(&g, &q, client));
        assert_eq!(u.limit(&q, &reply, client, now), Some(&reply[..]), "rrl off");
        assert!(!g.set(policy(&["10.0.0.0/8"], 0)), "the same policy is no change");
        assert!(g.set(policy(&["10.0.0.0/8", "198.18.0.0/15"], 1)));
        assert!(u.admits(&g, &q, client));
        assert_eq!(u.limit(&q, &reply, client, now), Some(&reply[..]));
        // Slip 1: the second in the same instant goes truncated.
        assert_eq!(u.limit(&q, &reply, client, now).map(|r| r[2]), Some(0x83));
        assert_eq!((counters.rrl_slipped.get(), counters.rrl_dropped.get()), (1, 0));
    }
}
