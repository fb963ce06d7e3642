//! What the bus tells a participant about itself: the contracts touching it, with who
//! publishes and receives each subject (`GET /v1/contracts`), each schema as served
//! (`GET /v1/contracts/{name}/{version}`), and the AsyncAPI document ([`asyncapi`]).
//!
//! One rule decides what a participant sees: a contract version is visible when one of its
//! subjects, reply subjects or directories is one the participant may publish, receive,
//! request, answer, read or write; an admin sees everything.

pub mod asyncapi;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
use crate::contracts::Contract;
use crate::participants::Participant;
use crate::subject;

/// Whether any of `patterns` overlaps `pattern` (a subject the two could both match).
fn reaches(patterns: &[String], pattern: &str) -> bool {
    patterns.iter().any(|p| subject::overlap(p, pattern))
}

/// The subject a directory's changes are published on (`$KV.<bucket>.>`).
pub(crate) fn directory_subject(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// Whether `p` may publish, receive (permission or subscription), request or answer on
/// subjects matching `pattern`.
fn touches_subject(catalog: &Catalog, p: &Participant, pattern: &str) -> bool {
    reaches(p.publish.patterns(), pattern)
        || reaches(p.subscribe.patterns(), pattern)
        || reaches(p.request.patterns(), pattern)
        || reaches(p.respond.patterns(), pattern)
        || catalog.subscriptions.iter().any(|s| s.participant == p.name && reaches(&s.subjects, pattern))
}

/// Whether `p` may read or write the directory, or receive its changes.
fn touches_directory(catalog: &Catalog, p: &Participant, bucket: &str) -> bool {
    p.may_read(bucket)
        || catalog.directory(bucket).is_some_and(|d| d.owner == p.name)
        || touches_subject(catalog, p, &directory_subject(bucket))
}

/// Directories whose values `contract` governs (bound by name, to this version or the newest).
fn directories_of<'c>(
    catalog: &'c Catalog,
    contract: &'c Contract,
) -> impl Iterator<Item = &'c crate::directory::Directory> {
    catalog.directories.iter().filter(move |d| match &d.contract {
        Some((name, Some(version))) => *name == contract.name && *version == contract.version,
        Some((name, None)) => {
            *name == contract.name && catalog.contracts.get(name, None).is_some_and(|c| c.version == contract.version)
        }
        None => false,
    })
}

/// Whether `viewer` may see this contract version.
#[must_use]
pub fn visible(catalog: &Catalog, viewer: &Participant, contract: &Contract) -> bool {
    viewer.admin
        || contract.subjects.iter().chain(&contract.replies).any(|s| touches_subject(catalog, viewer, s))
        || directories_of(catalog, contract).any(|d| touches_directory(catalog, viewer, &d.bucket))
}

