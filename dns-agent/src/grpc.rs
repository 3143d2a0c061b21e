//! The `strata.v1.Dns` gRPC service: converts proto messages at the edge (INVALID_ARGUMENT names the field path),
//! reads the caller's identity, and delegates to `service::Dns`. The only module of the agent that touches proto or
//! tonic types; must not know DNS wire handling or SQLite.

use std::sync::Arc;

use agent_core::authz::caller;
use strata_proto::v1 as pb;
use strata_proto::v1::dns_server::{Dns as DnsRpc, DnsServer};
use tonic::{Request, Response, Status};

use crate::blocklist::SourceStatus;
use crate::metrics::Outcome;
use crate::querylog::{Filter, LogEntry};
use crate::records::{parse_name, LocalRecord, RecordError};
use crate::service::{Dns, OpError};
use crate::zones::ZoneSummary;

/// The gRPC face of the DNS service.
pub(crate) struct DnsGrpc {
    dns: Arc<Dns>,
}

impl DnsGrpc {
    pub(crate) fn new(dns: Arc<Dns>) -> Self {
        DnsGrpc { dns }
    }

    pub(crate) fn into_server(self) -> DnsServer<DnsGrpc> {
        DnsServer::new(self)
    }

    /// The agent's gRPC routes (this service), for `agent_core::grpc::run_agent`.
    pub(crate) fn routes(dns: Arc<Dns>) -> tonic::service::RoutesBuilder {
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(DnsGrpc::new(dns).into_server());
        routes
    }
}

/// A record to write, converted from `UpsertRecordRequest` (its owner is set from the caller, not the request).
#[derive(Debug)]
pub(crate) struct UpsertInput(pub LocalRecord);

fn invalid(prefix: &str, e: &RecordError) -> Status {
    Status::invalid_argument(format!("{prefix}{}: {}", e.field.as_str(), e.message))
}

impl TryFrom<pb::UpsertRecordRequest> for UpsertInput {
    type Error = Status;
    fn try_from(req: pb::UpsertRecordRequest) -> Result<Self, Status> {
        let r = req.record.ok_or_else(|| Status::invalid_argument("record: is required"))?;
        let ttl = if r.ttl == 0 { None } else { Some(r.ttl) };
        // Names in the API are fully qualified, with or without the trailing dot.
        LocalRecord::parse(&r.name, &r.r#type, &r.value, ttl, "", None)
            .map(UpsertInput)
            .map_err(|e| invalid("record.", &e))
    }
}

impl From<&LocalRecord> for pb::Record {
    fn from(r: &LocalRecord) -> Self {
        pb::Record {
            name: r.name.to_ascii(),
            r#type: r.kind.to_string(),
            value: r.value.clone(),
            ttl: r.ttl,
            owner: r.owner.clone(),
        }
    }
}

impl From<SourceStatus> for pb::BlocklistSource {
    fn from(s: SourceStatus) -> Self {
        pb::BlocklistSource {
            source: s.source,
            entries: s.entries,
            skipped_lines: s.skipped_lines,
            error: s.error.unwrap_or_default(),
            loaded_unix: s.loaded_unix,
        }
    }
}

impl From<LogEntry> for pb::QueryLogEntry {
    fn from(e: LogEntry) -> Self {
        pb::QueryLogEntry {
            time_unix_ms: e.time_unix_ms,
            client: e.client.to_string(),
            name: e.name,
            r#type: e.qtype.to_string(),
            outcome: e.outcome.as_str().to_string(),
            latency_us: e.latency_us,
            seq: e.seq,
            list: e.list,
            latency_ms: f64::from(e.latency_us) / 1000.0,
        }
    }
}

/// A query log request: its filters, validated (INVALID_ARGUMENT names the field), and its limit.
struct LogQuery(Filter, usize);

impl TryFrom<pb::QueryLogRequest> for LogQuery {
    type Error = Status;

