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
mod schedule;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use agent_core::cli::{Listeners, Shutdown};
use agent_core::grpc::{AgentParts, ServeError};
use agent_core::identity::Role;
use agent_core::telemetry::Metrics;
use agent_core::tls::TlsMaterial;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    metrics.register("host_vms", "VMs in the host-agent config", vms);
    let common = cfg.common.clone();
    let m = BackupMetrics::default();
    m.register(&metrics);
    let host = backup::Host::new(cfg, Arc::new(grpc::GrpcGuest::new(tls)))
        .map_err(|e| ServeError::Transport(format!("host agent: {e}")))?;
    // The last success per target survives a restart: read back from the history, so a stale target shows at once.
    for vm in &host.config().vms {
        for t in &vm.targets {
            if let Some(at) = host.last_success(&vm.name, &t.label) {
                m.last_success.get_or_create(&target_labels(&vm.name, &t.label)).set(at as f64);
            }
        }
    }
    let host = host.on_backup(move |r| m.observe(r));
    let recovered = host.recover().await;
    tracing::info!(actions = recovered.len(), "crash recovery done");
    // The first look at every VM comes before serving, so that Status tells the truth from the start; a hypervisor
    // that hangs (vmrun) delays serving by at most this much (the watcher below looks again at once).
    let _ = tokio::time::timeout(FIRST_PROBE_WAIT, host.probe_vms()).await;
    let host = Arc::new(host);
    let scheduler = tokio::spawn(schedule::run(host.clone()));
    let watcher = tokio::spawn(host.clone().watch_vms(VM_PROBE_EVERY));
    let n = host.config().vms.len();
    let mut health = agent_core::health::Checks::new();
    let health_host = host.clone();
    health.add(move |h| {
        h.summary(format!("{n} vms"));
        for reason in health_host.unseen_vms() {
            h.degraded(reason);
        }
    });
    let domain = grpc::HostGrpc::routes(host);
    let parts = AgentParts { role: ROLE, version: env!("CARGO_PKG_VERSION"), health, domain, metrics };
    let result = agent_core::grpc::run_agent(&common, parts, listeners, shutdown).await;
    scheduler.abort();
    watcher.abort();
    result
}

type Labels = Vec<(String, String)>;

fn target_labels(vm: &str, target: &str) -> Labels {
    vec![("vm".to_string(), vm.to_string()), ("target".to_string(), target.to_string())]
}

/// The VM backup metrics: per run (`vm`, `mode`) and per target (`vm`, `target`), so that a stale or failing target
/// shows while the others are fresh.
#[derive(Default)]
struct BackupMetrics {
    downtime: Family<Labels, Gauge<f64, AtomicU64>>,
    backups: Family<Labels, Counter>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    failures: Family<Labels, Counter>,
    duration: Family<Labels, Gauge<f64, AtomicU64>>,
    size: Family<Labels, Gauge>,
}

impl BackupMetrics {
    fn register(&self, metrics: &Metrics) {
        metrics.register(
            "host_backup_downtime_seconds",
            "VM downtime of the last backup run that reached a target (one quiesce for all targets)",
            self.downtime.clone(),
        );
        metrics.register("host_backups", "VM backups that reached this target", self.backups.clone());
        metrics.register(
            "host_backup_last_success_timestamp_seconds",
            "When the last backup run that reached this target of the VM started (Unix seconds)",
            self.last_success.clone(),
        );
        metrics.register("host_backup_failures", "Backup runs in which this target failed", self.failures.clone());
        metrics.register(
            "host_backup_duration_seconds",
            "How long the last transfer to this target took, failed or not",
            self.duration.clone(),
        );
        metrics.register("host_backup_size_bytes", "What the last backup stored to this target", self.size.clone());
    }

    fn observe(&self, r: &backup::BackupReport) {
        let mode = r.mode_used.as_str().to_string();
        if r.targets.iter().any(|t| t.ok) {
            let labels = vec![("vm".to_string(), r.vm.clone()), ("mode".to_string(), mode.clone())];
            self.downtime.get_or_create(&labels).set(r.downtime.as_secs_f64());
        }
        for t in &r.targets {
            let labels = target_labels(&r.vm, &t.label);
            self.duration.get_or_create(&labels).set(t.duration.as_secs_f64());
            if t.ok {
                let with_mode = vec![
                    ("vm".to_string(), r.vm.clone()),
                    ("mode".to_string(), mode.clone()),
                    ("target".to_string(), t.label.clone()),
                ];
                self.backups.get_or_create(&with_mode).inc();
                self.size.get_or_create(&labels).set(t.size as i64);
                self.last_success.get_or_create(&labels).set(r.started_unix as f64);
            } else {
                self.failures.get_or_create(&labels).inc();
            }
        }
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
