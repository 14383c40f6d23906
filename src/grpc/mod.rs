//! The gRPC server: gRPC C-core through grpcio. Handlers run on grpcio's
//! completion-queue threads, so they only compute and hand the reply back;
//! nothing here blocks.
//!
//! | file | concern |
//! |---|---|
//! | `mod` | limits, starting and draining the server, counting calls |
//! | `accept` | the port's accept loop, its connection limit and its handshake deadline |
//! | `preface` | what a connection must send before C-core gets it: the HTTP/2 preface and settings |
//! | `chat` | `ChatService`: the seed's `SendMessage` and the chat streams |
//! | `stream` | a stream's member: its subscriber, its queue written out, its status |
//! | `reply` | how a call ends: unary replies, refused streams, statuses, counted |
//! | `deadline` | streams' write deadlines and token expiry, fired by the `grpc-deadlines` thread |
//! | `relay` | gRPC over TLS: papo's TLS (rustls), relayed to C-core in plaintext |
//! | `corelog` | C-core's own log lines, rate-limited |
//! | `codec` | its messages on the wire: the size limit, only what a client may send, shared bytes out |
//! | `health` | `grpc.health.v1.Health`: `Check` and `Watch` |

mod accept;
mod chat;
mod codec;
mod corelog;
mod deadline;
mod health;
mod preface;
mod relay;
mod reply;
mod stream;

use std::fmt;
use std::net::TcpListener;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use grpcio::{
    ChannelBuilder, CompressionAlgorithms, EnvBuilder, Environment, ResourceQuota, ServerBuilder,
};
use log::{info, warn};

use crate::auth::Verifier;
use crate::chat::{Hub, Rate};
use crate::executor::block_on_until;
use crate::metrics::Metrics;
use crate::tls::Tls;
use crate::{lock, sys};
use accept::{Acceptor, Listening};
use chat::ChatServer;
use deadline::Deadlines;
use health::{Health, HealthServer};
use stream::STATUS_GRACE;

pub use chat::seed_reply;
pub use corelog::redirect as redirect_core_log;

/// Limits of the gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Completion-queue (poll) threads (0: half the CPU cores, at least one).
    pub threads: usize,
    /// Largest message received or sent; larger ones fail with RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// Concurrent calls per client connection.
    pub max_streams: u32,
    /// Memory C-core may take for all connections together: its resource
    /// quota. C-core 1.56 holds a message whole, whatever its declared size,
    /// before papo's codec can refuse it; the quota bounds all of that.
    pub memory: usize,
    /// Client connections served at once; more are closed at once.
    pub max_connections: usize,
    /// `SendMessage` calls per connection (services post many calls over
    /// one connection: off by default).
    pub send_rate: Rate,
    /// Connections the kernel queues before the accept loop takes them.
    pub listen_backlog: u32,
    /// Idle time after which a client connection is pinged.
    pub keepalive_time: Duration,
    /// Time a keepalive ping has to be answered.
    pub keepalive_timeout: Duration,
    /// A stream member that accepts nothing for this long is dropped
    /// (`None`: never).
    pub write_timeout: Option<Duration>,
    /// Time a new connection has to complete its TLS handshake (if any)
    /// and send its HTTP/2 preface and settings; it is closed after.
    pub handshake_timeout: Duration,
}

