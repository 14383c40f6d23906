//! A `/chat` connection as a member of a chat room: who it is (its token,
//! when tokens are required), the room's messages going out as JSON text
//! frames, and each JSON text message that comes in said in the room.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tungstenite::handshake::server::Request;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

use super::frames::{close_frame, payload_len, Action};
use super::http::{self, Endpoint};
use super::input;
use super::WsState;
use crate::auth::{self, Denied};
use crate::chat::{Delivery, Encoding, Member, Refusal, Subscriber};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message as ChatMessage;
use crate::queue::SendError;

/// A `/chat` member's way out: messages of its room, as JSON text frames.
pub(super) struct WsSubscriber {
    pub peer: Arc<Peer>,
    pub metrics: Arc<Metrics>,
}

/// A chat message as a WebSocket text frame of its canonical JSON.
fn json_frame(message: &ChatMessage) -> Vec<u8> {
    let json = protobuf_json_mapping::print_to_string(message).unwrap_or_else(|_| "{}".into());
    let mut bytes = Vec::with_capacity(json.len() + 10);
    // Formatting into a Vec cannot fail.
    let _ = Frame::message(json.into_bytes(), OpCode::Data(Data::Text), true).format(&mut bytes);
    bytes
}

impl Subscriber for WsSubscriber {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        // Encoded once per message, by whichever member comes first.
        let frame = delivery.encoded(Encoding::WsJson, json_frame);
        let len = payload_len(&frame);
        self.peer.send(frame)?;
        self.metrics.ws.sent(len);
        Ok(())
    }

    fn replay(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let frame = delivery.encoded(Encoding::WsJson, json_frame);
        let len = payload_len(&frame);
        self.peer.send_replayed(frame)?;
        self.metrics.ws.sent(len);
        Ok(())
    }

    fn replay_room(&self) -> usize {
        self.peer.room_in_bytes()
    }

    fn evicted(&self) {
        self.peer.close_with(close_frame(
            CloseCode::Policy,
            "too slow: outbound queue full",
        ));
    }

    /// An `ERROR`-kind message with the reason: the member stays, and may
    /// say it again.
    fn not_said(&self, why: &Refusal) {
        let error = ChatMessage {
            kind: Kind::ERROR.into(),
            text: why.to_string(),
            ..Default::default()
        };
        let frame = json_frame(&error);
        let len = payload_len(&frame);
        if self.peer.send(frame.into()).is_ok() {
            self.metrics.ws.sent(len);
        }
    }
}

/// What a member's message does: its text is said in the room; anything but
/// a JSON text message of the member's kind (see `input`) ends the
/// connection with a reason.
#[inline(never)] // Keeps the message loop's frame, live while idle, small.
pub(super) fn on_message(
    member: &Member,
    room: &str,
    may_speak: bool,
    subscriber: &WsSubscriber,
    metrics: &Metrics,
    message: Message,
) -> Action {
    let Message::Text(json) = message else {
        return Action::Close(
            CloseCode::Unsupported,
            "/chat takes JSON text messages".into(),
        );
    };
    match input::text_of(json.as_str(), room) {
        Ok(text) if text.is_empty() => Action::Nothing,
        Ok(_) if !may_speak => Action::Close(
            CloseCode::Policy,
            "read-only: this token may not speak (pub: false)".into(),
        ),
        Ok(text) => match member.say(&text) {
            Ok(_) => Action::Nothing,
            Err(refusal @ Refusal::TooLong { .. }) => {
                Action::Close(CloseCode::Size, refusal.to_string())
            }
            Err(refusal @ Refusal::RateLimited) => {
                metrics.ws_rate_limited.fetch_add(1, Ordering::Relaxed);
                Action::Close(CloseCode::Policy, refusal.to_string())
            }
            Err(refusal @ Refusal::TooManyRooms { .. }) => {
                Action::Close(CloseCode::Again, refusal.to_string())
            }
            Err(refusal @ (Refusal::Unavailable | Refusal::NotConfirmed { .. })) => {
                subscriber.not_said(&refusal);
                Action::Nothing
            }
        },
        Err(why) => Action::Close(CloseCode::Invalid, why),
    }
}

/// When tokens are required, a `/chat` member shows one (`Authorization:
/// Bearer`, or `?token=` for browsers, which cannot set headers) and takes
/// its name from it; `Err` is the status (401, 403) and why.
pub(super) fn identify(
    endpoint: &mut Endpoint,
    request: &Request,
    target: &str,
    shared: &WsState,
) -> Result<(), (u16, String)> {
    let (
        Endpoint::Chat {
            room,
            name,
            identity,
            ..
        },
        Some(verifier),
    ) = (endpoint, shared.auth.as_deref())
    else {
        return Ok(());
    };
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let token = match http::header(request, "Authorization").and_then(auth::bearer) {
        Some(token) => Some(token.to_owned()),
        None => http::query_param(query, "token")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    match verifier.admit(token.as_deref(), room, name) {
        Ok(who) => {
            name.clone_from(&who.sub);
            *identity = Some(who);
            Ok(())
        }
        Err(denied) => {
            shared.metrics.auth_failed(denied.reason());
            let status = match denied {
                Denied::Unauthenticated(_) => 401,
                Denied::Forbidden(_) => 403,
            };
            Err((status, format!("{denied}\n")))
        }
    }
}
