//! The corpus of schema pairs (tests/compat/corpus.json), each with the verdict expected for
//! producers and consumers; every mismatch is reported at once.

use serde::Deserialize;
use serde_json::Value;

use super::*;

#[derive(Deserialize)]
struct Case {
    name: String,
    old: Value,
    new: Value,
    producers: Verdict,
    consumers: Verdict,
    /// A pointer some change must be reported at, when the case cares where.
    #[serde(default)]
    pointer: Option<String>,
}

#[test]
fn corpus_verdicts_match() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/corpus.json");
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 40, "the corpus has {} pairs", cases.len());
    let mut names = std::collections::HashSet::new();
    let mut mismatches = Vec::new();
    for case in &cases {
        assert!(names.insert(&case.name), "{} is in the corpus twice", case.name);
        for (old, new) in [(&case.old, &case.new)] {
            // Both schemas are valid 2020-12 schemas, as contracts must be.
            for s in [old, new] {
                if let Err(e) = jsonschema::draft202012::new(s) {
                    mismatches.push(format!("{}: not a schema: {e}", case.name));
                }
            }
        }
        let report = diff(&case.old, &case.new);
        let got = (report.producers(), report.consumers());
        if got != (case.producers, case.consumers) {
            let changes: Vec<String> = report.changes.iter().map(ToString::to_string).collect();
            mismatches.push(format!(
                "{}: expected producers {}, consumers {}; got producers {}, consumers {}\n      {}",
                case.name,
                case.producers,
                case.consumers,
                got.0,
                got.1,
                changes.join("\n      ")
            ));
        }
        if let Some(pointer) = &case.pointer
            && !report.changes.iter().any(|c| &c.pointer == pointer)
        {
            mismatches.push(format!("{}: no change reported at {pointer}: {:?}", case.name, report.changes));
        }
        // The same schema against itself changes nothing.
        for s in [&case.old, &case.new] {
            let same = diff(s, s);
            if !same.changes.is_empty() {
                mismatches.push(format!("{}: a schema differs from itself: {:?}", case.name, same.changes));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} mismatch(es):\n  {}", mismatches.len(), mismatches.join("\n  "));
}

#[test]
fn modes_protect_their_sides() {
    let old =
        serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false});
    let new = serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false, "required": ["a"]});
    let report = diff(&old, &new);
    assert_eq!(report.verdict(Compatibility::Backward), Verdict::Breaks);
    assert_eq!(report.verdict(Compatibility::Forward), Verdict::Compatible);
    assert_eq!(report.verdict(Compatibility::Full), Verdict::Breaks);
    assert_eq!(report.verdict(Compatibility::None), Verdict::Compatible);
    assert_eq!(report.violations(Compatibility::Backward).count(), 1);
    assert_eq!(report.violations(Compatibility::Forward).count(), 0);
}
