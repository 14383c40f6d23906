//! The gRPC server: gRPC C-core through grpcio. Handlers run on grpcio's
//! completion-queue threads, so they only compute and hand the reply back;
//! nothing here blocks.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use futures_util::{Sink, SinkExt, StreamExt};
use grpcio::{
    ChannelBuilder, DuplexSink, Environment, RequestStream, RpcContext, RpcStatus, RpcStatusCode,
    ServerBuilder, ServerCredentials, ServerStreamingSink, UnarySink, WriteFlags,
};
use log::{debug, info, warn};

use crate::chat::{self, Delivery, Hub, Member, Refused, Subscriber};
use crate::metrics::Metrics;
use crate::proto::chat::{Message, Response, SubscribeRequest};
use crate::proto::chat_grpc::{self, ChatService};
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::health_grpc;
use crate::queue;

/// Limits of the gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Completion-queue (poll) threads.
    pub threads: usize,
    /// Largest message received or sent; larger ones fail with RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// Concurrent calls per client connection.
    pub max_streams: u32,
    /// Idle time after which a client connection is pinged.
    pub keepalive_time: Duration,
    /// Time a keepalive ping has to be answered.
    pub keepalive_timeout: Duration,
    /// Messages queued for a slow stream before it is dropped.
    pub send_queue: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            threads: default_poll_threads(),
            max_message_size: 4 << 20,
            max_streams: 100,
            keepalive_time: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            send_queue: 256,
        }
    }
}

/// Hands a unary reply to grpcio and counts how the call ended.
fn finish<T>(
    ctx: &RpcContext,
    sink: UnarySink<T>,
    reply: Result<T, RpcStatus>,
    metrics: &Arc<Metrics>,
) {
    let metrics = Arc::clone(metrics);
    let code = reply
        .as_ref()
        .map_or_else(|s| s.code(), |_| RpcStatusCode::OK);
    let sent = match reply {
        Ok(reply) => sink.success(reply),
        Err(status) => sink.fail(status),
    };
    ctx.spawn(async move {
        match sent.await {
            Ok(()) => metrics.grpc_call(code.into()),
            Err(e) => {
                debug!("grpc reply not delivered: {e}");
                metrics.grpc_call(RpcStatusCode::CANCELLED.into());
            }
        }
    });
}

/// `ChatService`: the seed's `SendMessage`, and the chat's streams.
#[derive(Clone)]
pub struct ChatServer {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    send_queue: usize,
}

/// A gRPC stream's way out of the hub: a bounded queue the call's task drains.
struct GrpcMember {
    tx: queue::Sender<Message>,
    evicted: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Subscriber for GrpcMember {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), Refused> {
        let message = delivery.message.clone();
        let len = message.text.len();
        match self.tx.try_send(message) {
            Ok(()) => {
                self.metrics.grpc.sent(len);
                Ok(())
            }
            Err(queue::SendError::Full) => Err(Refused::Full),
            Err(queue::SendError::Gone) => Err(Refused::Gone),
        }
    }

