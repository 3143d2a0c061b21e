//! Dynamic records on disk: the `records` table of the agent's SQLite database (written before an RPC returns).
//! Knows SQLite and the record columns; must not know zones, ownership rules, gRPC or the query path.

use std::path::Path;
use std::sync::Mutex;

use agent_core::clock::now_unix;
use rusqlite::params;

use crate::records::LocalRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] agent_core::state::StateError),
    #[error("record store: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The dynamic-record table. Cheap operations; callers may use it from async code.
pub(crate) struct Store {
    conn: Mutex<rusqlite::Connection>,
}

/// A stored row that no longer validates (e.g. written by an older version): reported, not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRow {
    pub name: String,
    pub kind: String,
    pub reason: String,
}

impl Store {
    /// Opens `STATE_DIR/dns.db` and creates the table if needed.
    pub(crate) fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let conn = agent_core::state::open_db(state_dir, "dns")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                name TEXT NOT NULL,
                type TEXT NOT NULL,
                value TEXT NOT NULL,
                ttl INTEGER NOT NULL,
                owner TEXT NOT NULL,
                updated_unix INTEGER NOT NULL,
                PRIMARY KEY (name, type, value)
            );",
        )?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every stored record, and the rows that do not validate any more.
    pub(crate) fn load(&self) -> Result<(Vec<LocalRecord>, Vec<BadRow>), StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, type, value, ttl, owner FROM records ORDER BY name, type, value")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for row in rows {
            let (name, kind, value, ttl, owner) = row?;
            let ttl = u32::try_from(ttl).ok();
            match LocalRecord::parse(&name, &kind, &value, ttl.or(Some(0)), &owner, None) {
                Ok(r) => good.push(r),
                Err(e) => bad.push(BadRow { name, kind, reason: e.to_string() }),
            }
        }
        Ok((good, bad))
    }

    /// Inserts `record`, replacing any record with the same key (a CNAME per name, other types per value).
    pub(crate) fn upsert(&self, record: &LocalRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let name = record.name.to_ascii();
        if record.kind == crate::records::Kind::Cname {
            tx.execute("DELETE FROM records WHERE name = ?1 AND type = 'CNAME'", params![name])?;
        }
        tx.execute(
            "INSERT INTO records (name, type, value, ttl, owner, updated_unix) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name, type, value) DO UPDATE SET ttl = excluded.ttl, owner = excluded.owner,
             updated_unix = excluded.updated_unix",
            params![name, record.kind.as_str(), record.value, record.ttl, record.owner, now_unix()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes exactly these records (by key); returns how many rows went.
    pub(crate) fn delete(&self, records: &[LocalRecord]) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        for r in records {
            n += tx.execute(
                "DELETE FROM records WHERE name = ?1 AND type = ?2 AND value = ?3",
                params![r.name.to_ascii(), r.kind.as_str(), r.value],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, kind: &str, value: &str, owner: &str) -> LocalRecord {
        LocalRecord::parse(name, kind, value, Some(60), owner, None).unwrap()
    }

    #[test]
    fn upsert_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.upsert(&rec("a.lab.", "A", "10.0.0.1", "o1")).unwrap();
            s.upsert(&rec("a.lab.", "A", "10.0.0.2", "o1")).unwrap();
            s.upsert(&rec("a.lab.", "A", "10.0.0.2", "o2")).unwrap(); // same key: replaced
            s.upsert(&rec("c.lab.", "CNAME", "a.lab.", "o1")).unwrap();
            s.upsert(&rec("c.lab.", "CNAME", "b.lab.", "o1")).unwrap(); // one CNAME per name
            let (all, bad) = s.load().unwrap();
            assert!(bad.is_empty());
            assert_eq!(all.len(), 3, "{all:?}");
            assert_eq!(all.iter().find(|r| r.value == "10.0.0.2").unwrap().owner, "o2");
            assert_eq!(all.iter().find(|r| r.kind == crate::records::Kind::Cname).unwrap().value, "b.lab.");
            assert_eq!(s.delete(&[rec("a.lab.", "A", "10.0.0.1", "")]).unwrap(), 1);
            assert_eq!(s.delete(&[rec("a.lab.", "A", "10.0.0.1", "")]).unwrap(), 0);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap().0.len(), 2, "survives reopening");
        s.conn().execute("INSERT INTO records VALUES ('x.lab.', 'BOGUS', 'v', 60, '', 0)", []).unwrap();
        let (good, bad) = s.load().unwrap();
        assert_eq!((good.len(), bad.len()), (2, 1));
        assert!(bad[0].reason.contains("unknown record type"), "{bad:?}");
    }
}
