//! labctl's gRPC edge: connects to agents over mTLS (checking each one's role) and converts replies to plain structs.
//! The only labctl module that touches proto/tonic types.

use std::time::Duration;

use agent_core::tls::{error_chain, TlsMaterial};
use strata_proto::v1::agent_client::AgentClient;
use strata_proto::v1::StatusRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use tonic::transport::Channel;

use crate::inventory::{AgentAddr, Inventory};
use crate::progress::{self, End, Summary, Update};

/// What an agent says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentStatus {
    pub name: String,
    pub role: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub cert_not_after_unix: i64,
    pub identity: String,
    pub summary: String,
    /// healthy, degraded (with `degraded` listing why), not serving, unknown.
    pub health: String,
    /// Why the agent is degraded, one reason per line; empty when healthy.
    pub degraded: Vec<String>,
    /// The backups it watches and how fresh each is (empty on agents that back nothing up).
    pub backups: Vec<BackupFreshness>,
}

/// How fresh one backup is (one VM or service in one repository or target); times in Unix seconds, `None` when
/// never.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupFreshness {
    /// "host" or "services".
    pub layer: String,
    pub name: String,
    pub repo: String,
    /// "ok", "overdue", "failing" or "never".
    pub state: String,
    pub last_success_unix: Option<i64>,
    pub last_run_unix: Option<i64>,
    /// `None` when it is not watched for age (no schedule).
    pub warn_after_seconds: Option<u64>,
    pub failing: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl From<strata_proto::v1::BackupFreshness> for BackupFreshness {
    fn from(b: strata_proto::v1::BackupFreshness) -> Self {
        let when = |t: i64| (t != 0).then_some(t);
        BackupFreshness {
            layer: b.layer,
            name: b.name,
            repo: b.repo,
            state: b.state,
            last_success_unix: when(b.last_success_unix),
            last_run_unix: when(b.last_run_unix),
            warn_after_seconds: (b.warn_after_seconds != 0).then_some(b.warn_after_seconds),
            failing: b.failing,
            last_error: b.last_error,
        }
    }
}

/// For `map_err`: a failed call of `what` on `agent`, as a one-line error.
pub fn call_error<'a>(agent: &'a AgentAddr, what: &'static str) -> impl Fn(tonic::Status) -> anyhow::Error + 'a {
    move |s| anyhow::anyhow!(status_error(agent, what, &s))
}

/// Explains a failed call in one line, naming the agent.
pub fn status_error(agent: &AgentAddr, what: &str, s: &tonic::Status) -> String {
    let mut msg = format!("{what} on {} ({}): {}", agent.key, agent.addr, s.code().description());
    if !s.message().is_empty() {
        msg.push_str(": ");
        msg.push_str(s.message());
    }
    if let Some(src) = std::error::Error::source(s) {
        for part in error_chain(src).split(": ") {
            if !msg.contains(part) {
                msg.push_str(": ");
                msg.push_str(part);
            }
        }
    }
    // TLS 1.3 completes the client's side of the handshake before the agent judges our certificate, so a refusal
    // shows up on the first call as an alert (UnknownCA, BadCertificate, CertificateExpired, DecryptError for a
    // look-alike CA) or as a connection closed under us.
    let refused =
        ["UnknownCA", "BadCertificate", "CertificateExpired", "DecryptError", "broken pipe", "connection reset"];
    if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled)
        && refused.iter().any(|r| msg.contains(r))
    {
        msg.push_str(
            " (the agent closed the connection: is our client certificate signed by its lab ca and not expired?)",
        );
    }
    msg
}

/// How long labctl waits for an agent: `--timeout` when given bounds every phase, else each has its default
/// (documented in `labctl --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `--timeout SECS`.
    pub explicit: Option<Duration>,
    /// A call that answers once, when `--timeout` is not given.
    pub default_call: Duration,
}

/// Connecting and the TLS handshake, when `--timeout` is not given.
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
/// A call that answers once (a read, a DNS write, a VM action), and opening a stream, without `--timeout`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deploys (services up/down/restart/pause/unpause/sync) may take minutes on a busy host.
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);

impl Timeouts {
    pub fn new(explicit: Option<Duration>) -> Timeouts {
        Timeouts { explicit, default_call: CALL_TIMEOUT }
    }