    fn try_from(r: pb::QueryLogRequest) -> Result<Self, Status> {
        let client = match r.client.trim() {
            "" => None,
            c => Some(crate::querylog::parse_prefix(c).map_err(|m| Status::invalid_argument(format!("client: {m}")))?),
        };
        let outcome = match r.outcome.trim() {
            "" => None,
            o => Some(Outcome::ALL.into_iter().find(|x| x.as_str().eq_ignore_ascii_case(o)).ok_or_else(|| {
                let all: Vec<&str> = Outcome::ALL.iter().map(|x| x.as_str()).collect();
                Status::invalid_argument(format!("outcome: `{o}` is not one of {}", all.join(", ")))
            })?),
        };
        let name = r.name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.len() > 255 {
            return Err(Status::invalid_argument("name: longer than a DNS name (255 bytes)"));
        }
        let filter = Filter { client, name: (!name.is_empty()).then_some(name), outcome, after_seq: r.after_seq };
        Ok(LogQuery(filter, r.limit as usize))
    }
}

/// Maps a refused operation to a status; `prefix` is the path of the record in the request (`record.` or empty).
fn status(prefix: &str, e: OpError) -> Status {
    match e {
        OpError::Invalid(r) => invalid(prefix, &r),
        OpError::NotInZone(name) => Status::invalid_argument(format!("{prefix}name: {name} is not in any zone")),
        e @ (OpError::NotOwner { .. } | OpError::Role(_)) => Status::permission_denied(e.to_string()),
        OpError::OutOfScope(r) => Status::permission_denied(format!("{prefix}{}: {}", r.field, r.message)),
        e @ OpError::FromConfig(_) => Status::failed_precondition(e.to_string()),
        OpError::Store(e) => {
            tracing::error!(error = %e, "record store failed");
            Status::internal(e.to_string())
        }
    }
}

fn blocklist_status(dns: &Dns, sources: Vec<SourceStatus>) -> pb::BlocklistStatus {
    pb::BlocklistStatus {
        entries: dns.blocklists.entries() as u64,
        sources: sources.into_iter().map(Into::into).collect(),
    }
}

#[tonic::async_trait]
impl DnsRpc for DnsGrpc {
    async fn list_records(
        &self,
        req: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        let zone = req.into_inner().zone;
        let zone = if zone.trim().is_empty() {
            None
        } else {
            let z = parse_name(&zone, None).map_err(|m| Status::invalid_argument(format!("zone: {m}")))?;
            if !self.dns.has_zone(&z) {
                return Err(Status::invalid_argument(format!("zone: {z} is not a configured zone")));
            }
            Some(z)
        };
        let records = self.dns.list(zone.as_ref()).iter().map(pb::Record::from).collect();
        Ok(Response::new(pb::ListRecordsResponse { records }))
    }

    async fn upsert_record(&self, req: Request<pb::UpsertRecordRequest>) -> Result<Response<pb::Record>, Status> {
        let who = caller(&req)?.clone();
        let UpsertInput(rec) = req.into_inner().try_into()?;
        let saved = self.dns.upsert(&who, rec).map_err(|e| status("record.", e))?;
        Ok(Response::new(pb::Record::from(&saved)))
    }

