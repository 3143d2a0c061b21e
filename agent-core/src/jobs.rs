//! The registry of an agent's running long jobs (backup, restore, check, drill): each job's id, kind and target,
//! its updates fanned out to every watcher (a bounded broadcast, the last update kept for late watchers), so a
//! client can re-attach to a job it left; and the one job runner both agents use ([`run`]): the work in a task of
//! its own, its progress through a [`Reporter`], its summary or its error last. Generic over the update, summary
//! and error types; knows nothing of what a job does, of proto or of tonic (each agent's edge converts). Finished
//! jobs leave the registry. Each job has a cancellation token: [`Jobs::cancel`] cancels it, the job's task takes it
//! from [`JobHandle::token`] (and hands it to the programs it runs); what a cancelled job undoes is the job's business.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Jobs one agent may run at once; more are refused.
pub const MAX_JOBS: usize = 64;
/// Watchers (original caller included) one job may have at once; more are refused.
pub const MAX_WATCHERS: usize = 16;
/// Updates a watcher may fall behind before it skips the oldest (the final update is never skipped: it is the newest).
const BUFFER: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobsError {
    #[error("{0} jobs are running (at most {0}): retry when one finishes")]
    TooManyJobs(usize),
    #[error("job {id} already has {max} watchers (at most {max})")]
    TooManyWatchers { id: String, max: usize },
    #[error("no running job {0}")]
    NoJob(String),
}

/// Whether `id` has the shape of a job id (`KIND-TARGET-UNIX`: ASCII letters, digits, `-`, `_`; at most 256).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One update of a job, and whether it is the job's last.
#[derive(Debug, Clone)]
struct Event<U> {
    update: U,
    last: bool,
}

struct Job<U> {
    id: String,
    kind: String,
    target: String,
    /// Start order, to pick a target's newest job.
    seq: u64,
    /// The sender (gone once the job's task is: its watchers' streams end) and the last update sent, for watchers
    /// that attach later. One lock, so an attaching watcher sees one moment.
    state: Mutex<State<U>>,
    watchers: AtomicUsize,
    cancel: CancellationToken,
}

struct State<U> {
    tx: Option<broadcast::Sender<Event<U>>>,
    last: Option<Event<U>>,
}

struct Inner<U> {
    jobs: HashMap<String, Arc<Job<U>>>,
    seq: u64,
}

/// The registry. Cheap to clone (shared).
pub struct Jobs<U> {
    inner: Arc<Mutex<Inner<U>>>,
    max_jobs: usize,
    max_watchers: usize,
}

impl<U> Clone for Jobs<U> {
    fn clone(&self) -> Self {
        Jobs { inner: self.inner.clone(), max_jobs: self.max_jobs, max_watchers: self.max_watchers }
    }
}

impl<U: Clone + Send + 'static> Default for Jobs<U> {
    fn default() -> Self {
        Jobs::new(MAX_JOBS, MAX_WATCHERS)
    }
}

/// What a job's task holds: it sends the job's updates; the job leaves the registry when this is finished or dropped.
pub struct JobHandle<U> {
    job: Arc<Job<U>>,
    inner: Arc<Mutex<Inner<U>>>,
    max_watchers: usize,
}

/// A watcher of one job: its updates from the moment it attached (the job's last update first, when there was one).
pub struct Watcher<U> {
    id: String,
    kind: String,
    first: Option<Event<U>>,
    rx: broadcast::Receiver<Event<U>>,
    job: Arc<Job<U>>,
}

