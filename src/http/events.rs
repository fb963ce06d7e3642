//! `GET /v1/subscriptions/{name}/events`: a live stream of a `stream`-mode subscription as
//! Server-Sent Events. Each connection reads with its own ephemeral consumer; the event `id`
//! is the stream sequence, so a reconnect with `Last-Event-ID` resumes right after the last
//! event the client saw. Browsers (`EventSource` cannot set headers) may pass the token as
//! `?access_token=` on this route only; the gateway never logs request URIs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::problem::{Problem, ProblemType};
use super::pull::owned;
use super::subscriptions::Name;
use super::{authenticate, header_str, AppState};
use crate::config::{StartPosition, SubscriptionMode};

/// Open event streams per participant.
#[derive(Default)]
pub struct StreamCounts(Mutex<HashMap<String, usize>>);

/// Releases a participant's stream slot and the consumer when the client goes away.
struct Lease {
    counts: Arc<StreamCounts>,
    participant: String,
    consumer: Option<(async_nats::jetstream::stream::Stream, String)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut m) = self.counts.0.lock()
            && let Some(n) = m.get_mut(&self.participant)
        {
            *n = n.saturating_sub(1);
        }
        if let Some((stream, name)) = self.consumer.take() {
            // The server would also drop it after `inactive_threshold`; do it now.
            tokio::spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// For `EventSource`, which cannot send `Authorization`.
    access_token: Option<String>,
    /// Alternative to the `Last-Event-ID` header.
    last_event_id: Option<u64>,
}

/// `GET /v1/subscriptions/{name}/events`
pub async fn events(
    State(state): State<AppState>,
    Name(name): Name,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    mut headers: HeaderMap,
) -> Result<Response, Problem> {
    // Who is asking comes first, whatever else is wrong with the request.
    let query = query.map(|Query(q)| q);
    if let (None, Ok(EventsQuery { access_token: Some(token), .. })) = (headers.get(header::AUTHORIZATION), &query)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let query = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let sub = owned(&catalog, participant, &name, SubscriptionMode::Stream)?.clone();
    let last_seen = match header_str(&headers, "last-event-id") {
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| Problem::new(ProblemType::InvalidHeader, "Last-Event-ID is an event id from this stream"))?),
        None => query.last_event_id,
    };

    // A slot first, so a client hammering reconnects cannot pile up consumers.
    {
        let mut counts = state.sse_streams.0.lock().map_err(|_| Problem::new(ProblemType::Internal, "internal error"))?;
        let open = counts.entry(participant.name.clone()).or_default();
        if *open >= state.limits.max_streams_per_participant {
            return Err(Problem::new(
                ProblemType::TooManyStreams,
                format!("{} event streams are open; the limit is {}", open, state.limits.max_streams_per_participant),
            )
            .retry_after(state.limits.retry_after_seconds));
        }
        *open += 1;
    }
    let mut lease = Lease { counts: state.sse_streams.clone(), participant: participant.name.clone(), consumer: None };

    let unavailable = |e: String| Problem::new(ProblemType::NatsUnavailable, format!("NATS: {e}")).retry_after(state.limits.retry_after_seconds);
    let (stream_name, filters) = sub.spans.first().cloned().ok_or_else(|| Problem::new(ProblemType::Internal, "no stream"))?;
    let stream = state.publisher.jetstream().get_stream(&stream_name).await.map_err(|e| unavailable(e.to_string()))?;
    let consumer_name = format!("magistral-sse-{}-{}", sub.name, uuid::Uuid::now_v7().simple());
    let mut config = pull::Config {
        name: Some(consumer_name.clone()),
        description: Some(format!("magistral event stream of {} for {}", sub.name, participant.name)),
        ack_policy: AckPolicy::None,
        deliver_policy: match (last_seen, sub.start) {
            (Some(seq), _) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
            (None, StartPosition::All) => DeliverPolicy::All,
            (None, StartPosition::New) => DeliverPolicy::New,
        },
        // If this replica dies, the server cleans up on its own.
        inactive_threshold: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    if let [one] = filters.as_slice() {
        config.filter_subject = one.clone();
    } else {
        config.filter_subjects = filters;
    }
    let consumer = stream.create_consumer(config).await.map_err(|e| unavailable(e.to_string()))?;
    lease.consumer = Some((stream, consumer_name));
    let messages = consumer.messages().await.map_err(|e| unavailable(e.to_string()))?;
    metrics::gauge!("magistral_event_streams", "subscription" => sub.name.clone()).increment(1.0);
    // On shutdown the stream ends (clients resume with Last-Event-ID), so it does not hold
    // the drain open until its timeout.
    let events = to_events(messages, lease, sub.name.clone()).take_until(state.shutdown.clone().cancelled_owned());
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(state.limits.sse_heartbeat).text("heartbeat")).into_response();
    // nginx and similar proxies would otherwise buffer the stream.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Messages as SSE events: `id` = stream sequence, `event` = CloudEvents type, `data` = the
/// data as published. The lease lives as long as the stream, so a disconnect frees both.
fn to_events(
    messages: impl Stream<Item = Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>> + Send + 'static,
    lease: Lease,
    subscription: String,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    struct Gauge {
        subscription: String,
        // Held for its Drop: frees the slot and deletes the consumer.
        _lease: Lease,
    }
    impl Drop for Gauge {
        fn drop(&mut self) {
            metrics::gauge!("magistral_event_streams", "subscription" => self.subscription.clone()).decrement(1.0);
        }
    }
    let guard = Arc::new(Gauge { subscription, _lease: lease });
    messages.filter_map(move |m| {
        let _guard = guard.clone();
        async move {
            let m = m.ok()?;
            let info = m.info().ok()?;
            let type_ = m
                .headers
                .as_ref()
                .and_then(|h| h.get("ce-type"))
                .map(|v| percent_encoding::percent_decode_str(v.as_str()).decode_utf8_lossy().into_owned())
                .unwrap_or_else(|| m.subject.to_string());
            let data = String::from_utf8_lossy(&m.payload).into_owned();
            Some(Ok(Event::default().id(info.stream_sequence.to_string()).event(type_).data(data)))
        }
    })
}
