//! Revocation: the CA's signed revocation list (`crl.pem`), read back, extended and rewritten by `labctl pki revoke`.
//! Must not know how certificates are issued.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use agent_core::identity::{Identity, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::{load_ca, parse_cert, read_cert_der, LoadedCa};
use super::error::PkiError;
use super::files::{write_atomic, CA_CERT_FILE, CERT_MODE, CRL_FILE};

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked serial, colon-separated hex.
    pub serial: String,
    /// The identity of the revoked certificate, when it was named by its file.
    pub identity: Option<String>,
    /// False when the serial was already on the list (the list is rewritten all the same).
    pub newly: bool,
    pub crl: PathBuf,
    /// Serials on the list now.
    pub listed: usize,
}

/// Revokes `target` (a certificate name in `dir`, or a serial number in hex, colons optional): adds its serial to
/// `DIR/crl.pem`, signed by the CA, with the next CRL number. Agents whose `[grpc] crl` is a copy of that file refuse
/// the certificate from the moment the copy changes.
pub fn revoke(dir: &Path, target: &str) -> Result<Revocation, PkiError> {
    let ca = load_ca(dir)?;
    let named = Identity::new("x", Role::Admin, target).is_ok() && dir.join(format!("{target}.pem")).is_file();
    let (serial, identity) = if named {
        let path = dir.join(format!("{target}.pem"));
        let der = read_cert_der(&path)?;
        let cert = parse_cert(&path, &der)?;
        if !ca.signed(&cert) {
            return Err(PkiError::ForeignCertificate { cert: path, ca: dir.join(CA_CERT_FILE) });
        }
        (agent_core::tls::trim_serial(cert.raw_serial()), Identity::from_cert_der(&der).ok().map(|i| i.uri()))
    } else {
        (parse_serial(target).ok_or_else(|| PkiError::UnknownRevokeTarget(target.to_string()))?, None)
    };
    let (mut entries, number) = read_crl(dir, &ca)?;
    let newly = !entries.iter().any(|e| e.serial_number.as_ref() == serial.as_slice());
    if newly {
        entries.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let listed = entries.len();
    let crl = write_crl(dir, &ca, entries, number + 1)?;
    Ok(Revocation { serial: agent_core::tls::serial_hex(&serial), identity, newly, crl, listed })
}

/// The revoked entries and CRL number of `DIR/crl.pem` (none and 0 when the file does not exist).
fn read_crl(dir: &Path, ca: &LoadedCa) -> Result<(Vec<rcgen::RevokedCertParams>, u64), PkiError> {
    let path = dir.join(CRL_FILE);
    let pem = match fs::read(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(source) => return Err(PkiError::Io { op: "read", path, source }),
    };
    let bad = |reason: String| PkiError::BadCrl { path: path.clone(), reason };
    let der = match CertificateRevocationListDer::pem_slice_iter(&pem).next() {
        Some(Ok(d)) => d,
        Some(Err(e)) => return Err(bad(e.to_string())),
        None => return Err(bad("no X509 CRL in the file".into())),
    };
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| bad(format!("cannot be parsed: {e}")))?;
    let signed = X509Certificate::from_der(&ca.der).is_ok_and(|(_, c)| {
        crl.issuer().as_raw() == ca.subject_der.as_slice() && crl.verify_signature(c.public_key()).is_ok()
    });
    if !signed {
        return Err(bad(format!("not signed by this ca ({})", dir.join(CA_CERT_FILE).display())));
    }
    let number = crl.crl_number().map(|n| n.to_u64_digits().first().copied().unwrap_or(0)).unwrap_or(0);
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&agent_core::tls::trim_serial(r.raw_serial())),
            revocation_time: OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok((entries, number))
}

/// Signs and writes `DIR/crl.pem` (0644, atomically) with `entries`; valid until the CA itself expires.
pub(super) fn write_crl(
    dir: &Path,
    ca: &LoadedCa,
    entries: Vec<rcgen::RevokedCertParams>,
    number: u64,
) -> Result<PathBuf, PkiError> {
    let now = OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: ca.not_after.max(now + Duration::days(1)),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.issuer).map_err(|source| PkiError::Generate { what: "revocation list", source })?;
    let pem = crl.pem().map_err(|source| PkiError::Generate { what: "revocation list", source })?;
    let path = dir.join(CRL_FILE);
    write_atomic(&path, pem.as_bytes(), CERT_MODE)?;
    Ok(path)
}

/// A serial number in hex, with or without colons (`0a:1b…` or `0a1b…`).
fn parse_serial(s: &str) -> Option<Vec<u8>> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex };
    let bytes: Option<Vec<u8>> =
        (0..padded.len()).step_by(2).map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok()).collect();
    bytes.map(|b| agent_core::tls::trim_serial(&b))
}
