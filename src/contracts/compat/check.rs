//! The breaking-change part of `magistral check` (every contract version against the one
//! before it, and with `--against DIR` against another checkout) and `magistral contracts diff`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Compatibility, Report, Verdict, diff};
use crate::config::{Config, ConfigError, ConfigProblem};

/// One contract version as found in a configuration.
#[derive(Debug)]
struct Version {
    name: String,
    version: u32,
    mode: Compatibility,
    file: PathBuf,
    schema: Value,
    /// `samples/` beside the contracts folder: where its valid example documents are.
    samples: PathBuf,
}

/// What `check` found: the comparisons made (printed whatever the outcome) and the versions
/// refused.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One block per comparison, with each change, its verdicts and the samples' evidence.
    pub report: String,
    /// Changes that break a version's mode, each naming the schema file and pointer.
    pub problems: Vec<ConfigProblem>,
}

impl Outcome {
    /// # Errors
    /// A version breaks its mode.
    pub fn result(&self) -> Result<(), ConfigError> {
        if self.problems.is_empty() { Ok(()) } else { Err(ConfigError { problems: self.problems.clone() }) }
    }
}

/// Compares every contract version of `config` with the previous version of the same
/// contract; with `against`, also each version with the same version in that checkout (a
/// directory holding `magistral.toml`, or the file), whose versions are the previous ones
/// when this configuration no longer has them.
///
/// # Errors
/// The other checkout's configuration does not load.
pub fn check(config: &Config, against: Option<&Path>) -> Result<Outcome, ConfigError> {
    let current = versions(config);
    let before = match against {
        Some(path) => {
            let file = if path.is_dir() { path.join("magistral.toml") } else { path.to_path_buf() };
            Some(versions(&Config::load(Some(&file))?))
        }
        None => None,
    };
    let mut outcome = Outcome::default();
    let mut by_name: BTreeMap<&str, Vec<&Version>> = BTreeMap::new();
    for v in &current {
        by_name.entry(&v.name).or_default().push(v);
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|v| v.version);
    }
    for v in by_name.values().flatten() {
        let old_same = before.iter().flatten().find(|o| o.name == v.name && o.version == v.version);
        if let Some(old) = old_same {
            compare(old, v, " of the other checkout", &mut outcome);
        }
        let previous = by_name[v.name.as_str()].iter().rev().find(|p| p.version < v.version).copied().or_else(|| {
            before.iter().flatten().filter(|o| o.name == v.name && o.version < v.version).max_by_key(|o| o.version)
        });
        if let Some(previous) = previous {
            let mine = by_name[v.name.as_str()].iter().any(|p| std::ptr::eq(*p, previous));
            compare(previous, v, if mine { "" } else { " of the other checkout" }, &mut outcome);
        }
    }
    for old in before.iter().flatten() {
        if !current.iter().any(|v| v.name == old.name && v.version == old.version) {
            let _ = writeln!(
                outcome.report,
                "{} v{}: removed (in the other checkout, not in this one): publishers still naming it are refused",
                old.name, old.version
            );
        }
    }
    Ok(outcome)
}

/// The contract versions of `config` whose schema files read as JSON (the catalog reports
/// the others).
fn versions(config: &Config) -> Vec<Version> {
    let dir = config.resolve(&config.contracts_dir);
    let samples = dir.parent().unwrap_or(Path::new(".")).join("samples");
    config
        .contracts
        .iter()
        .filter_map(|b| {
            let file = dir.join(&b.file);
            let schema = serde_json::from_str(&fs::read_to_string(&file).ok()?).ok()?;
            Some(Version {
                name: b.name.clone(),
                version: b.version,
                mode: b.compatibility,
                file,
                schema,
                samples: samples.clone(),
            })
        })
        .collect()
}

