//! The `strata.v1.Host` gRPC service and the services-agent lease client: converts proto messages at the edge
//! (INVALID_ARGUMENT names the field) and delegates to `backup::Host`. The only module of the agent that touches
//! proto or tonic types; must not know hypervisors, engines or the journal.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use strata_proto::v1 as pb;
use strata_proto::v1::host_server::{Host as HostRpc, HostServer};
use strata_proto::v1::services_client::ServicesClient;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::backup::{Guest, GuestFuture, Host, HostError, Progress};
use crate::hypervisor::HvError;

/// The gRPC face of the host agent.
pub struct HostGrpc {
    host: Arc<Host>,
    /// The running long jobs (backup, restore, drill), which `Watch` re-attaches to.
    jobs: JobRegistry,
}

impl HostGrpc {
    pub fn new(host: Arc<Host>) -> Self {
        HostGrpc { host, jobs: JobRegistry::default() }
    }

    pub fn into_server(self) -> HostServer<HostGrpc> {
        HostServer::new(self)
    }
}

fn status(e: HostError) -> Status {
    match &e {
        HostError::UnknownVm(_) => Status::not_found(e.to_string()),
        HostError::Busy(_) => Status::aborted(e.to_string()),
        HostError::Exists { .. } => Status::already_exists(e.to_string()),
        HostError::Unencrypted { .. }
        | HostError::Guest { .. }
        | HostError::NoBackups { .. }
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

/// A validated `JobRef`: a job id, or a VM name (that VM's running job).
struct JobKey(String);

impl TryFrom<pb::JobRef> for JobKey {
    type Error = Status;
    fn try_from(r: pb::JobRef) -> Result<Self, Status> {
        match (r.id.is_empty(), r.name.is_empty()) {
            (true, true) => Err(Status::invalid_argument("id: give a job id or a vm name")),
            (false, false) => Err(Status::invalid_argument("name: give a job id or a vm name, not both")),
            (false, true) if !agent_core::jobs::valid_id(&r.id) => {
                Err(Status::invalid_argument(format!("id: `{}` is not a job id", r.id.escape_debug())))
            }
            (false, true) => Ok(JobKey(r.id)),
            (true, false) => Ok(JobKey(vm_name("name", &r.name)?)),
        }
    }
}

/// What a restore was asked to do, validated.
#[derive(Debug)]
pub struct RestoreInput {
    pub name: String,
    pub archive: Option<String>,
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
        if r.archive.contains('/') {
            return Err(Status::invalid_argument(format!("archive: `{}` is not an archive name", r.archive)));
        }
        let archive = (!r.archive.is_empty()).then_some(r.archive);
        Ok(RestoreInput { name, archive, to, force: r.force, start: r.start })
    }
}

fn to_pb(p: Progress, job_id: &str) -> pb::VmProgress {
    pb::VmProgress { step: p.step, done: p.done, total: p.total, message: p.message, job_id: job_id.to_string() }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::VmProgress, Status>> + Send>>;

/// The registry of running jobs: every watcher receives each job's updates, and its error last.
type JobRegistry = agent_core::jobs::Jobs<Result<pb::VmProgress, Status>>;

fn jobs_status(e: agent_core::jobs::JobsError) -> Status {
    use agent_core::jobs::JobsError;
    let msg = e.to_string();
    match e {
        JobsError::NoJob(_) => Status::not_found(msg),
        JobsError::TooManyJobs(_) | JobsError::TooManyWatchers { .. } => Status::resource_exhausted(msg),
    }
}

/// Registers a job of `kind` on `target` (empty: several VMs) and runs `work` in a task, sending its progress (each
/// update with the job's id) and finally its error (if any) to every watcher; the stream ends when the job does.
fn stream<F, Fut>(jobs: &JobRegistry, kind: &str, target: &str, work: F) -> Result<ProgressStream, Status>
where
    F: FnOnce(mpsc::Sender<Progress>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), HostError>> + Send + 'static,
{
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let handle = jobs.start(kind, target, now).map_err(jobs_status)?;
    let watcher = handle.watch().map_err(jobs_status)?;
    let (tx, mut rx) = mpsc::channel::<Progress>(32);
    tokio::spawn(async move {
        let forward = async {
            while let Some(p) = rx.recv().await {
                handle.send(Ok(to_pb(p, handle.id())));
            }
        };
        // The work runs to the end even if the client goes away: a VM must never be left paused.
        let (result, ()) = tokio::join!(work(tx), forward);
        match result {
            Err(e) => handle.finish(Err(status(e))),
            // Dropping the handle ends every watcher's stream after the updates sent.
            Ok(()) => drop(handle),
        }
    });
    Ok(Box::pin(watcher.into_stream()))
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
                })
                .collect(),
        }))
    }

    async fn start(&self, req: Request<pb::VmRef>) -> Result<Response<pb::VmActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.start(&name).await.map_err(status)?;
        Ok(Response::new(pb::VmActionResponse { message }))
    }

    async fn stop(&self, req: Request<pb::VmRef>) -> Result<Response<pb::VmActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.stop(&name).await.map_err(status)?;
        Ok(Response::new(pb::VmActionResponse { message }))
    }

    async fn suspend(&self, req: Request<pb::VmRef>) -> Result<Response<pb::VmActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.suspend(&name).await.map_err(status)?;
        Ok(Response::new(pb::VmActionResponse { message }))
    }

    async fn resume(&self, req: Request<pb::VmRef>) -> Result<Response<pb::VmActionResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let message = self.host.resume(&name).await.map_err(status)?;
        Ok(Response::new(pb::VmActionResponse { message }))
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
            for n in names {
                match host.backup(&n, &tx).await {
                    Ok(rep) => {
                        let msg = format!(
                            "vm {} backed up as {} ({} mode, downtime {:.3}s, {} bytes){}",
                            rep.vm,
                            rep.id,
                            rep.mode_used.as_str(),
                            rep.downtime.as_secs_f64(),
                            rep.size,
                            if rep.warnings.is_empty() {
                                String::new()
                            } else {
                                format!("; warnings: {}", rep.warnings.join("; "))
                            }
                        );
                        let _ = tx
                            .send(Progress {
                                step: "finished".into(),
                                done: rep.downtime.as_micros() as u64,
                                total: rep.size,
                                message: msg,
                            })
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(vm = %n, error = %e, "backup failed");
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })?))
    }

    async fn list_backups(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let engine = self.host.config().vm(&name).map(|v| v.engine.as_str().to_string()).unwrap_or_default();
        let list = self.host.list_backups(&name).await.map_err(status)?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: list
                .into_iter()
                .map(|(b, downtime)| pb::VmBackup {
                    id: b.id,
                    time_unix: b.time_unix,
                    downtime_seconds: downtime,
                    size: b.size,
                    engine: engine.clone(),
                })
                .collect(),
        }))
    }

    type RestoreStream = ProgressStream;
    async fn restore(&self, req: Request<pb::VmRestoreRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = RestoreInput::try_from(req.into_inner())?;
        let host = self.host.clone();
        let target = r.name.clone();
        Ok(Response::new(stream(&self.jobs, "restore", &target, move |tx| async move {
            host.restore(&r.name, r.archive.as_deref(), &r.to, r.force, r.start, &tx).await.map(drop)
        })?))
    }

    type DrillStream = ProgressStream;
    async fn drill(&self, req: Request<pb::VmRef>) -> Result<Response<ProgressStream>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let host = self.host.clone();
        let target = name.clone();
        Ok(Response::new(stream(&self.jobs, "drill", &target, move |tx| async move {
            host.drill(&name, &tx).await.map(drop)
        })?))
    }

    type WatchStream = ProgressStream;
    async fn watch(&self, req: Request<pb::JobRef>) -> Result<Response<ProgressStream>, Status> {
        let JobKey(key) = req.into_inner().try_into()?;
        let watcher = self.jobs.watch(&key).map_err(jobs_status)?;
        Ok(Response::new(Box::pin(watcher.into_stream())))
    }
}

/// How long the host waits for the guest's running backup jobs to finish.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// The services-agent lease over mTLS: `PrepareHostBackup` / `ReleaseHostBackup`.
pub struct GrpcGuest {
    tls: TlsMaterial,
}

impl GrpcGuest {
    pub fn new(tls: TlsMaterial) -> Self {
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
        };
        let r = RestoreInput::try_from(ok.clone()).unwrap();
        assert_eq!((r.archive, r.to, r.start), (None, PathBuf::from("/r/lab"), true));
        let cases = [
            (pb::VmRestoreRequest { name: String::new(), ..ok.clone() }, "name: is required"),
            (pb::VmRestoreRequest { name: "../x".into(), ..ok.clone() }, "name: `../x` is not a vm name"),
            (pb::VmRestoreRequest { to: "rel".into(), ..ok.clone() }, "to: `rel` must be an absolute path"),
            (pb::VmRestoreRequest { to: "/".into(), ..ok.clone() }, "to: `/` must be"),
            (pb::VmRestoreRequest { archive: "a/b".into(), ..ok }, "archive: `a/b`"),
        ];
        for (req, want) in cases {
            let s = RestoreInput::try_from(req).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().starts_with(want), "{want:?} vs {:?}", s.message());
        }
    }
}
