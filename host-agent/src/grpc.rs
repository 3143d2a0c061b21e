//! The `strata.v1.Host` gRPC service and the services-agent lease client: converts proto messages at the edge
//! (INVALID_ARGUMENT names the field) and delegates to `backup::Host`. The only module of the agent that touches
//! proto or tonic types; must not know hypervisors, engines or the journal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_core::grpc::{cancelled, jobs_status, progress_stream, JobSummary, ProgressStream};
use agent_core::identity::Role;
use agent_core::jobs::Registry;
use agent_core::tls::TlsMaterial;
use strata_proto::v1 as pb;
use strata_proto::v1::host_server::{Host as HostRpc, HostServer};
use strata_proto::v1::services_client::ServicesClient;
use tonic::{Request, Response, Status};

use crate::backup::{BackupReport, DrillReport, Guest, GuestFuture, HistoryRow, Host, HostError, RestoreReport};
use crate::hypervisor::HvError;

/// The gRPC face of the host agent.
pub(crate) struct HostGrpc {
    host: Arc<Host>,
    /// Re-reads the config file (Reload).
    reloader: Arc<crate::reload::Reloader>,
    /// The running long jobs (backup, restore, drill), which `Watch` re-attaches to.
    jobs: JobRegistry,
}

impl HostGrpc {
    pub(crate) fn new(host: Arc<Host>, reloader: Arc<crate::reload::Reloader>) -> Self {
        HostGrpc { host, reloader, jobs: JobRegistry::default() }
    }

    pub(crate) fn into_server(self) -> HostServer<HostGrpc> {
        HostServer::new(self)
    }

    /// The agent's gRPC routes (this service), for `agent_core::grpc::run_agent`.
    pub(crate) fn routes(host: Arc<Host>, reloader: Arc<crate::reload::Reloader>) -> tonic::service::RoutesBuilder {
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(HostGrpc::new(host, reloader).into_server());
        routes
    }
}