    async fn delete_record(
        &self,
        req: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        let who = caller(&req)?.clone();
        let r = req.into_inner();
        let n = self.dns.delete(&who, &r.name, &r.r#type, &r.value).map_err(|e| status("", e))?;
        Ok(Response::new(pb::DeleteRecordResponse { deleted: u32::try_from(n).unwrap_or(u32::MAX) }))
    }

    async fn reload(&self, _req: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        match self.dns.reload() {
            Ok(o) => Ok(Response::new(pb::ReloadResponse { changed: o.changed, message: o.message })),
            Err(e) => {
                tracing::warn!(error = %e, "reload refused: keeping the running config");
                Err(Status::failed_precondition(format!("config refused, the running config is kept: {e}")))
            }
        }
    }

    async fn refresh_blocklist(
        &self,
        _req: Request<pb::RefreshBlocklistRequest>,
    ) -> Result<Response<pb::BlocklistStatus>, Status> {
        let sources = self.dns.refresh_blocklist().await;
        Ok(Response::new(blocklist_status(&self.dns, sources)))
    }

    async fn get_blocklist(
        &self,
        _req: Request<pb::GetBlocklistRequest>,
    ) -> Result<Response<pb::BlocklistStatus>, Status> {
        Ok(Response::new(blocklist_status(&self.dns, self.dns.blocklists.status())))
    }

    async fn query_log(&self, req: Request<pb::QueryLogRequest>) -> Result<Response<pb::QueryLogResponse>, Status> {
        if !self.dns.query_log.enabled() {
            return Err(Status::failed_precondition("the query log is off: set `[dns] query_log = true` and reload"));
        }
        let LogQuery(filter, limit) = req.into_inner().try_into()?;
        let page = self.dns.query_log.query(&filter, limit);
        Ok(Response::new(pb::QueryLogResponse {
            entries: page.entries.into_iter().map(Into::into).collect(),
            last_seq: page.last_seq,
            truncated: page.truncated,
        }))
    }

    async fn stats(&self, _req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        self.dns.update_gauges();
        Ok(Response::new(pb::StatsResponse {
            queries_by_outcome: self.dns.metrics.totals().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            cache_entries: self.dns.cache_entries() as u64,
            blocklist_entries: self.dns.blocklists.entries() as u64,
        }))
    }

    async fn list_zones(&self, _req: Request<pb::ListZonesRequest>) -> Result<Response<pb::ListZonesResponse>, Status> {
        let cfg = self.dns.config();
        let zones = self
            .dns
            .zones()
            .summaries()
            .into_iter()
            .map(|z| {
                let mut s = pb::ZoneStatus::from(&z);
                // Primary: the peers NOTIFY goes to, and the NOTIFYs they have not acknowledged yet.
                if let Some(p) = cfg.transfers.get(&z.origin) {
                    s.peers = p.notify.iter().map(|a| a.to_string()).collect();
                }
                s.notifies_pending = u64::from(self.dns.xfr.notifier.pending(&z.origin));
                s
            })
            .collect();
        Ok(Response::new(pb::ListZonesResponse { zones }))
    }
}

impl From<&ZoneSummary> for pb::ZoneStatus {
    fn from(z: &ZoneSummary) -> Self {
        pb::ZoneStatus {
            zone: z.origin.to_ascii(),
            role: "primary".into(),
            serial: z.serial,
            records: z.records,
            serving: true,
            lag_seconds: -1,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn upsert(name: &str, kind: &str, value: &str, ttl: u32) -> Result<UpsertInput, Status> {
        let record = pb::Record { name: name.into(), r#type: kind.into(), value: value.into(), ttl, owner: "x".into() };
        UpsertInput::try_from(pb::UpsertRecordRequest { record: Some(record) })
    }

    #[test]
    fn upsert_conversion_names_the_field_path() {
        let ok = upsert("Photos.lab.home.arpa", "a", "10.0.0.5", 0).unwrap().0;
        assert_eq!((ok.name.to_ascii().as_str(), ok.ttl, ok.owner.as_str()), ("photos.lab.home.arpa.", 300, ""));
        let cases = [
            (upsert("bad name.lab.", "A", "10.0.0.5", 0), "record.name: "),
            (upsert("a.lab.", "WKS", "x", 0), "record.type: unknown record type `WKS`"),
            (upsert("a.lab.", "A", "::1", 0), "record.value: ::1 is an IPv6 address"),
            (upsert("a.lab.", "A", "10.0.0.1", 1_000_000), "record.ttl: "),
            (UpsertInput::try_from(pb::UpsertRecordRequest { record: None }), "record: is required"),
        ];
        for (r, want) in cases {
            let s = r.unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().starts_with(want), "want {want:?}, got {:?}", s.message());
        }
        let name = Name::from_ascii("a.lab.").unwrap();
        let s = status("record.", OpError::NotInZone(name));
        assert_eq!(s.message(), "record.name: a.lab. is not in any zone");
    }
}
