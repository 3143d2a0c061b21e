//! What the shipped monitoring (deploy/prometheus rules, deploy/grafana dashboard) asks of the agents, and what the
//! agents export: pure functions that pull metric and label names out of PromQL expressions, alert rule files,
//! Grafana dashboards and the Prometheus text format, and compare them. Knows PromQL's lexical shape, the rule
//! file's layout and Grafana's JSON; must not know how agents are started or scraped.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

/// Metrics Prometheus makes itself: no agent exports them.
pub const BUILTIN_METRICS: &[&str] = &["up"];
/// Labels Prometheus adds to every scraped series (`job`, `instance`), a histogram's `le`, and the metric name.
pub const BUILTIN_LABELS: &[&str] = &["job", "instance", "le", "__name__"];

/// PromQL words that are not metrics: operators, modifiers, and the aggregations (which may be followed by `by (…)`
/// rather than by their parenthesis).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Words followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric and label names one expression (or one template) uses, and where it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Use {
    /// E.g. `strata.rules.yml: alert StrataBackupOverdue`.
    pub origin: String,
    pub metrics: BTreeSet<String>,
    pub labels: BTreeSet<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names and label names a PromQL expression uses: metric names are identifiers that are not functions
/// (followed by `(`), keywords or label lists; labels are the names in `{…}` matchers and in `by`/`without`/`on`/
/// `ignoring`/`group_left`/`group_right` lists. Strings, durations in `[…]`, numbers and Grafana variables (`$x`)
/// are skipped.
pub fn expr_uses(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let mut i = 0;
    let skip_string = |i: usize| -> usize {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' && quote != '`' { 2 } else { 1 };
        }
        j + 1
    };
    let ident_end = |i: usize| -> usize {
        let mut j = i;
        while j < chars.len() && is_ident(chars[j]) {
            j += 1;
        }
        j
    };
    let next_non_space = |mut j: usize| -> Option<char> {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        chars.get(j).copied()
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                    i += 1;
                }
            }
            '{' => {
                // Label matchers: NAME OP "value", separated by commas.
                i += 1;
                while i < chars.len() && chars[i] != '}' {
                    if matches!(chars[i], '"' | '\'' | '`') {
                        i = skip_string(i);
                    } else if is_ident_start(chars[i]) {
                        let end = ident_end(i);
                        labels.insert(chars[i..end].iter().collect());
                        i = end;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                // A number (1e3, 0x1f, 21) or a duration: its letters belong to it.
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let end = ident_end(i);
                let word: String = chars[i..end].iter().collect();
                let followed_by_paren = next_non_space(end) == Some('(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if followed_by_paren {
                        let mut j = end;
                        while chars[j] != '(' {
                            j += 1;
                        }
                        while j < chars.len() && chars[j] != ')' {
                            if is_ident_start(chars[j]) {
                                let e = ident_end(j);
                                labels.insert(chars[j..e].iter().collect());
                                j = e;
                            } else {
                                j += 1;
                            }
                        }
                        i = j + 1;
                        continue;
                    }
                } else if !followed_by_paren && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    metrics.insert(word);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    (metrics, labels)
}

/// Label names referenced by alert templates (`$labels.NAME`) or Grafana legends (`{{NAME}}`, `{{ NAME }}`).
pub fn template_labels(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in text.split("$labels.").skip(1) {
        let name: String = part.chars().take_while(|c| is_ident(*c)).collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    for part in text.split("{{").skip(1) {
        let inner = part.split("}}").next().unwrap_or_default().trim();
        if !inner.is_empty() && inner.chars().all(is_ident) {
            out.insert(inner.to_string());
        }
    }
    out
}

/// One `Use` per rule of a Prometheus rule file: its `expr` (inline, quoted, or a `|`/`>` block) and the
/// `$labels.X` its annotations name. `file` names the origin.
pub fn rule_file_uses(file: &str, yaml: &str) -> Result<Vec<Use>> {
    let lines: Vec<&str> = yaml.lines().collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .map(|(i, _)| i)
        .collect();
    let mut uses = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let chunk: Vec<&str> = lines[start..end].iter().copied().filter(|l| !l.trim_start().starts_with('#')).collect();
        let name = chunk[0].trim_start().trim_start_matches("- ").trim();
        let (at, expr_line) = chunk
            .iter()
            .enumerate()
            .find(|(_, l)| l.trim_start().starts_with("expr:"))
            .with_context(|| format!("{file}: rule `{name}` has no expr"))?;
        let indent = expr_line.len() - expr_line.trim_start().len();
        let value = expr_line.trim_start()["expr:".len()..].trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            chunk[at + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            value.trim_matches(|c| c == '"' || c == '\'').to_string()
        };
        if expr.trim().is_empty() {
            bail!("{file}: rule `{name}` has an empty expr");
        }
        let (metrics, mut labels) = expr_uses(&expr);
        labels.extend(template_labels(&chunk.join("\n")));
        uses.push(Use { origin: format!("{file}: {name}"), metrics, labels });
    }
    if uses.is_empty() {
        bail!("{file}: no rule found");
    }
    Ok(uses)
}

