//! QEMU/KVM: an async QMP client over the VM's unix socket (query-status, stop, cont, system_powerdown, quit,
//! query-chardev), the guest agent's channel (every VM gets one; `qga` speaks its protocol) and starting
//! `qemu-system-x86_64` from a VM directory's `vm.toml`, confined: seccomp (`-sandbox`), the configured
//! `-runas` user, and an environment of its own (nothing of the agent's). Knows QEMU, QMP and the QEMU bundle (a
//! directory: `vm.toml` and the disks it names); must not know backups.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_core::config::{self, ConfigError};
use agent_core::runner::{self, Cmd};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::qga::{Qga, QgaError};
use super::{qemu_img, BundleFuture, GuestFreeze, HvError, HvFuture, Hypervisor, Quiesced, VmState};
use crate::config::VmConfig;

/// How long one QMP exchange (connect, greeting, command) may take.
pub(super) const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The id of the guest agent's chardev, and the name of its virtio-serial port in the guest (qemu-ga's default).
pub(super) const QGA_CHARDEV: &str = "qga0";
pub(super) const QGA_PORT: &str = "org.qemu.guest_agent.0";
/// How long the guest agent may take to answer a ping (a guest without one costs at most this), to freeze its file
/// systems (it flushes them first), and to thaw them.
pub(super) const QGA_PING_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const QGA_FREEZE_TIMEOUT: Duration = Duration::from_secs(20);
pub(super) const QGA_THAW_TIMEOUT: Duration = Duration::from_secs(10);

/// The program started for every QEMU VM.
pub(super) const QEMU: &str = "qemu-system-x86_64";
/// The only environment QEMU gets (it needs no other variable; the agent's own never reach it).
pub(super) const QEMU_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The seccomp policy: obsolete and resource-control system calls denied. `spawn=deny` kills `-daemonize`'s fork and
/// `elevateprivileges=deny` makes `-daemonize` (and `-runas`) fail (both checked with QEMU 7.2), so neither is set.
pub(super) const SANDBOX: &str = "on,obsolete=deny,resourcecontrol=deny";

/// One QEMU VM: its directory, and its QMP socket and pid file under `STATE/qemu/`.
#[derive(Debug, Clone)]
pub(super) struct Qemu {
    name: String,
    dir: PathBuf,
    run_dir: PathBuf,
    shutdown_timeout: Duration,
    runas: Option<String>,
}

/// What a QMP exchange can fail with.
#[derive(Debug)]
enum QmpFail {
    /// Nothing listens on the socket (no file, or connection refused): QEMU is not running.
    NotRunning,
    Other(String),
}

impl Qemu {
    pub(super) fn new(vm: &VmConfig, state_dir: &Path) -> Self {
        Qemu {
            name: vm.name.clone(),
            dir: vm.path.clone(),
            run_dir: state_dir.join("qemu"),
            shutdown_timeout: vm.shutdown_timeout,
            runas: vm.runas.clone(),
        }
    }

