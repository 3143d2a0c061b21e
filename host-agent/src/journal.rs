//! The crash journal and the backup history, in the agent's SQLite database (`STATE/host.db`). Every disruptive step
//! (guest freeze, quiesce, clone, resume, clone delete) is written BEFORE it is done and marked done after; `open_steps` tells
//! recovery what may still need undoing. The history has one row per run and target (a run writes to every target
//! of its VM). Knows the schema; must not know hypervisors, engines or how to undo.
//!
//! Test hook: when the environment variable `STRATA_TEST_CRASH_AT` names a step, the agent logs
//! `test hook: holding at step STEP` right after journaling that step and then stops making progress forever, so that
//! a test can SIGKILL it at exactly that point. It exists only for the crash-recovery tests; leave it unset.

use std::path::Path;
use std::sync::Mutex;

use agent_core::clock::now_unix;
use rusqlite::{params, Connection, OptionalExtension};

/// The steps the journal knows.
pub(crate) mod step {
    /// The VM was paused, suspended or stopped by us; `detail` is how (`paused`, `suspended`, `stopped`).
    pub(crate) const QUIESCE: &str = "quiesce";
    /// The guest's file systems were frozen through its agent (begun before the freeze, done once thawed); `detail`
    /// says by what (`guest agent`). Recovery thaws them after resuming the VM.
    pub(crate) const FREEZE: &str = "freeze";
    /// A clone was made; `detail` is its path.
    pub(crate) const CLONE: &str = "clone";
    pub(crate) const RESUME: &str = "resume";
    /// A clone is being deleted; `detail` is its path.
    pub(crate) const DELETE_CLONE: &str = "delete-clone";
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error(transparent)]
    State(#[from] agent_core::state::StateError),
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A journaled step that was started and never marked done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenStep {
    pub id: i64,
    pub vm: String,
    pub step: String,
    pub detail: String,
}

/// What one target got in one finished (or failed) backup run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryRow {
    pub vm: String,
    pub backup_id: String,
    /// The target's label (`default` for the rows of before targets).
    pub target: String,
    /// The target's location as the engine reads it (empty in the rows of before targets).
    pub url: String,
    pub engine: String,
    pub mode: String,
    pub time_unix: i64,
    /// The VM's downtime in this run (the same on every target's row).
    pub downtime_seconds: f64,
    /// How long this target's transfer took.
    pub duration_seconds: f64,
    pub size: u64,
    pub ok: bool,
    pub message: String,
}

/// Columns added to `history` since its first version: (name, definition), added to an older database at open.
const HISTORY_ADDED: [(&str, &str); 3] = [
    ("target", "TEXT NOT NULL DEFAULT 'default'"),
    ("url", "TEXT NOT NULL DEFAULT ''"),
    ("duration_seconds", "REAL NOT NULL DEFAULT 0"),
];

const HISTORY_COLUMNS: &str =
    "vm, backup_id, target, url, engine, mode, time_unix, downtime_seconds, duration_seconds, size, ok, message";

