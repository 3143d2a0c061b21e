//! The one health mechanism of every agent: a one-line summary and the list of reasons the agent is *degraded* (it
//! answers, but cannot do part of its job). Any subsystem of an agent contributes through a [`Check`] that appends
//! its summary part and its reasons; `Status` and the `strata_degraded_reasons` gauge read the same report.
//! A check may also list the freshness of the backups it watches (`freshness::Freshness`), which `Status` returns
//! as they are. Knows nothing of what a check looks at (Docker, upstreams, VMs, backups).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;

use crate::freshness::Freshness;

/// What an agent says about itself, computed on demand from its live state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    parts: Vec<String>,
    degraded: Vec<String>,
    backups: Vec<Freshness>,
}

impl Health {
    /// Adds a part of the one-line summary ("3 stacks (3 running)"); empty parts are left out.
    pub fn summary(&mut self, part: impl Into<String>) {
        let part = part.into();
        if !part.is_empty() {
            self.parts.push(part);
        }
    }

    /// Adds a reason the agent is degraded. A reason names its object first ("docker: …", "stack web: …",
    /// "upstream udp://9.9.9.9:53: …", "vm dns: …") and says what is wrong, in one line.
    pub fn degraded(&mut self, reason: impl Into<String>) {
        self.degraded.push(reason.into());
    }

    /// The summary parts joined with "; ".
    pub fn summary_line(&self) -> String {
        self.parts.join("; ")
    }

    /// The reasons, in the order the checks gave them; empty when the agent is healthy.
    pub fn reasons(&self) -> &[String] {
        &self.degraded
    }

    /// Lists a watched backup's freshness (its reasons, if any, are added with [`Health::degraded`] by the check).
    pub fn backup(&mut self, f: Freshness) {
        self.backups.push(f);
    }

    /// The watched backups, in the order the checks listed them.
    pub fn backups(&self) -> &[Freshness] {
        &self.backups
    }

    pub fn is_degraded(&self) -> bool {
        !self.degraded.is_empty()
    }
}

/// One subsystem's contribution to an agent's [`Health`], computed on each call from memory (it must not block:
/// anything slow is probed in the background and its last outcome read here).
pub type Check = Arc<dyn Fn(&mut Health) + Send + Sync>;

/// Every check of an agent, run in order into one report.
#[derive(Clone, Default)]
pub struct Checks(Vec<Check>);

impl Checks {
    pub fn new() -> Self {
        Checks::default()
    }

    /// Appends a subsystem's check (its summary part comes after the earlier ones').
    pub fn add(&mut self, check: impl Fn(&mut Health) + Send + Sync + 'static) -> &mut Self {
        self.0.push(Arc::new(check));
        self
    }

    /// Runs every check.
    pub fn report(&self) -> Health {
        let mut h = Health::default();
        for c in &self.0 {
            c(&mut h);
        }
        h
    }
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checks({})", self.0.len())
    }
}

/// `strata_degraded_reasons`: how many reasons the agent is degraded for (0 = healthy), computed at each scrape.
#[derive(Debug, Clone)]
pub struct DegradedGauge(pub Checks);

impl EncodeMetric for DegradedGauge {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.report().reasons().len() as i64))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_append_summary_parts_and_reasons_in_order() {
        let mut checks = Checks::new();
        checks.add(|h| h.summary("3 stacks"));
        checks.add(|h| {
            h.summary("");
            h.degraded("docker: cannot connect");
        });
        checks.add(|h| {
            h.summary("2 backups");
            h.degraded("backup of photos is stale");
        });
        let h = checks.report();
        assert_eq!(h.summary_line(), "3 stacks; 2 backups");
        assert_eq!(h.reasons(), ["docker: cannot connect", "backup of photos is stale"]);
        assert!(h.is_degraded());
        assert!(!Checks::new().report().is_degraded());
    }

    #[test]
    fn the_gauge_counts_reasons_at_each_scrape() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut checks = Checks::new();
        let f = flag.clone();
        checks.add(move |h| {
            if f.load(std::sync::atomic::Ordering::Relaxed) {
                h.degraded("vm a: not found");
            }
        });
        let metrics = crate::telemetry::Metrics::new();
        metrics.register("degraded_reasons", "Reasons the agent is degraded", DegradedGauge(checks));
        let text = |m: &crate::telemetry::Metrics| m.encode();
        assert!(text(&metrics).contains("strata_degraded_reasons 0"), "{}", text(&metrics));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(text(&metrics).contains("strata_degraded_reasons 1"), "{}", text(&metrics));
    }
}
