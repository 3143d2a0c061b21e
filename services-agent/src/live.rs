//! The in-memory picture of the engine, fed by `docker::watch`: compose containers, networks, and whether the engine
//! answers. Status and audit read it without touching Docker. Must not know bollard, proto/tonic, git or compose.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::model::{ContainerInfo, NetworkInfo};

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    networks: Vec<NetworkInfo>,
    /// `None` while the engine answers; the reason otherwise.
    engine_error: Option<String>,
    api_version: String,
    /// False until the first snapshot arrived.
    seeded: bool,
    /// False until the watcher's first connection attempt ended (a snapshot or an error).
    attempted: bool,
}

/// Shared, cheap to read. Writers are the watcher and (for immediate feedback) the deploy paths.
#[derive(Debug)]
pub(crate) struct Live {
    state: RwLock<State>,
    /// Woken (waiters only) each time a snapshot is taken: the engine (re)appeared.
    connected: tokio::sync::Notify,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            state: RwLock::new(State { engine_error: Some("not connected yet".into()), ..State::default() }),
            connected: tokio::sync::Notify::new(),
        }
    }
}

impl Live {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything with a fresh snapshot; the engine answers.
    pub(crate) fn reset(&self, containers: Vec<ContainerInfo>, networks: Vec<NetworkInfo>, api_version: String) {
        let mut s = self.write();
        s.containers = containers.into_iter().map(|c| (c.id.clone(), c)).collect();
        s.networks = networks;
        s.engine_error = None;
        s.api_version = api_version;
        s.seeded = true;
        s.attempted = true;
        drop(s);
        self.connected.notify_waiters();
    }

    /// Resolves at the next snapshot (the engine answered again after being away).
    pub(crate) async fn reconnected(&self) {
        self.connected.notified().await
    }

    pub(crate) fn upsert(&self, c: ContainerInfo) {
        self.write().containers.insert(c.id.clone(), c);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.write().containers.remove(id);
    }

    pub(crate) fn set_networks(&self, networks: Vec<NetworkInfo>) {
        self.write().networks = networks;
    }

    pub(crate) fn set_engine_down(&self, error: String) {
        let mut s = self.write();
        s.engine_error = Some(error);
        s.attempted = true;
    }

    /// True once the watcher tried the engine at least once (whatever the outcome).
    pub(crate) fn attempted(&self) -> bool {
        self.read().attempted
    }

    pub(crate) fn has_container(&self, id: &str) -> bool {
        self.read().containers.contains_key(id)
    }

    pub(crate) fn container_count(&self) -> usize {
        self.read().containers.len()
    }

    /// Why the engine does not answer, if it does not.
    pub(crate) fn engine_error(&self) -> Option<String> {
        self.read().engine_error.clone()
    }

    /// True once a snapshot was taken (the engine answered at least once).
    pub(crate) fn seeded(&self) -> bool {
        self.read().seeded
    }

    /// The containers of one compose project, by name.
    pub(crate) fn project(&self, project: &str) -> Vec<ContainerInfo> {
        let mut v: Vec<ContainerInfo> =
            self.read().containers.values().filter(|c| c.project == project).cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every compose container and every network.
    pub(crate) fn snapshot(&self) -> (Vec<ContainerInfo>, Vec<NetworkInfo>) {
        let s = self.read();
        (s.containers.values().cloned().collect(), s.networks.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, project: &str, name: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: name.into(),
            project: project.into(),
            service: "web".into(),
            image: "img".into(),
            state: "running".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_update_the_picture() {
        let live = Live::default();
        assert_eq!(live.engine_error().as_deref(), Some("not connected yet"));
        assert!(!live.attempted());
        live.reset(vec![c("1", "a", "a_web_2"), c("2", "b", "b_web_1")], vec![], "1.41".into());
        assert!(live.engine_error().is_none() && live.seeded());
        live.upsert(c("3", "a", "a_web_1"));
        let names: Vec<String> = live.project("a").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["a_web_1", "a_web_2"]);
        live.remove("1");
        assert_eq!(live.project("a").len(), 1);
        live.set_engine_down("gone".into());
        assert_eq!(live.engine_error().as_deref(), Some("gone"));
        assert_eq!(live.container_count(), 2, "the last known containers stay visible");
    }
}
