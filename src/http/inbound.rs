//! `POST /v1/inbound/{name}`: a system's own request shape in, CloudEvents out (see
//! [`crate::inbound`]).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate, header_str, media_type, read_body};
use crate::catalog::Catalog;
use crate::config::InboundKind;
use crate::inbound::{
    EnvelopeError, InboundRoute, application_token, content_id, entry_client_state, notification_entries,
    parse_bracketed_form,
};
use crate::publish::cloudevents::ClientAttributes;
use crate::publish::{self, Draft, Stored};

#[derive(Deserialize)]
pub struct InboundQuery {
    /// Business Central's subscription handshake.
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

/// `POST /v1/inbound/{name}`
pub async fn inbound(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<InboundQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let route = catalog
        .inbound
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Problem::new(ProblemType::NotFound, format!("no inbound route {name}")))?
        .clone();
    let result = match route.kind {
        InboundKind::Json => json_route(&state, &catalog, &route, &headers, body).await,
        InboundKind::Bitrix24 => bitrix24(&state, &catalog, &route, &headers, body).await,
        InboundKind::BusinessCentral => {
            let token = query.ok().and_then(|Query(q)| q.validation_token);
            business_central(&state, &catalog, &route, token, &headers, body).await
        }
    };
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(p) => p.kind.slug(),
    };
    metrics::counter!("magistral_inbound_total", "route" => route.name.clone(), "outcome" => outcome).increment(1);
    result
}

/// Applies the route's transform (if any) and publishes one message as the route's participant.
async fn publish_one(
    state: &AppState,
    catalog: &Catalog,
    route: &InboundRoute,
    data: Vec<u8>,
    id: Option<String>,
    type_: String,
    traceparent: Option<&str>,
) -> Result<Stored, Problem> {
    let participant = catalog
        .participants
        .iter()
        .find(|p| p.name == route.participant)
        .ok_or_else(|| Problem::new(ProblemType::Internal, "internal error"))?;
    let data = match &route.transform {
        None => data,
        Some(t) => t
            .apply(&data)
            .map_err(|e| Problem::new(ProblemType::TransformFailed, format!("the route's transform failed: {e}")))?,
    };
    let draft = Draft {
        subject: route.subject.clone(),
        data: Bytes::from(data),
        data_well_formed: false,
        attributes: ClientAttributes { type_: Some(type_), ..Default::default() },
        idempotency_key: id,
        traceparent: traceparent.map(str::to_owned),
        tracestate: None,
    };
    let outgoing = publish::prepare(catalog, &state.limits, participant, draft)?;
    state.publisher.publish(outgoing).await
}

/// Plain JSON with the participant's own bearer token.
async fn json_route(
    state: &AppState,
    catalog: &Catalog,
    route: &InboundRoute,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let participant = authenticate(catalog, headers)?;
    if participant.name != route.participant {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!("route {} is for participant {}", route.name, route.participant),
        ));
    }
    if !media_type(headers).as_deref().is_some_and(crate::publish::cloudevents::is_json_media_type) {
        return Err(Problem::new(ProblemType::UnsupportedMediaType, "send application/json"));
    }
    let body = read_body(body, headers, state.limits.max_body_bytes).await?;
    // Checked as sent (a transform's parser would silently keep one of two repeated members).
    publish::check_data(&state.limits, None, &body)?;
    let id = header_str(headers, "idempotency-key").map(str::to_owned);
    let stored = publish_one(
        state,
        catalog,
        route,
        body.to_vec(),
        id,
        route.subject.clone(),
        header_str(headers, "traceparent"),
    )
    .await?;
    let status = if stored.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(stored)).into_response())
}

/// Bitrix24 outbound event handler. Bitrix24 signs nothing and puts its token in the body,
/// so the order is: content type → bounded read → a scan for the token alone (nothing built)
/// → the token → only then the form, within its field and depth limits.
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
    let body = read_body(body, headers, state.limits.max_body_bytes).await?;
    if !application_token(&body).is_some_and(|token| route.secret_matches(&token)) {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "auth[application_token] is missing or does not match this route's application token",
        ));
    }
    let mut form = parse_bracketed_form(&body, state.limits.max_form_fields, state.limits.max_form_depth)
        .map_err(|e| Problem::new(ProblemType::FormTooComplex, e.to_string()))?;
    // The auth part carries the portal's access and refresh tokens: never published.
    let portal = form["auth"]["domain"].as_str().map(str::to_owned);
    if let Some(obj) = form.as_object_mut() {
        obj.remove("auth");
        if let Some(portal) = portal {
            obj.insert("portal".into(), Value::String(portal));
        }
    }
    let event = form["event"].as_str().unwrap_or("event").to_ascii_lowercase();
    let data = serde_json::to_vec(&form).unwrap_or_default();
    // Bitrix24 resends the same body on failure: the same id lets JetStream drop the copy.
    let id = content_id("bitrix24", &[&body]);
    let stored = publish_one(state, catalog, route, data, Some(id), format!("bitrix24.{event}"), None).await?;
    Ok((StatusCode::OK, Json(stored)).into_response())
}

