//! Operating subscriptions: list with state, pause/resume, dead letters, replay and discard.
//! A participant sees and operates its own subscriptions; an `admin` participant all.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Caller, CommandBody, Params, nats_unavailable};
use super::problem::{Problem, ProblemType};
use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
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

/// A subscription name from the path; a name that is not UTF-8 is simply unknown.
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Self(name)),
            Err(_) => Err(Problem::new(ProblemType::NotFound, "no such subscription")),
        }
    }
}

/// The subscription `{name}` of the path, if the [`Caller`] may operate it (see [`find`]).
/// Checks, in order: token → subscription.
pub(crate) struct Visible(pub Arc<Subscription>);

impl FromRequestParts<AppState> for Visible {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Name(name) = Name::from_request_parts(parts, state).await?;
        find(caller.catalog(), caller.participant(), &name).cloned().map(Self)
    }
}

/// A subscription's state; NATS questions are bounded so a NATS outage shows as `unknown`
/// quickly instead of hanging the listing.
pub(crate) async fn describe(state: &AppState, sub: &Subscription) -> Value {
    match tokio::time::timeout(std::time::Duration::from_secs(2), describe_unbounded(state, sub)).await {
        Ok(v) => v,
        Err(_) => json!({
            "name": sub.name,
            "participant": sub.participant,
            "mode": sub.mode,
            "subjects": sub.subjects,
            "endpoint": sub.endpoint_redacted(),
            "state": "unknown",
            "status": "unknown",
            "detail": "NATS did not answer within 2 s",
        }),
    }
}

async fn describe_unbounded(state: &AppState, sub: &Subscription) -> Value {
    let engine = &state.deliveries.engine;
    // Consumer first: a pause stores its reason before it pauses the consumers, so a paused
    // consumer seen here always has its reason stored by the time it is read.
    let facts = engine.consumer_facts(sub).await;
    let stored = engine.stored_status(&sub.name).await;
    let control = state.deliveries.control(&sub.name);
    let breaker_open = control.as_ref().is_some_and(|c| matches!(c.breaker_state(), BreakerState::Open { .. }));
    let paused = facts.is_some_and(|(p, _, _)| p);
    // Only a push subscription running on this replica has a breaker to show.
    let breaker = control.as_ref().filter(|_| sub.mode == SubscriptionMode::Push).map(|c| match c.breaker_state() {
        BreakerState::Closed => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen => "half-open",
    });
    // When an open breaker lets its probe delivery go (wall-clock time, for people).
    let next_probe = control.as_ref().and_then(|c| match c.breaker_state() {
        BreakerState::Open { until } => {
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            (time::OffsetDateTime::now_utc() + wait).format(&time::format_description::well_known::Rfc3339).ok()
        }
        _ => None,
    });
    let state_name = if paused {
        "paused"
    } else if breaker_open {
        "breaker-open"
    } else {
        "active"
    };
    let dead_letters = dead_letter::count(&engine.js, &sub.name).await.ok();
    if let Some(depth) = dead_letters {
        crate::telemetry::catalogue::set_dead_letters(&sub.name, depth);
    }
    let failing_since = control.as_ref().and_then(|c| c.failing_since());
    let last_error = control.and_then(|c| c.last_error()).or(stored.last_error);
    let parked_keys = match &sub.ordering {
        Some(_) => engine.parked_keys(sub).await,
        None => Vec::new(),
    };
    let status = status_of(paused, breaker_open, last_error.as_ref(), failing_since.is_some(), parked_keys.len());
    let ordering = match &sub.ordering {
        None => Value::Null,
        Some(o) => json!({
            "key": key_text(&o.key),
            "on_exhausted": match o.on_exhausted {
                crate::config::OnKeyExhausted::DeadLetter => "dead-letter",
                crate::config::OnKeyExhausted::Park => "park",
            },
            "parked_keys": parked_keys,
        }),
    };
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
        "status": status,
        "failing_since": failing_since,
        "paused_reason": if paused { stored.paused_reason } else { None },
        "paused_at": if paused { stored.paused_at } else { None },
        "pending": facts.map(|(_, p, _)| p),
        "in_flight": facts.map(|(_, _, f)| f),
        "breaker": breaker,
        "breaker_next_probe": next_probe,
        "dead_letters": dead_letters,
        "last_error": last_error,
        "ordering": ordering,
    })
}

