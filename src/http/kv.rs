//! Directories over HTTP: `GET/PUT/DELETE /v1/kv/{bucket}/{key}` and `GET /v1/kv/{bucket}`
//! (paged keys). `ETag` is the KV revision; `If-Match` makes a write compare-and-set.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate, header_str, media_type, read_body};
use crate::catalog::Catalog;
use crate::directory::{Directory, validate_key};
use crate::participants::Participant;
use crate::publish::cloudevents::{self, StoredAttributes};

/// Open KV handles by bucket, so a read costs one NATS round trip.
#[derive(Default)]
pub struct Stores(Mutex<HashMap<String, kv::Store>>);

impl Stores {
    async fn get(&self, js: &jetstream::Context, bucket: &str, retry_after: u64) -> Result<kv::Store, Problem> {
        if let Some(store) = self.0.lock().ok().and_then(|m| m.get(bucket).cloned()) {
            return Ok(store);
        }
        let store = js.get_key_value(bucket).await.map_err(|e| {
            Problem::new(ProblemType::NatsUnavailable, format!("directory {bucket}: {e}")).retry_after(retry_after)
        })?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(bucket.to_owned(), store.clone());
        }
        Ok(store)
    }
}

enum Access {
    Read,
    Write,
}

fn directory<'c>(
    catalog: &'c Catalog,
    participant: &Participant,
    bucket: &str,
    access: Access,
) -> Result<&'c Directory, Problem> {
    let dir = catalog
        .directory(bucket)
        .ok_or_else(|| Problem::new(ProblemType::NotFound, format!("no directory {bucket}")))?;
    let owner = dir.owner == participant.name;
    let allowed = owner
        || match access {
            Access::Read => participant.may_read(bucket),
            Access::Write => participant.may_write(bucket),
        };
    if !allowed {
        let verb = if matches!(access, Access::Read) { "read" } else { "write" };
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!("participant {} may not {verb} directory {bucket}", participant.name),
        ));
    }
    Ok(dir)
}

fn key_of(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), Problem> {
    let Ok(Path((bucket, key))) = path else {
        return Err(Problem::new(ProblemType::InvalidKey, "the bucket or key is not valid UTF-8 once percent-decoded"));
    };
    validate_key(&key).map_err(|m| Problem::new(ProblemType::InvalidKey, m))?;
    Ok((bucket, key))
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
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

/// `GET /v1/kv/{bucket}/{key}`
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let (bucket, key) = key_of(path)?;
    directory(&catalog, participant, &bucket, Access::Read)?;
    let store = state.stores.get(state.publisher.jetstream(), &bucket, state.limits.retry_after_seconds).await?;
    let entry = store.entry(&key).await.map_err(|e| {
        Problem::new(ProblemType::NatsUnavailable, format!("directory read: {e}"))
            .retry_after(state.limits.retry_after_seconds)
    })?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let mut response = (StatusCode::OK, entry.value).into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(header::ETAG, etag(entry.revision));
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(entry.created.into())) {
                h.insert(header::LAST_MODIFIED, v);
            }
            Ok(response)
        }
        _ => Err(Problem::new(ProblemType::NotFound, format!("no key {key} in {bucket}"))),
    }
}

