//! `Last-Event-ID` of SSE subscriptions.
//!
//! TODO(lead): enable once the parse function lands in src/http/events.rs (name and signature
//! are placeholders); until then this target is a no-op beyond UTF-8 decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(_text) = std::str::from_utf8(data) else { return };
    // let _ = magistral::http::events::parse_last_event_id(_text);
});
