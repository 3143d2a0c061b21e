//! `labctl dns …`: records, zones, blocklist, query log and stats of the dns-agent. One of labctl's gRPC edges: converts
//! replies to rows and renders them; knows nothing of how the agent serves DNS.

use std::process::ExitCode;

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use strata_proto::v1::dns_client::DnsClient;
use strata_proto::v1::{
    DeleteRecordRequest, GetBlocklistRequest, ListRecordsRequest, ListZonesRequest, QueryLogRequest, Record,
    RefreshBlocklistRequest, ReloadRequest, StatsRequest, UpsertRecordRequest, ZoneStatus,
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
    /// Each zone the agent serves: role (primary, secondary), serial, records, last transfer, lag and state.
    #[command(after_help = "Example: labctl dns zones\nExample: labctl --json dns zones")]
    Zones,
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
    /// Recent queries (when `[dns] query_log = true`), newest first; filters are applied by the agent.
    #[command(
        after_help = "Example: labctl dns log --limit 20\nExample: labctl dns log --outcome blocked --client 192.168.1.0/24\nExample: labctl dns log --follow --name example"
    )]
    Log {
        /// At most this many entries (the agent sends at most 1000 per answer).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only queries from this address or ADDRESS/LEN prefix.
        #[arg(long)]
        client: Option<String>,
        /// Only query names containing this (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        /// Only this outcome: local, forwarded, cached, stale, blocked, failed, refused, nxdomain.
        #[arg(long)]
        outcome: Option<String>,
        /// Keep printing new queries as they come (oldest first; with --json one object per line) until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
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

/// One zone as `labctl dns zones` shows it (`--json`).
#[derive(Debug, Serialize)]
struct ZoneRow {
    /// The agent (inventory key) that serves it.
    agent: String,
    zone: String,
    role: String,
    serial: u32,
    records: u64,
    /// Secondary: its primaries; primary: where NOTIFY goes.
    peers: Vec<String>,
    last_transfer_unix: i64,
    last_transfer_kind: String,
    last_error: String,
    /// -1: never confirmed (or a primary).
    lag_seconds: i64,
    expires_unix: i64,
    serving: bool,
    notifies_pending: u64,
}

impl ZoneRow {
    fn new(agent: &str, z: ZoneStatus) -> Self {
        ZoneRow {
            agent: agent.to_string(),
            zone: z.zone,
            role: z.role,
            serial: z.serial,
            records: z.records,
            peers: z.peers,
            last_transfer_unix: z.last_transfer_unix,
            last_transfer_kind: z.last_transfer_kind,
            last_error: z.last_error,
            lag_seconds: z.lag_seconds,
            expires_unix: z.expires_unix,
            serving: z.serving,
            notifies_pending: z.notifies_pending,
        }
    }

    /// "AXFR 12:03:04" (UTC), or "-" when there was none.
    fn last_transfer(&self) -> String {
        if self.last_transfer_unix <= 0 {
            return "-".to_string();
        }
        format!("{} {}", self.last_transfer_kind, clock(self.last_transfer_unix.saturating_mul(1000)))
            .trim()
            .to_string()
    }

    fn lag(&self) -> String {
        match u64::try_from(self.lag_seconds) {
            Ok(0) => "0s".to_string(),
            Ok(s) => agent_core::duration::format(std::time::Duration::from_secs(s)),
            Err(_) => "-".to_string(),
        }
    }

    fn state(&self) -> String {
        match (self.serving, self.role.as_str(), self.serial) {
            (true, _, _) => "serving".to_string(),
            (false, "secondary", 0) => "SERVFAIL (no copy yet)".to_string(),
            (false, _, _) => "SERVFAIL (expired)".to_string(),
        }
    }
}

/// One query log entry as `labctl dns log` shows it.
#[derive(Debug, Serialize)]
struct LogRow {
    seq: u64,
    time_unix_ms: i64,
    client: String,
    name: String,
    r#type: String,
    outcome: String,
    /// The blocklist source that blocked it; empty unless blocked.
    list: String,
    latency_ms: f64,
}

impl From<strata_proto::v1::QueryLogEntry> for LogRow {
    fn from(e: strata_proto::v1::QueryLogEntry) -> Self {
        LogRow {
            seq: e.seq,
            time_unix_ms: e.time_unix_ms,
            client: e.client,
            name: e.name,
            r#type: e.r#type,
            outcome: e.outcome,
            list: e.list,
            latency_ms: e.latency_ms,
        }
    }
}

/// `labctl dns zones`: the zones of `dns`, then of every other dns-agent of the inventory (`dns2`). One that cannot
/// be reached is reported (stderr; a `{agent, error}` row with `--json`) while the others are shown; when none
/// answers, the first error is the command's. Exit 1 when an agent failed or a zone answers SERVFAIL.
async fn zones(inv: &Inventory, tls: &TlsMaterial, opts: &Opts) -> Result<ExitCode> {
    let mut keys: Vec<&'static str> = vec!["dns"];
    keys.extend(inv.agents.iter().filter(|a| a.role == Role::DnsAgent && a.key != "dns").map(|a| a.key));
    let mut rows: Vec<ZoneRow> = Vec::new();
    let mut errors: Vec<(&'static str, anyhow::Error)> = Vec::new();
    for key in keys {
        let got = async {
            let a = client::open(inv, tls, key, Timeouts::new(opts.timeout)).await?;
            let mut c = DnsClient::new(a.channel.clone());
            a.call("list zones", c.list_zones(ListZonesRequest {})).await
        };
        match got.await {
            Ok(r) => rows.extend(r.zones.into_iter().map(|z| ZoneRow::new(key, z))),
            Err(e) => errors.push((key, e)),
        }
    }
    if rows.is_empty() && !errors.is_empty() {
        return Err(errors.swap_remove(0).1);
    }
    for (_, e) in &errors {
        eprintln!("error: {e}");
    }
    if opts.json {
        let mut doc: Vec<serde_json::Value> = rows.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
        doc.extend(errors.iter().map(|(key, e)| serde_json::json!({ "agent": key, "error": e.to_string() })));
        output::json(&doc)?;
    } else {
        let mut t = Table::new(["AGENT", "ZONE", "ROLE", "SERIAL", "RECORDS", "LAST TRANSFER", "LAG", "STATE"]);
        for r in &rows {
            let state = t.error_cell(&r.zone, &r.last_error);
            let state = if r.last_error.is_empty() { r.state() } else { format!("{} ({state})", r.state()) };
            t.row([
                r.agent.clone(),
                r.zone.clone(),
                r.role.clone(),
                r.serial.to_string(),
                r.records.to_string(),
                r.last_transfer(),
                r.lag(),
                state,
            ]);
        }
        print!("{}", t.render(opts.verbose));
    }
    let failed = !errors.is_empty() || rows.iter().any(|r| !r.serving);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// An entry's time of day (UTC).
fn clock(time_unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_unix_ms) * 1_000_000)
        .map(|t| format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()))
        .unwrap_or_default()
}