pub(crate) struct Journal {
    db: Mutex<Connection>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    pub(crate) fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let db = agent_core::state::open_db(state_dir, "host")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS journal (
                 id INTEGER PRIMARY KEY, vm TEXT NOT NULL, step TEXT NOT NULL, detail TEXT NOT NULL,
                 started_unix INTEGER NOT NULL, done_unix INTEGER);
             CREATE TABLE IF NOT EXISTS history (
                 id INTEGER PRIMARY KEY, vm TEXT NOT NULL, backup_id TEXT NOT NULL, engine TEXT NOT NULL,
                 mode TEXT NOT NULL, time_unix INTEGER NOT NULL, downtime_seconds REAL NOT NULL,
                 size INTEGER NOT NULL, ok INTEGER NOT NULL, message TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS repo_ids (
                 vm TEXT NOT NULL, url TEXT NOT NULL, id TEXT NOT NULL, since_unix INTEGER NOT NULL,
                 PRIMARY KEY (vm, url));",
        )?;
        let have: Vec<String> = {
            let mut st = db.prepare("SELECT name FROM pragma_table_info('history')")?;
            let names = st.query_map([], |r| r.get::<_, String>(0))?;
            names.collect::<Result<_, _>>()?
        };
        for (name, def) in HISTORY_ADDED {
            if !have.iter().any(|h| h == name) {
                db.execute_batch(&format!("ALTER TABLE history ADD COLUMN {name} {def}"))?;
            }
        }
        Ok(Journal { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `step` is about to be done; returns its id for [`Journal::done`].
    pub(crate) fn begin(&self, vm: &str, step: &str, detail: &str) -> Result<i64, JournalError> {
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

    /// The repository id recorded for target `url` of `vm` (at its first use), if any.
    pub(crate) fn repo_id(&self, vm: &str, url: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .db()
            .query_row("SELECT id FROM repo_ids WHERE vm = ?1 AND url = ?2", params![vm, url], |r| r.get(0))
            .optional()?)
    }

    /// Records the id of the repository at `url` (the first time it is seen).
    pub(crate) fn set_repo_id(&self, vm: &str, url: &str, id: &str) -> Result<(), JournalError> {
        self.db().execute(
            "INSERT OR IGNORE INTO repo_ids (vm, url, id, since_unix) VALUES (?1, ?2, ?3, ?4)",
            params![vm, url, id, now_unix()],
        )?;
        Ok(())
    }

    /// Changes what an open step says (a quiesce that fell back from pause to suspend).
    pub(crate) fn set_detail(&self, id: i64, detail: &str) -> Result<(), JournalError> {
        self.db().execute("UPDATE journal SET detail = ?1 WHERE id = ?2", params![detail, id])?;
        Ok(())
    }

    /// Marks a step done (its effect is undone or no longer needs undoing).
    pub(crate) fn done(&self, id: i64) -> Result<(), JournalError> {
        self.db().execute("UPDATE journal SET done_unix = ?1 WHERE id = ?2", params![now_unix(), id])?;
        Ok(())
    }

    /// Every freeze, quiesce or clone step not marked done, oldest first.
    pub(crate) fn open_steps(&self) -> Result<Vec<OpenStep>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, vm, step, detail FROM journal WHERE done_unix IS NULL AND step IN ('freeze', 'quiesce', 'clone') ORDER BY id",
        )?;
        let rows =
            st.query_map([], |r| Ok(OpenStep { id: r.get(0)?, vm: r.get(1)?, step: r.get(2)?, detail: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The open `clone` and `delete-clone` rows of `vm` naming `path`: the clone there is one this agent made and
    /// has not removed yet.
    pub(crate) fn open_clone_rows(&self, vm: &str, path: &str) -> Result<Vec<i64>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id FROM journal WHERE done_unix IS NULL AND vm = ?1 AND detail = ?2 \
             AND step IN ('clone', 'delete-clone') ORDER BY id",
        )?;
        let rows = st.query_map(params![vm, path], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Closes the bookkeeping rows (resume, delete-clone) left open by a crash: the recovery redoes their effect.
    pub(crate) fn close_stale(&self) -> Result<(), JournalError> {
        self.db().execute(
            "UPDATE journal SET done_unix = ?1 WHERE done_unix IS NULL AND step NOT IN ('freeze', 'quiesce', 'clone')",
            params![now_unix()],
        )?;
        Ok(())
    }

    pub(crate) fn record(&self, h: &HistoryRow) -> Result<(), JournalError> {
        self.db().execute(
            &format!(
                "INSERT INTO history ({HISTORY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ),
            params![
                h.vm,
                h.backup_id,
                h.target,
                h.url,
                h.engine,
                h.mode,
                h.time_unix,
                h.downtime_seconds,
                h.duration_seconds,
                h.size as i64,
                h.ok,
                h.message
            ],
        )?;
        Ok(())
    }

    /// When the last backup attempt of `vm` started, finished or not: the newest history row or, for a run the
    /// agent died in, its first journaled step. `None` when it was never tried.
    pub(crate) fn last_attempt(&self, vm: &str) -> Result<Option<i64>, JournalError> {
        Ok(self.db().query_row(
            "SELECT MAX(t) FROM (SELECT MAX(time_unix) AS t FROM history WHERE vm = ?1
                                 UNION ALL SELECT MAX(started_unix) FROM journal WHERE vm = ?1)",
            [vm],
            |r| r.get::<_, Option<i64>>(0),
        )?)
    }

    /// When the last run that reached target `target` of `vm` started.
    pub(crate) fn last_target_ok(&self, vm: &str, target: &str) -> Result<Option<i64>, JournalError> {
        Ok(self.db().query_row(
            "SELECT MAX(time_unix) FROM history WHERE vm = ?1 AND target = ?2 AND ok",
            [vm, target],
            |r| r.get::<_, Option<i64>>(0),
        )?)
    }

    /// The history of `vm`, oldest first: one row per run and target.
    pub(crate) fn history(&self, vm: &str) -> Result<Vec<HistoryRow>, JournalError> {
        self.rows("WHERE vm = ?1", &[&vm])
    }

    /// The history of every VM, oldest first.
    pub(crate) fn history_all(&self) -> Result<Vec<HistoryRow>, JournalError> {
        self.rows("", &[])
    }

    fn rows(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<HistoryRow>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(&format!("SELECT {HISTORY_COLUMNS} FROM history {filter} ORDER BY id"))?;
        let rows = st.query_map(args, |r| {
            Ok(HistoryRow {
                vm: r.get(0)?,
                backup_id: r.get(1)?,
                target: r.get(2)?,
                url: r.get(3)?,
                engine: r.get(4)?,
                mode: r.get(5)?,
                time_unix: r.get(6)?,
                downtime_seconds: r.get(7)?,
                duration_seconds: r.get(8)?,
                size: r.get::<_, i64>(9)?.max(0) as u64,
                ok: r.get(10)?,
                message: r.get(11)?,
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
        let f = j.begin("lab", step::FREEZE, "guest agent").unwrap();
        let q = j.begin("lab", step::QUIESCE, "paused").unwrap();
        let c = j.begin("lab", step::CLONE, "/vms/strata-clone-lab-x").unwrap();
        j.begin("lab", step::RESUME, "").unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let open = j.open_steps().unwrap();
        assert_eq!(open.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(), ["freeze", "quiesce", "clone"]);
        assert_eq!(open[2].detail, "/vms/strata-clone-lab-x");
        assert_eq!(j.open_clone_rows("lab", "/vms/strata-clone-lab-x").unwrap(), [c], "this agent's clone");
        assert!(j.open_clone_rows("web", "/vms/strata-clone-lab-x").unwrap().is_empty(), "another vm's row");
        assert!(j.open_clone_rows("lab", "/vms/strata-clone-lab").unwrap().is_empty(), "no row names that path");
        j.close_stale().unwrap();
        assert_eq!(j.open_steps().unwrap().len(), 3, "a freeze is not a bookkeeping row: recovery thaws it");
        j.done(f).unwrap();
        j.done(q).unwrap();
        j.done(c).unwrap();
        j.close_stale().unwrap();
        assert!(j.open_steps().unwrap().is_empty());
        assert!(j.open_clone_rows("lab", "/vms/strata-clone-lab-x").unwrap().is_empty(), "removed: done");
        let h = HistoryRow {
            vm: "lab".into(),
            backup_id: "lab-1".into(),
            target: "offsite".into(),
            url: "borg@nas:lab".into(),
            engine: "borg".into(),
            mode: "clone".into(),
            time_unix: 5,
            downtime_seconds: 0.25,
            duration_seconds: 1.5,
            size: 10,
            ok: true,
            message: String::new(),
        };
        assert!(j.last_attempt("lab").unwrap().is_some_and(|t| t > 5), "the journaled steps count as an attempt");
        assert_eq!(j.last_attempt("other").unwrap(), None);
        j.record(&h).unwrap();
        j.record(&HistoryRow { target: "local".into(), ok: false, time_unix: 7, ..h.clone() }).unwrap();
        assert_eq!(j.history("lab").unwrap()[0], h);
        assert_eq!(j.history_all().unwrap().len(), 2);
        assert!(j.history("other").unwrap().is_empty());
        assert_eq!(j.last_target_ok("lab", "offsite").unwrap(), Some(5));
        assert_eq!(j.last_target_ok("lab", "local").unwrap(), None);
    }

    /// A database of before targets gets the new columns; its rows are the `default` target's.
    #[test]
    fn an_old_history_is_read_as_the_default_targets() {
        let dir = tempfile::tempdir().unwrap();
        let db = agent_core::state::open_db(dir.path(), "host").unwrap();
        db.execute_batch(
            "CREATE TABLE history (
                 id INTEGER PRIMARY KEY, vm TEXT NOT NULL, backup_id TEXT NOT NULL, engine TEXT NOT NULL,
                 mode TEXT NOT NULL, time_unix INTEGER NOT NULL, downtime_seconds REAL NOT NULL,
                 size INTEGER NOT NULL, ok INTEGER NOT NULL, message TEXT NOT NULL);
             INSERT INTO history (vm, backup_id, engine, mode, time_unix, downtime_seconds, size, ok, message)
             VALUES ('lab', 'lab-1', 'rsync', 'stop', 9, 1.0, 3, 1, '');",
        )
        .unwrap();
        drop(db);
        let j = Journal::open(dir.path()).unwrap();
        let rows = j.history("lab").unwrap();
        assert_eq!((rows[0].target.as_str(), rows[0].url.as_str(), rows[0].duration_seconds), ("default", "", 0.0));
        assert_eq!(j.last_target_ok("lab", "default").unwrap(), Some(9));
        drop(j);
        Journal::open(dir.path()).unwrap();
    }
}
