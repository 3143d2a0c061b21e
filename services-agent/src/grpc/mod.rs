//! The agent's gRPC edge, the only module (with its child `dns_client`) touching proto/tonic types: the
//! `strata.v1.Services` server (requests converted with TryFrom, INVALID_ARGUMENT naming the field; domain errors
//! mapped to status codes; long jobs streamed as progress) and, in `dns_client`, the client of the dns-agent's
//! `strata.v1.Dns` that implements `dns::DnsApi`. Must not know how stacks are deployed or how backups are made.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agent_core::grpc::{cancelled, jobs_status, progress_stream, JobSummary};
use agent_core::jobs::Registry;
use agent_core::paging;
use futures::{Stream, StreamExt};
use strata_proto::v1 as pb;
use strata_proto::v1::services_server::{Services, ServicesServer};
use tonic::{Request, Response, Status};

use crate::backup::{BackupReport, Backups, JobError};
use crate::compose::ComposeError;
use crate::config::valid_name;
use crate::journal::{Job, Trigger};
use crate::model;
use crate::reload::Reloader;
use crate::restore::{Decision, RunReport, Source};
use crate::stacks::{StackError, Stacks};
use crate::update::{UpdateReport, Updates};

mod dns_client;
pub(crate) use dns_client::DnsRemote;

type PbStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Services` service over the stacks engine and the backup jobs, as the routes `agent_core::grpc` serves.
pub(crate) fn routes(
    stacks: Arc<Stacks>,
    backups: Arc<Backups>,
    updates: Arc<Updates>,
    reloader: Arc<Reloader>,
) -> tonic::service::RoutesBuilder {
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(ServicesServer::new(ServicesSvc {
        stacks,
        backups,
        updates,
        reloader,
        listings: PerCaller::new(LISTINGS_PER_CALLER),
        jobs: JobRegistry::default(),
    }));
    routes
}

pub(crate) struct ServicesSvc {
    stacks: Arc<Stacks>,
    backups: Arc<Backups>,
    updates: Arc<Updates>,
    /// `Reload` re-reads the config file.
    reloader: Arc<Reloader>,
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
        if !r.repo.is_empty() {
            return Err(Status::invalid_argument("repo: only ListArchives, Check and Drill take a repository"));
        }
        Ok(Name(check_name("name", &r.name)?))
    }
}

/// A validated `ServiceRef` of a backup call that may name one repository.
struct BackupRef {
    name: String,
    repo: Option<String>,
}

fn check_repo(field: &str, label: &str) -> Result<Option<String>, Status> {
    match label {
        "" => Ok(None),
        l if agent_core::repos::valid_label(l) => Ok(Some(l.to_string())),
        l => Err(Status::invalid_argument(format!(
            "{field}: `{}` is not a repository label ([a-z0-9][a-z0-9_-]*)",
            l.escape_debug()
        ))),
    }
}

impl TryFrom<pb::ServiceRef> for BackupRef {
    type Error = Status;
    fn try_from(r: pb::ServiceRef) -> Result<Self, Status> {
        Ok(BackupRef { name: check_name("name", &r.name)?, repo: check_repo("repo", &r.repo)? })
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
        StackError::NotSynced(_)
        | StackError::NotInRepo { .. }
        | StackError::Refused { .. }
        | StackError::Secrets { .. }
        | StackError::NotRemoved(_) => Status::failed_precondition(msg),
        StackError::Compose(
            ComposeError::Invalid { .. }
            | ComposeError::NoFile { .. }
            | ComposeError::SeveralFiles { .. }
            | ComposeError::MissingFile { .. }
            | ComposeError::UnknownProfile { .. },
        ) => Status::failed_precondition(msg),
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
                    image_digest: c.image_digest,
                })
                .collect(),
            config_hash: s.config_hash,
        }
    }
}

fn job_status(e: JobError) -> Status {
    let msg = e.to_string();
    match e {
        JobError::Unknown(_) => Status::not_found(msg),
        JobError::NotBackedUp(_) | JobError::Refused { .. } => Status::failed_precondition(msg),
        JobError::Step { .. } | JobError::Partial { .. } => Status::aborted(msg),
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

/// A `PullRequest` names its target as a `BackupRequest` does: one service or all.
impl TryFrom<pb::PullRequest> for BackupTarget {
    type Error = Status;
    fn try_from(r: pb::PullRequest) -> Result<Self, Status> {
        pb::BackupRequest { name: r.name, all: r.all }.try_into()
    }
}

/// A validated `RestoreRequest`.
struct RestoreQuery {
    name: String,
    source: Source,
    to: Option<std::path::PathBuf>,
    /// Resume or abandon a held restore instead of a new one.
    decision: Option<Decision>,
    /// The repository to read.
    repo: Option<String>,
    /// Only this file or directory (checked by `agent_core::borg::archive_path`).
    path: Option<String>,
}

/// The request's `path`, checked: a path inside an archive or snapshot (empty: none).
fn check_path(field: &str, p: &str) -> Result<Option<String>, Status> {
    if p.is_empty() {
        return Ok(None);
    }
    if p.len() > 4096 {
        return Err(Status::invalid_argument(format!("{field}: longer than 4096 bytes")));
    }
    agent_core::borg::archive_path(p).map(Some).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A validated `ListFilesRequest`.
#[derive(Debug, PartialEq, Eq)]
struct FilesQuery {
    name: String,
    archive: Option<String>,
    repo: Option<String>,
    path: Option<String>,
    offset: usize,
    limit: usize,
}

impl TryFrom<pb::ListFilesRequest> for FilesQuery {
    type Error = Status;
    fn try_from(r: pb::ListFilesRequest) -> Result<Self, Status> {
        let name = check_name("name", &r.name)?;
        let repo = check_repo("repo", &r.repo)?;
        let path = check_path("path", &r.path)?;
        let archive = match r.archive.as_str() {
            "" => None,
            a if a.chars().any(char::is_control) || a.len() > 255 => {
                return Err(Status::invalid_argument("archive: control characters or too long"))
            }
            a => Some(a.to_string()),
        };
        let (archive, offset, limit) =
            paging::start(archive, &r.page_token, r.limit, "archive").map_err(Status::invalid_argument)?;
        Ok(FilesQuery { name, archive, repo, path, offset, limit })
    }
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
        if decision.is_some()
            && !(r.archive.is_empty()
                && r.snapshot.is_empty()
                && r.to.is_empty()
                && r.repo.is_empty()
                && r.path.is_empty())
        {
            let field = if r.resume { "resume" } else { "abandon" };
            return Err(Status::invalid_argument(format!(
                "{field}: takes no archive, snapshot, to, repo or path (it decides the interrupted restore, from its \
                 own source)"
            )));
        }
        let path = check_path("path", &r.path)?;
        let repo = check_repo("repo", &r.repo)?;
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
        Ok(RestoreQuery { name, source, to, decision, repo, path })
    }
}

fn source_text(s: &Source) -> &str {
    match s {
        Source::Latest => "",
        Source::Archive(a) | Source::Snapshot(a) => a,
    }
}

/// What a finished job of this agent did (the summary its last update carries).
#[derive(Debug, Clone)]
enum Done {
    Backups(Vec<BackupReport>),
    Restore(RunReport),
    Check(RunReport),
    Drill(RunReport),
    /// One report per service updated (`Pull`); the proto has no typed summary for it: its words say it.
    Updates(Vec<UpdateReport>),
}

fn run_pb(r: &RunReport) -> pb::ServiceRunSummary {
    pb::ServiceRunSummary { service: r.service.clone(), archive: r.archive.clone(), snapshot: r.snapshot.clone() }
}

impl JobSummary for Done {
    /// The outcome in words: one line per service.
    fn message(&self) -> String {
        match self {
            Done::Backups(b) => b.iter().map(BackupReport::summary).collect::<Vec<_>>().join("\n"),
            Done::Restore(r) | Done::Check(r) | Done::Drill(r) => r.message.clone(),
            Done::Updates(u) => u.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("\n"),
        }
    }

    fn to_pb(&self) -> pb::Summary {
        use pb::summary::Kind;
        let kind = match self {
            Done::Backups(b) => Kind::ServiceBackups(pb::ServiceBackups {
                backups: b
                    .iter()
                    .map(|r| pb::ServiceBackupSummary {
                        service: r.service.clone(),
                        archive: r.archive.clone(),
                        snapshot: r.snapshot.clone(),
                        downtime_seconds: r.downtime.as_secs_f64(),
                        duration_seconds: r.duration.as_secs_f64(),
                        original_size: r.original_size,
                        compressed_size: r.compressed_size,
                        deduplicated_size: r.deduplicated_size,
                        pruned: r.pruned.clone(),
                        warnings: r.warnings.clone(),
                    })
                    .collect(),
            }),
            Done::Restore(r) => Kind::ServiceRestore(run_pb(r)),
            Done::Check(r) => Kind::ServiceCheck(run_pb(r)),
            Done::Drill(r) => Kind::ServiceDrill(run_pb(r)),
            Done::Updates(_) => return pb::Summary { kind: None },
        };
        pb::Summary { kind: Some(kind) }
    }
}

/// The registry of running jobs, which `Watch` re-attaches to.
type JobRegistry = Registry<Done, Status>;

/// Runs `job` as a job of `kind` on `target` (empty: several services) in `agent_core::jobs` and streams it: every
/// update carries the job's id, the last one has step `done`, the job's summary in words and as typed facts, or the
/// stream ends with the job's error. The job goes on if the client goes away; `Watch` re-attaches to it. It runs in
/// the job's cancellation scope (`Cancel`): its cancellable programs are killed, it undoes what a failure undoes, and
/// a job that fails after a cancellation ends with CANCELLED.
fn job_stream<F, Fut>(jobs: &JobRegistry, kind: &str, target: &str, job: F) -> Result<PbStream<pb::Progress>, Status>
where
    F: FnOnce(agent_core::jobs::Reporter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Done, Status>> + Send + 'static,
{
    agent_core::jobs::run(jobs, kind, target, job, cancelled).map(progress_stream).map_err(jobs_status)
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
        Ok(Response::new(job_stream(&self.jobs, Job::Backup.as_str(), &who, move |rep| async move {
            match target {
                Some(name) => backups
                    .backup(&name, Trigger::Manual, &rep)
                    .await
                    .map(|r| Done::Backups(vec![r]))
                    .map_err(job_status),
                None => {
                    let results = backups.backup_all(Trigger::Manual, &rep).await;
                    if results.is_empty() {
                        return Err(Status::failed_precondition("no service has backup settings"));
                    }
                    let failed: Vec<String> =
                        results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
                    if failed.is_empty() {
                        Ok(Done::Backups(results.into_iter().filter_map(|(_, r)| r.ok()).collect()))
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
        let BackupRef { name: n, repo } = req.into_inner().try_into()?;
        let archives = self.backups.archives(&n, repo.as_deref()).await.map_err(job_status)?;
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
                    images: match h.kind {
                        Job::Update => self
                            .updates
                            .images_of(h.id, &h.outcome.result)
                            .into_iter()
                            .map(|c| pb::ImageChange {
                                service: c.service,
                                image: c.image,
                                old_digest: c.old,
                                new_digest: c.new,
                            })
                            .collect(),
                        _ => Vec::new(),
                    },
                    service: h.service,
                    kind: h.kind.to_string(),
                    started_unix: h.started_unix as i64,
                    duration_seconds: h.duration_seconds,
                    downtime_seconds: h.outcome.downtime_seconds,
                    result: h.outcome.result,
                    error: h.outcome.error,
                    repos: h
                        .repos
                        .into_iter()
                        .map(|r| pb::RepoResult {
                            label: r.label,
                            url: r.url,
                            result: r.result,
                            error: r.error,
                            archive: r.archive,
                            original_size: r.original_size,
                            deduplicated_size: r.deduplicated_size,
                            duration_seconds: r.duration_seconds,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn list_files(&self, req: Request<pb::ListFilesRequest>) -> Result<Response<pb::ListFilesResponse>, Status> {
        let _slot = self.listings.enter(&req, "ListFiles")?;
        let q: FilesQuery = req.into_inner().try_into()?;
        let page = self
            .backups
            .files(&q.name, q.archive.as_deref(), q.repo.as_deref(), q.path.as_deref(), q.offset, q.limit)
            .await
            .map_err(job_status)?;
        Ok(Response::new(pb::ListFilesResponse {
            next_page_token: page.next.map(|o| paging::token(o, &page.archive)).unwrap_or_default(),
            archive: page.archive,
            repo: page.repo,
            total: page.total as u64,
            entries: page.entries.into_iter().map(agent_core::grpc::file_entry_pb).collect(),
        }))
    }

    type RestoreStream = PbStream<pb::Progress>;

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Result<Response<Self::RestoreStream>, Status> {
        let q: RestoreQuery = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        backups.settings(&q.name).map_err(job_status)?;
        let name = q.name.clone();
        Ok(Response::new(job_stream(&self.jobs, Job::Restore.as_str(), &name, move |rep| async move {
            match q.decision {
                Some(d) => backups.decide(&q.name, d, &rep).await.map(Done::Restore).map_err(job_status),
                None => backups
                    .restore(&q.name, q.source, q.to, q.repo.as_deref(), q.path.as_deref(), &rep)
                    .await
                    .map(Done::Restore)
                    .map_err(job_status),
            }
        })?))
    }

    type CheckStream = PbStream<pb::Progress>;

    async fn check(&self, req: Request<pb::ServiceRef>) -> Result<Response<Self::CheckStream>, Status> {
        let BackupRef { name: n, repo } = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        backups.settings(&n).map_err(job_status)?;
        let name = n.clone();
        Ok(Response::new(job_stream(&self.jobs, Job::Check.as_str(), &name, move |rep| async move {
            let r = repo.as_deref();
            backups.check(&n, Job::Check, Trigger::Manual, r, &rep).await.map(Done::Check).map_err(job_status)
        })?))
    }

    type DrillStream = PbStream<pb::Progress>;

    async fn drill(&self, req: Request<pb::ServiceRef>) -> Result<Response<Self::DrillStream>, Status> {
        let BackupRef { name: n, repo } = req.into_inner().try_into()?;
        let backups = self.backups.clone();
        backups.settings(&n).map_err(job_status)?;
        let name = n.clone();
        Ok(Response::new(job_stream(&self.jobs, Job::Drill.as_str(), &name, move |rep| async move {
            backups.drill(&n, Trigger::Manual, repo.as_deref(), &rep).await.map(Done::Drill).map_err(job_status)
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
        Ok(Response::new(progress_stream(watcher)))
    }

    async fn cancel(&self, req: Request<pb::JobRef>) -> Result<Response<pb::CancelResponse>, Status> {
        let JobKey(key) = req.into_inner().try_into()?;
        let job_id = self.jobs.cancel(&key).map_err(jobs_status)?;
        tracing::warn!(job = %job_id, "job cancelled by request");
        let message = format!("job {job_id} cancelled: it stops its program, undoes what a failure undoes and ends");
        Ok(Response::new(pb::CancelResponse { job_id, message }))
    }

    async fn reload(&self, _req: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        // Reading the file and the history the freshness watches start from is blocking work.
        let reloader = self.reloader.clone();
        let done = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|e| Status::internal(format!("reload: {e}")))?;
        match done {
            Ok(o) => Ok(Response::new(pb::ReloadResponse { changed: o.changed, message: o.message })),
            Err(e) => {
                tracing::warn!(error = %e, "reload refused: keeping the running config");
                Err(Status::failed_precondition(format!("config refused, the running config is kept: {e}")))
            }
        }
    }

    type PullStream = PbStream<pb::Progress>;

    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<Self::PullStream>, Status> {
        let BackupTarget(target) = req.into_inner().try_into()?;
        let updates = self.updates.clone();
        if let Some(name) = &target {
            if self.backups.cfg().service(name).is_none() {
                return Err(job_status(JobError::Unknown(name.clone())));
            }
        }
        let who = target.clone().unwrap_or_default();
        Ok(Response::new(job_stream(&self.jobs, Job::Update.as_str(), &who, move |rep| async move {
            match target {
                Some(name) => updates
                    .update(&name, Trigger::Manual, &rep)
                    .await
                    .map(|r| Done::Updates(vec![r]))
                    .map_err(job_status),
                None => {
                    let results = updates.update_all(Trigger::Manual, &rep).await;
                    let failed: Vec<String> =
                        results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
                    if failed.is_empty() {
                        Ok(Done::Updates(results.into_iter().filter_map(|(_, r)| r.ok()).collect()))
                    } else {
                        Err(Status::aborted(format!(
                            "{} of {} updates failed: {}",
                            failed.len(),
                            results.len(),
                            failed.join("; ")
                        )))
                    }
                }
            }
        })?))
    }

    async fn acknowledge(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let Name(n) = req.into_inner().try_into()?;
        action(self.stacks.acknowledge(&n).await)
    }
}

/// A validated `JobRef`: a job id, or a service name (that service's running job).
struct JobKey(String);

impl TryFrom<pb::JobRef> for JobKey {
    type Error = Status;
    fn try_from(r: pb::JobRef) -> Result<Self, Status> {
        agent_core::grpc::job_key(r, "service name", |n| check_name("name", n)).map(JobKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::grpc::progress_pb as to_pb;
    use agent_core::jobs::Update;

    #[test]
    fn bad_names_are_invalid_arguments_naming_the_field() {
        for bad in ["", "../etc", "a/b", "Photos"] {
            let e = Name::try_from(pb::ServiceRef { name: bad.into(), ..Default::default() }).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("name: "), "{}", e.message());
        }
        assert_eq!(
            Name::try_from(pb::ServiceRef { name: "photos".into(), ..Default::default() }).ok().unwrap().0,
            "photos"
        );
        // A repository label: only on the backup calls, and a label.
        let with_repo = |repo: &str| pb::ServiceRef { name: "photos".into(), repo: repo.into() };
        let e = Name::try_from(with_repo("offsite")).err().unwrap();
        assert!(e.message().starts_with("repo: only ListArchives"), "{e:?}");
        assert_eq!(BackupRef::try_from(with_repo("offsite")).ok().unwrap().repo.as_deref(), Some("offsite"));
        assert_eq!(BackupRef::try_from(with_repo("")).ok().unwrap().repo, None);
        for bad in ["Off site", "../x", "-x"] {
            let e = BackupRef::try_from(with_repo(bad)).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("repo: "), "{e:?}");
        }
        let q = LogsQuery::try_from(pb::LogsRequest { name: "a".into(), follow: true, tail: 5 }).ok().unwrap();
        assert!(q.follow && q.tail == 5 && q.name == "a");
    }

    #[test]
    fn pull_requests_name_one_service_or_all() {
        let pull = |name: &str, all| BackupTarget::try_from(pb::PullRequest { name: name.into(), all });
        assert_eq!(pull("photos", false).unwrap().0.as_deref(), Some("photos"));
        assert_eq!(pull("", true).unwrap().0, None);
        for (name, all, want) in [("", false, "name: must not be empty"), ("photos", true, "name: must be empty")] {
            let e = pull(name, all).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{e:?}");
        }
        assert!(pull("../x", false).err().unwrap().message().starts_with("name: "));
    }

    #[test]
    fn file_queries_are_checked_naming_the_field() {
        let req = |path: &str, archive: &str, token: &str, limit| pb::ListFilesRequest {
            name: "photos".into(),
            archive: archive.into(),
            repo: String::new(),
            path: path.into(),
            page_token: token.into(),
            limit,
        };
        let q = FilesQuery::try_from(req("sub/", "", "", 0)).ok().unwrap();
        assert_eq!((q.path.as_deref(), q.offset, q.limit), (Some("sub"), 0, paging::DEFAULT_LIMIT));
        let q = FilesQuery::try_from(req("", "", &paging::token(500, "photos-1"), 10)).ok().unwrap();
        assert_eq!((q.archive.as_deref(), q.offset, q.limit), (Some("photos-1"), 500, 10));
        for (r, want) in [
            (req("../etc", "", "", 0), "path: `../etc` has a `..` component"),
            (req("-rf", "", "", 0), "path: `-rf` starts with `-`"),
            (req("/etc", "", "", 0), "path: `/etc` is absolute"),
            (req("a\0b", "", "", 0), "path: contains a NUL byte"),
            (req("", "", "x", 0), "page_token:"),
            (req("", "photos-2", &paging::token(5, "photos-1"), 0), "page_token: pages archive photos-1"),
            (req("", "", "", 5001), "limit: 5001"),
        ] {
            let e = FilesQuery::try_from(r).err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(want), "{}", e.message());
        }
        let mut r = pb::RestoreRequest { name: "photos".into(), path: "a/../b".into(), ..Default::default() };
        let e = RestoreQuery::try_from(r.clone()).err().unwrap();
        assert!(e.message().starts_with("path: `a/../b`"), "{}", e.message());
        r.path = "a/b".into();
        assert_eq!(RestoreQuery::try_from(r).ok().unwrap().path.as_deref(), Some("a/b"));
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
            repo: String::new(),
            path: String::new(),
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

    #[test]
    fn job_updates_convert_with_the_job_id_and_the_summary_last() {
        let p = to_pb(
            Update::<Done>::Progress(agent_core::jobs::Progress {
                step: "prune".into(),
                message: "m".into(),
                ..Default::default()
            }),
            "backup-photos-1",
        );
        assert_eq!((p.job_id.as_str(), p.step.as_str(), p.summary), ("backup-photos-1", "prune", None));
        let report = |service: &str| BackupReport {
            service: service.into(),
            archive: format!("{service}-1"),
            snapshot: format!("tank/{service}@strata-1"),
            downtime: Duration::from_millis(250),
            duration: Duration::from_secs(3),
            original_size: 2048,
            deduplicated_size: 1024,
            pruned: vec!["old".into()],
            ..Default::default()
        };
        let p = to_pb(Update::Done(Done::Backups(vec![report("a"), report("b")])), "backup-1");
        assert_eq!(p.step, "done");
        assert_eq!(p.message, [report("a").summary(), report("b").summary()].join("\n"));
        let Some(pb::summary::Kind::ServiceBackups(b)) = p.summary.and_then(|s| s.kind) else { panic!("no summary") };
        assert_eq!(b.backups.len(), 2);
        let a = &b.backups[0];
        assert_eq!((a.service.as_str(), a.snapshot.as_str(), a.original_size), ("a", "tank/a@strata-1", 2048));
        assert_eq!((a.downtime_seconds, a.duration_seconds, a.pruned.len()), (0.25, 3.0, 1));
        let run = RunReport {
            service: "photos".into(),
            message: "drill passed".into(),
            archive: "photos-1".into(),
            snapshot: "tank/photos@strata-1".into(),
        };
        let p = to_pb(Update::Done(Done::Drill(run)), "drill-photos-1");
        assert_eq!(p.message, "drill passed");
        let Some(pb::summary::Kind::ServiceDrill(d)) = p.summary.and_then(|s| s.kind) else { panic!("no drill") };
        assert_eq!((d.service.as_str(), d.archive.as_str()), ("photos", "photos-1"));
    }
}
