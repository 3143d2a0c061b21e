//! Running a workspace binary to completion for the command-line tests: its exit code and both outputs, killed after
//! 20 s (no command may hang); and labctl interrupted by SIGINT at a given stderr line (the Ctrl-C tests). Knows
//! where the binaries are (`harness::bin`); asserts nothing itself (tests do).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::bin;

/// Exit code of an invalid config (sysexits EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// What a finished command printed.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs a workspace binary to completion (killed after 20 s: no command here may hang).
pub fn run<I, S>(name: &str, args: I) -> Result<Ran>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(bin(name)?);
    c.args(args).env("RUST_LOG", "info").env_remove("LABCTL_CONFIG");
    let out = crate::fixtures::cmd::output_within(&mut c, None, Duration::from_secs(20))?;
    Ok(Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `labctl --config INV ARGS`, sends it SIGINT once a stderr line starts with `at` (waiting at most 60 s for
/// it), and returns its exit status (it must exit within `within` of the SIGINT) and every stderr line.
pub fn interrupt_at(
    inv: &Path,
    args: &[&str],
    at: &str,
    within: Duration,
) -> Result<(std::process::ExitStatus, Vec<String>)> {
    let mut labctl = Command::new(bin("labctl")?)
        .arg("--config")
        .arg(inv)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning labctl")?;
    let (tx, rx) = mpsc::channel();
    let stderr = labctl.stderr.take().context("stderr piped")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).with_context(|| format!("no `{at}` line: {seen:?}"))?;
        seen.push(line);
        if seen.last().is_some_and(|l| l.starts_with(at)) {
            break;
        }
    }
    crate::fixtures::cmd::run(Command::new("kill").args(["-INT", &labctl.id().to_string()]))?;
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = labctl.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = labctl.kill();
            bail!("labctl did not exit within {within:?} of SIGINT: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread ends with labctl's stderr.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    Ok((status, seen))
}
