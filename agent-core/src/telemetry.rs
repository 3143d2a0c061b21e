//! Logs (human, JSON, or plain with syslog priority prefixes on the systemd journal) and the metrics endpoint
//! (OpenMetrics or the Prometheus text format, by the scraper's `Accept`), with build and process metrics.
//! Knows tracing and prometheus-client; must not know which metrics an agent defines beyond the shared ones.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human text; plain (no colour, no timestamp) when stderr goes to the systemd journal.
    Auto,
    Human,
    Json,
}

/// The default log filter: info, with hickory's per-query INFO lines (two per DNS query) kept out of the journal.
pub const DEFAULT_FILTER: &str = "info,hickory_server=warn,hickory_net=warn,hickory_proto=warn,hickory_resolver=warn";

/// Targets held at `info` whatever `RUST_LOG` says: bollard logs every Docker API answer at debug, and a container's
/// inspect answer carries its environment (the secrets a stack was given).
pub const CAPPED_TARGETS: &[&str] = &["bollard=info"];

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default filter (but not [`CAPPED_TARGETS`]).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    for cap in CAPPED_TARGETS {
        if let Ok(d) = cap.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let on_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Auto if on_journal => {
            let plain = tracing_subscriber::fmt::format().with_ansi(false).without_time();
            builder.with_ansi(false).event_format(JournalPriority(plain)).try_init()
        }
        LogFormat::Auto | LogFormat::Human => builder.with_ansi(false).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)), so that `journalctl -p warning`
/// shows warnings and errors.
pub fn journal_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes each event with its journald priority, then formats it with the inner formatter.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", journal_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The agent's metric registry, shared by every module that registers metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics { registry: Arc::new(Mutex::new(Registry::with_prefix("strata"))) }
    }

    /// Registers a metric (name without the `strata_` prefix).
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).register(name, help, metric);
    }

    /// `strata_build_info{agent, version} 1`, as Prometheus exporters conventionally expose their build.
    pub fn register_build_info(&self, agent: &str, version: &str) {
        use prometheus_client::metrics::{family::Family, gauge::Gauge};
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![("agent".into(), agent.into()), ("version".into(), version.into())]).set(1);
        self.register("build_info", "The agent's name and version (always 1)", info);
    }

    /// The registry and this process's metrics in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        {
            let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        // The process metrics go before the closing `# EOF`.
        if let Some(body) = out.strip_suffix("# EOF\n") {
            let mut all = body.to_string();
            all.push_str(&process::openmetrics());
            all.push_str("# EOF\n");
            out = all;
        }
        out
    }

    /// The metrics in the exposition format a scraper asked for.
    pub fn encode_as(&self, format: Exposition) -> String {
        match format {
            Exposition::OpenMetrics => self.encode(),
            Exposition::PrometheusText => openmetrics_to_text(&self.encode()),
        }
    }

    /// Serves `GET /metrics` on an already-bound listener until `shutdown` resolves, in the format the request's
    /// `Accept` header asks for.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/metrics",
            get(move |headers: http::HeaderMap| {
                let m = self.clone();
                async move {
                    let accept = headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
                    let format = Exposition::negotiate(accept);
                    ([(http::header::CONTENT_TYPE, format.content_type())], m.encode_as(format))
                }
            }),
        );
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }
}

/// The two metric exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0, which Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for every other scraper (curl, `promtool check metrics`, older tools).
    PrometheusText,
}

