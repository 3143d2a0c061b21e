//! The lab as separate machines on a network (issue 7, items 1 and 2): every layer in its own network namespace,
//! joined by a small LAN on 10.213.X.0/24 that exists only inside this machine (`fixtures::netns`), everything real:
//! the agent binaries, mTLS from a per-test PKI, `dig`, dockerd and docker-compose, QEMU, `labctl`.
//!
//! Docker runs in the root namespace and publishes its ports there, so **the root namespace plays the Services VM**:
//! the services-agent runs in it, listening on the root namespace's LAN address `10.213.X.1` (port 0). The dns-agent,
//! the host-agent, labctl and a client (`dig`, HTTP) each run in a namespace of their own (`ip netns exec`), the
//! agents listening on their namespace's LAN address (not `0.0.0.0`, so the logged `listening on` address is the one
//! to dial) on their standard ports (7442 and 53, 7441), which are theirs alone in their namespace. Every call between
//! layers crosses the LAN by IP, with certificates naming those IPs; nothing crosses on 127.0.0.1.
//!
//! Covered: the services-agent deploys a hub and two apps from a Git repository and registers their names in the
//! dns-agent; the client resolves them with `dig` and reaches each app *through the hub* by name (the hub is
//! busybox `httpd` with a CGI script proxying `Host: NAME.DOMAIN` to the alias NAME on the hub network); `labctl
//! status` sees all three agents healthy; the host-agent backs up a QEMU VM whose guest is the services-agent (the
//! backup lease crosses the LAN). Then each layer goes down in turn: the dns-agent (services keep running and
//! serving, registration catches up when it returns), the services-agent (every name still resolves, the apps
//! still answer), and a cut cable (an error row in `labctl status`, healthy again once restored).
//! Not here: the host-agent killed mid-backup (`tests/host.rs` covers it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use strata_tests::fixtures::docker::{DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::git::GitRepo;
use strata_tests::fixtures::netns::{Lan, Link, Netns};
use strata_tests::fixtures::{cmd, unique_suffix, wait_until};
use strata_tests::harness::{base_config_on, bin, AgentKind, AgentProc, Pki};

const DOMAIN: &str = "svc.test";
const DNS_GRPC_PORT: u16 = 7442;
const HOST_GRPC_PORT: u16 = 7441;
const BUSYBOX: &str = "/bin/busybox";

/// The hub's CGI "proxy": `Host: NAME.DOMAIN` → `http://NAME:8080/` on the hub network (busybox `httpd` runs
/// `cgi-bin/index.cgi` for `/` when there is no index.html).
const HUB_CGI: &str = "#!/bin/sh\nname=${HTTP_HOST%%.*}\necho \"Content-Type: text/plain\"\necho\n\
                       wget -q -O - \"http://$name:8080/\" 2>&1\n";

// ---------------------------------------------------------------------------------------------------------------
// The stacks repository and the Docker leftovers.

/// The hub: publishes its port on the Services VM's LAN address only, proxies by name to the spokes.
fn hub_compose(hub_net: &str, publish_on: Ipv4Addr) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  proxy:\n    image: {TEST_IMAGE_TAG}\n    \
         command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM INT; httpd -f -p 8080 -h /hub & wait\"]\n    \
         ports: [\"{publish_on}::8080\"]\n    volumes: [\"./cgi-bin:/hub/cgi-bin:ro\"]\n    networks: [hub]\n\
         networks:\n  hub:\n    name: {hub_net}\n"
    )
}

/// A spoke answering `NAME` over HTTP, known as NAME on the hub network.
fn spoke_compose(hub_net: &str, name: &str) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  web:\n    image: {TEST_IMAGE_TAG}\n    \
         command: [\"/bin/sh\", \"-c\", \"mkdir -p /w && echo {name} > /w/index.html; trap 'exit 0' TERM INT; \
         httpd -f -p 8080 -h /w & wait\"]\n    networks:\n      default:\n      hub:\n        aliases: [{name}]\n\
         networks:\n  hub:\n    external: true\n    name: {hub_net}\n"
    )
}

