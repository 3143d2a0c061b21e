//! mTLS material and connections: loading and fully verifying PEM files (key ↔ certificate, chain to the lab CA,
//! validity, CA flags, role, revocation), the server's rustls config with the CRL, and a client that checks the
//! server's role. Knows certificates and identities; must not know which methods a role may call (that is `policy`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::identity::{Identity, IdentityError, Role};

/// `check` and `run` warn when the agent's own certificate expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 21;

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
    #[error("{key}: private key does not belong to the certificate in {cert} ({reason})")]
    KeyMismatch { key: PathBuf, cert: PathBuf, reason: String },
    #[error("{path}: `{subject}` is not a ca certificate (no basic constraints CA:TRUE): a leaf cannot be the ca")]
    NotCa { path: PathBuf, subject: String },
    #[error("{path}: {what} `{subject}` {reason}")]
    Validity { path: PathBuf, what: &'static str, subject: String, reason: String },
    #[error("{cert}: certificate is not signed by a ca in {ca} ({reason}); `labctl pki show` names its issuer")]
    Chain { cert: PathBuf, ca: PathBuf, reason: String },
    #[error("{cert}: certificate (serial {serial}) is revoked by {crl}")]
    Revoked { cert: PathBuf, serial: String, crl: PathBuf },
    #[error("{crl}: {reason}")]
    Crl { crl: PathBuf, reason: String },
    #[error("{path}: identity {identity} has role {found}, but this is a {expected}")]
    WrongRole { path: PathBuf, identity: String, found: Role, expected: Role },
    #[error("tls configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Credential(#[from] crate::credentials::CredentialError),
    #[error("invalid agent address `{addr}`: {message}")]
    Address { addr: String, message: String },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
}

/// The PEM files of one party plus what we read out of them. Loaded once per start: the key is checked against the
/// certificate here, everything else by [`TlsMaterial::verify`].
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub identity: Identity,
    /// Expiry of our own certificate, Unix seconds.
    pub not_after: i64,
    ca_certs: Vec<CertificateDer<'static>>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
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
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse { path: path.into(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.into() });
    }
    Ok(certs)
}

fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| TlsError::Parse { path: path.into(), message: e.to_string() })
}

/// A serial number as colon-separated hex, the form `openssl x509 -serial` and `labctl pki show` print.
pub fn serial_hex(raw: &[u8]) -> String {
    trim_serial(raw).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The serial number of a DER certificate (raw big-endian bytes), when it parses.
pub fn cert_serial(der: &[u8]) -> Option<Vec<u8>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| trim_serial(c.raw_serial()))
}

/// A serial number's raw bytes without leading zero bytes (DER pads positive serials with one).
pub fn trim_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].to_vec()
}

fn date(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t).map(|t| t.to_string()).unwrap_or_else(|_| t.to_string())
}

/// The certificate revocation lists of a CRL file, and the serials they revoke.
#[derive(Clone, Debug)]
pub struct Crls {
    pub path: PathBuf,
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// Every revoked serial (raw big-endian bytes, leading zeros trimmed).
    pub revoked: HashSet<Vec<u8>>,
}

impl Crls {
    /// Reads a PEM file of one or more CRLs (`labctl pki revoke` writes one per CA); each must be issued by a CA of
    /// `ca_certs` (a CRL of another CA would revoke nothing here and hide a mistake).
    pub fn load(path: &Path, ca_certs: &[CertificateDer<'static>], ca_path: &Path) -> Result<Crls, TlsError> {
        let pem = read("certificate revocation list", path)?;
        let crl_err = |reason: String| TlsError::Crl { crl: path.into(), reason };
        let ders = CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crl_err(format!("cannot be parsed: {e}")))?;
        if ders.is_empty() {
            return Err(crl_err("no X509 CRL found in PEM file (`labctl pki revoke` writes it)".into()));
        }
        let subjects: Vec<Vec<u8>> = ca_certs
            .iter()
            .filter_map(|c| X509Certificate::from_der(c).ok().map(|(_, c)| c.subject().as_raw().to_vec()))
            .collect();
        let mut revoked = HashSet::new();
        for der in &ders {
            let (_, crl) =
                CertificateRevocationList::from_der(der).map_err(|e| crl_err(format!("cannot be parsed: {e}")))?;
            if !subjects.iter().any(|s| s.as_slice() == crl.issuer().as_raw()) {
                return Err(crl_err(format!(
                    "issued by `{}`, which is not a ca in {}",
                    crl.issuer(),
                    ca_path.display()
                )));
            }
            revoked.extend(crl.iter_revoked_certificates().map(|r| trim_serial(r.raw_serial())));
        }
        Ok(Crls { path: path.into(), ders, revoked })
    }
}

