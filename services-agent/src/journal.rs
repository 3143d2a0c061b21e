//! The crash journal and the job history of backups, restores, checks, drills and image updates, in the agent's SQLite
//! database (`STATE/services.db`). Every step is written BEFORE it is done and marked done after; after a crash,
//! `open_steps` tells recovery what may still need undoing and `running` which runs died (and in which step).
//! A restore that recovery could not safely undo is *held* (`held` table) until the operator resumes or abandons it.
//! Knows the schema and the texts stored in it (a run's [`Job`] and [`Trigger`], the [`Quiesced`] detail), each with
//! one `Display`/`FromStr`; must not know ZFS, Borg, Docker or how a step is undone.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

use crate::config::Quiesce;

/// The steps the journal knows. Those marked "undo" are undone by recovery when left open.
pub(crate) mod step {
    pub(crate) const PREFLIGHT: &str = "preflight";
    pub(crate) const PRE_HOOKS: &str = "pre-hooks";
    /// Undo: containers stopped or paused by us; `detail` is a [`super::Quiesced`].
    pub(crate) const QUIESCE: &str = "quiesce";
    pub(crate) const SNAPSHOT: &str = "snapshot";
    pub(crate) const RESUME: &str = "resume";
    pub(crate) const POST_HOOKS: &str = "post-hooks";
    /// Undo: a clone dataset of ours (`detail`), destroyed by recovery.
    pub(crate) const CLONE: &str = "clone";
    pub(crate) const BORG_CREATE: &str = "borg-create";
    pub(crate) const DESTROY_CLONE: &str = "destroy-clone";
    pub(crate) const PRUNE: &str = "prune";
    pub(crate) const COMPACT: &str = "compact";
    pub(crate) const LOCAL_SNAPSHOTS: &str = "local-snapshots";
    /// Undo: a scratch dataset of ours (`detail`) for an extraction (restore, drill), destroyed by recovery.
    pub(crate) const SCRATCH: &str = "scratch";
    pub(crate) const EXTRACT: &str = "extract";
    pub(crate) const COMPARE: &str = "compare";
    pub(crate) const CHECK: &str = "check";
    /// Undo: containers stopped for a restore (`detail` a [`super::Quiesced`], `stop …`), started again by recovery.
    pub(crate) const RESTORE_STOP: &str = "restore-stop";
    pub(crate) const SAFETY_SNAPSHOT: &str = "safety-snapshot";
    /// Undo: live data being replaced; `detail` is the safety snapshot. Recovery puts the safety snapshot's data
    /// back, since a half-written dataset is worse than the state before the restore.
    pub(crate) const RESTORE_DATA: &str = "restore-data";
    pub(crate) const WAIT_HEALTHY: &str = "wait-healthy";
    /// The one file or directory a single-path restore replaces (`detail`), recorded before anything changes so
    /// that `--resume` of a held one restores that path again, not everything. Nothing to undo.
    pub(crate) const RESTORE_PATH: &str = "restore-path";
    /// A stack that left the config (or the repository) being taken down (`compose down`, never its volumes;
    /// `detail` the reason). Nothing to undo: recovery closes it and the next sync takes the stack down again.
    pub(crate) const TAKE_DOWN: &str = "take-down";
    /// An update's record, written before anything is pulled: what each compose service ran (`detail`, JSON).
    pub(crate) const UPDATE_IMAGES: &str = "update-images";
    pub(crate) const PULL: &str = "pull";
    /// Undo (by `update`'s recovery): the compose services recreated on new images (`detail`, JSON old → new).
    pub(crate) const REDEPLOY: &str = "redeploy";
    pub(crate) const ROLLBACK: &str = "rollback";
}

/// A run's kind: the `runs.kind` column, the job registry's kind and the notifications' `job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Job {
    Backup,
    Restore,
    /// Borg's checks: scheduled, the repository and the archives' metadata; by hand, everything configured.
    Check,
    /// A scheduled `borg check --verify-data` (its own frequency).
    VerifyData,
    Drill,
    /// An image update (`Pull`, the `update` schedule).
    Update,
    /// The sync taking down a stack that left the config or the repository.
    TakeDown,
}

