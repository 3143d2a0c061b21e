//! The authorization matrix against the real agent binaries: every method of the table × every role × every kind of
//! client certificate (none, another CA's, expired, valid). Only the table's allowed cases may reach a handler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::policy::TABLE;
use agent_core::tls::{self, TlsMaterial};
use anyhow::Result;
use bytes::Buf;
use strata_tests::harness::{AgentKind, AgentProc, Pki};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Sends an empty protobuf message (valid for every request type) and ignores the reply body.
#[derive(Default)]
struct EmptyCodec;

impl Codec for EmptyCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = EmptyCodec;
    type Decoder = EmptyCodec;
    fn encoder(&mut self) -> Self::Encoder {
        EmptyCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        EmptyCodec
    }
}

impl Encoder for EmptyCodec {
    type Item = ();
    type Error = Status;
    fn encode(&mut self, _: (), _: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for EmptyCodec {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// Calls `method` as a server-streaming call (works for unary methods too) and returns the first outcome.
async fn call(channel: tonic::transport::Channel, method: &'static str) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(tls::error_chain(&e)))?;
    let path = http::uri::PathAndQuery::from_static(method);
    let mut stream = grpc.server_streaming(tonic::Request::new(()), path, EmptyCodec).await?.into_inner();
    stream.message().await.map(drop)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cred {
    Valid(Role),
    NoCertificate,
    OtherCa,
    Expired,
}

/// What happened to a call, as far as authorization is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Passed authorization: the handler (or the router's UNIMPLEMENTED for services not built yet) answered.
    Reached(Code),
    PermissionDenied,
    Unauthenticated,
    /// The TLS handshake refused the certificate; the message names the alert.
    HandshakeRefused(String),
    /// No answer within the deadline (a failure of its cell, named with its method, not of the whole test).
    TimedOut,
}

fn classify(r: Result<(), Status>) -> Outcome {
    match r {
        Ok(()) => Outcome::Reached(Code::Ok),
        Err(s) if s.code() == Code::PermissionDenied => Outcome::PermissionDenied,
        Err(s) if s.code() == Code::Unauthenticated => Outcome::Unauthenticated,
        // A refused client certificate surfaces on the client as whatever the connection did first: a fatal alert,
        // a broken pipe, or a cancelled stream (TLS 1.3 finishes the client's side of the handshake before the
        // server has judged the certificate). Whether a handler ran is checked on the agent's own counters below.
        Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) => {
            Outcome::HandshakeRefused(format!("{:?}: {}", s.code(), tls::error_chain(&s)))
        }
        Err(s) => Outcome::Reached(s.code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_role_and_certificate() -> Result<()> {
    tls::install_crypto_provider();
    let pki = Pki::new()?;
    let other = Pki::new()?; // same domain, different CA
    let agents: Vec<AgentProc> = AgentKind::ALL.iter().map(|k| AgentProc::start(*k, &pki)).collect::<Result<_>>()?;

    let mut creds: Vec<Cred> = Role::ALL.iter().map(|r| Cred::Valid(*r)).collect();
    creds.extend([Cred::NoCertificate, Cred::OtherCa, Cred::Expired]);
    let ca_certs = tls::load_certs(&pki.ca())?;
    let (exp_cert, exp_key) = pki.issue_expired(Role::Admin, "expired-admin")?;
    let expired = TlsMaterial::load(&pki.ca(), &exp_cert, &exp_key)?;
    let (oc_cert, oc_key) = other.issue(Role::Admin, "intruder")?;
    let intruder = TlsMaterial::load(&pki.ca(), &oc_cert, &oc_key)?;

    let mut failures = Vec::new();
    let mut reached_per_agent: BTreeMap<&str, u64> = BTreeMap::new();
    for agent in &agents {
        let role = agent.kind.role();
        let methods: Vec<_> = TABLE
            .iter()
            .filter(|r| {
                r.method.starts_with("/strata.v1.Agent/")
                    || r.method.starts_with("/grpc.health.v1.Health/")
                    || r.method.starts_with(&format!("/{}/", agent.kind.domain_service()))
            })
            .collect();
        for rule in &methods {
            for cred in &creds {
                let config = match cred {
                    Cred::Valid(r) => pki.material(&pki.ca(), *r, &format!("client-{r}"))?.client_config(role)?,
                    Cred::NoCertificate => tls::client_config(&ca_certs, role, harness_domain(), None)?,
                    Cred::OtherCa => intruder.client_config(role)?,
                    Cred::Expired => expired.client_config(role)?,
                };
                let outcome = match tls::connect(&agent.url(), Arc::new(config), Duration::from_secs(5)).await {
                    // Generous: the cell asks about authorization, not speed, and the suite runs beside builds.
                    Ok(ch) => match tokio::time::timeout(Duration::from_secs(20), call(ch, rule.method)).await {
                        Ok(answer) => classify(answer),
                        Err(_) => Outcome::TimedOut,
                    },
                    Err(e) => Outcome::HandshakeRefused(e.to_string()),
                };
                let ok = match (cred, &outcome) {
                    // Any answer from past the layer counts: OK, UNIMPLEMENTED for services not built yet, or the
                    // handler's own refusal of an empty request (INVALID_ARGUMENT, FAILED_PRECONDITION, …).
                    (Cred::Valid(r), Outcome::Reached(_)) => rule.roles.contains(r),
                    (Cred::Valid(r), Outcome::PermissionDenied) => !rule.roles.contains(r),
                    (Cred::NoCertificate, Outcome::Unauthenticated) => true,
                    (Cred::OtherCa | Cred::Expired, Outcome::HandshakeRefused(_)) => true,
                    _ => false,
                };
                if matches!(outcome, Outcome::Reached(_)) {
                    *reached_per_agent.entry(agent.kind.binary()).or_default() += 1;
                }
                if !ok {
                    failures.push(format!("{} {} as {cred:?}: {outcome:?}", agent.kind.binary(), rule.method));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} unexpected outcomes:\n{}", failures.len(), failures.join("\n"));

    // The agents' own count of authorizations granted equals the allowed cells of the matrix.
    for agent in &agents {
        let text = agent.metrics_text()?;
        let allowed: u64 = text
            .lines()
            .filter(|l| l.starts_with("strata_authz_decisions_total{") && l.contains("decision=\"allow\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(Some(&allowed), reached_per_agent.get(agent.kind.binary()), "{}:\n{text}", agent.kind.binary());
    }
    Ok(())
}

fn harness_domain() -> &'static str {
    strata_tests::harness::DOMAIN
}

/// Every rpc declared in proto/ is in the table: deny-by-default must never be an accident of a missing row.
#[test]
fn table_covers_every_rpc_in_the_protos() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/strata/v1");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let service =
            |line: &str| line.trim().strip_prefix("service ").map(|s| s.trim_end_matches('{').trim().to_string());
        let mut current = None;
        for line in text.lines() {
            if let Some(s) = service(line) {
                current = Some(s);
            } else if let Some(rest) = line.trim().strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or("").trim();
                let path = format!("/strata.v1.{}/{name}", current.as_deref().unwrap_or("?"));
                if agent_core::policy::allowed_roles(&path).is_none() {
                    missing.push(path);
                }
            }
        }
    }
    assert!(missing.is_empty(), "rpcs without a row in agent_core::policy::TABLE: {missing:?}");
    Ok(())
}
