//! The WebSocket server: an accept loop on `std::net` and one OS thread per
//! connection, each running [`handle_client`].
//!
//! The HTTP request head is read here rather than inside tungstenite so that
//! the server can answer plain HTTP (404, 426, …) itself, bound the head's size
//! and time, and only then hand the socket to tungstenite as a WebSocket.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::chat;

/// Largest HTTP request head accepted; browsers send well under 2 KiB.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Per-connection read buffer. tungstenite's default is 128 KiB, which is
/// 1.25 GiB for 10,000 idle connections; larger messages still arrive whole.
const READ_BUFFER: usize = 4 * 1024;
/// How long a closing connection waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Limits of the WebSocket server.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Connections served at once; more are answered `503`.
    pub max_connections: usize,
    /// Largest message (and frame) accepted; larger ones are closed with 1009.
    pub max_message_size: usize,
    /// Time a new connection has to send its whole request head.
    pub handshake_timeout: Duration,
    /// Stack size of each connection thread.
    pub stack_size: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_connections: 10_000,
            max_message_size: 4 << 20,
            handshake_timeout: Duration::from_secs(5),
            stack_size: 128 << 10,
        }
    }
}

/// What a WebSocket endpoint does with each message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Endpoint {
    /// `/ws`: the seed's server, replying `Recebido: <msg>`.
    Reply,
    /// `/echo`: exact echo, for conformance tools.
    Echo,
}

fn route(path: &str) -> Option<Endpoint> {
    match path {
        "/ws" => Some(Endpoint::Reply),
        "/echo" => Some(Endpoint::Echo),
        _ => None,
    }
}

/// Why a connection ended other than by a normal close.
#[derive(Debug)]
pub enum ConnError {
    /// The request was answered with an HTTP error status and no upgrade.
    Rejected(u16),
    /// The peer sent nothing usable before the handshake deadline.
    HandshakeTimeout,
    Io(io::Error),
    WebSocket(WsError),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Rejected(status) => write!(f, "rejected with HTTP {status}"),
            ConnError::HandshakeTimeout => f.write_str("handshake timed out"),
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

/// A bound WebSocket server, ready to [`run`](WsServer::run).
pub struct WsServer {
    listener: TcpListener,
    config: Arc<WsConfig>,
    active: Arc<AtomicUsize>,
}

impl WsServer {
    pub fn bind(addr: &str, config: WsConfig) -> io::Result<WsServer> {
        Ok(WsServer {
            listener: TcpListener::bind(addr)?,
            config: Arc::new(config),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, one thread each. The accept loop only
    /// counts and spawns: it never reads from a peer, so a slow handshake
    /// cannot hold up the next connection.
    pub fn run(self) -> io::Result<()> {
        info!("ws listening on ws://{}/ws", self.local_addr()?);
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => self.dispatch(stream),
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    warn!("ws accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    fn dispatch(&self, mut stream: TcpStream) {
        let Some(slot) = Slot::take(&self.active, self.config.max_connections) else {
            warn!(
                "ws connection refused: {} connections open",
                self.config.max_connections
            );
            // A fresh socket's send buffer is empty: this small write cannot block.
            let _ = stream.write_all(&http_error(503, "too many connections\n", ""));
            return;
        };
        let config = Arc::clone(&self.config);
        let spawned = thread::Builder::new()
            .name("ws-conn".into())
            .stack_size(config.stack_size)
            .spawn(move || {
                let _slot = slot;
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
                debug!("{peer}: connected");
                match handle_client(stream, &config) {
                    Ok(()) => debug!("{peer}: closed"),
                    Err(e) => debug!("{peer}: closed: {e}"),
                }
            });
        if let Err(e) = spawned {
            // The closure, and with it the stream and the slot, is dropped.
            warn!("ws connection dropped: cannot spawn a thread: {e}");
        }
    }
}

/// One counted connection; the count goes down when it is dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection: reads the request head, upgrades known paths to a
/// WebSocket and answers every other request with an HTTP error.
pub fn handle_client(mut stream: TcpStream, config: &WsConfig) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let deadline = Instant::now() + config.handshake_timeout;
    let (request, leftover) = match read_request_head(&mut stream, deadline)? {
        Head::Request(request, leftover) => (request, leftover),
        Head::Invalid(status, why) => return reject(&mut stream, status, why, ""),
    };
    let Some(endpoint) = route(request.uri().path()) else {
        return reject(
            &mut stream,
            404,
            "not found: WebSocket endpoints are /ws and /echo\n",
            "",
        );
    };
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
    stream.set_read_timeout(None)?;

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(ws_config));
    serve(ws, endpoint)
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
fn reject(stream: &mut TcpStream, status: u16, body: &str, headers: &str) -> Result<(), ConnError> {
    stream.write_all(&http_error(status, body, headers))?;
    Err(ConnError::Rejected(status))
}

fn http_error(status: u16, body: &str, headers: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
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

/// The message loop of one upgraded connection.
fn serve(mut ws: WebSocket<TcpStream>, endpoint: Endpoint) -> Result<(), ConnError> {
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(WsError::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(close_after_error(ws, e)),
        };
        let reply = match (message, endpoint) {
            (Message::Text(text), Endpoint::Reply) => {
                debug!("ws text message, {} bytes", text.len());
                Message::text(chat::ws_reply_text(text.as_str()))
            }
            (Message::Binary(data), Endpoint::Reply) => {
                debug!("ws binary message, {} bytes", data.len());
                Message::binary(chat::ws_reply_binary(&data))
            }
            (message @ (Message::Text(_) | Message::Binary(_)), Endpoint::Echo) => message,
            // Pings are answered and close handshakes completed by tungstenite.
            _ => continue,
        };
        ws.send(reply)?;
    }
}

/// Fails the connection as RFC 6455 asks: a close frame with the code that
/// names the error, then the TCP connection is closed at once. Reading on for
/// a moment keeps unread input from turning the close into a reset that could
/// destroy the close frame before the peer reads it.
fn close_after_error(mut ws: WebSocket<TcpStream>, error: WsError) -> ConnError {
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
    let stream = ws.get_mut();
    if stream.shutdown(Shutdown::Write).is_ok()
        && stream.set_read_timeout(Some(CLOSE_GRACE)).is_ok()
    {
        let mut sink = [0u8; 1024];
        // Bounded: at most 64 KiB, and each read returns or times out.
        for _ in 0..64 {
            if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
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
    fn routes() {
        assert_eq!(route("/ws"), Some(Endpoint::Reply));
        assert_eq!(route("/echo"), Some(Endpoint::Echo));
        assert_eq!(route("/"), None);
        assert_eq!(route("/ws/"), None);
    }

    #[test]
    fn http_errors_are_well_formed() {
        let text = String::from_utf8(http_error(404, "nope\n", "")).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nnope\n"));
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let active = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&active, 2).unwrap();
        let _b = Slot::take(&active, 2).unwrap();
        assert!(Slot::take(&active, 2).is_none());
        drop(a);
        assert!(Slot::take(&active, 2).is_some());
    }
}
