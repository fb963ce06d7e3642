//! Cheap byte-level checks that run before any JSON parser sees the body.

use crate::http::problem::{Problem, ProblemType};

/// # Errors
/// `invalid-utf8` with the byte offset of the first bad sequence.
pub fn check_utf8(bytes: &[u8]) -> Result<(), Problem> {
    std::str::from_utf8(bytes).map(|_| ()).map_err(|e| {
        Problem::new(ProblemType::InvalidUtf8, format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })
}

/// Whether arrays/objects nest deeper than `max`. One pass, no allocation; brackets inside
/// strings do not count. Runs before parsing so deep input never reaches a recursive parser.
#[must_use]
pub fn exceeds_depth(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth() {
        assert!(!exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(exceeds_depth(br#"{"a":[1,{"b":[2]}]}"#, 3));
        assert!(!exceeds_depth(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(exceeds_depth(&b"[".repeat(100), 32));
    }
}
