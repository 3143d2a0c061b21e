//! One services-agent with one backed-up service, driven through labctl (the long-job tests: typed summaries, Ctrl-C,
//! cancel): a zfs-fuse dataset holding `data.txt`, a Borg repository whose passphrase command may be slowed (every
//! borg call of a job reads it first, so a job lasts seconds), an empty stacks repository, and an admin's labctl
//! inventory. Knows the agent's config format; asserts nothing itself (tests do).

use std::path::PathBuf;

use agent_core::identity::Role;
use anyhow::{Context, Result};

use crate::backuplab::PASSPHRASE;
use crate::fixtures::borg::BorgRepo;
use crate::fixtures::docker::DockerEngine;
use crate::fixtures::git::GitRepo;
use crate::fixtures::unique_suffix;
use crate::fixtures::zfs::ZfsPool;
use crate::harness::{base_config, write_inventory, AgentKind, AgentProc, Pki};

/// A passphrase command for `borg`'s repository that sleeps `secs` seconds first: every borg call of a job reads
/// it, so the job's borg runs last that long (and a cancelled one is killed while it waits).
pub fn slow_passcommand(borg: &BorgRepo, secs: u32) -> Result<String> {
    let passcommand =
        borg.env().into_iter().find(|(k, _)| k == "BORG_PASSCOMMAND").map(|(_, v)| v).context("passcommand")?;
    Ok(if secs == 0 { passcommand } else { format!("sh -c 'sleep {secs}; {passcommand}'") })
}

/// The world of one test. Fields drop in order: the agent first, then what it used.
pub struct ServiceJob {
    pub agent: AgentProc,
    /// The labctl inventory (admin `alice`).
    pub inv: PathBuf,
    pub service: String,
    pub dataset: String,
    pub borg: BorgRepo,
    pub pool: ZfsPool,
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub engine: DockerEngine,
}

impl ServiceJob {
    /// Starts the agent with one service named `PREFIX…` (two letters; also the hub's domain `PREFIX.test`), whose
    /// passphrase command sleeps `slow_secs` first (0: not at all), and `extra` lines in its `[[services]]` table.
    pub fn start(prefix: &str, slow_secs: u32, extra: &str) -> Result<ServiceJob> {
        let engine = DockerEngine::ensure()?;
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let pool = ZfsPool::create()?;
        let dataset = pool.create_dataset("appdata/app")?;
        std::fs::write(pool.dataset_mountpoint("appdata/app").join("data.txt"), "precious")?;
        let borg = BorgRepo::init(PASSPHRASE)?;
        let passcommand = slow_passcommand(&borg, slow_secs)?;
        let service = format!("{prefix}{}", unique_suffix().replace('_', "x"));
        let origin = GitRepo::init(dir.path().join("origin"))?;
        origin.write("README", "stacks\n")?;
        origin.commit("init")?;
        let (cert, key) = pki.issue(Role::ServicesAgent, AgentKind::Services.cert_name())?;
        let config = dir.path().join("services-agent.toml");
        std::fs::write(
            &config,
            format!(
                "{}[stacks]\nrepo = {:?}\ncheckout_dir = {:?}\npoll = \"1h\"\n\
                 [hub]\nstack = \"{service}-proxy\"\nnetwork = \"{service}-hub\"\ndomain = \"{prefix}.test\"\n\
                 address = \"10.0.0.20\"\n\
                 [backup]\nsnapshot_mount_dir = {:?}\n\
                 [[services]]\nname = \"{service}\"\ndataset = \"{dataset}\"\nrepo = {:?}\npasscommand = {passcommand:?}\n\
                 {extra}",
                base_config(&dir.path().join("state"), &pki.ca(), &cert, &key),
                dir.path().join("origin").display().to_string(),
                dir.path().join("checkout").display().to_string(),
                dir.path().join("snapshots").display().to_string(),
                borg.path().display().to_string(),
            ),
        )?;
        let base = borg.scratch_dir().join("agent-base");
        std::fs::create_dir_all(&base)?;
        let agent = AgentProc::start_with_env(
            AgentKind::Services,
            &config,
            &[("BORG_BASE_DIR", base.to_str().context("utf-8")?)],
        )?;
        let (admin, admin_key) = pki.issue(Role::Admin, "alice")?;
        let inv = dir.path().join("labctl.toml");
        write_inventory(&inv, &pki.ca(), &admin, &admin_key, &[&agent])?;
        Ok(ServiceJob { agent, inv, service, dataset, borg, pool, dir, pki, engine })
    }

    /// Where the service's dataset is mounted.
    pub fn mount(&self) -> PathBuf {
        self.pool.dataset_mountpoint("appdata/app")
    }
}
