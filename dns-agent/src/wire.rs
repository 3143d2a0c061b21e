//! Responses as wire bytes for every transport: the size limit of the transport, names compressed against the
//! question (hickory's emitter copies the question as raw bytes and records no pointer into its name, so an answer
//! for a 255-octet name would repeat it whole), EDNS padding (RFC 7830, the 468-octet blocks of RFC 8467) for the
//! encrypted transports, the smallest TTL of an answer (DoH's Cache-Control), and `Capture`, which keeps what
//! `Handler` sends for one request as those bytes. Knows hickory's message types and the DNS wire format; must not
//! know sockets, HTTP or what the answers are.

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::ProtoError;
use hickory_server::net::NetError;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

/// Where a response goes, which decides its size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// UDP: at most the EDNS payload size (512 octets without EDNS); longer answers are truncated with TC set.
    Datagram,
    /// TCP, DoT, DoH: up to 65535 octets.
    Stream,
}

/// The block length responses are padded to (RFC 8467 section 4.1, "Block-Length Padding").
pub(crate) const RESPONSE_PAD_BLOCK: usize = 468;
/// Size of the DNS header; the question starts right after it.
const HEADER_LEN: usize = 12;
/// Type code of the OPT pseudo-record.
const OPT: u16 = 41;
/// Option code of EDNS padding (RFC 7830).
const PADDING: u16 = 12;

/// Encodes `response` within `limit`, compressing its names against `question` (the raw question section of the
/// request, `Queries::as_bytes`); a bare SERVFAIL if encoding fails (as hickory's own response handlers do).
pub(crate) fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    question: &[u8],
    limit: Limit,
) -> Result<(ResponseInfo, Vec<u8>), ProtoError> {
    let id = response.metadata().id;
    // Names are written whole before they are compressed, so the message is built without a limit and cut to the
    // datagram size afterwards (a 255-octet name that compresses to a pointer would otherwise not fit in 512).
    let max = match limit {
        Limit::Datagram => response.edns().map(|e| e.max_payload()).unwrap_or(512),
        Limit::Stream => u16::MAX,
    };
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(u16::MAX);
    register_question(&mut encoder, question);
    let error = match response.destructive_emit(&mut encoder) {
        Ok(info) if bytes.len() <= usize::from(max) => return Ok((info, bytes)),
        Ok(_) => match truncate(&bytes, usize::from(max)) {
            Some(cut) => match Header::read(&mut BinDecoder::new(&cut)) {
                Ok(header) => return Ok((ResponseInfo::from(header), cut)),
                Err(e) => ProtoError::from(e),
            },
            None => ProtoError::MaxBufferSizeExceeded(usize::from(max)),
        },
        Err(e) => e,
    };
    tracing::error!(%error, "error encoding message");
    bytes.clear();
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(512);
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header { metadata, counts: HeaderCounts::default() };
    header.emit(&mut encoder)?;
    Ok((ResponseInfo::from(header), bytes))
}

/// Makes every suffix of the question's name a target for compression pointers: writes the header's room and the
/// name where the emitter will write them again (the same bytes), records a pointer candidate per label, and
/// rewinds. A name with a pointer or an extended label type, or cut short, registers nothing.
fn register_question(encoder: &mut BinEncoder<'_>, question: &[u8]) {
    let mut starts = [0usize; 128];
    let (mut count, mut i) = (0, 0);
    loop {
        match question.get(i) {
            Some(0) => break,
            Some(&len) if len <= 63 && count < starts.len() => {
                starts[count] = i;
                count += 1;
                i += 1 + usize::from(len);
            }
            _ => return,
        }
    }
    if count == 0 || encoder.emit_vec(&[0; HEADER_LEN]).is_err() || encoder.emit_vec(&question[..i]).is_err() {
        encoder.set_offset(0);
        return;
    }
    let end = HEADER_LEN + i;
    for &start in &starts[..count] {
        encoder.store_label_pointer(HEADER_LEN + start, end);
    }
    encoder.set_offset(0);
}

/// Whether the query carries the EDNS padding option: only then is its response padded (RFC 8467 section 4.1).
pub(crate) fn wants_padding(edns: Option<&Edns>) -> bool {
    edns.is_some_and(|e| e.option(EdnsCode::Padding).is_some())
}

