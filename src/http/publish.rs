//! `POST /v1/publish/{subject}` and `POST /v1/publish` (batch): HTTP in, checks, JetStream.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tracing::Instrument;
use tracing::field::Empty;

use super::extract::{Caller, SubjectPath};
use super::problem::{Problem, ProblemType};
use super::{AppState, header_str, media_type, read_body, request_charset, trace_answer};
use crate::charset;
use crate::publish::batch::{self, Framing};
use crate::publish::cloudevents::{self, StructuredEvent};
use crate::publish::{self, Draft, Stored, check_strict, check_utf8};
use crate::telemetry::traces::{self, TARGET};
use crate::telemetry::{LogThrottle, REFUSALS};

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
pub(crate) async fn publish_one(
    State(state): State<AppState>,
    caller: Caller,
    subject: Result<SubjectPath, Problem>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let span = tracing::trace_span!(
        target: TARGET,
        "publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = Empty,
        messaging.message.id = Empty,
        http.request.method = "POST",
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        magistral.participant = caller.name(),
    );
    traces::continue_from(&span, header_str(&headers, "traceparent"), header_str(&headers, "tracestate"));
    let result = async {
        let SubjectPath(subject) = subject?;
        span.record("messaging.destination.name", subject.as_str());
        let mode = mode_of(&headers)?;
        let charset = request_charset(&headers)?;
        // The size limit is on the bytes received; decoding comes before any other check.
        let body = charset::to_utf8(read_body(body, &headers, state.limits.max_body_bytes).await?, charset)?;
        check_utf8(&body)?;
        let draft = draft_of(&state, subject, mode, &headers, body)?;
        // Inside the span: the stored message carries its trace context.
        let outgoing = publish::prepare(caller.catalog(), &state.limits, caller.participant(), draft)?;
        span.record("messaging.message.id", outgoing.id.as_str());
        state.publisher.publish(outgoing).await
    }
    .instrument(span.clone())
    .await;
    if let Err(problem) = &result {
        note_refusal(caller.name(), problem);
    }
    let answer = result.map(|stored| (stored_status(&stored), Json(stored)).into_response());
    trace_answer(&span, &answer);
    answer
}

fn stored_status(stored: &Stored) -> StatusCode {
    if stored.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED }
}

/// Refusals count in `magistral_publish_total` too, so a misbehaving participant shows, and
/// are logged at DEBUG under `magistral::refusals` (a few per participant every 10 s: a flood
/// of bad requests must not flood the log). Failures after a stream was chosen are counted
/// and logged by the publisher.
fn note_refusal(participant: &str, problem: &Problem) {
    static THROTTLE: LogThrottle = LogThrottle::new(Duration::from_secs(10), 5);
    if problem.counted || !(problem.kind.status().is_client_error() || problem.kind == ProblemType::Overloaded) {
        return;
    }
    metrics::counter!(
        crate::telemetry::catalogue::PUBLISH_TOTAL,
        "stream" => "",
        "participant" => participant.to_owned(),
        "outcome" => problem.kind.slug()
    )
    .increment(1);
    if tracing::enabled!(target: REFUSALS, tracing::Level::DEBUG)
        && let Some(left_out) = THROTTLE.admit(participant)
    {
        tracing::debug!(
            target: REFUSALS,
            participant,
            problem = problem.kind.slug(),
            detail = %problem.detail,
            left_out,
            "publish refused"
        );
    }
}

/// The message a single publish carries: the body and `ce-*` headers (binary mode), or a
/// structured event's envelope.
fn draft_of(state: &AppState, subject: String, mode: Mode, headers: &HeaderMap, body: Bytes) -> Result<Draft, Problem> {
    let (data, data_well_formed, attributes) = match mode {
        Mode::Binary => (body, false, cloudevents::from_http_headers(headers)?),
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
    Ok(Draft {
        subject,
        data,
        data_well_formed,
        attributes,
        idempotency_key: header_str(headers, "idempotency-key").map(str::to_owned),
        traceparent: header_str(headers, "traceparent").map(str::to_owned),
        tracestate: header_str(headers, "tracestate").map(str::to_owned),
    })
}

/// How a batch body is framed, by its content type.
fn framing_of(headers: &HeaderMap) -> Result<Framing, Problem> {
    match media_type(headers).as_deref() {
        Some("application/json") => Ok(Framing::JsonArray),
        Some("application/x-ndjson" | "application/jsonl" | "application/jsonlines") => Ok(Framing::Ndjson),
        other => Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            format!(
                "{} is not accepted; send a JSON array (application/json) or NDJSON (application/x-ndjson)",
                other.unwrap_or("no Content-Type")
            ),
        )),
    }
}

/// Publishes a batch: every item is checked first; one bad item refuses the whole batch
/// (422, nothing published); otherwise all are published pipelined.
pub(crate) async fn publish_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    // One span for the batch; every message carries its context.
    let span = tracing::trace_span!(
        target: TARGET,
        "publish batch",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.batch.message_count = Empty,
        http.request.method = "POST",
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        magistral.participant = caller.name(),
    );
    traces::continue_from(&span, header_str(&headers, "traceparent"), header_str(&headers, "tracestate"));
    let limits = &state.limits;
    let checked = async {
        let framing = framing_of(&headers)?;
        let charset = request_charset(&headers)?;
        let body = charset::to_utf8(read_body(body, &headers, limits.max_batch_bytes).await?, charset)?;
        check_utf8(&body)?;
        let items = batch::items(&body, framing, limits.max_batch_items, limits.max_json_depth)?;
        span.record("messaging.batch.message_count", items.len());
        state.admission.charge_batch_items(caller.name(), items.len());
        let trace = batch::Trace {
            traceparent: header_str(&headers, "traceparent"),
            tracestate: header_str(&headers, "tracestate"),
        };
        batch::prepare(caller.catalog(), limits, caller.participant(), &body, items, trace)
    }
    .instrument(span.clone())
    .await;
    let answer = async {
        let ready = checked.inspect_err(|problem| note_refusal(caller.name(), problem))?;
        drop(caller);
        let ids: Vec<String> = ready.iter().map(|o| o.id.clone()).collect();
        let results = state.publisher.publish_batch(ready).await?;
        Ok(batch_answer(results, ids))
    }
    .instrument(span.clone())
    .await;
    trace_answer(&span, &answer);
    answer
}

/// All stored: 202. Some: 207, each failed item says why (retry those with their id).
/// None: 503, like a single publish would answer.
fn batch_answer(results: Vec<Result<Stored, Problem>>, ids: Vec<String>) -> Response {
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
    response
}
