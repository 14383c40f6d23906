//! `ChatService`: the seed's unary `SendMessage`, and the `Chat` and
//! `Subscribe` streams through which services are members of chat rooms,
//! in the proto's order; then what the three share (who a caller is, the
//! limits a call must pass).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use grpcio::{
    DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, Service,
    ServiceBuilder, UnarySink,
};
use log::debug;
use protobuf::Message as _;

use super::codec::{self, Checked, Incoming, Outgoing};
use super::deadline::Deadlines;
use super::reply::{finish, finish_async, read_only, refusal_status, refuse_stream};
use super::stream::{stream_out, Bounds, GrpcSubscriber};
use crate::auth::{self, Denied, Identity, Verifier};
use crate::chat::{self, Bucket, Hub, JoinLimited, Member, Rate, Refusal, Resume, Subscriber};
use crate::metrics::Metrics;
use crate::proto::chat::{Response, SubscribeRequest};
use crate::queue;

/// The seed's reply to `SendMessage`: `Mensagem recebida: <text>`.
pub fn seed_reply(text: &str) -> String {
    format!("Mensagem recebida: {text}")
}

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

/// Who speaks where: a checked room and a name (the token's `sub` when
/// tokens are required).
struct Speaker {
    room: String,
    name: String,
    identity: Option<Identity>,
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

    /// The seed's call: the text said in its room, answered once it is.
    fn send_message(&mut self, ctx: RpcContext, msg: Checked<Incoming>, sink: UnarySink<Response>) {
        let msg = match msg.0 {
            Ok(msg) => msg,
            Err(status) => return finish(&ctx, sink, Err(status), &self.metrics),
        };
        debug!(
            "grpc SendMessage from {:?}, {} bytes",
            msg.sender,
            msg.text.len()
        );
        self.metrics.grpc.received(msg.size);
        let speaker = match self.sender_of(&ctx, &msg) {
            Ok(speaker) => speaker,
            Err(status) => return finish(&ctx, sink, Err(status), &self.metrics),
        };
        // Checked before anything is published: a refused call posts nothing.
        if !self.hub.log_is_shared() {
            let published = self.hub.publish(&speaker.room, &speaker.name, &msg.text);
            let reply = answer(published, &msg.text, &self.metrics);
            return finish(&ctx, sink, reply, &self.metrics);
        }
        // A shared log's append takes a round trip: answered once the log
        // has the message, awaited off this thread.
        let (done, mut appended) = queue::bounded(1);
        let tell: chat::Done = Box::new(move |outcome| {
            let _ = done.try_send(outcome);
        });
        let publishing = self
            .hub
            .publish_then(&speaker.room, &speaker.name, &msg.text, Some(tell));
        if let Err(why) = publishing {
            return finish(&ctx, sink, Err(refusal_status(&why)), &self.metrics);
        }
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(async move {
            let outcome = appended.next().await.unwrap_or(Err(Refusal::Unavailable));
            let reply = answer(outcome, &msg.text, &metrics);
            finish_async(sink, reply, &metrics).await;
        });
    }

    /// A member that talks and listens: its first message says who and
    /// where (and may say something), the rest are said in the room.
    fn chat(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<Checked<Incoming>>,
        sink: DuplexSink<Outgoing>,
    ) {
        let server = self.clone();
        let token = token_of(&ctx);
        let address = peer_ip(&ctx.peer());
        ctx.spawn(async move {
            let metrics = Arc::clone(&server.metrics);
            let Some(Ok(Checked(first))) = stream.next().await else {
                return metrics.grpc_call(RpcStatusCode::CANCELLED.into());
            };
            let joining = first.and_then(|first| {
                let speaker =
                    server.speaker(token.as_deref(), address, &first.room, &first.sender)?;
                let resume = first.since.map(|since| Resume {
                    since,
                    epoch: first.epoch.clone(),
                });
                let (member, subscriber, rx) = server.join(&speaker, resume)?;
                Ok((first, speaker.identity, member, subscriber, rx))
            });
            let (first, identity, member, subscriber, rx) = match joining {
                Ok(joined) => joined,
                Err(status) => {
                    let code = status.code();
                    let _ = sink.fail(status).await;
                    return metrics.grpc_call(code.into());
                }
            };
            let speaking = Arc::clone(&subscriber);
            // Borrowed, not moved: the request stream must outlive the call's
            // status, or dropping it would cancel the call first.
            let requests = &mut stream;
            let listening = async move {
                let mut incoming = Some(Checked(Ok(first)));
                while let Some(Checked(message)) = incoming.take() {
                    let said = message.and_then(|m| server.say(&member, identity.as_ref(), &m));
                    if let Err(status) = said {
                        speaking.end_with(status);
                        break;
                    }
                    incoming = requests.next().await.and_then(Result::ok);
                }
                // The client is done talking (or was refused): it leaves, and
                // its stream ends.
                drop(member);
                speaking.end();
            };
            let code = stream_out(sink, rx, &subscriber, listening).await;
            metrics.grpc_call(code.into());
        });
    }