impl<U: Clone + Send + 'static> Jobs<U> {
    pub fn new(max_jobs: usize, max_watchers: usize) -> Jobs<U> {
        Jobs { inner: Arc::new(Mutex::new(Inner { jobs: HashMap::new(), seq: 0 })), max_jobs, max_watchers }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<U>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a job of `kind` on `target` (empty for a job on several targets). Its id is `KIND-TARGET-UNIX`
    /// (`KIND-UNIX` without a target), with `-N` added when that id is taken.
    pub fn start(&self, kind: &str, target: &str, unix: i64) -> Result<JobHandle<U>, JobsError> {
        let mut inner = self.lock();
        if inner.jobs.len() >= self.max_jobs {
            return Err(JobsError::TooManyJobs(self.max_jobs));
        }
        let base = if target.is_empty() { format!("{kind}-{unix}") } else { format!("{kind}-{target}-{unix}") };
        let mut id = base.clone();
        let mut n = 1;
        while inner.jobs.contains_key(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        inner.seq += 1;
        let (tx, _) = broadcast::channel(BUFFER);
        let job = Arc::new(Job {
            id: id.clone(),
            kind: kind.to_string(),
            target: target.to_string(),
            seq: inner.seq,
            state: Mutex::new(State { tx: Some(tx), last: None }),
            watchers: AtomicUsize::new(0),
            cancel: CancellationToken::new(),
        });
        inner.jobs.insert(id, job.clone());
        Ok(JobHandle { job, inner: self.inner.clone(), max_watchers: self.max_watchers })
    }

    /// Attaches to the running job with this id, or else to the newest running job on the target named `key`.
    pub fn watch(&self, key: &str) -> Result<Watcher<U>, JobsError> {
        let job = {
            let inner = self.lock();
            inner
                .jobs
                .get(key)
                .cloned()
                .or_else(|| inner.jobs.values().filter(|j| j.target == key).max_by_key(|j| j.seq).cloned())
                .ok_or_else(|| JobsError::NoJob(key.to_string()))?
        };
        Self::attach(job, self.max_watchers)
    }

    fn attach(job: Arc<Job<U>>, max: usize) -> Result<Watcher<U>, JobsError> {
        if job.watchers.fetch_add(1, Ordering::SeqCst) >= max {
            job.watchers.fetch_sub(1, Ordering::SeqCst);
            return Err(JobsError::TooManyWatchers { id: job.id.clone(), max });
        }
        let state = job.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = &state.tx else {
            drop(state);
            job.watchers.fetch_sub(1, Ordering::SeqCst);
            return Err(JobsError::NoJob(job.id.clone()));
        };
        let rx = tx.subscribe();
        let first = state.last.clone();
        drop(state);
        Ok(Watcher { id: job.id.clone(), kind: job.kind.clone(), first, rx, job })
    }

    /// Cancels the running job with this id, or else the newest running job on the target named `key`, and returns
    /// its id. The job goes on until it has undone what it must and sent its final update.
    pub fn cancel(&self, key: &str) -> Result<String, JobsError> {
        let inner = self.lock();
        let job = inner
            .jobs
            .get(key)
            .or_else(|| inner.jobs.values().filter(|j| j.target == key).max_by_key(|j| j.seq))
            .ok_or_else(|| JobsError::NoJob(key.to_string()))?;
        job.cancel.cancel();
        Ok(job.id.clone())
    }

    /// Ids of the running jobs, oldest first.
    pub fn running(&self) -> Vec<String> {
        let inner = self.lock();
        let mut jobs: Vec<_> = inner.jobs.values().map(|j| (j.seq, j.id.clone())).collect();
        jobs.sort();
        jobs.into_iter().map(|(_, id)| id).collect()
    }
}

impl<U: Clone + Send + 'static> JobHandle<U> {
    pub fn id(&self) -> &str {
        &self.job.id
    }

    /// The job's cancellation token, cancelled by [`Jobs::cancel`].
    pub fn token(&self) -> CancellationToken {
        self.job.cancel.clone()
    }

    /// A watcher from the job's start, for the client that started it (counts against the job's watchers).
    pub fn watch(&self) -> Result<Watcher<U>, JobsError> {
        Jobs::attach(self.job.clone(), self.max_watchers)
    }

    /// Sends an update to every watcher.
    pub fn send(&self, update: U) {
        self.emit(Event { update, last: false });
    }

    /// Sends the job's final update and takes the job out of the registry.
    pub fn finish(self, update: U) {
        self.emit(Event { update, last: true });
    }

    fn emit(&self, event: Event<U>) {
        let mut state = self.job.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = &state.tx {
            // No receiver is fine: the job goes on without watchers.
            let _ = tx.send(event.clone());
        }
        state.last = Some(event);
    }
}

impl<U> Drop for JobHandle<U> {
    fn drop(&mut self) {
        self.job.state.lock().unwrap_or_else(|e| e.into_inner()).tx = None;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.jobs.remove(&self.job.id);
    }
}

