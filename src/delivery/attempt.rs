//! One delivery attempt: the HTTP request (body as stored, or re-encoded in the
//! subscription's charset; CloudEvents binary-mode headers,
//! Standard Webhooks signature, trace context, the subscription's own headers), in-progress
//! acks while it runs, and the endpoint's answer classified.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use tracing::Instrument;
use tracing::field::Empty;

use super::retry_policy::{Class, parse_retry_after};
use super::signature;
use super::subscription::Subscription;
use crate::telemetry::traces::{self, TARGET, TraceHeaders};

/// Longest part of an endpoint's answer kept for operators (dead letters, status).
pub(crate) const EXCERPT_BYTES: usize = 512;

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub class: Class,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// The start of the response body, or the transport error.
    pub excerpt: String,
    pub elapsed: Duration,
}

/// The id receivers deduplicate by: `ce-id`, else `Nats-Msg-Id`, else stream and sequence.
#[must_use]
pub(crate) fn message_id(message: &jetstream::Message) -> String {
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    header("ce-id")
        .or_else(|| header("Nats-Msg-Id"))
        .or_else(|| header(super::dead_letter::ORIGINAL_MSG_ID))
        .unwrap_or_else(|| message.info().map(|i| format!("{}-{}", i.stream, i.stream_sequence)).unwrap_or_default())
}

/// Standard Webhooks' `webhook-id`: unique per stored message and the same across its retries
/// and replays. `ce-id` is not enough: CloudEvents makes it unique only together with
/// `ce-source`, so two publishers may use the same one. The stored message's place (replays
/// carry the original's) and its `Nats-Msg-Id` (in case a stream is recreated and its
/// sequence numbers start over) make it unique.
#[must_use]
pub(crate) fn webhook_id(message: &jetstream::Message, fetched: &(String, u64)) -> String {
    use sha2::{Digest, Sha256};
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
    let original = super::dead_letter::original_location(message);
    let (stream, seq) = original.as_ref().unwrap_or(fetched);
    let msg_id = header(super::dead_letter::ORIGINAL_MSG_ID).or_else(|| header("Nats-Msg-Id")).unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [stream.as_bytes(), seq.to_string().as_bytes(), msg_id.as_bytes()] {
        hash.update(part);
        hash.update([0]);
    }
    // The first 16 bytes of the digest, in hex.
    let mut id = String::with_capacity(36);
    id.push_str("msg_");
    id.push_str(&hex::encode(&hash.finalize()[..16]));
    id
}

/// Whether the message is itself a delivery status event (no events about events: a
/// subscription to `magistral.delivery.>` with a failing endpoint must not feed itself).
#[must_use]
pub(crate) fn is_status_event(message: &jetstream::Message) -> bool {
    original_subject(message).starts_with("magistral.delivery.")
}

/// The subject the message was published to (replays carry it in a header).
#[must_use]
pub(crate) fn original_subject(message: &jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(super::dead_letter::ORIGINAL_SUBJECT))
        .map_or_else(|| message.subject.to_string(), |v| v.as_str().to_owned())
}

/// Sends one attempt: prepared (transform, headers), sent, and the answer classified.
/// While it runs, in-progress acks keep JetStream from redelivering the message to another
/// replica, whatever the endpoint's timeout.
pub(crate) async fn send(
    http: &reqwest::Client,
    sub: &Subscription,
    message: &jetstream::Message,
    fetched: &(String, u64),
    attempt: u32,
    ack_wait: Duration,
) -> AttemptResult {
    let started = Instant::now();
    let span = span(sub, message, attempt);
    // A child of the publish (its context is in the message's headers); the webhook carries
    // the attempt's own, so the receiver continues the same trace.
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
    traces::continue_from(&span, header("traceparent"), header("tracestate"));
    let trace = traces::propagate(&span);
    let mut result = match prepare(sub, message, fetched, attempt, trace.as_ref()) {
        Ok(request) => transmit(http, sub, message, request, ack_wait).instrument(span.clone()).await,
        Err(unsent) => unsent,
    };
    result.elapsed = started.elapsed();
    if !span.is_disabled() {
        span.record("magistral.delivery.class", result.class.slug());
        span.record("http.response.status_code", result.status);
        if !matches!(result.class, Class::Delivered | Class::Skipped) {
            traces::failed(&span, result.class.slug(), true);
        }
    }
    result
}

