//! Off-site copies of a service (issue 13), end to end: the services-agent backs one service up to a local Borg
//! repository and to an off-site one over SSH (`strata_tests::offsite`: a real sshd in a network namespace behind a
//! 40 ms / 50 Mbit/s link, the agent's key held to `borg serve --append-only`), driven through its gRPC API. One run
//! feeds both repositories; a cut link, a changed host key and a killed agent cost the off-site copy a retry and
//! nothing else; what an attacker does with the agent's key is undone on the trusted side.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{HistoryEntry, RestoreRequest, ServiceRef};
use strata_tests::backuplab::{archive_of, webhook, Lab, PASSPHRASE};
use strata_tests::fixtures::cmd;
use strata_tests::fixtures::files::{same_tree, write_random_files};
use strata_tests::offsite::{self, OffsiteHost};

/// The service's off-site repository's name on the off-site host's disk.
const REMOTE: &str = "svc";

/// A lab whose service has a `local` repository (the lab's) and an append-only `offsite` one.
fn world(extra: &str) -> Result<(Lab, OffsiteHost)> {
    let off = OffsiteHost::start()?;
    off.trusted_init(REMOTE, PASSPHRASE)?;
    let mut lab = Lab::new(extra)?;
    lab.repos = Some(format!(
        "[{{ label = \"local\", url = {:?} }}, {{ label = \"offsite\", url = {:?}, ssh_key = {:?}, known_hosts = {:?}, \
         append_only = true }}]",
        lab.repo.path().display().to_string(),
        off.url(REMOTE),
        off.key_path().display().to_string(),
        off.known_hosts_path().display().to_string(),
    ));
    lab.start(&[], "")?;
    Ok((lab, off))
}

/// Random bytes the service "wrote": `mib` MiB in `NAME/file-0.bin` under its data (incompressible, so the link is
/// the limit).
fn write_random(lab: &Lab, name: &str, mib: usize) -> Result<()> {
    write_random_files(&lab.mount().join(name), 1, mib << 20).map(drop)
}

