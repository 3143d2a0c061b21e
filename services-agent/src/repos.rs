//! A service's Borg repositories as its jobs use them: the `Repo` of a configured entry (with the job-owner marker
//! recovery looks for), the locks that keep one job per service and its repositories, the checks a repository passes
//! before a run (its files; the id recorded at its first backup), and the repository a read job picks (by label, or
//! the first reachable, local first). Must not know proto/tonic, nor borg's CLI (`agent_core::borg`), nor what a
//! run does with a repository (`backup`, `restore`).

use std::path::Path;
use std::sync::Arc;

use agent_core::borg::{BorgError, Repo};
use agent_core::repos::RepoSpec;

use crate::backup::{Backups, JobError, OWNER_ENV};
use crate::config::{Passphrase, ServiceBackup};

impl Backups {
    /// One of the service's Borg repositories, with its passphrase source and SSH settings. Its borg processes
    /// carry [`OWNER_ENV`], so that recovery can find the ones a dead agent left running.
    pub(crate) fn repo(&self, b: &ServiceBackup, r: &RepoSpec) -> Repo {
        r.repo(&b.passphrase).env(OWNER_ENV, self.owner())
    }

    /// The repository a job that reads one (restore, drill, archives) uses: the one labelled `label`, or else the
    /// first reachable one, local ones first. Refused naming the labels when `label` is not one of them, and when
    /// the repository is not the one recorded at its first backup.
    pub(crate) async fn pick_repo<'a>(
        &self,
        name: &str,
        b: &'a ServiceBackup,
        label: Option<&str>,
    ) -> Result<&'a RepoSpec, JobError> {
        if let Some(l) = label {
            let r = b.repo(l).ok_or_else(|| JobError::Refused {
                service: name.into(),
                message: format!("no repository `{l}` (its repositories: {})", b.labels()),
            })?;
            // Never read from a repository put in place of the one backed up to.
            self.readable(name, b, r).await.map_err(|message| JobError::Refused { service: name.into(), message })?;
            return Ok(r);
        }
        let mut order: Vec<&RepoSpec> = b.repos.iter().collect();
        order.sort_by_key(|r| !r.location.is_local());
        let mut why = Vec::new();
        for r in order {
            match self.readable(name, b, r).await {
                Ok(()) => return Ok(r),
                Err(e) => why.push(format!("{}: {e}", r.label)),
            }
        }
        Err(JobError::Refused {
            service: name.into(),
            message: format!("no repository reachable ({})", why.join("; ")),
        })
    }

    /// A repository a read may use: its SSH files as they must be (nothing is sent otherwise), and it answers with
    /// the id recorded at its first backup.
    async fn readable(&self, name: &str, b: &ServiceBackup, r: &RepoSpec) -> Result<(), String> {
        r.check_files()?;
        self.same_repo(name, r, self.repo(b, r).id().await)
    }

    /// One job per repository at a time.
    pub(crate) fn repo_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks.lock().unwrap_or_else(|e| e.into_inner()).entry(repo.to_string()).or_default().clone()
    }

    /// Every repository of the service, locked in one order: a job on a service excludes every other job on it
    /// (they share its clone mount and scratch names), and no two services ever share a repository.
    pub(crate) async fn lock_repos(&self, b: &ServiceBackup) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut urls: Vec<String> = b.repos.iter().map(RepoSpec::url).collect();
        urls.sort();
        let mut held = Vec::new();
        for u in urls {
            held.push(self.repo_lock(&u).lock_owned().await);
        }
        held
    }

    /// One repository's files, checked before the service is touched: an SSH one's key and `known_hosts`
    /// (`RepoSpec::check_files`: nothing is sent when they are wrong), a local one exists, its passphrase file can
    /// be read.
    pub(crate) fn preflight_files(&self, name: &str, b: &ServiceBackup, r: &RepoSpec) -> Result<(), String> {
        r.check_files()?;
        if r.location.is_local() && !Path::new(&r.url()).join("config").is_file() {
            return Err(BorgError::NoRepo { repo: r.url() }.to_string());
        }
        if let Passphrase::File(f) = r.passphrase.as_ref().unwrap_or(&b.passphrase) {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(f) {
                Err(e) => return Err(format!("passphrase_file {}: {e}", f.display())),
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    tracing::warn!(service = name, file = %f.display(), "passphrase_file is readable by others (chmod 600)")
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// The repository answered (`id`: over SSH, host key, key and reachability are behind it) and is the one
    /// recorded at its first backup: a different id — another repository put in its place — is refused.
    pub(crate) fn same_repo(&self, name: &str, r: &RepoSpec, id: Result<String, BorgError>) -> Result<(), String> {
        let id = id.map_err(|e| e.to_string())?;
        match self.journal.repo_id(name, &r.url()).map_err(|e| e.to_string())? {
            Some(known) if known != id => Err(format!(
                "borg repository {} is not the one backed up to before (its id is {id}, {known} was recorded): \
                 refused, as another repository may have been put in its place",
                r.url()
            )),
            Some(_) => Ok(()),
            None => self.journal.set_repo_id(name, &r.url(), &id).map_err(|e| e.to_string()),
        }
    }
}
