//! The services-agent's push trigger end to end: the real binary with `[stacks.webhook]`, a real local Git repository
//! with real commits, real dockerd through docker-compose, and HTTP requests signed as Gitea, Forgejo and GitHub sign
//! them. The poll is 1 h, so only the webhook (or nothing) syncs.
//! Knows the agent's config format, gRPC API, metrics and the webhook's HTTP contract; nothing of its internals.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use strata_tests::fixtures::webhook::{push, push_payload, request, sign};
use strata_tests::serviceslab::{hub_compose, ids, running, spoke_compose, Lab};

const SECRET: &[u8] = b"webhook test secret";

/// `strata_services_webhook_requests_total{result="RESULT"}` in the agent's Prometheus text.
fn counted(lab: &Lab, result: &str) -> Result<u64> {
    let text = lab.agent().metrics_text()?;
    let name = format!("strata_services_webhook_requests_total{{result=\"{result}\"}} ");
    let line = text.lines().find_map(|l| l.strip_prefix(name.as_str()));
    ensure!(line.is_some(), "no {name} in the metrics:\n{text}");
    Ok(line.unwrap_or_default().trim().parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_deploys_within_two_seconds_and_unsigned_or_badly_signed_requests_do_nothing() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    let web = format!("{}/docker-compose.yml", lab.name("web"));
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    lab.origin.write(&web, &spoke_compose(&hub, "    environment: [\"REVISION=1\"]\n"))?;
    let first = lab.origin.commit("hub and web")?;
    let secret_file = lab.dir.path().join("webhook.secret");
    std::fs::write(&secret_file, [SECRET, b"\n"].concat())?;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
    lab.tail =
        format!("[stacks.webhook]\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\n", secret_file.display().to_string());
    lab.start(&[("web", &[], &[])])?;
    let addr = lab.agent().logged_addr("webhook")?;
    // The sync at start deploys the first commit.
    let before = lab.wait_service("web", Duration::from_secs(30), |s| running(s) && s.deployed_commit == first).await?;
    let old = ids(&before);

    // A change committed; then requests that must not deploy it.
    lab.origin.write(&web, &spoke_compose(&hub, "    environment: [\"REVISION=2\"]\n"))?;
    let second = lab.origin.commit("web: revision 2")?;
    let body = push_payload("main", &second);
    let good = sign(SECRET, body.as_bytes());
    let wrong_key = sign(b"not the secret", body.as_bytes());
    let other_body = push_payload("main", &first);
    let dev = push_payload("dev", &second);
    let dev_sig = sign(SECRET, dev.as_bytes());
    let hub_good = format!("sha256={good}");
    let event = ("X-Gitea-Event", "push");
    // (method, path, headers, body, status, result label)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16, &'a str);
    let refused: [Case<'_>; 7] = [
        ("POST", "/hooks/git", vec![event], body.as_bytes(), 401, "unsigned"),
        ("POST", "/hooks/git", vec![event, ("X-Gitea-Signature", &wrong_key)], body.as_bytes(), 403, "bad_signature"),
        // A valid signature of another body (a replayed header on a forged payload).
        (
            "POST",
            "/hooks/git",
            vec![event, ("X-Hub-Signature-256", &hub_good)],
            other_body.as_bytes(),
            403,
            "bad_signature",
        ),
        ("GET", "/hooks/git", vec![event, ("X-Gitea-Signature", &good)], b"", 405, "wrong_method"),
        ("POST", "/hooks/gitea", vec![event, ("X-Gitea-Signature", &good)], body.as_bytes(), 404, "not_found"),
        // Signed, but a push to another branch: answered, nothing synced.
        ("POST", "/hooks/git", vec![event, ("X-Forgejo-Signature", &dev_sig)], dev.as_bytes(), 200, "other_ref"),
        ("POST", "/hooks/git", vec![event, ("X-Gitea-Signature", &good)], &vec![b' '; (1 << 20) + 1], 413, "too_large"),
    ];
    for (method, path, headers, body, status, result) in &refused {
        let r = request(addr, method, path, headers, body)?;
        ensure!(r.status == *status, "{method} {path} {headers:?}: {} {:?}, wanted {status}", r.status, r.body);
        ensure!(counted(&lab, result)? >= 1, "{result} not counted");
    }
    ensure!(counted(&lab, "unsigned")? == 1 && counted(&lab, "bad_signature")? == 2, "refusals counted once each");
    let logs = lab.agent().logs();
    ensure!(logs.contains("webhook: request refused") && logs.contains("peer=127.0.0.1:"), "refusals logged:\n{logs}");
    ensure!(!logs.contains("webhook test secret") && !logs.contains(&second), "no secret or body in the log");
    // Nothing was synced: the container is the first commit's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = lab.service("web").await?;
    ensure!(ids(&still) == old && still.deployed_commit == first, "a refused request redeployed: {still:?}");
    ensure!(counted(&lab, "accepted")? == 0, "nothing accepted yet");

    // The signed push: the new container runs within 2 s of it.
    let t = Instant::now();
    let r = push(addr, SECRET, "main", &second)?;
    ensure!(r.status == 202, "signed push answered {} {:?}", r.status, r.body);
    let after = lab
        .wait_service("web", Duration::from_secs(20), |s| running(s) && s.deployed_commit == second && ids(s) != old)
        .await?;
    let took = t.elapsed();
    eprintln!("signed webhook POST -> new container running: {} ms", took.as_millis());
    ensure!(took < Duration::from_secs(2), "the push deployed in {took:?} (limit 2 s)");
    ensure!(after.error.is_empty(), "{after:?}");
    ensure!(counted(&lab, "accepted")? == 1, "the push counted");
    Ok(())
}
