//! The one JSON check of every incoming path: depth, then a parse refusing repeated members
//! (I-JSON, RFC 7493). Whatever it accepts, serde_json accepts too.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = magistral::publish::json::parse_strict(data, 32);
    if let Ok(value) = &strict {
        let loose: serde_json::Value = serde_json::from_slice(data).expect("strict accepted what serde_json refuses");
        assert_eq!(&loose, value, "strict and loose parses disagree");
    }
    assert_eq!(magistral::publish::json::check_strict(data, 32).is_ok(), strict.is_ok());
});
