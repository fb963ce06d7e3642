//! Operating subscriptions: list with state, pause/resume, dead letters and replay.
//! A participant sees and operates its own subscriptions; an `admin` participant all.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate, media_type, read_body};
use crate::catalog::Catalog;
use crate::delivery::breaker::BreakerState;
use crate::delivery::dead_letter::{self, Selection};
use crate::delivery::subscription::Subscription;
use crate::participants::Participant;

fn visible(participant: &Participant, sub: &Subscription) -> bool {
    participant.admin || participant.name == sub.participant
}

/// The subscription `name`, if the caller may operate it. Another participant's answers
/// exactly like one that does not exist, so its existence is not revealed.
pub(crate) fn find<'c>(
    catalog: &'c Catalog,
    participant: &Participant,
    name: &str,
) -> Result<&'c std::sync::Arc<Subscription>, Problem> {
    catalog
        .subscription(name)
        .filter(|sub| visible(participant, sub))
        .ok_or_else(|| Problem::new(ProblemType::NotFound, format!("no subscription {name}")))
}

fn unavailable(state: &AppState) -> impl Fn(crate::delivery::DeliveryError) -> Problem + '_ {
    move |err| {
        Problem::new(ProblemType::NatsUnavailable, format!("NATS: {err}")).retry_after(state.limits.retry_after_seconds)
    }
}

/// A subscription name from the path; a name that is not UTF-8 is simply unknown.
pub struct Name(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Name {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Self(name)),
            Err(_) => Err(Problem::new(ProblemType::NotFound, "no such subscription")),
        }
    }
}

/// A subscription's state; NATS questions are bounded so a NATS outage shows as `unknown`
/// quickly instead of hanging the listing.
async fn describe(state: &AppState, sub: &Subscription) -> Value {
    match tokio::time::timeout(std::time::Duration::from_secs(2), describe_unbounded(state, sub)).await {
        Ok(v) => v,
        Err(_) => json!({
            "name": sub.name,
            "participant": sub.participant,
            "mode": sub.mode,
            "subjects": sub.subjects,
            "endpoint": sub.endpoint_redacted(),
            "state": "unknown",
            "detail": "NATS did not answer within 2 s",
        }),
    }
}

async fn describe_unbounded(state: &AppState, sub: &Subscription) -> Value {
    let engine = &state.deliveries.engine;
    let stored = engine.stored_status(&sub.name).await;
    let facts = engine.consumer_facts(sub).await;
    let control = state.deliveries.control(&sub.name);
    let breaker_open = control.as_ref().is_some_and(|c| matches!(c.breaker_state(), BreakerState::Open { .. }));
    let paused = facts.is_some_and(|(p, _, _)| p);
    let state_name = if paused {
        "paused"
    } else if breaker_open {
        "breaker-open"
    } else {
        "active"
    };
    let dead_letters = dead_letter::count(&engine.js, &sub.name).await.ok();
    if let Some(depth) = dead_letters {
        metrics::gauge!("magistral_dead_letters", "subscription" => sub.name.clone()).set(depth as f64);
    }
    let last_error = control.and_then(|c| c.last_error()).or(stored.last_error);
    json!({
        "name": sub.name,
        "participant": sub.participant,
        "mode": sub.mode,
        "subjects": sub.subjects,
        "endpoint": sub.endpoint_redacted(),
        "method": sub.method.as_str(),
        "ordered": sub.ordered,
        "max_in_flight": sub.max_in_flight,
        "state": state_name,
        "paused_reason": if paused { stored.paused_reason } else { None },
        "pending": facts.map(|(_, p, _)| p),
        "in_flight": facts.map(|(_, _, f)| f),
        "dead_letters": dead_letters,
        "last_error": last_error,
    })
}

/// `GET /v1/subscriptions`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let mut out = Vec::new();
    for sub in catalog.subscriptions.iter().filter(|s| visible(participant, s)) {
        out.push(describe(&state, sub).await);
    }
    Ok(Json(json!({ "subscriptions": out })).into_response())
}

/// `GET /v1/subscriptions/{name}`
pub async fn show(State(state): State<AppState>, Name(name): Name, headers: HeaderMap) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = find(&catalog, participant, &name)?;
    Ok(Json(describe(&state, sub).await).into_response())
}

/// `POST /v1/subscriptions/{name}/pause`
pub async fn pause(State(state): State<AppState>, Name(name): Name, headers: HeaderMap) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = find(&catalog, participant, &name)?;
    state.deliveries.engine.pause_by_operator(sub, &participant.name).await.map_err(unavailable(&state))?;
    Ok(Json(describe(&state, sub).await).into_response())
}

/// `POST /v1/subscriptions/{name}/resume`
pub async fn resume(State(state): State<AppState>, Name(name): Name, headers: HeaderMap) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = find(&catalog, participant, &name)?;
    state.deliveries.engine.resume(sub).await.map_err(unavailable(&state))?;
    Ok(Json(describe(&state, sub).await).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Dead-letter sequence to continue after (the previous page's `next`).
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/subscriptions/{name}/dead-letters?after=&limit=`
pub async fn dead_letters(
    State(state): State<AppState>,
    Name(name): Name,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = find(&catalog, participant, &name)?;
    let Query(page) = page.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let (items, total) = dead_letter::list(&state.deliveries.engine.js, &sub.name, page.after, limit)
        .await
        .map_err(unavailable(&state))?;
    let next = if items.len() == limit { items.last().map(|d| d.dlq_seq) } else { None };
    Ok(Json(json!({ "total": total, "dead_letters": items, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// Message ids (`ce-id`) or dead-letter sequences.
    #[serde(default)]
    ids: Vec<String>,
    /// Replay every dead letter of the subscription.
    #[serde(default)]
    all: bool,
}

/// `POST /v1/subscriptions/{name}/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`.
pub async fn replay(
    State(state): State<AppState>,
    Name(name): Name,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = find(&catalog, participant, &name)?;
    if media_type(&headers).as_deref() != Some("application/json") {
        return Err(Problem::new(ProblemType::UnsupportedMediaType, "send application/json"));
    }
    let body = read_body(body, &headers, 1024 * 1024).await?;
    let request: ReplayRequest = serde_json::from_slice(&body).map_err(crate::publish::malformed)?;
    let selection = match (request.all, request.ids.is_empty()) {
        (true, true) => Selection::All,
        (false, false) => Selection::Ids(request.ids),
        _ => {
            return Err(Problem::new(ProblemType::MalformedJson, "send either {\"ids\": [...]} or {\"all\": true}"));
        }
    };
    let replayed = dead_letter::replay(&state.deliveries.engine.js, &sub.name, &selection, 10_000)
        .await
        .map_err(unavailable(&state))?;
    if let Ok(depth) = dead_letter::count(&state.deliveries.engine.js, &sub.name).await {
        metrics::gauge!("magistral_dead_letters", "subscription" => sub.name.clone()).set(depth as f64);
    }
    Ok(Json(json!({ "replayed": replayed.len(), "ids": replayed })).into_response())
}
