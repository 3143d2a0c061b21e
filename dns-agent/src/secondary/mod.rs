//! Secondary zones (`[[secondaries]]`): each zone's copy, transferred from its primaries (SOA check, IXFR from
//! the copy or AXFR, checked whole before use), persisted (`persist`), refreshed on the SOA's refresh/retry timers
//! and on NOTIFY from a primary, and served until `expire` passes without a successful refresh. One task per zone.
//! The served copy only ever changes to a transfer that passed every check; bad input leaves it as it was and is
//! logged with the primary and the zone.
//! Knows the secondary's state machine; must not know the query path, the zone snapshot's layout (it hands
//! copies to `service` through `SecondaryZone`), proto/tonic or how TSIG is computed.

mod config;
mod persist;
mod transfer;
mod xfr;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::{Name, Record};

pub(crate) use config::validate;
pub(crate) use config::{RawSecondary, SecondaryConfig};
use persist::{Stored, ZoneFiles};
use transfer::FetchError;
use transfer::Limits;
use xfr::{check_zone, schedule, serial_gt, soa_of, Timers, Transfer, XfrError};

use crate::metrics::DnsMetrics;
use crate::tsig::{verify_request, ResponseSigner, TsigKeys};
use crate::zones::SecondaryZone;

/// What a NOTIFY for a zone from a peer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyVerdict {
    /// From one of the zone's primaries: a refresh starts now (NOERROR, AA).
    Accepted,
    /// Not a secondary zone of this agent (NOTAUTH).
    UnknownZone,
    /// From an address that is not one of the zone's primaries (REFUSED).
    Stranger,
    /// The zone has a TSIG key and the NOTIFY was not signed with it (NOTAUTH).
    BadTsig,
}

impl NotifyVerdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotifyVerdict::Accepted => "accepted",
            NotifyVerdict::UnknownZone => "unknown_zone",
            NotifyVerdict::Stranger => "refused",
            NotifyVerdict::BadTsig => "bad_tsig",
        }
    }
}

/// One secondary zone as `ListZones` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecondaryStatus {
    pub origin: Name,
    /// 0 without a copy.
    pub serial: u32,
    pub records: u64,
    pub primaries: Vec<String>,
    /// The last transfer or check that confirmed the copy current (0: never).
    pub last_transfer_unix: i64,
    /// AXFR, IXFR or up-to-date (empty: never).
    pub last_transfer_kind: String,
    /// The last refresh's failure; empty when it succeeded.
    pub last_error: String,
    /// Seconds since the copy was last confirmed current (-1: never).
    pub lag_seconds: i64,
    /// When the copy stops being served without a refresh (0: no copy).
    pub expires_unix: i64,
    pub serving: bool,
}

#[derive(Debug, Default)]
struct ZoneState {
    /// SOA first.
    copy: Option<Arc<Vec<Record>>>,
    last_ok: Option<i64>,
    last_failure: Option<i64>,
    last_kind: String,
    last_error: String,
    /// Whether the snapshot in use serves the copy (to rebuild when it flips).
    published_serving: bool,
}

impl ZoneState {
    fn serial(&self) -> Option<u32> {
        self.copy.as_ref().and_then(|c| c.first()).and_then(soa_of).map(|s| s.serial)
    }

    fn timers(&self) -> Option<Timers> {
        self.copy.as_ref().and_then(|c| c.first()).and_then(soa_of).map(Timers::of)
    }

    fn schedule(&self, now: i64) -> xfr::Schedule {
        schedule(self.timers(), self.last_ok, self.last_failure, now)
    }
}