/// The attempt's span: an HTTP client call (OpenTelemetry HTTP and messaging conventions),
/// named after the subscription. Nothing is evaluated unless traces are on.
fn span(sub: &Subscription, message: &jetstream::Message, attempt: u32) -> tracing::Span {
    tracing::trace_span!(
        target: TARGET,
        "deliver",
        otel.name = format!("deliver {}", sub.name),
        otel.kind = "client",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "deliver",
        messaging.destination.name = original_subject(message),
        messaging.message.id = message_id(message),
        messaging.consumer.group.name = sub.consumer_name(),
        magistral.subscription = sub.name.as_str(),
        magistral.delivery.attempt = attempt,
        magistral.delivery.class = Empty,
        http.request.method = sub.method.as_str(),
        http.request.resend_count = attempt.checked_sub(1).filter(|n| *n > 0),
        url.full = super::subscription::redacted(&sub.endpoint),
        server.address = sub.endpoint.host_str().unwrap_or_default(),
        server.port = sub.endpoint.port_or_known_default(),
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// A request ready to go: the body as sent (after any transform) and its headers.
struct Prepared {
    body: bytes::Bytes,
    headers: HeaderMap,
}

/// The transform, then the headers (the signature covers the body as sent). `Err` when the
/// attempt ends here without a request: the transform filtered the message out or failed.
fn prepare(
    sub: &Subscription,
    message: &jetstream::Message,
    fetched: &(String, u64),
    attempt: u32,
    trace: Option<&TraceHeaders>,
) -> Result<Prepared, AttemptResult> {
    let unsent = |class: Class, excerpt: String| AttemptResult {
        class,
        status: None,
        retry_after: None,
        excerpt,
        elapsed: Duration::ZERO,
    };
    // A pinned subscriber gets its version's data first; its transform then works on that.
    let payload = match &sub.pin {
        None => message.payload.clone(),
        Some(pin) => {
            let dataschema = message.headers.as_ref().and_then(|h| h.get("ce-dataschema")).map(|v| v.as_str());
            match pin.convert(dataschema, &message.payload) {
                Ok(body) => body,
                Err((class, detail)) => return Err(unsent(class, detail)),
            }
        }
    };
    let body = match &sub.transform {
        None => payload,
        Some(t) => match t.apply(&payload) {
            Ok(body) => bytes::Bytes::from(body),
            // A program that yields nothing (`select(...)`) filters the message out.
            Err(crate::transform::TransformError::Empty) => return Err(unsent(Class::Skipped, String::new())),
            Err(err) => return Err(unsent(Class::TransformFailed, err.to_string())),
        },
    };
    // Re-encoded before signing: the signature covers the bytes sent.
    let body = match sub.charset {
        None => body,
        Some(charset) => match crate::charset::encode(&body, charset) {
            Ok(encoded) => bytes::Bytes::from(encoded),
            Err(err) => return Err(unsent(Class::Unencodable, err.to_string())),
        },
    };
    let headers = request_headers(sub, message, fetched, attempt, &body, trace);
    Ok(Prepared { body, headers })
}

/// The request, with in-progress acks every third of the ack wait until it is answered.
async fn transmit(
    http: &reqwest::Client,
    sub: &Subscription,
    message: &jetstream::Message,
    request: Prepared,
    ack_wait: Duration,
) -> AttemptResult {
    let request = http
        .request(sub.method.clone(), sub.endpoint.clone())
        .headers(request.headers)
        .timeout(sub.timeout)
        .body(request.body)
        .send();
    tokio::pin!(request);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + ack_wait / 3, ack_wait / 3);
    let response = loop {
        tokio::select! {
            response = &mut request => break response,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    match response {
        Ok(response) => classify(response).await,
        Err(err) => AttemptResult {
            class: if err.is_timeout() { Class::Timeout } else { Class::Unreachable },
            status: None,
            retry_after: None,
            // reqwest quotes the URL it was given, userinfo and query included.
            excerpt: super::subscription::scrub(&error_chain(&err.without_url()), &sub.endpoint),
            elapsed: Duration::ZERO,
        },
    }
}

/// The endpoint's answer: its class, `Retry-After`, and the start of a failure's body.
async fn classify(mut response: reqwest::Response) -> AttemptResult {
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
    let mut excerpt = Vec::new();
    if !(200..300).contains(&status) {
        while excerpt.len() < EXCERPT_BYTES {
            match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
                Ok(Ok(Some(chunk))) => excerpt.extend_from_slice(&chunk),
                _ => break,
            }
        }
        excerpt.truncate(EXCERPT_BYTES);
    }
    AttemptResult {
        class: Class::of_status(status, retry_after.is_some()),
        status: Some(status),
        retry_after,
        excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
        elapsed: Duration::ZERO,
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    truncate_at_char(&mut text, EXCERPT_BYTES);
    text
}

/// `String::truncate` panics inside a multi-byte character; this cuts before it.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

/// CloudEvents HTTP binary mode: every `ce-*` NATS header as is (both bindings use the same
/// percent-encoding), `content-type`, trace context (the attempt's when traced, else the
/// stored one); then Standard Webhooks headers.
fn request_headers(
    sub: &Subscription,
    message: &jetstream::Message,
    fetched: &(String, u64),
    attempt: u32,
    body: &[u8],
    trace: Option<&TraceHeaders>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(nats) = &message.headers {
        for (name, values) in nats.iter() {
            let name: &str = name.as_ref();
            let carried = name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ce-"))
                || ["traceparent", "tracestate", "content-type"].iter().any(|c| name.eq_ignore_ascii_case(c));
            // `HeaderName::from_bytes` lower-cases.
            if carried
                && let (Ok(name), Some(value)) = (HeaderName::from_bytes(name.as_bytes()), values.first())
                && let Ok(value) = HeaderValue::from_str(value.as_str())
            {
                headers.insert(name, value);
            }
        }
    }
    headers.entry(CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
    if let Some(trace) = trace {
        traces::set_http_headers(&mut headers, trace);
    }
    if let Some(charset) = sub.charset {
        // The stored media type (its parameters dropped), saying what the body now is.
        let essence = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
        let essence = essence.split(';').next().unwrap_or("application/json").trim();
        if let Ok(v) = HeaderValue::from_str(&format!("{essence}; charset={}", charset.name().to_ascii_lowercase())) {
            headers.insert(CONTENT_TYPE, v);
        }
    }
    let id = webhook_id(message, fetched);
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("webhook-id", v);
    }
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    if !sub.signing_keys.is_empty() {
        // The signature covers the body as sent (after any transform).
        let signature = signature::sign(&sub.signing_keys, &id, timestamp, body);
        if let Ok(v) = HeaderValue::from_str(&signature) {
            headers.insert("webhook-signature", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&original_subject(message)) {
        headers.insert("magistral-subject", v);
    }
    headers.insert("magistral-attempt", HeaderValue::from(attempt));
    if let Ok(v) = HeaderValue::from_str(&sub.name) {
        headers.insert("magistral-subscription", v);
    }
    for (name, value) in &sub.headers {
        headers.insert(name.clone(), value.clone());
    }
    headers
}
