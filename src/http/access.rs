//! The access log (`log.access = true`): one line per HTTP request, after its answer.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Level;

use crate::telemetry::ACCESS;

/// The participant a request was authenticated as, left on the response for the access log.
#[derive(Clone)]
pub(crate) struct Participant(pub(crate) String);

/// Whether the access log is on (a cheap check of a cached callsite).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: ACCESS, Level::INFO)
}

/// The middleware: the route template (not the raw path: no message ids or keys in the log),
/// method, status, participant and duration.
pub(crate) async fn log(request: Request, next: Next) -> Response {
    if !enabled() {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let response = next.run(request).await;
    let participant = response.extensions().get::<Participant>().map(|p| p.0.as_str()).unwrap_or("-");
    tracing::info!(
        target: ACCESS,
        method = %method,
        route = route.as_deref().unwrap_or("(no route)"),
        status = response.status().as_u16(),
        participant,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}
