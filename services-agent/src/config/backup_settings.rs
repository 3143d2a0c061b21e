//! The backup settings of the services-agent's config: `[backup]` and a `[[services]]` entry's backup keys
//! (dataset, repositories, passphrase, quiesce, hooks, schedule, retention, checks, …) validated into
//! [`ServiceBackup`]. Knows the file format; must not know how backups are made.

use super::*;

pub(super) fn backup_global(path: &Path, raw: RawBackup) -> Result<BackupGlobal, ConfigError> {
    if !(1..=64).contains(&raw.parallel) {
        return Err(ConfigError::invalid(path, "backup.parallel", format!("{} is not within 1-64", raw.parallel)));
    }
    if raw.snapshot_mount_dir.as_os_str().is_empty() {
        return Err(ConfigError::invalid(path, "backup.snapshot_mount_dir", "must not be empty"));
    }
    Ok(BackupGlobal { parallel: raw.parallel, snapshot_mount_dir: config::resolve(path, &raw.snapshot_mount_dir) })
}

/// A valid ZFS dataset name: `pool/child/…`, components of `[A-Za-z0-9_.:-]`, no snapshot part.
pub fn valid_dataset(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 200
        && d.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.starts_with('-')
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        })
}

pub(super) fn service_backup(path: &Path, i: usize, s: &RawService) -> Result<Option<ServiceBackup>, ConfigError> {
    let key = |k: &str| format!("services[{i}].{k}");
    let bad = |k: &str, msg: String| ConfigError::invalid(path, key(k), msg);
    let dataset = match (&s.dataset, s.repo.is_some() || s.repos.is_some()) {
        (None, false) => {
            let stray = [
                ("passcommand", s.passcommand.is_some()),
                ("passphrase_file", s.passphrase_file.is_some()),
                ("quiesce", s.quiesce.is_some()),
                ("hooks", !s.hooks.is_empty()),
                ("schedule", s.schedule.is_some()),
                ("catch_up", s.catch_up),
                ("warn_after", s.warn_after.is_some()),
                ("local_snapshots", s.local_snapshots.is_some()),
                ("retention", s.retention.is_some()),
                ("checks", s.checks.is_some()),
            ];
            if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(bad(k, "is a backup setting: give `dataset` and `repo` (or `repos`) too".into()));
            }
            return Ok(None);
        }
        (Some(_), false) => {
            return Err(bad(
                "repo",
                "missing: a backed-up service needs its own Borg repository (`repo` or `repos`)".into(),
            ))
        }
        (None, true) => return Err(bad("dataset", "missing: a backed-up service needs its ZFS dataset".into())),
        (Some(d), true) => d.clone(),
    };
    if !valid_dataset(&dataset) || !dataset.contains('/') {
        return Err(bad("dataset", format!("`{dataset}` is not a ZFS dataset below a pool (pool/name)")));
    }
    let repos = match (&s.repo, &s.repos) {
        (Some(_), Some(_)) => return Err(bad("repos", "give either `repo` or `repos`, not both".into())),
        // The shorthand: one repository with the service's own settings, named as written (`repo`).
        (Some(url), None) => vec![agent_core::repos::validate_shorthand(path, &key("repo"), "repos", url)?],
        (_, Some(list)) => agent_core::repos::validate_list(path, &key("repos"), list)?,
        (None, None) => Vec::new(),
    };
    let passphrase = Passphrase::from_raw(path, &key(""), s.passcommand.as_deref(), s.passphrase_file.as_deref())?
        .unwrap_or(Passphrase::None);
    let quiesce = s.quiesce.unwrap_or(Quiesce::Stop);
    let mut hooks = Vec::new();
    for (j, h) in s.hooks.iter().enumerate() {
        let hk = |k: &str| format!("hooks[{j}].{k}");
        if !valid_name(&h.container) {
            return Err(bad(&hk("container"), format!("`{}` is not a compose service name", h.container)));
        }
        if h.command.is_empty() || h.command[0].is_empty() {
            return Err(bad(&hk("command"), "must name a program".into()));
        }
        let timeout = h.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT);
        hooks.push(Hook { when: h.when, container: h.container.clone(), command: h.command.clone(), timeout });
    }
    let schedule = match &s.schedule {
        None => None,
        Some(c) => Some(agent_core::cron::Cron::parse(c).map_err(|e| bad("schedule", e))?),
    };
    if s.catch_up && schedule.is_none() {
        return Err(bad("catch_up", "is true but no `schedule` is set".into()));
    }
    let jitter = s.jitter.unwrap_or(Duration::ZERO);
    let retention = s.retention.clone().unwrap_or_default();
    let checks = match &s.checks {
        None => Checks::default(),
        Some(c) => RawChecks::validate(c, path, &key("checks"))?,
    };
    let healthy_timeout = s.healthy_timeout.unwrap_or(DEFAULT_HEALTHY_TIMEOUT);
    let notify = notify::targets(path, &key("notify"), &s.notify)?;
    Ok(Some(ServiceBackup {
        dataset,
        repos,
        passphrase,
        quiesce,
        hooks,
        schedule,
        catch_up: s.catch_up,
        jitter,
        warn_after: s.warn_after,
        local_snapshots: s.local_snapshots.unwrap_or(DEFAULT_LOCAL_SNAPSHOTS),
        retention,
        checks,
        healthy_timeout,
        notify,
    }))
}
