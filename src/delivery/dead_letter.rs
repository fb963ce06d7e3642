//! Dead letters and delivery status events.
//!
//! A dead letter is the original message (headers and body) republished to
//! `magistral.dlq.<subscription>` with `Magistral-*` headers saying why. Replay moves it to
//! `magistral.replay.<subscription>`, which only that subscription's consumer reads, so
//! the subject's other subscribers never see it twice. Status events go to
//! `magistral.delivery.<event>.<subscription>` as JSON, for participants to subscribe to.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use percent_encoding::{CONTROLS, utf8_percent_encode};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::attempt::{AttemptResult, message_id, original_subject};
use super::system::{DLQ_STREAM, dlq_subject, event_subject, replay_subject};
use super::{DeliveryError, nats};

pub(crate) const ORIGINAL_SUBJECT: &str = "Magistral-Original-Subject";
/// The original `Nats-Msg-Id`, kept under another name so the dead-letter stream does not
/// deduplicate on it, and replays keep their id.
pub(crate) const ORIGINAL_MSG_ID: &str = "Magistral-Original-Msg-Id";
/// How many times the message was replayed from the dead letters, and when last: carried from
/// a dead letter to its replay and back, so "where is my message?" shows the replays.
const REPLAYS: &str = "Magistral-Replays";
const REPLAYED_AT: &str = "Magistral-Replayed-At";
const ORIGINAL_STREAM: &str = "Magistral-Original-Stream";
const ORIGINAL_SEQ: &str = "Magistral-Original-Seq";

/// A replayed message's replays so far (with this one) and when it was last replayed.
#[must_use]
pub(crate) fn replays(message: &jetstream::Message) -> Option<(u32, String)> {
    let h = message.headers.as_ref()?;
    let times = h.get(REPLAYS)?.as_str().parse().ok()?;
    Some((times, h.get(REPLAYED_AT).map(|v| v.as_str().to_owned()).unwrap_or_default()))
}

/// Where a replayed message was first stored (its tracking key).
#[must_use]
pub(crate) fn original_location(message: &jetstream::Message) -> Option<(String, u64)> {
    let h = message.headers.as_ref()?;
    let stream = h.get(ORIGINAL_STREAM)?.as_str().to_owned();
    let seq = h.get(ORIGINAL_SEQ)?.as_str().parse().ok()?;
    Some((stream, seq))
}
const SUBSCRIPTION: &str = "Magistral-Subscription";
const CLASS: &str = "Magistral-Failure-Class";
const STATUS: &str = "Magistral-Last-Status";
const ATTEMPTS: &str = "Magistral-Attempts";
const FIRST_ATTEMPT: &str = "Magistral-First-Attempt";
const LAST_ATTEMPT: &str = "Magistral-Last-Attempt";
const EXCERPT: &str = "Magistral-Response-Excerpt";

/// Why a message failed, as recorded with the dead letter and in status events.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub result: AttemptResult,
    pub attempts: u32,
    pub first_attempt: OffsetDateTime,
    pub last_attempt: OffsetDateTime,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Stores the message in the dead-letter stream and waits for the PubAck.
