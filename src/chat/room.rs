//! A room: its members and its numbering. Publishing happens under the
//! room's lock, which is what gives every member one order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

use super::{Delivery, SendError, Subscriber};
use crate::lock;
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message;

pub(super) struct MemberEntry {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) subscriber: Arc<dyn Subscriber>,
}

pub(super) struct Room {
    pub(super) name: String,
    pub(super) seq: u64,
    pub(super) members: Vec<MemberEntry>,
    /// Members dropped for a full queue, to be logged after unlocking.
    pub(super) dropped: Vec<String>,
    /// No longer the hub's: its last member left and it was removed.
    pub(super) closed: bool,
}

/// A locked room that, when unlocked, logs the members it dropped.
pub(super) struct RoomGuard<'a>(Option<MutexGuard<'a, Room>>);

pub(super) fn lock_room(room: &Mutex<Room>) -> RoomGuard<'_> {
    RoomGuard(Some(lock(room)))
}

impl std::ops::Deref for RoomGuard<'_> {
    type Target = Room;
    fn deref(&self) -> &Room {
        self.0
            .as_deref()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl std::ops::DerefMut for RoomGuard<'_> {
    fn deref_mut(&mut self) -> &mut Room {
        self.0
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl Drop for RoomGuard<'_> {
    fn drop(&mut self) {
        let Some(mut room) = self.0.take() else {
            return;
        };
        let dropped = std::mem::take(&mut room.dropped);
        let name = room.name.clone();
        drop(room);
        for member in dropped {
            warn!("room {name:?}: dropped {member:?}: its queue is full");
        }
    }
}

impl Room {
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.name.is_empty())
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Stamps `message` with the room's next number and the clock, and hands
    /// it to every member; members that refuse are dropped, and their leaving
    /// is announced in turn (a loop, not recursion: a thousand drops must not
    /// grow a connection thread's small stack). Returns the message's number.
    pub(super) fn publish(&mut self, message: Message) -> u64 {
        self.publish_with(message, None)
    }

    /// [`Room::publish`], where member `special.0` gets `special.1` instead:
    /// the same event, numbered alike, with more in it.
    pub(super) fn publish_with(
        &mut self,
        message: Message,
        mut special: Option<(u64, Message)>,
    ) -> u64 {
        let mut pending = VecDeque::from([message]);
        let mut first_seq = 0;
        while let Some(mut message) = pending.pop_front() {
            self.seq += 1;
            first_seq = if first_seq == 0 { self.seq } else { first_seq };
            message.room = self.name.clone();
            message.seq = self.seq;
            message.timestamp_ms = now_ms();
            let own_copy = special.take().map(|(id, mut own)| {
                own.room = message.room.clone();
                own.seq = message.seq;
                own.timestamp_ms = message.timestamp_ms;
                (id, Delivery::new(own))
            });
            let delivery = Delivery::new(message);
            let mut dropped = Vec::new();
            self.members.retain(|m| {
                let delivery = match &own_copy {
                    Some((id, own)) if *id == m.id => own,
                    _ => &delivery,
                };
                match m.subscriber.deliver(delivery) {
                    Ok(()) => true,
                    Err(error) => {
                        dropped.push((m.name.clone(), error, Arc::clone(&m.subscriber)));
                        false
                    }
                }
            });
            for (name, error, subscriber) in dropped {
                if error == SendError::Full {
                    // Logged once the room's lock is released: a slow log
                    // must not stall the room.
                    self.dropped.push(name.clone());
                    subscriber.evicted();
                }
                if !name.is_empty() {
                    pending.push_back(Room::event(Kind::LEAVE, &name));
                }
            }
        }
        first_seq
    }

    /// A JOIN or LEAVE event. It names only who came or went: listing the
    /// whole room in every event would make a room of n members cost n²
    /// bytes to fill. The member who joins gets the list once, in its own
    /// copy of its JOIN event (see [`super::Hub::join`]).
    pub(super) fn event(kind: Kind, name: &str) -> Message {
        Message {
            sender: name.to_owned(),
            kind: kind.into(),
            ..Default::default()
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
