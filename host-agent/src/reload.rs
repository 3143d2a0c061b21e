//! Reloading the host agent's config (SIGHUP, `systemctl reload`, `launchctl kill HUP`, the Reload RPC): the file is
//! read again and validated in full; valid, it replaces the running config whole and the freshness watch follows it;
//! invalid, the running config keeps serving. Knows what changes live and what only a restart applies; must not know
//! how a backup runs nor proto/tonic (the `grpc` module converts).

use std::sync::Arc;

use agent_core::backups::BackupWatch;
use agent_core::config::ConfigError;
use prometheus_client::metrics::gauge::Gauge;

use crate::backup::Host;
use crate::config::{Config, VmConfig};

/// What a reload did: `changed` when anything differed; `message` names what was applied and what waits for a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadOutcome {
    pub changed: bool,
    pub message: String,
}

/// Everything a reload touches besides the config itself.
pub(crate) struct Reloader {
    pub host: Arc<Host>,
    pub watch: BackupWatch,
    pub vms: Gauge<i64>,
}

impl Reloader {
    /// Reads the config file again; see the module docs. A backup already running finishes under the settings it
    /// copied at its start; the scheduler reads the new schedules at its next tick.
    pub(crate) fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let old = self.host.config();
        let new = Config::load(&old.path)?;
        let outcome = compare(&old, &new);
        self.host.replace_config(new);
        let now = self.host.config();
        self.watch.retain(|vm, target| now.vm(vm).is_some_and(|v| v.targets.iter().any(|t| t.label == target)));
        crate::watch_vms(&self.host, &self.watch);
        self.vms.set(now.vms.len() as i64);
        tracing::info!(changed = outcome.changed, "{}", outcome.message);
        Ok(outcome)
    }

    /// [`Reloader::reload`] with its outcome logged (SIGHUP has no one to answer).
    pub(crate) fn reload_logged(&self) {
        if let Err(e) = self.reload() {
            tracing::warn!("reload refused, keeping the running config: {e}");
        }
    }
}

fn debug<T: std::fmt::Debug>(t: &T) -> String {
    format!("{t:?}")
}

/// What differs between the running config and the new one, as the answer says it.
pub(crate) fn compare(old: &Config, new: &Config) -> ReloadOutcome {
    let names = |c: &Config| c.vms.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(old), names(new));
    let added: Vec<&str> = new_names.iter().filter(|n| !old_names.contains(n)).map(String::as_str).collect();
    let removed: Vec<&str> = old_names.iter().filter(|n| !new_names.contains(n)).map(String::as_str).collect();
    let changed: Vec<&str> = new
        .vms
        .iter()
        .filter(|v| old.vm(&v.name).is_some_and(|o: &VmConfig| debug(o) != debug(*v)))
        .map(|v| v.name.as_str())
        .collect();
    let mut applied = Vec::new();
    let mut parts = Vec::new();
    for (what, list) in [("added", &added), ("removed", &removed), ("changed", &changed)] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(" ")));
        }
    }
    if !parts.is_empty() {
        applied.push(format!("vms ({})", parts.join("; ")));
    }
    if debug(&old.timezone) != debug(&new.timezone) {
        applied.push("timezone".to_string());
    }
    if debug(&old.notify) != debug(&new.notify) {
        applied.push("notify".to_string());
    }
    let mut restart = Vec::new();
    if old.common.state_dir != new.common.state_dir {
        restart.push("state_dir");
    }
    if debug(&old.common.grpc) != debug(&new.common.grpc) {
        restart.push("[grpc] (listen address, TLS files)");
    }
    if old.common.metrics_listen != new.common.metrics_listen {
        restart.push("[metrics] listen");
    }
    let message = agent_core::config::reload_message(&applied, &restart);
    ReloadOutcome { changed: !applied.is_empty() || !restart.is_empty(), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "state_dir = \"/var/lib/strata-host\"\n[grpc]\nlisten = \"127.0.0.1:7443\"\nca = \"c\"\n\
                        cert = \"c\"\nkey = \"k\"\n\
                        [[vms]]\nname = \"dns\"\nbackend = \"qemu\"\npath = \"/vms/dns\"\nmode = \"clone\"\n\
                        engine = \"borg\"\ntarget = \"/b/dns\"\n\
                        [[vms]]\nname = \"services\"\nbackend = \"qemu\"\npath = \"/vms/services\"\n\
                        mode = \"clone\"\nengine = \"borg\"\ntarget = \"/b/services\"\n";

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("/etc/strata/host-agent.toml"), text).unwrap()
    }

    #[test]
    fn the_answer_names_what_was_applied_and_what_waits_for_a_restart() {
        let base = parse(BASE);
        let cases: Vec<(String, &str)> = vec![
            (BASE.to_string(), "config reloaded: nothing to apply"),
            (
                BASE.replace("name = \"services\"", "name = \"web\"").replace("/vms/dns\"", "/vms/dns2\""),
                "config reloaded: applied vms (added web; removed services; changed dns)",
            ),
            (
                BASE.replace("127.0.0.1:7443", "127.0.0.1:7444").replace("strata-host", "strata-host2"),
                "config reloaded: nothing to apply; state_dir, [grpc] (listen address, TLS files) changed: restart \
                 the agent to apply",
            ),
            (format!("timezone = \"Europe/Berlin\"\n{BASE}"), "config reloaded: applied timezone"),
        ];
        for (text, want) in cases {
            let out = compare(&base, &parse(&text));
            assert_eq!(out.message, want);
            assert_eq!(out.changed, want != "config reloaded: nothing to apply");
        }
    }
}
