//! `GET /v1/subscriptions/{name}/events`: a live stream of a `stream`-mode subscription as
//! Server-Sent Events. Each connection reads with its own ephemeral consumer; the event `id`
//! is the stream sequence, so a reconnect with `Last-Event-ID` resumes right after the last
//! event the client saw. Browsers (`EventSource` cannot set headers) may pass the token as
//! `?access_token=` on this route only; the gateway never logs request URIs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::AppState;
use super::extract::{Caller, nats_unavailable};
use super::problem::{Problem, ProblemType};
use super::pull::owned;
use super::subscriptions::Name;
use crate::config::{StartPosition, SubscriptionMode};
use crate::delivery::subscription::Subscription;

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
    /// Alternative to the `Last-Event-ID` header (parsed like it).
    last_event_id: Option<String>,
}

/// The caller of an event stream: the `Authorization` header, else (for `EventSource`,
/// which cannot set headers) `?access_token=`. Who is asking comes first, whatever else is
/// wrong with the request, so the token is taken from a query that may not parse otherwise.
fn stream_caller(state: &AppState, headers: &HeaderMap, query: Option<&EventsQuery>) -> Result<Caller, Problem> {
    let catalog = state.catalog.load_full();
    if let (None, Some(EventsQuery { access_token: Some(token), .. })) = (headers.get(header::AUTHORIZATION), query)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        let mut headers = headers.clone();
        headers.insert(header::AUTHORIZATION, v);
        return Caller::from_headers(catalog, &headers);
    }
    Caller::from_headers(catalog, headers)
}

/// Where to resume: after the `Last-Event-ID` header, else after `?last_event_id=`; each
/// refused as what it is (`invalid-header`, `invalid-query`).
fn resume_point(headers: &HeaderMap, query: &EventsQuery) -> Result<Option<u64>, Problem> {
    match headers.get("last-event-id") {
        // A header that is not even visible ASCII is no event id either.
        Some(v) => {
            v.to_str().ok().and_then(|v| parse_last_event_id(v).ok()).map(Some).ok_or_else(|| not_resumable(true))
        }
        None => query
            .last_event_id
            .as_deref()
            .map(parse_last_event_id)
            .transpose()
            .map_err(|NotAnEventId| not_resumable(false)),
    }
}

fn not_resumable(from_header: bool) -> Problem {
    if from_header {
        Problem::new(ProblemType::InvalidHeader, "Last-Event-ID is an event id from this stream")
    } else {
        Problem::new(ProblemType::InvalidQuery, "last_event_id is an event id from this stream")
    }
}

/// `GET /v1/subscriptions/{name}/events`
pub async fn events(
    State(state): State<AppState>,
    Name(name): Name,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let query = query.map(|Query(q)| q);
    let caller = stream_caller(&state, &headers, query.as_ref().ok())?;
    let participant = caller.participant();
    let query = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let sub = owned(caller.catalog(), participant, &name, SubscriptionMode::Stream)?.clone();
    let from_header = headers.get("last-event-id").is_some();
    let resume_at = resume_point(&headers, &query)?;

    // A slot first, so a client hammering reconnects cannot pile up consumers.
    let mut lease = take_slot(&state, &participant.name)?;
    let unavailable = |e: String| nats_unavailable(&state, "opening the event stream", e);
    let (stream_name, filters) =
        sub.spans.first().cloned().ok_or_else(|| Problem::new(ProblemType::Internal, "no stream"))?;
    let stream = state.publisher.jetstream().get_stream(&stream_name).await.map_err(|e| unavailable(e.to_string()))?;
    // Sequences never go back, so an id past the stream's last one was never sent.
    if let Some(start) = resume_at {
        let last = stream.cached_info().state.last_sequence;
        if start > last.saturating_add(1) {
            return Err(not_resumable(from_header));
        }
    }
    let consumer_name = format!("magistral-sse-{}-{}", sub.name, uuid::Uuid::now_v7().simple());
    let config = consumer_config(&sub, &participant.name, consumer_name.clone(), resume_at, filters);
    let consumer = stream.create_consumer(config).await.map_err(|e| unavailable(e.to_string()))?;
    lease.consumer = Some((stream, consumer_name));
    let messages = consumer.messages().await.map_err(|e| unavailable(e.to_string()))?;
    metrics::gauge!(crate::telemetry::catalogue::EVENT_STREAMS, "subscription" => sub.name.clone()).increment(1.0);
    // On shutdown the stream ends (clients resume with Last-Event-ID), so it does not hold
    // the drain open until its timeout.
    let events = to_events(messages, lease, sub.name.clone()).take_until(state.shutdown.clone().cancelled_owned());
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.limits.sse_heartbeat).text("heartbeat"))
        .into_response();
    // nginx and similar proxies would otherwise buffer the stream.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One of the participant's event-stream slots (`too-many-streams` when all are taken),
