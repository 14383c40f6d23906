//! `ChatService`: the seed's unary `SendMessage`, and the `Chat` and
//! `Subscribe` streams through which services are members of chat rooms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use grpcio::{
    DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, Service,
    ServiceBuilder, UnarySink,
};
use log::debug;
use protobuf::Message as _;

use super::codec::{self, Checked, Incoming, Outgoing};
use super::deadline::{Deadline, Deadlines};
use super::stream::stream_out;
use super::{finish, refuse_stream};
use crate::auth::{self, Denied, Identity, Verifier};
use crate::chat::{
    self, Bucket, Delivery, Encoding, Hub, Member, Rate, Refusal, SendError, Subscriber,
};
use crate::metrics::Metrics;
use crate::proto::chat::{Response, SubscribeRequest};
use crate::queue;

/// `ChatService`: the seed's `SendMessage`, and the chat's streams.
#[derive(Clone)]
pub struct ChatServer {
    pub hub: Arc<Hub>,
    /// Checks chat tokens (`None`: anyone may join as any name).
    pub auth: Option<Arc<Verifier>>,
    pub metrics: Arc<Metrics>,
    /// `SendMessage`'s rate limit, per client connection (its peer address).
    pub senders: Arc<Mutex<Senders>>,
    pub send_rate: Rate,
    /// Members' write deadlines, and how long a member may accept nothing
    /// (`None`: forever).
    pub deadlines: Arc<Deadlines>,
    pub write_timeout: Option<Duration>,
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
        let rate = self.send_rate;
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
pub(super) struct GrpcMember {
    pub(super) tx: queue::Sender<Outgoing>,
    evicted: AtomicBool,
    /// Why the member's own message was refused, ending its stream.
    pub(super) refused: OnceLock<RpcStatus>,
    metrics: Arc<Metrics>,
    /// Fires when a write has been with C-core for `write_timeout`.
    pub(super) deadline: Arc<Deadline>,
    pub(super) write_timeout: Option<Duration>,
    /// Fires when the member's token expires.
    pub(super) expiry: Option<Arc<Deadline>>,
}

impl Subscriber for GrpcMember {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        // Encoded once per message, by whichever member comes first, and
        // shared by all of them down to C-core's writes.
        let bytes = delivery.encoded(Encoding::Protobuf, |m| {
            m.write_to_bytes().unwrap_or_default()
        });
        let len = delivery.message.text.len();
        self.tx.try_send(Outgoing(bytes))?;
        self.metrics.grpc.sent(len);
        Ok(())
    }

    fn replay(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let bytes = delivery.encoded(Encoding::Protobuf, |m| {
            m.write_to_bytes().unwrap_or_default()
        });
        self.tx.try_send_replayed(Outgoing(bytes))?;
        self.metrics.grpc.sent(delivery.message.text.len());
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

/// `SendMessage`'s answer once the message was published (or not).
fn answer(
    outcome: Result<u64, Refusal>,
    text: &str,
    metrics: &Metrics,
) -> Result<Response, RpcStatus> {
    outcome.map_err(|why| refusal_status(&why)).map(|_| {
        let reply = chat::grpc_reply(text);
        metrics.grpc.sent(reply.len());
        Response {
            reply,
            ..Default::default()
        }
    })
}

/// The status that says why a text was not said.
fn refusal_status(why: &Refusal) -> RpcStatus {
    let code = match why {
        Refusal::Unavailable => RpcStatusCode::UNAVAILABLE,
        Refusal::TooLong { .. } | Refusal::RateLimited | Refusal::TooManyRooms { .. } => {
            RpcStatusCode::RESOURCE_EXHAUSTED
        }
    };
    RpcStatus::with_message(code, why.to_string())
}

impl GrpcMember {
    /// How the stream ends once its queue is closed and drained.
    pub(super) fn end_status(&self) -> RpcStatus {
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
        resume: Option<chat::Resume>,
        identity: Option<&Identity>,
    ) -> Result<(Member, Arc<GrpcMember>, queue::Receiver<Outgoing>), RpcStatus> {
        let config = self.hub.config();
        // As a WebSocket peer's: two of the largest messages.
        let max_bytes = (config.max_text + chat::ENVELOPE).saturating_mul(2);
        let (tx, rx) = queue::bounded_in_bytes(config.send_queue, max_bytes, weight);
        let subscriber = Arc::new(GrpcMember {
            tx,
            evicted: AtomicBool::new(false),
            refused: OnceLock::new(),
            metrics: Arc::clone(&self.metrics),
            deadline: self.deadlines.new_deadline(),
            write_timeout: self.write_timeout,
            expiry: identity.map(|who| {
                let expiry = self.deadlines.new_deadline();
                expiry.rearm(who.lifetime());
                expiry
            }),
        });
        let member = self
            .hub
            .join_from(
                room,
                name,
                Arc::clone(&subscriber) as Arc<dyn Subscriber>,
                resume,
            )
            .map_err(|refusal| refusal_status(&refusal))?;
        Ok((member, subscriber, rx))
    }
}

/// The address of a call's peer, from C-core's `ipv4:ADDR:PORT` or
/// `ipv6:[ADDR]:PORT` (its brackets maybe %-escaped).
fn peer_ip(peer: &str) -> Option<std::net::IpAddr> {
    let rest = peer
        .strip_prefix("ipv4:")
        .or_else(|| peer.strip_prefix("ipv6:"))?;
    let rest = rest.replace("%5B", "[").replace("%5D", "]");
    let (host, _port) = rest.rsplit_once(':')?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Refuses a join over its address's or its identity's limit.
fn admit_join(
    server: &ChatServer,
    address: Option<std::net::IpAddr>,
    identity: Option<&Identity>,
) -> Result<(), RpcStatus> {
    let sub = identity.map(|who| who.sub.as_str());
    server.hub.admit_join(address, sub).map_err(|limited| {
        server
            .metrics
            .join_refused(limited == chat::JoinLimited::Identity);
        RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, limited.to_string())
    })
}

/// The token in a call's `authorization: Bearer` metadata.
fn token_of(ctx: &RpcContext) -> Option<String> {
    let (_, value) = ctx
        .request_headers()
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))?;
    auth::bearer(std::str::from_utf8(value).ok()?).map(str::to_owned)
}

