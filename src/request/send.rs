//! Sending a request for a caller: [`authorize`] checks the subject and the caller's
//! permissions, then [`send`] checks the data, sends the NATS request and checks the reply.
//!
//! A reply is passed on only as JSON: a NATS micro error (`Nats-Service-Error-Code`) becomes a
//! responder error keeping the code the service chose, and a reply breaking its contract (or
//! not JSON at all) is the responder's failure, never the requester's.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::is_json;
use crate::catalog::Catalog;
use crate::config::Limits;
use crate::contracts::{Contract, Violation};
use crate::participants::Participant;
use crate::problem::{Problem, ProblemType};
use crate::publish::cloudevents::{ClientAttributes, StoredAttributes};
use crate::subject;
use crate::telemetry::catalogue;

/// What failed in sending a request; the HTTP edge maps each onto the problem catalogue.
#[derive(Debug, Clone)]
pub enum RequestKind {
    /// The subject is not one a request may be sent to.
    InvalidSubject,
    /// The caller may not send requests to the subject (or publish where a stream stores it).
    Forbidden,
    /// Nothing answers the subject; the same call may succeed after `retry_after` seconds.
    NoResponders { retry_after: u64 },
    /// No answer within the timeout.
    Timeout,
    /// The responder answered with an error (`status` is the code it chose, or 502), or with
    /// something that is not JSON. `retry_after` when it says it is unavailable (503).
    ResponderError { status: u16, retry_after: Option<u64> },
    /// The reply breaks the contract bound to its subject.
    ReplyContract(Vec<Violation>),
    /// The request's attributes or data failed the shared checks (or name an unknown schema).
    Refused(Box<Problem>),
    /// NATS is unreachable; nothing was sent.
    Unavailable { retry_after: u64 },
}

/// Sending a request failed.
pub type RequestError = crate::error::Error<RequestKind>;

/// A subject its caller may send requests to (see [`authorize`]).
pub struct Route<'c> {
    catalog: &'c Catalog,
    caller: &'c Participant,
    subject: String,
}

/// What to send: the (JSON) payload, the caller's CloudEvents attributes and trace context.
pub struct Outgoing<'a> {
    pub payload: Bytes,
    pub attributes: &'a ClientAttributes,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// How long to wait for the answer: `limits.request_timeout` unless asked, at most
    /// `limits.max_request_timeout`.
    pub timeout: Option<Duration>,
}

/// A checked reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// JSON, honouring the reply contract if one is bound.
    pub payload: Bytes,
    /// The reply's CloudEvents attributes: `ce-*` headers, names lowercased, first values.
    pub cloudevents: Vec<(String, String)>,
}

/// `subject`, if it is a valid request subject the caller may send to.
///
/// # Errors
/// `InvalidSubject`; `Forbidden` without the request permission, or when a stream stores the
/// subject and the caller may not publish there.
pub fn authorize<'c>(
    catalog: &'c Catalog,
    caller: &'c Participant,
    subject: String,
    limits: &Limits,
) -> Result<Route<'c>, RequestError> {
    subject::validate_publish_subject(&subject, limits.max_subject_length)
        .map_err(|e| RequestError::new(RequestKind::InvalidSubject, format!("{subject:?}: {e}")))?;
    if subject.starts_with(crate::delivery::system::RESERVED_PREFIX) {
        return Err(RequestError::new(RequestKind::InvalidSubject, "subjects under `magistral.` are reserved"));
    }
    if !caller.request.allows(&subject) {
        return Err(RequestError::new(
            RequestKind::Forbidden,
            format!("participant {} may not send requests to {subject}", caller.name),
        ));
    }
    // A stream storing the subject keeps the request and fans it out like a publish.
    if let Some(stream) = catalog.stream_for(&subject)
        && !caller.publish.allows(&subject)
    {
        return Err(RequestError::new(
            RequestKind::Forbidden,
            format!(
                "{subject} is stored by stream {}; participant {} may not publish there",
                stream.name(),
                caller.name
            ),
        ));
    }
    Ok(Route { catalog, caller, subject })
}

