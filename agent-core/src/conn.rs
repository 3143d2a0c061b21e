//! Accepting gRPC connections with bounded resources: the accept loop (backs off on EMFILE, never spins), caps on
//! connections overall and per peer address, a TLS handshake deadline, and the server TLS config re-read when the CRL
//! file changes (connections of newly revoked certificates are closed). Knows sockets, rustls and connection state;
//! must not know gRPC methods or who may call what.
//!
//! Admission: a new connection is always taken when a slot is free. When its peer address holds
//! [`Limits::per_peer`] connections, or the agent holds [`Limits::max_connections`], the oldest connection that has
//! not authenticated (still in its handshake, or finished without a client certificate) is closed to make room; when
//! every one of them carries a certificate, the new connection is refused. An attacker without a certificate thus
//! only ever displaces its own idle connections, and a caller with one gets in.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::Metrics;
use crate::tls::{Crls, TlsError, TlsMaterial};

/// Resource bounds of one gRPC listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections (each one file descriptor) at most.
    pub max_connections: usize,
    /// Open connections from one peer IP address at most.
    pub per_peer: usize,
    /// A connection that has not finished its TLS handshake by then is closed.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 1024, per_peer: 128, handshake_timeout: Duration::from_secs(10) }
    }
}

/// How often the CRL file is looked at between connections (each new connection looks too).
const CRL_POLL: Duration = Duration::from_secs(1);
/// Longest pause of the accept loop after EMFILE or another accept error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What is known of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Handshake,
    /// Handshake done, no client certificate.
    Anonymous,
    /// Handshake done with a verified client certificate of this serial.
    Authenticated(Vec<u8>),
}

/// The kill switch of one connection: once set, its reads and writes fail, so whoever owns it (the handshake task or
/// hyper) closes it.
#[derive(Default)]
struct Kill {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Kill {
    fn fire(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
    fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }
}

struct Entry {
    peer: IpAddr,
    phase: Phase,
    kill: Arc<Kill>,
}

/// Why a connection was turned away or closed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// Refused: its peer holds `per_peer` authenticated connections.
    PeerFull,
    /// Refused: the agent holds `max_connections` authenticated connections.
    Full,
    /// An unauthenticated connection closed to make room.
    Evicted,
    /// Closed: its certificate was revoked.
    Revoked,
    /// Closed: no TLS handshake within the deadline (or a failed one).
    Handshake,
}

impl Turned {
    fn label(self) -> &'static str {
        match self {
            Turned::PeerFull => "peer_full",
            Turned::Full => "full",
            Turned::Evicted => "evicted",
            Turned::Revoked => "revoked",
            Turned::Handshake => "handshake",
        }
    }
}

/// The table of open connections, oldest first (ids only grow).
pub struct Tracker {
    limits: Limits,
    conns: Mutex<BTreeMap<u64, Entry>>,
    next: std::sync::atomic::AtomicU64,
    open: Gauge,
    turned: Family<Vec<(String, String)>, Counter>,
}

impl Tracker {
    pub fn new(limits: Limits) -> Arc<Tracker> {
        Arc::new(Tracker {
            limits,
            conns: Mutex::new(BTreeMap::new()),
            next: Default::default(),
            open: Gauge::default(),
            turned: Family::default(),
        })
    }

