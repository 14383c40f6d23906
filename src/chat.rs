//! The chat core shared by both transports, free of sockets so that unit
//! tests exercise it directly.
//!
//! A [`Hub`] owns the rooms. A room is created by its first member and
//! removed with its last. Publishing to a room takes the room's lock, gives
//! the message the room's next sequence number and the server's clock, and
//! hands it to every member's [`Subscriber`] before letting go: so every
//! member sees the room in one total order. Handing over never blocks (a
//! subscriber only queues), and a subscriber whose queue is full is dropped
//! from the room on the spot: one stuck member never slows the others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};

use crate::lock;
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message;

/// Prefix of every reply on the seed's WebSocket endpoint.
pub const WS_REPLY_PREFIX: &str = "Recebido: ";
/// The room of a message that names none.
pub const DEFAULT_ROOM: &str = "geral";
/// Longest room or member name, in bytes.
pub const MAX_NAME: usize = 64;

/// The seed's WebSocket reply to a text message: `Recebido: <msg>`.
pub fn ws_reply_text(text: &str) -> String {
    let mut reply = String::with_capacity(WS_REPLY_PREFIX.len() + text.len());
    reply.push_str(WS_REPLY_PREFIX);
    reply.push_str(text);
    reply
}

/// The seed's gRPC reply to `SendMessage`: `Mensagem recebida: <text>`.
pub fn grpc_reply(text: &str) -> String {
    format!("Mensagem recebida: {text}")
}

/// A room name as given, or the default room; `Err` names what is wrong.
pub fn room_name(room: &str) -> Result<&str, String> {
    let room = room.trim();
    match room {
        "" => Ok(DEFAULT_ROOM),
        r if r.len() > MAX_NAME => Err(format!("room name longer than {MAX_NAME} bytes")),
        r => Ok(r),
    }
}

/// A member name, checked like a room name (empty is allowed: an unseen listener).
pub fn member_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.len() > MAX_NAME {
        return Err(format!("name longer than {MAX_NAME} bytes"));
    }
    Ok(name)
}

/// A message as delivered: shared by every member of the room, with a slot
/// where a transport caches its encoding so that fan-out encodes it once.
pub struct Delivery {
    pub message: Message,
    encoded: OnceLock<Arc<[u8]>>,
}

impl Delivery {
    fn new(message: Message) -> Arc<Delivery> {
        Arc::new(Delivery {
            message,
            encoded: OnceLock::new(),
        })
    }

    /// The transport's encoding of the message, computed by the first caller.
    pub fn encoded(&self, encode: impl FnOnce(&Message) -> Vec<u8>) -> Arc<[u8]> {
        Arc::clone(self.encoded.get_or_init(|| encode(&self.message).into()))
    }
}

/// Why a subscriber could not take a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its queue is full: it is too slow.
    Full,
    /// It is gone (its connection closed).
    Gone,
}

/// A member's way out: a bounded queue in front of a connection.
pub trait Subscriber: Send + Sync {
    /// Queues `delivery` without blocking.
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), Refused>;
    /// The hub dropped this subscriber because its queue was full. Called
    /// once, under the room's lock: it must not block either.
    fn evicted(&self);
}

struct MemberEntry {
    id: u64,
    name: String,
    subscriber: Arc<dyn Subscriber>,
}

struct Room {
    name: String,
    seq: u64,
    members: Vec<MemberEntry>,
    /// Members dropped for a full queue, to be logged after unlocking.
    dropped: Vec<String>,
}

/// A locked room that, when unlocked, logs the members it dropped.
struct RoomGuard<'a>(Option<MutexGuard<'a, Room>>);

fn lock_room(room: &Mutex<Room>) -> RoomGuard<'_> {
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
            warn!("room {name}: dropped {member:?}: its queue is full");
        }
    }
}