/// Sends the request and waits for its checked reply.
///
/// # Errors
/// `Refused` by the data checks; `Unavailable`; `NoResponders`; `Timeout`; `ResponderError`;
/// `ReplyContract`.
pub async fn send(
    client: &async_nats::Client,
    limits: &Limits,
    route: &Route<'_>,
    outgoing: Outgoing<'_>,
) -> Result<Reply, RequestError> {
    let contract = check(limits, route, &outgoing)?;
    let headers = nats_headers(route, &outgoing, contract);
    let timeout = outgoing.timeout.unwrap_or(limits.request_timeout).min(limits.max_request_timeout);
    let timeout = timeout.max(Duration::from_millis(1));
    if client.connection_state() != async_nats::connection::State::Connected {
        count(route, "nats-unavailable");
        return Err(unavailable(limits, "not connected to NATS"));
    }
    let reply = exchange(client, limits, route, outgoing.payload, headers, timeout).await?;
    check_reply(limits, route, &reply)?;
    // Counted once the reply is passed on: a reply refused by the checks counts as their outcome.
    count(route, "answered");
    Ok(Reply { cloudevents: cloudevents_of(&reply), payload: reply.payload })
}

/// The shared checks of incoming data: attributes, the subject's contract (or the one
/// `dataschema` names), the data itself.
fn check<'c>(
    limits: &Limits,
    route: &Route<'c>,
    outgoing: &Outgoing<'_>,
) -> Result<Option<&'c Contract>, RequestError> {
    let attributes = outgoing.attributes;
    crate::publish::check_attributes(limits, attributes, outgoing.traceparent, outgoing.tracestate).map_err(refused)?;
    let contract = route
        .catalog
        .contracts
        .for_subject(&route.subject, attributes.dataschema.as_deref())
        .map_err(|e| refused(Problem::new(ProblemType::UnknownDataschema, e.to_string())))?;
    crate::publish::check_data(limits, contract, &outgoing.payload).map_err(refused)?;
    Ok(contract)
}

/// The request's CloudEvents headers: `ce-source` is the caller; `ce-type` the subject unless
/// the caller named one.
fn nats_headers(route: &Route<'_>, outgoing: &Outgoing<'_>, contract: Option<&Contract>) -> async_nats::HeaderMap {
    let attributes = outgoing.attributes;
    let id = attributes.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // Traced, the request carries the request span's context (the responder continues it);
    // otherwise the caller's, as it came.
    let ours = crate::telemetry::traces::propagate(&tracing::Span::current());
    let (traceparent, tracestate) = match &ours {
        Some(t) => (Some(t.traceparent.as_str()), t.tracestate.as_deref()),
        None => (outgoing.traceparent, outgoing.tracestate),
    };
    StoredAttributes {
        id: &id,
        source: &route.caller.source,
        type_: attributes.type_.as_deref().unwrap_or(&route.subject),
        subject: attributes.subject.as_deref(),
        dataschema: contract.map(|c| c.dataschema.as_str()),
        time: attributes.time.as_deref(),
        extensions: &attributes.extensions,
        traceparent,
        tracestate,
    }
    .to_nats_headers()
}

/// The NATS request itself, timed and counted; a micro error reply is classified here.
async fn exchange(
    client: &async_nats::Client,
    limits: &Limits,
    route: &Route<'_>,
    payload: Bytes,
    headers: async_nats::HeaderMap,
    timeout: Duration,
) -> Result<async_nats::Message, RequestError> {
    let started = Instant::now();
    let request = async_nats::Request::new().payload(payload).headers(headers).timeout(Some(timeout));
    let sent = client.send_request(route.subject.clone(), request).await;
    metrics::histogram!(catalogue::REQUEST_DURATION, "participant" => route.caller.name.clone())
        .record(started.elapsed().as_secs_f64());
    match sent {
        Ok(reply) => match service_error(&reply) {
            Some((code, detail)) => Err(responder_error(limits, route, &code, &detail)),
            None => Ok(reply),
        },
        Err(err) => Err(request_failed(limits, route, &err, timeout)),
    }
}

/// `(Nats-Service-Error-Code, Nats-Service-Error)` of a micro error reply.
fn service_error(reply: &async_nats::Message) -> Option<(String, String)> {
    let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    let code = header("Nats-Service-Error-Code")?;
    Some((code, header("Nats-Service-Error").unwrap_or_default()))
}