/// Removes every container and network of the test's compose projects on Drop.
struct DockerCleanup {
    engine: DockerEngine,
    prefix: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let filter = format!("name={}-", self.prefix);
        // A deploy may still be running (a `docker-compose up` of a killed agent): remove until nothing is left.
        let gone = wait_until(Duration::from_secs(30), || {
            let ids = self.engine.docker(["ps", "-aq", "--filter", &filter]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                return true;
            }
            let _ = self.engine.docker(["rm", "-f", "-v"].into_iter().chain(ids));
            false
        });
        if !gone {
            eprintln!("cleanup: containers of {} still present after 30 s", self.prefix);
        }
        let nets = self.engine.docker(["network", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
        for n in nets.split_whitespace().filter(|n| n.starts_with(&self.prefix)) {
            let _ = self.engine.docker(["network", "rm", n]);
        }
    }
}

/// The Docker side of a lab: the engine, the stacks repository, the compose project prefix.
struct Stacks {
    engine: DockerEngine,
    origin: GitRepo,
    prefix: String,
    _cleanup: DockerCleanup,
}

impl Stacks {
    fn name(&self, stack: &str) -> String {
        format!("{}-{stack}", self.prefix)
    }

    fn hub_net(&self) -> String {
        format!("{}-hubnet", self.prefix)
    }