impl<U: Clone + Send + 'static> Watcher<U> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The updates, ending after the job's final one (or when the job's task went away without one).
    pub fn into_stream(self) -> impl Stream<Item = U> + Send {
        futures::stream::unfold(Some(self), |w| async move {
            let mut w = w?;
            let event = match w.first.take() {
                Some(e) => e,
                None => loop {
                    match w.rx.recv().await {
                        Ok(e) => break e,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                },
            };
            let next = if event.last { None } else { Some(w) };
            Some((event.update, next))
        })
    }
}

impl<U> Drop for Watcher<U> {
    fn drop(&mut self) {
        self.job.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One progress step of a job, as its work reports it: `done`/`total` count bytes or steps when the step is measured
/// (0/0 when it is not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub step: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
    /// `done` and `total` count bytes ([`Reporter::bytes`]), not steps.
    pub bytes: bool,
}

/// What a job's watchers receive from [`run`]: its progress, then its summary as its last update (or else its
/// error, as the last item of the stream).
#[derive(Debug, Clone, PartialEq)]
pub enum Update<S> {
    Progress(Progress),
    Done(S),
}

/// The registry of jobs run by [`run`]: each item an update or the job's error.
pub type Registry<S, E> = Jobs<Result<Update<S>, E>>;

/// Where a job's work reports its progress: to the job's watchers, or nowhere (a scheduled run). Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    tx: Option<mpsc::Sender<Progress>>,
    prefix: String,
}

impl Reporter {
    /// A reporter that drops every update (work run outside the registry).
    pub fn none() -> Reporter {
        Reporter { tx: None, prefix: String::new() }
    }

    /// The same job, each message prefixed with `target: ` (one of the targets of a job on several).
    pub fn for_target(&self, target: &str) -> Reporter {
        Reporter { tx: self.tx.clone(), prefix: format!("{}{target}: ", self.prefix) }
    }

    /// An unmeasured step.
    pub async fn say(&self, step: &str, message: impl Into<String>) {
        self.progress(step, 0, 0, message).await;
    }

    /// A step, `done` of `total`.
    pub async fn progress(&self, step: &str, done: u64, total: u64, message: impl Into<String>) {
        let message = format!("{}{}", self.prefix, message.into());
        tracing::debug!(step, "{message}");
        if let Some(tx) = &self.tx {
            // Watchers that went away do not stop the job.
            let _ = tx.send(Progress { step: step.to_string(), done, total, message, bytes: false }).await;
        }
    }
    /// Whether updates go anywhere: work that costs something to measure asks first.
    pub fn is_watched(&self) -> bool {
        self.tx.is_some()
    }

    /// A reporter of a transfer measured in bytes, for code that cannot wait (a callback on a pipe's reader): each
    /// call `(done, total)` sends `done` of `total` (the work's own total when it knows one, else `estimate`; raised
    /// to `done` when short) under `step`, never going backwards. A report that finds the job's queue full is
    /// dropped: the next one says more. `None` when updates go nowhere, so the work need not measure at all.
    pub fn bytes(
        &self,
        step: &str,
        estimate: u64,
        message: impl Into<String>,
    ) -> Option<impl Fn(u64, Option<u64>) + Send + Sync + 'static> {
        let tx = self.tx.clone()?;
        let (step, message) = (step.to_string(), format!("{}{}", self.prefix, message.into()));
        let high = std::sync::atomic::AtomicU64::new(0);
        Some(move |done: u64, total: Option<u64>| {
            let done = high.fetch_max(done, Ordering::Relaxed).max(done);
            let total = total.unwrap_or(estimate).max(done);
            let update = Progress { step: step.clone(), done, total, message: message.clone(), bytes: true };
            let _ = tx.try_send(update);
        })
    }
}