impl Job {
    const ALL: [Job; 7] =
        [Job::Backup, Job::Restore, Job::Check, Job::VerifyData, Job::Drill, Job::Update, Job::TakeDown];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Job::Backup => "backup",
            Job::Restore => "restore",
            Job::Check => "check",
            Job::VerifyData => "verify-data",
            Job::Drill => "drill",
            Job::Update => "update",
            Job::TakeDown => "take-down",
        }
    }
}

/// What started a run: the `runs.trigger` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Trigger {
    /// A labctl call.
    Manual,
    /// The agent's scheduler.
    Schedule,
    /// `labctl services restore --resume` of a held restore.
    Resume,
    /// `labctl services restore --abandon` of a held restore.
    Abandon,
    /// A sync of the stacks repository (poll, reload, `labctl services sync`).
    Sync,
}

impl Trigger {
    const ALL: [Trigger; 5] = [Trigger::Manual, Trigger::Schedule, Trigger::Resume, Trigger::Abandon, Trigger::Sync];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Resume => "resume",
            Trigger::Abandon => "abandon",
            Trigger::Sync => "sync",
        }
    }
}

/// The detail of a QUIESCE or RESTORE_STOP step: how the containers were quiesced and their ids, as `stop ID ID…`,
/// `pause ID…` or `none`. Backups and restores write it, recovery reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quiesced {
    pub how: Quiesce,
    pub ids: Vec<String>,
}

/// A stored text this agent does not know (a row it did not write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal: `{text}` is not a {what} (one of {allowed})")]
pub(crate) struct UnknownText {
    what: &'static str,
    text: String,
    allowed: String,
}

/// The value of `all` whose text is `text`.
fn from_text<T: Copy>(
    what: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
    text: &str,
) -> Result<T, UnknownText> {
    all.iter().copied().find(|v| name(*v) == text).ok_or_else(|| UnknownText {
        what,
        text: text.to_string(),
        allowed: all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", "),
    })
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Job {
    type Err = UnknownText;
    fn from_str(s: &str) -> Result<Job, UnknownText> {
        from_text("job kind", &Job::ALL, Job::as_str, s)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = UnknownText;
    fn from_str(s: &str) -> Result<Trigger, UnknownText> {
        from_text("job trigger", &Trigger::ALL, Trigger::as_str, s)
    }
}

impl fmt::Display for Quiesced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.how.as_str())?;
        self.ids.iter().try_for_each(|id| write!(f, " {id}"))
    }
}

impl FromStr for Quiesced {
    type Err = UnknownText;
    fn from_str(s: &str) -> Result<Quiesced, UnknownText> {
        let mut words = s.split_whitespace();
        let all = [Quiesce::Stop, Quiesce::Pause, Quiesce::None];
        let how = from_text("way of quiescing", &all, Quiesce::as_str, words.next().unwrap_or(s))?;
        Ok(Quiesced { how, ids: words.map(String::from).collect() })
    }
}

