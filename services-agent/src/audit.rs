//! The hub-and-spoke audit: a pure function of the configured services and the containers and networks the engine
//! has. Each violation names the container and the rule. Must not know bollard, proto/tonic, git or compose.

use crate::config::{Hub, Service};
use crate::model::{ContainerInfo, NetworkInfo, Violation};

/// Audits the containers of the configured services (other containers are not ours to judge).
///
/// Rules (each may be waived per service with `allow = ["RULE"]`):
/// * `foreign-network`: a container is attached only to networks of its own project and the hub network;
/// * `published-port`: only the hub stack publishes host ports;
/// * `host-network`: no `network_mode: host`;
/// * `privileged`: no privileged container;
/// * `docker-socket`: no bind mount of the Docker socket.
pub fn audit(
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
        Service { name: name.into(), dns: vec![], allow: allow.iter().map(|s| s.to_string()).collect(), backup: None }
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
