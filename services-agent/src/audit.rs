//! The audit, in two parts, both pure functions: the deploy gate ([`gate`]), which judges what a stack *would* run
//! (compose's resolved config) before anything is stopped or started, and the hub-and-spoke audit ([`audit`]) of the
//! containers and networks the engine has. Each violation names the container (or compose service) and the rule.
//! Must not know bollard, proto/tonic, git, or how compose is run.

use std::path::{Path, PathBuf};

use crate::config::{Hub, Service};
use crate::model::{ContainerInfo, NetworkInfo, PlannedService, Violation};

/// What the gate needs besides the plan: where a stack may bind-mount from.
#[derive(Debug, Clone)]
pub(crate) struct GateRoots {
    /// `[stacks] bind_roots`, symlinks resolved.
    pub roots: Vec<PathBuf>,
    /// The stack's own directory in the checkout (`./data` binds), symlinks resolved.
    pub stack_dir: PathBuf,
}

/// The deploy gate: the rules that give a container the host (root on the VM), refused unless the service's
/// `allow` names them. `binds[].real` must hold the resolved path (symlinks followed by the caller).
///
/// * `privileged`: `privileged: true`;
/// * `host-network`, `host-pid`, `host-ipc`: `network_mode`, `pid`, `ipc` set to `host`;
/// * `docker-socket`: a bind of a `docker.sock` (root on the host through the engine);
/// * `host-mount`: a bind of any other host path outside `[stacks] bind_roots` and the stack's own directory;
/// * `cap-add`: any `cap_add`;
/// * `devices`: any `devices`.
pub(crate) fn gate(svc: &Service, plan: &[PlannedService], roots: &GateRoots) -> Vec<Violation> {
    let mut out = Vec::new();
    for p in plan {
        let mut flag = |rule: &str, detail: String| {
            if !svc.allow.iter().any(|a| a == rule) {
                out.push(Violation { container: p.service.clone(), rule: rule.to_string(), detail });
            }
        };
        if p.privileged {
            flag("privileged", "privileged: true".into());
        }
        for (rule, key, value) in [
            ("host-network", "network_mode", &p.network_mode),
            ("host-pid", "pid", &p.pid),
            ("host-ipc", "ipc", &p.ipc),
        ] {
            if value == "host" {
                flag(rule, format!("{key}: host"));
            }
        }
        if !p.cap_add.is_empty() {
            flag("cap-add", format!("cap_add: {}", p.cap_add.join(", ")));
        }
        if !p.devices.is_empty() {
            flag("devices", format!("devices: {}", p.devices.join(", ")));
        }
        for b in &p.binds {
            let shown = if Path::new(&b.source) == b.real {
                b.source.clone()
            } else {
                format!("{} (really {})", b.source, b.real.display())
            };
            if b.real.file_name().is_some_and(|n| n == "docker.sock") {
                flag("docker-socket", format!("mounts the Docker socket {shown}"));
            } else if !b.real.starts_with(&roots.stack_dir) && !roots.roots.iter().any(|r| b.real.starts_with(r)) {
                let allowed: Vec<String> = roots.roots.iter().map(|r| r.display().to_string()).collect();
                flag(
                    "host-mount",
                    format!(
                        "mounts host path {shown}, outside the stack's directory and [stacks] bind_roots ({})",
                        if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                    ),
                );
            }
        }
    }
    out.sort();
    out
}