/// Every PromQL expression of a Grafana dashboard: `(origin, expr, legendFormat)` for each panel target (rows'
/// nested panels included) and `(origin, query, "")` for each query variable.
pub fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("untitled");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let legend = t["legendFormat"].as_str().unwrap_or_default().to_string();
                    out.push((
                        format!("panel `{title}` target {}", t["refId"].as_str().unwrap_or("?")),
                        expr.into(),
                        legend,
                    ));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"].as_str().or_else(|| v["query"]["query"].as_str()).unwrap_or_default();
        out.push((format!("variable `{}`", v["name"].as_str().unwrap_or("?")), query.to_string(), String::new()));
    }
    out
}

/// The `Use` of one dashboard expression: Grafana's `label_values(EXPR, LABEL)` counts EXPR and LABEL.
pub fn dashboard_use(origin: &str, expr: &str, legend: &str) -> Use {
    let (metrics, mut labels) = match expr.trim().strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        Some(args) => {
            let (inner, label) = args.rsplit_once(',').unwrap_or(("", args));
            let (m, mut l) = expr_uses(inner);
            l.insert(label.trim().to_string());
            (m, l)
        }
        None => expr_uses(expr),
    };
    labels.extend(template_labels(legend));
    Use { origin: origin.to_string(), metrics, labels }
}

/// Sample names (as Prometheus stores them: `x_total`, `h_bucket`…) and the label names seen on each, from the
/// Prometheus text format. Comment lines (HELP/TYPE) are ignored: only families with samples count.
pub fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(|c: char| !is_ident(c)).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        let rest = &line[name_end..];
        let Some(body) = rest.strip_prefix('{') else { continue };
        let chars: Vec<char> = body.chars().collect();
        let mut i = 0;
        while i < chars.len() && chars[i] != '}' {
            if chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            } else if is_ident_start(chars[i]) {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                labels.insert(chars[start..i].iter().collect());
            } else {
                i += 1;
            }
        }
    }
    out
}

