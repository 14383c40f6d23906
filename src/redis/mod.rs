//! The Redis engine: rooms' logs in Redis, shared by every papo instance
//! pointed at it.
//!
//! A room is three keys, named with the room as a hash tag (`papo:{room}:…`)
//! so that Redis Cluster would keep them together: a stream (the log), a
//! hash (its last number and epoch) and a sorted set (who is present,
//! on which instance, until when). Every write is one call of one Lua
//! script (`room.lua`), so numbers are given with the append: gapless, one
//! order for all instances.
//!
//! Two threads per instance, each with its own connection:
//! - `redis-writer` runs the script for every message, join and leave,
//!   pipelining whatever is queued into one round trip, and renews this
//!   instance's members' presence (reaping the expired: an instance that
//!   died stops renewing its own, and another announces their LEAVE);
//! - `redis-reader` waits in one `XREAD BLOCK` on the logs of the rooms this
//!   instance has members in, and hands each entry, in order, to the room
//!   here, which fans it out as the in-memory engine would.
//!
//! When Redis cannot be reached, both threads retry with back-off; meanwhile
//! [`Engine::is_up`] is false, so messages are refused with a clear answer,
//! and connections stay. Back, the reader continues from the last entry it
//! delivered in each room: nothing Redis kept is lost or delivered twice.

mod primary;
mod reader;
pub mod resp;
mod settle;
mod url;
mod writer;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::chat::{Done, Engine, MemberEntry, Refusal, Resume, Room};
use crate::proto::chat::Message;
use crate::queue;
pub use url::{Address, Sentinels, Target};

/// The Redis engine's settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The one server, or the Sentinels that name the primary.
    pub target: Target,
    /// Entries a room's log keeps for resuming members.
    pub history: usize,
    /// How long a room's keys live after its last activity.
    pub history_ttl: Duration,
    /// How long a member's presence lasts unless its instance renews it.
    pub presence_ttl: Duration,
    /// Bytes of messages waiting for Redis, past which more are refused.
    pub pending: usize,
    /// The most memory one reply from Redis may take as read; past it the
    /// connection is dropped and made anew.
    pub max_reply: usize,
    /// When a message is acknowledged.
    pub durability: Durability,
    /// Names are verified identities (tokens are required): a name with
    /// several connections, on any instance, is one member.
    pub one_member_per_name: bool,
}

/// When a message is acknowledged to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once Redis's primary has it in memory: a failover or a restart may
    /// still lose it (and the log then starts a new epoch).
    Memory,
    /// Once `replicas` replicas have it too (`WAIT`), within `timeout`;
    /// past it, the message is answered as not confirmed.
    Replica { replicas: u32, timeout: Duration },
}

/// How long connecting, and each read and write, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Back-off between attempts to reach Redis: from the first, doubling to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Entries a stream keeps at least, whatever `--history` says: an
/// instance's reader, a moment behind the writers, must still find them.
const STREAM_FLOOR: usize = 1000;

/// What the writer is asked to do.
enum Command {
    /// `from` (a member here, by id) or a service says `message` in `room`
    /// (`message.room` names it).
    Say {
        room: Arc<Mutex<Room>>,
        from: Option<u64>,
        message: Message,
        done: Option<Done>,
    },
    /// Member `id` named `name` joins `room`, resuming from `resume`, and
    /// can be handed `replay_room` bytes of replay at once.
    Join {
        room: Arc<Mutex<Room>>,
        room_name: String,
        id: u64,
        name: String,
        resume: Option<Resume>,
        replay_room: usize,
    },
    /// Member `id` left `room`.
    Leave { room: String, id: u64, name: String },
    /// The reader has a new room to read: wake it from its `XREAD`.
    Wake,
}

