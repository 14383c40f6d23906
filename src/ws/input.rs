//! What a `/chat` member may send: a JSON object with a `"text"` string,
//! read strictly as RFC 8259 JSON. A client that writes the proto's
//! `Message` may also send `"sender"` and `"room"` strings: the room must be
//! the connection's own, and the sender is not taken (the connection's name
//! speaks). Nothing the server sets (`seq`, `members`…) nor any unknown field
//! is taken, or even built: it is refused where it starts.

use crate::json::{self, Unknown, Value};

/// Parses the message of a member of `room`; `Err` is a short reason for
/// close `1007`.
pub fn text_of(json: &str, room: &str) -> Result<String, String> {
    let mut fields = json::object(json.as_bytes(), &FIELDS, Unknown::Refuse)?;
    let mut string = |index: usize| match fields.take(index) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{:?} is not a string", FIELDS[index])),
    };
    let (text, _sender, in_room) = (string(0)?, string(1)?, string(2)?);
    if let Some(other) = in_room.filter(|r| !r.is_empty() && r != room) {
        return Err(format!(
            "this connection speaks in room {room:?}, not {other:?}"
        ));
    }
    Ok(text.unwrap_or_default())
}

/// What a member's message may hold: `"text"`, and the proto's `"sender"`
/// and `"room"`.
const FIELDS: [&str; 3] = ["text", "sender", "room"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_json_writers_write() {
        let text_of = |json| text_of(json, "sala");
        assert_eq!(text_of(r#"{"text": "oi"}"#).unwrap(), "oi");
        assert_eq!(text_of(" {\n\"text\":\"oi\" }\r\n").unwrap(), "oi");
        assert_eq!(text_of("{}").unwrap(), "");
        // The proto's Message as JSON: the room is the connection's, and the
        // sender is not who speaks.
        assert_eq!(
            text_of(r#"{"sender": "bench", "text": "oi", "room": "sala"}"#).unwrap(),
            "oi"
        );
        assert_eq!(text_of(r#"{"room": "", "text": "oi"}"#).unwrap(), "oi");
        // Python's json.dumps escapes everything beyond ASCII.
        assert_eq!(
            text_of(r#"{"text": "\ud83d\ude00 ol\u00e1"}"#).unwrap(),
            "😀 olá"
        );
        assert_eq!(
            text_of(r#"{"text": "a\"b\\c\/d\b\f\n\r\t"}"#).unwrap(),
            "a\"b\\c/d\u{8}\u{c}\n\r\t"
        );
        assert_eq!(
            text_of(r#"{"\u0074ext": "escaped key"}"#).unwrap(),
            "escaped key"
        );
        assert_eq!(text_of(r#"{"text": "日本語 🎉"}"#).unwrap(), "日本語 🎉");
    }

    #[test]
    fn refuses_what_is_not_json_or_not_a_members_message() {
        let text_of = |json| text_of(json, "sala");
        for bad in [
            "",
            "oi",
            "{",
            r#"{'text': 'oi'}"#,
            r#"{"text": "a" "b"}"#,
            r#"{"text": "oi",}"#,
            r#"{"text": "oi"} x"#,
            r#"{"text": "\ud83d"}"#,
            r#"{"text": "\ude00"}"#,
            r#"{"text": "\x"}"#,
            "{\"text\": \"raw\nnewline\"}",
            r#"{"text": 7}"#,
            r#"{"text": "a", "text": "b"}"#,
            r#"{"sender": 7, "text": "oi"}"#,
            r#"{"sender": "a", "sender": "b"}"#,
            r#"{"room": "outra", "text": "oi"}"#,
            r#"{"members": ["", "", ""]}"#,
            r#"{"seq": "1"}"#,
            r#"["text"]"#,
        ] {
            assert!(text_of(bad).is_err(), "{bad:?} accepted");
        }
        let why = text_of(r#"{"members": []}"#).unwrap_err();
        assert!(why.contains("members"), "{why}");
        let why = text_of(r#"{"room": "outra", "text": "oi"}"#).unwrap_err();
        assert!(why.contains("outra"), "{why}");
    }

    mod arbitrary {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_text_is_taken_or_refused_and_never_grows(json in any::<String>()) {
                if let Ok(text) = text_of(&json, "sala") {
                    prop_assert!(text.len() <= json.len());
                }
            }

            #[test]
            fn mutated_messages_are_taken_or_refused(
                flips in proptest::collection::vec((any::<usize>(), any::<char>()), 0..6),
            ) {
                let mut chars: Vec<char> = r#"{"text": "ol\u00e1 \ud83d\ude00", "room": "sala", "sender": "x"}"#
                    .chars()
                    .collect();
                for (at, c) in flips {
                    let at = at % chars.len();
                    chars[at] = c;
                }
                let json: String = chars.into_iter().collect();
                if let Ok(text) = text_of(&json, "sala") {
                    prop_assert!(text.len() <= json.len());
                }
            }
        }
    }
}
