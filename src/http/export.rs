//! `GET /v1/subscriptions/{name}/export.xlsx` and `.csv`, and
//! `POST /v1/subscriptions/{name}/export/confirm`: a pull subscription as a spreadsheet,
//! acked only on confirmation (see [`crate::export`]). Only the owner exports, like it pulls.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::extract::{CommandBody, Params, nats_unavailable};
use super::problem::{Problem, ProblemType};
use super::pull::Pullable;
use crate::export::{self, ConfirmError};

/// The header carrying an export's confirmation token.
pub(crate) const EXPORT_TOKEN_HEADER: &str = "magistral-export-token";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// Most rows (default and bound: `limits.max_fetch`, and the subscription's
    /// `max_in_flight`, which bounds what may be unacknowledged at once).
    max: Option<usize>,
}

#[derive(Clone, Copy)]
enum Kind {
    Xlsx,
    Csv,
}

/// `GET /v1/subscriptions/{name}/export.xlsx`
pub(crate) async fn xlsx(
    State(state): State<AppState>,
    Pullable(sub): Pullable,
    Params(query): Params<ExportQuery>,
) -> Result<Response, Problem> {
    export(state, &sub, query, Kind::Xlsx).await
}

/// `GET /v1/subscriptions/{name}/export.csv`
pub(crate) async fn csv(
    State(state): State<AppState>,
    Pullable(sub): Pullable,
    Params(query): Params<ExportQuery>,
) -> Result<Response, Problem> {
    export(state, &sub, query, Kind::Csv).await
}

async fn export(
    state: AppState,
    sub: &crate::delivery::subscription::Subscription,
    query: ExportQuery,
    kind: Kind,
) -> Result<Response, Problem> {
    let bound = state.limits.max_fetch.min(sub.max_in_flight as usize).max(1);
    let max = query.max.unwrap_or(bound).clamp(1, bound);
    let engine = &state.deliveries.engine;
    let key = engine.token_key().await.map_err(|e| nats_unavailable(&state, "reading the ack token key", e))?;
    let ledger = engine.ack_ledger().await.map_err(|e| nats_unavailable(&state, "opening the ack ledger", e))?;
    let catalog = state.catalog.load_full();
    let order = engine.key_order(sub).await.map_err(|e| nats_unavailable(&state, "opening the key-order queue", e))?;
    let export = export::export(&engine.js, key, ledger, order, &catalog.contracts, sub, max)
        .await
        .map_err(|e| nats_unavailable(&state, "exporting", e))?;
    let (body, content_type, extension) = match kind {
        Kind::Xlsx => (
            export::to_xlsx(&export, &sub.name).map_err(|e| {
                tracing::error!(subscription = %sub.name, error = %e, "XLSX export failed");
                Problem::new(ProblemType::Internal, "internal error")
            })?,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "xlsx",
        ),
        Kind::Csv => (export::to_csv(&export), "text/csv; charset=utf-8", "csv"),
    };
    metrics::counter!(crate::telemetry::catalogue::PULL_FETCHED_TOTAL, "subscription" => sub.name.clone())
        .increment(export.rows.len() as u64);
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.{extension}\"", sub.name)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert("magistral-export-rows", HeaderValue::from(export.rows.len()));
    if let Some(token) = export.token.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(EXPORT_TOKEN_HEADER, token);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfirmRequest {
    /// The `Magistral-Export-Token` of the export.
    token: String,
}

/// `POST /v1/subscriptions/{name}/export/confirm` `{"token": "x1...."}`: acks the export's
/// messages. Confirming twice is `already-acked`; a token of another subscription, forged or
/// altered is `invalid-ack-token`.
pub(crate) async fn confirm(
    State(state): State<AppState>,
    Pullable(sub): Pullable,
    CommandBody(request): CommandBody<ConfirmRequest>,
) -> Result<Response, Problem> {
    let engine = &state.deliveries.engine;
    let key = engine.token_key().await.map_err(|e| nats_unavailable(&state, "reading the ack token key", e))?;
    let (owner, id) =
        key.verify_export(&request.token).map_err(|why| Problem::new(ProblemType::InvalidAckToken, why))?;
    if owner != sub.name {
        return Err(Problem::new(ProblemType::InvalidAckToken, format!("the token is for subscription {owner}")));
    }
    let ledger = engine.ack_ledger().await.map_err(|e| nats_unavailable(&state, "opening the ack ledger", e))?;
    let order = engine.key_order(&sub).await.map_err(|e| nats_unavailable(&state, "opening the key-order queue", e))?;
    match export::confirm(&state.client, ledger, order, &sub.name, &id).await {
        Ok(confirmed) => Ok(Json(confirmed).into_response()),
        Err(ConfirmError::Unknown) => Err(Problem::new(
            ProblemType::AlreadyAcked,
            "this export was confirmed already, or is older than 24 h (its messages were delivered again since)",
        )),
        Err(ConfirmError::Nats(e)) => Err(nats_unavailable(&state, "confirming the export", e)),
    }
}