    /// The same `--timeout`, with another default for calls (deploys).
    pub fn with_default_call(self, default_call: Duration) -> Timeouts {
        Timeouts { default_call, ..self }
    }

    pub fn connect(&self) -> Duration {
        self.explicit.unwrap_or(DEFAULT_CONNECT)
    }

    pub fn call(&self) -> Duration {
        self.explicit.unwrap_or(self.default_call)
    }
}

/// `2s`, `1.5s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// How much waiting a `tonic::Channel` allows per request: longer than any of our own bounds (which are what
/// decide), so that a long job's stream is never cut by the channel.
const CHANNEL_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Connects to one agent (TCP, TLS handshake, its role checked) within `limit`; the error names the agent.
pub async fn connect(tls: &TlsMaterial, agent: &AgentAddr, limit: Duration) -> anyhow::Result<Channel> {
    match tokio::time::timeout(limit, tls.connect(&agent.addr, agent.role, CHANNEL_LIMIT)).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(anyhow::anyhow!("{} ({}): {}", agent.key, agent.addr, error_chain(&e))),
        Err(_) => Err(anyhow::anyhow!(
            "{} ({}): no connection and tls handshake within {} (--timeout)",
            agent.key,
            agent.addr,
            secs(limit)
        )),
    }
}

/// One connected agent and how long its calls may take: every call of a command goes through [`Agent::call`] or
/// [`Agent::stream`], the one place where labctl bounds its waits.
pub struct Agent {
    pub addr: AgentAddr,
    pub channel: Channel,
    timeouts: Timeouts,
}

/// Connects to the inventory's agent `key` (host, dns, services), checking that it serves with the expected role.
/// An inventory without that agent is an [`agent_core::config::ConfigError`] (labctl's bad config).
pub async fn open(inv: &Inventory, tls: &TlsMaterial, key: &str, timeouts: Timeouts) -> anyhow::Result<Agent> {
    let addr = inv.agent(key).cloned().ok_or_else(|| {
        agent_core::config::ConfigError::invalid(
            &inv.path,
            format!("agents.{key}"),
            format!("missing: this command talks to the {key} agent (add {key} = \"https://HOST:PORT\")"),
        )
    })?;
    let channel = connect(tls, &addr, timeouts.connect()).await?;
    Ok(Agent { addr, channel, timeouts })
}

impl Agent {
    /// A call that answers once, within the call timeout; the error is one line naming the call and the agent.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        let limit = self.timeouts.call();
        match tokio::time::timeout(limit, call).await {
            Ok(r) => {
                r.map(tonic::Response::into_inner).map_err(|s| anyhow::anyhow!(status_error(&self.addr, what, &s)))
            }
            Err(_) => Err(self.timed_out(what, limit, "no answer")),
        }
    }

    /// Opens a server stream (a long job's progress, logs) within the call timeout. With `--timeout` a job's first
    /// update must come within it too (`first_update`); after that the stream is not bounded.
    pub async fn stream<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
        first_update: bool,
    ) -> anyhow::Result<FirstWithin<tonic::Streaming<T>>> {
        let inner = self.call(what, call).await?;
        let limit = self.timeouts.explicit.filter(|_| first_update);
        Ok(FirstWithin { inner, deadline: limit.map(|l| (Box::pin(tokio::time::sleep(l)), l)), ended: false })
    }

    /// For `map_err` on a stream's items: the status as one line naming `what` and the agent.
    pub fn error(&self, what: &'static str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
        call_error(&self.addr, what)
    }

    fn timed_out(&self, what: &str, limit: Duration, nothing: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{what} on {} ({}): {nothing} within {} (--timeout)",
            self.addr.key,
            self.addr.addr,
            secs(limit)
        )
    }
}

/// A stream whose first item must come before a deadline; when it does not, the stream yields one
/// `DEADLINE_EXCEEDED` status and ends.
pub struct FirstWithin<S> {
    inner: S,
    deadline: Option<(std::pin::Pin<Box<tokio::time::Sleep>>, Duration)>,
    ended: bool,
}

