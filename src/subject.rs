//! NATS subjects: validating what arrives over HTTP, and matching subject patterns
//! (`*` = one token, `>` = the rest) for permissions, contract bindings and streams.

use thiserror::Error;

/// Why a subject taken from an HTTP request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    #[error("the subject is empty")]
    Empty,
    #[error("the subject is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("token {index} of the subject is empty (leading, trailing or double '.')")]
    EmptyToken { index: usize },
    #[error("wildcards ('*', '>') cannot be published to")]
    Wildcard,
    #[error("'$'-prefixed subjects are reserved for the NATS system")]
    System,
    #[error("token {index} holds {found:?}; tokens may hold only A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter { index: usize, found: char },
}

/// Checks a concrete subject a participant wants to publish to.
///
/// Tokens are `[A-Za-z0-9_-]+`, so wildcards, spaces, control characters and `$` system
/// subjects (such as `$JS.API.STREAM.LIST`) never reach NATS from HTTP.
///
/// # Errors
/// The first rule the subject breaks.
pub fn validate_publish_subject(subject: &str, max_len: usize) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > max_len {
        return Err(SubjectError::TooLong { len: subject.len(), max: max_len });
    }
    if subject.starts_with('$') {
        return Err(SubjectError::System);
    }
    for (index, token) in subject.split('.').enumerate() {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken { index });
        }
        if token == "*" || token == ">" {
            return Err(SubjectError::Wildcard);
        }
        if let Some(found) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(SubjectError::BadCharacter { index, found });
        }
    }
    Ok(())
}

/// Why a configured subject pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("token {index} is empty")]
    EmptyToken { index: usize },
    #[error("'>' may only be the last token")]
    TailNotLast,
    #[error("token {index} ({token:?}) mixes a wildcard or whitespace into a token")]
    MixedToken { index: usize, token: String },
}

