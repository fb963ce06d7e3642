//! `POST /v1/inbound/{name}`: a system's own request shape in, CloudEvents out (see
//! [`crate::inbound`]).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use tracing::Instrument;
use tracing::field::Empty;

use super::extract::Caller;
use super::problem::{Problem, ProblemType};
use super::{AppState, header_str, media_type, read_body, request_charset, trace_answer};
use crate::catalog::Catalog;
use crate::config::InboundKind;
use crate::inbound::{InboundMessage, InboundRoute, Notification};
use crate::publish::{self, Stored};
use crate::telemetry::traces::{self, TARGET};

#[derive(Deserialize)]
pub(crate) struct InboundQuery {
    /// Business Central's subscription handshake.
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

/// `POST /v1/inbound/{name}`
pub(crate) async fn inbound(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<InboundQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    // The messages published carry this span's context (no publish span of their own).
    let span = tracing::trace_span!(
        target: TARGET,
        "inbound",
        otel.name = Empty,
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/inbound/{name}",
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        messaging.system = "nats",
        messaging.destination.name = Empty,
        magistral.inbound.route = Empty,
    );
    traces::continue_from(&span, header_str(&headers, "traceparent"), header_str(&headers, "tracestate"));
    let catalog = state.catalog.load_full();
    let found = catalog.inbound.iter().find(|r| r.name == name).cloned();
    let Some(route) = found else {
        let answer = Err(Problem::new(ProblemType::NotFound, format!("no inbound route {name}")));
        trace_answer(&span, &answer);
        return answer;
    };
    if !span.is_disabled() {
        span.record("otel.name", format!("inbound {}", route.name));
        span.record("magistral.inbound.route", route.name.as_str());
        span.record("messaging.destination.name", route.subject.as_str());
    }
    let result = async {
        match route.kind {
            InboundKind::Json => json_route(&state, catalog, &route, &headers, body).await,
            InboundKind::Bitrix24 => bitrix24(&state, &catalog, &route, &headers, body).await,
            InboundKind::BusinessCentral => {
                let token = query.ok().and_then(|Query(q)| q.validation_token);
                business_central(&state, &catalog, &route, token, &headers, body).await
            }
        }
    }
    .instrument(span.clone())
    .await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(p) => p.kind.slug(),
    };
    metrics::counter!(crate::telemetry::catalogue::INBOUND_TOTAL, "route" => route.name.clone(), "outcome" => outcome)
        .increment(1);
    trace_answer(&span, &result);
    result
}

/// Publishes one message of the route as the route's participant.
async fn publish_one(
    state: &AppState,
    catalog: &Catalog,
    route: &InboundRoute,
    message: InboundMessage,
    traceparent: Option<&str>,
) -> Result<Stored, Problem> {
    let participant = route.participant(catalog)?;
    let draft = route.draft(message, traceparent)?;
    let outgoing = publish::prepare(catalog, &state.limits, participant, draft)?;
    state.publisher.publish(outgoing).await
}

/// Plain JSON with the participant's own bearer token.
async fn json_route(
    state: &AppState,
    catalog: std::sync::Arc<Catalog>,
    route: &InboundRoute,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = Caller::from_headers(catalog, headers)?;
    if caller.name() != route.participant {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!("route {} is for participant {}", route.name, route.participant),
        ));
    }
    if !media_type(headers).as_deref().is_some_and(crate::publish::cloudevents::is_json_media_type) {
        return Err(Problem::new(ProblemType::UnsupportedMediaType, "send application/json"));
    }
    let charset = request_charset(headers)?;
    let body = crate::charset::to_utf8(read_body(body, headers, state.limits.max_body_bytes).await?, charset)?;
    // Checked as sent (a transform's parser would silently keep one of two repeated members).
    publish::check_data(&state.limits, None, &body)?;
    let message = InboundMessage {
        data: body.to_vec(),
        id: header_str(headers, "idempotency-key").map(str::to_owned),
        type_: route.subject.clone(),
    };
    let stored = publish_one(state, caller.catalog(), route, message, header_str(headers, "traceparent")).await?;
    let status = if stored.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(stored)).into_response())
}

