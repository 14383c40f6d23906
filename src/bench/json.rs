//! Just enough JSON for the fan-out bench to read chat messages: a field's
//! value by key, whatever the spacing and order of the printer. A full parse
//! into a message per delivery would make the client, not the server, the
//! bottleneck of a thousand-member fan-out; this walks the text once and
//! copies nothing.

/// A cursor over JSON text.
struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.text.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// Skips a string whose opening quote is at the cursor.
    fn skip_string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            match self.text.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }

    /// Skips one value and returns where it began.
    fn skip_value(&mut self) -> Option<usize> {
        self.skip_space();
        let start = self.at;
        match self.text.get(self.at)? {
            b'"' => self.skip_string()?,
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.text.get(self.at)? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.at += 1;
                }
            }
        }
        (self.at > start).then_some(start)
    }
}

/// The raw JSON text of the value of `key` in the object `json`.
pub fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let mut scan = Scan {
        text: json.as_bytes(),
        at: 0,
    };
    scan.eat(b'{')?;
    if scan.eat(b'}').is_some() {
        return None;
    }
    loop {
        let name_start = scan.skip_value()?;
        let name = json.get(name_start..scan.at)?;
        scan.eat(b':')?;
        let start = scan.skip_value()?;
        if name.len() == key.len() + 2 && name.get(1..name.len() - 1) == Some(key) {
            return json.get(start..scan.at);
        }
        scan.eat(b',')?;
    }
}

/// The content of a JSON string value without escapes (`None` for any
/// other value: the bench only sends plain strings).
pub fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// The number of items of a JSON array value.
pub fn array_len(raw: &str) -> Option<usize> {
    let mut scan = Scan {
        text: raw.as_bytes(),
        at: 0,
    };
    scan.eat(b'[')?;
    if scan.eat(b']').is_some() {
        return Some(0);
    }
    let mut items = 0;
    loop {
        scan.skip_value()?;
        items += 1;
        if scan.eat(b',').is_none() {
            return scan.eat(b']').map(|()| items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use papo::proto::chat::message::Kind;
    use papo::proto::chat::Message;

    #[test]
    fn reads_what_the_server_prints() {
        let message = Message {
            sender: "a, \"b\" [c]".into(),
            text: "123".into(),
            seq: 4,
            members: vec!["x".into(), "y]".into(), "z".into()],
            kind: Kind::JOIN.into(),
            ..Default::default()
        };
        let json = protobuf_json_mapping::print_to_string(&message).unwrap();
        assert_eq!(field(&json, "text").and_then(plain_string), Some("123"));
        assert_eq!(field(&json, "members").and_then(array_len), Some(3));
        assert_eq!(field(&json, "kind"), Some("\"JOIN\""));
        assert_eq!(field(&json, "room"), None);
    }

    #[test]
    fn any_spacing_and_order() {
        let compact = r#"{"members":[],"text":"9","seq":"1"}"#;
        assert_eq!(field(compact, "text").and_then(plain_string), Some("9"));
        assert_eq!(field(compact, "members").and_then(array_len), Some(0));
        let spaced = "{ \"seq\" : 1 ,\n \"text\" :\t\"9\" }";
        assert_eq!(field(spaced, "text").and_then(plain_string), Some("9"));
        assert_eq!(field(spaced, "seq"), Some("1"));
        // The key must match whole, and only at the top level.
        assert_eq!(field(r#"{"textual":"no","x":{"text":"no"}}"#, "text"), None);
        assert_eq!(
            field(r#"{"text":"a\"b"}"#, "text").and_then(plain_string),
            None
        );
    }

    #[test]
    fn broken_json_is_none_not_a_panic() {
        for bad in [
            "",
            "{",
            "{\"text\"",
            "{\"text\":",
            "[1,",
            "{\"a\":[}",
            "\"x",
        ] {
            assert_eq!(field(bad, "text"), None, "{bad}");
            assert_eq!(array_len(bad), None, "{bad}");
        }
    }
}
