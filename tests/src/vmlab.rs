//! A QEMU VM for the host-agent tests: a PKI, a VM directory (`lab`: a 16 MiB qcow2 system disk, a 1 MiB raw data
//! disk, a `vm.toml` with a second QMP socket for the test; or, with a guest, a real Linux running qemu-ga on a
//! 32 MiB ext4 disk, or on a network with a disk filled by the test: `fixtures::guest`), the agent's config written
//! per case (the `target` shorthand, or a VM section as written) and the agent restarted on it; a Backup or Restore
//! followed to its end.
//! Knows the host-agent's config format and gRPC API; asserts nothing itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{anyhow, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{ListVmsRequest, VmBackupRequest, VmRef, VmRestoreRequest};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::fixtures::guest::{self, GuestAgent, GuestNet};
use crate::fixtures::{cmd, unique_suffix, wait_until};
use crate::harness::{base_config, AgentKind, AgentProc, Pki};

/// Blocks of the data disk (4 KiB each): a 1 MiB raw disk.
pub const BLOCKS: usize = 256;
pub const BLOCK: usize = 4096;

/// The SHA-256 of a file, in hex.
pub fn sha256(p: &Path) -> Result<String> {
    let out = cmd::run(Command::new("sha256sum").arg(p))?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}

/// A PKI, a QEMU VM directory `lab` (its own test QMP socket), a scratch directory, and the host-agent (restarted
/// with a new config per case).
pub struct Lab {
    pub pki: Pki,
    /// Scratch space: the agent's state, its config, targets, restores.
    pub dir: TempDir,
    pub vm_dir: PathBuf,
    /// A second QMP socket of the VM, for the test (the agent has its own).
    pub test_qmp: PathBuf,
    /// The guest's console (a guest lab only).
    pub console: PathBuf,
    pub agent: Option<AgentProc>,
}

/// One VM's backup settings with the `target` shorthand; `extra` is appended as written.
pub struct VmSpec<'a> {
    pub mode: &'a str,
    pub engine: &'a str,
    pub target: &'a Path,
    pub extra: String,
}

impl Lab {
    /// A VM directory `lab` under `vm_parent`: a 16 MiB qcow2 system disk and a 1 MiB raw data disk.
    pub fn new(vm_parent: &Path) -> Result<Lab> {
        cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
        cmd::require("qemu-img", "qemu-utils")?;
        let dir = tempfile::Builder::new().prefix("strata-host-").tempdir()?;
        let vm_dir = vm_parent.join("lab");
        std::fs::create_dir_all(&vm_dir)?;
        cmd::run(
            Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(vm_dir.join("disk.qcow2")).arg("16M"),
        )?;
        std::fs::File::create(vm_dir.join("data.raw"))?.set_len((BLOCKS * BLOCK) as u64)?;
        let test_qmp = dir.path().join(format!("t{}.qmp", unique_suffix()));
        let vm_toml = format!(
            "memory_mb = 128\ncpus = 1\ndisks = [\"disk.qcow2\", \"data.raw\"]\nargs = [\"-qmp\", \"unix:{},server=on,wait=off\"]\n",
            test_qmp.display()
        );
        std::fs::write(vm_dir.join("vm.toml"), vm_toml)?;
        let console = dir.path().join("console.log");
        Ok(Lab { pki: Pki::new()?, dir, vm_dir, test_qmp, console, agent: None })
    }

    /// A VM directory `lab` under `vm_parent` whose guest is a real Linux running qemu-ga (`fixtures::guest`): one
    /// 32 MiB raw disk holding ext4 (mounted by the guest), its console written to [`Lab::console`];
    /// `kernel_extra` goes on the guest kernel's command line (e.g. `guest::slow_freeze`).
    pub fn with_guest(vm_parent: &Path, kernel_extra: &str) -> Result<Lab> {
        Self::guest_lab(vm_parent, kernel_extra, |disk| guest::ext4_disk(disk, 32), None)
    }

    /// Like [`Lab::with_guest`], the guest on a network (`net`: `fixtures::guest::GuestNet`), its data disk of
    /// `disk_mb` MiB filled with the tree under `disk_from` (the guest's init runs its `rc`, if any).
    pub fn with_net_guest(vm_parent: &Path, disk_from: &Path, disk_mb: u64, net: &GuestNet) -> Result<Lab> {
        Self::guest_lab(vm_parent, "", |disk| guest::ext4_disk_from(disk, disk_mb, disk_from), Some(net))
    }

    fn guest_lab(
        vm_parent: &Path,
        kernel_extra: &str,
        make_disk: impl FnOnce(&Path) -> Result<()>,
        net: Option<&GuestNet>,
    ) -> Result<Lab> {
        cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
        let dir = tempfile::Builder::new().prefix("strata-host-").tempdir()?;
        let vm_dir = vm_parent.join("lab");
        std::fs::create_dir_all(&vm_dir)?;
        make_disk(&vm_dir.join("data.raw"))?;
        let test_qmp = dir.path().join(format!("t{}.qmp", unique_suffix()));
        let console = dir.path().join("console.log");
        let mut args = vec!["-qmp".to_string(), format!("unix:{},server=on,wait=off", test_qmp.display())];
        args.extend(guest::qemu_args_with(&console, kernel_extra, net)?);
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        let vm_toml = format!("memory_mb = 128\ncpus = 1\ndisks = [\"data.raw\"]\nargs = [{}]\n", args.join(", "));
        std::fs::write(vm_dir.join("vm.toml"), vm_toml)?;
        Ok(Lab { pki: Pki::new()?, dir, vm_dir, test_qmp, console, agent: None })
    }

