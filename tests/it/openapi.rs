//! Keeps `docs/openapi.json` and `docs/errors.md` honest against the code, without a network:
//! the documented routes are the router's routes, every problem class is in the spec's enum
//! and in the error catalogue with its real status, each route documents every problem class
//! it can answer with (and no other), under that class's status (`responder-error` under each
//! status a responder can choose), the `delivery` webhook and the catalogue's delivery table
//! document every delivery outcome class, and the `responder` webhook documents how each
//! answer of a responder's endpoint becomes the reply.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use magistral::delivery::outcome::{Class, Decision, RetryPolicy};
use magistral::http::ROUTES;
use magistral::http::problem::ProblemType;
use serde_json::Value;

const SPEC: &str = include_str!("../../docs/openapi.json");
const ERRORS_MD: &str = include_str!("../../docs/errors.md");

type Route = (&'static str, &'static str);

const PUBLISH_ONE: Route = ("post", "/v1/publish/{subject}");
const PUBLISH_BATCH: Route = ("post", "/v1/publish");
const SUBSCRIPTIONS: Route = ("get", "/v1/subscriptions");
const SUBSCRIPTION: Route = ("get", "/v1/subscriptions/{name}");
const PAUSE: Route = ("post", "/v1/subscriptions/{name}/pause");
const RESUME: Route = ("post", "/v1/subscriptions/{name}/resume");
const DEAD_LETTERS: Route = ("get", "/v1/subscriptions/{name}/dead-letters");
const REPLAY: Route = ("post", "/v1/subscriptions/{name}/dead-letters/replay");
const DISCARD: Route = ("post", "/v1/subscriptions/{name}/dead-letters/discard");
const SKIP_KEY: Route = ("post", "/v1/subscriptions/{name}/parked-keys/skip");
const RETRY_KEY: Route = ("post", "/v1/subscriptions/{name}/parked-keys/retry");
const FETCH: Route = ("post", "/v1/subscriptions/{name}/fetch");
const ACK: Route = ("post", "/v1/subscriptions/{name}/ack");
const EVENTS: Route = ("get", "/v1/subscriptions/{name}/events");
const REQUEST: Route = ("post", "/v1/request/{subject}");
const KV_LIST: Route = ("get", "/v1/kv/{bucket}");
const KV_GET: Route = ("get", "/v1/kv/{bucket}/{key}");
const KV_PUT: Route = ("put", "/v1/kv/{bucket}/{key}");
const KV_DELETE: Route = ("delete", "/v1/kv/{bucket}/{key}");
const INBOUND: Route = ("post", "/v1/inbound/{name}");
const MESSAGES: Route = ("get", "/v1/messages");
const MESSAGE: Route = ("get", "/v1/messages/{id}");
const IMPORT: Route = ("post", "/v1/import/{route}");
const EXPORT_XLSX: Route = ("get", "/v1/subscriptions/{name}/export.xlsx");
const EXPORT_CSV: Route = ("get", "/v1/subscriptions/{name}/export.csv");
const EXPORT_CONFIRM: Route = ("post", "/v1/subscriptions/{name}/export/confirm");
const CONTRACTS: Route = ("get", "/v1/contracts");
const CONTRACT: Route = ("get", "/v1/contracts/{name}/{version}");
const REGISTER: Route = ("put", "/v1/contracts/{name}/{version}");
const ASYNCAPI: Route = ("get", "/v1/asyncapi.json");
const OVERVIEW: Route = ("get", "/v1/overview");
const TAIL: Route = ("get", "/v1/tail");
const CONSOLE_ASSET: Route = ("get", "/console/{asset}");
const SESSION: Route = ("get", "/console/session");
const SIGN_IN: Route = ("post", "/console/session");
const SIGN_OUT: Route = ("delete", "/console/session");
/// The authenticated API; the operations routes (`/healthz`, ...) answer no problem of their own.
/// An inbound route authenticates by its kind: a bearer token (`json`), the application token
/// in the form (`bitrix24`), or per entry (`business-central`, which never answers 401).
/// The console's session routes: a session cookie (sign-in: the token in the body).
const API: &[Route] = &[
    PUBLISH_ONE,
    PUBLISH_BATCH,
    REQUEST,
    KV_LIST,
    KV_GET,
    KV_PUT,
    KV_DELETE,
    INBOUND,
    MESSAGES,
    MESSAGE,
    SUBSCRIPTIONS,
    SUBSCRIPTION,
    PAUSE,
    RESUME,
    DEAD_LETTERS,
    REPLAY,
    DISCARD,
    SKIP_KEY,
    RETRY_KEY,
    FETCH,
    ACK,
    EVENTS,
    IMPORT,
    EXPORT_XLSX,
    EXPORT_CSV,
    EXPORT_CONFIRM,
    CONTRACTS,
    CONTRACT,
    REGISTER,
    ASYNCAPI,
    OVERVIEW,
    TAIL,
    SESSION,
    SIGN_IN,
    SIGN_OUT,
];
/// The routes only a subscription's owner may use (no `admin` exception), each for one mode.
const OWNER_ONLY: &[Route] = &[FETCH, ACK, EVENTS, EXPORT_XLSX, EXPORT_CSV, EXPORT_CONFIRM];
/// Routes that name a key.
const KEY: &[Route] = &[KV_GET, KV_PUT, KV_DELETE];
/// Directory routes that write (and may wait for JetStream's confirmation).
const KV_WRITE: &[Route] = &[KV_PUT, KV_DELETE];
const URN_PREFIX: &str = "urn:magistral:problem:";