struct Slot {
    cfg: SecondaryConfig,
    files: ZoneFiles,
    state: Mutex<ZoneState>,
    wake: tokio::sync::Notify,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, ZoneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Called after a copy changed or started or stopped being served: rebuilds the zone snapshot.
pub(crate) type OnChange = Arc<dyn Fn() + Send + Sync>;

/// Every secondary zone of the agent.
pub(crate) struct Secondaries {
    slots: Vec<Arc<Slot>>,
    /// `[dns] tsig_keys`, to verify signed NOTIFYs.
    keys: TsigKeys,
    limits: Limits,
    metrics: DnsMetrics,
}

fn now() -> i64 {
    agent_core::clock::now_unix()
}

impl Secondaries {
    /// Loads each zone's persisted copy from `STATE_DIR/secondaries` (served at once if not expired); a copy that
    /// cannot be read is logged and the zone starts without one.
    pub(crate) fn open(
        cfgs: &[SecondaryConfig],
        keys: &TsigKeys,
        state_dir: &Path,
        metrics: DnsMetrics,
    ) -> Secondaries {
        let dir = state_dir.join("secondaries");
        let now = now();
        let slots = cfgs
            .iter()
            .map(|cfg| {
                let files = ZoneFiles::new(&dir, &cfg.origin);
                let mut st = ZoneState::default();
                match files.load() {
                    Ok(Some(s)) => {
                        st.copy = Some(Arc::new(s.records));
                        st.last_ok = Some(s.last_ok_unix);
                        st.last_kind = s.last_transfer_kind;
                        let sched = st.schedule(now);
                        st.published_serving = sched.serving;
                        tracing::info!(zone = %cfg.origin, serial = st.serial().unwrap_or(0), serving = sched.serving,
                            "secondary zone: persisted copy loaded");
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(zone = %cfg.origin, error = %e,
                        "secondary zone: persisted copy unreadable, starting without one"),
                }
                Arc::new(Slot { cfg: cfg.clone(), files, state: Mutex::new(st), wake: tokio::sync::Notify::new() })
            })
            .collect();
        Secondaries { slots, keys: keys.clone(), limits: Limits::default(), metrics }
    }

    /// The copies the zone snapshot serves: each zone, its records (none without a copy) and whether it is served.
    pub(crate) fn zones(&self) -> Vec<SecondaryZone> {
        let now = now();
        self.slots
            .iter()
            .map(|s| {
                let st = s.lock();
                let serving = st.copy.is_some() && st.schedule(now).serving;
                SecondaryZone { origin: s.cfg.origin.clone(), records: st.copy.clone().unwrap_or_default(), serving }
            })
            .collect()
    }

    pub(crate) fn status(&self) -> Vec<SecondaryStatus> {
        let now = now();
        self.slots
            .iter()
            .map(|s| {
                let st = s.lock();
                let sched = st.schedule(now);
                SecondaryStatus {
                    origin: s.cfg.origin.clone(),
                    serial: st.serial().unwrap_or(0),
                    records: st.copy.as_ref().map_or(0, |c| c.len() as u64),
                    primaries: s.cfg.primaries.iter().map(|p| p.to_string()).collect(),
                    last_transfer_unix: st.last_ok.unwrap_or(0),
                    last_transfer_kind: st.last_kind.clone(),
                    last_error: st.last_error.clone(),
                    lag_seconds: st.last_ok.map_or(-1, |t| (now - t).max(0)),
                    expires_unix: if st.copy.is_some() { sched.expires.unwrap_or(0) } else { 0 },
                    serving: st.copy.is_some() && sched.serving,
                }
            })
            .collect()
    }

    /// Why the secondary zones make the agent degraded: one line per zone not served (SERVFAIL) or whose last
    /// refresh failed, naming the zone.
    pub(crate) fn degraded(&self) -> Vec<String> {
        self.status()
            .into_iter()
            .filter_map(|s| match (s.serving, s.last_error.is_empty()) {
                (false, _) if s.serial == 0 => Some(format!(
                    "secondary zone {}: no copy yet, answering SERVFAIL ({})",
                    s.origin,
                    if s.last_error.is_empty() { "no transfer tried yet" } else { &s.last_error }
                )),
                (false, _) => Some(format!(
                    "secondary zone {}: expired, answering SERVFAIL (last refresh: {})",
                    s.origin,
                    if s.last_error.is_empty() { "none" } else { &s.last_error }
                )),
                (true, false) => Some(format!(
                    "secondary zone {}: refresh failing, serving its copy until {} ({})",
                    s.origin, s.expires_unix, s.last_error
                )),
                (true, true) => None,
            })
            .collect()
    }

    /// Whether `name` is one of the secondary zones.
    pub(crate) fn has_zone(&self, name: &Name) -> bool {
        self.slots.iter().any(|s| &s.cfg.origin == name)
    }

    /// A NOTIFY (RFC 1996) for `zone` from `peer` (`raw`: the request as received, `signed`: whether it carries
    /// a TSIG): accepted only from one of the zone's primaries' addresses, signed with the zone's key when it has
    /// one, and then the zone is refreshed at once. Logged with the peer either way. The signer of the answer is
    /// returned when the NOTIFY was verified.
    pub(crate) fn notify(
        &self,
        zone: &Name,
        peer: SocketAddr,
        raw: &[u8],
        signed: bool,
    ) -> (NotifyVerdict, Option<ResponseSigner>) {
        let zone = zone.to_lowercase();
        let mut signer = None;
        let mut tsig_error = String::new();
        let verdict = match self.slots.iter().find(|s| s.cfg.origin == zone) {
            None => NotifyVerdict::UnknownZone,
            Some(s) if !s.cfg.primaries.iter().any(|p| same_ip(p.ip(), peer.ip())) => NotifyVerdict::Stranger,
            Some(s) => {
                let verified = match &s.cfg.tsig {
                    None => Ok(None),
                    Some(_) if !signed => Err("not signed".to_string()),
                    Some(key) => {
                        let now = u64::try_from(now()).unwrap_or(0);
                        match verify_request(&self.keys, raw, now) {
                            Ok(sig) if sig.key() == key => Ok(Some(sig)),
                            Ok(sig) => Err(format!("signed with key {}, not the zone's", sig.key().name())),
                            Err(r) => Err(r.failure.to_string()),
                        }
                    }
                };
                match verified {
                    Ok(sig) => {
                        signer = sig;
                        s.wake.notify_one();
                        NotifyVerdict::Accepted
                    }
                    Err(e) => {
                        tsig_error = e;
                        NotifyVerdict::BadTsig
                    }
                }
            }
        };
        match verdict {
            NotifyVerdict::BadTsig => {
                tracing::warn!(zone = %zone, %peer, error = tsig_error, "notify refused: bad or missing tsig")
            }
            NotifyVerdict::Accepted => tracing::info!(zone = %zone, %peer, "notify from a primary: refreshing"),
            NotifyVerdict::UnknownZone => {
                tracing::warn!(zone = %zone, %peer, "notify refused: not a secondary zone of this agent")
            }
            NotifyVerdict::Stranger => {
                tracing::warn!(zone = %zone, %peer, "notify refused: the peer is not one of the zone's primaries")
            }
        }
        self.metrics.notify_received(&zone.to_ascii(), verdict.as_str());
        (verdict, signer)
    }

    /// Starts one task per zone: a refresh at once, then on the timers and on NOTIFY, until `shutdown`.
    pub(crate) fn spawn(self: &Arc<Self>, on_change: OnChange, shutdown: agent_core::cli::Shutdown) {
        for slot in &self.slots {
            let this = self.clone();
            let slot = slot.clone();
            let on_change = on_change.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { this.run_zone(slot, on_change, stop).await });
        }
    }

