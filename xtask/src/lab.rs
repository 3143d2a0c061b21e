//! The whole demo lab on this machine, shared by `cargo xtask demo` and `cargo xtask drill`: PKI, zfs-fuse pool, Borg
//! repos, a Git repo of stacks (hub `proxy`, spokes `app1`/`app2`), the three agents, a QEMU VM, one backup per layer;
//! cleaned up on Drop. Owns the lab's built-in defaults and lifecycle; must not know what the demo shows or what the
//! drill checks, nor any agent's internals (it drives them only through config files, labctl and gRPC).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use anyhow::{ensure, Context, Result};
use strata_proto::v1::host_client::HostClient;
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{HistoryEntry, HistoryRequest, ListServicesRequest, ListVmsRequest, Service, Vm};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::docker::{DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::{cmd, zfs::ZfsPool};
use strata_tests::harness::{self, AgentKind, AgentProc};

use crate::project_root;

/// The lab's DNS zone (also its PKI trust domain) and the hub network every spoke joins.
pub(crate) const ZONE: &str = "lab.home.arpa";
const HUB_NET: &str = "strata-lab-hub";
/// The spokes: (name, quiesce mode).
pub(crate) const APPS: [(&str, &str); 2] = [("app1", "stop"), ("app2", "pause")];
pub(crate) const VM_NAME: &str = "services-vm";
/// Label on every container of the lab; its value is the pid of the xtask that owns it.
const LAB_LABEL: &str = "org.strata.lab";

/// The hub's one route: `/cgi-bin/svc/APP/PATH` → `http://APP:8080/PATH` over the hub network (busybox httpd has
/// CGI but no proxy).
const ROUTER_CGI: &str = r#"#!/bin/sh
app=${PATH_INFO#/}; app=${app%%/*}; rest=${PATH_INFO#/$app}
case "$app" in app1|app2) ;; *) printf 'Status: 404 Not Found\r\n\r\nno such app\n'; exit 0;; esac
if wget -q -O /tmp/r.$$ "http://$app:8080${rest:-/}"; then
  printf 'Content-Type: application/octet-stream\r\n\r\n'; cat /tmp/r.$$
else
  printf 'Status: 502 Bad Gateway\r\n\r\n%s is not answering\n' "$app"
fi
rm -f /tmp/r.$$
"#;

/// An app: serves its dataset (/data) with httpd and writes a new note there every 10 s (never rewriting a file).
const APP_SCRIPT: &str = r#"trap 'exit 0' TERM INT
[ -f /data/index.html ] || echo "APP: served from its own ZFS dataset" > /data/index.html
[ -f /data/seed.bin ] || dd if=/dev/urandom of=/data/seed.bin bs=64k count=8 2>/dev/null
mkdir -p /data/notes
httpd -p 8080 -h /data
while true; do
  echo "APP note $(date -u +%FT%TZ)" > /data/notes/$(date -u +%Y%m%dT%H%M%S)-$RANDOM.txt
  sleep 10 & wait $!
