//! `Last-Event-ID` of SSE subscriptions: a resume point or a refusal, never an overflow.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(next) = magistral::http::events::parse_last_event_id(text) {
        assert!(next >= 1);
    }
});
