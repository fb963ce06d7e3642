//! Duplicate-key-refusing JSON check (I-JSON, RFC 7493) run before contracts.
//!
//! TODO(lead): enable once `magistral::publish::json::check_strict` lands (and `publish::json`
//! is `pub`; today it is a private module). Until then this target only decodes UTF-8.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(_text) = std::str::from_utf8(data) else { return };
    // let _ = magistral::publish::json::check_strict(data, 32);
});