/// Where each problem class is answered as the top-level problem of a route; `None` for a
/// class nobody has placed yet, which fails `every_problem_type_is_placed` with its name (a
/// runtime failure rather than a non-exhaustive match, so a new class does not stop the
/// other integration tests from compiling). Router-level answers (an unknown path's
/// `not-found`, `method-not-allowed`) belong to no operation; `docs/openapi.json` says so in
/// `info.description`.
fn routes_of(kind: ProblemType) -> Option<&'static [Route]> {
    use ProblemType as P;
    Some(match kind {
        // Body checks: the routes that take a body (replay, fetch, ack: small JSON commands;
        // fetch and ack take an empty body too; an inbound route the body its kind expects).
        P::MalformedJson => &[
            PUBLISH_ONE,
            PUBLISH_BATCH,
            REQUEST,
            KV_PUT,
            REPLAY,
            DISCARD,
            SKIP_KEY,
            RETRY_KEY,
            FETCH,
            ACK,
            INBOUND,
            EXPORT_CONFIRM,
            REGISTER,
            SIGN_IN,
        ],
        // An import's file too (its size, and what it inflates to).
        P::PayloadTooLarge | P::UnsupportedMediaType => &[
            PUBLISH_ONE,
            PUBLISH_BATCH,
            REQUEST,
            KV_PUT,
            REPLAY,
            DISCARD,
            SKIP_KEY,
            RETRY_KEY,
            FETCH,
            ACK,
            INBOUND,
            IMPORT,
            EXPORT_CONFIRM,
            REGISTER,
            SIGN_IN,
        ],
        // A body (or an imported CSV) not valid in the charset its content type names.
        P::UndecodableBody => &[PUBLISH_ONE, PUBLISH_BATCH, REQUEST, KV_PUT, INBOUND, IMPORT, REGISTER],
        P::UnreadableFile => &[IMPORT],
        P::InvalidUtf8 | P::JsonTooDeep => &[PUBLISH_ONE, PUBLISH_BATCH, REQUEST, KV_PUT, INBOUND],
        // Any body may be too slow; the connection is then closed.
        P::BodyTimeout => &[
            PUBLISH_ONE,
            PUBLISH_BATCH,
            REQUEST,
            KV_PUT,
            REPLAY,
            DISCARD,
            SKIP_KEY,
            RETRY_KEY,
            FETCH,
            ACK,
            INBOUND,
            IMPORT,
            EXPORT_CONFIRM,
            REGISTER,
            SIGN_IN,
        ],
        // I-JSON on every path whose JSON the gateway validates and passes on (a batch item's
        // comes back as an item of `batch-rejected`; the JSON commands of replay, fetch and ack
        // are `malformed-json`).
        P::DuplicateKey => &[PUBLISH_ONE, REQUEST, KV_PUT, INBOUND],
        // A `bitrix24` inbound route's form.
        P::FormTooComplex => &[INBOUND],
        // The per-participant in-flight bound on every authenticated route but the event
        // stream (bounded by `too-many-streams`); the publish rate on the publish routes and a
        // `json` inbound route. The `bitrix24` and `business-central` routes bind no participant.
        P::RateLimited => &[
            PUBLISH_ONE,
            PUBLISH_BATCH,
            REQUEST,
            KV_LIST,
            KV_GET,
            KV_PUT,
            KV_DELETE,
            INBOUND,
            MESSAGES,
            MESSAGE,
            SUBSCRIPTIONS,
            SUBSCRIPTION,
            PAUSE,
            RESUME,
            DEAD_LETTERS,
            REPLAY,
            DISCARD,
            SKIP_KEY,
            RETRY_KEY,
            FETCH,
            ACK,
            IMPORT,
            EXPORT_XLSX,
            EXPORT_CSV,
            EXPORT_CONFIRM,
            CONTRACTS,
            CONTRACT,
            REGISTER,
            ASYNCAPI,
            OVERVIEW,
        ],
        // Every API route authenticates first; any handler can fail unexpectedly.
        P::Unauthorized | P::Internal => API,
        // Per-message checks: on a batch they come back as items of `batch-rejected`.
        // A directory the participant may not read (or write), another participant's `json`
        // inbound route, or (fetch, ack, events) a subscription an admin sees but does not own
        // is `forbidden` too. Another participant's subscription, or a message the participant
        // may not see, is `not-found` instead.
        P::Forbidden => &[
            PUBLISH_ONE,
            REQUEST,
            INBOUND,
            KV_LIST,
            KV_GET,
            KV_PUT,
            KV_DELETE,
            FETCH,
            ACK,
            EVENTS,
            IMPORT,
            EXPORT_XLSX,
            EXPORT_CSV,
            EXPORT_CONFIRM,
            // A contract name not granted, or a subject the registrant may not publish to.
            REGISTER,
            OVERVIEW,
            TAIL,
            SIGN_IN,
        ],
        // A request is checked like a publish, but goes to no stream and carries no
        // message id of its own to validate.
        P::InvalidSubject | P::UnknownDataschema => &[PUBLISH_ONE, REQUEST],
        // An inbound route's event type (`bitrix24.<event>`) is an attribute too.
        P::InvalidCloudEvent => &[PUBLISH_ONE, REQUEST, INBOUND],
        // An inbound route publishes with every check of a publish to its configured subject
        // (`Idempotency-Key` on a `json` route), after its transform.
        P::InvalidId | P::ContractRequired => &[PUBLISH_ONE, INBOUND],
        // A registered contract's subject must be stored too.
        P::NoStream => &[PUBLISH_ONE, INBOUND, REGISTER],
        // A directory value is checked against the directory's contract.
        P::ContractViolation => &[PUBLISH_ONE, REQUEST, KV_PUT, INBOUND],
        // On a batch `nats-unavailable` is a per-item `error` of a 207/503 answer; the
        // other routes that ask NATS answer it whole. `publish-timeout` likewise: a
        // directory write waits for JetStream's confirmation as a publish does.
        // The tracking routes read the index bucket (missing too when tracking is off).
        P::NatsUnavailable => &[
            PUBLISH_ONE,
            IMPORT,
            REQUEST,
            INBOUND,
            MESSAGES,
            MESSAGE,
            KV_LIST,
            KV_GET,
            KV_PUT,
            KV_DELETE,
            PAUSE,
            RESUME,
            DEAD_LETTERS,
            REPLAY,
            DISCARD,
            FETCH,
            ACK,
            EVENTS,
            EXPORT_XLSX,
            EXPORT_CSV,
            EXPORT_CONFIRM,
            REGISTER,
            TAIL,
        ],
        // An import none of whose checked rows could be stored answers that failure.
        P::PublishTimeout => &[PUBLISH_ONE, KV_PUT, KV_DELETE, INBOUND, IMPORT],
        P::Overloaded => &[PUBLISH_ONE, PUBLISH_BATCH, INBOUND, IMPORT],
        P::BatchRejected => &[PUBLISH_BATCH],
        // An import's rows are counted like a batch's items.
        P::TooManyItems => &[PUBLISH_BATCH, IMPORT],
        // An unknown subscription, directory, key, inbound route, or a message (or contract
        // version) unknown or not visible to the caller (and, router-level, an unknown path).
        P::NotFound => &[
            INBOUND,
            MESSAGE,
            SUBSCRIPTION,
            PAUSE,
            RESUME,
            DEAD_LETTERS,
            REPLAY,
            DISCARD,
            SKIP_KEY,
            RETRY_KEY,
            FETCH,
            ACK,
            EVENTS,
            IMPORT,
            EXPORT_XLSX,
            EXPORT_CSV,
            EXPORT_CONFIRM,
            KV_LIST,
            KV_GET,
            KV_PUT,
            KV_DELETE,
            CONTRACT,
            CONSOLE_ASSET,
        ],
        // Query parameters (`?timeout=`, `?limit=`, `?correlation_id=`); the event stream's
        // `?last_event_id=` when it is not a resume point. (An inbound route ignores its query but
        // `?validationToken=`.)
        // A registration's `?subject=` / `?compatibility=` (and its name and version).
        P::InvalidQuery => &[DEAD_LETTERS, REQUEST, KV_LIST, EVENTS, MESSAGES, EXPORT_XLSX, EXPORT_CSV, REGISTER, TAIL],
        // An `If-Match` that is not a revision; a `Last-Event-ID` header that is not a resume
        // point; a `traceparent` / `tracestate` that is not W3C Trace Context (on a batch, an
        // item of `batch-rejected`).
        P::InvalidHeader => &[PUBLISH_ONE, REQUEST, INBOUND, KV_PUT, KV_DELETE, EVENTS],
        // An inbound route's transform; a subscription's is a delivery class, a responder's a
        // `responder-error`.
        P::TransformFailed => &[INBOUND],
        // Fetch, ack and events each need one mode of subscription.
        P::WrongMode => OWNER_ONLY,
        P::InvalidAckToken => &[ACK, EXPORT_CONFIRM],
        // A per-item `error` of a 207 ack answer (`x-item-problem-types`); the answer's own
        // problem only for an export confirmed twice.
        P::AlreadyAcked => &[EXPORT_CONFIRM],
        P::TooManyStreams => &[EVENTS, TAIL],
        P::InvalidKey => KEY,
        P::RevisionMismatch => KV_WRITE,
        // Request/reply only.
        P::NoResponders | P::RequestTimeout | P::ResponderError | P::ReplyContractViolation => &[REQUEST],
        P::MethodNotAllowed => &[],
        // Self-service contracts only.
        P::ContractConflict | P::InvalidSchema | P::IncompatibleContract => &[REGISTER],
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The routes of `kind`, for classes that are placed.
fn placed(kind: ProblemType) -> &'static [Route] {
    routes_of(kind).unwrap_or(&[])
}

/// Every delivery outcome class (`Class` has no list of its own).
const CLASSES: &[Class] = &[
    Class::Delivered,
    Class::Throttled,
    Class::EndpointTimeout,
    Class::EndpointError,
    Class::Timeout,
    Class::Unreachable,
    Class::Gone,
    Class::Rejected,
    Class::Unexpected,
    Class::TransformFailed,
    Class::Skipped,
    Class::Unencodable,
    Class::ConversionFailed,
    Class::ConversionInvalid,
];

#[test]
fn every_problem_type_is_placed() {
    let unplaced: Vec<&str> = ProblemType::ALL.iter().filter(|k| routes_of(**k).is_none()).map(|k| k.slug()).collect();
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
    uri.strip_prefix(URN_PREFIX).unwrap_or_else(|| panic!("{uri} does not start with {URN_PREFIX}"))
}

fn operation<'a>(spec: &'a Value, (method, path): (&str, &str)) -> &'a Value {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "docs/openapi.json has no {method} {path}");
    op
}

