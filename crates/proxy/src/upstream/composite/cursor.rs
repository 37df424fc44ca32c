//! The pagination cursor a composite route hands its clients: opaque and tamper-checked.
//!
//! A composite session merges every member's list (all pages of all members) and pages the merged
//! list itself; the cursor names a [`Position`] in it. The cursor is the position's fields and an
//! HMAC-SHA256 tag (cut to 16 bytes) over them and the session id, base64url without padding: a
//! client cannot make up a position, and a cursor of one session is refused in any other. Each
//! session has a random [`CursorKey`] of its own, kept in its record (see [`super::saved`]), so
//! a replica that continues the session opens the cursors another issued.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The longest cursor [`CursorKey::open`] decodes; ours are 40 characters.
const MAX_CURSOR_LEN: usize = 256;
/// The format version, the first byte of a cursor.
const VERSION: u8 = 1;
/// Version, list, generation, offset.
const FIELDS_LEN: usize = 1 + 1 + 8 + 4;
/// The HMAC-SHA256 tag is cut to this many bytes.
const TAG_LEN: usize = 16;
/// Domain separation: this key signs nothing else, but the tag says what it is over.
const CONTEXT: &[u8] = b"shadowcat composite cursor\0";
/// How much of a refused cursor an error message shows.
const SHOWN_CHARS: usize = 16;

/// The key cursors are sealed with: a random one per session (kept in the session's record, so
/// that another replica continuing the session has it too).
#[derive(Clone)]
pub struct CursorKey(HmacSha256);

/// Where the next page of a merged list starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Which list: [`Position::TOOLS`], [`Position::PROMPTS`], [`Position::RESOURCES`] or
    /// [`Position::TEMPLATES`]. The caller checks it is the list being asked for.
    pub list: u8,
    /// The merged list's generation; the caller checks it is still the current one.
    pub generation: u64,
    /// The index of the first item of the next page.
    pub offset: u32,
}

impl Position {
    pub const TOOLS: u8 = 0;
    pub const PROMPTS: u8 = 1;
    pub const RESOURCES: u8 = 2;
    pub const TEMPLATES: u8 = 3;
}

/// Why a cursor was refused. The message suits a JSON-RPC -32602 "Invalid params" error; it shows
/// at most the first 16 characters of the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// Not a cursor at all: too long, not base64url, or the wrong length.
    Malformed { shown: String },
    /// Shaped like a cursor, but not one this process issued for this session.
    Forged { shown: String },
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::Malformed { shown } => write!(
                f,
                "invalid cursor \"{shown}\": not a cursor from this server; list again without one"
            ),
            CursorError::Forged { shown } => write!(
                f,
                "invalid cursor \"{shown}\": not issued for this session (or issued before a \
                 restart); list again without one"
            ),
        }
    }
}

impl std::error::Error for CursorError {}

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

impl CursorKey {
    /// A fresh key from the thread's cryptographically secure generator.
    pub fn random() -> CursorKey {
        CursorKey::from_bytes(rand::random())
    }

    /// A key of the given bytes (for tests, or a key shared by several processes).
    pub fn from_bytes(bytes: [u8; 32]) -> CursorKey {
        // HMAC pads a key shorter than the hash's 64-byte block with zeros; doing that here
        // gives the same MAC through the infallible constructor.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&bytes);
        CursorKey(HmacSha256::new(&block.into()))
    }

    /// The cursor for `pos` in session `session`: 40 characters of base64url, no padding.
    pub fn seal(&self, session: &str, pos: &Position) -> String {
        let mut bytes = [0u8; FIELDS_LEN + TAG_LEN];
        let (fields, tag) = bytes.split_at_mut(FIELDS_LEN);
        fields[0] = VERSION;
        fields[1] = pos.list;
        fields[2..10].copy_from_slice(&pos.generation.to_be_bytes());
        fields[10..14].copy_from_slice(&pos.offset.to_be_bytes());
        tag.copy_from_slice(&self.tag(session, fields));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The position in a cursor that [`CursorKey::seal`] made with this key for this session.
    pub fn open(&self, session: &str, cursor: &str) -> Result<Position, CursorError> {
        let malformed = || CursorError::Malformed {
            shown: shown(cursor),
        };
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| malformed())?;
        let Ok(bytes) = <[u8; FIELDS_LEN + TAG_LEN]>::try_from(bytes) else {
            return Err(malformed());
        };
        let (fields, tag) = bytes.split_at(FIELDS_LEN);
        if !bool::from(self.tag(session, fields).ct_eq(tag)) {
            return Err(CursorError::Forged {
                shown: shown(cursor),
            });
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&fields[2..10]);
        let mut offset = [0u8; 4];
        offset.copy_from_slice(&fields[10..14]);
        if fields[0] != VERSION {
            return Err(malformed());
        }
        Ok(Position {
            list: fields[1],
            generation: u64::from_be_bytes(generation),
            offset: u32::from_be_bytes(offset),
        })
    }

