//! The host-agent's VMware path end to end against `vmrun-standin`, the one test double (vmrun cannot run on Linux):
//! a shell script answering like vmrun (list / start / pause / unpause / suspend / stop), keeping each VM's state in
//! its own directory, logging each call and each state change with a timestamp, able to hang or to act like a vmrun
//! without pause. Fusion clone mode pauses and unpauses, its fallbacks (no pause, a hung pause, a hung unpause),
//! SIGKILL while paused, exclusive groups; suspend mode's hard fallback, Workstation, locked bundles, a hung list.
//! Knows the agent's config format, logs and gRPC API, and what vmrun answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::{ListVmsRequest, VmHistoryEntry, VmHistoryRequest, VmRef};
use strata_tests::fixtures::btrfs::Btrfs;
use strata_tests::harness::{base_config, AgentKind, AgentProc, Pki};
use strata_tests::vmlab::backup;
use tonic::transport::Channel;

const STANDIN: &str = r#"#!/bin/sh
# vmrun-standin: answers like VMware's vmrun for the host-agent tests (vmrun cannot run on Linux).
# State, in this script's directory: run/KEY holds the .vmx of each running VM (paused ones too: vmrun lists them),
# paused/KEY marks a paused one. calls.log: "TIME call ARGS" for each call, "TIME STATE VMX" for each change.
# Files that change its answers: hang-CMD or hang-CMD-HOW (sleeps; holding "once": only the next such call),
# no-pause (a vmrun without pause/unpause), delay-unpause (seconds to wait before unpausing).
D="$(dirname "$0")"
now() { date +%s.%N; }
echo "$(now) call $*" >> "$D/calls.log"
[ "$1" = "-T" ] || { echo "Error: missing -T" >&2; exit 255; }
shift 2
cmd="$1"; vmx="$2"; how="$3"
for h in "$D/hang-$cmd-$how" "$D/hang-$cmd"; do
  [ -f "$h" ] || continue
  grep -q once "$h" && rm -f "$h"
  exec sleep 3600
