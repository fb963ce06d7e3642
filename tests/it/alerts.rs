//! The shipped alerting rules and Grafana dashboard (`helm/magistral/files/`): `promtool check
//! rules`, the rule unit tests (`promtool test rules tests/prometheus/*.test.yml`), every alert
//! tested both firing and not firing, every dashboard query valid PromQL, and every metric and
//! label the queries name one the gateway serves (docs/metrics.md, which tests/it/metrics.rs ties
//! to `/metrics`).
//!
//! promtool comes from `scripts/install-promtool.sh` (`.tools/bin/promtool`) or `$PROMTOOL_BIN`.
//! Without it these tests fail, unless `MAGISTRAL_SKIP_PROMTOOL=1` asks to skip them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::metrics::documented;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn rules_file() -> PathBuf {
    Path::new(REPO).join("helm/magistral/files/magistral-rules.yml")
}

fn dashboard_file() -> PathBuf {
    Path::new(REPO).join("helm/magistral/files/magistral-dashboard.json")
}

fn rule_tests() -> Vec<PathBuf> {
    let dir = Path::new(REPO).join("tests/prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.yml in {}", dir.display());
    files
}

/// The promtool binary, or `None` when skipping was asked for.
fn promtool() -> Option<PathBuf> {
    let candidate = std::env::var_os("PROMTOOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join(".tools/bin/promtool"));
    if candidate.is_file() {
        return Some(candidate);
    }
    if std::env::var("MAGISTRAL_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: alert rule test — no promtool at {} and MAGISTRAL_SKIP_PROMTOOL=1.\n\
             !!! The rules were NOT checked. Run scripts/install-promtool.sh to test them.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            candidate.display()
        );
        return None;
    }
    panic!(
        "promtool not found at {} (PROMTOOL_BIN unset or wrong): run scripts/install-promtool.sh \
         (or set MAGISTRAL_SKIP_PROMTOOL=1 to skip the rule tests knowingly)",
        candidate.display()
    );
}

fn run_promtool(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool).args(args).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(alert name, expr)` of every alerting rule.
fn alerts() -> Vec<(String, String)> {
    let rules = yaml(&rules_file());
    let mut found = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules are shipped");
            found.push((name.to_owned(), rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    found
}

/// Every PromQL query of the dashboard: panel targets and template variables (`label_values(q,
/// label)` yields `q`), Grafana's variables replaced so the text is plain PromQL.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, key: Option<&str>, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(v, Some(k), out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, out)),
            Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => out.push(s.clone()),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    let mut raw = Vec::new();
    walk(&dashboard, None, &mut raw);
    let mut queries: Vec<String> = raw
        .into_iter()
        .filter(|q| q != "prometheus") // the data source variable's plugin type
        .map(|q| {
            let q = match q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
                Some(inner) => inner.rsplit_once(',').map_or(inner, |(selector, _)| selector).to_owned(),
                None => q,
            };
            q.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$subscription", ".*")
        })
        .collect();
    queries.sort();
    queries.dedup();
    assert!(queries.len() > 20, "only {} dashboard queries found", queries.len());
    queries
}

/// Metric names in a PromQL expression, with the label names of their selectors.
fn metric_references(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut refs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !ident(bytes[i - 1]);
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("magistral_") || rest.starts_with("process_")) {
            let end = rest.bytes().position(|c| !ident(c)).unwrap_or(rest.len());
            let name = rest[..end].to_owned();
            let mut labels = BTreeSet::new();
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').expect("selector closed") + end;
                for matcher in rest[end + 1..close].split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let label = matcher.split(['=', '!', '~']).next().unwrap().trim();
                    labels.insert(label.to_owned());
                }
            }
            i += end;
            refs.push((name, labels));
        } else {
            i += 1;
        }
    }
    refs
}