impl Room {
    fn names(&self) -> Vec<String> {
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
    fn publish(&mut self, message: Message) -> u64 {
        self.publish_with(message, None)
    }

    /// [`Room::publish`], where member `special.0` gets `special.1` instead:
    /// the same event, numbered alike, with more in it.
    fn publish_with(&mut self, message: Message, mut special: Option<(u64, Message)>) -> u64 {
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
                    Err(refused) => {
                        dropped.push((m.name.clone(), refused, Arc::clone(&m.subscriber)));
                        false
                    }
                }
            });
            for (name, refused, subscriber) in dropped {
                if refused == Refused::Full {
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
    /// copy of its JOIN event (see [`Hub::join`]).
    fn event(kind: Kind, name: &str) -> Message {
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

/// Every room and its members.
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Adds a member to `room` (created if need be) and announces it. The
    /// member leaves when the returned [`Member`] is dropped.
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        subscriber: Arc<dyn Subscriber>,
    ) -> Member {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let room_arc = {
            let mut rooms = lock(&self.rooms);
            Arc::clone(rooms.entry(room.to_owned()).or_insert_with(|| {
                Arc::new(Mutex::new(Room {
                    name: room.to_owned(),
                    seq: 0,
                    members: Vec::new(),
                    dropped: Vec::new(),
                }))
            }))
        };
        {
            let mut room = lock_room(&room_arc);
            room.members.push(MemberEntry {
                id,
                name: name.to_owned(),
                subscriber,
            });
            if !name.is_empty() {
                let mut own = Room::event(Kind::JOIN, name);
                own.members = room.names();
                room.publish_with(Room::event(Kind::JOIN, name), Some((id, own)));
            }
        }
        debug!("room {room}: {name:?} joined");
        Member {
            hub: Arc::clone(self),
            room: room_arc,
            id,
            name: name.to_owned(),
        }
    }

    /// Publishes `text` from `sender` to `room` if it has members; returns
    /// the message's number in the room (0: nobody was there to hear it).
    pub fn publish(&self, room: &str, sender: &str, text: &str) -> u64 {
        let Some(room) = lock(&self.rooms).get(room).cloned() else {
            return 0;
        };
        let mut room = lock_room(&room);
        room.publish(Message {
            sender: sender.to_owned(),
            text: text.to_owned(),
            ..Default::default()
        })
    }

    /// The names of the rooms that have members.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.rooms).keys().cloned().collect()
    }

    fn leave(&self, room_arc: &Arc<Mutex<Room>>, id: u64, name: &str) {
        let mut room = lock_room(room_arc);
        let before = room.members.len();
        room.members.retain(|m| m.id != id);
        if room.members.len() < before && !name.is_empty() {
            room.publish(Room::event(Kind::LEAVE, name));
        }
        if room.members.is_empty() {
            let mut rooms = lock(&self.rooms);
            // Only if no one joined it again meanwhile (the map holds the only other reference).
            if rooms
                .get(&room.name)
                .is_some_and(|r| Arc::ptr_eq(r, room_arc))
            {
                rooms.remove(&room.name);
            }
        }
    }
}

/// A room membership; dropping it leaves the room.
pub struct Member {
    hub: Arc<Hub>,
    room: Arc<Mutex<Room>>,
    id: u64,
    name: String,
}

