//! Streamed progress of long work (backup, restore, check, drill) on any agent: a bar on stderr when it is a
//! terminal, plain `step: message` lines on stderr otherwise, one JSON object per update on stdout with `--json`.
//! Knows nothing of what the steps mean, only which step name marks a finished unit of work (its message is the
//! summary the caller prints).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One progress update, whichever agent's message it came in (the services-agent's `Progress`, the host-agent's
/// `VmProgress`: the same four fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Update {
    pub step: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

impl From<strata_proto::v1::Progress> for Update {
    fn from(p: strata_proto::v1::Progress) -> Update {
        Update { step: p.step, done: p.done, total: p.total, message: p.message }
    }
}

impl From<strata_proto::v1::VmProgress> for Update {
    fn from(p: strata_proto::v1::VmProgress) -> Update {
        Update { step: p.step, done: p.done, total: p.total, message: p.message }
    }
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

/// Shows a progress stream (a `tonic::Streaming<Progress>` or `<VmProgress>`) until it ends, in the mode
/// [`Mode::detect`] picks for `json`. Returns the messages of the updates whose step is `final_step` (the
/// summaries: one per unit of work, several for `--all`; none when the agent sent none), or the status the
/// stream ended with. The summaries are not printed (except as JSON lines): the caller prints them on stdout.
///
/// Ctrl-C while following does not stop the job: the agent runs it to the end without us. labctl says so on
/// stderr (`interrupted: ` and `on_interrupt`, which says where to see the outcome) and exits with
/// [`EXIT_INTERRUPTED`].
pub async fn follow<T, S>(
    stream: S,
    json: bool,
    final_step: &str,
    on_interrupt: &str,
) -> Result<Vec<String>, tonic::Status>
where
    T: Into<Update>,
    S: Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    let shown = async {
        match Mode::detect(json) {
            Mode::Bar => follow_bar(stream, final_step).await,
            mode => follow_to(stream, mode, final_step, &mut std::io::stdout(), &mut std::io::stderr()).await,
        }
    };
    tokio::select! {
        r = shown => r,
        Ok(()) = tokio::signal::ctrl_c() => {
            // On a line of its own, under a bar left where it was.
            eprintln!("\n{}", interrupted_line(on_interrupt));
            std::process::exit(EXIT_INTERRUPTED)
        }
    }
}

/// What labctl says when Ctrl-C detaches it from a job.
pub fn interrupted_line(on_interrupt: &str) -> String {
    format!("interrupted: {on_interrupt}")
}

/// [`follow`] in [`Mode::Lines`] or [`Mode::Json`], writing JSON lines to `out` and plain lines to `err`.
pub async fn follow_to<T, S>(
    mut stream: S,
    mode: Mode,
    final_step: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Vec<String>, tonic::Status>
where
    T: Into<Update>,
    S: Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    let mut summaries = Vec::new();
    let mut last_line = String::new();
    while let Some(p) = stream.next().await {
        let p: Update = p?.into();
        if mode == Mode::Json {
            // A closed stdout (`| head`) must not abort the work the agent is doing for us: keep reading.
            let _ = serde_json::to_writer(&mut *out, &p).map_err(std::io::Error::from).and_then(|()| writeln!(out));
            let _ = out.flush();
        } else if p.step != final_step {
            // Updates that only move `done` repeat the same line: print it once.
            let line = plain_line(&p);
            if line != last_line {
                let _ = writeln!(err, "{line}");
                last_line = line;
            }
        }
        if p.step == final_step {
            summaries.push(p.message);
        }
    }
    Ok(summaries)
}

/// `step: message` (or only the step when there is no message).
pub fn plain_line(p: &Update) -> String {
    if p.message.is_empty() {
        p.step.clone()
    } else {
        format!("{}: {}", p.step, p.message)
    }
}

async fn follow_bar<T, S>(mut stream: S, final_step: &str) -> Result<Vec<String>, tonic::Status>
where
    T: Into<Update>,
    S: Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    let measured =
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {percent:>3}% {elapsed:>4} {wide_msg}")
            .expect("valid template")
            .progress_chars("#>.");
    let unmeasured =
        ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}").expect("valid template");
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(unmeasured.clone());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut has_length = false;
    let mut summaries = Vec::new();
    while let Some(p) = stream.next().await {
        let p: Update = match p {
            Ok(p) => p.into(),
            Err(e) => {
                // Leave the bar where the work stopped; the caller prints the error under it.
                bar.abandon();
                return Err(e);
            }
        };
        if p.step == final_step {
            summaries.push(p.message);
            continue;
        }
        if p.total > 0 {
            if !has_length {
                bar.set_style(measured.clone());
                has_length = true;
            }
            bar.set_length(p.total);
            bar.set_position(p.done.min(p.total));
        } else if has_length {
            bar.set_style(unmeasured.clone());
            bar.unset_length();
            has_length = false;
        }
        bar.set_prefix(p.step);
        bar.set_message(p.message);
    }
    bar.finish_and_clear();
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(step: &str, done: u64, total: u64, message: &str) -> Result<Update, tonic::Status> {
        Ok(Update { step: step.into(), done, total, message: message.into() })
    }

    async fn run(
        items: Vec<Result<Update, tonic::Status>>,
        mode: Mode,
    ) -> (Result<Vec<String>, tonic::Status>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = follow_to(futures::stream::iter(items), mode, "done", &mut out, &mut err).await;
        (r, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[tokio::test]
    async fn lines_once_per_step_and_message_and_the_summary_returned() {
        let (r, out, err) = run(
            vec![
                up("snapshot", 0, 0, "zfs snapshot tank/photos@strata-1"),
                up("borg", 10, 100, "creating archive"),
                up("borg", 50, 100, "creating archive"),
                up("prune", 0, 0, ""),
                up("done", 1, 1, "photos: archive photos-2026 (1.2 MiB)"),
            ],
            Mode::Lines,
        )
        .await;
        assert_eq!(r.unwrap(), ["photos: archive photos-2026 (1.2 MiB)"]);
        assert_eq!(out, "");
        assert_eq!(err, "snapshot: zfs snapshot tank/photos@strata-1\nborg: creating archive\nprune\n");
    }

    #[tokio::test]
    async fn json_prints_every_update_including_the_last() {
        let (r, out, err) = run(vec![up("borg", 1, 2, "x"), up("done", 2, 2, "ok")], Mode::Json).await;
        assert_eq!(r.unwrap(), ["ok"]);
        assert_eq!(err, "");
        assert_eq!(
            out,
            "{\"step\":\"borg\",\"done\":1,\"total\":2,\"message\":\"x\"}\n\
             {\"step\":\"done\",\"done\":2,\"total\":2,\"message\":\"ok\"}\n"
        );
    }

    #[tokio::test]
    async fn an_error_status_ends_the_stream() {
        let (r, _, err) = run(
            vec![
                up("borg", 1, 2, "creating archive"),
                Err(tonic::Status::internal("borg create: exit 2: lock timeout")),
            ],
            Mode::Lines,
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert_eq!(e.message(), "borg create: exit 2: lock timeout");
        assert_eq!(err, "borg: creating archive\n");
    }

    #[test]
    fn vm_progress_converts() {
        let p = strata_proto::v1::VmProgress {
            step: "finished".into(),
            done: 1,
            total: 2,
            message: "m".into(),
            job_id: "backup-lab-1".into(),
        };
        assert_eq!(Update::from(p), Update { step: "finished".into(), done: 1, total: 2, message: "m".into() });
    }
}
