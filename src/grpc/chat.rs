//! `ChatService`: the seed's unary `SendMessage`, and the `Chat` and
//! `Subscribe` streams through which services are members of chat rooms.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures_util::future::{select, Either};
use futures_util::{Sink, SinkExt, StreamExt};
use grpcio::{
    DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink,
    UnarySink, WriteFlags,
};
use log::debug;

use super::finish;
use crate::chat::{self, Bucket, Delivery, Hub, Member, Refusal, SendError, Subscriber};
use crate::metrics::Metrics;
use crate::proto::chat::{Message, Response, SubscribeRequest};
use crate::proto::chat_grpc::ChatService;
use crate::queue;

/// `ChatService`: the seed's `SendMessage`, and the chat's streams.
#[derive(Clone)]
pub struct ChatServer {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// `SendMessage`'s rate limit, per client connection (its peer address).
    pub senders: Arc<Mutex<Senders>>,
}

/// The `SendMessage` buckets of the connections that sent lately.
#[derive(Default)]
pub struct Senders {
    buckets: HashMap<String, Bucket>,
    /// Size at which full buckets, which say nothing a new one would not,
    /// are next forgotten: twice what was kept last time, so the sweep costs
    /// each call a constant share however many connections there are.
    sweep_at: usize,
}

/// The fewest buckets kept before a sweep.
const SENDERS_KEPT: usize = 1024;

impl ChatServer {
    /// Takes a token from the bucket of the call's connection.
    fn may_send(&self, ctx: &RpcContext) -> bool {
        let rate = self.hub.config().rate;
        if rate.per_second == 0 {
            return true;
        }
        let peer = ctx.peer();
        let now = Instant::now();
        let mut senders = crate::lock(&self.senders);
        if senders.buckets.len() >= senders.sweep_at {
            senders.buckets.retain(|_, bucket| !bucket.is_full(now));
            senders.sweep_at = (senders.buckets.len() * 2).max(SENDERS_KEPT);
        }
        senders
            .buckets
            .entry(peer)
            .or_insert_with(|| Bucket::new(rate, now))
            .take(now)
    }
}

/// A gRPC stream's way out of the hub: a bounded queue the call's task drains.
struct GrpcMember {
    tx: queue::Sender<Message>,
    evicted: AtomicBool,
    /// Why the member's own message was refused, ending its stream.
    refused: OnceLock<String>,
    metrics: Arc<Metrics>,
}

impl Subscriber for GrpcMember {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let message = delivery.message.clone();
        let len = message.text.len();
        self.tx.try_send(message)?;
        self.metrics.grpc.sent(len);
        Ok(())
    }

    fn evicted(&self) {
        self.evicted.store(true, Ordering::Release);
        self.tx.close_now();
    }
}

impl GrpcMember {
    /// How the stream ends once its queue is closed and drained.
    fn end_status(&self) -> RpcStatus {
        if self.evicted.load(Ordering::Acquire) {
            RpcStatus::with_message(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "too slow: outbound queue full".into(),
            )
        } else if let Some(why) = self.refused.get() {
            RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, why.clone())
        } else {
            RpcStatus::ok()
        }
    }
}

/// What a queued message holds, near enough: its strings.
fn weight(m: &Message) -> usize {
    m.text.len() + m.sender.len() + m.room.len() + m.members.iter().map(String::len).sum::<usize>()
}

/// The room and member name a stream asks for, checked.
fn membership(room: &str, name: &str) -> Result<(String, String), RpcStatus> {
    let room = chat::room_name(room)
        .map_err(|e| RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e))?;
    let name = chat::member_name(name)
        .map_err(|e| RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e))?;
    Ok((room.to_owned(), name.to_owned()))
}

impl ChatServer {
    fn member(
        &self,
        room: &str,
        name: &str,
    ) -> (Member, Arc<GrpcMember>, queue::Receiver<Message>) {
        let config = self.hub.config();
        // As a WebSocket peer's: two of the largest messages.
        let max_bytes = (config.max_text + chat::ENVELOPE).saturating_mul(2);
        let (tx, rx) = queue::bounded_in_bytes(config.send_queue, max_bytes, weight);
        let subscriber = Arc::new(GrpcMember {
            tx,
            evicted: AtomicBool::new(false),
            refused: OnceLock::new(),
            metrics: Arc::clone(&self.metrics),
        });
        let member = self
            .hub
            .join(room, name, Arc::clone(&subscriber) as Arc<dyn Subscriber>);
        (member, subscriber, rx)
    }
}

