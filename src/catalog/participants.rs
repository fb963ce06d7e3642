//! Participants from `[participants.*]`: names, tokens (hashed at load) and subject patterns.

use std::fs;

use super::problems::Problems;
use crate::config::{Config, ParticipantConfig, TokenSource};
use crate::participants::{Participant, hash_token};
use crate::streams::StreamDef;
use crate::subject::{self, PatternSet};

/// Every configured participant, with the problems of each collected.
pub(super) fn participants(config: &Config, problems: &mut Problems) -> Vec<Participant> {
    config.participants.iter().map(|(name, p)| participant(config, name, p, problems)).collect()
}

fn participant(config: &Config, name: &str, p: &ParticipantConfig, problems: &mut Problems) -> Participant {
    if subject::validate_publish_subject(name, 64).is_err() || name.contains('.') {
        problems.in_config(format!("participants.{name}"), "a participant name holds only A-Z, a-z, 0-9, '_' and '-'");
    }
    if p.tokens.is_empty() {
        problems.in_config(format!("participants.{name}.tokens"), "at least one token is needed");
    }
    let mut hashes = Vec::new();
    for (i, source) in p.tokens.iter().enumerate() {
        match resolve_token(config, source) {
            Ok(hash) => hashes.push(hash),
            Err(error) => problems.in_config(format!("participants.{name}.tokens[{i}]"), error.to_string()),
        }
    }
    for (kind, patterns) in
        [("publish", &p.publish), ("subscribe", &p.subscribe), ("request", &p.request), ("respond", &p.respond)]
    {
        for (i, pattern) in patterns.iter().enumerate() {
            if let Err(message) = subject::validate_pattern(pattern) {
                problems.in_config(format!("participants.{name}.{kind}[{i}]"), message.to_string());
            }
        }
    }
    let mut participant = Participant::new(name.to_owned(), hashes, PatternSet::new(p.publish.clone()));
    participant.subscribe = PatternSet::new(p.subscribe.clone());
    participant.request = PatternSet::new(p.request.clone());
    participant.respond = PatternSet::new(p.respond.clone());
    participant.kv_read = p.kv_read.clone();
    participant.kv_write = p.kv_write.clone();
    participant.admin = p.admin;
    for (i, grant) in p.contracts.iter().enumerate() {
        let name = grant.strip_suffix('*').unwrap_or(grant);
        if grant.is_empty()
            || name.contains('*')
            || !(name.is_empty() || crate::contracts::registry::valid_name_part(name))
        {
            problems.in_config(
                format!("participants.{}.contracts[{i}]", participant.name),
                "a contract name (a-z, 0-9, '.', '_', '-'), or a prefix of one ending in '*' (crm.*)",
            );
        }
    }
    participant.contracts = p.contracts.clone();
    participant
}

/// A request is published on its subject, so a stream storing that subject keeps it and
/// fans it out: sending requests there needs the right to publish there too.
pub(super) fn check_requests_publishable(config: &Config, streams: &[StreamDef], problems: &mut Problems) {
    for (name, p) in &config.participants {
        for (i, pattern) in p.request.iter().enumerate() {
            for def in streams {
                for stored in &def.config.subjects {
                    let Some(shared) = subject::intersection(pattern, stored) else { continue };
                    if !p.publish.iter().any(|allowed| subject::covers(allowed, &shared)) {
                        problems.in_config(
                            format!("participants.{name}.request[{i}]"),
                            format!(
                                "{pattern} reaches {shared}, which stream {} stores, but {name} may not publish there: \
                                 add {shared} to its publish patterns or narrow the request pattern",
                                def.name()
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Why a configured token cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum TokenError {
    #[error(
        "sha256 must be 64 hexadecimal characters (the token's SHA-256, not the token); if this is the token itself, \
         write {{ sha256 = \"{hash}\" }} instead (printf %s \"$TOKEN\" | sha256sum), or read it from \
         {{ env = \"VAR\" }} or {{ file = \"path\" }}"
    )]
    Digest { hash: String },
    #[error(
        "a token is never written in the configuration: write its SHA-256, {{ sha256 = \"{hash}\" }} for this one \
         (printf %s \"$TOKEN\" | sha256sum), or read it from {{ env = \"VAR\" }} or {{ file = \"path\" }}; \
         and replace the token, which has been in a file"
    )]
    Plain { hash: String },
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("{path}: {source}", path = .path.display())]
    File { path: std::path::PathBuf, source: std::io::Error },
    #[error("a token must be at least 16 characters")]
    Short,
}

fn resolve_token(config: &Config, source: &TokenSource) -> Result<[u8; 32], TokenError> {
    let token = match source {
        TokenSource::Sha256(hex_digest) => {
            let mut hash = [0u8; 32];
            return hex::decode_to_slice(hex_digest.trim(), &mut hash)
                .map(|()| hash)
                .map_err(|_| TokenError::Digest { hash: hex::encode(hash_token(hex_digest.trim())) });
        }
        TokenSource::Plain(token) => {
            return Err(TokenError::Plain { hash: hex::encode(hash_token(token.expose().trim())) });
        }
        TokenSource::Env(var) => std::env::var(var).map_err(|_| TokenError::Env(var.clone()))?,
        TokenSource::File(path) => {
            let path = config.resolve(path);
            fs::read_to_string(&path).map_err(|source| TokenError::File { path, source })?
        }
    };
    let token = token.trim();
    if token.len() < 16 {
        return Err(TokenError::Short);
    }
    Ok(hash_token(token))
}