/// One resource record's place in a message.
struct Rr {
    /// Offset of its owner name.
    start: usize,
    /// 0 answer, 1 authority, 2 additional.
    section: u8,
    rtype: u16,
    ttl: u32,
    /// Offset of the RDLENGTH field.
    rdlength_at: usize,
    /// Offset just past the record.
    end: usize,
}

/// Offset just past the name at `i` (a pointer ends it); `None` if cut short or of an unknown label type.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        match len & 0xC0 {
            0 if len == 0 => return Some(i + 1),
            0 => i += 1 + usize::from(len),
            0xC0 => return (i + 2 <= msg.len()).then_some(i + 2),
            _ => return None,
        }
    }
}

fn u16_at(msg: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]))
}

/// The records of a whole, well-formed message and where its question section ends; `None` if it is cut short or
/// has bytes after its last record.
fn records(msg: &[u8]) -> Option<(usize, Vec<Rr>)> {
    let count = |at| u16_at(msg, at).map(usize::from);
    let (qd, sections) = (count(4)?, [count(6)?, count(8)?, count(10)?]);
    let mut i = HEADER_LEN;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let question_end = i;
    let mut out = Vec::with_capacity(sections.iter().sum());
    for (section, &n) in sections.iter().enumerate() {
        for _ in 0..n {
            let start = i;
            let fixed = skip_name(msg, i)?;
            let rtype = u16_at(msg, fixed)?;
            let ttl = u32::from(u16_at(msg, fixed + 4)?) << 16 | u32::from(u16_at(msg, fixed + 6)?);
            let rdlength_at = fixed + 8;
            let end = rdlength_at + 2 + usize::from(u16_at(msg, rdlength_at)?);
            out.push(Rr { start, section: section as u8, rtype, ttl, rdlength_at, end });
            i = end;
        }
    }
    (i == msg.len()).then_some((question_end, out))
}

/// Cuts a message to at most `max` octets as a truncated UDP answer: the records that fit, in order, up to the first
/// that does not (pointers only point back, so they stay valid), then its OPT record, with TC set and the counts
/// fixed (RFC 2181 section 9). `None` if the message is not well formed.
pub(crate) fn truncate(msg: &[u8], max: usize) -> Option<Vec<u8>> {
    let (question_end, rrs) = records(msg)?;
    let opt = rrs.last().filter(|r| r.section == 2 && r.rtype == OPT);
    let opt_bytes = opt.map_or(&[][..], |r| &msg[r.start..r.end]);
    let budget = max.saturating_sub(opt_bytes.len());
    let (mut counts, mut cut) = ([0u16; 3], question_end);
    for r in &rrs[..rrs.len() - usize::from(opt.is_some())] {
        if r.end > budget {
            break;
        }
        counts[usize::from(r.section)] += 1;
        cut = r.end;
    }
    counts[2] += u16::from(opt.is_some());
    let mut out = Vec::with_capacity(cut + opt_bytes.len());
    out.extend_from_slice(&msg[..cut]);
    out.extend_from_slice(opt_bytes);
    out[2] |= 0x02;
    for (k, c) in counts.iter().enumerate() {
        out[6 + 2 * k..8 + 2 * k].copy_from_slice(&c.to_be_bytes());
    }
    Some(out)
}

/// Pads `msg` to a multiple of `block` octets with an EDNS padding option appended to its OPT record, which must be
/// its last record (hickory emits OPT last unless a TSIG follows). Returns whether it padded: a message without a
/// final OPT, a malformed one, or one that padding would push past 65535 octets is left as it is.
pub(crate) fn pad(msg: &mut Vec<u8>, block: usize) -> bool {
    let Some(last) = records(msg).and_then(|(_, rrs)| rrs.into_iter().last()) else { return false };
    if last.section != 2 || last.rtype != OPT || block == 0 {
        return false;
    }
    let with_option = msg.len() + 4;
    let padding = (block - with_option % block) % block;
    let total = with_option + padding;
    let Some(rdlength) = u16_at(msg, last.rdlength_at) else { return false };
    let Ok(new_rdlength) = u16::try_from(usize::from(rdlength) + 4 + padding) else { return false };
    if total > usize::from(u16::MAX) {
        return false;
    }
    msg[last.rdlength_at..last.rdlength_at + 2].copy_from_slice(&new_rdlength.to_be_bytes());
    msg.extend_from_slice(&PADDING.to_be_bytes());
    msg.extend_from_slice(&(padding as u16).to_be_bytes());
    msg.resize(total, 0);
    true
}

