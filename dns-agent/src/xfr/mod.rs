//! Zone transfers, primary side: per-zone serials and journal (`journal`), AXFR and IXFR answered over TCP to the
//! peers a zone's `transfer` policy allows with the TSIG it asks for (`out` packs the messages), NOTIFY sent to its
//! `notify` peers (`notify`). Knows transfers; must not know proto/tonic, listeners, or how other queries are answered.

pub(crate) mod journal;
pub(crate) mod notify;
pub(crate) mod out;
pub(crate) mod policy;

use std::net::SocketAddr;
use std::time::Instant;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::AsyncWrite;

use crate::metrics::XfrMetrics;
use crate::service::Dns;
use crate::store::StoreError;
use crate::tcp::{write_frame, write_raw};
use crate::tsig::{self, ResponseSigner};
use crate::zones::ZoneSet;

/// The primary side's state: serials and journals, and the NOTIFYs in flight.
pub(crate) struct Primary {
    journal: journal::Journal,
    pub notifier: notify::Notifier,
}

impl Primary {
    pub(crate) fn open(state_dir: &std::path::Path) -> Result<Primary, StoreError> {
        Ok(Primary { journal: journal::Journal::open(state_dir)?, notifier: notify::Notifier::default() })
    }

    /// Gives every configured zone of a freshly built `zones` its serial (unchanged content keeps it, changed
    /// content gets the next one, journaled) and returns the zones whose content changed.
    pub(crate) fn version(&self, zones: &mut ZoneSet, metrics: &XfrMetrics) -> Vec<Name> {
        let initial = agent_core::clock::now_unix() as u32;
        let mut serials = std::collections::HashMap::new();
        let mut changed = Vec::new();
        let origins: Vec<Name> = zones.origins().cloned().collect();
        for origin in origins {
            let Some((_, records)) = zones.zone_records(&origin) else { continue };
            let content = journal::content(records);
            let v = self.journal.version(&origin, content, initial);
            if v.changed {
                changed.push(origin.clone());
            }
            metrics.serial(&origin.to_ascii(), "primary", v.serial);
            serials.insert(origin, v.serial);
        }
        zones.set_serials(|o| serials.get(o).copied());
        changed
    }
}

/// The serial of a zone's SOA record.
fn soa_serial(r: &hickory_proto::rr::Record) -> Option<u32> {
    match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}

