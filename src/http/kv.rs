//! Directories over HTTP: `GET/PUT/DELETE /v1/kv/{bucket}/{key}` and `GET /v1/kv/{bucket}`
//! (paged keys). `ETag` is the KV revision; `If-Match` makes a write compare-and-set.
//! The operations themselves are in [`crate::directory`]; here: parse, call, answer.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::extract::{Caller, require_json};
use super::problem::{Problem, ProblemType};
use super::{AppState, header_str, read_body};
/// Where the gateway's state keeps its open buckets (the cache itself belongs to directories).
use crate::directory::{self, Access, Directories, Entry, Key, Paging, Precondition, Trace, Written};

fn directories(state: &AppState) -> Directories<'_> {
    Directories { client: &state.client, js: state.publisher.jetstream(), stores: &state.stores, limits: &state.limits }
}

/// `GET /v1/kv/{bucket}/{key}`
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let (catalog, participant) = (caller.catalog(), caller.participant());
    let (bucket, key) = key_of(path)?;
    let book = directory::open(catalog, participant, &bucket, Access::Read)?;
    let entry = directory::get(&directories(&state), &book, &key).await?;
    Ok(value_answer(entry))
}

/// `PUT /v1/kv/{bucket}/{key}`: contract-checked; `If-Match` = compare-and-set,
/// `If-None-Match: *` = create only.
pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (catalog, participant) = (caller.catalog(), caller.participant());
    let (bucket, key) = key_of(path)?;
    let book = directory::open(catalog, participant, &bucket, Access::Write)?;
    let charset = require_json(&headers)?;
    let precondition = precondition(&headers)?;
    let value = crate::charset::to_utf8(read_body(body, &headers, state.limits.max_body_bytes).await?, charset)?;
    let written = directory::put(&directories(&state), &book, &key, value, precondition, trace(&headers)).await?;
    let status = if precondition.create_only { StatusCode::CREATED } else { StatusCode::OK };
    let body = Json(json!({ "bucket": bucket, "key": key.as_str(), "revision": written.revision }));
    Ok(with_etag((status, body).into_response(), written))
}

/// `DELETE /v1/kv/{bucket}/{key}` (`If-Match` honoured).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (catalog, participant) = (caller.catalog(), caller.participant());
    let (bucket, key) = key_of(path)?;
    let book = directory::open(catalog, participant, &bucket, Access::Write)?;
    let expected = if_match(&headers)?;
    let written = directory::delete(&directories(&state), &book, &key, expected, trace(&headers)).await?;
    Ok(with_etag(StatusCode::NO_CONTENT.into_response(), written))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    /// The `next` of the previous page: keys after it.
    cursor: Option<String>,
}

/// `GET /v1/kv/{bucket}?prefix=&limit=&cursor=`: keys in order, a page at a time.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    bucket: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let (catalog, participant) = (caller.catalog(), caller.participant());
    let Ok(Path(bucket)) = bucket else {
        return Err(Problem::new(ProblemType::NotFound, "no such directory"));
    };
    let Query(query) = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let book = directory::open(catalog, participant, &bucket, Access::Read)?;
    let paging = Paging { prefix: query.prefix, limit: query.limit, cursor: query.cursor };
    let page = directory::list(&directories(&state), &book, &paging).await?;
    Ok(Json(json!({ "bucket": bucket, "keys": page.keys, "next": page.next })).into_response())
}

/// The bucket and the checked key of a `/v1/kv/{bucket}/{key}` path.
fn key_of(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, Key), Problem> {
    let Ok(Path((bucket, key))) = path else {
        return Err(Problem::new(ProblemType::InvalidKey, "the bucket or key is not valid UTF-8 once percent-decoded"));
    };
    Ok((bucket, Key::new(key)?))
}

/// `If-Match` (compare-and-set) and `If-None-Match: *` (create only).
fn precondition(headers: &HeaderMap) -> Result<Precondition, Problem> {
    let create_only = header_str(headers, "if-none-match").map(str::trim) == Some("*");
    Ok(Precondition { revision: if_match(headers)?, create_only })
}

/// `If-Match: "7"` (or `7`) → 7.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = header_str(headers, "if-match") else { return Ok(None) };
    let value = value.trim().trim_start_matches("W/").trim_matches('"');
    value
        .parse::<u64>()
        .map(Some)
        .map_err(|_| Problem::new(ProblemType::InvalidHeader, "If-Match takes the revision from an ETag, e.g. \"7\""))
}

fn trace(headers: &HeaderMap) -> Trace<'_> {
    Trace { traceparent: header_str(headers, "traceparent"), tracestate: header_str(headers, "tracestate") }
}

/// The value as stored, with its revision (`ETag`) and time (`Last-Modified`).
fn value_answer(entry: Entry) -> Response {
    let mut response = (StatusCode::OK, entry.value).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::ETAG, etag(entry.revision));
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(entry.modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    response
}

fn with_etag(mut response: Response, written: Written) -> Response {
    response.headers_mut().insert(header::ETAG, etag(written.revision));
    response
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}
