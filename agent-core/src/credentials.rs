//! systemd credentials (`LoadCredential=NAME:PATH`): which file an agent reads for a secret its unit hands over.
//! Knows the `CREDENTIALS_DIRECTORY` convention and the credential names; must not know what the secret is for or
//! how it is parsed (that is `tls`), nor how a unit is written (that is `install`).
//!
//! systemd reads `PATH` as root before the service starts and gives the service a private copy,
//! `$CREDENTIALS_DIRECTORY/NAME`, readable by the unit's `User=` only (mode 0400): the agent never needs read access
//! to the root-owned original. Outside systemd (`check` from a shell, tests) the variable is unset and the configured
//! path is read.

use std::path::{Path, PathBuf};

/// The variable systemd sets when a unit has credentials.
pub const DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Credential name of the `[grpc] key` (the agent's mTLS private key).
pub const GRPC_KEY: &str = "grpc.key";

#[derive(Debug, thiserror::Error)]
#[error(
    "credential {name} is missing: {dir}/{name} does not exist ({DIRECTORY_ENV} is set, so the key is not read from \
     {configured}); the unit must hand it over with `LoadCredential={name}:{configured}` (re-run `install`)"
)]
pub struct CredentialError {
    pub name: String,
    pub dir: PathBuf,
    pub configured: PathBuf,
}

/// Where to read the secret `name`, configured at `configured`: `$CREDENTIALS_DIRECTORY/NAME` when the variable is
/// set (a missing file is an error naming the credential), else `configured`. The second value says whether a
/// credential was chosen.
pub fn resolve(name: &str, configured: &Path) -> Result<(PathBuf, bool), CredentialError> {
    resolve_in(
        std::env::var_os(DIRECTORY_ENV).map(PathBuf::from).filter(|d| !d.as_os_str().is_empty()),
        name,
        configured,
    )
}

fn resolve_in(dir: Option<PathBuf>, name: &str, configured: &Path) -> Result<(PathBuf, bool), CredentialError> {
    let Some(dir) = dir else {
        return Ok((configured.to_path_buf(), false));
    };
    let path = dir.join(name);
    // `exists` follows symlinks and is false when the directory cannot be searched: both are "not handed over".
    if path.exists() {
        Ok((path, true))
    } else {
        Err(CredentialError { name: name.to_owned(), dir, configured: configured.to_path_buf() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_wins_when_the_directory_is_set_and_its_absence_is_named() {
        let configured = Path::new("/etc/strata/pki/dns1.key");
        assert_eq!(resolve_in(None, GRPC_KEY, configured).unwrap(), (configured.to_path_buf(), false));

        let dir = tempfile::tempdir().unwrap();
        let err = resolve_in(Some(dir.path().into()), GRPC_KEY, configured).unwrap_err().to_string();
        assert!(err.starts_with("credential grpc.key is missing: "), "{err}");
        assert!(err.contains("LoadCredential=grpc.key:/etc/strata/pki/dns1.key"), "{err}");
        assert!(err.contains(&dir.path().join("grpc.key").display().to_string()), "{err}");

        std::fs::write(dir.path().join(GRPC_KEY), "k").unwrap();
        assert_eq!(
            resolve_in(Some(dir.path().into()), GRPC_KEY, configured).unwrap(),
            (dir.path().join("grpc.key"), true)
        );
    }
}
