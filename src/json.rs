//! Reading JSON that a peer wrote: a `/chat` member's message and a token's
//! header and claims. Strict RFC 8259, one object of named fields; only the
//! fields a caller asks for are kept, everything else is checked and skipped
//! without being stored, and nesting is bounded, so neither the stack nor the
//! heap grows with what a peer nests or pads.

/// Deepest nesting of arrays and objects read (the top object is depth 1):
/// far beyond any claim set, far below what the stack can hold.
pub const MAX_DEPTH: usize = 16;

/// How long `s` is as a JSON string's contents, escaped as papo's JSON
/// printer escapes it: two bytes for `"`, `\\` and the usual control
/// escapes, six (`\u00XX`) for any other control character, C1 included.
pub fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' => 2,
            c if c.is_control() => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// A field's value, as far as a caller looks into it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// An array of strings.
    Strings(Vec<String>),
    /// Anything else (an object, an array holding a non-string): valid JSON
    /// that no caller reads into.
    Other,
}

/// The fields asked for of a JSON object, in the order asked.
#[derive(Debug)]
pub struct Fields(Vec<Option<Value>>);

impl Fields {
    /// The value of the `index`th field asked for, if the object has it.
    pub fn get(&self, index: usize) -> Option<&Value> {
        self.0.get(index)?.as_ref()
    }

    /// Takes the value of the `index`th field asked for.
    pub fn take(&mut self, index: usize) -> Option<Value> {
        self.0.get_mut(index)?.take()
    }
}

/// What to do with a field that is not asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Skip it (a token may carry claims papo does not use).
    Skip,
    /// Refuse the object, naming the field (a member's message).
    Refuse,
}

/// Reads `json`, which must be one object, keeping the fields named in
/// `wanted`; a wanted field given twice is refused. `Err` says why, briefly.
pub fn object(json: &[u8], wanted: &[&str], unknown: Unknown) -> Result<Fields, String> {
    let mut scan = Scan { bytes: json, at: 0 };
    let mut fields = Fields(vec![None; wanted.len()]);
    scan.require(b'{')?;
    if !scan.eat(b'}') {
        loop {
            scan.require(b'"')?;
            let key = scan.string()?;
            scan.require(b':')?;
            match wanted.iter().position(|w| *w == key) {
                Some(index) => {
                    let value = scan.value(2)?;
                    if fields.0[index].replace(value).is_some() {
                        return Err(format!("{key:?} given twice"));
                    }
                }
                None if unknown == Unknown::Skip => scan.skip_value(2)?,
                None => return Err(format!("{key:?} is not a field taken here")),
            }
            if scan.eat(b'}') {
                break;
            }
            scan.require(b',')?;
        }
    }
    scan.skip_space();
    if scan.at != scan.bytes.len() {
        return Err("text after the JSON object".into());
    }
    Ok(fields)
}