impl TlsMaterial {
    /// Loads CA bundle, certificate and key; the certificate must carry a Strata identity and the key must be the
    /// certificate's. Chain, validity and CA flags are [`TlsMaterial::verify`]'s.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_pem = read("ca certificate", ca)?;
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("private key", key)?;
        let ca_certs = certs("ca certificate", ca, &ca_pem)?;
        let cert_chain = certs("certificate", cert, &cert_pem)?;
        let private_key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(pem::Error::NoItemsFound) => return Err(TlsError::Empty { what: "private key", path: key.into() }),
            Err(e) => return Err(TlsError::Parse { path: key.into(), message: e.to_string() }),
        };
        let provider = rustls::crypto::ring::default_provider();
        let mismatch = |reason: String| TlsError::KeyMismatch { key: key.into(), cert: cert.into(), reason };
        let certified = rustls::sign::CertifiedKey::from_der(cert_chain.clone(), private_key.clone_key(), &provider)
            .map_err(|e| mismatch(e.to_string()))?;
        certified.keys_match().map_err(|e| mismatch(e.to_string()))?;
        let identity = Identity::from_cert_der(&cert_chain[0])
            .map_err(|source| TlsError::Identity { path: cert.into(), source })?;
        let not_after = parse(cert, &cert_chain[0])?.validity().not_after.timestamp();
        Ok(TlsMaterial {
            ca_path: ca.into(),
            cert_path: cert.into(),
            key_path: key.into(),
            identity,
            not_after,
            ca_certs,
            cert_chain,
            key: Arc::new(private_key),
        })
    }

    /// Everything a peer will check, checked now: every certificate of the CA file is a CA and within its validity;
    /// ours is within its validity, chains to one of them (and is not revoked by `crls`), and carries `role` when
    /// given. Returns warnings (expiry within [`EXPIRY_WARNING_DAYS`]); errors name the file and the reason.
    pub fn verify(&self, role: Option<Role>, crls: Option<&Crls>, now_unix: i64) -> Result<Vec<String>, TlsError> {
        let mut warnings = Vec::new();
        for der in &self.ca_certs {
            let ca = parse(&self.ca_path, der)?;
            let subject = ca.subject().to_string();
            if !ca.is_ca() {
                return Err(TlsError::NotCa { path: self.ca_path.clone(), subject });
            }
            window(&self.ca_path, "ca certificate", &subject, &ca, now_unix, &mut warnings)?;
        }
        let leaf = parse(&self.cert_path, &self.cert_chain[0])?;
        window(&self.cert_path, "certificate", &leaf.subject().to_string(), &leaf, now_unix, &mut warnings)?;
        if leaf.is_ca() {
            return Err(TlsError::Validity {
                path: self.cert_path.clone(),
                what: "certificate",
                subject: leaf.subject().to_string(),
                reason: "is a ca certificate, not a leaf".into(),
            });
        }
        let verifier = client_verifier(&self.ca_certs, crls.map(|c| c.ders.as_slice()).unwrap_or(&[]))?;
        let now = UnixTime::since_unix_epoch(Duration::from_secs(now_unix.max(0) as u64));
        if let Err(e) = verifier.verify_client_cert(&self.cert_chain[0], &self.cert_chain[1..], now) {
            let reason = e.to_string();
            return Err(match (e, crls) {
                (rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked), Some(c)) => TlsError::Revoked {
                    cert: self.cert_path.clone(),
                    serial: serial_hex(leaf.raw_serial()),
                    crl: c.path.clone(),
                },
                (rustls::Error::InvalidCertRevocationList(_), Some(c)) => TlsError::Crl { crl: c.path.clone(), reason },
                _ => TlsError::Chain { cert: self.cert_path.clone(), ca: self.ca_path.clone(), reason },
            });
        }
        if let Some(expected) = role {
            if self.identity.role != expected {
                return Err(TlsError::WrongRole {
                    path: self.cert_path.clone(),
                    identity: self.identity.uri(),
                    found: self.identity.role,
                    expected,
                });
            }
        }
        Ok(warnings)
    }

    /// The CA certificates of the bundle (several during a CA rollover).
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// Server side: a client certificate signed by the lab CA and not revoked by `crls` is checked during the
    /// handshake when presented. It is optional at the TLS level so that a caller without one gets a gRPC
    /// UNAUTHENTICATED from the authorization layer instead of a bare handshake failure; every method still requires
    /// an identity. ALPN h2 only.
    pub fn server_config(&self, crls: Option<&Crls>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = client_verifier(&self.ca_certs, crls.map(|c| c.ders.as_slice()).unwrap_or(&[]))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("{}: {e}", self.cert_path.display())))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side: connects to `addr` (`https://HOST:PORT`), checking the server's name (DNS/IP SAN) against the
    /// lab CA *and* that its identity has `expected` role in our domain.
    pub async fn connect(&self, addr: &str, expected: Role, timeout: Duration) -> Result<Channel, TlsError> {
        match connect(addr, Arc::new(self.client_config(expected)?), timeout).await {
            Err(TlsError::Connect { addr, mut message })
                if ["UnknownIssuer", "BadSignature"].iter().any(|m| message.contains(m)) =>
            {
                message.push_str(&format!(
                    " (the agent's certificate is not signed by a ca in {}: compare `labctl pki show` of both)",
                    self.ca_path.display()
                ));
                Err(TlsError::Connect { addr, message })
            }
            other => other,
        }
    }

    /// The rustls client config: our certificate, the lab CA, and the role check on the server.
    pub fn client_config(&self, expected: Role) -> Result<rustls::ClientConfig, TlsError> {
        client_config(
            &self.ca_certs,
            expected,
            &self.identity.domain,
            Some((self.cert_chain.clone(), self.key.clone_key())),
        )
    }
}

