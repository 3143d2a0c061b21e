//! The agent's gRPC edge, the only module touching proto/tonic types: the `strata.v1.Services` server (requests
//! converted with TryFrom, INVALID_ARGUMENT naming the field; domain errors mapped to status codes; long jobs
//! streamed as progress) and the client of the dns-agent's `strata.v1.Dns` used by `dns`. Must not know how stacks
//! are deployed or how backups are made.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use futures::{Stream, StreamExt};
use strata_proto::v1 as pb;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::services_server::{Services, ServicesServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::backup::{Backups, JobError, Reporter};
use crate::compose::ComposeError;
use crate::config::valid_name;
use crate::dns::DnsRecord;
use crate::model;
use crate::restore::{Decision, Source};
use crate::stacks::{StackError, Stacks};

type PbStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Services` service over the stacks engine and the backup jobs.
pub fn service(stacks: Arc<Stacks>, backups: Arc<Backups>) -> ServicesServer<ServicesSvc> {
    ServicesServer::new(ServicesSvc {
        stacks,
        backups,
        listings: PerCaller::new(LISTINGS_PER_CALLER),
        jobs: JobRegistry::default(),
    })
}

pub struct ServicesSvc {
    stacks: Arc<Stacks>,
    backups: Arc<Backups>,
    /// ListArchives calls in flight per caller: each runs a borg of its own.
    listings: PerCaller,
    /// The running long jobs (backup, restore, check, drill).
    jobs: JobRegistry,
}

/// A validated service name from a request.
struct Name(String);

fn check_name(field: &str, name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    if !valid_name(name) {
        return Err(Status::invalid_argument(format!(
            "{field}: `{name}` is not a service name ([a-z0-9][a-z0-9_-]*, no path characters)"
        )));
    }
    Ok(name.to_string())
}

impl TryFrom<pb::ServiceRef> for Name {
    type Error = Status;
    fn try_from(r: pb::ServiceRef) -> Result<Self, Status> {
        Ok(Name(check_name("name", &r.name)?))
    }
}

/// A validated `LogsRequest`.
struct LogsQuery {
    name: String,
    follow: bool,
    tail: u32,
}

impl TryFrom<pb::LogsRequest> for LogsQuery {
    type Error = Status;
    fn try_from(r: pb::LogsRequest) -> Result<Self, Status> {
        Ok(LogsQuery { name: check_name("name", &r.name)?, follow: r.follow, tail: r.tail })
    }
}

fn status(e: StackError) -> Status {
    let msg = e.to_string();
    match e {
        StackError::Unknown(_) => Status::not_found(msg),
        StackError::NotSynced(_) | StackError::NotInRepo { .. } | StackError::Refused { .. } => {
            Status::failed_precondition(msg)
        }
        StackError::Compose(ComposeError::Invalid { .. } | ComposeError::NoFile { .. }) => {
            Status::failed_precondition(msg)
        }
        StackError::Compose(ComposeError::Missing) | StackError::Docker(_) => Status::unavailable(msg),
        StackError::Git { .. } | StackError::Compose(_) | StackError::Store(_) => Status::internal(msg),
    }
}

fn action(r: Result<String, StackError>) -> Result<Response<pb::ActionResponse>, Status> {
    r.map(|message| Response::new(pb::ActionResponse { message })).map_err(status)
}

impl From<model::ServiceRow> for pb::Service {
    fn from(s: model::ServiceRow) -> Self {
        pb::Service {
            name: s.name,
            state: s.state,
            health: s.health,
            deployed_commit: s.deployed_commit,
            error: s.error,
            containers: s
                .containers
                .into_iter()
                .map(|c| pb::Container {
                    name: c.name,
                    id: c.id,
                    image: c.image,
                    state: c.state,
                    health: c.health,
                    uptime_seconds: c.uptime_seconds,
                    restarts: c.restarts,
                })
                .collect(),
        }
    }
}

fn job_status(e: JobError) -> Status {
    let msg = e.to_string();
    match e {
        JobError::Unknown(_) => Status::not_found(msg),
        JobError::NotBackedUp(_) | JobError::Refused { .. } => Status::failed_precondition(msg),
        JobError::Step { .. } => Status::aborted(msg),
        JobError::Journal(_) => Status::internal(msg),
    }
}

/// A validated `BackupRequest`: one service or all.
struct BackupTarget(Option<String>);

impl TryFrom<pb::BackupRequest> for BackupTarget {
    type Error = Status;
    fn try_from(r: pb::BackupRequest) -> Result<Self, Status> {
        match (r.all, r.name.is_empty()) {
            (true, true) => Ok(BackupTarget(None)),
            (true, false) => Err(Status::invalid_argument("name: must be empty when all is set")),
            (false, _) => Ok(BackupTarget(Some(check_name("name", &r.name)?))),
        }
    }
}

/// A validated `RestoreRequest`.
struct RestoreQuery {
    name: String,
    source: Source,
    to: Option<std::path::PathBuf>,
    /// Resume or abandon a held restore instead of a new one.
    decision: Option<Decision>,
}

impl TryFrom<pb::RestoreRequest> for RestoreQuery {
    type Error = Status;
    fn try_from(r: pb::RestoreRequest) -> Result<Self, Status> {
        let name = check_name("name", &r.name)?;
        let decision = match (r.resume, r.abandon) {
            (true, true) => return Err(Status::invalid_argument("abandon: give resume or abandon, not both")),
            (true, false) => Some(Decision::Resume),
            (false, true) => Some(Decision::Abandon),
            (false, false) => None,
        };
        if decision.is_some() && !(r.archive.is_empty() && r.snapshot.is_empty() && r.to.is_empty()) {
            let field = if r.resume { "resume" } else { "abandon" };
            return Err(Status::invalid_argument(format!(
                "{field}: takes no archive, snapshot or to (it decides the interrupted restore, from its own source)"
            )));
        }
        let source = match (r.archive.is_empty(), r.snapshot.is_empty()) {
            (true, true) => Source::Latest,
            (false, true) => Source::Archive(r.archive),
            (true, false) => Source::Snapshot(r.snapshot),
            (false, false) => {
                return Err(Status::invalid_argument("snapshot: give an archive or a snapshot, not both"))
            }
        };
        for (field, v) in [("archive", source_text(&source)), ("to", r.to.as_str())] {
            if v.chars().any(char::is_control) || v.len() > 4096 {
                return Err(Status::invalid_argument(format!("{field}: control characters or too long")));
            }
        }
        let to = match r.to.as_str() {
            "" => None,
            p if p.starts_with('/') => Some(std::path::PathBuf::from(p)),
            p => return Err(Status::invalid_argument(format!("to: `{p}` is not an absolute path"))),
        };
        Ok(RestoreQuery { name, source, to, decision })
    }
}

fn source_text(s: &Source) -> &str {
    match s {
        Source::Latest => "",
        Source::Archive(a) | Source::Snapshot(a) => a,
    }
}

/// One item of a job's stream, as every watcher of the job receives it.
type JobItem = Result<pb::Progress, Status>;

/// The registry of running jobs, which `Watch` re-attaches to.
pub type JobRegistry = agent_core::jobs::Jobs<JobItem>;

fn jobs_status(e: agent_core::jobs::JobsError) -> Status {
    use agent_core::jobs::JobsError;
    let msg = e.to_string();
    match e {
        JobsError::NoJob(_) => Status::not_found(msg),
        JobsError::TooManyJobs(_) | JobsError::TooManyWatchers { .. } => Status::resource_exhausted(msg),
    }
}

/// Registers a job of `kind` on `target` (empty: several services) and streams its progress; every update carries
/// the job's id, the last one has step `done` and the job's summary, or the stream ends with the job's error. The
/// job runs in a task of its own and goes on if the client goes away; `Watch` re-attaches to it.
fn job_stream<F, Fut>(jobs: &JobRegistry, kind: &str, target: &str, job: F) -> Result<PbStream<pb::Progress>, Status>
where
    F: FnOnce(Reporter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, Status>> + Send + 'static,
{
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let handle = jobs.start(kind, target, now).map_err(jobs_status)?;
    let watcher = handle.watch().map_err(jobs_status)?;
    let id = handle.id().to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<model::Progress>(64);
    tokio::spawn(async move {
        let forward = {
            let id = id.clone();
            let handle = &handle;
            async move {
                while let Some(p) = rx.recv().await {
                    let job_id = id.clone();
                    handle.send(Ok(pb::Progress {
                        step: p.step,
                        done: p.done,
                        total: p.total,
                        message: p.message,
                        job_id,
                    }));
                }
            }
        };
        let (r, ()) = futures::join!(job(Reporter::new(tx)), forward);
        handle.finish(r.map(|message| pb::Progress { step: "done".into(), done: 1, total: 1, message, job_id: id }));
    });
    Ok(Box::pin(watcher.into_stream()))
}

/// ListArchives calls one caller identity may have in flight; more are refused at once (RESOURCE_EXHAUSTED) instead
/// of queueing: each admitted call waits for the repository (one borg per repository at a time).
const LISTINGS_PER_CALLER: usize = 2;

/// Counts calls in flight per caller identity, refusing past `max`.
struct PerCaller {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One admitted call; frees its place when dropped (the call ended, or its client went away).
struct Slot<'a> {
    owner: &'a PerCaller,
    who: String,
}

impl PerCaller {
    fn new(max: usize) -> PerCaller {
        PerCaller { max, counts: Default::default() }
    }

    fn enter<T>(&self, req: &Request<T>, what: &str) -> Result<Slot<'_>, Status> {
        let who = agent_core::authz::caller(req)?.uri();
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(who.clone()).or_default();
        if *n >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{who} already has {} {what} calls in flight (at most {} per caller): retry when they finish",
                *n, self.max
            )));
        }
        *n += 1;
        Ok(Slot { owner: self, who })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.who);
            }
        }
    }
}

#[tonic::async_trait]
impl Services for ServicesSvc {
    async fn list_services(
        &self,
        _req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self.stacks.list().into_iter().map(pb::Service::from).collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn up(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        action(self.stacks.up(&n).await)
    }

    async fn down(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        action(self.stacks.down(&n).await)
    }

    async fn restart(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        action(self.stacks.restart(&n).await)
    }

    async fn pause(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        action(self.stacks.pause(&n).await)
    }

    async fn unpause(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        action(self.stacks.unpause(&n).await)
    }

    type LogsStream = PbStream<pb::LogLine>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let q: LogsQuery = req.into_inner().try_into()?;
        let lines = self.stacks.logs(&q.name, q.follow, q.tail).await.map_err(status)?;
        let out = lines.map(|r| {
            r.map(|l| pb::LogLine { container: l.container, line: l.line })
                .map_err(|e| Status::unavailable(e.to_string()))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn sync(&self, _req: Request<pb::SyncRequest>) -> Result<Response<pb::SyncResponse>, Status> {
        let r = self.stacks.sync().await;
        Ok(Response::new(pb::SyncResponse {
            commit: r.commit,
            redeployed: r.redeployed,
            errors: r.errors.into_iter().collect(),
        }))
    }

    async fn audit(&self, _req: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        let violations = self
            .stacks
            .audit()
            .into_iter()
            .map(|v| pb::Violation { container: v.container, rule: v.rule, detail: v.detail })
            .collect();
        Ok(Response::new(pb::AuditResponse { violations }))
    }

    type BackupStream = PbStream<pb::Progress>;

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let BackupTarget(target) = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        if let Some(name) = &target {
            backups.settings(name).map_err(job_status)?;
        }
        let who = target.clone().unwrap_or_default();
        Ok(Response::new(job_stream(&self.jobs, "backup", &who, move |rep| async move {
            match target {
                Some(name) => backups.backup(&name, "manual", &rep).await.map(|r| r.summary()).map_err(job_status),
                None => {
                    let results = backups.backup_all("manual", &rep).await;
                    if results.is_empty() {
                        return Err(Status::failed_precondition("no service has backup settings"));
                    }
                    let failed: Vec<String> =
                        results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
                    if failed.is_empty() {
                        Ok(results
                            .iter()
                            .filter_map(|(_, r)| r.as_ref().ok().map(|r| r.summary()))
                            .collect::<Vec<_>>()
                            .join("\n"))
                    } else {
                        Err(Status::aborted(format!(
                            "{} of {} backups failed: {}",
                            failed.len(),
                            results.len(),
                            failed.join("; ")
                        )))
                    }
                }
            }
        })?))
    }

    async fn list_archives(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ListArchivesResponse>, Status> {
        let _slot = self.listings.enter(&req, "ListArchives")?;
        let Name(n) = req.into_inner().try_into()?;
        let archives = self.backups.archives(&n).await.map_err(job_status)?;
        Ok(Response::new(pb::ListArchivesResponse {
            archives: archives
                .into_iter()
                .map(|a| pb::Archive {
                    name: a.name,
                    time_unix: a.time_unix,
                    original_size: a.original_size,
                    deduplicated_size: a.deduplicated_size,
                })
                .collect(),
        }))
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = req.into_inner();
        let name = if r.name.is_empty() { None } else { Some(check_name("name", &r.name)?) };
        let limit = match r.limit {
            0 => 50,
            n if n > 10_000 => return Err(Status::invalid_argument("limit: at most 10000")),
            n => n,
        };
        let rows =
            self.backups.journal().history(name.as_deref(), limit).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::HistoryResponse {
            entries: rows
                .into_iter()
                .map(|h| pb::HistoryEntry {
                    service: h.service,
                    kind: h.kind,
                    started_unix: h.started_unix as i64,
                    duration_seconds: h.duration_seconds,
                    downtime_seconds: h.outcome.downtime_seconds,
                    result: h.outcome.result,
                    error: h.outcome.error,
                })
                .collect(),
        }))
    }

    type RestoreStream = PbStream<pb::Progress>;

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Result<Response<Self::RestoreStream>, Status> {
        let q: RestoreQuery = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        backups.settings(&q.name).map_err(job_status)?;
        let name = q.name.clone();
        Ok(Response::new(job_stream(&self.jobs, "restore", &name, move |rep| async move {
            match q.decision {
                Some(d) => backups.decide(&q.name, d, &rep).await.map_err(job_status),
                None => backups.restore(&q.name, q.source, q.to, &rep).await.map_err(job_status),
            }
        })?))
    }

    type CheckStream = PbStream<pb::Progress>;

    async fn check(&self, req: Request<pb::ServiceRef>) -> Result<Response<Self::CheckStream>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        backups.settings(&n).map_err(job_status)?;
        let name = n.clone();
        Ok(Response::new(job_stream(&self.jobs, "check", &name, move |rep| async move {
            backups.check(&n, "check", "manual", &rep).await.map_err(job_status)
        })?))
    }

    type DrillStream = PbStream<pb::Progress>;

    async fn drill(&self, req: Request<pb::ServiceRef>) -> Result<Response<Self::DrillStream>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        backups.settings(&n).map_err(job_status)?;
        let name = n.clone();
        Ok(Response::new(job_stream(&self.jobs, "drill", &name, move |rep| async move {
            backups.drill(&n, "manual", &rep).await.map_err(job_status)
        })?))
    }

    async fn prepare_host_backup(
        &self,
        req: Request<pb::PrepareHostBackupRequest>,
    ) -> Result<Response<pb::PrepareHostBackupResponse>, Status> {
        let secs = req.into_inner().lease_seconds;
        let max = crate::lease::MAX_LEASE.as_secs();
        if secs == 0 || u64::from(secs) > max {
            return Err(Status::invalid_argument(format!("lease_seconds: {secs} is not within 1-{max}")));
        }
        let lease = self.backups.gate.prepare(Duration::from_secs(u64::from(secs))).await;
        Ok(Response::new(pb::PrepareHostBackupResponse { lease_id: lease.id, expires_unix: lease.expires_unix }))
    }

    async fn release_host_backup(
        &self,
        req: Request<pb::ReleaseHostBackupRequest>,
    ) -> Result<Response<pb::ReleaseHostBackupResponse>, Status> {
        let id = req.into_inner().lease_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("lease_id: must not be empty"));
        }
        if !self.backups.gate.release(&id) {
            return Err(Status::not_found(format!("lease_id: no live lease {id} (expired or replaced)")));
        }
        Ok(Response::new(pb::ReleaseHostBackupResponse {}))
    }

    type WatchStream = PbStream<pb::Progress>;

    async fn watch(&self, req: Request<pb::JobRef>) -> Result<Response<Self::WatchStream>, Status> {
        let JobKey(key) = req.into_inner().try_into()?;
        let watcher = self.jobs.watch(&key).map_err(jobs_status)?;
        Ok(Response::new(Box::pin(watcher.into_stream())))
    }
}

/// A validated `JobRef`: a job id, or a service name (that service's running job).
struct JobKey(String);

impl TryFrom<pb::JobRef> for JobKey {
    type Error = Status;
    fn try_from(r: pb::JobRef) -> Result<Self, Status> {
        match (r.id.is_empty(), r.name.is_empty()) {
            (true, true) => Err(Status::invalid_argument("id: give a job id or a service name")),
            (false, false) => Err(Status::invalid_argument("name: give a job id or a service name, not both")),
            (false, true) => {
                if !agent_core::jobs::valid_id(&r.id) {
                    return Err(Status::invalid_argument(format!("id: `{}` is not a job id", r.id.escape_debug())));
                }
                Ok(JobKey(r.id))
            }
            (true, false) => Ok(JobKey(check_name("name", &r.name)?)),
        }
    }
}

/// The dns-agent, as `dns` uses it. Errors are one line naming the call.
pub struct DnsRemote {
    client: DnsClient<Channel>,
}

fn call_error(what: &str, s: Status) -> String {
    format!("{what}: {}: {}", s.code().description(), s.message())
}

impl DnsRemote {
    pub async fn connect(tls: &TlsMaterial, addr: &str, timeout: Duration) -> Result<DnsRemote, String> {
        let channel = tls.connect(addr, Role::DnsAgent, timeout).await.map_err(|e| e.to_string())?;
        Ok(DnsRemote { client: DnsClient::new(channel) })
    }

    pub async fn list(&mut self, zone: &str) -> Result<Vec<DnsRecord>, String> {
        let r = self
            .client
            .list_records(pb::ListRecordsRequest { zone: zone.to_string() })
            .await
            .map_err(|s| call_error("list records", s))?;
        Ok(r.into_inner()
            .records
            .into_iter()
            .map(|r| DnsRecord { name: r.name, kind: r.r#type, value: r.value, ttl: r.ttl, owner: r.owner })
            .collect())
    }

    pub async fn upsert(&mut self, r: &DnsRecord) -> Result<(), String> {
        let record = pb::Record {
            name: r.name.clone(),
            r#type: r.kind.clone(),
            value: r.value.clone(),
            ttl: r.ttl,
            owner: String::new(),
        };
        self.client
            .upsert_record(pb::UpsertRecordRequest { record: Some(record) })
            .await
            .map_err(|s| call_error(&format!("upsert {}", r.name), s))?;
        Ok(())
    }

    pub async fn delete(&mut self, r: &DnsRecord) -> Result<(), String> {
        self.client
            .delete_record(pb::DeleteRecordRequest {
                name: r.name.clone(),
                r#type: r.kind.clone(),
                value: r.value.clone(),
            })
            .await
            .map_err(|s| call_error(&format!("delete {}", r.name), s))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_invalid_arguments_naming_the_field() {
        for bad in ["", "../etc", "a/b", "Photos"] {
            let e = Name::try_from(pb::ServiceRef { name: bad.into() }).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("name: "), "{}", e.message());
        }
        assert_eq!(Name::try_from(pb::ServiceRef { name: "photos".into() }).ok().unwrap().0, "photos");
        let q = LogsQuery::try_from(pb::LogsRequest { name: "a".into(), follow: true, tail: 5 }).ok().unwrap();
        assert!(q.follow && q.tail == 5 && q.name == "a");
    }

    #[test]
    fn resume_and_abandon_take_nothing_else() {
        let req = |resume, abandon, archive: &str, to: &str| pb::RestoreRequest {
            name: "photos".into(),
            archive: archive.into(),
            snapshot: String::new(),
            to: to.into(),
            resume,
            abandon,
        };
        let q = RestoreQuery::try_from(req(true, false, "", "")).ok().unwrap();
        assert_eq!(q.decision, Some(Decision::Resume));
        let q = RestoreQuery::try_from(req(false, true, "", "")).ok().unwrap();
        assert_eq!(q.decision, Some(Decision::Abandon));
        assert_eq!(RestoreQuery::try_from(req(false, false, "a", "")).ok().unwrap().decision, None);
        for (r, field) in [
            (req(true, true, "", ""), "abandon: "),
            (req(true, false, "photos-x", ""), "resume: "),
            (req(false, true, "", "/srv/x"), "abandon: "),
        ] {
            let e = RestoreQuery::try_from(r).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
    }

    #[test]
    fn job_refs_take_an_id_or_a_name_naming_the_field() {
        let r = |id: &str, name: &str| pb::JobRef { id: id.into(), name: name.into() };
        assert_eq!(JobKey::try_from(r("backup-photos-1764900000", "")).ok().unwrap().0, "backup-photos-1764900000");
        assert_eq!(JobKey::try_from(r("", "photos")).ok().unwrap().0, "photos");
        for (bad, field) in
            [(r("", ""), "id: "), (r("a", "b"), "name: "), (r("../x", ""), "id: "), (r("", "A/b"), "name: ")]
        {
            let e = JobKey::try_from(bad).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
    }

    #[test]
    fn errors_map_to_codes() {
        assert_eq!(status(StackError::Unknown("x".into())).code(), tonic::Code::NotFound);
        let invalid = StackError::Compose(ComposeError::Invalid { stack: "a".into(), message: "bad".into() });
        assert_eq!(status(invalid).code(), tonic::Code::FailedPrecondition);
        assert_eq!(status(StackError::Compose(ComposeError::Missing)).code(), tonic::Code::Unavailable);
    }
}