/// Bitrix24 outbound event handler: content type → bounded read → the route's operation
/// ([`InboundRoute::bitrix24_event`]: token first, then the form) → publish.
async fn bitrix24(
    state: &AppState,
    catalog: &Catalog,
    route: &InboundRoute,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if media_type(headers).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            "Bitrix24 event handlers send application/x-www-form-urlencoded",
        ));
    }
    // 1C-Bitrix sites in windows-1251 say so here; the form is decoded after its token is checked.
    let charset = request_charset(headers)?;
    let body = read_body(body, headers, state.limits.max_body_bytes).await?;
    let message = route.bitrix24_event(&body, charset, &state.limits)?;
    let stored = publish_one(state, catalog, route, message, None).await?;
    Ok((StatusCode::OK, Json(stored)).into_response())
}

/// Whether Business Central keeps its subscription after this status: it deletes it on any
/// answer but 2xx/408/429/5xx.
fn bc_tolerates(status: StatusCode) -> bool {
    status.is_success() || status.is_server_error() || matches!(status.as_u16(), 408 | 429)
}

/// A refusal as Business Central may be answered: ours is a configuration problem here, not
/// BC's, so a status BC would delete its subscription on becomes 500, which keeps BC retrying
/// while an operator, alerted by the error log, fixes it.
fn bc_safe(route: &InboundRoute, mut problem: Problem) -> Problem {
    if !bc_tolerates(problem.status()) {
        tracing::error!(route = %route.name, problem = %problem.detail, "inbound notification refused");
        problem.status = Some(StatusCode::INTERNAL_SERVER_ERROR);
    }
    problem
}

/// Business Central webhooks. Only 2xx/408/429/5xx are ever answered: anything else makes
/// BC delete its subscription.
///
/// Nothing here is authenticated before the body (BC sends no credentials but the
/// `clientState` inside each entry), so the body is read up to `limits.max_body_bytes` and
/// taken apart borrowing ([`InboundRoute::business_central_notification`]). BC aggregates
/// more than 1000 changes into one `collection` entry, so its real notifications stay far
/// below both limits. Over a limit is answered 500, not 413 (which would delete the
/// subscription) and not 202 (which would drop a real notification silently): BC retries
/// while an operator raises the limit. A body that is not a notification at all is not BC's:
/// 202 and dropped.
async fn business_central(
    state: &AppState,
    catalog: &Catalog,
    route: &InboundRoute,
    validation_token: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if let Some(token) = validation_token {
        // The handshake: echo the token as plain text (bounded, printable only).
        let token: String = token.chars().filter(|c| c.is_ascii_graphic()).take(1024).collect();
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response());
    }
    let safe = |p: Problem| bc_safe(route, p);
    let body = read_body(body, headers, state.limits.max_body_bytes).await.map_err(safe)?;
    let notification =
        route.business_central_notification(&body, state.limits.max_batch_items).map_err(|e| safe(e.into()))?;
    let (messages, ignored) = match notification {
        Notification::Entries { messages, ignored } => (messages, ignored),
        Notification::NotANotification(e) => {
            tracing::warn!(route = %route.name, error = %e, "Business Central notification is not a notification; ignored");
            return Ok(StatusCode::ACCEPTED.into_response());
        }
    };
    let mut stored = Vec::with_capacity(messages.len());
    for message in messages {
        stored.push(publish_one(state, catalog, route, message, None).await.map_err(safe)?);
    }
    if ignored > 0 {
        metrics::counter!(crate::telemetry::catalogue::INBOUND_IGNORED_TOTAL, "route" => route.name.clone())
            .increment(ignored);
        tracing::warn!(route = %route.name, ignored, "notifications with a wrong clientState were dropped");
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "stored": stored, "ignored": ignored }))).into_response())
}