    async fn run_zone(&self, slot: Arc<Slot>, on_change: OnChange, shutdown: agent_core::cli::Shutdown) {
        let mut stop = std::pin::pin!(shutdown.wait());
        let mut first = true;
        loop {
            let wait = publish(&slot, &on_change);
            if !first {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(wait) => {}
                    _ = slot.wake.notified() => {}
                }
                // An expiry is answered at once, not after a refresh attempt that may take a while.
                publish(&slot, &on_change);
            }
            first = false;
            if self.refresh(&slot).await {
                slot.lock().published_serving = true;
                on_change();
            }
        }
    }

    /// Tries each primary in turn; returns whether the copy changed.
    async fn refresh(&self, slot: &Slot) -> bool {
        let origin = &slot.cfg.origin;
        let mut errors = Vec::new();
        for &primary in &slot.cfg.primaries {
            match self.refresh_from(slot, primary).await {
                Ok(changed) => {
                    let mut st = slot.lock();
                    st.last_error.clear();
                    st.last_failure = None;
                    return changed;
                }
                Err(e) => {
                    tracing::warn!(zone = %origin, %primary, error = %e,
                        "secondary zone refresh failed: the served copy is unchanged");
                    errors.push(format!("{primary}: {e}"));
                }
            }
        }
        let mut st = slot.lock();
        st.last_error = errors.join("; ");
        st.last_failure = Some(now());
        false
    }

    /// One refresh from one primary: SOA check, then IXFR (falling back to AXFR) or AXFR.
    async fn refresh_from(&self, slot: &Slot, primary: SocketAddr) -> Result<bool, FetchError> {
        let origin = &slot.cfg.origin;
        let zone = origin.to_ascii();
        let (copy, ours) = {
            let st = slot.lock();
            (st.copy.clone(), st.serial())
        };
        let key = slot.cfg.tsig.as_ref();
        let theirs = transfer::soa_serial(primary, origin, key, self.limits).await?;
        if let Some(ours) = ours {
            if serial_gt(ours, theirs) {
                self.metrics.transfer(&zone, "in", "soa", "refused");
                return Err(XfrError::Backwards { ours, theirs }.into());
            }
            if !serial_gt(theirs, ours) {
                self.confirmed(slot, ours);
                return Ok(false);
            }
        }
        let copy_soa = copy.as_ref().and_then(|c| c.first());
        if let Some(copy) = copy.as_ref().filter(|_| copy_soa.is_some()) {
            match self.fetch_checked(slot, primary, Some(copy)).await {
                Ok(got) => return Ok(self.install(slot, got)),
                Err(e) => tracing::warn!(zone = %origin, %primary, error = %e,
                    "IXFR failed or refused: trying AXFR (the served copy is unchanged)"),
            }
        }
        let got = self.fetch_checked(slot, primary, None).await?;
        Ok(self.install(slot, got))
    }