/// `x-problem-types` of every response of an operation, by response key: a status code
/// (`"404"`) or a range (`"4XX"`).
fn documented_problems(op: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (code, response) in op["responses"].as_object().expect("responses") {
        let Some(slugs) = response.get("x-problem-types") else {
            continue;
        };
        assert!(
            statuses_of_key(code).next().is_some(),
            "response {code} is neither an error status nor an error range"
        );
        let slugs = slugs
            .as_array()
            .expect("x-problem-types is an array")
            .iter()
            .map(|s| s.as_str().expect("slug").to_owned())
            .collect();
        out.insert(code.clone(), slugs);
    }
    out
}

/// The error statuses a response key stands for: `"404"` → 404, `"4XX"` → 400..=499.
fn statuses_of_key(key: &str) -> impl Iterator<Item = u16> {
    let range = match key.as_bytes() {
        [d @ (b'4' | b'5'), b'X', b'X'] => {
            let base = u16::from(d - b'0') * 100;
            Some(base..=base + 99)
        }
        _ => match key.parse::<u16>() {
            Ok(s) if (400..=599).contains(&s) => Some(s..=s),
            _ => None,
        },
    };
    range.into_iter().flatten()
}

/// Whether a problem of `kind` may be answered with `status`. Every class has its own
/// status, except `responder-error`: it carries the status the responder chose — its
/// endpoint's 4xx as answered, 502 when the endpoint failed, 503 unreachable, 504 timed out,
/// or a NATS-native service's own error code (400–599).
fn answers_with(kind: ProblemType, status: u16) -> bool {
    if kind == ProblemType::ResponderError { (400..=599).contains(&status) } else { status == kind.status().as_u16() }
}

