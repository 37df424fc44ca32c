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
    use super::decode;

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