    /// Registers `strata_grpc_connections` and `strata_grpc_connections_turned_away_total{reason}`.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register("grpc_connections", "Open gRPC connections", self.open.clone());
        metrics.register(
            "grpc_connections_turned_away",
            "gRPC connections refused or closed, by reason",
            self.turned.clone(),
        );
    }

    fn count(&self, why: Turned) {
        self.turned.get_or_create(&vec![("reason".to_string(), why.label().to_string())]).inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a new connection from `peer`, closing the oldest unauthenticated one (of that peer first) when a cap is
    /// reached. `Err` when every connection in the way is authenticated.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(u64, Arc<Kill>), Turned> {
        let mut conns = self.lock();
        let live_of_peer = conns.values().filter(|e| e.peer == peer && !e.kill.is_set()).count();
        if live_of_peer >= self.limits.per_peer && !self.evict_oldest(&mut conns, Some(peer)) {
            self.count(Turned::PeerFull);
            return Err(Turned::PeerFull);
        }
        let live = conns.values().filter(|e| !e.kill.is_set()).count();
        if live >= self.limits.max_connections && !self.evict_oldest(&mut conns, None) {
            self.count(Turned::Full);
            return Err(Turned::Full);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Kill::default());
        conns.insert(id, Entry { peer, phase: Phase::Handshake, kill: kill.clone() });
        self.open.set(conns.len() as i64);
        Ok((id, kill))
    }

    /// Closes the oldest live unauthenticated connection (of `peer` when given). False when there is none.
    fn evict_oldest(&self, conns: &mut BTreeMap<u64, Entry>, peer: Option<IpAddr>) -> bool {
        let victim = conns.values().find(|e| {
            !e.kill.is_set() && !matches!(e.phase, Phase::Authenticated(_)) && peer.is_none_or(|p| e.peer == p)
        });
        match victim {
            Some(e) => {
                e.kill.fire();
                self.count(Turned::Evicted);
                true
            }
            None => false,
        }
    }

    /// Frees a slot when the process is out of file descriptors. False when nothing could be closed.
    fn evict_any(&self) -> bool {
        let mut conns = self.lock();
        self.evict_oldest(&mut conns, None)
    }

    fn set_phase(&self, id: u64, phase: Phase) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.phase = phase;
        }
    }

    /// Closes every connection authenticated by one of `serials`; returns how many.
    fn close_revoked(&self, serials: &HashSet<Vec<u8>>) -> usize {
        let conns = self.lock();
        let mut n = 0;
        for e in conns.values() {
            if let Phase::Authenticated(s) = &e.phase {
                if serials.contains(s) && !e.kill.is_set() {
                    e.kill.fire();
                    self.count(Turned::Revoked);
                    n += 1;
                }
            }
        }
        n
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        conns.remove(&id);
        self.open.set(conns.len() as i64);
    }
}

/// A TCP connection registered in the [`Tracker`]: removed from it when dropped, failing every read and write once
/// killed.
pub struct Tracked {
    inner: TcpStream,
    id: u64,
    kill: Arc<Kill>,
    tracker: Arc<Tracker>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.remove(self.id);
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the agent's connection limits")
}