/// The response keys under which a route answering `kind` must list it: its status, and for
/// `responder-error` each status the gateway's own responders produce.
fn must_document(kind: ProblemType) -> Vec<String> {
    if kind == ProblemType::ResponderError {
        ["4XX", "502", "503", "504"].map(str::to_owned).to_vec()
    } else {
        vec![kind.status().as_u16().to_string()]
    }
}

#[test]
fn openapi_is_the_served_document_and_version_3_1() {
    assert_eq!(magistral::http::ops::OPENAPI, SPEC, "the gateway serves docs/openapi.json as is");
    let spec = spec();
    let version = spec["openapi"].as_str().expect("openapi member");
    assert!(version.starts_with("3.1."), "openapi is {version}, expected 3.1.x");
}

#[test]
fn openapi_paths_are_exactly_the_routes() {
    const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(documented, served, "docs/openapi.json paths vs magistral::http::ROUTES");
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
    assert_eq!(listed, all, "ProblemType enum in docs/openapi.json vs ProblemType::ALL");
    for kind in ProblemType::ALL {
        assert_eq!(kind.uri(), format!("{URN_PREFIX}{}", kind.slug()));
    }
    let problem = &spec["components"]["schemas"]["Problem"];
    for member in ["type", "title", "status", "detail", "retryable"] {
        assert!(
            problem["required"].as_array().expect("Problem.required").iter().any(|m| m == member),
            "Problem schema must require {member}"
        );
    }
    for member in ["errors", "items"] {
        assert!(problem["properties"].get(member).is_some(), "Problem schema documents {member}");
    }
}

#[test]
fn errors_md_has_one_row_per_problem_type_with_its_status() {
    // Rows look like: | `malformed-json` | 400 | meaning | retry |
    let mut rows: BTreeMap<String, u16> = BTreeMap::new();
    for line in ERRORS_MD.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let [first, second, ..] = cells.as_slice() else {
            continue;
        };
        let Some(slug) = first.strip_prefix('`').and_then(|s| s.strip_suffix('`')) else {
            continue;
        };
        let Ok(status) = second.parse::<u16>() else {
            continue;
        };
        assert!(rows.insert(slug.to_owned(), status).is_none(), "docs/errors.md lists {slug} twice");
    }
    for kind in ProblemType::ALL {
        let status =
            rows.remove(kind.slug()).unwrap_or_else(|| panic!("docs/errors.md has no row for `{}`", kind.slug()));
        assert_eq!(status, kind.status().as_u16(), "docs/errors.md status of {}", kind.slug());
        assert!(
            ERRORS_MD.contains(&format!("### `{}`", kind.slug())),
            "docs/errors.md has no `### `{}`` heading",
            kind.slug()
        );
    }
    assert!(rows.is_empty(), "docs/errors.md lists classes the code does not have: {rows:?}");
}

#[test]
fn every_route_documents_every_problem_it_can_answer() {
    let spec = spec();
    let by_slug: BTreeMap<&str, ProblemType> = ProblemType::ALL.iter().map(|k| (k.slug(), *k)).collect();
    for route in API {
        assert!(ROUTES.contains(route), "{route:?} is not a route of the router");
    }

    for route in ROUTES {
        let route = *route;
        let op = operation(&spec, route);
        let documented = documented_problems(op);

        // Expected: every class routed here, under its own status.
        for kind in ProblemType::ALL.iter().filter(|k| placed(**k).contains(&route)) {
            for key in must_document(*kind) {
                assert!(
                    documented.get(&key).is_some_and(|s| s.contains(kind.slug())),
                    "{route:?}: response {key} does not list `{}` in x-problem-types",
                    kind.slug()
                );
            }
        }
        // Nothing documented that the route cannot answer, nor under a wrong status.
        for (status, slugs) in &documented {
            for slug in slugs {
                let kind =
                    by_slug.get(slug.as_str()).unwrap_or_else(|| panic!("{route:?}: unknown problem type {slug}"));
                assert!(
                    statuses_of_key(status).all(|s| answers_with(*kind, s)),
                    "{route:?}: `{slug}` documented under {status}"
                );
                assert!(placed(*kind).contains(&route), "{route:?}: documents `{slug}`, which it does not answer");
            }
            let response = &op["responses"][status.as_str()];
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
                "{route:?}: response {status} is application/problem+json with the Problem schema"
            );
            if slugs.iter().any(|s| s == "nats-unavailable" || s == "overloaded" || s == "rate-limited") {
                assert!(response["headers"].get("Retry-After").is_some(), "{route:?}: {status} documents Retry-After");
            }
            if slugs.iter().any(|s| s == "unauthorized") {
                assert!(
                    response["headers"].get("WWW-Authenticate").is_some(),
                    "{route:?}: 401 documents WWW-Authenticate"
                );
            }
        }
        // Every error response is a documented problem (or, for a batch, a BatchResult).
        for (code, response) in op["responses"].as_object().expect("responses") {
            if code.starts_with('4') || code.starts_with('5') {
                assert!(
                    response.get("x-problem-types").is_some() || route.1 == "/readyz",
                    "{route:?}: error response {code} has no x-problem-types"
                );
            }
        }
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            secured,
            API.contains(&route),
            "{route:?}: the API routes (and only they) require the bearer scheme"
        );
    }

    // The statuses a publisher must be ready for, across both publish routes.
    let statuses: BTreeSet<String> = [PUBLISH_ONE, PUBLISH_BATCH]
        .into_iter()
        .flat_map(|route| documented_problems(operation(&spec, route)).into_keys())
        .collect();
    for status in ["400", "401", "403", "404", "413", "415", "422", "503", "504"] {
        assert!(statuses.contains(status), "no publish route documents {status}");
    }

    // Success answers.
    let codes = |route| -> BTreeSet<String> {
        operation(&spec, route)["responses"].as_object().expect("responses").keys().cloned().collect()
    };
    assert!(
        codes(PUBLISH_ONE).is_superset(&BTreeSet::from(["200".into(), "202".into()])),
        "publish: 200 duplicate, 202 stored"
    );
    assert!(codes(PUBLISH_BATCH).is_superset(&BTreeSet::from(["202".into(), "207".into()])), "batch: 202 and 207");
}

