//! `cargo xtask bench …`: benchmarks on release builds, each printed beside its target. Benchmarks, not timed tests:
//! they report numbers and never fail on them. Owns measurement only.

use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{Context, Result};
use clap::Subcommand;
use strata_tests::harness::{AgentKind, AgentProc, Pki};

use crate::{project_root, sh};

#[derive(Subcommand)]
pub(crate) enum Which {
    /// Status RPC latency over mTLS on loopback, and each agent's idle RSS.
    Grpc {
        /// Calls per agent.
        #[arg(long, default_value_t = 5000)]
        calls: usize,
    },
    /// ListServices (served from the event-fed state) vs `docker ps`, with 50 running containers.
    Services,
    /// VM downtime: clone mode at 1 and 8 GiB vs suspend-copy-resume.
    Vm,
    /// Service backup downtime (pause, stop) at 10 MiB and 1 GiB vs stop-borg-start, and the cost vs bare borg.
    Backup,
    /// dnsperf against dns-agent, unbound and dnsmasq on the same records; a 1,000,000-domain blocklist.
    Dns {
        /// Seconds of dnsperf per server.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Only the blocklist part (load time, RSS, refreshes).
        #[arg(long)]
        blocklist_only: bool,
    },
}

pub(crate) fn run(which: Which) -> Result<()> {
    match which {
        Which::Grpc { calls } => grpc(calls),
        Which::Dns { seconds, blocklist_only } => crate::bench_dns::run(seconds, blocklist_only),
        Which::Services => crate::bench_services::run(),
        Which::Vm => crate::bench_vm::run(),
        Which::Backup => crate::bench_backup::run(),
    }
}

/// The binaries every benchmark builds, whichever it runs: one feature set for all of them, so that running the
/// benchmarks one after another reuses one release build instead of rebuilding the shared dependencies each time.
const RELEASE_PACKAGES: [&str; 4] = ["host-agent", "dns-agent", "services-agent", "labctl"];

/// Builds the release binaries (`needed` must be among [`RELEASE_PACKAGES`]) and points the harness at them.
pub(crate) fn release_bins(needed: &[&str]) -> Result<()> {
    if let Some(p) = needed.iter().find(|p| !RELEASE_PACKAGES.contains(p)) {
        anyhow::bail!("release_bins: {p} is not one of the benchmark packages {RELEASE_PACKAGES:?}");
    }
    let mut args = vec!["build", "--release"];
    for p in RELEASE_PACKAGES {
        args.extend(["-p", p]);
    }
    sh("cargo", &args)?;
    // The harness starts binaries from here.
    std::env::set_var("STRATA_BIN_DIR", project_root().join("target/release"));
    Ok(())
}

/// Resident set size of a process, in bytes (VmRSS).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn grpc(calls: usize) -> Result<()> {
    release_bins(&["host-agent", "dns-agent", "services-agent"])?;
    let pki = Pki::new()?;
    let agents: Vec<AgentProc> = AgentKind::ALL.iter().map(|k| AgentProc::start(*k, &pki)).collect::<Result<_>>()?;
    let admin = pki.material(&pki.ca(), Role::Admin, "bench-admin")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Let the agents settle before reading their idle memory.
    std::thread::sleep(Duration::from_secs(2));
    let idle: Vec<u64> = agents.iter().map(|a| rss_bytes(a.pid())).collect::<Result<_>>()?;

    println!("\nbench grpc: {calls} sequential Status calls per agent over one mTLS channel (release build, loopback)");
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "agent", "p50 µs", "p99 µs", "max µs", "idle RSS MB", "RSS after MB"
    );
    let mut worst_p99 = Duration::ZERO;
    let mut worst_rss = 0u64;
    for (agent, idle) in agents.iter().zip(idle) {
        let lat = rt.block_on(async {
            let ch = admin.connect(&agent.url(), agent.kind.role(), Duration::from_secs(5)).await?;
            let mut client = strata_proto::v1::agent_client::AgentClient::new(ch);
            for _ in 0..200 {
                client.status(strata_proto::v1::StatusRequest {}).await?;
            }
            let mut lat = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                client.status(strata_proto::v1::StatusRequest {}).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        })?;
        let mut lat = lat;
        lat.sort();
        let (p50, p99, max) = (percentile(&lat, 0.50), percentile(&lat, 0.99), *lat.last().expect("calls > 0"));
        let after = rss_bytes(agent.pid())?;
        worst_p99 = worst_p99.max(p99);
        worst_rss = worst_rss.max(idle);
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>12.1} {:>14.1}",
            agent.kind.binary(),
            p50.as_micros(),
            p99.as_micros(),
            max.as_micros(),
            idle as f64 / 1e6,
            after as f64 / 1e6
        );
    }
    println!(
        "\ntargets: p99 ≤ 2000 µs (worst {} µs: {}), idle RSS ≤ 20 MB per agent (worst {:.1} MB: {})",
        worst_p99.as_micros(),
        if worst_p99 <= Duration::from_millis(2) { "met" } else { "NOT met" },
        worst_rss as f64 / 1e6,
        if worst_rss <= 20_000_000 { "met" } else { "NOT met" },
    );
    Ok(())
}
