//! `GET /v1/contracts`, `GET /v1/contracts/{name}/{version}` and `GET /v1/asyncapi.json`: what
//! the bus tells the caller about itself (the domain is [`crate::describe`]).

use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::Caller;
use super::header_str;
use super::problem::{Problem, ProblemType};
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
