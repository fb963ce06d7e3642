//! Participants: who is calling (bearer token → participant) and what they may do.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::subject::PatternSet;

/// A connected system, as the gateway knows it after loading configuration.
#[derive(Debug, Clone)]
pub struct Participant {
    pub name: String,
    /// SHA-256 of each accepted token; the tokens themselves are not kept.
    pub(crate) token_hashes: Vec<[u8; 32]>,
    pub publish: PatternSet,
    pub subscribe: PatternSet,
    pub request: PatternSet,
    pub respond: PatternSet,
    /// Directory (bucket) names it may read / write; `*` = all.
    pub kv_read: Vec<String>,
    pub kv_write: Vec<String>,
    /// May operate every subscription, not only its own.
    pub admin: bool,
    /// Contract names it may register over the API: a name, or a prefix ending in `*`.
    pub contracts: Vec<String>,
    /// The CloudEvents `source` stamped on everything this participant publishes.
    pub source: String,
}

impl Participant {
    #[must_use]
    pub fn new(name: String, token_hashes: Vec<[u8; 32]>, publish: PatternSet) -> Self {
        let source = format!("/participants/{name}");
        Self {
            name,
            token_hashes,
            publish,
            subscribe: PatternSet::default(),
            request: PatternSet::default(),
            respond: PatternSet::default(),
            kv_read: Vec::new(),
            kv_write: Vec::new(),
            admin: false,
            contracts: Vec::new(),
            source,
        }
    }

    #[must_use]
    pub fn may_read(&self, bucket: &str) -> bool {
        self.kv_read.iter().chain(&self.kv_write).any(|b| b == "*" || b == bucket)
    }

    /// Whether it may register versions of the contract `name` over the API.
    #[must_use]
    pub fn may_register(&self, name: &str) -> bool {
        self.contracts.iter().any(|g| match g.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => g == name,
        })
    }

    #[must_use]
    pub fn may_write(&self, bucket: &str) -> bool {
        self.kv_write.iter().any(|b| b == "*" || b == bucket)
    }
}

/// Every participant, searchable by token.
#[derive(Debug, Clone, Default)]
pub struct Participants(Vec<Participant>);

impl Participants {
    #[must_use]
    pub fn new(list: Vec<Participant>) -> Self {
        Self(list)
    }

    /// Finds the participant a bearer token belongs to.
    ///
    /// Compares the token's SHA-256 with every stored hash in constant time and never stops
    /// early, so timing reveals neither which participant nor how much of a hash matched.
    #[must_use]
    pub fn authenticate(&self, token: &str) -> Option<&Participant> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for participant in &self.0 {
            for hash in &participant.token_hashes {
                if bool::from(hash.ct_eq(&presented)) && found.is_none() {
                    found = Some(participant);
                }
            }
        }
        found
    }

    pub fn iter(&self) -> impl Iterator<Item = &Participant> {
        self.0.iter()
    }
}

/// SHA-256 of a token, as stored.
#[must_use]
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_finds_its_participant_only() {
        let ps = Participants::new(vec![
            Participant::new("a".into(), vec![hash_token("ta")], PatternSet::default()),
            Participant::new("b".into(), vec![hash_token("tb1"), hash_token("tb2")], PatternSet::default()),
        ]);
        assert_eq!(ps.authenticate("ta").map(|p| p.name.as_str()), Some("a"));
        assert_eq!(ps.authenticate("tb2").map(|p| p.name.as_str()), Some("b"));
        assert!(ps.authenticate("tc").is_none());
        assert!(ps.authenticate("").is_none());
    }
}
