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
    let r = Readiness::check(&state).await;
    let check = |ok: bool, detail: String| json!({ "status": if ok { "ok" } else { "failing" }, "detail": detail });
    let body = json!({
        "status": if r.ready() { "ready" } else { "not-ready" },
        "checks": {
            "config": check(true, "loaded".into()),
            "nats": check(r.connected, r.connection.to_string()),
            "jetstream": check(r.jetstream.is_ok(), r.jetstream.clone().err().unwrap_or_else(|| "answering".into())),
            "streams": check(r.streams, if r.streams { "reconciled".into() } else { "not yet reconciled".into() }),
            "shutdown": check(!r.shutting_down, if r.shutting_down { "draining".into() } else { "running".into() }),
        }
    });
    let status = if r.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// What `/readyz` answers, and `magistral_ready` shows.
struct Readiness {
    shutting_down: bool,
    connection: async_nats::connection::State,
    connected: bool,
    jetstream: Result<(), String>,
    streams: bool,
}

impl Readiness {
    async fn check(state: &AppState) -> Self {
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
        Self { shutting_down, connection, connected, jetstream, streams }
    }

    fn ready(&self) -> bool {
        !self.shutting_down && self.connected && self.jetstream.is_ok() && self.streams
    }
}

/// Prometheus text exposition; the gauges that are read rather than counted (process,
/// readiness, NATS connection, subscriptions) are refreshed first.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let readiness = Readiness::check(&state).await;
    crate::telemetry::observe(readiness.connected, readiness.ready());
    state.deliveries.observe(readiness.connected).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
