//! VMware Fusion (`vmrun -T fusion`) and Workstation on Linux (`vmrun -T ws`): list, start nogui, pause/unpause (the
//! VM's memory stays in RAM; unpause retried, then suspend hard + start as the last way back), suspend and stop soft
//! with a hard fallback, every call under a timeout (vmrun can hang), and `*.lck` detection.
//! Knows the vmrun CLI and VMware bundle layout; must not know backups.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_core::runner::{self, Cmd, RunError};

use super::{BundleFuture, HvError, HvFuture, Hypervisor, Quiesced, VmState};
use crate::config::{Backend, VmConfig};

/// One VMware VM driven through vmrun.
#[derive(Debug, Clone)]
pub(super) struct Vmrun {
    name: String,
    program: PathBuf,
    host_type: &'static str,
    bundle: PathBuf,
    timeout: Duration,
    shutdown_timeout: Duration,
}

impl Vmrun {
    pub(super) fn new(vm: &VmConfig) -> Self {
        Vmrun {
            name: vm.name.clone(),
            program: vm.vmrun.clone(),
            host_type: if vm.backend == Backend::Fusion { "fusion" } else { "ws" },
            bundle: vm.path.clone(),
            timeout: vm.vmrun_timeout,
            shutdown_timeout: vm.shutdown_timeout,
        }
    }

    /// The `.vmx` file: the configured path itself, or the only `.vmx` inside the bundle directory.
    fn vmx(&self) -> Result<PathBuf, HvError> {
        if self.bundle.extension().is_some_and(|e| e == "vmx") && self.bundle.is_file() {
            return Ok(self.bundle.clone());
        }
        if !self.bundle.is_dir() {
            return Err(HvError::Missing { vm: self.name.clone(), path: self.bundle.clone() });
        }
        find_with_ext(&self.bundle, "vmx").into_iter().next().ok_or_else(|| HvError::Failed {
            vm: self.name.clone(),
            message: format!("no .vmx file in {}", self.bundle.display()),
        })
    }

    fn bundle_dir(&self) -> PathBuf {
        if self.bundle.is_file() {
            self.bundle.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            self.bundle.clone()
        }
    }

    fn cmd(&self, args: &[&str], vmx: Option<&Path>, timeout: Duration) -> Cmd {
        let mut c = Cmd::new(&self.program).args(["-T", self.host_type]).timeout(timeout);
        if let Some((first, rest)) = args.split_first() {
            c = c.arg(first);
            if let Some(v) = vmx {
                c = c.arg(v);
            }
            c = c.args(rest);
        }
        c
    }

