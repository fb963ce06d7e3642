//! `GET /v1/contracts`, `GET /v1/contracts/{name}/{version}` and `GET /v1/asyncapi.json`: what
//! the bus tells the caller about itself (the domain is [`crate::describe`]); and
//! `PUT /v1/contracts/{name}/{version}`, a participant registering a contract version
//! ([`crate::contracts::registry`]).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::extract::{Caller, JsonBody};
use super::header_str;
use super::problem::{Problem, ProblemType};
use crate::contracts::compat::Compatibility;
use crate::contracts::registry::{RegisterOutcome, Registration};
use crate::describe::{self, asyncapi};

/// Schemas change only when configuration does: a client may keep one, but asks each time.
const REVALIDATE: HeaderValue = HeaderValue::from_static("private, no-cache");

/// `GET /v1/contracts`
pub(crate) async fn list(caller: Caller) -> Response {
    Json(json!({ "contracts": describe::contract_index(caller.catalog(), caller.participant()) })).into_response()
}

/// `GET /v1/contracts/{name}/{version}`: the schema, with a strong entity tag.
pub(crate) async fn schema(
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let not_found = || Problem::new(ProblemType::NotFound, format!("no contract {name} version {version} for you"));
    // `1` or `v1`: both spellings are in use (the dataschema URNs say `v1`).
    let number = version.strip_prefix('v').unwrap_or(&version).parse::<u32>().map_err(|_| not_found())?;
    let served =
        describe::served_schema(caller.catalog(), caller.participant(), &name, number).ok_or_else(not_found)?;
    let etag =
        HeaderValue::from_str(&served.etag).map_err(|_| Problem::new(ProblemType::Internal, "internal error"))?;
    if header_str(&headers, header::IF_NONE_MATCH.as_str()).is_some_and(|v| describe::none_match(v, &served.etag)) {
        return Ok(
            (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (header::CACHE_CONTROL, REVALIDATE)]).into_response()
        );
    }
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/schema+json")),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, REVALIDATE),
        ],
        served.bytes,
    )
        .into_response())
}

/// `GET /v1/asyncapi.json`: the document for the caller, its gateway server named as the
/// caller reached it.
pub(crate) async fn asyncapi(caller: Caller, headers: HeaderMap) -> Response {
    let catalog = caller.catalog();
    let servers = asyncapi::Servers {
        gateway: gateway_host(&headers),
        // Behind a TLS-terminating proxy the gateway itself only sees plain HTTP.
        gateway_tls: header_str(&headers, "x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https")),
        nats: catalog.nats_servers.clone(),
    };
    let document = asyncapi::document(catalog, &servers, Some(caller.participant()));
    ([(header::CACHE_CONTROL, REVALIDATE)], Json(document)).into_response()
}

/// The `Host` the caller used (a proxy's `X-Forwarded-Host` first), when it is a valid
/// authority; else `localhost`.
fn gateway_host(headers: &HeaderMap) -> String {
    ["x-forwarded-host", header::HOST.as_str()]
        .iter()
        .filter_map(|h| header_str(headers, h))
        .map(|v| v.split(',').next().unwrap_or("").trim())
        .find(|v| v.parse::<axum::http::uri::Authority>().is_ok_and(|a| a.as_str() == *v && !v.contains('@')))
        .map_or_else(|| "localhost".to_owned(), str::to_owned)
}

/// `PUT /v1/contracts/{name}/{version}`: registers a version (the body is its JSON Schema;
/// `?subject=` binds it, repeatable; `?compatibility=` sets its mode). 201 when stored, 200
/// when the same version with the same content already was (a retried request).
pub(crate) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    JsonBody(schema): JsonBody<serde_json::Value>,
) -> Result<Response, Problem> {
    let number = version.strip_prefix('v').unwrap_or(&version).parse::<u32>().map_err(|_| {
        Problem::new(ProblemType::InvalidQuery, format!("{version:?} is not a version number (1, 2, … or v1, v2, …)"))
    })?;
    let mut subjects = Vec::new();
    let mut compatibility = None;
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "subject" => subjects.push(value.into_owned()),
            "compatibility" => {
                compatibility =
                    Some(value.parse::<Compatibility>().map_err(|e| Problem::new(ProblemType::InvalidQuery, e))?);
            }
            other => {
                return Err(Problem::new(
                    ProblemType::InvalidQuery,
                    format!("unknown parameter {other:?}: subject and compatibility are"),
                ));
            }
        }
    }
    let registration = Registration { name, version: number, schema, subjects, compatibility };
    let outcome = state
        .registry
        .register(state.publisher.jetstream(), caller.catalog(), caller.participant(), registration)
        .await?;
    let (status, record) = match outcome {
        RegisterOutcome::Created(r) => (StatusCode::CREATED, r),
        RegisterOutcome::Unchanged(r) => (StatusCode::OK, r),
    };
    // Who changed what the bus validates against: an audit line per registration (a retried
    // one too, marked unchanged), whichever replica took it.
    tracing::info!(
        participant = %caller.name(),
        contract = %record.name,
        version = record.version,
        subjects = ?record.subjects,
        unchanged = status == StatusCode::OK,
        "contract registered over the API"
    );
    let location = format!("/v1/contracts/{}/{}", record.name, record.version);
    let location =
        HeaderValue::from_str(&location).map_err(|_| Problem::new(ProblemType::Internal, "internal error"))?;
    let body = json!({
        "name": record.name,
        "version": record.version,
        "subjects": record.subjects,
        "compatibility": record.compatibility,
        "registeredBy": record.registered_by,
        "schema": location.to_str().unwrap_or_default(),
    });
    Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
}
