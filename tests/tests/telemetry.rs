//! The agents' metrics endpoint and journal logs, against the real binaries: the Prometheus text format (asked for
//! with `Accept: text/plain`) passes the real `promtool check metrics`; OpenMetrics when asked for it; build and
//! process metrics present; log lines carry journald priorities when stderr is the journal.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use strata_tests::fixtures::cmd;
use strata_tests::harness::{base_config, bin, AgentKind, AgentProc, Pki};

/// `GET /metrics` with `accept`; returns (content type, body).
fn scrape(agent: &AgentProc, accept: &str) -> Result<(String, String)> {
    let addr = agent.logged_addr("metrics")?;
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\nAccept: {accept}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head}");
    }
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .context("no content-type")?;
    Ok((content_type, body.to_string()))
}

#[test]
fn every_agent_serves_metrics_that_promtool_accepts() -> Result<()> {
    let promtool = cmd::require("promtool", "prometheus")?;
    let pki = Pki::new()?;
    for kind in [AgentKind::Dns, AgentKind::Services, AgentKind::Host] {
        let agent = AgentProc::start(kind, &pki)?;
        let (content_type, text) = scrape(&agent, "text/plain")?;
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{kind:?}: {content_type}");
        let build = format!("strata_build_info{{agent=\"{}\",version=", kind.role().as_str());
        assert!(text.contains(&build), "{kind:?}: no {build} in\n{text}");
        for family in ["process_resident_memory_bytes ", "process_open_fds ", "process_cpu_seconds_total "] {
            assert!(text.contains(family), "{kind:?}: no {family} in\n{text}");
        }
        // The served certificate's notAfter, on every agent: in the future (the test PKI's certificates are fresh).
        let expiry = text
            .lines()
            .find_map(|l| l.strip_prefix("strata_certificate_expiry_timestamp_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        assert!(expiry.is_some_and(|t| t > now), "{kind:?}: no future certificate expiry in\n{text}");
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        check.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
        let out = check.wait_with_output()?;
        assert!(
            out.status.success(),
            "{kind:?}: promtool check metrics failed ({}):\n{}{}\n--- metrics ---\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let (content_type, om) = scrape(&agent, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")?;
        assert!(content_type.starts_with("application/openmetrics-text"), "{kind:?}: {content_type}");
        assert!(om.ends_with("# EOF\n"), "{kind:?}: OpenMetrics must end with # EOF:\n{om}");
    }
    Ok(())
}

#[test]
fn logs_on_the_journal_carry_syslog_priorities() -> Result<()> {
    use std::io::BufRead;
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = pki.issue(AgentKind::Dns.role(), AgentKind::Dns.cert_name())?;
    let config = dir.path().join("dns-agent.toml");
    std::fs::write(&config, base_config(&dir.path().join("state"), &pki.ca(), &cert, &key))?;
    // The default log format, with JOURNAL_STREAM set as systemd sets it when stderr is the journal. (The harness
    // forces `--log-format human`, so this test runs the binary itself.)
    let mut child = Command::new(bin("dns-agent")?)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", "8:12345")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = Vec::new();
    // The dns-agent without [dns] listen addresses warns at start: one INFO and one WARN line to look at.
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line?;
        let enough = line.contains("blocklist loaded");
        lines.push(line);
        if enough || lines.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    let find = |needle: &str| lines.iter().find(|l| l.contains(needle)).cloned().unwrap_or_default();
    assert!(find("started").starts_with("<6>"), "an INFO line carries <6>:\n{all}");
    assert!(find("no [dns] listen addresses").starts_with("<4>"), "a WARN line carries <4>:\n{all}");
    assert!(lines.iter().all(|l| l.starts_with('<')), "every line carries a priority:\n{all}");
    Ok(())
}
