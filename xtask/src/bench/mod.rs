//! `cargo xtask bench …`: benchmarks on release builds, each printed beside its target. Benchmarks, not timed tests:
//! they report numbers and never fail on them. Owns measurement only. This file is the subcommand and its dispatch;
//! each benchmark is a submodule (`grpc`, `dns`, `dns_xfr`, `services`, `vm`, `backup`, `offsite`, `progress`) that uses only the leaves `procs` (the
//! release build, a process's memory) and `stats` (median and percentiles), never another benchmark.

use anyhow::Result;
use clap::Subcommand;

mod backup;
mod dns;
mod dns_xfr;
mod grpc;
mod offsite;
mod procs;
mod progress;
mod services;
mod stats;
mod vm;

#[derive(Subcommand)]
pub(crate) enum Which {
    /// Status RPC latency over mTLS on loopback, and each agent's idle RSS.
    Grpc {
        /// Calls per agent.
        #[arg(long, default_value_t = 5000)]
        calls: usize,
    },
    /// ListServices (served from the event-fed state) vs `docker ps`, with 50 running containers; a `git push` to the
    /// new container running and healthy, by signed webhook vs by poll.
    Services,
    /// VM downtime: clone mode at 1 and 8 GiB vs suspend-copy-resume.
    Vm,
    /// Service backup downtime (pause, stop) at 10 MiB and 1 GiB vs stop-borg-start, and the cost vs bare borg.
    Backup,
    /// A service backup to an off-site repository over a shaped ssh link (1 GiB) vs a bare `borg create` to it.
    Offsite,
    /// The host-agent's 1 GiB VM backup watched (byte progress) vs scheduled (none), alternating each minute.
    Progress,
    /// dnsperf against dns-agent, unbound and dnsmasq on the same records; a 1,000,000-domain blocklist.
    Dns {
        /// Seconds of dnsperf per server.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Only the blocklist part (load time, RSS, refreshes).
        #[arg(long)]
        blocklist_only: bool,
    },
    /// A 100,000-record zone by AXFR to a knotd secondary: from the dns-agent and from a knotd primary.
    DnsXfr {
        /// Transfers from each primary (alternating).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

pub(crate) fn run(which: Which) -> Result<()> {
    match which {
        Which::Grpc { calls } => grpc::run(calls),
        Which::Dns { seconds, blocklist_only } => dns::run(seconds, blocklist_only),
        Which::DnsXfr { rounds } => dns_xfr::run(rounds),
        Which::Services => services::run(),
        Which::Vm => vm::run(),
        Which::Backup => backup::run(),
        Which::Offsite => offsite::run(),
        Which::Progress => progress::run(),
    }
}
