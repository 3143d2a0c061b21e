//! `labctl dns …`: records, blocklist, query log and stats of the dns-agent. One of labctl's gRPC edges: converts
//! replies to rows and renders them; knows nothing of how the agent serves DNS.

use std::process::ExitCode;

use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{
    DeleteRecordRequest, GetBlocklistRequest, ListRecordsRequest, QueryLogRequest, Record, RefreshBlocklistRequest,
    ReloadRequest, StatsRequest, UpsertRecordRequest,
};

use crate::client::{self, Timeouts};
use crate::inventory::Inventory;
use crate::output::{self, Opts};
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum DnsCmd {
    /// List local and dynamic records.
    #[command(after_help = "Example: labctl dns records --zone lab.home.arpa")]
    Records {
        /// Only this zone.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Add or replace a dynamic record (owned by your identity).
    #[command(after_help = "Example: labctl dns add nas.lab.home.arpa A 10.0.0.10 --ttl 300")]
    Add {
        /// The record's name (inside one of the agent's zones).
        name: String,
        /// The record type: A, AAAA, CNAME, TXT, …
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// The record's data (an address, a name, a text).
        value: String,
        /// Time to live in seconds (default: the agent's, 300).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Delete dynamic records by name and type (and value, when given).
    #[command(after_help = "Example: labctl dns rm nas.lab.home.arpa A")]
    Rm {
        /// The records' name.
        name: String,
        /// The records' type.
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// Only the record with this data (default: every record of that name and type).
        value: Option<String>,
    },
    /// Show the blocklist sources; `--refresh` reloads them now.
    #[command(after_help = "Example: labctl dns blocklist --refresh")]
    Blocklist {
        /// Fetch and reload every source now, then show them.
        #[arg(long)]
        refresh: bool,
    },
    /// Recent queries (when `[dns] query_log = true`).
    #[command(after_help = "Example: labctl dns log --limit 20")]
    Log {
        /// At most this many entries, newest last.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Query counters, cache and blocklist sizes.
    #[command(after_help = "Example: labctl dns stats")]
    Stats,
    /// Re-read the agent's config file (an invalid one is refused and the old one keeps serving).
    #[command(after_help = "Example: labctl dns reload")]
    Reload,
}

#[derive(Debug, Serialize)]
struct RecordRow {
    name: String,
    r#type: String,
    value: String,
    ttl: u32,
    owner: String,
}

impl From<Record> for RecordRow {
    fn from(r: Record) -> Self {
        RecordRow { name: r.name, r#type: r.r#type, value: r.value, ttl: r.ttl, owner: r.owner }
    }
}

pub async fn run(cmd: DnsCmd, inv: &Inventory, tls: &TlsMaterial, opts: &Opts) -> Result<ExitCode> {
    let json = opts.json;
    let agent = client::open(inv, tls, "dns", Timeouts::new(opts.timeout)).await?;
    let mut c = DnsClient::new(agent.channel.clone());
    match cmd {
        DnsCmd::Records { zone } => {
            let req = ListRecordsRequest { zone: zone.unwrap_or_default() };
            let rows: Vec<RecordRow> = agent
                .call("list records", c.list_records(req))
                .await?
                .records
                .into_iter()
                .map(RecordRow::from)
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            let mut t = Table::new(["NAME", "TYPE", "VALUE", "TTL", "OWNER"]);
            for r in &rows {
                let owner = if r.owner.is_empty() { "config".to_string() } else { r.owner.clone() };
                t.row([r.name.clone(), r.r#type.clone(), r.value.clone(), r.ttl.to_string(), owner]);
            }
            print!("{t}");
        }
        DnsCmd::Add { name, rtype, value, ttl } => {
            let record =
                Record { name, r#type: rtype.to_uppercase(), value, ttl: ttl.unwrap_or(0), owner: String::new() };
            let r = agent.call("add record", c.upsert_record(UpsertRecordRequest { record: Some(record) })).await?;
            let text = format!("added {} {} {} (ttl {}, owner {})", r.name, r.r#type, r.value, r.ttl, r.owner);
            output::result(opts, &RecordRow::from(r), text)?;
        }
        DnsCmd::Rm { name, rtype, value } => {
            let req = DeleteRecordRequest { name, r#type: rtype.to_uppercase(), value: value.unwrap_or_default() };
            let n = agent.call("delete record", c.delete_record(req)).await?.deleted;
            output::result(opts, &serde_json::json!({ "deleted": n }), format!("deleted {n} record(s)"))?;
            if n == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        DnsCmd::Blocklist { refresh } => {
            let st = if refresh {
                agent.call("refresh blocklist", c.refresh_blocklist(RefreshBlocklistRequest {})).await?
            } else {
                agent.call("get blocklist", c.get_blocklist(GetBlocklistRequest {})).await?
            };
            #[derive(Serialize)]
            struct Src {
                source: String,
                entries: u64,
                skipped_lines: u64,
                error: String,
                loaded_unix: i64,
            }
            let sources: Vec<Src> = st
                .sources
                .into_iter()
                .map(|s| Src {
                    source: s.source,
                    entries: s.entries,
                    skipped_lines: s.skipped_lines,
                    error: s.error,
                    loaded_unix: s.loaded_unix,
                })
                .collect();
            if json {
                #[derive(Serialize)]
                struct Out<'a> {
                    entries: u64,
                    sources: &'a [Src],
                }
                output::json(&Out { entries: st.entries, sources: &sources })?;
            } else {
                println!("{} blocked names", st.entries);
                let mut t = Table::new(["SOURCE", "ENTRIES", "SKIPPED", "ERROR"]);
                for s in &sources {
                    let error = t.error_cell(&s.source, &s.error);
                    t.row([s.source.clone(), s.entries.to_string(), s.skipped_lines.to_string(), error]);
                }
                print!("{}", t.render(opts.verbose));
            }
            if sources.iter().any(|s| !s.error.is_empty()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        DnsCmd::Log { limit } => {
            let entries = agent.call("query log", c.query_log(QueryLogRequest { limit })).await?.entries;
            #[derive(Serialize)]
            struct Row {
                time_unix_ms: i64,
                client: String,
                name: String,
                r#type: String,
                outcome: String,
                latency_us: u32,
            }
            let rows: Vec<Row> = entries
                .into_iter()
                .map(|e| Row {
                    time_unix_ms: e.time_unix_ms,
                    client: e.client,
                    name: e.name,
                    r#type: e.r#type,
                    outcome: e.outcome,
                    latency_us: e.latency_us,
                })
                .collect();
            if json {
                return output::json(&rows).map(|_| ExitCode::SUCCESS);
            }
            let mut t = Table::new(["TIME", "CLIENT", "NAME", "TYPE", "OUTCOME", "LATENCY"]);
            for r in &rows {
                let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.time_unix_ms) * 1_000_000)
                    .map(|t| format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()))
                    .unwrap_or_default();
                t.row([
                    time,
                    r.client.clone(),
                    r.name.clone(),
                    r.r#type.clone(),
                    r.outcome.clone(),
                    format!("{}µs", r.latency_us),
                ]);
            }
            print!("{t}");
        }
        DnsCmd::Stats => {
            let s = agent.call("stats", c.stats(StatsRequest {})).await?;
            let mut by_outcome: Vec<(String, u64)> = s.queries_by_outcome.into_iter().collect();
            by_outcome.sort();
            if json {
                #[derive(Serialize)]
                struct Out {
                    queries_by_outcome: std::collections::BTreeMap<String, u64>,
                    cache_entries: u64,
                    blocklist_entries: u64,
                }
                let out = Out {
                    queries_by_outcome: by_outcome.into_iter().collect(),
                    cache_entries: s.cache_entries,
                    blocklist_entries: s.blocklist_entries,
                };
                return output::json(&out).map(|_| ExitCode::SUCCESS);
            }
            let mut t = Table::new(["OUTCOME", "QUERIES"]);
            for (k, v) in by_outcome {
                t.row([k, v.to_string()]);
            }
            print!("{t}");
            println!("cache entries: {}\nblocked names: {}", s.cache_entries, s.blocklist_entries);
        }
        DnsCmd::Reload => {
            let r = agent.call("reload", c.reload(ReloadRequest {})).await?;
            let text = match (r.message.is_empty(), r.changed) {
                (false, _) => r.message.clone(),
                (true, true) => "reloaded".to_string(),
                (true, false) => "unchanged".to_string(),
            };
            output::result(opts, &serde_json::json!({ "changed": r.changed, "message": r.message }), text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
