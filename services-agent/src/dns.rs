//! DNS registration: keeps `NAME.<hub domain>` A records pointing at the hub address in the dns-agent for every
//! service name in the config, and removes the names this agent registered that no service claims any more. Retries
//! with backoff while the dns-agent is down; deploys never wait on it. Knows the reconcile plan and its schedule, and
//! says what it needs from the dns-agent as the [`DnsApi`] trait; must not know proto/tonic (the gRPC edge implements
//! the trait: `grpc::DnsRemote`, chosen by `lib.rs`). Reports into the `DnsStatus` that `lib.rs` owns.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agent_core::cli::Shutdown;
use agent_core::tls::TlsMaterial;

use crate::config::Config;
use crate::DnsStatus;

pub(crate) const TTL: u32 = 300;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After a success, how often the records are checked again (the dns-agent may have lost or changed them).
const RECHECK: Duration = Duration::from_secs(30);

/// A DNS record as this module needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsRecord {
    /// Fully qualified, with the trailing dot.
    pub name: String,
    pub kind: String,
    pub value: String,
    pub ttl: u32,
    /// Identity of the writer (set by the dns-agent from the caller's certificate).
    pub owner: String,
}

/// What registration needs from the dns-agent: one value is one session, opened for each reconcile. Errors are one
/// line naming the call.
pub(crate) trait DnsApi: Sized + Send {
    /// Connects to the dns-agent at `addr` (checked for the dns-agent's role) as `tls`'s identity.
    fn connect(tls: &TlsMaterial, addr: &str, timeout: Duration) -> impl Future<Output = Result<Self, String>> + Send;
    /// The records of `zone`, with their owners.
    fn list(&mut self, zone: &str) -> impl Future<Output = Result<Vec<DnsRecord>, String>> + Send;
    /// Adds or replaces a record (the dns-agent sets its owner from our certificate).
    fn upsert(&mut self, r: &DnsRecord) -> impl Future<Output = Result<(), String>> + Send;
    fn delete(&mut self, r: &DnsRecord) -> impl Future<Output = Result<(), String>> + Send;
}

/// The records the config asks for: `NAME.DOMAIN.` A `hub.address` for every `dns` name of every service.
pub(crate) fn desired(cfg: &Config) -> Vec<DnsRecord> {
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
pub(crate) fn plan(desired: &[DnsRecord], existing: &[DnsRecord], me: &str) -> (Vec<DnsRecord>, Vec<DnsRecord>) {
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

async fn reconcile<A: DnsApi>(
    tls: &TlsMaterial,
    addr: &str,
    zone: &str,
    desired: &[DnsRecord],
) -> Result<usize, String> {
    let mut remote = A::connect(tls, addr, CALL_TIMEOUT).await?;
    apply(&mut remote, zone, desired, &tls.identity.uri()).await
}

/// One reconcile over an open session: lists `zone`, then deletes and upserts what [`plan`] says.
async fn apply(remote: &mut impl DnsApi, zone: &str, desired: &[DnsRecord], me: &str) -> Result<usize, String> {
    let existing = remote.list(zone).await?;
    let (upserts, deletes) = plan(desired, &existing, me);
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

/// Runs registration until `shutdown`, through the dns-agent client `A`. Without `[dns] agent` (or without a hub:
/// no domain to register names in) it only waits. Each round reads the running config, so a reload's services are
/// registered (and dropped ones removed) at the next round. `tls` is the agent's own material, loaded and verified
/// once at start.
pub(crate) async fn run<A: DnsApi>(
    cfg: crate::SharedConfig,
    tls: TlsMaterial,
    status: Arc<RwLock<DnsStatus>>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let now = cfg.load_full();
        let (Some(addr), Some(hub)) = (now.dns_agent.clone(), now.hub.clone()) else {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(RECHECK) => continue,
            }
        };
        let want = desired(&now);
        let wait = match reconcile::<A>(&tls, &addr, &hub.domain, &want).await {
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

    /// A dns-agent in memory: what `apply` asks of any [`DnsApi`].
    struct Fake {
        zone: Vec<DnsRecord>,
        calls: Vec<String>,
        fail_upsert: bool,
    }

    impl DnsApi for Fake {
        async fn connect(_: &TlsMaterial, addr: &str, _: Duration) -> Result<Fake, String> {
            Err(format!("{addr}: the fake is built by the test"))
        }

        async fn list(&mut self, zone: &str) -> Result<Vec<DnsRecord>, String> {
            self.calls.push(format!("list {zone}"));
            Ok(self.zone.clone())
        }

        async fn upsert(&mut self, r: &DnsRecord) -> Result<(), String> {
            self.calls.push(format!("upsert {} {}", r.name, r.value));
            if self.fail_upsert {
                return Err(format!("upsert {}: unavailable: down", r.name));
            }
            self.zone.push(DnsRecord { owner: ME.into(), ..r.clone() });
            Ok(())
        }

        async fn delete(&mut self, r: &DnsRecord) -> Result<(), String> {
            self.calls.push(format!("delete {} {}", r.name, r.value));
            self.zone.retain(|z| z != r);
            Ok(())
        }
    }

    #[tokio::test]
    async fn apply_deletes_our_stale_names_then_upserts_and_stops_at_the_first_error() {
        let want = [rec("photos.lab.test.", "10.0.0.20", ""), rec("wiki.lab.test.", "10.0.0.20", "")];
        let mut fake = Fake {
            zone: vec![rec("photos.lab.test.", "10.0.0.20", ME), rec("old.lab.test.", "10.0.0.20", ME)],
            calls: Vec::new(),
            fail_upsert: false,
        };
        assert_eq!(apply(&mut fake, "lab.test", &want, ME).await, Ok(2));
        assert_eq!(fake.calls, ["list lab.test", "delete old.lab.test. 10.0.0.20", "upsert wiki.lab.test. 10.0.0.20"]);
        // In place: nothing more to do.
        fake.calls.clear();
        assert_eq!(apply(&mut fake, "lab.test", &want, ME).await, Ok(2));
        assert_eq!(fake.calls, ["list lab.test"]);
        let mut down = Fake { zone: Vec::new(), calls: Vec::new(), fail_upsert: true };
        let e = apply(&mut down, "lab.test", &want, ME).await.unwrap_err();
        assert_eq!(e, "upsert photos.lab.test.: unavailable: down");
        assert_eq!(down.calls.len(), 2, "{:?}", down.calls);
    }
}
