//! Why a connection ended other than by a normal close, and how the
//! metrics count it.

use std::fmt;
use std::io;

use tungstenite::Error as WsError;

use super::budget::is_inbound_full;
use crate::metrics::CloseReason;

/// Why a connection ended other than by a normal close.
#[derive(Debug)]
pub(super) enum ConnError {
    /// The request was answered with an HTTP status and no upgrade.
    Rejected(u16),
    /// The peer sent nothing usable before the handshake deadline.
    HandshakeTimeout,
    /// The TLS handshake failed, for this reason.
    Tls(&'static str),
    /// The peer did not answer a ping in time.
    PongTimeout,
    /// The server is shutting down.
    Shutdown,
    /// Closed by the server with this code: the peer sent what the endpoint
    /// does not take (bad JSON on `/chat`, …).
    BadInput(u16),
    Io(io::Error),
    WebSocket(WsError),
}

impl ConnError {
    pub fn reason(&self) -> CloseReason {
        match self {
            ConnError::Rejected(_) => CloseReason::Rejected,
            ConnError::HandshakeTimeout | ConnError::Tls("timeout") => {
                CloseReason::HandshakeTimeout
            }
            ConnError::Tls(_) => CloseReason::Rejected,
            ConnError::PongTimeout => CloseReason::PongTimeout,
            ConnError::Shutdown => CloseReason::Shutdown,
            ConnError::BadInput(_) => CloseReason::ProtocolError,
            ConnError::WebSocket(
                WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_),
            ) => CloseReason::ProtocolError,
            ConnError::WebSocket(WsError::Io(e)) if is_inbound_full(e) => CloseReason::Overloaded,
            ConnError::Io(_) | ConnError::WebSocket(_) => CloseReason::IoError,
        }
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Rejected(status) => write!(f, "answered HTTP {status}"),
            ConnError::HandshakeTimeout => f.write_str("handshake timed out"),
            ConnError::Tls(reason) => write!(f, "TLS handshake failed ({reason})"),
            ConnError::PongTimeout => f.write_str("no pong in time"),
            ConnError::Shutdown => f.write_str("server shutting down"),
            ConnError::BadInput(code) => write!(f, "closed with {code}"),
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
