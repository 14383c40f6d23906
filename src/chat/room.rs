//! A room: its members, its numbering and its log. Publishing happens under
//! the room's lock, which is what gives every member one order, and what
//! lets a resuming member be handed the log without a gap or a repeat.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;

use super::budget::{outgoing, weight, HistoryBudget, NOTE_ROOM};
use super::types::{unique_id, Delivery, Resume, Subscriber};
use crate::lock;
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message;
use crate::queue::SendError;
use crate::throttle::Throttle;

pub struct MemberEntry {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(super) subscriber: Arc<dyn Subscriber>,
    pub(super) arrival: Arrival,
    /// Deliveries held for it at most while it is [`Arrival::Waiting`]
    /// (see [`WAITING_HOLDS`]).
    pub(super) hold: usize,
}

impl MemberEntry {
    /// Bytes of replay the member can be handed at once.
    pub fn replay_room(&self) -> usize {
        self.subscriber.replay_room()
    }
}

/// How many times its queue's bound a member waiting for its JOIN holds.
/// A joiner waits one round trip to Redis, but a burst of joins (a room of
/// a thousand filling at once) can put hundreds of entries after its JOIN
/// before the writer reads its reply; the held entries are shared pointers,
/// eight bytes each.
pub const WAITING_HOLDS: usize = 8;

/// Where a member is in joining. With the in-memory engine a member is
/// [`Arrival::Here`] at once; with a shared one its JOIN is numbered by the
/// engine, and what the room delivers before the member knows where it
/// starts is held for it, then sorted out.
pub enum Arrival {
    /// Gets every delivery.
    Here,
    /// Its JOIN is not numbered yet: the latest deliveries are held (as
    /// many as its queue holds; most precede its JOIN, and will not be its
    /// to see). `let_go` is the newest one let go of to keep that bound: if
    /// it turns out to be at or after the JOIN, the member missed it.
    Waiting {
        held: VecDeque<Arc<Delivery>>,
        let_go: Option<Arc<Delivery>>,
    },
    /// Its JOIN is `seq` of `epoch`: earlier entries of that epoch were
    /// replayed to it, or are not its to see; at `seq` it gets its own copy
    /// of its JOIN, with what `own` adds (a nameless member, which has no
    /// JOIN, starts at `seq` with `own` empty).
    Expecting {
        epoch: String,
        seq: u64,
        own: Option<Message>,
    },
}

pub struct Room {
    pub(super) name: String,
    /// The last number given (with a shared log: the highest this
    /// instance knows was given).
    pub(super) seq: u64,
    /// Names this log: a new one whenever the log starts over.
    pub(super) epoch: String,
    /// The last `keep` messages and the last `keep` JOIN and LEAVE events,
    /// oldest first, within the hub's history budget. Events are counted
    /// apart, so presence churn never pushes a message out: a replay may
    /// skip old events, never a message.
    history: VecDeque<Arc<Delivery>>,
    keep: usize,
    /// Of `history`, how many are events.
    events: usize,
    /// The newest message the log forgot (0: none): a member resuming from
    /// it or later missed nothing a replay cannot hand it.
    lost_through: u64,
    budget: Arc<HistoryBudget>,
    /// What `history` weighs against the budget.
    held: usize,
    /// When the room last published.
    pub(super) last_active: Instant,
    pub(super) members: Vec<MemberEntry>,
    /// Members dropped for a full queue, to be logged after unlocking.
    pub(super) dropped: Vec<String>,
    /// No longer the hub's: it was removed, empty (its log expired, or it
    /// keeps none).
    pub(super) closed: bool,
    /// Names are verified identities (tokens are required): a name with
    /// several connections is one member.
    pub(super) one_member_per_name: bool,
}

/// Whether a logged entry is a JOIN or LEAVE rather than a message.
fn is_event(delivery: &Delivery) -> bool {
    delivery.message.kind.enum_value_or_default() != Kind::MESSAGE
}

