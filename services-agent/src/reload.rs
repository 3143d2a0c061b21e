//! Reloading the config without a restart (SIGHUP, `systemctl reload`, `Services/Reload`): the file is read again
//! and validated in full (invalid: refused naming the file and key, the running config untouched); the new one is
//! compared with the running one, what can change live is swapped in whole (the shared config every operation reads
//! a snapshot of), and a sync is requested so added stacks deploy and dropped ones are taken down. What is bound at
//! start keeps its running value until a restart and is named in the answer. Running jobs keep the settings they
//! copied at their start. Must not know proto/tonic, compose, Docker or how a stack is deployed.

use std::sync::{Arc, Mutex};

use agent_core::config::ConfigError;

use crate::backup::Backups;
use crate::config::Config;
use crate::stacks::Stacks;

/// What a reload did, for the log and the RPC's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadOutcome {
    /// Something differs from the running config (applied or waiting for a restart).
    pub changed: bool,
    pub message: String,
}

/// The differences between the running config and a new one: what was applied, and what waits for a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Services whose settings (dns names, allow, backups) changed.
    pub changed: Vec<String>,
    /// Other keys applied live.
    pub applied: Vec<&'static str>,
    /// Keys that changed but keep their running value until a restart.
    pub restart: Vec<&'static str>,
}

impl Changes {
    /// True when the new file differs from the running config.
    pub(crate) fn any(&self) -> bool {
        !(self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.applied.is_empty()
            && self.restart.is_empty())
    }

    /// `config reloaded: applied services (added web2; removed old), stacks.poll; state_dir changed: restart the
    /// agent to apply` (dns-agent's form).
    pub(crate) fn message(&self) -> String {
        let mut applied: Vec<String> = Vec::new();
        let mut svc: Vec<String> = Vec::new();
        for (what, names) in [("added", &self.added), ("removed", &self.removed), ("changed", &self.changed)] {
            if !names.is_empty() {
                svc.push(format!("{what} {}", names.join(", ")));
            }
        }
        if !svc.is_empty() {
            applied.push(format!("services ({})", svc.join("; ")));
        }
        applied.extend(self.applied.iter().map(|k| k.to_string()));
        agent_core::config::reload_message(&applied, &self.restart)
    }
}

/// Compares `new` with the running `old`: returns the config to run (`new` with every key that cannot change live
/// kept at its running value) and the changes.
pub(crate) fn compare(old: &Config, mut new: Config) -> (Config, Changes) {
    let mut c = Changes::default();
    // Managing stacks or not (`[stacks]` with `[hub]` and `[[services]]`, or none of them) is decided at start: the
    // repository's checkout and the poller exist or not. Nothing of such a file is applied (dropping `[stacks]` live
    // would take every stack down).
    if old.stacks.is_some() != new.stacks.is_some() {
        c.restart.push("stacks");
        return (old.clone(), c);
    }
    // Bound at start: the state database and job owner, the listeners and TLS files, the engine's socket (the
    // watcher's connection, the compose found), the stacks repository (its checkout), the backup slots and the
    // snapshot mount paths a running backup unmounts later.
    let mut keep = |changed: bool, key: &'static str| {
        if changed {
            c.restart.push(key);
        }
        changed
    };
    if keep(new.common.state_dir != old.common.state_dir, "state_dir") {
        new.common.state_dir = old.common.state_dir.clone();
    }
    if keep(format!("{:?}", new.common.grpc) != format!("{:?}", old.common.grpc), "grpc") {
        new.common.grpc = old.common.grpc.clone();
    }
    if keep(new.common.metrics_listen != old.common.metrics_listen, "metrics") {
        new.common.metrics_listen = old.common.metrics_listen;
    }
    if keep(new.docker_socket != old.docker_socket, "docker.socket") {
        new.docker_socket = old.docker_socket.clone();
    }
    if let (Some(o), Some(n)) = (&old.stacks, &mut new.stacks) {
        if keep(n.repo != o.repo, "stacks.repo") {
            n.repo = o.repo.clone();
        }
        if keep(n.branch != o.branch, "stacks.branch") {
            n.branch = o.branch.clone();
        }
        if keep(n.checkout_dir != o.checkout_dir, "stacks.checkout_dir") {
            n.checkout_dir = o.checkout_dir.clone();
        }
        if keep(n.credentials_file != o.credentials_file, "stacks.credentials_file") {
            n.credentials_file = o.credentials_file.clone();
        }
        // The webhook's listener is bound at start; its secret file is read on every request.
        let listen = |w: &Option<crate::config::webhook::Webhook>| w.as_ref().map(|w| w.listen);
        if keep(listen(&n.webhook) != listen(&o.webhook), "stacks.webhook.listen") {
            match (&o.webhook, &mut n.webhook) {
                (Some(ow), Some(nw)) => nw.listen = ow.listen,
                _ => n.webhook = o.webhook.clone(),
            }
        }
    }
    if keep(new.backup.parallel != old.backup.parallel, "backup.parallel") {
        new.backup.parallel = old.backup.parallel;
    }
    if keep(new.backup.snapshot_mount_dir != old.backup.snapshot_mount_dir, "backup.snapshot_mount_dir") {
        new.backup.snapshot_mount_dir = old.backup.snapshot_mount_dir.clone();
    }

    for s in &new.services {
        match old.service(&s.name) {
            None => c.added.push(s.name.clone()),
            Some(o) if o != s => c.changed.push(s.name.clone()),
            Some(_) => {}
        }
    }
    c.removed = old.services.iter().filter(|o| new.service(&o.name).is_none()).map(|o| o.name.clone()).collect();
    if let (Some(o), Some(n)) = (&old.stacks, &new.stacks) {
        if n.poll != o.poll {
            c.applied.push("stacks.poll");
        }
        if n.bind_roots != o.bind_roots {
            c.applied.push("stacks.bind_roots");
        }
        if n.webhook != o.webhook {
            c.applied.push("stacks.webhook.secret_file");
        }
        if n.keep_unlisted != o.keep_unlisted {
            c.applied.push("stacks.keep_unlisted");
        }
    }
    if new.hub != old.hub {
        c.applied.push("hub");
    }
    if new.dns_agent != old.dns_agent {
        c.applied.push("dns.agent");
    }
    if new.timezone != old.timezone {
        c.applied.push("timezone");
    }
    if new.notify != old.notify {
        c.applied.push("notify");
    }
    (new, c)
}

