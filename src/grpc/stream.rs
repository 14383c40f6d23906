//! A chat member's gRPC stream: its queue written out under the write
//! deadline, alongside what the client says (a `Chat` stream), until the
//! queue closes, the client goes, a write stalls or the member's token
//! expires; then the call's status.

use std::future::Future;
use std::pin::pin;

use futures_util::future::{select, Either};
use futures_util::{Sink, SinkExt, StreamExt};
use grpcio::{DuplexSink, RpcStatus, RpcStatusCode, ServerStreamingSink, WriteFlags};

use super::chat::GrpcMember;
use super::codec::Outgoing;
use super::deadline::Timed;
use crate::queue;

/// A streaming sink papo feeds: grpcio's server-streaming and duplex sinks.
pub(super) trait OutSink:
    Sink<(Outgoing, WriteFlags), Error = grpcio::Error> + Unpin
{
    fn end(self, status: RpcStatus) -> impl Future<Output = grpcio::Result<()>>;
}

impl OutSink for ServerStreamingSink<Outgoing> {
    async fn end(mut self, status: RpcStatus) -> grpcio::Result<()> {
        match status.code() {
            RpcStatusCode::OK => self.close().await,
            _ => self.fail(status).await,
        }
    }
}

impl OutSink for DuplexSink<Outgoing> {
    async fn end(mut self, status: RpcStatus) -> grpcio::Result<()> {
        match status.code() {
            RpcStatusCode::OK => self.close().await,
            _ => self.fail(status).await,
        }
    }
}

/// Streams a member's queue out until it is closed (the member left or was
/// dropped) or the client goes away, running `listening` alongside; then
/// ends the call with the right status, which it returns. A member whose
/// writes stall for its write timeout is ended at once, `listening` (and
/// with it a `Chat` member's place in the room) dropped, and its status
/// given a grace to go out before the call is let go.
pub(super) async fn stream_out(
    mut sink: impl OutSink,
    rx: queue::Receiver<Outgoing>,
    subscriber: &GrpcMember,
    listening: impl Future<Output = ()>,
) -> RpcStatusCode {
    let deadline = &subscriber.deadline;
    let mut outgoing = rx.map(|m| Ok((m, WriteFlags::default())));
    let sent = {
        let streaming = async {
            match subscriber.write_timeout {
                Some(timeout) => {
                    let mut timed = Timed {
                        sink: &mut sink,
                        deadline,
                        timeout,
                    };
                    timed.send_all(&mut outgoing).await
                }
                None => sink.send_all(&mut outgoing).await,
            }
        };
        let work = async {
            match select(pin!(streaming), pin!(listening)).await {
                Either::Left((sent, _listening)) => sent,
                // The client stopped talking: the queue was closed; drain it.
                Either::Right(((), streaming)) => streaming.await,
            }
        };
        // At its token's expiry the member's stream ends (the queue is
        // closed, so the work above finishes): this never completes.
        let expiring = async {
            if let Some(expiry) = &subscriber.expiry {
                expiry.fired().await;
                let status =
                    RpcStatus::with_message(RpcStatusCode::UNAUTHENTICATED, "token expired".into());
                let _ = subscriber.refused.set(status);
                subscriber.tx.close_now();
            }
            std::future::pending::<()>().await
        };
        let work = async {
            match select(pin!(work), pin!(expiring)).await {
                Either::Left((sent, _)) => sent,
                Either::Right(((), work)) => work.await,
            }
        };
        match select(pin!(work), pin!(deadline.fired())).await {
            Either::Left((sent, _)) => sent.map(|()| Some(())),
            Either::Right(((), _)) => Ok(None),
        }
    };
    drop(outgoing);
    let status = subscriber.end_status();
    let code = status.code();
    match sent {
        Ok(Some(())) => match sink.end(status).await {
            Ok(()) => code,
            Err(_) => RpcStatusCode::CANCELLED,
        },
        // Timed out: the status waits behind the stalled write, so it gets
        // a grace to go out, and no more.
        Ok(None) => {
            deadline.rearm(super::STATUS_GRACE);
            match select(pin!(sink.end(status)), pin!(deadline.fired())).await {
                Either::Left((Ok(()), _)) => code,
                _ => RpcStatusCode::CANCELLED,
            }
        }
        Err(_) => RpcStatusCode::CANCELLED,
    }
}
