//! The client of the dns-agent's `strata.v1.Dns`, as `dns` uses it: the tonic implementation of `dns::DnsApi`
//! (records converted to and from proto here). Part of the gRPC edge; must not know which records are wanted or
//! when registration runs (that is `dns`).

use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use strata_proto::v1 as pb;
use strata_proto::v1::dns_client::DnsClient;
use tonic::transport::Channel;
use tonic::Status;

use crate::dns::{DnsApi, DnsRecord};

/// One session with the dns-agent (a connection checked for the dns-agent's role). Errors are one line naming the
/// call.
pub(crate) struct DnsRemote {
    client: DnsClient<Channel>,
}

fn call_error(what: &str, s: Status) -> String {
    format!("{what}: {}: {}", s.code().description(), s.message())
}

impl DnsApi for DnsRemote {
    async fn connect(tls: &TlsMaterial, addr: &str, timeout: Duration) -> Result<DnsRemote, String> {
        let channel = tls.connect(addr, Role::DnsAgent, timeout).await.map_err(|e| e.to_string())?;
        Ok(DnsRemote { client: DnsClient::new(channel) })
    }

    async fn list(&mut self, zone: &str) -> Result<Vec<DnsRecord>, String> {
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

    async fn upsert(&mut self, r: &DnsRecord) -> Result<(), String> {
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

    async fn delete(&mut self, r: &DnsRecord) -> Result<(), String> {
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
