//! What a shared engine (Redis) does to a room: its members are here, its
//! log is elsewhere, and entries come back numbered, in log order. A joiner
//! waits for its JOIN to be numbered, then is handed its replay and what
//! was held for it (see [`Arrival`]).

use std::collections::VecDeque;
use std::time::Instant;

use super::room::{arrive, now_ms, Arrival, MemberEntry, Room};
use super::{Delivery, Refusal, SendError};
use crate::proto::chat::Message;

impl Room {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the room is no longer the hub's (it emptied and was let go).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn has_member(&self, id: u64) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Takes member `id` out; false if it was not here.
    pub fn remove_member(&mut self, id: u64) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.id != id);
        self.members.len() < before
    }

    /// Members as "id:name", for the engine's presence.
    pub fn member_tags(&self) -> Vec<(u64, String)> {
        self.members
            .iter()
            // A member still waiting for its JOIN has no presence yet: its
            // join makes it.
            .filter(|m| !matches!(m.arrival, Arrival::Waiting { .. }))
            .map(|m| (m.id, m.name.clone()))
            .collect()
    }

    /// Adds a member whose JOIN the engine is about to number: what comes
    /// meanwhile is held for it.
    pub fn add_waiting(&mut self, mut member: MemberEntry) {
        member.arrival = Arrival::Waiting {
            held: VecDeque::new(),
            let_go: None,
        };
        self.members.push(member);
    }

    /// Member `id`'s JOIN is `seq` of `epoch`: it is handed `replay` (what
    /// it missed, oldest first), then what was held for it from `seq` on,
    /// its own JOIN made of `own`. A JOIN not `announced` (another
    /// connection of a member here) is in no log: `own` is handed to it
    /// right after the replay, and `seq` is where its live messages start.
    /// Returns the members dropped meanwhile.
    pub fn arrived(
        &mut self,
        id: u64,
        epoch: String,
        seq: u64,
        own: Option<Message>,
        replay: Vec<Message>,
        announced: bool,
    ) -> Vec<(u64, String)> {
        self.saw(&epoch, if announced { seq } else { seq - seq.min(1) });
        let Some(at) = self.members.iter().position(|m| m.id == id) else {
            return Vec::new(); // it left meanwhile
        };
        let (own, own_now) = match announced {
            true => (own, None),
            false => (None, own),
        };
        let room = self.name.clone();
        let member = &mut self.members[at];
        let (held, let_go) = match std::mem::replace(
            &mut member.arrival,
            Arrival::Expecting {
                epoch: epoch.clone(),
                seq,
                own,
            },
        ) {
            Arrival::Waiting { held, let_go } => (held, let_go),
            _ => (VecDeque::new(), None),
        };
        // Let go of while its JOIN was on the way, yet its to see: missed.
        if let_go.is_some_and(|d| d.message.epoch != epoch || d.message.seq >= seq) {
            return self.drop_member(at, SendError::Full);
        }
        let own_now = own_now.map(|own| Message {
            room,
            seq: seq.saturating_sub(1),
            timestamp_ms: now_ms(),
            epoch: epoch.clone(),
            ..own
        });
        let mut refused = replay
            .into_iter()
            .chain(own_now)
            .map(|m| member.subscriber.replay(&Delivery::new(m)))
            .find_map(Result::err);
        for delivery in held {
            if refused.is_some() {
                break;
            }
            refused = arrive(member, &delivery).err();
        }
        match refused {
            None => Vec::new(),
            Some(error) => self.drop_member(at, error),
        }
    }

    /// Member `id`'s JOIN could not be numbered: it gets what comes from now
    /// on, and is told why.
    pub fn join_failed(&mut self, id: u64, why: &Refusal) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.arrival = Arrival::Here;
            m.subscriber.not_said(why);
        }
    }

    /// Tells member `id` that what it said was not taken.
    pub fn tell_not_said(&self, id: u64, why: &Refusal) {
        if let Some(m) = self.members.iter().find(|m| m.id == id) {
            m.subscriber.not_said(why);
        }
    }

    /// Notes that the shared log gave `seq` in `epoch`: the room keeps the
    /// highest number this instance knows was given, which the engine holds
    /// the log to (a log that comes back with less has lost its tail).
    pub fn saw(&mut self, epoch: &str, seq: u64) {
        if self.epoch == epoch {
            self.seq = self.seq.max(seq);
        } else {
            self.epoch = epoch.to_owned();
            self.seq = seq;
        }
    }

    /// The highest number this instance knows the shared log gave, and its
    /// epoch (`None` before any).
    pub fn high_water(&self) -> Option<(&str, u64)> {
        (self.seq > 0).then_some((self.epoch.as_str(), self.seq))
    }

    /// An entry of the shared log, numbered: to every member here.
    /// Returns the members dropped for refusing it.
    pub fn deliver_numbered(&mut self, mut message: Message) -> Vec<(u64, String)> {
        self.saw(&message.epoch, message.seq);
        message.room = self.name.clone();
        self.last_active = Instant::now();
        self.fan_out(&Delivery::new(message), None)
    }

    /// Takes the member at `at` out of the room for refusing a delivery.
    fn drop_member(&mut self, at: usize, error: SendError) -> Vec<(u64, String)> {
        let m = self.members.remove(at);
        if error == SendError::Full {
            self.dropped.push(m.name.clone());
            m.subscriber.evicted();
        }
        vec![(m.id, m.name)]
    }
}
