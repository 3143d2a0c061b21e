//! DNS over TLS (RFC 7858) on each `[dns] tls_listen` address: TLS from `encrypted`, then the framing of plain TCP
//! (`tcp::serve_connection`: pipelined queries answered in order, zone transfers) with answers to padded queries
//! padded to 468-octet blocks (RFC 8467). Bounded: connections, handshake, idle time, messages of at most 65535
//! octets. Knows which listener serves which stream; must not know framing or answers.

use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use rustls::server::ResolvesServerCert;

use crate::encrypted::{TlsListeners, TlsStream};
use crate::handler::Handler;

/// DoT connections open at once, over all listeners; more are closed at accept.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// The running DoT listeners; [`DotServer::shutdown`] stops them and closes their connections.
pub(crate) struct DotServer {
    listeners: TlsListeners,
}

impl DotServer {
    /// Serves every listener (must run inside the tokio runtime), presenting `certs`; `timeout` bounds the TLS
    /// handshake (`tcp` bounds the rest).
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
            async move { crate::tcp::serve_connection(tls, peer, &handler, Protocol::Tls).await }
        };
        let listeners = TlsListeners::spawn("tls", listeners, certs, alpn, MAX_CONNECTIONS, timeout, serve)?;
        Ok(DotServer { listeners })
    }

    /// Stops accepting and drops every open connection.
    pub(crate) async fn shutdown(&mut self) {
        self.listeners.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::wire::RESPONSE_PAD_BLOCK;

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

    /// Sends `messages` pipelined over a stream served as `protocol`; the `n` replies, in the order they came.
    async fn exchange(protocol: Protocol, messages: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path()).await;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = "127.0.0.1:853".parse().unwrap();
        let task = tokio::spawn(async move { crate::tcp::serve_connection(server, peer, &h, protocol).await });
        let sent: Vec<u8> = messages.iter().flat_map(|m| framed(m)).collect();
        client.write_all(&sent).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let mut len = [0u8; 2];
            client.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            client.read_exact(&mut body).await.unwrap();
            out.push(body);
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("ends with the client").unwrap();
        out
    }

    #[tokio::test]
    async fn over_tls_pipelined_answers_come_in_order_and_padded_when_asked() {
        let mut response = Message::new(9, MessageType::Response, OpCode::Query).to_vec().unwrap();
        response.truncate(12);
        let mut garbage = query(4, false);
        garbage.truncate(20);
        let messages = [query(1, false), response, query(2, true), garbage, query(3, false)];
        let got = exchange(Protocol::Tls, &messages, 4).await;
        let ids: Vec<u16> = got.iter().map(|r| u16::from_be_bytes([r[0], r[1]])).collect();
        assert_eq!(ids, [1, 2, 4, 3], "nothing for the response (QR=1)");
        assert_eq!(got[1].len() % RESPONSE_PAD_BLOCK, 0, "the padded query's answer is padded");
        assert!(got[0].len() < RESPONSE_PAD_BLOCK && got[3].len() < RESPONSE_PAD_BLOCK);
        assert_eq!(got[2][3] & 0x0f, ResponseCode::FormErr.low(), "garbage gets FORMERR");
        assert_eq!(Message::from_vec(&got[1]).unwrap().answers.len(), 1);
        // Plain TCP never pads.
        let plain = exchange(Protocol::Tcp, &[query(5, true)], 1).await;
        assert!(plain[0].len() < RESPONSE_PAD_BLOCK, "{}", plain[0].len());
    }
}