/// What an operator should read of a subscription, decided here so the console, the CLI and
/// any API client agree (the first that holds): `endpoint-gone` (paused by a `410 Gone`),
/// `paused`, `breaker-open`, `failing` (this replica's attempts have failed since
/// `failing_since`, none delivered since), `parked-keys` (key-ordered: keys wait for an
/// operator's skip or retry), else `active`.
fn status_of(
    paused: bool,
    breaker_open: bool,
    last_error: Option<&crate::delivery::LastError>,
    failing: bool,
    parked_keys: usize,
) -> &'static str {
    if paused && last_error.is_some_and(|e| e.class == "endpoint-gone") {
        "endpoint-gone"
    } else if paused {
        "paused"
    } else if breaker_open {
        "breaker-open"
    } else if failing {
        "failing"
    } else if parked_keys > 0 {
        "parked-keys"
    } else {
        "active"
    }
}

/// The key as configured.
fn key_text(key: &crate::delivery::subscription::KeySource) -> String {
    use crate::delivery::subscription::KeySource;
    match key {
        KeySource::Pointer(p) => p.clone(),
        KeySource::Attribute(a) => format!("ce:{a}"),
        KeySource::SubjectToken(n) => format!("subject:{}", n + 1),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRequest {
    key: String,
}

/// `POST /v1/subscriptions/{name}/parked-keys/skip` with `{"key": "…"}`: dead-letter the key's
/// head message and release the key.
pub(crate) async fn skip_key(
    State(state): State<AppState>,
    caller: Caller,
    Visible(sub): Visible,
    CommandBody(request): CommandBody<KeyRequest>,
) -> Result<Response, Problem> {
    act_on_key(&state, &caller, &sub, &request.key, "skip").await
}

/// `POST /v1/subscriptions/{name}/parked-keys/retry` with `{"key": "…"}`: attempt the key's head
/// message now.
pub(crate) async fn retry_key(
    State(state): State<AppState>,
    caller: Caller,
    Visible(sub): Visible,
    CommandBody(request): CommandBody<KeyRequest>,
) -> Result<Response, Problem> {
    act_on_key(&state, &caller, &sub, &request.key, "retry").await
}

async fn act_on_key(
    state: &AppState,
    caller: &Caller,
    sub: &Subscription,
    key: &str,
    action: &str,
) -> Result<Response, Problem> {
    if sub.ordering.is_none() {
        return Err(Problem::new(ProblemType::NotFound, format!("subscription {} is not ordered by key", sub.name)));
    }
    match state.deliveries.engine.act_on_key(sub, key, action, caller.name()).await {
        Some(done) => Ok(Json(done).into_response()),
        None => Err(Problem::new(ProblemType::NotFound, format!("no parked key {key:?} in subscription {}", sub.name))),
    }
}

/// `GET /v1/subscriptions`
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Response {
    let mut out = Vec::new();
    for sub in caller.catalog().subscriptions.iter().filter(|s| visible(caller.participant(), s)) {
        out.push(describe(&state, sub).await);
    }
    Json(json!({ "subscriptions": out })).into_response()
}

/// `GET /v1/subscriptions/{name}`
pub(crate) async fn show(State(state): State<AppState>, Visible(sub): Visible) -> Response {
    Json(describe(&state, &sub).await).into_response()
}

/// `POST /v1/subscriptions/{name}/pause`
pub(crate) async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Visible(sub): Visible,
) -> Result<Response, Problem> {
    state
        .deliveries
        .engine
        .pause_by_operator(&sub, caller.name())
        .await
        .map_err(|e| nats_unavailable(&state, "pausing the subscription", e))?;
    Ok(Json(describe(&state, &sub).await).into_response())
}

/// `POST /v1/subscriptions/{name}/resume`
pub(crate) async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Visible(sub): Visible,
) -> Result<Response, Problem> {
    state
        .deliveries
        .engine
        .resume(&sub, caller.name())
        .await
        .map_err(|e| nats_unavailable(&state, "resuming the subscription", e))?;
    Ok(Json(describe(&state, &sub).await).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    /// Dead-letter sequence to continue after (the previous page's `next`).
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/subscriptions/{name}/dead-letters?after=&limit=`
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Visible(sub): Visible,
    Params(page): Params<Page>,
) -> Result<Response, Problem> {
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let (items, total) = dead_letter::list(&state.deliveries.engine.js, &sub.name, page.after, limit)
        .await
        .map_err(|e| nats_unavailable(&state, "listing dead letters", e))?;
    let next = if items.len() == limit { items.last().map(|d| d.dlq_seq) } else { None };
    Ok(Json(json!({ "total": total, "dead_letters": items, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectionRequest {
    /// Message ids (`ce-id`) or dead-letter sequences.
    #[serde(default)]
    ids: Vec<String>,
    /// Every dead letter of the subscription.
    #[serde(default)]
    all: bool,
}

impl SelectionRequest {
    fn selection(self) -> Result<Selection, Problem> {
        match (self.all, self.ids.is_empty()) {
            (true, true) => Ok(Selection::All),
            (false, false) => Ok(Selection::Ids(self.ids)),
            _ => Err(Problem::new(ProblemType::MalformedJson, "send either {\"ids\": [...]} or {\"all\": true}")),
        }
    }
}

/// `POST /v1/subscriptions/{name}/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`.
pub(crate) async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Visible(sub): Visible,
    CommandBody(request): CommandBody<SelectionRequest>,
) -> Result<Response, Problem> {
    let selection = request.selection()?;
    let replayed = dead_letter::replay(
        &state.deliveries.engine.js,
        &sub.name,
        &selection,
        10_000,
        state.deliveries.engine.tracking,
    )
    .await
    .map_err(|e| nats_unavailable(&state, "replaying dead letters", e))?;
    tracing::info!(subscription = %sub.name, by = caller.name(), replayed = replayed.len(), "dead letters replayed");
    if let Ok(depth) = dead_letter::count(&state.deliveries.engine.js, &sub.name).await {
        crate::telemetry::catalogue::set_dead_letters(&sub.name, depth);
    }
    Ok(Json(json!({ "replayed": replayed.len(), "ids": replayed })).into_response())
}

/// `POST /v1/subscriptions/{name}/dead-letters/discard` with `{"ids": [...]}` or `{"all": true}`:
/// removes dead letters for good. Allowed to whoever may replay them.
pub(crate) async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    Visible(sub): Visible,
    CommandBody(request): CommandBody<SelectionRequest>,
) -> Result<Response, Problem> {
    let selection = request.selection()?;
    let discarded = dead_letter::discard(&state.deliveries.engine.js, &sub.name, &selection, 10_000)
        .await
        .map_err(|e| nats_unavailable(&state, "discarding dead letters", e))?;
    if !discarded.is_empty() {
        // Data was dropped on purpose: say who did it.
        tracing::info!(subscription = %sub.name, by = caller.name(), discarded = discarded.len(), "dead letters discarded");
    }
    if let Ok(depth) = dead_letter::count(&state.deliveries.engine.js, &sub.name).await {
        crate::telemetry::catalogue::set_dead_letters(&sub.name, depth);
    }
    Ok(Json(json!({ "discarded": discarded.len(), "ids": discarded })).into_response())
}

#[cfg(test)]
mod tests {
    use super::status_of;
    use crate::delivery::LastError;

    #[test]
    fn the_status_is_the_first_condition_that_holds() {
        let gone = LastError {
            class: "endpoint-gone".into(),
            status: Some(410),
            detail: String::new(),
            attempt: 1,
            at: String::new(),
        };
        let error = LastError { class: "endpoint-error".into(), ..gone.clone() };
        assert_eq!(status_of(true, true, Some(&gone), true, 3), "endpoint-gone");
        assert_eq!(status_of(true, true, Some(&error), true, 3), "paused");
        assert_eq!(status_of(false, true, Some(&error), true, 3), "breaker-open");
        assert_eq!(status_of(false, false, Some(&error), true, 3), "failing");
        assert_eq!(status_of(false, false, Some(&error), false, 3), "parked-keys");
        // An old error with deliveries since is not failing.
        assert_eq!(status_of(false, false, Some(&error), false, 0), "active");
        assert_eq!(status_of(false, false, None, false, 0), "active");
    }
}
