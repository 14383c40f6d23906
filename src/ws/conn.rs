//! One connection's life on its own thread: the upgrade, the message loop,
//! and how it ends (close codes, and the reason counted in the metrics).

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::protocol::frame::coding::{CloseCode, Data};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use super::budget::{is_inbound_full, Account};
use super::error::ConnError;
use super::frames::{close_frame, close_payload, reply_frame, Action, SEED_REPLY_PREFIX};
use super::front::{handshake_failure, Front};
use super::http::{self, Endpoint, Head, Route};
use super::keepalive::Watched;
use super::member::{self, WsSubscriber};
use super::{WsState, CLOSE_DRAIN_BYTES, CLOSE_GRACE, READ_BUFFER, REPLY_BUFFER_KEPT};
use crate::auth::Identity;
use crate::chat::JoinLimited;
use crate::lock;
use crate::peer::{OutboundLimits, Peer};
use crate::queue::SendError;
use crate::sys;

/// The socket as tungstenite sees it: reads go straight to the socket (only
/// the connection's thread reads) and are counted against the inbound
/// budget; writes go through the peer's queue, whole buffers at a time, so
/// frames of other threads never interleave.
struct Duplex<'a> {
    peer: Arc<Peer>,
    inbound: Account<'a>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.peer.read(buf)?;
        self.inbound.read(n)?;
        Ok(n)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.peer.send_slice(buf).map_err(queue_error)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A write the peer's queue refused, as tungstenite's writer sees it.
fn queue_error(e: SendError) -> io::Error {
    match e {
        SendError::Full => io::Error::other("outbound queue full: the peer reads too slowly"),
        SendError::Closed => io::ErrorKind::BrokenPipe.into(),
    }
}

/// Serves one connection: reads the request head, answers plain HTTP, or
/// upgrades and runs the endpoint's message loop.
pub(super) fn handle_client(stream: TcpStream, shared: &WsState) -> Result<(), ConnError> {
    let Some(Upgraded { ws, peer, endpoint }) = upgrade(stream, shared)? else {
        return Ok(());
    };
    let registration = Registration::new(shared, &peer);
    let served = serve_upgraded(ws, &peer, endpoint, &registration, shared);
    // Whoever closed, the close frame reaches the peer before the socket goes.
    peer.linger(CLOSE_GRACE, CLOSE_DRAIN_BYTES);
    served
}

/// Runs an upgraded connection's endpoint until it closes.
fn serve_upgraded<'a>(
    ws: Box<WebSocket<Duplex<'a>>>,
    peer: &Arc<Peer>,
    endpoint: Endpoint,
    registration: &Registration<'_>,
    shared: &'a WsState,
) -> Result<(), ConnError> {
    if shared.stopping.load(Ordering::Acquire) {
        peer.close_with(close_frame(CloseCode::Away, "server shutting down"));
        return Err(ConnError::Shutdown);
    }
    let served = match endpoint {
        Endpoint::Reply => message_loop(ws, peer, shared, |m| Action::Reply(SEED_REPLY_PREFIX, m)),
        Endpoint::Echo => message_loop(ws, peer, shared, |m| Action::Reply("", m)),
        Endpoint::Chat {
            room,
            name,
            resume,
            identity,
        } => {
            if let Some(who) = &identity {
                registration.token_expires_in(who.lifetime());
            }
            let may_speak = identity.as_ref().is_none_or(|who| who.publish);
            let subscriber = Arc::new(WsSubscriber {
                peer: Arc::clone(peer),
                metrics: Arc::clone(&shared.metrics),
            });
            let member = match shared
                .hub
                .join_from(&room, &name, subscriber.clone(), resume)
            {
                Ok(member) => member,
                Err(refusal) => {
                    peer.close_with(close_frame(CloseCode::Again, &refusal.to_string()));
                    return Err(ConnError::BadInput(u16::from(CloseCode::Again)));
                }
            };
            message_loop(ws, peer, shared, |m| {
                if identity.as_ref().is_some_and(Identity::has_expired) {
                    return Action::Close(CloseCode::Policy, "token expired".into());
                }
                member::on_message(&member, &room, may_speak, &subscriber, &shared.metrics, m)
            })
        }
    };
    match served {
        Err(_) if shared.stopping.load(Ordering::Acquire) => Err(ConnError::Shutdown),
        result => result,
    }
}

/// A connection past its opening handshake.
struct Upgraded<'a> {
    /// Boxed: moved through three frames, it would hold a copy in each.
    ws: Box<WebSocket<Duplex<'a>>>,
    peer: Arc<Peer>,
    endpoint: Endpoint,
}

