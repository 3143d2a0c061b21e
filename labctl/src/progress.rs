//! The one renderer of a long job's stream (backup, restore, check, drill, watch) on any agent: a bar on stderr when
//! it is a terminal, plain `step: message` lines on stderr otherwise, one JSON object per update on stdout with
//! `--json`; then the job's summary (the update that carries one) on stdout, or "outcome unknown" when the stream
//! ended without it; and what Ctrl-C does ([`OnInterrupt`]: detach, or cancel through a call the caller gives).
//! Knows nothing of what the steps mean, nor of proto or tonic (`client` converts the agents' messages into
//! [`Update`]s).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One update of a job, whichever agent it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Update {
    pub step: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
    /// The id of the job on the agent (what Cancel takes); not part of the JSON lines.
    #[serde(skip)]
    pub job_id: String,
    /// Set on the job's last update only: what the job did (its `message` says it in words, one line per target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// `done` and `total` count bytes (a borg create or extract), not steps.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bytes: bool,
    /// Seconds left at the rate seen since the step began (bytes only; labctl's estimate, set in `--json` lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

/// The time a step measured in bytes has left, at the rate seen since its first update (a new step, or the same
/// step with another message — another target —, starts over).
#[derive(Debug, Default)]
pub struct Eta {
    start: Option<(String, String, std::time::Instant, u64)>,
}

impl Eta {
    /// The seconds left after `p` arrived at `now`, once the step has moved bytes over some time.
    pub fn observe(&mut self, p: &Update, now: std::time::Instant) -> Option<f64> {
        if !p.bytes || p.total == 0 {
            self.start = None;
            return None;
        }
        let same = matches!(&self.start, Some((step, message, _, _)) if *step == p.step && *message == p.message);
        if !same {
            self.start = Some((p.step.clone(), p.message.clone(), now, p.done));
            return None;
        }
        let (_, _, t0, d0) = self.start.as_ref()?;
        let secs = now.duration_since(*t0).as_secs_f64();
        let moved = p.done.saturating_sub(*d0);
        if moved == 0 {
            return None;
        }
        let left = p.total.saturating_sub(p.done) as f64 * secs / moved as f64;
        Some((left * 10.0).round() / 10.0)
    }
}

/// What a finished job did, as typed facts (`--json` prints it in the update that carries it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    VmBackups(Vec<VmBackup>),
    VmRestore(VmRestore),
    VmDrill {
        restore: VmRestore,
        seconds: f64,
    },
    ServiceBackups(Vec<ServiceBackup>),
    ServiceRestore(ServiceRun),
    ServiceCheck(ServiceRun),
    ServiceDrill(ServiceRun),
    /// A kind of summary this labctl does not know (from a newer agent): the job finished; its message says how.
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmBackup {
    pub vm: String,
    pub id: String,
    pub mode: String,
    pub downtime_seconds: f64,
    pub size: u64,
    pub warnings: Vec<String>,
    /// What each target got.
    pub targets: Vec<VmTarget>,
}

