//! The dns-agent binary: glue between the shared agent command line and the dns_agent library.

use std::process::ExitCode;

use agent_core::cli::{self, AgentDef};
use agent_core::install::{Privilege, UnitNeeds};
use dns_agent::{config::DEFAULT_METRICS_PORT, Config, ROLE};

fn main() -> ExitCode {
    cli::main(AgentDef {
        agent: "dns-agent",
        role: ROLE,
        description: "Strata dns-agent: DNS for the whole lab on an embedded hickory-server",
        default_metrics_port: DEFAULT_METRICS_PORT,
        // Its own user, whose only right beyond it is binding ports below 1024 (DNS on 53).
        privilege: Privilege::SystemUser { name: "strata-dns", bind_privileged: true },
        unit: UnitNeeds::default(),
        reads: |c: &Config| c.dns.tls.iter().map(|t| ("dns.tls_cert", t.cert.clone())).collect(),
        secrets: |c: &Config| c.dns.tls.iter().map(|t| (dns_agent::TLS_KEY_CREDENTIAL, t.key.clone())).collect(),
        reloads_on_sighup: true,
        load: Config::load,
        common: |c| &c.common,
        run: |cfg, listeners, shutdown| Box::pin(async move { Ok(dns_agent::run(cfg, listeners, shutdown).await?) }),
    })
}