/// The cells of a row, in the order of [`LOG_HEADER`].
fn log_cells(r: &LogRow) -> [String; 7] {
    [
        clock(r.time_unix_ms),
        r.client.clone(),
        r.name.clone(),
        r.r#type.clone(),
        r.outcome.clone(),
        format!("{:.2}ms", r.latency_ms),
        r.list.clone(),
    ]
}

const LOG_HEADER: [&str; 7] = ["TIME", "CLIENT", "NAME", "TYPE", "OUTCOME", "LATENCY", "LIST"];

pub async fn run(cmd: DnsCmd, inv: &Inventory, tls: &TlsMaterial, opts: &Opts) -> Result<ExitCode> {
    let json = opts.json;
    if matches!(cmd, DnsCmd::Zones) {
        return zones(inv, tls, opts).await;
    }
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
        // Answered above, before `dns` is opened (its zones are shown even when `dns` is down).
        DnsCmd::Zones => return zones(inv, tls, opts).await,
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
        DnsCmd::Log { limit, client, name, outcome, follow } => {
            let req = QueryLogRequest {
                limit: if follow { 0 } else { limit },
                client: client.unwrap_or_default(),
                name: name.unwrap_or_default(),
                outcome: outcome.unwrap_or_default(),
                after_seq: None,
            };
            let unfiltered = req.client.is_empty() && req.name.is_empty() && req.outcome.is_empty();
            let first = agent.call("query log", c.query_log(req.clone())).await?;
            if !follow {
                let rows: Vec<LogRow> = first.entries.into_iter().map(LogRow::from).collect();
                if json {
                    return output::json(&rows).map(|_| ExitCode::SUCCESS);
                }
                let mut t = Table::new(LOG_HEADER);
                for r in &rows {
                    t.row(log_cells(r));
                }
                print!("{t}");
                if first.truncated {
                    println!("(more entries matched: raise --limit, at most 1000)");
                }
                return Ok(ExitCode::SUCCESS);
            }
            // Follow: ask for what came after the cursor, twice a second (the ring holds the last 10,000 queries).
            if !json {
                println!("{}", LOG_HEADER.join("  "));
            }
            let mut cursor = first.last_seq;
            loop {
                let page = agent
                    .call("query log", c.query_log(QueryLogRequest { after_seq: Some(cursor), ..req.clone() }))
                    .await?;
                if let Some(e) = page.entries.first() {
                    if unfiltered && e.seq > cursor + 1 {
                        eprintln!(
                            "labctl: {} queries were dropped from the agent's log before they could be read",
                            e.seq - cursor - 1
                        );
                    }
                }
                let next = match (page.truncated, page.entries.last()) {
                    (true, Some(e)) => e.seq,
                    _ => page.last_seq,
                };
                let rows: Vec<LogRow> = page.entries.into_iter().map(LogRow::from).collect();
                for r in &rows {
                    if json {
                        println!("{}", serde_json::to_string(r)?);
                    } else {
                        println!("{}", log_cells(r).join("  ").trim_end());
                    }
                }
                use std::io::Write as _;
                std::io::stdout().flush()?;
                cursor = next;
                if !page.truncated {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
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
            output::reloaded(opts, r.changed, &r.message)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
