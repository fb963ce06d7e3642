//! HTTP pull: `POST /v1/subscriptions/{name}/fetch` and `.../ack`, for participants that
//! can only call out (an ERP or 1C behind a firewall). Only the owning participant may pull.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::problem::{Problem, ProblemType};
use super::subscriptions::Name;
use super::{AppState, authenticate, media_type, read_body};
use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
use crate::delivery::pull::{self, AckFailure, Action};
use crate::delivery::subscription::Subscription;
use crate::participants::Participant;

/// The subscription, if the caller owns it and it has the mode the route needs; one the
/// caller may not see is not found, exactly like one that does not exist.
pub fn owned<'c>(
    catalog: &'c Catalog,
    participant: &Participant,
    name: &str,
    mode: SubscriptionMode,
) -> Result<&'c std::sync::Arc<Subscription>, Problem> {
    let sub = super::subscriptions::find(catalog, participant, name)?;
    // An admin sees every subscription, but only its owner pulls from it.
    if sub.participant != participant.name {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!("subscription {name} belongs to {}", sub.participant),
        ));
    }
    if sub.mode != mode {
        return Err(Problem::new(
            ProblemType::WrongMode,
            format!("subscription {name} is in {} mode; this route needs {}", mode_name(sub.mode), mode_name(mode)),
        ));
    }
    Ok(sub)
}

fn mode_name(mode: SubscriptionMode) -> &'static str {
    match mode {
        SubscriptionMode::Push => "push",
        SubscriptionMode::Pull => "pull",
        SubscriptionMode::Stream => "stream",
    }
}

/// A JSON body that may be empty (all fields defaulted).
async fn json_body<T: for<'de> Deserialize<'de> + Default>(headers: &HeaderMap, body: Body) -> Result<T, Problem> {
    let body = read_body(body, headers, 1024 * 1024).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if media_type(headers).as_deref() != Some("application/json") {
        return Err(Problem::new(ProblemType::UnsupportedMediaType, "send application/json"));
    }
    serde_json::from_slice(&body).map_err(crate::publish::malformed)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FetchRequest {
    /// Most messages to return (default 10, bounded by `limits.max_fetch`).
    max: Option<usize>,
    /// Long poll: how long to wait for a first message (`0s`..`limits.max_fetch_wait`).
    #[serde(default, with = "humantime_serde")]
    wait: Option<Duration>,
}

/// `POST /v1/subscriptions/{name}/fetch` `{"max": 10, "wait": "20s"}`
pub async fn fetch(
    State(state): State<AppState>,
    Name(name): Name,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = owned(&catalog, participant, &name, SubscriptionMode::Pull)?;
    let request: FetchRequest = json_body(&headers, body).await?;
    // Never more than the consumer may have unacknowledged at once.
    let max = request.max.unwrap_or(10).clamp(1, state.limits.max_fetch.min(sub.max_in_flight as usize).max(1));
    let wait = request.wait.unwrap_or(Duration::ZERO).min(state.limits.max_fetch_wait);
    let engine = &state.deliveries.engine;
    let unavailable = |e: String| {
        Problem::new(ProblemType::NatsUnavailable, format!("NATS: {e}")).retry_after(state.limits.retry_after_seconds)
    };
    let key = engine.token_key().await.map_err(|e| unavailable(e.to_string()))?;
    let messages = pull::fetch(&engine.js, key, sub, max, wait).await.map_err(|e| unavailable(e.to_string()))?;
    metrics::counter!("magistral_pull_fetched_total", "subscription" => sub.name.clone())
        .increment(messages.len() as u64);
    Ok(Json(json!({ "messages": messages })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckItem {
    token: String,
    #[serde(default = "default_action")]
    action: Action,
    /// For `nak`: redeliver after this delay.
    #[serde(default, with = "humantime_serde")]
    delay: Option<Duration>,
}

fn default_action() -> Action {
    Action::Ack
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    acks: Vec<AckItem>,
}

/// `POST /v1/subscriptions/{name}/ack` `{"acks": [{"token": "...", "action": "ack"}]}`.
/// Every token is verified first; one bad token refuses the request and nothing is acted on.
pub async fn ack(
    State(state): State<AppState>,
    Name(name): Name,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let sub = owned(&catalog, participant, &name, SubscriptionMode::Pull)?;
    let request: AckRequest = json_body(&headers, body).await?;
    let engine = &state.deliveries.engine;
    let unavailable = |e: String| {
        Problem::new(ProblemType::NatsUnavailable, format!("NATS: {e}")).retry_after(state.limits.retry_after_seconds)
    };
    let key = engine.token_key().await.map_err(|e| unavailable(e.to_string()))?;

    let mut tokens = Vec::with_capacity(request.acks.len());
    let mut refused = Vec::new();
    for (index, item) in request.acks.iter().enumerate() {
        match key.verify(&item.token) {
            Ok(token) if token.s == sub.name => tokens.push(token),
            Ok(token) => {
                refused.push(json!({ "index": index, "detail": format!("the token is for subscription {}", token.s) }))
            }
            Err(why) => refused.push(json!({ "index": index, "detail": why })),
        }
    }
    if !refused.is_empty() {
        let mut problem = Problem::new(
            ProblemType::InvalidAckToken,
            format!("{} token(s) refused; nothing was acted on", refused.len()),
        );
        problem.items = refused;
        return Err(problem);
    }

    let ledger = engine.ack_ledger().await.map_err(|e| unavailable(e.to_string()))?;
    let mut results = Vec::with_capacity(tokens.len());
    let mut failed = 0;
    // Tokens are carried out concurrently (bounded), answers kept in request order.
    let pairs: Vec<_> = tokens.iter().zip(&request.acks).collect();
    let mut outcomes = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(64) {
        let acts: Vec<_> = chunk
            .iter()
            .map(|(token, item)| pull::act(&state.client, ledger, token, item.action, item.delay))
            .collect();
        outcomes.extend(futures::future::join_all(acts).await);
    }
    for (index, (token, outcome)) in tokens.iter().zip(outcomes).enumerate() {
        match outcome {
            Ok(()) => results.push(json!({ "index": index, "ok": true })),
            Err(failure) => {
                failed += 1;
                let problem = match failure {
                    AckFailure::AlreadyAcked => Problem::new(
                        ProblemType::AlreadyAcked,
                        format!("{} seq {} was already acked or terminated", token.st, token.q),
                    ),
                    AckFailure::Nats(e) => unavailable(e),
                };
                results.push(json!({ "index": index, "error": problem.body() }));
            }
        }
    }
    let status = if failed == 0 { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    Ok((status, Json(json!({ "results": results, "failed": failed }))).into_response())
}
