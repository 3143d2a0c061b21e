//! The DNS listeners: binds UDP (several SO_REUSEPORT sockets per address, one per core) and TCP on every
//! `[dns] listen` address; serves UDP on our own loops (`udp`), TCP on ours (`tcp`), DoH on our own HTTP server
//! (`doh`) and DoT through `dot` until shutdown. Knows sockets; must not know what the answers are (that is
//! `handler`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::TlsFiles;
use crate::doh::DohServer;
use crate::dot::DotServer;
use crate::handler::Handler;
use crate::udp::UdpServer;

/// Attempts to find a port free for both UDP and TCP when the config asks for port 0.
const PORT_ATTEMPTS: usize = 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}, {key}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub key: &'static str,
    pub source: std::io::Error,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message} (dns.tls_cert / dns.tls_key)")]
pub struct TlsFileError {
    pub path: PathBuf,
    pub message: String,
}

/// Credential name of `dns.tls_key` (the DoT/DoH private key) in the unit's `LoadCredential=`.
pub const TLS_KEY_CREDENTIAL: &str = "dns.tls_key";

/// Handshake and idle timeout of DoT and DoH connections.
pub(crate) const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// The DoT and DoH listeners and the certificate they present.
pub(crate) struct Encrypted {
    pub tls: Vec<std::net::TcpListener>,
    pub https: Vec<std::net::TcpListener>,
    pub certs: Arc<dyn ResolvesServerCert>,
}

/// Loads the PEM certificate chain and private key that DoT and DoH present.
pub(crate) fn load_certs(files: &TlsFiles) -> Result<Arc<dyn ResolvesServerCert>, TlsFileError> {
    let err = |path: &PathBuf, message: String| TlsFileError { path: path.clone(), message };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| err(&files.cert, format!("cannot read certificates: {e}")))?;
    if chain.is_empty() {
        return Err(err(&files.cert, "no certificate in the file".to_string()));
    }
    // Under the unit, systemd hands the key over (LoadCredential=dns.tls_key:PATH): the agent's user cannot read it.
    let (key_path, handed_over) =
        agent_core::credentials::resolve(TLS_KEY_CREDENTIAL, &files.key).map_err(|e| err(&files.key, e.to_string()))?;
    if handed_over {
        tracing::info!("dns.tls_key: reading credential {} instead of {}", key_path.display(), files.key.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| err(&key_path, format!("cannot read key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(&key_path, format!("unsupported key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    Ok(Arc::new(rustls::sign::SingleCertAndKey::from(certified)))
}

/// Binds a TCP listener for DoT (`what` = "tls") or DoH ("https") and logs `dns WHAT listening on ADDR`.
pub(crate) fn bind_encrypted(
    addr: SocketAddr,
    what: &'static str,
    key: &'static str,
) -> Result<std::net::TcpListener, BindError> {
    let l = tcp_listener(addr).map_err(|source| BindError { addr, what, key, source })?;
    let actual = l.local_addr().map_err(|source| BindError { addr, what, key, source })?;
    tracing::info!("dns {what} listening on {actual}");
    Ok(l)
}

/// The sockets of one `listen` address, bound on the same port.
pub(crate) struct Bound {
    pub addr: SocketAddr,
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: std::net::TcpListener,
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Bigger receive buffers ride out bursts; the kernel caps the value, so failure is harmless.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Binds `udp_count` UDP sockets and one TCP listener on `addr`. With port 0, the first UDP socket picks the port
/// and the others (and TCP) take the same one; if TCP finds that port taken, another port is tried.
pub(crate) fn bind(addr: SocketAddr, udp_count: usize) -> Result<Bound, BindError> {
    let err = |what, source| BindError { addr, what, key: "dns.listen", source };
    let attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let first = udp_socket(addr).map_err(|e| err("udp", e))?;
        let port = first.local_addr().map_err(|e| err("udp", e))?.port();
        let actual = SocketAddr::new(addr.ip(), port);
        let tcp = match tcp_listener(actual) {
            Ok(t) => t,
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(err("tcp", e)),
        };
        let mut udp = vec![first];
        for _ in 1..udp_count.max(1) {
            udp.push(udp_socket(actual).map_err(|e| err("udp", e))?);
        }
        return Ok(Bound { addr: actual, udp, tcp });
    }
    Err(err("tcp", last.unwrap_or_else(|| std::io::Error::other("no free port"))))
}

/// Binds every address (one UDP socket per core each) and logs `dns udp listening on ADDR` and
/// `dns tcp listening on ADDR` with the bound addresses.
pub(crate) fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<Bound>, BindError> {
    let per_addr = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
    let mut out = Vec::new();
    for a in addrs {
        let b = bind(*a, per_addr)?;
        tracing::info!(sockets = b.udp.len(), "dns udp listening on {}", b.addr);
        tracing::info!("dns tcp listening on {}", b.addr);
        out.push(b);
    }
    Ok(out)
}

/// The running DNS listeners: UDP on our own loops (`udp`), TCP (`tcp`), DoH (`doh`) and DoT (`dot`).
pub(crate) struct Servers {
    udp: UdpServer,
    doh: Option<DohServer>,
    dot: Option<DotServer>,
    tcp: crate::tcp::TcpServer,
}

impl Servers {
    /// Stops the UDP loops and every listener.
    pub(crate) async fn shutdown(&mut self) {
        self.udp.shutdown().await;
        if let Some(doh) = &mut self.doh {
            doh.shutdown().await;
        }
        if let Some(dot) = &mut self.dot {
            dot.shutdown().await;
        }
        self.tcp.shutdown();
    }
}

/// Serves the bound sockets with `handler` (must run inside the tokio runtime): every UDP socket on its own loop
/// (see `udp`), TCP, DoH and DoT on their own listeners (`tcp`, `doh`, `dot`).
pub(crate) fn serve(bound: Vec<Bound>, encrypted: Option<Encrypted>, handler: Handler) -> std::io::Result<Servers> {
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let mut udp = Vec::new();
    let mut doh = None;
    let mut dot = None;
    let mut tcp = Vec::new();
    for b in bound {
        udp.extend(b.udp);
        tcp.push(b.tcp);
    }
    let tcp = crate::tcp::TcpServer::spawn(tcp, &handler)?;
    if let Some(enc) = encrypted {
        if !enc.tls.is_empty() {
            dot = Some(DotServer::spawn(enc.tls, enc.certs.clone(), handler.clone(), TLS_TIMEOUT)?);
        }
        if !enc.https.is_empty() {
            doh = Some(DohServer::spawn(enc.https, enc.certs.clone(), handler.clone(), TLS_TIMEOUT)?);
        }
    }
    let udp = UdpServer::spawn(udp, &handler, runtime)?;
    Ok(Servers { udp, tcp, doh, dot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_udp_and_tcp_on_one_port() {
        let b = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(b.addr.port(), 0);
        assert_eq!(b.udp.len(), 3);
        for u in &b.udp {
            assert_eq!(u.local_addr().unwrap(), b.addr);
        }
        assert_eq!(b.tcp.local_addr().unwrap(), b.addr);
        // A fixed port that is taken by a plain (non-reuseport) socket is refused with the address named.
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = bind(taken.local_addr().unwrap(), 1).err().expect("port in use");
        assert!(e.to_string().contains("dns.listen"), "{e}");
    }
}