/// Checks a subject pattern written in configuration (permissions, bindings).
///
/// # Errors
/// What is wrong with the pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        match *token {
            "" => return Err(PatternError::EmptyToken { index }),
            ">" if index + 1 != tokens.len() => return Err(PatternError::TailNotLast),
            "*" | ">" => {}
            t if t.contains(['*', '>', ' ', '\t', '\r', '\n']) => {
                return Err(PatternError::MixedToken { index, token: t.to_owned() });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `subject` (concrete) matches `pattern` under NATS wildcard rules.
#[must_use]
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `inner` can match is also matched by `outer` (used to check that a
/// binding or permission falls inside a stream's subjects).
#[must_use]
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(it)) if it != ">" => {}
            (Some(ot), Some(it)) if ot == it => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The subjects that both patterns match, as one pattern; `None` when no subject matches
/// both. Under NATS rules the intersection of two patterns is always a single pattern:
/// token by token the narrower one wins, and `>` takes the other side's remaining tokens.
#[must_use]
pub fn intersection(a: &str, b: &str) -> Option<String> {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut out: Vec<&str> = Vec::with_capacity(a.len().max(b.len()));
    let mut i = 0;
    loop {
        match (a.get(i).copied(), b.get(i).copied()) {
            // `>` matches one or more tokens: whatever (non-empty) rest the other side has.
            (Some(">"), Some(_)) => {
                out.extend_from_slice(&b[i..]);
                break;
            }
            (Some(_), Some(">")) => {
                out.extend_from_slice(&a[i..]);
                break;
            }
            (Some("*"), Some(t)) | (Some(t), Some("*")) => out.push(t),
            (Some(x), Some(y)) if x == y => out.push(x),
            (None, None) => break,
            _ => return None,
        }
        i += 1;
    }
    Some(out.join("."))
}

/// Whether some concrete subject matches both patterns.
#[must_use]
pub fn overlap(a: &str, b: &str) -> bool {
    intersection(a, b).is_some()
}

/// A set of patterns, e.g. a participant's publish permissions.
#[derive(Debug, Clone, Default)]
pub struct PatternSet(Vec<String>);

impl PatternSet {
    #[must_use]
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    #[must_use]
    pub fn allows(&self, subject: &str) -> bool {
        self.0.iter().any(|p| matches(p, subject))
    }

    #[must_use]
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_subject_rules() {
        assert_eq!(validate_publish_subject("orders.created", 256), Ok(()));
        assert_eq!(validate_publish_subject("a-b_c.D9", 256), Ok(()));
        assert_eq!(validate_publish_subject("", 256), Err(SubjectError::Empty));
        assert_eq!(validate_publish_subject("a..b", 256), Err(SubjectError::EmptyToken { index: 1 }));
        assert_eq!(validate_publish_subject(".a", 256), Err(SubjectError::EmptyToken { index: 0 }));
        assert_eq!(validate_publish_subject("a.", 256), Err(SubjectError::EmptyToken { index: 1 }));
        assert_eq!(validate_publish_subject("a.*", 256), Err(SubjectError::Wildcard));
        assert_eq!(validate_publish_subject("a.>", 256), Err(SubjectError::Wildcard));
        assert_eq!(validate_publish_subject("$JS.API.STREAM.LIST", 256), Err(SubjectError::System));
        assert_eq!(validate_publish_subject("a b", 256), Err(SubjectError::BadCharacter { index: 0, found: ' ' }));
        assert_eq!(validate_publish_subject("a.зак", 256), Err(SubjectError::BadCharacter { index: 1, found: 'з' }));
        assert_eq!(validate_publish_subject(&"a".repeat(300), 256), Err(SubjectError::TooLong { len: 300, max: 256 }));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("orders.>", "orders.created"));
        assert!(matches("orders.>", "orders.a.b"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("orders.*", "orders.created"));
        assert!(!matches("orders.*", "orders.a.b"));
        assert!(matches("*.created", "orders.created"));
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.created.x"));
        assert!(!matches("orders.created.x", "orders.created"));
    }

    #[test]
    fn pattern_cover() {
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.>", "orders.a.>"));
        assert!(covers("orders.*", "orders.x"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.x", "orders.*"));
        assert!(covers(">", "a.b"));
    }

    #[test]
    fn pattern_overlap() {
        assert_eq!(intersection("orders.>", "*.created").as_deref(), Some("orders.created"));
        assert_eq!(intersection("orders.*", "orders.>").as_deref(), Some("orders.*"));
        assert_eq!(intersection(">", "a.b.>").as_deref(), Some("a.b.>"));
        assert_eq!(intersection("a.>", "a.>").as_deref(), Some("a.>"));
        assert_eq!(intersection("a.*.c", "a.b.*").as_deref(), Some("a.b.c"));
        assert_eq!(intersection("a.b", "a.b").as_deref(), Some("a.b"));
        assert!(!overlap("orders.>", "orders"));
        assert!(!overlap("a.*", "a.b.c"));
        assert!(!overlap("a.b", "a.c"));
        assert!(!overlap("invoices.>", "orders.>"));
        assert!(overlap("*.*", "a.b"));
        assert!(!overlap("*", "a.b"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn pattern() -> impl Strategy<Value = String> {
            (prop::collection::vec(prop_oneof!["a", "b", r"\*"], 0..4), any::<bool>()).prop_map(|(mut tokens, tail)| {
                if tail || tokens.is_empty() {
                    tokens.push(">".into());
                }
                tokens.join(".")
            })
        }

        fn subject() -> impl Strategy<Value = String> {
            prop::collection::vec(prop_oneof!["a", "b", "c"], 1..6).prop_map(|t| t.join("."))
        }

        /// A concrete subject the pattern matches.
        fn instance(pattern: &str) -> String {
            pattern.split('.').map(|t| if t == "*" || t == ">" { "c" } else { t }).collect::<Vec<_>>().join(".")
        }

        proptest! {
            #[test]
            fn intersection_matches_exactly_what_both_match(a in pattern(), b in pattern(), s in subject()) {
                let both = matches(&a, &s) && matches(&b, &s);
                let i = intersection(&a, &b);
                prop_assert_eq!(both, i.as_deref().is_some_and(|i| matches(i, &s)), "a={} b={} i={:?}", a, b, i);
                if let Some(i) = &i {
                    prop_assert!(validate_pattern(i).is_ok());
                    let witness = instance(i);
                    prop_assert!(matches(&a, &witness) && matches(&b, &witness));
                    prop_assert!(covers(&a, i) && covers(&b, i));
                }
                prop_assert_eq!(overlap(&a, &b), overlap(&b, &a));
            }

            #[test]
            fn never_panics(a in ".{0,40}", b in ".{0,40}") {
                let _ = intersection(&a, &b);
            }
        }
    }

    #[test]
    fn pattern_validation() {
        assert!(validate_pattern("orders.>").is_ok());
        assert!(validate_pattern("a.*.c").is_ok());
        assert!(validate_pattern("a.>.c").is_err());
        assert!(validate_pattern("a..c").is_err());
        assert!(validate_pattern("a.b*").is_err());
    }
}
