//! `cargo xtask bench grpc`: Status RPC latency over mTLS on loopback against each release agent, and each agent's
//! idle RSS. Owns the measurement; reports against the targets, never fails on numbers.

use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::Result;
use strata_tests::harness::{AgentKind, AgentProc, Pki};

use super::procs::{release_bins, rss_bytes};
use super::stats::percentile;

pub(super) fn run(calls: usize) -> Result<()> {
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
        let (p50, p99, max) = (percentile(&lat, 0.50), percentile(&lat, 0.99), percentile(&lat, 1.0));
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
