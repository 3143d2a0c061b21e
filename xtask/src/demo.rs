//! `cargo xtask demo`: a throwaway PKI under `target/demo`, the three agents on loopback with built-in demo configs,
//! and `labctl status`. Owns the demo's defaults; starting processes is the test harness's job.

use std::path::Path;
use std::time::Instant;

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_tests::harness::{self, AgentKind, AgentProc};

use crate::{project_root, sh};

/// The demo's built-in config for one agent: the common sections, on loopback, on ports the OS picks.
fn demo_config(dir: &Path, pki: &Path, kind: AgentKind) -> String {
    let name = kind.cert_name();
    harness::base_config(
        &dir.join("state").join(name),
        &pki.join("ca.pem"),
        &pki.join(format!("{name}.pem")),
        &pki.join(format!("{name}.key")),
    )
}

pub(crate) fn run(once: bool) -> Result<()> {
    sh("cargo", &["build", "--workspace", "--bins"])?;
    let started = Instant::now();
    let dir = project_root().join("target/demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing the previous demo in {}", dir.display()))?;
    }
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    labctl::pki::init(&pki_dir, "demo.lab", false)?;
    let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
    for kind in AgentKind::ALL {
        labctl::pki::issue(&pki_dir, &labctl::pki::IssueSpec::days(kind.role(), kind.cert_name(), &sans, 30), false)?;
    }
    labctl::pki::issue(&pki_dir, &labctl::pki::IssueSpec::days(Role::Admin, "admin", &[], 30), false)?;

    let mut agents = Vec::new();
    for kind in AgentKind::ALL {
        let config = dir.join(format!("{}.toml", kind.binary()));
        std::fs::write(&config, demo_config(&dir, &pki_dir, kind))?;
        let agent = AgentProc::start_with_config(kind, &config)?;
        println!("demo: {} up, grpc {} metrics {}", kind.binary(), agent.grpc, agent.metrics);
        agents.push(agent);
    }
    let inventory = dir.join("labctl.toml");
    let refs: Vec<&AgentProc> = agents.iter().collect();
    harness::write_inventory(
        &inventory,
        &pki_dir.join("ca.pem"),
        &pki_dir.join("admin.pem"),
        &pki_dir.join("admin.key"),
        &refs,
    )?;
    println!("demo: set up in {:.1} s\n", started.elapsed().as_secs_f64());

    let labctl = harness::bin("labctl")?;
    let status = std::process::Command::new(&labctl).arg("--config").arg(&inventory).arg("status").status()?;
    if !status.success() {
        for a in &agents {
            eprintln!("---- {} log ----\n{}", a.kind.binary(), a.logs());
        }
        bail!("labctl status reported an unhealthy lab");
    }
    println!(
        "\nTry, in another shell:\n  export LABCTL_CONFIG={}\n  {} status\n  {} status --json\n  {} pki show {}\n\
         \nDomain services (DNS, stacks, backups, VMs) are not built yet; their RPCs answer UNIMPLEMENTED.",
        inventory.display(),
        labctl.display(),
        labctl.display(),
        labctl.display(),
        pki_dir.join("dns1.pem").display(),
    );
    if once {
        return Ok(());
    }
    println!("\nRunning until Ctrl-C…");
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(tokio::signal::ctrl_c())?;
    println!("demo: stopping the agents");
    drop(agents);
    Ok(())
}
