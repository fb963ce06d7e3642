//! Subjects from URLs and patterns from configuration. Input: `subject\npattern`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use magistral::subject::{covers, matches, validate_pattern, validate_publish_subject};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (subject, pattern) = text.split_once('\n').unwrap_or((text, text));
    let subject_ok = validate_publish_subject(subject, 256).is_ok();
    let pattern_ok = validate_pattern(pattern).is_ok();
    let _ = validate_pattern(subject);
    let m = matches(pattern, subject);
    let c = covers(pattern, subject);
    let _ = covers(subject, pattern);
    if subject_ok {
        // A concrete subject matches itself, and for a concrete subject "covers" is "matches".
        assert!(matches(subject, subject), "{subject:?} does not match itself");
        if pattern_ok {
            assert_eq!(m, c, "matches/covers disagree on {pattern:?} vs {subject:?}");
        }
    }
});
