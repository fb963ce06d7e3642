//! `magistral check` says everything at once: a bad setting no longer hides a broken contract
//! or a breaking version; each problem has its file, line and field (written one way); a
//! plain token is answered with how to hash it; no configuration file is said as such.

use std::process::Command;

use crate::common::gateway::token_sha256;

const BIN: &str = env!("CARGO_BIN_EXE_magistral");

/// Runs `magistral <args>` in `dir` with no `MAGISTRAL_*` settings from the shell.
fn magistral(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("MAGISTRAL_") {
            command.env_remove(key);
        }
    }
    let out = command.output().expect("run magistral");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

const CONFIG: &str = r#"listen = "127.0.0.1:0"
reload_interval = "5 parsecs"

[[contracts]]
name = "lead"
version = 1
file = "lead.v1.json"
subjects = ["orders.lead"]

[[contracts]]
name = "lead"
version = 2
file = "lead.v2.json"
subjects = ["orders.lead"]

[[contracts]]
name = "broken"
version = 1
file = "broken.v1.json"
subjects = ["orders.broken"]

[participants.bitrix]
tokens = [{ sha256 = "HASH" }]
publish = ["orders.>"]

[participants.nav]
tokens = [
  { sha256 = "HASH" },
  "nav-plain-token-0001",
]
subscribe = ["orders.>"]

[subscriptions.nav-leads]
participant = "nav"
subjects = ["orders.lead"]
endpoint = "http://127.0.0.1:9/hook"
timeout = "ten seconds"
"#;

#[test]
fn check_lists_every_problem_with_file_line_and_field() {
    let dir = crate::common::gateway::orders_bus_dir();
    let root = dir.path();
    // v2 makes `phone` required: it breaks v1's producers (mode backward).
    std::fs::write(
        root.join("contracts/lead.v1.json"),
        r#"{"type":"object","additionalProperties":false,"properties":{"id":{"type":"string"},"phone":{"type":"string"}}}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("contracts/lead.v2.json"),
        r#"{"type":"object","required":["phone"],"additionalProperties":false,"properties":{"id":{"type":"string"},"phone":{"type":"string"}}}"#,
    )
    .unwrap();
    std::fs::write(root.join("contracts/broken.v1.json"), "{ not json").unwrap();
    let hash = token_sha256("bitrix-test-token-0001");
    std::fs::write(root.join("magistral.toml"), CONFIG.replace("HASH", &hash)).unwrap();

    let (code, out, err) = magistral(root, &["check"]);
    assert_eq!(code, 64, "{out}{err}");
    eprintln!("{err}");
    // Run where the file is, so it is named as given: `magistral.toml`.
    let config = "magistral.toml";
    // The bad settings, each with its line and field, in one run…
    assert!(err.contains(&format!("{config}:2: reload_interval:")), "{err}");
    assert!(err.contains(&format!("{config}:37: subscriptions.nav-leads.timeout:")), "{err}");
    // … a plain token where a hash belongs, answered with how to hash it (never echoed) …
    let plain_hash = token_sha256("nav-plain-token-0001");
    assert!(err.contains(&format!("{config}:29: participants.nav.tokens[1]:")), "{err}");
    assert!(err.contains(&format!("sha256 = \"{plain_hash}\"")) && err.contains("sha256sum"), "{err}");
    assert!(!err.contains("nav-plain-token-0001"), "the token itself is printed: {err}");
    // … the broken contract file …
    assert!(err.contains("broken.v1.json: (file): not JSON"), "{err}");
    // … and the breaking version, all in the same run.
    assert!(err.contains("lead.v2.json: /required: lead v2 breaks producers of v1"), "{err}");
    // No problem is named twice.
    let lines: Vec<&str> = err.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    let mut unique = lines.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(lines.len(), unique.len(), "{err}");
}

#[test]
fn check_without_a_configuration_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = magistral(dir.path(), &["check"]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.starts_with("no configuration file: there is no magistral.toml in "), "{err}");
    assert!(err.contains("--config"), "{err}");
    assert!(!err.contains("streams_dir"), "{err}");

    let (code, _, err) = magistral(dir.path(), &["check", "--config", "elsewhere.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("elsewhere.toml: (file): no such file"), "{err}");
}