/// A cursor over JSON text.
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

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.at).copied()
    }

    /// Skips white space, then takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
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

    /// A value at nesting `depth`, kept as far as [`Value`] goes.
    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                self.string().map(Value::String)
            }
            Some(b'[') => {
                let start = self.at;
                match self.strings(depth) {
                    Ok(list) => Ok(Value::Strings(list)),
                    Err(None) => {
                        self.at = start;
                        self.skip_value(depth).map(|()| Value::Other)
                    }
                    Err(Some(why)) => Err(why),
                }
            }
            Some(b'{') => self.skip_value(depth).map(|()| Value::Other),
            _ => self.scalar(),
        }
    }

    /// An array of strings; `Err(None)` when it holds something else.
    fn strings(&mut self, depth: usize) -> Result<Vec<String>, Option<String>> {
        if depth > MAX_DEPTH {
            return Err(Some(too_deep()));
        }
        self.at += 1;
        let mut list = Vec::new();
        if self.eat(b']') {
            return Ok(list);
        }
        loop {
            if !self.eat(b'"') {
                return Err(None);
            }
            list.push(self.string()?);
            if self.eat(b']') {
                return Ok(list);
            }
            self.require(b',')?;
        }
    }

    /// `null`, `true`, `false` or a number.
    fn scalar(&mut self) -> Result<Value, String> {
        let rest = &self.bytes[self.at..];
        for (word, value) in [
            (&b"null"[..], Value::Null),
            (b"true", Value::Bool(true)),
            (b"false", Value::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.at += word.len();
                return Ok(value);
            }
        }
        self.number().map(Value::Number)
    }

    /// A number as RFC 8259 writes one: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<f64, String> {
        let start = self.at;
        let digits = |scan: &mut Self| {
            let from = scan.at;
            while scan.bytes.get(scan.at).is_some_and(u8::is_ascii_digit) {
                scan.at += 1;
            }
            scan.at - from
        };
        self.at += usize::from(self.bytes.get(self.at) == Some(&b'-'));
        let int_start = self.at;
        let int = digits(self);
        let leading_zero = int > 1 && self.bytes.get(int_start) == Some(&b'0');
        if int == 0 || leading_zero {
            return Err(format!("expected a value at byte {start}"));
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(format!("a number without fraction digits at byte {start}"));
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            self.at += usize::from(matches!(self.bytes.get(self.at), Some(b'+' | b'-')));
            if digits(self) == 0 {
                return Err(format!("a number without exponent digits at byte {start}"));
            }
        }
        // The bytes are ASCII digits and signs, which the grammar above
        // bounds: what Rust parses as a float.
        std::str::from_utf8(&self.bytes[start..self.at])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("a bad number at byte {start}"))
    }

    /// Checks a value at nesting `depth` and steps over it, keeping
    /// nothing. Iterative: what it remembers of the nesting is one byte a
    /// level, and the levels are bounded.
    fn skip_value(&mut self, depth: usize) -> Result<(), String> {
        // The closing bracket of each open array or object.
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    self.skip_string()?;
                }
                Some(bracket @ (b'[' | b'{')) => {
                    if depth + open.len() > MAX_DEPTH {
                        return Err(too_deep());
                    }
                    self.at += 1;
                    let close = if bracket == b'[' { b']' } else { b'}' };
                    if !self.eat(close) {
                        open.push(close);
                        if close == b'}' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => {
                    self.scalar()?;
                }
            }
            // A value is done: close what it ended, or go on to the next.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                if self.eat(close) {
                    open.pop();
                    continue;
                }
                self.require(b',')?;
                if close == b'}' {
                    self.key()?;
                }
                break;
            }
        }
    }

    /// An object's key and its colon, skipped.
    fn key(&mut self) -> Result<(), String> {
        self.require(b'"')?;
        self.skip_string()?;
        self.require(b':')
    }

    /// Steps over the rest of a string, checking it as [`Scan::string`] does.
    fn skip_string(&mut self) -> Result<(), String> {
        self.read_string(None)
    }

    /// The rest of a string whose opening quote was just taken.
    fn string(&mut self) -> Result<String, String> {
        let mut out = Vec::new();
        self.read_string(Some(&mut out))?;
        String::from_utf8(out).map_err(|_| "invalid JSON string: not UTF-8".into())
    }

    /// Reads a string's rest, unescaped into `out` if given.
    fn read_string(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<(), String> {
        let bad = |why: &str| Err(format!("invalid JSON string: {why}"));
        loop {
            // The run up to the next quote, escape or control byte.
            let rest = &self.bytes[self.at..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(rest.len());
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&rest[..run]);
            }
            self.at += run;
            let Some(&byte) = self.bytes.get(self.at) else {
                return bad("not closed");
            };
            self.at += 1;
            match byte {
                b'"' => return Ok(()),
                b'\\' => {}
                _ => return bad("a raw control character"),
            }
            let Some(&escape) = self.bytes.get(self.at) else {
                return bad("not closed");
            };
            self.at += 1;
            let c = match escape {
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
            };
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
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

fn too_deep() -> String {
    format!("nested deeper than {MAX_DEPTH} levels")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<Fields, String> {
        object(json.as_bytes(), &["a", "b"], Unknown::Skip)
    }

    #[test]
    fn keeps_what_is_asked_and_skips_the_rest() {
        let mut f =
            read(r#"{"x": {"y": [1, {"z": null}], "w": "v"}, "a": ["p", "q"], "b": -1.5e3}"#)
                .unwrap();
        assert_eq!(
            f.take(0),
            Some(Value::Strings(vec!["p".into(), "q".into()]))
        );
        assert_eq!(f.get(1), Some(&Value::Number(-1500.0)));
        let f = read(r#"{"a": [1, "x"], "b": {"c": []}}"#).unwrap();
        assert_eq!(
            (f.get(0), f.get(1)),
            (Some(&Value::Other), Some(&Value::Other))
        );
        let f = read(r#"{"a": true, "b": null}"#).unwrap();
        assert_eq!(
            (f.get(0), f.get(1)),
            (Some(&Value::Bool(true)), Some(&Value::Null))
        );
        assert!(read("{}").unwrap().get(0).is_none());
        assert_eq!(
            read(r#"{"a": 1e400}"#).unwrap().get(0),
            Some(&Value::Number(f64::INFINITY))
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a"}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
            r#"{"a": 1e}"#,
            r#"{"a": tru}"#,
            r#"{"a": [1,]}"#,
            r#"{"x": {"y" 1}}"#,
            r#"{"x": [1 2]}"#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1} x"#,
            r#"{"x": "\q"}"#,
            r#"{"x": [}"#,
            r#"{"x": {]}"#,
            r#"{"a": ["p", 1 ]"#,
        ] {
            assert!(read(bad).is_err(), "{bad:?} accepted");
        }
        let unknown = object(br#"{"c": 1}"#, &["a"], Unknown::Refuse).unwrap_err();
        assert!(unknown.contains("\"c\""), "{unknown}");
    }

    #[test]
    fn escaped_length_is_what_the_printer_writes() {
        use crate::proto::chat::Message;
        for text in [
            "oi",
            "\u{1}\u{1f}\u{7f}\u{85}",
            "a\"b\\c\nd\re\tf",
            "olá 😀 日本",
        ] {
            let m = Message {
                text: text.into(),
                ..Default::default()
            };
            let json = protobuf_json_mapping::print_to_string(&m).unwrap();
            // {"text": "…"}
            assert_eq!(json.len(), escaped_len(text) + 12, "{json}");
        }
    }

    #[test]
    fn nesting_is_bounded_whatever_the_depth() {
        let nested = |n: usize| format!(r#"{{"x": {}0{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(read(&nested(MAX_DEPTH - 1)).is_ok());
        for depth in [MAX_DEPTH, 100, 100_000] {
            assert!(read(&nested(depth)).unwrap_err().contains("nested"));
        }
        let wanted = format!(r#"{{"a": {}"#, "[".repeat(100_000));
        assert!(read(&wanted).unwrap_err().contains("nested"));
    }

    mod arbitrary {
        use super::super::*;
        use proptest::prelude::*;

        /// What the kept fields hold, in bytes: never more than the input.
        fn kept(fields: &Fields, wanted: usize) -> usize {
            (0..wanted)
                .filter_map(|i| fields.get(i))
                .map(|v| match v {
                    Value::String(s) => s.len(),
                    Value::Strings(list) => list.iter().map(String::len).sum(),
                    _ => 0,
                })
                .sum()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                if let Ok(fields) = object(&bytes, &["a", "b"], Unknown::Skip) {
                    prop_assert!(kept(&fields, 2) <= bytes.len());
                }
                let _ = object(&bytes, &["text"], Unknown::Refuse);
            }

            #[test]
            fn mutated_objects_are_read_or_refused(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                nest in 0usize..40,
            ) {
                let mut json = format!(
                    r#"{{"a": ["x", "\u00e9\n"], "z": {}{{"k": [1, -2.5e3, true, null]}}{}, "b": "oi"}}"#,
                    "[".repeat(nest),
                    "]".repeat(nest)
                )
                .into_bytes();
                for (at, byte) in flips {
                    let at = at % json.len();
                    json[at] = byte;
                }
                if let Ok(fields) = object(&json, &["a", "b"], Unknown::Skip) {
                    prop_assert!(kept(&fields, 2) <= json.len());
                }
            }

            #[test]
            fn any_nesting_is_bounded(depth in 0usize..20_000, brackets in "[\\[{]{1,4}") {
                let open: String = brackets.chars().cycle().take(depth).collect();
                let json = format!(r#"{{"a": {open}"#);
                prop_assert!(object(json.as_bytes(), &["a"], Unknown::Skip).is_err());
            }
        }
    }
}
