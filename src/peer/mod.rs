//! Writing to WebSocket peers without ever waiting on them.
//!
//! A peer's socket is read only by its own connection thread, which blocks in
//! `read`. Every write (tungstenite's replies and pongs, chat fan-out from
//! other threads, close frames) goes through [`Peer::send`]: under the peer's
//! lock it writes what the socket takes right now (`MSG_DONTWAIT`) and queues
//! the rest, whole frames only, so frames never interleave. The one
//! `ws-flush` thread (`flusher`) of the process waits (`poll`) on the sockets that have
//! queued bytes and writes them as they drain; a peer that takes nothing for
//! the write timeout, or whose queue is full, is cut off. An idle peer costs
//! nothing here: no thread, no timer, no wake-up.
//!
//! Over TLS the same holds, with the rustls session kept under the same lock
//! (a session cannot be split into a read half and a write half). The
//! connection thread blocks in `recv` on the raw socket with no lock held,
//! then takes the lock only to feed the bytes in and take the plaintext out
//! ([`Peer::read`]). A writer takes it to encrypt a small frame and send
//! the ciphertext without waiting; a larger frame queues, shared, and is
//! handed to the session a record at a time as the socket drains, so the
//! session holds at most one record beyond what the socket took and the
//! queue's bounds hold as they do in plaintext.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};
use rustls::ServerConnection;

use crate::queue::SendError;

mod flusher;
mod tls;
use crate::throttle::Throttle;
use crate::{lock, sys};
pub use flusher::start_flusher;
use flusher::FLUSHER;
use tls::{send_tls, TLS_CHUNK};

/// Peers cut off for the write deadline.
static DROPPED: Throttle = Throttle::new();

/// How often a closing connection looks whether its queue has drained.
const LINGER_POLL: Duration = Duration::from_millis(5);

/// Bounds of one peer's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Frames queued at most.
    pub frames: usize,
    /// Bytes queued at most (a single frame larger than this still fits alone).
    pub bytes: usize,
    /// Longest time the socket may take no bytes while some are queued
    /// (`None`: no limit).
    pub write_timeout: Option<Duration>,
}

#[derive(Default)]
struct Outbound {
    /// The TLS session, for a `wss` peer.
    tls: Option<Box<ServerConnection>>,
    frames: VecDeque<Arc<[u8]>>,
    /// Bytes of the front frame already written.
    written: usize,
    bytes: usize,
    /// When the socket last took bytes, while some are queued.
    progress: Option<Instant>,
    /// In the flusher's set.
    registered: bool,
    /// Shut the socket once the queue is written.
    closing: bool,
    broken: bool,
}

impl Outbound {
    /// The TLS session of a peer made with one.
    fn session(&mut self) -> io::Result<&mut ServerConnection> {
        self.tls
            .as_deref_mut()
            .ok_or_else(|| io::Error::other("a plaintext peer has no TLS session"))
    }
}

/// An upgraded connection's socket and its outbound queue.
pub struct Peer {
    socket: TcpStream,
    /// Whether `out` holds a TLS session: fixed at the upgrade, so that a
    /// plaintext peer's reads never take the lock.
    encrypted: bool,
    out: Mutex<Outbound>,
    limits: OutboundLimits,
    /// Set on every read from the socket, cleared by the keepalive.
    heard: AtomicBool,
    /// The keepalive gave up on the peer.
    silent: AtomicBool,
    /// The keepalive pinged the peer and no pong has come back yet.
    pinged: AtomicBool,
    /// The close frame went out and the write side is shut: the peer has
    /// until the keepalive's grace to close its side.
    lingering: AtomicBool,
    /// A close frame is queued or sent: nothing the peer says counts now.
    closing: AtomicBool,
}

/// What a flush step left behind.
enum Flushed {
    /// Queue empty: the peer leaves the flusher's set.
    Done,
    /// Bytes remain; give up at this instant if the socket takes none
    /// (`None`: never, the write timeout is off).
    Waiting(Option<Instant>),
    /// Closed or broken: leave the set.
    Dead,
}

