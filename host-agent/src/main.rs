//! The host-agent binary: glue between the shared agent command line and the host_agent library.

use std::process::ExitCode;

use agent_core::cli::{self, AgentDef};
use agent_core::install::{KillMode, Privilege, UnitNeeds};
use host_agent::{config::DEFAULT_METRICS_PORT, Config, ROLE};

fn main() -> ExitCode {
    cli::main(AgentDef {
        agent: "host-agent",
        role: ROLE,
        description: "Strata host-agent: cold backups of whole VM bundles",
        default_metrics_port: DEFAULT_METRICS_PORT,
        privilege: Privilege::Root {
            why: "Root with host mounts and devices: qemu (/dev/kvm), VM bundles wherever they are. No\n\
                  file-system namespacing (ProtectSystem=, PrivateTmp=, ...): the VMs it starts see the host's files.",
        },
        unit: UnitNeeds {
            // VM bundles and borg repositories may live on ZFS datasets.
            after: &["zfs-mount.service", "zfs-fuse.service"],
            wants: &[],
            kill_mode: KillMode::Process { why: "VMs started by the host agent outlive a restart of it." },
        },
        reads: |_| vec![],
        secrets: |_| vec![],
        reloads_on_sighup: true,
        load: Config::load,
        common: |c| &c.common,
        run: |cfg, listeners, shutdown| Box::pin(async move { Ok(host_agent::run(cfg, listeners, shutdown).await?) }),
    })
}
