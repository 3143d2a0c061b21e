//! DNS over TLS (RFC 7858) on each `[dns] tls_listen` address: TLS from `encrypted`, then 2-byte length
//! framing (RFC 7766), pipelined queries answered in order through `Handler`, answers to padded queries padded to
//! 468-octet blocks (RFC 8467). Bounded: connections, handshake, idle time, messages of at most 65535 octets.
//! Knows framing; must not know what the answers are (`handler`) or how they are encoded (`wire`).
//!
//! The framing loop is the same as plain TCP's; when `tcp::serve_connection` serves any stream, this module keeps
//! only the listener and the padding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use rustls::server::ResolvesServerCert;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::encrypted::{TlsListeners, TlsStream};
use crate::handler::Handler;
use crate::udp::Capture;
use crate::wire;

/// DoT connections open at once, over all listeners; more are closed at accept.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// The running DoT listeners; [`DotServer::shutdown`] stops them and closes their connections.
pub(crate) struct DotServer {
    listeners: TlsListeners,
}

impl DotServer {
    /// Serves every listener (must run inside the tokio runtime), presenting `certs`; `timeout` bounds the TLS
    /// handshake, the wait for each message (idle time) and each write.
    pub(crate) fn spawn(
        listeners: Vec<std::net::TcpListener>,
        certs: Arc<dyn ResolvesServerCert>,
        handler: Handler,
        timeout: Duration,
    ) -> std::io::Result<DotServer> {
        // No ALPN, as hickory's DoT listener: whatever a client offers (`dot` or nothing) is accepted.
        let alpn: &[&[u8]] = &[];
        let serve = move |tls: TlsStream, peer| {
            let handler = handler.clone();
            async move { serve_connection(tls, peer, &handler, timeout).await }
        };
        let listeners = TlsListeners::spawn("tls", listeners, certs, alpn, MAX_CONNECTIONS, timeout, serve)?;
        Ok(DotServer { listeners })
    }

    /// Stops accepting and drops every open connection.
    pub(crate) async fn shutdown(&mut self) {
        self.listeners.shutdown().await;
    }
}

/// Serves one connection until the peer closes it, sends a length under a DNS header, or is idle for `timeout`.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    handler: &Handler,
    timeout: Duration,
) {
    loop {
        let mut len = [0u8; 2];
        if !matches!(tokio::time::timeout(timeout, stream.read_exact(&mut len)).await, Ok(Ok(_))) {
            return;
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n < 12 {
            tracing::debug!(%peer, "dns tls: message shorter than a header, closing");
            return;
        }
        let mut message = vec![0u8; n];
        if !matches!(tokio::time::timeout(timeout, stream.read_exact(&mut message)).await, Ok(Ok(_))) {
            return;
        }
        let Some(reply) = answer(message, peer, handler).await else { continue };
        let Ok(len) = u16::try_from(reply.len()) else { continue };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        let write = async {
            stream.write_all(&framed).await?;
            stream.flush().await
        };
        if !matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(()))) {
            tracing::debug!(%peer, "dns tls: cannot write an answer, closing");
            return;
        }
    }
}

/// The answer to one message: none to a response (QR=1), FORMERR to an unparsable query, else the handler's,
/// padded when the query is.
async fn answer(message: Vec<u8>, peer: SocketAddr, handler: &Handler) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(&message)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let request = match Request::from_bytes(message, peer, Protocol::Tls) {
        Ok(r) => r,
        Err(error) => {
            tracing::debug!(id = header.metadata.id, %peer, %error, "dns tls: unparsable request: FORMERR");
            let queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            let response =
                MessageResponseBuilder::new(&queries, None).error_msg(&header.metadata, ResponseCode::FormErr);
            return wire::encode(response, &[], wire::Limit::Stream).ok().map(|(_, bytes)| bytes);
        }
    };
    let capture = Capture::stream(&request);
    handler.handle_request::<_, TokioTime>(&request, capture.clone()).await;
    let mut bytes = capture.take()?;
    if wire::wants_padding(request.edns.as_ref()) {
        wire::pad(&mut bytes, wire::RESPONSE_PAD_BLOCK);
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use hickory_proto::op::{Edns, Message, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};

    async fn handler(dir: &std::path::Path) -> Handler {
        let text = "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
                    [[zones]]\nname = \"lab.home.arpa\"\nrecords = [{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }]\n";
        std::fs::write(dir.join("dns.toml"), text).unwrap();
        let cfg = crate::config::Config::load(&dir.join("dns.toml")).unwrap();
        let metrics = crate::metrics::DnsMetrics::new(&agent_core::telemetry::Metrics::new());
        Handler::new(crate::service::Dns::new(cfg, metrics).unwrap())
    }

    fn framed(m: &[u8]) -> Vec<u8> {
        let mut out = (m.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(m);
        out
    }

    fn query(id: u16, padded: bool) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("nas.lab.home.arpa.").unwrap(), RecordType::A));
        if padded {
            let mut e = Edns::new();
            e.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Padding), vec![0; 8]));
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// Reads framed replies from `r` until it closes.
    async fn replies(mut r: tokio::io::DuplexStream) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        let mut out = Vec::new();
        let mut rest = &all[..];
        while rest.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            out.push(rest[2..2 + n].to_vec());
            rest = &rest[2 + n..];
        }
        out
    }

    #[tokio::test]
    async fn pipelined_queries_are_answered_in_order_and_padded_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path()).await;
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = "127.0.0.1:853".parse().unwrap();
        let task = tokio::spawn(async move { serve_connection(server, peer, &h, Duration::from_millis(300)).await });
        let mut client = client;
        let mut response = Message::new(9, MessageType::Response, OpCode::Query).to_vec().unwrap();
        response.truncate(12);
        let mut garbage = query(4, false);
        garbage.truncate(20);
        let mut sent = Vec::new();
        for m in [query(1, false), response, query(2, true), garbage, query(3, false)] {
            sent.extend(framed(&m));
        }
        client.write_all(&sent).await.unwrap();
        // The connection ends at the idle timeout; its answers came in order, nothing for the response.
        task.await.unwrap();
        let got = replies(client).await;
        let ids: Vec<u16> = got.iter().map(|r| u16::from_be_bytes([r[0], r[1]])).collect();
        assert_eq!(ids, [1, 2, 4, 3]);
        assert_eq!(got[1].len() % wire::RESPONSE_PAD_BLOCK, 0, "the padded query's answer is padded");
        assert!(got[0].len() < wire::RESPONSE_PAD_BLOCK && got[3].len() < wire::RESPONSE_PAD_BLOCK);
        assert_eq!(got[2][3] & 0x0f, ResponseCode::FormErr.low(), "garbage gets FORMERR");
        assert_eq!(Message::from_vec(&got[1]).unwrap().answers.len(), 1);
    }

    #[tokio::test]
    async fn a_length_under_a_header_closes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path()).await;
        let (mut client, server) = tokio::io::duplex(1024);
        let peer: SocketAddr = "127.0.0.1:853".parse().unwrap();
        let task = tokio::spawn(async move { serve_connection(server, peer, &h, Duration::from_secs(10)).await });
        client.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("closed at once").unwrap();
    }
}
