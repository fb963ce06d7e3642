//! One responder on one replica: a NATS micro service (`$SRV.PING/INFO/STATS` discovery)
//! whose endpoints share the queue group `q` across replicas, forwarding each request to the
//! participant's HTTP endpoint and replying with its body — or with micro error headers
//! (`Nats-Service-Error`, `Nats-Service-Error-Code`) carrying a classified code.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap as NatsHeaders;
use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use tracing::Instrument;
use tracing::field::Empty;

use super::Responder;
use crate::delivery::outcome::Class;
use crate::delivery::signature;
use crate::telemetry::traces::{self, TARGET};

/// Serves until cancelled, re-registering after NATS outages.
pub(crate) async fn serve(
    client: async_nats::Client,
    http: reqwest::Client,
    responder: Arc<Responder>,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(responder.max_concurrency as usize));
    let mut backoff = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let service = client
            .service_builder()
            .description(format!("magistral responder {} of participant {}", responder.name, responder.participant))
            .start(format!("magistral-{}", responder.name), env!("CARGO_PKG_VERSION"))
            .await;
        let service = match service {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(responder = %responder.name, %err, "cannot register the micro service; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let mut endpoints = Vec::new();
        for (i, subject) in responder.subjects.iter().enumerate() {
            match service.endpoint_builder().name(format!("e{i}")).add(subject.clone()).await {
                Ok(e) => endpoints.push(e),
                Err(err) => tracing::warn!(responder = %responder.name, %subject, %err, "endpoint not added"),
            }
        }
        tracing::info!(responder = %responder.name, subjects = %responder.subjects.join(", "), "responder serving");
        let mut requests = futures::stream::select_all(endpoints);
        loop {
            // A permit first: requests wait in NATS, not in an unbounded queue here.
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let request = tokio::select! {
                () = cancel.cancelled() => break,
                r = requests.next() => match r { Some(r) => r, None => break },
            };
            let http = http.clone();
            let responder = responder.clone();
            tokio::spawn(async move {
                answer(&http, &responder, request).await;
                drop(permit);
            });
        }
        let _ = service.stop().await;
        if cancel.is_cancelled() {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Answers one request, in a span that continues the requester's trace (its `traceparent`
/// travels in the NATS request) and hands it on to the endpoint.
async fn answer(http: &reqwest::Client, responder: &Responder, request: service::Request) {
    let span = tracing::trace_span!(
        target: TARGET,
        "respond",
        otel.name = format!("respond {}", responder.name),
        otel.kind = "server",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "respond",
        messaging.destination.name = request.message.subject.as_str(),
        magistral.responder = responder.name.as_str(),
        http.request.method = responder.target.method.as_str(),
        url.full = crate::delivery::subscription::redacted(&responder.target.endpoint),
        server.address = responder.target.endpoint.host_str().unwrap_or_default(),
        server.port = responder.target.endpoint.port_or_known_default(),
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    let header = |name: &str| request.message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
    traces::continue_from(&span, header("traceparent"), header("tracestate"));
    forward(http, responder, request, &span).instrument(span.clone()).await;
}

async fn forward(http: &reqwest::Client, responder: &Responder, request: service::Request, span: &tracing::Span) {
    let message = &request.message;
    let body = match &responder.request_transform {
        None => message.payload.clone(),
        Some(t) => match t.apply(&message.payload) {
            Ok(b) => bytes::Bytes::from(b),
            Err(err) => {
                let error = service::error::Error { status: format!("transform-failed: request: {err}"), code: 400 };
                traces::failed(span, "transform-failed", true);
                let _ = request.respond(Err(error)).await;
                return;
            }
        },
    };
    let mut headers = forward_headers(responder, message, &body);
    if let Some(trace) = traces::propagate(span) {
        traces::set_http_headers(&mut headers, &trace);
    }
    let timeout = responder.timeout;
    let sent = http
        .request(responder.target.method.clone(), responder.target.endpoint.clone())
        .headers(headers)
        .timeout(timeout)
        .body(body)
        .send()
        .await;
    let (result, reply_headers) = match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            span.record("http.response.status_code", status);
            let content_type =
                response.headers().get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = read_limited(response, responder.max_reply_bytes).await;
            let mut reply = NatsHeaders::new();
            reply.insert("content-type", "application/json");
            let bad = |detail: String| {
                (
                    Err(service::error::Error { status: format!("responder-error: {detail}"), code: 502 }),
                    NatsHeaders::new(),
                )
            };
            match body {
                Err(ReadFailure::TooLarge) => {
                    bad(format!("reply too large (over {} bytes)", responder.max_reply_bytes))
                }
                Err(ReadFailure::Broken) => bad("the reply body could not be read".to_owned()),
                Ok(body) if (200..300).contains(&status) => match json_reply(content_type.as_deref(), &body) {
                    Err(why) => bad(why.to_string()),
                    Ok(()) => match &responder.reply_transform {
                        None => (Ok(body), reply),
                        Some(t) => match t.apply(&body) {
                            Ok(b) => (Ok(bytes::Bytes::from(b)), reply),
                            Err(err) => (
                                Err(service::error::Error {
                                    status: format!("transform-failed: reply: {err}"),
                                    code: 502,
                                }),
                                reply,
                            ),
                        },
                    },
                },
                Ok(body) => {
                    let class = Class::of_status(status, false);
                    // A 4xx body is the endpoint's answer about the request and helps the requester;
                    // a 5xx body may be a stack trace: logged here, not passed on.
                    let excerpt = if (400..500).contains(&status) {
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                            .chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .collect::<String>()
                    } else {
                        tracing::warn!(responder = %responder.name, status, body = %String::from_utf8_lossy(&body[..body.len().min(500)]), "responder endpoint failed");
                        String::new()
                    };
                    // A 4xx is the endpoint's answer about this request and travels as is; a
                    // failing endpoint (5xx, anything else) is a bad gateway to the requester.
                    let code = if (400..500).contains(&status) { status as usize } else { 502 };
                    (
                        Err(service::error::Error {
                            status: format!("{}: HTTP {status} {excerpt}", class.slug()),
                            code,
                        }),
                        reply,
                    )
                }
            }
        }
        Err(err) => {
            let (class, code) = if err.is_timeout() { (Class::Timeout, 504) } else { (Class::Unreachable, 503) };
            (
                Err(service::error::Error {
                    status: format!("{}: the responder endpoint did not answer", class.slug()),
                    code,
                }),
                NatsHeaders::new(),
            )
        }
    };
    if let Err(error) = &result {
        // The class leads the micro error's text ("endpoint-error: HTTP 500 ...").
        traces::failed(span, error.status.split(':').next().unwrap_or_default(), true);
    }
    metrics::counter!(
        crate::telemetry::catalogue::RESPONDER_REQUESTS_TOTAL,
        "responder" => responder.name.clone(),
        "outcome" => if result.is_ok() { "answered" } else { "error" }
    )
    .increment(1);
    if let Err(err) = request.respond_with_headers(result, reply_headers).await {
        tracing::debug!(responder = %responder.name, %err, "reply not sent (requester gone?)");
    }
}

enum ReadFailure {
    TooLarge,
    Broken,
}

/// The body, refused as soon as it grows past `max` bytes (a declared `Content-Length`
/// over it is refused before reading anything).
async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<bytes::Bytes, ReadFailure> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadFailure::TooLarge);
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(ReadFailure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(ReadFailure::Broken),
        }
    }
}

