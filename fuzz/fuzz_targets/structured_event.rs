//! Structured-mode CloudEvents envelopes (`application/cloudevents+json` bodies).
#![no_main]
use libfuzzer_sys::fuzz_target;
use magistral::publish::cloudevents::StructuredEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = StructuredEvent::parse(data) {
        let _ = event.client_attributes();
    }
});