/// A micro error reply: the service's 4xx is its answer about this request; 503/504 say it is
/// unavailable; any other failure is a bad gateway (never our own 500).
fn responder_error(limits: &Limits, route: &Route<'_>, code: &str, detail: &str) -> RequestError {
    let status = code.trim().parse::<u16>().ok().filter(|c| matches!(c, 400..=499 | 503 | 504)).unwrap_or(502);
    count(route, "responder-error");
    let retry_after = (status == 503).then_some(limits.retry_after_seconds);
    RequestError::new(
        RequestKind::ResponderError { status, retry_after },
        format!("{detail} (service error code {code})"),
    )
}

/// No reply: nothing listening, no answer in time, or NATS failing (its reason is logged).
fn request_failed(
    limits: &Limits,
    route: &Route<'_>,
    err: &async_nats::RequestError,
    timeout: Duration,
) -> RequestError {
    match err.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            count(route, "no-responders");
            RequestError::new(
                RequestKind::NoResponders { retry_after: limits.retry_after_seconds },
                format!("nothing answers {}", route.subject),
            )
        }
        async_nats::RequestErrorKind::TimedOut => {
            count(route, "request-timeout");
            RequestError::new(RequestKind::Timeout, format!("no answer within {timeout:?}"))
        }
        _ => {
            count(route, "nats-unavailable");
            tracing::warn!(subject = %route.subject, %err, "request not sent");
            unavailable(limits, "the request could not be sent")
        }
    }
}

/// The bus answers JSON only: a reply in another media type (an HTML page with a script,
/// say) or not parsing as JSON is a failing responder, never served under our origin.
fn check_reply(limits: &Limits, route: &Route<'_>, reply: &async_nats::Message) -> Result<(), RequestError> {
    let content_type = reply.headers.as_ref().and_then(|h| h.get("content-type")).map(|v| v.as_str().to_owned());
    if let Some(t) = content_type
        && !is_json(&media_type_of(&t))
    {
        count(route, "responder-error");
        return Err(bad_reply(format!("the reply is {}, not JSON", media_type_of(&t))));
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&reply.payload).is_err() {
        count(route, "responder-error");
        return Err(bad_reply("the reply is not JSON".to_owned()));
    }
    honours_reply_contract(limits, route, &reply.payload)
}

fn honours_reply_contract(limits: &Limits, route: &Route<'_>, payload: &[u8]) -> Result<(), RequestError> {
    let Some(contract) = route.catalog.contracts.for_reply(&route.subject) else { return Ok(()) };
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        RequestError::new(RequestKind::ReplyContract(Vec::new()), format!("the reply is not JSON: {e}"))
    })?;
    let (violations, total) = contract.violations(&value, limits.max_violations_reported);
    if total == 0 {
        return Ok(());
    }
    count(route, "reply-contract-violation");
    Err(RequestError::new(
        RequestKind::ReplyContract(violations),
        format!("the reply breaks contract {} v{} in {total} place(s)", contract.name, contract.version),
    ))
}

/// The reply's `ce-*` headers (names lowercased, first values).
fn cloudevents_of(reply: &async_nats::Message) -> Vec<(String, String)> {
    let Some(headers) = &reply.headers else { return Vec::new() };
    headers
        .iter()
        .filter_map(|(name, values)| {
            let lower = name.to_string().to_ascii_lowercase();
            let value = values.first()?;
            lower.starts_with("ce-").then(|| (lower, value.as_str().to_owned()))
        })
        .collect()
}

fn count(route: &Route<'_>, outcome: &'static str) {
    metrics::counter!(catalogue::REQUEST_TOTAL, "participant" => route.caller.name.clone(), "outcome" => outcome)
        .increment(1);
}

/// `type/subtype` of a Content-Type value, lowercased, parameters dropped.
fn media_type_of(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn bad_reply(detail: String) -> RequestError {
    RequestError::new(RequestKind::ResponderError { status: 502, retry_after: None }, detail)
}

fn unavailable(limits: &Limits, detail: &str) -> RequestError {
    RequestError::new(RequestKind::Unavailable { retry_after: limits.retry_after_seconds }, detail)
}

fn refused(problem: Problem) -> RequestError {
    let detail = problem.detail.clone();
    RequestError::new(RequestKind::Refused(Box::new(problem)), detail)
}
