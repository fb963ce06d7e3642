//! Pull-delivery ack tokens (`v1.<payload>.<mac>`), as presented by any caller: verify never
//! panics, and a token it accepts is one the key signed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use magistral::delivery::pull::{AckToken, TokenKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let key = TokenKey::from_bytes([7; 32]);
    if let Ok(token) = key.verify(text) {
        assert_eq!(key.verify(&key.sign(&token)).ok(), Some(token));
    }
    // The payload part of a token decodes to this JSON; it must parse or refuse, never panic.
    if let Ok(token) = serde_json::from_str::<AckToken>(text) {
        assert_eq!(key.verify(&key.sign(&token)).ok(), Some(token));
    }
});