impl ChatServer {
    /// When tokens are required, who `token` says the member is, let into
    /// `room` under `name` (empty: the token's `sub`).
    fn identify(
        &self,
        token: Option<&str>,
        room: &str,
        name: &str,
    ) -> Result<Option<Identity>, RpcStatus> {
        let Some(verifier) = &self.auth else {
            return Ok(None);
        };
        match verifier.admit(token, room, name) {
            Ok(who) => Ok(Some(who)),
            Err(denied) => {
                self.metrics.auth_failed(denied.reason());
                let code = match denied {
                    Denied::Unauthenticated(_) => RpcStatusCode::UNAUTHENTICATED,
                    Denied::Forbidden(_) => RpcStatusCode::PERMISSION_DENIED,
                };
                Err(RpcStatus::with_message(code, denied.to_string()))
            }
        }
    }
}

/// Why a read-only member's text is refused.
fn read_only() -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::PERMISSION_DENIED,
        "read-only: this token may not speak (pub: false)".into(),
    )
}

impl ChatServer {
    /// The service, registered by hand with the server-side codec.
    pub fn service(self) -> Service {
        let (mut send, mut chat, mut subscribe) = (self.clone(), self.clone(), self);
        ServiceBuilder::new()
            .add_unary_handler(&codec::SEND_MESSAGE, move |ctx, req, sink| {
                send.send_message(ctx, req, sink)
            })
            .add_duplex_streaming_handler(&codec::CHAT, move |ctx, stream, sink| {
                chat.chat(ctx, stream, sink)
            })
            .add_server_streaming_handler(&codec::SUBSCRIBE, move |ctx, req, sink| {
                subscribe.subscribe(ctx, req, sink)
            })
            .build()
    }