/// held by the returned lease.
fn take_slot(state: &AppState, participant: &str) -> Result<Lease, Problem> {
    let mut counts = state.sse_streams.0.lock().map_err(|_| Problem::new(ProblemType::Internal, "internal error"))?;
    let open = counts.entry(participant.to_owned()).or_default();
    if *open >= state.limits.max_streams_per_participant {
        return Err(Problem::new(
            ProblemType::TooManyStreams,
            format!("{} event streams are open; the limit is {}", open, state.limits.max_streams_per_participant),
        )
        .retry_after(state.limits.retry_after_seconds));
    }
    *open += 1;
    Ok(Lease { counts: state.sse_streams.clone(), participant: participant.to_owned(), consumer: None })
}

/// The ephemeral consumer one event stream reads with.
fn consumer_config(
    sub: &Subscription,
    participant: &str,
    name: String,
    resume_at: Option<u64>,
    filters: Vec<String>,
) -> pull::Config {
    let mut config = pull::Config {
        description: Some(format!("magistral event stream of {} for {participant}", sub.name)),
        name: Some(name),
        ack_policy: AckPolicy::None,
        deliver_policy: match (resume_at, sub.start) {
            (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
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
    config
}

/// Messages as SSE events: `id` = stream sequence, `event` = CloudEvents type, `data` = the
/// data as published. The lease lives as long as the stream, so a disconnect frees both.
fn to_events(
    messages: impl Stream<
        Item = Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>,
    > + Send
    + 'static,
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
            metrics::gauge!(crate::telemetry::catalogue::EVENT_STREAMS, "subscription" => self.subscription.clone())
                .decrement(1.0);
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
            Some(Ok(frame(info.stream_sequence, &type_, &m.payload)))
        }
    })
}

/// The stream sequence to resume at after the event id a client last saw: the digits of a
/// sequence (surrounding spaces allowed), plus one. Anything else — signs, empty, or a
/// number with no successor — is not a resume point.
///
/// # Errors
/// [`NotAnEventId`]: the value is not an event id this gateway could have sent.
pub fn parse_last_event_id(value: &str) -> Result<u64, NotAnEventId> {
    let digits = value.trim_matches(' ');
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NotAnEventId);
    }
    digits.parse::<u64>().map_err(|_| NotAnEventId)?.checked_add(1).ok_or(NotAnEventId)
}

/// A `Last-Event-ID` that is no resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an event id of this stream")]
pub struct NotAnEventId;

/// One SSE frame for a stored message. Total whatever the message holds: axum's `Event`
/// panics on CR/LF in `event`/`id`, so the type has every control character replaced, and
/// line breaks in the data become separate `data:` lines (the client joins them with LF;
/// for JSON, whose strings cannot hold raw line breaks, that changes no value).
pub fn frame(seq: u64, type_: &str, data: &[u8]) -> Event {
    Event::default().id(seq.to_string()).event(sse_field(type_)).data(sse_data(&String::from_utf8_lossy(data)))
}

