//! The services-agent binary: glue between the shared agent command line and the services_agent library.

use std::process::ExitCode;

use agent_core::cli::{self, AgentDef};
use agent_core::install::{KillMode, Privilege, UnitNeeds};
use services_agent::{config::DEFAULT_METRICS_PORT, Config, ROLE};

fn main() -> ExitCode {
    // Run by git as its GIT_ASKPASS (only ever with this variable set by the agent's git module): print the answer.
    if let Some(file) = std::env::var_os(services_agent::git::ASKPASS_ENV) {
        let prompt = std::env::args().nth(1).unwrap_or_default();
        return match services_agent::git::askpass(std::path::Path::new(&file), &prompt) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("services-agent askpass: {e}");
                ExitCode::FAILURE
            }
        };
    }
    cli::main(AgentDef {
        agent: "services-agent",
        role: ROLE,
        description: "Strata services-agent: compose stacks from Git and per-service ZFS + Borg backups",
        default_metrics_port: DEFAULT_METRICS_PORT,
        privilege: Privilege::Root {
            why: "Root with host mounts and devices: docker, zfs (/dev/zfs). No file-system\n\
                  namespacing (ProtectSystem=, PrivateTmp=, ...): mounts made by zfs must reach the host and dockerd.",
        },
        unit: UnitNeeds {
            // Stacks run on dockerd; volumes are ZFS datasets.
            after: &["docker.service", "zfs-mount.service", "zfs-fuse.service"],
            wants: &[],
            kill_mode: KillMode::Process {
                why: "Programs its jobs run outlive a restart of the agent; the next start kills what is left.",
            },
        },
        reads: |_| vec![],
        secrets: |_| vec![],
        reloads_on_sighup: true,
        load: Config::load,
        common: |c| &c.common,
        run: |cfg, listeners, shutdown| {
            Box::pin(async move { Ok(services_agent::run(cfg, listeners, shutdown).await?) })
        },
    })
}
