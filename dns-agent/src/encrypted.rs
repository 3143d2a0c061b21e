//! The TLS listeners of DoH and DoT: accepting with a cap on open connections (shared by the listeners of one kind),
//! the TLS handshake within a timeout, and each established stream handed to the transport's serve function; shutdown
//! closes every connection. Knows TCP and TLS; must not know HTTP, DNS framing or answers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::ResolvesServerCert;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// An established server-side TLS connection.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Running TLS listeners; [`TlsListeners::shutdown`] stops them and closes their connections.
pub(crate) struct TlsListeners {
    tasks: Vec<JoinHandle<()>>,
}

/// What the accept loops of one kind of listener share.
struct Shared<F> {
    /// `https` or `tls`, as the log lines say it.
    what: &'static str,
    acceptor: tokio_rustls::TlsAcceptor,
    slots: Arc<Semaphore>,
    max_connections: usize,
    timeout: Duration,
    serve: F,
}

impl TlsListeners {
    /// Accepts on every listener (inside the tokio runtime) presenting `certs` with `alpn`: at most
    /// `max_connections` open at once (one more is closed at accept), each handshake within `timeout`, then
    /// `serve(stream, peer)` until it returns.
    pub(crate) fn spawn<F, Fut>(
        what: &'static str,
        listeners: Vec<std::net::TcpListener>,
        certs: Arc<dyn ResolvesServerCert>,
        alpn: &[&[u8]],
        max_connections: usize,
        timeout: Duration,
        serve: F,
    ) -> std::io::Result<TlsListeners>
    where
        F: Fn(TlsStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = server_config(certs, alpn).map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            what,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            timeout,
            serve,
        });
        let mut tasks = Vec::new();
        for l in listeners {
            let listener = tokio::net::TcpListener::from_std(l)?;
            tasks.push(tokio::spawn(accept_loop(listener, shared.clone())));
        }
        Ok(TlsListeners { tasks })
    }

    /// Stops accepting and drops every open connection (the accept loops own them).
    pub(crate) async fn shutdown(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// TLS with the agent's DoT/DoH certificate and `alpn`.
fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

async fn accept_loop<F, Fut>(listener: tokio::net::TcpListener, shared: Arc<Shared<F>>)
where
    F: Fn(TlsStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let what = shared.what;
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "dns {what}: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "dns {what}: {} connections open, closing the new one", shared.max_connections);
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(shared.timeout, shared.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "dns {what}: tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "dns {what}: tls handshake timed out");
                    return;
                }
            };
            (shared.serve)(tls, peer).await;
            drop(slot);
        });
    }
}
