//! The chat core shared by both transports, free of sockets so that unit
//! tests exercise it directly.
//!
//! A [`Hub`] owns the rooms. A room is a numbered log: created by its first
//! member or message, it keeps its last `history` messages (events too)
//! for `history_ttl` after its last activity, members or not; then its log
//! is gone, and the room starts again under a new epoch. Publishing to a
//! room takes the room's lock, gives the message the room's next sequence
//! number and the server's clock, records it, and hands it to every
//! member's [`Subscriber`] before letting go: so every member sees the room
//! in one total order. A member joining with a [`Resume`] is handed what it
//! missed under the same lock, so nothing is lost or repeated. Handing over never blocks (a
//! subscriber only queues), and a subscriber whose queue is full is dropped
//! from the room on the spot: one stuck member never slows the others.
mod budget;
mod engine;
mod joins;
mod names;
mod rate;
mod room;
mod shared;
#[cfg(test)]
mod tests;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::debug;

use crate::lock;
use crate::proto::chat::Message;
pub use crate::queue::SendError;
use budget::HistoryBudget;
pub use engine::{Done, Engine, Memory};
pub use joins::{JoinLimited, JoinLimiter};
pub use names::{is_bidi_control, member_name, room_name, DEFAULT_ROOM, MAX_NAME};
pub use rate::{Bucket, Rate};
pub use room::{lock_room, roster, Arrival, MemberEntry, Room};
pub use types::{unique_id, Delivery, Encoding, Refusal, Resume, Subscriber, ENVELOPE};

/// Chat-level settings, shared by both transports.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Messages queued for a slow member before it is dropped.
    pub send_queue: usize,
    /// Longest text said in a room, in bytes: the largest message less the
    /// [`ENVELOPE`].
    pub max_text: usize,
    /// Messages a member may say, per second and at once.
    pub rate: Rate,
    /// Messages (and events) a room keeps for members who resume (0: none).
    pub history: usize,
    /// How long a room without members keeps its log after its last message.
    pub history_ttl: Duration,
    /// Bytes all rooms' logs together may hold: past it, the room being
    /// written to forgets its oldest entries.
    pub history_budget: usize,
    /// Rooms held at once, with members or keeping a log; a new one past
    /// it is refused.
    pub max_rooms: usize,
    /// Joins per second, and at once, by one identity (a token's `sub`).
    pub join_rate: Rate,
    /// Joins per second, and at once, from one address.
    pub address_join_rate: Rate,
    /// Whether a name is held by one member of a room at a time: so it is
    /// when tokens make names identities.
    pub one_member_per_name: bool,
}

/// Every room and its members.
pub struct Hub {
    config: ChatConfig,
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    next_id: AtomicU64,
    /// When expired rooms were last let go of.
    swept: Mutex<Instant>,
    history_budget: Arc<HistoryBudget>,
    /// The room whose log weighed the most when last looked for, and when.
    heaviest: Mutex<Option<(std::sync::Weak<Mutex<Room>>, Instant)>>,
    engine: Arc<dyn Engine>,
    joins: JoinLimiter,
}

/// How often, at most, the hub looks for rooms whose log has expired.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often, at most, the hub looks for the heaviest room's log while the
/// logs are past their budget (a look goes over every room).
const HEAVIEST_INTERVAL: Duration = Duration::from_millis(100);
/// Entries forgotten at most per call of [`Hub::keep_budget`]: each publish
/// calls it, so the logs come back within the budget as fast as they grow.
const FORGET_PER_CALL: usize = 64;

impl Hub {
    /// A hub whose rooms keep their logs in memory.
    pub fn new(config: ChatConfig) -> Arc<Hub> {
        let memory = Memory {
            history_ttl: config.history_ttl,
        };
        Hub::with_engine(config, Arc::new(memory))
    }

