//! The services-agent binary: glue between the shared agent command line and the services_agent library.

use std::process::ExitCode;

use agent_core::cli::{self, AgentDef};
use services_agent::{config::DEFAULT_METRICS_PORT, Config, ROLE};

fn main() -> ExitCode {
    cli::main(AgentDef {
        agent: "services-agent",
        role: ROLE,
        description: "Strata services-agent: compose stacks from Git and per-service ZFS + Borg backups",
        default_metrics_port: DEFAULT_METRICS_PORT,
        dynamic_user: false,
        bind_privileged: false,
        needs_root: true,
        reloads_on_sighup: false,
        load: Config::load,
        common: |c| &c.common,
        run: |cfg, listeners, shutdown| {
            Box::pin(async move { Ok(services_agent::run(cfg, listeners, shutdown).await?) })
        },
    })
}