    /// Runs vmrun; a failure carries vmrun's `Error: …` line from stderr, or from stdout when stderr is empty (where
    /// vmrun prints it is not documented).
    async fn run(&self, args: &[&str], vmx: Option<&Path>, timeout: Duration) -> Result<String, RunError> {
        let cmd = self.cmd(args, vmx, timeout);
        let shown = cmd.display();
        let out = runner::run(cmd).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let said = if out.stderr.trim().is_empty() { &stdout } else { &out.stderr };
        let tail: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(runner::STDERR_TAIL_LINES)..].join("\n");
        Err(RunError::Failed { cmd: shown, code: out.status.code(), stderr: tail })
    }

    fn err(&self, source: RunError) -> HvError {
        HvError::Run { vm: self.name.clone(), source }
    }

    /// Runs `OP VMX soft`; on a failure or timeout runs `OP VMX hard`.
    async fn soft_then_hard(&self, op: &str, soft_timeout: Duration) -> Result<(), HvError> {
        let vmx = self.vmx()?;
        match self.run(&[op, "soft"], Some(&vmx), soft_timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(vm = %self.name, error = %e, "vmrun {op} soft failed: trying {op} hard");
                self.run(&[op, "hard"], Some(&vmx), self.timeout).await.map(drop).map_err(|e| self.err(e))
            }
        }
    }

    /// `vmrun pause VMX`: the vCPUs stop, memory stays in RAM, the VM stays in `list` and its `.lck` stays.
    async fn do_pause(&self) -> Result<(), HvError> {
        if !self.running().await? {
            return Err(HvError::Failed { vm: self.name.clone(), message: "is not running".into() });
        }
        let vmx = self.vmx()?;
        self.run(&["pause"], Some(&vmx), self.timeout).await.map(drop).map_err(|e| self.err(e))
    }

    /// Brings a VM listed by vmrun back from a pause: `unpause`, up to [`UNPAUSE_TRIES`] times (each under the
    /// timeout); an answer saying it is not paused means it runs. When every try fails, the last way back is
    /// `suspend hard` then `start` (from disk: a longer downtime, but running); when that fails too, the error says
    /// the VM may still be paused, loudly.
    async fn unpause(&self) -> Result<(), HvError> {
        let vmx = self.vmx()?;
        let mut last = None;
        for attempt in 1..=UNPAUSE_TRIES {
            match self.run(&["unpause"], Some(&vmx), self.timeout).await {
                Ok(_) => return Ok(()),
                Err(e) if says_not_paused(&e) => return Ok(()),
                Err(e) => {
                    tracing::warn!(vm = %self.name, attempt, error = %e, "vmrun unpause failed");
                    last = Some(e);
                }
            }
        }
        let last = last.map(|e| e.to_string()).unwrap_or_default();
        tracing::error!(vm = %self.name, error = %last, "vmrun unpause failed {UNPAUSE_TRIES} times: suspending hard and starting it again");
        let back = async {
            self.run(&["suspend", "hard"], Some(&vmx), self.timeout).await.map_err(|e| self.err(e))?;
            self.wait_unlocked().await?;
            self.do_start().await
        };
        back.await.map_err(|e| {
            let message = format!(
                "MAY STILL BE PAUSED: unpause failed {UNPAUSE_TRIES} times ({last}) and suspend hard + start failed \
                 ({e}); run `vmrun unpause {}` by hand",
                vmx.display()
            );
            tracing::error!(vm = %self.name, "{message}");
            HvError::Failed { vm: self.name.clone(), message }
        })
    }

    /// Brings the VM back whatever a quiesce left, whatever the journal says: not listed by vmrun (suspended or off)
    /// → start; listed after a pause → [`Vmrun::unpause`]; listed although it was to be suspended or stopped → it
    /// runs (the suspend failed), or a pause that timed out before the suspend fallback happened after all: one
    /// unpause covers that, and its failure is taken as "running" (no suspend hard for a VM that most likely runs).
    async fn bring_back(&self, how: Quiesced) -> Result<(), HvError> {
        if !self.running().await? {
            return self.do_start().await;
        }
        if how == Quiesced::Paused {
            return self.unpause().await;
        }
        let vmx = self.vmx()?;
        if let Err(e) = self.run(&["unpause"], Some(&vmx), self.timeout).await {
            if !says_not_paused(&e) {
                tracing::warn!(vm = %self.name, error = %e, "listed by vmrun and not unpaused: taken as running");
            }
        }
        Ok(())
    }

    /// Waits until VMware has released the bundle (no `*.lck` left), or fails naming the lock.
    async fn wait_unlocked(&self) -> Result<(), HvError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let locks = find_with_ext(&self.bundle_dir(), "lck");
            match locks.into_iter().next() {
                None => return Ok(()),
                Some(lock) if Instant::now() >= deadline => {
                    return Err(HvError::Locked { vm: self.name.clone(), path: self.bundle_dir(), lock })
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn running(&self) -> Result<bool, HvError> {
        let vmx = self.vmx()?;
        let out = self.run(&["list"], None, self.timeout).await.map_err(|e| self.err(e))?;
        Ok(list_contains(&parse_list(&out), &vmx))
    }

    async fn status(&self) -> Result<VmState, HvError> {
        if self.running().await? {
            return Ok(VmState::Running);
        }
        if !find_with_ext(&self.bundle_dir(), "vmss").is_empty() {
            return Ok(VmState::Suspended);
        }
        Ok(VmState::Off)
    }

    async fn do_start(&self) -> Result<(), HvError> {
        if self.running().await? {
            return Ok(());
        }
        // Not running according to this host's vmrun, yet locked: another VMware instance has it open.
        if let Some(lock) = find_with_ext(&self.bundle_dir(), "lck").into_iter().next() {
            return Err(HvError::Locked { vm: self.name.clone(), path: self.bundle_dir(), lock });
        }
        let vmx = self.vmx()?;
        self.run(&["start", "nogui"], Some(&vmx), self.timeout).await.map(drop).map_err(|e| self.err(e))
    }
}

impl Hypervisor for Vmrun {
    fn state(&self) -> HvFuture<'_, VmState> {
        Box::pin(self.status())
    }

    fn start(&self) -> HvFuture<'_, ()> {
        Box::pin(self.do_start())
    }

    fn quiesce(&self) -> HvFuture<'_, Quiesced> {
        Box::pin(async move {
            if !self.running().await? {
                return Err(HvError::Failed { vm: self.name.clone(), message: "is not running".into() });
            }
            self.soft_then_hard("suspend", self.timeout).await?;
            self.wait_unlocked().await?;
            Ok(Quiesced::Suspended)
        })
    }

    /// Any way it was quiesced: see [`Vmrun::bring_back`].
    fn resume(&self, how: Quiesced) -> HvFuture<'_, ()> {
        Box::pin(self.bring_back(how))
    }

    fn pause(&self) -> Option<HvFuture<'_, ()>> {
        Some(Box::pin(self.do_pause()))
    }

    fn shutdown(&self) -> HvFuture<'_, ()> {
        Box::pin(async move {
            if self.running().await? {
                self.soft_then_hard("stop", self.shutdown_timeout).await?;
            }
            self.wait_unlocked().await
        })
    }

    fn quiesces_as(&self) -> Quiesced {
        Quiesced::Suspended
    }

    /// A paused VM keeps its `*.lck` (files or directories): the clone's copies are removed.
    fn tidy_clone(&self, dir: &Path) -> Result<(), String> {
        for lock in find_with_ext(dir, "lck") {
            let gone = if lock.is_dir() { std::fs::remove_dir_all(&lock) } else { std::fs::remove_file(&lock) };
            gone.map_err(|e| format!("cannot remove {} from the clone: {e}", lock.display()))?;
        }
        Ok(())
    }

    /// A VMware bundle is a directory holding a `.vmx` file.
    fn is_bundle(&self, dir: &Path) -> Result<(), String> {
        if find_with_ext(dir, "vmx").is_empty() {
            Err("no .vmx file in it".into())
        } else {
            Ok(())
        }
    }

    /// A restored VMware bundle starts when its `.vmx` is there (vmrun reads the rest).
    fn check_bundle<'a>(&'a self, dir: &'a Path) -> BundleFuture<'a> {
        Box::pin(async move {
            if find_with_ext(dir, "vmx").is_empty() {
                return Err(format!("no .vmx file in {}", dir.display()));
            }
            Ok(())
        })
    }
}

