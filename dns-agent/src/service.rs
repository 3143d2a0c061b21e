//! The running DNS service: the live config, the zone snapshot (rebuilt and swapped on every change), dynamic
//! records with their ownership rules, the forwarder, the blocklists, metrics and the query log; reload.
//! Knows the agent's domain operations; must not know sockets, DNS wire handling or proto/tonic types.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::config::ConfigError;
use agent_core::identity::{Identity, Role};
use arc_swap::{ArcSwap, ArcSwapOption};
use hickory_proto::rr::Name;

use crate::blocklist::{BlockResponse, BlocklistConfig, Blocklists, SourceStatus, DEFAULT_REFRESH};
use crate::config::Config;
use crate::forward::Forwarder;
use crate::metrics::{DnsMetrics, ListHealth};
use crate::querylog::{QueryLog, CAPACITY};
use crate::records::{check_cname_exclusive, parse_name, parse_value, Field, Kind, LocalRecord, RecordError};
use crate::scope::Refusal;
use crate::store::{Store, StoreError};
use crate::zones::ZoneSet;

/// Why a record operation was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    #[error(transparent)]
    Invalid(#[from] RecordError),
    #[error("{0} is not in any zone")]
    NotInZone(Name),
    #[error("record {record} is owned by {owner}")]
    NotOwner { record: String, owner: String },
    #[error("{0} may not change dns records")]
    Role(Role),
    /// A services-agent's write outside its `[services_agents.NAME]` scope.
    #[error("{}", .0.message)]
    OutOfScope(Refusal),
    #[error("record {0} is defined in the config file: edit the config and reload")]
    FromConfig(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadOutcome {
    pub changed: bool,
    pub message: String,
}

/// The whole DNS side of the agent, shared by the query handler and the gRPC service.
pub(crate) struct Dns {
    cfg: ArcSwap<Config>,
    zones: ArcSwap<ZoneSet>,
    forwarder: ArcSwapOption<Forwarder>,
    pub blocklists: Arc<Blocklists>,
    pub metrics: DnsMetrics,
    pub query_log: QueryLog,
    store: Store,
    /// The dynamic records (mirror of the store); writers hold this lock for the whole write, so writes and
    /// rebuilds are serialized.
    dynamic: Mutex<Vec<LocalRecord>>,
    /// Zone transfers, primary side: per-zone serials (persisted), the journal, NOTIFYs in flight.
    pub xfr: crate::xfr::Primary,
    /// Bumped after every swap of the zones or the forwarder (see [`Dns::generation`]).
    generation: AtomicU64,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("summary", &self.summary()).finish_non_exhaustive()
    }
}

/// The forwarder of `cfg`, counting per upstream in `metrics`.
fn forwarder(cfg: &crate::forward::ForwardConfig, metrics: &DnsMetrics) -> Forwarder {
    Forwarder::with_counters(cfg, &|u| metrics.upstream(&u.to_string()))
}

fn empty_blocklist() -> BlocklistConfig {
    BlocklistConfig { sources: Vec::new(), allow: Vec::new(), refresh: DEFAULT_REFRESH, response: BlockResponse::Zero }
}

impl Dns {
    /// Opens the record store and builds the zones: everything local is served as soon as this returns. Nothing
    /// here touches the network (blocklists load later, upstreams are contacted on the first query).
    pub(crate) fn new(cfg: Config, metrics: DnsMetrics) -> Result<Arc<Dns>, StoreError> {
        let store = Store::open(&cfg.common.state_dir)?;
        let cfg_state_dir = cfg.common.state_dir.clone();
        let (dynamic, bad) = store.load()?;
        for b in bad {
            tracing::warn!(name = b.name, r#type = b.kind, reason = b.reason, "stored record is not valid: not served");
        }
        let blocklists = Blocklists::new(
            cfg.blocklist.clone().unwrap_or_else(empty_blocklist),
            cfg.common.state_dir.join("blocklists"),
        );
        let forwarder = cfg.forward.as_ref().map(|f| Arc::new(forwarder(f, &metrics)));
        let dns = Dns {
            query_log: QueryLog::new(cfg.dns.query_log, CAPACITY),
            cfg: ArcSwap::from_pointee(cfg),
            zones: ArcSwap::from_pointee(ZoneSet::default()),
            forwarder: ArcSwapOption::new(forwarder),
            blocklists,
            metrics,
            store,
            dynamic: Mutex::new(dynamic),
            xfr: crate::xfr::Primary::open(&cfg_state_dir)?,
            generation: AtomicU64::new(0),
        };
        {
            let dynamic = dns.lock_dynamic();
            dns.rebuild(&dns.cfg.load(), &dynamic);
        }
        Ok(Arc::new(dns))
    }

    fn lock_dynamic(&self) -> std::sync::MutexGuard<'_, Vec<LocalRecord>> {
        self.dynamic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds new zones from `cfg` and `dynamic` and swaps them in.
    fn rebuild(&self, cfg: &Config, dynamic: &[LocalRecord]) {
        // Conditionally forwarded domains are answered by their resolvers: no RFC 6303 empty zone shadows them.
        let elsewhere: Vec<Name> = cfg
            .forward
            .iter()
            .flat_map(|f| f.conditional.iter())
            .filter_map(|(domain, _)| Name::from_ascii(format!("{domain}.")).ok())
            .collect();
        let (mut zones, warnings) = ZoneSet::build(&cfg.zones, dynamic, 0, &elsewhere);
        // Each zone's serial: kept while its content stays the same, the next one (persisted, journaled) on a change.
        let changed = self.xfr.version(&mut zones, &self.metrics.xfr);
        for w in warnings {
            tracing::warn!("{w}");
        }
        self.zones.store(Arc::new(zones));
        self.generation.fetch_add(1, Ordering::Release);
        self.notify(cfg, &changed);
    }

    /// Sends NOTIFY for `zones` (those that have `notify` peers) with their serial now.
    pub(crate) fn notify(&self, cfg: &Config, zones: &[Name]) {
        let snapshot = self.zones();
        for zone in zones {
            let Some(policy) = cfg.transfers.get(zone).filter(|p| !p.notify.is_empty()) else { continue };
            let Some((soa, _)) = snapshot.zone_records(zone) else { continue };
            let key = policy.tsig.as_ref().and_then(|k| cfg.dns.tsig.get(k)).cloned();
            self.xfr.notifier.send(zone, soa, &policy.notify, key, &self.metrics.xfr);
        }
    }

    /// Sends NOTIFY for every zone with `notify` peers (at start and after a reload).
    pub(crate) fn notify_all(&self) {
        let cfg = self.cfg.load_full();
        let zones: Vec<Name> = cfg.transfers.keys().cloned().collect();
        self.notify(&cfg, &zones);
    }

    /// Changes whenever anything a query's answer is made of changes without going through the forwarder: the
    /// zones (config or dynamic records), the forwarder (present or not), the blocklist or its response. Callers
    /// that cache answers read it *before* reading the state and drop their cache when it moved; writers bump it
    /// *after* swapping the state in, so a cached answer can never outlive the change that made it wrong.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire).wrapping_add(self.blocklists.generation())
    }

    /// The zone snapshot in use (one atomic load).
    pub(crate) fn zones(&self) -> arc_swap::Guard<Arc<ZoneSet>> {
        self.zones.load()
    }

    pub(crate) fn forwarder(&self) -> Option<Arc<Forwarder>> {
        self.forwarder.load_full()
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    /// Adds or replaces a dynamic record (a CNAME per name, other types per value) for `caller`, who becomes its
    /// owner. Written to the store before the new zones are served.
    pub(crate) fn upsert(&self, caller: &Identity, mut rec: LocalRecord) -> Result<LocalRecord, OpError> {
        rec.owner = caller.uri();
        if self.zones.load().zone_of(&rec.name).is_none() {
            return Err(OpError::NotInZone(rec.name));
        }
        let cfg = self.cfg.load_full();
        let mut dynamic = self.lock_dynamic();
        let config_here: Vec<&LocalRecord> =
            cfg.zones.iter().flat_map(|z| z.records.iter()).filter(|r| r.name == rec.name).collect();
        let dynamic_here: Vec<&LocalRecord> = dynamic.iter().filter(|r| r.name == rec.name).collect();
        match caller.role {
            Role::Admin => {}
            Role::ServicesAgent => {
                let apexes: Vec<&Name> = cfg.zones.iter().map(|z| &z.origin).collect();
                cfg.services_agents.check(&caller.name, &rec.name, rec.kind, &apexes).map_err(OpError::OutOfScope)?;
                if let Some(r) = config_here.first() {
                    return Err(OpError::NotOwner { record: describe(r), owner: "the config file".to_string() });
                }
                if let Some(r) = dynamic_here.iter().find(|r| r.owner != rec.owner) {
                    return Err(OpError::NotOwner { record: describe(r), owner: r.owner.clone() });
                }
            }
            other => return Err(OpError::Role(other)),
        }
        check_cname_exclusive(&rec, config_here.iter().copied().chain(dynamic_here.iter().copied()))?;
        if rec.kind == Kind::Cname {
            if let Some(c) = config_here.iter().find(|r| r.kind == Kind::Cname) {
                return Err(OpError::FromConfig(describe(c)));
            }
        }
        self.store.upsert(&rec)?;
        dynamic.retain(|r| !r.same_key(&rec));
        dynamic.push(rec.clone());
        self.rebuild(&cfg, &dynamic);
        tracing::info!(record = describe(&rec), owner = rec.owner, "dns record upserted");
        Ok(rec)
    }

    /// Deletes the dynamic records at `name`, of `kind` if given, with `value` if given (needs `kind`).
    pub(crate) fn delete(&self, caller: &Identity, name: &str, kind: &str, value: &str) -> Result<usize, OpError> {
        let name = parse_name(name, None).map_err(|m| RecordError::new(Field::Name, m))?;
        let kind: Option<Kind> = if kind.trim().is_empty() { None } else { Some(kind.parse()?) };
        let value = match (kind, value.trim().is_empty()) {
            (_, true) => None,
            (None, false) => return Err(RecordError::new(Field::Type, "is required when a value is given").into()),
            (Some(k), false) => Some(parse_value(k, value, None)?.1),
        };
        let matches = |r: &LocalRecord| {
            r.name == name
                && kind.is_none_or(|k| r.kind == k)
                && value.as_ref().is_none_or(|v| r.value.eq_ignore_ascii_case(v))
        };
        let cfg = self.cfg.load_full();
        let mut dynamic = self.lock_dynamic();
        let doomed: Vec<LocalRecord> = dynamic.iter().filter(|r| matches(r)).cloned().collect();
        if doomed.is_empty() {
            if let Some(c) = cfg.zones.iter().flat_map(|z| z.records.iter()).find(|r| matches(r)) {
                return Err(OpError::FromConfig(describe(c)));
            }
            return Ok(0);
        }
        match caller.role {
            Role::Admin => {}
            Role::ServicesAgent => {
                let me = caller.uri();
                if let Some(r) = doomed.iter().find(|r| r.owner != me) {
                    return Err(OpError::NotOwner { record: describe(r), owner: r.owner.clone() });
                }
            }
            other => return Err(OpError::Role(other)),
        }
        let n = self.store.delete(&doomed)?;
        dynamic.retain(|r| !matches(r));
        self.rebuild(&cfg, &dynamic);
        tracing::info!(name = %name, deleted = n, by = %caller, "dns records deleted");
        Ok(n)
    }

    /// The config's records and the dynamic ones, optionally only those of one zone (as served: most specific).
    pub(crate) fn list(&self, zone: Option<&Name>) -> Vec<LocalRecord> {
        let cfg = self.cfg.load_full();
        let zones = self.zones.load();
        let dynamic = self.lock_dynamic();
        cfg.zones
            .iter()
            .flat_map(|z| z.records.iter())
            .chain(dynamic.iter())
            .filter(|r| zone.is_none_or(|z| zones.zone_of(&r.name) == Some(z)))
            .cloned()
            .collect()
    }

    /// Whether `name` is a configured zone.
    pub(crate) fn has_zone(&self, name: &Name) -> bool {
        self.cfg.load().zones.iter().any(|z| &z.origin == name)
    }

    /// Reads the config file again and applies zones, forwarding, blocklists and the query log. An invalid
    /// config is refused and the running one kept. Listen addresses, TLS files and the state dir need a restart.
    pub(crate) fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let old = self.cfg.load_full();
        let new = Config::load(&old.path)?;
        let mut applied = Vec::new();
        let mut restart = Vec::new();
        if new.dns.listen != old.dns.listen {
            restart.push("dns.listen");
        }
        if (&new.dns.tls_listen, &new.dns.https_listen, &new.dns.tls)
            != (&old.dns.tls_listen, &old.dns.https_listen, &old.dns.tls)
        {
            restart.push("dns.tls_listen/https_listen/tls_cert/tls_key");
        }
        if format!("{:?}", new.common) != format!("{:?}", old.common) {
            restart.push("state_dir/grpc/metrics");
        }
        let zones_changed = new.zones != old.zones;
        let forward_changed = format!("{:?}", new.forward) != format!("{:?}", old.forward);
        let blocklist_changed = format!("{:?}", new.blocklist) != format!("{:?}", old.blocklist);
        let log_changed = new.dns.query_log != old.dns.query_log;
        if new.services_agents != old.services_agents {
            applied.push("services_agents");
        }
        if forward_changed {
            self.forwarder.store(new.forward.as_ref().map(|f| Arc::new(forwarder(f, &self.metrics))));
            self.generation.fetch_add(1, Ordering::Release);
            applied.push("forward");
        }
        if blocklist_changed {
            self.blocklists.set_config(new.blocklist.clone().unwrap_or_else(empty_blocklist));
            let lists = self.blocklists.clone();
            tokio::spawn(async move {
                lists.refresh().await;
            });
            applied.push("blocklist");
        }
        if log_changed {
            self.query_log.set_enabled(new.dns.query_log);
            applied.push("dns.query_log");
        }
        let new = Arc::new(new);
        {
            let dynamic = self.lock_dynamic();
            self.cfg.store(new.clone());
            if zones_changed {
                self.rebuild(&new, &dynamic);
                applied.push("zones");
            }
        }
        if new.transfers != old.transfers || new.dns.tsig != old.dns.tsig {
            applied.push("transfers");
        }
        // Secondaries hear of the (possibly) new zone data and notify lists at every reload.
        self.notify_all();
        let changed = !applied.is_empty() || !restart.is_empty();
        let message = agent_core::config::reload_message(&applied, &restart);
        tracing::info!("{message}");
        Ok(ReloadOutcome { changed, message })
    }

    /// Reads every blocklist source now.
    pub(crate) async fn refresh_blocklist(&self) -> Vec<SourceStatus> {
        let s = self.blocklists.refresh().await;
        self.update_gauges();
        s
    }

    /// Updates the size gauges (cache and blocklist entries).
    pub(crate) fn update_gauges(&self) {
        let (entries, bytes) =
            self.forwarder.load().as_ref().map(|f| (f.cache_len(), f.cache_bytes())).unwrap_or((0, 0));
        self.metrics.set_sizes(entries, bytes, self.blocklists.entries());
        let lists: Vec<ListHealth> = self
            .blocklists
            .health()
            .into_iter()
            .map(|h| ListHealth { list: h.source, failing: h.failing, last_success_unix: h.last_success_unix })
            .collect();
        self.metrics.set_blocklists(&lists);
    }

    pub(crate) fn cache_entries(&self) -> usize {
        self.forwarder.load().as_ref().map(|f| f.cache_len()).unwrap_or(0)
    }

    /// One line for `Status`: "3 zones, 12 records, 1,000,000 blocked names, 2 upstreams".
    pub(crate) fn summary(&self) -> String {
        let zones = self.zones.load();
        let cfg = self.cfg.load();
        let upstreams = cfg.forward.as_ref().map(|f| f.upstreams.len()).unwrap_or(0);
        format!(
            "{}, {}, {}, {}",
            plural(zones.zone_count(), "zone"),
            plural(zones.record_count(), "record"),
            plural(self.blocklists.entries(), "blocked name"),
            plural(upstreams, "upstream"),
        )
    }

    /// The agent's part of `Agent/Status`: the summary, and a reason per blocklist source never loaded and per
    /// upstream when every upstream of a forwarding group is failing.
    pub(crate) fn health(&self, h: &mut agent_core::health::Health) {
        h.summary(self.summary());
        for reason in crate::blocklist::never_loaded(&self.blocklists.status()) {
            h.degraded(reason);
        }
        if let Some(f) = self.forwarder.load().as_ref() {
            for reason in f.failing() {
                h.degraded(reason);
            }
        }
    }

    /// Sends the size gauges to the metrics every `every` until `shutdown`.
    pub(crate) fn spawn_gauges(self: &Arc<Self>, every: Duration, shutdown: agent_core::cli::Shutdown) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut stop = std::pin::pin!(shutdown.wait());
            loop {
                this.update_gauges();
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}

fn describe(r: &LocalRecord) -> String {
    format!("{} {} {}", r.name, r.kind, r.value)
}

fn plural(n: usize, what: &str) -> String {
    format!("{} {what}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// 1000000 → "1,000,000".
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::telemetry::Metrics;
    use hickory_proto::rr::{LowerName, RecordType};

    const CONFIG: &str = "state_dir = \"state\"\n[grpc]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n\
        key = \"a.key\"\n[[zones]]\nname = \"lab.home.arpa\"\n\
        records = [{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }, { name = \"www\", type = \"CNAME\", value = \"nas\" }]\n\
        [services_agents.s1]\nunder = \"lab.home.arpa\"\n\
        [services_agents.s2]\nunder = \"lab.home.arpa\"\ntypes = [\"A\", \"TXT\"]\n";

    fn id(role: Role, name: &str) -> Identity {
        Identity::new("lab.test", role, name).unwrap()
    }

    fn rec(name: &str, kind: &str, value: &str) -> LocalRecord {
        LocalRecord::parse(name, kind, value, None, "", None).unwrap()
    }

    fn answers(dns: &Dns, name: &str, t: RecordType) -> usize {
        let n = LowerName::new(&Name::from_ascii(name).unwrap());
        dns.zones().lookup(&n, t).map(|a| a.answers.len()).unwrap_or(0)
    }

    #[test]
    fn ownership_rules_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let open = || Dns::new(Config::load(&path).unwrap(), DnsMetrics::new(&Metrics::new())).unwrap();
        let dns = open();
        let (admin, svc1, svc2, viewer) =
            (id(Role::Admin, "a"), id(Role::ServicesAgent, "s1"), id(Role::ServicesAgent, "s2"), id(Role::Viewer, "v"));
        let svc3 = id(Role::ServicesAgent, "s3");
        dns.upsert(&svc1, rec("app.lab.home.arpa", "A", "10.0.0.30")).unwrap();
        assert_eq!(answers(&dns, "app.lab.home.arpa.", RecordType::A), 1, "served at once");
        // (caller, record, expected error substring; empty = allowed)
        let cases: Vec<(&Identity, LocalRecord, &str)> = vec![
            (&svc1, rec("app.lab.home.arpa", "A", "10.0.0.31"), ""),
            (&svc2, rec("app.lab.home.arpa", "A", "10.0.0.32"), "is owned by spiffe://lab.test/services-agent/s1"),
            (&svc2, rec("app.lab.home.arpa", "TXT", "mine"), "is owned by spiffe://lab.test/services-agent/s1"),
            (&svc1, rec("nas.lab.home.arpa", "A", "10.0.0.11"), "is owned by the config file"),
            (
                &svc1,
                rec("app.lab.home.arpa", "TXT", "x"),
                "TXT at app.lab.home.arpa. is not allowed for services-agent s1",
            ),
            (&svc1, rec("lab.home.arpa", "A", "10.0.0.1"), "lab.home.arpa. is a zone apex"),
            (&svc3, rec("s3.lab.home.arpa", "A", "10.0.0.1"), "no [services_agents.s3] section"),
            (&viewer, rec("v.lab.home.arpa", "A", "10.0.0.1"), "viewer may not change dns records"),
            (&admin, rec("app.lab.home.arpa", "TXT", "admin may"), ""),
            (&admin, rec("x.example.com", "A", "10.0.0.1"), "x.example.com. is not in any zone"),
            (&admin, rec("app.lab.home.arpa", "CNAME", "nas.lab.home.arpa."), "type: CNAME at app.lab.home.arpa."),
            (&admin, rec("www.lab.home.arpa", "A", "10.0.0.1"), "type: A at www.lab.home.arpa. is not allowed"),
            (&admin, rec("www.lab.home.arpa", "CNAME", "app.lab.home.arpa."), "defined in the config file"),
        ];
        for (who, r, want) in cases {
            let what = format!("{} {} {} by {who}", r.name, r.kind, r.value);
            match (dns.upsert(who, r), want) {
                (Ok(_), "") => {}
                (Ok(_), want) => panic!("{what}: allowed, want {want:?}"),
                (Err(e), "") => panic!("{what}: {e}"),
                (Err(e), want) => assert!(e.to_string().contains(want), "{what}: want {want:?} in {e}"),
            }
        }
        assert_eq!(answers(&dns, "app.lab.home.arpa.", RecordType::A), 2);

        let e = dns.delete(&svc2, "app.lab.home.arpa", "A", "").unwrap_err();
        assert!(matches!(e, OpError::NotOwner { .. }), "{e}");
        let e = dns.delete(&admin, "nas.lab.home.arpa", "A", "10.0.0.10").unwrap_err();
        assert!(matches!(e, OpError::FromConfig(_)), "{e}");
        let e = dns.delete(&admin, "app.lab.home.arpa", "", "10.0.0.30").unwrap_err();
        assert_eq!(e.to_string(), "type: is required when a value is given");
        assert_eq!(dns.delete(&svc1, "app.lab.home.arpa", "A", "10.0.0.31").unwrap(), 1);
        assert_eq!(dns.delete(&svc1, "gone.lab.home.arpa", "", "").unwrap(), 0);
        drop(dns);

        // Reopened from the same state dir: the same records, served.
        let dns = open();
        assert_eq!(answers(&dns, "app.lab.home.arpa.", RecordType::A), 1);
        assert_eq!(answers(&dns, "app.lab.home.arpa.", RecordType::TXT), 1);
        let listed = dns.list(Some(&Name::from_ascii("lab.home.arpa.").unwrap()));
        assert_eq!(listed.len(), 4, "{listed:?}");
        assert_eq!(dns.summary(), "1 zone, 4 records, 0 blocked names, 0 upstreams");
    }

    #[test]
    fn reload_keeps_the_old_config_when_the_new_one_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let dns = Dns::new(Config::load(&path).unwrap(), DnsMetrics::new(&Metrics::new())).unwrap();
        std::fs::write(&path, CONFIG.replace("10.0.0.10", "10.0.0.1000")).unwrap();
        let e = dns.reload().unwrap_err().to_string();
        assert!(e.contains("zones[0].records[0].value"), "{e}");
        assert_eq!(answers(&dns, "nas.lab.home.arpa.", RecordType::A), 1);
        std::fs::write(&path, CONFIG.replace("nas", "nas2")).unwrap();
        let r = dns.reload().unwrap();
        assert_eq!(r, ReloadOutcome { changed: true, message: "config reloaded: applied zones".to_string() });
        assert_eq!(answers(&dns, "nas.lab.home.arpa.", RecordType::A), 0);
        assert_eq!(answers(&dns, "nas2.lab.home.arpa.", RecordType::A), 1);
        assert!(!dns.reload().unwrap().changed);
    }

    #[test]
    fn thousands_separators() {
        for (n, want) in [(0, "0"), (999, "999"), (1000, "1,000"), (1_000_000, "1,000,000"), (12345, "12,345")] {
            assert_eq!(thousands(n), want);
        }
        assert_eq!(plural(1, "zone"), "1 zone");
        assert_eq!(plural(1_000_000, "blocked name"), "1,000,000 blocked names");
    }
}
