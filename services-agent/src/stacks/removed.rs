//! Stacks that leave the config: a deployed stack (a commit in the store) that is no longer in `[[services]]`, or
//! whose directory is not in the repository at the synced commit, is taken down by the sync — journaled first (a
//! `take-down` run), `compose down --remove-orphans` through an empty compose file plus its own networks by label
//! (containers and networks go; volumes and datasets are never touched), then recorded as removed and listed so
//! until acknowledged. `[stacks] keep_unlisted` leaves them running (listed `unlisted`). Must not know proto/tonic
//! nor how the journal is repaired (that is `recovery`).

use std::collections::{BTreeMap, BTreeSet};

use agent_core::clock::now_unix;

use super::{aggregate, row, short, StackError, Stacks};
use crate::compose::{Compose, EMPTY_FILE};
use crate::config::Config;
use crate::docker::Engine;
use crate::journal::{step, Job, Journal, Outcome, Trigger};
use crate::model::{ServiceRow, SyncReport};
use crate::store::StackRecord;

/// The state ListServices shows for a stack the sync took down, until acknowledged.
pub(crate) const REMOVED: &str = "removed";
/// The state of a stack that left the config and is left running (`keep_unlisted`).
pub(crate) const UNLISTED: &str = "unlisted";

/// The deployed stacks that left: `(name, why)`, by name. `removed` are those already taken down; `trees` the stack
/// directories at the synced `commit`.
pub(crate) fn leaving(
    deployed: &[StackRecord],
    removed: &BTreeSet<String>,
    cfg: &Config,
    commit: &str,
    trees: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    deployed
        .iter()
        .filter(|r| !r.commit.is_empty() && !removed.contains(&r.name))
        .filter_map(|r| {
            if cfg.service(&r.name).is_none() {
                return Some((r.name.clone(), "no longer in [[services]]".to_string()));
            }
            (!trees.contains_key(&r.name))
                .then(|| (r.name.clone(), format!("its directory left the repository at commit {}", short(commit))))
        })
        .collect()
}