/// How many times an unpause is tried before the suspend-hard-and-start way back.
const UNPAUSE_TRIES: u32 = 3;

/// Whether vmrun's answer to `unpause` says the VM was not paused (so it runs: nothing to do): any error naming
/// "not paused" (VMware does not document the exact wording), or `Error: Unrecognized command: unpause` from a vmrun
/// without pause — then we cannot have paused it. Any other answer counts as a failed unpause.
fn says_not_paused(e: &RunError) -> bool {
    match e {
        RunError::Failed { stderr, .. } => {
            let s = stderr.to_ascii_lowercase();
            s.contains("not paused") || s.contains("unrecognized command")
        }
        _ => false,
    }
}

/// The `.vmx` paths of `vmrun list` (`Total running VMs: N` then one path per line).
pub(super) fn parse_list(out: &str) -> Vec<PathBuf> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Total running VMs"))
        .map(PathBuf::from)
        .collect()
}

fn list_contains(list: &[PathBuf], vmx: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let want = canon(vmx);
    list.iter().any(|p| canon(p) == want)
}

/// Entries of `dir` whose name ends in `.EXT` (files or directories, as VMware's `.lck` are), sorted.
fn find_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == ext)).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_parses() {
        // The shape of `vmrun -T fusion list` output.
        let out = "Total running VMs: 2\n/Volumes/VMs/services.vmwarevm/services.vmx\n/Users/me/VMs/w.vmwarevm/w.vmx\n";
        assert_eq!(
            parse_list(out),
            vec![
                PathBuf::from("/Volumes/VMs/services.vmwarevm/services.vmx"),
                PathBuf::from("/Users/me/VMs/w.vmwarevm/w.vmx")
            ]
        );
        assert!(parse_list("Total running VMs: 0\n").is_empty());
    }

    /// vmrun's answers to `unpause`: "not paused" (in any wording that says it) and a vmrun without pause mean the
    /// VM runs; anything else (a timeout, another error) is a failed unpause.
    #[test]
    fn unpause_answers_that_mean_running() {
        let failed = |stderr: &str| RunError::Failed { cmd: "vmrun".into(), code: Some(255), stderr: stderr.into() };
        for (answer, running) in [
            ("Error: The virtual machine is not paused", true),
            ("Error: Unrecognized command: unpause", true),
            ("Error: The operation was canceled", false),
            ("Error: Cannot open VM: /v/vm.vmx, The virtual machine cannot be found", false),
        ] {
            assert_eq!(says_not_paused(&failed(answer)), running, "{answer}");
        }
        let timeout = RunError::Timeout { cmd: "vmrun".into(), after: Duration::from_secs(1) };
        assert!(!says_not_paused(&timeout));
    }

    /// The VMware bundle layout: a `.vmx` makes a bundle (and a restored one startable); `.lck` entries are found
    /// whether they are files or directories.
    #[tokio::test]
    async fn bundles_are_a_vmx() {
        let b = tempfile::tempdir().unwrap();
        let dir = b.path();
        let v = Vmrun {
            name: "svc".into(),
            program: "vmrun".into(),
            host_type: "fusion",
            bundle: dir.to_path_buf(),
            timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(1),
        };
        assert_eq!(v.quiesces_as(), Quiesced::Suspended);
        assert_eq!(v.is_bundle(dir).unwrap_err(), "no .vmx file in it");
        assert_eq!(v.check_bundle(dir).await.unwrap_err(), format!("no .vmx file in {}", dir.display()));
        std::fs::write(dir.join("svc.vmx"), ".encoding = \"UTF-8\"\n").unwrap();
        v.is_bundle(dir).unwrap();
        v.check_bundle(dir).await.unwrap();
        assert_eq!(v.vmx().unwrap(), dir.join("svc.vmx"));
        std::fs::create_dir(dir.join("svc.vmx.lck")).unwrap();
        std::fs::write(dir.join("b.lck"), "").unwrap();
        assert_eq!(find_with_ext(dir, "lck"), [dir.join("b.lck"), dir.join("svc.vmx.lck")]);
        std::fs::write(dir.join("svc.vmx.lck/M12345.lck"), "").unwrap();
        v.tidy_clone(dir).unwrap();
        assert!(find_with_ext(dir, "lck").is_empty() && dir.join("svc.vmx").is_file());
    }
}