    pub(super) fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qmp", self.name))
    }

    /// The unix socket of the guest agent's virtio-serial channel.
    pub(super) fn qga_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qga", self.name))
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.name))
    }

    fn qmp_err(&self, message: String) -> HvError {
        HvError::Qmp { vm: self.name.clone(), socket: self.qmp_socket(), message }
    }

    async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, HvError> {
        match qmp_execute(&self.qmp_socket(), command, args, QMP_TIMEOUT).await {
            Ok(v) => Ok(v),
            Err(QmpFail::NotRunning) => {
                Err(HvError::Failed { vm: self.name.clone(), message: format!("qemu is not running ({command})") })
            }
            Err(QmpFail::Other(m)) => Err(self.qmp_err(m)),
        }
    }

    async fn status(&self) -> Result<VmState, HvError> {
        match qmp_execute(&self.qmp_socket(), "query-status", None, QMP_TIMEOUT).await {
            Ok(v) => Ok(parse_status(&v)),
            Err(QmpFail::NotRunning) => Ok(VmState::Off),
            Err(QmpFail::Other(m)) => Err(self.qmp_err(m)),
        }
    }

    async fn wait_for(&self, want: &VmState, timeout: Duration) -> Result<bool, HvError> {
        let deadline = Instant::now() + timeout;
        loop {
            // A QEMU that is exiting or starting may reset the connection: only the deadline ends the wait.
            match self.status().await {
                Ok(s) if &s == want => return Ok(true),
                Err(e) if Instant::now() >= deadline => return Err(e),
                _ if Instant::now() >= deadline => return Ok(false),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn do_start(&self) -> Result<(), HvError> {
        if !self.dir.is_dir() {
            return Err(HvError::Missing { vm: self.name.clone(), path: self.dir.clone() });
        }
        match self.status().await? {
            VmState::Running => return Ok(()),
            VmState::Paused => return self.execute("cont", None).await.map(drop),
            _ => {}
        }
        let spec =
            VmToml::load(&self.dir).map_err(|e| HvError::Failed { vm: self.name.clone(), message: e.to_string() })?;
        for d in &spec.disks {
            let p = self.dir.join(d);
            if !p.is_file() {
                return Err(HvError::Missing { vm: self.name.clone(), path: p });
            }
        }
        agent_core::state::ensure_dir(&self.run_dir)
            .map_err(|e| HvError::Failed { vm: self.name.clone(), message: e.to_string() })?;
        let _ = std::fs::remove_file(self.qmp_socket());
        let _ = std::fs::remove_file(self.qga_socket());
        let mut argv = start_args(&self.name, &self.dir, &spec, &self.qmp_socket(), &self.pid_file());
        argv.extend(qga_args(&self.qga_socket()));
        argv.extend(confine_args(self.runas.as_deref()));
        let cmd = Cmd::new(QEMU).args(&argv).env_clear().env("PATH", QEMU_PATH).timeout(Duration::from_secs(60));
        runner::run_ok(cmd).await.map_err(|source| HvError::Run { vm: self.name.clone(), source })?;
        if !self.wait_for(&VmState::Running, Duration::from_secs(15)).await? {
            return Err(HvError::Failed { vm: self.name.clone(), message: "qemu started but is not running".into() });
        }
        Ok(())
    }

    /// Whether the guest has opened its agent channel (`query-chardev`'s `frontend-open`); why not when it has not.
    async fn qga_channel_open(&self) -> Result<Result<(), String>, HvError> {
        let v = self.execute("query-chardev", None).await?;
        Ok(match qga_frontend_open(&v) {
            Some(true) => Ok(()),
            Some(false) => Err("no guest agent has opened its channel in the guest".into()),
            None => Err("the vm was started without a guest agent channel (restart it through the agent)".into()),
        })
    }

    async fn do_freeze(&self) -> Result<GuestFreeze, HvError> {
        if let Err(why) = self.qga_channel_open().await? {
            return Ok(GuestFreeze::NoAgent(why));
        }
        let qga = Qga::new(&self.qga_socket());
        if let Err(e) = qga.ping(QGA_PING_TIMEOUT).await {
            return Ok(GuestFreeze::NoAgent(e.to_string()));
        }
        let n = qga.freeze(QGA_FREEZE_TIMEOUT).await.map_err(|e| self.qga_err(e))?;
        Ok(GuestFreeze::Frozen(n))
    }

    async fn do_thaw(&self) -> Result<Option<u64>, HvError> {
        match self.status().await? {
            VmState::Off => return Ok(None),
            VmState::Running => {}
            other => {
                return Err(HvError::Failed {
                    vm: self.name.clone(),
                    message: format!("cannot thaw the guest's file systems while the vm is {}", other.as_str()),
                })
            }
        }
        if self.qga_channel_open().await?.is_err() {
            return Ok(None);
        }
        match Qga::new(&self.qga_socket()).thaw(QGA_THAW_TIMEOUT).await {
            Ok(n) => Ok(Some(n)),
            Err(QgaError::NoSocket { .. }) => Ok(None),
            Err(e) => Err(self.qga_err(e)),
        }
    }

    fn qga_err(&self, e: QgaError) -> HvError {
        HvError::Failed { vm: self.name.clone(), message: e.to_string() }
    }

    async fn do_shutdown(&self) -> Result<(), HvError> {
        if self.status().await? == VmState::Off {
            return Ok(());
        }
        self.execute("system_powerdown", None).await?;
        if self.wait_for(&VmState::Off, self.shutdown_timeout).await? {
            return Ok(());
        }
        tracing::warn!(vm = %self.name, timeout = ?self.shutdown_timeout, "guest ignored system_powerdown: quitting qemu");
        match qmp_execute(&self.qmp_socket(), "quit", None, QMP_TIMEOUT).await {
            Ok(_) | Err(QmpFail::NotRunning) => {}
            Err(QmpFail::Other(m)) if m.contains("closed") => {}
            Err(QmpFail::Other(m)) => return Err(self.qmp_err(m)),
        }
        if !self.wait_for(&VmState::Off, Duration::from_secs(10)).await? {
            return Err(HvError::Failed { vm: self.name.clone(), message: "qemu did not exit after quit".into() });
        }
        Ok(())
    }
}

impl Hypervisor for Qemu {
    fn state(&self) -> HvFuture<'_, VmState> {
        Box::pin(async move {
            if !self.dir.is_dir() {
                return Err(HvError::Missing { vm: self.name.clone(), path: self.dir.clone() });
            }
            self.status().await
        })
    }

    fn start(&self) -> HvFuture<'_, ()> {
        Box::pin(self.do_start())
    }

    fn quiesce(&self) -> HvFuture<'_, Quiesced> {
        Box::pin(async move {
            self.execute("stop", None).await?;
            Ok(Quiesced::Paused)
        })
    }

    fn resume(&self, how: Quiesced) -> HvFuture<'_, ()> {
        Box::pin(async move {
            match how {
                Quiesced::Paused | Quiesced::Suspended => match self.status().await? {
                    VmState::Running => Ok(()),
                    VmState::Off => self.do_start().await,
                    _ => self.execute("cont", None).await.map(drop),
                },
                Quiesced::Stopped => self.do_start().await,
            }
        })
    }

    fn shutdown(&self) -> HvFuture<'_, ()> {
        Box::pin(self.do_shutdown())
    }

    fn quiesces_as(&self) -> Quiesced {
        Quiesced::Paused
    }

    fn freeze_guest(&self) -> HvFuture<'_, GuestFreeze> {
        Box::pin(self.do_freeze())
    }

    fn thaw_guest(&self) -> HvFuture<'_, Option<u64>> {
        Box::pin(self.do_thaw())
    }

    /// A QEMU bundle is a directory holding a `vm.toml` file.
    fn is_bundle(&self, dir: &Path) -> Result<(), String> {
        match std::fs::symlink_metadata(dir.join(VM_TOML)) {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err("no vm.toml file in it".into()),
        }
    }

    /// `vm.toml` parses, every disk it names exists, and qcow2 disks pass `qemu-img check`.
    fn check_bundle<'a>(&'a self, dir: &'a Path) -> BundleFuture<'a> {
        Box::pin(async move {
            let spec = VmToml::load(dir).map_err(|e| e.to_string())?;
            for d in &spec.disks {
                let p = dir.join(d);
                if !p.is_file() {
                    return Err(format!("disk {} is missing", p.display()));
                }
                if d.extension().is_some_and(|e| e == "qcow2") {
                    qemu_img::check(&p).await?;
                }
            }
            Ok(())
        })
    }
}

