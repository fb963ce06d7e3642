//! "Where is my message?": `GET /v1/messages/{id}` and `GET /v1/messages?correlation_id=`.
//! A participant sees a message when it published it, or may publish, subscribe to or
//! request its subject; otherwise the message does not exist for it (404).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate};
use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
use crate::participants::Participant;
use crate::subject;
use crate::tracking::{self, DeliveryRecord, Location};

fn decoded(v: &str) -> String {
    percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()
}

/// `GET /v1/messages/{id}`
pub async fn show(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let not_found = || Problem::new(ProblemType::NotFound, "no such message (or not visible to this participant)");
    let Ok(Path(id)) = id else { return Err(not_found()) };
    let js = state.publisher.jetstream();
    let unavailable = |e: String| {
        Problem::new(ProblemType::NatsUnavailable, format!("NATS: {e}")).retry_after(state.limits.retry_after_seconds)
    };
    if !state.publisher.tracking {
        return Err(Problem::new(ProblemType::NotFound, "message tracking is turned off (system.tracking = false)"));
    }
    let store = js.get_key_value(tracking::BUCKET).await.map_err(|e| unavailable(e.to_string()))?;
    // An id the caller chose is indexed under its own name (ids are scoped to their publisher);
    // a generated id, or another publisher's written out as `<participant>:<id>`, as is.
    let mut location: Option<Location> = None;
    for key in [crate::publish::scoped_message_id(&participant.name, &id), id.clone()] {
        let entry = store.get(format!("m.{}", tracking::encode(&key))).await.map_err(|e| unavailable(e.to_string()))?;
        location = entry.and_then(|v| serde_json::from_slice(&v).ok());
        if location.is_some() {
            break;
        }
    }
    let location = location.ok_or_else(not_found)?;
    let described = describe(&state, &catalog, participant, &location).await?;
    described.map(|v| Json(v).into_response()).ok_or_else(not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    correlation_id: String,
    limit: Option<usize>,
}

/// `GET /v1/messages?correlation_id=`: one business transaction, oldest first.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let Query(query) = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    if !state.publisher.tracking {
        return Err(Problem::new(ProblemType::NotFound, "message tracking is turned off (system.tracking = false)"));
    }
    let js = state.publisher.jetstream();
    let mut locations = tracking::correlated(js, &query.correlation_id, limit).await.map_err(|e| {
        Problem::new(ProblemType::NatsUnavailable, format!("NATS: {e}")).retry_after(state.limits.retry_after_seconds)
    })?;
    let mut messages = Vec::new();
    for location in locations.drain(..) {
        if let Some(m) = describe(&state, &catalog, participant, &location).await? {
            messages.push(m);
        }
    }
    messages.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    Ok(Json(json!({ "correlation_id": query.correlation_id, "messages": messages })).into_response())
}

fn may_see(participant: &Participant, subject: &str, publisher: Option<&str>) -> bool {
    participant.admin
        || publisher == Some(participant.source.as_str())
        || participant.publish.allows(subject)
        || participant.subscribe.allows(subject)
        || participant.request.allows(subject)
}