    /// A hub whose rooms' logs `engine` keeps.
    pub fn with_engine(config: ChatConfig, engine: Arc<dyn Engine>) -> Arc<Hub> {
        Arc::new(Hub {
            engine,
            rooms: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            swept: Mutex::new(Instant::now()),
            history_budget: Arc::new(HistoryBudget::new(config.history_budget)),
            heaviest: Mutex::new(None),
            joins: JoinLimiter::new(config.address_join_rate, config.join_rate),
            config,
        })
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Takes a join from `address` by `identity` (a verified name), unless
    /// either has joined too often of late. Checked by the transports
    /// before a member costs a thread or a stream.
    pub fn admit_join(
        &self,
        address: Option<std::net::IpAddr>,
        identity: Option<&str>,
    ) -> Result<(), JoinLimited> {
        self.joins.admit(address, identity)
    }

    /// Whether the engine takes messages now (health and metrics say so).
    pub fn engine_up(&self) -> bool {
        self.engine.is_up()
    }

    /// Whether rooms' logs are shared with other instances (appends then
    /// take a round trip).
    pub fn log_is_shared(&self) -> bool {
        !self.engine.local_log()
    }

    /// Whether a room outlives its members: it keeps a log here.
    fn rooms_outlive_members(&self) -> bool {
        self.engine.local_log() && self.config.history > 0
    }

    /// Adds a member to `room` (created if need be) and announces it. The
    /// member leaves when the returned [`Member`] is dropped.
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<Member, Refusal> {
        self.join_from(room, name, subscriber, None)
    }

    /// [`Hub::join`] for a member that says where it stopped: first it is
    /// handed every message the room keeps after that point, then its own
    /// JOIN (which tells whether that was all it missed), then the live ones.
    pub fn join_from(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        subscriber: Arc<dyn Subscriber>,
        resume: Option<Resume>,
    ) -> Result<Member, Refusal> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let room_arc = loop {
            let room_arc = self.room(room)?;
            let mut locked = lock_room(&room_arc);
            // Its last member left, and the hub let go of it, between the
            // look-up and the lock: look again, or the joiner would be alone
            // in a room nobody else can reach.
            if locked.closed {
                continue;
            }
            let entry = MemberEntry {
                id,
                name: name.to_owned(),
                subscriber,
                arrival: Arrival::Here,
                hold: self.config.send_queue.saturating_mul(room::WAITING_HOLDS),
            };
            self.engine.join(&room_arc, &mut locked, entry, resume);
            drop(locked);
            break room_arc;
        };
        self.keep_budget();
        debug!("room {room:?}: {name:?} joined");
        Ok(Member {
            hub: Arc::clone(self),
            room: room_arc,
            id,
            name: name.to_owned(),
            bucket: Mutex::new(Bucket::new(self.config.rate, Instant::now())),
        })
    }

    /// The room named `name`, created if need be, unless the hub holds its
    /// most rooms. Now and then, and whenever the rooms are at their most,
    /// rooms whose log has expired are let go of here (a room another
    /// thread holds locked is looked at next time).
    fn room(&self, name: &str) -> Result<Arc<Mutex<Room>>, Refusal> {
        let mut rooms = lock(&self.rooms);
        let now = Instant::now();
        let mut swept = lock(&self.swept);
        let full = rooms.len() >= self.config.max_rooms && !rooms.contains_key(name);
        if full || now.saturating_duration_since(*swept) >= SWEEP_INTERVAL {
            *swept = now;
            let ttl = self.config.history_ttl;
            rooms.retain(|_, room| match room.try_lock() {
                Ok(mut room) if room.members.is_empty() && room.idle_past(ttl, now) => {
                    room.closed = true;
                    false
                }
                _ => true,
            });
        }
        drop(swept);
        if rooms.len() >= self.config.max_rooms && !rooms.contains_key(name) {
            return Err(Refusal::TooManyRooms {
                max: self.config.max_rooms,
            });
        }
        let room = rooms.entry(name.to_owned()).or_insert_with(|| {
            let keep = if self.engine.local_log() {
                self.config.history
            } else {
                0
            };
            let budget = Arc::clone(&self.history_budget);
            let mut room = Room::new(name, keep, budget);
            room.one_member_per_name = self.config.one_member_per_name;
            Arc::new(Mutex::new(room))
        });
        Ok(Arc::clone(room))
    }

    /// Publishes `text` from `sender` to `room`; returns the message's
    /// number in the room. A room that keeps history records it even with
    /// no member to hear it; one that keeps none drops it (0).
    pub fn publish(&self, room: &str, sender: &str, text: &str) -> Result<u64, Refusal> {
        self.publish_then(room, sender, text, None)
    }

    /// [`Hub::publish`], telling `done` how it ended (with a shared engine,
    /// once the log has it).
    pub fn publish_then(
        &self,
        room: &str,
        sender: &str,
        text: &str,
        done: Option<Done>,
    ) -> Result<u64, Refusal> {
        self.check(text)?;
        if !self.engine.is_up() {
            return Err(Refusal::Unavailable);
        }
        let found = loop {
            let found = lock(&self.rooms).get(room).cloned();
            // Let go of by a sweep since the look-up: look again.
            match found {
                Some(room) if self.engine.local_log() && lock_room(&room).closed => continue,
                found => break found,
            }
        };
        let room = match found {
            Some(room) => room,
            None if self.rooms_outlive_members() => self.room(room)?,
            // Nobody here to hear it, and nothing to keep it in.
            None if self.engine.local_log() => {
                if let Some(done) = done {
                    done(Ok(0));
                }
                return Ok(0);
            }
            // A shared log takes it for the members elsewhere.
            None => Arc::new(Mutex::new(Room::new(
                room,
                0,
                Arc::clone(&self.history_budget),
            ))),
        };
        let message = Message {
            sender: sender.to_owned(),
            text: text.to_owned(),
            ..Default::default()
        };
        let said = self.engine.append(&room, None, message, done);
        self.keep_budget();
        said
    }

