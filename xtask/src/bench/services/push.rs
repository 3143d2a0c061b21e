//! `bench services`, second part: the time from a `git push` (a commit in the stacks repository) to the changed
//! stack's new container running and healthy, when a signed webhook announces the push vs when the agent's poll finds
//! it. Owns the rounds and their timing; must not know the agent's set-up (its caller starts and restarts it) nor how
//! the figures are printed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use strata_proto::v1::services_client::ServicesClient;
use strata_proto::v1::{ListServicesRequest, Service};
use strata_tests::fixtures::docker::TEST_IMAGE_TAG;
use strata_tests::fixtures::git::GitRepo;
use strata_tests::fixtures::webhook;
use tonic::transport::Channel;

/// The webhook's shared secret in the bench's config.
pub(super) const SECRET: &[u8] = b"bench webhook secret";

/// A deploy that takes longer than this is a failure, not a figure.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

/// The measured stack: one container whose health check passes as soon as it runs (checked every 500 ms, the same
/// offset on both paths), changed each round by its `REVISION`.
pub(super) fn app_compose(revision: usize) -> String {
    format!(
        "version: \"3.7\"\nservices:\n  app:\n    image: {TEST_IMAGE_TAG}\n    environment: [\"REVISION={revision}\"]\n    \
         healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 500ms\n      timeout: 2s\n      retries: 1\n"
    )
}

/// How the agent learns about a push.
pub(super) enum Path {
    /// A signed push event POSTed to the agent's webhook right after the commit.
    Webhook(SocketAddr),
    /// Nothing: the agent's `[stacks] poll` finds it.
    Poll(Duration),
}

/// True once `app` runs the containers of `commit`: deployed at it, new containers (none of `old`), all running and
/// healthy.
fn deployed(s: &Service, commit: &str, old: &[String]) -> bool {
    s.deployed_commit == commit
        && !s.containers.is_empty()
        && s.containers.iter().all(|c| c.state == "running" && c.health == "healthy" && !old.contains(&c.id))
}

async fn app(c: &mut ServicesClient<Channel>, name: &str) -> Result<Option<Service>> {
    let all = c.list_services(ListServicesRequest {}).await?.into_inner().services;
    Ok(all.into_iter().find(|s| s.name == name))
}

/// `rounds` commits to the `name` stack in `origin`, each announced as `path` says; the time from each commit to
/// its new container running and healthy. Revisions continue from `first_revision`.
pub(super) async fn rounds(
    c: &mut ServicesClient<Channel>,
    origin: &GitRepo,
    name: &str,
    path: &Path,
    first_revision: usize,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Spread the commits over the poll's phase (a round starts right after the previous deploy, which a poll
        // did): 0, 0.37, 0.74, … of the interval.
        if let Path::Poll(every) = path {
            tokio::time::sleep(every.mul_f64((round as f64 * 0.37) % 1.0)).await;
        }
        let old: Vec<String> =
            app(c, name).await?.map(|s| s.containers.iter().map(|c| c.id.clone()).collect()).unwrap_or_default();
        origin.write(&format!("{name}/docker-compose.yml"), &app_compose(first_revision + round))?;
        let commit = origin.commit(&format!("{name}: revision {}", first_revision + round))?;
        let t = Instant::now();
        if let Path::Webhook(addr) = path {
            let r = webhook::push(*addr, SECRET, "main", &commit)?;
            ensure!(r.status == 202, "the webhook answered {} {:?}", r.status, r.body);
        }
        loop {
            if app(c, name).await?.is_some_and(|s| deployed(&s, &commit, &old)) {
                took.push(t.elapsed());
                break;
            }
            if t.elapsed() > ROUND_LIMIT {
                bail!("{name} did not run commit {commit} healthy within {ROUND_LIMIT:?}: {:?}", app(c, name).await?);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(took)
}

/// The time of day of a log line (`2026-12-05T21:17:10.498933Z …`), in seconds; `None` for other lines.
fn line_time(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let (h, m, s) =
        (t.get(0..2)?.parse::<f64>().ok()?, t.get(3..5)?.parse::<f64>().ok()?, t.get(6..)?.parse::<f64>().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// From the agent's log: for every sync that a request started (`sync requested`), the time until stack `app` was
/// deployed and until the sync was done.
pub(super) fn sync_phases(logs: &str, app: &str) -> (Vec<Duration>, Vec<Duration>) {
    let (mut deployed, mut done) = (Vec::new(), Vec::new());
    let mut start: Option<f64> = None;
    let app_deployed = format!("stack deployed stack=\"{app}\"");
    for line in logs.lines() {
        let Some(t) = line_time(line) else { continue };
        if line.contains("sync requested") && !line.contains("webhook") {
            start = Some(t);
        } else if let Some(t0) = start {
            if line.contains(&app_deployed) {
                deployed.push(Duration::from_secs_f64((t - t0).max(0.0)));
            } else if line.contains("sync done") {
                done.push(Duration::from_secs_f64((t - t0).max(0.0)));
                start = None;
            }
        }
    }
    (deployed, done)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sync_phases_are_read_from_the_agents_log() {
        let log = "2026-12-05T21:17:10.498780Z  INFO services_agent::webhook: webhook: signed push, sync requested peer=x\n\
                   2026-12-05T21:17:10.498933Z  INFO services_agent::stacks: sync requested\n\
                   2026-12-05T21:17:11.676344Z  INFO services_agent::stacks: stack deployed stack=\"app\" commit=\"1\"\n\
                   2026-12-05T21:17:12.000933Z  INFO services_agent::stacks: sync done commit=\"1\"\n";
        let (deployed, done) = super::sync_phases(log, "app");
        assert_eq!(deployed.iter().map(|d| d.as_millis()).collect::<Vec<_>>(), [1177]);
        assert_eq!(done.iter().map(|d| d.as_millis()).collect::<Vec<_>>(), [1502]);
    }
}
