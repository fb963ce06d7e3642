//! Binary-mode CloudEvents headers. Input: lines `name: value`; pairs the `http` crate refuses
//! (bad names or values) are skipped, as hyper would never hand them to the gateway.
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else { continue };
        headers.append(name, value);
    }
    let _ = magistral::publish::cloudevents::from_http_headers(&headers);
});
