//! The messages of an outgoing zone transfer (RFC 5936 AXFR, RFC 1995 IXFR): records packed into messages of about
//! [`MESSAGE_TARGET`] bytes with name compression, the question in the first message only, and error replies.
//! Knows the DNS wire format of transfer responses; must not know sockets, TSIG keys, policy or where records come
//! from.

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::journal::Delta;

/// A transfer message is closed once it holds this many bytes (compression pointers reach the first 16 KiB, so
/// bigger messages compress worse; TSIG and TCP framing cost per message).
pub(crate) const MESSAGE_TARGET: usize = 16 * 1024;
/// Names one message may hold: hickory's encoder compresses the first 120 names of a message only (a limit against
/// decompression bombs, as in Unbound), so a message is closed before that and every name in it is compressed.
const NAMES_PER_MESSAGE: usize = 118;

/// Names a record puts in a message (its owner and the names in its data).
fn names_in(r: &Record) -> usize {
    1 + match r.record_type() {
        RecordType::SOA => 2,
        RecordType::CNAME | RecordType::NS | RecordType::PTR | RecordType::MX | RecordType::SRV => 1,
        _ => 0,
    }
}
/// Room kept for the TSIG record under the 65535-byte limit.
const TSIG_ROOM: usize = 512;

/// Packs the records of one transfer into messages.
pub(crate) struct Stream {
    id: u16,
    qname: Name,
    qtype: RecordType,
    first: bool,
    /// Bytes and messages produced so far (TSIG not counted).
    pub bytes: u64,
    pub messages: u64,
}

impl Stream {
    pub(crate) fn new(id: u16, qname: &Name, qtype: RecordType) -> Stream {
        Stream { id, qname: qname.clone(), qtype, first: true, bytes: 0, messages: 0 }
    }

    /// Encodes the next message from `records`: as many as fit in about [`MESSAGE_TARGET`] bytes (at least one),
    /// names compressed within the message. A record too big for any message is skipped.
    /// `records[*pos..]` are those not sent yet; `pos` moves past the ones encoded.
    pub(crate) fn next_message(&mut self, records: &[&Record], pos: &mut usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(MESSAGE_TARGET + 2048);
        let mut answers: u16 = 0;
        let mut names = usize::from(self.first);
        {
            let mut enc = BinEncoder::new(&mut buf);
            enc.set_max_size((u16::MAX as usize - TSIG_ROOM) as u16);
            let _ = Header {
                metadata: Metadata::new(0, MessageType::Response, OpCode::Query),
                counts: HeaderCounts::default(),
            }
            .emit(&mut enc);
            if self.first {
                let _ = self.qname.emit(&mut enc);
                let _ = enc.emit_u16(u16::from(self.qtype));
                let _ = enc.emit_u16(u16::from(DNSClass::IN));
            }
            while enc.len() < MESSAGE_TARGET && answers < u16::MAX {
                let Some(r) = records.get(*pos) else { break };
                if answers > 0 && names + names_in(r) > NAMES_PER_MESSAGE {
                    break;
                }
                let mark = enc.offset();
                if r.emit(&mut enc).is_err() {
                    enc.set_offset(mark);
                    enc.trim();
                    if answers == 0 {
                        tracing::warn!(name = %r.name, "a record too big for a transfer message: skipped");
                        *pos += 1;
                        continue;
                    }
                    break;
                }
                *pos += 1;
                answers += 1;
                names += names_in(r);
            }
        }
        let mut meta = Metadata::new(self.id, MessageType::Response, OpCode::Query);
        meta.authoritative = true;
        let counts = HeaderCounts { queries: u16::from(self.first), answers, authorities: 0, additionals: 0 };
        let mut head = Vec::with_capacity(12);
        let _ = Header { metadata: meta, counts }.emit(&mut BinEncoder::new(&mut head));
        buf[..12].copy_from_slice(&head);
        self.first = false;
        self.bytes += buf.len() as u64;
        self.messages += 1;
        buf
    }
}