/// A command's weight against the pending bound: the strings it carries,
/// and its bookkeeping.
fn weight(command: &Command) -> usize {
    let strings = match command {
        Command::Say { message, .. } => {
            message.text.len() + message.sender.len() + message.room.len()
        }
        Command::Join {
            room_name,
            name,
            resume,
            ..
        } => room_name.len() + name.len() + resume.as_ref().map_or(0, |r| r.epoch.len()),
        Command::Leave { room, name, .. } => room.len() + name.len(),
        Command::Wake => 0,
    };
    strings + COMMAND_COST
}

/// What a queued command costs besides its strings.
const COMMAND_COST: usize = 256;

/// A room this instance reads: its local room, and the last entry delivered.
struct Follow {
    room: Arc<Mutex<Room>>,
    /// The log's key.
    key: String,
    /// Id of the last entry delivered here.
    cursor: StreamId,
}

/// What both threads share.
struct RedisState {
    config: RedisConfig,
    /// Names this instance's members in presence: unique per process.
    instance: String,
    up: AtomicBool,
    commands: queue::Sender<Command>,
    /// The rooms this instance reads, by name.
    follows: Mutex<HashMap<String, Follow>>,
    /// The reader's wake-up stream.
    wake_key: String,
    /// What the reader writes to learn, with `WAIT`, that the replicas
    /// have what it read (replica durability).
    read_key: String,
    /// The primary the writer is connected to: the reader reads from the
    /// same, and follows it when it moves.
    primary: Mutex<Option<Address>>,
    /// Told when the engine goes up or down.
    watchers: Mutex<Vec<Watcher>>,
}

type Watcher = Box<dyn Fn(bool) + Send + Sync>;

/// The engine, as the hub holds it.
pub struct Redis {
    shared: Arc<RedisState>,
}

impl Redis {
    /// Starts the writer and reader threads. Redis need not be up: they
    /// keep trying, and the engine reports itself down meanwhile.
    pub fn start(config: RedisConfig) -> io::Result<Arc<Redis>> {
        let (commands, pending) = queue::bounded_in_bytes(usize::MAX, config.pending, weight);
        let instance = crate::chat::unique_id().replace('-', "");
        let shared = Arc::new(RedisState {
            wake_key: format!("papo:wake:{instance}"),
            read_key: format!("papo:read:{instance}"),
            instance,
            config,
            up: AtomicBool::new(false),
            commands,
            follows: Mutex::new(HashMap::new()),
            primary: Mutex::new(None),
            watchers: Mutex::new(Vec::new()),
        });
        let writer = Arc::clone(&shared);
        thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || writer::run(&writer, pending))?;
        let reader = Arc::clone(&shared);
        thread::Builder::new()
            .name("redis-reader".into())
            .spawn(move || reader::run(&reader))?;
        // A server that starts with Redis reachable starts up, not refusing
        // its first members; one that does not starts down, and says so.
        let started = std::time::Instant::now();
        while !shared.up.load(Ordering::Acquire) && started.elapsed() < IO_TIMEOUT {
            thread::sleep(Duration::from_millis(5));
        }
        Ok(Arc::new(Redis { shared }))
    }

    /// Calls `watcher` with whether the engine is up, now and at each change.
    pub fn watch(&self, watcher: impl Fn(bool) + Send + Sync + 'static) {
        let mut watchers = crate::lock(&self.shared.watchers);
        watcher(self.shared.up.load(Ordering::Acquire));
        watchers.push(Box::new(watcher));
    }
}

impl RedisState {
    fn send(&self, command: Command) -> Result<(), Refusal> {
        self.commands
            .try_send(command)
            .map_err(|_| Refusal::Unavailable)
    }

    /// A member's name in presence.
    fn tag(&self, id: u64) -> String {
        format!("{}:{id}", self.instance)
    }

    fn set_up(&self, up: bool) {
        let watchers = crate::lock(&self.watchers);
        if self.up.swap(up, Ordering::AcqRel) != up {
            for watcher in watchers.iter() {
                watcher(up);
            }
        }
    }
}