/// The validity window of one certificate: refused outside it, a warning within [`EXPIRY_WARNING_DAYS`] of its end.
fn window(
    path: &Path,
    what: &'static str,
    subject: &str,
    cert: &X509Certificate<'_>,
    now: i64,
    warnings: &mut Vec<String>,
) -> Result<(), TlsError> {
    let (from, until) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let fail =
        |reason: String| Err(TlsError::Validity { path: path.into(), what, subject: subject.to_string(), reason });
    if now < from {
        return fail(format!("is not valid before {}", date(from)));
    }
    if now > until {
        return fail(format!("expired on {}", date(until)));
    }
    let days = (until - now) / 86_400;
    if days < EXPIRY_WARNING_DAYS {
        warnings.push(format!(
            "{}: {what} `{subject}` expires in {days} days, on {} (renew it: `labctl pki renew`)",
            path.display(),
            date(until)
        ));
    }
    Ok(())
}

/// The verifier of client certificates: chain to one of `ca_certs`, validity, and, with CRLs, not revoked (the leaf
/// only; a leaf whose CA published no CRL here is accepted).
fn client_verifier(
    ca_certs: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_certs {
        roots.add(c.clone()).map_err(|e| TlsError::Config(format!("lab ca certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls.iter().cloned())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))
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
