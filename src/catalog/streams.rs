//! Declared streams from `streams/*.json`: parsed, and checked against each other and
//! against the names and subjects the gateway keeps for itself.

use std::fs;
use std::path::{Path, PathBuf};

use super::problems::Problems;
use crate::config::Config;
use crate::delivery::system;
use crate::streams::StreamDef;
use crate::subject;

/// The declared streams, in file-name order; a file that fails is left out.
pub(super) fn declared(config: &Config, problems: &mut Problems) -> Vec<StreamDef> {
    let streams_dir = config.resolve(&config.streams_dir);
    let files = match json_files(&streams_dir) {
        Ok(files) => files,
        Err(e) => {
            problems.in_config("streams_dir", format!("{}: {e}", streams_dir.display()));
            return Vec::new();
        }
    };
    let mut streams: Vec<StreamDef> = Vec::new();
    for file in files {
        if let Some(def) = parse(file, problems)
            && unique(&def, &streams, problems)
        {
            streams.push(def);
        }
    }
    streams
}

fn parse(file: PathBuf, problems: &mut Problems) -> Option<StreamDef> {
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            problems.push(Some(file), "(file)", e.to_string());
            return None;
        }
    };
    match StreamDef::parse(file.clone(), &text) {
        Ok(def) => Some(def),
        Err((field, message)) => {
            problems.push(Some(file), field, message);
            None
        }
    }
}

/// Whether `def` may join `earlier`: a name declared twice is refused; subjects overlapping
/// another stream are reported, and the stream is kept.
fn unique(def: &StreamDef, earlier: &[StreamDef], problems: &mut Problems) -> bool {
    if let Some(other) = earlier.iter().find(|s| s.name() == def.name()) {
        problems.push(
            Some(def.file.clone()),
            "name",
            format!("stream {} is also declared in {}", def.name(), other.file.display()),
        );
        return false;
    }
    for s in &def.config.subjects {
        if let Some(other) =
            earlier.iter().find(|o| o.config.subjects.iter().any(|p| subject::covers(p, s) || subject::covers(s, p)))
        {
            problems.push(
                Some(def.file.clone()),
                "subjects",
                format!("{s} overlaps stream {} ({})", other.name(), other.file.display()),
            );
        }
    }
    true
}

/// `MAGISTRAL_*` streams and `magistral.>` subjects belong to the gateway.
pub(super) fn check_reserved(declared: &[StreamDef], problems: &mut Problems) {
    for def in declared {
        if def.name().starts_with("MAGISTRAL_")
            || def.config.subjects.iter().any(|s| s.starts_with(system::RESERVED_PREFIX) || s == ">")
        {
            problems.push(
                Some(def.file.clone()),
                "name",
                "MAGISTRAL_* streams and magistral.> subjects belong to the gateway",
            );
        }
    }
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