/// What a query may name: a documented metric (`_bucket`/`_sum`/`_count` of a histogram), with
/// its documented labels or the target labels Prometheus adds.
fn check_references(what: &str, expr: &str, problems: &mut Vec<String>) {
    let docs: BTreeMap<String, (String, BTreeSet<String>)> =
        documented().into_iter().map(|d| (d.name, (d.kind, d.labels))).collect();
    let refs = metric_references(expr);
    if refs.is_empty() {
        problems.push(format!("{what}: names no metric: {expr}"));
    }
    for (name, labels) in refs {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| docs.get(*b).is_some_and(|(k, _)| k == "histogram")))
            .unwrap_or(&name);
        let Some((_, known)) = docs.get(family) else {
            problems.push(format!("{what}: {name} is not a metric the gateway serves (docs/metrics.md)"));
            continue;
        };
        for label in labels.iter().filter(|l| !["job", "instance", "le"].contains(&l.as_str())) {
            if !known.contains(label) {
                problems.push(format!("{what}: {family} has no label {label}"));
            }
        }
    }
}

#[test]
fn rules_pass_promtool_check() {
    let Some(promtool) = promtool() else { return };
    let out = run_promtool(&promtool, &["check", "rules", rules_file().to_str().unwrap()]);
    let expected = format!("SUCCESS: {} rules found", alerts().len());
    assert!(out.contains(&expected), "{out}");
    println!("{}", out.trim());
}

#[test]
fn rule_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    for file in rule_tests() {
        let out = run_promtool(&promtool, &["test", "rules", file.to_str().unwrap()]);
        assert!(out.contains("SUCCESS"), "{out}");
        println!("{}", out.trim());
    }
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in rule_tests() {
        let tests = yaml(&file);
        assert!(
            tests["rule_files"].as_array().unwrap().iter().any(|f| file
                .parent()
                .unwrap()
                .join(f.as_str().unwrap())
                .canonicalize()
                .ok()
                == rules_file().canonicalize().ok()),
            "{} does not test the shipped rules file",
            file.display()
        );
        for test in tests["tests"].as_array().unwrap() {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap().to_owned();
                if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    firing.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }
    for (alert, _) in alerts() {
        assert!(firing.contains(&alert), "{alert}: no unit test where it fires");
        assert!(quiet.contains(&alert), "{alert}: no unit test where it stays quiet");
    }
}

#[test]
fn the_issue_s_alerts_are_shipped() {
    let shipped: BTreeSet<String> = alerts().into_iter().map(|(name, _)| name).collect();
    for wanted in [
        "MagistralSubscriptionLagHigh",
        "MagistralSubscriptionLagGrowing",
        "MagistralBreakerOpen",
        "MagistralDeadLettersGrowing",
        "MagistralPublishErrors",
        "MagistralNatsDisconnected",
        "MagistralNotReady",
        "MagistralEndpointGone",
        "MagistralKeysParked",
        "MagistralConsumerRefused",
    ] {
        assert!(shipped.contains(wanted), "{wanted} is not in {}", rules_file().display());
    }
}

#[test]
fn rules_and_dashboard_name_only_served_metrics() {
    let mut problems = Vec::new();
    for (alert, expr) in alerts() {
        check_references(&alert, &expr, &mut problems);
    }
    for query in dashboard_queries() {
        check_references("dashboard", &query, &mut problems);
    }
    assert!(problems.is_empty(), "queries naming what /metrics does not serve:\n{}", problems.join("\n"));
}

#[test]
fn the_reference_finder_sees_names_suffixes_and_labels() {
    let refs = metric_references(
        r#"histogram_quantile(0.99, sum by (le) (rate(magistral_publish_duration_seconds_bucket{job=~".*"}[5m]))) / process_open_fds and x_magistral_no"#,
    );
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0].0, "magistral_publish_duration_seconds_bucket");
    assert_eq!(refs[0].1, BTreeSet::from(["job".to_owned()]));
    assert_eq!(refs[1].0, "process_open_fds");
    let mut problems = Vec::new();
    check_references("t", "rate(magistral_publish_totl[5m]) + magistral_ready{subscription=\"x\"}", &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

/// Every dashboard query is PromQL promtool accepts: checked as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(query).unwrap()
        ));
    }
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let out = run_promtool(&promtool, &["check", "rules", file.to_str().unwrap()]);
    println!("{}", out.trim());
}