fn status(e: HostError) -> Status {
    match &e {
        HostError::UnknownVm(_) | HostError::NoTarget { .. } => Status::not_found(e.to_string()),
        HostError::Busy(_) => Status::aborted(e.to_string()),
        HostError::Exists { .. } => Status::already_exists(e.to_string()),
        HostError::Unencrypted { .. }
        | HostError::Guest { .. }
        | HostError::NoBackups { .. }
        | HostError::NoFileList { .. }
        | HostError::Refused { .. }
        | HostError::Hv(HvError::Missing { .. } | HvError::Locked { .. }) => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// A VM name from a request: required, a config name.
fn vm_name(field: &str, name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    if name.len() > 63 || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
        return Err(Status::invalid_argument(format!("{field}: `{name}` is not a vm name")));
    }
    Ok(name.to_string())
}

/// A target label from a request: empty (none given) or a label.
fn target_label(field: &str, label: &str) -> Result<Option<String>, Status> {
    if label.is_empty() {
        return Ok(None);
    }
    if !agent_core::repos::valid_label(label) {
        return Err(Status::invalid_argument(format!("{field}: `{}` is not a target label", label.escape_debug())));
    }
    Ok(Some(label.to_string()))
}

/// A validated `VmFilesRequest`.
#[derive(Debug, PartialEq, Eq)]
struct VmFilesQuery {
    name: String,
    target: Option<String>,
    archive: Option<String>,
    offset: usize,
    limit: usize,
}

impl TryFrom<pb::VmFilesRequest> for VmFilesQuery {
    type Error = Status;
    fn try_from(r: pb::VmFilesRequest) -> Result<Self, Status> {
        let name = vm_name("name", &r.name)?;
        let target = target_label("target", &r.target)?;
        let archive = match r.archive.as_str() {
            "" => None,
            a if a.chars().any(char::is_control) || a.len() > 255 || a.starts_with('-') => {
                return Err(Status::invalid_argument(format!("archive: `{}` is not a backup id", a.escape_debug())))
            }
            a => Some(a.to_string()),
        };
        let (archive, offset, limit) =
            agent_core::paging::start(archive, &r.page_token, r.limit, "backup").map_err(Status::invalid_argument)?;
        Ok(VmFilesQuery { name, target, archive, offset, limit })
    }
}

/// A validated `JobRef`: a job id, or a VM name (that VM's running job).
struct JobKey(String);

impl TryFrom<pb::JobRef> for JobKey {
    type Error = Status;
    fn try_from(r: pb::JobRef) -> Result<Self, Status> {
        agent_core::grpc::job_key(r, "vm name", |n| vm_name("name", n)).map(JobKey)
    }
}

/// What a restore was asked to do, validated.
#[derive(Debug)]
pub(crate) struct RestoreInput {
    pub name: String,
    pub archive: Option<String>,
    /// The target to read from (`None`: the first reachable one that has the backup).
    pub target: Option<String>,
    pub to: PathBuf,
    pub force: bool,
    pub start: bool,
}

impl TryFrom<pb::VmRestoreRequest> for RestoreInput {
    type Error = Status;
    fn try_from(r: pb::VmRestoreRequest) -> Result<Self, Status> {
        let name = vm_name("name", &r.name)?;
        let to = PathBuf::from(&r.to);
        if !to.is_absolute() || to.parent().is_none() {
            return Err(Status::invalid_argument(format!("to: `{}` must be an absolute path below /", r.to)));
        }
        if r.archive.contains('/') && !is_backup_path(&r.archive) {
            return Err(Status::invalid_argument(format!(
                "archive: `{}` is neither an archive name nor a Time Machine backup's path",
                r.archive.escape_debug()
            )));
        }
        let archive = (!r.archive.is_empty()).then_some(r.archive);
        let target = target_label("target", &r.target)?;
        Ok(RestoreInput { name, archive, target, to, force: r.force, start: r.start })
    }
}

/// A Time Machine backup's id is its path (`/Volumes/.timemachine/…/DATE.backup/DATE.backup`): absolute, no `..`, no
/// control character, at most 4 KiB. Every engine then reads only a backup its own list names.
fn is_backup_path(s: &str) -> bool {
    let p = std::path::Path::new(s);
    s.len() <= 4096
        && p.is_absolute()
        && !s.chars().any(char::is_control)
        && !p.components().any(|c| matches!(c, std::path::Component::ParentDir))
}

/// What a finished job of this agent did (the summary its last update carries).
#[derive(Debug, Clone)]
enum Done {
    Backups(Vec<BackupReport>),
    Restore(RestoreReport),
    Drill(DrillReport),
}

fn restore_pb(r: &RestoreReport) -> pb::VmRestoreSummary {
    pb::VmRestoreSummary {
        vm: r.vm.clone(),
        archive: r.archive.clone(),
        to: r.to.display().to_string(),
        moved_aside: r.moved_aside.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        started_as: r.started_as.clone().unwrap_or_default(),
        target: r.target.clone(),
    }
}

/// History rows as entries, each with its run's status (`ok`: every target of the run; `partial`; `failed`).
fn history_pb(rows: Vec<HistoryRow>) -> Vec<pb::VmHistoryEntry> {
    let status = |vm: &str, id: &str| {
        let run = rows.iter().filter(|r| r.vm == vm && r.backup_id == id);
        let (ok, all) = run.fold((0, 0), |(ok, all), r| (ok + usize::from(r.ok), all + 1));
        match ok {
            0 => "failed",
            n if n == all => "ok",
            _ => "partial",
        }
    };
    rows.iter()
        .map(|r| pb::VmHistoryEntry {
            vm: r.vm.clone(),
            id: r.backup_id.clone(),
            target: r.target.clone(),
            url: r.url.clone(),
            engine: r.engine.clone(),
            mode: r.mode.clone(),
            time_unix: r.time_unix,
            downtime_seconds: r.downtime_seconds,
            duration_seconds: r.duration_seconds,
            size: r.size,
            ok: r.ok,
            message: r.message.clone(),
            run_status: status(&r.vm, &r.backup_id).into(),
        })
        .collect()
}

impl JobSummary for Done {
    /// The outcome in words: one line per VM.
    fn message(&self) -> String {
        match self {
            Done::Backups(b) => b.iter().map(BackupReport::summary).collect::<Vec<_>>().join("\n"),
            Done::Restore(r) => r.summary(),
            Done::Drill(d) => d.summary(),
        }
    }

    fn to_pb(&self) -> pb::Summary {
        use pb::summary::Kind;
        let kind = match self {
            Done::Backups(b) => Kind::VmBackups(pb::VmBackups {
                backups: b
                    .iter()
                    .map(|r| pb::VmBackupSummary {
                        vm: r.vm.clone(),
                        id: r.id.clone(),
                        mode: r.mode_used.as_str().into(),
                        downtime_seconds: r.downtime.as_secs_f64(),
                        size: r.size,
                        warnings: r.warnings.clone(),
                        targets: r
                            .targets
                            .iter()
                            .map(|t| pb::VmTargetResult {
                                label: t.label.clone(),
                                url: t.url.clone(),
                                ok: t.ok,
                                error: t.error.clone(),
                                size: t.size,
                                duration_seconds: t.duration.as_secs_f64(),
                                warnings: t.warnings.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            }),
            Done::Restore(r) => Kind::VmRestore(restore_pb(r)),
            Done::Drill(d) => Kind::VmDrill(pb::VmDrillSummary {
                restore: Some(restore_pb(&d.restore)),
                seconds: d.duration.as_secs_f64(),
            }),
        };
        pb::Summary { kind: Some(kind) }
    }
}

/// The registry of running jobs: every watcher receives each job's updates, and its summary or error last.
type JobRegistry = Registry<Done, Status>;

/// Runs `work` as a job of `kind` on `target` (empty: several VMs) in `agent_core::jobs`, its error as a status.
/// The work runs in the job's cancellation scope (`Cancel`): its cancellable programs are killed, it undoes what a
/// failure undoes, and a job that fails after a cancellation ends with CANCELLED.
fn stream<F, Fut>(jobs: &JobRegistry, kind: &str, target: &str, work: F) -> Result<ProgressStream, Status>
where
    F: FnOnce(agent_core::jobs::Reporter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Done, HostError>> + Send + 'static,
{
    // The work runs to the end even if the client goes away: a VM must never be left paused.
    let w = agent_core::jobs::run(jobs, kind, target, |rep| async move { work(rep).await.map_err(status) }, cancelled)
        .map_err(jobs_status)?;
    Ok(progress_stream(w))
}

#[tonic::async_trait]
impl HostRpc for HostGrpc {
    async fn list_vms(&self, _req: Request<pb::ListVmsRequest>) -> Result<Response<pb::ListVmsResponse>, Status> {
        let vms = self.host.list_vms().await;
        Ok(Response::new(pb::ListVmsResponse {
            vms: vms
                .into_iter()
                .map(|v| pb::Vm {
                    name: v.name,
                    backend: v.backend.as_str().into(),
                    state: v.state,
                    mode: v.mode.as_str().into(),
                    engine: v.engine,
                    storage_encrypted: v.storage_encrypted,
                    target_encrypted: v.target_encrypted,
                    last_backup_unix: v.last_backup_unix,
                    targets: v.targets,
                })
                .collect(),
        }))
    }

    async fn start(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.start(&name).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse { message }))
    }

    async fn stop(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.stop(&name).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse { message }))
    }

    async fn suspend(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.suspend(&name).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse { message }))
    }

    async fn resume(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.resume(&name).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse { message }))
    }

    type BackupStream = ProgressStream;
    async fn backup(&self, req: Request<pb::VmBackupRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = req.into_inner();
        let names: Vec<String> = match (r.all, r.name.is_empty()) {
            (true, true) => self.host.config().vms.iter().map(|v| v.name.clone()).collect(),
            (true, false) => return Err(Status::invalid_argument("name: must be empty when all is set")),
            (false, _) => vec![vm_name("name", &r.name)?],
        };
        if let Some(n) = names.iter().find(|n| self.host.config().vm(n).is_none()) {
            return Err(status(HostError::UnknownVm(n.clone())));
        }
        let host = self.host.clone();
        let target = if names.len() == 1 && !r.all { names[0].clone() } else { String::new() };
        Ok(Response::new(stream(&self.jobs, "backup", &target, move |tx| async move {
            let mut first_err = None;
            let mut done = Vec::new();
            for n in names {
                if agent_core::runner::is_cancelled() {
                    first_err.get_or_insert(HostError::Cancelled(n));
                    break;
                }
                match host.backup(&n, &tx).await {
                    Ok(rep) => done.push(rep),
                    Err(e) => {
                        tracing::error!(vm = %n, error = %e, "backup failed");
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(Done::Backups(done)), Err)
        })?))
    }

    async fn list_backups(
        &self,
        req: Request<pb::VmBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let label = target_label("target", &r.target)?;
        let engine = self.host.config().vm(&name).map(|v| v.engine.as_str().to_string()).unwrap_or_default();
        let (target, list) = self.host.list_backups(&name, label.as_deref()).await.map_err(status)?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: list
                .into_iter()
                .map(|(b, downtime)| pb::VmBackup {
                    id: b.id,
                    time_unix: b.time_unix,
                    downtime_seconds: downtime,
                    size: b.size,
                    engine: engine.clone(),
                    target: target.clone(),
                })
                .collect(),
            target,
        }))
    }

    async fn list_files(&self, req: Request<pb::VmFilesRequest>) -> Result<Response<pb::VmFilesResponse>, Status> {
        let q: VmFilesQuery = req.into_inner().try_into()?;
        let (target, archive, all) =
            self.host.list_files(&q.name, q.target.as_deref(), q.archive.as_deref()).await.map_err(status)?;
        let total = all.len() as u64;
        let (entries, next) = agent_core::paging::page(all, q.offset, q.limit);
        Ok(Response::new(pb::VmFilesResponse {
            next_page_token: next.map(|o| agent_core::paging::token(o, &archive)).unwrap_or_default(),
            target,
            archive,
            total,
            entries: entries.into_iter().map(agent_core::grpc::file_entry_pb).collect(),
        }))
    }

    async fn history(&self, req: Request<pb::VmHistoryRequest>) -> Result<Response<pb::VmHistoryResponse>, Status> {
        let r = req.into_inner();
        let name = if r.name.is_empty() { None } else { Some(vm_name("name", &r.name)?) };
        let label = target_label("target", &r.target)?;
        let rows = self.host.history(name.as_deref()).map_err(status)?;
        let entries = history_pb(rows).into_iter().filter(|e| label.as_ref().is_none_or(|l| &e.target == l)).collect();
        Ok(Response::new(pb::VmHistoryResponse { entries }))
    }

    type RestoreStream = ProgressStream;
    async fn restore(&self, req: Request<pb::VmRestoreRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = RestoreInput::try_from(req.into_inner())?;
        let host = self.host.clone();
        let target = r.name.clone();
        Ok(Response::new(stream(&self.jobs, "restore", &target, move |tx| async move {
            let (archive, target) = (r.archive.as_deref(), r.target.as_deref());
            host.restore(&r.name, archive, target, &r.to, r.force, r.start, &tx).await.map(Done::Restore)
        })?))
    }

    type DrillStream = ProgressStream;
    async fn drill(&self, req: Request<pb::VmDrillRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let label = target_label("target", &r.target)?;
        let host = self.host.clone();
        let target = name.clone();
        Ok(Response::new(stream(&self.jobs, "drill", &target, move |tx| async move {
            host.drill(&name, label.as_deref(), &tx).await.map(Done::Drill)
        })?))
    }

    type WatchStream = ProgressStream;
    async fn watch(&self, req: Request<pb::JobRef>) -> Result<Response<ProgressStream>, Status> {
        let JobKey(key) = req.into_inner().try_into()?;
        let watcher = self.jobs.watch(&key).map_err(jobs_status)?;
        Ok(Response::new(progress_stream(watcher)))
    }

    async fn cancel(&self, req: Request<pb::JobRef>) -> Result<Response<pb::CancelResponse>, Status> {
        let JobKey(key) = req.into_inner().try_into()?;
        let job_id = self.jobs.cancel(&key).map_err(jobs_status)?;
        tracing::warn!(job = %job_id, "job cancelled by request");
        let message = format!("job {job_id} cancelled: it stops its program, resumes its vm and ends");
        Ok(Response::new(pb::CancelResponse { job_id, message }))
    }

    async fn reload(&self, _req: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        let reloader = self.reloader.clone();
        // Reading and validating the file is blocking work.
        let out = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|e| Status::internal(format!("reload: {e}")))?
            .map_err(|e| {
                tracing::warn!(error = %e, "reload refused: keeping the running config");
                Status::failed_precondition(format!("config refused, the running config is kept: {e}"))
            })?;
        Ok(Response::new(pb::ReloadResponse { changed: out.changed, message: out.message }))
    }
}