impl<T, S> futures::Stream for FirstWithin<S>
where
    S: futures::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    type Item = Result<T, tonic::Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.deadline = None;
                Poll::Ready(item)
            }
            Poll::Pending => {
                let Some((sleep, limit)) = &mut this.deadline else { return Poll::Pending };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let msg = format!("no progress update within {} (--timeout); the job may go on", secs(*limit));
                this.ended = true;
                Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(msg))))
            }
        }
    }
}

impl Agent {
    /// What Ctrl-C does while following a job on `target` (None: several targets): detach with `detached`, or, given
    /// the agent's Cancel call (`--cancel-on-interrupt`), send Cancel for the job: by its id once an update named it,
    /// by `target` before the first update.
    pub fn on_interrupt<'a, F, Fut>(
        &'a self,
        detached: String,
        target: Option<&str>,
        cancel: Option<F>,
    ) -> progress::OnInterrupt<'a>
    where
        F: FnOnce(strata_proto::v1::JobRef) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<tonic::Response<strata_proto::v1::CancelResponse>, tonic::Status>>
            + Send
            + 'a,
    {
        let Some(cancel) = cancel else {
            return progress::OnInterrupt::Detach(detached);
        };
        let name = target.unwrap_or_default().to_string();
        let cancel: progress::Canceller<'a> = Box::new(move |id: Option<String>| {
            Box::pin(async move {
                let job = match id {
                    Some(id) => strata_proto::v1::JobRef { id, name: String::new() },
                    None => strata_proto::v1::JobRef { id: String::new(), name },
                };
                self.call("cancel", cancel(job)).await.map(|r| r.message).map_err(|e| e.to_string())
            })
        });
        progress::OnInterrupt::Cancel { detached, cancel }
    }

    /// Follows a long job's stream to its end through the one renderer ([`progress::follow`]) and prints its summary
    /// on stdout (text, or `{"summaries": [...]}` after the JSON lines). The agent's error status is an error naming
    /// `what` and the agent; so is a stream that ends without a summary (the job's outcome is unknown).
    pub async fn follow_job<S>(
        &self,
        what: &'static str,
        stream: S,
        json: bool,
        on_interrupt: progress::OnInterrupt<'_>,
    ) -> anyhow::Result<std::process::ExitCode>
    where
        S: futures::Stream<Item = Result<strata_proto::v1::Progress, tonic::Status>> + Unpin,
    {
        use futures::StreamExt;
        match progress::follow(stream.map(|r| r.map(Update::from)), json, on_interrupt).await {
            End::Done(last) => {
                progress::print_summary(&last, json, &mut std::io::stdout())?;
                Ok(std::process::ExitCode::SUCCESS)
            }
            End::Failed(s) => Err(self.error(what)(s)),
            End::Unknown => anyhow::bail!(
                "{what} on {} ({}): the agent ended the stream without the job's summary: outcome unknown",
                self.addr.key,
                self.addr.addr
            ),
        }
    }
}

impl From<strata_proto::v1::Progress> for Update {
    fn from(p: strata_proto::v1::Progress) -> Update {
        Update {
            step: p.step,
            done: p.done,
            total: p.total,
            message: p.message,
            job_id: p.job_id,
            summary: p.summary.map(Summary::from),
            bytes: p.bytes,
            eta_seconds: None,
        }
    }
}

impl From<strata_proto::v1::FileEntry> for crate::files::Row {
    fn from(e: strata_proto::v1::FileEntry) -> crate::files::Row {
        crate::files::Row {
            path: e.path,
            kind: e.r#type,
            mode: e.mode,
            size: e.size,
            mtime_unix: e.mtime_unix,
            link_target: e.link_target,
        }
    }
}

fn vm_restore(r: strata_proto::v1::VmRestoreSummary) -> progress::VmRestore {
    progress::VmRestore {
        vm: r.vm,
        archive: r.archive,
        target: r.target,
        to: r.to,
        moved_aside: r.moved_aside,
        started_as: r.started_as,
    }
}

fn service_run(r: strata_proto::v1::ServiceRunSummary) -> progress::ServiceRun {
    progress::ServiceRun { service: r.service, archive: r.archive, snapshot: r.snapshot }
}

