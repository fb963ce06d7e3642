//! Contracts from `[[contracts]]`: bindings checked against streams, responders and
//! requesters, schema files read and compiled.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::problems::Problems;
use crate::config::{Config, ContractBinding};
use crate::contracts::Contract;
use crate::streams::StreamDef;
use crate::subject;

/// Every contract whose schema compiles, with the problems of each collected.
pub(super) fn contracts(config: &Config, streams: &[StreamDef], problems: &mut Problems) -> Vec<Contract> {
    let contracts_dir = config.resolve(&config.contracts_dir);
    let mut contracts: Vec<Contract> = Vec::new();
    for (i, binding) in config.contracts.iter().enumerate() {
        let field = |f: &str| format!("contracts[{i}].{f}");
        check_binding(config, binding, &contracts, streams, &field, problems);
        let file = contracts_dir.join(&binding.file);
        let Some(schema) = read_schema(&file, &field("file"), problems) else { continue };
        match Contract::compile(binding.name.clone(), binding.version, file.clone(), binding.subjects.clone(), schema) {
            Ok(mut contract) => {
                contract.replies = binding.replies.clone();
                contracts.push(contract);
            }
            Err(error) => problems.push(Some(file), "(schema)", format!("not a valid JSON Schema 2020-12: {error}")),
        }
    }
    contracts
}

/// The binding's patterns, its uniqueness, and that something uses each subject.
fn check_binding(
    config: &Config,
    binding: &ContractBinding,
    earlier: &[Contract],
    streams: &[StreamDef],
    field: &impl Fn(&str) -> String,
    problems: &mut Problems,
) {
    // A contract with neither subjects nor replies may still govern a directory.
    for (j, pattern) in binding.replies.iter().enumerate() {
        if let Err(message) = subject::validate_pattern(pattern) {
            problems.in_config(field(&format!("replies[{j}]")), message.to_string());
        }
    }
    if earlier.iter().any(|c| c.name == binding.name && c.version == binding.version) {
        problems.in_config(field("version"), format!("{} v{} is declared twice", binding.name, binding.version));
    }
    for (j, pattern) in binding.subjects.iter().enumerate() {
        if let Err(message) = subject::validate_pattern(pattern) {
            problems.in_config(field(&format!("subjects[{j}]")), message.to_string());
        } else if !used(config, streams, pattern) {
            problems.in_config(
                field(&format!("subjects[{j}]")),
                format!(
                    "no stream in {} stores {pattern}, and no responder or requester uses it",
                    config.resolve(&config.streams_dir).display()
                ),
            );
        }
    }
}

/// Whether a stream stores `pattern`, or a responder answers or a requester sends there.
fn used(config: &Config, streams: &[StreamDef], pattern: &str) -> bool {
    streams.iter().any(|s| s.config.subjects.iter().any(|sp| subject::covers(sp, pattern)))
        || config.responders.values().flat_map(|r| &r.subjects).any(|rs| subject::covers(rs, pattern))
        || config.participants.values().flat_map(|p| &p.request).any(|rp| subject::covers(rp, pattern))
}

/// The schema file as JSON; `file_field` names the binding's `file` for a missing file.
fn read_schema(file: &Path, file_field: &str, problems: &mut Problems) -> Option<Value> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            problems.in_config(file_field, format!("{}: {e}", file.display()));
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(schema) => Some(schema),
        Err(e) => {
            problems.push(Some(PathBuf::from(file)), "(file)", format!("not JSON: {e}"));
            None
        }
    }
}
