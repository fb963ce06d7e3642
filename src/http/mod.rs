//! The HTTP surface: routes, shared state, and the extractors every route uses so that bad
//! input comes back in our problem format before any business check runs.

pub(crate) mod access;
pub(crate) mod admission;
pub mod console;
pub(crate) mod describe;
pub mod events;
pub(crate) mod export;
pub(crate) mod extract;
pub(crate) mod import;
pub(crate) mod inbound;
pub(crate) mod kv;
pub(crate) mod messages;
pub mod ops;
pub mod problem;
pub(crate) mod publish;
pub(crate) mod pull;
pub(crate) mod request;
pub(crate) mod subscriptions;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::catalog::Catalog;
use crate::config::Limits;
use crate::participants::Participant;
use crate::publish::Publisher;
pub use crate::runtime::Health;
use crate::runtime::Runtime;
pub use extract::{Caller, JsonBody, JsonBytes, SubjectPath};
use problem::{Problem, ProblemType};

/// What every request handler shares: one `Arc`, so extracting it per request is one
/// reference-count increment (cloning the fields one by one was ~13 % of the gateway's
/// samples on request paths, issue 16). Fields are reached through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    #[must_use]
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    /// Participants, contracts, streams; swapped whole when configuration is reloaded.
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub limits: Arc<Limits>,
    pub publisher: Publisher,
    pub client: async_nats::Client,
    pub health: Arc<Health>,
    pub metrics: PrometheusHandle,
    pub deliveries: Arc<crate::delivery::Deliveries>,
    pub responders: Arc<crate::request::Responders>,
    /// Open directory buckets.
    pub stores: Arc<crate::directory::Stores>,
    /// Open event streams per participant.
    pub sse_streams: Arc<events::StreamCounts>,
    /// Per-participant in-flight slots and publish rate (see [`admission`]).
    pub admission: Arc<admission::Admission>,
    /// Cancelled when the gateway starts shutting down (ends endless responses: event streams).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Contracts registered over the API (`PUT /v1/contracts/{name}/{version}`).
    pub registry: Arc<crate::contracts::registry::Registry>,
    /// The operator console's sessions and live tails.
    pub console: Arc<console::Console>,
}

impl AppState {
    /// The parts reconciling and reloading work on.
    #[must_use]
    pub fn runtime(&self) -> Runtime {
        Runtime {
            catalog: self.catalog.clone(),
            publisher: self.publisher.clone(),
            deliveries: self.deliveries.clone(),
            responders: self.responders.clone(),
            health: self.health.clone(),
            registry: self.registry.clone(),
        }
    }

    /// A state for driving [`router`] in tests without a broker: `client` may be one that
    /// never connected (`ConnectOptions::new().retry_on_initial_connect()`), so everything
    /// up to the first NATS call answers as in production.
    ///
    /// # Panics
    /// When the delivery engine cannot be built (no TLS provider for its HTTP client).
    #[doc(hidden)]
    #[must_use]
    pub fn for_tests(catalog: Catalog, limits: Limits, client: async_nats::Client) -> Self {
        use tokio_util::sync::CancellationToken;
        use tokio_util::task::TaskTracker;

        let limits = Arc::new(limits);
        let publisher = Publisher::new(client.clone(), &limits);
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        #[allow(clippy::expect_used)]
        let engine = crate::delivery::Engine::new(publisher.jetstream().clone(), 1).expect("delivery engine");
        let http_client = engine.http.clone();
        let deliveries = Arc::new(crate::delivery::Deliveries::new(Arc::new(engine), tasks.clone(), shutdown.clone()));
        let responders =
            Arc::new(crate::request::Responders::new(client.clone(), http_client, tasks, shutdown.clone()));
        Self::new(Shared {
            catalog: Arc::new(ArcSwap::from_pointee(catalog)),
            admission: Arc::new(admission::Admission::new(&limits)),
            limits,
            publisher,
            client,
            health: Arc::new(Health::default()),
            metrics: crate::telemetry::metrics_handle(),
            deliveries,
            responders,
            stores: Arc::new(crate::directory::Stores::default()),
            sse_streams: Arc::new(events::StreamCounts::default()),
            shutdown,
            registry: Arc::new(crate::contracts::registry::Registry::new(1)),
            console: Arc::new(console::Console::new(&crate::config::ConsoleConfig::default())),
        })
    }
}