///
/// # Errors
/// NATS did not store it; the caller must not terminate the original then.
pub(crate) async fn store(
    js: &jetstream::Context,
    subscription: &str,
    message: &jetstream::Message,
    failure: &Failure,
) -> Result<(), DeliveryError> {
    let mut headers = HeaderMap::new();
    if let Some(original) = &message.headers {
        for (name, values) in original.iter() {
            let n = name.to_string();
            // Publish preconditions (a directory's compare-and-set) belong to the original write.
            if n.to_ascii_lowercase().starts_with("nats-expected-") {
                continue;
            }
            // A dead letter must never be deduplicated away, and old reasons are replaced.
            if n.eq_ignore_ascii_case("Nats-Msg-Id") {
                for v in values {
                    headers.insert(ORIGINAL_MSG_ID, v.as_str());
                }
                continue;
            }
            if n.starts_with("Magistral-") {
                if n == ORIGINAL_SUBJECT
                    || n == ORIGINAL_STREAM
                    || n == ORIGINAL_SEQ
                    || n == ORIGINAL_MSG_ID
                    || n == REPLAYS
                    || n == REPLAYED_AT
                {
                    for v in values {
                        headers.append(n.as_str(), v.as_str());
                    }
                }
                continue;
            }
            for v in values {
                headers.append(n.as_str(), v.as_str());
            }
        }
    }
    if headers.get(ORIGINAL_SUBJECT).is_none() {
        headers.insert(ORIGINAL_SUBJECT, message.subject.as_str());
        if let Ok(info) = message.info() {
            headers.insert(ORIGINAL_STREAM, info.stream);
            headers.insert(ORIGINAL_SEQ, info.stream_sequence.to_string().as_str());
        }
    }
    headers.insert(SUBSCRIPTION, subscription);
    headers.insert(CLASS, failure.result.class.slug());
    if let Some(status) = failure.result.status {
        headers.insert(STATUS, status.to_string().as_str());
    }
    headers.insert(ATTEMPTS, failure.attempts.to_string().as_str());
    headers.insert(FIRST_ATTEMPT, rfc3339(failure.first_attempt).as_str());
    headers.insert(LAST_ATTEMPT, rfc3339(failure.last_attempt).as_str());
    headers.insert(EXCERPT, utf8_percent_encode(&failure.result.excerpt, CONTROLS).to_string().as_str());
    let ack =
        js.publish_with_headers(dlq_subject(subscription), headers, message.payload.clone()).await.map_err(nats)?;
    ack.await.map(|_| ()).map_err(nats)
}

/// A delivery status event (`magistral.delivery.<event>.<subscription>`).
#[derive(Debug, Serialize)]
pub(crate) struct StatusEvent {
    pub event: &'static str,
    pub subscription: String,
    pub message_id: String,
    pub subject: String,
    /// `ce-correlationid` of the message, when the publisher set one.
    pub correlation_id: Option<String>,
    /// `ce-source` of the message: who published it.
    pub publisher: Option<String>,
    pub class: &'static str,
    pub status: Option<u16>,
    pub attempts: u32,
    pub detail: String,
    pub at: String,
}

/// Publishes a status event. Best effort: a lost event never holds up a delivery.
pub(crate) async fn publish_event(
    js: &jetstream::Context,
    event: &'static str,
    subscription: &str,
    message: &jetstream::Message,
    failure: &Failure,
) {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| percent_encoding::percent_decode_str(v.as_str()).decode_utf8_lossy().into_owned())
    };
    let body = StatusEvent {
        event,
        subscription: subscription.to_owned(),
        message_id: message_id(message),
        subject: original_subject(message),
        correlation_id: header("ce-correlationid"),
        publisher: header("ce-source"),
        class: failure.result.class.slug(),
        status: failure.result.status,
        attempts: failure.attempts,
        detail: failure.result.excerpt.clone(),
        at: rfc3339(OffsetDateTime::now_utc()),
    };
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", uuid::Uuid::now_v7().to_string().as_str());
    headers.insert("ce-source", "/magistral");
    headers.insert("ce-type", format!("magistral.delivery.{event}").as_str());
    headers.insert("ce-time", body.at.as_str());
    headers.insert("content-type", "application/json");
    let Ok(payload) = serde_json::to_vec(&body) else { return };
    match js.publish_with_headers(event_subject(event, subscription), headers, payload.into()).await {
        Ok(ack) => {
            if let Err(err) = ack.await {
                tracing::warn!(%err, subscription, event, "status event not stored");
            }
        }
        Err(err) => tracing::warn!(%err, subscription, event, "status event not sent"),
    }
}

/// A dead letter as listed to operators.
#[derive(Debug, Serialize)]
pub(crate) struct DeadLetter {
    /// Sequence in the dead-letter stream; replay takes these or message ids.
    pub dlq_seq: u64,
    pub id: String,
    pub subject: String,
    pub class: Option<String>,
    pub status: Option<u16>,
    pub attempts: Option<u32>,
    pub first_attempt: Option<String>,
    pub last_attempt: Option<String>,
    pub response_excerpt: Option<String>,
    pub publisher: Option<String>,
    pub dead_lettered_at: String,
}

