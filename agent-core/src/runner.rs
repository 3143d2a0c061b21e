//! The one runner for external programs (zfs, borg, docker-compose, qemu-img, systemctl, …): spawn, timeout, redaction.
//! Knows processes, pipes and how to show a command without leaking secrets; must not know what any program means.
//!
//! Callers build a [`Cmd`] and hand it to [`run`] (any exit status is a success) or [`run_ok`] (a non-zero exit
//! becomes [`RunError::Failed`]). Synchronous callers (the installer) use [`run_blocking`] / [`run_ok_blocking`].
//!
//! Secrets: values given with [`Cmd::secret_env`] reach the child's environment but never appear in [`Cmd::display`],
//! in `Debug` output, in log lines or in [`RunError`] messages; the same holds for every [`Cmd::redact`] substring.
//! [`Output`] carries the raw bytes the child wrote: it is data, not a message, and is not redacted.
//!
//! On timeout the direct child is killed (SIGKILL) and reaped; grandchildren that it forked into the background are
//! not (there is no process-group kill without `unsafe`). Prefer programs that do not daemonize.
//!
//! Cancellation: a run given a [`CancellationToken`] ([`Cmd::cancel_on`], or [`Cmd::cancellable`] inside a
//! [`with_cancel`] scope, which is how a long job hands its token to the programs it runs) kills its child the same way
//! when the token is cancelled and returns [`RunError::Cancelled`]; a run whose token is already cancelled does not
//! start. Commands not marked cancellable (the clean-up a cancelled job still has to do) run as usual in the scope.
//!
//! Live stderr: a run given a [`LineFilter`] ([`Cmd::stderr_lines`]) hands each stderr line to it as it is written
//! (a progress report, say); what the filter returns is kept in [`Output::stderr`], what it consumes is not.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
pub use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// The token of the long job this task runs for (see [`with_cancel`]).
    static JOB_CANCEL: CancellationToken;
}

/// Runs `work` with `token` as its job's cancellation token: every [`Cmd::cancellable`] run inside it (in this task;
/// a task it spawns must be given the token again) is killed when the token is cancelled.
pub async fn with_cancel<F: Future>(token: CancellationToken, work: F) -> F::Output {
    JOB_CANCEL.scope(token, work).await
}

/// The token of the job this task runs for, when it runs inside [`with_cancel`].
pub fn current_cancel() -> Option<CancellationToken> {
    JOB_CANCEL.try_with(CancellationToken::clone).ok()
}

/// Whether the job this task runs for was cancelled (false outside [`with_cancel`]).
pub fn is_cancelled() -> bool {
    current_cancel().is_some_and(|t| t.is_cancelled())
}

/// Timeout used when a [`Cmd`] does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many trailing lines of stderr [`RunError::Failed`] keeps.
pub const STDERR_TAIL_LINES: usize = 20;

/// What redacted text is replaced with.
pub const MASK: &str = "***";

/// Longest stderr line handed whole to a [`LineFilter`]; a longer one is cut there (the rest is dropped).
pub const MAX_STDERR_LINE: usize = 64 * 1024;

/// Sees each stderr line of a run as it is written (without its newline): `Some(text)` keeps `text` in
/// [`Output::stderr`], `None` consumes the line. Called on the task reading the pipe: it must not block.
pub type LineFilter = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An external program to run: argv, environment, input, working directory and a timeout.
#[derive(Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    secret_env: Vec<(String, String)>,
    redact: Vec<String>,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
    cwd: Option<PathBuf>,
    /// Start from an empty environment instead of the agent's.
    env_clear: bool,
    cancel: Cancel,
    stderr_filter: Option<LineFilter>,
}

/// Which token, if any, may kill a run.
#[derive(Clone, Debug)]
enum Cancel {
    Never,
    /// The token of the [`with_cancel`] scope the run happens in, if any.
    Scope,
    Token(CancellationToken),
}

