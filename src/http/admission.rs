//! Connection hygiene per request, applied as one middleware on every route before the
//! handler runs (so before any body is read):
//! - the request body is bounded in time: in total (`limits.body_read_timeout`) and between
//!   two pieces (`limits.body_idle_timeout`); a body that does not arrive answers
//!   `408 body-timeout` and the connection is closed;
//! - a participant may hold at most `limits.max_in_flight_per_participant` requests at once
//!   (event streams excepted: they are long-lived and have their own bound);
//! - a participant's publishes pass a token bucket (`limits.publish_rate_per_participant`,
//!   burst `limits.publish_burst_per_participant`; off by default).
//!
//! Refusals are `429 rate-limited` with `Retry-After`. Requests without a valid token pass
//! through untouched: the handler answers them `401`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};

use super::AppState;
use super::extract::Caller;
use super::problem::{Problem, ProblemType};
use crate::config::{InboundKind, Limits};

/// Per-participant in-flight counts and publish token buckets of this replica. Keyed by
/// participant name: only authenticated names get an entry, so the maps stay as small as
/// the configured set of participants (entries are kept at zero, not removed).
pub struct Admission {
    max_in_flight: usize,
    rate: f64,
    burst: f64,
    in_flight: Mutex<HashMap<String, usize>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Admission {
    #[must_use]
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_in_flight: limits.max_in_flight_per_participant,
            rate: if limits.publish_rate_per_participant.is_finite() {
                limits.publish_rate_per_participant.max(0.0)
            } else {
                0.0
            },
            burst: f64::from(limits.publish_burst_per_participant.max(1)),
            in_flight: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of the participant's in-flight slots, held until the guard drops.
    ///
    /// # Errors
    /// `rate-limited` (`Retry-After: 1`) when all its slots are taken.
    pub fn admit(self: &Arc<Self>, participant: &str) -> Result<InFlight, Problem> {
        if self.max_in_flight == 0 {
            return Ok(InFlight(None));
        }
        let mut counts = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Entries stay at zero (one per participant that ever called): no allocation per request.
        if !counts.contains_key(participant) {
            counts.insert(participant.to_owned(), 0);
        }
        let Some(open) = counts.get_mut(participant) else { unreachable!("inserted above") };
        if *open >= self.max_in_flight {
            refused(participant, "in-flight");
            return Err(Problem::new(
                ProblemType::RateLimited,
                format!(
                    "{open} requests of this participant are in flight on this replica; the limit is {}",
                    self.max_in_flight
                ),
            )
            .retry_after(1));
        }
        *open += 1;
        Ok(InFlight(Some((self.clone(), participant.to_owned()))))
    }

    /// Takes `cost` publish tokens from the participant's bucket. A bucket holding at least
    /// one token admits any cost and may go into debt (a batch larger than the burst), which
    /// later publishes pay off: over time a participant never exceeds its rate.
    ///
    /// # Errors
    /// `rate-limited` with `Retry-After` = whole seconds until a token is free.
    pub fn charge_publish(&self, participant: &str, cost: usize) -> Result<(), Problem> {
        if self.rate <= 0.0 || cost == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let bucket = buckets.entry(participant.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        match bucket.take(now, cost as f64, self.rate, self.burst) {
            Ok(()) => Ok(()),
            Err(wait) => {
                refused(participant, "publish-rate");
                Err(Problem::new(
                    ProblemType::RateLimited,
                    format!("this participant may publish {} messages per second (burst {})", self.rate, self.burst),
                )
                .retry_after(retry_after_seconds(wait)))
            }
        }
    }

    /// Tokens for the items of a batch beyond the first (the first was taken on admission);
    /// called once the items are counted. Never refuses: the bucket goes into debt instead.
    pub fn charge_batch_items(&self, participant: &str, items: usize) {
        if self.rate <= 0.0 || items <= 1 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let bucket = buckets.entry(participant.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.refill(now, self.rate, self.burst);
        bucket.tokens -= (items - 1) as f64;
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

fn refused(participant: &str, reason: &'static str) {
    metrics::counter!(crate::telemetry::catalogue::RATE_LIMITED_TOTAL, "participant" => participant.to_owned(), "reason" => reason)
        .increment(1);
}

/// A token bucket: `tokens` may go negative (debt) after a large batch.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// Takes `cost` tokens if at least one is there; otherwise how long until one is.
    fn take(&mut self, now: Instant, cost: f64, rate: f64, burst: f64) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// A participant's in-flight slot; freed on drop.
pub struct InFlight(Option<(Arc<Admission>, String)>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((admission, participant)) = self.0.take() {
            let mut counts = admission.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = counts.get_mut(&participant) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// What a route costs in admission terms.
enum Cost {
    /// No participant bound: operations endpoints, event streams, inbound adapters that
    /// authenticate by a secret inside the body (an unauthenticated caller must not be able
    /// to spend a participant's budget).
    Free,
    /// An in-flight slot.
    Request,
    /// An in-flight slot and a publish token.
    Publish,
}

fn cost(state: &AppState, method: &Method, route: &str, path: &str) -> Cost {
    match (method, route) {
        (&Method::GET, "/v1/subscriptions/{name}/events" | "/v1/tail") => Cost::Free,
        (_, "/healthz" | "/readyz" | "/metrics" | "/openapi.json") => Cost::Free,
        // The console's page, assets and session: no work worth a participant's slot.
        (_, "/console" | "/console/{asset}" | "/console/session") => Cost::Free,
        (&Method::POST, "/v1/publish/{subject}" | "/v1/publish" | "/v1/import/{route}") => Cost::Publish,
        (&Method::POST, "/v1/inbound/{name}") => {
            let name = path.strip_prefix("/v1/inbound/").unwrap_or_default();
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            let catalog = state.catalog.load();
            match catalog.inbound.iter().find(|r| r.name == name) {
                Some(r) if r.kind == InboundKind::Json => Cost::Publish,
                _ => Cost::Free,
            }
        }
        _ => Cost::Request,
    }
}

/// The middleware (a `route_layer`, so the matched route is known).
pub(crate) async fn admission(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let timed_out = Arc::new(AtomicBool::new(false));
    // Bodyless requests (most GETs) need no timers.
    let body = if body.is_end_stream() {
        body
    } else {
        Body::new(TimedBody::new(
            body,
            state.limits.body_read_timeout,
            state.limits.body_idle_timeout,
            timed_out.clone(),
        ))
    };

    let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let cost = cost(&state, &parts.method, &route, parts.uri.path());
    let mut slot = None;
    let mut participant = None;
    if !matches!(cost, Cost::Free)
        && let Some(caller) = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .or_else(|| Caller::from_headers(state.catalog.load_full(), &parts.headers).ok())
    {
        let admitted = state.admission.admit(caller.name()).and_then(|guard| {
            if matches!(cost, Cost::Publish) {
                state.admission.charge_publish(caller.name(), 1)?;
            }
            Ok(guard)
        });
        match admitted {
            Ok(guard) => slot = Some(guard),
            Err(problem) => return problem.into_response(),
        }
        if super::access::enabled() {
            participant = Some(super::access::Participant(caller.name().to_owned()));
        }
        // The handler's `Caller` extractor takes it from here: one authentication per request.
        parts.extensions.insert(caller);
    }

    let mut response = next.run(Request::from_parts(parts, body)).await;
    drop(slot);
    if let Some(participant) = participant {
        response.extensions_mut().insert(participant);
    }
    if timed_out.load(Ordering::Relaxed) {
        // The rest of the body may still be on its way: the connection cannot be reused.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The error a [`TimedBody`] yields when the client is too slow.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BodyTimedOut(pub String);

/// A request body that fails with [`BodyTimedOut`] when no piece arrives within `idle`, or
/// the whole has not arrived by the deadline. Data already received is always handed out
/// first, so a handler that reads late is not cut off by a timer that ran meanwhile.
struct TimedBody {
    inner: Body,
    idle: Duration,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    total_timer: Pin<Box<tokio::time::Sleep>>,
    total: Duration,
    timed_out: Arc<AtomicBool>,
}

impl TimedBody {
    fn new(inner: Body, total: Duration, idle: Duration, timed_out: Arc<AtomicBool>) -> Self {
        let far = Duration::from_secs(86_400 * 365);
        let or_far = |d: Duration| if d.is_zero() { far } else { d };
        let (total, idle) = (or_far(total), or_far(idle));
        Self {
            inner,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            total_timer: Box::pin(tokio::time::sleep(total)),
            total,
            timed_out,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.idle_timer.as_mut().reset(next);
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let why = if this.total_timer.as_mut().poll(cx).is_ready() {
            format!("the body did not arrive within {}", humantime::format_duration(this.total))
        } else if this.idle_timer.as_mut().poll(cx).is_ready() {
            format!("no part of the body arrived for {}", humantime::format_duration(this.idle))
        } else {
            return Poll::Pending;
        };
        this.timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(why)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket { tokens: 3.0, at: t0 };
        for _ in 0..3 {
            assert!(b.take(t0, 1.0, 2.0, 3.0).is_ok());
        }
        let wait = b.take(t0, 1.0, 2.0, 3.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500), 1.0, 2.0, 3.0).is_ok());
        // Never more than the burst after a long idle spell.
        b.refill(t0 + Duration::from_secs(3600), 2.0, 3.0);
        assert!((b.tokens - 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_large_batch_goes_into_debt_and_is_paid_off() {
        let t0 = Instant::now();
        let mut b = Bucket { tokens: 2.0, at: t0 };
        assert!(b.take(t0, 10.0, 1.0, 2.0).is_ok());
        // 2 - 10 = -8: nine seconds until one token is free again.
        assert_eq!(b.take(t0, 1.0, 1.0, 2.0).unwrap_err(), Duration::from_secs(9));
        assert!(b.take(t0 + Duration::from_secs(9), 1.0, 1.0, 2.0).is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn in_flight_slots_are_per_participant_and_freed_on_drop() {
        let limits = Limits { max_in_flight_per_participant: 2, ..Limits::default() };
        let admission = Arc::new(Admission::new(&limits));
        let a1 = admission.admit("a").unwrap();
        let _a2 = admission.admit("a").unwrap();
        let refused = admission.admit("a").err().unwrap();
        assert_eq!(refused.kind, ProblemType::RateLimited);
        assert_eq!(refused.retry_after, Some(1));
        let _b = admission.admit("b").unwrap();
        drop(a1);
        assert!(admission.admit("a").is_ok());
    }

    #[test]
    fn rate_limit_is_off_by_default() {
        let admission = Admission::new(&Limits::default());
        for _ in 0..10_000 {
            assert!(admission.charge_publish("a", 1).is_ok());
        }
    }
}
