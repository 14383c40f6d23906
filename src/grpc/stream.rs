//! A chat member's gRPC stream: its queue written out under the write
//! deadline, alongside what the client says (a `Chat` stream), until the
//! queue closes, the client goes, a write stalls or the member's token
//! expires; then the call's status.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::{Sink, SinkExt, StreamExt};
use grpcio::{DuplexSink, RpcStatus, RpcStatusCode, ServerStreamingSink, WriteFlags};
use protobuf::Message as _;

use super::codec::Outgoing;
use super::deadline::{Deadline, Deadlines, Timed};
use super::reply::refusal_status;
use crate::chat::{Delivery, Encoding, Refusal, Subscriber};
use crate::metrics::Metrics;
use crate::queue::{self, SendError};

/// How long a stream ended for stalling has to get its status out.
pub(super) const STATUS_GRACE: Duration = Duration::from_secs(1);

/// A gRPC stream's way out of the hub: a bounded queue the call's task
/// drains.
pub(super) struct GrpcSubscriber {
    tx: queue::Sender<Outgoing>,
    evicted: AtomicBool,
    /// Why the member's own message was refused, ending its stream.
    refused: OnceLock<RpcStatus>,
    metrics: Arc<Metrics>,
    /// Fires when a write has been with C-core for `write_timeout`.
    deadline: Arc<Deadline>,
    write_timeout: Option<Duration>,
    /// Fires when the member's token expires.
    expiry: Option<Arc<Deadline>>,
}

/// What a stream's queue holds at most, and how long its writes may stall.
pub(super) struct Bounds {
    pub messages: usize,
    pub bytes: usize,
    pub write_timeout: Option<Duration>,
}

impl Subscriber for GrpcSubscriber {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        // Encoded once per message, by whichever member comes first, and
        // shared by all of them down to C-core's writes.
        let bytes = delivery.encoded(Encoding::Protobuf, |m| {
            m.write_to_bytes().unwrap_or_default()
        });
        let len = bytes.len();
        self.tx.try_send(Outgoing(bytes))?;
        self.metrics.grpc.sent(len);
        Ok(())
    }

    fn replay(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let bytes = delivery.encoded(Encoding::Protobuf, |m| {
            m.write_to_bytes().unwrap_or_default()
        });
        let len = bytes.len();
        self.tx.try_send_replayed(Outgoing(bytes))?;
        self.metrics.grpc.sent(len);
        Ok(())
    }

    fn replay_room(&self) -> usize {
        self.tx.room_in_bytes()
    }

    fn evicted(&self) {
        self.evicted.store(true, Ordering::Release);
        self.tx.close_now();
    }

    /// What it said was lost: its stream ends `UNAVAILABLE`.
    fn not_said(&self, why: &Refusal) {
        let _ = self.refused.set(refusal_status(why));
        self.tx.close();
    }
}

impl GrpcSubscriber {
    /// A subscriber and the queue its stream drains; `lifetime`: how long
    /// until the member's token expires, if it has one.
    pub(super) fn new(
        bounds: Bounds,
        deadlines: &Deadlines,
        lifetime: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> (Arc<GrpcSubscriber>, queue::Receiver<Outgoing>) {
        let (tx, rx) = queue::bounded_in_bytes(bounds.messages, bounds.bytes, weight);
        let subscriber = GrpcSubscriber {
            tx,
            evicted: AtomicBool::new(false),
            refused: OnceLock::new(),
            metrics,
            deadline: deadlines.new_deadline(),
            write_timeout: bounds.write_timeout,
            expiry: lifetime.map(|lifetime| {
                let expiry = deadlines.new_deadline();
                expiry.fire_after(lifetime);
                expiry
            }),
        };
        (Arc::new(subscriber), rx)
    }

    /// Ends the stream with `status` once what is queued has gone out (the
    /// first reason given stands).
    pub(super) fn end_with(&self, status: RpcStatus) {
        let _ = self.refused.set(status);
        self.tx.close();
    }

    /// Ends the stream once what is queued has gone out, with the status
    /// given before, if any.
    pub(super) fn end(&self) {
        self.tx.close();
    }

    /// How the stream ends once its queue is closed and drained.
    fn end_status(&self) -> RpcStatus {
        if self.deadline.has_fired() {
            RpcStatus::with_message(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "too slow: write timeout".into(),
            )
        } else if self.evicted.load(Ordering::Acquire) {
            RpcStatus::with_message(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "too slow: outbound queue full".into(),
            )
        } else if let Some(status) = self.refused.get() {
            status.clone()
        } else {
            RpcStatus::ok()
        }
    }
}

/// What a queued message holds: its bytes (shared with the other members,
/// but counted whole, as each member would hold them alone).
fn weight(m: &Outgoing) -> usize {
    m.0.len()
}

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
    subscriber: &GrpcSubscriber,
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
            deadline.fire_after(STATUS_GRACE);
            match select(pin!(sink.end(status)), pin!(deadline.fired())).await {
                Either::Left((Ok(()), _)) => code,
                _ => RpcStatusCode::CANCELLED,
            }
        }
        Err(_) => RpcStatusCode::CANCELLED,
    }
}