/// The HTTP part of a connection: reads and routes the request head, and
/// either answers it (`None`) or upgrades it. Kept out of line: its frames
/// are the deepest a connection ever uses, and they are gone, and their
/// pages released, before the message loop starts.
#[inline(never)]
fn upgrade(stream: TcpStream, shared: &WsState) -> Result<Option<Upgraded<'_>>, ConnError> {
    let address = stream.peer_addr().ok().map(|a| a.ip());
    stream.set_nodelay(true)?;
    stream.set_write_timeout(shared.config.write_timeout)?;
    let (mut stream, request, leftover) = read_request(stream, shared)?;
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut endpoint = match http::route(target) {
        Ok(Route::Http(route)) => {
            http::serve_http(&mut stream, route, &shared.metrics)?;
            return Ok(None);
        }
        Ok(Route::WebSocket(endpoint)) => endpoint,
        Err((status, why)) => return http::reject(&mut stream, status, &why, ""),
    };
    if let Err(no) = admit(&mut endpoint, &request, target, address, shared) {
        return http::reject(&mut stream, no.status, &no.why, no.headers);
    }
    let response = match create_response(&request) {
        Ok(response) => response,
        Err(e) => {
            let upgrade = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
            let why = format!("a WebSocket upgrade is required: {e}\n");
            return http::reject(&mut stream, 426, &why, upgrade);
        }
    };
    let mut head = Vec::with_capacity(160);
    write_response(&mut head, &response)?;
    stream.write_all(&head)?;
    Ok(Some(websocket(stream, leftover, endpoint, shared)))
}

/// The request head, read within the handshake deadline (over TLS, the
/// handshake first: its failures are counted by reason); a head that is
/// not one is answered here.
fn read_request(
    stream: TcpStream,
    shared: &WsState,
) -> Result<(Front, Box<Request>, Vec<u8>), ConnError> {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let tls = shared.tls.as_ref().map(|tls| Arc::clone(&tls.current().ws));
    let mut stream = Front::new(stream, tls)?;
    let head = http::read_request_head(&mut stream, deadline);
    if let (Front::Tls(tls), Err(e)) = (&stream, &head) {
        if tls.conn.is_handshaking() {
            let reason = match e {
                ConnError::HandshakeTimeout => "timeout",
                ConnError::Io(e) => handshake_failure(e).unwrap_or("other"),
                _ => "other",
            };
            shared.metrics.tls_handshake_failed(reason);
            return Err(ConnError::Tls(reason));
        }
    }
    match head? {
        Head::Request(request, leftover) => Ok((stream, request, leftover)),
        Head::Invalid(status, why) => http::reject(&mut stream, status, why, ""),
    }
}

/// Why an upgrade was refused: its status, body and extra headers.
struct Refused {
    status: u16,
    why: String,
    headers: &'static str,
}

/// Whether this request may have its endpoint: a browser page's origin, a
/// `/chat` member's token (when required) and its join limits.
fn admit(
    endpoint: &mut Endpoint,
    request: &Request,
    target: &str,
    address: Option<IpAddr>,
    shared: &WsState,
) -> Result<(), Refused> {
    let config = &shared.config;
    let policy = http::OriginPolicy {
        allowed: &config.allowed_origins,
        public_hosts: &config.public_hosts,
    };
    let origin = http::raw_header(request, "Origin");
    if !policy.allows(origin, http::header(request, "Host")) {
        warn_refused_origin(shared, origin.flatten());
        return Err(Refused {
            status: 403,
            why: "origin not allowed\n".into(),
            headers: "",
        });
    }
    member::identify(endpoint, request, target, shared).map_err(|(status, why)| Refused {
        status,
        why,
        headers: if status == 401 {
            "WWW-Authenticate: Bearer\r\n"
        } else {
            ""
        },
    })?;
    if let Endpoint::Chat { identity, .. } = endpoint {
        let sub = identity.as_ref().map(|who| who.sub.as_str());
        shared.hub.admit_join(address, sub).map_err(|limited| {
            shared
                .metrics
                .join_refused(limited == JoinLimited::Identity);
            Refused {
                status: 429,
                why: format!("{limited}\n"),
                headers: "Retry-After: 1\r\n",
            }
        })?;
    }
    Ok(())
}