impl Peer {
    /// A peer on `socket`; `tls` is its session, its handshake done.
    pub fn new(
        socket: TcpStream,
        limits: OutboundLimits,
        tls: Option<ServerConnection>,
    ) -> Arc<Peer> {
        let encrypted = tls.is_some();
        let tls = tls.map(|mut session| {
            // The queue bounds what waits; the session holds at most one
            // small frame or one record of a larger one (`TLS_CHUNK`).
            session.set_buffer_limit(None);
            Box::new(session)
        });
        Arc::new(Peer {
            socket,
            encrypted,
            out: Mutex::new(Outbound {
                tls,
                ..Outbound::default()
            }),
            limits,
            heard: AtomicBool::new(true),
            silent: AtomicBool::new(false),
            pinged: AtomicBool::new(false),
            lingering: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        })
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// The connection thread's read: from the socket, or over TLS the
    /// plaintext of what arrived. Blocks in `recv` holding no lock.
    pub fn read(self: &Arc<Self>, buf: &mut [u8]) -> io::Result<usize> {
        if !self.encrypted {
            let n = (&self.socket).read(buf)?;
            if n > 0 {
                self.note_heard();
            }
            return Ok(n);
        }
        loop {
            {
                let mut out = lock(&self.out);
                match out.session()?.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    plaintext => return plaintext,
                }
            }
            // The caller's buffer takes the ciphertext first: the session
            // copies it in before any plaintext is written there, and an
            // idle connection keeps no buffer of its own.
            let n = (&self.socket).read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.note_heard();
            self.take_in(&buf[..n])?;
        }
    }

    /// Feeds ciphertext to the session, and sends what it answers (alerts,
    /// key updates); what the socket does not take now, the flusher sends.
    fn take_in(self: &Arc<Self>, mut ciphertext: &[u8]) -> io::Result<()> {
        let mut out = lock(&self.out);
        let session = out.session()?;
        let mut result = Ok(());
        while !ciphertext.is_empty() && result.is_ok() {
            result = session
                .read_tls(&mut ciphertext)
                .and_then(|_| session.process_new_packets().map_err(io::Error::other))
                .map(drop);
        }
        match send_tls(session, &self.socket) {
            Ok((_, true)) => {}
            Ok((_, false)) => self.ensure_flushing(out),
            Err(e) => {
                out.broken = true;
                let _ = self.socket.shutdown(Shutdown::Both);
                return Err(e);
            }
        }
        result
    }

    /// Notes that the peer sent something. Called on every read: the load
    /// keeps the flag's cache line clean while it is already set.
    pub fn note_heard(&self) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the peer sent anything since the last call.
    pub fn take_heard(&self) -> bool {
        self.heard.swap(false, Ordering::Relaxed)
    }

    /// Sends the keepalive's ping (a ready-made frame).
    pub fn ping(self: &Arc<Self>, frame: Arc<[u8]>) {
        self.pinged.store(true, Ordering::Relaxed);
        let _ = self.send(frame);
    }

    /// Whether a pong answers the keepalive's ping (once per ping): an
    /// unsolicited pong answers nothing.
    pub fn take_pinged(&self) -> bool {
        self.pinged.load(Ordering::Relaxed) && self.pinged.swap(false, Ordering::Relaxed)
    }