    fn evicted(&self) {
        self.evicted.store(true, Ordering::Release);
        self.tx.close();
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
        } else {
            RpcStatus::ok()
        }
    }
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
        let (tx, rx) = queue::bounded(self.send_queue);
        let subscriber = Arc::new(GrpcMember {
            tx,
            evicted: AtomicBool::new(false),
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
        let reply = membership(&msg.room, &msg.sender).map(|(room, sender)| {
            self.hub.publish(&room, &sender, &msg.text);
            let reply = chat::grpc_reply(&msg.text);
            self.metrics.grpc.sent(reply.len());
            Response {
                reply,
                ..Default::default()
            }
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
            let closer = subscriber.tx.clone();
            let listening = async move {
                let mut incoming = Some(first);
                while let Some(message) = incoming.take() {
                    if !message.text.is_empty() {
                        server.metrics.grpc.received(message.text.len());
                        member.say(&message.text);
                    }
                    incoming = stream.next().await.and_then(Result::ok);
                }
                // The client is done talking: it leaves, and its stream ends.
                drop(member);
                closer.close();
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
            let code = stream_out(sink, rx, &subscriber, std::future::pending()).await;
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
/// ends the call with the right status, which it returns.
async fn stream_out(
    mut sink: impl OutSink,
    rx: queue::Receiver<Message>,
    subscriber: &GrpcMember,
    listening: impl Future<Output = ()>,
) -> RpcStatusCode {
    let mut outgoing = rx.map(|m| Ok((m, WriteFlags::default())));
    let sending = sink.send_all(&mut outgoing);
    let sent = match select(pin!(sending), pin!(listening)).await {
        Either::Left((sent, _listening)) => sent,
        // The client stopped talking: the queue was closed; drain it.
        Either::Right(((), sending)) => sending.await,
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

/// Services `grpc.health.v1.Health` reports on; `""` is the whole server.
const HEALTH_SERVICES: [&str; 3] = ["", "chat.ChatService", "grpc.health.v1.Health"];
/// Status updates a watcher may fall behind by before it is dropped.
const WATCH_QUEUE: usize = 8;

/// Serving status and the `Watch` streams to tell when it changes.
pub struct Health {
    state: Mutex<HealthState>,
}

struct HealthState {
    serving: bool,
    watchers: Vec<(String, queue::Sender<HealthCheckResponse>)>,
}

fn health_response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
        ..Default::default()
    }
}

impl Health {
    fn new() -> Health {
        Health {
            state: Mutex::new(HealthState {
                serving: true,
                watchers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HealthState> {
        crate::lock(&self.state)
    }

    fn status(serving: bool, service: &str) -> Option<ServingStatus> {
        HEALTH_SERVICES.contains(&service).then_some(if serving {
            ServingStatus::SERVING
        } else {
            ServingStatus::NOT_SERVING
        })
    }

    /// Sets the status of every service and tells every watcher.
    pub fn set_serving(&self, serving: bool) {
        let mut state = self.lock();
        state.serving = serving;
        state
            .watchers
            .retain(|(service, tx)| match Health::status(serving, service) {
                Some(status) => tx.try_send(health_response(status)).is_ok(),
                None => !tx.is_gone(),
            });
    }
}

/// `grpc.health.v1.Health`, from the standard health proto.
#[derive(Clone)]
pub struct HealthServer {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl health_grpc::Health for HealthServer {
    fn check(
        &mut self,
        ctx: RpcContext,
        req: HealthCheckRequest,
        sink: UnarySink<HealthCheckResponse>,
    ) {
        let serving = self.health.lock().serving;
        let reply = match Health::status(serving, &req.service) {
            Some(status) => Ok(health_response(status)),
            None => Err(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("unknown service '{}'", req.service),
            )),
        };
        finish(&ctx, sink, reply, &self.metrics);
    }

    fn watch(
        &mut self,
        ctx: RpcContext,
        req: HealthCheckRequest,
        mut sink: ServerStreamingSink<HealthCheckResponse>,
    ) {
        let (tx, rx) = queue::bounded(WATCH_QUEUE);
        {
            let mut state = self.health.lock();
            let first = Health::status(state.serving, &req.service)
                .unwrap_or(ServingStatus::SERVICE_UNKNOWN);
            // A fresh queue has room for the first status.
            let _ = tx.try_send(health_response(first));
            state.watchers.retain(|(_, tx)| !tx.is_gone());
            state.watchers.push((req.service, tx));
        }
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(async move {
            let mut updates = rx.map(|status| Ok((status, WriteFlags::default())));
            let ended = match sink.send_all(&mut updates).await {
                Ok(()) => sink.close().await,
                Err(e) => Err(e),
            };
            let code = match ended {
                Ok(()) => RpcStatusCode::OK,
                Err(grpcio::Error::RpcFinished(Some(status))) => status.code(),
                Err(_) => RpcStatusCode::CANCELLED,
            };
            metrics.grpc_call(code.into());
        });
    }
}

/// A started gRPC server; dropping it shuts the server down at once.
pub struct GrpcServer {
    server: grpcio::Server,
    health: Arc<Health>,
    addr: String,
}

/// Half the CPU cores, at least one: the WebSocket threads and fan-out need
/// the other half, and each extra poll thread adds hand-offs. C-core matches
/// an incoming call to the completion queues in turn, so with several, the
/// thread that read a request often has to wake another to run it: on 2
/// cores, one poll thread answered a unary call at 4.4x the TCP floor's p50
/// against 5.7x with two (and 10% fewer calls per second at 32 callers).
fn default_poll_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl GrpcServer {
    /// Binds `addr` (`host:port`, port 0 picks a free one) and starts serving.
    pub fn start(
        addr: &str,
        config: &GrpcConfig,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
    ) -> Result<GrpcServer, String> {
        let (host, _) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("invalid gRPC address '{addr}': expected HOST:PORT"))?;
        let env = Arc::new(Environment::new(config.threads.max(1)));
        let max_len = i32::try_from(config.max_message_size).unwrap_or(i32::MAX);
        // C-core sets SO_REUSEPORT by default, which would let a second papo
        // silently share a port that is already in use.
        let args = ChannelBuilder::new(Arc::clone(&env))
            .reuse_port(false)
            .max_receive_message_len(max_len)
            .max_send_message_len(max_len)
            .max_concurrent_stream(i32::try_from(config.max_streams).unwrap_or(i32::MAX))
            .keepalive_time(config.keepalive_time)
            .keepalive_timeout(config.keepalive_timeout)
            // Idle connections are the ones keepalive exists for.
            .keepalive_permit_without_calls(true)
            .build_args();
        let health = Arc::new(Health::new());
        let chat = ChatServer {
            hub,
            metrics: Arc::clone(&metrics),
            send_queue: config.send_queue,
        };
        let health_server = HealthServer {
            health: Arc::clone(&health),
            metrics,
        };
        let mut server = ServerBuilder::new(env)
            .channel_args(args)
            .register_service(chat_grpc::create_chat_service(chat))
            .register_service(health_grpc::create_health(health_server))
            .build()
            .map_err(|e| format!("cannot create the gRPC server: {e}"))?;
        let port = server
            .add_listening_port(addr, ServerCredentials::insecure())
            .map_err(|_| {
                format!("cannot listen for gRPC on {addr}: address in use or not available")
            })?;
        server.start();
        let addr = format!("{host}:{port}");
        info!("grpc listening on {addr}");
        Ok(GrpcServer {
            server,
            health,
            addr,
        })
    }

    /// The bound address, with the port the system picked for port 0.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Reports NOT_SERVING, stops taking calls, and lets the calls in flight
    /// finish for up to `drain`; those still running then are cancelled.
    /// Returns whether every call finished in time.
    pub fn shutdown(mut self, drain: Duration) -> bool {
        self.health.set_serving(false);
        let mut stopped = pin!(self.server.shutdown());
        if block_on_until(stopped.as_mut(), Some(Instant::now() + drain)).is_some() {
            info!("grpc drained");
            return true;
        }
        warn!("grpc calls still running after {drain:?}: cancelling them");
        self.server.cancel_all_calls();
        let _ = block_on_until(stopped, None);
        false
    }
}

/// Wakes a thread parked in [`block_on_until`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` on this thread until it completes, or until `deadline`
/// (then `None`). Enough of an executor for the few futures papo waits on
/// outside grpcio's threads.
pub fn block_on_until<F: Future>(
    mut future: Pin<&mut F>,
    deadline: Option<Instant>,
) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        match deadline {
            None => thread::park(),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                thread::park_timeout(left);
            }
        }
    }
}

/// Runs `future` on this thread to completion.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    loop {
        if let Some(output) = block_on_until(future.as_mut(), None) {
            return output;
        }
    }
}
