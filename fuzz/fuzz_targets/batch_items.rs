//! Splitting a batch body (NDJSON or a JSON array) into items, counted as they are read.
//!
//! TODO(lead): enable once the batch splitter lands in src/publish/ (name and signature below
//! are placeholders). Until then this target only decodes UTF-8.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(_text) = std::str::from_utf8(data) else { return };
    // let _ = magistral::publish::json::split_batch_items(data, 1000);
});
