//! The harness around the real agent binaries: a per-test PKI, agents started on port 0 (their `listening on ADDR`
//! lines are read back), killed on Drop, with their logs printed when a test fails. Asserts nothing itself.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use anyhow::{anyhow, bail, Context, Result};
use labctl::pki::{self, IssueSpec};

/// The trust domain of every test PKI.
pub const DOMAIN: &str = "lab.test";

/// Path of a binary of this workspace: in `$STRATA_BIN_DIR` when set (xtask's benchmarks use release builds), else
/// next to the running executable (`target/debug/xtask`) or one level up (`target/debug/deps/TEST-HASH`).
/// `cargo xtask test` builds the binaries before the tests run.
pub fn bin(name: &str) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os("STRATA_BIN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => {
            let exe = std::env::current_exe()?;
            let dir = exe.parent().ok_or_else(|| anyhow!("unexpected executable path {}", exe.display()))?;
            vec![dir.to_path_buf(), dir.parent().unwrap_or(dir).to_path_buf()]
        }
    };
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        anyhow!("{name} not built in {dirs:?}: run `cargo build --workspace --bins` (cargo xtask test does)")
    })
}

/// A throwaway lab CA in a temp directory, issuing certificates on demand.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        Self::with_domain(DOMAIN)
    }

    /// A second, unrelated CA (same domain: an attacker copying the lab's naming).
    pub fn with_domain(domain: &str) -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        pki::init(dir.path(), domain, false)?;
        Ok(Pki { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join(pki::CA_CERT_FILE)
    }

    /// Issues (once) `NAME.pem`/`NAME.key` for `role`, valid for localhost and 127.0.0.1.
    pub fn issue(&self, role: Role, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        if !cert.exists() {
            let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
            pki::issue(self.dir.path(), &IssueSpec::days(role, name, &sans, 30), false)?;
        }
        Ok((cert, key))
    }

    /// Issues (once) `NAME.pem`/`NAME.key` for `role`, valid for localhost, 127.0.0.1 and each of `ips`: an agent
    /// reached on another address (the network-namespace tests). Issue it before any plain [`Pki::issue`] of NAME.
    pub fn issue_for(&self, role: Role, name: &str, ips: &[IpAddr]) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        if !cert.exists() {
            let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            sans.extend(ips.iter().map(|ip| ip.to_string()));
            pki::issue(self.dir.path(), &IssueSpec::days(role, name, &sans, 30), false)?;
        }
        Ok((cert, key))
    }

    /// Issues a certificate that expired yesterday.
    pub fn issue_expired(&self, role: Role, name: &str) -> Result<(PathBuf, PathBuf)> {
        let now = time::OffsetDateTime::now_utc();
        let sans = ["localhost".to_string()];
        let spec = IssueSpec {
            role,
            name,
            sans: &sans,
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        };
        let f = pki::issue(self.dir.path(), &spec, false)?;
        Ok((f.cert, f.key))
    }

    /// Issues (once) `NAME.pem`/`NAME.key` for `role`, valid for localhost and 127.0.0.1 during `days` days.
    pub fn issue_days(&self, role: Role, name: &str, days: u32) -> Result<(PathBuf, PathBuf)> {
        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        let f = pki::issue(self.dir.path(), &IssueSpec::days(role, name, &sans, days), false)?;
        Ok((f.cert, f.key))
    }

    /// The CA's revocation list (`labctl pki init` writes it empty; `labctl pki revoke` adds to it).
    pub fn crl(&self) -> PathBuf {
        self.dir.path().join(pki::CRL_FILE)
    }

    /// TLS material for NAME, trusting `ca` (normally this PKI's own CA).
    pub fn material(&self, ca: &Path, role: Role, name: &str) -> Result<TlsMaterial> {
        let (cert, key) = self.issue(role, name)?;
        Ok(TlsMaterial::load(ca, &cert, &key)?)
    }
}

/// Which agent binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    Host,
    Dns,
    Services,
}

impl AgentKind {
    pub const ALL: [AgentKind; 3] = [AgentKind::Host, AgentKind::Dns, AgentKind::Services];

    pub fn binary(self) -> &'static str {
        match self {
            AgentKind::Host => "host-agent",
            AgentKind::Dns => "dns-agent",
            AgentKind::Services => "services-agent",
        }
    }

    pub fn role(self) -> Role {
        match self {
            AgentKind::Host => Role::HostAgent,
            AgentKind::Dns => Role::DnsAgent,
            AgentKind::Services => Role::ServicesAgent,
        }
    }

    /// The name in the agent's certificate.
    pub fn cert_name(self) -> &'static str {
        match self {
            AgentKind::Host => "host1",
            AgentKind::Dns => "dns1",
            AgentKind::Services => "services1",
        }
    }

    /// The gRPC service this agent owns besides Agent and health.
    pub fn domain_service(self) -> &'static str {
        match self {
            AgentKind::Host => "strata.v1.Host",
            AgentKind::Dns => "strata.v1.Dns",
            AgentKind::Services => "strata.v1.Services",
        }
    }
}

