//! The WebSocket server: an accept loop on `std::net` and one OS thread per
//! connection.
//!
//! After the upgrade the socket is shared as a `Peer`: its thread reads
//! without any lock, while every write, tungstenite's own or another
//! thread's (chat fan-out, keepalive pings, shutdown's close frames), goes
//! whole through the peer's queue. That is how other threads reach a
//! connection whose thread is blocked in `read`, with no polling and no
//! second thread per connection.
//!
//! | file | concern |
//! |---|---|
//! | `accept` | the listener, connection slots and `503`, spawning, shutdown |
//! | `budget` | the bytes all connections may hold in unfinished messages |
//! | `http` | request heads, routes, plain responses, the origin policy |
//! | `conn` | the upgrade, the message loop |
//! | `error` | why a connection ended, as the metrics count it |
//! | `frames` | what goes out, framed once: close frames, replies, the seed's reply |
//! | `front` | a connection before its upgrade: plain TCP or TLS |
//! | `keepalive` | pinging silent peers and dropping unanswered ones |
//! | `member` | a `/chat` connection as a member of a chat room |
//! | `input` | what a member may send: strict JSON, `text` only |

mod accept;
mod budget;
mod conn;
mod error;
mod frames;
mod front;
mod http;
mod input;
mod keepalive;
mod member;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use accept::{WsHandle, WsServer};
pub use frames::seed_reply;

use crate::auth::Verifier;
use crate::chat::Hub;
use crate::metrics::Metrics;
use crate::throttle::Throttle;
use crate::tls::Tls;
use budget::InboundBudget;
use keepalive::Watched;

/// Largest HTTP request head accepted; browsers send well under 2 KiB.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most header lines a request head may have; browsers send about twenty.
const MAX_REQUEST_HEADERS: usize = 64;
/// Per-connection read buffer. tungstenite's default, 128 KiB, would cost
/// 1.25 GiB for 10,000 idle connections; larger messages still arrive whole.
const READ_BUFFER: usize = 1024;
/// Largest reply buffer a connection keeps between messages.
const REPLY_BUFFER_KEPT: usize = 16 * 1024;
/// How long a closing connection waits for the peer to read its close frame
/// and close its side, and how much of its input it reads and discards
/// meanwhile.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
const CLOSE_DRAIN_BYTES: usize = 1 << 20;
/// How often shutdown looks whether every connection has ended.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Limits and policy of the WebSocket server. Defaults are `papo serve`'s.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Connections served at once; more are answered `503`.
    pub max_connections: usize,
    /// Largest message (and frame) accepted; larger ones are closed with 1009.
    pub max_message_size: usize,
    /// Time a new connection has to send its whole request head.
    pub handshake_timeout: Duration,
    /// Silence after which the peer is pinged (`None`: never).
    pub ping_interval: Option<Duration>,
    /// Silence after a ping after which the peer is dropped.
    pub pong_timeout: Duration,
    /// Longest a peer may take no data while some is queued (`None`: no
    /// limit).
    pub write_timeout: Option<Duration>,
    /// Stack size of each connection thread.
    pub stack_size: usize,
    /// Browser origins allowed besides the server's own host; `*` allows all.
    pub allowed_origins: Vec<String>,
    /// Host names this server is reached by, besides IP literals and
    /// `localhost`: pages of these hosts count as its own.
    pub public_hosts: Vec<String>,
    /// Connections the kernel queues before the accept loop takes them; a
    /// burst beyond it has its SYNs dropped and retried a second later.
    pub listen_backlog: u32,
    /// Bytes all connections together may hold in messages not yet whole
    /// (zero: no limit); a read past it closes its connection with 1013.
    pub inbound_budget: usize,
}

/// State shared by the accept loop, every connection thread and the handle.
struct WsState {
    config: WsConfig,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    stopping: AtomicBool,
    /// Every upgraded connection, for the keepalive and shutdown to reach.
    peers: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
    /// When a refused browser origin was last logged.
    origin_warned: Throttle,
    inbound: InboundBudget,
    /// The certificate for `wss`, when the port speaks TLS.
    tls: Option<Arc<Tls>>,
    /// Checks `/chat` tokens (`None`: anyone may join as any name).
    auth: Option<Arc<Verifier>>,
}
