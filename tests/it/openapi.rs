//! Keeps `docs/openapi.json` and `docs/errors.md` honest against the code, without a network:
//! the documented routes are the router's routes, every problem class is in the spec's enum
//! and in the error catalogue with its real status, and each publish route documents every
//! problem class it can answer with, under that class's status.

use std::collections::{BTreeMap, BTreeSet};

use magistral::http::ROUTES;
use magistral::http::problem::ProblemType;
use serde_json::Value;

const SPEC: &str = include_str!("../../docs/openapi.json");
const ERRORS_MD: &str = include_str!("../../docs/errors.md");

const PUBLISH_ONE: (&str, &str) = ("post", "/v1/publish/{subject}");
const PUBLISH_BATCH: (&str, &str) = ("post", "/v1/publish");
const URN_PREFIX: &str = "urn:magistral:problem:";

/// Where each problem class is answered as the top-level problem of a route; `None` for a
/// class nobody has placed yet, which fails `every_problem_type_is_placed` with its name (a
/// runtime failure rather than a non-exhaustive match, so a new class does not stop the
/// other integration tests from compiling). Router-level classes belong to no operation.
fn routes_of(kind: ProblemType) -> Option<&'static [(&'static str, &'static str)]> {
    use ProblemType as P;
    Some(match kind {
        // Body, auth and content-type checks run on both publish routes.
        P::MalformedJson
        | P::InvalidUtf8
        | P::PayloadTooLarge
        | P::JsonTooDeep
        | P::UnsupportedMediaType
        | P::Unauthorized => &[PUBLISH_ONE, PUBLISH_BATCH],
        // Per-message checks: on a batch they come back as items of `batch-rejected`.
        P::Forbidden
        | P::InvalidSubject
        | P::InvalidCloudEvent
        | P::InvalidId
        | P::NoStream
        | P::ContractViolation
        | P::ContractRequired
        | P::UnknownDataschema => &[PUBLISH_ONE],
        // On a batch these are per-item `error`s of a 207 answer.
        P::NatsUnavailable | P::PublishTimeout => &[PUBLISH_ONE],
        P::Overloaded | P::Internal => &[PUBLISH_ONE, PUBLISH_BATCH],
        P::BatchRejected | P::TooManyItems => &[PUBLISH_BATCH],
        P::NotFound | P::MethodNotAllowed => &[],
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The routes of `kind`, for classes that are placed.
fn placed(kind: ProblemType) -> &'static [(&'static str, &'static str)] {
    routes_of(kind).unwrap_or(&[])
}

#[test]
fn every_problem_type_is_placed() {
    let unplaced: Vec<&str> = ProblemType::ALL
        .iter()
        .filter(|k| routes_of(**k).is_none())
        .map(|k| k.slug())
        .collect();
    assert!(
        unplaced.is_empty(),
        "problem types with no place in tests/it/openapi.rs routes_of (document them in \
         docs/openapi.json and docs/errors.md, then add them there): {unplaced:?}"
    );
}

fn spec() -> Value {
    serde_json::from_str(SPEC).expect("docs/openapi.json is valid JSON")
}

fn slug_of_uri(uri: &str) -> &str {
    uri.strip_prefix(URN_PREFIX)
        .unwrap_or_else(|| panic!("{uri} does not start with {URN_PREFIX}"))
}

fn operation<'a>(spec: &'a Value, (method, path): (&str, &str)) -> &'a Value {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "docs/openapi.json has no {method} {path}");
    op
}

/// `x-problem-types` of every response of an operation, by status code.
fn documented_problems(op: &Value) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (code, response) in op["responses"].as_object().expect("responses") {
        let Some(slugs) = response.get("x-problem-types") else {
            continue;
        };
        let status: u16 = code
            .parse()
            .unwrap_or_else(|_| panic!("response {code} is not a status code"));
        let slugs = slugs
            .as_array()
            .expect("x-problem-types is an array")
            .iter()
            .map(|s| s.as_str().expect("slug").to_owned())
            .collect();
        out.insert(status, slugs);
    }
    out
}

#[test]
fn openapi_is_the_served_document_and_version_3_1() {
    assert_eq!(
        magistral::http::ops::OPENAPI,
        SPEC,
        "the gateway serves docs/openapi.json as is"
    );
    let spec = spec();
    let version = spec["openapi"].as_str().expect("openapi member");
    assert!(
        version.starts_with("3.1."),
        "openapi is {version}, expected 3.1.x"
    );
}

#[test]
fn openapi_paths_are_exactly_the_routes() {
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json paths vs magistral::http::ROUTES"
    );
}

#[test]
fn openapi_problem_type_enum_is_the_catalogue() {
    let spec = spec();
    let listed: BTreeSet<&str> = spec["components"]["schemas"]["ProblemType"]["enum"]
        .as_array()
        .expect("components.schemas.ProblemType.enum")
        .iter()
        .map(|v| slug_of_uri(v.as_str().expect("string")))
        .collect();
    let all: BTreeSet<&str> = ProblemType::ALL.iter().map(|k| k.slug()).collect();
    assert_eq!(
        listed, all,
        "ProblemType enum in docs/openapi.json vs ProblemType::ALL"
    );
    for kind in ProblemType::ALL {
        assert_eq!(kind.uri(), format!("{URN_PREFIX}{}", kind.slug()));
    }
    let problem = &spec["components"]["schemas"]["Problem"];
    for member in ["type", "title", "status", "detail", "retryable"] {
        assert!(
            problem["required"]
                .as_array()
                .expect("Problem.required")
                .iter()
                .any(|m| m == member),
            "Problem schema must require {member}"
        );
    }
    for member in ["errors", "items"] {
        assert!(
            problem["properties"].get(member).is_some(),
            "Problem schema documents {member}"
        );
    }
}

