//! The lab's certificate authority: create it, issue leaf certificates carrying a `spiffe://DOMAIN/ROLE/NAME` identity,
//! and describe certificates. Used by `labctl pki …` and by the integration-test harness (which needs expired
//! certificates, so validity is whatever the caller asks for).
//!
//! Layout of a PKI directory: `ca.pem` + `ca.key`, `crl.pem` (the CA's signed revocation list, written by [`init`] and
//! [`revoke`]), then `NAME.pem` + `NAME.key` per issued certificate (so the names `ca` and `crl` are reserved). Keys are ECDSA P-256 in PKCS#8 PEM, mode 0600; certificates are PEM, mode 0644. Every
//! file is written atomically (temporary file in the same directory, fsync, rename) and an existing file is never
//! replaced unless `force` is given; all target files are checked before any is written.
//!
//! The trust domain is recorded in the CA certificate as its single URI SAN `spiffe://DOMAIN` (the SPIFFE
//! trust-domain form); [`domain_of_ca`] and [`issue`] read it back from there. The CA subject (`CN=Strata CA,
//! O=DOMAIN`) is for humans only and is never parsed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use agent_core::identity::{Identity, IdentityError, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// File name of the CA certificate inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the CA's certificate revocation list inside a PKI directory.
pub const CRL_FILE: &str = "crl.pem";
/// Validity of a CA created by [`init`]: ten years.
pub const CA_VALIDITY_DAYS: i64 = 3653;
/// Default validity of an agent certificate: renewed with `labctl pki renew`, so it can be short.
pub const AGENT_VALIDITY_DAYS: u32 = 90;
/// Default validity of an admin or viewer certificate.
pub const PERSON_VALIDITY_DAYS: u32 = 397;