/// An error reply to a transfer request: the question echoed, `rcode`, no records.
pub(crate) fn error_reply(id: u16, qname: &Name, qtype: RecordType, rcode: ResponseCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    {
        let mut enc = BinEncoder::new(&mut out);
        let _ = enc.emit_vec(&[0u8; 12]);
        let _ = qname.emit(&mut enc);
        let _ = enc.emit_u16(u16::from(qtype));
        let _ = enc.emit_u16(u16::from(DNSClass::IN));
    }
    let mut meta = Metadata::new(id, MessageType::Response, OpCode::Query);
    meta.response_code = rcode;
    let counts = HeaderCounts { queries: 1, answers: 0, authorities: 0, additionals: 0 };
    let mut head = Vec::with_capacity(12);
    let _ = Header { metadata: meta, counts }.emit(&mut BinEncoder::new(&mut head));
    out[..12].copy_from_slice(&head);
    out
}

/// `soa` with another serial.
pub(crate) fn with_serial(soa: &Record, serial: u32) -> Record {
    let mut r = soa.clone();
    if let RData::SOA(s) = &mut r.data {
        s.serial = serial;
    }
    r
}

/// The records of an IXFR answer (RFC 1995 §4): the new SOA, then per change the old SOA, the removed records,
/// the new SOA of that change and the added records, then the new SOA again.
pub(crate) fn ixfr_records(soa: &Record, deltas: &[std::sync::Arc<Delta>]) -> Vec<Record> {
    let mut out = vec![soa.clone()];
    for d in deltas {
        out.push(with_serial(soa, d.from));
        out.extend(Delta::records(&d.removed));
        out.push(with_serial(soa, d.to));
        out.extend(Delta::records(&d.added));
    }
    out.push(soa.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::{A, SOA};

    /// Thousands of records are split into several messages, each within the size limits, names compressed, the
    /// question only in the first, every record exactly once and in order.
    #[test]
    fn transfers_split_into_compressed_messages() {
        let origin = Name::from_ascii("lab.home.arpa.").unwrap();
        let soa =
            Record::from_rdata(origin.clone(), 60, RData::SOA(SOA::new(origin.clone(), origin.clone(), 7, 1, 1, 1, 1)));
        let mut recs = vec![soa.clone()];
        for i in 0..5000u32 {
            let name = Name::from_ascii(format!("host-{i}.lab.home.arpa.")).unwrap();
            recs.push(Record::from_rdata(name, 60, RData::A(A::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))));
        }
        recs.push(soa);
        let refs: Vec<&Record> = recs.iter().collect();
        let mut pos = 0;
        let mut s = Stream::new(42, &origin, RecordType::AXFR);
        let mut got = Vec::new();
        let mut msgs = 0;
        while pos < refs.len() {
            let m = s.next_message(&refs, &mut pos);
            assert!(m.len() <= MESSAGE_TARGET + 600 && m.len() <= u16::MAX as usize);
            let parsed = Message::from_vec(&m).unwrap();
            assert_eq!(parsed.id, 42);
            assert!(parsed.authoritative);
            assert_eq!(parsed.queries.len(), usize::from(msgs == 0));
            got.extend(parsed.answers);
            msgs += 1;
        }
        assert!(msgs > 3, "{msgs} messages");
        assert_eq!(got.len(), recs.len());
        assert!(got.iter().zip(&recs).all(|(a, b)| a == b));
        // compressed: far less than the uncompressed size (each owner name is 25+ bytes)
        assert!(s.bytes < 5002 * 28, "{} bytes", s.bytes);
        assert_eq!(s.messages, msgs);
        let e = Message::from_vec(&error_reply(9, &origin, RecordType::AXFR, ResponseCode::Refused)).unwrap();
        assert_eq!((e.id, e.response_code, e.queries.len()), (9, ResponseCode::Refused, 1));
    }
}
