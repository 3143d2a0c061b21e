//! The host-agent library: cold backups of whole VM bundles (QEMU/KVM, VMware Fusion/Workstation) with borg, rsync
//! or Time Machine. `main.rs` is only glue. Knows how the modules fit together; must not know any one of them inside.

mod backup;
mod clone;
pub mod config;
mod encryption;
mod engine;
mod grpc;
mod hypervisor;
mod journal;
mod reload;
mod schedule;

use std::sync::Arc;

use agent_core::backups::BackupWatch;
use agent_core::cli::{Listeners, Shutdown};
use agent_core::cron::Cron;
use agent_core::freshness::{self, Layer, Record};
use agent_core::grpc::{AgentParts, ServeError};
use agent_core::identity::Role;
use agent_core::telemetry::Metrics;
use agent_core::tls::TlsMaterial;
use prometheus_client::metrics::gauge::Gauge;

pub use config::Config;

/// The role this agent's certificate must carry.
pub const ROLE: Role = Role::HostAgent;

/// How often every VM is looked at through its hypervisor (a VM it cannot see makes the agent degraded).
const VM_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How long serving waits for the first look at the VMs.
const FIRST_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the agent until `shutdown` fires. Before serving, undoes whatever a crashed run left (paused VMs, clones).
pub async fn run(cfg: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), ServeError> {
    let tls: TlsMaterial = listeners.tls.clone();
    let metrics = Metrics::new();
    let vms = Gauge::<i64>::default();
    vms.set(cfg.vms.len() as i64);
    metrics.register("host_vms", "VMs in the host-agent config", vms.clone());
    let common = cfg.common.clone();
    let host = backup::Host::new(cfg, Arc::new(grpc::GrpcGuest::new(tls)))
        .map_err(|e| ServeError::Transport(format!("host agent: {e}")))?;
    let watch = BackupWatch::new(Layer::Host, agent_core::clock::now_unix());
    watch.register(&metrics);
    watch_vms(&host, &watch);
    let observed = watch.clone();
    let host = host.on_backup(move |r| observe(&observed, r));
    let recovered = host.recover().await;
    tracing::info!(actions = recovered.len(), "crash recovery done");
    // The first look at every VM comes before serving, so that Status tells the truth from the start; a hypervisor
    // that hangs (vmrun) delays serving by at most this much (the watcher below looks again at once).
    let _ = tokio::time::timeout(FIRST_PROBE_WAIT, host.probe_vms()).await;
    let host = Arc::new(host);
    let scheduler = tokio::spawn(schedule::run(host.clone()));
    let watcher = tokio::spawn(host.clone().watch_vms(VM_PROBE_EVERY));
    let reloader = Arc::new(reload::Reloader { host: host.clone(), watch: watch.clone(), vms });
    let on_hup = reloader.clone();
    agent_core::cli::reload_on_sighup(shutdown.clone(), move || on_hup.reload_logged());
    let mut health = agent_core::health::Checks::new();
    let health_host = host.clone();
    health.add(move |h| {
        h.summary(format!("{} vms", health_host.config().vms.len()));
        for reason in health_host.unseen_vms() {
            h.degraded(reason);
        }
    });
    health.add(move |h| watch.check(h));
    let domain = grpc::HostGrpc::routes(host, reloader);
    let parts = AgentParts { role: ROLE, version: env!("CARGO_PKG_VERSION"), health, domain, metrics };
    let result = agent_core::grpc::run_agent(&common, parts, listeners, shutdown).await;
    scheduler.abort();
    watcher.abort();
    result
}

/// Declares every VM's targets to the watch, with what the history says of each (the last success and the last
/// run's outcome survive a restart, so a stale or failing target shows at once), and when each is overdue.
pub(crate) fn watch_vms(host: &backup::Host, watch: &BackupWatch) {
    let tz = &host.config().timezone;
    let now = agent_core::clock::now_unix();
    for vm in &host.config().vms {
        let schedule = vm.schedule.as_deref().and_then(|s| Cron::parse(s).ok());
        let warn_after = vm.warn_after.or_else(|| {
            schedule.as_ref().and_then(|c| freshness::default_warn_after(c, tz, std::time::Duration::ZERO, now))
        });
        let history = host.history(Some(&vm.name)).unwrap_or_else(|e| {
            tracing::error!(vm = %vm.name, error = %e, "cannot read the backup history");
            Vec::new()
        });
        for t in &vm.targets {
            let last = history.iter().rev().find(|h| h.target == t.label);
            let record = Record {
                last_success: host.last_success(&vm.name, &t.label),
                last_run: last.map(|h| h.time_unix),
                last_error: last.filter(|h| !h.ok).map(|h| h.message.clone()),
            };
            watch.watch(&vm.name, &t.label, warn_after, record);
        }
    }
}

/// Feeds one backup run's report to the watch: each target's outcome, and the VM's downtime.
fn observe(watch: &BackupWatch, r: &backup::BackupReport) {
    watch.record_downtime(&r.vm, r.downtime);
    for t in &r.targets {
        let outcome = if t.ok { Ok(t.size) } else { Err(t.error.clone()) };
        watch.record_run(&r.vm, &t.label, r.started_unix, t.duration, outcome);
    }
}

#[cfg(test)]
mod tests {
    use agent_core::install::{launchd_plist, ServiceSpec};

    #[test]
    fn the_launchd_plist_parses_and_holds_its_keys() {
        // The spec main.rs hands to the shared installer.
        let spec = ServiceSpec {
            agent: "host-agent".into(),
            description: "Strata host-agent: cold backups of whole VM bundles".into(),
            exec: "/usr/local/bin/host-agent".into(),
            config: "/Library/Application Support/Strata/host-agent.toml".into(),
            privilege: agent_core::install::Privilege::Root { why: "VMs" },
            unit: Default::default(),
            credentials: vec![],
        };
        let text = launchd_plist(&spec);
        let v: plist::Value = plist::from_bytes(text.as_bytes()).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d.get("Label").and_then(plist::Value::as_string), Some("dev.strata.host-agent"));
        let args: Vec<&str> = d
            .get("ProgramArguments")
            .and_then(plist::Value::as_array)
            .unwrap()
            .iter()
            .filter_map(plist::Value::as_string)
            .collect();
        assert_eq!(
            args,
            ["/usr/local/bin/host-agent", "run", "--config", "/Library/Application Support/Strata/host-agent.toml"]
        );
        assert_eq!(d.get("RunAtLoad").and_then(plist::Value::as_boolean), Some(true));
        let keep = d.get("KeepAlive").and_then(plist::Value::as_dictionary).expect("KeepAlive dict");
        assert_eq!(keep.get("SuccessfulExit").and_then(plist::Value::as_boolean), Some(false));
        for k in ["StandardOutPath", "StandardErrorPath"] {
            assert_eq!(d.get(k).and_then(plist::Value::as_string), Some("/Library/Logs/Strata/host-agent.log"), "{k}");
        }
    }
}