impl From<strata_proto::v1::Summary> for Summary {
    fn from(s: strata_proto::v1::Summary) -> Summary {
        use strata_proto::v1::summary::Kind;
        match s.kind {
            Some(Kind::VmBackups(b)) => Summary::VmBackups(
                b.backups
                    .into_iter()
                    .map(|b| progress::VmBackup {
                        vm: b.vm,
                        id: b.id,
                        mode: b.mode,
                        downtime_seconds: b.downtime_seconds,
                        size: b.size,
                        warnings: b.warnings,
                        targets: b
                            .targets
                            .into_iter()
                            .map(|t| progress::VmTarget {
                                label: t.label,
                                url: t.url,
                                ok: t.ok,
                                error: t.error,
                                size: t.size,
                                duration_seconds: t.duration_seconds,
                                warnings: t.warnings,
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            Some(Kind::VmRestore(r)) => Summary::VmRestore(vm_restore(r)),
            Some(Kind::VmDrill(d)) => {
                Summary::VmDrill { restore: vm_restore(d.restore.unwrap_or_default()), seconds: d.seconds }
            }
            Some(Kind::ServiceBackups(b)) => Summary::ServiceBackups(
                b.backups
                    .into_iter()
                    .map(|b| progress::ServiceBackup {
                        service: b.service,
                        archive: b.archive,
                        snapshot: b.snapshot,
                        downtime_seconds: b.downtime_seconds,
                        duration_seconds: b.duration_seconds,
                        original_size: b.original_size,
                        compressed_size: b.compressed_size,
                        deduplicated_size: b.deduplicated_size,
                        pruned: b.pruned,
                        warnings: b.warnings,
                    })
                    .collect(),
            ),
            Some(Kind::ServiceRestore(r)) => Summary::ServiceRestore(service_run(r)),
            Some(Kind::ServiceCheck(r)) => Summary::ServiceCheck(service_run(r)),
            Some(Kind::ServiceDrill(r)) => Summary::ServiceDrill(service_run(r)),
            None => Summary::Unknown,
        }
    }
}

/// Asks one agent for its status and health.
pub async fn status(tls: &TlsMaterial, agent: &AgentAddr, timeout: Duration) -> Result<AgentStatus, String> {
    let channel = tls.connect(&agent.addr, agent.role, timeout).await.map_err(|e| e.to_string())?;
    let s = AgentClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .map_err(|s| status_error(agent, "status", &s))?
        .into_inner();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| status_error(agent, "health check", &s))?
        .into_inner();
    let health = match ServingStatus::try_from(health.status) {
        Ok(ServingStatus::Serving) if !s.degraded.is_empty() => "degraded",
        Ok(ServingStatus::Serving) => "healthy",
        Ok(ServingStatus::NotServing) => "not serving",
        _ => "unknown",
    };
    Ok(AgentStatus {
        name: s.name,
        role: s.role,
        version: s.version,
        uptime_seconds: s.uptime_seconds,
        cert_not_after_unix: s.cert_not_after_unix,
        identity: s.identity,
        summary: s.summary,
        health: health.to_string(),
        degraded: s.degraded,
        backups: s.backups.into_iter().map(BackupFreshness::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn agent(explicit: Option<Duration>) -> Agent {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let addr = AgentAddr { key: "dns", role: agent_core::identity::Role::DnsAgent, addr: "https://h:1".into() };
        Agent { addr, channel, timeouts: Timeouts::new(explicit) }
    }

    #[test]
    fn timeouts_take_the_flag_else_each_default() {
        let none = Timeouts::new(None);
        assert_eq!((none.connect(), none.call()), (DEFAULT_CONNECT, CALL_TIMEOUT));
        assert_eq!(none.with_default_call(DEPLOY_TIMEOUT).call(), DEPLOY_TIMEOUT);
        let two = Timeouts::new(Some(Duration::from_secs(2))).with_default_call(DEPLOY_TIMEOUT);
        assert_eq!((two.connect(), two.call()), (Duration::from_secs(2), Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn a_call_that_never_answers_fails_within_the_timeout_naming_the_agent() {
        let a = agent(Some(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        let never = std::future::pending::<Result<tonic::Response<()>, tonic::Status>>();
        let e = a.call("list records", never).await.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(e, "list records on dns (https://h:1): no answer within 0.1s (--timeout)");
        let refused = async { Err::<tonic::Response<()>, _>(tonic::Status::not_found("no record x")) };
        let e = a.call("delete record", refused).await.unwrap_err().to_string();
        assert_eq!(e, "delete record on dns (https://h:1): Some requested entity was not found: no record x");
    }

    #[tokio::test]
    async fn a_job_must_send_its_first_update_within_the_timeout_and_then_may_take_its_time() {
        let limit = Duration::from_millis(100);
        let deadline = || Some((Box::pin(tokio::time::sleep(limit)), limit));
        let silent = futures::stream::pending::<Result<u32, tonic::Status>>();
        let mut s = FirstWithin { inner: silent, deadline: deadline(), ended: false };
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(e.message().contains("no progress update within 0.1s"), "{e:?}");
        assert!(s.next().await.is_none());

        // A first update in time lifts the bound: a later update after the limit still arrives.
        let slow = futures::stream::iter([1u32, 2]).then(|i| async move {
            if i == 2 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok::<_, tonic::Status>(i)
        });
        let mut s = FirstWithin { inner: Box::pin(slow), deadline: deadline(), ended: false };
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        assert_eq!(s.next().await.unwrap().unwrap(), 2);
        assert!(s.next().await.is_none());
    }

    #[test]
    fn progress_and_summaries_convert_from_the_wire() {
        use strata_proto::v1 as pb;
        let u = Update::from(pb::Progress {
            job_id: "backup-lab-1".into(),
            step: "backup".into(),
            message: "m".into(),
            done: 1,
            total: 2,
            summary: None,
            bytes: true,
        });
        assert_eq!(
            u,
            Update {
                step: "backup".into(),
                done: 1,
                total: 2,
                message: "m".into(),
                job_id: "backup-lab-1".into(),
                summary: None,
                bytes: true,
                eta_seconds: None,
            }
        );
        let drill = pb::Summary {
            kind: Some(pb::summary::Kind::VmDrill(pb::VmDrillSummary {
                restore: Some(pb::VmRestoreSummary { vm: "lab".into(), to: "/s".into(), ..Default::default() }),
                seconds: 1.5,
            })),
        };
        let want = progress::VmRestore { vm: "lab".into(), to: "/s".into(), ..Default::default() };
        assert_eq!(Summary::from(drill), Summary::VmDrill { restore: want, seconds: 1.5 });
        let check = pb::Summary {
            kind: Some(pb::summary::Kind::ServiceCheck(pb::ServiceRunSummary {
                service: "photos".into(),
                ..Default::default()
            })),
        };
        let want = progress::ServiceRun { service: "photos".into(), ..Default::default() };
        assert_eq!(Summary::from(check), Summary::ServiceCheck(want));
        // A summary of a kind this labctl does not know still ends the job.
        assert_eq!(Summary::from(pb::Summary { kind: None }), Summary::Unknown);
        assert_eq!(serde_json::to_string(&Summary::Unknown).unwrap(), "\"unknown\"");
    }

    #[tokio::test]
    async fn a_job_stream_without_a_summary_is_an_unknown_outcome_and_an_error_names_the_agent() {
        use strata_proto::v1 as pb;
        let step = pb::Progress { step: "borg".into(), message: "creating".into(), ..Default::default() };
        let a = agent(None);
        let stream = futures::stream::iter(vec![Ok(step.clone())]);
        let e = a
            .follow_job("backup", stream, false, progress::OnInterrupt::Detach(String::new()))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "backup on dns (https://h:1): the agent ended the stream without the job's summary: outcome unknown"
        );
        let stream = futures::stream::iter(vec![Ok(step), Err(tonic::Status::aborted("borg create: exit 2"))]);
        let e = a
            .follow_job("backup", stream, false, progress::OnInterrupt::Detach(String::new()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backup on dns (https://h:1): ") && e.ends_with("borg create: exit 2"), "{e}");
        let last = pb::Progress {
            step: "done".into(),
            summary: Some(pb::Summary { kind: Some(pb::summary::Kind::ServiceCheck(Default::default())) }),
            ..Default::default()
        };
        let ok = a
            .follow_job(
                "check",
                futures::stream::iter(vec![Ok(last)]),
                false,
                progress::OnInterrupt::Detach(String::new()),
            )
            .await
            .unwrap();
        assert_eq!(ok, std::process::ExitCode::SUCCESS);
    }
}
