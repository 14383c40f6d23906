//! `redis-writer`: every write to Redis, pipelined. Whatever is queued when
//! the thread comes round goes out in one flush and its replies are read in
//! order, so many publishers cost one round trip, not one each.

use std::io;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use log::{info, warn};

use super::primary::{self, History};
use super::resp::{Connection, Value};
use super::settle::{settle, Said};
use super::url::Address;
use super::{
    back_off, room_keys, Command, Durability, RedisState, IO_TIMEOUT, RETRY_FIRST, STREAM_FLOOR,
};
use crate::chat::{lock_room, Refusal, Room};
use crate::executor::block_on_until;
use crate::queue;

/// The script every write runs.
const SCRIPT: &str = include_str!("room.lua");
/// Commands sent in one flush at most.
const BATCH: usize = 1024;

/// A connection to the primary, with the script loaded.
struct Link {
    connection: Connection,
    sha: String,
    primary: Address,
    history: History,
}

/// What every run of the script is told after its operation.
struct Limits {
    /// Entries a room's log keeps, at least.
    maxlen: String,
    /// The room's keys' time to live, in ms.
    ttl: String,
    /// "1" when names are verified identities (one member per name).
    unique: &'static str,
}

/// The highest number of a room's log this instance knows was given, and
/// its epoch, as the script takes them (empty: none known). The script
/// holds the log to it: a log with less has lost its tail.
struct Seen {
    epoch: String,
    seq: String,
}

impl Seen {
    fn of(room: &Mutex<Room>) -> Seen {
        match lock_room(room).high_water() {
            Some((epoch, seq)) => Seen {
                epoch: epoch.to_owned(),
                seq: seq.to_string(),
            },
            None => Seen::none(),
        }
    }

    fn none() -> Seen {
        Seen {
            epoch: String::new(),
            seq: String::new(),
        }
    }
}

impl Link {
    /// Queues a run of the script on `room`'s keys: `op`, the limits, what
    /// this instance saw of the log, the primary's history, `args`.
    fn script(
        &mut self,
        room: &str,
        op: &str,
        limits: &Limits,
        seen: &Seen,
        args: &[&str],
    ) -> io::Result<()> {
        let [meta, log, members] = room_keys(room);
        let Link {
            connection,
            sha,
            history,
            ..
        } = self;
        let mut all = vec!["EVALSHA", sha, "3", &meta, &log, &members, op];
        all.extend([limits.maxlen.as_str(), &limits.ttl, limits.unique]);
        all.extend([seen.epoch.as_str(), &seen.seq]);
        all.extend([
            history.replid.as_str(),
            &history.promoted_from,
            &history.keeps,
        ]);
        all.extend_from_slice(args);
        connection.send(&all)
    }
}

fn connect(shared: &RedisState) -> io::Result<Link> {
    let (mut connection, primary) =
        primary::open(&shared.config.target, IO_TIMEOUT, shared.config.max_reply)?;
    if let Durability::Replica { timeout, .. } = shared.config.durability {
        // A `WAIT` may take its whole timeout before it answers.
        connection.set_read_timeout(IO_TIMEOUT + timeout)?;
    }
    let confirmed = matches!(shared.config.durability, Durability::Replica { .. });
    let history = History::of(&mut connection, confirmed)?;
    let sha = connection.call(&["SCRIPT", "LOAD", SCRIPT])?;
    let sha = sha
        .as_str()
        .ok_or_else(|| io::Error::other("SCRIPT LOAD gave no sha"))?
        .to_owned();
    Ok(Link {
        connection,
        sha,
        primary,
        history,
    })
}

pub(super) fn run(shared: &RedisState, pending: queue::Receiver<Command>) {
    let mut link = None;
    let mut retry = RETRY_FIRST;
    let tend_every = shared.config.presence_ttl / 3;
    let mut next_tend = Instant::now();
    let mut batch = Vec::new();
    let mut pending = pending;
    loop {
        let Some(connected) = link.as_mut() else {
            match connect(shared) {
                Ok(connected) => {
                    info!("redis: connected to {}", connected.primary);
                    *crate::lock(&shared.primary) = Some(connected.primary.clone());
                    link = Some(connected);
                    shared.set_up(true);
                    retry = RETRY_FIRST;
                    next_tend = Instant::now();
                }
                Err(e) => {
                    if retry == RETRY_FIRST {
                        warn!(
                            "redis: cannot reach {}: {e} (retrying)",
                            shared.config.target
                        );
                    }
                    shared.set_up(false);
                    // What waits is refused now, not when Redis is back.
                    while let Some(command) = pending.try_recv() {
                        fail(command);
                    }
                    back_off(&mut retry);
                }
            }
            continue;
        };
        match block_on_until(pin!(pending.next()), Some(next_tend)) {
            Some(Some(command)) => batch.push(command),
            Some(None) => return, // the engine is gone
            None => {}
        }
        while batch.len() < BATCH {
            match pending.try_recv() {
                Some(command) => batch.push(command),
                None => break,
            }
        }
        let tend = Instant::now() >= next_tend;
        if tend {
            next_tend = Instant::now() + tend_every;
        }
        match exchange(shared, connected, &mut batch, tend) {
            Ok(()) => shared.set_up(true),
            Err(e) => {
                warn!("redis: connection lost: {e}");
                link = None;
                shared.set_up(false);
                for command in batch.drain(..) {
                    fail(command);
                }
            }
        }
    }
}