done"#;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// From now on Ctrl-C (and SIGTERM) only sets a flag: long waits end with an error and the lab is cleaned up.
pub(crate) fn catch_signals() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                let _ = tx.send(false);
                return;
            };
            let _ = tx.send(true);
            loop {
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("\nlab: interrupted, cleaning up…");
            }
        });
    });
    ensure!(rx.recv().unwrap_or(false), "cannot catch Ctrl-C");
    Ok(())
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Polls `probe` every 250 ms until it holds; fails on timeout or Ctrl-C.
pub(crate) fn wait_for(what: &str, within: Duration, mut probe: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !probe() {
        ensure!(!interrupted(), "interrupted while waiting for {what}");
        ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

pub(crate) struct App {
    pub name: &'static str,
    pub dataset: String,
    pub mount: PathBuf,
    pub repo: BorgRepo,
}

pub(crate) struct LabVm {
    pub dir: PathBuf,
    /// A second QMP socket of our own (the agent keeps its own).
    pub qmp: PathBuf,
    /// sha256 of each disk file when its backup finished (the VM has no OS: nothing writes to them).
    pub hashes: Vec<(String, String)>,
}

pub(crate) struct Lab {
    pub dir: PathBuf,
    pub inventory: PathBuf,
    pub labctl: PathBuf,
    pub dns: SocketAddr,
    pub hub_port: u16,
    pub apps: Vec<App>,
    pub vm: LabVm,
    /// What each set-up phase took, in order; their sum is the set-up time.
    pub phases: Vec<(&'static str, Duration)>,
    pool: Option<ZfsPool>,
    vm_repo: Option<BorgRepo>,
    agents: Vec<AgentProc>,
    engine: Option<DockerEngine>,
    tls: Option<TlsMaterial>,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    /// Builds and starts the lab under `target/NAME`, does one backup at each layer, and returns it.
    pub(crate) fn up(name: &str) -> Result<Lab> {
        let dir = project_root().join("target").join(name);
        let mut lab = Lab {
            inventory: dir.join("labctl.toml"),
            labctl: harness::bin("labctl")?,
            dns: "127.0.0.1:0".parse()?,
            hub_port: 0,
            apps: Vec::new(),
            vm: LabVm { dir: dir.join("vms").join(VM_NAME), qmp: dir.join("vm.qmp"), hashes: Vec::new() },
            phases: Vec::new(),
            pool: None,
            vm_repo: None,
            agents: Vec::new(),
            engine: None,
            tls: None,
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            dir,
        };
        if let Err(e) = lab.build() {
            for a in lab.agents.iter().filter(|_| !interrupted()) {
                let log = a.logs();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("---- {} log (last lines) ----", a.kind.binary());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
            return Err(e);
        }
        Ok(lab)
    }

    pub(crate) fn setup_time(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }

    fn phase(&mut self, what: &'static str, f: impl FnOnce(&mut Lab) -> Result<()>) -> Result<()> {
        ensure!(!interrupted(), "interrupted");
        let t = Instant::now();
        f(self).with_context(|| format!("lab set-up, {what}"))?;
        self.phases.push((what, t.elapsed()));
        println!("lab: {what}: {:.1} s", t.elapsed().as_secs_f64());
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        self.phase("pki and leftovers", Lab::prepare)?;
        self.phase("zfs pool, datasets, borg repos", Lab::storage)?;
        self.phase("stacks repo and vm bundle", Lab::files)?;
        self.phase("agents", Lab::start_agents)?;
        self.phase("stacks up, names answer", Lab::stacks_up)?;
        self.phase("vm start", |l| {
            l.labctl(&["vm", "start", VM_NAME])?;
            wait_for("the vm running (QMP)", Duration::from_secs(30), || l.qmp_status().is_ok_and(|s| s == "running"))
        })?;
        self.phase("services backup --all", |l| {
            l.labctl(&["services", "backup", "--all"])?;
            for (app, _) in APPS {
                let h = l.history(app)?;
                ensure!(h.first().is_some_and(|e| e.kind == "backup" && e.result == "ok"), "{app}: history {h:?}");
            }
            Ok(())
        })?;
        self.phase("vm backup", |l| {
            l.labctl(&["vm", "backup", VM_NAME])?;
            l.vm.hashes = ["disk.qcow2", "data.raw"]
                .iter()
                .map(|d| Ok((d.to_string(), sha256(&l.vm.dir.join(d))?)))
                .collect::<Result<_>>()?;
            Ok(())
        })
    }

    /// Removes what a lab killed hard left behind (refusing while its owner lives), then makes the PKI.
    fn prepare(&mut self) -> Result<()> {
        let engine = DockerEngine::ensure()?;
        let ours = engine.docker(["ps", "-aq", "--filter", &format!("label={LAB_LABEL}")])?;
        for id in ours.split_whitespace() {
            let owner =
                engine.docker(["inspect", "--format", &format!("{{{{index .Config.Labels \"{LAB_LABEL}\"}}}}"), id])?;
            let owner = owner.trim();
            let alive = owner.parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            ensure!(!alive, "another lab (xtask pid {owner}) is running: stop it first");
        }
        self.engine = Some(engine);
        self.remove_containers();
        kill_vm(&self.dir);
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        }
        let pki = self.dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        labctl::pki::init(&pki, ZONE, false)?;
        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        for kind in AgentKind::ALL {
            labctl::pki::issue(&pki, &labctl::pki::IssueSpec::days(kind.role(), kind.cert_name(), &sans, 30), false)?;
        }
        labctl::pki::issue(&pki, &labctl::pki::IssueSpec::days(Role::Admin, "admin", &[], 30), false)?;
        self.tls = Some(TlsMaterial::load(&pki.join("ca.pem"), &pki.join("admin.pem"), &pki.join("admin.key"))?);
        Ok(())
    }

    /// One pool; its datasets and the repos one at a time (zfs-fuse dislikes parallel creation).
    fn storage(&mut self) -> Result<()> {
        let engine = self.engine.clone().context("engine")?;
        TestImage::build(&engine, TEST_IMAGE_TAG)?;
        let pool = self.pool.insert(ZfsPool::create()?);
        let secrets = self.dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        for (name, _) in APPS {
            let dataset = pool.create_dataset(&format!("apps/{name}"))?;
            let mount = pool.dataset_mountpoint(&format!("apps/{name}"));
            let pass = format!("lab passphrase of {name}");
            write_secret(&secrets.join(format!("{name}.pass")), &pass)?;
            self.apps.push(App { name, dataset, mount, repo: BorgRepo::init(&pass)? });
        }
        write_secret(&secrets.join("vm.pass"), "lab passphrase of the vm")?;
        self.vm_repo = Some(BorgRepo::init("lab passphrase of the vm")?);
        Ok(())
    }

    /// The Git repo of stacks (committed), and the VM bundle: a qcow2 system disk, a raw data disk of random bytes.
    fn files(&mut self) -> Result<()> {
        self.hub_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let repo = self.dir.join("stacks");
        let label = format!("{LAB_LABEL}={}", std::process::id());
        let hub = format!(
            "version: \"3.7\"\nservices:\n  proxy:\n    image: {TEST_IMAGE_TAG}\n    ports: [\"127.0.0.1:{}:8080\"]\n    \
             volumes: [\"./cgi-bin:/www/cgi-bin:ro\"]\n    networks: [hub]\n    labels: [\"{label}\"]\n\
             networks:\n  hub:\n    name: {HUB_NET}\n",
            self.hub_port
        );
        write(&repo.join("proxy/docker-compose.yml"), &hub)?;
        write(&repo.join("proxy/cgi-bin/svc"), ROUTER_CGI)?;
        std::fs::set_permissions(repo.join("proxy/cgi-bin/svc"), std::fs::Permissions::from_mode(0o755))?;
        for app in &self.apps {
            // Compose interpolates `$`: every `$` of the script is doubled.
            let script = APP_SCRIPT.replace("APP", app.name).replace('$', "$$");
            let spoke = format!(
                "version: \"3.7\"\nservices:\n  {name}:\n    image: {TEST_IMAGE_TAG}\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n    \
                 volumes: [{vol:?}]\n    networks: [default, hub]\n    labels: [\"{label}\"]\n    healthcheck:\n      \
                 test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/index.html\"]\n      \
                 interval: 1s\n      timeout: 2s\n      retries: 3\nnetworks:\n  hub:\n    external: true\n    name: {HUB_NET}\n",
                name = app.name,
                vol = format!("{}:/data", app.mount.display()),
            );
            write(&repo.join(format!("{}/docker-compose.yml", app.name)), &spoke)?;
        }
        let git = |args: &[&str]| {
            cmd::run(
                Command::new("git")
                    .args(["-c", "user.name=Strata Lab", "-c", "user.email=lab@strata.invalid", "-C"])
                    .arg(&repo)
                    .args(args),
            )
        };
        git(&["init", "-q", "-b", "main"])?;
        git(&["add", "-A"])?;
        git(&["commit", "-qm", "the lab: hub proxy, app1, app2"])?;

        let vm = &self.vm.dir;
        std::fs::create_dir_all(vm)?;
        cmd::run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(vm.join("disk.qcow2")).arg("64M"))?;
        let mut data = vec![0u8; 4 << 20];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
        std::fs::write(vm.join("data.raw"), data)?;
        let qmp = format!("unix:{},server=on,wait=off", self.vm.qmp.display());
        write(
            &vm.join("vm.toml"),
            &format!("memory_mb = 128\ncpus = 1\ndisks = [\"disk.qcow2\", \"data.raw\"]\nargs = [\"-qmp\", {qmp:?}]\n"),
        )
    }

    fn start_agents(&mut self) -> Result<()> {
        let (d, pki) = (self.dir.clone(), self.dir.join("pki"));
        let base = |kind: AgentKind| {
            let n = kind.cert_name();
            harness::base_config(
                &d.join("state").join(n),
                &pki.join("ca.pem"),
                &pki.join(format!("{n}.pem")),
                &pki.join(format!("{n}.key")),
            )
        };
        let borg_base = d.join("borg-base");
        std::fs::create_dir_all(&borg_base)?;
        let env = [("BORG_BASE_DIR", borg_base.to_str().context("utf-8 path")?)];

        let dns = base(AgentKind::Dns)
            + &format!(
                "[dns]\nlisten = [\"127.0.0.1:0\"]\n[[zones]]\nname = \"{ZONE}\"\nrecords = [\n  \
                 {{ name = \"ns\", type = \"A\", value = \"127.0.0.1\" }},\n  {{ name = \"@\", type = \"TXT\", value = \"strata demo lab\" }},\n]\n\
                 [services_agents.services1]\nunder = \"{ZONE}\"\n"
            );
        let dns = self.start(AgentKind::Dns, &dns, &[])?;
        self.dns = self.agents[dns].logged_addr("dns udp")?;

        // The apps bind-mount their datasets: the deploy gate allows host paths under `bind_roots` only.
        let mounts: Vec<String> = self.apps.iter().map(|a| a.mount.display().to_string()).collect();
        let mut svc = base(AgentKind::Services)
            + &format!(
                "[stacks]\nrepo = {:?}\nbranch = \"main\"\ncheckout_dir = {:?}\npoll = \"1h\"\nbind_roots = {mounts:?}\n\
                 [hub]\nstack = \"proxy\"\nnetwork = \"{HUB_NET}\"\ndomain = \"{ZONE}\"\naddress = \"127.0.0.1\"\n\
                 [dns]\nagent = \"{}\"\n[backup]\nparallel = 2\nsnapshot_mount_dir = {:?}\n",
                d.join("stacks"),
                d.join("checkout"),
                self.agents[dns].url(),
                d.join("snapshots"),
            );
        for (app, (_, quiesce)) in self.apps.iter().zip(APPS) {
            svc += &format!(
                "[[services]]\nname = \"{n}\"\ndns = [\"{n}\"]\ndataset = \"{}\"\nrepo = {:?}\npassphrase_file = {:?}\n\
                 quiesce = \"{quiesce}\"\nlocal_snapshots = 3\nretention = {{ last = 5, daily = 7 }}\nhealthy_timeout = \"1m\"\n",
                app.dataset,
                app.repo.path(),
                d.join("secrets").join(format!("{}.pass", app.name)),
                n = app.name,
            );
        }
        let svc = self.start(AgentKind::Services, &svc, &env)?;

        let host = base(AgentKind::Host)
            + &format!(
                "[[vms]]\nname = \"{VM_NAME}\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"suspend\"\nengine = \"borg\"\n\
                 target = {:?}\npasscommand = \"cat {}\"\nretention = {{ last = 3 }}\nguest = \"{}\"\nshutdown_timeout = \"2s\"\n",
                self.vm.dir,
                self.vm_repo.as_ref().context("vm repo")?.path(),
                d.join("secrets/vm.pass").display(),
                self.agents[svc].url(),
            );
        self.start(AgentKind::Host, &host, &env)?;
        let refs: Vec<&AgentProc> = self.agents.iter().collect();
        harness::write_inventory(
            &self.inventory,
            &pki.join("ca.pem"),
            &pki.join("admin.pem"),
            &pki.join("admin.key"),
            &refs,
        )
    }

    fn start(&mut self, kind: AgentKind, config: &str, env: &[(&str, &str)]) -> Result<usize> {
        let path = self.dir.join(format!("{}.toml", kind.binary()));
        std::fs::write(&path, config)?;
        let agent = AgentProc::start_with_env(kind, &path, env)?;
        println!("lab: {} up, grpc {}", kind.binary(), agent.grpc);
        self.agents.push(agent);
        Ok(self.agents.len() - 1)
    }

    fn stacks_up(&mut self) -> Result<()> {
        self.labctl(&["services", "sync"])?;
        self.wait_ready(&["proxy", "app1", "app2"], Duration::from_secs(180))?;
        for (app, _) in APPS {
            let name = format!("{app}.{ZONE}");
            wait_for(&format!("dig {name}"), Duration::from_secs(30), || {
                self.dig(&name).is_ok_and(|a| a == ["127.0.0.1"])
            })?;
            let path = format!("/cgi-bin/svc/{app}/index.html");
            wait_for(&format!("{app} through the hub"), Duration::from_secs(30), || {
                http_get(self.hub_port, &path).is_some_and(|(code, _)| code == 200)
            })?;
        }
        Ok(())
    }

    /// Runs `labctl --config INVENTORY ARGS…`, echoing the command and its output; fails on a non-zero exit.
    pub(crate) fn labctl(&self, args: &[&str]) -> Result<String> {
        println!("$ labctl {}", args.join(" "));
        let out = Command::new(&self.labctl)
            .arg("--config")
            .arg(&self.inventory)
            .args(args)
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        ensure!(out.status.success(), "`labctl {}` failed ({})", args.join(" "), out.status);
        Ok(text)
    }

    /// Everything the agent of `kind` has logged so far.
    pub(crate) fn logs(&self, kind: AgentKind) -> String {
        self.agent(kind).map(AgentProc::logs).unwrap_or_default()
    }

    fn agent(&self, kind: AgentKind) -> Result<&AgentProc> {
        self.agents.iter().find(|a| a.kind == kind).with_context(|| format!("no {}", kind.binary()))
    }

    fn channel(&self, kind: AgentKind) -> Result<tonic::transport::Channel> {
        let (tls, url) = (self.tls.as_ref().context("no pki")?, self.agent(kind)?.url());
        Ok(self.rt.block_on(tls.connect(&url, kind.role(), Duration::from_secs(10)))?)
    }

    pub(crate) fn services(&self) -> Result<Vec<Service>> {
        let mut c = ServicesClient::new(self.channel(AgentKind::Services)?);
        Ok(self.rt.block_on(c.list_services(ListServicesRequest {}))?.into_inner().services)
    }

    /// The service's backups, restores, checks and drills, newest first.
    pub(crate) fn history(&self, name: &str) -> Result<Vec<HistoryEntry>> {
        let mut c = ServicesClient::new(self.channel(AgentKind::Services)?);
        Ok(self.rt.block_on(c.history(HistoryRequest { name: name.into(), limit: 20 }))?.into_inner().entries)
    }

    pub(crate) fn vm_info(&self) -> Result<Vm> {
        let mut c = HostClient::new(self.channel(AgentKind::Host)?);
        let vms = self.rt.block_on(c.list_vms(ListVmsRequest {}))?.into_inner().vms;
        vms.into_iter().find(|v| v.name == VM_NAME).context("the vm is not listed")
    }

    /// Waits until every named service runs with all its containers running and healthy (or without a health check).
    pub(crate) fn wait_ready(&self, names: &[&str], within: Duration) -> Result<()> {
        let ready = |s: &Service| {
            s.state == "running"
                && !s.containers.is_empty()
                && s.containers
                    .iter()
                    .all(|c| c.state == "running" && matches!(c.health.as_str(), "" | "none" | "healthy"))
        };
        let mut last = Vec::new();
        let r = wait_for(&format!("services {names:?} running and healthy"), within, || {
            last = self.services().unwrap_or_default();
            names.iter().all(|n| last.iter().any(|s| s.name == *n && ready(s)))
        });
        r.with_context(|| {
            format!("last seen: {:?}", last.iter().map(|s| (&s.name, &s.state, &s.error)).collect::<Vec<_>>())
        })
    }

    /// The A records the dns-agent answers `dig` for `name`.
    pub(crate) fn dig(&self, name: &str) -> Result<Vec<String>> {
        let port = self.dns.port().to_string();
        let out = cmd::run_args(
            "dig",
            ["+short", "+time=1", "+tries=1", "-p", &port, &format!("@{}", self.dns.ip()), name, "A"],
        )?;
        Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
    }

    /// `query-status` over our own QMP socket.
    pub(crate) fn qmp_status(&self) -> Result<String> {
        let s = std::os::unix::net::UnixStream::connect(&self.vm.qmp)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let (mut w, mut r) = (s.try_clone()?, BufReader::new(s));
        let mut reply = |cmd: &str| -> Result<String> {
            w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())?;
            let mut line = String::new();
            while !line.contains("\"return\"") && !line.contains("\"error\"") {
                line.clear();
                ensure!(r.read_line(&mut line)? > 0, "QMP closed");
            }
            Ok(line)
        };
        reply("qmp_capabilities")?;
        let line = reply("query-status")?;
        let status = line.split("\"status\": \"").nth(1).and_then(|s| s.split('"').next());
        status.map(String::from).with_context(|| format!("query-status: {line}"))
    }

    fn remove_containers(&self) {
        let Some(engine) = &self.engine else { return };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ids = engine.docker(["ps", "-aq", "--filter", &format!("label={LAB_LABEL}")]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() || Instant::now() > deadline {
                break;
            }
            let _ = engine.docker(["rm", "-f", "-v"].into_iter().chain(ids));
        }
        for net in ["app1_default", "app2_default", "proxy_default", HUB_NET] {
            let _ = Command::new("docker")
                .args(["network", "rm", net])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        println!("lab: cleaning up (vm, agents, containers, networks, pool, repos)");
        kill_vm(&self.dir);
        self.agents.clear();
        self.remove_containers();
        if let Some(pool) = self.pool.take() {
            // Never forced: a forced unmount of a busy dataset hangs zfs-fuse for everyone. Leak it instead.
            let gone = (0..15).any(|i| {
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 1000 }));
                Command::new("zpool")
                    .args(["destroy", pool.name()])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if gone {
                drop(pool);
            } else {
                eprintln!("lab: pool {} stays busy; left in place (vdev {})", pool.name(), pool.vdev_path().display());
                std::mem::forget(pool);
            }
        }
    }
}

/// Stops the QEMU the host-agent started under `dir` (it daemonizes, so it outlives the agent).
fn kill_vm(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("state/host1/qemu")) else { return };
    for pid_file in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "pid")) {
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default().trim().to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid.is_empty() || !String::from_utf8_lossy(&cmdline).contains("qemu") {
            continue;
        }
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// One `GET PATH` on 127.0.0.1:PORT: (status code, body), or None when nothing answers.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let code = String::from_utf8_lossy(&buf[..end]).split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf[end + 4..].to_vec()))
}

pub(crate) fn sha256(p: &Path) -> Result<String> {
    let out = cmd::run(Command::new("sha256sum").arg(p))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_string())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    write(path, text)?;
    Ok(std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?)
}