/// A QEMU VM's `vm.toml`: how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VmToml {
    pub(super) memory_mb: u32,
    pub(super) cpus: u32,
    /// Relative to the VM directory.
    pub(super) disks: Vec<PathBuf>,
    /// Extra `qemu-system-x86_64` arguments.
    #[serde(default)]
    pub(super) args: Vec<String>,
}

/// The file name of a QEMU VM's start description.
pub(super) const VM_TOML: &str = "vm.toml";

impl VmToml {
    /// Reads and checks `DIR/vm.toml`.
    pub(super) fn load(dir: &Path) -> Result<VmToml, ConfigError> {
        let path = dir.join(VM_TOML);
        let v: VmToml = config::load(&path)?;
        v.check(&path)?;
        Ok(v)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        if self.memory_mb < 16 {
            return Err(ConfigError::invalid(path, "memory_mb", "must be at least 16"));
        }
        if self.cpus == 0 {
            return Err(ConfigError::invalid(path, "cpus", "must be at least 1"));
        }
        if self.disks.is_empty() {
            return Err(ConfigError::invalid(path, "disks", "must name at least one disk"));
        }
        if let Some(a) = self.args.iter().find(|a| a.contains(&format!("id={QGA_CHARDEV}")) || a.contains(QGA_PORT)) {
            return Err(ConfigError::invalid(
                path,
                "args",
                format!(
                    "`{a}`: the agent adds the guest agent's channel itself (chardev {QGA_CHARDEV}, port {QGA_PORT}); \
                     remove it"
                ),
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            let escapes = d.is_absolute() || d.components().any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes || d.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    path,
                    format!("disks[{i}]"),
                    format!("`{}` must be a path inside the VM directory", d.display()),
                ));
            }
        }
        Ok(())
    }
}

