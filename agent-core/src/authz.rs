//! The tower layer that authorizes every gRPC request against `policy::TABLE` before any handler runs.
//! Knows HTTP/2 request paths and peer certificates; must not know what any method does.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::{Layer, Service};

use crate::identity::Identity;
use crate::policy;

/// The authenticated caller, put into request extensions for handlers (e.g. record ownership).
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// Reads the caller from a tonic request (set by `AuthzLayer`; absent only if the layer is not installed).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Identity, Status> {
    req.extensions().get::<Caller>().map(|c| &c.0).ok_or_else(|| Status::unauthenticated("no caller identity"))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub method: String,
    pub decision: &'static str,
}

/// Authorization for one agent: the lab domain its peers must belong to, and a counter of decisions.
#[derive(Clone)]
pub struct AuthzLayer {
    domain: Arc<str>,
    decisions: Family<DecisionLabels, Counter>,
}

impl AuthzLayer {
    pub fn new(domain: &str, decisions: Family<DecisionLabels, Counter>) -> Self {
        AuthzLayer { domain: domain.into(), decisions }
    }

    /// The decision for one request: the caller's identity (when it has one) and whether it may call `method`.
    /// The TLS layer has already verified the certificate chain and validity against the lab CA.
    pub fn decide(
        &self,
        method: &str,
        peer_certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> (Option<Identity>, Result<(), Status>) {
        let Some(leaf) = peer_certs.and_then(|c| c.first()) else {
            return (None, Err(Status::unauthenticated("a client certificate signed by the lab ca is required")));
        };
        let id = match Identity::from_cert_der(leaf) {
            Ok(id) => id,
            Err(e) => return (None, Err(Status::unauthenticated(format!("client {e}")))),
        };
        let verdict = if *id.domain != *self.domain {
            Err(Status::unauthenticated(format!("{id} is not in domain {}", self.domain)))
        } else {
            match policy::allowed_roles(method) {
                Some(roles) if roles.contains(&id.role) => Ok(()),
                Some(_) => Err(Status::permission_denied(format!("{} may not call {method}", id.role))),
                None => Err(Status::permission_denied(format!("{method} is not in the authorization table"))),
            }
        };
        (Some(id), verdict)
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

type Resp = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = Resp>,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = Either<Ready<Result<Resp, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
        let peer = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Label unknown paths as one value: callers choose paths, and metric cardinality must stay bounded.
        let label = if policy::allowed_roles(&method).is_some() { method.clone() } else { "unknown".to_string() };
        let (id, verdict) = self.layer.decide(&method, certs.as_deref().map(|v| v.as_slice()));
        let identity = id.as_ref().map(Identity::uri).unwrap_or_else(|| "-".to_string());
        match (verdict, id) {
            (Ok(()), Some(id)) => {
                tracing::info!(method, identity = %id, peer, "authz: allow");
                self.layer.decisions.get_or_create(&DecisionLabels { method: label, decision: "allow" }).inc();
                req.extensions_mut().insert(Caller(id));
                Either::Right(self.inner.call(req))
            }
            (verdict, _) => {
                let status = verdict.err().unwrap_or_else(|| Status::unauthenticated("no identity"));
                let decision = if status.code() == tonic::Code::Unauthenticated { "unauthenticated" } else { "deny" };
                tracing::warn!(method, identity, peer, reason = status.message(), "authz: {decision}");
                self.layer.decisions.get_or_create(&DecisionLabels { method: label, decision }).inc();
                Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}