/// A batch answer whose items all failed is a 503 `BatchResult`, not a problem; failed items
/// carry `index`, `id` and `error`.
#[test]
fn batch_results_are_documented_as_answered() {
    let spec = spec();
    let responses = &operation(&spec, PUBLISH_BATCH)["responses"];
    for code in ["202", "207", "503"] {
        assert_eq!(
            responses[code]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/BatchResult",
            "batch {code} documents a BatchResult"
        );
    }
    let result = &spec["components"]["schemas"]["BatchResult"];
    let required: BTreeSet<&str> =
        result["required"].as_array().expect("BatchResult.required").iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["stored", "duplicates", "failed", "results"]));
    let failure = &spec["components"]["schemas"]["BatchFailure"];
    for member in ["index", "id", "error"] {
        assert!(
            failure["required"].as_array().expect("BatchFailure.required").iter().any(|m| m == member),
            "BatchFailure requires {member}"
        );
    }
}

#[test]
fn subscription_routes_document_their_answers() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    let ok_schema = |route: Route| -> String {
        operation(&spec, route)["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{route:?}: 200 has no JSON schema"))
            .to_owned()
    };
    assert_eq!(ok_schema(SUBSCRIPTIONS), "#/components/schemas/SubscriptionList");
    for route in [SUBSCRIPTION, PAUSE, RESUME] {
        assert_eq!(ok_schema(route), "#/components/schemas/Subscription", "{route:?}");
    }
    assert_eq!(ok_schema(DEAD_LETTERS), "#/components/schemas/DeadLetterPage");
    assert_eq!(ok_schema(REPLAY), "#/components/schemas/ReplayResult");
    assert_eq!(ok_schema(DISCARD), "#/components/schemas/DiscardResult");
    // The request and query shapes the handlers take: replay and discard select alike.
    for route in [REPLAY, DISCARD] {
        assert_eq!(
            operation(&spec, route)["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ReplayRequest",
            "{route:?}"
        );
    }
    let subscription = &schemas["Subscription"]["properties"];
    assert!(subscription.get("breaker").is_some() && subscription.get("paused_at").is_some());
    let replay = &schemas["ReplayRequest"]["properties"];
    assert!(replay.get("ids").is_some() && replay.get("all").is_some());
    let params: BTreeSet<&str> = operation(&spec, DEAD_LETTERS)["parameters"]
        .as_array()
        .expect("dead-letters parameters")
        .iter()
        .filter_map(|p| p["$ref"].as_str())
        .filter_map(|r| r.strip_prefix("#/components/parameters/"))
        .map(|name| spec["components"]["parameters"][name]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(params, BTreeSet::from(["after", "limit"]));
    // Every class a dead letter, a status or a last error can name is in the enum.
    let listed: BTreeSet<&str> = schemas["DeliveryClass"]["enum"]
        .as_array()
        .expect("DeliveryClass.enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: BTreeSet<&str> = CLASSES.iter().map(|c| c.slug()).collect();
    assert_eq!(listed, all, "DeliveryClass enum vs outcome::Class");
}

/// The `delivery` webhook documents how every answer is classified, as the code classifies it.
#[test]
fn delivery_webhook_classifies_answers_like_the_code() {
    let spec = spec();
    let op = &spec["webhooks"]["delivery"]["post"];
    assert!(op.is_object(), "docs/openapi.json has no webhooks.delivery.post");
    let responses = op["responses"].as_object().expect("webhook responses");
    let classes_of = |key: &str| -> BTreeSet<String> {
        responses[key]["x-delivery-class"]
            .as_array()
            .unwrap_or_else(|| panic!("webhook response {key} has no x-delivery-class"))
            .iter()
            .map(|c| c.as_str().expect("class").to_owned())
            .collect()
    };
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for status in 100u16..=599 {
        // The most specific response object documents the status.
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        let key = [exact.as_str(), range.as_str(), "default"]
            .into_iter()
            .find(|k| responses.contains_key(*k))
            .unwrap_or_else(|| panic!("no webhook response documents {status}"));
        for retry_after in [false, true] {
            let class = Class::of_status(status, retry_after).slug();
            assert!(
                classes_of(key).contains(class),
                "webhook response {key} does not list `{class}`, the class of {status} \
                 (Retry-After: {retry_after})"
            );
            seen.entry(key.to_owned()).or_default().insert(class.to_owned());
        }
    }
    for key in responses.keys() {
        assert_eq!(
            classes_of(key),
            seen.remove(key).unwrap_or_default(),
            "webhook response {key} lists classes no status of it is given"
        );
    }
    for header in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "traceparent",
        "magistral-subject",
        "magistral-attempt",
        "magistral-subscription",
    ] {
        assert!(
            op["parameters"]
                .as_array()
                .expect("webhook parameters")
                .iter()
                .any(|p| p["in"] == "header" && p["name"] == header),
            "webhook documents header {header}"
        );
    }

    // The classes no status gives: no answer at all (`x-no-answer`), or no request sent
    // because of the subscription's transform (`x-no-request`). Each is documented with the
    // decision the code takes after a first attempt, and together with the statuses they
    // cover every class.
    let policy = RetryPolicy { schedule: vec![Duration::from_secs(1)], max_attempts: 30, retry_client_errors: false };
    let decision = |class: Class| match policy.decide(class, 1, None) {
        Decision::Ack => "ack",
        Decision::Retry(_) => "retry",
        Decision::DeadLetter => "dead-letter",
        Decision::PauseSubscription => "pause",
    };
    let mut documented: BTreeSet<String> = responses.keys().flat_map(|k| classes_of(k)).collect();
    for (member, classes) in [
        ("x-no-answer", &[Class::Timeout, Class::Unreachable][..]),
        (
            "x-no-request",
            &[
                Class::TransformFailed,
                Class::Skipped,
                Class::Unencodable,
                Class::ConversionFailed,
                Class::ConversionInvalid,
            ][..],
        ),
    ] {
        let listed: BTreeMap<String, String> = op[member]
            .as_object()
            .unwrap_or_else(|| panic!("webhooks.delivery.post has no {member}"))
            .iter()
            .map(|(class, what)| (class.clone(), what.as_str().expect("a decision").to_owned()))
            .collect();
        let expected: BTreeMap<String, String> =
            classes.iter().map(|c| (c.slug().to_owned(), decision(*c).to_owned())).collect();
        assert_eq!(listed, expected, "webhooks.delivery.post.{member}: class -> decision");
        documented.extend(listed.into_keys());
    }
    let all: BTreeSet<String> = CLASSES.iter().map(|c| c.slug().to_owned()).collect();
    assert_eq!(documented, all, "the delivery webhook documents every outcome class");
}

/// HTTP pull and the event stream document their request and answer shapes as the handlers
/// take and give them: fetch `{max, wait}` → `{messages}`; ack `{acks: [{token, action, delay}]}`
/// → 200/207 `{results, failed}` whose per-item errors are `already-acked` or
/// `nats-unavailable`; events as `text/event-stream`, resumable with `Last-Event-ID` (or
/// `?last_event_id=`), and the only route that takes `?access_token=`.
#[test]
fn pull_and_event_routes_document_their_answers() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    let names = |v: &Value| -> BTreeSet<String> {
        v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect()
    };
    let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().expect("object").keys().cloned().collect() };
    let body_schema =
        |route: Route| operation(&spec, route)["requestBody"]["content"]["application/json"]["schema"]["$ref"].clone();
    let answer_schema = |route: Route, code: &str| {
        operation(&spec, route)["responses"][code]["content"]["application/json"]["schema"]["$ref"].clone()
    };

    // Fetch: an optional body.
    assert_eq!(body_schema(FETCH), "#/components/schemas/FetchRequest");
    assert_eq!(operation(&spec, FETCH)["requestBody"]["required"], false, "an empty body is allowed");
    assert_eq!(keys(&schemas["FetchRequest"]["properties"]), set(&["max", "wait"]));
    assert_eq!(answer_schema(FETCH, "200"), "#/components/schemas/FetchResult");
    assert_eq!(
        names(&schemas["PulledMessage"]["required"]),
        set(&["id", "subject", "stream", "seq", "time", "publisher", "attributes", "delivery_count", "ack_token"])
    );
    for member in ["data", "data_base64"] {
        assert!(schemas["PulledMessage"]["properties"].get(member).is_some(), "PulledMessage documents {member}");
    }

    // Ack: per-item results, whole-request refusal for bad tokens.
    assert_eq!(body_schema(ACK), "#/components/schemas/AckRequest");
    assert_eq!(keys(&schemas["AckItem"]["properties"]), set(&["token", "action", "delay"]));
    assert_eq!(names(&schemas["AckItem"]["properties"]["action"]["enum"]), set(&["ack", "nak", "term", "in-progress"]));
    for code in ["200", "207"] {
        assert_eq!(answer_schema(ACK, code), "#/components/schemas/AckResult", "ack {code}");
    }
    assert_eq!(names(&schemas["AckResult"]["required"]), set(&["results", "failed"]));
    let item_problems = names(&operation(&spec, ACK)["responses"]["207"]["x-item-problem-types"]);
    assert_eq!(item_problems, set(&["already-acked", "nats-unavailable"]));
    for slug in &item_problems {
        assert!(ProblemType::ALL.iter().any(|k| k.slug() == slug), "{slug} is a problem type");
        assert!(ERRORS_MD.contains(&format!("### `{slug}`")), "docs/errors.md explains {slug}");
    }
    let refused = &operation(&spec, ACK)["responses"]["422"]["content"]["application/problem+json"]["examples"]["invalid-ack-token"]
        ["value"];
    assert!(
        refused["items"].as_array().is_some_and(|i| !i.is_empty()),
        "the 422 example shows the refused tokens in `items`"
    );
    assert!(schemas["RefusedAckToken"]["required"].as_array().is_some_and(|r| r.len() == 2));

    // Events.
    let events = operation(&spec, EVENTS);
    assert!(
        events["responses"]["200"]["content"].get("text/event-stream").is_some(),
        "events answer text/event-stream"
    );
    let params: BTreeSet<String> = events["parameters"]
        .as_array()
        .expect("events parameters")
        .iter()
        .map(|p| {
            let r = p["$ref"].as_str().expect("parameters by $ref");
            spec.pointer(r.trim_start_matches('#')).expect("resolves")["name"].as_str().expect("name").to_owned()
        })
        .collect();
    assert_eq!(params, set(&["Last-Event-ID", "last_event_id"]));
    assert!(
        events["responses"]["429"]["headers"].get("Retry-After").is_some(),
        "too-many-streams documents Retry-After"
    );
    // `?access_token=` is a security scheme of this route alone.
    let scheme = &spec["components"]["securitySchemes"]["accessTokenQuery"];
    assert_eq!(
        (&scheme["type"], &scheme["in"], &scheme["name"]),
        (&Value::from("apiKey"), &Value::from("query"), &Value::from("access_token"))
    );
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let uses = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("accessTokenQuery").is_some()));
            assert_eq!(
                uses,
                (method.as_str(), path.as_str()) == EVENTS,
                "{method} {path}: ?access_token= is for the event stream only"
            );
        }
    }
    // Owner-only: no admin exception, so the 403 says so.
    for route in OWNER_ONLY {
        let forbidden = operation(&spec, *route)["responses"]["403"]["description"].as_str().expect("403 description");
        assert!(forbidden.contains("admin"), "{route:?}: 403 says whether admin may");
    }
}

