//! The crash journal and the job history of backups, restores, checks and drills, in the agent's SQLite database
//! (`STATE/services.db`). Every step is written BEFORE it is done and marked done after; after a crash,
//! `open_steps` tells recovery what may still need undoing and `running` which runs died (and in which step).
//! A restore that recovery could not safely undo is *held* (`held` table) until the operator resumes or abandons it.
//! Knows the schema; must not know ZFS, Borg, Docker or how a step is undone.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// The steps the journal knows. Those marked "undo" are undone by recovery when left open.
pub mod step {
    pub const PREFLIGHT: &str = "preflight";
    pub const PRE_HOOKS: &str = "pre-hooks";
    /// Undo: containers stopped or paused by us; `detail` is `stop|pause` and the container ids (space-separated).
    pub const QUIESCE: &str = "quiesce";
    pub const SNAPSHOT: &str = "snapshot";
    pub const RESUME: &str = "resume";
    pub const POST_HOOKS: &str = "post-hooks";
    /// Undo: a clone dataset of ours (`detail`), destroyed by recovery.
    pub const CLONE: &str = "clone";
    pub const BORG_CREATE: &str = "borg-create";
    pub const DESTROY_CLONE: &str = "destroy-clone";
    pub const PRUNE: &str = "prune";
    pub const COMPACT: &str = "compact";
    pub const LOCAL_SNAPSHOTS: &str = "local-snapshots";
    /// Undo: a scratch dataset of ours (`detail`) for an extraction (restore, drill), destroyed by recovery.
    pub const SCRATCH: &str = "scratch";
    pub const EXTRACT: &str = "extract";
    pub const COMPARE: &str = "compare";
    pub const CHECK: &str = "check";
    /// Undo: containers stopped for a restore (`detail` as for QUIESCE), started again by recovery.
    pub const RESTORE_STOP: &str = "restore-stop";
    pub const SAFETY_SNAPSHOT: &str = "safety-snapshot";
    /// Undo: live data being replaced; `detail` is the safety snapshot. Recovery puts the safety snapshot's data
    /// back, since a half-written dataset is worse than the state before the restore.
    pub const RESTORE_DATA: &str = "restore-data";
    pub const WAIT_HEALTHY: &str = "wait-healthy";

    /// The backup's steps, in order (the crash tests walk them).
    pub const BACKUP: &[&str] = &[
        PREFLIGHT,
        PRE_HOOKS,
        QUIESCE,
        SNAPSHOT,
        RESUME,
        POST_HOOKS,
        CLONE,
        BORG_CREATE,
        DESTROY_CLONE,
        PRUNE,
        COMPACT,
        LOCAL_SNAPSHOTS,
    ];
    /// Steps whose effect recovery undoes when they were left open.
    pub const UNDOABLE: &[&str] = &[QUIESCE, CLONE, SCRATCH, RESTORE_STOP, RESTORE_DATA];
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    State(#[from] agent_core::state::StateError),
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A journaled step that was started and never marked done.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStep {
    pub id: i64,
    pub run: i64,
    pub service: String,
    pub step: String,
    pub detail: String,
    /// When the step was journaled (Unix seconds).
    pub started_unix: f64,
}

/// An interrupted in-place restore that recovery did not undo, because something may have written the dataset since
/// (see `recovery`): the service stays stopped until the operator resumes or abandons it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub service: String,
    /// The restore run that was interrupted.
    pub run: i64,
    /// Its safety snapshot, `DATASET@strata-prerestore-…`.
    pub safety: String,
    /// What it restored from: an archive, or a local snapshot `DATASET@SNAP` (one of the two is empty).
    pub archive: String,
    pub snapshot: String,
    /// The containers it had stopped (ids), started again by `--abandon` or a finished `--resume`.
    pub stopped: Vec<String>,
    /// Why it was not undone.
    pub reason: String,
    pub since_unix: f64,
}

/// A run that never finished: the agent died in `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRun {
    pub id: i64,
    pub service: String,
    pub kind: String,
    pub step: String,
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// `ok`, `warning` or `failed`.
    pub result: String,
    pub error: String,
    pub downtime_seconds: f64,
    pub archive: String,
    pub snapshot: String,
    pub original_size: u64,
    pub compressed_size: u64,
    pub deduplicated_size: u64,
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub id: i64,
    pub service: String,
    pub kind: String,
    pub trigger: String,
    pub started_unix: f64,
    pub duration_seconds: f64,
    pub step: String,
    pub outcome: Outcome,
}

