//! The host-agent binary: glue between the shared agent command line and the host_agent library.

use std::process::ExitCode;

use agent_core::cli::{self, AgentDef};
use host_agent::{config::DEFAULT_METRICS_PORT, Config, ROLE};

fn main() -> ExitCode {
    cli::main(AgentDef {
        agent: "host-agent",
        role: ROLE,
        description: "Strata host-agent: cold backups of whole VM bundles",
        default_metrics_port: DEFAULT_METRICS_PORT,
        dynamic_user: false,
        bind_privileged: false,
        needs_root: true,
        system_user: None,
        reads: |_| vec![],
        secrets: |_| vec![],
        reloads_on_sighup: false,
        load: Config::load,
        common: |c| &c.common,
        run: |cfg, listeners, shutdown| Box::pin(async move { Ok(host_agent::run(cfg, listeners, shutdown).await?) }),
    })
}
