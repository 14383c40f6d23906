//! gRPC over TLS, terminated by papo: C-core 1.56 takes a connection papo
//! accepted only in plaintext, and its own TLS listener has no connection
//! limit. So the accept loop counts TLS connections like plaintext ones and
//! gives each a `grpc-tls` thread: it does the handshake with rustls (the
//! certificate the WebSocket port uses, ALPN `h2`, the client CA for mutual
//! TLS), and reads the HTTP/2 preface and settings, all within
//! `--handshake-timeout`; then hands C-core one end of a socket pair and
//! moves bytes between it and the TLS session until either side closes. A relay is a blocked thread and two buffers, as a WebSocket
//! connection is.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::debug;
use rustls::{ServerConfig, ServerConnection};

use super::preface::{self, Preface};
use crate::{lock, sys};

/// Plaintext moved at once, each way.
const CHUNK: usize = 16 * 1024;

/// One relay's place among the connections the limit counts: given back
/// when the relay ends.
pub(super) struct Place(pub Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a relay needs.
pub(super) struct Relay {
    pub socket: TcpStream,
    pub config: Arc<ServerConfig>,
    pub server: Arc<Mutex<grpcio::Server>>,
    pub handshake_timeout: Duration,
    /// A peer that takes nothing for this long is cut off (`None`: never).
    pub write_timeout: Option<Duration>,
}

impl Relay {
    /// Serves the connection until it closes.
    pub fn run(self, _place: Place) {
        let socket = self.socket.try_clone();
        if let Err(e) = self.serve() {
            debug!("grpc TLS connection ended: {e}");
        }
        if let Ok(socket) = socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn serve(self) -> io::Result<()> {
        let mut socket = self.socket;
        socket.set_nodelay(true)?;
        let mut session = ServerConnection::new(self.config).map_err(io::Error::other)?;
        let deadline = Instant::now() + self.handshake_timeout;
        while session.is_handshaking() {
            socket.set_read_timeout(Some(left(deadline)?))?;
            session.complete_io(&mut socket)?;
        }
        // Then, within the same deadline, the HTTP/2 preface and settings,
        // before C-core is given anything.
        let mut first = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            // What the session has already (the preface may have come with
            // the handshake's last flight), then the socket.
            loop {
                match session.reader().read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => first.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            match preface::state(&first) {
                Preface::Complete => break,
                Preface::Invalid => return Err(io::ErrorKind::InvalidData.into()),
                Preface::Incomplete => {}
            }
            socket.set_read_timeout(Some(left(deadline)?))?;
            if session.read_tls(&mut socket)? == 0 {
                return Ok(());
            }
            session.process_new_packets().map_err(io::Error::other)?;
            send_all(&mut session, &mut socket)?;
        }
        socket.set_read_timeout(None)?;
        socket.set_write_timeout(self.write_timeout)?;
        let (mut ours, theirs) = UnixStream::pair()?;
        sys::hand_stream_to_grpc(&mut lock(&self.server), theirs)?;
        ours.write_all(&first)?;
        drop(first);
        let mut fds = [
            sys::poll_fd(socket.as_raw_fd(), false),
            sys::poll_fd(ours.as_raw_fd(), false),
        ];
        loop {
            sys::poll(&mut fds, None);
            if sys::is_ready(&fds[0]) {
                // Ciphertext in: its plaintext to C-core.
                if session.read_tls(&mut socket)? == 0 {
                    return Ok(());
                }
                session.process_new_packets().map_err(io::Error::other)?;
                loop {
                    match session.reader().read(&mut buf) {
                        Ok(0) => return Ok(()), // close_notify
                        Ok(n) => ours.write_all(&buf[..n])?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                send_all(&mut session, &mut socket)?;
            }
            if sys::is_ready(&fds[1]) {
                // C-core's bytes out, encrypted.
                let n = ours.read(&mut buf)?;
                if n == 0 {
                    session.send_close_notify();
                    return send_all(&mut session, &mut socket);
                }
                session.writer().write_all(&buf[..n])?;
                send_all(&mut session, &mut socket)?;
            }
        }
    }
}

/// What is left until `deadline`; an error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    match deadline.saturating_duration_since(Instant::now()) {
        Duration::ZERO => Err(io::ErrorKind::TimedOut.into()),
        left => Ok(left),
    }
}

/// Writes out all the ciphertext the session holds.
fn send_all(session: &mut ServerConnection, socket: &mut TcpStream) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(socket)?;
    }
    Ok(())
}
