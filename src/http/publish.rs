//! `POST /v1/publish/{subject}` and `POST /v1/publish` (batch): HTTP in, checks, JetStream.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate, header_str, media_type, read_body};
use crate::catalog::Catalog;
use crate::participants::Participant;
use crate::publish::batch::{self, Framing};
use crate::publish::cloudevents::{self, ClientAttributes, StructuredEvent};
use crate::publish::{self, Draft, Outgoing, check_strict, check_utf8};

/// How the request carries its event.
enum Mode {
    /// Body = data; attributes in `ce-*` headers.
    Binary,
    /// Body = a CloudEvents JSON envelope; data in `.data`.
    Structured,
}

fn mode_of(headers: &HeaderMap) -> Result<Mode, Problem> {
    match media_type(headers).as_deref() {
        Some("application/cloudevents+json") => Ok(Mode::Structured),
        Some(t) if cloudevents::is_json_media_type(t) => Ok(Mode::Binary),
        Some(t) => Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            format!("{t} is not accepted; send application/json or application/cloudevents+json"),
        )),
        None => Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            "Content-Type is required: application/json or application/cloudevents+json",
        )),
    }
}

/// Publishes one message; 202 once JetStream stored it, 200 for a duplicate.
pub async fn publish_one(
    State(state): State<AppState>,
    subject: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let subject = match subject {
        Ok(Path(subject)) => subject,
        Err(_) => {
            let problem =
                Problem::new(ProblemType::InvalidSubject, "the subject is not valid UTF-8 once percent-decoded");
            count_refusal(&participant.name, &problem);
            return Err(problem);
        }
    };
    let result = publish_one_checked(&state, &catalog, participant, subject, headers, body).await;
    if let Err(problem) = &result {
        count_refusal(&participant.name, problem);
    }
    result
}

/// Refusals count in `magistral_publish_total` too, so a misbehaving participant shows.
/// (Failures after a stream was chosen are counted by the publisher.)
fn count_refusal(participant: &str, problem: &Problem) {
    if !problem.counted && (problem.kind.status().is_client_error() || problem.kind == ProblemType::Overloaded) {
        metrics::counter!(
            "magistral_publish_total",
            "stream" => "",
            "participant" => participant.to_owned(),
            "outcome" => problem.kind.slug()
        )
        .increment(1);
    }
}

async fn publish_one_checked(
    state: &AppState,
    catalog: &Catalog,
    participant: &Participant,
    subject: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let mode = mode_of(&headers)?;
    let body = read_body(body, &headers, state.limits.max_body_bytes).await?;
    check_utf8(&body)?;

    let (data, data_well_formed, attributes) = match mode {
        Mode::Binary => (body, false, cloudevents::from_http_headers(&headers)?),
        Mode::Structured => {
            // The whole envelope, data included, is checked once here (the envelope adds one
            // level around the data), so the data need not be read again without a contract.
            check_strict(&body, state.limits.max_json_depth + 1)?;
            let event = StructuredEvent::parse(&body).map_err(publish::malformed)?;
            let attributes = event.client_attributes()?;
            let data = event
                .data
                .ok_or_else(|| Problem::new(ProblemType::InvalidCloudEvent, "a structured event needs `data`"))?;
            (body.slice_ref(data.get().as_bytes()), true, attributes)
        }
    };
    let draft = Draft {
        subject,
        data,
        data_well_formed,
        attributes,
        idempotency_key: header_str(&headers, "idempotency-key").map(str::to_owned),
        traceparent: header_str(&headers, "traceparent").map(str::to_owned),
        tracestate: header_str(&headers, "tracestate").map(str::to_owned),
    };
    let outgoing = publish::prepare(catalog, &state.limits, participant, draft)?;
    let stored = state.publisher.publish(outgoing).await?;
    let status = if stored.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(stored)).into_response())
}

/// One batch item. Unknown members are refused so a typo (`"dta"`) is not silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem<'a> {
    subject: String,
    #[serde(borrow)]
    data: &'a RawValue,
    /// Message id (idempotency key) for this item.
    #[serde(default)]
    id: Option<String>,
    /// CloudEvents `type`; defaults to the subject.
    #[serde(default, rename = "type")]
    type_: Option<String>,
    /// Picks a contract version when several are bound.
    #[serde(default)]
    dataschema: Option<String>,
    /// CloudEvents `correlationid`: ties the item to a business transaction.
    #[serde(default)]
    correlation_id: Option<String>,
}