/// Registers a job of `kind` on `target` (empty: several targets) and runs `work` in a task of its own: its
/// progress goes to every watcher, then its summary (`Update::Done`) or its error, and the job leaves the registry.
/// The work runs to its end even when every watcher went away (`watch` re-attaches). It runs in the job's
/// cancellation scope ([`crate::runner::with_cancel`]); an error after [`Jobs::cancel`] goes through `cancelled`
/// (the agent's edge names the job and says it was cancelled). Returns the watcher of the caller that started it.
pub fn run<S, E, F, Fut>(
    jobs: &Registry<S, E>,
    kind: &str,
    target: &str,
    work: F,
    cancelled: fn(&str, E) -> E,
) -> Result<Watcher<Result<Update<S>, E>>, JobsError>
where
    S: Clone + Send + 'static,
    E: Clone + Send + 'static,
    F: FnOnce(Reporter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<S, E>> + Send + 'static,
{
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let handle = jobs.start(kind, target, now)?;
    let watcher = handle.watch()?;
    let (tx, mut rx) = mpsc::channel::<Progress>(64);
    tokio::spawn(async move {
        let forward = async {
            while let Some(p) = rx.recv().await {
                handle.send(Ok(Update::Progress(p)));
            }
        };
        let reporter = Reporter { tx: Some(tx), prefix: String::new() };
        // The reporter (and every clone of it) is gone when the work is: `forward` then ends too.
        // The work runs in the job's cancellation scope: the programs it marks cancellable are killed on `cancel`.
        let token = handle.token();
        let (result, ()) = futures::join!(crate::runner::with_cancel(token.clone(), work(reporter)), forward);
        let result = match result {
            Err(e) if token.is_cancelled() => Err(cancelled(handle.id(), e)),
            other => other,
        };
        handle.finish(result.map(Update::Done));
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_late_watcher_gets_the_last_update_then_the_rest_and_the_job_leaves_at_its_end() {
        let jobs: Jobs<u32> = Jobs::default();
        let h = jobs.start("backup", "web", 100).unwrap();
        assert_eq!(h.id(), "backup-web-100");
        let first = h.watch().unwrap();
        h.send(1);
        h.send(2);
        let late = jobs.watch("web").unwrap();
        assert_eq!(late.id(), "backup-web-100");
        assert_eq!(late.kind(), "backup");
        let by_id = jobs.watch("backup-web-100").unwrap();
        h.send(3);
        h.finish(4);
        assert!(jobs.running().is_empty());
        assert_eq!(first.into_stream().collect::<Vec<_>>().await, [1, 2, 3, 4]);
        assert_eq!(late.into_stream().collect::<Vec<_>>().await, [2, 3, 4]);
        assert_eq!(by_id.into_stream().collect::<Vec<_>>().await, [2, 3, 4]);
        assert_eq!(jobs.watch("web").err().unwrap(), JobsError::NoJob("web".into()));
        assert!(valid_id("backup-web-100") && !valid_id("") && !valid_id("../x") && !valid_id(&"a".repeat(257)));
    }

    #[tokio::test]
    async fn ids_are_unique_and_a_dropped_handle_ends_its_watchers() {
        let jobs: Jobs<u32> = Jobs::default();
        let a = jobs.start("backup", "web", 7).unwrap();
        let b = jobs.start("backup", "web", 7).unwrap();
        let all = jobs.start("backup", "", 7).unwrap();
        assert_eq!((a.id(), b.id(), all.id()), ("backup-web-7", "backup-web-7-2", "backup-7"));
        // By target: the newest.
        assert_eq!(jobs.watch("web").unwrap().id(), "backup-web-7-2");
        let w = jobs.watch("backup-web-7").unwrap();
        drop(a);
        assert_eq!(w.into_stream().collect::<Vec<_>>().await, Vec::<u32>::new());
        assert_eq!(jobs.running(), ["backup-web-7-2", "backup-7"]);
    }

    #[test]
    fn cancel_reaches_the_jobs_token_by_id_or_target() {
        let jobs: Jobs<u32> = Jobs::default();
        let a = jobs.start("backup", "web", 1).unwrap();
        let b = jobs.start("check", "db", 1).unwrap();
        assert_eq!(jobs.cancel("backup-web-1"), Ok("backup-web-1".to_string()));
        assert!(a.token().is_cancelled() && !b.token().is_cancelled());
        assert_eq!(jobs.cancel("db"), Ok("check-db-1".to_string()));
        assert!(b.token().is_cancelled());
        assert_eq!(jobs.cancel("nope-1"), Err(JobsError::NoJob("nope-1".into())));
        drop(a);
        assert_eq!(jobs.cancel("web"), Err(JobsError::NoJob("web".into())));
    }

    #[test]
    fn jobs_and_watchers_are_bounded() {
        let jobs: Jobs<u32> = Jobs::new(2, 2);
        let _a = jobs.start("check", "a", 1).unwrap();
        let _b = jobs.start("check", "b", 1).unwrap();
        assert_eq!(jobs.start("check", "c", 1).err().unwrap(), JobsError::TooManyJobs(2));
        let w1 = jobs.watch("a").unwrap();
        let _w2 = jobs.watch("a").unwrap();
        let e = jobs.watch("a").err().unwrap();
        assert_eq!(e.to_string(), "job check-a-1 already has 2 watchers (at most 2)");
        drop(w1);
        assert!(jobs.watch("a").is_ok());
    }

    /// Collects a job's stream as text: `step:message`, `done:S`, `err:E`.
    async fn items(w: Watcher<Result<Update<String>, String>>) -> Vec<String> {
        w.into_stream()
            .map(|r| match r {
                Ok(Update::Progress(p)) => format!("{}:{}:{}/{}", p.step, p.message, p.done, p.total),
                Ok(Update::Done(s)) => format!("done:{s}"),
                Err(e) => format!("err:{e}"),
            })
            .collect()
            .await
    }

    fn keep(_: &str, e: String) -> String {
        e
    }

    #[tokio::test]
    async fn a_cancelled_run_sees_its_token_and_its_error_goes_through_cancelled() {
        let jobs: Registry<String, String> = Jobs::default();
        let w = run(
            &jobs,
            "backup",
            "web",
            |rep| async move {
                rep.say("borg", "creating").await;
                // What a cancellable program does: wait for the scope's token.
                crate::runner::current_cancel().expect("the work runs in the job's scope").cancelled().await;
                Err::<String, _>("borg create killed".to_string())
            },
            |id, e| format!("job {id} cancelled: {e}"),
        )
        .unwrap();
        let id = w.id().to_string();
        assert_eq!(jobs.cancel("web").unwrap(), id);
        let got = items(w).await;
        assert_eq!(got, ["borg:creating:0/0".to_string(), format!("err:job {id} cancelled: borg create killed")]);
        assert!(jobs.running().is_empty());
    }

    #[tokio::test]
    async fn run_streams_the_progress_then_the_summary_and_the_job_leaves() {
        let jobs: Registry<String, String> = Jobs::default();
        let w = run(
            &jobs,
            "backup",
            "web",
            |rep| async move {
                rep.progress("borg", 1, 2, "creating").await;
                rep.for_target("web").say("prune", "borg prune").await;
                Ok("archive web-1".to_string())
            },
            keep,
        )
        .unwrap();
        assert!(w.id().starts_with("backup-web-"), "{}", w.id());
        assert_eq!(items(w).await, ["borg:creating:1/2", "prune:web: borg prune:0/0", "done:archive web-1"]);
        assert!(jobs.running().is_empty());
    }

    #[tokio::test]
    async fn run_ends_with_the_error_after_the_progress_sent() {
        let jobs: Registry<String, String> = Jobs::default();
        let w = run(
            &jobs,
            "check",
            "web",
            |rep| async move {
                rep.say("check", "borg check").await;
                Err::<String, _>("borg check: exit 2".to_string())
            },
            keep,
        )
        .unwrap();
        assert_eq!(items(w).await, ["check:borg check:0/0", "err:borg check: exit 2"]);
        assert!(jobs.running().is_empty());
    }

    #[tokio::test]
    async fn a_late_watcher_of_a_run_gets_the_last_step_then_the_summary() {
        let jobs: Registry<String, String> = Jobs::default();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
        let first = run(
            &jobs,
            "drill",
            "web",
            |rep| async move {
                rep.say("extract", "one").await;
                rep.say("compare", "two").await;
                let _ = sent_tx.send(());
                let _ = go_rx.await;
                Ok("drill passed".to_string())
            },
            keep,
        )
        .unwrap();
        // The reporter's updates reach the registry through a channel: wait until the last one is in.
        sent_rx.await.unwrap();
        let late = loop {
            let w = jobs.watch("web").unwrap();
            if w.first.as_ref().is_some_and(|e| matches!(&e.update, Ok(Update::Progress(p)) if p.step == "compare")) {
                break w;
            }
            tokio::task::yield_now().await;
        };
        go_tx.send(()).unwrap();
        assert_eq!(items(late).await, ["compare:two:0/0", "done:drill passed"]);
        assert_eq!(items(first).await, ["extract:one:0/0", "compare:two:0/0", "done:drill passed"]);
    }

    #[tokio::test]
    async fn reporter_prefixes_nest_and_a_reporter_outside_the_registry_drops_its_updates() {
        let rep = Reporter::none().for_target("all").for_target("web");
        assert_eq!(rep.prefix, "all: web: ");
        // Nowhere to send to: returns at once.
        rep.progress("borg", 1, 2, "creating").await;
        assert!(rep.tx.is_none());
    }

    #[tokio::test]
    async fn a_byte_reporter_never_goes_backwards_and_raises_a_short_estimate() {
        assert!(Reporter::none().bytes("borg create", 10, "x").is_none(), "nowhere to send: nothing to measure");
        let (tx, mut rx) = mpsc::channel::<Progress>(64);
        let rep = Reporter { tx: Some(tx), prefix: "web: ".into() };
        assert!(rep.is_watched());
        let report = rep.bytes("borg create", 100, "to local").unwrap();
        for (done, total) in [(10, None), (60, None), (40, None), (150, None), (5, Some(300)), (300, Some(300))] {
            report(done, total);
        }
        drop((report, rep));
        let mut seen = Vec::new();
        while let Some(p) = rx.recv().await {
            assert_eq!((p.step.as_str(), p.message.as_str()), ("borg create", "web: to local"));
            seen.push((p.done, p.total));
        }
        assert_eq!(seen, [(10, 100), (60, 100), (60, 100), (150, 150), (150, 300), (300, 300)]);
    }
}
