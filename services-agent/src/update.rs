//! Image updates of a service's stack (`Pull`, the `update` schedule): the images each compose service runs
//! (reference and image ID) are journaled BEFORE anything changes → `compose pull` → the compose services whose
//! reference now names another image are recreated (`up -d --no-deps`), nothing else → they must be running and
//! healthy within `healthy_timeout` → otherwise the update is rolled back: the recorded image IDs are tagged with
//! their references again and those services recreated on them. Old images are never removed. With
//! `backup_before_update` the service is backed up first and a failed backup refuses the update. Also the crash
//! repair of an interrupted update (at start, before `Backups::recover`) and the `update` schedules. Must not know
//! proto/tonic (the `grpc` module converts), nor the compose/docker CLIs or APIs (their modules do).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::cli::Shutdown;
use agent_core::notify::{self, Event, NotifyTarget, Phase};
use serde::{Deserialize, Serialize};

use crate::backup::{failed_or_cancelled, Backups, JobError, Reporter, LAYER};
use crate::compose::Compose;
use crate::config::Service;
use crate::docker::{Engine, ServiceImage};
use crate::journal::{now_unix, step, Job, Outcome, Trigger};
use crate::restore::wait_healthy;
use crate::stacks::Stacks;

/// How often the update scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(15);

/// One compose service whose image an update changed: the image IDs before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageChange {
    pub service: String,
    pub image: String,
    pub old: String,
    pub new: String,
}

/// What a finished update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdateReport {
    pub service: String,
    /// The compose services redeployed (empty: every image was current).
    pub changes: Vec<ImageChange>,
    /// The new images were not healthy: the service runs the recorded ones again.
    pub rolled_back: bool,
    pub message: String,
}

/// The image updates: see the module docs.
pub(crate) struct Updates {
    stacks: Arc<Stacks>,
    backups: Arc<Backups>,
}

/// The JSON of a journal detail (a list of records).
fn detail<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn short(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    &id[..id.len().min(12)]
}

/// The changes as a history row shows them: old → new, or old → old again for a rolled-back update.
pub(crate) fn history_images(changes: &[ImageChange], rolled_back: bool) -> Vec<ImageChange> {
    changes
        .iter()
        .map(|c| ImageChange { new: if rolled_back { c.old.clone() } else { c.new.clone() }, ..c.clone() })
        .collect()
}

impl Updates {
    pub(crate) fn new(stacks: Arc<Stacks>, backups: Arc<Backups>) -> Updates {
        Updates { stacks, backups }
    }

    fn service(&self, name: &str) -> Result<Service, JobError> {
        self.backups.cfg().service(name).cloned().ok_or_else(|| JobError::Unknown(name.to_string()))
    }

    /// The services an update of "all" covers: every configured one but the hub.
    pub(crate) fn all(&self) -> Vec<String> {
        self.backups.cfg().services.iter().skip(1).map(|s| s.name.clone()).collect()
    }

    /// The global targets and the service's own.
    fn targets(&self, svc: &Service) -> Vec<NotifyTarget> {
        let cfg = self.backups.cfg();
        cfg.notify.iter().chain(svc.backup.iter().flat_map(|b| &b.notify)).cloned().collect()
    }

    /// The images of a run's history row (`None`: not an update, or nothing redeployed).
    pub(crate) fn images_of(&self, run: i64, result: &str) -> Vec<ImageChange> {
        let Ok(Some(d)) = self.backups.journal().run_detail(run, step::REDEPLOY) else { return Vec::new() };
        let changes: Vec<ImageChange> = serde_json::from_str(&d).unwrap_or_default();
        history_images(&changes, result == "rolled back")
    }

    /// Updates every service (one after the other); one result per service.
    pub(crate) async fn update_all(
        &self,
        trigger: Trigger,
        rep: &Reporter,
    ) -> Vec<(String, Result<UpdateReport, JobError>)> {
        let mut out = Vec::new();
        for name in self.all() {
            let r = self.update(&name, trigger, &rep.for_target(&name)).await;
            out.push((name, r));
        }
        out
    }

