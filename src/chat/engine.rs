//! Where rooms' logs are kept and who numbers their messages: the one
//! interface between the hub and what holds the log.
//!
//! [`Memory`] keeps each room's log in the room, in this process, and
//! delivers as it numbers, under the room's lock. A shared engine (papo's is
//! Redis: `crate::redis`) keeps the logs where several instances append and
//! read; it numbers a message when the log takes it, and delivers it to this
//! instance's members once its reader reads it back, in log order. Either
//! way the hub's rooms hold the local members, and [`Room`] fans out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::room::{Arrival, MemberEntry, OwnCopy, Room};
use super::{Refusal, Resume};
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message;

/// Told how an append ended: the message's number, or why it was not taken.
pub type Done = Box<dyn FnOnce(Result<u64, Refusal>) + Send>;

/// What holds rooms' logs (see the module's documentation).
pub trait Engine: Send + Sync {
    /// Whether logs live in the rooms of this process: a room then outlives
    /// its members, until its log expires.
    fn local_log(&self) -> bool;

    /// Whether the engine takes messages now.
    fn is_up(&self) -> bool {
        true
    }

    /// Appends `message` to `room`'s log, from member `from` (`None`: said
    /// by a service that is no member). Returns its number, or 0 when it is
    /// numbered later (`done` is told) or was not published (`from` was
    /// dropped meanwhile, or no one is there to hear it).
    fn append(
        &self,
        room: &Arc<Mutex<Room>>,
        from: Option<u64>,
        message: Message,
        done: Option<Done>,
    ) -> Result<u64, Refusal>;

    /// Adds `member` to the locked `room` and announces it: it is handed
    /// what it missed since `resume`, its own JOIN (with the member list and
    /// whether the replay was complete), then the live messages.
    fn join(
        &self,
        room_arc: &Arc<Mutex<Room>>,
        room: &mut Room,
        member: MemberEntry,
        resume: Option<Resume>,
    );

    /// Takes member `id` out of the locked `room` and announces its LEAVE.
    fn leave(&self, room: &mut Room, id: u64, name: &str);
}

/// Rooms' logs in this process (see the module's documentation).
pub struct Memory {
    /// How long a room without members keeps its log after its last message.
    pub history_ttl: Duration,
}

impl Engine for Memory {
    fn local_log(&self) -> bool {
        true
    }

    fn append(
        &self,
        room: &Arc<Mutex<Room>>,
        from: Option<u64>,
        message: Message,
        done: Option<Done>,
    ) -> Result<u64, Refusal> {
        let mut room = super::room::lock_room(room);
        // A closed room is no longer the hub's: a service's message to it
        // is not taken (the hub looks again before it comes here, so only a
        // sweep in between gets here); a member dropped for being slow no
        // longer speaks.
        let said = if room.closed && from.is_none() {
            Err(Refusal::Unavailable)
        } else if room.closed || from.is_some_and(|id| !room.has_member(id)) {
            Ok(0)
        } else {
            room.expire_if_idle(self.history_ttl);
            Ok(room.publish(message))
        };
        drop(room);
        if let Some(done) = done {
            done(said.clone());
        }
        said
    }

    fn join(
        &self,
        _room_arc: &Arc<Mutex<Room>>,
        room: &mut Room,
        mut member: MemberEntry,
        resume: Option<Resume>,
    ) {
        room.expire_if_idle(self.history_ttl);
        let recovered = resume.as_ref().map(|r| room.replay(r, &*member.subscriber));
        member.arrival = Arrival::Here;
        let (id, name) = (member.id, member.name.clone());
        let present = room.still_present(&name);
        room.members.push(member);
        if !name.is_empty() {
            let mut own = Room::event(Kind::JOIN, &name);
            (own.members, own.connections) = room.roster();
            own.recovered = recovered.unwrap_or(false);
            match present {
                // Another connection of a member here: only it is told.
                true => room.tell_only(id, own),
                false => {
                    room.announce_join(
                        Room::event(Kind::JOIN, &name),
                        OwnCopy {
                            member: id,
                            message: own,
                        },
                    );
                }
            }
        }
    }

    fn leave(&self, room: &mut Room, id: u64, name: &str) {
        if room.remove_member(id) && !name.is_empty() && !room.still_present(name) {
            room.publish(Room::event(Kind::LEAVE, name));
        }
    }
}