/// Lists up to `limit` dead letters of a subscription, oldest first, from `after_seq`.
///
/// # Errors
/// NATS could not be asked.
pub(crate) async fn list(
    js: &jetstream::Context,
    subscription: &str,
    after_seq: u64,
    limit: usize,
) -> Result<(Vec<DeadLetter>, u64), DeliveryError> {
    // Counted first: the listing then holds at least what the count saw.
    let total = count(js, subscription).await?;
    if total == 0 {
        return Ok((Vec::new(), 0));
    }
    let raw = read(js, subscription, after_seq, limit).await?;
    Ok((raw.iter().map(describe).collect(), total))
}

/// How many dead letters a subscription has.
///
/// # Errors
/// NATS could not be asked.
pub(crate) async fn count(js: &jetstream::Context, subscription: &str) -> Result<u64, DeliveryError> {
    let stream = js.get_stream(DLQ_STREAM).await.map_err(nats)?;
    let subject = dlq_subject(subscription);
    let mut subjects = stream.info_with_subjects(&subject).await.map_err(nats)?;
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        let (_, n) = entry.map_err(nats)?;
        total += n as u64;
    }
    Ok(total)
}

struct RawDeadLetter {
    seq: u64,
    headers: HeaderMap,
    payload: bytes::Bytes,
    at: OffsetDateTime,
}

async fn read(
    js: &jetstream::Context,
    subscription: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<RawDeadLetter>, DeliveryError> {
    let stream = js.get_stream(DLQ_STREAM).await.map_err(nats)?;
    let pending = count(js, subscription).await?;
    if pending == 0 || limit == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: dlq_subject(subscription),
            deliver_policy: if after_seq > 0 {
                DeliverPolicy::ByStartSequence { start_sequence: after_seq + 1 }
            } else {
                DeliverPolicy::All
            },
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    let mut out = Vec::new();
    while out.len() < limit {
        let next = tokio::time::timeout(std::time::Duration::from_millis(500), messages.next()).await;
        let Ok(Some(Ok(m))) = next else { break };
        let Ok(info) = m.info() else { continue };
        let (seq, at, remaining) = (info.stream_sequence, info.published, info.pending);
        out.push(RawDeadLetter { seq, headers: m.headers.clone().unwrap_or_default(), payload: m.payload.clone(), at });
        if remaining == 0 {
            break;
        }
    }
    Ok(out)
}

/// The id a dead letter is listed and replayed by: the message id, or `dlq-<seq>` for a
/// message that had none.
fn dead_letter_id(raw: &RawDeadLetter) -> String {
    raw.headers
        .get("ce-id")
        .or_else(|| raw.headers.get(ORIGINAL_MSG_ID))
        .map_or_else(|| format!("dlq-{}", raw.seq), |v| v.as_str().to_owned())
}

fn describe(raw: &RawDeadLetter) -> DeadLetter {
    let h = |name: &str| raw.headers.get(name).map(|v| v.as_str().to_owned());
    DeadLetter {
        dlq_seq: raw.seq,
        id: dead_letter_id(raw),
        subject: h(ORIGINAL_SUBJECT).unwrap_or_default(),
        class: h(CLASS),
        status: h(STATUS).and_then(|s| s.parse().ok()),
        attempts: h(ATTEMPTS).and_then(|s| s.parse().ok()),
        first_attempt: h(FIRST_ATTEMPT),
        last_attempt: h(LAST_ATTEMPT),
        response_excerpt: h(EXCERPT).map(|e| percent_encoding::percent_decode_str(&e).decode_utf8_lossy().into_owned()),
        publisher: h("ce-source").map(|e| percent_encoding::percent_decode_str(&e).decode_utf8_lossy().into_owned()),
        dead_lettered_at: rfc3339(raw.at),
    }
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    All,
    /// Message ids, or `dlq-<seq>` as listed for messages without one.
    Ids(Vec<String>),
}

/// What to do with the dead letters a [`Selection`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Deliver again: store on the subscription's replay subject, then remove; `tracking`:
    /// note the replay in the message-tracking index.
    Replay { tracking: bool },
    /// Drop for good: remove only.
    Discard,
}

/// Moves selected dead letters to the subscription's replay subject (stored first, then
/// removed from the dead-letter stream: a crash in between replays twice, never loses).
///
/// # Errors
/// NATS refused a step; what was replayed before it stays replayed.
pub(crate) async fn replay(
    js: &jetstream::Context,
    subscription: &str,
    selection: &Selection,
    max: usize,
    tracking: bool,
) -> Result<Vec<String>, DeliveryError> {
    settle(js, subscription, selection, max, Settle::Replay { tracking }).await
}

