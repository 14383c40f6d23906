//! What a room or member name may be. Names are shown to every member of a
//! room and written to logs and terminals, so they are checked once, here,
//! for both protocols: no control characters (they could forge a log line or
//! drive a terminal), no bidi controls (they could make one name read as
//! another), and nothing that shows as blank.

/// The room of a message that names none.
pub const DEFAULT_ROOM: &str = "geral";
/// Longest room or member name, in bytes.
pub const MAX_NAME: usize = 64;

/// A room name as given, or the default room; `Err` names what is wrong.
pub fn room_name(room: &str) -> Result<&str, String> {
    match checked("room name", room)? {
        "" => Ok(DEFAULT_ROOM),
        room => Ok(room),
    }
}

/// A member name, checked like a room name (empty is allowed: an unseen
/// listener).
pub fn member_name(name: &str) -> Result<&str, String> {
    checked("name", name)
}

/// `name` without surrounding white space, if it is a name one can see.
fn checked<'a>(what: &str, name: &'a str) -> Result<&'a str, String> {
    let name = name.trim();
    if name.len() > MAX_NAME {
        return Err(format!("{what} longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = name.chars().find(|&c| c.is_control() || is_bidi_control(c)) {
        return Err(format!(
            "{what} contains the control character U+{:04X}",
            u32::from(c)
        ));
    }
    if !name.is_empty() && name.chars().all(is_invisible) {
        return Err(format!("{what} has nothing visible in it"));
    }
    Ok(name)
}

/// Characters that reorder the text around them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that take no visible space of their own.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2064}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFFD}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(room_name(""), Ok("geral"));
        assert_eq!(room_name(" sala "), Ok("sala"));
        assert_eq!(room_name("sala 1"), Ok("sala 1"));
        assert_eq!(member_name("João"), Ok("João"));
        assert_eq!(member_name("日本 🎉"), Ok("日本 🎉"));
        assert!(room_name(&"x".repeat(65)).is_err());
        assert_eq!(member_name(""), Ok(""));
        assert_eq!(member_name("   "), Ok(""), "blank is an unseen listener");
        assert!(member_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn control_bidi_and_invisible_names_are_refused() {
        for bad in [
            "a\u{1b}[2Jb",
            "a\0b",
            "x\n[WARN] admin",
            "a\u{7f}",
            "a\u{85}b",
            "\u{202E}nimda",
            "a\u{2066}b",
            "\u{200B}",
            "\u{200B}\u{2060}\u{FEFF}",
            "\u{FFFD}",
        ] {
            assert!(member_name(bad).is_err(), "{bad:?} accepted as a name");
            assert!(room_name(bad).is_err(), "{bad:?} accepted as a room");
        }
        let why = member_name("a\u{1b}b").unwrap_err();
        assert!(why.contains("U+001B"), "{why}");
    }
}
