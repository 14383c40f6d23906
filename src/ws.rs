//! The WebSocket server: an accept loop on `std::net` and one OS thread per
//! connection, each running [`handle_client`].
//!
//! The HTTP request head is read here rather than inside tungstenite so that
//! the server can answer plain HTTP (`/metrics`, 404, 426, …) itself, bound the
//! head's size and time, and only then hand the socket to tungstenite.
//!
//! After the upgrade the socket is shared as a [`Peer`]: its thread reads
//! without any lock, while every write, tungstenite's own or another
//! thread's, goes whole through the peer's write lock. That is how shutdown
//! (and later, chat fan-out) reaches a connection whose thread is blocked in
//! `read`, with no polling and no second thread per connection.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::chat::{self, Delivery, Hub, Member, Refused, Subscriber};
use crate::lock;
use crate::metrics::{CloseReason, Metrics};
use crate::peer::{OutboundLimits, Peer, SendError};
use crate::proto::chat::Message as ChatMessage;

/// Largest HTTP request head accepted; browsers send well under 2 KiB.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Per-connection read buffer. tungstenite's default is 128 KiB, which is
/// 1.25 GiB for 10,000 idle connections. Larger messages still arrive whole,
/// and measured 1 MiB echoes take as long with 1 KiB as with 4 KiB, while an
/// idle connection costs 4 KiB less.
const READ_BUFFER: usize = 1024;
/// Largest reply buffer a connection keeps between messages.
const REPLY_BUFFER_KEPT: usize = 16 * 1024;
/// How long a failed connection waits for the peer to read its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// At most one "connection refused" warning per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Limits and policy of the WebSocket server.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Connections served at once; more are answered `503`.
    pub max_connections: usize,
    /// Largest message (and frame) accepted; larger ones are closed with 1009.
    pub max_message_size: usize,
    /// Time a new connection has to send its whole request head.
    pub handshake_timeout: Duration,
    /// Silence after which the peer is pinged (zero: never).
    pub ping_interval: Duration,
    /// Silence after a ping after which the peer is dropped.
    pub pong_timeout: Duration,
    /// Longest a single write may block on a peer that does not read.
    pub write_timeout: Duration,
    /// Stack size of each connection thread.
    pub stack_size: usize,
    /// Browser origins allowed besides the server's own host; `*` allows all.
    pub allowed_origins: Vec<String>,
    /// Frames queued for a slow peer before it is dropped (close 1008 for a
    /// chat member).
    pub send_queue: usize,
    /// Connections the kernel queues before the accept loop takes them; a
    /// burst beyond it has its SYNs dropped and retried a second later.
    pub listen_backlog: u32,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_connections: 10_000,
            max_message_size: 4 << 20,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            stack_size: 64 << 10,
            allowed_origins: Vec::new(),
            listen_backlog: 4096,
            send_queue: 256,
        }
    }
}

/// What the server does with a request.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    /// `/ws`: the seed's server, replying `Recebido: <msg>`.
    Reply,
    /// `/echo`: exact echo, for conformance tools.
    Echo,
    /// `/chat?room=R&name=N`: a member of room R, JSON in and out.
    Chat(String, String),
    /// `/`: the chat page, plain HTTP.
    Page,
    /// `/metrics`: Prometheus text, plain HTTP.
    Metrics,
}

/// Routes a request target; `Err` is an HTTP status with its reason.
fn route(target: &str) -> Result<Route, (u16, String)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/ws" => Ok(Route::Reply),
        "/echo" => Ok(Route::Echo),
        "/" | "/index.html" => Ok(Route::Page),
        "/metrics" => Ok(Route::Metrics),
        "/chat" => {
            let room = query_param(query, "room").unwrap_or_default();
            let name = query_param(query, "name").unwrap_or_default();
            let bad = |e: String| (400, format!("{e}\n"));
            let room = chat::room_name(&room).map_err(bad)?.to_owned();
            let name = chat::member_name(&name).map_err(bad)?.to_owned();
            Ok(Route::Chat(room, name))
        }
        _ => Err((
            404,
            "not found: try / (chat page), /chat, /ws, /echo or /metrics\n".into(),
        )),
    }
}

