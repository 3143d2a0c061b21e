//! The transfer client: an SOA query and an AXFR or IXFR over TCP to one primary, with a connect timeout, an idle
//! timeout per read (a stalled connection is dropped), an overall deadline and bounds on messages, bytes and records.
//! Knows sockets and DNS messages; must not know files, timers, metrics or the query path.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::xfr::{soa_of, Asked, Assembler, Transfer, XfrError};
use crate::tsig::{sign_request, StreamVerifier, TsigFailure, TsigKey};

/// Bounds of one exchange with a primary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub connect: Duration,
    /// Longest wait for the next bytes of a message: a primary that stalls longer is dropped.
    pub idle: Duration,
    /// Longest whole transfer.
    pub total: Duration,
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(10),
            total: Duration::from_secs(300),
            max_records: 1_000_000,
            max_bytes: 256 << 20,
            max_messages: 100_000,
        }
    }
}

/// Why an exchange with a primary failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("connection: {0}")]
    Io(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("answered {0}")]
    Rcode(ResponseCode),
    #[error("more than {0} bytes")]
    TooManyBytes(usize),
    #[error("more than {0} messages")]
    TooManyMessages(usize),
    #[error("answered without an SOA for the zone")]
    NoSoa,
    #[error(transparent)]
    Xfr(#[from] XfrError),
    #[error("{0}")]
    Tsig(TsigFailure),
}

impl FetchError {
    /// Whether the primary sent something this agent refuses (as opposed to a network failure or an error answer).
    pub(crate) fn is_bad_input(&self) -> bool {
        matches!(self, FetchError::Xfr(_) | FetchError::Tsig(_) | FetchError::Malformed(_))
    }
}

fn unix_now() -> u64 {
    u64::try_from(agent_core::clock::now_unix()).unwrap_or(0)
}

/// One TCP connection to a primary, reading length-prefixed messages under the limits.
struct Conn {
    stream: TcpStream,
    limits: Limits,
    deadline: Instant,
    bytes: usize,
    messages: usize,
    /// Set when the request was signed: answers must be signed and verify.
    verifier: Option<StreamVerifier>,
}

impl Conn {
    async fn open(primary: SocketAddr, limits: Limits) -> Result<Conn, FetchError> {
        let stream = tokio::time::timeout(limits.connect, TcpStream::connect(primary))
            .await
            .map_err(|_| FetchError::Timeout("connecting"))?
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + limits.total;
        Ok(Conn { stream, limits, deadline, bytes: 0, messages: 0, verifier: None })
    }

    /// Sends `msg`, signed with `key` when given.
    async fn send(&mut self, msg: &Message, key: Option<&TsigKey>) -> Result<(), FetchError> {
        let mut body = msg.to_vec().map_err(|e| FetchError::Malformed(e.to_string()))?;
        if let Some(key) = key {
            self.verifier = Some(sign_request(key, &mut body, unix_now()));
        }
        let len = u16::try_from(body.len()).map_err(|_| FetchError::Malformed("query too long".into()))?;
        let mut framed = Vec::with_capacity(body.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&body);
        let write = self.stream.write_all(&framed);
        tokio::time::timeout(self.limits.idle, write)
            .await
            .map_err(|_| FetchError::Timeout("sending"))?
            .map_err(|e| FetchError::Io(e.to_string()))
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FetchError> {
        let wait = self.limits.idle.min(self.deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, self.stream.read_exact(buf)).await {
            Err(_) if Instant::now() >= self.deadline => Err(FetchError::Timeout("for the whole transfer")),
            Err(_) => Err(FetchError::Timeout("waiting for the primary (stalled)")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FetchError::Xfr(XfrError::Truncated)),
            Ok(Err(e)) => Err(FetchError::Io(e.to_string())),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The next message answering `id`.
    async fn recv(&mut self, id: u16) -> Result<Message, FetchError> {
        self.messages += 1;
        if self.messages > self.limits.max_messages {
            return Err(FetchError::TooManyMessages(self.limits.max_messages));
        }
        let mut len = [0u8; 2];
        self.read_exact(&mut len).await?;
        let len = usize::from(u16::from_be_bytes(len));
        self.bytes += len + 2;
        if self.bytes > self.limits.max_bytes {
            return Err(FetchError::TooManyBytes(self.limits.max_bytes));
        }
        let mut body = vec![0u8; len];
        self.read_exact(&mut body).await?;
        let msg = Message::from_vec(&body).map_err(|e| FetchError::Malformed(e.to_string()))?;
        if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
            return Err(FetchError::Malformed(format!("an answer with id {} that is not ours", msg.metadata.id)));
        }
        if msg.metadata.response_code != ResponseCode::NoError {
            return Err(FetchError::Rcode(msg.metadata.response_code));
        }
        let signed = msg.signature.is_some();
        if let Some(v) = self.verifier.as_mut() {
            v.verify(&body, signed, unix_now()).map_err(FetchError::Tsig)?;
        }
        Ok(msg)
    }

    /// After the last message: a signed exchange must end on a signed message.
    fn finish(&self) -> Result<(), FetchError> {
        match &self.verifier {
            Some(v) => v.finish().map_err(FetchError::Tsig),
            None => Ok(()),
        }
    }
}

fn query(origin: &Name, qtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.op_code = OpCode::Query;
    msg.add_query(Query::query(origin.clone(), qtype));
    msg
}

/// The serial of the zone's SOA at `primary`. With a key the query is signed and the answer must be signed with it
/// (an unsigned or wrongly signed answer is refused, as a transfer's).
pub(crate) async fn soa_serial(
    primary: SocketAddr,
    origin: &Name,
    key: Option<&TsigKey>,
    limits: Limits,
) -> Result<u32, FetchError> {
    let mut conn = Conn::open(primary, Limits { total: limits.idle, ..limits }).await?;
    let msg = query(origin, RecordType::SOA);
    conn.send(&msg, key).await?;
    let answer = conn.recv(msg.metadata.id).await?;
    conn.finish()?;
    answer
        .answers
        .iter()
        .find(|r| r.name.zone_of(origin) && origin.zone_of(&r.name))
        .and_then(soa_of)
        .map(|s| s.serial)
        .ok_or(FetchError::NoSoa)
}

/// Transfers the zone from `primary`: an AXFR, or an IXFR from `copy_soa` when given. Returns the assembled,
/// not yet checked, transfer and the bytes read.
pub(crate) async fn fetch(
    primary: SocketAddr,
    origin: &Name,
    copy_soa: Option<&Record>,
    key: Option<&TsigKey>,
    limits: Limits,
) -> Result<(Transfer, usize), FetchError> {
    let mut conn = Conn::open(primary, limits).await?;
    let (mut msg, asked) = match copy_soa.and_then(|r| soa_of(r).map(|s| (r, s.serial))) {
        Some((soa, ours)) => {
            let mut m = query(origin, RecordType::IXFR);
            m.add_authority(soa.clone());
            (m, Asked::Ixfr { ours })
        }
        None => (query(origin, RecordType::AXFR), Asked::Axfr),
    };
    msg.metadata.recursion_desired = false;
    conn.send(&msg, key).await?;
    let mut asm = Assembler::new(asked, limits.max_records);
    loop {
        let answer = conn.recv(msg.metadata.id).await?;
        for r in answer.answers {
            asm.feed(r)?;
        }
        if asm.complete(true) {
            break;
        }
    }
    conn.finish()?;
    Ok((asm.finish()?, conn.bytes))
}
