//! The breaking-change check run as the built binary: `magistral contracts diff` exit codes and
//! `magistral check` (with and without `--against`) refusing a version that breaks its mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_magistral");

fn magistral(args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(BIN).args(args).env_remove("MAGISTRAL_CONFIG").output().expect("run magistral");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn example_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    crate::common::gateway::copy_example(dir.path());
    let config = dir.path().join("magistral.toml");
    (dir, config)
}

#[test]
fn contracts_diff_answers_each_verdict_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = write(
        d,
        "old.json",
        r#"{"type":"object","properties":{"kind":{"enum":["a","b"]}},"additionalProperties":false}"#,
    );
    let required = write(
        d,
        "required.json",
        r#"{"type":"object","properties":{"kind":{"enum":["a","b"]}},"additionalProperties":false,"required":["kind"]}"#,
    );
    let widened = write(
        d,
        "widened.json",
        r#"{"type":"object","properties":{"kind":{"enum":["a","b","c"]}},"additionalProperties":false}"#,
    );
    let pattern = write(
        d,
        "pattern.json",
        r#"{"type":"object","properties":{"kind":{"enum":["a","b"]}},"additionalProperties":false,"dependentRequired":{"kind":["x"]}}"#,
    );
    let broken = write(d, "broken.json", r#"{"type": 12"#);
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();

    let (code, out, err) = magistral(&["contracts", "diff", &s(&old), &s(&required)]);
    assert_eq!(code, 1, "required added breaks producers: {out}{err}");
    assert!(out.contains("/required: producers breaks, consumers compatible"), "{out}");
    assert!(out.contains("\"kind\" is now required"), "{out}");

    let (code, out, err) = magistral(&["contracts", "diff", &s(&old), &s(&widened)]);
    assert_eq!(code, 0, "an enum widened keeps producers: {out}{err}");
    assert!(out.contains("/properties/kind/enum: producers compatible, consumers breaks"), "{out}");
    let (code, out, _) = magistral(&["contracts", "diff", "--compatibility", "forward", &s(&old), &s(&widened)]);
    assert_eq!(code, 1, "but breaks consumers: {out}");
    let (code, out, _) = magistral(&["contracts", "diff", "--compatibility", "none", &s(&old), &s(&widened)]);
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = magistral(&["contracts", "diff", &s(&old), &s(&pattern)]);
    assert_eq!(code, 2, "an unknown keyword may break: {out}");
    assert!(out.contains("/dependentRequired: producers may break, consumers may break"), "{out}");

    let (code, out, _) = magistral(&["contracts", "diff", &s(&old), &s(&old)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 change(s)"), "{out}");

    let (code, _, err) = magistral(&["contracts", "diff", &s(&old), &s(&broken)]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("broken.json: not JSON"), "{err}");
    let (code, _, _) = magistral(&["contracts", "diff", &s(&old), &s(&widened), "--compatibility", "sideways"]);
    assert_eq!(code, 64);
}

#[test]
fn check_against_refuses_a_version_changed_in_place_and_names_the_change() {
    let (_old_dir, old_config) = example_copy();
    let (new_dir, new_config) = example_copy();
    let schema = new_dir.path().join("contracts/sales-order.v1.json");
    edit(&schema, r#""required": ["order_id","#, r#""required": ["channel", "order_id","#);
    edit(&schema, r#""properties": {"#, r#""properties": { "channel": { "type": "string" },"#);

    let old = old_config.parent().unwrap().to_str().unwrap().to_owned();
    let (code, out, err) = magistral(&["check", "--config", new_config.to_str().unwrap(), "--against", &old]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains(
            "sales-order.v1.json: /required: sales-order v1 breaks producers of v1 of the other checkout (compatibility = \"backward\")"
        ),
        "{err}"
    );
    assert!(err.contains("\"channel\" is now required"), "{err}");
    // The old sample is the evidence, and itself a refusal.
    assert!(out.contains("samples/sales-order.valid.json (v1) is refused by v1"), "{out}");
    assert!(err.contains("sales-order.valid.json: (sample): a valid document of sales-order v1 is refused"), "{err}");
    assert!(!out.contains("configuration OK"), "{out}");

    // The same checkout against itself: nothing changed.
    let (code, out, err) = magistral(&["check", "--config", old_config.to_str().unwrap(), "--against", &old]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");

    // A version gone from this checkout is reported, not refused.
    edit(
        &new_config,
        "version = 1\n# Schema file in contracts_dir.\nfile = \"sales-order.v1.json\"",
        "version = 2\n# Schema file in contracts_dir.\nfile = \"sales-order.v1.json\"",
    );
    let (code, out, err) = magistral(&["check", "--config", new_config.to_str().unwrap(), "--against", &old]);
    assert_eq!(code, 64, "v2 still breaks v1 (from the other checkout): {out}{err}");
    assert!(out.contains("sales-order v1: removed"), "{out}");
    assert!(err.contains("sales-order v2 breaks producers of v1 of the other checkout"), "{err}");

    let (code, _, err) = magistral(&["check", "--config", new_config.to_str().unwrap(), "--against", "/nonexistent"]);
    assert_eq!(code, 64);
    assert!(err.contains("--against") && err.contains("/nonexistent: (file): no such file"), "{err}");
}

#[test]
fn check_compares_each_version_with_the_previous_under_its_mode() {
    let (dir, config) = example_copy();
    let contracts = dir.path().join("contracts");
    let v1 = std::fs::read_to_string(contracts.join("sales-order.v1.json")).unwrap();
    // A longer e-mail allowed: producers of v1 are fine, consumers of v1 may see one too long.
    let v2 = v1.replacen(r#""format": "email", "maxLength": 254"#, r#""format": "email", "maxLength": 320"#, 1);
    assert_ne!(v1, v2);
    std::fs::write(contracts.join("sales-order.v2.json"), v2).unwrap();
    let binding = "\n[[contracts]]\nname = \"sales-order\"\nversion = 2\nfile = \"sales-order.v2.json\"\nsubjects = [\"orders.created\"]\n";
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}{binding}")).unwrap();

    let (code, out, err) = magistral(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "backward by default: {out}{err}");
    assert!(
        out.contains("sales-order v2 against v1, compatibility = \"backward\": producers compatible, consumers breaks"),
        "{out}"
    );
    assert!(
        out.contains("/properties/customer/properties/email/maxLength: producers compatible, consumers breaks"),
        "{out}"
    );
    assert!(out.contains("samples/sales-order.valid.json (v1) is accepted by v2"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}compatibility = \"forward\"\n")).unwrap();
    let (code, out, err) = magistral(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("sales-order.v2.json: /properties/customer/properties/email/maxLength: sales-order v2 breaks consumers of v1 (compatibility = \"forward\")"),
        "{err}"
    );
}
