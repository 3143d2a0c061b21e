//! The dns-agent binary: glue between the shared agent command line and the dns_agent library.

use std::process::ExitCode;

use agent_core::cli::{self, AgentDef};
use dns_agent::{config::DEFAULT_METRICS_PORT, Config, ROLE};

fn main() -> ExitCode {
    cli::main(AgentDef {
        agent: "dns-agent",
        role: ROLE,
        description: "Strata dns-agent: DNS for the whole lab on an embedded hickory-server",
        default_metrics_port: DEFAULT_METRICS_PORT,
        dynamic_user: false,
        bind_privileged: true,
        needs_root: false,
        system_user: Some("strata-dns"),
        reads: |c: &Config| c.dns.tls.iter().map(|t| ("dns.tls_cert", t.cert.clone())).collect(),
        secrets: |c: &Config| {
            c.dns.tls.iter().map(|t| (dns_agent::server::TLS_KEY_CREDENTIAL, t.key.clone())).collect()
        },
        reloads_on_sighup: true,
        load: Config::load,
        common: |c| &c.common,
        run: |cfg, listeners, shutdown| Box::pin(async move { Ok(dns_agent::run(cfg, listeners, shutdown).await?) }),
    })
}