/// Reloads the shared config; one reload at a time.
pub(crate) struct Reloader {
    cfg: crate::SharedConfig,
    stacks: Arc<Stacks>,
    backups: Arc<Backups>,
    one: Mutex<()>,
}

impl Reloader {
    pub(crate) fn new(cfg: crate::SharedConfig, stacks: Arc<Stacks>, backups: Arc<Backups>) -> Reloader {
        Reloader { cfg, stacks, backups, one: Mutex::new(()) }
    }

    /// Reads `Config.path` again; see the module docs.
    pub(crate) fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let _one = self.one.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.cfg.load_full();
        let new = Config::load(&old.path)?;
        let (run, changes) = compare(&old, new);
        self.cfg.store(Arc::new(run));
        // Freshness watches follow the services (added ones watched, dropped ones forgotten).
        self.backups.rewatch();
        if changes.any() {
            // Added stacks deploy, dropped ones are taken down, changed settings (bind_roots, allow) apply.
            self.stacks.request_sync();
        }
        let message = changes.message();
        tracing::info!(changed = changes.any(), "{message}");
        Ok(ReloadOutcome { changed: changes.any(), message })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n\
        key = \"a.key\"\n[stacks]\nrepo = \"r\"\ncheckout_dir = \"co\"\npoll = \"30s\"\n[hub]\nstack = \"proxy\"\n\
        network = \"hub\"\ndomain = \"lab.test\"\naddress = \"10.0.0.20\"\n";

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("/etc/strata/services.toml"), text).unwrap()
    }

    #[test]
    fn the_comparison_applies_what_can_change_live_and_names_the_rest() {
        let web = "[[services]]\nname = \"web\"\n";
        let old = cfg(&format!("{BASE}[[services]]\nname = \"old\"\n{web}[[services]]\nname = \"wiki\"\n"));
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{BASE}[[services]]\nname = \"old\"\n{web}[[services]]\nname = \"wiki\"\n"),
                "config reloaded: nothing to apply",
            ),
            (
                format!("{BASE}{web}[[services]]\nname = \"web2\"\n[[services]]\nname = \"wiki\"\ndns = [\"w\"]\n"),
                "config reloaded: applied services (added web2; removed old; changed wiki)",
            ),
            (
                format!(
                    "{}{web}",
                    BASE.replace("\"30s\"", "\"10s\"").replace("state_dir = \"s\"", "state_dir = \"t\"")
                ),
                "config reloaded: applied services (removed old, wiki), stacks.poll; state_dir changed: restart the \
                 agent to apply",
            ),
            (
                format!(
                    "{}[backup]\nparallel = 5\n[docker]\nsocket = \"/run/d.sock\"\n{web}",
                    BASE.replace("checkout_dir = \"co\"", "checkout_dir = \"co2\"\nbranch = \"next\"")
                        .replace("127.0.0.1:0", "127.0.0.1:1")
                ),
                "config reloaded: applied services (removed old, wiki); grpc, docker.socket, stacks.branch, \
                 stacks.checkout_dir, backup.parallel changed: restart the agent to apply",
            ),
            (
                format!("{}{web}", BASE.replace("[hub]", "keep_unlisted = true\n[hub]").replace("\"hub\"", "\"hub2\"")),
                "config reloaded: applied services (removed old, wiki), stacks.keep_unlisted, hub",
            ),
        ];
        // Dropping [stacks] (with [hub] and the services): nothing applied, every stack stays.
        let common = BASE.split("[stacks]").next().unwrap();
        let (run, changes) = compare(&old, cfg(common));
        assert_eq!(changes.message(), "config reloaded: nothing to apply; stacks changed: restart the agent to apply");
        assert_eq!(run.services, old.services);
        assert!(run.stacks.is_some() && run.hub.is_some());
        for (text, want) in cases {
            let new = cfg(&text);
            let (run, changes) = compare(&old, new.clone());
            assert_eq!(changes.message(), want, "{text}");
            assert_eq!(changes.any(), want != "config reloaded: nothing to apply");
            // What needs a restart keeps its running value; the rest is the new file's.
            assert_eq!(run.common.state_dir, old.common.state_dir);
            assert_eq!(format!("{:?}", run.common.grpc), format!("{:?}", old.common.grpc));
            assert_eq!(run.docker_socket, old.docker_socket);
            assert_eq!(run.backup.parallel, old.backup.parallel);
            let (rs, os, ns) = (run.stacks.unwrap(), old.stacks.clone().unwrap(), new.stacks.clone().unwrap());
            assert_eq!((&rs.repo, &rs.branch, &rs.checkout_dir), (&os.repo, &os.branch, &os.checkout_dir));
            assert_eq!((rs.poll, rs.keep_unlisted), (ns.poll, ns.keep_unlisted));
            assert_eq!(run.services, new.services);
            assert_eq!(run.hub, new.hub);
        }
    }
}
