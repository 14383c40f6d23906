//! `redis-reader`: one blocking `XREAD` over the logs of the rooms this
//! instance has members in, each from the last entry it delivered, plus the
//! instance's wake-up stream (the writer adds to it when there is a new room
//! to read, which ends the wait at once).

use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use super::primary;
use super::resp::{Connection, Value};
use super::url::Address;
use super::{
    back_off, entry_message, Command, Durability, RedisState, StreamId, IO_TIMEOUT, RETRY_FIRST,
};
use crate::chat::lock_room;
use crate::throttle::Throttle;

/// How long one `XREAD` waits for entries (below the connection's read
/// timeout): the reader's heartbeat when nothing happens.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries read per room per round, at most. A round whose reply is past
/// `--redis-max-reply` is read again with half as many, down to one; the
/// count grows back by one a round that fits.
const COUNT: usize = 512;

pub(super) fn run(shared: &RedisState) {
    let mut retry = RETRY_FIRST;
    let mut wake = StreamId::default();
    let mut was_down = false;
    let mut count = COUNT;
    loop {
        let opened = primary::open(&shared.config.target, IO_TIMEOUT, shared.config.max_reply)
            .and_then(|(mut connection, at)| {
                if let Durability::Replica { timeout, .. } = shared.config.durability {
                    // A `WAIT` may take its whole timeout before it answers.
                    connection.set_read_timeout(IO_TIMEOUT + timeout)?;
                }
                Ok((connection, at))
            });
        let (mut connection, at) = match opened {
            Ok(opened) => opened,
            Err(_) => {
                was_down = true;
                back_off(&mut retry);
                continue;
            }
        };
        if was_down {
            info!("redis: reader back, continuing where each room stopped");
            was_down = false;
        }
        retry = RETRY_FIRST;
        let read = read_rounds(shared, &mut connection, &at, &mut wake, &mut count);
        if let Err(e) = read {
            if e.kind() == std::io::ErrorKind::InvalidData && count > 1 {
                count /= 2;
                warn!("redis: reader: {e}; reading {count} entries a room at a time");
                continue;
            }
            warn!("redis: reader lost its connection: {e}");
            // Down until the writer gets through again. An idle writer
            // would find its connection gone only at its next round of
            // presence, refusing everything meanwhile: it is given a
            // write now, which fails, or finds Redis back.
            shared.set_up(false);
            let _ = shared.send(Command::Wake);
            was_down = true;
        }
    }
}

/// Reads and delivers until the connection fails, or the writer has found
/// the primary elsewhere (`Ok`: read from there).
fn read_rounds(
    shared: &RedisState,
    connection: &mut Connection,
    at: &Address,
    wake: &mut StreamId,
    count: &mut usize,
) -> std::io::Result<()> {
    let block = BLOCK.as_millis().to_string();
    loop {
        if crate::lock(&shared.primary)
            .as_ref()
            .is_some_and(|p| p != at)
        {
            info!("redis: reader following the primary from {at}");
            return Ok(());
        }
        let rooms: Vec<(String, String, StreamId)> = crate::lock(&shared.follows)
            .iter()
            .map(|(name, f)| (name.clone(), f.key.clone(), f.cursor))
            .collect();
        let mut args = vec![
            "XREAD".to_owned(),
            "COUNT".into(),
            count.to_string(),
            "BLOCK".into(),
            block.clone(),
            "STREAMS".into(),
            shared.wake_key.clone(),
        ];
        args.extend(rooms.iter().map(|(_, key, _)| key.clone()));
        args.push(wake.to_string());
        args.extend(rooms.iter().map(|(_, _, cursor)| cursor.to_string()));
        let reply = connection.call(&args)?;
        *count = (*count + 1).min(COUNT);
        let reply = match reply {
            Value::Array(streams) => streams,
            _ => continue, // nothing new before the timeout
        };
        if !confirmed(shared, connection)? {
            continue; // read again from the same cursors
        }
        for stream in reply {
            let mut parts = stream.into_array().into_iter();
            let (Some(key), Some(entries)) = (parts.next(), parts.next()) else {
                continue;
            };
            let key = key.as_str().unwrap_or_default().to_owned();
            let entries = entries.into_array();
            if key == shared.wake_key {
                if let Some(last) = entries.last().and_then(entry_id) {
                    *wake = last;
                }
            } else if let Some((name, _, _)) = rooms.iter().find(|(_, k, _)| *k == key) {
                deliver(shared, name, entries);
            }
        }
    }
}

/// Reads held back for want of replicas.
static UNCONFIRMED: Throttle = Throttle::new();

/// With replica durability, whether the replicas have what was just read:
/// members are shown nothing a promotion could lose. A write of the
/// reader's own comes after those entries in the replication stream, so
/// the replicas that have it have them.
fn confirmed(shared: &RedisState, connection: &mut Connection) -> std::io::Result<bool> {
    let Durability::Replica { replicas, timeout } = shared.config.durability else {
        return Ok(true);
    };
    let presence = shared.config.presence_ttl.as_millis().max(1).to_string();
    let key = shared.read_key.as_str();
    connection.send(&["SET", key, "1", "PX", &presence])?;
    let ms = timeout.as_millis().max(1).to_string();
    connection.send(&["WAIT", &replicas.to_string(), &ms])?;
    connection.flush()?;
    connection.read()?;
    let got = connection.read()?.as_int().unwrap_or(0);
    if got < i64::from(replicas) {
        if let Some(times) = UNCONFIRMED.occurred() {
            warn!(
                "redis: reader: {got} of {replicas} replicas have the latest entries; \
                 holding them back ({times} times since the last warning)"
            );
        }
        return Ok(false);
    }
    Ok(true)
}

fn entry_id(entry: &Value) -> Option<StreamId> {
    match entry {
        Value::Array(parts) => StreamId::parse(parts.first()?.as_str()?),
        _ => None,
    }
}

/// Hands `entries` of room `name`'s log to the room here, in order, from
/// after the last one it was handed.
fn deliver(shared: &RedisState, name: &str, entries: Vec<Value>) {
    let Some((room, cursor)) = crate::lock(&shared.follows)
        .get(name)
        .map(|f| (Arc::clone(&f.room), f.cursor))
    else {
        return;
    };
    let mut last = cursor;
    let mut dropped = Vec::new();
    {
        let mut locked = lock_room(&room);
        for entry in entries {
            let Some(id) = entry_id(&entry).filter(|id| *id > last) else {
                continue;
            };
            last = id;
            let mut parts = entry.into_array().into_iter().skip(1);
            let Some(message) = parts.next().and_then(|f| entry_message(&f.into_array())) else {
                warn!("redis: room {name:?}: entry {id} is not papo's; skipped");
                continue;
            };
            dropped.extend(locked.deliver_numbered(message));
        }
    }
    if let Some(follow) = crate::lock(&shared.follows).get_mut(name) {
        if Arc::ptr_eq(&follow.room, &room) {
            follow.cursor = last;
        }
    }
    for (id, member) in dropped {
        let _ = shared.send(Command::Leave {
            room: name.to_owned(),
            id,
            name: member,
        });
    }
}