/// The common part of an agent config on port 0, for the given certificate files.
pub fn base_config(state_dir: &Path, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "state_dir = {state:?}\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        state = state_dir.display().to_string(),
        ca = ca.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    )
}

/// `config` (a [`base_config`] text) with `[grpc] crl` naming `crl`.
pub fn with_crl(config: &str, crl: &Path) -> String {
    config.replacen("[metrics]\n", &format!("crl = {:?}\n[metrics]\n", crl.display().to_string()), 1)
}

/// Like [`base_config`], with gRPC and metrics listening on `ip` (port 0): an agent in a network namespace.
pub fn base_config_on(state_dir: &Path, ca: &Path, cert: &Path, key: &Path, ip: IpAddr) -> String {
    base_config(state_dir, ca, cert, key).replace("127.0.0.1:0", &SocketAddr::new(ip, 0).to_string())
}

/// A running agent process. Killed on Drop; its log is printed if the test is failing.
pub struct AgentProc {
    pub kind: AgentKind,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl AgentProc {
    /// Starts `kind` with a fresh state dir and a certificate from `pki`.
    pub fn start(kind: AgentKind, pki: &Pki) -> Result<AgentProc> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = pki.issue(kind.role(), kind.cert_name())?;
        let text = base_config(&dir.path().join("state"), &pki.ca(), &cert, &key);
        let config = dir.path().join(format!("{}.toml", kind.binary()));
        std::fs::write(&config, text)?;
        let mut p = Self::start_with_config(kind, &config)?;
        p._dir = Some(dir);
        Ok(p)
    }

    /// Starts `kind` with an existing config file and waits for both `listening on` lines.
    pub fn start_with_config(kind: AgentKind, config: &Path) -> Result<AgentProc> {
        Self::start_with_env(kind, config, &[])
    }

    /// Like [`AgentProc::start_with_config`], with extra environment variables (the test hooks).
    pub fn start_with_env(kind: AgentKind, config: &Path, env: &[(&str, &str)]) -> Result<AgentProc> {
        Self::start_with_prefix::<&str>(&[], kind, config, env)
    }

    /// Like [`AgentProc::start_with_env`], the binary run through a command `prefix` that execs it (e.g.
    /// `ip netns exec NS`: the process stays the agent's, so `pid`, `kill` and `terminate` still reach it).
    pub fn start_with_prefix<S: AsRef<OsStr>>(
        prefix: &[S],
        kind: AgentKind,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<AgentProc> {
        let binary = bin(kind.binary())?;
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .args(["--log-format", "human", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", kind.binary()))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                for what in ["grpc", "metrics"] {
                    if let Some(addr) = line.split(&format!("{what} listening on ")).nth(1) {
                        let _ = tx.send((what, addr.trim().to_string()));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut grpc, mut metrics) = (None, None);
        while grpc.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("grpc", a)) => grpc = Some(a.parse()?),
                Ok((_, a)) => metrics = Some(a.parse()?),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let log = logs.lock().unwrap().join("\n");
                    bail!("{} did not start (exit {status:?}); log:\n{log}", kind.binary());
                }
            }
        }
        Ok(AgentProc {
            kind,
            grpc: grpc.expect("set"),
            metrics: metrics.expect("set"),
            config: config.to_path_buf(),
            child,
            logs,
            _dir: None,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address in the first `WHAT listening on ADDR` log line (e.g. `dns udp`), waiting up to 10 s for it.
    pub fn logged_addr(&self, what: &str) -> Result<SocketAddr> {
        let needle = format!("{what} listening on ");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(rest) = self.logs().split(needle.as_str()).nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("");
                return addr.parse().with_context(|| format!("`{needle}{addr}` is not an address"));
            }
            if Instant::now() > deadline {
                bail!("{} never logged `{needle}`:\n{}", self.kind.binary(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for a clean exit (graceful drain), returning the exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within 10 s of SIGTERM", self.kind.binary());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the agent gets no chance to clean up (the crash tests).
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits up to `within` for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.logs().contains(needle) {
            if Instant::now() > deadline {
                bail!("{} never logged `{needle}` within {within:?}:\n{}", self.kind.binary(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Fetches the agent's Prometheus text.
    pub fn metrics_text(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics)?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}\n---- end ----", self.kind.binary(), self.logs());
        }
    }
}

/// Writes a labctl inventory for `agents` using the certificate files given.
pub fn write_inventory(path: &Path, ca: &Path, cert: &Path, key: &Path, agents: &[&AgentProc]) -> Result<()> {
    let mut text = format!("ca = {:?}\ncert = {:?}\nkey = {:?}\n[agents]\n", ca, cert, key);
    for a in agents {
        let key = match a.kind {
            AgentKind::Host => "host",
            AgentKind::Dns => "dns",
            AgentKind::Services => "services",
        };
        text.push_str(&format!("{key} = \"{}\"\n", a.url()));
    }
    std::fs::write(path, text)?;
    Ok(())
}