/// Tells whoever waits on `command` that it was not done.
fn fail(command: Command) {
    match command {
        Command::Say {
            room, from, done, ..
        } => {
            if let Some(done) = done {
                done(Err(Refusal::Unavailable));
            }
            if let Some(id) = from {
                lock_room(&room).tell_not_said(id, &Refusal::Unavailable);
            }
        }
        Command::Join { room, id, .. } => {
            lock_room(&room).join_failed(id, &Refusal::Unavailable);
        }
        Command::Leave { .. } | Command::Wake => {}
    }
}

/// Sends `batch` (and, if `tend`, this instance's presence) in one flush,
/// then reads and acts on every reply. Commands the replies ask for (the
/// reader's wake-up, LEAVEs of members dropped meanwhile) go in the next.
fn exchange(
    shared: &RedisState,
    link: &mut Link,
    batch: &mut Vec<Command>,
    tend: bool,
) -> io::Result<()> {
    let config = &shared.config;
    let limits = Limits {
        maxlen: config.history.max(STREAM_FLOOR).to_string(),
        ttl: config.history_ttl.as_millis().max(1).to_string(),
        unique: if config.one_member_per_name { "1" } else { "0" },
    };
    let presence = config.presence_ttl.as_millis().max(1).to_string();
    let history = config.history.to_string();
    // Consecutive messages to one room go in one call: one script run
    // appends them all (the calls, each covering `n` commands, in order).
    let mut calls = Vec::new();
    let mut at = 0;
    while at < batch.len() {
        let says = says_in_a_row(&batch[at..]);
        if says > 0 {
            let (room, seen) = match &batch[at] {
                Command::Say { message, room, .. } => (message.room.as_str(), Seen::of(room)),
                _ => unreachable!("says_in_a_row counts messages only"),
            };
            let mut args = Vec::with_capacity(2 * says);
            for command in &batch[at..at + says] {
                if let Command::Say { message, .. } = command {
                    args.push(message.sender.as_str());
                    args.push(message.text.as_str());
                }
            }
            link.script(room, "say", &limits, &seen, &args)?;
            calls.push((says, true));
            at += says;
            continue;
        }
        calls.push((1, false));
        let command = &batch[at];
        at += 1;
        match command {
            Command::Say { .. } => unreachable!("sent above"),
            Command::Join {
                room,
                room_name,
                id,
                name,
                resume,
                replay_room,
            } => {
                let (since, epoch) = match resume {
                    Some(r) => (r.since.to_string(), r.epoch.as_str()),
                    None => (String::new(), ""),
                };
                let tag = shared.tag(*id);
                let takes = replay_room.to_string();
                let args = [
                    tag.as_str(),
                    name,
                    &presence,
                    &since,
                    epoch,
                    &history,
                    &takes,
                ];
                link.script(room_name, "join", &limits, &Seen::of(room), &args)?;
            }
            Command::Leave { room, id, name } => {
                let args = [shared.tag(*id)];
                let args = [args[0].as_str(), name];
                link.script(room, "leave", &limits, &Seen::none(), &args)?;
            }
            Command::Wake => {
                link.connection.send(&[
                    "XADD",
                    &shared.wake_key,
                    "MAXLEN",
                    "1",
                    "*",
                    "wake",
                    "1",
                ])?;
                // It lives as this instance's presence does: renewed by
                // each round of presence, gone soon after the instance.
                link.connection
                    .send(&["PEXPIRE", &shared.wake_key, &presence])?;
                calls.push((0, false));
            }
        }
    }
    // With replica durability, one `WAIT` after the batch's messages and
    // joins confirms them all (a joiner is shown its replay and its JOIN
    // only once replicas have them): the round trip is shared as the
    // append's is.
    let shows = batch
        .iter()
        .any(|c| matches!(c, Command::Say { .. } | Command::Join { .. }));
    let waits_for = match config.durability {
        Durability::Replica { replicas, timeout } if shows => {
            let ms = timeout.as_millis().max(1).to_string();
            link.connection
                .send(&["WAIT", &replicas.to_string(), &ms])?;
            Some(replicas)
        }
        _ => None,
    };
    let tended = if tend {
        send_presence(shared, link, &limits, &presence)?
    } else {
        0
    };
    link.connection.flush()?;
    let mut replies = Vec::with_capacity(calls.len());
    for _ in &calls {
        replies.push(link.connection.read()?);
    }
    let confirmed = match waits_for {
        None => Ok(()),
        Some(wanted) => {
            let reply = link.connection.read()?;
            let got = reply.as_int().and_then(|n| u32::try_from(n).ok());
            match got {
                Some(got) if got >= wanted => Ok(()),
                got => Err(Refusal::NotConfirmed {
                    wanted,
                    got: got.unwrap_or(0),
                }),
            }
        }
    };
    // The round's own replies are read whatever they say, and its
    // messages settled, before a lost primary ends the connection: what
    // Redis took is acknowledged, not refused and sent again.
    let mut lost = None;
    if tend && !primary::is_primary(&link.connection.read()?) {
        lost = Some(format!("{} is no longer the primary", link.primary));
    }
    for _ in 0..tended {
        match link.connection.read()? {
            Value::Error(e) if lost_primary(&e) => lost = Some(e),
            Value::Error(e) => warn!("redis: renewing presence: {e}"),
            _ => {}
        }
    }
    let mut next = Vec::new();
    let mut commands = batch.drain(..);
    for ((covered, says), reply) in calls.into_iter().zip(replies) {
        if let Value::Error(e) = &reply {
            if lost_primary(e) {
                lost = Some(e.clone());
                commands.by_ref().for_each(fail);
                break;
            }
            warn!("redis: {e}");
        }
        // A call of messages answers with their numbers, one each, then
        // the log's epoch.
        let (replies, epoch) = match (says, reply) {
            (true, Value::Array(mut seqs)) => {
                let epoch = seqs.pop().and_then(|e| e.as_str().map(str::to_owned));
                (seqs, epoch)
            }
            (_, reply) => (vec![reply; covered], None),
        };
        let mut replies = replies.into_iter();
        for command in commands.by_ref().take(covered) {
            let reply = replies.next().unwrap_or(Value::Nil);
            let said = Said {
                reply,
                epoch: epoch.as_deref(),
                confirmed: &confirmed,
            };
            settle(shared, command, said, &mut next);
        }
    }
    drop(commands);
    batch.append(&mut next);
    match lost {
        None => Ok(()),
        Some(e) => Err(io::Error::other(e)),
    }
}

