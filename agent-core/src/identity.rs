//! Who a peer is: the role list and the `spiffe://DOMAIN/ROLE/NAME` identity read from a certificate's single URI SAN.
//! Knows X.509 and the naming convention; must not know which role may call what (that is `policy`).

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Every role a Strata certificate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Viewer,
    HostAgent,
    DnsAgent,
    ServicesAgent,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Viewer, Role::HostAgent, Role::DnsAgent, Role::ServicesAgent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::HostAgent => "host-agent",
            Role::DnsAgent => "dns-agent",
            Role::ServicesAgent => "services-agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

/// A peer's identity: `spiffe://DOMAIN/ROLE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub domain: String,
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(domain: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        validate_label("domain", domain, true)?;
        validate_label("name", name, false)?;
        Ok(Identity { domain: domain.to_string(), role, name: name.to_string() })
    }

    pub fn uri(&self) -> String {
        format!("spiffe://{}/{}/{}", self.domain, self.role, self.name)
    }

    /// Parses `spiffe://DOMAIN/ROLE/NAME`.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| IdentityError::BadUri(uri.to_string()))?;
        let mut parts = rest.split('/');
        let (Some(domain), Some(role), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::BadUri(uri.to_string()));
        };
        Identity::new(domain, role.parse()?, name)
    }

    /// Reads the identity from a DER certificate: exactly one URI SAN, in the SPIFFE form.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                if let GeneralName::URI(u) = gn {
                    uris.push(u.to_string());
                }
            }
        }
        match uris.as_slice() {
            [one] => Identity::parse_uri(one),
            [] => Err(IdentityError::NoUriSan),
            many => Err(IdentityError::ManyUriSans(many.len())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

fn validate_label(what: &'static str, s: &str, dots: bool) -> Result<(), IdentityError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadPart { what, value: s.to_string() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown role `{0}` (expected one of admin, viewer, host-agent, dns-agent, services-agent)")]
    UnknownRole(String),
    #[error("identity `{0}` is not of the form spiffe://DOMAIN/ROLE/NAME")]
    BadUri(String),
    #[error("invalid {what} `{value}` in identity (letters, digits, '-', '_' only)")]
    BadPart { what: &'static str, value: String },
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate has no URI SAN, so no identity")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; exactly one is allowed")]
    ManyUriSans(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    type Want = Result<(&'static str, Role, &'static str), &'static str>;

    #[test]
    fn parses_and_rejects_uris() {
        let cases: &[(&str, Want)] = &[
            ("spiffe://lab.home.arpa/admin/alice", Ok(("lab.home.arpa", Role::Admin, "alice"))),
            ("spiffe://lab/services-agent/svc1", Ok(("lab", Role::ServicesAgent, "svc1"))),
            ("https://lab/admin/alice", Err("not of the form")),
            ("spiffe://lab/root/alice", Err("unknown role `root`")),
            ("spiffe://lab/admin", Err("not of the form")),
            ("spiffe://lab/admin/a/b", Err("not of the form")),
            ("spiffe://lab/admin/a b", Err("invalid name")),
            ("spiffe:///admin/a", Err("invalid domain")),
        ];
        for (uri, want) in cases {
            match (Identity::parse_uri(uri), want) {
                (Ok(id), Ok((d, r, n))) => assert_eq!((id.domain.as_str(), id.role, id.name.as_str()), (*d, *r, *n)),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{uri}: {e}"),
                (got, want) => panic!("{uri}: got {got:?}, want {want:?}"),
            }
        }
    }
}
