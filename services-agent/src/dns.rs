//! DNS registration: keeps `NAME.<hub domain>` A records pointing at the hub address in the dns-agent for every
//! service name in the config, and removes the names this agent registered that no service claims any more. Retries
//! with backoff while the dns-agent is down; deploys never wait on it. Knows the reconcile plan and its schedule; the
//! calls themselves go through `grpc::DnsRemote` (the only module touching proto/tonic types).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use agent_core::cli::Shutdown;
use agent_core::tls::TlsMaterial;

use crate::config::Config;
use crate::grpc::DnsRemote;

pub const TTL: u32 = 300;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After a success, how often the records are checked again (the dns-agent may have lost or changed them).
const RECHECK: Duration = Duration::from_secs(30);

/// A DNS record as this module needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Fully qualified, with the trailing dot.
    pub name: String,
    pub kind: String,
    pub value: String,
    pub ttl: u32,
    /// Identity of the writer (set by the dns-agent from the caller's certificate).
    pub owner: String,
}

/// How registration is doing, for Status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsStatus {
    /// Names registered by the last successful reconcile.
    pub registered: usize,
    /// Why the last attempt failed; `None` after a success.
    pub error: Option<String>,
    /// False until the first attempt finished.
    pub attempted: bool,
}

/// The records the config asks for: `NAME.DOMAIN.` A `hub.address` for every `dns` name of every service.
pub fn desired(cfg: &Config) -> Vec<DnsRecord> {
    let Some(hub) = &cfg.hub else { return Vec::new() };
    let mut out: Vec<DnsRecord> = cfg
        .services
        .iter()
        .flat_map(|s| s.dns.iter())
        .map(|d| DnsRecord {
            name: format!("{d}.{}.", hub.domain),
            kind: if hub.address.is_ipv4() { "A" } else { "AAAA" }.to_string(),
            value: hub.address.to_string(),
            ttl: TTL,
            owner: String::new(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// What to upsert (desired records missing or different) and what to delete (records owned by `me` that no service
/// claims any more, or that point elsewhere). Records of other owners are never touched.
pub fn plan(desired: &[DnsRecord], existing: &[DnsRecord], me: &str) -> (Vec<DnsRecord>, Vec<DnsRecord>) {
    let present = |d: &DnsRecord| {
        existing.iter().any(|e| {
            same_name(&e.name, &d.name) && e.kind == d.kind && e.value == d.value && e.ttl == d.ttl && e.owner == me
        })
    };
    let upserts = desired.iter().filter(|d| !present(d)).cloned().collect();
    let deletes = existing
        .iter()
        .filter(|e| e.owner == me)
        .filter(|e| !desired.iter().any(|d| same_name(&e.name, &d.name) && e.kind == d.kind && e.value == d.value))
        .cloned()
        .collect();
    (upserts, deletes)
}

async fn reconcile(tls: &TlsMaterial, addr: &str, zone: &str, desired: &[DnsRecord]) -> Result<usize, String> {
    let mut remote = DnsRemote::connect(tls, addr, CALL_TIMEOUT).await?;
    let existing = remote.list(zone).await?;
    let (upserts, deletes) = plan(desired, &existing, &tls.identity.uri());
    for r in &deletes {
        remote.delete(r).await?;
        tracing::info!(name = r.name, value = r.value, "dns name removed");
    }
    for r in &upserts {
        remote.upsert(r).await?;
        tracing::info!(name = r.name, value = r.value, "dns name registered");
    }
    Ok(desired.len())
}

/// Runs registration until `shutdown`. Without `[dns] agent` it does nothing.
/// `tls` is the agent's own material, loaded and verified once at start.
pub async fn run(cfg: Arc<Config>, tls: TlsMaterial, status: Arc<RwLock<DnsStatus>>, shutdown: Shutdown) {
    // Without a hub there is no domain to register names in.
    let (Some(addr), Some(hub)) = (cfg.dns_agent.clone(), cfg.hub.clone()) else { return };
    let want = desired(&cfg);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = match reconcile(&tls, &addr, &hub.domain, &want).await {
            Ok(n) => {
                let mut s = status.write().unwrap_or_else(|e| e.into_inner());
                if s.error.is_some() || !s.attempted {
                    tracing::info!(names = n, dns_agent = addr, "dns names in place");
                }
                *s = DnsStatus { registered: n, error: None, attempted: true };
                backoff = FIRST_BACKOFF;
                RECHECK
            }
            Err(e) => {
                let mut s = status.write().unwrap_or_else(|e| e.into_inner());
                if s.error.is_none() {
                    tracing::warn!(dns_agent = addr, error = e, "dns registration failed; retrying with backoff");
                }
                s.error = Some(format!("dns-agent {addr}: {e}"));
                s.attempted = true;
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "spiffe://lab.test/services-agent/services1";

    fn rec(name: &str, value: &str, owner: &str) -> DnsRecord {
        DnsRecord { name: name.into(), kind: "A".into(), value: value.into(), ttl: TTL, owner: owner.into() }
    }

    #[test]
    fn desired_names_come_from_the_config() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/services-agent.toml");
        let cfg = Config::load(&path).unwrap();
        let names: Vec<String> =
            desired(&cfg).into_iter().map(|r| format!("{} {} {}", r.name, r.kind, r.value)).collect();
        assert_eq!(
            names,
            ["docs.lab.home.arpa. A 10.0.0.20", "photos.lab.home.arpa. A 10.0.0.20", "wiki.lab.home.arpa. A 10.0.0.20"]
        );
    }

    #[test]
    fn plan_adds_missing_and_removes_only_our_stale_names() {
        let want = [rec("photos.lab.test.", "10.0.0.20", ""), rec("wiki.lab.test.", "10.0.0.20", "")];
        let existing = [
            rec("Photos.lab.test", "10.0.0.20", ME),
            rec("old.lab.test.", "10.0.0.20", ME),
            rec("wiki.lab.test.", "10.0.0.9", ME),
            rec("nas.lab.test.", "10.0.0.10", ""),
            rec("theirs.lab.test.", "10.0.0.20", "spiffe://lab.test/admin/alice"),
        ];
        let (up, del) = plan(&want, &existing, ME);
        assert_eq!(up, [rec("wiki.lab.test.", "10.0.0.20", "")]);
        let del: Vec<&str> = del.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(del, ["old.lab.test.", "wiki.lab.test."]);
        let (up, del) = plan(&[], &existing[..1], ME);
        assert!(up.is_empty() && del.len() == 1);
    }
}