/// Publishes a batch: every item is checked first; one bad item refuses the whole batch
/// (422, nothing published); otherwise all are published pipelined.
pub async fn publish_batch(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let framing = match media_type(&headers).as_deref() {
        Some("application/json") => Framing::JsonArray,
        Some("application/x-ndjson" | "application/jsonl" | "application/jsonlines") => Framing::Ndjson,
        other => {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                format!(
                    "{} is not accepted; send a JSON array (application/json) or NDJSON (application/x-ndjson)",
                    other.unwrap_or("no Content-Type")
                ),
            ));
        }
    };
    let limits = &state.limits;
    let body = read_body(body, &headers, limits.max_batch_bytes).await?;
    check_utf8(&body)?;

    // Items counted while they are found; then each is checked whole (I-JSON, depth) before
    // its members are read, so a bad item is named by its index like any other refusal.
    let items: Vec<Result<BatchItem<'_>, Problem>> =
        batch::split(&body, framing, limits.max_batch_items, limits.max_json_depth)?
            .into_iter()
            .map(|raw| {
                check_strict(raw, limits.max_json_depth + 1)?;
                serde_json::from_slice(raw).map_err(publish::malformed)
            })
            .collect();
    state.admission.charge_batch_items(&participant.name, items.len());

    let traceparent = header_str(&headers, "traceparent");
    let tracestate = header_str(&headers, "tracestate");
    let mut ready: Vec<Outgoing> = Vec::with_capacity(items.len());
    let mut refused: Vec<Value> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let checked = item.and_then(|item| {
            let mut attributes =
                ClientAttributes { type_: item.type_, dataschema: item.dataschema, ..Default::default() };
            if let Some(corr) = item.correlation_id {
                attributes.extensions.insert("correlationid".to_owned(), corr);
            }
            let draft = Draft {
                subject: item.subject,
                data: body.slice_ref(item.data.get().as_bytes()),
                data_well_formed: true,
                attributes,
                idempotency_key: item.id,
                traceparent: traceparent.map(str::to_owned),
                tracestate: tracestate.map(str::to_owned),
            };
            publish::prepare(&catalog, limits, participant, draft)
        });
        match checked {
            Ok(outgoing) => ready.push(outgoing),
            Err(problem) => {
                let mut entry = problem.body();
                entry["index"] = json!(index);
                refused.push(entry);
            }
        }
    }
    drop(catalog);
    if !refused.is_empty() {
        let mut problem = Problem::new(
            ProblemType::BatchRejected,
            format!("{} of {} item(s) refused; nothing was published", refused.len(), refused.len() + ready.len()),
        );
        problem.items = refused;
        return Err(problem);
    }

    let ids: Vec<String> = ready.iter().map(|o| o.id.clone()).collect();
    let results = state.publisher.publish_batch(ready).await?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let duplicates = results.iter().filter(|r| r.as_ref().is_ok_and(|s| s.duplicate)).count();
    let retry_after = results.iter().filter_map(|r| r.as_ref().err()).filter_map(|p| p.retry_after).max();
    let results: Vec<Value> = results
        .into_iter()
        .zip(ids)
        .enumerate()
        .map(|(index, (r, id))| match r {
            Ok(stored) => json!(stored),
            // The id lets the client retry exactly this item, idempotently.
            Err(problem) => json!({ "index": index, "id": id, "error": problem.body() }),
        })
        .collect();
    // All stored: 202. Some: 207, each failed item says why (retry those with their id).
    // None: 503, like a single publish would answer.
    let status = match failed {
        0 => StatusCode::ACCEPTED,
        n if n == results.len() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::MULTI_STATUS,
    };
    let stored = results.len() - failed - duplicates;
    let body = json!({ "stored": stored, "duplicates": duplicates, "failed": failed, "results": results });
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = retry_after.filter(|_| failed > 0) {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
    }
    Ok(response)
}