pub struct Journal {
    db: Mutex<Connection>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, kind TEXT NOT NULL, trigger TEXT NOT NULL,
    started_unix REAL NOT NULL, finished_unix REAL, step TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT 'running', error TEXT NOT NULL DEFAULT '',
    downtime_seconds REAL NOT NULL DEFAULT 0, archive TEXT NOT NULL DEFAULT '', snapshot TEXT NOT NULL DEFAULT '',
    original_size INTEGER NOT NULL DEFAULT 0, compressed_size INTEGER NOT NULL DEFAULT 0,
    deduplicated_size INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS runs_service ON runs (service, kind, id);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY, run INTEGER NOT NULL, service TEXT NOT NULL, step TEXT NOT NULL,
    detail TEXT NOT NULL, started_unix REAL NOT NULL, done_unix REAL);
CREATE INDEX IF NOT EXISTS journal_open ON journal (done_unix);
CREATE TABLE IF NOT EXISTS held (
    service TEXT PRIMARY KEY, run INTEGER NOT NULL, safety TEXT NOT NULL, archive TEXT NOT NULL,
    snapshot TEXT NOT NULL, stopped TEXT NOT NULL, reason TEXT NOT NULL, since_unix REAL NOT NULL);
";

pub fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let db = agent_core::state::open_db(state_dir, "services")?;
        db.execute_batch(SCHEMA)?;
        Ok(Journal { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run of `kind` (`backup`, `restore`, `check`, `drill`) for `service`.
    pub fn start_run(&self, service: &str, kind: &str, trigger: &str) -> Result<i64, JournalError> {
        let db = self.db();
        db.execute(
            "INSERT INTO runs (service, kind, trigger, started_unix) VALUES (?1, ?2, ?3, ?4)",
            params![service, kind, trigger, now_unix()],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// Records that `step` of `run` is about to be done; returns its id for [`Journal::done`]. Then the crash test
    /// hook may hold the agent here (see `agent_core::state::crash_point`).
    pub fn begin(&self, run: i64, service: &str, step: &str, detail: &str) -> Result<i64, JournalError> {
        let id = {
            let mut db = self.db();
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO journal (run, service, step, detail, started_unix) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run, service, step, detail, now_unix()],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute("UPDATE runs SET step = ?1 WHERE id = ?2", params![step, run])?;
            tx.commit()?;
            id
        };
        agent_core::state::crash_point(step);
        Ok(id)
    }

    /// Marks a step done (its effect is undone or no longer needs undoing).
    pub fn done(&self, id: i64) -> Result<(), JournalError> {
        self.db().execute("UPDATE journal SET done_unix = ?1 WHERE id = ?2", params![now_unix(), id])?;
        Ok(())
    }

    /// Ends a run with its outcome.
    pub fn finish(&self, run: i64, o: &Outcome) -> Result<(), JournalError> {
        self.db().execute(
            "UPDATE runs SET finished_unix = ?1, result = ?2, error = ?3, downtime_seconds = ?4, archive = ?5,
                 snapshot = ?6, original_size = ?7, compressed_size = ?8, deduplicated_size = ?9 WHERE id = ?10",
            params![
                now_unix(),
                o.result,
                o.error,
                o.downtime_seconds,
                o.archive,
                o.snapshot,
                o.original_size as i64,
                o.compressed_size as i64,
                o.deduplicated_size as i64,
                run
            ],
        )?;
        Ok(())
    }

    /// Every step not marked done, oldest first.
    pub fn open_steps(&self) -> Result<Vec<OpenStep>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, run, service, step, detail, started_unix FROM journal WHERE done_unix IS NULL ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(OpenStep {
                id: r.get(0)?,
                run: r.get(1)?,
                service: r.get(2)?,
                step: r.get(3)?,
                detail: r.get(4)?,
                started_unix: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records what a run reads from (an archive, or a local snapshot), before it changes anything.
    pub fn set_source(&self, run: i64, archive: &str, snapshot: &str) -> Result<(), JournalError> {
        self.db()
            .execute("UPDATE runs SET archive = ?1, snapshot = ?2 WHERE id = ?3", params![archive, snapshot, run])?;
        Ok(())
    }

    /// (archive, snapshot) recorded by [`Journal::set_source`].
    pub fn source(&self, run: i64) -> Result<(String, String), JournalError> {
        Ok(self
            .db()
            .query_row("SELECT archive, snapshot FROM runs WHERE id = ?1", params![run], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or_default())
    }

    /// Holds an interrupted restore, in one transaction: the held row, the steps `close` marked done (the held row
    /// now stands for them) and the run ended as failed with the reason.
    pub fn hold(&self, h: &Held, close: &[i64]) -> Result<(), JournalError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO held (service, run, safety, archive, snapshot, stopped, reason, since_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![h.service, h.run, h.safety, h.archive, h.snapshot, h.stopped.join(" "), h.reason, h.since_unix],
        )?;
        for id in close {
            tx.execute("UPDATE journal SET done_unix = ?1 WHERE id = ?2", params![now_unix(), id])?;
        }
        tx.execute(
            "UPDATE runs SET finished_unix = ?1, result = 'failed', error = ?2 WHERE id = ?3",
            params![now_unix(), h.reason, h.run],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The held restore of `service`, if any.
    pub fn held(&self, service: &str) -> Result<Option<Held>, JournalError> {
        Ok(self.all_held()?.into_iter().find(|h| h.service == service))
    }

    /// Every held restore, by service.
    pub fn all_held(&self) -> Result<Vec<Held>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT service, run, safety, archive, snapshot, stopped, reason, since_unix FROM held ORDER BY service",
        )?;
        let rows = st.query_map([], |r| {
            let stopped: String = r.get(5)?;
            Ok(Held {
                service: r.get(0)?,
                run: r.get(1)?,
                safety: r.get(2)?,
                archive: r.get(3)?,
                snapshot: r.get(4)?,
                stopped: stopped.split_whitespace().map(String::from).collect(),
                reason: r.get(6)?,
                since_unix: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The operator decided: the held restore of `service` is no longer held.
    pub fn release_held(&self, service: &str) -> Result<(), JournalError> {
        self.db().execute("DELETE FROM held WHERE service = ?1", params![service])?;
        Ok(())
    }

    /// Runs that never finished (the agent died during them).
    pub fn running(&self) -> Result<Vec<DeadRun>, JournalError> {
        let db = self.db();
        let mut st = db.prepare("SELECT id, service, kind, step FROM runs WHERE finished_unix IS NULL ORDER BY id")?;
        let rows =
            st.query_map([], |r| Ok(DeadRun { id: r.get(0)?, service: r.get(1)?, kind: r.get(2)?, step: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The history, newest first: of one service or all, at most `limit` rows.
    pub fn history(&self, service: Option<&str>, limit: u32) -> Result<Vec<HistoryRow>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, service, kind, trigger, started_unix, COALESCE(finished_unix, started_unix), step, result,
                 error, downtime_seconds, archive, snapshot, original_size, compressed_size, deduplicated_size
             FROM runs WHERE (?1 IS NULL OR service = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![service, limit], |r| {
            let started: f64 = r.get(4)?;
            let finished: f64 = r.get(5)?;
            Ok(HistoryRow {
                id: r.get(0)?,
                service: r.get(1)?,
                kind: r.get(2)?,
                trigger: r.get(3)?,
                started_unix: started,
                duration_seconds: (finished - started).max(0.0),
                step: r.get(6)?,
                outcome: Outcome {
                    result: r.get(7)?,
                    error: r.get(8)?,
                    downtime_seconds: r.get(9)?,
                    archive: r.get(10)?,
                    snapshot: r.get(11)?,
                    original_size: r.get::<_, i64>(12)?.max(0) as u64,
                    compressed_size: r.get::<_, i64>(13)?.max(0) as u64,
                    deduplicated_size: r.get::<_, i64>(14)?.max(0) as u64,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The sizes recorded for an archive this agent created: (original, deduplicated).
    pub fn archive_sizes(&self, service: &str, archive: &str) -> Result<Option<(u64, u64)>, JournalError> {
        Ok(self
            .db()
            .query_row(
                "SELECT original_size, deduplicated_size FROM runs
                 WHERE service = ?1 AND kind = 'backup' AND archive = ?2 AND result != 'failed' ORDER BY id DESC",
                params![service, archive],
                |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)),
            )
            .optional()?)
    }

    /// When the last run of `kind` for `service` started, whatever its result.
    pub fn last_run(&self, service: &str, kind: &str) -> Result<Option<f64>, JournalError> {
        Ok(self
            .db()
            .query_row(
                "SELECT MAX(started_unix) FROM runs WHERE service = ?1 AND kind = ?2",
                params![service, kind],
                |r| r.get::<_, Option<f64>>(0),
            )
            .optional()?
            .flatten())
    }

    /// When the last successful run of `kind` for `service` started.
    pub fn last_ok(&self, service: &str, kind: &str) -> Result<Option<f64>, JournalError> {
        Ok(self
            .db()
            .query_row(
                "SELECT MAX(started_unix) FROM runs WHERE service = ?1 AND kind = ?2 AND result IN ('ok', 'warning')",
                params![service, kind],
                |r| r.get::<_, Option<f64>>(0),
            )
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_steps_and_dead_runs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let run = j.start_run("photos", "backup", "manual").unwrap();
        let q = j.begin(run, "photos", step::QUIESCE, "stop abc def").unwrap();
        let s = j.begin(run, "photos", step::SNAPSHOT, "tank/p@strata-x").unwrap();
        j.done(s).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let open = j.open_steps().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].id, open[0].step.as_str(), open[0].detail.as_str()), (q, "quiesce", "stop abc def"));
        assert!(open[0].started_unix > 1.7e9, "{}", open[0].started_unix);
        let dead = j.running().unwrap();
        assert_eq!(
            dead,
            vec![DeadRun { id: run, service: "photos".into(), kind: "backup".into(), step: "snapshot".into() }]
        );
        j.done(q).unwrap();
        let o = Outcome { result: "failed".into(), error: "agent died in snapshot".into(), ..Default::default() };
        j.finish(run, &o).unwrap();
        assert!(j.open_steps().unwrap().is_empty() && j.running().unwrap().is_empty());

        let ok = j.start_run("photos", "backup", "schedule").unwrap();
        let o = Outcome {
            result: "ok".into(),
            archive: "photos-20261125T030000Z".into(),
            original_size: 10,
            deduplicated_size: 3,
            downtime_seconds: 0.2,
            ..Default::default()
        };
        j.finish(ok, &o).unwrap();
        let h = j.history(Some("photos"), 10).unwrap();
        assert_eq!(h.iter().map(|r| r.outcome.result.as_str()).collect::<Vec<_>>(), ["ok", "failed"]);
        assert_eq!(h[1].step, "snapshot");
        assert!(j.history(Some("wiki"), 10).unwrap().is_empty());
        assert_eq!(j.history(None, 1).unwrap().len(), 1);
        assert_eq!(j.archive_sizes("photos", "photos-20261125T030000Z").unwrap(), Some((10, 3)));
        assert!(j.last_ok("photos", "backup").unwrap().is_some());
        assert!(j.last_ok("photos", "check").unwrap().is_none());
    }

    #[test]
    fn a_held_restore_closes_its_steps_ends_its_run_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let run = j.start_run("photos", "restore", "manual").unwrap();
        j.set_source(run, "photos-20261125T030000Z", "").unwrap();
        let stop = j.begin(run, "photos", step::RESTORE_STOP, "stop abc def").unwrap();
        let data = j.begin(run, "photos", step::RESTORE_DATA, "tank/p@strata-prerestore-x").unwrap();
        let h = Held {
            service: "photos".into(),
            run,
            safety: "tank/p@strata-prerestore-x".into(),
            archive: j.source(run).unwrap().0,
            snapshot: String::new(),
            stopped: vec!["abc".into(), "def".into()],
            reason: "container x started since".into(),
            since_unix: now_unix(),
        };
        j.hold(&h, &[stop, data]).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.open_steps().unwrap().is_empty() && j.running().unwrap().is_empty());
        assert_eq!(j.held("photos").unwrap(), Some(h.clone()));
        assert_eq!(j.held("wiki").unwrap(), None);
        let row = &j.history(Some("photos"), 1).unwrap()[0];
        assert_eq!((row.outcome.result.as_str(), row.outcome.error.as_str()), ("failed", "container x started since"));
        j.release_held("photos").unwrap();
        assert!(j.all_held().unwrap().is_empty());
    }
}