    /// The tag over the fields (fixed length, so the session after them is unambiguous).
    fn tag(&self, session: &str, fields: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(CONTEXT);
        mac.update(fields);
        mac.update(session.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

/// The first characters of a refused cursor, control characters escaped, `…` if cut.
fn shown(cursor: &str) -> String {
    let mut out: String = cursor
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if cursor.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POS: Position = Position {
        list: Position::RESOURCES,
        generation: 0x0102_0304_0506_0708,
        offset: 50,
    };

    fn key() -> CursorKey {
        CursorKey::from_bytes([7; 32])
    }

    #[test]
    fn round_trip() {
        let key = key();
        for pos in [
            POS,
            Position {
                list: 0,
                generation: 0,
                offset: 0,
            },
            Position {
                list: u8::MAX,
                generation: u64::MAX,
                offset: u32::MAX,
            },
        ] {
            let cursor = key.seal("session-1", &pos);
            assert_eq!(cursor.len(), 40);
            assert!(
                cursor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            assert_eq!(key.open("session-1", &cursor), Ok(pos));
        }
        // Deterministic for one key, session and position.
        assert_eq!(key.seal("s", &POS), key.seal("s", &POS));
        let random = CursorKey::random();
        assert_eq!(random.open("s", &random.seal("s", &POS)), Ok(POS));
    }

    #[test]
    fn the_padded_key_is_plain_hmac_with_the_32_byte_key() {
        let key = key();
        let mut mac = HmacSha256::new_from_slice(&[7; 32]).expect("any length");
        mac.update(CONTEXT);
        mac.update(b"fields");
        mac.update(b"s");
        let full = mac.finalize().into_bytes();
        assert_eq!(key.tag("s", b"fields"), full[..TAG_LEN]);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = key();
        let cursor = key.seal("s", &POS);
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).expect("our own cursor");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = key.open("s", &URL_SAFE_NO_PAD.encode(&flipped));
            assert!(
                matches!(result, Err(CursorError::Forged { .. })),
                "bit {bit}: {result:?}"
            );
        }
        // And every other character in every place.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..cursor.len() {
            for c in alphabet.chars() {
                let mut changed = cursor.clone();
                changed.replace_range(i..=i, &c.to_string());
                if changed != cursor {
                    assert!(key.open("s", &changed).is_err(), "{changed}");
                }
            }
        }
    }

    #[test]
    fn other_sessions_and_keys_are_refused() {
        let key = key();
        let cursor = key.seal("session-1", &POS);
        for session in ["session-2", "session-", "session-1 ", ""] {
            assert!(matches!(
                key.open(session, &cursor),
                Err(CursorError::Forged { .. })
            ));
        }
        let other = CursorKey::from_bytes([8; 32]);
        assert!(matches!(
            other.open("session-1", &cursor),
            Err(CursorError::Forged { .. })
        ));
        assert!(matches!(
            CursorKey::random().open("session-1", &cursor),
            Err(CursorError::Forged { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_and_not_echoed_whole() {
        let key = key();
        let cursor = key.seal("s", &POS);
        let long = "A".repeat(10_000);
        for bad in [
            "",
            "not a cursor",
            "====",
            &cursor[..39],
            &format!("{cursor}A"),
            &format!("{cursor}="),
            &format!("+{}", &cursor[1..]),
            &long,
            &URL_SAFE_NO_PAD.encode([0u8; 31]),
            "\u{0}\u{7f}é🦀",
        ] {
            let result = key.open("s", bad);
            let Err(err @ CursorError::Malformed { .. }) = result else {
                panic!("{bad:?}: {result:?}");
            };
            let message = err.to_string();
            assert!(message.len() < 200, "{message}");
            assert!(!message.contains(&"A".repeat(20)));
        }
        // Over-long input is refused before decoding, even if it would decode.
        let too_long = URL_SAFE_NO_PAD.encode([0u8; 200]);
        assert!(too_long.len() > MAX_CURSOR_LEN);
        assert!(matches!(
            key.open("s", &too_long),
            Err(CursorError::Malformed { .. })
        ));
        let shown_err = key.open("s", "abc\u{1}").expect_err("garbage");
        assert!(shown_err.to_string().contains("abc\\u{1}"));
    }

    #[test]
    fn messages_say_what_to_do() {
        let key = key();
        let forged = key
            .open("other", &key.seal("s", &POS))
            .expect_err("another session");
        assert!(forged.to_string().contains("not issued for this session"));
        assert!(format!("{key:?}") == "CursorKey(..)");
    }

    proptest! {
        #[test]
        fn no_input_panics(session in any::<String>(), cursor in any::<String>()) {
            let key = key();
            prop_assert!(key.open(&session, &cursor).is_err());
        }

        #[test]
        fn base64_shaped_input_is_refused(cursor in "[A-Za-z0-9_-]{0,300}") {
            prop_assert!(key().open("s", &cursor).is_err());
        }

        #[test]
        fn any_position_round_trips(list: u8, generation: u64, offset: u32, session in ".{0,40}") {
            let pos = Position { list, generation, offset };
            let key = key();
            prop_assert_eq!(key.open(&session, &key.seal(&session, &pos)), Ok(pos));
        }
    }
}