/// Job and Trigger are stored as their text and read back through `FromStr`.
macro_rules! sql_text {
    ($t:ty) => {
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<$t> {
                v.as_str()?.parse().map_err(|e: UnknownText| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}
sql_text!(Job);
sql_text!(Trigger);

#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error(transparent)]
    State(#[from] agent_core::state::StateError),
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A journaled step that was started and never marked done.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenStep {
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
pub(crate) struct Held {
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
pub(crate) struct DeadRun {
    pub id: i64,
    pub service: String,
    pub kind: Job,
    pub step: String,
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcome {
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

/// What one repository got in one backup run (a run feeds every repository of its service).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RepoRun {
    pub label: String,
    /// The repository's location as borg reads it.
    pub url: String,
    /// `ok`, `warning`, `failed` or `cancelled`.
    pub result: String,
    pub error: String,
    pub archive: String,
    pub original_size: u64,
    pub compressed_size: u64,
    pub deduplicated_size: u64,
    pub duration_seconds: f64,
}

impl RepoRun {
    pub(crate) fn succeeded(&self) -> bool {
        self.result == "ok" || self.result == "warning"
    }
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryRow {
    pub id: i64,
    pub service: String,
    pub kind: Job,
    pub trigger: Trigger,
    pub started_unix: f64,
    pub duration_seconds: f64,
    pub step: String,
    pub outcome: Outcome,
    /// A backup's result per repository (empty for other jobs and for runs of agents before this table).
    pub repos: Vec<RepoRun>,
}

pub(crate) struct Journal {
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
CREATE TABLE IF NOT EXISTS run_repos (
    run INTEGER NOT NULL, service TEXT NOT NULL, label TEXT NOT NULL, url TEXT NOT NULL, result TEXT NOT NULL,
    error TEXT NOT NULL, archive TEXT NOT NULL, original_size INTEGER NOT NULL, compressed_size INTEGER NOT NULL,
    deduplicated_size INTEGER NOT NULL, duration_seconds REAL NOT NULL, finished_unix REAL NOT NULL,
    PRIMARY KEY (run, label));
CREATE INDEX IF NOT EXISTS run_repos_service ON run_repos (service, label, result);
CREATE TABLE IF NOT EXISTS repo_ids (
    service TEXT NOT NULL, url TEXT NOT NULL, id TEXT NOT NULL, since_unix REAL NOT NULL, PRIMARY KEY (service, url));
CREATE TABLE IF NOT EXISTS held (
    service TEXT PRIMARY KEY, run INTEGER NOT NULL, safety TEXT NOT NULL, archive TEXT NOT NULL,
    snapshot TEXT NOT NULL, stopped TEXT NOT NULL, reason TEXT NOT NULL, since_unix REAL NOT NULL);
";

/// Unix time with fractions, as the journal stores it (`agent_core::clock`'s time, converted).
pub(crate) fn now_unix() -> f64 {
    agent_core::clock::since_epoch().as_secs_f64()
}

impl Journal {
    pub(crate) fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let db = agent_core::state::open_db(state_dir, "services")?;
        db.execute_batch(SCHEMA)?;
        Ok(Journal { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run of `kind` for `service`.
    pub(crate) fn start_run(&self, service: &str, kind: Job, trigger: Trigger) -> Result<i64, JournalError> {
        let db = self.db();
        db.execute(
            "INSERT INTO runs (service, kind, trigger, started_unix) VALUES (?1, ?2, ?3, ?4)",
            params![service, kind, trigger, now_unix()],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// Records that `step` of `run` is about to be done; returns its id for [`Journal::done`]. Then the crash test
    /// hook may hold the agent here (see `agent_core::state::crash_point`).
    pub(crate) fn begin(&self, run: i64, service: &str, step: &str, detail: &str) -> Result<i64, JournalError> {
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
    pub(crate) fn done(&self, id: i64) -> Result<(), JournalError> {
        self.db().execute("UPDATE journal SET done_unix = ?1 WHERE id = ?2", params![now_unix(), id])?;
        Ok(())
    }

    /// Ends a run with its outcome.
    pub(crate) fn finish(&self, run: i64, o: &Outcome) -> Result<(), JournalError> {
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

    /// Records what one repository got in backup run `run` (once per run and label).
    pub(crate) fn record_repo(&self, run: i64, service: &str, r: &RepoRun) -> Result<(), JournalError> {
        self.db().execute(
            "INSERT OR REPLACE INTO run_repos (run, service, label, url, result, error, archive, original_size,
                 compressed_size, deduplicated_size, duration_seconds, finished_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                run,
                service,
                r.label,
                r.url,
                r.result,
                r.error,
                r.archive,
                r.original_size as i64,
                r.compressed_size as i64,
                r.deduplicated_size as i64,
                r.duration_seconds,
                now_unix()
            ],
        )?;
        Ok(())
    }

    /// The per-repository results of `run`, in the order they were recorded.
    pub(crate) fn repo_runs(&self, run: i64) -> Result<Vec<RepoRun>, JournalError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT label, url, result, error, archive, original_size, compressed_size, deduplicated_size,
                 duration_seconds FROM run_repos WHERE run = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map(params![run], |r| {
            Ok(RepoRun {
                label: r.get(0)?,
                url: r.get(1)?,
                result: r.get(2)?,
                error: r.get(3)?,
                archive: r.get(4)?,
                original_size: r.get::<_, i64>(5)?.max(0) as u64,
                compressed_size: r.get::<_, i64>(6)?.max(0) as u64,
                deduplicated_size: r.get::<_, i64>(7)?.max(0) as u64,
                duration_seconds: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the last backup run that reached repository `label` of `service` started.
    pub(crate) fn last_repo_ok(&self, service: &str, label: &str) -> Result<Option<f64>, JournalError> {
        Ok(self
            .db()
            .query_row(
                "SELECT MAX(runs.started_unix) FROM run_repos JOIN runs ON runs.id = run_repos.run
                 WHERE run_repos.service = ?1 AND run_repos.label = ?2 AND run_repos.result IN ('ok', 'warning')",
                params![service, label],
                |r| r.get::<_, Option<f64>>(0),
            )
            .optional()?
            .flatten())
    }

    /// The repository id recorded for `url` of `service` (at its first backup), if any.
    pub(crate) fn repo_id(&self, service: &str, url: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .db()
            .query_row("SELECT id FROM repo_ids WHERE service = ?1 AND url = ?2", params![service, url], |r| r.get(0))
            .optional()?)
    }

    /// Records the id of the repository at `url` (the first time it is seen).
    pub(crate) fn set_repo_id(&self, service: &str, url: &str, id: &str) -> Result<(), JournalError> {
        self.db().execute(
            "INSERT OR IGNORE INTO repo_ids (service, url, id, since_unix) VALUES (?1, ?2, ?3, ?4)",
            params![service, url, id, now_unix()],
        )?;
        Ok(())
    }

    /// Every step not marked done, oldest first.
    pub(crate) fn open_steps(&self) -> Result<Vec<OpenStep>, JournalError> {
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
    pub(crate) fn set_source(&self, run: i64, archive: &str, snapshot: &str) -> Result<(), JournalError> {
        self.db()
            .execute("UPDATE runs SET archive = ?1, snapshot = ?2 WHERE id = ?3", params![archive, snapshot, run])?;
        Ok(())
    }

    /// (archive, snapshot) recorded by [`Journal::set_source`].
    pub(crate) fn source(&self, run: i64) -> Result<(String, String), JournalError> {
        Ok(self
            .db()
            .query_row("SELECT archive, snapshot FROM runs WHERE id = ?1", params![run], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or_default())
    }

    /// Holds an interrupted restore, in one transaction: the held row, the steps `close` marked done (the held row
    /// now stands for them) and the run ended as failed with the reason.
    pub(crate) fn hold(&self, h: &Held, close: &[i64]) -> Result<(), JournalError> {
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

    /// The `detail` of the last `step` recorded for `run`, if any.
    pub(crate) fn run_detail(&self, run: i64, step: &str) -> Result<Option<String>, JournalError> {
        let db = self.db();
        let mut st = db.prepare("SELECT detail FROM journal WHERE run = ?1 AND step = ?2 ORDER BY id DESC LIMIT 1")?;
        let mut rows = st.query_map(params![run, step], |r| r.get::<_, String>(0))?;
        Ok(rows.next().transpose()?)
    }

    /// The held restore of `service`, if any.
    pub(crate) fn held(&self, service: &str) -> Result<Option<Held>, JournalError> {
        Ok(self.all_held()?.into_iter().find(|h| h.service == service))
    }

    /// Every held restore, by service.
    pub(crate) fn all_held(&self) -> Result<Vec<Held>, JournalError> {
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
    pub(crate) fn release_held(&self, service: &str) -> Result<(), JournalError> {
        self.db().execute("DELETE FROM held WHERE service = ?1", params![service])?;
        Ok(())
    }

    /// Runs that never finished (the agent died during them).
    pub(crate) fn running(&self) -> Result<Vec<DeadRun>, JournalError> {
        let db = self.db();
        let mut st = db.prepare("SELECT id, service, kind, step FROM runs WHERE finished_unix IS NULL ORDER BY id")?;
        let rows =
            st.query_map([], |r| Ok(DeadRun { id: r.get(0)?, service: r.get(1)?, kind: r.get(2)?, step: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The history, newest first: of one service or all, at most `limit` rows.
    pub(crate) fn history(&self, service: Option<&str>, limit: u32) -> Result<Vec<HistoryRow>, JournalError> {
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
                repos: Vec::new(),
            })
        })?;
        let mut out: Vec<HistoryRow> = rows.collect::<Result<_, _>>()?;
        drop(st);
        drop(db);
        for row in out.iter_mut().filter(|r| r.kind == Job::Backup) {
            row.repos = self.repo_runs(row.id)?;
        }
        Ok(out)
    }

    /// The sizes recorded for an archive this agent created: (original, deduplicated).
    pub(crate) fn archive_sizes(&self, service: &str, archive: &str) -> Result<Option<(u64, u64)>, JournalError> {
        Ok(self
            .db()
            .query_row(
                "SELECT original_size, deduplicated_size FROM runs
                 WHERE service = ?1 AND kind = ?2 AND archive = ?3 AND result != 'failed' ORDER BY id DESC",
                params![service, Job::Backup, archive],
                |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)),
            )
            .optional()?)
    }

    /// When the last run of `kind` for `service` started, whatever its result.
    pub(crate) fn last_run(&self, service: &str, kind: Job) -> Result<Option<f64>, JournalError> {
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
    pub(crate) fn last_ok(&self, service: &str, kind: Job) -> Result<Option<f64>, JournalError> {
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
        let run = j.start_run("photos", Job::Backup, Trigger::Manual).unwrap();
        let q = j.begin(run, "photos", step::QUIESCE, "stop abc def").unwrap();
        let s = j.begin(run, "photos", step::SNAPSHOT, "tank/p@strata-x").unwrap();
        j.done(s).unwrap();
        assert_eq!(j.run_detail(run, step::SNAPSHOT).unwrap().as_deref(), Some("tank/p@strata-x"));
        assert_eq!(j.run_detail(run, step::RESTORE_PATH).unwrap(), None);
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let open = j.open_steps().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].id, open[0].step.as_str(), open[0].detail.as_str()), (q, "quiesce", "stop abc def"));
        assert!(open[0].started_unix > 1.7e9, "{}", open[0].started_unix);
        let dead = j.running().unwrap();
        assert_eq!(
            dead,
            vec![DeadRun { id: run, service: "photos".into(), kind: Job::Backup, step: "snapshot".into() }]
        );
        j.done(q).unwrap();
        let o = Outcome { result: "failed".into(), error: "agent died in snapshot".into(), ..Default::default() };
        j.finish(run, &o).unwrap();
        assert!(j.open_steps().unwrap().is_empty() && j.running().unwrap().is_empty());

        let ok = j.start_run("photos", Job::Backup, Trigger::Schedule).unwrap();
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
        assert!(j.last_ok("photos", Job::Backup).unwrap().is_some());
        assert!(j.last_ok("photos", Job::Check).unwrap().is_none());
    }

    #[test]
    fn a_held_restore_closes_its_steps_ends_its_run_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let run = j.start_run("photos", Job::Restore, Trigger::Manual).unwrap();
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

    /// Rows as the agent wrote them before kinds, triggers and quiesce details were types (literal SQL of that
    /// schema and text): the typed reads still take every one of them.
    #[test]
    fn rows_written_by_earlier_agents_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let kinds = ["backup", "restore", "check", "verify-data", "drill"];
        let triggers = ["manual", "schedule", "resume", "abandon", "schedule"];
        {
            let db = j.db();
            for (i, (kind, trigger)) in kinds.iter().zip(triggers).enumerate() {
                db.execute(
                    "INSERT INTO runs (id, service, kind, trigger, started_unix, finished_unix, step, result, archive,
                         original_size, deduplicated_size)
                     VALUES (?1, 'photos', ?2, ?3, 1764900000.5, 1764900012.0, 'local-snapshots', 'ok',
                         'photos-20261205T030000Z', 10, 3)",
                    params![i as i64 + 1, kind, trigger],
                )
                .unwrap();
            }
            db.execute(
                "INSERT INTO runs (id, service, kind, trigger, started_unix, step) \
                 VALUES (6, 'wiki', 'backup', 'schedule', 1764900100.0, 'quiesce')",
                [],
            )
            .unwrap();
            for (step, detail) in [("quiesce", "stop 3f2a9c 77b1e0"), ("quiesce", "pause 3f2a9c"), ("quiesce", "none")]
                .into_iter()
                .chain([("restore-stop", "stop 3f2a9c"), ("restore-stop", "stop")])
            {
                db.execute(
                    "INSERT INTO journal (run, service, step, detail, started_unix) VALUES (6, 'wiki', ?1, ?2, 1764900100.1)",
                    params![step, detail],
                )
                .unwrap();
            }
        }
        let h = j.history(Some("photos"), 10).unwrap();
        let got: Vec<(Job, Trigger)> = h.iter().rev().map(|r| (r.kind, r.trigger)).collect();
        let want: Vec<(Job, Trigger)> =
            kinds.iter().zip(triggers).map(|(k, t)| (k.parse().unwrap(), t.parse().unwrap())).collect();
        assert_eq!(got, want);
        assert_eq!(
            want,
            [
                (Job::Backup, Trigger::Manual),
                (Job::Restore, Trigger::Schedule),
                (Job::Check, Trigger::Resume),
                (Job::VerifyData, Trigger::Abandon),
                (Job::Drill, Trigger::Schedule)
            ]
        );
        assert_eq!(j.archive_sizes("photos", "photos-20261205T030000Z").unwrap(), Some((10, 3)));
        assert_eq!(j.last_ok("photos", Job::VerifyData).unwrap(), Some(1764900000.5));
        assert_eq!(
            j.running().unwrap(),
            [DeadRun { id: 6, service: "wiki".into(), kind: Job::Backup, step: "quiesce".into() }]
        );
        let details: Vec<Quiesced> = j.open_steps().unwrap().iter().map(|s| s.detail.parse().unwrap()).collect();
        let q = |how, ids: &[&str]| Quiesced { how, ids: ids.iter().map(|s| s.to_string()).collect() };
        assert_eq!(
            details,
            [
                q(Quiesce::Stop, &["3f2a9c", "77b1e0"]),
                q(Quiesce::Pause, &["3f2a9c"]),
                q(Quiesce::None, &[]),
                q(Quiesce::Stop, &["3f2a9c"]),
                q(Quiesce::Stop, &[])
            ]
        );
        // Written back, each reads as the text the earlier agents wrote.
        let texts: Vec<String> = details.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["stop 3f2a9c 77b1e0", "pause 3f2a9c", "none", "stop 3f2a9c", "stop"]);
        for job in Job::ALL {
            assert_eq!(job.to_string().parse::<Job>(), Ok(job));
        }
        for t in Trigger::ALL {
            assert_eq!(t.to_string().parse::<Trigger>(), Ok(t));
        }
    }

    #[test]
    fn unknown_texts_are_errors_naming_them() {
        let e = "nightly".parse::<Trigger>().unwrap_err().to_string();
        assert_eq!(e, "journal: `nightly` is not a job trigger (one of manual, schedule, resume, abandon, sync)");
        let e = "scrub".parse::<Job>().unwrap_err().to_string();
        assert!(
            e.contains(
                "`scrub` is not a job kind (one of backup, restore, check, verify-data, drill, update, take-down)"
            ),
            "{e}"
        );
        let e = "freeze abc".parse::<Quiesced>().unwrap_err().to_string();
        assert!(e.contains("`freeze` is not a way of quiescing (one of stop, pause, none)"), "{e}");
        assert!("".parse::<Quiesced>().is_err());
        // A row no agent of ours wrote fails the read that meets it, naming the text.
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.db()
            .execute(
                "INSERT INTO runs (service, kind, trigger, started_unix) VALUES ('photos', 'scrub', 'manual', 1.0)",
                [],
            )
            .unwrap();
        let e = j.history(None, 1).unwrap_err().to_string();
        assert!(e.contains("`scrub` is not a job kind"), "{e}");
    }
}