impl Cmd {
    /// A command running `program` (looked up in `PATH` unless it contains a `/`) with [`DEFAULT_TIMEOUT`].
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            secret_env: Vec::new(),
            redact: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            stdin: None,
            cwd: None,
            env_clear: false,
            cancel: Cancel::Never,
            stderr_filter: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// An environment variable for the child (added to the inherited environment; its value may be logged).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// The child gets none of the agent's environment: only what [`env`](Self::env) and
    /// [`secret_env`](Self::secret_env) give it.
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// An environment variable whose value is never shown: it is also redacted wherever it would appear in a message.
    pub fn secret_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.secret_env.push((key.into(), value.into()));
        self
    }

    /// A substring (a password in a URL, a token in an argument) replaced by [`MASK`] in every message.
    pub fn redact(mut self, secret: impl Into<String>) -> Self {
        self.redact.push(secret.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bytes written to the child's stdin (which is otherwise `/dev/null`).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The run is killed (and returns [`RunError::Cancelled`]) when `token` is cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Cancel::Token(token);
        self
    }

    /// The run is killed when the job it runs for is cancelled: it takes the token of the [`with_cancel`] scope it is
    /// run in (none outside one). For the long work of a job (a borg create, an extract), not for its clean-up.
    pub fn cancellable(mut self) -> Self {
        self.cancel = Cancel::Scope;
        self
    }

    /// Hands each stderr line to `filter` as it is written (see [`LineFilter`]).
    pub fn stderr_lines(mut self, filter: LineFilter) -> Self {
        self.stderr_filter = Some(filter);
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The argv as a shell would read it, each word quoted when needed, with secrets replaced by [`MASK`].
    pub fn display(&self) -> String {
        let redactions = self.redactions();
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|word| shell_quote(&redact_with(&word.to_string_lossy(), &redactions)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `text` (a program's output turned into a message by the caller) with this command's secrets masked.
    pub fn redacted(&self, text: &str) -> String {
        redact_with(text, &self.redactions())
    }

    /// Every non-empty secret (redact substrings and secret env values), longest first so overlaps mask fully.
    fn redactions(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .redact
            .iter()
            .cloned()
            .chain(self.secret_env.iter().map(|(_, v)| v.clone()))
            .filter(|s| !s.is_empty())
            .collect();
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        all
    }

    fn spawn_error(&self, source: io::Error, shown: String, redactions: &[String]) -> RunError {
        let cwd_missing = self.cwd.as_ref().is_some_and(|dir| !dir.is_dir());
        if source.kind() == io::ErrorKind::NotFound && !cwd_missing {
            RunError::NotFound { program: redact_with(&self.program.to_string_lossy(), redactions) }
        } else {
            RunError::Io { cmd: shown, source }
        }
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret_keys: Vec<&str> = self.secret_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Cmd")
            .field("argv", &self.display())
            .field("env", &self.env)
            .field("secret_env_keys", &secret_keys)
            .field("timeout", &self.timeout)
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// What a finished program produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// Lossily decoded; not redacted.
    pub stderr: String,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{program} not found: is it installed?")]
    NotFound { program: String },
    #[error("`{cmd}` timed out after {after:?} and was killed")]
    Timeout { cmd: String, after: Duration },
    #[error("`{cmd}` failed with {}{}", describe_code(*.code), describe_stderr(.stderr))]
    Failed {
        cmd: String,
        /// `None` when the program was ended by a signal.
        code: Option<i32>,
        /// The last [`STDERR_TAIL_LINES`] lines, trimmed and redacted.
        stderr: String,
    },
    #[error("`{cmd}` was cancelled and killed")]
    Cancelled { cmd: String },
    #[error("cannot run `{cmd}`: {source}")]
    Io {
        cmd: String,
        #[source]
        source: io::Error,
    },
}

fn describe_code(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "no exit code (terminated by a signal)".to_owned(),
    }
}

fn describe_stderr(stderr: &str) -> String {
    if stderr.is_empty() {
        " (no stderr)".to_owned()
    } else {
        format!(": {stderr}")
    }
}

/// Runs `cmd` to completion (or until its timeout); any exit status is `Ok`.
pub async fn run(cmd: Cmd) -> Result<Output, RunError> {
    let shown = cmd.display();
    let redactions = cmd.redactions();
    tracing::debug!(cmd = %shown, timeout = ?cmd.timeout, "running external program");

    #[allow(clippy::disallowed_methods)] // the one place that starts a program
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if cmd.env_clear {
        command.env_clear();
    }
    for (key, value) in &cmd.env {
        command.env(key, value);
    }
    for (key, value) in &cmd.secret_env {
        command.env(key, value);
    }
    if let Some(dir) = &cmd.cwd {
        command.current_dir(dir);
    }

    let cancel = match &cmd.cancel {
        Cancel::Never => None,
        Cancel::Scope => current_cancel(),
        Cancel::Token(t) => Some(t.clone()),
    };
    if cancel.as_ref().is_some_and(CancellationToken::is_cancelled) {
        tracing::info!(cmd = %shown, "not started: its job was cancelled");
        return Err(RunError::Cancelled { cmd: shown });
    }

    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(source) => return Err(cmd.spawn_error(source, shown, &redactions)),
    };
    let stdin_pipe = child.stdin.take();
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let input = cmd.stdin;
    let filter = cmd.stderr_filter.clone();

    let exchange = async {
        let write = async {
            match (stdin_pipe, input) {
                (Some(mut pipe), Some(data)) => match pipe.write_all(&data).await {
                    // The child may exit without reading all of its input: that is its business.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                    other => other,
                },
                _ => Ok(()),
            }
        };
        let stderr = async {
            match &filter {
                Some(f) => read_filtered(stderr_pipe, f).await,
                None => read_all(stderr_pipe).await,
            }
        };
        let (written, stdout, stderr) = tokio::join!(write, read_all(stdout_pipe), stderr);
        let status = child.wait().await?;
        written?;
        Ok::<_, io::Error>((status, stdout?, stderr?))
    };

    let cancelled = async {
        match &cancel {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(cmd.timeout, exchange) => r,
        () = cancelled => {
            if let Err(e) = child.kill().await {
                tracing::warn!(cmd = %shown, error = %e, "cannot kill cancelled program");
            }
            tracing::warn!(cmd = %shown, "external program cancelled and killed");
            return Err(RunError::Cancelled { cmd: shown });
        }
    };
    match outcome {
        Ok(Ok((status, stdout, stderr))) => {
            let elapsed = started.elapsed();
            tracing::debug!(cmd = %shown, %status, ?elapsed, "external program finished");
            Ok(Output { status, stdout, stderr: String::from_utf8_lossy(&stderr).into_owned(), elapsed })
        }
        Ok(Err(source)) => {
            // The child may still be running (a pipe failed): do not leave it behind.
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(RunError::Io { cmd: shown, source })
        }
        Err(_elapsed) => {
            if let Err(e) = child.kill().await {
                tracing::warn!(cmd = %shown, error = %e, "cannot kill timed-out program");
            }
            tracing::warn!(cmd = %shown, after = ?cmd.timeout, "external program timed out and was killed");
            Err(RunError::Timeout { cmd: shown, after: cmd.timeout })
        }
    }
}

/// Like [`run`], but a non-zero exit (or death by signal) is [`RunError::Failed`] with the tail of stderr.
pub async fn run_ok(cmd: Cmd) -> Result<Output, RunError> {
    let shown = cmd.display();
    let redactions = cmd.redactions();
    let output = run(cmd).await?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(RunError::Failed {
            cmd: shown,
            code: output.status.code(),
            stderr: redact_with(&tail_lines(&output.stderr, STDERR_TAIL_LINES), &redactions),
        })
    }
}

/// [`run`] for synchronous callers; safe to call from inside a tokio runtime (it runs on its own thread and runtime).
pub fn run_blocking(cmd: Cmd) -> Result<Output, RunError> {
    on_own_runtime(cmd, run)
}

/// [`run_ok`] for synchronous callers; safe to call from inside a tokio runtime.
pub fn run_ok_blocking(cmd: Cmd) -> Result<Output, RunError> {
    on_own_runtime(cmd, run_ok)
}

fn on_own_runtime<F, Fut>(cmd: Cmd, f: F) -> Result<Output, RunError>
where
    F: FnOnce(Cmd) -> Fut + Send,
    Fut: Future<Output = Result<Output, RunError>>,
{
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| RunError::Io { cmd: cmd.display(), source })?;
            runtime.block_on(f(cmd))
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

async fn read_all<R: AsyncRead + Unpin>(pipe: Option<R>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Reads `pipe` line by line through `filter`; returns the lines it kept, each ended by a newline.
async fn read_filtered<R: AsyncRead + Unpin>(pipe: Option<R>, filter: &LineFilter) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let Some(pipe) = pipe else { return Ok(kept) };
    let mut reader = tokio::io::BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than MAX_STDERR_LINE is cut, the rest of it skipped.
        let n = (&mut reader).take(MAX_STDERR_LINE as u64).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(kept);
        }
        if line.last() != Some(&b'\n') && n == MAX_STDERR_LINE {
            let mut rest = Vec::new();
            while reader.read_until(b'\n', &mut rest).await? > 0 {
                if rest.last() == Some(&b'\n') {
                    break;
                }
                rest.clear();
            }
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(keep) = filter(text.trim_end_matches(['\n', '\r'])) {
            kept.extend_from_slice(keep.as_bytes());
            kept.push(b'\n');
        }
    }
}

fn redact_with(text: &str, redactions: &[String]) -> String {
    redactions.iter().fold(text.to_owned(), |acc, secret| acc.replace(secret.as_str(), MASK))
}

/// The last `n` lines of `text`, trimmed.
fn tail_lines(text: &str, n: usize) -> String {
    let trimmed = text.trim();
    let lines: Vec<&str> = trimmed.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let tail = lines[skip..].join("\n");
    if skip > 0 {
        format!("[{skip} earlier lines omitted]\n{tail}")
    } else {
        tail
    }
}

/// POSIX-shell quoting: plain words stay as they are, anything else goes in single quotes. The one quoting of the
/// crate: command lines shown in logs and errors, and borg's `BORG_PASSCOMMAND` (which borg splits with shlex).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '=' | '+' | '@' | '%')
        });
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