/// Answers one AXFR or IXFR request read from a TCP connection: REFUSED unless the zone is served here and lets
/// `peer` transfer it; NOTAUTH (with the TSIG error) when its key is missing or wrong; otherwise the zone (AXFR), the
/// changes since the client's serial (IXFR, AXFR when the journal does not reach back), or just the SOA (current).
pub(crate) async fn serve_transfer<W: AsyncWrite + Unpin + Send>(
    dns: &Dns,
    raw: &[u8],
    request: &Message,
    peer: SocketAddr,
    w: &mut W,
) -> std::io::Result<()> {
    let started = Instant::now();
    let Some(q) = request.queries.first() else { return Ok(()) };
    let qname = q.name().to_lowercase();
    let qtype = q.query_type();
    let zone = qname.to_ascii();
    let asked = if qtype == RecordType::IXFR { "ixfr" } else { "axfr" };
    let metrics = &dns.metrics.xfr;
    let cfg = dns.config();
    let now = agent_core::clock::now_unix() as u64;
    let id = request.metadata.id;
    let refuse = |why: &str| {
        tracing::warn!(%peer, zone, kind = asked, "zone transfer refused: {why}");
        metrics.transfer(&zone, "out", asked, "refused");
        out::error_reply(id, &qname, qtype, ResponseCode::Refused)
    };
    let Some(policy) = cfg.transfers.get(&qname).filter(|p| !p.allow.is_empty()) else {
        return write_frame(w, &refuse("the zone is not served here or allows no transfers")).await;
    };
    if !policy.allows(peer.ip()) {
        return write_frame(w, &refuse("the peer is not in the zone's transfer.allow")).await;
    }
    let notauth = |why: String| {
        tracing::warn!(%peer, zone, kind = asked, "zone transfer refused (NOTAUTH): {why}");
        metrics.transfer(&zone, "out", asked, "notauth");
        out::error_reply(id, &qname, qtype, ResponseCode::NotAuth)
    };
    let mut signer: Option<ResponseSigner> = match (request.signature(), &policy.tsig) {
        (None, None) => None,
        (None, Some(k)) => return write_frame(w, &notauth(format!("no TSIG (the zone asks for key {k})"))).await,
        (Some(_), want) => match tsig::verify_request(&cfg.dns.tsig, raw, now) {
            Err(rejection) => {
                let mut msg = notauth(rejection.failure.to_string());
                rejection.append_error_tsig(&mut msg, now);
                return write_frame(w, &msg).await;
            }
            Ok(s) => match want {
                Some(k) if k != s.key().name() => {
                    let rejection = tsig::RequestRejection::bad_key(s.key().name());
                    let mut msg = notauth(format!("signed with key {}, the zone asks for {k}", s.key().name()));
                    rejection.append_error_tsig(&mut msg, now);
                    return write_frame(w, &msg).await;
                }
                _ => Some(s),
            },
        },
    };

    let zones = std::sync::Arc::clone(&*dns.zones());
    let Some((soa, rest)) = zones.zone_records(&qname) else {
        return write_frame(w, &refuse("the zone is not served here")).await;
    };
    let current = soa_serial(soa).unwrap_or(0);
    // IXFR: the client's serial is the SOA in the authority section.
    let client = (qtype == RecordType::IXFR)
        .then(|| request.authorities.iter().find_map(soa_serial))
        .flatten();
    let mut stream = out::Stream::new(id, &qname, qtype);
    if let Some(c) = client.filter(|c| *c == current || journal::serial_lt(current, *c)) {
        // Current (or ahead of us): just the SOA.
        send_all(&mut stream, &[soa], &mut signer, now, w).await?;
        tracing::debug!(%peer, zone, client = c, "ixfr client is current");
        log_served(&zone, peer, "ixfr", 1, &stream, started);
        metrics.transfer(&zone, "out", "ixfr", "ok");
        return Ok(());
    }
    let deltas = client.and_then(|c| dns.xfr.journal.since(&qname, c)).filter(|(cur, _)| *cur == current);
    let (kind, sent_records) = match deltas {
        Some((_, deltas)) => {
            let recs = out::ixfr_records(soa, &deltas);
            let refs: Vec<&hickory_proto::rr::Record> = recs.iter().collect();
            send_all(&mut stream, &refs, &mut signer, now, w).await?;
            ("ixfr", refs.len() as u64)
        }
        None => {
            // Collected first: an iterator of closures held across the writes' awaits is not `Send` to the compiler.
            let all: Vec<&hickory_proto::rr::Record> =
                std::iter::once(soa).chain(rest).chain(std::iter::once(soa)).collect();
            send_all(&mut stream, &all, &mut signer, now, w).await?;
            ("axfr", all.len() as u64)
        }
    };
    log_served(&zone, peer, kind, sent_records, &stream, started);
    metrics.transfer(&zone, "out", kind, "ok");
    Ok(())
}

fn log_served(zone: &str, peer: SocketAddr, kind: &str, records: u64, s: &out::Stream, started: Instant) {
    tracing::info!(
        %peer,
        zone,
        kind,
        records,
        messages = s.messages,
        bytes = s.bytes,
        ms = started.elapsed().as_millis() as u64,
        "zone transfer served"
    );
}

async fn send_all<W: AsyncWrite + Unpin + Send>(
    stream: &mut out::Stream,
    records: &[&hickory_proto::rr::Record],
    signer: &mut Option<ResponseSigner>,
    now: u64,
    w: &mut W,
) -> std::io::Result<()> {
    // Messages are small (see `out`): several go out in one write.
    const BATCH: usize = 60 * 1024;
    let mut pos = 0;
    let mut batch = Vec::with_capacity(BATCH + 4096);
    loop {
        let mut msg = stream.next_message(records, &mut pos);
        if let Some(s) = signer.as_mut() {
            s.sign(&mut msg, now);
        }
        batch.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        batch.extend_from_slice(&msg);
        let done = pos >= records.len();
        if done || batch.len() >= BATCH {
            write_raw(w, &batch).await?;
            batch.clear();
        }
        if done {
            return Ok(());
        }
    }
}