/// `PUT /v1/kv/{bucket}/{key}`: contract-checked; `If-Match` = compare-and-set,
/// `If-None-Match: *` = create only.
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let (bucket, key) = key_of(path)?;
    let dir = directory(&catalog, participant, &bucket, Access::Write)?;
    match media_type(&headers).as_deref() {
        Some(t) if cloudevents::is_json_media_type(t) => {}
        other => {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                format!("{} is not accepted; send application/json", other.unwrap_or("no Content-Type")),
            ));
        }
    }
    let create_only = header_str(&headers, "if-none-match").map(str::trim) == Some("*");
    let mut expected = match (if_match(&headers)?, create_only) {
        (Some(rev), _) => Some(rev),
        (None, true) => Some(0),
        _ => None,
    };
    let limits = &state.limits;
    let body = read_body(body, &headers, limits.max_body_bytes).await?;
    let mut dataschema = None;
    let contract = match &dir.contract {
        Some((name, version)) => Some(
            catalog
                .contracts
                .get(name, *version)
                .ok_or_else(|| Problem::new(ProblemType::Internal, "the directory's contract is not loaded"))?,
        ),
        None => None,
    };
    crate::publish::check_data(limits, contract, &body)?;
    if let Some(contract) = contract {
        dataschema = Some(contract.dataschema.clone());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let type_ = format!("magistral.directory.{bucket}.put");
    let mut nats_headers = StoredAttributes {
        id: &id,
        source: &participant.source,
        type_: &type_,
        subject: Some(&key),
        dataschema: dataschema.as_deref(),
        time: None,
        extensions: &Default::default(),
        traceparent: header_str(&headers, "traceparent"),
        tracestate: header_str(&headers, "tracestate"),
    }
    .to_nats_headers();
    if create_only && expected == Some(0) {
        // A deleted key may be created again: expect its delete marker (as KV `create` does).
        let store = state.stores.get(state.publisher.jetstream(), &bucket, state.limits.retry_after_seconds).await?;
        if let Ok(Some(entry)) = store.entry(&key).await
            && entry.operation != kv::Operation::Put
        {
            expected = Some(entry.revision);
        }
    }
    if let Some(rev) = expected {
        nats_headers.insert("Nats-Expected-Last-Subject-Sequence", rev.to_string().as_str());
    }
    let revision = write(&state, &bucket, &key, nats_headers, body).await?;
    let status = if create_only { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = (status, Json(json!({ "bucket": bucket, "key": key, "revision": revision }))).into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    Ok(response)
}

/// Writes a KV message (`$KV.<bucket>.<key>`) directly, so it can carry CloudEvents headers.
async fn write(
    state: &AppState,
    bucket: &str,
    key: &str,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
) -> Result<u64, Problem> {
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(Problem::new(ProblemType::NatsUnavailable, "not connected to NATS")
            .retry_after(state.limits.retry_after_seconds));
    }
    let js = state.publisher.jetstream();
    let map = |kind: PublishErrorKind| match kind {
        PublishErrorKind::WrongLastSequence => Problem::new(
            ProblemType::RevisionMismatch,
            "the key changed since that revision (or already exists); read it again",
        ),
        PublishErrorKind::TimedOut => {
            Problem::new(ProblemType::PublishTimeout, "JetStream did not confirm the write in time")
        }
        _ => Problem::new(ProblemType::NatsUnavailable, "the directory write was not stored")
            .retry_after(state.limits.retry_after_seconds),
    };
    let ack = js
        .publish_with_headers(format!("$KV.{bucket}.{key}"), headers, body)
        .await
        .map_err(|e| map(e.kind()))?
        .await
        .map_err(|e| map(e.kind()))?;
    Ok(ack.sequence)
}

/// `DELETE /v1/kv/{bucket}/{key}` (`If-Match` honoured).
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let (bucket, key) = key_of(path)?;
    directory(&catalog, participant, &bucket, Access::Write)?;
    let expected = if_match(&headers)?;
    // Deleting what is not there is a 404, not a marker pushed to every subscriber.
    let store = state.stores.get(state.publisher.jetstream(), &bucket, state.limits.retry_after_seconds).await?;
    let current = store.entry(&key).await.map_err(|e| {
        Problem::new(ProblemType::NatsUnavailable, format!("directory read: {e}"))
            .retry_after(state.limits.retry_after_seconds)
    })?;
    if !current.is_some_and(|e| e.operation == kv::Operation::Put) {
        return Err(Problem::new(ProblemType::NotFound, format!("no key {key} in {bucket}")));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let type_ = format!("magistral.directory.{bucket}.delete");
    let mut nats_headers = StoredAttributes {
        id: &id,
        source: &participant.source,
        type_: &type_,
        subject: Some(&key),
        dataschema: None,
        time: None,
        extensions: &Default::default(),
        traceparent: header_str(&headers, "traceparent"),
        tracestate: header_str(&headers, "tracestate"),
    }
    .to_nats_headers();
    nats_headers.insert("KV-Operation", "DEL");
    if let Some(rev) = expected {
        nats_headers.insert("Nats-Expected-Last-Subject-Sequence", rev.to_string().as_str());
    }
    let revision = write(&state, &bucket, &key, nats_headers, bytes::Bytes::new()).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    /// The `next` of the previous page: keys after it.
    cursor: Option<String>,
}

/// `GET /v1/kv/{bucket}?prefix=&limit=&cursor=`: keys in order, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    bucket: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let Ok(Path(bucket)) = bucket else {
        return Err(Problem::new(ProblemType::NotFound, "no such directory"));
    };
    let Query(query) = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    directory(&catalog, participant, &bucket, Access::Read)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let store = state.stores.get(state.publisher.jetstream(), &bucket, state.limits.retry_after_seconds).await?;
    let unavailable = |e: String| {
        Problem::new(ProblemType::NatsUnavailable, format!("directory list: {e}"))
            .retry_after(state.limits.retry_after_seconds)
    };
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .try_filter(|k| futures::future::ready(k.starts_with(&query.prefix)))
        .try_collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    keys.sort_unstable();
    let start = query.cursor.as_ref().map_or(0, |c| keys.partition_point(|k| k <= c));
    let page: Vec<String> = keys.iter().skip(start).take(limit).cloned().collect();
    let next = (start + page.len() < keys.len()).then(|| page.last().cloned()).flatten();
    Ok(Json(json!({ "bucket": bucket, "keys": page, "next": next })).into_response())
}