    /// Starts the VM `lab` through the agent and waits (90 s at most: TCG boots the guest) for its qemu-ga.
    pub async fn boot_guest(&self) -> Result<()> {
        self.client().await?.start(VmRef { name: "lab".into() }).await?;
        let (qga, console) = (self.guest_agent(), self.console.clone());
        let t0 = std::time::Instant::now();
        tokio::task::spawn_blocking(move || qga.wait_ready(Duration::from_secs(90), &console)).await??;
        eprintln!("guest booted to a running qemu-ga in {:?}", t0.elapsed());
        Ok(())
    }

    /// A client of the guest's qemu-ga, on the socket the agent gives every QEMU VM.
    pub fn guest_agent(&self) -> GuestAgent {
        GuestAgent { socket: self.dir.path().join("state/qemu/lab.qga") }
    }

    /// The agent's config with one `[[vms]]` per entry (`target` shorthand).
    pub fn config_text(&self, vms: &[(&str, &Path, &VmSpec<'_>)]) -> Result<String> {
        let mut text = self.base_text()?;
        for (name, path, s) in vms {
            text.push_str(&format!(
                "{}mode = \"{}\"\nengine = \"{}\"\ntarget = {:?}\n{}\n",
                vm_head(name, path),
                s.mode,
                s.engine,
                s.target,
                s.extra
            ));
        }
        Ok(text)
    }

    /// The agent's config without VMs.
    fn base_text(&self) -> Result<String> {
        let (cert, key) = self.pki.issue(Role::HostAgent, "host1")?;
        Ok(base_config(&self.dir.path().join("state"), &self.pki.ca(), &cert, &key))
    }

    /// (Re)starts the agent with the VM `lab` and `section` (its mode, engine, targets… as written).
    pub fn restart_with(&mut self, section: &str) -> Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.terminate()?;
        }
        let text = format!("{}{}{section}\n", self.base_text()?, vm_head("lab", &self.vm_dir));
        let path = self.dir.path().join("host-agent.toml");
        std::fs::write(&path, text)?;
        self.agent = Some(AgentProc::start_with_config(AgentKind::Host, &path)?);
        Ok(())
    }

    /// Writes the config of the VM `lab` with `spec`; its path.
    pub fn write_config(&self, spec: &VmSpec<'_>) -> Result<PathBuf> {
        let text = self.config_text(&[("lab", &self.vm_dir, spec)])?;
        let path = self.dir.path().join("host-agent.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// (Re)starts the agent with `spec` for the VM `lab`.
    pub fn restart(&mut self, spec: &VmSpec<'_>) -> Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.terminate()?;
        }
        let path = self.write_config(spec)?;
        self.agent = Some(AgentProc::start_with_config(AgentKind::Host, &path)?);
        Ok(())
    }

    /// The running agent.
    pub fn agent(&self) -> Result<&AgentProc> {
        self.agent.as_ref().ok_or_else(|| anyhow!("the agent is not started"))
    }

    /// An admin client of the running agent.
    pub async fn client(&self) -> Result<HostClient<Channel>> {
        let tls = self.pki.material(&self.pki.ca(), Role::Admin, "admin")?;
        let ch = tls.connect(&self.agent()?.url(), Role::HostAgent, Duration::from_secs(10)).await?;
        Ok(HostClient::new(ch))
    }

    /// The VM's state as `ListVms` tells it.
    pub async fn state(&self) -> Result<String> {
        let vms = self.client().await?.list_vms(ListVmsRequest {}).await?.into_inner().vms;
        Ok(vms.into_iter().find(|v| v.name == "lab").map(|v| v.state).unwrap_or_default())
    }

    /// The pid of the VM's QEMU, from the agent's pid file.
    pub fn qemu_pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("state/qemu/lab.pid")).ok().map(|s| s.trim().to_string())
    }
}

/// The start of a QEMU VM's `[[vms]]` entry: name, backend, path, a short shutdown timeout.
fn vm_head(name: &str, path: &Path) -> String {
    format!("[[vms]]\nname = \"{name}\"\nbackend = \"qemu\"\npath = {path:?}\nshutdown_timeout = \"2s\"\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(a) = &self.agent {
            if std::thread::panicking() {
                eprintln!("host-agent log:\n{}", a.logs());
                if let Ok(console) = std::fs::read_to_string(&self.console) {
                    eprintln!("guest console:\n{console}");
                }
            }
        }
        self.agent = None;
        if let Some(pid) = self.qemu_pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            wait_until(Duration::from_secs(5), || !Path::new(&format!("/proc/{pid}")).exists());
        }
    }
}

/// Runs a streaming Backup and returns its summary's message, or the error status text.
pub async fn backup(c: &mut HostClient<Channel>, name: &str) -> Result<String> {
    let mut s = c.backup(VmBackupRequest { name: name.into(), all: false }).await?.into_inner();
    let mut last = String::new();
    while let Some(p) = s.message().await? {
        if p.summary.is_some() {
            last = p.message;
        }
    }
    Ok(last)
}

/// Runs a streaming Restore of `archive` (empty: the latest) into `to` and returns its last message.
pub async fn restore(c: &mut HostClient<Channel>, name: &str, archive: &str, to: &Path) -> Result<String> {
    restore_from(c, name, "", archive, to).await
}

/// [`restore`] from target `target` (empty: the first reachable one that has it, local ones first).
pub async fn restore_from(
    c: &mut HostClient<Channel>,
    name: &str,
    target: &str,
    archive: &str,
    to: &Path,
) -> Result<String> {
    let req = VmRestoreRequest {
        name: name.into(),
        archive: archive.into(),
        to: to.display().to_string(),
        force: false,
        start: false,
        target: target.into(),
    };
    let mut s = c.restore(req).await?.into_inner();
    let mut last = String::new();
    while let Some(p) = s.message().await? {
        last = p.message;
    }
    Ok(last)
}