    /// Transfers and checks a whole new zone: `Ok(None)` when the primary says the copy is current.
    async fn fetch_checked(
        &self,
        slot: &Slot,
        primary: SocketAddr,
        copy: Option<&Arc<Vec<Record>>>,
    ) -> Result<Option<(Vec<Record>, &'static str)>, FetchError> {
        let origin = &slot.cfg.origin;
        let zone = origin.to_ascii();
        let asked = if copy.is_some() { "IXFR" } else { "AXFR" };
        let ours = copy.and_then(|c| c.first()).and_then(soa_of).map(|s| s.serial);
        let result = async {
            let key = slot.cfg.tsig.as_ref();
            let (t, _bytes) = transfer::fetch(primary, origin, copy.and_then(|c| c.first()), key, self.limits).await?;
            let (records, kind) = match t {
                Transfer::UpToDate { .. } => return Ok(None),
                Transfer::Full { records } => (records, "AXFR"),
                Transfer::Incremental { soa, diffs } => {
                    let base = copy.map(|c| c.as_slice()).unwrap_or_default();
                    (xfr::apply(base, &soa, &diffs)?, "IXFR")
                }
            };
            check_zone(origin, &records, ours)?;
            Ok::<_, FetchError>(Some((records, kind)))
        }
        .await;
        let label = match &result {
            Ok(Some((_, kind))) => (*kind, "ok"),
            Ok(None) => (asked, "up_to_date"),
            Err(e) if e.is_bad_input() => (asked, "refused"),
            Err(_) => (asked, "failed"),
        };
        // Metric labels are lowercase (`kind="ixfr"`), as the primary side's.
        let kind = if label.0 == "IXFR" { "ixfr" } else { "axfr" };
        self.metrics.transfer(&zone, "in", kind, label.1);
        result
    }

    /// Makes a checked transfer the copy (persisted first); returns whether the copy changed.
    fn install(&self, slot: &Slot, got: Option<(Vec<Record>, &'static str)>) -> bool {
        let origin = &slot.cfg.origin;
        let Some((records, kind)) = got else {
            let serial = slot.lock().serial().unwrap_or(0);
            self.confirmed(slot, serial);
            return false;
        };
        let now = now();
        let stored =
            Stored { records, last_transfer_unix: now, last_transfer_kind: kind.to_string(), last_ok_unix: now };
        if let Err(e) = slot.files.save(&stored) {
            tracing::error!(zone = %origin, error = %e, "cannot persist the secondary zone's copy (serving it anyway)");
        }
        let serial = stored.records.first().and_then(soa_of).map(|s| s.serial).unwrap_or(0);
        let count = stored.records.len();
        let mut st = slot.lock();
        st.copy = Some(Arc::new(stored.records));
        st.last_ok = Some(now);
        st.last_kind = kind.to_string();
        tracing::info!(zone = %origin, serial, records = count, kind, "secondary zone transferred");
        true
    }

    /// The primary's serial equals the copy's: the copy is current now.
    fn confirmed(&self, slot: &Slot, serial: u32) {
        let now = now();
        {
            let mut st = slot.lock();
            st.last_ok = Some(now);
            st.last_kind = "up-to-date".to_string();
        }
        if let Err(e) = slot.files.save_refreshed(serial, now) {
            tracing::warn!(zone = %slot.cfg.origin, error = %e, "cannot persist the secondary zone's refresh time");
        }
        self.metrics.transfer(&slot.cfg.origin.to_ascii(), "in", "soa", "up_to_date");
    }

    /// Updates the per-zone gauges (serial, seconds behind).
    pub(crate) fn update_gauges(&self) {
        for s in self.status() {
            let zone = s.origin.to_ascii();
            self.metrics.set_zone_serial(&zone, "secondary", s.serial);
            self.metrics.set_seconds_behind(&zone, s.lag_seconds);
        }
    }
}

/// Rebuilds the snapshot when the zone started or stopped being served (logging an expiry); returns how long to
/// wait for the next check.
fn publish(slot: &Slot, on_change: &OnChange) -> Duration {
    let now = now();
    let (wait, flipped) = {
        let mut st = slot.lock();
        let sched = st.schedule(now);
        let serving = st.copy.is_some() && sched.serving;
        let flipped = serving != st.published_serving;
        if flipped {
            st.published_serving = serving;
            if !serving && st.copy.is_some() {
                tracing::error!(zone = %slot.cfg.origin, last_ok = st.last_ok.unwrap_or(0),
                    "secondary zone expired without a successful refresh: answering SERVFAIL");
            }
        }
        (Duration::from_secs(u64::try_from(sched.next_check - now).unwrap_or(0)), flipped)
    };
    if flipped {
        on_change();
    }
    wait
}

/// IPv4 and IPv4-mapped IPv6 addresses are the same peer.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}