/// How long the host waits for the guest's running backup jobs to finish.
pub(crate) const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// The services-agent lease over mTLS: `PrepareHostBackup` / `ReleaseHostBackup`.
pub(crate) struct GrpcGuest {
    tls: TlsMaterial,
}

impl GrpcGuest {
    pub(crate) fn new(tls: TlsMaterial) -> Self {
        GrpcGuest { tls }
    }

    /// `timeout` bounds each call on the channel (a PrepareHostBackup waits for the guest's running jobs).
    async fn client(&self, url: &str, timeout: Duration) -> Result<ServicesClient<tonic::transport::Channel>, String> {
        let ch = self.tls.connect(url, Role::ServicesAgent, timeout).await.map_err(|e| e.to_string())?;
        Ok(ServicesClient::new(ch))
    }
}

impl Guest for GrpcGuest {
    fn prepare<'a>(&'a self, url: &'a str, lease_seconds: u32) -> GuestFuture<'a, String> {
        Box::pin(async move {
            let mut c = self.client(url, PREPARE_TIMEOUT + Duration::from_secs(5)).await?;
            let call = c.prepare_host_backup(pb::PrepareHostBackupRequest { lease_seconds });
            let r = tokio::time::timeout(PREPARE_TIMEOUT, call)
                .await
                .map_err(|_| {
                    format!("PrepareHostBackup timed out after {PREPARE_TIMEOUT:?} (a guest job still running)")
                })?
                .map_err(|s| format!("PrepareHostBackup: {:?}: {}", s.code(), s.message()))?;
            Ok(r.into_inner().lease_id)
        })
    }

