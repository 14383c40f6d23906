//! `redis-reader`: one blocking `XREAD` over the logs of the rooms this
//! instance has members in, each from the last entry it delivered, plus the
//! instance's wake-up stream (the writer adds to it when there is a new room
//! to read, which ends the wait at once).

use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use super::resp::{Connection, Value};
use super::{back_off, entry_message, Command, RedisState, StreamId, IO_TIMEOUT, RETRY_FIRST};
use crate::chat::lock_room;

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
        let mut connection =
            match Connection::open(&shared.config.address, IO_TIMEOUT, shared.config.max_reply) {
                Ok(connection) => connection,
                Err(_) => {
                    was_down = true;
                    back_off(&mut retry);
                    continue;
                }
            };
        if was_down {
            info!("redis: reader back, continuing where each room stopped");
        }
        retry = RETRY_FIRST;
        if let Err(e) = read_rounds(shared, &mut connection, &mut wake, &mut count) {
            if e.kind() == std::io::ErrorKind::InvalidData && count > 1 {
                count /= 2;
                warn!("redis: reader: {e}; reading {count} entries a room at a time");
                continue;
            }
            warn!("redis: reader lost its connection: {e}");
            // Down until the writer gets through again.
            shared.set_up(false);
            was_down = true;
        }
    }
}

/// Reads and delivers until the connection fails.
fn read_rounds(
    shared: &RedisState,
    connection: &mut Connection,
    wake: &mut StreamId,
    count: &mut usize,
) -> std::io::Result<()> {
    let block = BLOCK.as_millis().to_string();
    loop {
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
