//! What a `/chat` member may send: a JSON object with a `"text"` string,
//! read strictly as RFC 8259 JSON. A client that writes the proto's
//! `Message` may also send `"sender"` and `"room"` strings: the room must be
//! the connection's own, and the sender is not taken (the connection's name
//! speaks). Nothing the server sets (`seq`, `members`…) nor any unknown field
//! is taken, or even built: it is refused where it starts.

/// Parses the message of a member of `room`; `Err` is a short reason for
/// close `1007`.
pub fn text_of(json: &str, room: &str) -> Result<String, String> {
    let mut scan = Scan {
        bytes: json.as_bytes(),
        at: 0,
    };
    scan.require(b'{')?;
    let (mut text, mut sender, mut in_room) = (None, None, None);
    if !scan.eat(b'}') {
        loop {
            scan.require(b'"')?;
            let key = scan.string()?;
            let field = match key.as_str() {
                "text" => &mut text,
                "sender" => &mut sender,
                "room" => &mut in_room,
                _ => {
                    return Err(format!(
                        "only \"text\" (and \"sender\", \"room\") is taken, not {key:?}"
                    ))
                }
            };
            scan.require(b':')?;
            scan.require(b'"')?;
            if field.replace(scan.string()?).is_some() {
                return Err(format!("{key:?} given twice"));
            }
            if scan.eat(b'}') {
                break;
            }
            scan.require(b',')?;
        }
    }
    if let Some(other) = in_room.filter(|r| !r.is_empty() && r != room) {
        return Err(format!(
            "this connection speaks in room {room:?}, not {other:?}"
        ));
    }
    scan.skip_space();
    if scan.at != scan.bytes.len() {
        return Err("text after the JSON object".into());
    }
    Ok(text.unwrap_or_default())
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn skip_space(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Skips white space, then takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let next = self.bytes.get(self.at) == Some(&byte);
        self.at += usize::from(next);
        next
    }

    fn require(&mut self, byte: u8) -> Result<(), String> {
        match self.eat(byte) {
            true => Ok(()),
            false => Err(format!(
                "expected '{}' at byte {}: a JSON object like {{\"text\": \"oi\"}}",
                char::from(byte),
                self.at
            )),
        }
    }

    /// The rest of a string whose opening quote was just taken.
    fn string(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let bad = |why: &str| Err(format!("invalid JSON string: {why}"));
        loop {
            // Copy the run up to the next quote, escape or control byte.
            let run = self.bytes[self.at..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(self.bytes.len() - self.at);
            // The input is a `str`, and the run ends at an ASCII byte: the
            // run is whole UTF-8.
            out.push_str(&String::from_utf8_lossy(
                &self.bytes[self.at..self.at + run],
            ));
            self.at += run;
            let Some(&byte) = self.bytes.get(self.at) else {
                return bad("not closed");
            };
            self.at += 1;
            match byte {
                b'"' => return Ok(out),
                b'\\' => {}
                _ => return bad("a raw control character"),
            }
            let Some(&escape) = self.bytes.get(self.at) else {
                return bad("not closed");
            };
            self.at += 1;
            out.push(match escape {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => match self.hex4()? {
                    high @ 0xD800..=0xDBFF => {
                        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                            return bad("a lone surrogate");
                        }
                        self.at += 2;
                        match self.hex4()? {
                            low @ 0xDC00..=0xDFFF => {
                                let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER)
                            }
                            _ => return bad("a lone surrogate"),
                        }
                    }
                    0xDC00..=0xDFFF => return bad("a lone surrogate"),
                    c => char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER),
                },
                _ => return bad("an unknown escape"),
            });
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| "invalid JSON string: a \\u escape needs four hex digits".to_owned())?;
        self.at += 4;
        u32::from_str_radix(digits, 16).map_err(|e| e.to_string())
    }
}

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
}