/// The argv (without the program) starting a VM daemonized, with QMP on `qmp` and KVM when available.
pub(super) fn start_args(name: &str, dir: &Path, spec: &VmToml, qmp: &Path, pid_file: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["-name".into(), name.into(), "-machine".into(), "accel=kvm:tcg".into()];
    a.extend(["-m".into(), spec.memory_mb.to_string(), "-smp".into(), spec.cpus.to_string()]);
    a.extend(["-display", "none", "-nodefaults", "-serial", "none", "-monitor", "none"].map(String::from));
    a.extend(["-daemonize".into(), "-pidfile".into(), pid_file.display().to_string()]);
    a.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", qmp.display())]);
    for d in &spec.disks {
        let format = if d.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
        // QEMU's -drive option syntax doubles commas inside values.
        let file = dir.join(d).display().to_string().replace(',', ",,");
        a.extend(["-drive".into(), format!("file={file},format={format},if=virtio")]);
    }
    a.extend(spec.args.iter().cloned());
    a
}

/// The guest agent's channel: a unix socket server (QEMU listens, one client at a time; `wait=off` so QEMU does not
/// wait for a client at start), a virtio-serial bus and the port qemu-ga opens by default.
pub(super) fn qga_args(socket: &Path) -> Vec<String> {
    let path = socket.display().to_string().replace(',', ",,");
    vec![
        "-chardev".into(),
        format!("socket,id={QGA_CHARDEV},path={path},server=on,wait=off"),
        "-device".into(),
        "virtio-serial".into(),
        "-device".into(),
        format!("virtserialport,chardev={QGA_CHARDEV},name={QGA_PORT}"),
    ]
}

/// From `query-chardev`'s answer: whether the guest has opened the agent's port (`None`: no such chardev).
pub(super) fn qga_frontend_open(v: &Value) -> Option<bool> {
    let devs = v.as_array()?;
    let qga = devs.iter().find(|d| d.get("label").and_then(Value::as_str) == Some(QGA_CHARDEV))?;
    Some(qga.get("frontend-open").and_then(Value::as_bool).unwrap_or(false))
}

/// `-sandbox` (seccomp) and, with a user, `-runas USER`: QEMU opens its disks, pid file and QMP socket as the
/// agent's user, then drops to USER for the rest of its life.
pub(super) fn confine_args(runas: Option<&str>) -> Vec<String> {
    let mut a = vec!["-sandbox".to_string(), SANDBOX.to_string()];
    if let Some(user) = runas {
        a.extend(["-runas".to_string(), user.to_string()]);
    }
    a
}

/// Maps `query-status`'s `status` to a state.
pub(super) fn parse_status(v: &Value) -> VmState {
    match v.get("status").and_then(Value::as_str).unwrap_or("") {
        "running" => VmState::Running,
        "paused" | "prelaunch" | "postmigrate" | "finish-migrate" => VmState::Paused,
        "suspended" => VmState::Suspended,
        "shutdown" => VmState::Off,
        other => VmState::Other(other.to_string()),
    }
}

