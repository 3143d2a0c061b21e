//! Image updates end to end: a real registry (Debian's `docker-registry` on loopback), images built FROM scratch
//! (busybox-static) and pushed under one tag version after version, the real services-agent and dockerd through
//! docker-compose: `Pull` redeploys only the compose service whose image changed, an unhealthy new image is rolled
//! back (history, notification), a SIGKILL during the healthy wait is repaired at restart, a registry that is down
//! stops nothing, the `update` cron pulls on its own, and a failed `backup_before_update` backup refuses the update.
//! Knows the agent's config format and gRPC API; nothing of its internals.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{HistoryEntry, HistoryRequest, PullRequest};
use strata_tests::backuplab::Lab as JobLab;
use strata_tests::fixtures::docker::{DockerEngine, TestImage};
use strata_tests::fixtures::http::Receiver;
use strata_tests::fixtures::registry::Registry;
use strata_tests::serviceslab::{hub_compose, running, Lab};

/// Removes every image of the test (its local variants and what it pulled from its registry) on Drop.
struct Images {
    engine: DockerEngine,
    prefix: std::sync::OnceLock<String>,
}

impl Drop for Images {
    fn drop(&mut self) {
        let Some(prefix) = self.prefix.get() else { return };
        let list = self.engine.docker(["images", "--format", "{{.Repository}} {{.ID}}"]).unwrap_or_default();
        let ids: Vec<&str> = list
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(repo, _)| repo.contains(&format!("/{prefix}")))
            .map(|(_, id)| id)
            .collect();
        if !ids.is_empty() {
            let _ = self.engine.docker(["rmi", "-f"].into_iter().chain(ids));
        }
    }
}

/// One version of the web image: healthy, or with a health check that always fails.
fn version(lab: &Lab, v: &str, healthy: bool) -> Result<String> {
    let tag = format!("strata-test/{}-web:{v}", lab.prefix);
    let check = if healthy { "true" } else { "false" };
    let lines = format!("LABEL org.strata.version={v}\nHEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD {check}");
    TestImage::derive(&lab.engine, &tag, &lines)?;
    Ok(tag)
}

fn image_id(lab: &Lab, reference: &str) -> Result<String> {
    Ok(lab.engine.docker(["image", "inspect", "--format", "{{.Id}}", reference])?.trim().to_string())
}

/// Pushes `local` as `remote`, then points the local `remote` tag back at `keep`: the registry has the new version,
/// this host still the old one, as after someone else pushed.
fn push(lab: &Lab, local: &str, remote: &str, keep: Option<&str>) -> Result<()> {
    lab.engine.docker(["tag", local, remote])?;
    lab.engine.docker(["push", remote])?;
    if let Some(k) = keep {
        lab.engine.docker(["tag", k, remote])?;
    }
    Ok(())
}

/// The image ID and the container ID of compose service `service` of the stack.
fn runs(lab: &Lab, stack: &str, service: &str) -> Result<(String, String)> {
    let name = format!("{}_{service}_1", lab.name(stack));
    let out = lab.engine.docker(["inspect", "--format", "{{.Image}} {{.Id}}", &name])?;
    let (image, id) = out.trim().split_once(' ').context("inspect output")?;
    Ok((image.to_string(), id.to_string()))
}

async fn pull(lab: &Lab, stack: &str) -> std::result::Result<String, tonic::Status> {
    let mut c = lab.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let s = c.pull(PullRequest { name: lab.name(stack), all: false }).await?.into_inner();
    JobLab::drain(s).await
}

