//! Participants: who is calling (bearer token → participant) and what they may do.

use std::collections::HashMap;

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

/// SHA-256 of a presented token, as the key of the token index. Equality is constant-time so
/// a lookup's final comparison does not stop at the first differing byte.
#[derive(Debug, Clone, Copy)]
struct TokenDigest([u8; 32]);

// Written out because `PartialEq` is: equal digests hash alike, as the bytes do.
impl std::hash::Hash for TokenDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for TokenDigest {}

/// Every participant, found by token or by name without a scan.
///
/// The token index is keyed by the token's SHA-256 (what the configuration stores), so the
/// cost of authentication does not grow with the number of participants. The map hashes its
/// keys with a per-process random key (std's `RandomState`), so a caller cannot aim at a
/// bucket, and whatever a lookup's timing could reveal concerns a SHA-256 digest, never a
/// token. Built once per catalog: a hot reload builds a new one.
#[derive(Debug, Clone, Default)]
pub struct Participants {
    list: Vec<Participant>,
    by_token: HashMap<TokenDigest, usize>,
    by_name: HashMap<String, usize>,
}

impl Participants {
    #[must_use]
    pub fn new(list: Vec<Participant>) -> Self {
        let mut by_token = HashMap::with_capacity(list.iter().map(|p| p.token_hashes.len()).sum());
        let mut by_name = HashMap::with_capacity(list.len());
        for (index, participant) in list.iter().enumerate() {
            for hash in &participant.token_hashes {
                // A token listed twice belongs to the first participant that lists it (as
                // the former scan decided).
                by_token.entry(TokenDigest(*hash)).or_insert(index);
            }
            by_name.entry(participant.name.clone()).or_insert(index);
        }
        Self { list, by_token, by_name }
    }

    /// Finds the participant a bearer token belongs to: one SHA-256 and one map lookup,
    /// whatever the number of participants.
    #[must_use]
    pub fn authenticate(&self, token: &str) -> Option<&Participant> {
        let presented = TokenDigest(Sha256::digest(token.as_bytes()).into());
        self.by_token.get(&presented).map(|&index| &self.list[index])
    }

    /// The position of the participant named `name` (stable for this catalog).
    #[must_use]
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The participant at `index` (see [`Participants::position`]).
    #[must_use]
    pub fn get(&self, index: usize) -> Option<&Participant> {
        self.list.get(index)
    }

    /// The participant named `name`.
    #[must_use]
    pub fn by_name(&self, name: &str) -> Option<&Participant> {
        self.position(name).and_then(|index| self.get(index))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Participant> {
        self.list.iter()
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
        assert_eq!(ps.by_name("b").map(|p| p.token_hashes.len()), Some(2));
        assert_eq!(ps.position("a"), Some(0));
        assert!(ps.by_name("c").is_none());
    }

    #[test]
    fn many_participants_each_token_finds_its_own() {
        let n = 10_000;
        let ps = Participants::new(
            (0..n)
                .map(|i| {
                    Participant::new(format!("p{i}"), vec![hash_token(&format!("token-{i}"))], PatternSet::default())
                })
                .collect(),
        );
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(ps.authenticate(&format!("token-{i}")).map(|p| p.name.clone()), Some(format!("p{i}")));
            assert_eq!(ps.position(&format!("p{i}")), Some(i));
        }
        assert!(ps.authenticate("token-10000").is_none());
        assert!(ps.authenticate("p1").is_none());
    }

    #[test]
    fn a_token_listed_twice_belongs_to_the_first_participant() {
        let ps = Participants::new(vec![
            Participant::new("a".into(), vec![hash_token("shared")], PatternSet::default()),
            Participant::new("b".into(), vec![hash_token("shared"), hash_token("own")], PatternSet::default()),
        ]);
        assert_eq!(ps.authenticate("shared").map(|p| p.name.as_str()), Some("a"));
        assert_eq!(ps.authenticate("own").map(|p| p.name.as_str()), Some("b"));
    }
}
