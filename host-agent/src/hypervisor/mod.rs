//! The `Hypervisor` trait: what backups need from a hypervisor (state, start, quiesce, resume, shut down, freeze and
//! thaw the guest's file systems through its agent where the backend reaches one) and from its bundle layout (what a bundle is, whether a restored one can start), and the constructor choosing a backend
//! (`qemu`, `vmrun`) from a VM's config. Knows VM states; must not know QMP, vmrun or any bundle's files.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use agent_core::runner::RunError;

use crate::config::{Backend, VmConfig};

mod qemu;
mod qemu_img;
mod qga;
mod vmrun;

/// A boxed future, so that `Hypervisor` can be used as `dyn`.
pub(crate) type HvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HvError>> + Send + 'a>>;

/// A bundle check: `Err` says what is wrong with the bundle, in words that name it.
pub(crate) type BundleFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// What a VM is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VmState {
    Running,
    /// vCPUs stopped, memory kept by the hypervisor process (QEMU `stop`).
    Paused,
    /// Memory written to disk (VMware suspend, `.vmss`); no process.
    Suspended,
    Off,
    /// Any other state the hypervisor reports, verbatim.
    Other(String),
}

impl VmState {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Suspended => "suspended",
            VmState::Off => "off",
            VmState::Other(s) => s,
        }
    }
}

/// How a VM was quiesced for a backup, so that it is brought back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quiesced {
    Paused,
    Suspended,
    Stopped,
}

impl Quiesced {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Quiesced::Paused => "paused",
            Quiesced::Suspended => "suspended",
            Quiesced::Stopped => "stopped",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Quiesced> {
        match s {
            "paused" => Some(Quiesced::Paused),
            "suspended" => Some(Quiesced::Suspended),
            "stopped" => Some(Quiesced::Stopped),
            _ => None,
        }
    }
}

/// What asking the guest to freeze its file systems gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuestFreeze {
    /// The guest's agent froze this many file systems: they must be thawed.
    Frozen(u64),
    /// No guest agent answers (why): nothing was frozen, the backup is crash-consistent.
    NoAgent(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HvError {
    #[error("vm {vm}: bundle {} does not exist", path.display())]
    Missing { vm: String, path: PathBuf },
    #[error("vm {vm}: bundle {} is locked by a running VMware instance ({})", path.display(), lock.display())]
    Locked { vm: String, path: PathBuf, lock: PathBuf },
    #[error("vm {vm}: qmp socket {} does not answer: {message}", socket.display())]
    Qmp { vm: String, socket: PathBuf, message: String },
    #[error("vm {vm}: {source}")]
    Run { vm: String, source: RunError },
    #[error("vm {vm}: {message}")]
    Failed { vm: String, message: String },
}

/// A hypervisor driving one VM.
pub(crate) trait Hypervisor: Send + Sync {
    fn state(&self) -> HvFuture<'_, VmState>;
    /// Starts the VM (from off or suspended); a running VM is left alone.
    fn start(&self) -> HvFuture<'_, ()>;
    /// Pauses (QEMU) or suspends (VMware) the VM so that its disks stop changing.
    fn quiesce(&self) -> HvFuture<'_, Quiesced>;
    /// Brings the VM back from `how` (the journal's word after a crash: a backend that cannot tell may check).
    fn resume(&self, how: Quiesced) -> HvFuture<'_, ()>;
    /// A clone-mode quiesce that keeps memory in RAM where `quiesce` does more (VMware: `vmrun pause`, where
    /// `quiesce` suspends to disk); leaves the VM [`Quiesced::Paused`]. `None` when `quiesce` already pauses (QEMU).
    /// When it fails, the caller falls back to `quiesce`.
    fn pause(&self) -> Option<HvFuture<'_, ()>> {
        None
    }
    /// Clean shutdown within the configured timeout, then the hard way.
    fn shutdown(&self) -> HvFuture<'_, ()>;
    /// How `quiesce` leaves the VM (journaled before it is tried, so that a crashed run is undone the right way).
    fn quiesces_as(&self) -> Quiesced;
    /// Removes from a clone of the bundle, taken while the VM was paused, what only the live VM owns (VMware's
    /// `*.lck`: a restored bundle holding one would look in use); `Err` says what could not be removed.
    fn tidy_clone(&self, _dir: &Path) -> Result<(), String> {
        Ok(())
    }
    /// Whether `dir` holds a VM bundle of this backend (what `restore --force` may move aside); `Err` says what is
    /// missing.
    fn is_bundle(&self, dir: &Path) -> Result<(), String>;
    /// Whether the bundle restored into `dir` can be started.
    fn check_bundle<'a>(&'a self, dir: &'a Path) -> BundleFuture<'a>;
    /// Freezes the running guest's file systems through its agent, if one answers a short ping (each step under a
    /// timeout). `Err`: an agent answered but the freeze failed or timed out (thaw all the same).
    fn freeze_guest(&self) -> HvFuture<'_, GuestFreeze> {
        Box::pin(async { Ok(GuestFreeze::NoAgent("this backend reaches no guest agent".into())) })
    }
    /// Thaws the guest's file systems (the VM must run: a paused guest's agent cannot answer): how many were thawed,
    /// `None` when no agent can be asked (the VM is off, or no agent is in the guest).
    fn thaw_guest(&self) -> HvFuture<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }
}

/// The backend for `vm`; QEMU keeps its sockets under `state_dir`.
pub(crate) fn for_vm(vm: &VmConfig, state_dir: &Path) -> Arc<dyn Hypervisor> {
    match vm.backend {
        Backend::Qemu => Arc::new(qemu::Qemu::new(vm, state_dir)),
        Backend::Fusion | Backend::Workstation => Arc::new(vmrun::Vmrun::new(vm)),
    }
}