/// Why an endpoint's reply is not passed on.
#[derive(Debug)]
enum NotJson {
    /// Another media type (its lowercased essence).
    MediaType(String),
    /// A JSON media type (or none) but a body that does not parse.
    Unparsable,
}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MediaType(essence) => write!(f, "the responder answered {essence:?}, not JSON"),
            Self::Unparsable => f.write_str("the responder's reply is not JSON"),
        }
    }
}

/// Only JSON is passed on: a JSON media type (`application/json`, `+json`), or no
/// Content-Type at all with a body that parses as JSON.
fn json_reply(content_type: Option<&str>, body: &[u8]) -> Result<(), NotJson> {
    if let Some(ct) = content_type {
        let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !super::is_json(&essence) {
            return Err(NotJson::MediaType(essence));
        }
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| ()).map_err(|_| NotJson::Unparsable)
}

/// Same conventions as push delivery: `ce-*`, trace context, Standard Webhooks headers.
fn forward_headers(responder: &Responder, message: &async_nats::Message, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut id = None;
    if let Some(nats) = &message.headers {
        for (name, values) in nats.iter() {
            let lower = name.to_string().to_ascii_lowercase();
            let forwarded =
                lower.starts_with("ce-") || lower == "traceparent" || lower == "tracestate" || lower == "content-type";
            if forwarded
                && let (Ok(n), Some(v)) = (HeaderName::from_bytes(lower.as_bytes()), values.first())
                && let Ok(v) = HeaderValue::from_str(v.as_str())
            {
                if lower == "ce-id" {
                    id = Some(v.to_str().unwrap_or_default().to_owned());
                }
                headers.insert(n, v);
            }
        }
    }
    headers.entry(CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("webhook-id", v);
    }
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    if !responder.target.signing_keys.is_empty()
        && let Ok(v) = HeaderValue::from_str(&signature::sign(&responder.target.signing_keys, &id, timestamp, body))
    {
        headers.insert("webhook-signature", v);
    }
    if let Ok(v) = HeaderValue::from_str(message.subject.as_str()) {
        headers.insert("magistral-subject", v);
    }
    for (name, value) in &responder.target.headers {
        headers.insert(name.clone(), value.clone());
    }
    headers
}