/// Removes selected dead letters for good: an operator decided they need no delivery (the
/// receiver will never accept them, or they were handled by hand).
///
/// # Errors
/// NATS refused a step; what was discarded before it stays discarded.
pub(crate) async fn discard(
    js: &jetstream::Context,
    subscription: &str,
    selection: &Selection,
    max: usize,
) -> Result<Vec<String>, DeliveryError> {
    settle(js, subscription, selection, max, Settle::Discard).await
}

/// Walks the subscription's dead letters oldest first, a page at a time (so a large backlog
/// is never held in memory at once), and settles the selected ones: up to `max`, returning
/// their ids.
async fn settle(
    js: &jetstream::Context,
    subscription: &str,
    selection: &Selection,
    max: usize,
    how: Settle,
) -> Result<Vec<String>, DeliveryError> {
    let stream = js.get_stream(DLQ_STREAM).await.map_err(nats)?;
    let mut settled = Vec::new();
    let mut after = 0;
    loop {
        let page = read(js, subscription, after, 500).await?;
        if page.is_empty() {
            break;
        }
        for raw in &page {
            after = raw.seq;
            let id = dead_letter_id(raw);
            let by_seq = format!("dlq-{}", raw.seq);
            let wanted = match selection {
                Selection::All => true,
                Selection::Ids(ids) => ids.iter().any(|x| *x == id || *x == by_seq),
            };
            if !wanted {
                continue;
            }
            if let Settle::Replay { tracking } = how {
                republish(js, subscription, raw, tracking).await?;
            }
            stream.delete_message(raw.seq).await.map_err(nats)?;
            settled.push(id);
            if settled.len() >= max {
                return Ok(settled);
            }
        }
        if page.len() < 500 {
            break;
        }
    }
    Ok(settled)
}

/// Stores a dead letter on the subscription's replay subject with the headers it was
/// published with (its failure headers dropped, where it came from kept).
async fn republish(
    js: &jetstream::Context,
    subscription: &str,
    raw: &RawDeadLetter,
    tracking: bool,
) -> Result<(), DeliveryError> {
    let mut headers = HeaderMap::new();
    for (name, values) in raw.headers.iter() {
        let n = name.to_string();
        let keep = !n.starts_with("Magistral-")
            || n == ORIGINAL_SUBJECT
            || n == ORIGINAL_STREAM
            || n == ORIGINAL_SEQ
            || n == ORIGINAL_MSG_ID;
        if keep {
            for v in values {
                headers.append(n.as_str(), v.as_str());
            }
        }
    }
    let before: u32 = raw.headers.get(REPLAYS).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
    let (replays, at) = (before.saturating_add(1), rfc3339(OffsetDateTime::now_utc()));
    headers.insert(REPLAYS, replays.to_string().as_str());
    headers.insert(REPLAYED_AT, at.as_str());
    // "Where is my message?" says `pending` (replayed) until the replay is attempted. Written
    // before the replay is stored, on the same connection as the worker's later record, so it
    // can never land after (and hide) the outcome.
    let original =
        (raw.headers.get(ORIGINAL_STREAM), raw.headers.get(ORIGINAL_SEQ).and_then(|v| v.as_str().parse().ok()));
    if tracking && let (Some(stream), Some(seq)) = original {
        let h = |name: &str| raw.headers.get(name).map(|v| v.as_str().to_owned());
        let record = crate::tracking::DeliveryRecord {
            state: crate::tracking::DeliveryState::Pending,
            attempts: h(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
            class: h(CLASS),
            status: h(STATUS).and_then(|v| v.parse().ok()),
            at: at.clone(),
            next_attempt: None,
            replays: Some(replays),
            replayed_at: Some(at.clone()),
        };
        crate::tracking::record(&js.client(), subscription, stream.as_str(), seq, &record).await;
    }
    js.publish_with_headers(replay_subject(subscription), headers, raw.payload.clone())
        .await
        .map_err(nats)?
        .await
        .map_err(nats)?;
    Ok(())
}
