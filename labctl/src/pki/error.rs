//! The one error type of the PKI, each variant naming the file or input that is wrong. Must not know how
//! certificates are made or read.

use std::io;
use std::path::PathBuf;

use agent_core::identity::{IdentityError, Role};
use time::OffsetDateTime;

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