/// One contract in `GET /v1/contracts`: its versions, and every subject, reply and
/// directory it governs with the parties on each.
#[derive(Debug, Serialize, PartialEq)]
pub struct ContractEntry {
    pub name: String,
    pub versions: Vec<VersionEntry>,
    pub subjects: Vec<SubjectEntry>,
    pub replies: Vec<ReplyEntry>,
    pub directories: Vec<DirectoryEntry>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct VersionEntry {
    pub version: u32,
    /// URI stamped as `ce-dataschema` on messages of this version.
    pub dataschema: String,
    /// Where the schema is served (`GET`, `application/schema+json`).
    pub schema: String,
    pub title: Option<String>,
}

/// A subject pattern a contract governs, and who publishes and receives there.
#[derive(Debug, Serialize, PartialEq)]
pub struct SubjectEntry {
    pub subject: String,
    pub versions: Vec<u32>,
    /// Participants whose publish permissions reach the subject.
    pub publishers: Vec<String>,
    /// Participants whose subscribe permissions reach the subject.
    pub receivers: Vec<String>,
    /// Subscriptions delivering it.
    pub subscriptions: Vec<SubscriptionRef>,
    /// Participants whose request permissions reach it (a request subject).
    pub requesters: Vec<String>,
    /// Participants answering requests there.
    pub responders: Vec<String>,
}

/// A request subject whose replies a contract governs.
#[derive(Debug, Serialize, PartialEq)]
pub struct ReplyEntry {
    pub subject: String,
    pub versions: Vec<u32>,
    pub requesters: Vec<String>,
    pub responders: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SubscriptionRef {
    pub name: String,
    pub participant: String,
    pub mode: SubscriptionMode,
}

/// A directory whose values a contract governs.
#[derive(Debug, Serialize, PartialEq)]
pub struct DirectoryEntry {
    pub name: String,
    pub version: u32,
    pub owner: String,
    /// The subject its changes are published on (subscribable).
    pub changes: String,
    pub readers: Vec<String>,
    pub writers: Vec<String>,
}

fn names<'c>(it: impl Iterator<Item = &'c Participant>) -> Vec<String> {
    let mut v: Vec<String> = it.map(|p| p.name.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// Participants answering on `pattern`: owners of gateway responders there, and those allowed
/// to answer natively.
fn responders_on(catalog: &Catalog, pattern: &str) -> Vec<String> {
    let mut v: Vec<String> = catalog
        .responders
        .iter()
        .filter(|r| reaches(&r.subjects, pattern))
        .map(|r| r.participant.clone())
        .chain(catalog.participants.iter().filter(|p| reaches(p.respond.patterns(), pattern)).map(|p| p.name.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The contracts `viewer` may see, grouped by name, each listing only the subjects, replies
/// and directories that touch the viewer (all of them for an admin).
#[must_use]
pub fn contract_index(catalog: &Catalog, viewer: &Participant) -> Vec<ContractEntry> {
    let mut entries: Vec<ContractEntry> = Vec::new();
    // Contracts are sorted by name, newest version first.
    for contract in catalog.contracts.iter().filter(|c| visible(catalog, viewer, c)) {
        if entries.last().is_none_or(|e| e.name != contract.name) {
            entries.push(ContractEntry {
                name: contract.name.clone(),
                versions: Vec::new(),
                subjects: Vec::new(),
                replies: Vec::new(),
                directories: Vec::new(),
            });
        }
        let Some(entry) = entries.last_mut() else { continue };
        entry.versions.push(VersionEntry {
            version: contract.version,
            dataschema: contract.dataschema.clone(),
            schema: schema_path(contract),
            title: contract.schema.get("title").and_then(serde_json::Value::as_str).map(str::to_owned),
        });
        let shown = |pattern: &str| viewer.admin || touches_subject(catalog, viewer, pattern);
        for pattern in contract.subjects.iter().filter(|s| shown(s)) {
            if let Some(s) = entry.subjects.iter_mut().find(|s| s.subject == *pattern) {
                s.versions.push(contract.version);
                continue;
            }
            let ps = || catalog.participants.iter();
            entry.subjects.push(SubjectEntry {
                subject: pattern.clone(),
                versions: vec![contract.version],
                publishers: names(ps().filter(|p| reaches(p.publish.patterns(), pattern))),
                receivers: names(ps().filter(|p| reaches(p.subscribe.patterns(), pattern))),
                subscriptions: catalog
                    .subscriptions
                    .iter()
                    .filter(|s| reaches(&s.subjects, pattern))
                    .map(|s| SubscriptionRef { name: s.name.clone(), participant: s.participant.clone(), mode: s.mode })
                    .collect(),
                requesters: names(ps().filter(|p| reaches(p.request.patterns(), pattern))),
                responders: responders_on(catalog, pattern),
            });
        }
        for pattern in contract.replies.iter().filter(|s| shown(s)) {
            if let Some(r) = entry.replies.iter_mut().find(|r| r.subject == *pattern) {
                r.versions.push(contract.version);
                continue;
            }
            entry.replies.push(ReplyEntry {
                subject: pattern.clone(),
                versions: vec![contract.version],
                requesters: names(catalog.participants.iter().filter(|p| reaches(p.request.patterns(), pattern))),
                responders: responders_on(catalog, pattern),
            });
        }
        for d in directories_of(catalog, contract) {
            if !(viewer.admin || touches_directory(catalog, viewer, &d.bucket)) {
                continue;
            }
            let ps = || catalog.participants.iter();
            entry.directories.push(DirectoryEntry {
                name: d.bucket.clone(),
                version: contract.version,
                owner: d.owner.clone(),
                changes: directory_subject(&d.bucket),
                readers: names(ps().filter(|p| p.may_read(&d.bucket) || p.name == d.owner)),
                writers: names(ps().filter(|p| p.may_write(&d.bucket) || p.name == d.owner)),
            });
        }
    }
    entries
}

/// Where a contract version's schema is served.
#[must_use]
pub fn schema_path(contract: &Contract) -> String {
    format!("/v1/contracts/{}/{}", contract.name, contract.version)
}

/// A contract version's schema as served: its bytes and their strong entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedSchema {
    pub bytes: Vec<u8>,
    /// `"<hex SHA-256 of bytes>"`, quoted as an entity tag.
    pub etag: String,
}

/// The schema of `name` v`version` as `viewer` may fetch it; `None` when there is no such
/// version or it is not visible to the viewer (the two are not told apart).
#[must_use]
pub fn served_schema(catalog: &Catalog, viewer: &Participant, name: &str, version: u32) -> Option<ServedSchema> {
    let contract = catalog.contracts.get(name, Some(version))?;
    if !visible(catalog, viewer, contract) {
        return None;
    }
    // serde_json's map keeps keys sorted, so the same schema always gives the same bytes
    // (and the same entity tag) on every replica.
    let mut bytes = serde_json::to_vec_pretty(&contract.schema).unwrap_or_default();
    bytes.push(b'\n');
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
    Some(ServedSchema { bytes, etag })
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, RFC 9110 §13.1.2).
#[must_use]
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if_none_match.split(',').any(|t| t.trim() == "*" || opaque(t) == opaque(etag))
}

#[cfg(test)]
mod tests {
    use super::none_match;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("W/\"abc\"", "\"abc\""));
        assert!(none_match("\"x\", \"abc\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(!none_match("\"abcd\"", "\"abc\""));
        assert!(!none_match("abc", "\"abc\""));
    }
}
