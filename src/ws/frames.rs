//! What a connection sends, framed once so that any thread can send it
//! whole through the peer's queue: close frames, replies, and what the
//! message loop does with a message.

use std::sync::Arc;

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// The seed's `/ws` endpoint answers every message with it in front.
pub const SEED_REPLY_PREFIX: &str = "Recebido: ";

/// The seed's `/ws` reply to a text message: `Recebido: <msg>`.
pub fn seed_reply(text: &str) -> String {
    let mut reply = String::with_capacity(SEED_REPLY_PREFIX.len() + text.len());
    reply.push_str(SEED_REPLY_PREFIX);
    reply.push_str(text);
    reply
}

/// Longest close reason: a control frame's payload is at most 125 bytes,
/// two of which are the code (RFC 6455, 5.5).
const MAX_CLOSE_REASON: usize = 123;

/// `reason`, cut to fit a close frame, at a character boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A close frame's payload: `code` and `reason`, cut to fit.
pub(super) fn close_payload(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: close_reason(reason).into(),
    }
}

/// Frames a close frame for sending from any thread.
pub(super) fn close_frame(code: CloseCode, reason: &str) -> Arc<[u8]> {
    encode(Frame::close(Some(close_payload(code, reason))))
}

/// The payload's length in a frame this server made (unmasked): what the
/// metrics count as a message's bytes, on either protocol without its
/// framing.
pub(super) fn payload_len(frame: &[u8]) -> usize {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.len().saturating_sub(header)
}

/// A frame's bytes, to be sent whole through a peer's queue.
pub(super) fn encode(frame: Frame) -> Arc<[u8]> {
    let mut bytes = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail.
    let _ = frame.format(&mut bytes);
    bytes.into()
}

/// What a connection does with one incoming data message.
pub(super) enum Action {
    /// Answer with the message, of the same type, after a prefix.
    Reply(&'static str, Message),
    Nothing,
    /// End the connection with this close code and reason.
    Close(CloseCode, String),
}

/// Frames a reply (server frames are not masked): `prefix` and `payload` as
/// one message of `opcode`, into `out`. Built here rather than by
/// tungstenite so a reply costs no allocation: the frame goes whole through
/// the peer's queue, as fan-out frames do.
pub(super) fn reply_frame(out: &mut Vec<u8>, opcode: Data, prefix: &str, payload: &[u8]) {
    out.clear();
    let len = prefix.len() + payload.len();
    let header = FrameHeader {
        opcode: OpCode::Data(opcode),
        ..FrameHeader::default()
    };
    // Formatting into a Vec cannot fail.
    let _ = header.format(len as u64, out);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_reply_is_recebido_and_the_message() {
        assert_eq!(seed_reply("Olá, WebSocket!"), "Recebido: Olá, WebSocket!");
        assert_eq!(seed_reply(""), "Recebido: ");
    }

    #[test]
    fn a_frames_payload_is_its_length_less_its_header() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let frame = encode(Frame::message(
                vec![b'x'; len],
                OpCode::Data(Data::Text),
                true,
            ));
            assert_eq!(payload_len(&frame), len);
        }
    }

    #[test]
    fn close_reasons_fit_a_control_frame_at_a_character_boundary() {
        assert_eq!(close_reason("short"), "short");
        let long = "ã".repeat(100); // 200 bytes
        let cut = close_reason(&long);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'ã'));
        let frame = close_frame(CloseCode::Invalid, &"x".repeat(500));
        assert_eq!(
            frame.len(),
            2 + 125,
            "header and the largest control payload"
        );
    }
}
