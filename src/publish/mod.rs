//! The publish path: subject check → permission → stream → contract → JetStream publish →
//! PubAck. Nothing is answered 2xx until JetStream has stored the message.
//!
//! HTTP concerns (reading the body, content types, status codes) live in
//! the `http` module (`http/publish.rs`); this module is what a message goes through once it is bytes.

pub mod batch;
pub mod cloudevents;
pub mod json;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::catalog::Catalog;
use crate::config::Limits;
use crate::participants::Participant;
use crate::problem::{Problem, ProblemType};
use crate::subject;
use crate::telemetry::catalogue;
use cloudevents::{ClientAttributes, StoredAttributes};
pub use json::{check_strict, check_utf8, exceeds_depth, parse_strict};

/// One message as a participant handed it in, before any check.
#[derive(Debug)]
pub struct Draft {
    pub subject: String,
    /// The data exactly as received; this is what is stored.
    pub data: Bytes,
    /// Whether `data` already passed [`check_strict`] (as part of an envelope or batch item),
    /// so that, without a contract, it need not be read again.
    pub data_well_formed: bool,
    pub attributes: ClientAttributes,
    /// `Idempotency-Key`; it wins over a client `ce-id` as the message id.
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// A checked message, ready for JetStream.
#[derive(Debug)]
pub struct Outgoing {
    pub subject: String,
    /// Publisher's name, for metrics.
    pub participant: String,
    pub stream: String,
    /// The id the publisher knows the message by (`ce-id`, and `id` in the answer).
    pub id: String,
    /// `Nats-Msg-Id`: JetStream de-duplicates on it, so a key the publisher chose is scoped
    /// to the publisher ([`scoped_message_id`]); an id the gateway generated is unique as is.
    pub msg_id: String,
    /// `ce-correlationid`, for the tracking index.
    pub correlation_id: Option<String>,
    headers: async_nats::HeaderMap,
    payload: Bytes,
}

/// What JetStream confirmed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub stream: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// Pause between publish retries while a stream has no leader.
const NO_RESPONDERS_RETRY: Duration = Duration::from_millis(250);

/// Longest message id accepted (it becomes `Nats-Msg-Id` and `ce-id`).
const MAX_ID_LEN: usize = 256;

/// Runs every check on a draft and builds its NATS headers.
///
/// # Errors
/// The first check the draft fails, as a classified problem.
pub fn prepare(
    catalog: &Catalog,
    limits: &Limits,
    participant: &Participant,
    draft: Draft,
) -> Result<Outgoing, Problem> {
    let Draft { subject, data, data_well_formed, attributes, idempotency_key, traceparent, tracestate } = draft;

    subject::validate_publish_subject(&subject, limits.max_subject_length)
        .map_err(|e| Problem::new(ProblemType::InvalidSubject, format!("{subject:?}: {e}")))?;
    if subject.starts_with(crate::delivery::system::RESERVED_PREFIX) {
        return Err(Problem::new(
            ProblemType::InvalidSubject,
            format!("{subject:?}: subjects under `magistral.` are reserved for the gateway"),
        ));
    }
    if !participant.publish.allows(&subject) {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!("participant {} may not publish to {subject}", participant.name),
        ));
    }
    let stream = catalog
        .stream_for(&subject)
        .ok_or_else(|| Problem::new(ProblemType::NoStream, format!("no stream stores {subject}")))?
        .name()
        .to_owned();

    let given = match (idempotency_key, attributes.id.clone()) {
        (Some(key), _) => Some(("Idempotency-Key (or batch item id)", key)),
        (None, Some(id)) => Some(("CloudEvents id", id)),
        (None, None) => None,
    };
    let (id, msg_id) = match given {
        Some((source, id)) => {
            if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Problem::new(
                    ProblemType::InvalidId,
                    format!("{source}: a message id is 1-{MAX_ID_LEN} printable ASCII characters without spaces"),
                ));
            }
            let msg_id = scoped_message_id(&participant.name, &id);
            (id, msg_id)
        }
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            (id.clone(), id)
        }
    };
    check_attributes(limits, &attributes, traceparent.as_deref(), tracestate.as_deref())?;

    let contract = catalog
        .contracts
        .for_subject(&subject, attributes.dataschema.as_deref())
        .map_err(|e| Problem::new(ProblemType::UnknownDataschema, e.to_string()))?;
    match contract {
        Some(contract) => {
            let value = parse_strict(&data, limits.max_json_depth)?;
            honour(contract, &value, limits.max_violations_reported)?;
        }
        None if catalog.require_contract => {
            return Err(Problem::new(ProblemType::ContractRequired, format!("no contract is bound to {subject}")));
        }
        None if !data_well_formed => check_strict(&data, limits.max_json_depth)?,
        None => {}
    }

    let type_ = attributes.type_.as_deref().unwrap_or(&subject);
    // Traced, the message carries the publish span's context (its deliveries join the trace);
    // otherwise the caller's, as it came.
    let ours = crate::telemetry::traces::propagate(&tracing::Span::current());
    let (traceparent, tracestate) = match &ours {
        Some(t) => (Some(t.traceparent.as_str()), t.tracestate.as_deref()),
        None => (traceparent.as_deref(), tracestate.as_deref()),
    };
    let headers = StoredAttributes {
        id: &id,
        source: &participant.source,
        type_,
        subject: attributes.subject.as_deref(),
        dataschema: contract.map(|c| c.dataschema.as_str()),
        time: attributes.time.as_deref(),
        extensions: &attributes.extensions,
        traceparent,
        tracestate,
    }
    .to_nats_headers();
    let correlation_id = attributes.extensions.get("correlationid").cloned();
    Ok(Outgoing {
        subject,
        participant: participant.name.clone(),
        stream,
        id,
        msg_id,
        correlation_id,
        headers,
        payload: data,
    })
}