/// Why the gRPC server did not start.
#[derive(Debug)]
pub enum StartError {
    /// The address is not `HOST:PORT`.
    BadAddress(String),
    /// C-core could not create the server.
    Create(grpcio::Error),
    /// A thread of the server could not be started.
    Thread(std::io::Error),
    /// The address is in use or not available.
    Bind(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::BadAddress(addr) => {
                write!(f, "invalid gRPC address '{addr}': expected HOST:PORT")
            }
            StartError::Create(e) => write!(f, "cannot create the gRPC server: {e}"),
            StartError::Thread(e) => write!(f, "cannot start a gRPC thread: {e}"),
            StartError::Bind(addr) => write!(
                f,
                "cannot listen for gRPC on {addr}: address in use or not available"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// A started gRPC server; dropping it shuts the server down at once.
pub struct GrpcServer {
    /// Declared first, so dropped first: no connection is handed over to
    /// a server that is going away. (None over TLS: C-core accepts.)
    acceptor: Option<Acceptor>,
    server: Arc<Mutex<grpcio::Server>>,
    health: Arc<Health>,
    addr: String,
}

/// Half the CPU cores, at least one: the WebSocket threads and fan-out need
/// the other half, and each extra poll thread adds hand-offs, as C-core
/// matches an incoming call to the completion queues in turn (the README's
/// benchmarks measure it).
fn default_poll_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// C-core's channel argument for the compression algorithms it takes
/// (`GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET`).
const COMPRESSION_ALGORITHMS: &std::ffi::CStr = c"grpc.compression_enabled_algorithms_bitset";

/// A server builder that tells C-core the limits, for every connection.
fn with_limits(env: Arc<Environment>, config: &GrpcConfig) -> ServerBuilder {
    let args = ChannelBuilder::new(Arc::clone(&env))
        // papo listens itself; C-core must not open a port of its own.
        .reuse_port(false)
        // No limit in C-core: with none, its message-size filter is left out
        // of every call's path, and `codec` checks what is received (what is
        // sent is papo's own, bounded by the same limit).
        .max_receive_message_len(-1)
        .max_send_message_len(-1)
        .max_concurrent_stream(i32::try_from(config.max_streams).unwrap_or(i32::MAX))
        .keepalive_time(config.keepalive_time)
        .keepalive_timeout(config.keepalive_timeout)
        // Idle connections are the ones keepalive exists for.
        .keepalive_permit_without_calls(true)
        // Identity only: C-core would inflate a compressed message whole,
        // past every limit, before papo sees it. A call that names another
        // encoding is refused UNIMPLEMENTED before its message is read, and
        // clients are told `grpc-accept-encoding: identity`.
        .raw_cfg_int(
            COMPRESSION_ALGORITHMS.into(),
            1 << CompressionAlgorithms::GRPC_COMPRESS_NONE as i32,
        )
        // Past the quota, C-core closes idle connections, then cancels
        // calls (RESOURCE_EXHAUSTED) to free what they hold.
        .set_resource_quota(ResourceQuota::new(Some("papo-grpc")).resize_memory(config.memory))
        .build_args();
    ServerBuilder::new(env).channel_args(args)
}

/// papo's own listener for the port, not C-core's (see `accept`), and the
/// port it got.
fn listen(addr: &str, backlog: u32) -> std::io::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(addr)?;
    let port = listener.local_addr()?.port();
    sys::set_listen_backlog(&listener, backlog)?;
    Ok((listener, port))
}

impl GrpcServer {
    /// Binds `addr` (`host:port`, port 0 picks a free one) and starts serving.
    pub fn start(
        addr: &str,
        config: &GrpcConfig,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        tls: Option<Arc<Tls>>,
        auth: Option<Arc<Verifier>>,
    ) -> Result<GrpcServer, StartError> {
        let (host, _) = addr
            .rsplit_once(':')
            .ok_or_else(|| StartError::BadAddress(addr.to_owned()))?;
        let threads = match config.threads {
            0 => default_poll_threads(),
            n => n,
        };
        let max_message_size = config.max_message_size;
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(threads)
                .name_prefix("grpc-poll")
                .after_start(move || codec::set_receive_limit(max_message_size))
                .build(),
        );
        let health = Arc::new(Health::new());
        let write_timeout = config.write_timeout;
        let checked_every = write_timeout.unwrap_or(STATUS_GRACE).min(STATUS_GRACE);
        let deadlines = Deadlines::start(checked_every).map_err(StartError::Thread)?;
        let chat = ChatServer {
            hub,
            auth,
            metrics: Arc::clone(&metrics),
            senders: Arc::default(),
            send_rate: config.send_rate,
            deadlines: Arc::new(deadlines),
            write_timeout,
        };
        let health_server = HealthServer {
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
        };
        let mut server = with_limits(env, config)
            .register_service(chat.service())
            .register_service(health_server.service())
            .build()
            .map_err(StartError::Create)?;
        let bind_error = || StartError::Bind(addr.to_owned());
        // papo listens, in plaintext and over TLS alike (see `accept` and
        // `relay`): C-core only ever serves connections handed to it.
        let (listener, port) = listen(addr, config.listen_backlog).map_err(|_| bind_error())?;
        server.start();
        let server = Arc::new(Mutex::new(server));
        let acceptor = Acceptor::start(Listening {
            listener,
            server: Arc::clone(&server),
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            write_timeout: config.write_timeout,
            tls,
            metrics,
        })
        .map_err(StartError::Thread)?;
        let acceptor = Some(acceptor);
        let addr = format!("{host}:{port}");
        info!("grpc listening on {addr}");
        Ok(GrpcServer {
            acceptor,
            server,
            health,
            addr,
        })
    }

    /// Tells health checks whether the chat engine is up (NOT_SERVING while
    /// it is not).
    pub fn engine_watcher(&self) -> impl Fn(bool) + Send + Sync + 'static {
        let health = Arc::clone(&self.health);
        move |up| health.set_engine_up(up)
    }

    /// The bound address, with the port the system picked for port 0.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Reports NOT_SERVING, stops taking calls, and lets the calls in flight
    /// finish for up to `drain`; those still running then are cancelled.
    /// Returns whether every call finished in time.
    pub fn shutdown(mut self, drain: Duration) -> bool {
        self.health.set_stopping();
        if let Some(acceptor) = &mut self.acceptor {
            acceptor.stop();
        }
        let mut stopped = pin!(lock(&self.server).shutdown());
        if block_on_until(stopped.as_mut(), Some(Instant::now() + drain)).is_some() {
            info!("grpc drained");
            return true;
        }
        warn!("grpc calls still running after {drain:?}: cancelling them");
        lock(&self.server).cancel_all_calls();
        let _ = block_on_until(stopped, None);
        false
    }
}
