//! Splitting a batch body (NDJSON or a JSON array) into items, counted as they are read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use magistral::publish::batch::{split, Framing};

fuzz_target!(|data: &[u8]| {
    for framing in [Framing::Ndjson, Framing::JsonArray] {
        if let Ok(items) = split(data, framing, 100, 32) {
            assert!(items.len() <= 100);
        }
    }
});
