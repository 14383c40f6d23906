//! What the writer does with each reply: a message's number handed to
//! whoever waits on it, a joiner's JOIN turned into its arrival (replay,
//! roster, where its live entries start), and the room followed by the
//! reader from there.

use std::sync::Arc;

use super::resp::Value;
use super::{entry_message, Command, Follow, RedisState, StreamId};
use crate::chat::{lock_room, Refusal};
use crate::proto::chat::Message;

/// A command's reply, with what its call shared: a message's epoch, and
/// whether the replicas confirmed the batch.
pub(super) struct Said<'a> {
    pub(super) reply: Value,
    pub(super) epoch: Option<&'a str>,
    pub(super) confirmed: &'a Result<(), Refusal>,
}

/// Acts on a command's reply (a message's: its number, in `epoch`,
/// acknowledged if the replicas confirmed it).
pub(super) fn settle(shared: &RedisState, command: Command, said: Said, next: &mut Vec<Command>) {
    let Said {
        reply,
        epoch,
        confirmed,
    } = said;
    match command {
        Command::Say {
            room, from, done, ..
        } => {
            let given = reply.as_int().and_then(|seq| u64::try_from(seq).ok());
            if let (Some(seq), Some(epoch)) = (given, epoch) {
                lock_room(&room).saw(epoch, seq);
            }
            let outcome = given
                .ok_or(Refusal::Unavailable)
                .and_then(|seq| confirmed.clone().map(|()| seq));
            if let (Err(why), Some(id)) = (&outcome, from) {
                lock_room(&room).tell_not_said(id, why);
            }
            if let Some(done) = done {
                done(outcome);
            }
        }
        Command::Join {
            room,
            id,
            name,
            resume,
            ..
        } => match (joined(&name, resume.as_ref(), reply), confirmed) {
            (None, _) => lock_room(&room).join_failed(id, &Refusal::Unavailable),
            (Some(join), Err(why)) => {
                // In the room, told its join is not confirmed: it hears
                // the room from its JOIN on, as the replicas confirm it.
                let mut locked = lock_room(&room);
                locked.join_failed(id, why);
                let room_name = locked.name().to_owned();
                let closed = locked.is_closed();
                drop(locked);
                if !closed && follow(shared, &room_name, &room, join.last) {
                    next.push(Command::Wake);
                }
            }
            (Some(join), Ok(())) => {
                let mut locked = lock_room(&room);
                let dropped = locked.arrived(
                    id,
                    join.epoch,
                    join.seq,
                    join.own,
                    join.replay,
                    join.announced,
                );
                let closed = locked.is_closed();
                let room_name = locked.name().to_owned();
                drop(locked);
                leave_all(&room_name, dropped, next);
                if !closed && follow(shared, &room_name, &room, join.last) {
                    next.push(Command::Wake);
                }
            }
        },
        Command::Leave { .. } | Command::Wake => {}
    }
}
/// LEAVEs for members dropped here.
fn leave_all(room: &str, dropped: Vec<(u64, String)>, next: &mut Vec<Command>) {
    next.extend(dropped.into_iter().map(|(id, name)| Command::Leave {
        room: room.to_owned(),
        id,
        name,
    }));
}

/// Starts reading `room` after entry `last`, unless it is read already;
/// true when the reader must be told.
fn follow(
    shared: &RedisState,
    name: &str,
    room: &Arc<std::sync::Mutex<crate::chat::Room>>,
    last: StreamId,
) -> bool {
    let mut follows = crate::lock(&shared.follows);
    if follows
        .get(name)
        .is_some_and(|f| Arc::ptr_eq(&f.room, room))
    {
        return false;
    }
    follows.insert(
        name.to_owned(),
        Follow {
            room: Arc::clone(room),
            key: super::room_key(name, "log"),
            cursor: last,
        },
    );
    true
}

/// A JOIN's reply, read.
struct Joined {
    seq: u64,
    epoch: String,
    /// The joiner's own copy of its JOIN adds these (none when nameless).
    own: Option<Message>,
    /// What it missed, oldest first.
    replay: Vec<Message>,
    /// The entry before its JOIN.
    last: StreamId,
    /// Whether its JOIN is in the log (not for another connection of a
    /// member here, nor for a nameless one).
    announced: bool,
}

fn joined(name: &str, resume: Option<&crate::chat::Resume>, reply: Value) -> Option<Joined> {
    let mut fields = reply.into_array().into_iter();
    let seq = u64::try_from(fields.next()?.as_int()?).ok()?;
    let epoch = fields.next()?.as_str()?.to_owned();
    let present = fields.next()?.into_array();
    let (names, connections) = crate::chat::roster(present.iter().filter_map(|n| n.as_str()));
    let mut replay: Vec<Message> = fields
        .next()?
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter().skip(1);
            entry_message(&parts.next()?.into_array())
        })
        .collect();
    replay.reverse();
    let last = StreamId::parse(fields.next()?.as_str()?)?;
    let announced = fields.next()?.as_int()? == 1;
    let skipped = fields.next()?.as_int()?;
    // Complete when, in the same epoch, every entry after `since` came back
    // (a `since` past the log's end claims what the log does not have).
    let recovered = resume.is_some_and(|r| {
        let same_epoch = r.epoch == epoch || r.epoch.is_empty() && r.since == 0;
        let since = if same_epoch { r.since } else { 0 };
        let given = seq.saturating_sub(1);
        same_epoch && since <= given && replay.len() as u64 == given - since
    });
    if skipped > 0 {
        // More than the member takes at once: its newest part, said so.
        let from = replay.first().map_or(seq, |m| m.seq);
        let note = Message {
            kind: crate::proto::chat::message::Kind::ERROR.into(),
            text: format!(
                "replay from {from}: the {skipped} entries before it are more than \
                 this connection takes at once"
            ),
            ..Default::default()
        };
        replay.insert(0, note);
    }
    let own = (!name.is_empty()).then(|| Message {
        sender: name.to_owned(),
        kind: crate::proto::chat::message::Kind::JOIN.into(),
        members: names,
        connections,
        recovered,
        ..Default::default()
    });
    Some(Joined {
        seq,
        epoch,
        own,
        replay,
        last,
        announced,
    })
}