/// One QMP session: connect, greeting, `qmp_capabilities`, `command`; returns its `return` value.
async fn qmp_execute(socket: &Path, command: &str, args: Option<Value>, timeout: Duration) -> Result<Value, QmpFail> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(QmpFail::NotRunning)
        }
        Err(e) => return Err(QmpFail::Other(format!("connect: {e}"))),
    };
    let session = async move {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut next = async || -> Result<Value, String> {
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        let v: Value = serde_json::from_str(&l).map_err(|e| format!("bad qmp message {l:?}: {e}"))?;
                        if v.get("event").is_none() {
                            return Ok(v);
                        }
                    }
                    Ok(None) => return Err("connection closed".to_string()),
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        };
        let greeting = next().await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected greeting {greeting}"));
        }
        let mut result = Value::Null;
        for (cmd, a) in [("qmp_capabilities", None), (command, args)] {
            let mut msg = json!({ "execute": cmd });
            if let Some(a) = a {
                msg["arguments"] = a;
            }
            let line = format!("{msg}\n");
            write.write_all(line.as_bytes()).await.map_err(|e| format!("send {cmd}: {e}"))?;
            let reply = next().await.map_err(|e| format!("{cmd}: {e}"))?;
            result = parse_reply(cmd, &reply)?;
        }
        Ok(result)
    };
    match tokio::time::timeout(timeout, session).await {
        Ok(r) => r.map_err(QmpFail::Other),
        Err(_) => Err(QmpFail::Other(format!("no answer to {command} within {timeout:?}"))),
    }
}

