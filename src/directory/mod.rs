//! Directories: reference books kept in JetStream KV buckets (latest value per key, with
//! revisions). Reads never touch the owner system; writes are contract-checked and carry
//! CloudEvents headers, so a subscription to `$KV.<bucket>.>` pushes every change.
//!
//! - this file: a directory's configuration, its bucket, and which keys are valid;
//! - [`operations`]: reading, writing, deleting and listing keys ([`get`], [`put`],
//!   [`delete`], [`list`]) for a caller, with typed errors ([`DirectoryError`]);
//! - [`stores`]: the open KV handles those operations share.

mod operations;
mod stores;

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::config::{Config, DirectoryConfig};
use crate::problem::Problem;
use crate::streams::StreamDef;

pub(crate) use operations::{
    Access, Directories, Entry, Paging, Precondition, Trace, Written, delete, get, list, open, put,
};
pub(crate) use stores::Stores;

/// What failed in a directory operation; the HTTP edge maps each onto the problem catalogue.
#[derive(Debug, Clone)]
pub enum DirectoryKind {
    /// No such directory, or no such key in it.
    NotFound,
    /// The caller may not read (or write) this directory.
    Forbidden,
    /// The key is not a valid directory key.
    InvalidKey,
    /// The key changed since the expected revision (or exists, for a create-only write).
    RevisionMismatch,
    /// JetStream did not confirm the write in time.
    Timeout,
    /// NATS is unreachable or refused; the same call may succeed after `retry_after` seconds.
    Unavailable { retry_after: u64 },
    /// The value failed the shared data check (UTF-8, strict JSON, the directory's contract).
    Refused(Box<Problem>),
    /// The directory's contract is not loaded: a fault of the gateway, never of the caller.
    Internal,
}

/// A directory operation's error.
pub(crate) type DirectoryError = crate::error::Error<DirectoryKind>;

/// A configured directory, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Directory {
    /// Bucket name (= the directory's name).
    pub bucket: String,
    pub owner: String,
    pub description: Option<String>,
    pub history: i64,
    pub ttl: Option<Duration>,
    pub replicas: usize,
    /// `(contract name, version)`; `None` version = newest.
    pub contract: Option<(String, Option<u32>)>,
}

/// Longest key accepted.
pub(crate) const MAX_KEY_LEN: usize = 256;

impl Directory {
    /// # Errors
    /// `(field, message)` for every problem, relative to `directories.<name>`.
    pub fn resolve(name: &str, cfg: &DirectoryConfig, config: &Config) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            problems.push((String::new(), "a directory (bucket) name is 1-64 of A-Z, a-z, 0-9, '-', '_'".to_owned()));
        }
        if !config.participants.contains_key(&cfg.owner) {
            problems.push(("owner".into(), format!("no participant {:?}", cfg.owner)));
        }
        if !(1..=64).contains(&cfg.history) {
            problems.push(("history".into(), "between 1 and 64".into()));
        }
        if let Some(contract) = &cfg.contract
            && !config
                .contracts
                .iter()
                .any(|c| c.name == *contract && cfg.contract_version.is_none_or(|v| v == c.version))
        {
            problems.push(("contract".into(), format!("no contract {contract} (version {:?})", cfg.contract_version)));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            bucket: name.to_owned(),
            owner: cfg.owner.clone(),
            description: cfg.description.clone(),
            history: cfg.history,
            ttl: cfg.ttl,
            replicas: cfg.replicas,
            contract: cfg.contract.clone().map(|c| (c, cfg.contract_version)),
        })
    }

    /// The KV bucket's own stream, so subscriptions can span `$KV.<bucket>.>`. It is
    /// created as a bucket (not reconciled as a plain stream).
    #[must_use]
    pub fn stream(&self) -> StreamDef {
        StreamDef {
            file: std::path::PathBuf::from("(directory)"),
            declared: serde_json::Map::new(),
            config: jetstream::stream::Config {
                name: format!("KV_{}", self.bucket),
                subjects: vec![format!("$KV.{}.>", self.bucket)],
                ..Default::default()
            },
            bucket: true,
        }
    }

    /// Creates the bucket, or updates its settings.
    ///
    /// # Errors
    /// `Unavailable`: NATS refused (the detail, for logs and `magistral apply`, says why).
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<kv::Store, DirectoryError> {
        js.create_or_update_key_value(kv::Config {
            bucket: self.bucket.clone(),
            description: self.description.clone().unwrap_or_default(),
            history: self.history,
            max_age: self.ttl.unwrap_or_default(),
            num_replicas: self.replicas,
            ..Default::default()
        })
        .await
        // Only logged or printed (reconcile, `magistral apply`), never answered: NATS's words help.
        .map_err(|e| {
            DirectoryError::new(
                DirectoryKind::Unavailable { retry_after: 0 },
                format!("directory {}: {e}", self.bucket),
            )
        })
    }
}

/// A valid directory key (see [`validate_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key(String);

impl Key {
    /// # Errors
    /// `InvalidKey`, saying why.
    pub(crate) fn new(key: String) -> Result<Self, DirectoryError> {
        validate_key(&key)?;
        Ok(Self(key))
    }

    #[must_use]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a key: KV allows `A-Z a-z 0-9 - _ = / .`, no leading/trailing `.`, bounded.
///
/// # Errors
/// `InvalidKey`, saying why the key is refused.
pub(crate) fn validate_key(key: &str) -> Result<(), DirectoryError> {
    let invalid = |detail: String| Err(DirectoryError::new(DirectoryKind::InvalidKey, detail));
    if key.is_empty() {
        return invalid("the key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return invalid(format!("the key is {} bytes; the limit is {MAX_KEY_LEN}", key.len()));
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return invalid("a key may not start or end with '.', nor hold '..'".into());
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/' | '.'))) {
        return invalid(format!("{c:?} is not allowed in a key (A-Z a-z 0-9 - _ = / .)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn keys() {
        assert!(validate_key("sku-0042").is_ok());
        assert!(validate_key("wine/red/merlot.2019").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(".a").is_err());
        assert!(validate_key("a.").is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_key("a*").is_err());
        assert!(validate_key("a>").is_err());
        assert!(validate_key("вино").is_err());
        assert!(validate_key(&"k".repeat(300)).is_err());
    }
}
