//! Bitrix24 outbound-webhook forms (`data[FIELDS][ID]=4711&auth[application_token]=…`): the
//! token scan that runs before anything is built, then the bounded builder at the default
//! limits (2000 fields, depth 8).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = magistral::inbound::application_token(data);
    let _ = magistral::inbound::parse_bracketed_form(data, 2000, 8);
    let _ = magistral::inbound::notification_entries(data, 1000);
});