/// A query parameter, percent-decoded (`+` is a space, as forms send it).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a connection ended other than by a normal close.
#[derive(Debug)]
pub enum ConnError {
    /// The request was answered with an HTTP status and no upgrade.
    Rejected(u16),
    /// The peer sent nothing usable before the handshake deadline.
    HandshakeTimeout,
    /// The peer did not answer a ping in time.
    PongTimeout,
    /// The server is shutting down.
    Shutdown,
    /// Ended by the server with this close code (bad input on `/chat`).
    Refused(u16),
    Io(io::Error),
    WebSocket(WsError),
}

impl ConnError {
    fn reason(&self) -> CloseReason {
        match self {
            ConnError::Rejected(_) => CloseReason::Rejected,
            ConnError::HandshakeTimeout => CloseReason::HandshakeTimeout,
            ConnError::PongTimeout => CloseReason::PongTimeout,
            ConnError::Shutdown => CloseReason::Shutdown,
            ConnError::Refused(_) => CloseReason::ProtocolError,
            ConnError::WebSocket(
                WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_),
            ) => CloseReason::ProtocolError,
            ConnError::Io(_) | ConnError::WebSocket(_) => CloseReason::IoError,
        }
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Rejected(status) => write!(f, "answered HTTP {status}"),
            ConnError::HandshakeTimeout => f.write_str("handshake timed out"),
            ConnError::PongTimeout => f.write_str("no pong in time"),
            ConnError::Shutdown => f.write_str("server shutting down"),
            ConnError::Refused(code) => write!(f, "closed with {code}"),
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::WebSocket(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

impl From<WsError> for ConnError {
    fn from(e: WsError) -> Self {
        ConnError::WebSocket(e)
    }
}

/// Frames a close frame for sending from any thread.
fn close_frame(code: CloseCode, reason: &str) -> Arc<[u8]> {
    encode(Frame::close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })))
}

fn encode(frame: Frame) -> Arc<[u8]> {
    let mut bytes = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail.
    let _ = frame.format(&mut bytes);
    bytes.into()
}

/// The socket as tungstenite sees it: reads go straight to the socket (only
/// the connection's thread reads), writes go through the peer's queue,
/// whole buffers at a time, so frames of other threads never interleave.
struct Duplex(Arc<Peer>);

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.socket().read(buf)?;
        if n > 0 {
            self.0.note_heard();
        }
        Ok(n)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_slice(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `/chat` member's way out: messages of its room, as JSON text frames.
struct WsMember {
    peer: Arc<Peer>,
    metrics: Arc<Metrics>,
}

/// A chat message as a WebSocket text frame of its canonical JSON.
fn json_frame(message: &ChatMessage) -> Vec<u8> {
    let json = protobuf_json_mapping::print_to_string(message).unwrap_or_else(|_| "{}".into());
    let mut bytes = Vec::with_capacity(json.len() + 10);
    let _ = Frame::message(json.into_bytes(), OpCode::Data(Data::Text), true).format(&mut bytes);
    bytes
}

impl Subscriber for WsMember {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), Refused> {
        let frame = delivery.encoded(json_frame);
        let len = frame.len();
        match self.peer.send(frame) {
            Ok(()) => {
                self.metrics.ws.sent(len);
                Ok(())
            }
            Err(SendError::Full) => Err(Refused::Full),
            Err(SendError::Closed) => Err(Refused::Gone),
        }
    }

    fn evicted(&self) {
        self.peer.close_with(close_frame(
            CloseCode::Policy,
            "too slow: outbound queue full",
        ));
    }
}

/// State shared by the accept loop, every connection thread and the handle.
struct Shared {
    config: WsConfig,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    stopping: AtomicBool,
    peers: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
}

/// A served peer, as shutdown and the keepalive see it.
struct Watched {
    peer: Arc<Peer>,
    /// Last keepalive tick that found the peer had sent something.
    heard_at: Instant,
    /// When the keepalive pinged the still silent peer.
    pinged_at: Option<Instant>,
}

/// A bound WebSocket server, ready to [`run`](WsServer::run).
pub struct WsServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Stops a running [`WsServer`] from another thread.
#[derive(Clone)]
pub struct WsHandle {
    shared: Arc<Shared>,
    listener_fd: i32,
}

