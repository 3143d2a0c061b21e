//! Agent state on disk: one SQLite database per agent (WAL, `synchronous=FULL`) and an atomic file writer.
//! Knows files and SQLite; must not know any agent's schema (each agent migrates its own tables).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: sqlite: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Creates the state directory (mode 0700) if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))
}

/// The environment variable of the crash test hook (see [`crash_point`]).
pub const CRASH_HOOK_ENV: &str = "STRATA_TEST_CRASH_AT";

/// The environment variable of the wait test hook (see [`crash_point`]): `STEP:FILE`.
pub const WAIT_HOOK_ENV: &str = "STRATA_TEST_WAIT_AT";

/// The test hooks, called by the agents right after they journal a step. When `STRATA_TEST_CRASH_AT` names `step`,
/// it logs `test hook: holding at step STEP` and then never returns, so that a test can SIGKILL the agent at exactly
/// that point. When `STRATA_TEST_WAIT_AT` is `STEP:FILE` for this step, it logs `test hook: waiting at step STEP` and
/// returns once FILE exists, so that a test can arrange a fault (e.g. take the database's write lock) at exactly that
/// point. They exist only for the crash and fault tests; leave the variables unset.
pub fn crash_point(step: &str) {
    if std::env::var(CRASH_HOOK_ENV).is_ok_and(|s| s == step) {
        tracing::warn!("test hook: holding at step {step}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if let Some(file) = std::env::var(WAIT_HOOK_ENV).ok().and_then(|v| wait_file(&v, step)) {
        tracing::warn!("test hook: waiting at step {step}");
        while !file.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The FILE of a `STEP:FILE` wait hook value when STEP is `step`.
fn wait_file(value: &str, step: &str) -> Option<PathBuf> {
    let (s, file) = value.split_once(':')?;
    (s == step && !file.is_empty()).then(|| PathBuf::from(file))
}

/// The fault test hook: when `STRATA_TEST_FAIL_AT` names `step`, returns an error message for the caller to fail
/// that step with (e.g. a safety snapshot that cannot be taken, an extraction that fails). Only for tests; leave the variable unset.
pub fn fail_point(step: &str) -> Result<(), String> {
    if std::env::var("STRATA_TEST_FAIL_AT").is_ok_and(|s| s == step) {
        tracing::warn!("test hook: failing step {step}");
        return Err(format!("test hook: step {step} made to fail"));
    }
    Ok(())
}

/// Opens (creating) `STATE_DIR/NAME.db` in WAL mode with a busy timeout and foreign keys on. `synchronous=FULL`:
/// every commit is fsynced before it returns, so a journaled step survives a power loss before its action is taken
/// (with `NORMAL`, WAL commits are durable only at the next checkpoint).
pub fn open_db(state_dir: &Path, name: &str) -> Result<rusqlite::Connection, StateError> {
    ensure_dir(state_dir)?;
    let path = state_dir.join(format!("{name}.db"));
    let sql = |source| StateError::Sqlite { path: path.clone(), source };
    let conn = rusqlite::Connection::open(&path).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
    Ok(conn)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename, fsync of the directory.
/// The file has exactly `mode` (set before the rename, so it is never visible with a wider mode).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| StateError::Io {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let tmp = dir.join(format!(".{}.tmp.{}", file_name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp); // left over from a crashed run with the same pid
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
        // create_new honours the umask; set the exact mode explicitly.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a private file (a credentials or secret file named in the config): a regular file that neither group nor
/// others can read (mode 0600/0400 or stricter). The reason (`Err`) never quotes the content; the caller names the
/// file and key.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!("mode {:04o} lets others read it: chmod 600", meta.mode() & 0o7777));
    }
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_refuse_group_and_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o660, false)] {
            write_atomic(&p, b"secret", mode).unwrap();
            let r = read_private_file(&p);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("chmod 600") && !e.contains("secret"), "{e}");
            }
        }
        assert!(read_private_file(dir.path()).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
        let err = write_atomic(&dir.path().join("missing/x"), b"", 0o600).unwrap_err().to_string();
        assert!(err.contains("missing/.x.tmp"), "{err}");
    }

    #[test]
    fn wait_hook_values() {
        assert_eq!(wait_file("quiesce:/tmp/go", "quiesce"), Some(PathBuf::from("/tmp/go")));
        assert_eq!(wait_file("quiesce:/tmp/go", "resume"), None);
        assert_eq!(wait_file("quiesce:", "quiesce"), None);
        assert_eq!(wait_file("quiesce", "quiesce"), None);
    }

    #[test]
    fn db_is_wal_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let db = open_db(&state, "agent").unwrap();
            let mode: String = db.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal");
            // 2 = FULL: a commit (a journaled step) is on disk before the action it announces is taken.
            let sync: i64 = db.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            db.execute_batch("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (42);").unwrap();
        }
        let db = open_db(&state, "agent").unwrap();
        let x: i64 = db.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
