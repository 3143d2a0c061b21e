//! The shipped monitoring under deploy/ (issue 15 item 4), checked with the real tools and the real agents: the alert
//! rules pass `promtool check rules` and their unit tests (`promtool test rules`, a firing and a quiet case per
//! alert); the example Prometheus config passes `promtool check config`; the dashboard's PromQL parses; and every metric and label the rules and the dashboard name is exported
//! by a running agent (dns-agent, services-agent, host-agent) after each has done the work that creates its series.
//! Knows deploy/'s file layout, the agents' config formats and labctl's commands; nothing of the agents' internals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_tests::dnslab::{dig, Dns};
use strata_tests::fixtures::cmd;
use strata_tests::harness::{base_config, bin, write_inventory, AgentKind, AgentProc, Pki};
use strata_tests::promql::{dashboard_exprs, dashboard_use, exported, rule_file_uses, unknown_names, Use};
use strata_tests::servicejob::ServiceJob;

/// promtool answers in well under a second here; this only bounds a hang.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `promtool ARGS` in `dir` with `input` on stdin; fails with its output unless it exits 0.
fn promtool_with(dir: &Path, args: &[&str], input: &str) -> Result<String> {
    let promtool = cmd::require("promtool", "prometheus")?;
    let mut c = Command::new(promtool);
    let out = cmd::output_within(c.current_dir(dir).args(args), Some(input.as_bytes()), PROMTOOL_TIMEOUT)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    Ok(text)
}

/// `promtool ARGS` in `dir`; fails with its output unless it exits 0.
fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    promtool_with(dir, args, "")
}

/// (alert name, fires) for every `alertname:` case of a `promtool test rules` file: fires when its `exp_alerts`
/// lists an alert, quiet when it is `[]`.
fn alert_cases(test_yaml: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = test_yaml.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("alertname:") else { continue };
        let exp = lines[i + 1..].iter().find(|l| l.starts_with("exp_alerts:")).copied().unwrap_or_default();
        out.push((name.trim().to_string(), exp.trim_end() != "exp_alerts: []"));
    }
    out
}

#[test]
fn shipped_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let dir = deploy().join("prometheus");
    let checked = promtool(&dir, &["check", "rules", "strata.rules.yml"])?;
    ensure!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "strata.rules.test.yml"])?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    let config = promtool(&dir, &["check", "config", "prometheus.example.yml"])?;
    ensure!(config.contains("is valid prometheus config file syntax"), "{config}");

    // Every alert has a case where it fires and one where it stays quiet.
    let rules = std::fs::read_to_string(dir.join("strata.rules.yml"))?;
    let cases = alert_cases(&std::fs::read_to_string(dir.join("strata.rules.test.yml"))?);
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(str::trim).collect();
    ensure!(alerts.len() == 7, "{alerts:?}");
    for alert in alerts {
        for fires in [true, false] {
            ensure!(
                cases.iter().any(|(a, f)| a == alert && *f == fires),
                "strata.rules.test.yml has no case where {alert} {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
    }
    Ok(())
}

#[test]
fn the_dashboards_promql_parses() -> Result<()> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/strata-lab.json"))?)?;
    let exprs = dashboard_exprs(&dashboard);
    ensure!(exprs.len() >= 20, "{exprs:?}");
    // Grafana's variables replaced by what they expand to, each expression as a recording rule for promtool.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (origin, expr, _)) in exprs.iter().filter(|(_, e, _)| !e.starts_with("label_values(")).enumerate() {
        let expanded = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1d")
            .replace("$layer", ".*")
            .replace("$dns_instance", ".*");
        ensure!(!expanded.contains('$'), "{origin}: a variable this test does not know: {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&expanded)?
        ));
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("dashboard.rules.yml"), &rules)?;
    promtool(dir.path(), &["check", "rules", "dashboard.rules.yml"]).with_context(|| rules.clone())?;
    Ok(())
}

/// `labctl --config INV ARGS`; fails with its output unless it exits 0.
fn labctl(inv: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("labctl")?).arg("--config").arg(inv).args(args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "labctl {}: {text}", args.join(" "));
    Ok(text)
}

/// The body of the agent's Prometheus text (what Prometheus would store).
fn scrape(agent: &AgentProc) -> Result<String> {
    let raw = agent.metrics_text()?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(head.contains(" 200 "), "{:?} metrics answered {head}", agent.kind);
    Ok(body.to_string())
}

