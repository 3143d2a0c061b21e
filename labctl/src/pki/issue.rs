//! Issuing: creating the CA, issuing and renewing leaf certificates with their SPIFFE identity and SANs, and the
//! default validities. Must not know how the directory's files are written or how the revocation list is encoded.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use agent_core::identity::{Identity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::cert::{load_ca, parse_cert, read_cert_der, show};
use super::crl::write_crl;
use super::error::PkiError;
use super::files::{check_absent, create_dir, write_pair, CA_CERT_FILE, CA_KEY_FILE, CRL_FILE};

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