/// The default validity of a certificate of `role`, in days.
pub fn default_days(role: Role) -> u32 {
    match role {
        Role::Admin | Role::Viewer => PERSON_VALIDITY_DAYS,
        Role::HostAgent | Role::DnsAgent | Role::ServicesAgent => AGENT_VALIDITY_DAYS,
    }
}

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct IssueSpec<'a> {
    pub role: Role,
    pub name: &'a str,
    /// Extra subject alternative names: DNS names or IP addresses.
    pub sans: &'a [String],
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl<'a> IssueSpec<'a> {
    /// Valid from one minute ago (tolerates small clock skew) for `days` days from now.
    pub fn days(role: Role, name: &'a str, sans: &'a [String], days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        IssueSpec {
            role,
            name,
            sans,
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// The files written by [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub domain: String,
}

/// The files written by [`issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub identity: Identity,
}

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

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{what} {} does not exist (run `labctl pki init` first)", path.display())]
    MissingCa { what: &'static str, path: PathBuf },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} contains no pem certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("certificate {} cannot be parsed: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("private key {} cannot be parsed: {source}", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate {} is not a ca certificate", .0.display())]
    NotCa(PathBuf),
    #[error("ca key {} does not match ca certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("ca certificate {} has no single spiffe://DOMAIN uri san naming the trust domain", .0.display())]
    NoDomain(PathBuf),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("name `{0}` is reserved for the ca's own files")]
    ReservedName(String),
    #[error("invalid san `{0}` (expected a dns name or an ip address)")]
    BadSan(String),
    #[error("invalid san `{0}`: it looks like an ip address but is not a valid one")]
    BadIpSan(String),
    #[error("a {role} certificate needs at least one --san: every host name or ip address its clients dial")]
    NoSan { role: Role },
    #[error("validity until {not_after} is past the ca's own expiry ({ca_not_after}): use fewer --days")]
    PastCa { not_after: OffsetDateTime, ca_not_after: OffsetDateTime },
    #[error("{} is not signed by the ca in {} (`labctl pki show` names both issuers)", cert.display(), ca.display())]
    ForeignCertificate { cert: PathBuf, ca: PathBuf },
    #[error("`{0}` is neither a certificate name in the pki directory nor a serial number (hex, as `labctl pki show` prints it)")]
    UnknownRevokeTarget(String),
    #[error("revocation list {}: {reason}", path.display())]
    BadCrl { path: PathBuf, reason: String },
    #[error("invalid validity: not_after ({not_after}) is not after not_before ({not_before})")]
    BadValidity { not_before: OffsetDateTime, not_after: OffsetDateTime },
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// Creates the CA of trust domain `domain` in `dir` (created with mode 0700 if missing): `ca.pem` + `ca.key`.
pub fn init(dir: &Path, domain: &str, force: bool) -> Result<CaFiles, PkiError> {
    // The domain follows the identity rules; validate it with them rather than a copy of them.
    let domain = Identity::new(domain, Role::Admin, "ca")?.domain;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    check_absent(&[&cert_path, &key_path], force)?;

    let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "ca key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "Strata CA");
    params.distinguished_name.push(DnType::OrganizationName, domain.as_str());
    params.subject_alt_names = vec![SanType::URI(ia5(&format!("spiffe://{domain}"))?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    let crl_path = dir.join(CRL_FILE);
    check_absent(&[&crl_path], force)?;
    let cert = params.self_signed(&key).map_err(|source| PkiError::Generate { what: "ca certificate", source })?;

    create_dir(dir)?;
    write_pair(&key_path, key.serialize_pem().as_bytes(), &cert_path, cert.pem().as_bytes())?;
    // An empty revocation list from day one, so that agents can name it in `[grpc] crl` before anything is revoked.
    let ca = load_ca(dir)?;
    write_crl(dir, &ca, Vec::new(), 1)?;
    Ok(CaFiles { cert: cert_path, key: key_path, domain })
}

/// Issues `DIR/NAME.pem` + `DIR/NAME.key`, signed by the CA in `dir`, for identity `spiffe://DOMAIN/ROLE/NAME`.
pub fn issue(dir: &Path, spec: &IssueSpec<'_>, force: bool) -> Result<LeafFiles, PkiError> {
    if spec.name == "ca" || spec.name == "crl" {
        return Err(PkiError::ReservedName(spec.name.to_string()));
    }
    if spec.not_after <= spec.not_before {
        return Err(PkiError::BadValidity { not_before: spec.not_before, not_after: spec.not_after });
    }
    let is_agent = !matches!(spec.role, Role::Admin | Role::Viewer);
    if is_agent && spec.sans.is_empty() {
        return Err(PkiError::NoSan { role: spec.role });
    }
    let sans = spec.sans.iter().map(|s| parse_san(s)).collect::<Result<Vec<_>, _>>()?;
    let ca = load_ca(dir)?;
    if spec.not_after > ca.not_after {
        return Err(PkiError::PastCa { not_after: spec.not_after, ca_not_after: ca.not_after });
    }
    // Identity::new validates the name (letters, digits, '-', '_'), so it is also a safe file name.
    let identity = Identity::new(&ca.domain, spec.role, spec.name)?;
    let cert_path = dir.join(format!("{}.pem", spec.name));
    let key_path = dir.join(format!("{}.key", spec.name));
    check_absent(&[&cert_path, &key_path], force)?;

    let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, spec.name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, spec.role.as_str());
    params.subject_alt_names = std::iter::once(SanType::URI(ia5(&identity.uri())?)).chain(sans).collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let cert =
        params.signed_by(&key, &ca.issuer).map_err(|source| PkiError::Generate { what: "certificate", source })?;

    write_pair(&key_path, key.serialize_pem().as_bytes(), &cert_path, cert.pem().as_bytes())?;
    Ok(LeafFiles { cert: cert_path, key: key_path, identity })
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

/// Renews `DIR/NAME.pem`: a new key and certificate with the same identity and every DNS/IP SAN of the current one,
/// valid `days` (default: [`default_days`] of its role). The old certificate stays valid until it expires (revoke it
/// to end it sooner).
pub fn renew(dir: &Path, name: &str, days: Option<u32>) -> Result<LeafFiles, PkiError> {
    let path = dir.join(format!("{name}.pem"));
    Identity::new("x", Role::Admin, name)?;
    let info = show(&path)?;
    let der = read_cert_der(&path)?;
    let identity = Identity::from_cert_der(&der)?;
    let ca = load_ca(dir)?;
    if !ca.signed(&parse_cert(&path, &der)?) || identity.domain != ca.domain {
        return Err(PkiError::ForeignCertificate { cert: path, ca: dir.join(CA_CERT_FILE) });
    }
    let sans: Vec<String> = info.dns_sans.into_iter().chain(info.ip_sans).collect();
    let days = days.unwrap_or_else(|| default_days(identity.role));
    issue(dir, &IssueSpec::days(identity.role, &identity.name, &sans, days), true)
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
fn write_crl(
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

/// The trust domain recorded in `DIR/ca.pem` (its `spiffe://DOMAIN` URI SAN).
pub fn domain_of_ca(dir: &Path) -> Result<String, PkiError> {
    let path = dir.join(CA_CERT_FILE);
    let der = read_ca_file(&path, "ca certificate").and_then(|pem| cert_der_from_pem(&path, &pem))?;
    let cert = parse_cert(&path, &der)?;
    domain_from_cert(&path, &cert)
}

struct LoadedCa {
    domain: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    /// The CA's subject, DER: the issuer of everything it signs.
    subject_der: Vec<u8>,
    /// The CA certificate, DER.
    der: Vec<u8>,
}

impl LoadedCa {
    /// Whether `cert` was signed by this CA (its key, not only its name: two CAs may share a name).
    fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        let Ok((_, ca)) = X509Certificate::from_der(&self.der) else { return false };
        cert.issuer().as_raw() == self.subject_der.as_slice() && cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

fn load_ca(dir: &Path) -> Result<LoadedCa, PkiError> {
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

fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
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

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der).map(|(_, cert)| cert).map_err(|e| bad_cert(path, e))
}

fn bad_cert(path: &Path, reason: impl ToString) -> PkiError {
    PkiError::BadCertificate { path: path.to_path_buf(), reason: reason.to_string() }
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    s.try_into().map_err(|_| PkiError::BadSan(s.to_string()))
}

/// An IP address, or a DNS name (labels of letters, digits, '-', '_'; the first label may be `*`).
fn parse_san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // `10.0.0.256`, `10.0.0`, `fe80::g`: meant as an address; as a DNS name it would never match what clients dial.
    let numeric = !s.is_empty() && s.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()));
    if numeric || s.contains(':') {
        return Err(PkiError::BadIpSan(s.to_string()));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |(i, l): (usize, &str)| {
        (i == 0 && l == "*")
            || (!l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').enumerate().all(label_ok) || name == "*" {
        return Err(PkiError::BadSan(s.to_string()));
    }
    Ok(SanType::DnsName(ia5(name)?))
}

fn format_ip(raw: &[u8]) -> String {
    match raw.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(raw).unwrap_or_default()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(raw).unwrap_or_default()).to_string(),
        _ => raw.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
    }
}

fn check_absent(paths: &[&Path], force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => return Err(PkiError::Exists(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PkiError::Io { op: "inspect", path: path.to_path_buf(), source }),
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir).map_err(|source| PkiError::Io { op: "create directory", path: dir.to_path_buf(), source })
}

/// Writes the key, then the certificate. If the certificate cannot be written, a key that did not exist before is
/// removed again, so a failed run leaves no half pair behind.
fn write_pair(key_path: &Path, key: &[u8], cert_path: &Path, cert: &[u8]) -> Result<(), PkiError> {
    let key_existed = key_path.exists();
    write_atomic(key_path, key, KEY_MODE)?;
    if let Err(e) = write_atomic(cert_path, cert, CERT_MODE) {
        if !key_existed {
            let _ = fs::remove_file(key_path);
        }
        return Err(e);
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same directory: write, set mode, fsync, rename, fsync directory.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));

    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&tmp).map_err(io_err("create", &tmp))?;
        // The creation mode is filtered by the umask; set the exact mode before the file becomes visible.
        set_mode(&file, mode).map_err(io_err("set permissions of", &tmp))?;
        file.write_all(contents).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("write", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; not every platform or filesystem can sync a directory, so this is best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PkiError + 'a {
    move |source| PkiError::Io { op, path: path.to_path_buf(), source }
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DOMAIN: &str = "lab.home.arpa";

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn der_of(path: &Path) -> Vec<u8> {
        read_cert_der(path).unwrap()
    }

    fn sans() -> Vec<String> {
        vec!["host1.lab.home.arpa".into(), "localhost".into(), "192.168.1.10".into(), "::1".into()]
    }

    fn new_ca() -> (tempfile::TempDir, CaFiles) {
        let dir = tempfile::tempdir().unwrap();
        let ca = init(dir.path(), DOMAIN, false).unwrap();
        (dir, ca)
    }

    #[test]
    fn init_writes_ca_with_modes_and_domain() {
        let (dir, ca) = new_ca();
        assert_eq!(ca.cert, dir.path().join("ca.pem"));
        assert_eq!(ca.key, dir.path().join("ca.key"));
        assert_eq!(ca.domain, DOMAIN);
        assert_eq!(mode(&ca.cert), 0o644);
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(domain_of_ca(dir.path()).unwrap(), DOMAIN);

        let info = show(&ca.cert).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.identity, None);
        assert_eq!(info.subject, info.issuer);
        assert!(info.subject.contains("Strata CA"), "{}", info.subject);
        let years = (info.not_after - info.not_before) / (365 * 86_400);
        assert_eq!(years, 10);

        let der = der_of(&ca.cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        cert.verify_signature(None).unwrap();
        // No leftover temporary files.
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["ca.key", "ca.pem", "crl.pem"]);
    }

    #[test]
    fn init_creates_missing_dir_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/pki");
        init(&dir, DOMAIN, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn init_twice_needs_force_and_keeps_bytes() {
        let (dir, ca) = new_ca();
        let cert_before = fs::read(&ca.cert).unwrap();
        let key_before = fs::read(&ca.key).unwrap();
        let err = init(dir.path(), DOMAIN, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/ca.pem already exists (use --force to replace it)", dir.path().display())
        );
        assert_eq!(fs::read(&ca.cert).unwrap(), cert_before);
        assert_eq!(fs::read(&ca.key).unwrap(), key_before);

        // Only the key exists: still refused, and nothing is written.
        fs::remove_file(&ca.cert).unwrap();
        let err = init(dir.path(), DOMAIN, false).unwrap_err();
        assert!(err.to_string().contains("ca.key already exists"), "{err}");
        assert!(!ca.cert.exists());
        assert_eq!(fs::read(&ca.key).unwrap(), key_before);

        let again = init(dir.path(), "other.lab", true).unwrap();
        assert_ne!(fs::read(&again.key).unwrap(), key_before);
        assert_eq!(mode(&again.key), 0o600);
        assert_eq!(domain_of_ca(dir.path()).unwrap(), "other.lab");
    }

    #[test]
    fn init_rejects_bad_domain() {
        let dir = tempfile::tempdir().unwrap();
        let err = init(dir.path(), "bad/domain", false).unwrap_err();
        assert!(matches!(err, PkiError::Identity(_)), "{err}");
        assert!(err.to_string().contains("invalid domain"), "{err}");
        assert!(!dir.path().join("ca.pem").exists());
    }

    #[test]
    fn issue_carries_identity_sans_and_chains_to_ca() {
        let (dir, ca) = new_ca();
        let sans = sans();
        let leaf = issue(dir.path(), &IssueSpec::days(Role::HostAgent, "host1", &sans, 30), false).unwrap();
        assert_eq!(leaf.cert, dir.path().join("host1.pem"));
        assert_eq!(leaf.key, dir.path().join("host1.key"));
        assert_eq!(leaf.identity.uri(), "spiffe://lab.home.arpa/host-agent/host1");
        assert_eq!(mode(&leaf.key), 0o600);
        assert_eq!(mode(&leaf.cert), 0o644);

        let der = der_of(&leaf.cert);
        let id = Identity::from_cert_der(&der).unwrap();
        assert_eq!((id.domain.as_str(), id.role, id.name.as_str()), (DOMAIN, Role::HostAgent, "host1"));

        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let names = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
        let uris = names.iter().filter(|n| matches!(n, GeneralName::URI(_))).count();
        assert_eq!(uris, 1);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(cert.public_key().parsed().is_ok());
        assert_eq!(cert.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1"); // id-ecPublicKey

        let ca_der = der_of(&ca.cert);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let aki = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            })
            .unwrap();
        let ski = ca_cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki.0, ski.0);

        // The key file loads back and belongs to the certificate.
        let key = KeyPair::from_pem(&fs::read_to_string(&leaf.key).unwrap()).unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    }

    #[test]
    fn show_round_trips() {
        let (dir, ca) = new_ca();
        let sans = sans();
        let spec = IssueSpec::days(Role::Admin, "alice", &sans, 7);
        let leaf = issue(dir.path(), &spec, false).unwrap();
        let info = show(&leaf.cert).unwrap();
        assert_eq!(info.identity.as_deref(), Some("spiffe://lab.home.arpa/admin/alice"));
        assert_eq!(info.dns_sans, ["host1.lab.home.arpa", "localhost"]);
        assert_eq!(info.ip_sans, ["192.168.1.10", "::1"]);
        assert_eq!(info.not_before, spec.not_before.unix_timestamp());
        assert_eq!(info.not_after, spec.not_after.unix_timestamp());
        assert!(!info.is_ca);
        assert!(info.subject.contains("CN=alice"), "{}", info.subject);
        assert_eq!(info.issuer, show(&ca.cert).unwrap().subject);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["identity"], "spiffe://lab.home.arpa/admin/alice");
        assert_eq!(json["is_ca"], false);
    }

    #[test]
    fn expired_certificates_can_be_issued() {
        let (dir, _ca) = new_ca();
        let now = OffsetDateTime::now_utc();
        let spec = IssueSpec {
            role: Role::Viewer,
            name: "old",
            sans: &[],
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
        };
        let leaf = issue(dir.path(), &spec, false).unwrap();
        let info = show(&leaf.cert).unwrap();
        assert!(info.not_after < now.unix_timestamp());
        assert!(info.dns_sans.is_empty() && info.ip_sans.is_empty());
        assert_eq!(info.identity.as_deref(), Some("spiffe://lab.home.arpa/viewer/old"));

        let backwards = IssueSpec { not_before: now, not_after: now - Duration::days(1), ..spec };
        let err = issue(dir.path(), &backwards, true).unwrap_err();
        assert!(matches!(err, PkiError::BadValidity { .. }), "{err}");
    }

    #[test]
    fn issue_refuses_to_overwrite_without_force() {
        let (dir, _ca) = new_ca();
        let sans = ["10.0.0.53".to_string()];
        let spec = IssueSpec::days(Role::DnsAgent, "dns1", &sans, 30);
        let first = issue(dir.path(), &spec, false).unwrap();
        let before = fs::read(&first.cert).unwrap();
        let err = issue(dir.path(), &spec, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/dns1.pem already exists (use --force to replace it)", dir.path().display())
        );
        assert_eq!(fs::read(&first.cert).unwrap(), before);

        // A lone key blocks the pair: nothing is written.
        fs::remove_file(&first.cert).unwrap();
        let err = issue(dir.path(), &spec, false).unwrap_err();
        assert!(err.to_string().contains("dns1.key already exists"), "{err}");
        assert!(!first.cert.exists());

        let again = issue(dir.path(), &spec, true).unwrap();
        assert_eq!(show(&again.cert).unwrap().identity.as_deref(), Some("spiffe://lab.home.arpa/dns-agent/dns1"));
    }

    #[test]
    fn issue_without_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = IssueSpec::days(Role::Admin, "alice", &[], 1);
        let err = issue(dir.path(), &spec, false).unwrap_err();
        assert!(matches!(err, PkiError::MissingCa { .. }));
        assert!(err.to_string().contains(&format!("{}/ca.pem", dir.path().display())), "{err}");
        assert!(!dir.path().join("alice.key").exists());

        let (dir, ca) = new_ca();
        fs::remove_file(&ca.key).unwrap();
        let err = issue(dir.path(), &spec, false).unwrap_err();
        assert!(err.to_string().contains(&format!("{}/ca.key", dir.path().display())), "{err}");
        assert!(!dir.path().join("alice.key").exists());

        let err = domain_of_ca(tempfile::tempdir().unwrap().path()).unwrap_err();
        assert!(err.to_string().contains("ca.pem does not exist"), "{err}");
    }

    #[test]
    fn issue_rejects_bad_input() {
        let (dir, _ca) = new_ca();
        let bad_name = issue(dir.path(), &IssueSpec::days(Role::Admin, "a/b", &[], 1), false).unwrap_err();
        assert!(matches!(bad_name, PkiError::Identity(_)), "{bad_name}");
        assert!(bad_name.to_string().contains("invalid name `a/b`"), "{bad_name}");
        let dots = issue(dir.path(), &IssueSpec::days(Role::Admin, "..", &[], 1), false).unwrap_err();
        assert!(matches!(dots, PkiError::Identity(_)), "{dots}");
        let reserved = issue(dir.path(), &IssueSpec::days(Role::Admin, "ca", &[], 1), true).unwrap_err();
        assert!(matches!(reserved, PkiError::ReservedName(_)), "{reserved}");
        for san in ["", "a..b", "-x.lab", "bad name", "é.lab", "*"] {
            let sans = vec![san.to_string()];
            let err = issue(dir.path(), &IssueSpec::days(Role::Admin, "alice", &sans, 1), false).unwrap_err();
            assert!(matches!(err, PkiError::BadSan(_)), "{san}: {err}");
        }
        let sans = vec!["*.svc.lab".to_string(), "fe80::1".to_string()];
        issue(dir.path(), &IssueSpec::days(Role::ServicesAgent, "svc1", &sans, 1), false).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
    }

    /// Issue 18 item 5: every refused input names what is wrong; nothing is written.
    #[test]
    fn issue_refuses_bad_pki_input() {
        let (dir, _ca) = new_ca();
        let now = OffsetDateTime::now_utc();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let past_ca = now + Duration::days(CA_VALIDITY_DAYS + 30);
        // (case, role, sans, not_after, what the error must say)
        let cases: Vec<(&str, Role, Vec<String>, OffsetDateTime, &str)> = vec![
            ("agent without san", Role::DnsAgent, s(&[]), now + Duration::days(1), "needs at least one --san"),
            ("host agent without san", Role::HostAgent, s(&[]), now + Duration::days(1), "host-agent certificate"),
            (
                "ip out of range",
                Role::DnsAgent,
                s(&["10.0.0.256"]),
                now + Duration::days(1),
                "`10.0.0.256`: it looks like an ip",
            ),
            ("three-part ip", Role::DnsAgent, s(&["10.0.0"]), now + Duration::days(1), "`10.0.0`: it looks like an ip"),
            (
                "bad ipv6",
                Role::ServicesAgent,
                s(&["fe80::g"]),
                now + Duration::days(1),
                "`fe80::g`: it looks like an ip",
            ),
            ("past the ca", Role::Admin, s(&[]), past_ca, "past the ca's own expiry"),
            ("reserved crl name", Role::Viewer, s(&[]), now + Duration::days(1), "name `crl` is reserved"),
        ];
        for (case, role, sans, not_after, want) in cases {
            let name = if case == "reserved crl name" { "crl" } else { "x1" };
            let spec = IssueSpec { role, name, sans: &sans, not_before: now - Duration::minutes(1), not_after };
            let err = issue(dir.path(), &spec, false).expect_err(case).to_string();
            assert!(err.contains(want), "{case}: want {want:?} in {err:?}");
            assert!(!dir.path().join(format!("{name}.key")).exists(), "{case} wrote a key");
        }
        // Accepted forms: an agent with a DNS name or a valid address; a person without any SAN.
        for (role, sans) in [(Role::DnsAgent, s(&["dns1.lab"])), (Role::HostAgent, s(&["::1"])), (Role::Admin, s(&[]))]
        {
            issue(dir.path(), &IssueSpec::days(role, "ok", &sans, 1), true).unwrap();
        }
    }

    fn crl_serials(dir: &Path) -> Vec<String> {
        let pem = fs::read(dir.join(CRL_FILE)).unwrap();
        let der = CertificateRevocationListDer::pem_slice_iter(&pem).next().unwrap().unwrap();
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        crl.iter_revoked_certificates().map(|r| agent_core::tls::serial_hex(r.raw_serial())).collect()
    }

    #[test]
    fn revoke_by_name_or_serial_and_renew() {
        let (dir, ca) = new_ca();
        assert!(crl_serials(dir.path()).is_empty(), "init writes an empty list");
        let alice = issue(dir.path(), &IssueSpec::days(Role::Admin, "alice", &[], 10), false).unwrap();
        let bob = issue(dir.path(), &IssueSpec::days(Role::Viewer, "bob", &[], 10), false).unwrap();
        let alice_serial = show(&alice.cert).unwrap().serial;
        let r = revoke(dir.path(), "alice").unwrap();
        assert_eq!((r.serial.as_str(), r.newly, r.listed), (alice_serial.as_str(), true, 1));
        assert_eq!(r.identity.as_deref(), Some("spiffe://lab.home.arpa/admin/alice"));
        // By serial, with or without colons; twice is not an error.
        let bob_serial = show(&bob.cert).unwrap().serial;
        let r = revoke(dir.path(), &bob_serial.replace(':', "")).unwrap();
        assert_eq!((r.serial.as_str(), r.newly, r.listed), (bob_serial.as_str(), true, 2));
        assert!(!revoke(dir.path(), &bob_serial).unwrap().newly);
        assert_eq!(crl_serials(dir.path()), [alice_serial.clone(), bob_serial]);
        // The list is signed by the CA and verifies against it.
        let ca_certs = agent_core::tls::load_certs(&ca.cert).unwrap();
        let crls = agent_core::tls::Crls::load(&dir.path().join(CRL_FILE), &ca_certs, &ca.cert).unwrap();
        assert_eq!(crls.revoked.len(), 2);
        // Neither a name nor a serial; a certificate of another CA.
        let err = revoke(dir.path(), "nobody!").unwrap_err().to_string();
        assert!(err.contains("neither a certificate name"), "{err}");
        let (other, _) = new_ca();
        let carol = issue(other.path(), &IssueSpec::days(Role::Admin, "carol", &[], 10), false).unwrap();
        fs::copy(&carol.cert, dir.path().join("carol.pem")).unwrap();
        let err = revoke(dir.path(), "carol").unwrap_err().to_string();
        assert!(err.contains("carol.pem is not signed by the ca") && err.contains("labctl pki show"), "{err}");

        // Renew: same identity and SANs, new key and serial, default agent lifetime.
        let sans = ["dns1.lab".to_string(), "10.0.0.53".to_string()];
        let old = issue(dir.path(), &IssueSpec::days(Role::DnsAgent, "dns1", &sans, 5), false).unwrap();
        let before = show(&old.cert).unwrap();
        let new = renew(dir.path(), "dns1", None).unwrap();
        let after = show(&new.cert).unwrap();
        assert_eq!(after.identity, before.identity);
        assert_eq!((after.dns_sans, after.ip_sans), (before.dns_sans, before.ip_sans));
        assert_ne!(after.serial, before.serial);
        assert_eq!((after.not_after - after.not_before + 60) / 86_400, i64::from(AGENT_VALIDITY_DAYS));
        assert!(renew(dir.path(), "nobody", None).is_err());
    }

    #[test]
    fn wrong_files_are_errors_not_panics() {
        let (dir, ca) = new_ca();
        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "not a certificate").unwrap();
        assert!(matches!(show(&garbage), Err(PkiError::NoCertificate(_))));
        let broken = dir.path().join("broken.pem");
        fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let err = show(&broken).unwrap_err();
        assert!(matches!(err, PkiError::BadCertificate { .. }), "{err}");
        let err = show(&ca.key).unwrap_err();
        assert!(err.to_string().contains("contains no pem certificate"), "{err}");
        assert!(matches!(show(&dir.path().join("nope.pem")), Err(PkiError::Io { .. })));

        // A leaf certificate in place of the CA.
        let leaf = issue(dir.path(), &IssueSpec::days(Role::Admin, "alice", &[], 1), false).unwrap();
        let other = tempfile::tempdir().unwrap();
        fs::copy(&leaf.cert, other.path().join("ca.pem")).unwrap();
        fs::copy(&leaf.key, other.path().join("ca.key")).unwrap();
        let err = issue(other.path(), &IssueSpec::days(Role::Admin, "bob", &[], 1), false).unwrap_err();
        assert!(matches!(err, PkiError::NotCa(_)), "{err}");

        // A CA key that belongs to another CA.
        let (dir2, ca2) = new_ca();
        fs::copy(&ca.key, &ca2.key).unwrap();
        let err = issue(dir2.path(), &IssueSpec::days(Role::Admin, "bob", &[], 1), false).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");

        // A key file that is not a key.
        fs::write(&ca2.key, "garbage").unwrap();
        let err = issue(dir2.path(), &IssueSpec::days(Role::Admin, "bob", &[], 1), false).unwrap_err();
        assert!(matches!(err, PkiError::BadKey { .. }), "{err}");
        assert!(!dir2.path().join("bob.pem").exists());
    }
}