/// The request route and the directory routes document what they answer on success, and the
/// query parameters and headers their handlers read.
#[test]
fn request_and_directory_routes_document_their_answers() {
    let spec = spec();
    let response = |route: Route, code: &str| -> Value {
        let r = operation(&spec, route)["responses"][code].clone();
        assert!(r.is_object(), "{route:?} documents no {code}");
        r
    };
    let json_schema = |route: Route, code: &str| -> Option<String> {
        response(route, code)["content"]["application/json"]["schema"]["$ref"].as_str().map(str::to_owned)
    };
    let has_header = |route: Route, code: &str, header: &str| response(route, code)["headers"].get(header).is_some();
    // Parameter names of an operation, with the path item's, resolving `$ref`s.
    let parameters = |route: Route| -> BTreeSet<String> {
        let path_item = &spec["paths"][route.1];
        [&path_item["parameters"], &operation(&spec, route)["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| match p["$ref"].as_str() {
                Some(r) => spec.pointer(r.trim_start_matches('#')).expect("parameter $ref resolves"),
                None => p,
            })
            .map(|p| p["name"].as_str().expect("parameter name").to_owned())
            .collect()
    };
    let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };

    // Request/reply: 200 is the reply as the responder sent it (no schema of the gateway's own).
    assert!(response(REQUEST, "200")["content"].get("application/json").is_some());
    assert!(json_schema(REQUEST, "200").is_none(), "the reply's shape is the responder's");
    assert!(parameters(REQUEST).is_superset(&set(&["subject", "timeout", "ce-id", "ce-type", "traceparent"])));

    // Directories.
    assert_eq!(json_schema(KV_LIST, "200").as_deref(), Some("#/components/schemas/KeyList"));
    assert_eq!(parameters(KV_LIST), set(&["bucket", "prefix", "limit", "cursor"]));
    let keys = &spec["components"]["schemas"]["KeyList"];
    let required: BTreeSet<&str> =
        keys["required"].as_array().expect("KeyList.required").iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["bucket", "keys", "next"]));

    assert!(has_header(KV_GET, "200", "ETag") && has_header(KV_GET, "200", "Last-Modified"));
    for code in ["200", "201"] {
        assert_eq!(json_schema(KV_PUT, code).as_deref(), Some("#/components/schemas/KvWriteResult"), "PUT {code}");
        assert!(has_header(KV_PUT, code, "ETag"), "PUT {code} documents ETag");
    }
    assert!(has_header(KV_DELETE, "204", "ETag"));
    assert!(parameters(KV_PUT).is_superset(&set(&["bucket", "key", "If-Match", "If-None-Match"])));
    assert!(parameters(KV_DELETE).is_superset(&set(&["bucket", "key", "If-Match"])));
    for route in [KV_GET, KV_PUT, KV_DELETE] {
        assert!(parameters(route).is_superset(&set(&["bucket", "key"])), "{route:?}");
    }
}