impl WsServer {
    pub fn bind(
        addr: &str,
        config: WsConfig,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
    ) -> io::Result<WsServer> {
        let listener = TcpListener::bind(addr)?;
        // std listens with a backlog of 128; Linux lets a second listen(2)
        // resize it (the kernel caps it at net.core.somaxconn).
        let backlog = i32::try_from(config.listen_backlog).unwrap_or(i32::MAX);
        // SAFETY: listen(2) on the descriptor `listener` owns; no memory involved.
        if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        crate::peer::start_flusher()?;
        Ok(WsServer {
            listener,
            shared: Arc::new(Shared {
                config,
                metrics,
                hub,
                stopping: AtomicBool::new(false),
                peers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> WsHandle {
        WsHandle {
            shared: Arc::clone(&self.shared),
            listener_fd: self.listener.as_raw_fd(),
        }
    }

    /// Accepts connections until stopped, one thread each. The accept loop
    /// only counts and spawns: it never reads from a peer, so a slow
    /// handshake cannot hold up the next connection.
    pub fn run(self) -> io::Result<()> {
        if !self.shared.config.ping_interval.is_zero() {
            let shared = Arc::clone(&self.shared);
            thread::Builder::new()
                .name("ws-keepalive".into())
                .stack_size(64 << 10)
                .spawn(move || keep_alive(&shared))?;
        }
        info!("ws listening on ws://{}/ws", self.local_addr()?);
        let mut last_refusal_log: Option<Instant> = None;
        for conn in self.listener.incoming() {
            if self.shared.stopping.load(Ordering::Acquire) {
                break;
            }
            match conn {
                Ok(stream) => self.dispatch(stream, &mut last_refusal_log),
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    warn!("ws accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        info!("ws stopped accepting");
        Ok(())
    }

    fn dispatch(&self, mut stream: TcpStream, last_refusal_log: &mut Option<Instant>) {
        let metrics = &self.shared.metrics;
        metrics.ws_accepted.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = Slot::take(metrics, self.shared.config.max_connections) else {
            let refused = metrics.ws_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                *last_refusal_log = Some(Instant::now());
                warn!(
                    "ws connection refused: {} connections open ({refused} refused so far)",
                    self.shared.config.max_connections
                );
            }
            metrics.ws_closed(CloseReason::Rejected);
            // A fresh socket's send buffer is empty: this small write cannot block.
            let _ = stream.write_all(&http_response(503, "too many connections\n", ""));
            return;
        };
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name("ws-conn".into())
            .stack_size(shared.config.stack_size)
            .spawn(move || {
                let _slot = slot;
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
                debug!("{peer}: connected");
                let reason = match handle_client(stream, &shared) {
                    Ok(()) => {
                        debug!("{peer}: closed");
                        CloseReason::Normal
                    }
                    Err(e) => {
                        debug!("{peer}: closed: {e}");
                        e.reason()
                    }
                };
                shared.metrics.ws_closed(reason);
            });
        if let Err(e) = spawned {
            // The closure, and with it the stream and the slot, is dropped.
            warn!("ws connection dropped: cannot spawn a thread: {e}");
            metrics.ws_closed(CloseReason::IoError);
        }
    }
}

impl WsHandle {
    /// Stops accepting, sends close 1001 to every peer, and waits up to
    /// `drain` for their threads to end. Returns the connections still open.
    pub fn shutdown(&self, drain: Duration) -> u64 {
        self.shared.stopping.store(true, Ordering::Release);
        // Wakes the accept loop: `accept` on a shut-down listener fails at once.
        // SAFETY: shutdown(2) on a descriptor this server owns; it neither
        // closes the descriptor nor touches memory.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        let peers: Vec<Arc<Peer>> = lock(&self.shared.peers)
            .values()
            .map(|w| Arc::clone(&w.peer))
            .collect();
        info!("ws closing {} connections (1001 going away)", peers.len());
        for peer in &peers {
            peer.close_with(close_frame(CloseCode::Away, "server shutting down"));
        }
        let deadline = Instant::now() + drain;
        loop {
            let open = self.shared.metrics.ws_active.load(Ordering::Acquire);
            if open == 0 || Instant::now() >= deadline {
                return open;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Keepalive for every connection, from one thread: a peer silent for
/// `ping_interval` is pinged, and cut off if still silent `pong_timeout`
/// later. A read timeout per connection would do the same at the price of a
/// kernel timer armed and disarmed on every read: 15% of the server's CPU
/// under load. Here an idle connection costs one flag test per tick.
fn keep_alive(shared: &Shared) {
    let (interval, timeout) = (shared.config.ping_interval, shared.config.pong_timeout);
    // Pings go out, and silent peers are dropped, at most a quarter late.
    let tick = (interval.min(timeout) / 4).max(Duration::from_millis(10));
    let ping = encode(Frame::ping(Vec::new()));
    let mut to_ping = Vec::new();
    let mut to_drop = Vec::new();
    while !shared.stopping.load(Ordering::Acquire) {
        thread::sleep(tick);
        let now = Instant::now();
        for watched in lock(&shared.peers).values_mut() {
            if watched.peer.take_heard() {
                watched.heard_at = now;
                watched.pinged_at = None;
                continue;
            }
            match watched.pinged_at {
                None if now.duration_since(watched.heard_at) >= interval => {
                    watched.pinged_at = Some(now);
                    to_ping.push(Arc::clone(&watched.peer));
                }
                Some(at) if now.duration_since(at) >= timeout => {
                    to_drop.push(Arc::clone(&watched.peer));
                }
                _ => {}
            }
        }
        // Sent outside the registry's lock: new connections never wait on it.
        for peer in to_ping.drain(..) {
            let _ = peer.send(Arc::clone(&ping));
        }
        for peer in to_drop.drain(..) {
            peer.expire();
        }
    }
}

/// One counted connection; the count goes down when it is dropped.
struct Slot(Arc<Metrics>);

impl Slot {
    fn take(metrics: &Arc<Metrics>, max: usize) -> Option<Slot> {
        let max = max as u64;
        metrics
            .ws_active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(metrics)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.ws_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection: reads the request head, upgrades WebSocket paths,
/// answers `/metrics`, and every other request with an HTTP error.
fn handle_client(stream: TcpStream, shared: &Shared) -> Result<(), ConnError> {
    let Some(Upgraded { ws, peer, endpoint }) = upgrade(stream, shared)? else {
        return Ok(());
    };
    let _registration = Registration::new(shared, &peer);
    if shared.stopping.load(Ordering::Acquire) {
        peer.close_with(close_frame(CloseCode::Away, "server shutting down"));
        return Err(ConnError::Shutdown);
    }
    let served = match endpoint {
        Route::Chat(room, name) => {
            let member = shared.hub.join(
                &room,
                &name,
                Arc::new(WsMember {
                    peer: Arc::clone(&peer),
                    metrics: Arc::clone(&shared.metrics),
                }),
            );
            serve(ws, &peer, shared, |m| chat_action(&member, m))
        }
        route => serve(ws, &peer, shared, |m| reply_or_echo(&route, m)),
    };
    match served {
        Err(_) if shared.stopping.load(Ordering::Acquire) => Err(ConnError::Shutdown),
        result => result,
    }
}

/// A connection past its opening handshake.
struct Upgraded {
    /// Boxed: moved through three frames, it would hold a copy in each.
    ws: Box<WebSocket<Duplex>>,
    peer: Arc<Peer>,
    endpoint: Route,
}

/// The HTTP part of a connection: reads and routes the request head, and
/// either answers it (`None`) or upgrades it. Kept out of line: its frames
/// are the deepest a connection ever uses, and they are gone, and their
/// pages released, before the message loop starts.
#[inline(never)]
fn upgrade(mut stream: TcpStream, shared: &Shared) -> Result<Option<Upgraded>, ConnError> {
    let config = &shared.config;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(nonzero(config.write_timeout))?;
    let deadline = Instant::now() + config.handshake_timeout;
    let (request, leftover) = match read_request_head(&mut stream, deadline)? {
        Head::Request(request, leftover) => (request, leftover),
        Head::Invalid(status, why) => return reject(&mut stream, status, why, ""),
    };
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let endpoint = match route(target) {
        Ok(Route::Metrics) => {
            let body = shared.metrics.render();
            stream.write_all(&http_ok("text/plain; version=0.0.4; charset=utf-8", &body))?;
            return Ok(None);
        }
        Ok(Route::Page) => {
            stream.write_all(&http_ok("text/html; charset=utf-8", CHAT_PAGE))?;
            return Ok(None);
        }
        Ok(endpoint) => endpoint,
        Err((status, why)) => return reject(&mut stream, status, &why, ""),
    };
    if !origin_allowed(
        header(&request, "Origin"),
        header(&request, "Host"),
        &config.allowed_origins,
    ) {
        return reject(&mut stream, 403, "origin not allowed\n", "");
    }
    let response = match create_response(&request) {
        Ok(response) => response,
        Err(e) => {
            let upgrade = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
            return reject(
                &mut stream,
                426,
                &format!("a WebSocket upgrade is required: {e}\n"),
                upgrade,
            );
        }
    };
    let mut head = Vec::with_capacity(160);
    write_response(&mut head, &response)?;
    stream.write_all(&head)?;

    let limits = OutboundLimits {
        frames: config.send_queue,
        bytes: config.max_message_size.saturating_mul(2),
        write_timeout: config.write_timeout,
    };
    let peer = Peer::new(stream, limits);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let ws = Box::new(WebSocket::from_partially_read(
        Duplex(Arc::clone(&peer)),
        leftover,
        Role::Server,
        Some(ws_config),
    ));
    Ok(Some(Upgraded { ws, peer, endpoint }))
}

/// Keeps a peer in the registry shutdown walks, for as long as it is served.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> Registration<'a> {
    fn new(shared: &'a Shared, peer: &Arc<Peer>) -> Registration<'a> {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let watched = Watched {
            peer: Arc::clone(peer),
            heard_at: Instant::now(),
            pinged_at: None,
        };
        lock(&shared.peers).insert(id, watched);
        Registration { shared, id }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.shared.peers).remove(&self.id);
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The origin policy. Requests without `Origin` come from non-browser clients
/// and are accepted. A browser always sends it, and accepting any origin
/// would let every web page a user visits open a WebSocket to this server
/// with the user's cookies and network position (cross-site WebSocket
/// hijacking): so a browser must come from a page of this server's own host,
/// or from an origin explicitly allowed.
fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|h| h.trim().eq_ignore_ascii_case(origin_host))
}

enum Head {
    Request(Box<Request>, Vec<u8>),
    Invalid(u16, &'static str),
}

/// Reads an HTTP request head, returning it with any bytes read past its end.
/// The whole head must arrive before `deadline`, however slowly it dribbles.
fn read_request_head(stream: &mut TcpStream, deadline: Instant) -> Result<Head, ConnError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::HandshakeTimeout);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnError::HandshakeTimeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(&chunk[..n]);
        match Request::try_parse(&buf) {
            Ok(Some((len, request))) => {
                return Ok(Head::Request(Box::new(request), buf.split_off(len)))
            }
            Ok(None) if buf.len() >= MAX_REQUEST_HEAD => {
                return Ok(Head::Invalid(431, "request head too large\n"))
            }
            Ok(None) => {}
            Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => {
                return Ok(Head::Invalid(405, "only GET is served here\n"))
            }
            Err(_) => return Ok(Head::Invalid(400, "malformed HTTP request\n")),
        }
    }
}

/// Answers with an HTTP error and ends the connection.
fn reject<T>(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    headers: &str,
) -> Result<T, ConnError> {
    stream.write_all(&http_response(status, body, headers))?;
    Err(ConnError::Rejected(status))
}

/// The chat page: one self-contained file, embedded in the binary.
const CHAT_PAGE: &str = include_str!("page.html");

fn http_ok(content_type: &str, body: &str) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

fn http_response(status: u16, body: &str, headers: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a connection does with one incoming data message.
enum Action {
    /// Answer with the message, of the same type, after a prefix.
    Reply(&'static str, Message),
    Nothing,
    /// End the connection with this close code and reason.
    Close(CloseCode, String),
}

/// The seed's `/ws` and the exact echo of `/echo`.
#[inline(never)] // Keeps the message loop's frame, live while idle, small.
fn reply_or_echo(route: &Route, message: Message) -> Action {
    match route {
        Route::Reply => Action::Reply(chat::WS_REPLY_PREFIX, message),
        _ => Action::Reply("", message),
    }
}

/// Frames a reply (server frames are not masked): `prefix` and `payload` as
/// one message of `opcode`, into `out`. Built here rather than by
/// tungstenite so a reply costs no allocation: the frame goes whole through
/// the peer's queue, as fan-out frames do.
fn reply_frame(out: &mut Vec<u8>, opcode: Data, prefix: &str, payload: &[u8]) {
    out.clear();
    let len = prefix.len() + payload.len();
    let header = FrameHeader {
        opcode: OpCode::Data(opcode),
        ..FrameHeader::default()
    };
    // Formatting into a Vec cannot fail.
    let _ = header.format(len as u64, out);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(payload);
}

/// `/chat`: each text message is JSON of a chat `Message`; its text is said
/// in the member's room. Anything else ends the connection with a reason.
#[inline(never)] // Keeps the message loop's frame, live while idle, small.
fn chat_action(member: &Member, message: Message) -> Action {
    let Message::Text(json) = message else {
        return Action::Close(
            CloseCode::Unsupported,
            "/chat takes JSON text messages".into(),
        );
    };
    match protobuf_json_mapping::parse_from_str::<ChatMessage>(json.as_str()) {
        Ok(incoming) if incoming.text.is_empty() => Action::Nothing,
        Ok(incoming) => {
            member.say(&incoming.text);
            Action::Nothing
        }
        Err(e) => Action::Close(CloseCode::Invalid, format!("invalid JSON message: {e}")),
    }
}

/// The message loop of one upgraded connection. It blocks in `read` with no
/// timeout: the keepalive thread watches for silence, and shutdown or a
/// pong timeout shuts the socket, which ends the `read`. An idle peer costs
/// one blocked thread, and no wake-up at all.
#[inline(never)] // Its frame, with the caller's, is what an idle connection holds.
fn serve(
    mut ws: Box<WebSocket<Duplex>>,
    peer: &Arc<Peer>,
    shared: &Shared,
    mut on_message: impl FnMut(Message) -> Action,
) -> Result<(), ConnError> {
    let traffic = &shared.metrics.ws;
    // The handshake's deadline no longer applies.
    peer.socket().set_read_timeout(None)?;
    release_stack_below_here();
    let mut reply = Vec::new();
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(_) if peer.expired() => return Err(ConnError::PongTimeout),
            Err(WsError::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(close_after_error(ws, peer, e)),
        };
        if let Message::Pong(_) = message {
            // The keepalive's ping found the connection silent: whatever
            // stack its last burst of messages touched can go back.
            release_stack_below_here();
        }
        if !matches!(message, Message::Text(_) | Message::Binary(_)) {
            // Pings are answered and close handshakes completed by tungstenite.
            continue;
        }
        traffic.received(message.len());
        debug!("ws message, {} bytes in", message.len());
        match on_message(message) {
            Action::Reply(prefix, message) => {
                let (opcode, payload) = match &message {
                    Message::Text(text) => (Data::Text, text.as_bytes()),
                    Message::Binary(data) => (Data::Binary, &data[..]),
                    _ => continue,
                };
                reply_frame(&mut reply, opcode, prefix, payload);
                peer.send_slice(&reply).map_err(io::Error::from)?;
                traffic.sent(prefix.len() + payload.len());
                if reply.capacity() > REPLY_BUFFER_KEPT {
                    reply = Vec::new();
                }
            }
            Action::Nothing => {}
            Action::Close(code, reason) => {
                debug!("closing a connection: {reason}");
                let _ = ws.close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                return Err(ConnError::Refused(u16::from(code)));
            }
        }
    }
}

/// Returns to the kernel the stack pages below the caller's frame. The
/// handshake (HTTP parsing with tungstenite's 124-slot header array, the
/// response) and the handling of messages run deeper than a connection
/// blocked in `read` does, and the pages they touched would stay resident
/// for the connection's life: measured, 12 KiB of stack per idle connection
/// instead of 8. Called once after the handshake and when a keepalive pong
/// shows the peer was silent. Whatever later runs that deep faults in fresh
/// zeroed pages.
fn release_stack_below_here() {
    const PAGE: usize = 4096;
    // SAFETY: pthread_getattr_np fills `attr`, which is destroyed after use;
    // the range passed to madvise lies within this thread's own stack, below
    // the page holding the deepest live frame (the calls made here use a few
    // hundred bytes below `here`).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut low, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        let here = std::ptr::addr_of!(attr) as usize;
        let low = (low as usize).next_multiple_of(PAGE);
        // Below `here`: the rest of this frame, then madvise's, each with
        // at most a 128-byte red zone.
        let high = here.saturating_sub(512) & !(PAGE - 1);
        if got == 0 && high > low {
            libc::madvise(low as *mut libc::c_void, high - low, libc::MADV_DONTNEED);
        }
    }
}

/// Fails the connection as RFC 6455 asks: a close frame with the code that
/// names the error, then the TCP connection is closed at once. Reading on for
/// a moment keeps unread input from turning the close into a reset that could
/// destroy the close frame before the peer reads it.
fn close_after_error(mut ws: Box<WebSocket<Duplex>>, peer: &Peer, error: WsError) -> ConnError {
    let (code, reason) = match &error {
        WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        WsError::Capacity(_) => (CloseCode::Size, "message too big"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => return error.into(),
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // A failure here means the peer is gone; the steps below then end at once.
    let _ = ws.close(Some(frame));
    let socket = peer.socket();
    if socket.shutdown(Shutdown::Write).is_ok()
        && socket.set_read_timeout(Some(CLOSE_GRACE)).is_ok()
    {
        let mut sink = [0u8; 1024];
        // Bounded: at most 64 KiB, and each read returns or times out.
        for _ in 0..64 {
            if !matches!((&*socket).read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
    error.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_the_stack_keeps_live_frames() {
        // Deep frames below, live frames above: after the release, the
        // caller's locals are intact and the released depth works again.
        fn deep(n: u32) -> u64 {
            let block = [u64::from(n); 64];
            if n == 0 {
                return block.iter().sum();
            }
            std::hint::black_box(&block);
            deep(n - 1) + block[7]
        }
        let result = thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let live = std::hint::black_box([7u8; 2048]);
                let first = deep(200);
                release_stack_below_here();
                let again = deep(200);
                (
                    first,
                    again,
                    live.iter().map(|&b| u64::from(b)).sum::<u64>(),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result.0, result.1);
        assert_eq!(result.2, 7 * 2048);
    }

    #[test]
    fn routes() {
        assert_eq!(route("/ws"), Ok(Route::Reply));
        assert_eq!(route("/echo"), Ok(Route::Echo));
        assert_eq!(route("/metrics"), Ok(Route::Metrics));
        assert_eq!(route("/"), Ok(Route::Page));
        assert_eq!(route("/chat"), Ok(Route::Chat("geral".into(), "".into())));
        assert_eq!(
            route("/chat?name=Jo%C3%A3o+Silva&room=sala%201"),
            Ok(Route::Chat("sala 1".into(), "João Silva".into()))
        );
        assert_eq!(
            route("/chat?room=%zz"),
            Ok(Route::Chat("%zz".into(), "".into()))
        );
        assert_eq!(
            route(&format!("/chat?room={}", "x".repeat(65))).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(route("/ws/").map_err(|e| e.0), Err(404));
    }

    #[test]
    fn http_responses_are_well_formed() {
        let text = String::from_utf8(http_response(404, "nope\n", "")).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nnope\n"));
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let metrics = Arc::new(Metrics::new());
        let a = Slot::take(&metrics, 2).unwrap();
        let _b = Slot::take(&metrics, 2).unwrap();
        assert!(Slot::take(&metrics, 2).is_none());
        drop(a);
        assert_eq!(metrics.ws_active.load(Ordering::Relaxed), 1);
        assert!(Slot::take(&metrics, 2).is_some());
    }

    #[test]
    fn origin_policy() {
        let none: &[String] = &[];
        let host = Some("chat.example:8080");
        // Non-browser clients send no Origin.
        assert!(origin_allowed(None, host, none));
        // Same host, any scheme.
        assert!(origin_allowed(Some("http://chat.example:8080"), host, none));
        assert!(origin_allowed(
            Some("https://CHAT.example:8080"),
            host,
            none
        ));
        // Another site, another port, or an opaque origin.
        assert!(!origin_allowed(Some("http://evil.example"), host, none));
        assert!(!origin_allowed(
            Some("http://chat.example:9090"),
            host,
            none
        ));
        assert!(!origin_allowed(Some("null"), host, none));
        assert!(!origin_allowed(
            Some("http://chat.example:8080"),
            None,
            none
        ));
        // Allowed explicitly, or all.
        let allowed = ["https://app.example".to_owned()];
        assert!(origin_allowed(Some("https://app.example"), host, &allowed));
        assert!(!origin_allowed(Some("http://app.example"), host, &allowed));
        assert!(origin_allowed(Some("null"), host, &["*".to_owned()]));
    }
}