    fn release<'a>(&'a self, url: &'a str, lease_id: &'a str) -> GuestFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.client(url, Duration::from_secs(30)).await?;
            let call = c.release_host_backup(pb::ReleaseHostBackupRequest { lease_id: lease_id.to_string() });
            tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .map_err(|_| "ReleaseHostBackup timed out after 30s".to_string())?
                .map_err(|s| format!("ReleaseHostBackup: {:?}: {}", s.code(), s.message()))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::grpc::progress_pb as to_pb;
    use agent_core::jobs::Update;

    #[test]
    fn vm_file_queries_are_checked_naming_the_field() {
        let r = |archive: &str, token: &str, limit| pb::VmFilesRequest {
            name: "lab".into(),
            target: String::new(),
            archive: archive.into(),
            page_token: token.into(),
            limit,
        };
        let q = VmFilesQuery::try_from(r("", "", 0)).ok().unwrap();
        assert_eq!((q.archive, q.offset, q.limit), (None, 0, agent_core::paging::DEFAULT_LIMIT));
        let q = VmFilesQuery::try_from(r("", "40:lab-20261201T000000Z", 20)).ok().unwrap();
        assert_eq!((q.archive.as_deref(), q.offset), (Some("lab-20261201T000000Z"), 40));
        for (bad, want) in [
            (r("-x", "", 0), "archive: `-x`"),
            (r("", "nope", 0), "page_token: "),
            (r("lab-2", "4:lab-1", 0), "page_token: pages backup lab-1"),
            (r("", "", 9000), "limit: 9000"),
        ] {
            let e = VmFilesQuery::try_from(bad).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(want), "{}", e.message());
        }
    }

    #[test]
    fn job_refs_take_an_id_or_a_name_naming_the_field() {
        let r = |id: &str, name: &str| pb::JobRef { id: id.into(), name: name.into() };
        assert_eq!(JobKey::try_from(r("backup-lab-1764900000", "")).ok().unwrap().0, "backup-lab-1764900000");
        assert_eq!(JobKey::try_from(r("", "lab")).ok().unwrap().0, "lab");
        for (bad, field) in
            [(r("", ""), "id: "), (r("a", "b"), "name: "), (r("a b", ""), "id: "), (r("", "Lab"), "name: ")]
        {
            let e = JobKey::try_from(bad).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
    }

    #[test]
    fn restore_requests_are_checked_naming_the_field() {
        let ok = pb::VmRestoreRequest {
            name: "lab".into(),
            archive: String::new(),
            to: "/r/lab".into(),
            force: false,
            start: true,
            target: String::new(),
        };
        let r = RestoreInput::try_from(ok.clone()).unwrap();
        assert_eq!((r.archive, r.to, r.start, r.target), (None, PathBuf::from("/r/lab"), true, None));
        let tm = "/Volumes/.timemachine/ABC/2026-06-22-071617.backup/2026-06-22-071617.backup";
        let r = RestoreInput::try_from(pb::VmRestoreRequest { archive: tm.into(), ..ok.clone() }).unwrap();
        assert_eq!(r.archive.as_deref(), Some(tm));
        let r = RestoreInput::try_from(pb::VmRestoreRequest { target: "offsite".into(), ..ok.clone() }).unwrap();
        assert_eq!(r.target.as_deref(), Some("offsite"));
        let cases = [
            (pb::VmRestoreRequest { name: String::new(), ..ok.clone() }, "name: is required"),
            (pb::VmRestoreRequest { name: "../x".into(), ..ok.clone() }, "name: `../x` is not a vm name"),
            (pb::VmRestoreRequest { to: "rel".into(), ..ok.clone() }, "to: `rel` must be an absolute path"),
            (pb::VmRestoreRequest { to: "/".into(), ..ok.clone() }, "to: `/` must be"),
            (pb::VmRestoreRequest { archive: "a/b".into(), ..ok.clone() }, "archive: `a/b` is neither"),
            (
                pb::VmRestoreRequest { archive: "/Volumes/TM/../etc".into(), ..ok.clone() },
                "archive: `/Volumes/TM/../etc`",
            ),
            (pb::VmRestoreRequest { target: "-o x".into(), ..ok }, "target: `-o x` is not a target label"),
        ];
        for (req, want) in cases {
            let s = RestoreInput::try_from(req).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().starts_with(want), "{want:?} vs {:?}", s.message());
        }
    }

    #[test]
    fn job_updates_convert_with_the_job_id_and_the_summary_last() {
        let p = to_pb(
            Update::<Done>::Progress(agent_core::jobs::Progress {
                step: "backup".into(),
                done: 3,
                total: 6,
                message: "m".into(),
                bytes: false,
            }),
            "backup-lab-1",
        );
        assert_eq!((p.job_id.as_str(), p.step.as_str(), p.done, p.total), ("backup-lab-1", "backup", 3, 6));
        assert!(p.summary.is_none());
        let report = |vm: &str| BackupReport {
            vm: vm.into(),
            id: format!("{vm}-20261205T070000Z"),
            started_unix: 1_796_454_000,
            mode_used: crate::config::Mode::Suspend,
            downtime: Duration::from_millis(1500),
            consistency: String::new(),
            size: 42,
            warnings: vec!["w".into()],
            targets: vec![crate::backup::TargetRun {
                label: "default".into(),
                url: "/b".into(),
                ok: true,
                error: String::new(),
                size: 42,
                duration: Duration::from_secs(1),
                warnings: vec![],
            }],
        };
        let p = to_pb(Update::Done(Done::Backups(vec![report("a"), report("b")])), "backup-1");
        assert_eq!(p.step, "done");
        assert_eq!(
            p.message,
            "vm a backed up as a-20261205T070000Z (suspend mode, downtime 1.500s, 42 bytes); warnings: w\n\
             vm b backed up as b-20261205T070000Z (suspend mode, downtime 1.500s, 42 bytes); warnings: w"
        );
        let Some(pb::summary::Kind::VmBackups(b)) = p.summary.and_then(|s| s.kind) else { panic!("no vm_backups") };
        assert_eq!(b.backups.len(), 2);
        assert_eq!((b.backups[1].vm.as_str(), b.backups[1].mode.as_str(), b.backups[1].size), ("b", "suspend", 42));
        assert_eq!(b.backups[0].downtime_seconds, 1.5);
        assert_eq!((b.backups[0].targets[0].label.as_str(), b.backups[0].targets[0].ok), ("default", true));
        let restore = RestoreReport {
            vm: "lab".into(),
            archive: "lab-1".into(),
            target: "offsite".into(),
            to: PathBuf::from("/r/lab"),
            moved_aside: Some(PathBuf::from("/r/lab.replaced-1")),
            started_as: None,
        };
        let p = to_pb(Update::Done(Done::Drill(DrillReport { restore, duration: Duration::from_secs(2) })), "d");
        assert_eq!(
            p.message,
            "drill ok in 2.0s: restored lab-1 of vm lab from target `offsite` into /r/lab; the previous bundle was \
             moved to /r/lab.replaced-1; scratch copy removed"
        );
        let Some(pb::summary::Kind::VmDrill(d)) = p.summary.and_then(|s| s.kind) else { panic!("no vm_drill") };
        let r = d.restore.unwrap();
        assert_eq!((r.moved_aside.as_str(), r.started_as.as_str(), d.seconds), ("/r/lab.replaced-1", "", 2.0));
        assert_eq!(r.target, "offsite");
    }

    #[test]
    fn history_entries_carry_their_runs_status() {
        let row = |id: &str, target: &str, ok: bool| HistoryRow {
            vm: "lab".into(),
            backup_id: id.into(),
            target: target.into(),
            url: String::new(),
            engine: "borg".into(),
            mode: "clone".into(),
            time_unix: 1,
            downtime_seconds: 0.1,
            duration_seconds: 1.0,
            size: 1,
            ok,
            message: String::new(),
        };
        let rows = vec![
            row("a", "local", true),
            row("a", "offsite", false),
            row("b", "local", true),
            row("c", "local", false),
        ];
        let got: Vec<(String, String, String)> =
            history_pb(rows).into_iter().map(|e| (e.id, e.target, e.run_status)).collect();
        let want =
            [("a", "local", "partial"), ("a", "offsite", "partial"), ("b", "local", "ok"), ("c", "local", "failed")];
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(got, want);
        assert!(target_label("target", "").unwrap().is_none());
        assert_eq!(target_label("target", "Off site").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