/// Bytes in a repository's segment files (seen from its trusted side).
fn repo_bytes(repo: &Path) -> u64 {
    walk(&repo.join("data"))
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until the off-site repository grew by `bytes` (the transfer is under way).
fn wait_growth(repo: &Path, from: u64, bytes: u64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while repo_bytes(repo) < from + bytes {
        ensure!(Instant::now() < deadline, "the off-site repository did not grow by {bytes} bytes");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A backup started through the agent's API, followed to its end in a task of its own.
async fn backup_in_background(
    lab: &Lab,
) -> Result<tokio::task::JoinHandle<std::result::Result<String, tonic::Status>>> {
    let mut c = lab.client().await?;
    let name = lab.service.clone();
    Ok(tokio::spawn(async move {
        let s = c.backup(strata_proto::v1::BackupRequest { name, all: false }).await?.into_inner();
        Lab::drain(s).await
    }))
}

/// `borg check` of a repository from its trusted side (local path).
fn borg_check(lab: &Lab, repo: &Path) -> Result<()> {
    cmd::run(lab.repo.command().args(["check", "--lock-wait", "60"]).arg(repo))
        .with_context(|| format!("borg check of {}", repo.display()))?;
    Ok(())
}

/// The newest backup run in the history.
fn last_backup(history: &[HistoryEntry]) -> Result<&HistoryEntry> {
    history.iter().find(|h| h.kind == "backup").context("no backup run in the history")
}

/// `(label, result)` of each repository of a run.
fn per_repo(h: &HistoryEntry) -> Vec<(String, String)> {
    h.repos.iter().map(|r| (r.label.clone(), r.result.clone())).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The value of `strata_backup_last_success_timestamp_seconds{layer="services",name,repo}`, if the series exists.
fn last_success(lab: &Lab, repo: &str) -> Result<Option<f64>> {
    let text = lab.agent().metrics_text()?;
    let want = format!("repo=\"{repo}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("strata_backup_last_success_timestamp_seconds{layer=\"services\","))
        .find(|l| l.contains(&want) && l.contains(&format!("name=\"{}\"", lab.service)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok()))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_run_feeds_both_repositories_byte_identical_and_the_offsite_copy_restores() -> Result<()> {
    let (lab, off) = world("quiesce = \"stop\"\nlocal_snapshots = 5\n")?;
    write_random(&lab, "blob", 8)?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}"))?;
    let archive = archive_of(&summary)?;

    // One run, one quiesce, both repositories got the archive.
    let history = lab.history().await?;
    ensure!(history.iter().filter(|h| h.kind == "backup").count() == 1, "{history:?}");
    let run = last_backup(&history)?;
    ensure!(run.result == "ok", "{run:?}");
    ensure!(per_repo(run) == pairs(&[("local", "ok"), ("offsite", "ok")]), "{run:?}");
    ensure!(run.repos.iter().all(|r| r.archive == archive), "{run:?}");
    ensure!(run.downtime_seconds > 0.0, "{run:?}");

    // Both archives equal the snapshot, byte for byte.
    let ts = archive.rsplit('-').next().context("archive timestamp")?;
    let view = lab.read_snapshot(&format!("strata-{ts}"))?;
    let local = lab.extract(&archive)?;
    same_tree(&view.at, local.path()).context("local archive vs snapshot")?;
    let remote = lab.extract_from(&off.repo_path(REMOTE), &archive)?;
    same_tree(&view.at, remote.path()).context("off-site archive vs snapshot")?;

    // The archive list and a restore from the off-site repository, by label.
    let mut c = lab.client().await?;
    let listed =
        c.list_archives(ServiceRef { name: lab.service.clone(), repo: "offsite".into() }).await?.into_inner().archives;
    ensure!(listed.iter().map(|a| a.name.as_str()).collect::<Vec<_>>() == [archive.as_str()], "{listed:?}");
    let to = lab.dir.path().join("from-offsite");
    let req = RestoreRequest {
        name: lab.service.clone(),
        archive: archive.clone(),
        to: to.display().to_string(),
        repo: "offsite".into(),
        ..Default::default()
    };
    let msg = Lab::drain(c.restore(req).await?.into_inner()).await?;
    ensure!(msg.contains("not touched"), "{msg}");
    same_tree(&view.at, &to).context("restored from the off-site repository vs snapshot")?;
    let err = c
        .list_archives(ServiceRef { name: lab.service.clone(), repo: "nowhere".into() })
        .await
        .expect_err("an unknown label is refused");
    ensure!(err.message().contains("no repository `nowhere`") && err.message().contains("local, offsite"), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_key_cannot_destroy_offsite_archives_and_the_trusted_side_rolls_back() -> Result<()> {
    let (lab, off) = world("quiesce = \"stop\"\nlocal_snapshots = 5\n")?;
    let first = archive_of(&lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}"))?)?;
    std::fs::write(lab.mount().join("second"), b"second run")?;
    let second = archive_of(&lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}"))?)?;
    let repo = off.repo_path(REMOTE);
    let good = offsite::transactions(&repo)?.last().context("append-only transactions")?.id;

    // The attacker on the VM holds the agent's key and passphrase: delete one archive, prune the other.
    let attacker = off.agent_client("attacker", PASSPHRASE)?;
    let url = off.url(REMOTE);
    cmd::run(attacker.command().args(["delete", &format!("{url}::{second}")]))?;
    cmd::run(attacker.command().args(["prune", "--keep-last", "1", "--glob-archives", "*"]).arg(&url))?;
    cmd::run(attacker.command().args(["delete", &format!("{url}::{first}")]))?;
    // borg recorded it: the repository looks empty …
    ensure!(attacker.archives(&url)?.is_empty(), "the deletes were recorded");
    // … and whatever `borg compact` does through the append-only server, the data is still on its disk.
    let compact = attacker.command().arg("compact").arg(&url).output()?;
    eprintln!(
        "borg compact through the append-only key: {:?} {}",
        compact.status,
        String::from_utf8_lossy(&compact.stderr)
    );
    ensure!(offsite::segments(&repo)?.iter().any(|n| *n <= good), "segments up to transaction {good} remain");

    // The trusted side rolls back to the last transaction before the tampering; the agent forgets what it saw since.
    let rolled = offsite::rollback_to_transaction(&repo, good)?;
    ensure!(!rolled.segments.is_empty(), "the tampering's segments were removed: {rolled:?}");
    let id = offsite::repository_id(&repo)?;
    offsite::forget_client_state(&lab.repo.scratch_dir().join("agent-base"), &id)?;
    borg_check(&lab, &repo)?;

    // Both archives are back; the agent restores the newest from the off-site repository, byte for byte.
    let mut c = lab.client().await?;
    let listed: Vec<String> = c
        .list_archives(ServiceRef { name: lab.service.clone(), repo: "offsite".into() })
        .await?
        .into_inner()
        .archives
        .into_iter()
        .map(|a| a.name)
        .collect();
    ensure!(listed == [first.clone(), second.clone()], "{listed:?}");
    let to = lab.dir.path().join("after-rollback");
    let req = RestoreRequest {
        name: lab.service.clone(),
        archive: second.clone(),
        to: to.display().to_string(),
        repo: "offsite".into(),
        ..Default::default()
    };
    Lab::drain(c.restore(req).await?.into_inner()).await?;
    let local = lab.extract(&second)?;
    same_tree(local.path(), &to).context("off-site archive after the rollback vs the local one")?;
    ensure!(std::fs::read(to.join("second"))? == b"second run");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_link_makes_the_run_partial_and_the_next_run_catches_up() -> Result<()> {
    let (url, bodies) = webhook()?;
    let (lab, off) = world(&format!("quiesce = \"none\"\nnotify = [{{ kind = \"webhook\", url = \"{url}\" }}]\n"))?;
    lab.backup().await.map_err(|s| anyhow::anyhow!("first backup: {s}"))?;
    let offsite_before = last_success(&lab, "offsite")?.context("offsite metric after the first run")?;

    // 40 MiB new: about 7 s over the link; cut it once a few MiB went through.
    write_random(&lab, "big", 40)?;
    let repo = off.repo_path(REMOTE);
    let from = repo_bytes(&repo);
    let run = backup_in_background(&lab).await?;
    wait_growth(&repo, from, 4 << 20, Duration::from_secs(60))?;
    off.link_down();
    let err = run.await?.expect_err("a run with the off-site repository cut is not a success");
    ensure!(err.message().contains("partial") && err.message().contains("repository offsite"), "{err:?}");

    let history = lab.history().await?;
    let h = last_backup(&history)?;
    ensure!(h.result == "partial", "{h:?}");
    ensure!(per_repo(h) == pairs(&[("local", "ok"), ("offsite", "failed")]), "{h:?}");
    // Told: the webhook got a failure naming the repository.
    let told = bodies.lock().unwrap().clone();
    ensure!(told.iter().any(|b| b.contains("\"phase\":\"fail\"") && b.contains("offsite")), "{told:?}");
    // The metric: the local copy is fresh, the off-site one stale.
    let local = last_success(&lab, "local")?.context("local metric")?;
    let offsite = last_success(&lab, "offsite")?.context("offsite metric")?;
    ensure!(offsite == offsite_before && local > offsite, "local {local}, offsite {offsite} (was {offsite_before})");

    // The link back: the next run succeeds (from borg's checkpoint), and both repositories check out.
    off.link_up();
    lab.backup().await.map_err(|s| anyhow::anyhow!("backup after the link came back: {s}"))?;
    let history = lab.history().await?;
    ensure!(per_repo(last_backup(&history)?) == pairs(&[("local", "ok"), ("offsite", "ok")]), "{history:?}");
    ensure!(last_success(&lab, "offsite")?.unwrap_or(0.0) > offsite_before);
    borg_check(&lab, lab.repo.path())?;
    borg_check(&lab, &repo)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_leaves_no_lock_that_blocks_the_next_run() -> Result<()> {
    let (mut lab, off) = world("quiesce = \"none\"\n")?;
    write_random(&lab, "big", 40)?;
    let repo = off.repo_path(REMOTE);
    let from = repo_bytes(&repo);
    let run = backup_in_background(&lab).await?;
    wait_growth(&repo, from, 4 << 20, Duration::from_secs(60))?;
    lab.agent.as_mut().context("agent")?.kill()?;
    let _ = run.await;

    lab.start(&[], "")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup after the kill: {s}"))?;
    let history = lab.history().await?;
    ensure!(per_repo(last_backup(&history)?) == pairs(&[("local", "ok"), ("offsite", "ok")]), "{summary}");
    borg_check(&lab, lab.repo.path())?;
    borg_check(&lab, &repo)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_host_key_refuses_the_offsite_repository_and_sends_nothing() -> Result<()> {
    let (lab, mut off) = world("quiesce = \"none\"\n")?;
    let repo = off.repo_path(REMOTE);
    let before = (offsite::segments(&repo)?, repo_bytes(&repo));
    off.rotate_host_key()?;
    let err = lab.backup().await.expect_err("the off-site repository is refused");
    ensure!(err.message().contains("partial"), "{err:?}");
    ensure!(err.message().contains("repository offsite") && err.message().contains("host key changed"), "{err:?}");
    ensure!((offsite::segments(&repo)?, repo_bytes(&repo)) == before, "nothing reached the off-site repository");
    let history = lab.history().await?;
    ensure!(per_repo(last_backup(&history)?) == pairs(&[("local", "ok"), ("offsite", "failed")]), "{history:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_swapped_in_at_the_same_url_is_refused() -> Result<()> {
    let (lab, off) = world("quiesce = \"none\"\n")?;
    lab.backup().await.map_err(|s| anyhow::anyhow!("first backup: {s}"))?;
    // Someone replaces the off-site repository with another one at the same place (same passphrase even).
    let repo = off.repo_path(REMOTE);
    let recorded = offsite::repository_id(&repo)?;
    std::fs::remove_dir_all(&repo)?;
    off.trusted_init(REMOTE, PASSPHRASE)?;
    ensure!(offsite::repository_id(&repo)? != recorded);

    // Its archive is not counted: the run is partial, naming the repository and both ids (borg reports the id with
    // the create; a repository whose key the passphrase does not open refuses the create itself).
    let err = lab.backup().await.expect_err("the swapped repository is refused");
    ensure!(err.message().contains("partial") && err.message().contains("repository offsite"), "{err:?}");
    ensure!(
        err.message().contains("is not the one backed up to before") && err.message().contains(&recorded),
        "{err:?}"
    );
    let history = lab.history().await?;
    ensure!(per_repo(last_backup(&history)?) == pairs(&[("local", "ok"), ("offsite", "failed")]), "{history:?}");
    // Reading from it is refused too.
    let mut c = lab.client().await?;
    let e = c
        .list_archives(ServiceRef { name: lab.service.clone(), repo: "offsite".into() })
        .await
        .expect_err("listing the swapped repository is refused");
    ensure!(e.message().contains("is not the one backed up to before"), "{e:?}");
    Ok(())
}