impl Member {
    /// Publishes `text` to the member's room under the member's name.
    pub fn say(&self, text: &str) -> u64 {
        let mut room = lock_room(&self.room);
        if !room.members.iter().any(|m| m.id == self.id) {
            return 0; // dropped for being slow: it no longer speaks here
        }
        room.publish(Message {
            sender: self.name.clone(),
            text: text.to_owned(),
            ..Default::default()
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.leave(&self.room, self.id, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    /// An in-memory subscriber with a bounded queue, as the transports have.
    struct Inbox {
        capacity: usize,
        messages: Mutex<Vec<Message>>,
        evicted: AtomicBool,
    }

    impl Inbox {
        fn new(capacity: usize) -> Arc<Inbox> {
            Arc::new(Inbox {
                capacity,
                messages: Mutex::new(Vec::new()),
                evicted: AtomicBool::new(false),
            })
        }

        fn texts(&self) -> Vec<String> {
            lock(&self.messages)
                .iter()
                .filter(|m| m.kind.enum_value_or_default() == Kind::MESSAGE)
                .map(|m| m.text.clone())
                .collect()
        }

        fn seqs(&self) -> Vec<u64> {
            lock(&self.messages).iter().map(|m| m.seq).collect()
        }
    }

    impl Subscriber for Inbox {
        fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), Refused> {
            let mut messages = lock(&self.messages);
            if messages.len() >= self.capacity {
                return Err(Refused::Full);
            }
            messages.push(delivery.message.clone());
            Ok(())
        }

        fn evicted(&self) {
            self.evicted.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn seed_replies() {
        assert_eq!(
            ws_reply_text("Olá, WebSocket!"),
            "Recebido: Olá, WebSocket!"
        );
        assert_eq!(ws_reply_text(""), "Recebido: ");
        assert_eq!(grpc_reply("Olá, gRPC!"), "Mensagem recebida: Olá, gRPC!");
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(room_name(""), Ok("geral"));
        assert_eq!(room_name(" sala "), Ok("sala"));
        assert!(room_name(&"x".repeat(65)).is_err());
        assert_eq!(member_name(""), Ok(""));
        assert!(member_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn members_see_joins_messages_and_leaves_with_stamps() {
        let hub = Hub::new();
        let ana = Inbox::new(100);
        let a = hub.join("sala", "ana", ana.clone());
        let bob = Inbox::new(100);
        let b = hub.join("sala", "bob", bob.clone());
        assert_eq!(a.say("oi"), 3);
        drop(b);
        let seen = lock(&ana.messages).clone();
        let kinds: Vec<_> = seen
            .iter()
            .map(|m| m.kind.enum_value_or_default())
            .collect();
        assert_eq!(kinds, [Kind::JOIN, Kind::JOIN, Kind::MESSAGE, Kind::LEAVE]);
        // Each member gets the list once, with its own JOIN; events name who.
        assert_eq!(seen[0].members, ["ana"]);
        assert_eq!((seen[1].sender.as_str(), seen[1].members.len()), ("bob", 0));
        assert_eq!((seen[3].sender.as_str(), seen[3].members.len()), ("bob", 0));
        assert_eq!(lock(&bob.messages)[0].members, ["ana", "bob"]);
        assert_eq!(
            (
                seen[2].sender.as_str(),
                seen[2].text.as_str(),
                seen[2].room.as_str()
            ),
            ("ana", "oi", "sala")
        );
        assert_eq!(ana.seqs(), [1, 2, 3, 4]);
        assert!(seen.iter().all(|m| m.timestamp_ms > 1_600_000_000_000));
        // Bob saw the room from his join on, numbered as everyone else saw it.
        assert_eq!(bob.seqs(), [2, 3]);
        drop(a);
        assert!(hub.rooms().is_empty(), "an empty room is removed");
        assert_eq!(hub.publish("sala", "x", "nobody hears"), 0);
    }

    #[test]
    fn concurrent_senders_are_seen_in_one_order_by_everyone() {
        let hub = Hub::new();
        let inboxes: Vec<_> = (0..4).map(|_| Inbox::new(10_000)).collect();
        let members: Vec<_> = inboxes
            .iter()
            .enumerate()
            .map(|(i, inbox)| hub.join("r", &format!("m{i}"), inbox.clone()))
            .collect();
        thread::scope(|s| {
            for (i, member) in members.iter().enumerate() {
                s.spawn(move || {
                    for n in 0..500 {
                        member.say(&format!("{i}:{n}"));
                    }
                });
            }
        });
        let reference = inboxes[0].texts();
        assert_eq!(reference.len(), 2000);
        for inbox in &inboxes {
            assert_eq!(inbox.texts(), reference, "every member sees the same order");
            let seqs = inbox.seqs();
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "gapless numbering"
            );
        }
        // Each sender's own messages keep their order.
        for i in 0..4 {
            let mine: Vec<_> = reference
                .iter()
                .filter(|t| t.starts_with(&format!("{i}:")))
                .cloned()
                .collect();
            let expected: Vec<_> = (0..500).map(|n| format!("{i}:{n}")).collect();
            assert_eq!(mine, expected);
        }
    }

    #[test]
    fn a_room_of_n_costs_linear_bytes_to_fill() {
        let hub = Hub::new();
        let first = Inbox::new(10_000);
        let _members: Vec<_> = std::iter::once(hub.join("big", "m0", first.clone()))
            .chain((1..300).map(|i| hub.join("big", &format!("m{i}"), Inbox::new(10_000))))
            .collect();
        let listed: usize = lock(&first.messages).iter().map(|m| m.members.len()).sum();
        assert_eq!(listed, 1, "only its own JOIN lists members");
    }

    #[test]
    fn fans_out_to_a_thousand_subscribers() {
        let hub = Hub::new();
        let inboxes: Vec<_> = (0..1000).map(|_| Inbox::new(2000)).collect();
        let _members: Vec<_> = inboxes
            .iter()
            .map(|i| hub.join("big", "", i.clone()))
            .collect();
        for n in 0..10 {
            hub.publish("big", "svc", &format!("m{n}"));
        }
        let expected: Vec<_> = (0..10).map(|n| format!("m{n}")).collect();
        assert!(inboxes.iter().all(|i| i.texts() == expected));
    }

    #[test]
    fn a_stuck_subscriber_is_dropped_and_the_others_carry_on_in_order() {
        let hub = Hub::new();
        let stuck = Inbox::new(3);
        let fine = Inbox::new(1000);
        let _s = hub.join("r", "stuck", stuck.clone());
        let _f = hub.join("r", "fine", fine.clone());
        for n in 0..50 {
            hub.publish("r", "svc", &n.to_string());
        }
        assert!(stuck.evicted.load(Ordering::SeqCst));
        let expected: Vec<_> = (0..50).map(|n| n.to_string()).collect();
        assert_eq!(fine.texts(), expected);
        let leave = lock(&fine.messages)
            .iter()
            .find(|m| m.kind.enum_value_or_default() == Kind::LEAVE)
            .cloned()
            .expect("the drop is announced");
        assert_eq!(leave.sender, "stuck");
        let seqs = fine.seqs();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        // A dropped member no longer speaks in the room.
        assert_eq!(_s.say("still here?"), 0);
    }

    #[test]
    fn join_and_leave_races_leave_no_ghosts() {
        let hub = Hub::new();
        let watcher = Inbox::new(1_000_000);
        let _w = hub.join("r", "watcher", watcher.clone());
        thread::scope(|s| {
            for t in 0..4 {
                let hub = &hub;
                s.spawn(move || {
                    for n in 0..200 {
                        let m = hub.join("r", &format!("t{t}-{n}"), Inbox::new(10_000));
                        m.say("hi");
                        drop(m);
                        // Rooms come and go too.
                        drop(hub.join(&format!("tmp{t}"), "x", Inbox::new(10)));
                    }
                });
            }
        });
        // Replaying the events from the watcher's snapshot leaves only it.
        let mut present: Vec<String> = Vec::new();
        for m in lock(&watcher.messages).iter() {
            match m.kind.enum_value_or_default() {
                Kind::JOIN if !m.members.is_empty() => present = m.members.clone(),
                Kind::JOIN => present.push(m.sender.clone()),
                Kind::LEAVE => present.retain(|n| *n != m.sender),
                Kind::MESSAGE => {}
            }
        }
        assert_eq!(present, ["watcher"]);
        assert_eq!(hub.rooms(), ["r"]);
        assert!(watcher.seqs().windows(2).all(|w| w[1] == w[0] + 1));
    }
}