/// The smallest TTL of the answer section, or of the authority section when there is no answer (a negative
/// answer's SOA, RFC 2308); `None` for a message with neither (an error) or one that is not well formed.
pub(crate) fn min_ttl(msg: &[u8]) -> Option<u32> {
    let (_, rrs) = records(msg)?;
    let smallest = |section| rrs.iter().filter(|r| r.section == section && r.rtype != OPT).map(|r| r.ttl).min();
    smallest(0).or_else(|| smallest(1))
}

/// Keeps what `Handler` sends for one request, encoded exactly as the loop would send it (the fuzz entry points and
/// the tests compare the two paths with it) or, [`Capture::stream`], as a stream transport (DoH) sends it.
#[derive(Clone)]
pub(crate) struct Capture {
    sent: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    question: std::sync::Arc<[u8]>,
    limit: Limit,
}

impl Capture {
    /// For a response to `request` over UDP.
    pub(crate) fn new(request: &Request) -> Self {
        Self::with_limit(request, Limit::Datagram)
    }

    /// For a response to `request` over a stream (up to 65535 bytes).
    pub(crate) fn stream(request: &Request) -> Self {
        Self::with_limit(request, Limit::Stream)
    }

    fn with_limit(request: &Request, limit: Limit) -> Self {
        Capture { sent: std::sync::Arc::default(), question: request.queries.as_bytes().into(), limit }
    }