/// The `Nats-Msg-Id` of a message whose id its publisher chose: `<participant>:<id>`. Two
/// participants using the same key publish two messages; one participant's retry is still a
/// duplicate. Participant names hold no `:` and generated ids (UUIDs) none either, so no scoped
/// id can equal another publisher's or a generated one.
#[must_use]
pub fn scoped_message_id(participant: &str, id: &str) -> String {
    format!("{participant}:{id}")
}

/// Longest value of one CloudEvents attribute; a header is not a place for documents.
const MAX_ATTRIBUTE_BYTES: usize = 4096;

/// Attributes become HTTP headers and SSE fields at every receiver: no control characters,
/// bounded count and size; W3C trace context in its own syntax.
pub fn check_attributes(
    limits: &Limits,
    attributes: &ClientAttributes,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Result<(), Problem> {
    // id, type, time, subject, dataschema, plus the extensions.
    let count = 5 + attributes.extensions.len();
    if count > limits.max_event_attributes {
        return Err(Problem::new(
            ProblemType::InvalidCloudEvent,
            format!(
                "{} extension attributes; at most {} attributes in all are accepted",
                attributes.extensions.len(),
                limits.max_event_attributes
            ),
        ));
    }
    let named = [
        ("type", &attributes.type_),
        ("subject", &attributes.subject),
        ("dataschema", &attributes.dataschema),
        ("time", &attributes.time),
    ];
    let values = named
        .iter()
        .filter_map(|(n, v)| v.as_deref().map(|v| (*n, v)))
        .chain(attributes.extensions.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    for (name, value) in values {
        if value.chars().any(char::is_control) {
            return Err(Problem::new(
                ProblemType::InvalidCloudEvent,
                format!("attribute {name} holds a control character"),
            ));
        }
        if value.len() > MAX_ATTRIBUTE_BYTES {
            return Err(Problem::new(
                ProblemType::InvalidCloudEvent,
                format!("attribute {name} is longer than {MAX_ATTRIBUTE_BYTES} bytes"),
            ));
        }
    }
    if let Some(t) = traceparent {
        cloudevents::check_traceparent(t)?;
    }
    if let Some(t) = tracestate {
        cloudevents::check_tracestate(t)?;
    }
    Ok(())
}

/// The one check of JSON data coming in on any path (publish, request, directory write,
/// inbound route): UTF-8, depth, I-JSON (no repeated member), and the contract when one is
/// bound.
///
/// # Errors
/// `invalid-utf8`, `json-too-deep`, `malformed-json`, `duplicate-key`, `contract-violation`.
pub fn check_data(limits: &Limits, contract: Option<&crate::contracts::Contract>, data: &[u8]) -> Result<(), Problem> {
    check_utf8(data)?;
    match contract {
        Some(contract) => honour(contract, &parse_strict(data, limits.max_json_depth)?, limits.max_violations_reported),
        None => check_strict(data, limits.max_json_depth),
    }
}

/// Checks data against a contract: `contract-violation` with the first `max_reported` failing
/// pointers and the total, so the answer stays small whatever the data.
///
/// # Errors
/// The data breaks the contract.
pub fn honour(
    contract: &crate::contracts::Contract,
    value: &serde_json::Value,
    max_reported: usize,
) -> Result<(), Problem> {
    let (violations, total) = contract.violations(value, max_reported);
    if total == 0 {
        return Ok(());
    }
    let listed =
        if total > violations.len() { format!(" (the first {} are listed)", violations.len()) } else { String::new() };
    Err(Problem::new(
        ProblemType::ContractViolation,
        format!("{total} violation(s) of contract {} v{}{listed}", contract.name, contract.version),
    )
    .with_errors(violations))
}

/// serde_json's error for a body that is not well-formed JSON.
pub fn malformed(err: serde_json::Error) -> Problem {
    Problem::new(ProblemType::MalformedJson, err.to_string())
}

/// Sends checked messages to JetStream and waits for their PubAcks, within bounds.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Bounds publishes awaiting a PubAck; past it requests get 503 instead of queueing.
    in_flight: Arc<Semaphore>,
    publish_timeout: Duration,
    retry_after: u64,
    /// Index stored messages for `GET /v1/messages/...`.
    pub tracking: bool,
}

impl Publisher {
    #[must_use]
    pub fn new(client: async_nats::Client, limits: &Limits) -> Self {
        let js = jetstream::context::ContextBuilder::new().timeout(limits.publish_timeout).build(client.clone());
        Self {
            client,
            js,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight_publishes)),
            publish_timeout: limits.publish_timeout,
            retry_after: limits.retry_after_seconds,
            tracking: false,
        }
    }

    #[must_use]
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes one message and waits for JetStream to store it.
    ///
    /// # Errors
    /// `nats-unavailable`, `publish-timeout`, `overloaded`, `payload-too-large`, `no-stream`.
    pub async fn publish(&self, message: Outgoing) -> Result<Stored, Problem> {
        let _permit = self.in_flight.clone().try_acquire_owned().map_err(|_| self.overloaded())?;
        let started = Instant::now();
        let in_flight = catalogue::publish_in_flight();
        in_flight.increment(1.0);
        // "No responders" for a declared stream is a leader election (seconds): retry within
        // the publish timeout, with the same message id, so JetStream's de-duplication makes
        // the retries safe and the participant sees a slower 2xx instead of a 503.
        let deadline = started + self.publish_timeout;
        let result = loop {
            let attempt = match self.send(&message).await {
                Ok((id, ack)) => self.await_ack(id, ack).await,
                Err(problem) => Err(problem),
            };
            match attempt {
                Err(p) if p.no_responders && Instant::now() + NO_RESPONDERS_RETRY < deadline => {
                    tokio::time::sleep(NO_RESPONDERS_RETRY).await;
                }
                other => break other,
            }
        };
        in_flight.decrement(1.0);
        record(&message.stream, &message.participant, started, result.as_ref().map(|s| s.duplicate));
        if let (true, Ok(stored)) = (self.tracking, &result) {
            let generated = message.msg_id == stored.id;
            crate::tracking::index(
                &self.client,
                &message.msg_id,
                generated,
                message.correlation_id.as_deref(),
                &stored.stream,
                stored.seq,
            )
            .await;
        }
        result.map_err(|mut p| {
            p.counted = true;
            p
        })
    }

    /// Publishes a checked batch pipelined: every message is sent before any PubAck is
    /// awaited. Results are in input order.
    ///
    /// # Errors
    /// `overloaded` when the batch does not fit the in-flight bound; per-item problems
    /// are in the result list.
    pub async fn publish_batch(&self, messages: Vec<Outgoing>) -> Result<Vec<Result<Stored, Problem>>, Problem> {
        let n = u32::try_from(messages.len()).unwrap_or(u32::MAX);
        let _permits = self.in_flight.clone().try_acquire_many_owned(n).map_err(|_| self.overloaded())?;
        let started = Instant::now();
        let in_flight = catalogue::publish_in_flight();
        in_flight.increment(f64::from(n));
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let sent = self.send(&message).await;
            pending.push((message, sent));
        }
        let acks = pending.into_iter().map(|(message, sent)| async move {
            let result = match sent {
                Ok((id, ack)) => self.await_ack(id, ack).await,
                Err(problem) => Err(problem),
            };
            record(&message.stream, &message.participant, started, result.as_ref().map(|s| s.duplicate));
            if let (true, Ok(stored)) = (self.tracking, &result) {
                let generated = message.msg_id == stored.id;
                let corr = message.correlation_id.as_deref();
                crate::tracking::index(&self.client, &message.msg_id, generated, corr, &stored.stream, stored.seq)
                    .await;
            }
            result
        });
        let results = futures::future::join_all(acks).await;
        in_flight.decrement(f64::from(n));
        Ok(results)
    }

    /// Sends one message (a retry sends the same again: headers are small, the payload is
    /// shared).
    async fn send(&self, message: &Outgoing) -> Result<(String, jetstream::context::PublishAckFuture), Problem> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(self.unavailable("not connected to NATS"));
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .headers(message.headers.clone())
            .message_id(message.msg_id.as_str());
        match self.js.send_publish(message.subject.clone(), publish).await {
            Ok(ack) => Ok((message.id.clone(), ack)),
            Err(err) => Err(self.map_error(err.kind())),
        }
    }

    async fn await_ack(&self, id: String, ack: jetstream::context::PublishAckFuture) -> Result<Stored, Problem> {
        // The context timeout already bounds the ack; this outer bound is a safety net.
        match tokio::time::timeout(self.publish_timeout + Duration::from_millis(500), ack.into_future()).await {
            Ok(Ok(ack)) => Ok(Stored { id, stream: ack.stream, seq: ack.sequence, duplicate: ack.duplicate }),
            Ok(Err(err)) => Err(self.map_error(err.kind())),
            Err(_) => Err(self.map_error(PublishErrorKind::TimedOut)),
        }
    }

    /// The one place async-nats publish errors become our classes.
    fn map_error(&self, kind: PublishErrorKind) -> Problem {
        match kind {
            PublishErrorKind::TimedOut => Problem::new(
                ProblemType::PublishTimeout,
                "JetStream did not confirm in time; the message may or may not be stored: retry with the same Idempotency-Key",
            ),
            // The subject is bound to a declared stream (checked before publishing), so "no
            // responders" at PubAck time means the stream is unreachable right now (a node or
            // leader change in a cluster) or was deleted by hand: retryable either way.
            PublishErrorKind::StreamNotFound => {
                let mut p = self.unavailable(
                    "JetStream did not answer for this subject's stream (leader change, or the stream is missing: see `magistral apply`)",
                );
                p.no_responders = true;
                p
            }
            PublishErrorKind::MaxPayloadExceeded => {
                Problem::new(ProblemType::PayloadTooLarge, "the message exceeds the NATS server's max_payload")
            }
            PublishErrorKind::MaxAckPending => self.overloaded(),
            PublishErrorKind::BrokenPipe => self.unavailable("the NATS connection broke"),
            _ => self.unavailable("JetStream refused or could not store the message"),
        }
    }

    fn unavailable(&self, detail: &str) -> Problem {
        Problem::new(ProblemType::NatsUnavailable, detail).retry_after(self.retry_after)
    }

    fn overloaded(&self) -> Problem {
        Problem::new(ProblemType::Overloaded, "too many publishes are awaiting storage").retry_after(1)
    }
}

fn record(stream: &str, participant: &str, started: Instant, outcome: Result<bool, &Problem>) {
    let series = catalogue::publish_series(stream, participant);
    series.duration.record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(false) => series.stored.increment(1),
        Ok(true) => series.duplicate.increment(1),
        Err(p) => {
            log_failure(stream, participant, p);
            metrics::counter!(
                catalogue::PUBLISH_TOTAL,
                "stream" => stream.to_owned(),
                "participant" => participant.to_owned(),
                "outcome" => p.kind.slug()
            )
            .increment(1);
        }
    }
}

/// A publish that passed every check but was not stored: the participant got a 5xx. Logged
/// at WARN, a few per participant and class every 10 s (an outage fails every publish).
fn log_failure(stream: &str, participant: &str, problem: &Problem) {
    static THROTTLE: crate::telemetry::LogThrottle = crate::telemetry::LogThrottle::new(Duration::from_secs(10), 5);
    if let Some(left_out) = THROTTLE.admit(&format!("{participant}\0{}", problem.kind.slug())) {
        tracing::warn!(
            stream,
            participant,
            problem = problem.kind.slug(),
            detail = %problem.detail,
            left_out,
            "publish failed"
        );
    }
}