/// What one member gets in place of what the others get: a joiner's own
/// JOIN, with the roster in it.
pub struct OwnCopy {
    pub member: u64,
    pub message: Message,
}

/// Members dropped for a full queue.
static DROPPED: Throttle = Throttle::new();

/// A locked room that, when unlocked, logs the members it dropped.
pub struct RoomGuard<'a>(Option<MutexGuard<'a, Room>>);

pub fn lock_room(room: &Mutex<Room>) -> RoomGuard<'_> {
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
            // Any member can stop reading: said throttled.
            if let Some(times) = DROPPED.occurred() {
                warn!(
                    "room {name:?}: dropped {member:?}: its queue is full \
                     ({times} members dropped since the last warning)"
                );
            }
        }
    }
}

impl Room {
    pub(super) fn new(name: &str, keep: usize, budget: Arc<HistoryBudget>) -> Room {
        Room {
            name: name.to_owned(),
            seq: 0,
            epoch: unique_id(),
            history: VecDeque::new(),
            keep,
            events: 0,
            lost_through: 0,
            budget,
            held: 0,
            last_active: Instant::now(),
            members: Vec::new(),
            dropped: Vec::new(),
            closed: false,
            one_member_per_name: false,
        }
    }

    /// Whether the room has had no members and no message for `ttl`.
    pub(super) fn idle_past(&self, ttl: Duration, now: Instant) -> bool {
        self.members.is_empty() && now.saturating_duration_since(self.last_active) >= ttl
    }

    /// Starts the log over under a new epoch if it has expired.
    pub(super) fn expire_if_idle(&mut self, ttl: Duration) {
        if self.idle_past(ttl, Instant::now()) && (self.seq > 0 || !self.history.is_empty()) {
            self.seq = 0;
            self.epoch = unique_id();
            while self.forget_oldest() {}
            self.lost_through = 0;
        }
    }

    /// Hands `subscriber` what the log keeps after `resume`'s point, in
    /// order; returns whether that is everything it missed (same epoch, and
    /// nothing after `since` fell out of the log).
    pub(super) fn replay(&self, resume: &Resume, subscriber: &dyn Subscriber) -> bool {
        let same_epoch = resume.epoch == self.epoch || resume.epoch.is_empty() && resume.since == 0;
        let since = if same_epoch { resume.since } else { 0 };
        let mut complete = same_epoch && (since >= self.seq || since >= self.lost_through);
        let missed = self.history.iter().filter(|d| d.message.seq > since);
        // The newest entries that fit what the member can queue at once, with
        // room for the note that says where the replay starts.
        let room = subscriber.replay_room().saturating_sub(NOTE_ROOM);
        let mut fits = 0;
        let mut size = 0usize;
        for delivery in missed.clone().rev() {
            size = size.saturating_add(outgoing(delivery));
            if size > room {
                break;
            }
            fits += 1;
        }
        let skipped = missed.clone().count() - fits;
        let mut missed = missed.skip(skipped).peekable();
        if skipped > 0 {
            complete = false;
            let from = missed.peek().map_or(self.seq + 1, |d| d.message.seq);
            let note = Message {
                kind: Kind::ERROR.into(),
                room: self.name.clone(),
                text: format!(
                    "replay from {from}: the {skipped} entries before it are more than \
                     this connection takes at once"
                ),
                ..Default::default()
            };
            if subscriber.replay(&Delivery::new(note)).is_err() {
                return false;
            }
        }
        for delivery in missed {
            if subscriber.replay(delivery).is_err() {
                return false;
            }
        }
        complete
    }

    /// Logs `delivery`, then forgets the oldest entries while the room
    /// keeps more than `keep`, or while the logs weigh more than the budget
    /// and this room more than its share (never its newest entry here: the
    /// hub then takes from the heaviest room). The log stays a contiguous run.
    fn record(&mut self, delivery: &Arc<Delivery>) {
        let weight = weight(delivery);
        self.budget.held.fetch_add(weight, Ordering::Relaxed);
        if self.history.is_empty() {
            self.budget.rooms.fetch_add(1, Ordering::Relaxed);
        }
        self.held += weight;
        self.history.push_back(Arc::clone(delivery));
        if is_event(delivery) {
            self.events += 1;
            if self.events > self.keep {
                self.forget_oldest_event();
            }
        }
        while self.history.len() - self.events > self.keep
            || self.history.len() > 1 && self.budget.over() && self.held > self.budget.share()
        {
            if !self.forget_oldest() {
                break;
            }
        }
    }