/// Whether Business Central keeps its subscription after this status: it deletes it on any
/// answer but 2xx/408/429/5xx.
fn bc_tolerates(status: StatusCode) -> bool {
    status.is_success() || status.is_server_error() || matches!(status.as_u16(), 408 | 429)
}

/// Business Central webhooks. Only 2xx/408/429/5xx are ever answered: anything else makes
/// BC delete its subscription.
///
/// Nothing here is authenticated before the body (BC sends no credentials but the
/// `clientState` inside each entry), so the body is read up to `limits.max_body_bytes` and
/// taken apart borrowing: the envelope's entries stay raw, counted up to
/// `limits.max_batch_items`, and only an entry whose `clientState` matches is parsed further.
/// BC aggregates more than 1000 changes into one `collection` entry, so its real notifications
/// stay far below both limits. Over a limit is answered 500, not 413 (which would delete the
/// subscription) and not 202 (which would drop a real notification silently): BC retries
/// while an operator, alerted by the error log, raises the limit. A body that is not a
/// notification at all is not BC's: 202 and dropped.
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
    let bc_safe = |p: Problem| -> Problem {
        if bc_tolerates(p.status()) {
            p
        } else {
            // Our refusal is a configuration problem here, not BC's: 500 keeps BC retrying
            // while an operator fixes it, instead of BC deleting the subscription.
            tracing::error!(route = %route.name, problem = %p.detail, "inbound notification refused");
            let mut p = p;
            p.status = Some(StatusCode::INTERNAL_SERVER_ERROR);
            p
        }
    };
    let body = read_body(body, headers, state.limits.max_body_bytes).await.map_err(bc_safe)?;
    let entries = match notification_entries(&body, state.limits.max_batch_items) {
        Ok(entries) => entries,
        Err(e @ EnvelopeError::TooManyEntries { .. }) => {
            return Err(bc_safe(Problem::new(ProblemType::TooManyItems, e.to_string())));
        }
        Err(EnvelopeError::Malformed(e)) => {
            tracing::warn!(route = %route.name, error = %e, "Business Central notification is not a notification; ignored");
            return Ok(StatusCode::ACCEPTED.into_response());
        }
    };
    let mut stored = Vec::new();
    let mut ignored = 0;
    for raw in entries {
        if !entry_client_state(raw).is_some_and(|cs| route.secret_matches(&cs)) {
            // As Microsoft's webhook guidance says: not ours, drop it, still answer 2xx.
            ignored += 1;
            continue;
        }
        // Ours: only now is the entry built (serde_json bounds its nesting).
        let Ok(mut entry) = serde_json::from_str::<Value>(raw.get()) else {
            ignored += 1;
            continue;
        };
        if let Some(obj) = entry.as_object_mut() {
            obj.remove("clientState");
        }
        let field = |k: &str| entry[k].as_str().unwrap_or_default().to_owned();
        let change = field("changeType");
        let id = content_id(
            "bc",
            &[
                field("subscriptionId").as_bytes(),
                field("resource").as_bytes(),
                change.as_bytes(),
                field("lastModifiedDateTime").as_bytes(),
            ],
        );
        let data = serde_json::to_vec(&entry).unwrap_or_default();
        let type_ = format!(
            "businesscentral.{}",
            if change.is_empty() { "changed".to_owned() } else { change.to_ascii_lowercase() }
        );
        let result = publish_one(state, catalog, route, data, Some(id), type_, None).await.map_err(bc_safe)?;
        stored.push(result);
    }
    if ignored > 0 {
        metrics::counter!("magistral_inbound_ignored_total", "route" => route.name.clone()).increment(ignored);
        tracing::warn!(route = %route.name, ignored, "notifications with a wrong clientState were dropped");
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "stored": stored, "ignored": ignored }))).into_response())
}
