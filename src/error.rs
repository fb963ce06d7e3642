//! The shape of an area's error, in the style of async-nats's `Error<Kind>`: a kind to match
//! on (each area defines its own enum) and a detail for people. Each area's kinds map onto the
//! problem catalogue ([`crate::problem`]) in one place, at the HTTP edge (`http/problem.rs`).

use std::fmt;

/// An error of some area: `kind` says what failed, `detail` says how, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error<Kind> {
    kind: Kind,
    detail: String,
}

impl<Kind: Clone> Error<Kind> {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    /// What failed; callers and the HTTP edge match on it.
    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind.clone()
    }

    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl<Kind: fmt::Debug> fmt::Display for Error<Kind> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl<Kind: fmt::Debug> std::error::Error for Error<Kind> {}

impl<Kind: Clone> From<(Kind, String)> for Error<Kind> {
    fn from((kind, detail): (Kind, String)) -> Self {
        Self::new(kind, detail)
    }
}