#[test]
fn errors_md_has_one_row_per_problem_type_with_its_status() {
    // Rows look like: | `malformed-json` | 400 | meaning | retry |
    let mut rows: BTreeMap<String, u16> = BTreeMap::new();
    for line in ERRORS_MD.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let [first, second, ..] = cells.as_slice() else {
            continue;
        };
        let Some(slug) = first.strip_prefix('`').and_then(|s| s.strip_suffix('`')) else {
            continue;
        };
        let Ok(status) = second.parse::<u16>() else {
            continue;
        };
        assert!(
            rows.insert(slug.to_owned(), status).is_none(),
            "docs/errors.md lists {slug} twice"
        );
    }
    for kind in ProblemType::ALL {
        let status = rows
            .remove(kind.slug())
            .unwrap_or_else(|| panic!("docs/errors.md has no row for `{}`", kind.slug()));
        assert_eq!(
            status,
            kind.status().as_u16(),
            "docs/errors.md status of {}",
            kind.slug()
        );
        assert!(
            ERRORS_MD.contains(&format!("### `{}`", kind.slug())),
            "docs/errors.md has no `### `{}`` heading",
            kind.slug()
        );
    }
    assert!(
        rows.is_empty(),
        "docs/errors.md lists classes the code does not have: {rows:?}"
    );
}

#[test]
fn publish_routes_document_every_problem_they_can_answer() {
    let spec = spec();
    let by_slug: BTreeMap<&str, ProblemType> =
        ProblemType::ALL.iter().map(|k| (k.slug(), *k)).collect();

    for route in [PUBLISH_ONE, PUBLISH_BATCH] {
        let op = operation(&spec, route);
        let documented = documented_problems(op);

        // Expected: every class routed here, under its own status.
        for kind in ProblemType::ALL
            .iter()
            .filter(|k| placed(**k).contains(&route))
        {
            let status = kind.status().as_u16();
            assert!(
                documented
                    .get(&status)
                    .is_some_and(|s| s.contains(kind.slug())),
                "{route:?}: response {status} does not list `{}` in x-problem-types",
                kind.slug()
            );
        }
        // Nothing documented that the route cannot answer, nor under a wrong status.
        for (status, slugs) in &documented {
            for slug in slugs {
                let kind = by_slug
                    .get(slug.as_str())
                    .unwrap_or_else(|| panic!("{route:?}: unknown problem type {slug}"));
                assert_eq!(
                    *status,
                    kind.status().as_u16(),
                    "{route:?}: `{slug}` documented under {status}"
                );
                assert!(
                    placed(*kind).contains(&route),
                    "{route:?}: documents `{slug}`, which it does not answer"
                );
            }
            let response = &op["responses"][status.to_string()];
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{route:?}: response {status} is application/problem+json with the Problem schema"
            );
            if slugs
                .iter()
                .any(|s| s == "nats-unavailable" || s == "overloaded")
            {
                assert!(
                    response["headers"].get("Retry-After").is_some(),
                    "{route:?}: {status} documents Retry-After"
                );
            }
            if slugs.iter().any(|s| s == "unauthorized") {
                assert!(
                    response["headers"].get("WWW-Authenticate").is_some(),
                    "{route:?}: 401 documents WWW-Authenticate"
                );
            }
        }
        assert!(
            op["security"].as_array().is_some_and(|s| !s.is_empty()),
            "{route:?} requires the bearer scheme"
        );
    }

    // The statuses a publisher must be ready for, across both publish routes.
    let statuses: BTreeSet<u16> = [PUBLISH_ONE, PUBLISH_BATCH]
        .into_iter()
        .flat_map(|route| documented_problems(operation(&spec, route)).into_keys())
        .collect();
    for status in [400, 401, 403, 404, 413, 415, 422, 503, 504] {
        assert!(
            statuses.contains(&status),
            "no publish route documents {status}"
        );
    }

    // Success answers.
    let codes = |route| -> BTreeSet<String> {
        operation(&spec, route)["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .cloned()
            .collect()
    };
    assert!(
        codes(PUBLISH_ONE).is_superset(&BTreeSet::from(["200".into(), "202".into()])),
        "publish: 200 duplicate, 202 stored"
    );
    assert!(
        codes(PUBLISH_BATCH).is_superset(&BTreeSet::from(["202".into(), "207".into()])),
        "batch: 202 and 207"
    );
}

#[test]
fn openapi_refs_resolve() {
    fn walk<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    refs.push(r);
                }
                map.values().for_each(|v| walk(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let spec = spec();
    let mut refs = Vec::new();
    walk(&spec, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not a local reference"));
        assert!(
            spec.pointer(pointer).is_some(),
            "{r} does not resolve in docs/openapi.json"
        );
    }
}
