//! A `wss` peer's writes: rustls's ciphertext sent without waiting, and
//! queued frames handed to the session a record at a time as the socket
//! drains, so a session never holds a whole large frame encrypted.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use rustls::ServerConnection;

use super::{Flushed, Outbound, Peer};
use crate::sys;

/// The socket as rustls writes to it: one non-blocking send per call.
struct NonBlocking<'a>(&'a TcpStream);

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send_nonblocking(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends what ciphertext the session holds, as far as the socket takes it
/// now: the bytes sent, and whether that was all.
pub(super) fn send_tls(
    session: &mut ServerConnection,
    socket: &TcpStream,
) -> io::Result<(usize, bool)> {
    let mut sent = 0;
    while session.wants_write() {
        match session.write_tls(&mut NonBlocking(socket)) {
            Ok(0) => return Ok((sent, false)),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((sent, false)),
            Err(e) => return Err(e),
        }
    }
    Ok((sent, true))
}

/// Most plaintext handed to a TLS session at once: one record's worth, so
/// a session holds at most one record of ciphertext beyond what the socket
/// took, and a frame queued for many members stays one shared copy.
pub(super) const TLS_CHUNK: usize = 16 * 1024;

/// Sends the session's ciphertext, and hands it the queued frames a record
/// at a time while the socket takes what it makes. `written` is how much of
/// the front frame the session has had. Returns the ciphertext bytes sent
/// and whether everything queued went.
pub(super) fn pump_tls(
    session: &mut ServerConnection,
    socket: &TcpStream,
    frames: &mut VecDeque<Arc<[u8]>>,
    written: &mut usize,
    bytes: &mut usize,
) -> io::Result<(usize, bool)> {
    let mut total = 0;
    loop {
        let (sent, all) = send_tls(session, socket)?;
        total += sent;
        if !all {
            return Ok((total, false));
        }
        let Some(front) = frames.front() else {
            return Ok((total, true));
        };
        let end = written.saturating_add(TLS_CHUNK).min(front.len());
        session.writer().write_all(&front[*written..end])?;
        *written = end;
        if end == front.len() {
            *bytes -= front.len();
            frames.pop_front();
            *written = 0;
        }
    }
}

impl Peer {
    /// [`Peer::flush`] over TLS: the session's ciphertext first, then each
    /// queued frame, encrypted only when the one before has gone.
    pub(super) fn flush_tls(&self, mut out: MutexGuard<'_, Outbound>) -> Flushed {
        let Outbound {
            tls: Some(session),
            frames,
            written,
            bytes,
            progress,
            broken,
            ..
        } = &mut *out
        else {
            return Flushed::Dead;
        };
        let before = *written;
        let pumped = pump_tls(session, &self.socket, frames, written, bytes);
        match pumped {
            Err(_) => {
                *broken = true;
                let _ = self.socket.shutdown(Shutdown::Both);
                return Flushed::Dead;
            }
            Ok((sent, all)) => {
                if sent > 0 || *written != before {
                    *progress = Some(Instant::now());
                }
                if !all {
                    let since = *progress.get_or_insert_with(Instant::now);
                    return Flushed::Waiting(self.write_deadline(since));
                }
            }
        }
        *progress = None;
        out.registered = false;
        if out.closing {
            if let Some(session) = out.tls.as_mut() {
                session.send_close_notify();
                let _ = send_tls(session, &self.socket);
            }
            self.shut_write();
            return Flushed::Dead;
        }
        Flushed::Done
    }
}
