//! mTLS material and connections: loading PEM files, the server TLS config, and a client that checks the server's role.
//! Knows certificates and identities; must not know which methods a role may call (that is `policy`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, Channel, Endpoint, Identity as TonicIdentity, ServerTlsConfig, Uri};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError, Role};

/// Installs ring as the process-wide rustls crypto provider. Call once at start; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read {what}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: no {what} found in PEM file")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{path}: {source}")]
    Identity { path: PathBuf, source: IdentityError },
    #[error("{path}: certificate cannot be parsed: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("tls configuration: {0}")]
    Config(String),
    #[error("invalid agent address `{addr}`: {message}")]
    Address { addr: String, message: String },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
}

/// The PEM files of one party plus what we read out of them.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    pub identity: Identity,
    /// Expiry of our own certificate, Unix seconds.
    pub not_after: i64,
    ca_certs: Vec<CertificateDer<'static>>,
    cert_chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("identity", &self.identity).field("not_after", &self.not_after).finish()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })
}

fn certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse { path: path.into(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.into() });
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Loads CA bundle, certificate and key; the certificate must carry a Strata identity.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_pem = read("ca certificate", ca)?;
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("private key", key)?;
        let ca_certs = certs("ca certificate", ca, &ca_pem)?;
        let cert_chain = certs("certificate", cert, &cert_pem)?;
        match rustls_pemfile::private_key(&mut &key_pem[..]) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(TlsError::Empty { what: "private key", path: key.into() }),
            Err(e) => return Err(TlsError::Parse { path: key.into(), message: e.to_string() }),
        }
        let identity = Identity::from_cert_der(&cert_chain[0])
            .map_err(|source| TlsError::Identity { path: cert.into(), source })?;
        let (_, parsed) = X509Certificate::from_der(&cert_chain[0])
            .map_err(|e| TlsError::Parse { path: cert.into(), message: e.to_string() })?;
        let not_after = parsed.validity().not_after.timestamp();
        Ok(TlsMaterial { ca_pem, cert_pem, key_pem, identity, not_after, ca_certs, cert_chain })
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        // Checked in `load`.
        rustls_pemfile::private_key(&mut &self.key_pem[..]).ok().flatten().expect("private key checked at load")
    }

    /// Server side: a client certificate signed by the lab CA is checked during the handshake when presented.
    /// It is optional at the TLS level so that a caller without one gets a gRPC UNAUTHENTICATED from the
    /// authorization layer instead of a bare handshake failure; every method still requires an identity.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TonicIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// Client side: connects to `addr` (`https://HOST:PORT`), checking the server's name (DNS/IP SAN) against the
    /// lab CA *and* that its identity has `expected` role in our domain.
    pub async fn connect(&self, addr: &str, expected: Role, timeout: Duration) -> Result<Channel, TlsError> {
        connect(addr, Arc::new(self.client_config(expected)?), timeout).await
    }

    /// The rustls client config: our certificate, the lab CA, and the role check on the server.
    pub fn client_config(&self, expected: Role) -> Result<rustls::ClientConfig, TlsError> {
        client_config(
            &self.ca_certs,
            expected,
            &self.identity.domain,
            Some((self.cert_chain.clone(), self.private_key())),
        )
    }
}

/// A client config trusting `ca_certs`, requiring the server to be `expected` in `domain`, presenting `client_auth`
/// when given (`None` only makes sense to test that agents refuse anonymous callers).
pub fn client_config(
    ca_certs: &[CertificateDer<'static>],
    expected: Role,
    domain: &str,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_certs {
        roots.add(c.clone()).map_err(|e| TlsError::Config(format!("lab ca certificate: {e}")))?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(RoleVerifier { inner, expected, domain: domain.to_string() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Reads the certificates of a PEM file (a CA bundle may hold several CAs, for rollover).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs("certificate", path, &read("certificate", path)?)
}

/// Connects to `addr` (`https://HOST:PORT`) with a prepared rustls config; gRPC runs over the returned channel.
pub async fn connect(addr: &str, config: Arc<rustls::ClientConfig>, timeout: Duration) -> Result<Channel, TlsError> {
    let uri: Uri = addr
        .parse()
        .map_err(|e: http::uri::InvalidUri| TlsError::Address { addr: addr.into(), message: e.to_string() })?;
    if uri.scheme_str() != Some("https") {
        return Err(TlsError::Address { addr: addr.into(), message: "scheme must be https".into() });
    }
    let host = uri.host().ok_or_else(|| TlsError::Address { addr: addr.into(), message: "no host".into() })?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| TlsError::Address { addr: addr.into(), message: e.to_string() })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| TlsError::Address { addr: addr.into(), message: e.to_string() })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let svc = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    match tokio::time::timeout(timeout, endpoint.connect_with_connector(svc)).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(TlsError::Connect { addr: addr.into(), message: error_chain(&e) }),
        Err(_) => Err(TlsError::Connect { addr: addr.into(), message: format!("timed out after {timeout:?}") }),
    }
}

/// Full chain of an error's sources, joined by ": " (tonic hides the useful part deep in the chain).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// WebPKI verification of the server's chain and name, then: its identity must have the expected role and domain.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: Role,
    domain: String,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let id = Identity::from_cert_der(end_entity).map_err(|e| rustls::Error::General(format!("server {e}")))?;
        if id.role != self.expected || id.domain != self.domain {
            return Err(rustls::Error::General(format!(
                "server identity {id} is not a {} of domain {}",
                self.expected, self.domain
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
