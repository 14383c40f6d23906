//! A connection before its upgrade: plain TCP, or TLS over it. Only the
//! connection's own thread uses it, with blocking reads and writes bounded
//! by the socket's timeouts, so the handshake deadline covers the TLS
//! handshake too. After the upgrade a TLS session moves into the `Peer`,
//! where the reader and the writers share it (see `peer`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

pub(super) enum Front {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Front {
    pub fn new(socket: TcpStream, tls: Option<Arc<ServerConfig>>) -> io::Result<Front> {
        Ok(match tls {
            None => Front::Plain(socket),
            Some(config) => {
                let session = ServerConnection::new(config).map_err(io::Error::other)?;
                Front::Tls(Box::new(StreamOwned::new(session, socket)))
            }
        })
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Front::Plain(socket) => socket,
            Front::Tls(tls) => tls.get_ref(),
        }
    }

    /// Says goodbye at the TLS level (a `close_notify`) before the socket
    /// closes, so an HTTP answer is not taken for a truncated one.
    pub fn end(&mut self) {
        if let Front::Tls(tls) = self {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    }

    /// The socket, and the TLS session if there is one, for the `Peer`.
    pub fn into_parts(self) -> (TcpStream, Option<ServerConnection>) {
        match self {
            Front::Plain(socket) => (socket, None),
            Front::Tls(tls) => {
                let (session, socket) = tls.into_parts();
                (socket, Some(session))
            }
        }
    }
}

impl Read for Front {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Front::Plain(socket) => socket.read(buf),
            Front::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Front {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Front::Plain(socket) => socket.write(buf),
            Front::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Front::Plain(socket) => socket.flush(),
            Front::Tls(tls) => tls.flush(),
        }
    }
}

/// Why a TLS handshake failed, as a metrics label; `None` if the error is
/// not a TLS one.
pub(super) fn handshake_failure(e: &io::Error) -> Option<&'static str> {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return Some("timeout");
    }
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        rustls::Error::AlertReceived(_) => "alert",
        _ => "other",
    })
}