    /// Whether Docker itself says the container of `stack` runs.
    fn running_in_docker(&self, stack: &str, service: &str) -> Result<bool> {
        let name = format!("{}_{service}_1", self.name(stack));
        Ok(self.engine.docker(["inspect", "--format", "{{.State.Running}}", &name])?.trim() == "true")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The lab: the LAN, one namespace per layer, the agents.

struct Lab {
    dns: Option<AgentProc>,
    host: Option<AgentProc>,
    services: Option<AgentProc>,
    /// The gRPC address of each agent in the inventory (kept when the agent is down: labctl must report it).
    urls: BTreeMap<&'static str, String>,
    stacks: Option<Stacks>,
    pki: Pki,
    dir: tempfile::TempDir,
    dns_link: Link,
    host_link: Link,
    _labctl_link: Link,
    _client_link: Link,
    dns_ns: Netns,
    host_ns: Netns,
    labctl_ns: Netns,
    client_ns: Netns,
    lan: Lan,
}

impl Lab {
    /// The LAN and the namespaces (dns, host, labctl, client), the PKI with each agent's LAN address in its
    /// certificate; with `docker`, the engine, the test image and a stacks repository.
    fn new(docker: bool) -> Result<Lab> {
        cmd::require("ip", "iproute2")?;
        cmd::require("dig", "dnsutils")?;
        cmd::require("timeout", "coreutils")?;
        if !Path::new(BUSYBOX).exists() {
            bail!("component `{BUSYBOX}` (Debian package `busybox-static`) is not installed; {}", cmd::DEPS_HINT);
        }
        let stacks = if docker {
            let engine = DockerEngine::ensure()?;
            TestImage::build(&engine, TEST_IMAGE_TAG)?;
            cmd::require("docker-compose", "docker-compose")?;
            cmd::require("git", "git")?;
            Some((engine, format!("st{}", unique_suffix())))
        } else {
            None
        };
        let lan = Lan::new()?;
        let (dns_ns, host_ns, labctl_ns, client_ns) =
            (Netns::new("dns")?, Netns::new("host")?, Netns::new("labctl")?, Netns::new("client")?);
        let dns_link = lan.attach(&dns_ns)?;
        let host_link = lan.attach(&host_ns)?;
        let labctl_link = lan.attach(&labctl_ns)?;
        let client_link = lan.attach(&client_ns)?;
        let pki = Pki::new()?;
        let ip = |a: Ipv4Addr| [IpAddr::V4(a)];
        pki.issue_for(Role::DnsAgent, "dns1", &ip(dns_link.addr()))?;
        pki.issue_for(Role::HostAgent, "host1", &ip(host_link.addr()))?;
        pki.issue_for(Role::ServicesAgent, "services1", &ip(lan.root_addr()))?;
        let dir = tempfile::Builder::new().prefix("strata-topology-").tempdir()?;
        let stacks = match stacks {
            Some((engine, prefix)) => Some(Stacks {
                origin: GitRepo::init(dir.path().join("origin"))?,
                _cleanup: DockerCleanup { engine: engine.clone(), prefix: prefix.clone() },
                engine,
                prefix,
            }),
            None => None,
        };
        Ok(Lab {
            dns: None,
            host: None,
            services: None,
            urls: BTreeMap::new(),
            stacks,
            pki,
            dir,
            dns_link,
            host_link,
            _labctl_link: labctl_link,
            _client_link: client_link,
            dns_ns,
            host_ns,
            labctl_ns,
            client_ns,
            lan,
        })
    }

    fn stacks(&self) -> &Stacks {
        self.stacks.as_ref().expect("a lab with docker")
    }

    fn services_agent(&self) -> &AgentProc {
        self.services.as_ref().expect("services-agent started")
    }

    fn common_config(&self, kind: AgentKind, ip: Ipv4Addr, grpc_port: u16, metrics_port: u16) -> Result<String> {
        let (cert, key) = self.pki.issue(kind.role(), kind.cert_name())?;
        let state = self.dir.path().join(kind.binary()).join("state");
        Ok(base_config_on(&state, &self.pki.ca(), &cert, &key, IpAddr::V4(ip))
            .replacen(&format!("{ip}:0"), &format!("{ip}:{grpc_port}"), 1)
            .replacen(&format!("{ip}:0"), &format!("{ip}:{metrics_port}"), 1))
    }

    fn write_config(&self, kind: AgentKind, text: &str) -> Result<PathBuf> {
        let dir = self.dir.path().join(kind.binary());
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.toml", kind.binary()));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the dns-agent in its namespace (gRPC on 7442, DNS on 53 of its LAN address) serving DOMAIN; the
    /// same config and state dir every time, so a restart comes back on the same address with the same records.
    fn start_dns(&mut self) -> Result<()> {
        let ip = self.dns_link.addr();
        let text = self.common_config(AgentKind::Dns, ip, DNS_GRPC_PORT, 9442)?
            + &format!(
                "[dns]\nlisten = [\"{ip}:53\"]\n[[zones]]\nname = \"{DOMAIN}\"\n\
                 [services_agents.services1]\nunder = \"{DOMAIN}\"\n"
            );
        let config = self.write_config(AgentKind::Dns, &text)?;
        let agent = AgentProc::start_with_prefix(&self.dns_ns.exec_prefix(), AgentKind::Dns, &config, &[])?;
        ensure!(agent.logged_addr("dns udp")? == (ip, 53).into(), "dns-agent udp address:\n{}", agent.logs());
        agent.wait_log(&format!("dns tcp listening on {ip}:53"), Duration::from_secs(5))?;
        ensure!(agent.grpc == (ip, DNS_GRPC_PORT).into(), "dns-agent grpc address {}", agent.grpc);
        self.urls.insert("dns", agent.url());
        self.dns = Some(agent);
        Ok(())
    }

    /// Starts the host-agent in its namespace (gRPC on 7441) with `vms` (`[[vms]]` tables).
    fn start_host(&mut self, vms: &str) -> Result<()> {
        let text = self.common_config(AgentKind::Host, self.host_link.addr(), HOST_GRPC_PORT, 9441)? + vms;
        let config = self.write_config(AgentKind::Host, &text)?;
        let agent = AgentProc::start_with_prefix(&self.host_ns.exec_prefix(), AgentKind::Host, &config, &[])?;
        self.urls.insert("host", agent.url());
        self.host = Some(agent);
        Ok(())
    }

    /// (Re)starts the services-agent in the root namespace on its LAN address (port 0). With stacks, its services
    /// are `(stack, dns names)` behind the hub, names registered in the dns-agent.
    fn start_services(&mut self, services: &[(&str, &[&str])]) -> Result<()> {
        if let Some(mut old) = self.services.take() {
            old.terminate()?;
        }
        let ip = self.lan.root_addr();
        let mut text = self.common_config(AgentKind::Services, ip, 0, 0)?;
        if let Some(st) = &self.stacks {
            text.push_str(&format!(
                "[stacks]\nrepo = {:?}\nbranch = \"main\"\ncheckout_dir = {:?}\npoll = \"1h\"\n\
                 [hub]\nstack = {:?}\nnetwork = {:?}\ndomain = \"{DOMAIN}\"\naddress = \"{ip}\"\n\
                 [dns]\nagent = \"https://{}:{DNS_GRPC_PORT}\"\n",
                st.origin.dir.display().to_string(),
                self.dir.path().join("checkout").display().to_string(),
                st.name("hub"),
                st.hub_net(),
                self.dns_link.addr(),
            ));
            for (stack, dns) in services {
                text.push_str(&format!("[[services]]\nname = {:?}\ndns = {dns:?}\n", st.name(stack)));
            }
        }
        let config = self.write_config(AgentKind::Services, &text)?;
        let agent = AgentProc::start_with_config(AgentKind::Services, &config)?;
        ensure!(agent.grpc.ip() == IpAddr::V4(ip), "services-agent grpc address {}", agent.grpc);
        self.urls.insert("services", agent.url());
        self.services = Some(agent);
        Ok(())
    }

    /// The hub and the apps (`app1`, `app2`: each answers its own name over HTTP) committed to the repository.
    fn commit_stacks(&self, apps: &[&str]) -> Result<()> {
        let st = self.stacks();
        let hub = st.name("hub");
        st.origin.write_mode(
            &format!("{hub}/docker-compose.yml"),
            &hub_compose(&st.hub_net(), self.lan.root_addr()),
            0o644,
        )?;
        st.origin.write_mode(&format!("{hub}/cgi-bin/index.cgi"), HUB_CGI, 0o755)?;
        for app in apps {
            st.origin.write_mode(
                &format!("{}/docker-compose.yml", st.name(app)),
                &spoke_compose(&st.hub_net(), app),
                0o644,
            )?;
        }
        st.origin.commit("a hub and its apps").map(drop)
    }

    /// Runs `labctl ARGS…` in the labctl namespace with an inventory naming every agent by its LAN address;
    /// returns (success, stdout, stderr).
    fn labctl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let (cert, key) = self.pki.issue(Role::Admin, "alice")?;
        let mut text = format!("ca = {:?}\ncert = {:?}\nkey = {:?}\n[agents]\n", self.pki.ca(), cert, key);
        for (k, url) in &self.urls {
            text.push_str(&format!("{k} = \"{url}\"\n"));
        }
        let inventory = self.dir.path().join("labctl.toml");
        std::fs::write(&inventory, text)?;
        let mut c = self.labctl_ns.command(bin("labctl")?);
        c.arg("--config").arg(&inventory).args(args);
        let out = cmd::output(&mut c)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `labctl --json status --timeout 2`: whether it exited 0, and each agent's row (health or error).
    fn status(&self) -> Result<(bool, BTreeMap<String, String>)> {
        let (ok, out, err) = self.labctl(&["--json", "--timeout", "2", "status"])?;
        let rows: Vec<Value> = serde_json::from_str(&out).with_context(|| format!("labctl status: {out}{err}"))?;
        let rows = rows
            .iter()
            .map(|r| {
                let agent = r["agent"].as_str().unwrap_or("?").to_string();
                let state = match r["error"].as_str() {
                    Some(e) => format!("error: {e}"),
                    None => r["health"].as_str().unwrap_or("?").to_string(),
                };
                (agent, state)
            })
            .collect();
        Ok((ok, rows))
    }

    /// Polls `labctl status` until every row is as `want` (`"healthy"` or `"error"` as a prefix) within `within`.
    fn wait_status(&self, want: &[(&str, &str)], within: Duration) -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + within;
        loop {
            let (ok, rows) = self.status()?;
            let matches = rows.len() == want.len()
                && want.iter().all(|(a, w)| rows.get(*a).is_some_and(|s| s.starts_with(w)))
                && ok == want.iter().all(|(_, w)| *w == "healthy");
            if matches {
                return Ok(rows);
            }
            if Instant::now() > deadline {
                bail!("labctl status: want {want:?} within {within:?}, got {rows:?} (exit ok: {ok})");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `labctl --json services ls` from the labctl namespace: name → (state, container ids).
    fn services_ls(&self) -> Result<BTreeMap<String, (String, Vec<String>)>> {
        let (_, out, err) = self.labctl(&["--json", "services", "ls"])?;
        let rows: Vec<Value> = serde_json::from_str(&out).with_context(|| format!("labctl services ls: {out}{err}"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let ids = r["containers"]
                    .as_array()
                    .map(|cs| cs.iter().filter_map(|c| c["id"].as_str().map(String::from)).collect())
                    .unwrap_or_default();
                (r["name"].as_str().unwrap_or("?").to_string(), (r["state"].as_str().unwrap_or("?").to_string(), ids))
            })
            .collect())
    }

    /// Waits until every stack in `stacks` is listed as running; returns the listing.
    fn wait_running(&self, stacks: &[&str], within: Duration) -> Result<BTreeMap<String, (String, Vec<String>)>> {
        let deadline = Instant::now() + within;
        loop {
            let ls = self.services_ls()?;
            let st = self.stacks();
            if stacks
                .iter()
                .all(|s| ls.get(&st.name(s)).is_some_and(|(state, ids)| state == "running" && !ids.is_empty()))
            {
                return Ok(ls);
            }
            if Instant::now() > deadline {
                bail!(
                    "stacks {stacks:?} not running within {within:?}: {ls:?}\nservices-agent log:\n{}",
                    self.services_agent().logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `dig @DNS NAME.DOMAIN A +short` from the client namespace.
    fn dig(&self, name: &str) -> Result<Vec<String>> {
        let mut c = self.client_ns.command("dig");
        c.arg(format!("@{}", self.dns_link.addr())).args([
            "+short",
            "+time=1",
            "+tries=1",
            &format!("{name}.{DOMAIN}"),
            "A",
        ]);
        let out = cmd::run(&mut c)?;
        Ok(out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
    }

    /// Polls `dig` until NAME resolves to `want` (a timeout counts as a miss).
    fn wait_dig(&self, name: &str, want: &[String], within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.dig(name);
            if got.as_ref().is_ok_and(|g| g == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("dig {name}.{DOMAIN} from the client: want {want:?} within {within:?}, got {got:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The hub's published address as Docker reports it.
    fn hub_port(&self) -> Result<(String, u16)> {
        let st = self.stacks();
        let container = format!("{}_proxy_1", st.name("hub"));
        let out = st.engine.docker(["port", &container, "8080/tcp"])?;
        let line = out.lines().next().context("the hub publishes no port")?.trim().to_string();
        let (ip, port) = line.rsplit_once(':').with_context(|| format!("docker port: {line}"))?;
        Ok((ip.to_string(), port.parse()?))
    }

    /// An HTTP GET of `http://ADDR:PORT/` with `Host: NAME.DOMAIN` from the client namespace (busybox wget; its
    /// own -T option crashes busybox-static, so `timeout` bounds it).
    fn http(&self, addr: &str, port: u16, name: &str) -> Result<String> {
        let mut c = Command::new("timeout");
        c.args(["10", "ip", "netns", "exec", self.client_ns.name(), BUSYBOX, "wget", "-q", "-O", "-", "--header"])
            .arg(format!("Host: {name}.{DOMAIN}"))
            .arg(format!("http://{addr}:{port}/"));
        Ok(cmd::run(&mut c)?.trim().to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The agents go first (their logs print on failure), then a QEMU the host-agent started, then the rest.
        self.host = None;
        self.dns = None;
        self.services = None;
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("host-agent/state/qemu/lab.pid")) {
            let pid = pid.trim().to_string();
            let _ = Command::new("kill").args(["-9", &pid]).status();
            wait_until(Duration::from_secs(5), || !alive(&pid));
        }
    }
}

/// Whether process `pid` runs (a zombie nobody reaped, `Z`, does not).
fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
    !state.is_empty() && state != "Z" && state != "X"
}

fn addrs(a: impl ToString) -> Vec<String> {
    vec![a.to_string()]
}

// ---------------------------------------------------------------------------------------------------------------
// Item 1: the topology.

#[test]
fn across_namespaces_names_resolve_the_hub_routes_to_each_app_and_every_agent_is_healthy() -> Result<()> {
    let started = Instant::now();
    cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    cmd::require("qemu-img", "qemu-utils")?;
    let mut lab = Lab::new(true)?;
    lab.commit_stacks(&["app1", "app2"])?;
    lab.start_dns()?;
    lab.start_services(&[("app1", &["app1"]), ("app2", &["app2"])])?;

    // The agent syncs at start: the hub and both apps run (seen from the labctl namespace).
    lab.wait_running(&["hub", "app1", "app2"], Duration::from_secs(90))?;
    // The names were registered across the LAN (services-agent → dns-agent over mTLS) and resolve from the client.
    let hub_addr = lab.lan.root_addr();
    lab.wait_dig("app1", &addrs(hub_addr), Duration::from_secs(20))?;
    lab.wait_dig("app2", &addrs(hub_addr), Duration::from_secs(5))?;
    assert_eq!(lab.dig("nothing-here")?, Vec::<String>::new());
    // The dns-agent saw the services-agent's certificate, calling from the Services VM's LAN address.
    let dns_log = lab.dns.as_ref().expect("started").logs();
    let from_services = format!("{hub_addr}:");
    ensure!(
        dns_log.lines().any(|l| l.contains("authz: allow")
            && l.contains("UpsertRecord")
            && l.contains("services-agent/services1")
            && l.contains(&from_services)),
        "no UpsertRecord from the services-agent at {hub_addr} in the dns-agent log:\n{dns_log}"
    );

    // The hub publishes on the Services VM's LAN address only; the client reaches each app through it by name.
    let (published, port) = lab.hub_port()?;
    assert_eq!(published, hub_addr.to_string());
    let resolved = lab.dig("app1")?.remove(0);
    assert_eq!(lab.http(&resolved, port, "app1")?, "app1");
    assert_eq!(lab.http(&resolved, port, "app2")?, "app2");

    // The host-agent backs up a QEMU VM whose guest is the services-agent: the lease crosses the LAN (require_guest:
    // without the lease the backup fails).
    let vm = lab.dir.path().join("vms/services");
    std::fs::create_dir_all(&vm)?;
    cmd::run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(vm.join("disk.qcow2")).arg("16M"))?;
    std::fs::write(vm.join("vm.toml"), "memory_mb = 128\ncpus = 1\ndisks = [\"disk.qcow2\"]\n")?;
    let target = lab.dir.path().join("backups");
    std::fs::create_dir(&target)?;
    let vms = format!(
        "[[vms]]\nname = \"lab\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"suspend\"\nengine = \"rsync\"\n\
         target = {:?}\nshutdown_timeout = \"2s\"\nguest = \"{}\"\nrequire_guest = true\n",
        vm.display().to_string(),
        target.display().to_string(),
        lab.services_agent().url(),
    );
    lab.start_host(&vms)?;

    // labctl, from its own namespace, sees all three agents healthy.
    let rows =
        lab.wait_status(&[("dns", "healthy"), ("host", "healthy"), ("services", "healthy")], Duration::from_secs(10))?;
    eprintln!("labctl status: {rows:?}");

    let (ok, out, err) = lab.labctl(&["vm", "start", "lab"])?;
    ensure!(ok, "labctl vm start: {out}{err}");
    let (ok, out, err) = lab.labctl(&["vm", "backup", "lab"])?;
    ensure!(
        ok && out.contains("backed up as"),
        "labctl vm backup: {out}{err}\nhost-agent log:\n{}",
        lab.host.as_ref().unwrap().logs()
    );
    lab.services_agent().wait_log("host backup lease taken", Duration::from_secs(5))?;
    lab.services_agent().wait_log("host backup lease released", Duration::from_secs(5))?;
    let (ok, out, err) = lab.labctl(&["vm", "ls"])?;
    ensure!(ok && out.contains("running"), "the VM runs again after its backup: {out}{err}");
    eprintln!("topology test: {:?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Item 2: each layer keeps working when another is down.

#[test]
fn services_outlive_the_dns_agent_and_names_outlive_the_services_agent() -> Result<()> {
    let started = Instant::now();
    let mut lab = Lab::new(true)?;
    lab.commit_stacks(&["app1", "app2"])?;
    lab.start_dns()?;
    lab.start_services(&[("app1", &["app1"]), ("app2", &["app2"])])?;
    let before = lab.wait_running(&["hub", "app1", "app2"], Duration::from_secs(90))?;
    let hub = addrs(lab.lan.root_addr());
    lab.wait_dig("app1", &hub, Duration::from_secs(20))?;
    lab.wait_dig("app2", &hub, Duration::from_secs(5))?;
    let (_, port) = lab.hub_port()?;
    let hub_ip = lab.lan.root_addr().to_string();
    let st = |lab: &Lab, s: &str| lab.stacks().name(s);

    // Phase 1: the dns-agent dies. The services keep running and serving, the services-agent keeps answering.
    lab.dns.as_mut().unwrap().kill()?;
    ensure!(lab.dig("app1").is_err(), "the dns-agent is down: dig must time out");
    let ls = lab.services_ls()?;
    for s in ["hub", "app1", "app2"] {
        assert_eq!(ls[&st(&lab, s)], before[&st(&lab, s)], "{s} untouched while the dns-agent is down");
    }
    assert!(lab.stacks().running_in_docker("app1", "web")? && lab.stacks().running_in_docker("hub", "proxy")?);
    assert_eq!(lab.http(&hub_ip, port, "app1")?, "app1");
    lab.wait_status(&[("dns", "error"), ("services", "healthy")], Duration::from_secs(10))?;

    // A name is added while the dns-agent is down (a config change: the services-agent restarts). Nothing is
    // redeployed, the name is pending.
    lab.start_services(&[("app1", &["app1"]), ("app2", &["app2", "wiki"])])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = lab.labctl(&["--json", "--timeout", "2", "status"])?;
        if out.contains("dns names pending") {
            break;
        }
        ensure!(Instant::now() < deadline, "the services-agent never reported its names pending: {out}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let ls = lab.wait_running(&["hub", "app1", "app2"], Duration::from_secs(30))?;
    for s in ["hub", "app1", "app2"] {
        assert_eq!(ls[&st(&lab, s)].1, before[&st(&lab, s)].1, "{s}: same containers across the agent's restart");
    }

    // The dns-agent comes back on the same address and state: the old names answer at once, the new one catches up.
    let down = Instant::now();
    lab.start_dns()?;
    assert_eq!(lab.dig("app1")?, hub, "registered names survive the dns-agent's restart");
    lab.wait_dig("wiki", &hub, Duration::from_secs(20))?;
    eprintln!("registration caught up {:?} after the dns-agent restarted", down.elapsed());
    lab.wait_status(&[("dns", "healthy"), ("services", "healthy")], Duration::from_secs(10))?;

    // Phase 2: the services-agent dies. Every registered name still resolves, and the apps still answer through
    // the hub (the containers do not need their agent).
    lab.services.as_mut().unwrap().kill()?;
    for name in ["app1", "app2", "wiki"] {
        assert_eq!(lab.dig(name)?, hub, "{name} while the services-agent is down");
    }
    assert_eq!(lab.http(&hub_ip, port, "app2")?, "app2");
    lab.wait_status(&[("dns", "healthy"), ("services", "error")], Duration::from_secs(10))?;
    eprintln!("independence test: {:?}", started.elapsed());
    Ok(())
}

#[test]
fn a_cut_link_is_an_error_row_in_labctl_status_until_it_is_restored() -> Result<()> {
    let started = Instant::now();
    // No stacks, but the services-agent watches the engine: without it the agent is degraded, not healthy.
    DockerEngine::ensure()?;
    let mut lab = Lab::new(false)?;
    lab.start_dns()?;
    lab.start_host("")?;
    lab.start_services(&[])?;
    let all_healthy = [("dns", "healthy"), ("host", "healthy"), ("services", "healthy")];
    lab.wait_status(&all_healthy, Duration::from_secs(10))?;

    // The dns-agent's cable is pulled at the switch: its row is an error, the others stay healthy, the exit is
    // non-zero; the client cannot reach its DNS either.
    lab.dns_link.cut()?;
    let rows =
        lab.wait_status(&[("dns", "error"), ("host", "healthy"), ("services", "healthy")], Duration::from_secs(10))?;
    eprintln!("with the dns-agent's link cut: {rows:?}");
    ensure!(lab.dig("anything").is_err(), "dig must time out while the link is cut");
    let pid = lab.dns.as_ref().expect("started").pid().to_string();
    ensure!(alive(&pid), "the dns-agent itself runs on");

    // Plugged back in: healthy again, without restarting anything.
    lab.dns_link.restore()?;
    lab.wait_status(&all_healthy, Duration::from_secs(15))?;
    assert_eq!(lab.dig("anything")?, Vec::<String>::new());
    eprintln!("cut-link test: {:?}", started.elapsed());
    Ok(())
}
