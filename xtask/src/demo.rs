//! `cargo xtask demo`: the whole lab (`lab.rs`) on this machine, its set-up time, a few checks and a short tour of the
//! commands to try; runs until Ctrl-C (or, with `--once`, checks and exits), then cleans up. Owns what the demo shows
//! and checks; building the lab is `lab.rs`'s job, starting processes the test harness's.

use std::time::Duration;

use anyhow::{ensure, Result};
use strata_tests::harness::AgentKind;

use crate::lab::{self, Lab, APPS, VM_NAME, ZONE};
use crate::sh;

/// The set-up time the demo aims at (after the build).
const TARGET: Duration = Duration::from_secs(120);

pub(crate) fn run(once: bool) -> Result<()> {
    sh("cargo", &["build", "--workspace", "--bins"])?;
    lab::catch_signals()?;
    let lab = Lab::up("demo")?;
    let took = lab.setup_time();
    let phases: Vec<String> = lab.phases.iter().map(|(p, d)| format!("{p} {:.1}", d.as_secs_f64())).collect();
    println!(
        "\ndemo: set up in {:.1} s (target: under {} s{}): {}",
        took.as_secs_f64(),
        TARGET.as_secs(),
        if took <= TARGET { ", met" } else { ", NOT met" },
        phases.join(", ")
    );
    check(&lab)?;
    tour(&lab);
    if once {
        return Ok(());
    }
    println!("\nRunning until Ctrl-C…");
    while !lab::interrupted() {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// labctl status succeeds, dig answers every app's name, and both layers' backups succeeded.
fn check(lab: &Lab) -> Result<()> {
    lab.labctl(&["status"])?;
    for (app, _) in APPS {
        let name = format!("{app}.{ZONE}");
        let answer = lab.dig(&name)?;
        println!("demo: dig {name} → {}", answer.join(" "));
        ensure!(answer == ["127.0.0.1"], "the dns-agent answered {answer:?} for {name}");
        let h = lab.history(app)?;
        let ok = h.iter().find(|e| e.kind == "backup" && e.result == "ok");
        let Some(b) = ok else { anyhow::bail!("{app}: no successful backup in {h:?}") };
        println!("demo: {app} backed up in {:.1} s, downtime {:.3} s", b.duration_seconds, b.downtime_seconds);
    }
    let vm = lab.vm_info()?;
    ensure!(vm.last_backup_unix > 0 && vm.state == "running", "vm {VM_NAME}: {vm:?}");
    println!("demo: vm {VM_NAME} {} and backed up ({} mode, {})", vm.state, vm.mode, vm.engine);
    // The layers cooperate: the host-agent held the guest's backups (PrepareHostBackup) while it paused the VM.
    let guest = lab.logs(AgentKind::Services);
    let held = guest.contains("host backup lease taken") && guest.contains("host backup lease released");
    ensure!(held, "the services-agent (the vm's guest) was not asked to hold its backups during the vm backup");
    println!("demo: the services-agent held its backups while the host-agent backed up the vm (lease taken, released)");
    Ok(())
}

fn tour(lab: &Lab) {
    let dig = format!("dig -p {} @{} +short", lab.dns.port(), lab.dns.ip());
    let hub = format!("http://127.0.0.1:{}/cgi-bin/svc", lab.hub_port);
    println!(
        "\nThe lab: a dns-agent (zone {ZONE}), a services-agent (hub `proxy` on 127.0.0.1:{port}, spokes app1 and app2 \
         on their own ZFS datasets, each backed up into its own Borg repo), a host-agent with the QEMU VM {VM_NAME} \
         (backed up with Borg; its guest is the services-agent). Try, in another shell:\n\
         \n  export LABCTL_CONFIG={inv}\n  alias labctl={bin}\n\
         \n  labctl status\n  {dig} app1.{ZONE}\n  curl {hub}/app1 ; curl {hub}/app2/index.html\n\
         \n  labctl services ls\n  labctl services history\n  labctl services archives app1\n  labctl services backup app2\
         \n  labctl services drill app1\n\
         \n  labctl vm ls\n  labctl vm backups {VM_NAME}\n  labctl vm drill {VM_NAME}\n\
         \n  labctl dns records\n\
         \nThe disaster-recovery drill of this lab is `cargo xtask drill`.",
        port = lab.hub_port,
        inv = lab.inventory.display(),
        bin = lab.labctl.display(),
    );
}
