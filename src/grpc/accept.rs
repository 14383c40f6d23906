//! The gRPC port's accept loop. C-core (1.56, grpcio's) has no limit on the
//! connections it accepts, and each one costs it buffers and a transport,
//! so papo listens itself: one `grpc-accept` thread accepts, hands each
//! connection to C-core, and closes at once those past
//! `--grpc-max-connections`. It learns that C-core is done with a
//! connection from a second descriptor of its socket, polled for hang-up
//! only: C-core shuts a connection down both ways before it closes it.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::metrics::Metrics;
use crate::sys::{self, Epoll};
use crate::{lock, ws};

/// Epoll tokens: the listener, the stop signal, then one per connection.
const LISTENER: u64 = 0;
const STOP: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

/// How long the loop backs off when `accept` fails (out of descriptors or
/// memory) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The running accept loop; dropping it stops the loop and closes the
/// listener (connections already handed over are C-core's).
pub(super) struct Acceptor {
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
}

/// What the loop needs.
pub(super) struct Listening {
    pub listener: TcpListener,
    pub server: Arc<Mutex<grpcio::Server>>,
    pub max_connections: usize,
    pub metrics: Arc<Metrics>,
}

impl Acceptor {
    pub fn start(listening: Listening) -> io::Result<Acceptor> {
        listening.listener.set_nonblocking(true)?;
        let (stop, stopped) = UnixStream::pair()?;
        let epoll = Epoll::new()?;
        epoll.add(listening.listener.as_raw_fd(), LISTENER)?;
        epoll.add(stopped.as_raw_fd(), STOP)?;
        let thread = thread::Builder::new()
            .name("grpc-accept".into())
            .stack_size(ws::HELPER_STACK)
            .spawn(move || {
                let _stopped = stopped;
                Loop {
                    listening,
                    epoll,
                    open: HashMap::new(),
                    next_token: FIRST_CONNECTION,
                    refusal_logged: None,
                }
                .run();
            })?;
        Ok(Acceptor {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting; returns once the listener is closed.
    pub fn stop(&mut self) {
        let _ = self.stop.write_all(b"x");
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Loop {
    listening: Listening,
    epoll: Epoll,
    /// The watch on each connection C-core serves, by token.
    open: HashMap<u64, OwnedFd>,
    next_token: u64,
    refusal_logged: Option<Instant>,
}

impl Loop {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            if let Err(e) = self.epoll.wait(&mut ready, Duration::MAX) {
                warn!("grpc accept loop: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            for &token in &ready {
                match token {
                    STOP => return,
                    LISTENER => self.accept_all(),
                    done => self.closed(done),
                }
            }
        }
    }

    /// Takes every connection waiting on the listener.
    fn accept_all(&mut self) {
        loop {
            let socket = match self.listening.listener.accept() {
                Ok((socket, _)) => socket,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("grpc accept failed: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                    return;
                }
            };
            let max = self.listening.max_connections;
            if self.open.len() >= max {
                self.refuse(max);
                continue;
            }
            let watch = match sys::hand_to_grpc(&mut lock(&self.listening.server), socket) {
                Ok(watch) => watch,
                Err(e) => {
                    debug!("grpc connection dropped before it was served: {e}");
                    continue;
                }
            };
            let token = self.next_token;
            self.next_token += 1;
            // Unwatched, a connection still works; it just is not counted.
            if self.epoll.add_for_hangup(watch.as_raw_fd(), token).is_ok() {
                self.open.insert(token, watch);
                self.count();
            }
        }
    }

    /// C-core is done with a connection: its slot is free.
    fn closed(&mut self, token: u64) {
        if let Some(watch) = self.open.remove(&token) {
            let _ = self.epoll.remove(watch.as_raw_fd());
            self.count();
        }
    }

    fn count(&self) {
        let open = self.open.len() as u64;
        self.listening
            .metrics
            .grpc_active
            .store(open, Ordering::Relaxed);
    }

    /// Closes a connection past the limit (dropped by the caller), counting
    /// it and saying so at most once per interval.
    fn refuse(&mut self, max: usize) {
        let metrics = &self.listening.metrics;
        let refused = metrics.grpc_refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .refusal_logged
            .is_none_or(|t| t.elapsed() >= ws::REFUSAL_LOG_INTERVAL)
        {
            self.refusal_logged = Some(Instant::now());
            warn!(
                "grpc connection refused: {max} connections open ({refused} refused so far); \
                 raise --grpc-max-connections to allow more"
            );
        }
    }
}
