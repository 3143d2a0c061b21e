//! The backup bookkeeping both backup agents share, so that they cannot drift: the one metric vocabulary
//! (`strata_backup_*{layer,name,repo}`, see docs/operations.md), and the watch that keeps each backup's last success
//! and last outcome in memory and judges its freshness on demand — for `Status` and the health reasons (a
//! [`crate::health::Check`]) and, at each scrape, for `strata_backup_overdue` and `strata_backup_failing`. Knows
//! labels, records and time; must not know how a backup runs or where the agent keeps its history (the agent seeds
//! the watch from its journal and reports each run).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;

use crate::freshness::{self, Freshness, Layer, Record};
use crate::health::Health;
use crate::telemetry::Metrics;

/// Labels of the per-repository backup metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabels {
    pub layer: String,
    pub name: String,
    pub repo: String,
}

/// Labels of the per-run backup metrics (the downtime: one quiesce for every repository).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub layer: String,
    pub name: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// One watched backup: a name in one repository.
#[derive(Debug, Clone)]
struct Watched {
    name: String,
    repo: String,
    warn_after: Option<Duration>,
    record: Record,
}

/// The backups of one agent (one layer): their metrics and freshness. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct BackupWatch {
    layer: Layer,
    since: i64,
    watched: Arc<Mutex<Vec<Watched>>>,
    last_success: Family<RepoLabels, FGauge>,
    last_duration: Family<RepoLabels, FGauge>,
    downtime: Family<NameLabels, FGauge>,
    failures: Family<RepoLabels, Counter>,
    size: Family<RepoLabels, Gauge>,
    check_failing: Family<RepoLabels, Gauge>,
}

impl BackupWatch {
    /// An empty watch of `layer`'s backups; `since` (Unix seconds, the agent's start) is when watching began.
    pub fn new(layer: Layer, since: i64) -> BackupWatch {
        BackupWatch {
            layer,
            since,
            watched: Arc::default(),
            last_success: Family::default(),
            last_duration: Family::default(),
            downtime: Family::default(),
            failures: Family::default(),
            size: Family::default(),
            check_failing: Family::default(),
        }
    }

    fn labels(&self, name: &str, repo: &str) -> RepoLabels {
        RepoLabels { layer: self.layer.as_str().into(), name: name.into(), repo: repo.into() }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares a backup (call in config order) with what the agent's history says of it. `warn_after`: `None`
    /// when it is not watched for age (no schedule).
    pub fn watch(&self, name: &str, repo: &str, warn_after: Option<Duration>, record: Record) {
        if let Some(t) = record.last_success {
            self.last_success.get_or_create(&self.labels(name, repo)).set(t as f64);
        }
        let mut w = self.entries();
        match w.iter_mut().find(|e| e.name == name && e.repo == repo) {
            Some(e) => {
                e.warn_after = warn_after;
                e.record = record;
            }
            None => w.push(Watched { name: name.into(), repo: repo.into(), warn_after, record }),
        }
    }

    /// Stops watching every backup `keep(name, repo)` refuses (a reload dropped its VM, service or repository):
    /// it leaves the freshness judgement and its metric series go.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut w = self.entries();
        w.retain(|e| {
            let kept = keep(&e.name, &e.repo);
            if !kept {
                let labels = self.labels(&e.name, &e.repo);
                for family in [&self.last_success, &self.last_duration] {
                    family.remove(&labels);
                }
                self.failures.remove(&labels);
                self.size.remove(&labels);
                self.check_failing.remove(&labels);
            }
            kept
        });
    }

    /// Records one run's result in one repository: it started at `started` (Unix seconds), its transfer there took
    /// `took`, and it stored `Ok(size in bytes)` or failed with `Err(why)`.
    pub fn record_run(&self, name: &str, repo: &str, started: i64, took: Duration, outcome: Result<u64, String>) {
        let labels = self.labels(name, repo);
        self.last_duration.get_or_create(&labels).set(took.as_secs_f64());
        match &outcome {
            Ok(size) => {
                self.last_success.get_or_create(&labels).set(started as f64);
                self.size.get_or_create(&labels).set(i64::try_from(*size).unwrap_or(i64::MAX));
            }
            Err(_) => {
                self.failures.get_or_create(&labels).inc();
            }
        }
        let mut w = self.entries();
        let i = match w.iter().position(|e| e.name == name && e.repo == repo) {
            Some(i) => i,
            None => {
                w.push(Watched { name: name.into(), repo: repo.into(), warn_after: None, record: Record::default() });
                w.len() - 1
            }
        };
        let r = &mut w[i].record;
        r.last_run = Some(started);
        match outcome {
            Ok(_) => {
                r.last_success = Some(started);
                r.last_error = None;
            }
            Err(e) => r.last_error = Some(e),
        }
    }

