//! The catalog: participants, contracts and streams built from configuration, checked as a
//! whole (`magistral check`), and consulted on every request.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigProblem, TokenSource};
use crate::contracts::{Contract, Contracts};
use crate::delivery::subscription::Subscription;
use crate::delivery::system;
use crate::directory::Directory;
use crate::inbound::InboundRoute;
use crate::participants::{Participant, Participants, hash_token};
use crate::request::Responder;
use crate::streams::StreamDef;
use crate::subject::{self, PatternSet};

/// Everything loaded from configuration that requests consult.
#[derive(Debug)]
pub struct Catalog {
    pub participants: Participants,
    pub contracts: Contracts,
    /// Declared streams, then the gateway's system streams.
    pub streams: Vec<StreamDef>,
    pub subscriptions: Vec<Arc<Subscription>>,
    pub responders: Vec<Arc<Responder>>,
    pub directories: Vec<Directory>,
    pub inbound: Vec<InboundRoute>,
    pub require_contract: bool,
}

impl Catalog {
    /// Loads and cross-checks participants, stream files and contract files.
    ///
    /// Every problem is collected before returning, so one run of `magistral check` lists
    /// all of them.
    ///
    /// # Errors
    /// Each problem names its file and field.
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let config_file = config.source.clone();
        let mut problem = |file: Option<PathBuf>, field: String, message: String| {
            problems.push(ConfigProblem { file, field, message });
        };

        // Participants.
        let mut participants = Vec::new();
        for (name, p) in &config.participants {
            if subject::validate_publish_subject(name, 64).is_err() || name.contains('.') {
                problem(
                    config_file.clone(),
                    format!("participants.{name}"),
                    "a participant name holds only A-Z, a-z, 0-9, '_' and '-'".into(),
                );
            }
            if p.tokens.is_empty() {
                problem(
                    config_file.clone(),
                    format!("participants.{name}.tokens"),
                    "at least one token is needed".into(),
                );
            }
            let mut hashes = Vec::new();
            for (i, source) in p.tokens.iter().enumerate() {
                let field = format!("participants.{name}.tokens[{i}]");
                match resolve_token(config, source) {
                    Ok(hash) => hashes.push(hash),
                    Err(message) => problem(config_file.clone(), field, message),
                }
            }
            for (kind, patterns) in
                [("publish", &p.publish), ("subscribe", &p.subscribe), ("request", &p.request), ("respond", &p.respond)]
            {
                for (i, pattern) in patterns.iter().enumerate() {
                    if let Err(message) = subject::validate_pattern(pattern) {
                        problem(config_file.clone(), format!("participants.{name}.{kind}[{i}]"), message);
                    }
                }
            }
            let mut participant = Participant::new(name.clone(), hashes, PatternSet::new(p.publish.clone()));
            participant.subscribe = PatternSet::new(p.subscribe.clone());
            participant.request = PatternSet::new(p.request.clone());
            participant.respond = PatternSet::new(p.respond.clone());
            participant.kv_read = p.kv_read.clone();
            participant.kv_write = p.kv_write.clone();
            participant.admin = p.admin;
            participants.push(participant);
        }

        // Streams.
        let streams_dir = config.resolve(&config.streams_dir);
        let mut streams: Vec<StreamDef> = Vec::new();
        match json_files(&streams_dir) {
            Ok(files) => {
                for file in files {
                    match fs::read_to_string(&file) {
                        Err(e) => problem(Some(file), "(file)".into(), e.to_string()),
                        Ok(text) => match StreamDef::parse(file.clone(), &text) {
                            Err((field, message)) => problem(Some(file), field, message),
                            Ok(def) => {
                                if let Some(other) = streams.iter().find(|s| s.name() == def.name()) {
                                    problem(
                                        Some(file),
                                        "name".into(),
                                        format!("stream {} is also declared in {}", def.name(), other.file.display()),
                                    );
                                } else {
                                    for s in &def.config.subjects {
                                        if let Some(other) = streams.iter().find(|o| {
                                            o.config
                                                .subjects
                                                .iter()
                                                .any(|p| subject::covers(p, s) || subject::covers(s, p))
                                        }) {
                                            problem(
                                                Some(file.clone()),
                                                "subjects".into(),
                                                format!(
                                                    "{s} overlaps stream {} ({})",
                                                    other.name(),
                                                    other.file.display()
                                                ),
                                            );
                                        }
                                    }
                                    streams.push(def);
                                }
                            }
                        },
                    }
                }
            }
            Err(e) => problem(config_file.clone(), "streams_dir".into(), format!("{}: {e}", streams_dir.display())),
        }