async fn updates(lab: &Lab, stack: &str) -> Result<Vec<HistoryEntry>> {
    let mut c = lab.client().await?;
    let h = c.history(HistoryRequest { name: lab.name(stack), limit: 100 }).await?.into_inner();
    Ok(h.entries.into_iter().filter(|e| e.kind == "update").collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_redeploys_what_changed_rolls_back_the_unhealthy_and_repairs_a_crash() -> Result<()> {
    // Declared before the lab: dropped after it, once its containers are gone.
    let images = Images { engine: DockerEngine::ensure()?, prefix: std::sync::OnceLock::new() };
    let mut lab = Lab::new()?;
    images.prefix.get_or_init(|| lab.prefix.clone());
    let mut registry = Registry::start()?;
    let hooks = Receiver::start()?;
    let (v1, v2, v3) = (version(&lab, "v1", true)?, version(&lab, "v2", true)?, version(&lab, "v3", false)?);
    let side_local = format!("strata-test/{}-side:1", lab.prefix);
    TestImage::derive(&lab.engine, &side_local, "LABEL org.strata.version=side")?;
    let web = format!("{}/{}/web:stable", registry.addr, lab.prefix);
    let side = format!("{}/{}/side:1", registry.addr, lab.prefix);
    push(&lab, &v1, &web, None)?;
    push(&lab, &side_local, &side, None)?;
    let (id1, id2, id3) = (image_id(&lab, &v1)?, image_id(&lab, &v2)?, image_id(&lab, &v3)?);

    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let compose = format!(
        "version: \"3.7\"\nservices:\n  app:\n    image: {web}\n    networks: [default, hub]\n  side:\n    \
         image: {side}\nnetworks:\n  hub:\n    external: true\n    name: {hub}\n"
    );
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("web")), &compose)?;
    lab.origin.commit("hub and web")?;
    lab.service_keys.insert("web".into(), "healthy_timeout = \"8s\"\n".into());
    lab.tail = format!("[[notify]]\nkind = \"webhook\"\nurl = \"{}/hook\"\n", hooks.base);
    lab.start(&[("web", &[], &[])])?;
    lab.sync().await?;
    lab.wait_service("web", Duration::from_secs(30), |s| running(s) && s.containers.len() == 2).await?;
    let (app0, side0) = (runs(&lab, "web", "app")?, runs(&lab, "web", "side")?);
    assert_eq!(app0.0, id1);

    // Nothing new in the registry: nothing is recreated, the history says so.
    let msg = pull(&lab, "web").await?;
    assert!(msg.contains("images unchanged"), "{msg}");
    assert_eq!(runs(&lab, "web", "app")?, app0);
    let h = updates(&lab, "web").await?;
    assert_eq!((h[0].result.as_str(), h[0].images.len()), ("unchanged", 0), "{h:?}");

    // v2 under the same tag: only app is recreated, on v2; side keeps its container.
    push(&lab, &v2, &web, Some(&v1))?;
    let msg = pull(&lab, "web").await?;
    assert!(msg.contains("updated app"), "{msg}");
    let app2 = runs(&lab, "web", "app")?;
    assert_eq!(app2.0, id2, "app runs v2");
    assert_ne!(app2.1, app0.1, "app was recreated");
    assert_eq!(runs(&lab, "web", "side")?, side0, "side was not touched");
    let h = updates(&lab, "web").await?;
    assert_eq!(h[0].result, "ok", "{h:?}");
    assert_eq!(h[0].images.len(), 1, "{h:?}");
    let i = &h[0].images[0];
    assert_eq!(
        (i.service.as_str(), i.image.as_str(), i.old_digest.as_str(), i.new_digest.as_str()),
        ("app", web.as_str(), id1.as_str(), id2.as_str())
    );

    // v3 never becomes healthy: rolled back to v2 (the tag too), history and a notification say so.
    push(&lab, &v3, &web, Some(&v2))?;
    hooks.take();
    let msg = pull(&lab, "web").await?;
    assert!(msg.contains("rolled back"), "{msg}");
    assert_eq!(runs(&lab, "web", "app")?.0, id2, "app runs v2 again");
    assert_eq!(image_id(&lab, &web)?, id2, "the tag points at v2 again");
    assert_eq!(runs(&lab, "web", "side")?, side0);
    let h = updates(&lab, "web").await?;
    assert_eq!(h[0].result, "rolled back", "{h:?}");
    let i = &h[0].images[0];
    assert_eq!((i.service.as_str(), i.old_digest.as_str(), i.new_digest.as_str()), ("app", id2.as_str(), id2.as_str()));
    let short3 = &id3.trim_start_matches("sha256:")[..12];
    assert!(h[0].error.contains(short3) && h[0].error.contains("not healthy"), "{h:?}");
    let told = hooks.requests();
    ensure!(
        told.iter().any(|r| r.body.contains("\"job\":\"update\"") && r.body.contains("\"phase\":\"fail\"")),
        "no failed-update notification: {told:?}"
    );
    assert!(image_id(&lab, &v3).is_ok(), "the new image is not pruned");

    // SIGKILL while the agent waits for v3 to be healthy: at restart the row is closed and app runs v2 again.
    lab.env = vec![("STRATA_TEST_CRASH_AT", "wait-healthy")];
    lab.start(&[("web", &[], &[])])?;
    let c = lab.client().await?;
    let name = lab.name("web");
    let job = tokio::spawn(async move {
        let mut c = c;
        c.pull(PullRequest { name, all: false }).await.map(|s| s.into_inner())
    });
    lab.agent().wait_log("test hook: holding at step wait-healthy", Duration::from_secs(60))?;
    assert_eq!(runs(&lab, "web", "app")?.0, id3, "app was recreated on v3 before the crash");
    lab.agent.take().context("agent")?.kill()?;
    job.abort();
    lab.env.clear();
    lab.start(&[("web", &[], &[])])?;
    lab.agent().wait_log("update recovery done", Duration::from_secs(60))?;
    assert_eq!(runs(&lab, "web", "app")?.0, id2, "recovery put v2 back: {}", lab.agent().logs());
    let h = updates(&lab, "web").await?;
    assert_eq!(h[0].result, "rolled back", "{h:?}");
    assert!(h[0].error.contains("the agent stopped during step wait-healthy"), "{h:?}");
    assert!(h.iter().all(|e| !e.result.is_empty()), "every update row is closed: {h:?}");
    lab.wait_service("web", Duration::from_secs(20), running).await?;

    // The registry is down: an error naming the service and the image; nothing running is stopped.
    registry.stop();
    let app = runs(&lab, "web", "app")?;
    let err = pull(&lab, "web").await.expect_err("a pull from a registry that is down fails");
    assert!(err.message().contains(&lab.name("web")) && err.message().contains(&web), "{err:?}");
    assert_eq!(runs(&lab, "web", "app")?, app, "app keeps running");
    assert_eq!(runs(&lab, "web", "side")?, side0, "side keeps running");
    let h = updates(&lab, "web").await?;
    assert_eq!(h[0].result, "failed", "{h:?}");

    // The `update` cron: at the next minute the agent pulls v4 on its own and redeploys app.
    registry.restart()?;
    let v4 = version(&lab, "v4", true)?;
    let id4 = image_id(&lab, &v4)?;
    push(&lab, &v4, &web, Some(&id2))?;
    lab.service_keys.insert("web".into(), "healthy_timeout = \"8s\"\nupdate = \"* * * * *\"\n".into());
    lab.start(&[("web", &[], &[])])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while runs(&lab, "web", "app")?.0 != id4 {
        ensure!(std::time::Instant::now() < deadline, "no scheduled update within 150 s:\n{}", lab.agent().logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    lab.agent().wait_log("update done", Duration::from_secs(30))?;
    let h = updates(&lab, "web").await?;
    assert_eq!((h[0].result.as_str(), h[0].images[0].new_digest.as_str()), ("ok", id4.as_str()), "{h:?}");
    assert_eq!(runs(&lab, "web", "side")?, side0, "side was not touched");

    // `backup_before_update` with a backup that cannot succeed (no such dataset): the update is refused, nothing
    // is pulled or recreated.
    let v5 = version(&lab, "v5", true)?;
    push(&lab, &v5, &web, Some(&id4))?;
    let keys = "healthy_timeout = \"8s\"\ndataset = \"strata-missing/web\"\nrepo = \"/nonexistent/borg/web\"\n\
                backup_before_update = true\n";
    lab.service_keys.insert("web".into(), keys.into());
    lab.start(&[("web", &[], &[])])?;
    let app = runs(&lab, "web", "app")?;
    let err = pull(&lab, "web").await.expect_err("the update is refused when its backup fails");
    assert!(err.message().contains("update refused: the backup before it failed"), "{err:?}");
    assert_eq!(runs(&lab, "web", "app")?, app, "app was not touched");
    assert_eq!(image_id(&lab, &web)?, id4, "nothing was pulled");
    Ok(())
}