impl Exposition {
    /// OpenMetrics when `Accept` names `application/openmetrics-text` (with a non-zero q), the text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let wants_openmetrics = accept.unwrap_or_default().split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let q_zero = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>() == Ok(0.0)));
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        });
        if wants_openmetrics {
            Exposition::OpenMetrics
        } else {
            Exposition::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text (as prometheus-client writes it) into the Prometheus text format 0.0.4: no `# EOF` or
/// `# UNIT`; a counter family's HELP and TYPE name its `_total` sample; `info` families become gauges named
/// `_info`, `unknown` ones `untyped`; `_created` samples and exemplars are dropped; HELP keeps only the escapes the
/// text format knows.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    use std::collections::HashMap;
    // family name -> type, from the TYPE lines (a family's HELP comes before its TYPE).
    let types: HashMap<&str, &str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|rest| rest.split_once(' ')).collect();
    let renamed = |family: &str| -> String {
        match types.get(family).copied() {
            Some("counter") => format!("{family}_total"),
            Some("info") => format!("{family}_info"),
            _ => family.to_string(),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {}\n", renamed(family), help.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "info" => "gauge",
                "unknown" | "stateset" => "untyped",
                "gaugehistogram" => "histogram",
                k => k,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(family)));
        } else if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        } else {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let created = name
                .strip_suffix("_created")
                .is_some_and(|f| matches!(types.get(f).copied(), Some("counter" | "histogram" | "summary")));
            if created {
                continue;
            }
            // An exemplar follows ` # ` after the value.
            let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// This process's standard metrics (`process_*`), read from `/proc/self` on Linux; none elsewhere (macOS has no
/// `/proc`: the host agent's plist runs without them).
mod process {
    use std::fmt::Write;

    /// USER_HZ: the unit of the CPU times in `/proc/PID/stat`; 100 on every Linux architecture that has `/proc`.
    const TICKS_PER_SECOND: f64 = 100.0;

    /// What `/proc/self` tells, parsed.
    #[derive(Debug, Default, PartialEq)]
    pub(super) struct Sample {
        pub(super) cpu_seconds: Option<f64>,
        pub(super) start_time_seconds: Option<f64>,
        pub(super) resident_bytes: Option<u64>,
        pub(super) virtual_bytes: Option<u64>,
        pub(super) open_fds: Option<u64>,
        pub(super) max_fds: Option<u64>,
    }

    /// (utime + stime, starttime) in ticks from `/proc/PID/stat`. The command name may hold spaces and
    /// parentheses: fields are counted after the last `)`.
    pub(super) fn parse_stat(stat: &str) -> Option<(u64, u64)> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some((field(14)? + field(15)?, field(22)?))
    }

    /// `btime` (boot time, Unix seconds) from `/proc/stat`.
    pub(super) fn parse_btime(stat: &str) -> Option<u64> {
        stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
    }

    /// A `KEY:   N kB` line of `/proc/PID/status`, in bytes.
    pub(super) fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
        let kb: u64 = line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The soft limit of `Max open files` in `/proc/PID/limits`.
    pub(super) fn parse_max_fds(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..].split_whitespace().next()?.parse().ok()
    }

    fn sample() -> Sample {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        let btime = read("/proc/stat").and_then(|s| parse_btime(&s));
        let status = read("/proc/self/status");
        Sample {
            cpu_seconds: stat.map(|(cpu, _)| cpu as f64 / TICKS_PER_SECOND),
            start_time_seconds: stat.zip(btime).map(|((_, start), boot)| boot as f64 + start as f64 / TICKS_PER_SECOND),
            resident_bytes: status.as_deref().and_then(|s| parse_status_kb(s, "VmRSS")),
            virtual_bytes: status.as_deref().and_then(|s| parse_status_kb(s, "VmSize")),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: read("/proc/self/limits").and_then(|s| parse_max_fds(&s)),
        }
    }

    /// The families of `sample` in OpenMetrics text (absent values are left out).
    pub(super) fn render(s: &Sample) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, unit: Option<&str>, help: &str, value: Option<String>| {
            let Some(value) = value else { return };
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if let Some(u) = unit {
                let _ = writeln!(out, "# UNIT {name} {u}");
            }
            let sample = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            let _ = writeln!(out, "{sample} {value}");
        };
        let f = |v: Option<f64>| v.map(|v| format!("{v}"));
        let n = |v: Option<u64>| v.map(|v| v.to_string());
        family(
            "process_cpu_seconds",
            "counter",
            Some("seconds"),
            "Total user and system CPU time spent in seconds.",
            f(s.cpu_seconds),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            Some("seconds"),
            "Start time of the process since unix epoch in seconds.",
            f(s.start_time_seconds),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            Some("bytes"),
            "Resident memory size in bytes.",
            n(s.resident_bytes),
        );
        family(
            "process_virtual_memory_bytes",
            "gauge",
            Some("bytes"),
            "Virtual memory size in bytes.",
            n(s.virtual_bytes),
        );
        family("process_open_fds", "gauge", None, "Number of open file descriptors.", n(s.open_fds));
        family("process_max_fds", "gauge", None, "Maximum number of open file descriptors.", n(s.max_fds));
        out
    }

    pub(super) fn openmetrics() -> String {
        render(&sample())
    }
}