/// A QMP reply: `{"return": …}` or `{"error": {"class", "desc"}}`.
fn parse_reply(cmd: &str, reply: &Value) -> Result<Value, String> {
    if let Some(r) = reply.get("return") {
        return Ok(r.clone());
    }
    if let Some(e) = reply.get("error") {
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
        let class = e.get("class").and_then(Value::as_str).unwrap_or("?");
        return Err(format!("{cmd} failed: {desc} ({class})"));
    }
    Err(format!("{cmd}: unexpected reply {reply}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_args_daemonize_with_qmp_and_kvm_fallback() {
        let spec = VmToml {
            memory_mb: 512,
            cpus: 2,
            disks: vec!["disk.qcow2".into(), "data,1.raw".into()],
            args: vec!["-no-reboot".into()],
        };
        let a = start_args("lab", Path::new("/vms/lab"), &spec, Path::new("/s/qemu/lab.qmp"), Path::new("/p"));
        let s = a.join(" ");
        assert!(s.contains("-machine accel=kvm:tcg -m 512 -smp 2"), "{s}");
        assert!(s.contains("-daemonize -pidfile /p -qmp unix:/s/qemu/lab.qmp,server=on,wait=off"), "{s}");
        assert!(s.contains("file=/vms/lab/disk.qcow2,format=qcow2,if=virtio"), "{s}");
        assert!(s.contains("file=/vms/lab/data,,1.raw,format=raw,if=virtio"), "{s}");
        assert_eq!(a.last().unwrap(), "-no-reboot");
    }

    #[test]
    fn the_guest_agent_channel() {
        let a = qga_args(Path::new("/s,t/qemu/lab.qga")).join(" ");
        assert_eq!(
            a,
            "-chardev socket,id=qga0,path=/s,,t/qemu/lab.qga,server=on,wait=off -device virtio-serial \
             -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"
        );
        // Captured from QEMU 7.2 (`query-chardev`): a guest whose qemu-ga has the port open (no host client
        // connected), then a guest without an agent.
        let open: Value = serde_json::from_str(
            r#"[{"frontend-open": true, "filename": "file", "label": "con"},
                {"frontend-open": true, "filename": "unix:/tmp/guest/qmp.sock,server=on", "label": "compat_monitor0"},
                {"frontend-open": true, "filename": "disconnected:unix:/tmp/guest/qga.sock,server=on", "label": "qga0"}]"#,
        )
        .unwrap();
        assert_eq!(qga_frontend_open(&open), Some(true));
        let closed: Value = serde_json::from_str(
            r#"[{"frontend-open": false, "filename": "disconnected:unix:/s/qemu/lab.qga,server=on", "label": "qga0"}]"#,
        )
        .unwrap();
        assert_eq!(qga_frontend_open(&closed), Some(false));
        assert_eq!(qga_frontend_open(&json!([{"label": "compat_monitor0", "frontend-open": true}])), None);
    }

    #[test]
    fn confinement_args() {
        assert_eq!(confine_args(Some("qemu")), ["-sandbox", SANDBOX, "-runas", "qemu"]);
        assert_eq!(confine_args(None), ["-sandbox", SANDBOX]);
    }

    #[test]
    fn status_and_replies_parse() {
        // Captured from QEMU 7.2: {"return": {"status": "paused", "singlestep": false, "running": false}}
        let v: Value = serde_json::from_str(r#"{"status": "paused", "singlestep": false, "running": false}"#).unwrap();
        assert_eq!(parse_status(&v), VmState::Paused);
        assert_eq!(parse_status(&json!({"status": "running"})), VmState::Running);
        assert_eq!(parse_status(&json!({"status": "guest-panicked"})), VmState::Other("guest-panicked".into()));
        let err = json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}});
        assert_eq!(
            parse_reply("nope", &err).unwrap_err(),
            "nope failed: The command nope has not been found (CommandNotFound)"
        );
    }

    #[test]
    fn vm_toml_parses_and_refuses_escaping_disks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VM_TOML), "memory_mb = 512\ncpus = 1\ndisks = [\"disk.qcow2\"]\n").unwrap();
        let v = VmToml::load(dir.path()).unwrap();
        assert_eq!(v.disks, vec![PathBuf::from("disk.qcow2")]);
        assert!(v.args.is_empty());
        std::fs::write(dir.path().join(VM_TOML), "memory_mb = 512\ncpus = 1\ndisks = [\"../x.raw\"]\n").unwrap();
        let e = VmToml::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("disks[0]"), "{e}");
        let own_qga =
            "memory_mb = 512\ncpus = 1\ndisks = [\"d.raw\"]\nargs = [\"-chardev\", \"socket,id=qga0,path=/x\"]\n";
        std::fs::write(dir.path().join(VM_TOML), own_qga).unwrap();
        let e = VmToml::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("args") && e.contains("adds the guest agent's channel itself"), "{e}");
        std::fs::write(dir.path().join(VM_TOML), "memory_mb = 512\ncpus = 1\ndisks = []\nram = 1\n").unwrap();
        assert!(VmToml::load(dir.path()).unwrap_err().to_string().contains("unknown field `ram`"));
    }

    /// The QEMU bundle layout: `vm.toml` (a file, not a symlink) makes a bundle; a restored one starts only when its
    /// disks are there and its qcow2 disks pass the real `qemu-img check`.
    #[tokio::test]
    async fn bundles_are_a_vm_toml_and_its_disks() {
        let vms = tempfile::tempdir().unwrap();
        let dir = vms.path();
        let q = Qemu {
            name: "lab".into(),
            dir: dir.to_path_buf(),
            run_dir: dir.join("run"),
            shutdown_timeout: Duration::from_secs(1),
            runas: None,
        };
        assert_eq!(q.quiesces_as(), Quiesced::Paused);
        assert_eq!(q.is_bundle(dir).unwrap_err(), "no vm.toml file in it");
        std::fs::write(dir.join("other.toml"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("other.toml"), dir.join(VM_TOML)).unwrap();
        assert!(q.is_bundle(dir).is_err(), "a symlinked vm.toml is not a bundle");
        std::fs::remove_file(dir.join(VM_TOML)).unwrap();
        std::fs::write(dir.join(VM_TOML), "memory_mb = 64\ncpus = 1\ndisks = [\"disk.qcow2\"]\n").unwrap();
        q.is_bundle(dir).unwrap();
        let e = q.check_bundle(dir).await.unwrap_err();
        assert_eq!(e, format!("disk {} is missing", dir.join("disk.qcow2").display()));
        let img = dir.join("disk.qcow2");
        let made = Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&img).arg("1M");
        runner::run_ok(made).await.unwrap();
        q.check_bundle(dir).await.unwrap();
        std::fs::write(&img, b"not a qcow2 image").unwrap();
        let e = q.check_bundle(dir).await.unwrap_err();
        assert!(e.starts_with(&format!("qemu-img check {}: ", img.display())), "{e}");
    }

    #[tokio::test]
    async fn a_missing_socket_means_not_running_and_a_silent_one_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("q.sock");
        assert!(matches!(qmp_execute(&sock, "query-status", None, QMP_TIMEOUT).await, Err(QmpFail::NotRunning)));
        let _listener = tokio::net::UnixListener::bind(&sock).unwrap();
        match qmp_execute(&sock, "query-status", None, Duration::from_millis(200)).await {
            Err(QmpFail::Other(m)) => assert!(m.contains("no answer to query-status"), "{m}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