/// `old` (from `origin`: this checkout, or " of the other checkout") against `new` under
/// `new`'s mode: the report block, and a problem per violation.
fn compare(old: &Version, new: &Version, origin: &str, outcome: &mut Outcome) {
    let report = diff(&old.schema, &new.schema);
    let mode = new.mode;
    let same_version = old.version == new.version;
    if same_version && report.changes.is_empty() {
        return;
    }
    let _ = writeln!(
        outcome.report,
        "{} v{} against v{}{origin}, compatibility = {mode:?}: producers {}, consumers {}",
        new.name,
        new.version,
        old.version,
        report.producers(),
        report.consumers(),
        mode = mode.to_string(),
    );
    write_changes(&report, &mut outcome.report);
    for change in report.violations(mode) {
        let side = match mode {
            Compatibility::Backward => "producers",
            Compatibility::Forward => "consumers",
            _ if change.producers != Verdict::Compatible => "producers",
            _ => "consumers",
        };
        let verdict = if side == "producers" { change.producers } else { change.consumers };
        let via = change.via.iter().map(|v| format!(" (via {v})")).collect::<String>();
        outcome.problems.push(ConfigProblem {
            file: Some(new.file.clone()),
            field: if change.pointer.is_empty() { "(root)".into() } else { change.pointer.clone() },
            message: format!(
                "{} v{} {verdict} {side} of v{}{origin} (compatibility = \"{mode}\"){via}: {}",
                new.name, new.version, old.version, change.reason
            ),
            line: None,
        });
    }
    // The old version's samples, validated by the new schema: evidence beside the verdict.
    let Ok(validator) = jsonschema::draft202012::options().should_validate_formats(true).build(&new.schema) else {
        return;
    };
    for sample in samples(old) {
        let Some(doc) = fs::read_to_string(&sample).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) else {
            continue;
        };
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", display_pointer(&e.instance_path().to_string())))
            .collect();
        if errors.is_empty() {
            let _ = writeln!(
                outcome.report,
                "  evidence: {} (v{}) is accepted by v{}",
                sample.display(),
                old.version,
                new.version
            );
        } else {
            let _ = writeln!(
                outcome.report,
                "  evidence: {} (v{}) is refused by v{}: {}",
                sample.display(),
                old.version,
                new.version,
                errors.join("; ")
            );
            if matches!(mode, Compatibility::Backward | Compatibility::Full) {
                outcome.problems.push(ConfigProblem {
                    file: Some(sample.clone()),
                    field: "(sample)".into(),
                    message: format!(
                        "a valid document of {} v{} is refused by v{} (compatibility = \"{mode}\"): {}",
                        new.name,
                        old.version,
                        new.version,
                        errors.join("; ")
                    ),
                    line: None,
                });
            }
        }
    }
}

fn display_pointer(p: &str) -> &str {
    if p.is_empty() { "(root)" } else { p }
}

/// The old version's valid samples: `<name>.v<version>.valid.json` when there is one,
/// otherwise `<name>.valid.json`.
fn samples(v: &Version) -> Vec<PathBuf> {
    let versioned = v.samples.join(format!("{}.v{}.valid.json", v.name, v.version));
    if versioned.is_file() {
        return vec![versioned];
    }
    let plain = v.samples.join(format!("{}.valid.json", v.name));
    if plain.is_file() { vec![plain] } else { Vec::new() }
}

fn write_changes(report: &Report, out: &mut String) {
    for change in &report.changes {
        let _ = writeln!(out, "  {change}");
    }
}

/// Exit code of `magistral contracts diff` when the comparison is compatible for the mode.
pub const DIFF_COMPATIBLE: u8 = 0;
/// … when a change breaks a side the mode protects.
pub const DIFF_BREAKS: u8 = 1;
/// … when a change may break one (not decided structurally), and none surely breaks.
pub const DIFF_MAY_BREAK: u8 = 2;
/// … when a file cannot be read or is not a schema (sysexits EX_DATAERR).
pub const DIFF_BAD_INPUT: u8 = 65;

/// `magistral contracts diff OLD NEW`: the changes with their verdicts on stdout, and the exit
/// code for `mode` (`DIFF_*`).
#[must_use]
pub fn diff_files(old: &Path, new: &Path, mode: Compatibility) -> u8 {
    let read = |p: &Path| -> Result<Value, String> {
        let text = fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", p.display()))?;
        jsonschema::draft202012::new(&schema)
            .map_err(|e| format!("{}: not a valid JSON Schema 2020-12: {e}", p.display()))?;
        Ok(schema)
    };
    let (old_schema, new_schema) = match (read(old), read(new)) {
        (Ok(o), Ok(n)) => (o, n),
        (o, n) => {
            for e in [o.err(), n.err()].into_iter().flatten() {
                eprintln!("{e}");
            }
            return DIFF_BAD_INPUT;
        }
    };
    let report = diff(&old_schema, &new_schema);
    let mut out = String::new();
    write_changes(&report, &mut out);
    let verdict = report.verdict(mode);
    let _ = writeln!(
        out,
        "{} change(s); producers {}, consumers {}; compatibility = \"{mode}\": {}",
        report.changes.len(),
        report.producers(),
        report.consumers(),
        match verdict {
            Verdict::Compatible => "compatible",
            Verdict::MayBreak => "may break",
            Verdict::Breaks => "breaking",
        }
    );
    print!("{out}");
    match verdict {
        Verdict::Compatible => DIFF_COMPATIBLE,
        Verdict::MayBreak => DIFF_MAY_BREAK,
        Verdict::Breaks => DIFF_BREAKS,
    }
}
