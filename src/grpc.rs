//! The gRPC server: gRPC C-core through grpcio. Handlers run on grpcio's
//! completion-queue threads, so they only compute and hand the reply back;
//! nothing here blocks.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use grpcio::{
    ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, ServerBuilder,
    ServerCredentials, ServerStreamingSink, UnarySink, WriteFlags,
};
use log::{debug, info, warn};

use crate::chat;
use crate::metrics::Metrics;
use crate::proto::chat::{Message, Response};
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
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            threads: thread::available_parallelism().map_or(1, |n| n.get()),
            max_message_size: 4 << 20,
            max_streams: 100,
            keepalive_time: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
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

/// The seed's `ChatService`.
#[derive(Clone)]
pub struct ChatServer {
    metrics: Arc<Metrics>,
}

impl ChatService for ChatServer {
    fn send_message(&mut self, ctx: RpcContext, msg: Message, sink: UnarySink<Response>) {
        debug!(
            "grpc SendMessage from {:?}, {} bytes",
            msg.sender,
            msg.text.len()
        );
        self.metrics.grpc.received(msg.text.len());
        let reply = chat::grpc_reply(&msg.text);
        self.metrics.grpc.sent(reply.len());
        let reply = Response {
            reply,
            ..Default::default()
        };
        finish(&ctx, sink, Ok(reply), &self.metrics);
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

impl GrpcServer {
    /// Binds `addr` (`host:port`, port 0 picks a free one) and starts serving.
    pub fn start(
        addr: &str,
        config: &GrpcConfig,
        metrics: Arc<Metrics>,
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
            metrics: Arc::clone(&metrics),
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
