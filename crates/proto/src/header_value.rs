//! Header values of the 2026-07-28 metadata headers: plain visible ASCII, or the Base64
//! sentinel `=?base64?…?=` for anything else (non-ASCII, control characters, edge spaces).

/// Decode a metadata header value. `None` when it is malformed (bad characters, bad Base64, or
/// Base64 that is not UTF-8).
pub fn decode(value: &[u8]) -> Option<String> {
    if let Some(inner) = value
        .strip_prefix(b"=?base64?")
        .and_then(|v| v.strip_suffix(b"?="))
    {
        return String::from_utf8(base64_decode(inner)?).ok();
    }
    if value
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
    {
        return String::from_utf8(value.to_vec()).ok();
    }
    None
}

/// Encode a value for a metadata header: unchanged when it is visible ASCII (inner spaces
/// allowed) and does not look like the sentinel, else `=?base64?…?=` (standard Base64).
pub fn encode(value: &str) -> String {
    let edge_space = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    let visible = value
        .bytes()
        .all(|b| b == b' ' || (0x21..=0x7e).contains(&b));
    let plain = !value.is_empty() && !edge_space && !sentinel && visible;
    if plain {
        return value.to_string();
    }
    format!("=?base64?{}?=", base64_encode(value.as_bytes()))
}

fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let trimmed: &[u8] = {
        let mut end = input.len();
        while end > 0 && input[end - 1] == b'=' {
            end -= 1;
        }
        &input[..end]
    };
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn encode_round_trips_and_keeps_plain_values() {
        assert_eq!(encode("get_weather"), "get_weather");
        assert_eq!(encode("file:///a b.txt"), "file:///a b.txt");
        assert_eq!(encode("Hello, 世界"), "=?base64?SGVsbG8sIOS4lueVjA==?=");
        for v in [
            " padded ",
            "line1\nline2",
            "=?base64?literal?=",
            "",
            "a",
            "ab",
            "abc",
            "héllo",
        ] {
            let e = encode(v);
            assert!(
                e.bytes().all(|b| (0x21..=0x7e).contains(&b) || b == b' '),
                "{e}"
            );
            assert_eq!(decode(e.as_bytes()).as_deref(), Some(v), "{v:?} -> {e}");
        }
    }

    #[test]
    fn plain_and_sentinel_values() {
        assert_eq!(decode(b"get_weather").as_deref(), Some("get_weather"));
        assert_eq!(
            decode(b"file:///a b.txt").as_deref(),
            Some("file:///a b.txt")
        );
        assert_eq!(
            decode(b"=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(
            decode(b"=?base64?IHBhZGRlZCA=?=").as_deref(),
            Some(" padded ")
        );
        assert_eq!(
            decode(b"=?base64?bGluZTEKbGluZTI=?=").as_deref(),
            Some("line1\nline2")
        );
        assert_eq!(
            decode(b"=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").as_deref(),
            Some("=?base64?literal?=")
        );
        assert_eq!(decode(b"=?base64?!!!?="), None);
        assert_eq!(decode("caf\u{e9}".as_bytes()), None);
        assert_eq!(decode(b"a\x01b"), None);
    }
}
