//! What a gRPC connection must send before papo hands it to C-core: the
//! HTTP/2 client preface and a SETTINGS frame (RFC 9113, 3.4). Read with
//! `peek`, so C-core still reads every byte itself.

/// The fixed 24 bytes every HTTP/2 connection opens with.
const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length, and the SETTINGS frame type.
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 4;
/// The largest frame a peer may send before settings are agreed.
const MAX_INITIAL_FRAME: usize = 16_384;

/// The most bytes [`state`] ever needs to see.
pub const MOST: usize = CLIENT_PREFACE.len() + FRAME_HEADER + MAX_INITIAL_FRAME;

/// How far a connection's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// Right so far; more must come.
    Incomplete,
    /// The preface and a whole SETTINGS frame.
    Complete,
    /// Not HTTP/2 as a gRPC client speaks it.
    Invalid,
}

/// Where `first` (a connection's first bytes, as many as have come) stands.
pub fn state(first: &[u8]) -> Preface {
    let preface = CLIENT_PREFACE.len();
    if first.len() < preface {
        return match CLIENT_PREFACE.starts_with(first) {
            true => Preface::Incomplete,
            false => Preface::Invalid,
        };
    }
    if &first[..preface] != CLIENT_PREFACE {
        return Preface::Invalid;
    }
    let Some(header) = first.get(preface..preface + FRAME_HEADER) else {
        return Preface::Incomplete;
    };
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let (kind, flags) = (header[3], header[4]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let ack = flags & 1 != 0;
    if kind != SETTINGS || ack || stream != 0 || length % 6 != 0 || length > MAX_INITIAL_FRAME {
        return Preface::Invalid;
    }
    match first.len() >= preface + FRAME_HEADER + length {
        true => Preface::Complete,
        false => Preface::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(entries: usize) -> Vec<u8> {
        let mut out = CLIENT_PREFACE.to_vec();
        out.extend_from_slice(&[0, 0, (entries * 6) as u8, SETTINGS, 0, 0, 0, 0, 0]);
        out.extend(std::iter::repeat_n(0u8, entries * 6));
        out
    }

    #[test]
    fn a_preface_and_settings_complete_it() {
        let whole = settings(3);
        for n in 0..whole.len() {
            assert_eq!(state(&whole[..n]), Preface::Incomplete, "{n} bytes");
        }
        assert_eq!(state(&whole), Preface::Complete);
        assert_eq!(state(&settings(0)), Preface::Complete);
        let mut more = whole.clone();
        more.extend_from_slice(b"anything after");
        assert_eq!(state(&more), Preface::Complete);
    }

    #[test]
    fn anything_else_is_invalid() {
        assert_eq!(state(b"GET / HTTP/1.1\r\n"), Preface::Invalid);
        assert_eq!(state(b"\x16\x03\x01"), Preface::Invalid); // a TLS hello
        let mut ping = settings(0);
        ping[CLIENT_PREFACE.len() + 3] = 6; // a PING first
        assert_eq!(state(&ping), Preface::Invalid);
        let mut ack = settings(0);
        ack[CLIENT_PREFACE.len() + 4] = 1;
        assert_eq!(state(&ack), Preface::Invalid);
        let mut odd = settings(1);
        odd[CLIENT_PREFACE.len() + 2] = 5;
        assert_eq!(state(&odd), Preface::Invalid);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever comes, the answer never needs more than `MOST` bytes and
        /// never goes back: more bytes leave a settled answer as it was.
        #[test]
        fn arbitrary_bytes_settle_within_the_bound(
            junk in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..80,
            entries in 0usize..4,
        ) {
            let mut valid = settings(entries);
            valid.extend_from_slice(&junk);
            let cut = cut.min(valid.len());
            prop_assert_ne!(state(&valid[..cut]), Preface::Invalid);
            let settled = state(&junk);
            let mut longer = junk.clone();
            longer.extend_from_slice(&[0; 40]);
            if settled != Preface::Incomplete {
                prop_assert_eq!(state(&longer), settled);
            }
            let mut big = vec![0u8; MOST + 10];
            big[..junk.len()].copy_from_slice(&junk);
            prop_assert_ne!(state(&big), Preface::Incomplete);
        }
    }
}