    /// The response sent since the last call, if any.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, &self.question, self.limit)?;
        *self.sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, RecordType};
    use hickory_server::zone_handler::{MessageResponseBuilder, Queries};

    /// A name of 255 octets on the wire (labels of 63, 63, 63 and 61 octets, their length octets and the root).
    fn long_name() -> Name {
        let l = |c: char, n: usize| c.to_string().repeat(n);
        Name::from_ascii(format!("{}.{}.{}.{}.", l('a', 63), l('b', 63), l('c', 63), l('d', 61))).unwrap()
    }

    /// Encodes an answer of one A record per owner in `owners` to a query for `qname` (EDNS when `edns`).
    fn answer(qname: &Name, owners: &[Name], edns: Option<&Edns>, limit: Limit, compress: bool) -> Vec<u8> {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(qname.clone(), RecordType::A));
        let wire = q.to_vec().unwrap();
        let mut d = BinDecoder::new(&wire[HEADER_LEN..]);
        let queries = Queries::read(&mut d, 1).unwrap();
        let records: Vec<Record> =
            owners.iter().map(|o| Record::from_rdata(o.clone(), 300, RData::A(A::new(10, 0, 0, 1)))).collect();
        let mut b = MessageResponseBuilder::new(&queries, None);
        if let Some(e) = edns {
            b.edns(e);
        }
        let meta = Metadata::response_from_request(&q.metadata);
        let response = b.build(meta, records.iter(), std::iter::empty(), std::iter::empty(), std::iter::empty());
        let question: &[u8] = if compress { queries.as_bytes() } else { &[] };
        encode(response, question, limit).unwrap().1
    }

    #[test]
    fn answer_names_point_into_the_question() {
        let name = long_name();
        assert_eq!(name.to_bytes().unwrap().len(), 255, "octets on the wire");
        let compressed = answer(&name, std::slice::from_ref(&name), None, Limit::Stream, true);
        // 12 header + 259 question + (2 pointer + 10 fixed + 4 address): what unbound sends.
        assert_eq!(compressed.len(), 287);
        assert_eq!(answer(&name, std::slice::from_ref(&name), None, Limit::Stream, false).len(), 540, "hickory alone");
        let m = Message::from_vec(&compressed).unwrap();
        assert_eq!((m.answers[0].name.clone(), m.metadata.truncation), (name.clone(), false));
        // Over UDP without EDNS (512 octets) it fits instead of being truncated.
        let udp = answer(&name, std::slice::from_ref(&name), None, Limit::Datagram, true);
        assert_eq!(Message::from_vec(&udp).unwrap().answers.len(), 1);
        assert!(
            Message::from_vec(&answer(&name, std::slice::from_ref(&name), None, Limit::Datagram, false))
                .unwrap()
                .metadata
                .truncation
        );

        // A sibling shares the question's parent: its name ends in a pointer to the question's second label.
        let sibling = Name::from_ascii("x.lab.home.arpa.").unwrap();
        let bytes = answer(
            &Name::from_ascii("nas.lab.home.arpa.").unwrap(),
            std::slice::from_ref(&sibling),
            None,
            Limit::Stream,
            true,
        );
        let owner = HEADER_LEN + 19 + 4;
        assert_eq!(&bytes[owner..owner + 4], &[1, b'x', 0xC0, (HEADER_LEN + 4) as u8]);
        assert_eq!(Message::from_vec(&bytes).unwrap().answers[0].name, sibling);
    }

    #[test]
    fn datagrams_are_cut_at_a_record_keeping_the_opt() {
        let name = Name::from_ascii("many.lab.home.arpa.").unwrap();
        let owners = vec![name.clone(); 60];
        let mut e = Edns::new();
        e.set_max_payload(512);
        let whole = answer(&name, &owners, Some(&e), Limit::Stream, true);
        assert!(whole.len() > 512);
        let cut = answer(&name, &owners, Some(&e), Limit::Datagram, true);
        assert!(cut.len() <= 512, "{}", cut.len());
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        assert!(!m.answers.is_empty() && m.answers.len() < 60, "{}", m.answers.len());
        assert!(m.answers.iter().all(|r| r.name == name));
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(512), "the OPT is kept");
        // Without EDNS: 512 octets and no OPT.
        let plain = answer(&name, &owners, None, Limit::Datagram, true);
        let m = Message::from_vec(&plain).unwrap();
        assert!(plain.len() <= 512 && m.metadata.truncation && m.edns.is_none());
    }

    #[test]
    fn malformed_questions_register_nothing() {
        for question in [&[][..], &[0][..], &[3, b'a', b'b'][..], &[0xC0, 12][..], &[0x41, 0][..]] {
            let mut bytes = Vec::new();
            let mut e = BinEncoder::new(&mut bytes);
            register_question(&mut e, question);
            assert_eq!(e.offset(), 0, "{question:?}");
        }
    }

    #[test]
    fn padding_fills_blocks_of_468_only_with_a_final_opt() {
        let name = Name::from_ascii("nas.lab.home.arpa.").unwrap();
        let mut e = Edns::new();
        e.set_max_payload(1232);
        let mut msg = answer(&name, std::slice::from_ref(&name), Some(&e), Limit::Stream, true);
        let before = Message::from_vec(&msg).unwrap();
        assert!(pad(&mut msg, RESPONSE_PAD_BLOCK));
        assert_eq!(msg.len(), RESPONSE_PAD_BLOCK);
        let after = Message::from_vec(&msg).unwrap();
        assert_eq!(after.answers, before.answers);
        let padding = after.edns.as_ref().and_then(|e| e.option(EdnsCode::Padding)).map(|o| o.len());
        assert_eq!(padding.map(usize::from), Some(RESPONSE_PAD_BLOCK - before.to_vec().unwrap().len() - 4));
        // Without an OPT there is nowhere to put it.
        let mut plain = answer(&name, std::slice::from_ref(&name), None, Limit::Stream, true);
        let len = plain.len();
        assert!(!pad(&mut plain, RESPONSE_PAD_BLOCK));
        assert_eq!(plain.len(), len);
        let mut junk = vec![0u8; 11];
        assert!(!pad(&mut junk, RESPONSE_PAD_BLOCK));
        let mut cut = msg[..msg.len() - 1].to_vec();
        assert!(!pad(&mut cut, RESPONSE_PAD_BLOCK));
    }

    #[test]
    fn min_ttl_reads_answers_then_authority() {
        let name = Name::from_ascii("nas.lab.home.arpa.").unwrap();
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::A));
        assert_eq!(min_ttl(&m.to_vec().unwrap()), None);
        m.add_authority(Record::from_rdata(name.clone(), 60, RData::A(A::new(10, 0, 0, 9))));
        assert_eq!(min_ttl(&m.to_vec().unwrap()), Some(60));
        m.add_answer(Record::from_rdata(name.clone(), 300, RData::A(A::new(10, 0, 0, 1))));
        m.add_answer(Record::from_rdata(name.clone(), 120, RData::A(A::new(10, 0, 0, 2))));
        assert_eq!(min_ttl(&m.to_vec().unwrap()), Some(120));
        assert_eq!(min_ttl(&[0; 5]), None);
    }
}