    /// One update of `name` (see the module docs): recorded in the history whatever happens; a redeploy, a rollback
    /// or a failure is notified.
    pub(crate) async fn update(&self, name: &str, trigger: Trigger, rep: &Reporter) -> Result<UpdateReport, JobError> {
        let svc = self.service(name)?;
        if svc.update.backup_first {
            rep.say("backup", format!("backing up {name} before the update")).await;
            self.backups.backup(name, trigger, rep).await.map_err(|e| JobError::Refused {
                service: name.to_string(),
                message: format!("update refused: the backup before it failed: {e}"),
            })?;
        }
        let refused = |e: &dyn std::fmt::Display| JobError::Refused {
            service: name.to_string(),
            message: format!("cannot update: {e}"),
        };
        let (_op, compose, project) = self.stacks.for_update(name).await.map_err(|e| refused(&e))?;
        let engine = Engine::connect(&self.backups.cfg().docker_socket).await.map_err(|e| refused(&e))?;
        let before = engine.project_images(name).await.map_err(|e| refused(&e))?;
        if before.is_empty() {
            return Err(refused(&"no container is deployed: nothing to update"));
        }
        let j = self.backups.journal();
        let run = j.start_run(name, Job::Update, trigger)?;
        let started = Instant::now();
        tracing::info!(service = name, %trigger, "update started");
        let result = self.steps(run, name, &svc, &engine, &compose, &project, &before, rep).await;
        let mut event = Event::new(LAYER, name, Job::Update.as_str(), &self.backups.host);
        event.duration_seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(r) => {
                let result = match (r.rolled_back, r.changes.is_empty()) {
                    (true, _) => "rolled back",
                    (false, true) => "unchanged",
                    (false, false) => "ok",
                };
                let error = if r.rolled_back { r.message.clone() } else { String::new() };
                j.finish(run, &Outcome { result: result.into(), error, ..Default::default() })?;
                tracing::info!(service = name, result, "update done: {}", r.message);
                event.message = r.message.clone();
                match (r.rolled_back, r.changes.is_empty()) {
                    (true, _) => notify::send(&self.targets(&svc), Phase::Fail, &event).await,
                    (false, false) => notify::send(&self.targets(&svc), Phase::Success, &event).await,
                    (false, true) => {}
                }
                Ok(r)
            }
            Err(e) => {
                let (result, phase) = failed_or_cancelled();
                let o = Outcome { result: result.into(), error: e.to_string(), ..Default::default() };
                if let Err(je) = j.finish(run, &o) {
                    tracing::error!(service = name, error = %je, "cannot record the failed update");
                }
                tracing::error!(service = name, error = %e, "update {result}");
                event.message = e.to_string();
                notify::send(&self.targets(&svc), phase, &event).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn steps(
        &self,
        run: i64,
        name: &str,
        svc: &Service,
        engine: &Engine,
        compose: &Compose,
        project: &crate::compose::Project,
        before: &[ServiceImage],
        rep: &Reporter,
    ) -> Result<UpdateReport, JobError> {
        let j = self.backups.journal();
        let recorded: Vec<ImageChange> = before
            .iter()
            .map(|b| ImageChange {
                service: b.service.clone(),
                image: b.image.clone(),
                old: b.image_id.clone(),
                new: String::new(),
            })
            .collect();
        let s = j.begin(run, name, step::UPDATE_IMAGES, &detail(&recorded))?;
        j.done(s)?;

        let images: Vec<String> = before.iter().map(|b| format!("{} ({})", b.image, b.service)).collect();
        let s = j.begin(run, name, step::PULL, "")?;
        rep.say(step::PULL, format!("pulling {}", images.join(", "))).await;
        compose.pull(project).await.map_err(|e| {
            JobError::step(
                name,
                step::PULL,
                format!("pulling {} failed (nothing was restarted): {e}", images.join(", ")),
            )
        })?;
        j.done(s)?;

        let mut changes = Vec::new();
        for r in &recorded {
            let now = engine.image_id(&r.image).await.map_err(|e| JobError::step(name, step::PULL, e))?;
            let Some(now) = now else {
                return Err(JobError::step(
                    name,
                    step::PULL,
                    format!("image {} of compose service {} is gone after the pull", r.image, r.service),
                ));
            };
            if now != r.old {
                changes.push(ImageChange { new: now, ..r.clone() });
            }
        }
        if changes.is_empty() {
            let message = format!("{name}: images unchanged ({})", images.join(", "));
            return Ok(UpdateReport { service: name.into(), changes, rolled_back: false, message });
        }
        let services: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        let words: Vec<String> = changes
            .iter()
            .map(|c| format!("{} {} {} → {}", c.service, c.image, short(&c.old), short(&c.new)))
            .collect();

        let s = j.begin(run, name, step::REDEPLOY, &detail(&changes))?;
        rep.say(step::REDEPLOY, format!("redeploying {}", words.join(", "))).await;
        let deployed = compose.up_services(project, &services).await.map_err(|e| e.to_string());
        let healthy = match deployed {
            Err(e) => Err(e),
            Ok(()) => {
                let w = j.begin(run, name, step::WAIT_HEALTHY, "")?;
                rep.say(step::WAIT_HEALTHY, format!("waiting for {} to be healthy", services.join(", "))).await;
                let r = self.wait(engine, name, &services, svc.update.healthy_timeout).await;
                j.done(w)?;
                r
            }
        };
        match healthy {
            Ok(()) => {
                j.done(s)?;
                if let Err(e) = self.stacks.record_hash(compose, project).await {
                    tracing::warn!(service = name, error = %e, "cannot record the updated stack's config hash");
                }
                let message = format!("{name}: updated {}", words.join(", "));
                Ok(UpdateReport { service: name.into(), changes, rolled_back: false, message })
            }
            Err(why) => {
                tracing::warn!(service = name, error = %why, "update not healthy: rolling back");
                rep.say(step::ROLLBACK, format!("not healthy ({why}): rolling back")).await;
                let r = self.roll_back(run, name, engine, compose, project, &changes, svc.update.healthy_timeout).await;
                j.done(s)?;
                r.map_err(|e| {
                    JobError::step(name, step::ROLLBACK, format!("{why}; and the rollback failed too: {e}"))
                })?;
                let message = format!(
                    "{name}: {} not healthy: {why}; rolled back to {}",
                    words.join(", "),
                    changes.iter().map(|c| format!("{} {}", c.service, short(&c.old))).collect::<Vec<_>>().join(", ")
                );
                Ok(UpdateReport { service: name.into(), changes, rolled_back: true, message })
            }
        }
    }

    /// Waits until the containers of these compose services are running (and healthy, when they have a check).
    /// A container that is not running yet (restarting) is waited for too, within the same time.
    async fn wait(&self, engine: &Engine, name: &str, services: &[String], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut ids = Vec::new();
        for s in services {
            loop {
                if let Some(id) = engine.service_container(name, s).await.map_err(|e| e.to_string())? {
                    ids.push(id);
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("compose service {s} has no running container within {within:?}"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        // Whole seconds: the error names this time.
        let left = Duration::from_secs(deadline.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as u64);
        wait_healthy(engine, name, &ids, left).await.map_err(|e| e.to_string())
    }

    /// Tags the recorded images with their references again and recreates those compose services on them.
    #[allow(clippy::too_many_arguments)]
    async fn roll_back(
        &self,
        run: i64,
        name: &str,
        engine: &Engine,
        compose: &Compose,
        project: &crate::compose::Project,
        changes: &[ImageChange],
        within: Duration,
    ) -> Result<(), String> {
        let j = self.backups.journal();
        let s = j.begin(run, name, step::ROLLBACK, &detail(&changes)).map_err(|e| e.to_string())?;
        retag(engine, changes).await?;
        let services: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        compose.up_services(project, &services).await.map_err(|e| e.to_string())?;
        self.wait(engine, name, &services, within).await?;
        j.done(s).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Crash repair of updates a dead agent left unfinished (see the module docs); runs before `Backups::recover`,
    /// which would otherwise just mark them failed. Returns what it did and what failed, for the log.
    pub(crate) async fn recover(&self) -> (Vec<String>, Vec<String>) {
        let (mut actions, mut errors) = (Vec::new(), Vec::new());
        let j = self.backups.journal();
        let dead = match j.running() {
            Ok(d) => d.into_iter().filter(|r| r.kind == Job::Update).collect::<Vec<_>>(),
            Err(e) => return (actions, vec![e.to_string()]),
        };
        for r in dead {
            let read = |step| -> Vec<ImageChange> {
                j.run_detail(r.id, step).ok().flatten().and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default()
            };
            let (recorded, changes) = (read(step::UPDATE_IMAGES), read(step::REDEPLOY));
            let outcome = self.repair(&r.service, &r.step, &recorded, &changes).await;
            let o = match &outcome {
                Ok((result, what)) => {
                    actions.push(format!("{}: update run {} (died in {}): {what}", r.service, r.id, r.step));
                    Outcome {
                        result: (*result).into(),
                        error: format!("the agent stopped during step {}; at restart: {what}", r.step),
                        ..Default::default()
                    }
                }
                Err(e) => {
                    errors.push(format!("{}: cannot repair update run {}: {e}", r.service, r.id));
                    Outcome {
                        result: "failed".into(),
                        error: format!("the agent stopped during step {}; repair at restart failed: {e}", r.step),
                        ..Default::default()
                    }
                }
            };
            if let Err(e) = j.finish(r.id, &o) {
                errors.push(e.to_string());
            }
            for s in j.open_steps().unwrap_or_default().into_iter().filter(|s| s.run == r.id) {
                if let Err(e) = j.done(s.id) {
                    errors.push(e.to_string());
                }
            }
            if let Ok(svc) = self.service(&r.service) {
                let mut event = Event::new(LAYER, &r.service, Job::Update.as_str(), &self.backups.host);
                event.message = o.error.clone();
                let phase = if o.result == "ok" { Phase::Success } else { Phase::Fail };
                notify::send(&self.targets(&svc), phase, &event).await;
            }
        }
        (actions, errors)
    }

    /// One dead update: before the redeploy, only the tags may have moved (put back); after it, the changed
    /// services keep the new images only when they are all running and healthy right now, else they are rolled
    /// back to the recorded ones. The result word and what was done.
    async fn repair(
        &self,
        name: &str,
        died_in: &str,
        recorded: &[ImageChange],
        changes: &[ImageChange],
    ) -> Result<(&'static str, String), String> {
        let engine = Engine::connect(&self.backups.cfg().docker_socket).await.map_err(|e| e.to_string())?;
        if changes.is_empty() {
            retag(&engine, recorded).await?;
            return Ok(("failed", "nothing was redeployed; the image tags point at the recorded images again".into()));
        }
        let within = self.service(name).map(|s| s.update.healthy_timeout).unwrap_or(Duration::from_secs(120));
        let services: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        if died_in == step::WAIT_HEALTHY && self.runs_healthy(&engine, name, changes).await {
            return Ok(("ok", "the new images run healthy: kept".into()));
        }
        let (_op, compose, project) = self.stacks.for_update(name).await.map_err(|e| e.to_string())?;
        retag(&engine, changes).await?;
        compose.up_services(&project, &services).await.map_err(|e| e.to_string())?;
        self.wait(&engine, name, &services, within).await?;
        let to: Vec<String> = changes.iter().map(|c| format!("{} {}", c.service, short(&c.old))).collect();
        Ok(("rolled back", format!("rolled back to the recorded images: {}", to.join(", "))))
    }

    /// True when every changed compose service runs its new image, running and healthy now.
    async fn runs_healthy(&self, engine: &Engine, name: &str, changes: &[ImageChange]) -> bool {
        let Ok(now) = engine.project_images(name).await else { return false };
        let on_new = changes.iter().all(|c| now.iter().any(|n| n.service == c.service && n.image_id == c.new));
        let services: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        on_new && self.wait(engine, name, &services, Duration::ZERO).await.is_ok()
    }
}

/// Points each reference at its recorded (old) image again; references pinned by digest are left alone.
async fn retag(engine: &Engine, changes: &[ImageChange]) -> Result<(), String> {
    for c in changes.iter().filter(|c| !c.image.contains('@') && !c.old.is_empty()) {
        engine.tag(&c.old, &c.image).await.map_err(|e| format!("tagging {} as {}: {e}", short(&c.old), c.image))?;
    }
    Ok(())
}

/// Runs until `shutdown`: each service's update when its `update` cron (read in the config's `timezone`) comes due.
/// A service whose previous update is still going is skipped (logged). Outcomes are recorded and notified by
/// [`Updates::update`].
pub(crate) async fn schedule(updates: Arc<Updates>, shutdown: Shutdown) {
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next: std::collections::HashMap<String, i64> = Default::default();
    loop {
        let cfg = updates.backups.cfg();
        let now = now_unix() as i64;
        for svc in &cfg.services {
            let Some(cron) = &svc.update.schedule else {
                next.remove(&svc.name);
                continue;
            };
            let Some(due) = next.get(&svc.name).copied().or_else(|| cron.next_after(now, &cfg.timezone)) else {
                continue;
            };
            if due > now {
                next.insert(svc.name.clone(), due);
                continue;
            }
            next.remove(&svc.name);
            if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert(svc.name.clone()) {
                tracing::warn!(service = %svc.name, "scheduled update skipped: the previous one is still running");
                continue;
            }
            let (u, busy, name) = (updates.clone(), busy.clone(), svc.name.clone());
            tokio::spawn(async move {
                let _ = u.update(&name, Trigger::Schedule, &Reporter::none()).await;
                busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.clone().wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_shows_old_to_new_or_old_again_after_a_rollback() {
        let c = ImageChange {
            service: "web".into(),
            image: "r/web:stable".into(),
            old: "sha256:a".into(),
            new: "sha256:b".into(),
        };
        assert_eq!(history_images(std::slice::from_ref(&c), false)[0].new, "sha256:b");
        assert_eq!(history_images(std::slice::from_ref(&c), true)[0].new, "sha256:a");
        let back: Vec<ImageChange> = serde_json::from_str(&detail(&vec![c.clone()])).unwrap();
        assert_eq!(back, [c]);
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}
