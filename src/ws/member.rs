//! A `/chat` connection as a member of a chat room: the room's messages go
//! out as JSON text frames, and each JSON text message that comes in is
//! said in the room.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

use super::conn::{close_frame, Action};
use super::input;
use crate::chat::{Delivery, Encoding, Member, Refusal, SendError, Subscriber};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message as ChatMessage;

/// A `/chat` member's way out: messages of its room, as JSON text frames.
pub(super) struct WsMember {
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

impl Subscriber for WsMember {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        // Encoded once per message, by whichever member comes first.
        let frame = delivery.encoded(Encoding::WsJson, json_frame);
        let len = frame.len();
        self.peer.send(frame)?;
        self.metrics.ws.sent(len);
        Ok(())
    }

    fn replay(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let frame = delivery.encoded(Encoding::WsJson, json_frame);
        let len = frame.len();
        self.peer.send_replayed(frame)?;
        self.metrics.ws.sent(len);
        Ok(())
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
        let len = frame.len();
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
    may_speak: bool,
    subscriber: &WsMember,
    metrics: &Metrics,
    message: Message,
) -> Action {
    let Message::Text(json) = message else {
        return Action::Close(
            CloseCode::Unsupported,
            "/chat takes JSON text messages".into(),
        );
    };
    match input::text_of(json.as_str()) {
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
            Err(refusal @ Refusal::Unavailable) => {
                subscriber.not_said(&refusal);
                Action::Nothing
            }
        },
        Err(why) => Action::Close(CloseCode::Invalid, why),
    }
}