    /// Records how long a run kept `name` stopped or paused (one quiesce for every repository).
    pub fn record_downtime(&self, name: &str, downtime: Duration) {
        let labels = NameLabels { layer: self.layer.as_str().into(), name: name.into() };
        self.downtime.get_or_create(&labels).set(downtime.as_secs_f64());
    }

    /// Records the outcome of the last repository check (`borg check`) of `name`'s repository `repo`.
    pub fn record_check(&self, name: &str, repo: &str, ok: bool) {
        self.check_failing.get_or_create(&self.labels(name, repo)).set(i64::from(!ok));
    }

    /// Every watched backup judged at `now`, in the order they were declared.
    pub fn judge_all(&self, now: i64) -> Vec<Freshness> {
        self.entries()
            .iter()
            .map(|e| freshness::judge(self.layer, &e.name, &e.repo, &e.record, e.warn_after, self.since, now))
            .collect()
    }

    /// The health check: a summary part counting failing and overdue backups ("1 backup failing, 2 overdue"), one
    /// reason per failing or overdue backup, and every backup's freshness for `Status`.
    pub fn check(&self, h: &mut Health) {
        let all = self.judge_all(crate::clock::now_unix());
        let failing = all.iter().filter(|f| f.failing).count();
        let overdue = all.iter().filter(|f| f.overdue).count();
        h.summary(summary(failing, overdue));
        for f in all {
            for r in f.reasons() {
                h.degraded(r);
            }
            h.backup(f);
        }
    }

    /// Registers the vocabulary in `metrics`; overdue and failing are judged at each scrape.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "backup_last_success_timestamp_seconds",
            "When the last backup run that reached this repository started (Unix seconds)",
            self.last_success.clone(),
        );
        metrics.register(
            "backup_last_duration_seconds",
            "How long the last backup run to this repository took, failed or not",
            self.last_duration.clone(),
        );
        metrics.register(
            "backup_downtime_seconds",
            "How long the last backup run kept the service's containers or the VM stopped or paused",
            self.downtime.clone(),
        );
        metrics.register(
            "backup_overdue",
            "1 when the last success in this repository is older than the backup's warn_after",
            Flag { watch: self.clone(), overdue: true },
        );
        metrics.register(
            "backup_failing",
            "1 when the last backup run to this repository failed",
            Flag { watch: self.clone(), overdue: false },
        );
        metrics.register("backup_failures", "Backup runs in which this repository failed", self.failures.clone());
        metrics.register(
            "backup_size_bytes",
            "What the last successful run stored in this repository (original size)",
            self.size.clone(),
        );
        metrics.register(
            "backup_check_failing",
            "1 when the last check of this repository failed",
            self.check_failing.clone(),
        );
    }
}

/// "1 backup failing, 2 overdue"; empty when none is either.
fn summary(failing: usize, overdue: usize) -> String {
    let plural = |n: usize| if n == 1 { "backup" } else { "backups" };
    match (failing, overdue) {
        (0, 0) => String::new(),
        (f, 0) => format!("{f} {} failing", plural(f)),
        (0, o) => format!("{o} {} overdue", plural(o)),
        (f, o) => format!("{f} {} failing, {o} overdue", plural(f)),
    }
}

/// `strata_backup_overdue` / `strata_backup_failing`: 0/1 per watched backup, judged when scraped.
#[derive(Debug)]
struct Flag {
    watch: BackupWatch,
    overdue: bool,
}

