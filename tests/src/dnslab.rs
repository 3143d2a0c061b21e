//! A dns-agent under test, shared by the dns test files: started on port 0 and waited for (its DNS address from its
//! log), queried with `dig` and raw UDP packets, driven over mTLS gRPC, restarted on the same state dir.
//! Knows the agent's config format, log lines and gRPC API; asserts nothing itself (tests do).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{bail, ensure, Context, Result};
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{Record, UpsertRecordRequest};
use tonic::transport::Channel;

use crate::harness::{base_config, AgentKind, AgentProc, Pki};

pub const ZONES: &str = r#"
[[zones]]
name = "lab.home.arpa"
records = [
  { name = "nas", type = "A", value = "10.0.0.10", ttl = 120 },
  { name = "nas", type = "AAAA", value = "fd00::10" },
  { name = "www", type = "CNAME", value = "nas" },
  { name = "@", type = "MX", value = "10 mail.lab.home.arpa." },
  { name = "mail", type = "A", value = "10.0.0.11" },
  { name = "_http._tcp", type = "SRV", value = "10 5 8080 nas" },
  { name = "@", type = "TXT", value = "v=spf1 mx -all" },
  { name = "printer", type = "PTR", value = "printer.example." },
]

[[zones]]
name = "10.in-addr.arpa"
"#;

/// A dns-agent under test: its process, DNS address, config file and state.
pub struct Dns {
    pub agent: AgentProc,
    pub addr: SocketAddr,
    /// When the `dns udp listening` line was seen.
    pub listening_at: Instant,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn config_text(pki: &Pki, dir: &Path, extra: &str) -> Result<String> {
    let (cert, key) = pki.issue(Role::DnsAgent, "dns1")?;
    Ok(format!("{}[dns]\nlisten = [\"127.0.0.1:0\"]\n{extra}", base_config(&dir.join("state"), &pki.ca(), &cert, &key)))
}

impl Dns {
    pub fn start(pki: &Pki, extra: &str) -> Result<Dns> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("dns-agent.toml");
        std::fs::write(&config, config_text(pki, dir.path(), extra)?)?;
        let (agent, addr, listening_at) = start_on(&config)?;
        Ok(Dns { agent, addr, listening_at, config, _dir: dir })
    }

    /// Stops the agent (SIGTERM) and starts it again on the same config and state dir.
    pub fn restart(&mut self) -> Result<()> {
        let code = self.agent.terminate()?;
        ensure!(code == Some(0), "dns-agent exited with {code:?}");
        let (agent, addr, at) = start_on(&self.config)?;
        (self.agent, self.addr, self.listening_at) = (agent, addr, at);
        Ok(())
    }

    pub fn dig(&self, args: &[&str]) -> Result<Dig> {
        dig(self.addr, args)
    }

    pub async fn client(&self, pki: &Pki, role: Role, name: &str) -> Result<DnsClient<Channel>> {
        Ok(DnsClient::new(self.channel(pki, role, name).await?))
    }

    pub async fn channel(&self, pki: &Pki, role: Role, name: &str) -> Result<Channel> {
        let m = pki.material(&pki.ca(), role, name)?;
        Ok(m.connect(&self.agent.url(), Role::DnsAgent, Duration::from_secs(5)).await?)
    }

    pub fn assert_alive(&mut self) -> Result<()> {
        ensure!(self.agent_is_running()?, "dns-agent died; log:\n{}", self.agent.logs());
        Ok(())
    }

    /// Running (a process that exited but was not reaped yet is a zombie, `Z`, in /proc).
    pub fn agent_is_running(&self) -> Result<bool> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.agent.pid())).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
        Ok(!state.is_empty() && state != "Z" && state != "X")
    }
}

/// Starts the agent and waits for its `dns udp listening on ADDR` line (the harness waits for grpc and metrics).
pub fn start_on(config: &Path) -> Result<(AgentProc, SocketAddr, Instant)> {
    let agent = AgentProc::start_with_config(AgentKind::Dns, config)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = agent.logs();
        if let Some(rest) = logs.split("dns udp listening on ").nth(1) {
            let at = Instant::now();
            let addr: SocketAddr = rest.split_whitespace().next().unwrap_or("").parse().context("dns udp address")?;
            // TCP is bound before UDP is logged; its line follows at once.
            wait_for("the dns tcp line", Duration::from_secs(5), || {
                Ok(agent.logs().contains(&format!("dns tcp listening on {addr}")))
            })?;
            return Ok((agent, addr, at));
        }
        if Instant::now() > deadline {
            bail!("no `dns udp listening` line; log:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What `dig` printed, parsed.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answers: Vec<(String, String, String)>,
    pub authority: Vec<(String, String, String)>,
    pub raw: String,
}

impl Dig {
    pub fn aa(&self) -> bool {
        self.flags.iter().any(|f| f == "aa")
    }

    pub fn values(&self, rtype: &str) -> Vec<String> {
        self.answers.iter().filter(|a| a.1 == rtype).map(|a| a.2.clone()).collect()
    }
}

pub fn dig(addr: SocketAddr, args: &[&str]) -> Result<Dig> {
    let out = Command::new("/usr/bin/dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=3", "+tries=1", "+nocookie"])
        .args(args)
        .output()
        .context("running /usr/bin/dig (install dnsutils / bind9-dnsutils)")?;
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let status = raw
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string)
        .with_context(|| format!("dig {args:?} got no answer: {raw}"))?;
    let flags = raw
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let section = |title: &str| -> Vec<(String, String, String)> {
        let Some(body) = raw.split(&format!(";; {title} SECTION:\n")).nth(1) else { return Vec::new() };
        body.lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5).then(|| (f[0].to_string(), f[3].to_string(), f[4..].join(" ")))
            })
            .collect()
    };
    Ok(Dig { status, flags, answers: section("ANSWER"), authority: section("AUTHORITY"), raw })
}

pub fn record(name: &str, rtype: &str, value: &str) -> Record {
    Record { name: name.into(), r#type: rtype.into(), value: value.into(), ttl: 0, owner: String::new() }
}

pub fn upsert(r: Record) -> UpsertRecordRequest {
    UpsertRecordRequest { record: Some(r) }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub use crate::fixtures::dnswire::udp_exchange;

/// (id, rcode, answer count) of a reply.
pub fn reply_header(r: &[u8]) -> (u16, u8, u16) {
    (u16::from_be_bytes([r[0], r[1]]), r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]]))
}
