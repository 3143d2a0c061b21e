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
//!
//! Submodules, each using only those listed after it: `issue` (init, issue, renew) → `crl` (revoke, the list) →
//! `cert` (reading certificates and the CA, `show`) → `files` (the directory's files, atomic writes) → `error`.
//! This file only declares them and re-exports the public API.

mod cert;
mod crl;
mod error;
mod files;
mod issue;
#[cfg(test)]
mod tests;

pub use cert::{domain_of_ca, show, CertInfo};
pub use crl::{revoke, Revocation};
pub use error::PkiError;
pub use files::{CA_CERT_FILE, CA_KEY_FILE, CRL_FILE};
pub use issue::{
    default_days, init, issue, renew, CaFiles, IssueSpec, LeafFiles, AGENT_VALIDITY_DAYS, CA_VALIDITY_DAYS,
    PERSON_VALIDITY_DAYS,
};
