//! Issue 15 item 3, the host layer: VM backups and drills told to notification targets (`[[notify]]` and a VM's own
//! `notify`) through the one module the services-agent uses too, on the real host-agent with a real QEMU VM bundle
//! and rsync, to local HTTP endpoints. A backup posts start and success (webhook JSON naming layer, VM, job, backup;
//! healthchecks `/start` and success pings), a drill its success to the webhook only, a failing backup start and fail
//! naming why; a target that is down (connection refused, a token in its URL) or hung (never answers) fails no
//! backup, holds one up at most the request timeout per phase, and its token never shows in the agent's log. Knows
//! the agent's config format, gRPC API and the webhook's JSON only.

use std::path::Path;
use std::time::{Duration, Instant};

use agent_core::notify::REQUEST_TIMEOUT;
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use strata_proto::v1::VmDrillRequest;
use strata_tests::fixtures::http::{self, Received, Receiver};
use strata_tests::fixtures::{cmd, wait_until};
use strata_tests::vmlab::{backup, Lab};

/// The VM `lab`'s section: rsync to `target`, its own targets `vm_notify`, then the global `[[notify]]` webhook.
fn section(target: &Path, vm_notify: &[(&str, &str)], hook: &str) -> String {
    let own: Vec<String> = vm_notify.iter().map(|(k, u)| format!("{{ kind = \"{k}\", url = \"{u}\" }}")).collect();
    format!(
        "mode = \"stop\"\nengine = \"rsync\"\ntarget = {target:?}\nnotify = [{}]\n\
         [[notify]]\nkind = \"webhook\"\nurl = \"{hook}\"\n",
        own.join(", ")
    )
}

/// Waits until `rx` got `n` requests; takes them.
fn take(rx: &Receiver, n: usize) -> Result<Vec<Received>> {
    wait_until(Duration::from_secs(15), || rx.requests().len() >= n);
    let got = rx.take();
    ensure!(got.len() == n, "want {n} requests, got {got:#?}");
    Ok(got)
}

/// The webhook events among `got` (path `/hook`), in order, parsed.
fn events(got: &[Received]) -> Result<Vec<Value>> {
    got.iter().filter(|r| r.path == "/hook").map(|r| serde_json::from_str(&r.body).context("webhook body")).collect()
}

/// The healthchecks pings among `got`, in order (their paths).
fn pings(got: &[Received]) -> Vec<&str> {
    got.iter().filter(|r| r.path.starts_with("/ping/")).map(|r| r.path.as_str()).collect()
}

/// Every webhook event is about VM `lab` of the host layer, `job`, in `phases` order.
fn check_events(evs: &[Value], job: &str, phases: &[&str]) -> Result<()> {
    let got: Vec<&str> = evs.iter().map(|e| e["phase"].as_str().unwrap_or("")).collect();
    ensure!(got == phases, "phases {got:?}, want {phases:?}: {evs:#?}");
    for e in evs {
        ensure!(e["layer"] == "host" && e["name"] == "lab" && e["vm"] == "lab" && e["job"] == job, "{e}");
        ensure!(e.get("service").is_none() && e["host"].as_str().is_some_and(|h| !h.is_empty()), "{e}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_backups_tell_start_and_end_and_a_target_that_is_down_or_hung_fails_none() -> Result<()> {
    cmd::require("rsync", "rsync")?;
    let parent = tempfile::Builder::new().prefix("strata-vms-").tempdir()?;
    let mut lab = Lab::new(parent.path())?;
    let target = lab.dir.path().join("rsync");
    std::fs::create_dir(&target)?;
    let rx = Receiver::start()?;
    let hook = format!("{}/hook", rx.base);
    let hc = format!("{}/ping/vm-lab", rx.base);
    // Down, with secrets in its URL (userinfo and query): logged redacted, never whole.
    let down = http::refused_base()?.replace("http://", "http://strata:pa55w0rd@") + "/hook?token=s3cret";

    // A backup: start and success, to the global webhook and the VM's healthchecks check; the refused one is skipped
    // at once (no wait for the timeout).
    lab.restart_with(&section(&target, &[("webhook", &down), ("healthchecks", &hc)], &hook))?;
    let mut c = lab.client().await?;
    let t0 = Instant::now();
    let msg = backup(&mut c, "lab").await?;
    let took = t0.elapsed();
    ensure!(msg.contains("backed up as "), "{msg}");
    ensure!(took < REQUEST_TIMEOUT, "a refused endpoint held the backup up: {took:?}");
    let id = msg.split("backed up as ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
    let got = take(&rx, 4)?;
    let evs = events(&got)?;
    check_events(&evs, "backup", &["start", "success"])?;
    ensure!(pings(&got) == ["/ping/vm-lab/start", "/ping/vm-lab"], "{got:#?}");
    ensure!(
        evs[1]["archive"] == id.as_str() && evs[1]["message"].as_str().is_some_and(|m| m.contains(&id)),
        "{evs:#?}"
    );
    ensure!(evs[1]["duration_seconds"].as_f64().is_some_and(|d| d > 0.0), "{evs:#?}");
    let logs = lab.agent()?.logs();
    ensure!(logs.contains("notification failed") && logs.contains("http://***@127.0.0.1:"), "{logs}");
    ensure!(!logs.contains("s3cret") && !logs.contains("pa55w0rd"), "a secret of a target's URL was logged:\n{logs}");

    // A drill: its success goes to the webhook; a healthchecks check is the backup's heartbeat only.
    let mut s = c.drill(VmDrillRequest { name: "lab".into(), target: String::new() }).await?.into_inner();
    while s.message().await?.is_some() {}
    let evs = events(&take(&rx, 1)?)?;
    check_events(&evs, "drill", &["success"])?;
    ensure!(evs[0]["archive"] == id.as_str(), "{evs:#?}");

    // A failing backup (its target is gone): start, then fail naming why.
    let missing = lab.dir.path().join("no-such-target");
    lab.restart_with(&section(&missing, &[("webhook", &down), ("healthchecks", &hc)], &hook))?;
    let mut c = lab.client().await?;
    let err = backup(&mut c, "lab").await.expect_err("a missing target must fail");
    ensure!(format!("{err:?}").contains("does not exist"), "{err:?}");
    let got = take(&rx, 4)?;
    let evs = events(&got)?;
    check_events(&evs, "backup", &["start", "fail"])?;
    ensure!(pings(&got) == ["/ping/vm-lab/start", "/ping/vm-lab/fail"], "{got:#?}");
    ensure!(evs[1]["message"].as_str().is_some_and(|m| m.contains("does not exist")), "{evs:#?}");

    // A hung endpoint (connects, never answers): the backup succeeds, held up at most the request timeout per phase,
    // and the other targets are told all the same.
    let hung = http::Hung::start()?;
    let hung_hook = format!("{}/hook", hung.base);
    lab.restart_with(&section(&target, &[("webhook", &hung_hook)], &hook))?;
    let mut c = lab.client().await?;
    let t0 = Instant::now();
    let msg = backup(&mut c, "lab").await?;
    let took = t0.elapsed();
    ensure!(msg.contains("backed up as "), "{msg}");
    ensure!(took < 2 * REQUEST_TIMEOUT + Duration::from_secs(10), "a hung endpoint held the backup up {took:?}");
    check_events(&events(&take(&rx, 2)?)?, "backup", &["start", "success"])?;
    eprintln!("backup with a hung notification endpoint: {took:?} (request timeout {REQUEST_TIMEOUT:?} per phase)");
    Ok(())
}
