//! Keepalive for every connection, from one `ws-keepalive` thread: a peer
//! silent for `ping_interval` is pinged, and cut off if still silent
//! `pong_timeout` later. The same thread ends a chat member whose token has
//! expired (close `1008` "token expired"), and cuts off a peer that does not
//! close its side within a grace after papo's close frame.
//!
//! A read timeout per connection would do the same at the price of a kernel
//! timer armed and disarmed on every read (see the README's benchmarks).
//! Here every read sets the peer's "heard" flag, and an idle connection costs
//! one flag test per tick.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::Frame;

use tungstenite::protocol::frame::coding::CloseCode;

use super::frames::{close_frame, encode};
use super::{WsState, CLOSE_GRACE};
use crate::lock;
use crate::peer::Peer;

/// The shortest tick, however short the intervals configured.
const MIN_TICK: Duration = Duration::from_millis(10);
/// The longest tick when tokens are required: a member is ended at most
/// this long after its token expires.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// A served peer, as the keepalive and shutdown see it.
pub(super) struct Watched {
    pub peer: Arc<Peer>,
    /// Last tick that found the peer had sent something.
    heard_at: Instant,
    /// When the keepalive pinged the still silent peer.
    pinged_at: Option<Instant>,
    /// When its token expires, for a chat member that showed one.
    pub token_expires: Option<Instant>,
    /// The first tick that found papo's close frame sent.
    lingering_since: Option<Instant>,
}

impl Watched {
    pub fn new(peer: Arc<Peer>) -> Watched {
        Watched {
            peer,
            heard_at: Instant::now(),
            pinged_at: None,
            token_expires: None,
            lingering_since: None,
        }
    }
}

/// The keepalive thread's loop, until the server stops.
pub(super) fn run(shared: &WsState) {
    let (ping_interval, timeout) = (shared.config.ping_interval, shared.config.pong_timeout);
    let pinging = ping_interval.is_some();
    let interval = ping_interval.unwrap_or(Duration::MAX);
    // Pings go out, and silent peers are dropped, at most a quarter late.
    let mut tick = match ping_interval {
        Some(interval) => (interval.min(timeout) / 4).max(MIN_TICK),
        None => EXPIRY_TICK,
    };
    if shared.auth.is_some() {
        tick = tick.min(EXPIRY_TICK);
    }
    let ping = encode(Frame::ping(Vec::new()));
    let expired = close_frame(CloseCode::Policy, "token expired");
    let mut to_ping = Vec::new();
    let mut to_drop = Vec::new();
    let mut to_end = Vec::new();
    let mut to_cut = Vec::new();
    while !shared.stopping.load(Ordering::Acquire) {
        thread::sleep(tick);
        let now = Instant::now();
        for watched in lock(&shared.peers).values_mut() {
            if watched.token_expires.is_some_and(|at| now >= at) {
                watched.token_expires = None;
                to_end.push(Arc::clone(&watched.peer));
            }
            if watched.peer.lingering() {
                let since = *watched.lingering_since.get_or_insert(now);
                if now.duration_since(since) >= CLOSE_GRACE {
                    to_cut.push(Arc::clone(&watched.peer));
                }
                continue;
            }
            if !pinging {
                continue;
            }
            if watched.peer.take_heard() {
                watched.heard_at = now;
                watched.pinged_at = None;
                continue;
            }
            match watched.pinged_at {
                None if now.duration_since(watched.heard_at) >= interval => {
                    watched.pinged_at = Some(now);
                    to_ping.push(Arc::clone(&watched.peer));
                }
                Some(at) if now.duration_since(at) >= timeout => {
                    to_drop.push(Arc::clone(&watched.peer));
                }
                _ => {}
            }
        }
        // Sent outside the registry's lock: new connections never wait on it.
        for peer in to_ping.drain(..) {
            peer.ping(Arc::clone(&ping));
        }
        for peer in to_drop.drain(..) {
            peer.cut_off_silent();
        }
        for peer in to_cut.drain(..) {
            peer.cut();
        }
        for peer in to_end.drain(..) {
            peer.close_with(Arc::clone(&expired));
        }
    }
}