/// Every route the gateway serves, as `(method, path)` in OpenAPI syntax; the OpenAPI test
/// checks `docs/openapi.json` against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/publish/{subject}"),
    ("post", "/v1/publish"),
    ("post", "/v1/request/{subject}"),
    ("get", "/v1/kv/{bucket}"),
    ("get", "/v1/kv/{bucket}/{key}"),
    ("put", "/v1/kv/{bucket}/{key}"),
    ("delete", "/v1/kv/{bucket}/{key}"),
    ("post", "/v1/inbound/{name}"),
    ("post", "/v1/import/{route}"),
    ("get", "/v1/messages"),
    ("get", "/v1/messages/{id}"),
    ("get", "/v1/subscriptions"),
    ("get", "/v1/subscriptions/{name}"),
    ("post", "/v1/subscriptions/{name}/pause"),
    ("post", "/v1/subscriptions/{name}/resume"),
    ("post", "/v1/subscriptions/{name}/fetch"),
    ("post", "/v1/subscriptions/{name}/ack"),
    ("get", "/v1/subscriptions/{name}/export.xlsx"),
    ("get", "/v1/subscriptions/{name}/export.csv"),
    ("post", "/v1/subscriptions/{name}/export/confirm"),
    ("get", "/v1/subscriptions/{name}/events"),
    ("get", "/v1/subscriptions/{name}/dead-letters"),
    ("post", "/v1/subscriptions/{name}/dead-letters/replay"),
    ("post", "/v1/subscriptions/{name}/dead-letters/discard"),
    ("post", "/v1/subscriptions/{name}/parked-keys/skip"),
    ("post", "/v1/subscriptions/{name}/parked-keys/retry"),
    ("get", "/v1/contracts"),
    ("get", "/v1/contracts/{name}/{version}"),
    ("put", "/v1/contracts/{name}/{version}"),
    ("get", "/v1/asyncapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/overview"),
    ("get", "/v1/tail"),
    ("get", "/console"),
    ("get", "/console/{asset}"),
    ("get", "/console/session"),
    ("post", "/console/session"),
    ("delete", "/console/session"),
];

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/publish/{subject}", post(publish::publish_one))
        .route("/v1/publish", post(publish::publish_batch))
        .route("/v1/request/{subject}", post(request::request))
        .route("/v1/kv/{bucket}", get(kv::list))
        .route("/v1/kv/{bucket}/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/inbound/{name}", post(inbound::inbound))
        .route("/v1/import/{route}", post(import::import))
        .route("/v1/messages", get(messages::list))
        .route("/v1/messages/{id}", get(messages::show))
        .route("/v1/subscriptions", get(subscriptions::list))
        .route("/v1/subscriptions/{name}", get(subscriptions::show))
        .route("/v1/subscriptions/{name}/pause", post(subscriptions::pause))
        .route("/v1/subscriptions/{name}/resume", post(subscriptions::resume))
        .route("/v1/subscriptions/{name}/fetch", post(pull::fetch))
        .route("/v1/subscriptions/{name}/ack", post(pull::ack))
        .route("/v1/subscriptions/{name}/export.xlsx", get(export::xlsx))
        .route("/v1/subscriptions/{name}/export.csv", get(export::csv))
        .route("/v1/subscriptions/{name}/export/confirm", post(export::confirm))
        .route("/v1/subscriptions/{name}/events", get(events::events))
        .route("/v1/subscriptions/{name}/dead-letters", get(subscriptions::dead_letters))
        .route("/v1/subscriptions/{name}/dead-letters/replay", post(subscriptions::replay))
        .route("/v1/subscriptions/{name}/dead-letters/discard", post(subscriptions::discard))
        .route("/v1/subscriptions/{name}/parked-keys/skip", post(subscriptions::skip_key))
        .route("/v1/subscriptions/{name}/parked-keys/retry", post(subscriptions::retry_key))
        .route("/v1/contracts", get(describe::list))
        .route("/v1/contracts/{name}/{version}", get(describe::schema).put(describe::register))
        .route("/v1/asyncapi.json", get(describe::asyncapi))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/overview", get(console::overview))
        .route("/v1/tail", get(console::tail))
        .route("/console", get(console::page))
        .route("/console/{asset}", get(console::asset))
        .route("/console/session", get(console::current).post(console::sign_in).delete(console::sign_out))
        .fallback(|| async { Problem::new(ProblemType::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(ProblemType::MethodNotAllowed, "see /openapi.json for the methods of this route")
        })
        // Before any handler reads a body: body timeouts and per-participant admission.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admission::admission))
        // Before admission: a console session is a caller like a bearer token.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), console::session_layer))
        .with_state(state)
        .layer(axum::middleware::from_fn(access::log))
        // A bug must answer 500 in our format, not drop the connection; the detail stays in
        // the log.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown");
            tracing::error!(panic = message, "request handler panicked");
            axum::response::IntoResponse::into_response(Problem::new(ProblemType::Internal, "internal error"))
        }))
}