done
mkdir -p "$D/run" "$D/paused"
key="$(printf %s "$vmx" | tr '/ ' '__')"
b="$(dirname "$vmx")"
state() { echo "$(now) $1 $vmx" >> "$D/calls.log"; }
on() { [ -f "$D/run/$key" ] || { echo "Error: The virtual machine is not powered on: $vmx" >&2; exit 255; }; }
pausing() { if [ -f "$D/no-pause" ]; then echo "Error: Unrecognized command: $cmd" >&2; exit 255; fi; }
case "$cmd" in
  list) echo "Total running VMs: $(ls "$D/run" | wc -l)"; cat "$D/run"/* 2>/dev/null || true ;;
  start) rm -f "$b"/*.vmss; mkdir -p "$vmx.lck"; echo "$vmx" > "$D/run/$key"; state running ;;
  pause) pausing; on; touch "$D/paused/$key"; state paused ;;
  unpause) pausing; on
           [ -f "$D/paused/$key" ] || { echo "Error: The virtual machine is not paused: $vmx" >&2; exit 255; }
           if [ -f "$D/delay-unpause" ]; then sleep "$(cat "$D/delay-unpause")"; fi
           rm -f "$D/paused/$key"; state running ;;
  suspend) on; touch "$b/vm.vmss"; rmdir "$vmx.lck"; rm -f "$D/run/$key" "$D/paused/$key"; state suspended ;;
  stop) on; rmdir "$vmx.lck"; rm -f "$D/run/$key" "$D/paused/$key"; state off ;;
  *) echo "Error: Unrecognized command: $cmd" >&2; exit 255 ;;
esac
"#;

/// Writes the stand-in into `dir` (its state and calls.log live there too).
fn standin(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let p = dir.join("vmrun-standin");
    std::fs::write(&p, STANDIN)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

/// A small VMware bundle (a .vmx and a disk) at `dir`; returns its .vmx.
fn bundle(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("vm.vmx"), ".encoding = \"UTF-8\"\ndisplayName = \"vm\"\n")?;
    std::fs::write(dir.join("vm.vmdk"), vec![3u8; 65536])?;
    Ok(dir.join("vm.vmx"))
}

fn calls(bin: &Path) -> String {
    std::fs::read_to_string(bin.parent().unwrap().join("calls.log")).unwrap_or_default()
}

/// Sets a file that changes the stand-in's answers (`hang-pause`, `no-pause`, …) in `bin`'s directory.
fn set(bin: &Path, file: &str, content: &str) -> Result<()> {
    Ok(std::fs::write(bin.parent().unwrap().join(file), content)?)
}

fn unset(bin: &Path, file: &str) -> Result<()> {
    Ok(std::fs::remove_file(bin.parent().unwrap().join(file))?)
}

/// The stand-in's per-VM state entries in `sub` (`run` or `paused`).
fn states(bin: &Path, sub: &str) -> usize {
    std::fs::read_dir(bin.parent().unwrap().join(sub)).map(|d| d.count()).unwrap_or(0)
}

/// Each VM's windows out of `running` (paused, suspended, off) from the timestamped state lines of calls.log.
fn down_windows(log: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut since: BTreeMap<String, f64> = BTreeMap::new();
    let mut windows: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in log.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(t), Some(state), Some(vmx)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(t) = t.parse::<f64>() else { continue };
        match state {
            "paused" | "suspended" | "off" => {
                since.entry(vmx.to_string()).or_insert(t);
            }
            "running" => {
                if let Some(from) = since.remove(vmx) {
                    windows.entry(vmx.to_string()).or_default().push((from, t));
                }
            }
            _ => {}
        }
    }
    windows
}

fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.0 < y.1 && y.0 < x.1))
}

/// One `[[vms]]` table for a VMware VM.
fn vm_toml(name: &str, backend: &str, path: &Path, mode: &str, target: &Path, vmrun: &Path, extra: &str) -> String {
    format!(
        "[[vms]]\nname = \"{name}\"\nbackend = \"{backend}\"\npath = {path:?}\nmode = \"{mode}\"\nengine = \"rsync\"\n\
         target = {target:?}\nvmrun = {vmrun:?}\nvmrun_timeout = \"1s\"\nshutdown_timeout = \"1s\"\n{extra}\n"
    )
}

struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    config: PathBuf,
}

impl Setup {
    fn new(prefix: &str) -> Result<Setup> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let config = dir.path().join("host-agent.toml");
        Ok(Setup { dir, pki: Pki::new()?, config })
    }

    fn write_config(&self, vms: &str) -> Result<()> {
        let (cert, key) = self.pki.issue(Role::HostAgent, "host1")?;
        let text = base_config(&self.dir.path().join("state"), &self.pki.ca(), &cert, &key);
        Ok(std::fs::write(&self.config, text + vms)?)
    }

    async fn client(&self, agent: &AgentProc) -> Result<HostClient<Channel>> {
        let tls = self.pki.material(&self.pki.ca(), Role::Admin, "admin")?;
        Ok(HostClient::new(tls.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?))
    }
}

/// The Fusion VM `services` in clone mode on btrfs (a volume that clones), backed up by rsync to `target`, driven
/// through the stand-in `bin`; its config written.
struct FusionClone {
    _fs: Btrfs,
    s: Setup,
    bin: PathBuf,
    path: PathBuf,
    vmx: PathBuf,
    target: PathBuf,
}

fn fusion_clone(prefix: &str) -> Result<FusionClone> {
    let fs = Btrfs::create(1 << 30)?;
    let s = Setup::new(prefix)?;
    let bin = standin(&s.dir.path().join("fusion-bin"))?;
    let path = fs.path().join("services.vmwarevm");
    let vmx = bundle(&path)?;
    let target = s.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    s.write_config(&vm_toml("services", "fusion", &path, "clone", &target, &bin, ""))?;
    Ok(FusionClone { _fs: fs, s, bin, path, vmx, target })
}

async fn state_of(c: &mut HostClient<Channel>, name: &str) -> Result<String> {
    let vms = c.list_vms(ListVmsRequest {}).await?.into_inner().vms;
    Ok(vms.iter().find(|v| v.name == name).map(|v| v.state.clone()).unwrap_or_default())
}

async fn last_row(c: &mut HostClient<Channel>, name: &str) -> Result<VmHistoryEntry> {
    let h = c.history(VmHistoryRequest { name: name.into(), target: String::new() }).await?.into_inner().entries;
    h.last().cloned().context("no history row")
}

/// Fusion clone mode on a volume that clones (btrfs here, APFS on a Mac): pause → clone → unpause, no suspend, no
/// .vmss; a vmrun without pause, a pause that hangs (with a hanging soft suspend after it) and an unpause that hangs
/// once all end with the VM running, the fallback a warning in the history row.
#[tokio::test(flavor = "multi_thread")]
async fn fusion_clone_mode_pauses_and_unpauses_and_every_failure_ends_running() -> Result<()> {
    let FusionClone { _fs, s, bin, path, vmx, target } = fusion_clone("strata-vmpause-")?;
    let agent = AgentProc::start_with_config(AgentKind::Host, &s.config)?;
    let mut c = s.client(&agent).await?;
    c.start(VmRef { name: "services".into() }).await?;
    let (pause, unpause) = (format!("call -T fusion pause {}", vmx.display()), format!("unpause {}", vmx.display()));

    // Paused in memory: pause, then unpause; no suspend, no .vmss in the bundle or the copy; a small downtime.
    let before = calls(&bin).len();
    let msg = backup(&mut c, "services").await?;
    ensure!(msg.contains("backed up as services-"), "{msg}");
    let log = calls(&bin)[before..].to_string();
    let (p, u) = (log.find(&pause).context("no pause")?, log.find(&unpause).context("no unpause")?);
    ensure!(p < u && !log.contains("suspend") && !log.contains(" start "), "{log}");
    let row = last_row(&mut c, "services").await?;
    ensure!(row.ok && row.mode == "clone" && row.downtime_seconds < 2.0, "{row:?}");
    ensure!(!row.message.contains("could not pause"), "{row:?}");
    let copies: Vec<PathBuf> = std::fs::read_dir(&target)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    ensure!(copies.len() == 1 && copies[0].join("vm.vmdk").is_file(), "{copies:?}");
    ensure!(!path.join("vm.vmss").exists() && !copies[0].join("vm.vmss").exists(), "a pause wrote a .vmss");
    ensure!(!copies[0].join("vm.vmx.lck").exists(), "the paused VM's .lck was backed up");
    ensure!(state_of(&mut c, "services").await? == "running" && states(&bin, "paused") == 0);

    // A vmrun without pause: suspended instead, the warning in the history row; started again.
    set(&bin, "no-pause", "")?;
    let before = calls(&bin).len();
    backup(&mut c, "services").await?;
    let log = calls(&bin)[before..].to_string();
    let (p, sus) = (log.find(&pause).context("no pause")?, log.find("suspend").context("no suspend fallback")?);
    let start = log.rfind(&format!("start {} nogui", vmx.display())).context("not started again")?;
    ensure!(p < sus && sus < start && !log.contains("unpause"), "{log}");
    let row = last_row(&mut c, "services").await?;
    ensure!(row.ok, "{row:?}");
    ensure!(row.message.contains("could not pause") && row.message.contains("Unrecognized command: pause"), "{row:?}");
    ensure!(row.message.contains("suspended instead"), "{row:?}");
    ensure!(state_of(&mut c, "services").await? == "running");
    unset(&bin, "no-pause")?;

    // A pause that hangs, then a soft suspend that hangs: each killed after vmrun_timeout, then suspend hard.
    set(&bin, "hang-pause", "once")?;
    set(&bin, "hang-suspend-soft", "once")?;
    let before = calls(&bin).len();
    let t0 = Instant::now();
    backup(&mut c, "services").await?;
    ensure!(t0.elapsed() < Duration::from_secs(30), "the hangs were not cut short");
    let log = calls(&bin)[before..].to_string();
    let soft = log.find(&format!("suspend {} soft", vmx.display())).context("no soft suspend")?;
    let hard = log.find(&format!("suspend {} hard", vmx.display())).context("no hard fallback")?;
    ensure!(log.find(&pause).context("no pause")? < soft && soft < hard, "{log}");
    let row = last_row(&mut c, "services").await?;
    ensure!(row.ok && row.message.contains("could not pause") && row.message.contains("timed out"), "{row:?}");
    ensure!(state_of(&mut c, "services").await? == "running" && states(&bin, "paused") == 0);

    // An unpause that hangs once: tried again, the VM runs (no suspend needed).
    set(&bin, "hang-unpause", "once")?;
    let before = calls(&bin).len();
    backup(&mut c, "services").await?;
    let log = calls(&bin)[before..].to_string();
    ensure!(log.matches(&unpause).count() == 2 && !log.contains("suspend"), "{log}");
    ensure!(state_of(&mut c, "services").await? == "running" && states(&bin, "paused") == 0);
    ensure!(agent.logs().contains("vmrun unpause failed"), "{}", agent.logs());

    // An unpause that always hangs: 3 tries, then the last way back, suspend hard and start; logged as an error.
    set(&bin, "hang-unpause", "")?;
    let before = calls(&bin).len();
    backup(&mut c, "services").await?;
    unset(&bin, "hang-unpause")?;
    let log = calls(&bin)[before..].to_string();
    let hard = log.find(&format!("suspend {} hard", vmx.display())).context("no suspend hard")?;
    let start = log.rfind(&format!("start {} nogui", vmx.display())).context("not started again")?;
    ensure!(log.matches(&unpause).count() == 3 && log.rfind(&unpause).unwrap_or(0) < hard && hard < start, "{log}");
    ensure!(state_of(&mut c, "services").await? == "running" && states(&bin, "paused") == 0);
    ensure!(agent.logs().contains("vmrun unpause failed 3 times: suspending hard and starting it again"));
    Ok(())
}

/// SIGKILL while the Fusion VM is paused (right after the clone step is journaled): the restart unpauses it and
/// removes the clone; SIGKILL while it is suspended by the fallback: the restart starts it.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_a_fusion_vm_is_paused_or_suspended_then_restart_brings_it_back_that_way() -> Result<()> {
    let FusionClone { _fs, s, bin, path, vmx, .. } = fusion_clone("strata-vmpause-crash-")?;
    let mut agent = AgentProc::start_with_env(AgentKind::Host, &s.config, &[("STRATA_TEST_CRASH_AT", "clone")])?;
    let mut c = s.client(&agent).await?;
    c.start(VmRef { name: "services".into() }).await?;
    let mut held = c.clone();
    let run = tokio::spawn(async move { backup(&mut held, "services").await });
    agent.wait_log("test hook: holding at step clone", Duration::from_secs(20))?;
    agent.kill()?;
    run.abort();
    ensure!(states(&bin, "paused") == 1 && states(&bin, "run") == 1, "not paused at the crash: {}", calls(&bin));
    ensure!(Path::new(&format!("{}.lck", vmx.display())).is_dir(), "the .lck must stay while paused");

    let before = calls(&bin).len();
    let agent = AgentProc::start_with_config(AgentKind::Host, &s.config)?;
    agent.wait_log("resumed vm services (paused by a crashed run)", Duration::from_secs(20))?;
    let log = calls(&bin)[before..].to_string();
    ensure!(log.contains(&format!("unpause {}", vmx.display())) && !log.contains(" start "), "{log}");
    ensure!(states(&bin, "paused") == 0 && states(&bin, "run") == 1, "{}", calls(&bin));
    let mut c = s.client(&agent).await?;
    ensure!(state_of(&mut c, "services").await? == "running");
    let clones = || {
        std::fs::read_dir(path.parent().unwrap_or(&path))
            .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "services.vmwarevm")).count())
    };
    ensure!(clones()? == 0, "a clone was left behind");
    drop(agent);

    // A vmrun without pause: the journal says `suspended` before the fallback suspends; a crash then is undone by a
    // start, not an unpause.
    set(&bin, "no-pause", "")?;
    let mut agent = AgentProc::start_with_env(AgentKind::Host, &s.config, &[("STRATA_TEST_CRASH_AT", "clone")])?;
    let mut held = s.client(&agent).await?;
    let run = tokio::spawn(async move { backup(&mut held, "services").await });
    agent.wait_log("test hook: holding at step clone", Duration::from_secs(20))?;
    agent.kill()?;
    run.abort();
    ensure!(states(&bin, "run") == 0 && path.join("vm.vmss").is_file(), "not suspended at the crash: {}", calls(&bin));
    let before = calls(&bin).len();
    let agent = AgentProc::start_with_config(AgentKind::Host, &s.config)?;
    agent.wait_log("resumed vm services (suspended by a crashed run)", Duration::from_secs(20))?;
    ensure!(calls(&bin)[before..].contains(&format!("start {} nogui", vmx.display())), "{}", calls(&bin));
    ensure!(states(&bin, "run") == 1 && clones()? == 0, "{}", calls(&bin));
    Ok(())
}

/// Two VMs of one exclusive group backed up at once are never down together (the stand-in's timestamped state
/// changes say so; each unpause takes a second); a VM of another group is down at the same time as one of them.
#[tokio::test(flavor = "multi_thread")]
async fn an_exclusive_group_never_has_two_vms_down_at_once() -> Result<()> {
    let fs = Btrfs::create(1 << 30)?;
    let s = Setup::new("strata-vmexcl-")?;
    let bin = standin(&s.dir.path().join("fusion-bin"))?;
    set(&bin, "delay-unpause", "1")?;
    let mut vms = String::new();
    let mut vmx = BTreeMap::new();
    for (name, group) in [("dns1", "dns"), ("dns2", "dns"), ("web", "web")] {
        let path = fs.path().join(format!("{name}.vmwarevm"));
        vmx.insert(name, bundle(&path)?.display().to_string());
        let target = s.dir.path().join(format!("rsync-{name}"));
        std::fs::create_dir(&target)?;
        let extra = format!("exclusive = \"{group}\"");
        vms.push_str(&vm_toml(name, "fusion", &path, "clone", &target, &bin, &extra).replace("\"1s\"", "\"5s\""));
    }
    s.write_config(&vms)?;
    let agent = AgentProc::start_with_config(AgentKind::Host, &s.config)?;
    let c = s.client(&agent).await?;
    for name in vmx.keys() {
        c.clone().start(VmRef { name: name.to_string() }).await?;
    }
    let (mut a, mut b, mut w) = (c.clone(), c.clone(), c.clone());
    let (ra, rb, rw) = tokio::join!(backup(&mut a, "dns1"), backup(&mut b, "dns2"), backup(&mut w, "web"));
    for r in [ra, rb, rw] {
        ensure!(r?.contains("backed up as"), "a backup failed");
    }
    let log = calls(&bin);
    let windows = down_windows(&log);
    let of = |name: &str| windows.get(&vmx[name]).cloned().unwrap_or_default();
    ensure!(of("dns1").len() == 1 && of("dns2").len() == 1 && of("web").len() == 1, "{windows:?}\n{log}");
    ensure!(!overlap(&of("dns1"), &of("dns2")), "dns1 and dns2 were down together: {windows:?}");
    ensure!(overlap(&of("web"), &of("dns1")) || overlap(&of("web"), &of("dns2")), "web waited: {windows:?}");
    ensure!(agent.logs().contains("waiting: another vm of exclusive group `dns` is quiesced"), "{}", agent.logs());
    Ok(())
}

/// Suspend mode: a hanging `suspend soft` falls back to `suspend hard`; Workstation is the same code with `-T ws`;
/// a bundle locked by another VMware instance is refused; a hanging `list` is a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn vmware_through_vmrun_standin_hangs_fall_back_to_hard_and_locks_are_refused() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("strata-vmware-").tempdir()?;
    let pki = Pki::new()?;
    let (cert, key) = pki.issue(Role::HostAgent, "host1")?;
    let fusion_bin = standin(&dir.path().join("fusion-bin"))?;
    let ws_bin = standin(&dir.path().join("ws-bin"))?;
    let fusion = dir.path().join("vms/services.vmwarevm");
    let vmx = bundle(&fusion)?;
    let ws = dir.path().join("vms/ws");
    bundle(&ws)?;
    let locked = dir.path().join("vms/locked.vmwarevm");
    bundle(&locked)?;
    std::fs::create_dir(locked.join("vm.vmx.lck"))?;
    let target = dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let mut text = base_config(&dir.path().join("state"), &pki.ca(), &cert, &key);
    for (name, backend, path, vmrun) in [
        ("services", "fusion", &fusion, &fusion_bin),
        ("ws", "workstation", &ws, &ws_bin),
        ("locked", "fusion", &locked, &ws_bin),
    ] {
        text.push_str(&format!(
            "[[vms]]\nname = \"{name}\"\nbackend = \"{backend}\"\npath = {path:?}\nmode = \"suspend\"\nengine = \"rsync\"\n\
             target = {target:?}\nvmrun = {vmrun:?}\nvmrun_timeout = \"1s\"\nshutdown_timeout = \"1s\"\n"
        ));
    }
    let config = dir.path().join("host-agent.toml");
    std::fs::write(&config, text)?;
    let agent = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let tls = pki.material(&pki.ca(), Role::Admin, "admin")?;
    let mut c = HostClient::new(tls.connect(&agent.url(), Role::HostAgent, Duration::from_secs(10)).await?);

    c.start(VmRef { name: "services".into() }).await?;
    ensure!(calls(&fusion_bin).contains(&format!("-T fusion start {} nogui", vmx.display())), "{}", calls(&fusion_bin));

    // `suspend soft` hangs: killed after vmrun_timeout, then `suspend hard`; backed up; started again.
    set(&fusion_bin, "hang-suspend-soft", "")?;
    let started = Instant::now();
    let msg = backup(&mut c, "services").await?;
    ensure!(msg.contains("backed up as services-"), "{msg}");
    ensure!(started.elapsed() < Duration::from_secs(30), "the hang was not cut short");
    let log = calls(&fusion_bin);
    let soft = log.find(&format!("suspend {} soft", vmx.display())).context("no soft suspend")?;
    let hard = log.find(&format!("suspend {} hard", vmx.display())).context("no hard fallback")?;
    let restart = log.rfind(&format!("start {} nogui", vmx.display())).context("not started again")?;
    ensure!(soft < hard && hard < restart, "{log}");
    let vms = c.list_vms(ListVmsRequest {}).await?.into_inner().vms;
    let state = |n: &str| vms.iter().find(|v| v.name == n).map(|v| v.state.clone()).unwrap_or_default();
    ensure!(state("services") == "running", "{vms:?}");
    ensure!(state("ws") == "off", "{vms:?}");
    let copy = std::fs::read_dir(&target)?.next().context("no rsync copy")??.path();
    ensure!(copy.join("vm.vmx").is_file() && copy.join("vm.vmss").is_file(), "the copy lacks the suspended state");

    // Workstation on Linux: the same code with `-T ws`.
    c.start(VmRef { name: "ws".into() }).await?;
    c.stop(VmRef { name: "ws".into() }).await?;
    ensure!(calls(&ws_bin).contains("-T ws start") && calls(&ws_bin).contains("-T ws stop"), "{}", calls(&ws_bin));

    // A bundle locked by a VMware instance that this host's vmrun does not list: refused, nothing changed.
    let err = c.start(VmRef { name: "locked".into() }).await.expect_err("a locked bundle must be refused");
    ensure!(err.message().contains("locked by a running VMware instance"), "{err:?}");

    // vmrun hanging on `list`: a clear error after the timeout, not a hung agent.
    set(&fusion_bin, "hang-list", "")?;
    let err = c.suspend(VmRef { name: "services".into() }).await.expect_err("a hung vmrun must fail");
    ensure!(err.message().contains("timed out"), "{err:?}");
    Ok(())
}
