//! Bitrix24 outbound-webhook forms (`data[FIELDS][ID]=4711&auth[application_token]=…`).
//!
//! NOTE: written against today's `parse_bracketed_form(body) -> Value`. Another engineer is
//! changing it to `parse_bracketed_form(body, max_fields, max_depth) -> Result<Value, _>`;
//! when that lands, switch to the call below (defaults: 2000 fields, depth 8).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = magistral::inbound::parse_bracketed_form(data);
    // TODO(after the bounded parser lands):
    // let _ = magistral::inbound::parse_bracketed_form(data, 2000, 8);
});