/// "Where is my message?" and the inbound adapters document what their handlers take and
/// answer: a message with its per-subscription delivery states (every state the handler can
/// name), the correlation query, and an inbound route's three kinds — a bearer token or none,
/// JSON or a Bitrix24 form, the Business Central handshake as `text/plain`, and its batch answer.
#[test]
fn tracking_and_inbound_routes_document_their_answers() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    let strings = |v: &Value| -> BTreeSet<String> {
        v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect()
    };
    let parameters = |route: Route| -> BTreeSet<String> {
        [&spec["paths"][route.1]["parameters"], &operation(&spec, route)["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| match p["$ref"].as_str() {
                Some(r) => spec.pointer(r.trim_start_matches('#')).expect("parameter $ref resolves"),
                None => p,
            })
            .map(|p| p["name"].as_str().expect("parameter name").to_owned())
            .collect()
    };
    let content = |route: Route, code: &str| -> Value {
        let c = operation(&spec, route)["responses"][code]["content"].clone();
        assert!(c.is_object(), "{route:?} {code} has no content");
        c
    };

    assert_eq!(content(MESSAGE, "200")["application/json"]["schema"]["$ref"], "#/components/schemas/TrackedMessage");
    assert_eq!(
        strings(&schemas["TrackedMessage"]["required"]),
        set(&["id", "subject", "stream", "seq", "publisher", "type", "time", "correlation_id", "subscriptions"])
    );
    assert_eq!(
        strings(&schemas["DeliveryState"]["properties"]["state"]["enum"]),
        set(&[
            "pending",
            "in-flight",
            "delivered",
            "acked",
            "terminated",
            "retrying",
            "dead-letter",
            "blocked",
            "paused",
            "unknown",
            "live-only"
        ])
    );
    for member in ["attempts", "next_attempt", "last_error", "class", "status", "at", "detail"] {
        assert!(schemas["DeliveryState"]["properties"].get(member).is_some(), "DeliveryState documents {member}");
    }
    assert_eq!(parameters(MESSAGE), set(&["id"]));
    assert_eq!(parameters(MESSAGES), set(&["correlation_id", "limit"]));
    assert_eq!(content(MESSAGES, "200")["application/json"]["schema"]["$ref"], "#/components/schemas/MessageList");

    // Inbound: a bearer token for the `json` kind, none for the others.
    let security = operation(&spec, INBOUND)["security"].as_array().expect("security").clone();
    assert!(security.iter().any(|s| s.get("bearer").is_some()), "json routes take a bearer token");
    assert!(
        security.iter().any(|s| s.as_object().is_some_and(serde_json::Map::is_empty)),
        "bitrix24 and business-central routes take none"
    );
    assert!(parameters(INBOUND).is_superset(&set(&["name", "validationToken", "Idempotency-Key", "traceparent"])));
    let body = &operation(&spec, INBOUND)["requestBody"];
    assert_eq!(body["required"], false, "the Business Central handshake has no body");
    for media in ["application/json", "application/x-www-form-urlencoded"] {
        assert!(body["content"].get(media).is_some(), "inbound takes {media}");
    }
    assert!(content(INBOUND, "200").get("text/plain").is_some(), "the handshake echoes as text/plain");
    assert_eq!(content(INBOUND, "200")["application/json"]["schema"]["$ref"], "#/components/schemas/PublishResult");
    let accepted: BTreeSet<String> = content(INBOUND, "202")["application/json"]["schema"]["oneOf"]
        .as_array()
        .expect("202 oneOf")
        .iter()
        .map(|s| s["$ref"].as_str().expect("$ref").to_owned())
        .collect();
    assert_eq!(accepted, set(&["#/components/schemas/PublishResult", "#/components/schemas/InboundBatchResult"]));
    assert_eq!(strings(&schemas["InboundBatchResult"]["required"]), set(&["stored", "ignored"]));
}

