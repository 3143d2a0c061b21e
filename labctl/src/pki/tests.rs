//! Tests of the whole PKI through its public functions: init, issue, show, revoke, renew and the errors of each.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agent_core::identity::{Identity, Role};
use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::read_cert_der;
use super::*;

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
    assert_eq!(err.to_string(), format!("{}/ca.pem already exists (use --force to replace it)", dir.path().display()));
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
        ("bad ipv6", Role::ServicesAgent, s(&["fe80::g"]), now + Duration::days(1), "`fe80::g`: it looks like an ip"),
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
    for (role, sans) in [(Role::DnsAgent, s(&["dns1.lab"])), (Role::HostAgent, s(&["::1"])), (Role::Admin, s(&[]))] {
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