/// What one target of a VM got in a backup run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmTarget {
    pub label: String,
    pub url: String,
    pub ok: bool,
    /// Empty when ok.
    pub error: String,
    pub size: u64,
    pub duration_seconds: f64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmRestore {
    pub vm: String,
    pub archive: String,
    /// The label of the target the backup was read from.
    pub target: String,
    pub to: String,
    /// Empty when nothing was moved aside.
    pub moved_aside: String,
    /// Empty when the restored VM was not started.
    pub started_as: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceBackup {
    pub service: String,
    pub archive: String,
    pub snapshot: String,
    pub downtime_seconds: f64,
    pub duration_seconds: f64,
    pub original_size: u64,
    pub compressed_size: u64,
    pub deduplicated_size: u64,
    pub pruned: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceRun {
    pub service: String,
    pub archive: String,
    pub snapshot: String,
}

/// How updates are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar redrawn in place on stderr (a terminal).
    Bar,
    /// `step: message` lines on stderr.
    Lines,
    /// Every update as a JSON line on stdout.
    Json,
}

impl Mode {
    /// JSON when asked for, else a bar when stderr is a terminal, else lines.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// Exit code of labctl interrupted (Ctrl-C) while following a job: 128 + SIGINT, as a shell reports it.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Exit code of labctl when Ctrl-C cancelled the job (`--cancel-on-interrupt`), or the Cancel call failed: an error.
pub const EXIT_CANCELLED: i32 = 1;

/// Sends Cancel for the followed job: its id (from the updates seen so far) or, before any update, `None` (the
/// caller cancels by target). Answers the agent's message, or the error as one line.
pub type Canceller<'a> = Box<dyn FnOnce(Option<String>) -> BoxFuture<'a, Result<String, String>> + Send + 'a>;

/// What Ctrl-C does while a job is followed.
pub enum OnInterrupt<'a> {
    /// labctl detaches and the job goes on; the text says where to follow it and see its outcome.
    Detach(String),
    /// `--cancel-on-interrupt`: labctl sends Cancel, says so, and follows the job to its final update (exit
    /// [`EXIT_CANCELLED`]); a second Ctrl-C detaches as [`OnInterrupt::Detach`] would, with this text.
    Cancel { detached: String, cancel: Canceller<'a> },
}

/// How a job's stream ended.
#[derive(Debug, PartialEq)]
pub enum End<E> {
    /// With the job's summary: its last update.
    Done(Box<Update>),
    /// With the agent's error.
    Failed(E),
    /// Without a summary and without an error: the job's outcome is unknown.
    Unknown,
}

/// Shows a job's stream until it ends, in the mode [`Mode::detect`] picks for `json`, and says how it ended. The
/// summary is not printed here (except as its JSON line): see [`print_summary`].
///
/// Ctrl-C while following ([`OnInterrupt::Detach`]) does not stop the job: the agent runs it to the end without us.
/// labctl says so on stderr (`interrupted: ` and the text, which says where to see the outcome) and exits with
/// [`EXIT_INTERRUPTED`]. With [`OnInterrupt::Cancel`] it sends Cancel, says so, and keeps showing the stream until
/// the job's final update; the job then ends with a CANCELLED status (returned here: the caller reports it and
/// exits 1) or, when it finished before the cancellation reached it, as usual. A Cancel that fails (refused, no
/// such job) is said on stderr and labctl exits with [`EXIT_CANCELLED`]; the job goes on.
pub async fn follow<S, E>(stream: S, json: bool, on_interrupt: OnInterrupt<'_>) -> End<E>
where
    S: Stream<Item = Result<Update, E>> + Unpin,
{
    let job_id = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = job_id.clone();
    let stream = stream.map(move |item| {
        if let Ok(u) = &item {
            if !u.job_id.is_empty() {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(u.job_id.clone());
            }
        }
        item
    });
    let shown = async {
        match Mode::detect(json) {
            Mode::Bar => follow_bar(stream).await,
            mode => follow_to(stream, mode, &mut std::io::stdout(), &mut std::io::stderr()).await,
        }
    };
    tokio::pin!(shown);
    let interrupted = tokio::select! {
        r = &mut shown => return r,
        Ok(()) = tokio::signal::ctrl_c() => on_interrupt,
    };
    // On a line of its own, under a bar left where it was.
    let (detached, cancel) = match interrupted {
        OnInterrupt::Detach(detached) => {
            eprintln!("\n{}", interrupted_line(&detached));
            std::process::exit(EXIT_INTERRUPTED)
        }
        OnInterrupt::Cancel { detached, cancel } => (detached, cancel),
    };
    let id = job_id.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!("\ninterrupted: cancelling the job{}", id.as_deref().map(|i| format!(" {i}")).unwrap_or_default());
    match cancel(id).await {
        Ok(message) => eprintln!("{message}; following it to its end (Ctrl-C again detaches)"),
        Err(e) => {
            eprintln!("cannot cancel: {e}");
            eprintln!("{}", interrupted_line(&detached));
            std::process::exit(EXIT_CANCELLED)
        }
    }
    tokio::select! {
        r = &mut shown => {
            if matches!(r, End::Done(_)) {
                eprintln!("the job finished before the cancellation reached it");
            }
            r
        }
        Ok(()) = tokio::signal::ctrl_c() => {
            eprintln!("\n{}", interrupted_line(&detached));
            std::process::exit(EXIT_INTERRUPTED)
        }
    }
}

/// What labctl says when Ctrl-C detaches it from a job.
pub fn interrupted_line(on_interrupt: &str) -> String {
    format!("interrupted: {on_interrupt}")
}

/// The summary's lines (one per target; none for a job that had no target, a `--all` of nothing).
pub fn summary_lines(last: &Update) -> Vec<String> {
    last.message.lines().map(str::to_string).collect()
}

/// Prints a finished job's summary on `out`: its lines as text, or the JSON line `{"summaries": [...]}`.
pub fn print_summary(last: &Update, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let lines = summary_lines(last);
    if json {
        writeln!(out, "{}", serde_json::json!({ "summaries": lines }))
    } else {
        lines.iter().try_for_each(|l| writeln!(out, "{l}"))
    }
}

/// [`follow`] in [`Mode::Lines`] or [`Mode::Json`], writing JSON lines to `out` and plain lines to `err`.
pub async fn follow_to<S, E>(mut stream: S, mode: Mode, out: &mut dyn Write, err: &mut dyn Write) -> End<E>
where
    S: Stream<Item = Result<Update, E>> + Unpin,
{
    let mut last_line = String::new();
    let mut eta = Eta::default();
    while let Some(p) = stream.next().await {
        let mut p = match p {
            Ok(p) => p,
            Err(e) => return End::Failed(e),
        };
        p.eta_seconds = eta.observe(&p, std::time::Instant::now());
        if mode == Mode::Json {
            // A closed stdout (`| head`) must not abort the work the agent is doing for us: keep reading.
            let _ = serde_json::to_writer(&mut *out, &p).map_err(std::io::Error::from).and_then(|()| writeln!(out));
            let _ = out.flush();
        } else if p.summary.is_none() {
            // Updates that only move `done` repeat the same line: print it once.
            let line = plain_line(&p);
            if line != last_line {
                let _ = writeln!(err, "{line}");
                last_line = line;
            }
        }
        if p.summary.is_some() {
            return End::Done(Box::new(p));
        }
    }
    End::Unknown
}

/// `step: message` (or only the step when there is no message).
pub fn plain_line(p: &Update) -> String {
    if p.message.is_empty() {
        p.step.clone()
    } else {
        format!("{}: {}", p.step, p.message)
    }
}

async fn follow_bar<S, E>(mut stream: S) -> End<E>
where
    S: Stream<Item = Result<Update, E>> + Unpin,
{
    let measured =
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {percent:>3}% {elapsed:>4} {wide_msg}")
            .expect("valid template")
            .progress_chars("#>.");
    let in_bytes = ProgressStyle::with_template(
        "{spinner} {prefix:.bold} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} \
         {wide_msg}",
    )
    .expect("valid template")
    .progress_chars("#>.");
    let unmeasured =
        ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}").expect("valid template");
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(unmeasured.clone());
    bar.enable_steady_tick(Duration::from_millis(120));
    // The style in use: none (unmeasured), steps or bytes.
    let mut has_length: Option<bool> = None;
    while let Some(p) = stream.next().await {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                // Leave the bar where the work stopped; the caller prints the error under it.
                bar.abandon();
                return End::Failed(e);
            }
        };
        if p.summary.is_some() {
            bar.finish_and_clear();
            return End::Done(Box::new(p));
        }
        if p.total > 0 {
            if has_length != Some(p.bytes) {
                bar.set_style(if p.bytes { in_bytes.clone() } else { measured.clone() });
                // The rate and eta start over with a new kind of measure.
                bar.reset();
                has_length = Some(p.bytes);
            }
            bar.set_length(p.total);
            bar.set_position(p.done.min(p.total));
        } else if has_length.is_some() {
            bar.set_style(unmeasured.clone());
            bar.unset_length();
            has_length = None;
        }
        bar.set_prefix(p.step);
        bar.set_message(p.message);
    }
    bar.finish_and_clear();
    End::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(step: &str, done: u64, total: u64, message: &str) -> Result<Update, String> {
        Ok(Update {
            step: step.into(),
            done,
            total,
            message: message.into(),
            job_id: String::new(),
            summary: None,
            bytes: false,
            eta_seconds: None,
        })
    }

    fn last(message: &str, summary: Summary) -> Result<Update, String> {
        Ok(Update {
            step: "done".into(),
            done: 1,
            total: 1,
            message: message.into(),
            job_id: String::new(),
            summary: Some(summary),
            bytes: false,
            eta_seconds: None,
        })
    }

    async fn run(items: Vec<Result<Update, String>>, mode: Mode) -> (End<String>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = follow_to(futures::stream::iter(items), mode, &mut out, &mut err).await;
        (r, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    fn run_summary(service: &str) -> Summary {
        Summary::ServiceCheck(ServiceRun { service: service.into(), ..Default::default() })
    }

    #[tokio::test]
    async fn lines_once_per_step_and_message_and_the_summary_returned() {
        let (r, out, err) = run(
            vec![
                up("snapshot", 0, 0, "zfs snapshot tank/photos@strata-1"),
                up("borg", 10, 100, "creating archive"),
                up("borg", 50, 100, "creating archive"),
                up("prune", 0, 0, ""),
                // A step named `done` is a step like any other: only a summary ends the job.
                up("done", 4, 4, "backup lab-1: downtime 0.100s"),
                last("photos: archive photos-2026 (1.2 MiB)", run_summary("photos")),
            ],
            Mode::Lines,
        )
        .await;
        let End::Done(last) = r else { panic!("{r:?}") };
        assert_eq!(summary_lines(&last), ["photos: archive photos-2026 (1.2 MiB)"]);
        assert_eq!(out, "");
        assert_eq!(
            err,
            "snapshot: zfs snapshot tank/photos@strata-1\nborg: creating archive\nprune\n\
             done: backup lab-1: downtime 0.100s\n"
        );
    }

    #[tokio::test]
    async fn json_prints_every_update_including_the_last_with_its_typed_summary() {
        let backup = VmBackup {
            vm: "lab".into(),
            id: "lab-1".into(),
            mode: "suspend".into(),
            downtime_seconds: 0.5,
            size: 10,
            warnings: vec![],
            targets: vec![],
        };
        let (r, out, err) =
            run(vec![up("borg", 1, 2, "x"), last("vm lab backed up", Summary::VmBackups(vec![backup]))], Mode::Json)
                .await;
        assert!(matches!(r, End::Done(_)), "{r:?}");
        assert_eq!(err, "");
        assert_eq!(
            out,
            "{\"step\":\"borg\",\"done\":1,\"total\":2,\"message\":\"x\"}\n\
             {\"step\":\"done\",\"done\":1,\"total\":1,\"message\":\"vm lab backed up\",\"summary\":{\"vm_backups\":\
             [{\"vm\":\"lab\",\"id\":\"lab-1\",\"mode\":\"suspend\",\"downtime_seconds\":0.5,\"size\":10,\
             \"warnings\":[],\"targets\":[]}]}}\n"
        );
    }

    #[tokio::test]
    async fn an_error_status_ends_the_stream() {
        let (r, _, err) = run(
            vec![up("borg", 1, 2, "creating archive"), Err("borg create: exit 2: lock timeout".into())],
            Mode::Lines,
        )
        .await;
        assert_eq!(r, End::Failed("borg create: exit 2: lock timeout".to_string()));
        assert_eq!(err, "borg: creating archive\n");
    }

    #[tokio::test]
    async fn a_stream_that_ends_without_a_summary_is_an_unknown_outcome() {
        let (r, _, err) =
            run(vec![up("borg", 1, 2, "creating archive"), up("done", 1, 1, "no summary")], Mode::Lines).await;
        assert_eq!(r, End::Unknown);
        assert_eq!(err, "borg: creating archive\ndone: no summary\n");
    }

    #[test]
    fn summaries_print_one_line_per_target_as_text_or_one_json_line() {
        let u = last("a: archive a-1\nb: archive b-1", run_summary("a")).unwrap();
        let mut out = Vec::new();
        print_summary(&u, false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a: archive a-1\nb: archive b-1\n");
        let mut out = Vec::new();
        print_summary(&u, true, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"summaries\":[\"a: archive a-1\",\"b: archive b-1\"]}\n");
        // A `--all` of nothing: no line.
        let none = last("", Summary::VmBackups(vec![])).unwrap();
        assert!(summary_lines(&none).is_empty());
    }

    #[tokio::test]
    async fn bytes_get_an_eta_from_the_rate_since_the_step_began() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let bytes =
            |done: u64, message: &str| Update { bytes: true, ..up("borg create", done, 1000, message).unwrap() };
        let mut eta = Eta::default();
        assert_eq!(eta.observe(&bytes(100, "to a"), at(0)), None, "no rate yet");
        assert_eq!(eta.observe(&bytes(100, "to a"), at(500)), None, "nothing moved yet");
        // 300 bytes in 1 s: 600 left take 2 s.
        assert_eq!(eta.observe(&bytes(400, "to a"), at(1000)), Some(2.0));
        assert_eq!(eta.observe(&bytes(400, "to b"), at(1100)), None, "another target starts over");
        assert_eq!(eta.observe(&up("prune", 1, 2, "").unwrap(), at(1200)), None, "steps have no eta");

        let (_, out, _) = run(vec![Ok(bytes(0, "x")), Ok(bytes(1000, "x"))], Mode::Json).await;
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["bytes"], true);
        assert_eq!(lines[1]["done"], 1000);
        assert_eq!(lines[1]["eta_seconds"], 0.0);
    }
}