/// A value safe for a single-line SSE field: control characters become U+FFFD.
#[must_use]
pub fn sse_field(value: &str) -> String {
    value.chars().map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

/// Data with CRLF and lone CR as LF, the line break axum splits `data:` lines on (a CR
/// left in would be split too, and CRLF would become two line breaks).
fn sse_data(data: &str) -> String {
    if data.contains('\r') { data.replace("\r\n", "\n").replace('\r', "\n") } else { data.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    /// The frame as a client reads it, parsed by the rules of the HTML standard's
    /// event-stream interpretation: (id, event, data) of every dispatched event.
    fn read_back(event: Event) -> Vec<(String, String, String)> {
        let body = Sse::new(futures::stream::iter([Ok::<_, Infallible>(event)])).into_response().into_body();
        let bytes = futures::executor::block_on(body.collect()).unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let mut out = Vec::new();
        let (mut id, mut name, mut data) = (String::new(), String::new(), Vec::<String>::new());
        let mut lines = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(['\r', '\n']) {
            lines.push(&rest[..i]);
            let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[i + skip..];
        }
        assert!(rest.is_empty(), "unterminated line {rest:?}");
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    out.push((id.clone(), std::mem::take(&mut name), data.join("\n")));
                }
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.to_owned(),
                "event" => name = value.to_owned(),
                "data" => data.push(value.to_owned()),
                other => panic!("unexpected field {other:?}"),
            }
        }
        out
    }

    #[test]
    fn line_breaks_in_type_and_data_do_not_break_the_frame() {
        let got = read_back(frame(7, "order.created\r\nevent: forged", b"{\"a\":\r\n1}\rdata: x"));
        assert_eq!(
            got,
            vec![("7".into(), "order.created\u{fffd}\u{fffd}event: forged".into(), "{\"a\":\n1}\ndata: x".into())]
        );
    }

    #[test]
    fn last_event_ids() {
        assert_eq!(parse_last_event_id("41"), Ok(42));
        assert_eq!(parse_last_event_id(" 0 "), Ok(1));
        assert_eq!(parse_last_event_id("18446744073709551614"), Ok(u64::MAX));
        assert_eq!(parse_last_event_id("18446744073709551615"), Err(NotAnEventId));
        assert_eq!(parse_last_event_id("99999999999999999999999"), Err(NotAnEventId));
        for bad in ["", " ", "+1", "-1", "1.0", "0x10", "1 2", "\t1"] {
            assert_eq!(parse_last_event_id(bad), Err(NotAnEventId), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_stored_message_makes_one_well_formed_event(seq in any::<u64>(), type_ in any::<String>(), data in any::<String>()) {
            let got = read_back(frame(seq, &type_, data.as_bytes()));
            let expected_data = data.replace("\r\n", "\n").replace('\r', "\n");
            if expected_data.is_empty() {
                // No data line: clients dispatch nothing, and nothing breaks.
                prop_assert!(got.is_empty());
            } else {
                prop_assert_eq!(got.len(), 1);
                let (id, name, got_data) = &got[0];
                prop_assert_eq!(id, &seq.to_string());
                prop_assert!(!name.chars().any(char::is_control));
                prop_assert_eq!(name.chars().count(), type_.chars().count());
                prop_assert_eq!(got_data, &expected_data);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(seq in any::<u64>(), type_ in ".*", data in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = frame(seq, &type_, &data);
        }

        #[test]
        fn last_event_id_is_the_next_sequence_or_refused(value in ".{0,30}") {
            match parse_last_event_id(&value) {
                Ok(next) => {
                    prop_assert!(next >= 1);
                    prop_assert_eq!(value.trim_matches(' ').parse::<u64>().ok(), Some(next - 1));
                }
                Err(NotAnEventId) => prop_assert!(value.trim_matches(' ').parse::<u64>().ok().and_then(|n| n.checked_add(1)).is_none()
                    || value.trim_matches(' ').starts_with('+')),
            }
        }

        #[test]
        fn every_sequence_but_the_last_resumes(seq in any::<u64>()) {
            prop_assert_eq!(parse_last_event_id(&seq.to_string()).ok(), seq.checked_add(1));
        }
    }
}