/// The participant a request's `Authorization: Bearer` token belongs to. The scheme name is
/// case-insensitive (RFC 9110 §11.1) and any run of spaces or tabs may surround the token;
/// the token itself is compared in constant time.
///
/// # Errors
/// `unauthorized` for a missing, malformed or unknown token.
pub fn authenticate<'c>(catalog: &'c Catalog, headers: &HeaderMap) -> Result<&'c Participant, Problem> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Problem::new(ProblemType::Unauthorized, "send Authorization: Bearer <token>"))?;
    let token =
        value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            Problem::new(ProblemType::Unauthorized, "the Authorization header must be `Bearer <token>`")
        })?;
    catalog.participants.authenticate(token).ok_or_else(|| Problem::new(ProblemType::Unauthorized, "unknown token"))
}

/// The token of a `Bearer` credential: scheme matched case-insensitively, then at least one
/// space or tab, then a token without inner whitespace.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let token = rest.trim_start_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

/// Reads a body of at most `limit` bytes.
///
/// The time it may take is bounded by the [`admission`] middleware, which wraps every
/// request body on every route: `limits.body_read_timeout` in total and
/// `limits.body_idle_timeout` between two pieces.
///
/// # Errors
/// `payload-too-large` past the limit (checked on `Content-Length` first, so an honest
/// oversized upload is refused without reading it); `body-timeout` when the body does not
/// arrive in time (the connection is then closed).
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || Problem::new(ProblemType::PayloadTooLarge, format!("the limit is {limit} bytes"));
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
            while let Some(e) = cause {
                if let Some(timeout) = e.downcast_ref::<admission::BodyTimedOut>() {
                    return Err(Problem::new(ProblemType::BodyTimeout, timeout.0.clone()));
                }
                cause = e.source();
            }
            Err(Problem::new(ProblemType::MalformedJson, format!("the body could not be read: {err}")))
        }
    }
}

/// The media type of a request, lowercased, without parameters.
#[must_use]
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The charset a request's `Content-Type` names, when it is not UTF-8 (see
/// [`crate::charset`]); checked with the content type, before the body is read.
///
/// # Errors
/// `unsupported-media-type` for a label the WHATWG Encoding Standard does not know.
pub fn request_charset(headers: &HeaderMap) -> Result<Option<crate::charset::Charset>, Problem> {
    crate::charset::of_content_type(header_str(headers, header::CONTENT_TYPE.as_str()))
}

/// A header's value as text, when present and ASCII.
#[must_use]
pub fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Records an answer on a traced span: `http.response.status_code`; for a failure its
/// `error.type` (the problem's slug, else the status), an error status when it is a 5xx (a
/// caller's refusal is not the gateway's error).
pub(crate) fn trace_answer(span: &tracing::Span, answer: &Result<axum::response::Response, Problem>) {
    if span.is_disabled() {
        return;
    }
    let (status, slug) = match answer {
        Ok(response) => (response.status(), None),
        Err(problem) => (problem.status(), Some(problem.kind.slug())),
    };
    span.record("http.response.status_code", status.as_u16());
    match slug {
        Some(slug) => crate::telemetry::traces::failed(span, slug, status.is_server_error()),
        None if status.is_server_error() => crate::telemetry::traces::failed(span, status.as_str(), true),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
        for v in
            ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr abc", "Bearer   abc", " Bearer\tabc  ", "bearer \t abc"]
        {
            assert_eq!(bearer_token(v), Some("abc"), "{v:?}");
        }
        for v in ["", "Bearer", "Bearer ", "Basic abc", "Bearerabc", "Bearer a b", "Bear abc", "Bearer: abc"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