    fn send_message(&mut self, ctx: RpcContext, msg: Incoming, sink: UnarySink<Response>) {
        debug!(
            "grpc SendMessage from {:?}, {} bytes",
            msg.sender,
            msg.text.len()
        );
        self.metrics.grpc.received(msg.text.len());
        if let Some(status) = msg.refused.clone() {
            return finish(&ctx, sink, Err(status), &self.metrics);
        }
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
            Ok((room, sender))
        });
        let token = token_of(&ctx);
        let identified = reply.and_then(|(room, sender)| {
            match self.identify(token.as_deref(), &room, &sender)? {
                None => Ok((room, sender)),
                Some(who) if !who.publish => Err(read_only()),
                Some(who) => Ok((room, who.sub)),
            }
        });
        let (room, sender) = match identified {
            Ok(who) => who,
            Err(status) => return finish(&ctx, sink, Err(status), &self.metrics),
        };
        // Checked before anything is published: a refused call posts nothing.
        if !self.hub.log_is_shared() {
            let published = self.hub.publish(&room, &sender, &msg.text);
            let reply = answer(published, &msg.text, &self.metrics);
            return finish(&ctx, sink, reply, &self.metrics);
        }
        // A shared log's append takes a round trip: answered once the log
        // has the message, awaited off this thread.
        let (done, mut appended) = queue::bounded(1);
        let tell: chat::Done = Box::new(move |outcome| {
            let _ = done.try_send(outcome);
        });
        if let Err(why) = self.hub.publish_then(&room, &sender, &msg.text, Some(tell)) {
            return finish(&ctx, sink, Err(refusal_status(&why)), &self.metrics);
        }
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(async move {
            let outcome = appended.next().await.unwrap_or(Err(Refusal::Unavailable));
            let reply = answer(outcome, &msg.text, &metrics);
            super::finish_async(sink, reply, &metrics).await;
        });
    }

    fn chat(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<Incoming>,
        sink: DuplexSink<Outgoing>,
    ) {
        let server = self.clone();
        let token = token_of(&ctx);
        let address = peer_ip(&ctx.peer());
        ctx.spawn(async move {
            let metrics = Arc::clone(&server.metrics);
            // The first message says who and where.
            let first = match stream.next().await {
                Some(Ok(first)) => first,
                _ => return metrics.grpc_call(RpcStatusCode::CANCELLED.into()),
            };
            let checked = match first.refused.clone() {
                Some(status) => Err(status),
                None => membership(&first.room, &first.sender),
            };
            let checked = checked.and_then(|(room, name)| {
                let who = server.identify(token.as_deref(), &room, &name)?;
                admit_join(&server, address, who.as_ref())?;
                Ok((room, name, who))
            });
            let (room, name, identity) = match checked {
                Ok(who) => who,
                Err(status) => {
                    let code = status.code();
                    let _ = sink.fail(status).await;
                    return metrics.grpc_call(code.into());
                }
            };
            let resume = first.since.map(|since| chat::Resume {
                since,
                epoch: first.epoch.clone(),
            });
            let name = identity.as_ref().map_or(name, |who| who.sub.clone());
            let may_speak = identity.as_ref().is_none_or(|who| who.publish);
            let (member, subscriber, rx) =
                match server.member(&room, &name, resume, identity.as_ref()) {
                    Ok(joined) => joined,
                    Err(status) => {
                        let code = status.code();
                        let _ = sink.fail(status).await;
                        return metrics.grpc_call(code.into());
                    }
                };
            let speaker = Arc::clone(&subscriber);
            // Borrowed, not moved: the request stream must outlive the call's
            // status, or dropping it would cancel the call first.
            let requests = &mut stream;
            let listening = async move {
                let mut incoming = Some(first);
                while let Some(message) = incoming.take() {
                    if let Some(status) = message.refused.clone() {
                        let _ = speaker.refused.set(status);
                        break;
                    }
                    if !message.text.is_empty() && !may_speak {
                        let _ = speaker.refused.set(read_only());
                        break;
                    }
                    if identity.as_ref().is_some_and(Identity::has_expired) {
                        let expired = RpcStatus::with_message(
                            RpcStatusCode::UNAUTHENTICATED,
                            "token expired".into(),
                        );
                        let _ = speaker.refused.set(expired);
                        break;
                    }
                    if !message.text.is_empty() {
                        server.metrics.grpc.received(message.text.len());
                        if let Err(refusal) = member.say(&message.text) {
                            if refusal == Refusal::RateLimited {
                                server
                                    .metrics
                                    .grpc_rate_limited
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = speaker.refused.set(refusal_status(&refusal));
                            break;
                        }
                    }
                    incoming = requests.next().await.and_then(Result::ok);
                }
                // The client is done talking (or was refused): it leaves, and
                // its stream ends.
                drop(member);
                speaker.tx.close();
            };
            let code = stream_out(sink, rx, &subscriber, listening).await;
            metrics.grpc_call(code.into());
        });
    }

    fn subscribe(
        &mut self,
        ctx: RpcContext,
        req: Checked<SubscribeRequest>,
        sink: ServerStreamingSink<Outgoing>,
    ) {
        let token = token_of(&ctx);
        let checked = req.0.and_then(|req| {
            let (room, name) = membership(&req.room, &req.name)?;
            Ok((req, room, name))
        });
        let checked = checked.and_then(|(req, room, name)| {
            let who = self.identify(token.as_deref(), &room, &name)?;
            admit_join(self, peer_ip(&ctx.peer()), who.as_ref())?;
            Ok((req, room, name, who))
        });
        let (req, room, name, identity) = match checked {
            Ok(who) => who,
            Err(status) => return refuse_stream(&ctx, sink, status, &self.metrics),
        };
        let resume = req.since.map(|since| chat::Resume {
            since,
            epoch: req.epoch.clone(),
        });
        let name = identity.as_ref().map_or(name, |who| who.sub.clone());
        let (member, subscriber, rx) = match self.member(&room, &name, resume, identity.as_ref()) {
            Ok(joined) => joined,
            Err(status) => return refuse_stream(&ctx, sink, status, &self.metrics),
        };
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(async move {
            let code = stream_out(sink, rx, &subscriber, std::future::pending::<()>()).await;
            drop(member);
            metrics.grpc_call(code.into());
        });
    }
}
