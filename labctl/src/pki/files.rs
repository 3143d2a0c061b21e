//! The PKI directory on disk: its file names and modes, and how files get there (atomically, never replacing an
//! existing file unless forced, no half key pair left behind). Must not know certificates.

use std::fs;
use std::io;
use std::path::Path;

use super::error::PkiError;

/// File name of the CA certificate inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the CA's certificate revocation list inside a PKI directory.
pub const CRL_FILE: &str = "crl.pem";

pub(super) const KEY_MODE: u32 = 0o600;
pub(super) const CERT_MODE: u32 = 0o644;
pub(super) const DIR_MODE: u32 = 0o700;

pub(super) fn check_absent(paths: &[&Path], force: bool) -> Result<(), PkiError> {
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

pub(super) fn create_dir(dir: &Path) -> Result<(), PkiError> {
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
pub(super) fn write_pair(key_path: &Path, key: &[u8], cert_path: &Path, cert: &[u8]) -> Result<(), PkiError> {
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

/// Writes `path` atomically with exactly `mode`, through the one atomic writer (`agent_core::state::write_atomic`:
/// temp file in the same directory, fsync, rename, fsync of the directory).
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    agent_core::state::write_atomic(path, contents, mode).map_err(|e| match e {
        agent_core::state::StateError::Io { path, source } => PkiError::Io { op: "write", path, source },
        // Not produced by write_atomic (no SQLite here); named all the same rather than lost.
        other @ agent_core::state::StateError::Sqlite { .. } => {
            PkiError::Io { op: "write", path: path.to_path_buf(), source: io::Error::other(other.to_string()) }
        }
    })
}
