//! The agent's SQLite state (`STATE_DIR/services.db`): per stack the deployed commit and tree, whether it is wanted
//! up, and its last error. Knows this schema only; must not know git, compose, Docker or proto/tonic.

use std::path::Path;
use std::sync::Mutex;

use agent_core::clock::now_unix;
use agent_core::state::{self, StateError};
use rusqlite::{params, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Open(#[from] StateError),
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// What the agent remembers about one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StackRecord {
    pub name: String,
    /// The commit it was last deployed from; empty when never deployed.
    pub commit: String,
    /// The tree hash of its directory at that commit.
    pub tree: String,
    pub deployed_unix: i64,
    /// False after `Down`: sync leaves it down until `Up`.
    pub wanted: bool,
    /// The last error (sync, validation, deploy); empty when the last attempt succeeded.
    pub error: String,
    /// What the running stack was deployed from (resolved config, profiles, image ids; `compose::config_hash`);
    /// empty before the first deploy that recorded one.
    pub config_hash: String,
}

impl StackRecord {
    fn new(name: &str) -> Self {
        StackRecord {
            name: name.into(),
            commit: String::new(),
            tree: String::new(),
            deployed_unix: 0,
            wanted: true,
            error: String::new(),
            config_hash: String::new(),
        }
    }
}

pub(crate) struct Store {
    db: Mutex<rusqlite::Connection>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS stacks (
    name TEXT PRIMARY KEY,
    commit_id TEXT NOT NULL DEFAULT '',
    tree TEXT NOT NULL DEFAULT '',
    deployed_unix INTEGER NOT NULL DEFAULT 0,
    wanted INTEGER NOT NULL DEFAULT 1,
    error TEXT NOT NULL DEFAULT ''
);";

impl Store {
    pub(crate) fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let db = state::open_db(state_dir, "services")?;
        db.execute_batch(SCHEMA)?;
        migrate(&db)?;
        Ok(Store { db: Mutex::new(db) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of `name` (a fresh one, wanted up, when the stack was never seen).
    pub(crate) fn get(&self, name: &str) -> Result<StackRecord, StoreError> {
        let r = self
            .conn()
            .query_row(
                "SELECT commit_id, tree, deployed_unix, wanted, error, config_hash FROM stacks WHERE name = ?1",
                params![name],
                |r| {
                    Ok(StackRecord {
                        name: name.to_string(),
                        commit: r.get(0)?,
                        tree: r.get(1)?,
                        deployed_unix: r.get(2)?,
                        wanted: r.get::<_, i64>(3)? != 0,
                        error: r.get(4)?,
                        config_hash: r.get(5)?,
                    })
                },
            )
            .optional()?;
        Ok(r.unwrap_or_else(|| StackRecord::new(name)))
    }

    fn ensure(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute("INSERT OR IGNORE INTO stacks (name) VALUES (?1)", params![name])?;
        Ok(())
    }

    /// Records a successful deploy: commit and tree, error cleared.
    pub(crate) fn set_deployed(&self, name: &str, commit: &str, tree: &str) -> Result<(), StoreError> {
        self.ensure(name)?;
        self.conn().execute(
            "UPDATE stacks SET commit_id = ?2, tree = ?3, deployed_unix = ?4, error = '' WHERE name = ?1",
            params![name, commit, tree, now_unix()],
        )?;
        Ok(())
    }

    /// Sets (or clears, with "") the stack's last error.
    pub(crate) fn set_error(&self, name: &str, error: &str) -> Result<(), StoreError> {
        self.ensure(name)?;
        self.conn().execute("UPDATE stacks SET error = ?2 WHERE name = ?1", params![name, error])?;
        Ok(())
    }

    /// Records the config hash of what runs now (after a deploy, or when a sync found it unchanged).
    pub(crate) fn set_config_hash(&self, name: &str, hash: &str) -> Result<(), StoreError> {
        self.ensure(name)?;
        self.conn().execute("UPDATE stacks SET config_hash = ?2 WHERE name = ?1", params![name, hash])?;
        Ok(())
    }

    pub(crate) fn set_wanted(&self, name: &str, wanted: bool) -> Result<(), StoreError> {
        self.ensure(name)?;
        self.conn().execute("UPDATE stacks SET wanted = ?2 WHERE name = ?1", params![name, wanted as i64])?;
        Ok(())
    }
}

/// Columns added after the first schema, each added to an existing table with its rows kept.
fn migrate(db: &rusqlite::Connection) -> Result<(), StoreError> {
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('stacks')")?;
    let columns: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if !columns.iter().any(|c| c == "config_hash") {
        db.execute_batch("ALTER TABLE stacks ADD COLUMN config_hash TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.get("photos").unwrap(), StackRecord::new("photos"));
            s.set_error("photos", "stack photos: invalid").unwrap();
            s.set_deployed("photos", "c1", "t1").unwrap();
            s.set_error("wiki", "boom").unwrap();
            s.set_wanted("wiki", false).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let p = s.get("photos").unwrap();
        assert_eq!((p.commit.as_str(), p.tree.as_str(), p.error.as_str(), p.wanted), ("c1", "t1", "", true));
        assert!(p.deployed_unix > 0);
        assert_eq!(p.config_hash, "");
        s.set_config_hash("photos", "h1").unwrap();
        let p = s.get("photos").unwrap();
        assert_eq!((p.commit.as_str(), p.config_hash.as_str()), ("c1", "h1"));
        let w = s.get("wiki").unwrap();
        assert_eq!((w.error.as_str(), w.wanted, w.commit.as_str()), ("boom", false, ""));
    }

    /// A database written before `config_hash` existed keeps its rows and gains the column.
    #[test]
    fn an_old_database_gains_the_config_hash_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = state::open_db(dir.path(), "services").unwrap();
            db.execute_batch(
                "CREATE TABLE stacks (name TEXT PRIMARY KEY, commit_id TEXT NOT NULL DEFAULT '', tree TEXT NOT NULL \
                 DEFAULT '', deployed_unix INTEGER NOT NULL DEFAULT 0, wanted INTEGER NOT NULL DEFAULT 1, error TEXT \
                 NOT NULL DEFAULT ''); INSERT INTO stacks (name, commit_id, wanted) VALUES ('old', 'c0', 0);",
            )
            .unwrap();
        }
        for _ in 0..2 {
            let s = Store::open(dir.path()).unwrap();
            let r = s.get("old").unwrap();
            assert_eq!((r.commit.as_str(), r.wanted, r.config_hash.as_str()), ("c0", false, ""));
        }
    }
}