        // A request is published on its subject, so a stream storing that subject keeps it
        // and fans it out: sending requests there needs the right to publish there too.
        for (name, p) in &config.participants {
            for (i, pattern) in p.request.iter().enumerate() {
                for def in &streams {
                    for stored in &def.config.subjects {
                        let Some(shared) = subject::intersection(pattern, stored) else { continue };
                        if !p.publish.iter().any(|allowed| subject::covers(allowed, &shared)) {
                            problem(
                                config_file.clone(),
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

        // Contracts.
        let contracts_dir = config.resolve(&config.contracts_dir);
        let mut contracts = Vec::new();
        for (i, binding) in config.contracts.iter().enumerate() {
            let field = |f: &str| format!("contracts[{i}].{f}");
            // A contract with neither subjects nor replies may still govern a directory.
            for (j, pattern) in binding.replies.iter().enumerate() {
                if let Err(message) = subject::validate_pattern(pattern) {
                    problem(config_file.clone(), field(&format!("replies[{j}]")), message);
                }
            }
            if contracts.iter().any(|c: &Contract| c.name == binding.name && c.version == binding.version) {
                problem(
                    config_file.clone(),
                    field("version"),
                    format!("{} v{} is declared twice", binding.name, binding.version),
                );
            }
            for (j, pattern) in binding.subjects.iter().enumerate() {
                if let Err(message) = subject::validate_pattern(pattern) {
                    problem(config_file.clone(), field(&format!("subjects[{j}]")), message);
                } else if !streams.iter().any(|s| s.config.subjects.iter().any(|sp| subject::covers(sp, pattern)))
                    && !config.responders.values().flat_map(|r| &r.subjects).any(|rs| subject::covers(rs, pattern))
                    && !config.participants.values().flat_map(|p| &p.request).any(|rp| subject::covers(rp, pattern))
                {
                    problem(
                        config_file.clone(),
                        field(&format!("subjects[{j}]")),
                        format!(
                            "no stream in {} stores {pattern}, and no responder or requester uses it",
                            streams_dir.display()
                        ),
                    );
                }
            }
            let file = contracts_dir.join(&binding.file);
            let schema = match fs::read_to_string(&file) {
                Err(e) => {
                    problem(config_file.clone(), field("file"), format!("{}: {e}", file.display()));
                    continue;
                }
                Ok(text) => match serde_json::from_str(&text) {
                    Err(e) => {
                        problem(Some(file), "(file)".into(), format!("not JSON: {e}"));
                        continue;
                    }
                    Ok(schema) => schema,
                },
            };
            match Contract::compile(
                binding.name.clone(),
                binding.version,
                file.clone(),
                binding.subjects.clone(),
                schema,
            ) {
                Ok(mut contract) => {
                    contract.replies = binding.replies.clone();
                    contracts.push(contract);
                }
                Err(message) => {
                    problem(Some(file), "(schema)".into(), format!("not a valid JSON Schema 2020-12: {message}"))
                }
            }
        }

        // Directories (their buckets' streams can be subscribed to).
        let mut directories = Vec::new();
        for (name, cfg) in &config.directories {
            match Directory::resolve(name, cfg, config) {
                Ok(d) => directories.push(d),
                Err(list) => {
                    for (field, message) in list {
                        let field = if field.is_empty() {
                            format!("directories.{name}")
                        } else {
                            format!("directories.{name}.{field}")
                        };
                        problem(config_file.clone(), field, message);
                    }
                }
            }
        }

        // Inbound adapters.
        let mut inbound = Vec::new();
        for (name, cfg) in &config.inbound {
            match InboundRoute::resolve(name, cfg, config) {
                Ok(r) => inbound.push(r),
                Err(list) => {
                    for (field, message) in list {
                        problem(config_file.clone(), format!("inbound.{name}.{field}"), message);
                    }
                }
            }
        }

        // Responders.
        let mut responders = Vec::new();
        for (name, cfg) in &config.responders {
            let permissions = config.participants.get(&cfg.participant).map(|p| p.respond.as_slice());
            match Responder::resolve(name, cfg, config, permissions) {
                Ok(r) => responders.push(Arc::new(r)),
                Err(list) => {
                    for (field, message) in list {
                        let field = if field.is_empty() {
                            format!("responders.{name}")
                        } else {
                            format!("responders.{name}.{field}")
                        };
                        problem(config_file.clone(), field, message);
                    }
                }
            }
        }

        // Subscriptions, over the declared, system and directory streams.
        let declared_streams = streams.len();
        streams.extend(system::streams(&config.system));
        streams.extend(directories.iter().map(Directory::stream));
        let mut subscriptions = Vec::new();
        for (name, cfg) in &config.subscriptions {
            let permissions = config.participants.get(&cfg.participant).map(|p| p.subscribe.as_slice());
            match Subscription::resolve(name, cfg, config, &streams, permissions) {
                Ok(sub) => subscriptions.push(Arc::new(sub)),
                Err(list) => {
                    for (field, message) in list {
                        let field = if field.is_empty() {
                            format!("subscriptions.{name}")
                        } else {
                            format!("subscriptions.{name}.{field}")
                        };
                        problem(config_file.clone(), field, message);
                    }
                }
            }
        }
        for def in &streams[..declared_streams] {
            if def.name().starts_with("MAGISTRAL_")
                || def.config.subjects.iter().any(|s| s.starts_with(system::RESERVED_PREFIX) || s == ">")
            {
                problem(
                    Some(def.file.clone()),
                    "name".into(),
                    "MAGISTRAL_* streams and magistral.> subjects belong to the gateway".into(),
                );
            }
        }

        if problems.is_empty() {
            Ok(Self {
                subscriptions,
                responders,
                directories,
                inbound,
                participants: Participants::new(participants),
                contracts: Contracts::new(contracts),
                streams,
                require_contract: config.require_contract,
            })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The declared stream that stores `subject`.
    #[must_use]
    pub fn stream_for(&self, subject: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|s| s.binds(subject))
    }

    #[must_use]
    pub fn directory(&self, bucket: &str) -> Option<&Directory> {
        self.directories.iter().find(|d| d.bucket == bucket)
    }

    #[must_use]
    pub fn subscription(&self, name: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.iter().find(|s| s.name == name)
    }
}

fn resolve_token(config: &Config, source: &TokenSource) -> Result<[u8; 32], String> {
    let token = match source {
        TokenSource::Sha256(hex_digest) => {
            let mut hash = [0u8; 32];
            return hex::decode_to_slice(hex_digest.trim(), &mut hash)
                .map(|()| hash)
                .map_err(|_| "sha256 must be 64 hexadecimal characters".to_owned());
        }
        TokenSource::Env(var) => std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?,
        TokenSource::File(path) => {
            let path = config.resolve(path);
            fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let token = token.trim();
    if token.len() < 16 {
        return Err("a token must be at least 16 characters".into());
    }
    Ok(hash_token(token))
}

/// The `*.json` files of a folder, sorted by name.
fn json_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}
