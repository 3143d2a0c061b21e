//! `cargo xtask demo`: a throwaway PKI under `target/demo`, the three agents on loopback with built-in demo configs,
//! and `labctl status`. Owns the demo's defaults; starting processes is the test harness's job.

use std::path::Path;
use std::time::Instant;

use agent_core::identity::Role;
use anyhow::{bail, Context, Result};
use strata_tests::harness::{self, AgentKind, AgentProc};

use crate::{project_root, sh};

/// The demo's zone, served by the dns-agent.
const DEMO_ZONE: &str = r#"
[dns]
listen = ["127.0.0.1:0"]

[[zones]]
name = "demo.lab"
records = [
  { name = "nas", type = "A", value = "10.0.0.10" },
  { name = "www", type = "CNAME", value = "nas" },
  { name = "@", type = "TXT", value = "strata demo" },
]

[[zones]]
name = "10.in-addr.arpa"
"#;

/// The demo's built-in config for one agent: the common sections on loopback, on ports the OS picks, and for the
/// dns-agent a small zone.
fn demo_config(dir: &Path, pki: &Path, kind: AgentKind) -> String {
    let name = kind.cert_name();
    let mut text = harness::base_config(
        &dir.join("state").join(name),
        &pki.join("ca.pem"),
        &pki.join(format!("{name}.pem")),
        &pki.join(format!("{name}.key")),
    );
    if kind == AgentKind::Dns {
        text.push_str(DEMO_ZONE);
    }
    text
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

    let dns = agents.iter().find(|a| a.kind == AgentKind::Dns).expect("the demo starts a dns-agent");
    let dns_addr = dns.logged_addr("dns udp")?;
    let dig = std::process::Command::new("dig")
        .args(["+short", "-p", &dns_addr.port().to_string(), &format!("@{}", dns_addr.ip()), "www.demo.lab"])
        .output()
        .context("running dig (run `cargo xtask deps`)")?;
    let answer = String::from_utf8_lossy(&dig.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    println!("demo: dig www.demo.lab → {answer}");
    if answer != "nas.demo.lab. 10.0.0.10" {
        bail!("the demo's dns-agent answered `{answer}` for www.demo.lab");
    }

    let labctl = harness::bin("labctl")?;
    let status = std::process::Command::new(&labctl).arg("--config").arg(&inventory).arg("status").status()?;
    if !status.success() {
        for a in &agents {
            eprintln!("---- {} log ----\n{}", a.kind.binary(), a.logs());
        }
        bail!("labctl status reported an unhealthy lab");
    }
    println!(
        "\nTry, in another shell:\n  export LABCTL_CONFIG={}\n  {} status\n  {} status --json\n  {} pki show {}\n  \
         dig -p {} @{} nas.demo.lab\n  {} dns records\n  {} dns add host.demo.lab. A 10.0.0.42\n\
         \nNot in the demo yet: stacks and VMs (the services-agent runs without [stacks], the host-agent without [[vms]]);\nservice backups (services part 2) are not built yet and answer UNIMPLEMENTED.",
        inventory.display(),
        labctl.display(),
        labctl.display(),
        labctl.display(),
        pki_dir.join("dns1.pem").display(),
        dns_addr.port(),
        dns_addr.ip(),
        labctl.display(),
        labctl.display(),
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
