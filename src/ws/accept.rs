//! The accept loop: it only counts and spawns, never reads from a peer, so a
//! slow handshake cannot hold up the next connection. Past the connection
//! limit it answers `503` itself, without spawning a thread.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::protocol::frame::coding::CloseCode;

use super::budget::InboundBudget;
use super::conn::handle_client;
use super::frames::close_frame;
use super::DRAIN_POLL;
use super::{http, keepalive, WsConfig, WsState};
use crate::auth::Verifier;
use crate::chat::Hub;
use crate::metrics::{CloseReason, Metrics};
use crate::peer::{self, Peer};
use crate::threads::{spawn_helper, ACCEPT_BACKOFF};
use crate::throttle::Throttle;
use crate::tls::Tls;
use crate::{lock, sys};

/// A bound WebSocket server, ready to [`run`](WsServer::run).
pub struct WsServer {
    listener: TcpListener,
    shared: Arc<WsState>,
}

/// Stops a running [`WsServer`] from another thread.
#[derive(Clone)]
pub struct WsHandle {
    shared: Arc<WsState>,
    /// The server's listening socket, shut down to wake its accept loop.
    listener: Arc<TcpListener>,
}

impl WsServer {
    pub fn bind(
        addr: &str,
        config: WsConfig,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        tls: Option<Arc<Tls>>,
        auth: Option<Arc<Verifier>>,
    ) -> io::Result<WsServer> {
        let listener = TcpListener::bind(addr)?;
        sys::set_listen_backlog(&listener, config.listen_backlog)?;
        peer::start_flusher()?;
        Ok(WsServer {
            listener,
            shared: Arc::new(WsState {
                inbound: InboundBudget::new(config.inbound_budget),
                tls,
                auth,
                config,
                metrics,
                hub,
                stopping: AtomicBool::new(false),
                peers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                origin_warned: Throttle::new(),
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> io::Result<WsHandle> {
        Ok(WsHandle {
            shared: Arc::clone(&self.shared),
            listener: Arc::new(self.listener.try_clone()?),
        })
    }

    /// Accepts connections until stopped, one thread each.
    pub fn run(self) -> io::Result<()> {
        if self.shared.config.ping_interval.is_some() || self.shared.auth.is_some() {
            let shared = Arc::clone(&self.shared);
            spawn_helper("ws-keepalive", move || keepalive::run(&shared))?;
        }
        let scheme = if self.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        info!("ws listening on {scheme}://{}/ws", self.local_addr()?);
        let refusals = Throttle::new();
        for conn in self.listener.incoming() {
            if self.shared.stopping.load(Ordering::Acquire) {
                break;
            }
            match conn {
                Ok(stream) => self.dispatch(stream, &refusals),
                Err(e) => {
                    warn!("ws accept failed: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
        info!("ws stopped accepting");
        Ok(())
    }

    fn dispatch(&self, mut stream: TcpStream, refusals: &Throttle) {
        let metrics = &self.shared.metrics;
        metrics.ws_accepted.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = Slot::take(metrics, self.shared.config.max_connections) else {
            let refused = metrics.ws_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refusals.occurred().is_some() {
                warn!(
                    "ws connection refused: {} connections open ({refused} refused so far)",
                    self.shared.config.max_connections
                );
            }
            metrics.ws_closed(CloseReason::Rejected);
            refuse(&mut stream, self.shared.tls.is_some());
            return;
        };
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name("ws-conn".into())
            .stack_size(shared.config.stack_size)
            .spawn(move || {
                let _slot = slot;
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
                debug!("{peer}: connected");
                let reason = match handle_client(stream, &shared) {
                    Ok(()) => {
                        debug!("{peer}: closed");
                        CloseReason::Normal
                    }
                    Err(e) => {
                        // Escaped: an error may quote what the peer sent.
                        debug!("{peer}: closed: {:?}", e.to_string());
                        e.reason()
                    }
                };
                shared.metrics.ws_closed(reason);
            });
        if let Err(e) = spawned {
            // The closure, and with it the stream and the slot, is dropped.
            let dropped = metrics.ws_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refusals.occurred().is_some() {
                warn!("ws connection dropped: cannot start its thread: {e} ({dropped} refused so far)");
            }
            metrics.ws_closed(CloseReason::IoError);
        }
    }
}

/// A TLS alert record, sent in the clear as a handshake's first alerts
/// are: fatal (2), internal_error (80). A TLS client past the limit reads
/// "alert internal error", where a plaintext `503` would read as a bad
/// record ("wrong version number").
const TLS_REFUSAL: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

/// Refuses a connection past the limit without a thread: `503` in
/// plaintext, a fatal TLS alert over TLS; then the write side is shut and
/// what the peer already sent is read away, so that the close is a FIN and
/// not a reset that could destroy the answer. A fresh socket's send buffer
/// is empty: the small write cannot block.
fn refuse(stream: &mut TcpStream, tls: bool) {
    let answer = match tls {
        true => TLS_REFUSAL.to_vec(),
        false => http::response(503, "too many connections\n", ""),
    };
    if stream.write_all(&answer).is_ok() && stream.shutdown(std::net::Shutdown::Write).is_ok() {
        sys::discard_pending(stream);
    }
}

impl WsHandle {
    /// Stops accepting, sends close 1001 to every peer, and waits up to
    /// `drain` for their threads to end. Returns the connections still open.
    pub fn shutdown(&self, drain: Duration) -> u64 {
        self.shared.stopping.store(true, Ordering::Release);
        if let Err(e) = sys::shutdown_listener(&self.listener) {
            warn!("cannot wake the ws accept loop: {e}");
        }
        let peers: Vec<Arc<Peer>> = lock(&self.shared.peers)
            .values()
            .map(|w| Arc::clone(&w.peer))
            .collect();
        info!("ws closing {} connections (1001 going away)", peers.len());
        for peer in &peers {
            peer.close_with(close_frame(CloseCode::Away, "server shutting down"));
        }
        let deadline = Instant::now() + drain;
        loop {
            let open = self.shared.metrics.ws_active.load(Ordering::Acquire);
            if open == 0 || Instant::now() >= deadline {
                return open;
            }
            thread::sleep(DRAIN_POLL);
        }
    }
}

/// One counted connection; the count goes down when it is dropped.
struct Slot(Arc<Metrics>);

impl Slot {
    fn take(metrics: &Arc<Metrics>, max: usize) -> Option<Slot> {
        let max = max as u64;
        metrics
            .ws_active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(metrics)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.ws_active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_returned() {
        let metrics = Arc::new(Metrics::new());
        let a = Slot::take(&metrics, 2).unwrap();
        let _b = Slot::take(&metrics, 2).unwrap();
        assert!(Slot::take(&metrics, 2).is_none());
        drop(a);
        assert_eq!(metrics.ws_active.load(Ordering::Relaxed), 1);
        assert!(Slot::take(&metrics, 2).is_some());
    }
}
