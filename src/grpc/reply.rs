//! How a call ends: a unary reply handed to grpcio, a stream refused before
//! it streamed, the status that says why a text was not said; each counted.

use std::sync::Arc;

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, UnarySink};
use log::debug;

use crate::chat::Refusal;
use crate::metrics::Metrics;

/// Hands a unary reply to grpcio and counts how the call ended.
pub(super) fn finish<T>(
    ctx: &RpcContext,
    sink: UnarySink<T>,
    reply: Result<T, RpcStatus>,
    metrics: &Arc<Metrics>,
) {
    let metrics = Arc::clone(metrics);
    let (sent, code) = hand_over(sink, reply);
    ctx.spawn(async move { sent_as(sent.await, code, &metrics) });
}

/// Ends a server-streaming call with `status` before it streamed anything,
/// and counts it.
pub(super) fn refuse_stream<T: Send + 'static>(
    ctx: &RpcContext,
    sink: ServerStreamingSink<T>,
    status: RpcStatus,
    metrics: &Arc<Metrics>,
) {
    let metrics = Arc::clone(metrics);
    let code = status.code();
    ctx.spawn(async move {
        let _ = sink.fail(status).await;
        metrics.grpc_call(code.into());
    });
}

/// [`finish`], from a task already spawned.
pub(super) async fn finish_async<T>(
    sink: UnarySink<T>,
    reply: Result<T, RpcStatus>,
    metrics: &Metrics,
) {
    let (sent, code) = hand_over(sink, reply);
    sent_as(sent.await, code, metrics);
}

/// Starts sending a unary reply; returns its progress and the call's code.
fn hand_over<T>(
    sink: UnarySink<T>,
    reply: Result<T, RpcStatus>,
) -> (grpcio::UnarySinkResult, RpcStatusCode) {
    let code = reply
        .as_ref()
        .map_or_else(|s| s.code(), |_| RpcStatusCode::OK);
    let sent = match reply {
        Ok(reply) => sink.success(reply),
        Err(status) => sink.fail(status),
    };
    (sent, code)
}

/// Counts a call whose reply went out (or did not).
fn sent_as(sent: grpcio::Result<()>, code: RpcStatusCode, metrics: &Metrics) {
    match sent {
        Ok(()) => metrics.grpc_call(code.into()),
        Err(e) => {
            debug!("grpc reply not delivered: {e}");
            metrics.grpc_call(RpcStatusCode::CANCELLED.into());
        }
    }
}

/// The status that says why a text was not said.
pub(super) fn refusal_status(why: &Refusal) -> RpcStatus {
    let code = match why {
        Refusal::Unavailable | Refusal::NotConfirmed { .. } => RpcStatusCode::UNAVAILABLE,
        Refusal::TooLong { .. } | Refusal::RateLimited | Refusal::TooManyRooms { .. } => {
            RpcStatusCode::RESOURCE_EXHAUSTED
        }
    };
    RpcStatus::with_message(code, why.to_string())
}

/// Why a read-only member's text is refused.
pub(super) fn read_only() -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::PERMISSION_DENIED,
        "read-only: this token may not speak (pub: false)".into(),
    )
}