impl Stacks {
    /// The sync's part: takes down every deployed stack that left (or, with `keep_unlisted`, logs that it is left
    /// running). Failures are recorded on the stack and in the report; the next sync tries again.
    pub(super) async fn take_down_leaving(
        &self,
        compose: &Compose,
        commit: &str,
        trees: &BTreeMap<String, String>,
        report: &mut SyncReport,
    ) {
        let cfg = self.cfg();
        let (deployed, removed) = match (self.store.deployed(), self.store.removed()) {
            (Ok(d), Ok(r)) => (d, r.into_iter().map(|r| r.name).collect::<BTreeSet<_>>()),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read the deployed stacks: none taken down");
                return;
            }
        };
        let gone = leaving(&deployed, &removed, &cfg, commit, trees);
        if gone.is_empty() {
            return;
        }
        if cfg.stacks.as_ref().is_some_and(|s| s.keep_unlisted) {
            let names: Vec<&str> = gone.iter().map(|(n, _)| n.as_str()).collect();
            tracing::warn!(stacks = ?names, "stacks left the config; left running (keep_unlisted = true)");
            return;
        }
        // Without the engine nothing can be taken down: no run journaled per sync while it is away.
        if let Some(e) = self.live.engine_error() {
            for (name, reason) in gone {
                report
                    .errors
                    .insert(name.clone(), format!("stack {name} left the config ({reason}); not taken down: {e}"));
            }
            return;
        }
        for (name, reason) in gone {
            match self.take_down(compose, &cfg, &name, &reason).await {
                Ok(msg) => tracing::warn!(stack = name, "{msg}"),
                Err(e) => {
                    tracing::warn!(stack = name, error = e, "stack that left the config not taken down yet");
                    if let Err(se) = self.store.set_error(&name, &e) {
                        tracing::error!(stack = name, error = %se, "cannot record the error");
                    }
                    report.errors.insert(name, e);
                }
            }
        }
    }

    /// Takes one stack down: journaled before compose runs; marked removed after. A job of the service still
    /// running (a backup started before a reload dropped it) defers it to a later sync.
    async fn take_down(&self, compose: &Compose, cfg: &Config, name: &str, reason: &str) -> Result<String, String> {
        let journal = Journal::open(&cfg.common.state_dir).map_err(|e| e.to_string())?;
        let busy = journal.running().map_err(|e| e.to_string())?;
        if let Some(r) = busy.iter().find(|r| r.service == name && r.kind != Job::TakeDown) {
            return Err(format!(
                "stack {name} left the config ({reason}) but its {} is running: taken down at a sync after it ends",
                r.kind
            ));
        }
        let run = journal.start_run(name, Job::TakeDown, Trigger::Sync).map_err(|e| e.to_string())?;
        let done = async {
            let id = journal.begin(run, name, step::TAKE_DOWN, reason).map_err(|e| e.to_string())?;
            // Alone in its directory: compose reads no `.env` or override beside it.
            let dir = cfg.common.state_dir.join("take-down");
            agent_core::state::ensure_dir(&dir).map_err(|e| e.to_string())?;
            let empty = dir.join("compose.yml");
            agent_core::state::write_atomic(&empty, EMPTY_FILE.as_bytes(), 0o600).map_err(|e| e.to_string())?;
            compose.down_orphans(name, &empty).await.map_err(|e| e.to_string())?;
            let engine = Engine::connect(&cfg.docker_socket).await.map_err(|e| e.to_string())?;
            let (nets, left) = engine.remove_project_networks(name).await.map_err(|e| e.to_string())?;
            self.store.set_removed(name, reason).map_err(|e| e.to_string())?;
            self.store.set_error(name, "").map_err(|e| e.to_string())?;
            journal.done(id).map_err(|e| e.to_string())?;
            let mut msg = format!(
                "stack {name} taken down ({reason}): containers removed, {} network(s) removed, volumes and datasets \
                 kept; `labctl services ack {name}` forgets it",
                nets.len()
            );
            if !left.is_empty() {
                msg.push_str(&format!("; left in place: {}", left.join("; ")));
            }
            Ok::<_, String>(msg)
        }
        .await;
        let outcome = match &done {
            Ok(_) => Outcome { result: "ok".into(), ..Default::default() },
            Err(e) => Outcome { result: "failed".into(), error: e.clone(), ..Default::default() },
        };
        if let Err(e) = journal.finish(run, &outcome) {
            tracing::error!(stack = name, error = %e, "cannot record the take-down's outcome");
        }
        done
    }

    /// Forgets a removed stack (`Services/Acknowledge`): its store row is deleted. Only a stack the sync took down
    /// can be acknowledged.
    pub(crate) async fn acknowledge(&self, name: &str) -> Result<String, StackError> {
        let _op = self.ops.lock().await;
        if self.store.forget_removed(name)? {
            tracing::info!(stack = name, "removed stack acknowledged: its record is deleted");
            return Ok(format!("{name} acknowledged: its record is deleted (volumes and datasets were kept)"));
        }
        if self.cfg().service(name).is_some() || !self.store.get(name)?.commit.is_empty() {
            return Err(StackError::NotRemoved(name.to_string()));
        }
        Err(StackError::Unknown(name.to_string()))
    }

    /// The removed stacks' names (for the state of configured services whose directory left the repository).
    pub(super) fn removed_names(&self) -> BTreeSet<String> {
        match self.store.removed() {
            Ok(r) => r.into_iter().map(|r| r.name).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the removed stacks");
                BTreeSet::new()
            }
        }
    }

    /// Rows for the stacks that are not in the config but still known: `removed` (taken down, until acknowledged),
    /// `unlisted` (left running by `keep_unlisted`) or, while the take-down is pending or failing, their live state
    /// with the error.
    pub(super) fn unlisted_rows(&self) -> Vec<ServiceRow> {
        let cfg = self.cfg();
        let keep = cfg.stacks.as_ref().is_some_and(|s| s.keep_unlisted);
        let (deployed, removed) = match (self.store.deployed(), self.store.removed()) {
            (Ok(d), Ok(r)) => (d, r),
            _ => return Vec::new(),
        };
        let now = now_unix();
        let engine_down = self.live.engine_error().is_some();
        let mut rows: Vec<ServiceRow> = removed
            .iter()
            .filter(|r| cfg.service(&r.name).is_none())
            .map(|r| {
                let containers = self.live.project(&r.name);
                let rec = deployed.iter().find(|d| d.name == r.name);
                ServiceRow {
                    name: r.name.clone(),
                    state: REMOVED.into(),
                    health: "none".into(),
                    deployed_commit: rec.map(|d| d.commit.clone()).unwrap_or_default(),
                    config_hash: rec.map(|d| d.config_hash.clone()).unwrap_or_default(),
                    error: format!("taken down: {}; `labctl services ack {}` forgets it", r.reason, r.name),
                    containers: containers.iter().map(|c| row(c, now)).collect(),
                }
            })
            .collect();
        for d in deployed.iter().filter(|d| cfg.service(&d.name).is_none() && !removed.iter().any(|r| r.name == d.name))
        {
            let containers = self.live.project(&d.name);
            let (state, health) = aggregate(&containers, d.wanted, true, engine_down);
            let state = if keep { UNLISTED.to_string() } else { state };
            rows.push(ServiceRow {
                name: d.name.clone(),
                state,
                health,
                deployed_commit: d.commit.clone(),
                config_hash: d.config_hash.clone(),
                error: if keep {
                    String::new()
                } else {
                    format!("left the config; {}", d.error).trim_end_matches("; ").to_string()
                },
                containers: containers.iter().map(|c| row(c, now)).collect(),
            });
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn rec(name: &str, commit: &str) -> StackRecord {
        StackRecord {
            name: name.into(),
            commit: commit.into(),
            tree: "t".into(),
            deployed_unix: 1,
            wanted: true,
            error: String::new(),
            config_hash: String::new(),
        }
    }

    #[test]
    fn stacks_leave_when_dropped_from_the_config_or_the_repository() {
        let text = "state_dir = \"s\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n\
            key = \"a.key\"\n[stacks]\nrepo = \"r\"\ncheckout_dir = \"co\"\n[hub]\nstack = \"proxy\"\n\
            network = \"hub\"\ndomain = \"lab.test\"\naddress = \"10.0.0.20\"\n\
            [[services]]\nname = \"web\"\n[[services]]\nname = \"wiki\"\n";
        let cfg = Config::parse(Path::new("/x.toml"), text).unwrap();
        let deployed = [
            rec("proxy", "c1"),
            rec("web", "c1"),
            rec("wiki", "c1"),
            rec("old", "c1"),
            rec("gone", "c1"),
            rec("never", ""),
        ];
        let trees: BTreeMap<String, String> =
            ["proxy", "web", "old"].iter().map(|n| (n.to_string(), "t".to_string())).collect();
        let removed: BTreeSet<String> = ["gone".to_string()].into();
        let got = leaving(&deployed, &removed, &cfg, "0123456789abcdef", &trees);
        assert_eq!(
            got,
            [
                ("wiki".to_string(), "its directory left the repository at commit 0123456789ab".to_string()),
                ("old".to_string(), "no longer in [[services]]".to_string()),
            ],
            "never deployed and already removed stacks are not taken down again"
        );
    }
}
