//! TSIG on requests other than zone transfers (RFC 8945 §5.2, §5.3; transfers are `tcp::serve_transfer`'s): a
//! signed query is verified with `[dns] tsig_keys` (one HMAC) and answered through `Handler`, its encoded answer
//! signed (a UDP answer that the TSIG would push past the client's size is cut and flagged TC first); a query with
//! an unknown key, a bad MAC or a time outside the fudge gets NOTAUTH with the TSIG error (BADKEY and BADSIG
//! unsigned, BADTIME signed). Also a NOTIFY over a stream, answered by `Handler::notify_reply` (signed when it was).
//! Knows which request gets which TSIG treatment; must not know sockets (callers send the bytes), the TSIG wire
//! rules (`tsig`) or what the answers are (`handler`).

use std::time::Instant;

use hickory_proto::op::{OpCode, ResponseCode};
use hickory_server::net::runtime::TokioTime;
use hickory_server::server::{Request, RequestHandler};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::handler::{qtype_of, query_name, response_edns, Handler};
use crate::metrics::Outcome;
use crate::tsig::{self, TsigFailure};
use crate::wire::Capture;
use crate::wire::{self, Limit};

/// Whether [`answer`] answers `request` over a stream (rather than `Handler` through a response handler): a NOTIFY
/// (of EDNS version 0 or none) or a request carrying a TSIG, from a client `[dns] allow_clients` admits (a stranger
/// is refused by `Handler`, unsigned).
pub(crate) fn takes(handler: &Handler, request: &Request) -> bool {
    let notify = request.metadata.op_code == OpCode::Notify && request.edns.as_ref().is_none_or(|e| e.version() == 0);
    (notify || request.signature.is_some())
        && handler.dns().guard.admits(request.src().ip(), request.metadata.op_code, qtype_of(request))
}

/// The answer to a NOTIFY or a signed request, `None` when nothing is to be sent. `limit` is the transport's; `pad`:
/// pad the answer (RFC 8467: an encrypted stream and a padded query) before it is signed. Counted and logged as
/// `Handler` counts and logs its answers.
pub(crate) async fn answer(handler: &Handler, request: &Request, limit: Limit, pad: bool) -> Option<Vec<u8>> {
    let started = Instant::now();
    let qtype = qtype_of(request);
    let record = |outcome| {
        let latency = started.elapsed();
        handler.dns().metrics.record(qtype, outcome, latency);
        handler.log_query(request.src().ip(), || query_name(request), qtype, outcome, latency);
    };
    if request.metadata.op_code == OpCode::Notify {
        let (bytes, outcome) = handler.notify_reply(request)?;
        record(outcome);
        return Some(bytes);
    }
    let now = u64::try_from(agent_core::clock::now_unix()).unwrap_or(0);
    let verified = tsig::verify_request(&handler.dns().config().dns.tsig, request.as_slice(), now);
    match verified {
        Ok(mut signer) => {
            let capture = match limit {
                Limit::Datagram => Capture::new(request),
                Limit::Stream => Capture::stream(request),
            };
            handler.handle_request::<_, TokioTime>(request, capture.clone()).await;
            let mut bytes = capture.take()?;
            if pad {
                wire::pad(&mut bytes, wire::RESPONSE_PAD_BLOCK);
            }
            let max = match limit {
                Limit::Datagram => response_edns(request).map_or(512, |e| usize::from(e.max_payload())),
                Limit::Stream => usize::from(u16::MAX),
            };
            let mut signed = bytes.clone();
            signer.clone().sign(&mut signed, now);
            if signed.len() > max {
                // The TSIG must fit too: fewer records, TC set, then signed (RFC 8945 §5.3).
                let room = max.saturating_sub(signed.len() - bytes.len());
                signed = wire::truncate(&bytes, room)?;
                signer.sign(&mut signed, now);
            }
            Some(signed)
        }
        Err(rejection) => {
            tracing::info!(peer = %request.src(), name = %query_name(request), "signed query refused: {}", rejection.failure);
            record(Outcome::Refused);
            let code = match rejection.failure {
                TsigFailure::Malformed(_) => ResponseCode::FormErr,
                _ => ResponseCode::NotAuth,
            };
            let edns = response_edns(request);
            let mut builder = MessageResponseBuilder::from_message_request(request);
            if let Some(e) = edns.as_ref() {
                builder.edns(e);
            }
            let response = builder.error_msg(&request.metadata, code);
            let (_, mut bytes) = wire::encode(response, request.queries.as_bytes(), limit).ok()?;
            rejection.append_error_tsig(&mut bytes, now);
            Some(bytes)
        }
    }
}