    /// Drops the oldest JOIN or LEAVE event, wherever it is in the log.
    fn forget_oldest_event(&mut self) {
        if let Some(at) = self.history.iter().position(|d| is_event(d)) {
            if let Some(event) = self.history.remove(at) {
                self.forgot(&event);
            }
        }
    }

    /// What the log weighs against the budget.
    pub(super) fn log_weight(&self) -> usize {
        self.held
    }

    /// Drops the oldest logged entry; false when there is none.
    pub(super) fn forget_oldest(&mut self) -> bool {
        let Some(oldest) = self.history.pop_front() else {
            return false;
        };
        self.forgot(&oldest);
        true
    }

    /// Accounts for an entry taken out of the log.
    fn forgot(&mut self, entry: &Delivery) {
        let weight = weight(entry);
        self.held -= weight;
        self.budget.held.fetch_sub(weight, Ordering::Relaxed);
        if is_event(entry) {
            self.events -= 1;
        } else {
            self.lost_through = self.lost_through.max(entry.message.seq);
        }
        if self.history.is_empty() {
            self.budget.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hands a delivery to every member, each as its arrival says; returns
    /// the members that refused it, dropped from the room (the evicted told
    /// so and logged once the room is unlocked).
    pub(super) fn fan_out(
        &mut self,
        delivery: &Arc<Delivery>,
        own_copy: Option<&(u64, Arc<Delivery>)>,
    ) -> Vec<(u64, String)> {
        let mut dropped = Vec::new();
        let mut evicted = Vec::new();
        self.members.retain_mut(|m| {
            let delivery = match own_copy {
                Some((id, own)) if *id == m.id => own,
                _ => delivery,
            };
            match arrive(m, delivery) {
                Ok(()) => true,
                Err(error) => {
                    dropped.push((m.id, m.name.clone()));
                    if error == SendError::Full {
                        evicted.push((m.name.clone(), Arc::clone(&m.subscriber)));
                    }
                    false
                }
            }
        });
        for (name, subscriber) in evicted {
            // Logged once the room's lock is released: a slow log must not
            // stall the room.
            self.dropped.push(name);
            subscriber.evicted();
        }
        dropped
    }

    /// Who is in the room: each name once, sorted, with how many
    /// connections it has.
    pub(super) fn roster(&self) -> (Vec<String>, Vec<u32>) {
        roster(self.members.iter().map(|m| m.name.as_str()))
    }

    /// Whether another member (or another connection of one) has `name`:
    /// with verified identities, its JOIN and LEAVE are the first's and the
    /// last's only.
    pub(super) fn still_present(&self, name: &str) -> bool {
        self.one_member_per_name && self.members.iter().any(|m| m.name == name)
    }

    /// Hands member `id` `message`, stamped as the room's latest, without
    /// numbering it or telling the others: the own JOIN of a second
    /// connection of a name already here.
    pub(super) fn tell_only(&mut self, id: u64, mut message: Message) {
        message.room = self.name.clone();
        message.seq = self.seq;
        message.timestamp_ms = now_ms();
        message.epoch = self.epoch.clone();
        if let Some(m) = self.members.iter().find(|m| m.id == id) {
            let _ = m.subscriber.deliver(&Delivery::new(message));
        }
    }

    /// Stamps `message` with the room's next number and the clock, and hands
    /// it to every member; members that refuse are dropped, and their leaving
    /// is announced in turn (a loop, not recursion: a thousand drops must not
    /// grow a connection thread's small stack). Returns the message's number.
    pub(super) fn publish(&mut self, message: Message) -> u64 {
        self.publish_and_tell(message, None)
    }

    /// Publishes a member's JOIN, where the member itself gets `own`
    /// instead: the same event, numbered alike, with the roster in it.
    pub(super) fn announce_join(&mut self, join: Message, own: OwnCopy) -> u64 {
        self.publish_and_tell(join, Some(own))
    }

    /// [`Room::publish`], with `own` for one member in place of the first
    /// message.
    fn publish_and_tell(&mut self, message: Message, mut own: Option<OwnCopy>) -> u64 {
        let mut pending = VecDeque::from([message]);
        let mut first_seq = 0;
        while let Some(mut message) = pending.pop_front() {
            self.seq += 1;
            first_seq = if first_seq == 0 { self.seq } else { first_seq };
            message.room = self.name.clone();
            message.seq = self.seq;
            message.timestamp_ms = now_ms();
            message.epoch = self.epoch.clone();
            let own_copy = own.take().map(|copy| {
                let mut own = copy.message;
                own.room = message.room.clone();
                own.seq = message.seq;
                own.timestamp_ms = message.timestamp_ms;
                own.epoch = message.epoch.clone();
                (copy.member, Delivery::new(own))
            });
            let delivery = Delivery::new(message);
            self.last_active = Instant::now();
            if self.keep > 0 {
                self.record(&delivery);
            }
            for (_, name) in self.fan_out(&delivery, own_copy.as_ref()) {
                if !name.is_empty() && !self.still_present(&name) {
                    pending.push_back(Room::event(Kind::LEAVE, &name));
                }
            }
        }
        first_seq
    }

    /// A JOIN or LEAVE event. It names only who came or went: listing the
    /// whole room in every event would make a room of n members cost n²
    /// bytes to fill. The member who joins gets the list once, in its own
    /// copy of its JOIN event: [`Room::announce_join`] in memory
    /// (`engine.rs`); with a shared log, when its JOIN comes back numbered
    /// (`shared.rs`).
    pub(super) fn event(kind: Kind, name: &str) -> Message {
        Message {
            sender: name.to_owned(),
            kind: kind.into(),
            ..Default::default()
        }
    }
}

/// Names, one per connection, as a member list: each non-empty name once,
/// sorted, beside how many connections it has.
pub fn roster<'a>(names: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<u32>) {
    let mut names: Vec<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
    names.sort_unstable();
    let (mut unique, mut counts) = (Vec::<String>::new(), Vec::<u32>::new());
    for name in names {
        match (unique.last(), counts.last_mut()) {
            (Some(last), Some(count)) if last == name => *count += 1,
            _ => {
                unique.push(name.to_owned());
                counts.push(1);
            }
        }
    }
    (unique, counts)
}

/// Hands `delivery` to member `m` as its arrival says.
pub(super) fn arrive(m: &mut MemberEntry, delivery: &Arc<Delivery>) -> Result<(), SendError> {
    match &mut m.arrival {
        Arrival::Here => m.subscriber.deliver(delivery),
        Arrival::Waiting { held, let_go } => {
            if held.len() >= m.hold {
                *let_go = held.pop_front();
            }
            held.push_back(Arc::clone(delivery));
            Ok(())
        }
        Arrival::Expecting { epoch, seq, own } => {
            let message = &delivery.message;
            if message.epoch == *epoch && message.seq < *seq {
                return Ok(()); // replayed, or from before it came
            }
            let delivery = match own.take() {
                Some(own) if message.epoch == *epoch && message.seq == *seq => {
                    Delivery::new(Message {
                        members: own.members,
                        connections: own.connections,
                        recovered: own.recovered,
                        ..message.clone()
                    })
                }
                _ => Arc::clone(delivery),
            };
            m.arrival = Arrival::Here;
            m.subscriber.deliver(&delivery)
        }
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Drop for Room {
    /// A room let go of gives its log's weight back to the budget.
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::Relaxed);
        if !self.history.is_empty() {
            self.budget.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
