//! HTTP pull: `POST /v1/subscriptions/{name}/fetch` and `.../ack`, for participants that
//! can only call out (an ERP or 1C behind a firewall). Only the owning participant may pull.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Caller, OptionalCommandBody, nats_unavailable};
use super::problem::{Problem, ProblemType};
use super::subscriptions::Name;
use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
use crate::delivery::pull::{self, AckFailure, AckToken, Action, TokenKey};
use crate::delivery::pull_order;
use crate::delivery::subscription::Subscription;
use crate::participants::Participant;

/// The subscription, if the caller owns it and it has the mode the route needs; one the
/// caller may not see is not found, exactly like one that does not exist.
pub(crate) fn owned<'c>(
    catalog: &'c Catalog,
    participant: &Participant,
    name: &str,
    mode: SubscriptionMode,
) -> Result<&'c Arc<Subscription>, Problem> {
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

/// The `pull` subscription `{name}` of the path, if the [`Caller`] owns it (see [`owned`]).
/// Checks, in order: token → subscription → owner → mode.
pub(crate) struct Pullable(pub Arc<Subscription>);

impl FromRequestParts<AppState> for Pullable {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Name(name) = Name::from_request_parts(parts, state).await?;
        owned(caller.catalog(), caller.participant(), &name, SubscriptionMode::Pull).cloned().map(Self)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FetchRequest {
    /// Most messages to return (default 10, bounded by `limits.max_fetch`).
    max: Option<usize>,
    /// Long poll: how long to wait for a first message (`0s`..`limits.max_fetch_wait`).
    #[serde(default, with = "humantime_serde")]
    wait: Option<Duration>,
}

/// `POST /v1/subscriptions/{name}/fetch` `{"max": 10, "wait": "20s"}`
pub(crate) async fn fetch(
    State(state): State<AppState>,
    Pullable(sub): Pullable,
    OptionalCommandBody(request): OptionalCommandBody<FetchRequest>,
) -> Result<Response, Problem> {
    // Never more than the consumer may have unacknowledged at once.
    let max = request.max.unwrap_or(10).clamp(1, state.limits.max_fetch.min(sub.max_in_flight as usize).max(1));
    let wait = request.wait.unwrap_or(Duration::ZERO).min(state.limits.max_fetch_wait);
    let engine = &state.deliveries.engine;
    let key = engine.token_key().await.map_err(|e| nats_unavailable(&state, "reading the ack token key", e))?;
    let order = engine.key_order(&sub).await.map_err(|e| nats_unavailable(&state, "opening the key-order queue", e))?;
    let messages = pull::fetch(&engine.js, key, &sub, order, max, wait)
        .await
        .map_err(|e| nats_unavailable(&state, "fetching", e))?;
    metrics::counter!(crate::telemetry::catalogue::PULL_FETCHED_TOTAL, "subscription" => sub.name.clone())
        .increment(messages.len() as u64);
    Ok(Json(json!({ "messages": messages })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckItem {
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
pub(crate) struct AckRequest {
    acks: Vec<AckItem>,
}

/// `POST /v1/subscriptions/{name}/ack` `{"acks": [{"token": "...", "action": "ack"}]}`.
/// Every token is verified first; one bad token refuses the request and nothing is acted on.
pub(crate) async fn ack(
    State(state): State<AppState>,
    Pullable(sub): Pullable,
    OptionalCommandBody(request): OptionalCommandBody<AckRequest>,
) -> Result<Response, Problem> {
    let engine = &state.deliveries.engine;
    let key = engine.token_key().await.map_err(|e| nats_unavailable(&state, "reading the ack token key", e))?;
    let tokens = verify_all(key, &sub, &request.acks)?;
    let ledger = engine.ack_ledger().await.map_err(|e| nats_unavailable(&state, "opening the ack ledger", e))?;
    let order = engine.key_order(&sub).await.map_err(|e| nats_unavailable(&state, "opening the key-order queue", e))?;
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
    if let Some(order) = order {
        // What became of each message, for its key (an ack already carried out counts too).
        let done: Vec<_> = tokens
            .iter()
            .zip(&request.acks)
            .zip(&outcomes)
            .filter(|(_, outcome)| match outcome {
                Ok(()) => true,
                Err(AckFailure::AlreadyAcked) => true,
                Err(AckFailure::Nats(_)) => false,
            })
            .map(|((token, item), outcome)| {
                let action = if outcome.is_err() { Action::Ack } else { item.action };
                (token.st.as_str(), token.q, action, item.delay)
            })
            .collect();
        pull_order::settle(order, &sub.name, &done)
            .await
            .map_err(|e| nats_unavailable(&state, "moving the keys on", e))?;
    }
    let mut results = Vec::with_capacity(tokens.len());
    let mut failed = 0;
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
                    AckFailure::Nats(e) => nats_unavailable(&state, "acting on an ack token", e),
                };
                results.push(json!({ "index": index, "error": problem.body() }));
            }
        }
    }
    let status = if failed == 0 { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    Ok((status, Json(json!({ "results": results, "failed": failed }))).into_response())
}

/// Every token verified and for this subscription, or `invalid-ack-token` naming each one
/// refused (nothing is acted on then).
fn verify_all(key: &TokenKey, sub: &Subscription, acks: &[AckItem]) -> Result<Vec<AckToken>, Problem> {
    let mut tokens = Vec::with_capacity(acks.len());
    let mut refused: Vec<Value> = Vec::new();
    for (index, item) in acks.iter().enumerate() {
        match key.verify(&item.token) {
            Ok(token) if token.s == sub.name => tokens.push(token),
            Ok(token) => {
                refused.push(json!({ "index": index, "detail": format!("the token is for subscription {}", token.s) }))
            }
            Err(why) => refused.push(json!({ "index": index, "detail": why })),
        }
    }
    if refused.is_empty() {
        return Ok(tokens);
    }
    let mut problem =
        Problem::new(ProblemType::InvalidAckToken, format!("{} token(s) refused; nothing was acted on", refused.len()));
    problem.items = refused;
    Err(problem)
}
