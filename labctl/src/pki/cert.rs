//! Reading certificates: PEM files, the CA (its key, its trust domain, whether it signed a certificate) and the
//! description `labctl pki show` prints. Must not know how certificates are issued or revoked.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use agent_core::identity::{Identity, Role};
use rcgen::{Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::PkiError;
use super::files::{CA_CERT_FILE, CA_KEY_FILE};

/// A certificate described by [`show`]. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// `spiffe://DOMAIN/ROLE/NAME` when the certificate carries exactly one valid identity URI SAN.
    pub identity: Option<String>,
    pub subject: String,
    pub issuer: String,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// Serial number, colon-separated hex (what `labctl pki revoke SERIAL` takes).
    pub serial: String,
}

/// Describes the first certificate of a PEM file.
pub fn show(file: &Path) -> Result<CertInfo, PkiError> {
    let der = read_cert_der(file)?;
    let cert = parse_cert(file, &der)?;
    let mut dns_sans = Vec::new();
    let mut ip_sans = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| bad_cert(file, e))? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_sans.push((*d).to_string()),
                GeneralName::IPAddress(raw) => ip_sans.push(format_ip(raw)),
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        identity: Identity::from_cert_der(&der).ok().map(|id| id.uri()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_sans,
        ip_sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        is_ca: cert.is_ca(),
        serial: agent_core::tls::serial_hex(cert.raw_serial()),
    })
}

/// The trust domain recorded in `DIR/ca.pem` (its `spiffe://DOMAIN` URI SAN).
pub fn domain_of_ca(dir: &Path) -> Result<String, PkiError> {
    let path = dir.join(CA_CERT_FILE);
    let der = read_ca_file(&path, "ca certificate").and_then(|pem| cert_der_from_pem(&path, &pem))?;
    let cert = parse_cert(&path, &der)?;
    domain_from_cert(&path, &cert)
}

pub(super) struct LoadedCa {
    pub(super) domain: String,
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) not_after: OffsetDateTime,
    /// The CA's subject, DER: the issuer of everything it signs.
    pub(super) subject_der: Vec<u8>,
    /// The CA certificate, DER.
    pub(super) der: Vec<u8>,
}

impl LoadedCa {
    /// Whether `cert` was signed by this CA (its key, not only its name: two CAs may share a name).
    pub(super) fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        let Ok((_, ca)) = X509Certificate::from_der(&self.der) else { return false };
        cert.issuer().as_raw() == self.subject_der.as_slice() && cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

pub(super) fn load_ca(dir: &Path) -> Result<LoadedCa, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert_pem = read_ca_file(&cert_path, "ca certificate")?;
    let key_pem = read_ca_file(&key_path, "ca key")?;
    let der = cert_der_from_pem(&cert_path, &cert_pem)?;
    let cert = parse_cert(&cert_path, &der)?;
    if !cert.is_ca() {
        return Err(PkiError::NotCa(cert_path));
    }
    let domain = domain_from_cert(&cert_path, &cert)?;
    let key_text = String::from_utf8_lossy(&key_pem);
    let key = KeyPair::from_pem(&key_text).map_err(|source| PkiError::BadKey { path: key_path.clone(), source })?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch { key: key_path, cert: cert_path });
    }
    // rcgen panics on a relative distinguished name without attributes; refuse such a subject first.
    if cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(bad_cert(&cert_path, "subject has a multi-valued or empty relative distinguished name"));
    }
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| bad_cert(&cert_path, e))?;
    let subject_der = cert.subject().as_raw().to_vec();
    let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key).map_err(|e| bad_cert(&cert_path, e))?;
    Ok(LoadedCa { domain, issuer, not_after, subject_der, der })
}

fn domain_from_cert(path: &Path, cert: &X509Certificate<'_>) -> Result<String, PkiError> {
    let san = cert.subject_alternative_name().map_err(|e| bad_cert(path, e))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(PkiError::NoDomain(path.to_path_buf()));
    };
    let domain = uri.strip_prefix("spiffe://").ok_or_else(|| PkiError::NoDomain(path.to_path_buf()))?;
    Identity::new(domain, Role::Admin, "ca").map(|id| id.domain).map_err(|_| PkiError::NoDomain(path.to_path_buf()))
}

fn read_ca_file(path: &Path, what: &'static str) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => PkiError::MissingCa { what, path: path.to_path_buf() },
        _ => PkiError::Io { op: "read", path: path.to_path_buf(), source },
    })
}

pub(super) fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = fs::read(path).map_err(|source| PkiError::Io { op: "read", path: path.to_path_buf(), source })?;
    cert_der_from_pem(path, &pem)
}

fn cert_der_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(bad_cert(path, e)),
        None => Err(PkiError::NoCertificate(path.to_path_buf())),
    }
}

pub(super) fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der).map(|(_, cert)| cert).map_err(|e| bad_cert(path, e))
}

fn bad_cert(path: &Path, reason: impl ToString) -> PkiError {
    PkiError::BadCertificate { path: path.to_path_buf(), reason: reason.to_string() }
}

fn format_ip(raw: &[u8]) -> String {
    match raw.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(raw).unwrap_or_default()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(raw).unwrap_or_default()).to_string(),
        _ => raw.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
    }
}