impl ChatService for ChatServer {
    fn send_message(&mut self, ctx: RpcContext, msg: Message, sink: UnarySink<Response>) {
        debug!(
            "grpc SendMessage from {:?}, {} bytes",
            msg.sender,
            msg.text.len()
        );
        self.metrics.grpc.received(msg.text.len());
        let reply = membership(&msg.room, &msg.sender).and_then(|(room, sender)| {
            if !self.may_send(&ctx) {
                self.metrics
                    .grpc_rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                let why = Refusal::RateLimited.to_string();
                return Err(RpcStatus::with_message(
                    RpcStatusCode::RESOURCE_EXHAUSTED,
                    why,
                ));
            }
            // Checked before anything is published: a refused call posts nothing.
            self.hub.publish(&room, &sender, &msg.text).map_err(|e| {
                RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, e.to_string())
            })?;
            let reply = chat::grpc_reply(&msg.text);
            self.metrics.grpc.sent(reply.len());
            Ok(Response {
                reply,
                ..Default::default()
            })
        });
        finish(&ctx, sink, reply, &self.metrics);
    }

    fn chat(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<Message>,
        sink: DuplexSink<Message>,
    ) {
        let server = self.clone();
        ctx.spawn(async move {
            let metrics = Arc::clone(&server.metrics);
            // The first message says who and where.
            let first = match stream.next().await {
                Some(Ok(first)) => first,
                _ => return metrics.grpc_call(RpcStatusCode::CANCELLED.into()),
            };
            let (room, name) = match membership(&first.room, &first.sender) {
                Ok(who) => who,
                Err(status) => {
                    let code = status.code();
                    let _ = sink.fail(status).await;
                    return metrics.grpc_call(code.into());
                }
            };
            let (member, subscriber, rx) = server.member(&room, &name);
            let speaker = Arc::clone(&subscriber);
            let listening = async move {
                let mut incoming = Some(first);
                let mut refused = false;
                while let Some(message) = incoming.take() {
                    if !message.text.is_empty() {
                        server.metrics.grpc.received(message.text.len());
                        if let Err(refusal) = member.say(&message.text) {
                            if refusal == Refusal::RateLimited {
                                server
                                    .metrics
                                    .grpc_rate_limited
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = speaker.refused.set(refusal.to_string());
                            refused = true;
                            break;
                        }
                    }
                    incoming = stream.next().await.and_then(Result::ok);
                }
                // The client is done talking (or was refused): it leaves, and
                // its stream ends.
                drop(member);
                speaker.tx.close();
                refused.then_some(stream)
            };
            let code = stream_out(sink, rx, &subscriber, listening).await;
            metrics.grpc_call(code.into());
        });
    }

    fn subscribe(
        &mut self,
        ctx: RpcContext,
        req: SubscribeRequest,
        sink: ServerStreamingSink<Message>,
    ) {
        let (room, name) = match membership(&req.room, &req.name) {
            Ok(who) => who,
            Err(status) => {
                let metrics = Arc::clone(&self.metrics);
                let code = status.code();
                return ctx.spawn(async move {
                    let _ = sink.fail(status).await;
                    metrics.grpc_call(code.into());
                });
            }
        };
        let (member, subscriber, rx) = self.member(&room, &name);
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(async move {
            let code = stream_out(sink, rx, &subscriber, std::future::pending::<()>()).await;
            drop(member);
            metrics.grpc_call(code.into());
        });
    }
}

/// A streaming sink papo feeds: grpcio's server-streaming and duplex sinks.
trait OutSink: Sink<(Message, WriteFlags), Error = grpcio::Error> + Unpin {
    fn end(self, status: RpcStatus) -> impl Future<Output = grpcio::Result<()>>;
}

impl OutSink for ServerStreamingSink<Message> {
    async fn end(mut self, status: RpcStatus) -> grpcio::Result<()> {
        match status.code() {
            RpcStatusCode::OK => self.close().await,
            _ => self.fail(status).await,
        }
    }
}

impl OutSink for DuplexSink<Message> {
    async fn end(mut self, status: RpcStatus) -> grpcio::Result<()> {
        match status.code() {
            RpcStatusCode::OK => self.close().await,
            _ => self.fail(status).await,
        }
    }
}

/// Streams a member's queue out until it is closed (the member left or was
/// dropped) or the client goes away, running `listening` alongside; then
/// ends the call with the right status, which it returns. What `listening`
/// returns (the request stream, when the member was refused) is kept until
/// the call has ended: dropping it first would cancel the call.
async fn stream_out<K>(
    mut sink: impl OutSink,
    rx: queue::Receiver<Message>,
    subscriber: &GrpcMember,
    listening: impl Future<Output = K>,
) -> RpcStatusCode {
    let mut outgoing = rx.map(|m| Ok((m, WriteFlags::default())));
    let sending = sink.send_all(&mut outgoing);
    let (sent, _kept) = match select(pin!(sending), pin!(listening)).await {
        Either::Left((sent, _listening)) => (sent, None),
        // The client stopped talking: the queue was closed; drain it.
        Either::Right((kept, sending)) => (sending.await, Some(kept)),
    };
    drop(outgoing);
    let status = subscriber.end_status();
    let code = status.code();
    match sent {
        Ok(()) => match sink.end(status).await {
            Ok(()) => code,
            Err(_) => RpcStatusCode::CANCELLED,
        },
        Err(_) => RpcStatusCode::CANCELLED,
    }
}
