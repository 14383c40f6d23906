//! The gRPC port's accept loop. C-core (1.56, grpcio's) has no limit on the
//! connections it accepts, and each one costs it buffers and a transport,
//! so papo listens itself: one `grpc-accept` thread accepts, closes at once
//! those past `--grpc-max-connections`, and hands a connection to C-core
//! once its HTTP/2 preface and settings have come (peeked, not read), or
//! closes it when they have not within `--handshake-timeout`: a socket that
//! never speaks holds a place for that long only. Over TLS each connection
//! gets a relay of its own (`relay`), counted against the same limit. It learns that C-core is
//! done with a connection from a second descriptor of its socket, polled
//! for hang-up only: C-core shuts a connection down both ways before it
//! closes it.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::preface::{self, Preface};
use super::relay::{Place, Relay};
use crate::lock;
use crate::metrics::Metrics;
use crate::sys::{self, Epoll};
use crate::threads::{spawn_helper, ACCEPT_BACKOFF};
use crate::throttle::Throttle;
use crate::tls::Tls;

/// Epoll tokens: the listener, the stop signal, then one per connection.
const LISTENER: u64 = 0;
const STOP: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

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
    pub handshake_timeout: Duration,
    pub write_timeout: Option<Duration>,
    /// Over TLS, each connection is a relay of its own (see `relay`).
    pub tls: Option<Arc<Tls>>,
    pub metrics: Arc<Metrics>,
}

impl Acceptor {
    pub fn start(listening: Listening) -> io::Result<Acceptor> {
        listening.listener.set_nonblocking(true)?;
        let (stop, stopped) = UnixStream::pair()?;
        let epoll = Epoll::new()?;
        epoll.add(listening.listener.as_raw_fd(), LISTENER)?;
        epoll.add(stopped.as_raw_fd(), STOP)?;
        let thread = spawn_helper("grpc-accept", move || {
            let _stopped = stopped;
            Loop {
                listening,
                epoll,
                open: HashMap::new(),
                waiting: HashMap::new(),
                deadlines: VecDeque::new(),
                peeked: vec![0; preface::MOST],
                relays: Arc::new(AtomicUsize::new(0)),
                next_token: FIRST_CONNECTION,
                refusals: Throttle::new(),
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
    /// Connections whose preface has not all come yet, by token.
    waiting: HashMap<u64, TcpStream>,
    /// When each waiting connection's time is up, in the order accepted.
    deadlines: VecDeque<(Instant, u64)>,
    /// Where a waiting connection's first bytes are peeked into.
    peeked: Vec<u8>,
    /// TLS connections being relayed.
    relays: Arc<AtomicUsize>,
    next_token: u64,
    refusals: Throttle,
}

impl Loop {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let wait = self.deadlines.front().map_or(Duration::MAX, |(at, _)| {
                at.saturating_duration_since(Instant::now())
            });
            if let Err(e) = self.epoll.wait(&mut ready, wait) {
                warn!("grpc accept loop: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            for &token in &ready {
                match token {
                    STOP => return,
                    LISTENER => self.accept_all(),
                    token if self.waiting.contains_key(&token) => self.spoke(token),
                    done => self.closed(done),
                }
            }
            self.time_out();
        }
    }

    /// Connections held by papo or C-core: what the limit counts.
    fn held(&self) -> usize {
        self.open.len() + self.waiting.len() + self.relays.load(Ordering::Acquire)
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
            if self.held() >= max {
                self.refuse(max);
                continue;
            }
            if let Some(tls) = &self.listening.tls {
                let config = Arc::clone(&tls.current().grpc);
                self.relay(socket, config);
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            // Edge-triggered: woken when more bytes come, not while the
            // ones peeked at wait unread.
            if socket.set_nonblocking(true).is_err()
                || self.epoll.add_edge(socket.as_raw_fd(), token).is_err()
            {
                continue;
            }
            let at = Instant::now() + self.listening.handshake_timeout;
            self.deadlines.push_back((at, token));
            self.waiting.insert(token, socket);
            self.spoke(token);
        }
    }

    /// Gives a TLS connection a `grpc-tls` thread of its own.
    fn relay(&mut self, socket: TcpStream, config: Arc<rustls::ServerConfig>) {
        self.relays.fetch_add(1, Ordering::AcqRel);
        let place = Place(Arc::clone(&self.relays));
        let relay = Relay {
            socket,
            config,
            server: Arc::clone(&self.listening.server),
            handshake_timeout: self.listening.handshake_timeout,
            write_timeout: self.listening.write_timeout,
        };
        let spawned = spawn_helper("grpc-tls", move || relay.run(place));
        if let Err(e) = spawned {
            // The closure, and with it the socket and the place, is dropped.
            if let Some(times) = self.refusals.occurred() {
                warn!("grpc TLS connections dropped: cannot start their threads: {e} ({times} since the last warning)");
            }
        }
        self.count();
    }

    /// A waiting connection sent something: hands it over once its preface
    /// and settings are all there, closes it if they are not HTTP/2.
    fn spoke(&mut self, token: u64) {
        let Some(socket) = self.waiting.get(&token) else {
            return;
        };
        let state = match socket.peek(&mut self.peeked) {
            Ok(0) => Preface::Invalid, // closed before it spoke
            Ok(n) => preface::state(&self.peeked[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Preface::Incomplete,
            Err(_) => Preface::Invalid,
        };
        if state == Preface::Incomplete {
            return;
        }
        let Some(socket) = self.waiting.remove(&token) else {
            return;
        };
        let _ = self.epoll.remove(socket.as_raw_fd());
        if state == Preface::Invalid {
            debug!("grpc connection closed: not an HTTP/2 client preface");
            return;
        }
        let watch = match sys::hand_to_grpc(&mut lock(&self.listening.server), socket) {
            Ok(watch) => watch,
            Err(e) => {
                debug!("grpc connection dropped before it was served: {e}");
                return;
            }
        };
        // Unwatched, a connection still works; it just is not counted.
        if self.epoll.add_for_hangup(watch.as_raw_fd(), token).is_ok() {
            self.open.insert(token, watch);
            self.count();
        }
    }

    /// Closes the waiting connections whose time is up.
    fn time_out(&mut self) {
        let now = Instant::now();
        while let Some(&(at, token)) = self.deadlines.front() {
            if at > now {
                return;
            }
            self.deadlines.pop_front();
            if let Some(socket) = self.waiting.remove(&token) {
                let _ = self.epoll.remove(socket.as_raw_fd());
                debug!("grpc connection closed: no HTTP/2 preface and settings in time");
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
        let open = (self.open.len() + self.relays.load(Ordering::Acquire)) as u64;
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
        if self.refusals.occurred().is_some() {
            warn!(
                "grpc connection refused: {max} connections open ({refused} refused so far); \
                 raise --grpc-max-connections to allow more"
            );
        }
    }
}