/// Whether an error reply means this connection no longer reaches a
/// primary that has papo's script: the script is gone (Redis restarted), or
/// the server is a replica now (a failover demoted it), or it is loading,
/// or it refuses writes for want of replicas (`min-replicas-to-write`: a
/// primary cut off from the rest, which the Sentinels are replacing).
/// Connecting again finds the primary and loads the script.
fn lost_primary(error: &str) -> bool {
    [
        "NOSCRIPT",
        "READONLY",
        "MASTERDOWN",
        "LOADING",
        "NOREPLICAS",
    ]
    .iter()
    .any(|code| error.starts_with(code))
}

/// Renews the presence of this instance's members, room by room (reaping
/// the expired on the way); lets go of rooms no longer held here. Returns
/// how many replies to read.
fn send_presence(
    shared: &RedisState,
    link: &mut Link,
    limits: &Limits,
    presence: &str,
) -> io::Result<usize> {
    // Asked even with no room to renew: an idle writer learns so whether
    // its primary is there, and still a primary (a failover that demoted
    // it while nothing was written is followed so).
    link.connection.send(&["ROLE"])?;
    link.connection
        .send(&["PEXPIRE", &shared.wake_key, presence])?;
    let rooms: Vec<_> = {
        let mut follows = crate::lock(&shared.follows);
        follows.retain(|_, f| !lock_room(&f.room).is_closed());
        follows
            .iter()
            .map(|(name, f)| (name.clone(), Arc::clone(&f.room)))
            .collect()
    };
    for (name, room) in &rooms {
        let tags: Vec<String> = lock_room(room)
            .member_tags()
            .into_iter()
            .map(|(id, member)| format!("{}:{member}", shared.tag(id)))
            .collect();
        let mut args = vec![presence];
        args.extend(tags.iter().map(String::as_str));
        link.script(name, "tend", limits, &Seen::of(room), &args)?;
    }
    Ok(rooms.len() + 1)
}

/// How many commands from the first are messages to one room.
fn says_in_a_row(commands: &[Command]) -> usize {
    let Some(Command::Say { message: first, .. }) = commands.first() else {
        return 0;
    };
    commands
        .iter()
        .take_while(|c| matches!(c, Command::Say { message, .. } if message.room == first.room))
        .count()
}
