//! The services-agent reloading its config without a restart (SIGHUP and `Services/Reload`) and taking down the
//! stacks that leave the config or the repository: the real binary on a real dockerd through docker-compose, a real
//! Git repository of stacks, a zfs-fuse dataset bound into a stack, Borg for the backup that runs across a reload
//! (and the scheduler picking up a schedule a reload gave).
//! Knows the agent's config format, gRPC API and log lines; nothing of its internals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{BackupRequest, HistoryRequest, ReloadRequest, ServiceRef, StatusRequest};
use strata_tests::backuplab;
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::docker::TEST_IMAGE_TAG;
use strata_tests::fixtures::zfs::ZfsPool;
use strata_tests::harness::{base_config, AgentKind, AgentProc};
use strata_tests::serviceslab::{hub_compose, ids, running, spoke_compose, Lab, DOMAIN, HUB_ADDRESS};

/// Writes the services lab's agent config: `services` (stack names), `stacks_extra` lines under `[stacks]`.
fn write_config(lab: &Lab, services: &[&str], stacks_extra: &str) -> Result<PathBuf> {
    let with: Vec<(&str, &str)> = services.iter().map(|s| (*s, "")).collect();
    write_config_with(lab, &with, stacks_extra)
}

/// [`write_config`] with lines added to each service (`(stack, lines)`).
fn write_config_with(lab: &Lab, services: &[(&str, &str)], stacks_extra: &str) -> Result<PathBuf> {
    let (cert, key) = lab.pki.issue(agent_core::identity::Role::ServicesAgent, "services1")?;
    let mut text = base_config(&lab.dir.path().join("state"), &lab.pki.ca(), &cert, &key);
    text.push_str(&format!(
        "[stacks]\nrepo = {:?}\nbranch = \"main\"\ncheckout_dir = {:?}\npoll = \"1h\"\n{stacks_extra}\
         [hub]\nstack = {:?}\nnetwork = {:?}\ndomain = \"{DOMAIN}\"\naddress = \"{HUB_ADDRESS}\"\n",
        lab.origin.dir.display().to_string(),
        lab.dir.path().join("checkout").display().to_string(),
        lab.name("proxy"),
        lab.hub_net(),
    ));
    for (s, lines) in services {
        text.push_str(&format!("[[services]]\nname = {:?}\n{lines}", lab.name(s)));
    }
    let path = lab.dir.path().join("services-agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn start(lab: &mut Lab, config: &Path, env: &[(&str, &str)]) -> Result<()> {
    if let Some(mut old) = lab.agent.take() {
        old.kill()?;
    }
    lab.agent = Some(AgentProc::start_with_env(AgentKind::Services, config, env)?);
    Ok(())
}

fn sighup(agent: &AgentProc) -> Result<()> {
    let st = Command::new("kill").args(["-HUP", &agent.pid().to_string()]).status()?;
    ensure!(st.success(), "kill -HUP failed");
    Ok(())
}

/// The ids of every container (running or not) of compose project `project`.
fn containers_of(lab: &Lab, project: &str) -> Result<Vec<String>> {
    let label = format!("label=com.docker.compose.project={project}");
    Ok(lab.engine.docker(["ps", "-aq", "--filter", &label])?.split_whitespace().map(String::from).collect())
}

fn networks_of(lab: &Lab, project: &str) -> Result<Vec<String>> {
    let label = format!("label=com.docker.compose.project={project}");
    let out = lab.engine.docker(["network", "ls", "-q", "--filter", &label])?;
    Ok(out.split_whitespace().map(String::from).collect())
}

async fn reload(lab: &Lab) -> std::result::Result<String, tonic::Status> {
    let mut c = lab.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.reload(ReloadRequest {}).await.map(|r| r.into_inner().message)
}

async fn ack(lab: &Lab, stack: &str) -> std::result::Result<String, tonic::Status> {
    let mut c = lab.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = c.acknowledge(ServiceRef { name: lab.name(stack), ..Default::default() }).await?;
    Ok(r.into_inner().message)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_deploys_an_added_stack_refuses_an_invalid_file_and_takes_dropped_stacks_down() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    for s in ["a", "b"] {
        lab.origin.write(&format!("{}/docker-compose.yml", lab.name(s)), &spoke_compose(&hub, ""))?;
    }
    lab.origin.commit("hub and two spokes")?;
    let config = write_config(&lab, &["a"], "")?;
    start(&mut lab, &config, &[])?;
    let a = lab.wait_service("a", Duration::from_secs(30), running).await?;
    ensure!(!lab.services().await?.contains_key(&lab.name("b")), "b is not configured yet");

    // SIGHUP with b added: b deploys (the reload asks for a sync), a is left as it was.
    write_config(&lab, &["a", "b"], "")?;
    sighup(lab.agent())?;
    // The signal is handled in the background: b is listed once the reload is logged.
    lab.agent()
        .wait_log(&format!("config reloaded: applied services (added {})", lab.name("b")), Duration::from_secs(10))?;
    // Running, and its deploy recorded (the containers run before `up` returns and the sync records the commit).
    lab.wait_service("b", Duration::from_secs(30), |s| running(s) && !s.deployed_commit.is_empty()).await?;
    ensure!(ids(&lab.service("a").await?) == ids(&a), "a was redeployed by the reload");

    // An invalid file: SIGHUP and Reload refuse it naming the key; the agent serves the running config unchanged.
    let before: BTreeMap<String, Vec<String>> = lab.services().await?.into_iter().map(|(n, s)| (n, ids(&s))).collect();
    let good = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{good}[[services]]\nname = \"Bad/Name\"\n"))?;
    sighup(lab.agent())?;
    lab.agent().wait_log("reload refused, keeping the running config", Duration::from_secs(10))?;
    let refused = reload(&lab).await.expect_err("an invalid file is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let msg = refused.message();
    assert!(msg.contains("key `services[2].name`") && msg.contains(&config.display().to_string()), "{msg}");
    assert!(msg.contains("the running config is kept"), "{msg}");
    let after: BTreeMap<String, Vec<String>> = lab.services().await?.into_iter().map(|(n, s)| (n, ids(&s))).collect();
    assert_eq!(after, before, "same services, same containers");
    let status = strata_proto::v1::agent_client::AgentClient::new(lab.channel().await?)
        .status(StatusRequest {})
        .await?
        .into_inner();
    assert!(status.summary.contains("3 stacks (3 running)"), "{}", status.summary);

    // b dropped, through the RPC: its containers and its own network go, it is listed removed until acknowledged.
    let b_net = networks_of(&lab, &lab.name("b"))?;
    ensure!(!b_net.is_empty(), "b has its default network");
    write_config(&lab, &["a"], "")?;
    let (cert, key) = lab.pki.issue(agent_core::identity::Role::Admin, "alice")?;
    let inventory = lab.dir.path().join("labctl.toml");
    strata_tests::harness::write_inventory(&inventory, &lab.pki.ca(), &cert, &key, &[lab.agent()])?;
    let labctl = |args: &[&str]| -> Result<(Option<i32>, String)> {
        let out =
            Command::new(strata_tests::harness::bin("labctl")?).arg("--config").arg(&inventory).args(args).output()?;
        Ok((
            out.status.code(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ))
    };
    let (code, text) = labctl(&["services", "reload"])?;
    assert_eq!(
        (code, text.trim()),
        (Some(0), format!("config reloaded: applied services (removed {})", lab.name("b")).as_str())
    );
    let b = lab.wait_service("b", Duration::from_secs(30), |s| s.state == "removed" && s.containers.is_empty()).await?;
    assert!(b.containers.is_empty() && b.error.contains("no longer in [[services]]"), "{b:?}");
    assert!(containers_of(&lab, &lab.name("b"))?.is_empty(), "b's containers are removed");
    assert!(networks_of(&lab, &lab.name("b"))?.is_empty(), "b's network is removed");
    let hub_left = lab.engine.docker(["network", "ls", "-q", "--filter", &format!("name={hub}")])?;
    assert!(!hub_left.trim().is_empty(), "the hub's network stays");
    assert!(running(&lab.service("a").await?), "a is untouched");
    let err = ack(&lab, "a").await.expect_err("a is not removed");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let (code, text) = labctl(&["services", "ls"])?;
    let row = text.lines().find(|l| l.starts_with(&lab.name("b"))).unwrap_or_default();
    assert!(row.contains("removed") && code == Some(1), "a removed stack needs attention: {text}");
    let (code, text) = labctl(&["services", "ack", &lab.name("b")])?;
    assert!(code == Some(0) && text.contains("acknowledged"), "{text}");
    ensure!(!lab.services().await?.contains_key(&lab.name("b")), "an acknowledged stack is no longer listed");
    assert_eq!(ack(&lab, "b").await.expect_err("forgotten").code(), tonic::Code::NotFound);

    // A configured stack whose directory left the repository: taken down by the sync. A crash during the take-down
    // is repaired at restart (the step closed) and the next sync finishes it.
    lab.origin.git(&["rm", "-r", "-q", &lab.name("a")])?;
    lab.origin.commit("a leaves the repository")?;
    start(&mut lab, &config, &[("STRATA_TEST_CRASH_AT", "take-down")])?;
    lab.agent().wait_log("test hook: holding at step take-down", Duration::from_secs(60))?;
    lab.agent.as_mut().context("agent")?.kill()?;
    start(&mut lab, &config, &[])?;
    let a = lab.wait_service("a", Duration::from_secs(30), |s| s.state == "removed" && s.containers.is_empty()).await?;
    assert!(a.containers.is_empty(), "{a:?}");
    assert!(lab.agent().logs().contains("take-down interrupted; the next sync finishes it"), "{}", lab.agent().logs());
    assert!(containers_of(&lab, &lab.name("a"))?.is_empty());
    let mut c = lab.client().await?;
    let h = c.history(HistoryRequest { name: lab.name("a"), limit: 10 }).await?.into_inner().entries;
    let kinds: Vec<(&str, &str)> = h.iter().map(|e| (e.kind.as_str(), e.result.as_str())).collect();
    assert_eq!(kinds, [("take-down", "ok"), ("take-down", "failed")], "newest first: {h:?}");
    Ok(())
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir)?.to_path_buf(), std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

/// zfs-fuse fails to create mountpoints when pools and datasets are made in parallel: the tests of this file that
/// make them take turns.
static ZFS_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_stack_goes_down_after_its_running_backup_with_its_data_byte_identical_and_keep_unlisted_keeps_one(
) -> Result<()> {
    let _turn = ZFS_TURN.lock().await;
    let mut lab = Lab::new()?;
    let pool = ZfsPool::create()?;
    let dataset = pool.create_dataset("appdata/data")?;
    let mount = pool.dataset_mountpoint("appdata/data");
    std::fs::create_dir_all(mount.join("db"))?;
    std::fs::write(mount.join("db/rows"), (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>())?;
    std::fs::write(mount.join("config.txt"), "setting = 1\n")?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let data = format!(
        "version: \"3.7\"\nservices:\n  web:\n    image: {TEST_IMAGE_TAG}\n    volumes: [\"{}:/data\", \"keep:/keep\"]\n\
         volumes:\n  keep: {{}}\n",
        mount.display()
    );
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("data")), &data)?;
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("other")), &spoke_compose(&hub, ""))?;
    lab.origin.commit("a stack on a dataset and another")?;
    let roots = format!("bind_roots = [{:?}]\n", pool.mountpoint().display().to_string());
    // data is backed up, with a slow hook: a backup is running when a reload drops it.
    let borg = BorgRepo::init(backuplab::PASSPHRASE)?;
    let pass = lab.dir.path().join("passphrase");
    std::fs::write(&pass, backuplab::PASSPHRASE)?;
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let backed_up = format!(
        "dataset = {dataset:?}\nrepo = {:?}\npassphrase_file = {:?}\nquiesce = \"pause\"\n\
         hooks = [{{ when = \"before-snapshot\", container = \"web\", command = [\"sleep\", \"4\"] }}]\n",
        borg.path().display().to_string(),
        pass.display().to_string(),
    );
    let config = write_config_with(&lab, &[("data", &backed_up), ("other", "")], &roots)?;
    let base = borg.scratch_dir().join("agent-base");
    std::fs::create_dir_all(&base)?;
    start(&mut lab, &config, &[("BORG_BASE_DIR", base.to_str().context("utf-8")?)])?;
    let data_ids = ids(&lab.wait_service("data", Duration::from_secs(30), running).await?);
    let other = lab.wait_service("other", Duration::from_secs(30), running).await?;
    let volume = format!("{}_keep", lab.name("data"));
    let before = contents(&mount)?;
    ensure!(before.len() == 2, "{before:?}");

    let mut c = lab.client().await?;
    let mut stream = c.backup(BackupRequest { name: lab.name("data"), all: false }).await?.into_inner();
    loop {
        let p = stream.message().await?.context("the backup stream ended before its hooks")?;
        if p.step == "pre-hooks" {
            break;
        }
    }
    write_config(&lab, &["other"], &roots)?;
    sighup(lab.agent())?;
    // The take-down waits for the backup: the sync says so, data keeps running.
    lab.agent().wait_log("config reloaded: applied services (removed", Duration::from_secs(10))?;
    let r = lab.sync().await?;
    let deferred = r.errors.get(&lab.name("data")).context("the take-down is deferred")?;
    assert!(deferred.contains("its backup is running"), "{deferred}");
    let done = backuplab::Lab::drain(stream).await.map_err(|s| anyhow::anyhow!("{s}\n{}", lab.agent().logs()))?;
    assert!(done.contains("archive"), "{done}");
    assert_eq!(ids(&lab.service("data").await?), data_ids, "the backup ended with data running as before");
    lab.sync().await?;
    let gone =
        lab.wait_service("data", Duration::from_secs(30), |s| s.state == "removed" && s.containers.is_empty()).await?;
    assert!(gone.containers.is_empty(), "{gone:?}");
    assert!(containers_of(&lab, &lab.name("data"))?.is_empty());
    assert_eq!(contents(&mount)?, before, "the dataset's data is byte-identical");
    let listed = Command::new("zfs").args(["list", "-H", "-o", "name", &dataset]).output()?;
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), dataset, "the dataset is still there");
    let volumes = lab.engine.docker(["volume", "ls", "-q", "--filter", &format!("name={volume}")])?;
    assert_eq!(volumes.trim(), volume, "the named volume is kept");
    assert_eq!(ids(&lab.service("other").await?), ids(&other), "the other stack is untouched");
    assert!(ack(&lab, "data").await?.contains("acknowledged"));
    ensure!(!lab.services().await?.contains_key(&lab.name("data")));

    // keep_unlisted: a dropped stack is left running and listed as unlisted.
    write_config(&lab, &[], &format!("{roots}keep_unlisted = true\n"))?;
    let msg = reload(&lab).await?;
    assert!(msg.contains(&format!("removed {}", lab.name("other"))) && msg.contains("stacks.keep_unlisted"), "{msg}");
    lab.sync().await?;
    let kept = lab.service("other").await?;
    assert_eq!(kept.state, "unlisted", "{kept:?}");
    assert_eq!(ids(&kept), ids(&other), "left running as it was");
    assert!(lab.agent().logs().contains("left running (keep_unlisted = true)"), "{}", lab.agent().logs());
    let _ = lab.engine.docker(["volume", "rm", &volume]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_running_across_a_reload_finishes_under_its_settings_and_the_scheduler_follows() -> Result<()> {
    let _turn = ZFS_TURN.lock().await;
    // A slow pre-snapshot hook keeps the backup running while the config is reloaded.
    let hook = "hooks = [{ when = \"before-snapshot\", container = \"app\", command = [\"sleep\", \"3\"] }]\n";
    let mut lab = backuplab::Lab::new(hook)?;
    let other = format!("[[services]]\nname = \"{}-other\"\n", lab.service);
    lab.start(&[], &format!("retention = {{ last = 5 }}\n{other}"))?;
    for i in 0..2 {
        lab.backup().await.map_err(|s| anyhow::anyhow!("backup {i}: {s}\n{}", lab.agent().logs()))?;
    }
    assert_eq!(lab.archives().await?.len(), 2);

    let mut c = lab.client().await?;
    let mut stream = c.backup(BackupRequest { name: lab.service.clone(), all: false }).await?.into_inner();
    loop {
        let p = stream.message().await?.context("the backup stream ended before its hooks")?;
        if p.step == "pre-hooks" {
            break;
        }
    }
    // Mid-backup: the service's retention shrinks to one archive and the other service is dropped.
    lab.config("retention = { last = 1 }\n")?;
    let msg = c.reload(ReloadRequest {}).await?.into_inner().message;
    assert_eq!(
        msg,
        format!("config reloaded: applied services (removed {}-other; changed {})", lab.service, lab.service)
    );
    let done = backuplab::Lab::drain(stream).await.map_err(|s| anyhow::anyhow!("{s}\n{}", lab.agent().logs()))?;
    let h = lab.history().await?;
    assert_eq!(h[0].result, "ok", "{done}: {:?}", h[0]);
    assert_eq!(lab.archives().await?.len(), 3, "pruned under the retention it started with (last 5)");
    // The next backup runs under the reloaded retention.
    lab.backup().await.map_err(|s| anyhow::anyhow!("{s}\n{}", lab.agent().logs()))?;
    assert_eq!(lab.archives().await?.len(), 1, "pruned under the reloaded retention (last 1)");

    // A schedule given by a reload is followed by the running scheduler (at its next tick), no restart.
    let before = lab.history().await?.len();
    lab.config("retention = { last = 1 }\nschedule = \"* * * * *\"\n")?;
    let msg = c.reload(ReloadRequest {}).await?.into_inner().message;
    assert_eq!(msg, format!("config reloaded: applied services (changed {})", lab.service));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let h = lab.history().await?;
        if h.len() > before && h[0].result != "running" {
            assert_eq!(h[0].result, "ok", "{:?}", h[0]);
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "no scheduled backup within 120 s\n{}", lab.agent().logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
