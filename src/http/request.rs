//! `POST /v1/request/{subject}?timeout=`: an HTTP request becomes a NATS request; the reply
//! becomes the HTTP response (or a problem mapped from NATS micro error headers).
//! Sending and checking are in [`crate::request`]; here: parse, call, answer.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::Instrument;
use tracing::field::Empty;

use super::extract::{Caller, require_json};
use super::problem::{Problem, ProblemType};
use super::{AppState, header_str, read_body, trace_answer};
use crate::publish::cloudevents;
use crate::request::{self, Outgoing, Reply};
use crate::telemetry::traces::{self, TARGET};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestQuery {
    /// `500ms`, `5s`, ...; bounded by `limits.max_request_timeout`.
    timeout: Option<String>,
}

/// Sends the body as a NATS request and answers with the reply.
pub(crate) async fn request(
    State(state): State<AppState>,
    caller: Caller,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<RequestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let span = tracing::trace_span!(
        target: TARGET,
        "request",
        otel.kind = "client",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "request",
        messaging.destination.name = Empty,
        http.request.method = "POST",
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        magistral.participant = caller.name(),
    );
    traces::continue_from(&span, header_str(&headers, "traceparent"), header_str(&headers, "tracestate"));
    let answer = async {
        let (catalog, participant) = (caller.catalog(), caller.participant());
        let Ok(Path(subject)) = subject else {
            return Err(Problem::new(
                ProblemType::InvalidSubject,
                "the subject is not valid UTF-8 once percent-decoded",
            ));
        };
        span.record("messaging.destination.name", subject.as_str());
        let Query(query) = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
        let timeout = timeout(query.timeout.as_deref())?;
        let limits = &state.limits;
        let route = request::authorize(catalog, participant, subject, limits)?;
        let charset = require_json(&headers)?;
        let payload = crate::charset::to_utf8(read_body(body, &headers, limits.max_body_bytes).await?, charset)?;
        let attributes = cloudevents::from_http_headers(&headers)?;
        let outgoing = Outgoing {
            payload,
            attributes: &attributes,
            traceparent: header_str(&headers, "traceparent"),
            tracestate: header_str(&headers, "tracestate"),
            timeout,
        };
        // Inside the span: the NATS request carries its trace context.
        let reply = request::send(&state.client, limits, &route, outgoing).await?;
        Ok(reply_answer(reply))
    }
    .instrument(span.clone())
    .await;
    trace_answer(&span, &answer);
    answer
}

/// `?timeout=500ms`; `None` when not asked.
fn timeout(asked: Option<&str>) -> Result<Option<Duration>, Problem> {
    let Some(t) = asked else { return Ok(None) };
    humantime::parse_duration(t)
        .map(Some)
        .map_err(|e| Problem::new(ProblemType::InvalidQuery, format!("timeout {t:?}: {e} (e.g. 500ms, 5s)")))
}

/// The reply as JSON, with its CloudEvents headers.
fn reply_answer(reply: Reply) -> Response {
    let mut response = (StatusCode::OK, reply.payload).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in reply.cloudevents {
        if let (Ok(name), Ok(value)) = (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value))
        {
            headers.insert(name, value);
        }
    }
    response
}