/// A dns-agent that has forwarded a query to an upstream (dead: the query fails) and loaded a blocklist file.
fn dns_with_samples(pki: &Pki, dir: &Path) -> Result<Dns> {
    let list = dir.join("ads.txt");
    std::fs::write(&list, "ads.example.com\n")?;
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let extra = format!("[forward]\nupstreams = [\"udp://{dead}\"]\n[blocklist]\nsources = [{list:?}]\n");
    let dns = Dns::start(pki, &extra)?;
    let answer = dig(dns.addr, &["forwarded.example.org", "A"])?;
    ensure!(answer.status == "SERVFAIL", "the dead upstream fails: {}", answer.raw);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !scrape(&dns.agent)?.contains("strata_dns_blocklist_refresh_failing{") {
        ensure!(Instant::now() < deadline, "no blocklist series within 20 s:\n{}", scrape(&dns.agent)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(dns)
}

/// A host-agent that has backed up an off QEMU VM (a bundle, no QMP socket) with rsync, and failed to back up a
/// second one whose target is a file, not a directory (the series of failures exist only after one).
fn host_with_samples(pki: &Pki, dir: &Path) -> Result<AgentProc> {
    cmd::require("rsync", "rsync")?;
    let mut vms = String::new();
    for (name, target) in [("lab", dir.join("backups")), ("broken", dir.join("not-a-directory"))] {
        let vm = dir.join(name);
        std::fs::create_dir(&vm)?;
        std::fs::write(vm.join("disk.raw"), vec![7u8; 64 * 1024])?;
        std::fs::write(vm.join("vm.toml"), "memory_mb = 64\ncpus = 1\ndisks = [\"disk.raw\"]\n")?;
        vms.push_str(&format!(
            "[[vms]]\nname = \"{name}\"\nbackend = \"qemu\"\npath = {:?}\nmode = \"stop\"\nengine = \"rsync\"\n\
             target = {:?}\nretention = {{ last = 5 }}\n",
            vm.display().to_string(),
            target.display().to_string(),
        ));
    }
    std::fs::create_dir(dir.join("backups"))?;
    std::fs::write(dir.join("not-a-directory"), "a file\n")?;
    let (cert, key) = pki.issue(Role::HostAgent, AgentKind::Host.cert_name())?;
    let config = dir.join("host-agent.toml");
    std::fs::write(&config, format!("{}{vms}", base_config(&dir.join("state"), &pki.ca(), &cert, &key)))?;
    let host = AgentProc::start_with_config(AgentKind::Host, &config)?;
    let (admin, admin_key) = pki.issue(Role::Admin, "alice")?;
    let inv = dir.join("labctl.toml");
    write_inventory(&inv, &pki.ca(), &admin, &admin_key, &[&host])?;
    labctl(&inv, &["vm", "backup", "lab"]).with_context(|| format!("host-agent log:\n{}", host.logs()))?;
    let failed = labctl(&inv, &["vm", "backup", "broken"]);
    ensure!(failed.is_err(), "a backup to a file as target succeeded: {failed:?}\n{}", host.logs());
    Ok(host)
}

/// Prometheus series exist only once a family has a sample (prometheus-client 0.26 writes neither HELP nor TYPE for
/// an empty labelled family), so each agent first does what creates its series: the dns-agent forwards and loads a
/// blocklist, the services-agent backs up and checks a service, the host-agent backs up a VM and fails to back up
/// another. Then every metric and
/// label the rules and the dashboard name must be among the samples of the three scrapes.
#[test]
fn rules_and_dashboard_name_only_metrics_and_labels_the_agents_export() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let dns = dns_with_samples(&pki, dir.path())?;
    let host = host_with_samples(&pki, dir.path())?;
    let services = ServiceJob::start("mo", 0, "")?;
    let ctx = || format!("services-agent log:\n{}", services.agent.logs());
    labctl(&services.inv, &["services", "backup", &services.service]).with_context(ctx)?;
    labctl(&services.inv, &["services", "check", &services.service]).with_context(ctx)?;

    // The new DNS series pass promtool's metric lint too.
    let dns_text = scrape(&dns.agent)?;
    promtool_with(dir.path(), &["check", "metrics"], &dns_text).with_context(|| dns_text.clone())?;

    let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for agent in [&dns.agent, &host, &services.agent] {
        for (name, labels) in exported(&scrape(agent)?) {
            all.entry(name).or_default().extend(labels);
        }
    }
    let rules_text = std::fs::read_to_string(deploy().join("prometheus/strata.rules.yml"))?;
    let mut uses: Vec<Use> = rule_file_uses("strata.rules.yml", &rules_text)?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/strata-lab.json"))?)?;
    uses.extend(
        dashboard_exprs(&dashboard).iter().map(|(o, e, l)| dashboard_use(&format!("strata-lab.json: {o}"), e, l)),
    );
    ensure!(uses.len() >= 27, "{uses:?}");
    let unknown = unknown_names(&uses, &all);
    ensure!(
        unknown.is_empty(),
        "the shipped monitoring names what no agent exports:\n  {}\nexported: {:?}",
        unknown.join("\n  "),
        all.keys().collect::<Vec<_>>()
    );
    Ok(())
}
