//! The chat core's words, shared by the hub, its rooms and the engines: a
//! message as delivered, a member's way out, where a joiner stopped, and
//! why a text was not said.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::chat::Message;
use crate::queue::SendError;

/// A message as delivered: shared by every member of the room, with a slot
/// per wire encoding, so that fan-out encodes it once per protocol and every
/// member's queue holds the same bytes.
pub struct Delivery {
    pub message: Message,
    encoded: [OnceLock<Arc<[u8]>>; 2],
}

/// The wire encodings a message is delivered in.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    /// A WebSocket text frame of JSON.
    WsJson = 0,
    /// A serialized protobuf `Message`, as a gRPC stream sends it.
    Protobuf = 1,
}

impl Delivery {
    pub(super) fn new(message: Message) -> Arc<Delivery> {
        Arc::new(Delivery {
            message,
            encoded: Default::default(),
        })
    }

    /// The message in `encoding`, computed by the first caller.
    pub fn encoded(
        &self,
        encoding: Encoding,
        encode: impl FnOnce(&Message) -> Vec<u8>,
    ) -> Arc<[u8]> {
        let slot = &self.encoded[encoding as usize];
        Arc::clone(slot.get_or_init(|| encode(&self.message).into()))
    }
}

/// Bytes kept, below the largest message, for what wraps a text on its way
/// out (sender, room, numbers, a reply's prefix): a text that was taken in
/// always fits out, whatever the protocol.
pub const ENVELOPE: usize = 1024;

/// A name unique in this process and, by the clock, across restarts: a
/// room's epoch, an instance's name in shared presence.
pub fn unique_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Where a joining member stopped: the last `seq` it saw, in `epoch` (an
/// empty epoch with `since` 0 asks for everything the room keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    pub epoch: String,
}

/// Why a text was not said; nothing was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than [`ChatConfig::max_text`].
    TooLong { max: usize },
    /// Over the member's (or connection's) rate limit.
    RateLimited,
    /// The engine that keeps rooms' logs cannot be reached.
    Unavailable,
    /// A new room, and the hub holds its most rooms already.
    TooManyRooms { max: usize },
    /// Appended, but not confirmed by as many copies of the log as the
    /// engine promises (`wanted`; `got` confirmed) in time: it may still be
    /// delivered, or be lost if the log's primary fails.
    NotConfirmed { wanted: u32, got: u32 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooLong { max } => write!(f, "text longer than {max} bytes"),
            Refusal::RateLimited => f.write_str("rate limit"),
            Refusal::Unavailable => f.write_str("chat engine unavailable: try again later"),
            Refusal::TooManyRooms { max } => {
                write!(
                    f,
                    "room limit reached: this server holds at most {max} rooms"
                )
            }
            Refusal::NotConfirmed { wanted, got } => write!(
                f,
                "not confirmed: {got} of the {wanted} replicas asked for have it in time; \
                 it may still be delivered, or be lost in a failover"
            ),
        }
    }
}

/// A member's way out: a bounded queue in front of a connection.
pub trait Subscriber: Send + Sync {
    /// Queues `delivery` without blocking.
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError>;
    /// Queues a message of a replay (a resuming member's missed messages):
    /// like `deliver`, but the queue's count bound does not apply, only its
    /// byte bound.
    fn replay(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        self.deliver(delivery)
    }
    /// Bytes of a replay it can queue now (a replay larger is cut to its
    /// newest part, and the member told).
    fn replay_room(&self) -> usize {
        usize::MAX
    }
    /// The hub dropped this subscriber because its queue was full. Called
    /// once, under the room's lock: it must not block either.
    fn evicted(&self);
    /// A message this member said was not taken after all (a shared
    /// engine failed to append it): tell the member why. Must not block.
    fn not_said(&self, _why: &Refusal) {}
}