/// The `responder` webhook documents the request a responder's endpoint receives (the
/// delivery headers, less the per-attempt ones) and turns each answer into the reply as the
/// code does: 2xx is the reply; otherwise `Nats-Service-Error` names the delivery class of
/// the status (`Class::of_status`, never with `Retry-After`) and `Nats-Service-Error-Code` is
/// the status for a 4xx, 502 for anything else; no answer is 504, no connection 503.
#[test]
fn responder_webhook_maps_answers_like_the_code() {
    let spec = spec();
    let op = &spec["webhooks"]["responder"]["post"];
    assert!(op.is_object(), "docs/openapi.json has no webhooks.responder.post");
    let responses = op["responses"].as_object().expect("responder responses");
    for status in 100u16..=599 {
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        let key = [exact.as_str(), range.as_str(), "default"]
            .into_iter()
            .find(|k| responses.contains_key(*k))
            .unwrap_or_else(|| panic!("no responder response documents {status}"));
        let response = &responses[key];
        let class = Class::of_status(status, false).slug();
        assert!(
            response["x-delivery-class"]
                .as_array()
                .unwrap_or_else(|| panic!("responder response {key} has no x-delivery-class"))
                .iter()
                .any(|c| c == class),
            "responder response {key} does not list `{class}`, the class of {status}"
        );
        let code = &response["x-service-error-code"];
        match status {
            200..=299 => assert!(code.is_null(), "{key}: a 2xx is the reply, not an error"),
            400..=499 => assert!(
                code == "status" || code.as_u64() == Some(u64::from(status)),
                "{key}: a {status} travels as error code {status}, documented {code}"
            ),
            _ => assert_eq!(code.as_u64(), Some(502), "{key}: a {status} becomes error code 502"),
        }
    }
    assert_eq!(op["x-no-answer"]["endpoint-timeout"], 504);
    assert_eq!(op["x-no-answer"]["endpoint-unreachable"], 503);

    let headers: BTreeSet<&str> = op["parameters"]
        .as_array()
        .expect("responder parameters")
        .iter()
        .filter(|p| p["in"] == "header")
        .filter_map(|p| p["name"].as_str())
        .collect();
    for header in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "traceparent",
        "magistral-subject",
    ] {
        assert!(headers.contains(header), "responder webhook documents header {header}");
    }
    for header in ["magistral-attempt", "magistral-subscription"] {
        assert!(!headers.contains(header), "a responder request has no {header}");
    }
}

/// docs/errors.md has a delivery outcome table: one row per class.
#[test]
fn errors_md_lists_every_delivery_class() {
    let section =
        ERRORS_MD.split("## Delivery outcomes").nth(1).expect("docs/errors.md has a `## Delivery outcomes` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: BTreeSet<&str> = section
        .lines()
        .filter_map(|line| line.trim().strip_prefix("| `").and_then(|rest| rest.split_once('`')).map(|(slug, _)| slug))
        .collect();
    let all: BTreeSet<&str> = CLASSES.iter().map(|c| c.slug()).collect();
    assert_eq!(rows, all, "delivery outcome rows in docs/errors.md vs outcome::Class");
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
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not a local reference"));
        assert!(spec.pointer(pointer).is_some(), "{r} does not resolve in docs/openapi.json");
    }
}
