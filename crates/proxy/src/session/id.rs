//! Proxy-minted session ids.

use rand::RngCore;
use std::fmt::Write;
use std::sync::Arc;

/// A new session id: 128 random bits from the OS-seeded CSPRNG, as 32 lowercase hex characters
/// (visible ASCII, as the spec requires).
pub fn mint_session_id() -> Arc<str> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(32);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_long_distinct_visible_ascii() {
        let a = super::mint_session_id();
        let b = super::mint_session_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| (0x21..=0x7e).contains(&c)));
    }
}
