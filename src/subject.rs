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
        if let Some(found) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(SubjectError::BadCharacter { index, found });
        }
    }
    Ok(())
}

/// Checks a subject pattern written in configuration (permissions, bindings).
///
/// # Errors
/// A message naming what is wrong with the pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".into());
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        match *token {
            "" => return Err(format!("token {index} is empty")),
            ">" if index + 1 != tokens.len() => {
                return Err("'>' may only be the last token".into());
            }
            "*" | ">" => {}
            t if t.contains(['*', '>', ' ', '\t', '\r', '\n']) => {
                return Err(format!("token {index} ({t:?}) mixes a wildcard or whitespace into a token"));
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
        assert_eq!(
            validate_publish_subject("a b", 256),
            Err(SubjectError::BadCharacter { index: 0, found: ' ' })
        );
        assert_eq!(
            validate_publish_subject("a.зак", 256),
            Err(SubjectError::BadCharacter { index: 1, found: 'з' })
        );
        assert_eq!(
            validate_publish_subject(&"a".repeat(300), 256),
            Err(SubjectError::TooLong { len: 300, max: 256 })
        );
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
    fn pattern_validation() {
        assert!(validate_pattern("orders.>").is_ok());
        assert!(validate_pattern("a.*.c").is_ok());
        assert!(validate_pattern("a.>.c").is_err());
        assert!(validate_pattern("a..c").is_err());
        assert!(validate_pattern("a.b*").is_err());
    }
}