    /// A member that only listens.
    fn subscribe(
        &mut self,
        ctx: RpcContext,
        req: Checked<SubscribeRequest>,
        sink: ServerStreamingSink<Outgoing>,
    ) {
        let token = token_of(&ctx);
        let joining = req.0.and_then(|req| {
            let address = peer_ip(&ctx.peer());
            let speaker = self.speaker(token.as_deref(), address, &req.room, &req.name)?;
            let resume = req.since.map(|since| Resume {
                since,
                epoch: req.epoch.clone(),
            });
            self.join(&speaker, resume)
        });
        let (member, subscriber, rx) = match joining {
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

    /// Who a `SendMessage` speaks as, and where: its names checked, its
    /// connection within its rate, its token (if required) one that may
    /// speak.
    fn sender_of(&self, ctx: &RpcContext, msg: &Incoming) -> Result<Speaker, RpcStatus> {
        let (room, name) = membership(&msg.room, &msg.sender)?;
        if !self.may_send(ctx) {
            self.metrics
                .grpc_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            return Err(refusal_status(&Refusal::RateLimited));
        }
        let token = token_of(ctx);
        match self.identify(token.as_deref(), &room, &name)? {
            None => Ok(Speaker {
                room,
                name,
                identity: None,
            }),
            Some(who) if !who.publish => Err(read_only()),
            Some(who) => Ok(Speaker {
                room,
                name: who.sub.clone(),
                identity: Some(who),
            }),
        }
    }

    /// Who a stream's member is, and where: its names checked, its token (if
    /// required) good, its join within its address's and identity's limits.
    fn speaker(
        &self,
        token: Option<&str>,
        address: Option<IpAddr>,
        room: &str,
        name: &str,
    ) -> Result<Speaker, RpcStatus> {
        let (room, name) = membership(room, name)?;
        let identity = self.identify(token, &room, &name)?;
        let sub = identity.as_ref().map(|who| who.sub.as_str());
        self.hub.admit_join(address, sub).map_err(|limited| {
            self.metrics.join_refused(limited == JoinLimited::Identity);
            RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, limited.to_string())
        })?;
        let name = identity.as_ref().map_or(name, |who| who.sub.clone());
        Ok(Speaker {
            room,
            name,
            identity,
        })
    }

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
        verifier
            .admit(token, room, name)
            .map(Some)
            .map_err(|denied| {
                self.metrics.auth_failed(denied.reason());
                let code = match denied {
                    Denied::Unauthenticated(_) => RpcStatusCode::UNAUTHENTICATED,
                    Denied::Forbidden(_) => RpcStatusCode::PERMISSION_DENIED,
                };
                RpcStatus::with_message(code, denied.to_string())
            })
    }

    /// Adds a stream's member to its room: the member, its subscriber and
    /// the queue its stream drains.
    fn join(
        &self,
        speaker: &Speaker,
        resume: Option<Resume>,
    ) -> Result<(Member, Arc<GrpcSubscriber>, queue::Receiver<Outgoing>), RpcStatus> {
        let config = self.hub.config();
        let bounds = Bounds {
            messages: config.send_queue,
            // As a WebSocket peer's: two of the largest messages.
            bytes: (config.max_text + chat::ENVELOPE).saturating_mul(2),
            write_timeout: self.write_timeout,
        };
        let lifetime = speaker.identity.as_ref().map(Identity::lifetime);
        let metrics = Arc::clone(&self.metrics);
        let (subscriber, rx) = GrpcSubscriber::new(bounds, &self.deadlines, lifetime, metrics);
        let member = self
            .hub
            .join_from(
                &speaker.room,
                &speaker.name,
                Arc::clone(&subscriber) as Arc<dyn Subscriber>,
                resume,
            )
            .map_err(|refusal| refusal_status(&refusal))?;
        Ok((member, subscriber, rx))
    }

    /// Says what a `Chat` member sent, if anything; an error ends its stream.
    fn say(
        &self,
        member: &Member,
        identity: Option<&Identity>,
        message: &Incoming,
    ) -> Result<(), RpcStatus> {
        let says_something = !message.text.is_empty();
        if says_something && identity.is_some_and(|who| !who.publish) {
            return Err(read_only());
        }
        if identity.is_some_and(Identity::has_expired) {
            return Err(RpcStatus::with_message(
                RpcStatusCode::UNAUTHENTICATED,
                "token expired".into(),
            ));
        }
        if !says_something {
            return Ok(());
        }
        self.metrics.grpc.received(message.size);
        member.say(&message.text).map(drop).map_err(|refusal| {
            if refusal == Refusal::RateLimited {
                self.metrics
                    .grpc_rate_limited
                    .fetch_add(1, Ordering::Relaxed);
            }
            refusal_status(&refusal)
        })
    }

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

/// `SendMessage`'s answer once the message was published (or not).
fn answer(
    outcome: Result<u64, Refusal>,
    text: &str,
    metrics: &Metrics,
) -> Result<Response, RpcStatus> {
    outcome.map_err(|why| refusal_status(&why)).map(|_| {
        let response = Response {
            reply: seed_reply(text),
            ..Default::default()
        };
        metrics.grpc.sent(response.compute_size() as usize);
        response
    })
}

/// The room and member name a call asks for, checked.
fn membership(room: &str, name: &str) -> Result<(String, String), RpcStatus> {
    let invalid = |e: String| RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e);
    let room = chat::room_name(room).map_err(invalid)?;
    let name = chat::member_name(name).map_err(invalid)?;
    Ok((room.to_owned(), name.to_owned()))
}

/// The address of a call's peer, from C-core's `ipv4:ADDR:PORT` or
/// `ipv6:[ADDR]:PORT` (its brackets maybe %-escaped).
fn peer_ip(peer: &str) -> Option<IpAddr> {
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

/// The token in a call's `authorization: Bearer` metadata.
fn token_of(ctx: &RpcContext) -> Option<String> {
    let (_, value) = ctx
        .request_headers()
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))?;
    auth::bearer(std::str::from_utf8(value).ok()?).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_reply_is_mensagem_recebida_and_the_text() {
        assert_eq!(seed_reply("Olá, gRPC!"), "Mensagem recebida: Olá, gRPC!");
    }
}