/// The message and, per subscription that should receive it, where it is. `None` when the
/// message is gone (retention) or not visible to the participant.
async fn describe(
    state: &AppState,
    catalog: &Catalog,
    participant: &Participant,
    location: &Location,
) -> Result<Option<Value>, Problem> {
    let js = state.publisher.jetstream();
    let unavailable = |e: String| {
        Problem::new(ProblemType::NatsUnavailable, format!("NATS: {e}")).retry_after(state.limits.retry_after_seconds)
    };
    let stream = js.get_stream(&location.stream).await.map_err(|e| unavailable(e.to_string()))?;
    let Ok(message) = stream.get_raw_message(location.seq).await else { return Ok(None) };
    let header = |name: &str| message.headers.get(name).map(|v| decoded(v.as_str()));
    let subject_name = message.subject.to_string();
    let publisher = header("ce-source");
    if !may_see(participant, &subject_name, publisher.as_deref()) {
        return Ok(None);
    }
    let track = js.get_key_value(tracking::BUCKET).await.map_err(|e| unavailable(e.to_string()))?;
    let mut deliveries = Vec::new();
    for sub in &catalog.subscriptions {
        let Some((_, filters)) = sub.spans.iter().find(|(s, _)| *s == location.stream) else { continue };
        if !filters.iter().any(|f| subject::matches(f, &subject_name)) {
            continue;
        }
        deliveries.push(delivery_state(state, &stream, &track, sub, location).await);
    }
    Ok(Some(json!({
        "id": header("ce-id").or_else(|| header("Nats-Msg-Id")),
        "subject": subject_name,
        "stream": location.stream,
        "seq": location.seq,
        "publisher": publisher,
        "type": header("ce-type"),
        "time": message.time.format(&Rfc3339).unwrap_or_default(),
        "correlation_id": header("ce-correlationid"),
        "subscriptions": deliveries,
    })))
}

async fn delivery_state(
    state: &AppState,
    stream: &async_nats::jetstream::stream::Stream,
    track: &async_nats::jetstream::kv::Store,
    sub: &crate::delivery::subscription::Subscription,
    location: &Location,
) -> Value {
    let base = json!({ "name": sub.name, "participant": sub.participant, "mode": sub.mode });
    let with = |mut v: Value, extra: Value| {
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    };
    if sub.mode == SubscriptionMode::Stream {
        return with(base, json!({ "state": "live-only", "detail": "stream subscriptions keep no delivery state" }));
    }
    let record: Option<DeliveryRecord> = track
        .get(tracking::delivery_key(&sub.name, &location.stream, location.seq))
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok());
    if let Some(r) = &record
        && r.state == "skipped"
    {
        return with(
            base,
            json!({ "state": "skipped", "at": r.at, "detail": "the subscription's transform filtered it out" }),
        );
    }
    if let Some(r) = &record
        && r.state == "dead-letter"
    {
        return with(
            base,
            json!({ "state": "dead-letter", "attempts": r.attempts, "class": r.class, "status": r.status, "at": r.at }),
        );
    }
    if sub.mode == SubscriptionMode::Pull
        && let Ok(ledger) = state.deliveries.engine.ack_ledger().await
        && let Ok(Some(entry)) = ledger.entry(format!("{}.{}.{}", sub.name, location.stream, location.seq)).await
    {
        let action = String::from_utf8_lossy(&entry.value).into_owned();
        let state_name = if action == "term" { "terminated" } else { "acked" };
        return with(base, json!({ "state": state_name, "at": entry.created.format(&Rfc3339).unwrap_or_default() }));
    }
    let Ok(info) = stream.consumer_info(sub.consumer_name()).await else {
        return with(base, json!({ "state": "unknown", "detail": "the subscription's consumer does not exist (yet)" }));
    };
    let delivered_state = if sub.mode == SubscriptionMode::Pull { "acked" } else { "delivered" };
    if location.seq <= info.ack_floor.stream_sequence {
        let mut v = with(base, json!({ "state": delivered_state }));
        if let Some(r) = &record {
            v["attempts"] = json!(r.attempts);
            if r.state == "delivered" {
                v["at"] = json!(r.at);
            }
        }
        return v;
    }
    match record {
        Some(r) if r.state == "delivered" => {
            with(base, json!({ "state": delivered_state, "attempts": r.attempts, "at": r.at }))
        }
        Some(r) => with(
            base,
            json!({
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_error": { "class": r.class, "status": r.status, "at": r.at },
            }),
        ),
        None if location.seq > info.delivered.stream_sequence => with(base, json!({ "state": "pending" })),
        // Handed out and not yet below the ack floor: in flight, or acked while an older
        // message is still in flight (unordered subscriptions).
        None => with(base, json!({ "state": "in-flight" })),
    }
}