/// One line per metric no agent exports and per label that none of the use's (known) metrics carries. A use whose
/// metrics are all unknown gets no label lines (its metric lines already fail it).
pub fn unknown_names(uses: &[Use], exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for u in uses {
        let mut known_labels: BTreeSet<&str> = BUILTIN_LABELS.iter().copied().collect();
        let mut any_known = false;
        for m in &u.metrics {
            if BUILTIN_METRICS.contains(&m.as_str()) {
                any_known = true;
            } else if let Some(labels) = exported.get(m) {
                any_known = true;
                known_labels.extend(labels.iter().map(String::as_str));
            } else {
                out.push(format!("{}: metric `{m}` is exported by no agent", u.origin));
            }
        }
        if !any_known && !u.metrics.is_empty() {
            continue;
        }
        for l in &u.labels {
            if !known_labels.contains(l.as_str()) {
                let names: Vec<&str> = u.metrics.iter().map(String::as_str).collect();
                out.push(format!("{}: label `{l}` is on none of its metrics ({})", u.origin, names.join(", ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn expressions_yield_their_metrics_and_labels() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("strata_backup_overdue == 1", &["strata_backup_overdue"], &[]),
            (r#"up{job=~"strata-.*"} == 0"#, &["up"], &["job"]),
            ("strata_certificate_expiry_timestamp_seconds - time() < 21 * 86400", &["strata_certificate_expiry_timestamp_seconds"], &[]),
            (
                "(sum by (job, instance, upstream) (rate(strata_dns_upstream_failures_total[5m])) / \
                 sum by(job,instance,upstream)(rate(strata_dns_upstream_queries_total[5m]))) > 0.5 \
                 and on (job, instance, upstream) sum without (x) (increase(strata_dns_upstream_failures_total[5m])) >= 3",
                &["strata_dns_upstream_failures_total", "strata_dns_upstream_queries_total"],
                &["instance", "job", "upstream", "x"],
            ),
            (
                r#"histogram_quantile(0.99, sum by (le) (rate(strata_dns_query_duration_seconds_bucket{instance=~"$dns_instance", outcome!="a,b}"}[$__rate_interval])))"#,
                &["strata_dns_query_duration_seconds_bucket"],
                &["instance", "le", "outcome"],
            ),
            (r#"sum(rate(a_total[1h] offset 1d)) by (qtype) / ignoring(x) group_left(y) b"#, &["a_total", "b"], &["qtype", "x", "y"]),
            ("1e3 + 0x1F * .5 + Inf", &[], &[]),
        ];
        for (expr, metrics, labels) in cases {
            assert_eq!(expr_uses(expr), (set(metrics), set(labels)), "{expr}");
        }
    }

    #[test]
    fn templates_name_their_labels() {
        assert_eq!(
            template_labels("{{ $labels.layer }} of {{ $labels.name }} ({{ $value | humanize }}) {{repo}} {{ job }}"),
            set(&["job", "layer", "name", "repo"])
        );
    }

    const RULES: &str = r#"
groups:
  - name: g
    rules:
      # a comment
      - alert: Overdue
        expr: strata_backup_overdue == 1
        annotations:
          summary: "{{ $labels.layer }} {{ $labels.name }}"
      - alert: Ratio
        expr: |
          sum by (upstream) (rate(strata_dns_upstream_failures_total[5m]))
            > 0
        for: 5m
      - record: job:up:sum
        expr: 'sum by (job) (up)'
"#;

    #[test]
    fn rule_files_yield_one_use_per_rule() {
        let uses = rule_file_uses("r.yml", RULES).unwrap();
        let got: Vec<(&str, BTreeSet<String>, BTreeSet<String>)> =
            uses.iter().map(|u| (u.origin.as_str(), u.metrics.clone(), u.labels.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("r.yml: alert: Overdue", set(&["strata_backup_overdue"]), set(&["layer", "name"])),
                ("r.yml: alert: Ratio", set(&["strata_dns_upstream_failures_total"]), set(&["upstream"])),
                ("r.yml: record: job:up:sum", set(&["up"]), set(&["job"])),
            ]
        );
        assert!(rule_file_uses("r.yml", "groups: []\n").is_err());
        assert!(rule_file_uses("r.yml", "      - alert: X\n        for: 5m\n").is_err());
    }

    #[test]
    fn dashboards_yield_targets_legends_and_variables() {
        let d = serde_json::json!({
            "panels": [
                {"title": "Agents", "type": "row", "panels": [
                    {"title": "up", "targets": [{"refId": "A", "expr": "up", "legendFormat": "{{instance}}"}]}
                ]},
                {"title": "DNS", "targets": [{"refId": "B", "expr": "rate(strata_dns_queries_total[5m])", "legendFormat": "{{outcome}}"}]}
            ],
            "templating": {"list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                {"name": "dns", "type": "query", "query": {"query": "label_values(strata_dns_queries_total, instance)"}}
            ]}
        });
        let uses: Vec<Use> = dashboard_exprs(&d).iter().map(|(o, e, l)| dashboard_use(o, e, l)).collect();
        let got: Vec<(&str, BTreeSet<String>, BTreeSet<String>)> =
            uses.iter().map(|u| (u.origin.as_str(), u.metrics.clone(), u.labels.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("panel `up` target A", set(&["up"]), set(&["instance"])),
                ("panel `DNS` target B", set(&["strata_dns_queries_total"]), set(&["outcome"])),
                ("variable `dns`", set(&["strata_dns_queries_total"]), set(&["instance"])),
            ]
        );
    }

    const SCRAPE: &str = "# HELP strata_backup_overdue Whether.\n# TYPE strata_backup_overdue gauge\n\
        strata_backup_overdue{layer=\"services\",name=\"a,b}\\\"c\",repo=\"default\"} 0\n\
        # TYPE strata_dns_upstream_queries counter\n\
        # TYPE strata_dns_query_duration_seconds histogram\n\
        strata_dns_query_duration_seconds_bucket{le=\"0.00005\"} 1\nstrata_dns_query_duration_seconds_count 1\n\
        strata_degraded_reasons 0\n";

    #[test]
    fn scrapes_yield_sampled_names_and_their_labels() {
        let e = exported(SCRAPE);
        let got: Vec<(&str, BTreeSet<String>)> = e.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("strata_backup_overdue", set(&["layer", "name", "repo"])),
                ("strata_degraded_reasons", set(&[])),
                ("strata_dns_query_duration_seconds_bucket", set(&["le"])),
                ("strata_dns_query_duration_seconds_count", set(&[])),
            ],
            "a family with a TYPE line but no sample is not exported"
        );
    }

    #[test]
    fn a_misspelt_metric_or_label_is_reported_by_name() {
        let e = exported(SCRAPE);
        let rules = "      - alert: A\n        expr: strata_backup_overdu == 1\n        annotations:\n          \
                     s: \"{{ $labels.name }}\"\n      - alert: B\n        expr: strata_backup_overdue{layr=\"host\"} == 1\n\
                     \x20     - alert: C\n        expr: up{job=\"x\"} == 0 or strata_dns_upstream_queries_total > 0\n\
                     \x20     - alert: D\n        expr: strata_backup_overdue{layer=\"host\"} == 1\n        annotations:\n          \
                     s: \"{{ $labels.repo }} {{ $labels.instance }}\"\n";
        let uses = rule_file_uses("r.yml", rules).unwrap();
        assert_eq!(
            unknown_names(&uses, &e),
            vec![
                "r.yml: alert: A: metric `strata_backup_overdu` is exported by no agent".to_string(),
                "r.yml: alert: B: label `layr` is on none of its metrics (strata_backup_overdue)".to_string(),
                // Declared (a TYPE line) but never sampled: Prometheus would store nothing under this name.
                "r.yml: alert: C: metric `strata_dns_upstream_queries_total` is exported by no agent".to_string(),
            ]
        );
    }
}
