//! Operations endpoints: liveness, readiness (each dependency reported), Prometheus
//! metrics and the OpenAPI document.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// The OpenAPI 3.1 description of this API (kept honest by `tests/it/openapi.rs`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Alive: the process serves HTTP. Says nothing about NATS on purpose, so a NATS outage
/// does not make Kubernetes restart every replica.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: configuration loaded, NATS connected, JetStream answering, streams reconciled,
/// not shutting down. 503 with the failing checks otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let shutting_down = state.health.shutting_down.load(Ordering::SeqCst);
    let connection = state.client.connection_state();
    let connected = connection == async_nats::connection::State::Connected;
    let jetstream = if connected {
        match tokio::time::timeout(Duration::from_secs(2), state.publisher.jetstream().query_account()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".to_owned()),
        }
    } else {
        Err("not connected".to_owned())
    };
    let streams = state.health.streams_reconciled.load(Ordering::SeqCst);
    let ready = !shutting_down && connected && jetstream.is_ok() && streams;
    let check = |ok: bool, detail: String| json!({ "status": if ok { "ok" } else { "failing" }, "detail": detail });
    let body = json!({
        "status": if ready { "ready" } else { "not-ready" },
        "checks": {
            "config": check(true, "loaded".into()),
            "nats": check(connected, connection.to_string()),
            "jetstream": check(jetstream.is_ok(), jetstream.clone().err().unwrap_or_else(|| "answering".into())),
            "streams": check(streams, if streams { "reconciled".into() } else { "not yet reconciled".into() }),
            "shutdown": check(!shutting_down, if shutting_down { "draining".into() } else { "running".into() }),
        }
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