/// An upgraded socket as a `Peer`, and tungstenite's `WebSocket` over it,
/// with the bytes read past the request head.
fn websocket<'a>(
    stream: Front,
    leftover: Vec<u8>,
    endpoint: Endpoint,
    shared: &'a WsState,
) -> Upgraded<'a> {
    let config = &shared.config;
    let limits = OutboundLimits {
        frames: shared.hub.config().send_queue,
        bytes: config.max_message_size.saturating_mul(2),
        write_timeout: config.write_timeout,
    };
    let (socket, session) = stream.into_parts();
    let peer = Peer::new(socket, limits, session);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let duplex = Duplex {
        peer: Arc::clone(&peer),
        inbound: Account::new(&shared.inbound),
    };
    let ws = Box::new(WebSocket::from_partially_read(
        duplex,
        leftover,
        Role::Server,
        Some(ws_config),
    ));
    Upgraded { ws, peer, endpoint }
}

/// Tells the operator, throttled, that a
/// browser was refused and how to allow it: the browser itself only sees
/// its connection fail.
fn warn_refused_origin(shared: &WsState, origin: Option<&str>) {
    if shared.origin_warned.occurred().is_some() {
        warn!(
            "ws refused a browser page from origin {origin:?}: allow it with \
             --allowed-origin ORIGIN, or name this server's host with --public-host NAME"
        );
    }
}

/// Keeps a peer where the keepalive and shutdown find it, while it is served.
struct Registration<'a> {
    shared: &'a WsState,
    id: u64,
}

impl<'a> Registration<'a> {
    fn new(shared: &'a WsState, peer: &Arc<Peer>) -> Registration<'a> {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&shared.peers).insert(id, Watched::new(Arc::clone(peer)));
        Registration { shared, id }
    }
}

impl Registration<'_> {
    /// Ends the connection (close `1008` "token expired") after `lifetime`
    /// (a token's own number: one past what an `Instant` holds never comes).
    fn token_expires_in(&self, lifetime: Duration) {
        if let Some(watched) = lock(&self.shared.peers).get_mut(&self.id) {
            watched.token_expires = Instant::now().checked_add(lifetime);
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.shared.peers).remove(&self.id);
    }
}

/// The message loop of one upgraded connection. It blocks in `read` with no
/// timeout: the keepalive thread watches for silence, and shutdown or a
/// pong timeout shuts the socket, which ends the `read`. An idle peer costs
/// one blocked thread, and no wake-up at all.
#[inline(never)] // Its frame, with the caller's, is what an idle connection holds.
fn message_loop(
    mut ws: Box<WebSocket<Duplex<'_>>>,
    peer: &Arc<Peer>,
    shared: &WsState,
    mut on_message: impl FnMut(Message) -> Action,
) -> Result<(), ConnError> {
    let traffic = &shared.metrics.ws;
    // The handshake's deadline no longer applies.
    peer.socket().set_read_timeout(None)?;
    // The handshake ran deeper than this loop ever will.
    sys::release_stack_below_here();
    let mut reply = Vec::new();
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(_) if peer.was_silent() => return Err(ConnError::PongTimeout),
            Err(WsError::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(close_after_error(ws, e)),
        };
        let inbound = &mut ws.get_mut().inbound;
        match &message {
            Message::Text(_) | Message::Binary(_) => inbound.data_message(),
            control => inbound.control_frame(control.len()),
        }
        if matches!(message, Message::Pong(_)) && peer.take_pinged() {
            // The keepalive's ping found the connection silent: whatever
            // stack its last burst of messages touched can go back. (Only
            // then: a peer's unsolicited pongs must not buy system calls.)
            sys::release_stack_below_here();
        }
        if !matches!(message, Message::Text(_) | Message::Binary(_)) {
            // Pings are answered and close handshakes completed by tungstenite.
            continue;
        }
        if peer.is_closing() {
            // Its close frame is on the way: what it still sends is read
            // away, never acted on.
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
                peer.send_slice(&reply).map_err(queue_error)?;
                traffic.sent(prefix.len() + payload.len());
                if reply.capacity() > REPLY_BUFFER_KEPT {
                    reply = Vec::new();
                }
            }
            Action::Nothing => {}
            Action::Close(code, reason) => {
                debug!("closing a connection: {reason:?}");
                let _ = ws.close(Some(close_payload(code, &reason)));
                return Err(ConnError::BadInput(u16::from(code)));
            }
        }
    }
}

/// Fails the connection as RFC 6455 asks: a close frame with the code that
/// names the error; the connection then lingers ([`Peer::linger`]) and is
/// closed.
fn close_after_error(mut ws: Box<WebSocket<Duplex>>, error: WsError) -> ConnError {
    let (code, reason) = match &error {
        WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        WsError::Capacity(_) => (CloseCode::Size, "message too big"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        WsError::Io(e) if is_inbound_full(e) => (CloseCode::Again, "server busy: try again later"),
        _ => return error.into(),
    };
    // A failure here means the peer is gone; the linger then ends at once.
    let _ = ws.close(Some(close_payload(code, reason)));
    error.into()
}