impl Tracked {
    fn check(&self, cx: &Context<'_>) -> Result<(), io::Error> {
        if self.kill.is_set() {
            return Err(killed());
        }
        self.kill.waker.register(cx.waker());
        if self.kill.is_set() {
            return Err(killed());
        }
        Ok(())
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Tracked {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// The server TLS config, rebuilt when the CRL file changes (its modification time, size or inode).
pub struct ServerTls {
    material: TlsMaterial,
    crl_path: Option<PathBuf>,
    state: RwLock<(Arc<rustls::ServerConfig>, Option<FileStamp>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| FileStamp { modified: m.modified().ok(), len: m.len(), ino: m.ino() })
}

/// A CRL file read at start, with the stamp of the file it was read from (taken before reading, so that a change
/// made meanwhile is seen by the first [`ServerTls::refresh`]).
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    pub crls: Crls,
    stamp: Option<FileStamp>,
}

impl LoadedCrl {
    /// Reads the CRL file at `path` for the CAs of `material` (see [`Crls::load`]).
    pub fn load(path: &std::path::Path, material: &TlsMaterial) -> Result<LoadedCrl, TlsError> {
        let stamp = stamp(path);
        Ok(LoadedCrl { crls: Crls::load(path, material.ca_certs(), &material.ca_path)?, stamp })
    }
}

impl ServerTls {
    /// The config of `material` with the CRL read at start (`cli` read and verified both once).
    pub fn new(material: TlsMaterial, crl: Option<LoadedCrl>) -> Result<ServerTls, TlsError> {
        let cfg = material.server_config(crl.as_ref().map(|c| &c.crls))?;
        let crl_path = crl.as_ref().map(|c| c.crls.path.clone());
        Ok(ServerTls { material, crl_path, state: RwLock::new((cfg, crl.and_then(|c| c.stamp))) })
    }

    /// The current config.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Re-reads the CRL file if it changed since the last look; returns the serials it revokes when it was reloaded.
    /// A file that no longer loads keeps the previous list in force (logged as an error).
    pub fn refresh(&self) -> Option<HashSet<Vec<u8>>> {
        let path = self.crl_path.as_deref()?;
        let now = stamp(path);
        if self.state.read().unwrap_or_else(|e| e.into_inner()).1 == now {
            return None;
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.1 == now {
            return None;
        }
        state.1 = now;
        let built = Crls::load(path, self.material.ca_certs(), &self.material.ca_path)
            .and_then(|crls| Ok((self.material.server_config(Some(&crls))?, crls)));
        match built {
            Ok((cfg, crls)) => {
                state.0 = cfg;
                tracing::info!(crl = %path.display(), revoked = crls.revoked.len(), "certificate revocation list loaded");
                Some(crls.revoked)
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate revocation list not reloaded: the previous one stays in force");
                None
            }
        }
    }
}

/// Accepts connections on `listener` until the returned stream is dropped: admission by `tracker`, TLS handshakes
/// (each in its own task, under the deadline) with the current [`ServerTls`] config, TCP_NODELAY set (without it a
/// reply spanning several segments waits for the peer's delayed ACK, ≈ 40 ms on Linux).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    tracker: Arc<Tracker>,
) -> impl tokio_stream::Stream<Item = io::Result<TlsStream<Tracked>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsStream<Tracked>>(64);
    tokio::spawn(accept_loop(listener, tls.clone(), tracker.clone(), tx.clone()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CRL_POLL);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if let Some(revoked) = tls.refresh() {
                        let n = tracker.close_revoked(&revoked);
                        if n > 0 {
                            tracing::warn!(connections = n, "closed connections of revoked certificates");
                        }
                    }
                }
            }
        }
    });
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM (Linux and macOS numbers of the first two agree).
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12) | Some(55))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    tracker: Arc<Tracker>,
    tx: tokio::sync::mpsc::Sender<TlsStream<Tracked>>,
) {
    let mut backoff = Duration::from_millis(5);
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (tcp, addr): (TcpStream, SocketAddr) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Never spin: an error that repeats at once (EMFILE leaves the connection in the backlog) is waited
                // out with a growing pause; out of descriptors, the oldest unauthenticated connection is closed.
                let freed = out_of_descriptors(&e) && tracker.evict_any();
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, freed, pause_ms = backoff.as_millis() as u64, "grpc accept failed");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (id, kill) = match tracker.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(peer = %addr, reason = why.label(), "grpc connection refused");
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let stream = Tracked { inner: tcp, id, kill, tracker: tracker.clone() };
        // A CRL written since the last look applies to this very handshake.
        if let Some(revoked) = tls.refresh() {
            tracker.close_revoked(&revoked);
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (tracker, tx, deadline) = (tracker.clone(), tx.clone(), tracker.limits.handshake_timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let phase = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        Some(leaf) => Phase::Authenticated(crate::tls::cert_serial(leaf).unwrap_or_default()),
                        None => Phase::Anonymous,
                    };
                    tracker.set_phase(id, phase);
                    let _ = tx.send(tls).await;
                }
                Ok(Err(e)) => {
                    tracker.count(Turned::Handshake);
                    tracing::debug!(peer = %addr, error = %e, "tls handshake failed");
                }
                Err(_) => {
                    tracker.count(Turned::Handshake);
                    tracing::debug!(peer = %addr, "tls handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_evict_the_oldest_unauthenticated_connection_first() {
        let t = Tracker::new(Limits { max_connections: 4, per_peer: 2, handshake_timeout: Duration::from_secs(1) });
        let (a1, k1) = t.admit(ip(1)).unwrap();
        let (_a2, k2) = t.admit(ip(1)).unwrap();
        // Peer 1 at its cap: its oldest goes, peer 2 is untouched.
        let (_a3, k3) = t.admit(ip(1)).unwrap();
        assert!(k1.is_set() && !k2.is_set() && !k3.is_set());
        t.remove(a1);
        // Authenticated connections are never evicted: peer 2 fills its two slots with them, then is refused.
        let (b1, kb1) = t.admit(ip(2)).unwrap();
        let (b2, kb2) = t.admit(ip(2)).unwrap();
        t.set_phase(b1, Phase::Authenticated(vec![1]));
        t.set_phase(b2, Phase::Authenticated(vec![2]));
        assert_eq!(t.admit(ip(2)).err(), Some(Turned::PeerFull));
        assert!(!kb1.is_set() && !kb2.is_set());
        // The agent is full (4 live): a newcomer evicts the oldest unauthenticated one overall (peer 1's).
        let (_c1, kc1) = t.admit(ip(3)).unwrap();
        assert!(k2.is_set() && !kc1.is_set());
        // Revocation closes exactly the authenticated connections of the revoked serial.
        let n = t.close_revoked(&HashSet::from([vec![2]]));
        assert_eq!(n, 1);
        assert!(kb2.is_set() && !kb1.is_set());
        // Out of descriptors: the oldest unauthenticated live connection goes.
        assert!(t.evict_any());
        assert!(k3.is_set());
    }
}
