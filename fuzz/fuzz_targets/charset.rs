//! Charsets on the way in and out (issue 17): a `Content-Type` charset label, a body decoded
//! in that charset (whole, and as a form field by field), and re-encoded for a subscriber.
#![no_main]
use libfuzzer_sys::fuzz_target;
use magistral::charset;

fuzz_target!(|data: &[u8]| {
    // First line: the Content-Type; the rest: the body.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (head, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(Some(encoding)) = charset::of_content_type(std::str::from_utf8(head).ok()) else { return };
    if let Ok(text) = charset::decode(body, encoding) {
        let _ = charset::encode(text.as_bytes(), encoding);
    }
    let _ = charset::form_to_utf8(body, encoding);
    let _ = charset::form_field(body, "auth[application_token]", Some(encoding));
});
