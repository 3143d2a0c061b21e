//! The agent's gRPC edge, the only module touching proto/tonic types: the `strata.v1.Services` server (requests
//! converted with TryFrom, INVALID_ARGUMENT naming the field; domain errors mapped to status codes) and the client
//! of the dns-agent's `strata.v1.Dns` used by `dns`. Must not know how stacks are deployed or read.

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

use crate::compose::ComposeError;
use crate::config::valid_name;
use crate::dns::DnsRecord;
use crate::model;
use crate::stacks::{StackError, Stacks};

type PbStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Services` service over the stacks engine.
pub fn service(stacks: Arc<Stacks>) -> ServicesServer<ServicesSvc> {
    ServicesServer::new(ServicesSvc { stacks })
}

pub struct ServicesSvc {
    stacks: Arc<Stacks>,
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
        StackError::NotSynced(_) | StackError::NotInRepo { .. } => Status::failed_precondition(msg),
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

fn part2<T>() -> Result<T, Status> {
    Err(Status::unimplemented("backups arrive with services part 2"))
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

    async fn backup(&self, _req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        part2()
    }

    async fn list_archives(&self, _req: Request<pb::ServiceRef>) -> Result<Response<pb::ListArchivesResponse>, Status> {
        part2()
    }

    async fn history(&self, _req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        part2()
    }

    type RestoreStream = PbStream<pb::Progress>;

    async fn restore(&self, _req: Request<pb::RestoreRequest>) -> Result<Response<Self::RestoreStream>, Status> {
        part2()
    }

    type CheckStream = PbStream<pb::Progress>;

    async fn check(&self, _req: Request<pb::ServiceRef>) -> Result<Response<Self::CheckStream>, Status> {
        part2()
    }

    type DrillStream = PbStream<pb::Progress>;

    async fn drill(&self, _req: Request<pb::ServiceRef>) -> Result<Response<Self::DrillStream>, Status> {
        part2()
    }

    async fn prepare_host_backup(
        &self,
        _req: Request<pb::PrepareHostBackupRequest>,
    ) -> Result<Response<pb::PrepareHostBackupResponse>, Status> {
        part2()
    }

    async fn release_host_backup(
        &self,
        _req: Request<pb::ReleaseHostBackupRequest>,
    ) -> Result<Response<pb::ReleaseHostBackupResponse>, Status> {
        part2()
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
    fn errors_map_to_codes() {
        assert_eq!(status(StackError::Unknown("x".into())).code(), tonic::Code::NotFound);
        let invalid = StackError::Compose(ComposeError::Invalid { stack: "a".into(), message: "bad".into() });
        assert_eq!(status(invalid).code(), tonic::Code::FailedPrecondition);
        assert_eq!(status(StackError::Compose(ComposeError::Missing)).code(), tonic::Code::Unavailable);
    }
}