/// Audits the containers of the configured services (other containers are not ours to judge).
///
/// Rules (each may be waived per service with `allow = ["RULE"]`):
/// * `foreign-network`: a container is attached only to networks of its own project and the hub network;
/// * `published-port`: only the hub stack publishes host ports;
/// * `host-network`: no `network_mode: host`;
/// * `privileged`: no privileged container;
/// * `docker-socket`: no bind mount of the Docker socket.
pub(crate) fn audit(
    services: &[Service],
    hub: &Hub,
    containers: &[ContainerInfo],
    networks: &[NetworkInfo],
) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in containers {
        let Some(svc) = services.iter().find(|s| s.name == c.project) else { continue };
        let allowed = |rule: &str| svc.allow.iter().any(|a| a == rule);
        let mut flag = |rule: &str, detail: String| {
            if !allowed(rule) {
                out.push(Violation { container: c.name.clone(), rule: rule.to_string(), detail });
            }
        };
        for n in &c.networks {
            if *n == hub.network || n == "none" || (n == "host" && c.network_mode == "host") {
                continue;
            }
            match networks.iter().find(|x| x.name == *n).and_then(|x| x.project.as_deref()) {
                Some(p) if p == c.project => {}
                Some(p) => flag(
                    "foreign-network",
                    format!(
                        "attached to network {n} of stack {p}; a spoke joins only its own networks and {}",
                        hub.network
                    ),
                ),
                None => flag(
                    "foreign-network",
                    format!(
                        "attached to network {n}, which belongs to no stack; only its own networks and {}",
                        hub.network
                    ),
                ),
            }
        }
        if c.project != hub.stack && !c.published.is_empty() {
            flag(
                "published-port",
                format!("publishes {}; only the hub stack {} publishes host ports", c.published.join(", "), hub.stack),
            );
        }
        if c.network_mode == "host" {
            flag("host-network", "runs with network_mode: host".to_string());
        }
        if c.privileged {
            flag("privileged", "runs privileged".to_string());
        }
        for b in &c.binds {
            if b.ends_with("/docker.sock") {
                flag("docker-socket", format!("mounts the Docker socket {b}"));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub { stack: "proxy".into(), network: "hub".into(), domain: "lab.test".into(), address: [10, 0, 0, 20].into() }
    }

    fn svc(name: &str, allow: &[&str]) -> Service {
        Service { name: name.into(), allow: allow.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    fn c(project: &str, networks: &[&str]) -> ContainerInfo {
        ContainerInfo {
            id: format!("{project}-id"),
            name: format!("{project}_web_1"),
            project: project.into(),
            service: "web".into(),
            image: "img".into(),
            state: "running".into(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
            network_mode: networks.first().map(|s| s.to_string()).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn nets() -> Vec<NetworkInfo> {
        [("hub", Some("proxy")), ("proxy_default", Some("proxy")), ("a_default", Some("a")), ("b_default", Some("b"))]
            .into_iter()
            .map(|(n, p)| NetworkInfo { name: n.into(), project: p.map(String::from) })
            .collect()
    }

    fn roots() -> GateRoots {
        GateRoots { roots: vec![PathBuf::from("/tank/appdata")], stack_dir: PathBuf::from("/srv/stacks/a") }
    }

    fn bind(source: &str, real: &str) -> crate::model::PlannedBind {
        crate::model::PlannedBind { source: source.into(), real: real.into() }
    }

    #[test]
    fn the_gate_refuses_what_gives_a_container_the_host() {
        let clean = PlannedService {
            service: "web".into(),
            binds: vec![bind("/srv/stacks/a/data", "/srv/stacks/a/data"), bind("/tank/appdata/a", "/tank/appdata/a")],
            ..Default::default()
        };
        assert_eq!(gate(&svc("a", &[]), std::slice::from_ref(&clean), &roots()), vec![]);
        let bad = PlannedService {
            service: "web".into(),
            privileged: true,
            network_mode: "host".into(),
            pid: "host".into(),
            ipc: "host".into(),
            cap_add: vec!["SYS_ADMIN".into()],
            devices: vec!["/dev/kvm:/dev/kvm".into()],
            binds: vec![
                bind("/etc", "/etc"),
                bind("/srv/stacks/a/link", "/etc"),
                bind("/tank/appdata-evil", "/tank/appdata-evil"),
                bind("/var/run/docker.sock", "/run/docker.sock"),
            ],
        };
        let v = gate(&svc("a", &[]), std::slice::from_ref(&bad), &roots());
        let rules: Vec<&str> = v.iter().map(|v| v.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "cap-add",
                "devices",
                "docker-socket",
                "host-ipc",
                "host-mount",
                "host-mount",
                "host-mount",
                "host-network",
                "host-pid",
                "privileged"
            ]
        );
        assert!(v.iter().all(|v| v.container == "web"));
        let details: Vec<&str> = v.iter().filter(|v| v.rule == "host-mount").map(|v| v.detail.as_str()).collect();
        assert!(
            details[0].starts_with("mounts host path /etc,") && details[0].contains("(/tank/appdata)"),
            "{details:?}"
        );
        assert!(details.iter().any(|d| d.contains("/srv/stacks/a/link (really /etc)")), "{details:?}");
        // Every rule waived by the service's allow list.
        let all =
            ["privileged", "host-network", "host-pid", "host-ipc", "cap-add", "devices", "host-mount", "docker-socket"];
        assert_eq!(gate(&svc("a", &all), &[bad], &roots()), vec![]);
    }

    #[test]
    fn a_correct_layout_is_clean() {
        let services = [svc("proxy", &[]), svc("a", &[]), svc("b", &[])];
        let mut proxy = c("proxy", &["hub", "proxy_default"]);
        proxy.published = vec!["0.0.0.0:443->443/tcp".into()];
        let containers = [proxy, c("a", &["a_default", "hub"]), c("b", &["b_default", "hub"]), c("other", &["x"])];
        assert_eq!(audit(&services, &hub(), &containers, &nets()), vec![]);
    }

    #[test]
    fn each_violation_names_container_and_rule() {
        let services = [svc("proxy", &[]), svc("a", &[]), svc("b", &[]), svc("c", &["docker-socket"])];
        let mut b = c("b", &["a_default", "b_default", "hub"]);
        b.published = vec!["127.0.0.1:8080->80/tcp".into()];
        b.binds = vec!["/var/run/docker.sock".into()];
        b.privileged = true;
        let mut host = c("a", &["host"]);
        host.network_mode = "host".into();
        let mut allowed = c("c", &["hub"]);
        allowed.binds = vec!["/run/docker.sock".into()];
        let v = audit(&services, &hub(), &[b, host, allowed], &nets());
        let got: Vec<(&str, &str)> = v.iter().map(|v| (v.container.as_str(), v.rule.as_str())).collect();
        assert_eq!(
            got,
            [
                ("a_web_1", "host-network"),
                ("b_web_1", "docker-socket"),
                ("b_web_1", "foreign-network"),
                ("b_web_1", "privileged"),
                ("b_web_1", "published-port"),
            ]
        );
        assert!(v[2].detail.contains("network a_default of stack a"), "{}", v[2].detail);
        assert!(v[4].detail.contains("127.0.0.1:8080->80/tcp"), "{}", v[4].detail);
    }
}