impl Engine for Redis {
    fn local_log(&self) -> bool {
        false
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn append(
        &self,
        room: &Arc<Mutex<Room>>,
        from: Option<u64>,
        mut message: Message,
        done: Option<Done>,
    ) -> Result<u64, Refusal> {
        {
            let locked = crate::chat::lock_room(room);
            if from.is_some_and(|id| !locked.has_member(id)) {
                return Ok(0); // dropped for being slow: it no longer speaks here
            }
            message.room = locked.name().to_owned();
        }
        let room = Arc::clone(room);
        self.shared.send(Command::Say {
            room,
            from,
            message,
            done,
        })?;
        Ok(0)
    }

    fn join(
        &self,
        room_arc: &Arc<Mutex<Room>>,
        room: &mut Room,
        member: MemberEntry,
        resume: Option<Resume>,
    ) {
        let (id, name) = (member.id, member.name.clone());
        // What the member takes at once, and no more than half of what one
        // reply may be: the join script stops its replay there.
        let replay_room = member.replay_room().min(self.shared.config.max_reply / 2);
        room.add_waiting(member);
        let join = Command::Join {
            room: Arc::clone(room_arc),
            room_name: room.name().to_owned(),
            id,
            name,
            resume,
            replay_room,
        };
        if !self.is_up() || self.shared.send(join).is_err() {
            room.join_failed(id, &Refusal::Unavailable);
        }
    }

    fn leave(&self, room: &mut Room, id: u64, name: &str) {
        if !room.remove_member(id) {
            return; // dropped already, and its leaving announced
        }
        // Even while Redis is down: if this is lost, the member's presence
        // expires and its LEAVE is announced then.
        let _ = self.shared.send(Command::Leave {
            room: room.name().to_owned(),
            id,
            name: name.to_owned(),
        });
    }
}

/// A stream entry's id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId(u64, u64);

impl StreamId {
    fn parse(id: &str) -> Option<StreamId> {
        let (ms, seq) = id.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A room's keys, with its name as the hash tag; the characters that would
/// end the tag early are escaped.
fn room_key(room: &str, what: &str) -> String {
    let mut key = String::with_capacity(room.len() + 16);
    key.push_str("papo:{");
    for c in room.chars() {
        match c {
            '%' => key.push_str("%25"),
            '{' => key.push_str("%7B"),
            '}' => key.push_str("%7D"),
            c => key.push(c),
        }
    }
    key.push_str("}:");
    key.push_str(what);
    key
}

/// The three keys of a room, in the script's order.
fn room_keys(room: &str) -> [String; 3] {
    [
        room_key(room, "meta"),
        room_key(room, "log"),
        room_key(room, "members"),
    ]
}

/// A stream entry's fields as a message (its room set by the caller).
fn entry_message(fields: &[resp::Value]) -> Option<Message> {
    let mut message = Message::default();
    for pair in fields.chunks_exact(2) {
        let value = &pair[1];
        match pair[0].as_str()? {
            "seq" => message.seq = u64::try_from(value.as_int()?).ok()?,
            "kind" => {
                let kind = i32::try_from(value.as_int()?).ok()?;
                message.kind = protobuf::EnumOrUnknown::from_i32(kind);
            }
            "sender" => message.sender = value.as_str()?.to_owned(),
            "text" => message.text = value.as_str()?.to_owned(),
            "ts" => message.timestamp_ms = value.as_int()?,
            "epoch" => message.epoch = value.as_str()?.to_owned(),
            _ => {}
        }
    }
    Some(message)
}

/// Sleeps the back-off, and doubles it for next time.
fn back_off(retry: &mut Duration) {
    thread::sleep(*retry);
    *retry = (*retry * 2).min(RETRY_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_room_as_one_hash_tag() {
        assert_eq!(room_key("geral", "log"), "papo:{geral}:log");
        assert_eq!(room_key("a}b{c%", "meta"), "papo:{a%7Db%7Bc%25}:meta");
    }

    #[test]
    fn stream_ids_order_as_redis_orders_them() {
        let a = StreamId::parse("1700000000000-9").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1700000000001-0");
        assert_eq!(StreamId::parse("x-1"), None);
    }
}