impl EncodeMetric for Flag {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in self.watch.judge_all(crate::clock::now_unix()) {
            let labels = self.watch.labels(&f.name, &f.repo);
            let v = if self.overdue { f.overdue } else { f.failing };
            encoder.encode_family(&labels)?.encode_gauge(&i64::from(v))?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn runs_feed_the_metrics_and_the_health_report() {
        let now = crate::clock::now_unix();
        let watch = BackupWatch::new(Layer::Services, now - 7200);
        let hour = Some(Duration::from_secs(3600));
        watch.watch("web", "local", hour, Record { last_success: Some(now - 60), ..Record::default() });
        watch.watch("web", "offsite", hour, Record::default());
        watch.watch("db", "local", None, Record::default());
        watch.record_run("db", "local", now - 10, Duration::from_millis(1500), Err("borg: repository gone".into()));
        watch.record_run("web", "local", now - 5, Duration::from_secs(2), Ok(4096));
        watch.record_downtime("web", Duration::from_millis(250));
        watch.record_check("web", "local", false);
        let metrics = Metrics::new();
        watch.register(&metrics);
        let text = metrics.encode();
        let want = [
            (r#"strata_backup_last_success_timestamp_seconds{layer="services",name="web",repo="local"}"#, None),
            (r#"strata_backup_last_duration_seconds{layer="services",name="db",repo="local"} 1.5"#, Some("")),
            (r#"strata_backup_downtime_seconds{layer="services",name="web"} 0.25"#, Some("")),
            (r#"strata_backup_overdue{layer="services",name="web",repo="offsite"} 1"#, Some("")),
            (r#"strata_backup_overdue{layer="services",name="web",repo="local"} 0"#, Some("")),
            (r#"strata_backup_overdue{layer="services",name="db",repo="local"} 0"#, Some("")),
            (r#"strata_backup_failing{layer="services",name="db",repo="local"} 1"#, Some("")),
            (r#"strata_backup_failing{layer="services",name="web",repo="local"} 0"#, Some("")),
            (r#"strata_backup_failures_total{layer="services",name="db",repo="local"} 1"#, Some("")),
            (r#"strata_backup_size_bytes{layer="services",name="web",repo="local"} 4096"#, Some("")),
            (r#"strata_backup_check_failing{layer="services",name="web",repo="local"} 1"#, Some("")),
        ];
        for (prefix, exact) in want {
            let l = line(&text, prefix).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
            if exact.is_some() {
                assert_eq!(l, prefix);
            } else {
                assert_eq!(l, format!("{prefix} {}.0", now - 5), "the run's start is the last success");
            }
        }
        assert!(line(&text, "# TYPE strata_backup_overdue gauge").is_some(), "{text}");

        let mut h = Health::default();
        watch.check(&mut h);
        assert_eq!(h.summary_line(), "1 backup failing, 1 overdue");
        assert_eq!(
            h.reasons(),
            [
                "service web: backup overdue (repo offsite): no success in the 2h since the agent started, warn after 1h",
                "service db: backup failing (repo local): borg: repository gone",
            ]
        );
        let states: Vec<(&str, &str, &str)> =
            h.backups().iter().map(|f| (f.name.as_str(), f.repo.as_str(), f.state.as_str())).collect();
        assert_eq!(states, [("web", "local", "ok"), ("web", "offsite", "overdue"), ("db", "local", "failing")]);

        // The repository fixed: the next run clears it.
        watch.record_run("db", "local", now, Duration::from_secs(1), Ok(1));
        let mut h = Health::default();
        watch.check(&mut h);
        assert_eq!(h.summary_line(), "1 backup overdue");
        assert!(metrics.encode().contains(r#"strata_backup_failing{layer="services",name="db",repo="local"} 0"#));

        // A reload dropped service db: it is no longer judged and its series go; web's stay.
        watch.retain(|name, _| name != "db");
        let text = metrics.encode();
        assert!(!text.contains(r#"name="db""#), "{text}");
        assert!(text.contains(r#"strata_backup_size_bytes{layer="services",name="web",repo="local"} 4096"#));
        let mut h = Health::default();
        watch.check(&mut h);
        assert_eq!(h.backups().len(), 2);
    }

    #[test]
    fn summaries_count_failing_and_overdue() {
        let cases = [
            ((0, 0), ""),
            ((1, 0), "1 backup failing"),
            ((0, 2), "2 backups overdue"),
            ((3, 1), "3 backups failing, 1 overdue"),
        ];
        for ((f, o), want) in cases {
            assert_eq!(summary(f, o), want);
        }
    }
}