    /// Cuts off a peer that did not answer a ping; its blocked `read` ends.
    pub fn cut_off_silent(&self) {
        self.silent.store(true, Ordering::Release);
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Whether the peer was cut off for not answering a ping.
    pub fn was_silent(&self) -> bool {
        self.silent.load(Ordering::Acquire)
    }

    /// Writes `frame` as far as the socket takes it now and queues the rest.
    /// Never blocks on the peer.
    pub fn send(self: &Arc<Self>, frame: Arc<[u8]>) -> Result<(), SendError> {
        self.send_with(&frame, || frame.clone(), true)
    }

    /// [`Peer::send`] for a frame of a replay: bounded by bytes only, as a
    /// resuming member is owed the whole of what it missed at once.
    pub fn send_replayed(self: &Arc<Self>, frame: Arc<[u8]>) -> Result<(), SendError> {
        self.send_with(&frame, || frame.clone(), false)
    }

    /// [`Peer::send`] for a borrowed frame: copied only if some of it must
    /// wait, so an idle connection's replies cost no allocation here.
    pub fn send_slice(self: &Arc<Self>, frame: &[u8]) -> Result<(), SendError> {
        self.send_with(frame, || frame.into(), true)
    }

    fn send_with(
        self: &Arc<Self>,
        frame: &[u8],
        owned: impl FnOnce() -> Arc<[u8]>,
        count_bound: bool,
    ) -> Result<(), SendError> {
        let mut out = lock(&self.out);
        if out.closing || out.broken {
            return Err(SendError::Closed);
        }
        if let (true, Some(session)) = (out.frames.is_empty(), out.tls.as_mut()) {
            if !session.wants_write() && frame.len() <= TLS_CHUNK {
                // A small frame is encrypted at once; what the socket
                // refuses stays in the session (one record) for the flusher.
                let sent = session
                    .writer()
                    .write_all(frame)
                    .and_then(|()| send_tls(session, &self.socket));
                return match sent {
                    Ok((_, true)) => Ok(()),
                    Ok((_, false)) => {
                        self.ensure_flushing(out);
                        Ok(())
                    }
                    Err(e) => {
                        debug!("peer write failed: {e}");
                        out.broken = true;
                        let _ = self.socket.shutdown(Shutdown::Both);
                        Err(SendError::Closed)
                    }
                };
            }
            // A larger frame, or ciphertext still waiting: the frame queues,
            // shared, and is encrypted a record at a time as the socket
            // drains.
            out.written = 0;
        } else if out.frames.is_empty() {
            match sys::send_nonblocking(&self.socket, frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => out.written = n,
                // The socket is full: all of the frame waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.written = 0,
                Err(e) => {
                    debug!("peer write failed: {e}");
                    out.broken = true;
                    let _ = self.socket.shutdown(Shutdown::Both);
                    return Err(SendError::Closed);
                }
            }
        } else if count_bound && out.frames.len() >= self.limits.frames
            || out.bytes + frame.len() > self.limits.bytes
        {
            return Err(SendError::Full);
        }
        out.bytes += frame.len();
        out.frames.push_back(owned());
        self.ensure_flushing(out);
        Ok(())
    }

    /// Bytes that may still be queued before the byte bound refuses more.
    pub fn room_in_bytes(&self) -> usize {
        self.limits.bytes.saturating_sub(lock(&self.out).bytes)
    }

    /// Ends the connection: drops what is queued (but a frame already half
    /// written, which must be finished for the stream to stay valid), writes
    /// `last` (a close frame), then shuts the socket, which wakes the
    /// connection's thread. Never blocks on the peer.
    pub fn close_with(self: &Arc<Self>, last: Arc<[u8]>) {
        let mut out = lock(&self.out);
        if out.closing || out.broken {
            return;
        }
        out.closing = true;
        self.closing.store(true, Ordering::Release);
        let keep = usize::from(out.written > 0);
        out.frames.truncate(keep);
        out.bytes = out.frames.iter().map(|f| f.len()).sum();
        out.frames.push_back(last);
        self.ensure_flushing(out);
    }

    fn ensure_flushing(self: &Arc<Self>, mut out: MutexGuard<'_, Outbound>) {
        out.progress.get_or_insert_with(Instant::now);
        if !out.registered {
            out.registered = true;
            drop(out);
            match FLUSHER.get() {
                Some(flusher) => flusher.register(Arc::clone(self)),
                // Only a server that never bound has no flusher: cut off
                // rather than let the queue wait forever.
                None => self.abort(),
            }
        }
    }

    /// Writes queued bytes until the socket is full or the queue empty.
    fn flush(&self) -> Flushed {
        let mut out = lock(&self.out);
        if out.tls.is_some() {
            return self.flush_tls(out);
        }
        while let Some(front) = out.frames.front().cloned() {
            match sys::send_nonblocking(&self.socket, &front[out.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    out.progress = Some(Instant::now());
                    out.written += n;
                    if out.written == front.len() {
                        out.frames.pop_front();
                        out.bytes -= front.len();
                        out.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    out.broken = true;
                    let _ = self.socket.shutdown(Shutdown::Both);
                    return Flushed::Dead;
                }
            }
        }
        if !out.frames.is_empty() {
            let since = *out.progress.get_or_insert_with(Instant::now);
            return Flushed::Waiting(self.write_deadline(since));
        }
        out.progress = None;
        out.registered = false;
        if out.closing {
            self.shut_write();
            return Flushed::Dead;
        }
        Flushed::Done
    }

    /// The last frame is out: shuts the write side only, so the peer's
    /// answer can still be read (input left unread would turn the close
    /// into a reset that destroys the close frame in flight). The
    /// connection's thread reads on; the keepalive cuts a peer that does not
    /// close its side within its grace ([`Peer::lingering`]).
    fn shut_write(&self) {
        let _ = self.socket.shutdown(Shutdown::Write);
        self.lingering.store(true, Ordering::Release);
    }

    /// Whether papo is closing the connection (a close frame is queued or
    /// out): what the peer sends now is not acted on.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the close frame is out and the peer is awaited.
    pub fn lingering(&self) -> bool {
        self.lingering.load(Ordering::Acquire)
    }

    /// Cuts off a peer that did not close its side after papo's close
    /// frame; its blocked `read` ends.
    pub fn cut(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Ends the connection on its own thread, once it has sent its close
    /// frame: lets the queue drain, shuts the write side, then reads and
    /// discards what the peer still sends until it closes its side, for at
    /// most `grace` and `max_bytes`, so that unread input does not turn the
    /// close into a reset that destroys the close frame before the peer
    /// reads it.
    pub fn linger(&self, grace: Duration, max_bytes: usize) {
        let deadline = Instant::now() + grace;
        loop {
            let out = lock(&self.out);
            let waiting =
                !out.frames.is_empty() || out.tls.as_ref().is_some_and(|s| s.wants_write());
            if !waiting || out.broken || Instant::now() >= deadline {
                break;
            }
            drop(out);
            std::thread::sleep(LINGER_POLL);
        }
        self.closing.store(true, Ordering::Release);
        if !self.lingering() {
            let mut out = lock(&self.out);
            out.closing = true;
            out.frames.clear();
            out.bytes = 0;
            if let Some(session) = out.tls.as_mut() {
                session.send_close_notify();
                let _ = send_tls(session, &self.socket);
            }
            drop(out);
            self.shut_write();
        }
        let mut sink = [0u8; 4096];
        let mut left = max_bytes;
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() || self.socket.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            match (&self.socket).read(&mut sink) {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }

    /// When a peer that has taken no bytes since `since` is cut off.
    fn write_deadline(&self, since: Instant) -> Option<Instant> {
        since.checked_add(self.limits.write_timeout?)
    }

    /// The write deadline passed: cut the peer off, and say so, throttled
    /// (any peer can stop reading).
    fn abort(&self) {
        if let Some(times) = DROPPED.occurred() {
            warn!(
                "dropping WebSocket peers that took no data for {:?}: {times} since the last warning",
                self.limits.write_timeout.unwrap_or_default(),
            );
        }
        let mut out = lock(&self.out);
        out.broken = true;
        out.frames.clear();
        out.bytes = 0;
        out.registered = false;
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn only_a_pong_to_the_keepalives_ping_counts() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = listener.accept().unwrap();
        start_flusher().unwrap();
        let limits = OutboundLimits {
            frames: 8,
            bytes: 1 << 20,
            write_timeout: Some(Duration::from_secs(1)),
        };
        let peer = Peer::new(socket, limits, None);
        assert!(!peer.take_pinged(), "an unsolicited pong");
        peer.ping(Arc::from(&[0x89u8, 0][..]));
        assert!(peer.take_pinged());
        assert!(!peer.take_pinged(), "a second pong to one ping");
    }
}