// Tests run programs directly.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/etc/strata/borg.pass"), "/etc/strata/borg.pass");
        assert_eq!(shell_quote("/tmp/pw it's"), r"'/tmp/pw it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    const SECRET: &str = "hunter2-s3cr3t-value";

    fn sh(script: &str) -> Cmd {
        Cmd::new("sh").arg("-c").arg(script)
    }

    #[tokio::test]
    async fn a_successful_command_returns_its_output() {
        let out = run_ok(sh("printf hello; printf warn >&2").env("FOO", "bar")).await.unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, "warn");

        let out = run_ok(sh("printf %s \"$FOO\"").env("FOO", "bar")).await.unwrap();
        assert_eq!(out.stdout, b"bar");

        let out = run_ok(Cmd::new("cat").stdin(b"piped input".to_vec())).await.unwrap();
        assert_eq!(out.stdout, b"piped input");

        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(Cmd::new("pwd").current_dir(dir.path())).await.unwrap();
        let pwd = String::from_utf8(out.stdout).unwrap();
        assert_eq!(std::fs::canonicalize(pwd.trim()).unwrap(), std::fs::canonicalize(dir.path()).unwrap());
    }

    #[tokio::test]
    async fn a_stderr_filter_sees_each_line_live_and_keeps_what_it_returns() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let filter: LineFilter = Arc::new(move |line: &str| {
            log.lock().unwrap().push(line.to_string());
            line.strip_prefix("keep ").map(str::to_uppercase)
        });
        let long = "x".repeat(MAX_STDERR_LINE + 10);
        let script = format!("echo 'progress 1' >&2; echo 'keep me' >&2; printf '{long}\\nkeep last' >&2; printf out");
        let out = run_ok(sh(&script).stderr_lines(filter)).await.unwrap();
        assert_eq!(out.stdout, b"out");
        assert_eq!(out.stderr, "ME\nLAST\n");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "{:?}", seen.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!((seen[0].as_str(), seen[1].as_str(), seen[3].as_str()), ("progress 1", "keep me", "keep last"));
        assert_eq!(seen[2].len(), MAX_STDERR_LINE, "a long line is cut at the bound");
    }

    #[tokio::test]
    async fn run_accepts_a_failure_and_run_ok_reports_it_with_stderr() {
        let out = run(sh("echo boom >&2; exit 3")).await.unwrap();
        assert_eq!(out.status.code(), Some(3));

        let err = run_ok(sh("echo first >&2; echo boom >&2; exit 3")).await.unwrap_err();
        match &err {
            RunError::Failed { cmd, code, stderr } => {
                assert_eq!(cmd, "sh -c 'echo first >&2; echo boom >&2; exit 3'");
                assert_eq!(*code, Some(3));
                assert_eq!(stderr, "first\nboom");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("exit code 3") && message.ends_with("first\nboom"), "{message}");
    }

    #[tokio::test]
    async fn failed_keeps_only_the_tail_of_stderr() {
        let err =
            run_ok(sh("i=0; while [ $i -lt 50 ]; do echo line$i >&2; i=$((i+1)); done; exit 1")).await.unwrap_err();
        let RunError::Failed { stderr, .. } = err else { panic!("expected Failed") };
        assert!(stderr.starts_with("[30 earlier lines omitted]\nline30\n"), "{stderr}");
        assert!(stderr.ends_with("line49"), "{stderr}");
        assert_eq!(stderr.lines().count(), STDERR_TAIL_LINES + 1);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_child_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // `exec` makes the shell's pid the pid of `sleep`: the process we must find dead afterwards.
        let cmd = sh("echo $$ > \"$1\"; exec sleep 5").arg("sh").arg(&pid_file).timeout(Duration::from_millis(200));
        let started = Instant::now();
        let err = run(cmd).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, RunError::Timeout { after, .. } if after == Duration::from_millis(200)), "{err:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(err.to_string().contains("timed out after 200ms"), "{err}");

        let pid = std::fs::read_to_string(&pid_file).expect("the child wrote its pid");
        let alive =
            std::process::Command::new("kill").arg("-0").arg(pid.trim()).stderr(Stdio::null()).status().unwrap();
        assert!(!alive.success(), "process {} is still alive after the timeout", pid.trim());
    }

    fn is_alive(pid: &str) -> bool {
        std::process::Command::new("kill").arg("-0").arg(pid.trim()).stderr(Stdio::null()).status().unwrap().success()
    }

    #[tokio::test]
    async fn cancelling_the_token_kills_a_real_sleep_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let token = CancellationToken::new();
        let cmd = sh("echo $$ > \"$1\"; exec sleep 30").arg("sh").arg(&pid_file).cancel_on(token.clone());
        let run = tokio::spawn(run(cmd));
        while std::fs::read_to_string(&pid_file).map_or(true, |p| !p.ends_with('\n')) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(is_alive(&pid));
        let started = Instant::now();
        token.cancel();
        let err = run.await.unwrap().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(&err, RunError::Cancelled { cmd } if cmd.starts_with("sh -c ")), "{err:?}");
        assert!(err.to_string().ends_with("was cancelled and killed"), "{err}");
        assert!(!is_alive(&pid), "process {} is still alive after the cancellation", pid.trim());
    }

    #[tokio::test]
    async fn a_cancellable_run_takes_its_scopes_token_and_clean_up_runs_still_run() {
        let token = CancellationToken::new();
        let (cancelled, clean_up) = with_cancel(token.clone(), async {
            assert!(!is_cancelled());
            let sleeper =
                tokio::spawn(with_cancel(current_cancel().unwrap(), run(Cmd::new("sleep").arg("30").cancellable())));
            tokio::time::sleep(Duration::from_millis(100)).await;
            token.cancel();
            assert!(is_cancelled());
            let cancelled = sleeper.await.unwrap();
            // Not started at all once cancelled; a command not marked cancellable still runs.
            let again = run(Cmd::new("true").cancellable()).await;
            assert!(matches!(again, Err(RunError::Cancelled { ref cmd }) if cmd == "true"), "{again:?}");
            (cancelled, run_ok(Cmd::new("echo").arg("clean")).await)
        })
        .await;
        assert!(matches!(cancelled, Err(RunError::Cancelled { ref cmd }) if cmd == "sleep 30"), "{cancelled:?}");
        assert_eq!(clean_up.unwrap().stdout, b"clean\n");
        // Outside any scope a cancellable command is an ordinary one.
        assert!(!is_cancelled() && current_cancel().is_none());
        assert!(run_ok(Cmd::new("true").cancellable()).await.is_ok());
    }

    #[tokio::test]
    async fn a_missing_program_is_not_found() {
        let err = run(Cmd::new("strata-no-such-program")).await.unwrap_err();
        assert!(matches!(&err, RunError::NotFound { program } if program == "strata-no-such-program"), "{err:?}");
        assert_eq!(err.to_string(), "strata-no-such-program not found: is it installed?");
    }

    #[tokio::test]
    async fn a_missing_working_directory_is_an_io_error_not_a_missing_program() {
        let err = run(Cmd::new("true").current_dir("/nonexistent/strata-dir")).await.unwrap_err();
        assert!(matches!(err, RunError::Io { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn secret_env_reaches_the_child_but_no_message() {
        let cmd = sh("printf %s \"$SECRET\"").secret_env("SECRET", SECRET);
        assert!(!cmd.display().contains(SECRET));
        assert!(!format!("{cmd:?}").contains(SECRET), "{cmd:?}");
        let out = run_ok(cmd).await.unwrap();
        assert_eq!(out.stdout, SECRET.as_bytes());

        // The child echoes the secret to stderr and also got it on argv: the error must show neither.
        let cmd = sh("printf 'bad password %s\\n' \"$SECRET\" >&2; exit 1")
            .arg("sh")
            .arg(format!("--password={SECRET}"))
            .secret_env("SECRET", SECRET);
        let err = run_ok(cmd).await.unwrap_err();
        let message = err.to_string();
        assert!(!message.contains(SECRET), "{message}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        assert!(message.contains("'--password=***'") && message.contains("bad password ***"), "{message}");
        let cmd = sh("true").secret_env("SECRET", SECRET);
        assert_eq!(cmd.redacted(&format!("x {SECRET} y")), "x *** y", "output the caller turns into a message");

        let cmd = sh("sleep 5").arg(SECRET).secret_env("SECRET", SECRET).timeout(Duration::from_millis(50));
        let err = run(cmd).await.unwrap_err();
        assert!(!err.to_string().contains(SECRET), "{err}");
    }

    #[test]
    fn display_quotes_and_redacts() {
        let cmd = Cmd::new("borg")
            .args(["create", "ssh://backup:pa55word@nas/./repo::x", "it's here", ""])
            .redact("pa55word");
        assert_eq!(cmd.display(), "borg create 'ssh://backup:***@nas/./repo::x' 'it'\\''s here' ''");

        // Overlapping secrets: the longer one is masked whole.
        let cmd = Cmd::new("x").arg("abcdef").redact("abc").redact("abcdef").redact("");
        assert_eq!(cmd.display(), "x '***'");
    }

    #[test]
    fn blocking_variants_work_inside_and_outside_a_runtime() {
        assert_eq!(run_ok_blocking(Cmd::new("echo").arg("hi")).unwrap().stdout, b"hi\n");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let out = runtime.block_on(async { run_blocking(sh("exit 4")) }).unwrap();
        assert_eq!(out.status.code(), Some(4));
        assert!(matches!(run_ok_blocking(sh("exit 4")), Err(RunError::Failed { code: Some(4), .. })));
    }
}
