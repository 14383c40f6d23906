//! The `ws-flush` thread: one per process, it waits (`poll`) on the sockets
//! of peers that have bytes queued and writes them as they drain, cutting
//! off a peer that takes nothing for its write timeout.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::{Flushed, Peer};
use crate::{lock, sys};

/// The process's one flusher thread.
pub(super) struct Flusher {
    incoming: Mutex<Vec<Arc<Peer>>>,
    wake: UnixStream,
}

pub(super) static FLUSHER: OnceLock<Flusher> = OnceLock::new();
static FLUSHER_START: Mutex<()> = Mutex::new(());

/// Starts the process's flusher thread unless it runs already. Servers call
/// it when they bind, so a failure is an error at start-up, and the thread
/// count is settled from the start.
pub fn start_flusher() -> io::Result<()> {
    let _once = lock(&FLUSHER_START);
    if FLUSHER.get().is_some() {
        return Ok(());
    }
    let (wake, wakened) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    wakened.set_nonblocking(true)?;
    // Set before the thread runs: it reads FLUSHER for new registrations.
    let _ = FLUSHER.set(Flusher {
        incoming: Mutex::new(Vec::new()),
        wake,
    });
    crate::threads::spawn_helper("ws-flush", move || run(wakened))?;
    Ok(())
}

impl Flusher {
    pub(super) fn register(&self, peer: Arc<Peer>) {
        lock(&self.incoming).push(peer);
        // A full wake socket already holds a wake-up: nothing is lost.
        let _ = (&self.wake).write(&[1]);
    }
}

fn run(wakened: UnixStream) {
    let mut peers: Vec<(Arc<Peer>, Option<Instant>)> = Vec::new();
    let mut fds: Vec<sys::PollFd> = Vec::new();
    loop {
        let Some(flusher) = FLUSHER.get() else { return };
        for peer in lock(&flusher.incoming).drain(..) {
            let deadline = peer.write_deadline(Instant::now());
            peers.push((peer, deadline));
        }
        fds.clear();
        fds.push(sys::poll_fd(wakened.as_raw_fd(), false));
        fds.extend(
            peers
                .iter()
                .map(|(p, _)| sys::poll_fd(p.socket.as_raw_fd(), true)),
        );
        let now = Instant::now();
        let timeout = peers
            .iter()
            .filter_map(|(_, deadline)| *deadline)
            .map(|deadline| deadline.saturating_duration_since(now))
            .min();
        sys::poll(&mut fds, timeout);
        if sys::is_ready(&fds[0]) {
            let mut sink = [0u8; 64];
            while matches!((&wakened).read(&mut sink), Ok(n) if n > 0) {}
        }
        let now = Instant::now();
        let mut i = 0;
        while i < peers.len() {
            let ready = sys::is_ready(&fds[i + 1]);
            let (peer, deadline) = &mut peers[i];
            let keep = if ready || deadline.is_some_and(|d| now >= d) {
                match peer.flush() {
                    Flushed::Waiting(Some(next)) if now >= next => {
                        peer.abort();
                        false
                    }
                    Flushed::Waiting(next) => {
                        *deadline = next;
                        true
                    }
                    Flushed::Done | Flushed::Dead => false,
                }
            } else {
                true
            };
            if keep {
                i += 1;
            } else {
                // Keep `fds` in step with `peers` for the rest of this pass.
                peers.swap_remove(i);
                fds.swap_remove(i + 1);
            }
        }
    }
}