    /// Whether `text` may be said at all: it must fit the limit as it goes
    /// out, in JSON with its escapes (six bytes for a control character) as
    /// in protobuf, not only as it came in.
    pub fn check(&self, text: &str) -> Result<(), Refusal> {
        let fits = text.len() <= self.config.max_text
            && crate::json::escaped_len(text) <= self.config.max_text;
        match fits {
            true => Ok(()),
            false => Err(Refusal::TooLong {
                max: self.config.max_text,
            }),
        }
    }

    /// Brings the logs back within their budget, forgetting the oldest
    /// entries of the heaviest room first, a few at most per call. Called
    /// after each publish, with no room locked (a room is locked one at a
    /// time here, so no two locks are ever taken in turn).
    fn keep_budget(&self) {
        for _ in 0..FORGET_PER_CALL {
            if !self.history_budget.over() {
                return;
            }
            let Some(room) = self.heaviest_room() else {
                return;
            };
            if !lock_room(&room).forget_oldest() {
                *lock(&self.heaviest) = None;
            }
        }
    }

    /// The room whose log weighs the most, looked for anew at most every
    /// [`HEAVIEST_INTERVAL`] (a room another thread holds locked is skipped).
    fn heaviest_room(&self) -> Option<Arc<Mutex<Room>>> {
        let mut cached = lock(&self.heaviest);
        if let Some((room, at)) = cached.as_ref() {
            if at.elapsed() < HEAVIEST_INTERVAL {
                if let Some(room) = room.upgrade() {
                    return Some(room);
                }
            }
        }
        let rooms = lock(&self.rooms);
        let heaviest = rooms
            .values()
            .filter_map(|room| Some((room.try_lock().ok()?.log_weight(), room)))
            .filter(|(weight, _)| *weight > 0)
            .max_by_key(|(weight, _)| *weight)
            .map(|(_, room)| Arc::clone(room));
        *cached = heaviest
            .as_ref()
            .map(|room| (Arc::downgrade(room), Instant::now()));
        heaviest
    }

    /// The names of the rooms the hub holds: with members, or keeping a log.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.rooms).keys().cloned().collect()
    }

    fn leave(&self, room_arc: &Arc<Mutex<Room>>, id: u64, name: &str) {
        let mut room = lock_room(room_arc);
        self.engine.leave(&mut room, id, name);
        // A room that keeps history outlives its members (until its log
        // expires); one that keeps none goes with its last member.
        if room.members.is_empty() && !self.rooms_outlive_members() {
            let mut rooms = lock(&self.rooms);
            // Only if no one joined it again meanwhile (the map holds the only other reference).
            if rooms
                .get(&room.name)
                .is_some_and(|r| Arc::ptr_eq(r, room_arc))
            {
                rooms.remove(&room.name);
                // Under the room's lock: a joiner holding this room sees it.
                room.closed = true;
            }
        }
        drop(room);
        self.keep_budget();
    }
}

/// A room membership; dropping it leaves the room.
pub struct Member {
    hub: Arc<Hub>,
    room: Arc<Mutex<Room>>,
    id: u64,
    name: String,
    /// The member's rate limit (locked by its own connection only).
    bucket: Mutex<Bucket>,
}

impl Member {
    /// Publishes `text` to the member's room under the member's name;
    /// returns its number (0: the member was dropped meanwhile).
    pub fn say(&self, text: &str) -> Result<u64, Refusal> {
        self.hub.check(text)?;
        let limited = self.hub.config.rate.per_second != 0;
        if limited && !lock(&self.bucket).take(Instant::now()) {
            return Err(Refusal::RateLimited);
        }
        if !self.hub.engine.is_up() {
            return Err(Refusal::Unavailable);
        }
        let message = Message {
            sender: self.name.clone(),
            text: text.to_owned(),
            ..Default::default()
        };
        let said = self
            .hub
            .engine
            .append(&self.room, Some(self.id), message, None);
        self.hub.keep_budget();
        said
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.leave(&self.room, self.id, &self.name);
    }
}
