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
