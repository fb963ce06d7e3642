//! "Where is my message?": `GET /v1/messages/{id}` and `GET /v1/messages?correlation_id=`.
//! A participant sees a message when it published it, or may publish, subscribe to or
//! request its subject; otherwise the message does not exist for it (404).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::extract::Caller;
use super::problem::{Problem, ProblemType, tracking_problem};
use crate::catalog::Catalog;
use crate::participants::Participant;
use crate::tracking::{Location, TrackedMessage, TrackingError, Whereabouts};

/// `GET /v1/messages/{id}`
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let (catalog, participant) = (caller.catalog(), caller.participant());
    let not_found = || Problem::new(ProblemType::NotFound, "no such message (or not visible to this participant)");
    let Ok(Path(id)) = id else { return Err(not_found()) };
    let whereabouts = open(&state).await?;
    // An id the caller chose is indexed under its own name (ids are scoped to their publisher);
    // a generated id, or another publisher's written out as `<participant>:<id>`, as is.
    let ids = [crate::publish::scoped_message_id(&participant.name, &id), id];
    let streams: Vec<&str> = catalog.streams.iter().map(|s| s.name()).collect();
    let location = whereabouts.locate(ids, &streams).await.map_err(answer(&state))?.ok_or_else(not_found)?;
    let found = describe(&state, &whereabouts, catalog, participant, &location).await?;
    found.map(|m| Json(m).into_response()).ok_or_else(not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    correlation_id: String,
    limit: Option<usize>,
}

/// `GET /v1/messages?correlation_id=`: one business transaction, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let (catalog, participant) = (caller.catalog(), caller.participant());
    let Query(query) = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let whereabouts = open(&state).await?;
    let locations = whereabouts.correlated(&query.correlation_id, limit).await.map_err(answer(&state))?;
    let mut messages = Vec::new();
    for location in &locations {
        if let Some(m) = describe(&state, &whereabouts, catalog, participant, location).await? {
            messages.push(m);
        }
    }
    messages.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(Json(json!({ "correlation_id": query.correlation_id, "messages": messages })).into_response())
}

async fn open(state: &AppState) -> Result<Whereabouts<'_>, Problem> {
    Whereabouts::open(&state.deliveries.engine, state.publisher.tracking).await.map_err(answer(state))
}

fn answer(state: &AppState) -> impl Fn(TrackingError) -> Problem + '_ {
    |err| tracking_problem(err, state.limits.retry_after_seconds)
}

/// A participant sees a message it published, or whose subject it may publish, subscribe
/// to or request.
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
    whereabouts: &Whereabouts<'_>,
    catalog: &Catalog,
    participant: &Participant,
    location: &Location,
) -> Result<Option<TrackedMessage>, Problem> {
    let Some(stored) = whereabouts.stored(location).await.map_err(answer(state))? else { return Ok(None) };
    if !may_see(participant, &stored.message.subject, stored.message.publisher.as_deref()) {
        return Ok(None);
    }
    Ok(Some(whereabouts.with_deliveries(&catalog.subscriptions, stored).await))
}