/// Binds a TCP listener and logs `listening on ADDR` with what it is for; tests read that line.
pub async fn bind(what: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("{what} listening on {}", l.local_addr()?);
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_priorities_follow_syslog_levels() {
        use tracing::Level;
        let cases = [(Level::ERROR, 3), (Level::WARN, 4), (Level::INFO, 6), (Level::DEBUG, 7), (Level::TRACE, 7)];
        for (level, want) in cases {
            assert_eq!(journal_priority(&level), want, "{level}");
        }
    }

    #[test]
    fn negotiates_the_exposition_format() {
        let prometheus_2_42 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
                               q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let cases = [
            (Some(prometheus_2_42), Exposition::OpenMetrics),
            (Some("application/OpenMetrics-Text; version=1.0.0"), Exposition::OpenMetrics),
            (Some("text/plain"), Exposition::PrometheusText),
            (Some("*/*"), Exposition::PrometheusText),
            (Some("application/openmetrics-text;q=0, text/plain"), Exposition::PrometheusText),
            (None, Exposition::PrometheusText),
        ];
        for (accept, want) in cases {
            assert_eq!(Exposition::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn converts_openmetrics_to_the_text_format() {
        // As prometheus-client 0.26 writes a counter family, a gauge with a unit, an info metric and a histogram.
        let om = "# HELP strata_authz_decisions Authorization decisions by method and outcome.\n\
                  # TYPE strata_authz_decisions counter\n\
                  strata_authz_decisions_total{method=\"/a\",outcome=\"granted\"} 2\n\
                  strata_authz_decisions_created{method=\"/a\",outcome=\"granted\"} 1700000000.0\n\
                  # HELP strata_size_bytes Size \\\"quoted\\\".\n\
                  # TYPE strata_size_bytes gauge\n\
                  # UNIT strata_size_bytes bytes\n\
                  strata_size_bytes 5\n\
                  # HELP strata_target Target.\n\
                  # TYPE strata_target info\n\
                  strata_target_info{os=\"linux\"} 1\n\
                  # HELP strata_latency Latency.\n\
                  # TYPE strata_latency histogram\n\
                  strata_latency_sum 1.5\n\
                  strata_latency_count 2\n\
                  strata_latency_bucket{le=\"+Inf\"} 2 # {trace=\"x\"} 1.0\n\
                  # EOF\n";
        let want = "# HELP strata_authz_decisions_total Authorization decisions by method and outcome.\n\
                    # TYPE strata_authz_decisions_total counter\n\
                    strata_authz_decisions_total{method=\"/a\",outcome=\"granted\"} 2\n\
                    # HELP strata_size_bytes Size \"quoted\".\n\
                    # TYPE strata_size_bytes gauge\n\
                    strata_size_bytes 5\n\
                    # HELP strata_target_info Target.\n\
                    # TYPE strata_target_info gauge\n\
                    strata_target_info{os=\"linux\"} 1\n\
                    # HELP strata_latency Latency.\n\
                    # TYPE strata_latency histogram\n\
                    strata_latency_sum 1.5\n\
                    strata_latency_count 2\n\
                    strata_latency_bucket{le=\"+Inf\"} 2\n";
        assert_eq!(openmetrics_to_text(om), want);
    }

    #[test]
    fn parses_proc_self() {
        // Captured on this Debian machine (a `cat` process; the name of a real process may hold spaces and `)`).
        let stat = "13853 (c) t) R 13807 13807 1113 0 -1 4194304 98 0 0 0 7 3 0 0 20 0 1 0 50663 3133440 362 \
                    18446744073709551615 93868801548288 93868801568169 140731863133376 0 0 0 0 0 0 0 0 0 17 0 0 0";
        assert_eq!(process::parse_stat(stat), Some((10, 50663)));
        assert_eq!(process::parse_stat("garbage"), None);
        assert_eq!(process::parse_btime("cpu  1 2 3\nintr 5\nbtime 1764898000\nprocesses 9\n"), Some(1764898000));
        let status = "Name:\tcat\nVmPeak:\t    5640 kB\nVmSize:\t    5640 kB\nVmRSS:\t    1448 kB\n";
        assert_eq!(process::parse_status_kb(status, "VmRSS"), Some(1448 * 1024));
        assert_eq!(process::parse_status_kb(status, "VmSize"), Some(5640 * 1024));
        assert_eq!(process::parse_status_kb(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(process::parse_max_fds(limits), Some(20000));
    }

    #[test]
    fn process_metrics_render_in_both_formats() {
        let s = process::Sample { cpu_seconds: Some(1.5), resident_bytes: Some(4096), ..Default::default() };
        let om = process::render(&s);
        assert!(om.contains("# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n"), "{om}");
        assert!(om.contains("process_cpu_seconds_total 1.5\n"), "{om}");
        assert!(om.contains("process_resident_memory_bytes 4096\n"), "{om}");
        assert!(!om.contains("process_open_fds"), "absent values are left out: {om}");
        let text = openmetrics_to_text(&om);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"), "{text}");
    }

    #[test]
    fn the_registry_encodes_build_info_and_process_metrics_before_eof() {
        let m = Metrics::new();
        m.register_build_info("dns-agent", "1.2.3");
        let om = m.encode();
        assert!(om.contains("strata_build_info{agent=\"dns-agent\",version=\"1.2.3\"} 1\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("process_resident_memory_bytes "), "{om}");
        assert!(om.find("process_open_fds").unwrap() < om.find("# EOF").unwrap());
        let text = m.encode_as(Exposition::PrometheusText);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }
}
