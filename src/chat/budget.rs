//! What rooms' logs weigh against `--history-budget`, and what a delivery
//! takes on its way out: a text's JSON (with its escapes, up to six times
//! it) counted, not guessed.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::types::Delivery;
use crate::json::escaped_len;

/// The bytes every room's log together may hold. Past it, the rooms
/// holding the most forget their oldest entries first: a room writing
/// beyond its share forgets its own; one within its share is kept, and the
/// hub takes from the heaviest room instead ([`super::Hub`]).
pub(super) struct HistoryBudget {
    pub(super) held: AtomicUsize,
    pub(super) limit: usize,
    /// Rooms whose log holds anything.
    pub(super) rooms: AtomicUsize,
}

impl HistoryBudget {
    pub(super) fn new(limit: usize) -> HistoryBudget {
        HistoryBudget {
            held: AtomicUsize::new(0),
            limit,
            rooms: AtomicUsize::new(0),
        }
    }

    pub(super) fn over(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }

    /// A room's fair share: the budget over the rooms holding logs.
    pub(super) fn share(&self) -> usize {
        self.limit / self.rooms.load(Ordering::Relaxed).max(1)
    }
}

/// What a logged message may cost at most: its strings as published, as
/// JSON with their escapes (up to six times a text of control characters)
/// and as protobuf, the two encodings a delivery caches, and the
/// bookkeeping around them.
pub(super) fn weight(delivery: &Delivery) -> usize {
    let m = &delivery.message;
    let strings = [&m.text, &m.sender, &m.room, &m.epoch];
    let raw: usize = strings.iter().map(|s| s.len()).sum();
    let json: usize = strings.iter().map(|s| escaped_len(s)).sum();
    raw + (json + JSON_FIELDS) + (raw + PROTOBUF_FIELDS) + BOOKKEEPING
}

/// What a delivery takes at most on its way out, in its larger encoding
/// (JSON, with its escapes).
pub(super) fn outgoing(delivery: &Delivery) -> usize {
    let m = &delivery.message;
    [&m.text, &m.sender, &m.room, &m.epoch]
        .iter()
        .map(|s| escaped_len(s))
        .sum::<usize>()
        + JSON_FIELDS
}

/// Kept free of a replay for the note that tells a member where it starts.
pub(super) const NOTE_ROOM: usize = 1024;

/// Bytes a delivery takes besides its strings: the JSON frame's field names
/// and numbers, the protobuf's tags and numbers, and the allocations.
const JSON_FIELDS: usize = 160;
const PROTOBUF_FIELDS: usize = 48;
const BOOKKEEPING: usize = 256;
