//! The crash journal and the backup history, in the agent's SQLite database (`STATE/host.db`). Every disruptive step
//! (quiesce, clone, resume, clone delete) is written BEFORE it is done and marked done after; `open_steps` tells
//! recovery what may still need undoing. Knows the schema; must not know hypervisors, engines or how to undo.
//!
//! Test hook: when the environment variable `STRATA_TEST_CRASH_AT` names a step, the agent logs
//! `test hook: holding at step STEP` right after journaling that step and then stops making progress forever, so that
//! a test can SIGKILL it at exactly that point. It exists only for the crash-recovery tests; leave it unset.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection};

/// The environment variable of the crash test hook (see the module docs).
pub const CRASH_HOOK_ENV: &str = agent_core::state::CRASH_HOOK_ENV;

/// The steps the journal knows.
pub mod step {
    /// The VM was paused, suspended or stopped by us; `detail` is how (`paused`, `suspended`, `stopped`).
    pub const QUIESCE: &str = "quiesce";
    /// A clone was made; `detail` is its path.
    pub const CLONE: &str = "clone";
    pub const RESUME: &str = "resume";
    /// A clone is being deleted; `detail` is its path.
    pub const DELETE_CLONE: &str = "delete-clone";
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    State(#[from] agent_core::state::StateError),
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A journaled step that was started and never marked done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStep {
    pub id: i64,
    pub vm: String,
    pub step: String,
    pub detail: String,
}

/// One finished (or failed) backup run.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub vm: String,
    pub backup_id: String,
    pub engine: String,
    pub mode: String,
    pub time_unix: i64,
    pub downtime_seconds: f64,
    pub size: u64,
    pub ok: bool,
    pub message: String,
}

pub struct Journal {
    db: Mutex<Connection>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let db = agent_core::state::open_db(state_dir, "host")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS journal (
                 id INTEGER PRIMARY KEY, vm TEXT NOT NULL, step TEXT NOT NULL, detail TEXT NOT NULL,
                 started_unix INTEGER NOT NULL, done_unix INTEGER);
             CREATE TABLE IF NOT EXISTS history (
                 id INTEGER PRIMARY KEY, vm TEXT NOT NULL, backup_id TEXT NOT NULL, engine TEXT NOT NULL,
                 mode TEXT NOT NULL, time_unix INTEGER NOT NULL, downtime_seconds REAL NOT NULL,
                 size INTEGER NOT NULL, ok INTEGER NOT NULL, message TEXT NOT NULL);",
        )?;
        Ok(Journal { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `step` is about to be done; returns its id for [`Journal::done`].
    pub fn begin(&self, vm: &str, step: &str, detail: &str) -> Result<i64, JournalError> {
        let id = {
            let db = self.db();
            db.execute(
                "INSERT INTO journal (vm, step, detail, started_unix) VALUES (?1, ?2, ?3, ?4)",
                params![vm, step, detail, now_unix()],
            )?;
            db.last_insert_rowid()
        };
        agent_core::state::crash_point(step);
        Ok(id)
    }

    /// Marks a step done (its effect is undone or no longer needs undoing).
    pub fn done(&self, id: i64) -> Result<(), JournalError> {
        self.db().execute("UPDATE journal SET done_unix = ?1 WHERE id = ?2", params![now_unix(), id])?;
        Ok(())
    }

    /// Every quiesce or clone step not marked done, oldest first.
    pub fn open_steps(&self) -> Result<Vec<OpenStep>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, vm, step, detail FROM journal WHERE done_unix IS NULL AND step IN ('quiesce', 'clone') ORDER BY id",
        )?;
        let rows =
            st.query_map([], |r| Ok(OpenStep { id: r.get(0)?, vm: r.get(1)?, step: r.get(2)?, detail: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Closes the bookkeeping rows (resume, delete-clone) left open by a crash: the recovery redoes their effect.
    pub fn close_stale(&self) -> Result<(), JournalError> {
        self.db().execute(
            "UPDATE journal SET done_unix = ?1 WHERE done_unix IS NULL AND step NOT IN ('quiesce', 'clone')",
            params![now_unix()],
        )?;
        Ok(())
    }

    pub fn record(&self, h: &HistoryRow) -> Result<(), JournalError> {
        self.db().execute(
            "INSERT INTO history (vm, backup_id, engine, mode, time_unix, downtime_seconds, size, ok, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                h.vm,
                h.backup_id,
                h.engine,
                h.mode,
                h.time_unix,
                h.downtime_seconds,
                h.size as i64,
                h.ok,
                h.message
            ],
        )?;
        Ok(())
    }

    /// When the last backup attempt of `vm` started, finished or not: the newest history row or, for a run the
    /// agent died in, its first journaled step. `None` when it was never tried.
    pub fn last_attempt(&self, vm: &str) -> Result<Option<i64>, JournalError> {
        Ok(self.db().query_row(
            "SELECT MAX(t) FROM (SELECT MAX(time_unix) AS t FROM history WHERE vm = ?1
                                 UNION ALL SELECT MAX(started_unix) FROM journal WHERE vm = ?1)",
            [vm],
            |r| r.get::<_, Option<i64>>(0),
        )?)
    }

    /// The history of `vm`, oldest first.
    pub fn history(&self, vm: &str) -> Result<Vec<HistoryRow>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT vm, backup_id, engine, mode, time_unix, downtime_seconds, size, ok, message FROM history
             WHERE vm = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([vm], |r| {
            Ok(HistoryRow {
                vm: r.get(0)?,
                backup_id: r.get(1)?,
                engine: r.get(2)?,
                mode: r.get(3)?,
                time_unix: r.get(4)?,
                downtime_seconds: r.get(5)?,
                size: r.get::<_, i64>(6)?.max(0) as u64,
                ok: r.get(7)?,
                message: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_steps_survive_a_reopen_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let q = j.begin("lab", step::QUIESCE, "paused").unwrap();
        let c = j.begin("lab", step::CLONE, "/vms/strata-clone-lab-x").unwrap();
        j.begin("lab", step::RESUME, "").unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let open = j.open_steps().unwrap();
        assert_eq!(open.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(), ["quiesce", "clone"]);
        assert_eq!(open[1].detail, "/vms/strata-clone-lab-x");
        j.done(q).unwrap();
        j.done(c).unwrap();
        j.close_stale().unwrap();
        assert!(j.open_steps().unwrap().is_empty());
        let h = HistoryRow {
            vm: "lab".into(),
            backup_id: "lab-1".into(),
            engine: "borg".into(),
            mode: "clone".into(),
            time_unix: 5,
            downtime_seconds: 0.25,
            size: 10,
            ok: true,
            message: String::new(),
        };
        assert!(j.last_attempt("lab").unwrap().is_some_and(|t| t > 5), "the journaled steps count as an attempt");
        assert_eq!(j.last_attempt("other").unwrap(), None);
        j.record(&h).unwrap();
        assert_eq!(j.history("lab").unwrap(), vec![h]);
        assert!(j.history("other").unwrap().is_empty());
    }
}
