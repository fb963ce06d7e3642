//! "Where is my message?" — tracking built to cost next to nothing on the hot paths.
//!
//! Storage (one KV bucket, `magistral_track`, whose age limit follows the longest stream
//! retention):
//! - `m.<id>` → `{stream, seq}`: written at publish, after the PubAck, as a core NATS
//!   publish (no ack awaited: the index is a convenience, the message is what is durable).
//! - `c.<correlation id>.<id>`: the same, for messages with `ce-correlationid`.
//! - `d.<subscription>.<stream>.<seq>` → the delivery state, written only when something
//!   noteworthy happens (a failure, a retry, a dead letter, a success after failures).
//!
//! A message that never failed has no record: its state is derived from the consumer's own
//! counters (ack floor, last delivered) when asked. So a healthy push delivery writes
//! nothing extra. Ids and correlation ids are base64url-encoded into keys.
//!
//! [`Whereabouts`] answers the question: where a message is stored, and per subscription
//! that should receive it, how far its delivery got.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::Stream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::config::SubscriptionMode;
use crate::delivery::subscription::Subscription;
use crate::delivery::{Engine, pull};
use crate::subject;

pub const BUCKET: &str = "magistral_track";

/// What went wrong reading the tracking index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingKind {
    /// Tracking is turned off (`system.tracking = false`): nothing is indexed.
    Off,
    /// NATS refused or could not be reached; the detail says how (for logs, not answers).
    Nats,
}

pub type TrackingError = crate::error::Error<TrackingKind>;

fn nats(err: impl std::fmt::Display) -> TrackingError {
    TrackingError::new(TrackingKind::Nats, err.to_string())
}

/// The state of one message for one subscription, as recorded by the delivery worker and
/// answered by "where is my message?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Stored, not yet handed to the subscription.
    Pending,
    /// Handed out and not yet settled.
    InFlight,
    /// Failed; another attempt is due.
    Retrying,
    /// An ordered subscription's message exhausted its attempts and holds the line.
    Blocked,
    /// The endpoint answered 410 Gone and the subscription was paused.
    Paused,
    DeadLetter,
    /// Push: the endpoint took it.
    Delivered,
    /// Pull: the participant acked it.
    Acked,
    /// Pull: the participant terminated it.
    Terminated,
    /// The subscription's transform filtered it out.
    Skipped,
    /// Stream (SSE) subscriptions keep no delivery state.
    LiveOnly,
    /// The subscription's consumer does not exist (yet); also any state a newer version wrote.
    #[serde(other)]
    Unknown,
}

// --- keys: the index's formats, defined once ---

fn encode(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text.as_bytes())
}

fn subject(key: &str) -> String {
    format!("$KV.{BUCKET}.{key}")
}

/// `m.<id>`: where the message with this id is stored.
fn message_key(id: &str) -> String {
    format!("m.{}", encode(id))
}

/// `c.<correlation id>.<id>`: one message of a business transaction.
fn correlation_key(correlation_id: &str, id: &str) -> String {
    format!("c.{}.{}", encode(correlation_id), encode(id))
}

/// Every `c.` key of one correlation id.
fn correlation_keys(correlation_id: &str) -> String {
    format!("c.{}.>", encode(correlation_id))
}

/// `d.<subscription>.<stream>.<seq>`: the key of a delivery record.
#[must_use]
pub fn delivery_key(subscription: &str, stream: &str, seq: u64) -> String {
    format!("d.{subscription}.{stream}.{seq}")
}

// --- writing: fire and forget, from publish and the delivery worker ---

/// Where a message is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Location {
    pub stream: String,
    pub seq: u64,
}

/// A noteworthy delivery state of one message for one subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// `retrying`, `dead-letter`, `delivered`, `blocked`, `paused`, `skipped`.
    pub state: DeliveryState,
    pub attempts: u32,
    pub class: Option<String>,
    pub status: Option<u16>,
    pub at: String,
    /// When the next attempt is due (retrying only).
    pub next_attempt: Option<String>,
    /// How many times the message was replayed from the dead letters (none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replays: Option<u32>,
    /// When it was last replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<String>,
}

/// Creates the bucket (idempotent).
///
/// # Errors
/// NATS refused.
pub async fn ensure(js: &jetstream::Context, max_age: Duration, replicas: usize) -> Result<kv::Store, TrackingError> {
    js.create_or_update_key_value(kv::Config {
        bucket: BUCKET.to_owned(),
        description: "magistral message tracking index".to_owned(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(nats)
}

/// Indexes a stored message. Fire and forget.
///
/// An id the gateway generated (a UUIDv7, `generated`) gets no `m.` key: its time says when
/// the message was stored, and [`Whereabouts::locate`] finds it in the streams by that time.
/// That halves nats-server's work per published message (issue 16). A correlation id is
/// still indexed (`c.` keys are the only way to list a transaction).
pub async fn index(
    client: &async_nats::Client,
    id: &str,
    generated: bool,
    correlation_id: Option<&str>,
    stream: &str,
    seq: u64,
) {
    if generated && correlation_id.is_none() {
        return;
    }
    let Ok(value) = serde_json::to_vec(&Location { stream: stream.to_owned(), seq }) else { return };
    let value = bytes::Bytes::from(value);
    if !generated {
        let _ = client.publish(subject(&message_key(id)), value.clone()).await;
    }
    if let Some(corr) = correlation_id {
        let _ = client.publish(subject(&correlation_key(corr, id)), value).await;
    }
}

/// How far from a generated id's time the stored message is looked for: the id is made
/// before the publish, which may take up to the publish timeout, and the gateway's and
/// nats-server's clocks may differ a little.
pub const GENERATED_ID_WINDOW: Duration = Duration::from_secs(10);

/// The time a gateway-generated id (UUIDv7) was made, or `None` for any other id.
#[must_use]
pub fn generated_id_time(id: &str) -> Option<time::OffsetDateTime> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 7 || uuid.hyphenated().to_string() != id {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    let nanos = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// Records a delivery state. Fire and forget.
pub async fn record(client: &async_nats::Client, subscription: &str, stream: &str, seq: u64, record: &DeliveryRecord) {
    if let Ok(value) = serde_json::to_vec(record) {
        let _ = client.publish(subject(&delivery_key(subscription, stream, seq)), value.into()).await;
    }
}

// --- reading: "where is my message?" ---

/// A stored message as "where is my message?" shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrackedMessage {
    pub id: Option<String>,
    pub subject: String,
    pub stream: String,
    pub seq: u64,
    /// `ce-source`: who published it.
    pub publisher: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub time: String,
    pub correlation_id: Option<String>,
    /// Per subscription that should receive it; filled by [`Whereabouts::with_deliveries`].
    pub subscriptions: Vec<SubscriptionDelivery>,
}

/// Where a message is for one subscription.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionDelivery {
    pub name: String,
    pub participant: String,
    pub mode: SubscriptionMode,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Replays of the message from this subscription's dead letters: how many, the last when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replays: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<String>,
}

/// How far a message's delivery got; each shape carries what is known in that state.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Delivery {
    /// Nothing more to know, and why (`live-only`, `unknown`).
    Explained {
        state: DeliveryState,
        detail: &'static str,
    },
    /// Filtered out by the subscription's transform.
    Skipped {
        state: DeliveryState,
        at: String,
        detail: &'static str,
    },
    DeadLetter {
        state: DeliveryState,
        attempts: u32,
        class: Option<String>,
        status: Option<u16>,
        at: String,
    },
    /// Reached a state with no failure to report: delivered, acked, terminated, pending,
    /// in flight; attempts and time when a record says so.
    Reached {
        state: DeliveryState,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        at: Option<String>,
    },
    /// Key-ordered: not failing itself, but held behind its key's parked head message.
    Waiting {
        state: DeliveryState,
        /// The id of the key's head message that holds it.
        waiting_behind: String,
        /// `waiting behind <id>`.
        detail: String,
    },
    /// Failed, and not settled yet (`retrying`, `blocked`, `paused`).
    Failing {
        state: DeliveryState,
        attempts: u32,
        next_attempt: Option<String>,
        last_error: LastFailure,
    },
}

impl Delivery {
    fn reached(state: DeliveryState) -> Self {
        Self::Reached { state, attempts: None, at: None }
    }
}

/// The last failed attempt of a message still being retried.
#[derive(Debug, Clone, Serialize)]
pub struct LastFailure {
    pub class: Option<String>,
    pub status: Option<u16>,
    pub at: String,
}

/// A stored message found, and the stream it is in (its consumers tell the deliveries).
pub struct Stored {
    pub message: TrackedMessage,
    stream: Stream,
    /// What a key-ordered subscription reads its key from.
    raw: jetstream::message::StreamMessage,
}

/// Reads the tracking index, the streams, the pull ack ledger and the consumers.
pub struct Whereabouts<'a> {
    engine: &'a Engine,
    index: kv::Store,
}

impl<'a> Whereabouts<'a> {
    /// Opens the tracking index.
    ///
    /// # Errors
    /// `Off` when tracking is turned off; `Nats` when the index cannot be opened.
    pub async fn open(engine: &'a Engine, enabled: bool) -> Result<Self, TrackingError> {
        if !enabled {
            return Err(TrackingError::new(TrackingKind::Off, "message tracking is turned off"));
        }
        let index = engine.js.get_key_value(BUCKET).await.map_err(nats)?;
        Ok(Self { engine, index })
    }

    /// Where the first of `ids` that is indexed is stored; an id the gateway generated (not
    /// indexed, see [`index`]) is looked for in `streams` around its time.
    ///
    /// # Errors
    /// NATS refused.
    pub async fn locate(
        &self,
        ids: impl IntoIterator<Item = String>,
        streams: &[&str],
    ) -> Result<Option<Location>, TrackingError> {
        for id in ids {
            let entry = self.index.get(message_key(&id)).await.map_err(nats)?;
            if let Some(location) = entry.and_then(|v| serde_json::from_slice(&v).ok()) {
                return Ok(Some(location));
            }
            if let Some(at) = generated_id_time(&id) {
                for stream in streams {
                    if let Some(seq) = self.find_by_time(stream, &id, at).await? {
                        return Ok(Some(Location { stream: (*stream).to_owned(), seq }));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The sequence of the message with `Nats-Msg-Id` `id` stored in `stream` within
    /// [`GENERATED_ID_WINDOW`] of `at`: an ordered consumer from that time, headers only.
    async fn find_by_time(
        &self,
        stream: &str,
        id: &str,
        at: time::OffsetDateTime,
    ) -> Result<Option<u64>, TrackingError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        use futures::StreamExt;
        let Ok(stream) = self.engine.js.get_stream(stream).await else { return Ok(None) };
        let (from, until) = (at - GENERATED_ID_WINDOW, at + GENERATED_ID_WINDOW);
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartTime { start_time: from },
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let mut messages = consumer.messages().await.map_err(nats)?;
        loop {
            // Nothing at or after the start time: the server sends nothing; do not wait long.
            let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
            let Ok(Some(Ok(message))) = next else { return Ok(None) };
            let Ok(info) = message.info() else { return Ok(None) };
            if info.published > until {
                return Ok(None);
            }
            let msg_id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
            if msg_id.is_some_and(|v| v.as_str() == id) {
                return Ok(Some(info.stream_sequence));
            }
            if info.pending == 0 {
                return Ok(None);
            }
        }
    }

    /// Where the messages with a correlation id are stored (from the index's keys).
    ///
    /// # Errors
    /// NATS refused.
    pub async fn correlated(&self, correlation_id: &str, limit: usize) -> Result<Vec<Location>, TrackingError> {
        use futures::StreamExt;
        let mut keys = self.index.watch_with_history(correlation_keys(correlation_id)).await.map_err(nats)?;
        let mut out = Vec::new();
        while out.len() < limit {
            let next = tokio::time::timeout(Duration::from_millis(300), keys.next()).await;
            let Ok(Some(Ok(entry))) = next else { break };
            if let Ok(location) = serde_json::from_slice::<Location>(&entry.value) {
                out.push(location);
            }
            if entry.delta == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// The stored message, its deliveries not read yet; `None` when it is gone (retention).
    ///
    /// # Errors
    /// NATS refused.
    pub async fn stored(&self, location: &Location) -> Result<Option<Stored>, TrackingError> {
        let stream = self.engine.js.get_stream(&location.stream).await.map_err(nats)?;
        let Ok(message) = stream.get_raw_message(location.seq).await else { return Ok(None) };
        let header = |name: &str| message.headers.get(name).map(|v| decoded(v.as_str()));
        let tracked = TrackedMessage {
            id: header("ce-id").or_else(|| header("Nats-Msg-Id")),
            subject: message.subject.to_string(),
            stream: location.stream.clone(),
            seq: location.seq,
            publisher: header("ce-source"),
            kind: header("ce-type"),
            time: message.time.format(&Rfc3339).unwrap_or_default(),
            correlation_id: header("ce-correlationid"),
            subscriptions: Vec::new(),
        };
        Ok(Some(Stored { message: tracked, stream, raw: message }))
    }

    /// The stored message with where it is for each of `subscriptions` that should receive it.
    pub async fn with_deliveries(&self, subscriptions: &[Arc<Subscription>], stored: Stored) -> TrackedMessage {
        let Stored { mut message, stream, raw } = stored;
        let location = Location { stream: message.stream.clone(), seq: message.seq };
        for sub in subscriptions {
            let Some((_, filters)) = sub.spans.iter().find(|(s, _)| *s == location.stream) else { continue };
            if !filters.iter().any(|f| subject::matches(f, &message.subject)) {
                continue;
            }
            let record = self.record(sub, &location).await;
            let (replays, replayed_at) = record.as_ref().map_or((None, None), |r| (r.replays, r.replayed_at.clone()));
            message.subscriptions.push(SubscriptionDelivery {
                name: sub.name.clone(),
                participant: sub.participant.clone(),
                mode: sub.mode,
                delivery: self.delivery(&stream, sub, &location, &raw, record).await,
                replays,
                replayed_at,
            });
        }
        message
    }

    /// One subscription's view: a record of something noteworthy, the pull ack ledger, or
    /// else the consumer's counters.
    async fn delivery(
        &self,
        stream: &Stream,
        sub: &Subscription,
        location: &Location,
        raw: &jetstream::message::StreamMessage,
        record: Option<DeliveryRecord>,
    ) -> Delivery {
        if sub.mode == SubscriptionMode::Stream {
            return Delivery::Explained {
                state: DeliveryState::LiveOnly,
                detail: "stream subscriptions keep no delivery state",
            };
        }
        match &record {
            Some(r) if r.state == DeliveryState::Skipped => {
                return Delivery::Skipped {
                    state: DeliveryState::Skipped,
                    at: r.at.clone(),
                    detail: "the subscription's transform filtered it out",
                };
            }
            // Replayed and not attempted yet (the original is long below the ack floor).
            Some(r) if r.state == DeliveryState::Pending && r.replays.is_some() => {
                return Delivery::reached(DeliveryState::Pending);
            }
            Some(r) if r.state == DeliveryState::DeadLetter => {
                return Delivery::DeadLetter {
                    state: DeliveryState::DeadLetter,
                    attempts: r.attempts,
                    class: r.class.clone(),
                    status: r.status,
                    at: r.at.clone(),
                };
            }
            _ => {}
        }
        if sub.mode == SubscriptionMode::Pull
            && let Some(finished) = self.ledger_entry(sub, location).await
        {
            return finished;
        }
        let Ok(info) = stream.consumer_info(sub.consumer_name()).await else {
            return Delivery::Explained {
                state: DeliveryState::Unknown,
                detail: "the subscription's consumer does not exist (yet)",
            };
        };
        let delivered =
            if sub.mode == SubscriptionMode::Pull { DeliveryState::Acked } else { DeliveryState::Delivered };
        if location.seq <= info.ack_floor.stream_sequence {
            return Delivery::Reached {
                state: delivered,
                attempts: record.as_ref().map(|r| r.attempts),
                at: record.filter(|r| r.state == DeliveryState::Delivered).map(|r| r.at),
            };
        }
        match record {
            Some(r) if r.state == DeliveryState::Delivered => {
                Delivery::Reached { state: delivered, attempts: Some(r.attempts), at: Some(r.at) }
            }
            Some(r) => Delivery::Failing {
                state: r.state,
                attempts: r.attempts,
                next_attempt: r.next_attempt,
                last_error: LastFailure { class: r.class, status: r.status, at: r.at },
            },
            None => {
                let state = if location.seq > info.delivered.stream_sequence {
                    DeliveryState::Pending
                } else {
                    // Handed out and not yet below the ack floor: in flight, or acked while an
                    // older message is still in flight (unordered subscriptions).
                    DeliveryState::InFlight
                };
                match self.waiting_behind(sub, location, raw).await {
                    Some(head) => {
                        Delivery::Waiting { state, detail: format!("waiting behind {head}"), waiting_behind: head }
                    }
                    None => Delivery::reached(state),
                }
            }
        }
    }

    /// Key-ordered: the id of the parked head message of this message's key, if it is earlier.
    async fn waiting_behind(
        &self,
        sub: &Subscription,
        location: &Location,
        raw: &jetstream::message::StreamMessage,
    ) -> Option<String> {
        let ordering = sub.ordering.as_ref()?;
        let key = ordering.key.key_of(raw.subject.as_str(), Some(&raw.headers), &raw.payload);
        let parked = self.engine.parked_keys(sub).await;
        parked
            .into_iter()
            .find(|p| p.key == key && p.stream == location.stream && p.seq < location.seq)
            .map(|p| p.message_id)
    }

    /// The delivery record of a message, if something noteworthy happened to it.
    async fn record(&self, sub: &Subscription, location: &Location) -> Option<DeliveryRecord> {
        let entry = self.index.get(delivery_key(&sub.name, &location.stream, location.seq)).await.ok().flatten()?;
        serde_json::from_slice(&entry).ok()
    }

    /// A pull message the participant acked or terminated, from the ack ledger.
    async fn ledger_entry(&self, sub: &Subscription, location: &Location) -> Option<Delivery> {
        let ledger = self.engine.ack_ledger().await.ok()?;
        let finished = pull::finished(ledger, &sub.name, &location.stream, location.seq).await?;
        let state =
            if finished.action == pull::Action::Term { DeliveryState::Terminated } else { DeliveryState::Acked };
        Some(Delivery::Reached { state, attempts: None, at: Some(finished.at.format(&Rfc3339).unwrap_or_default()) })
    }
}

fn decoded(v: &str) -> String {
    percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_carry_their_time() {
        let before = time::OffsetDateTime::now_utc();
        let id = uuid::Uuid::now_v7().to_string();
        let at = generated_id_time(&id).unwrap();
        assert!((at - before).abs() < time::Duration::seconds(1), "{at} vs {before}");
        assert_eq!(generated_id_time("6f1c3b2e-8d4a-4c1e-9b2f-0a1b2c3d4e5f"), None);
        assert_eq!(generated_id_time(&format!("bitrix:{id}")), None);
        assert_eq!(generated_id_time(&id.to_uppercase()), None);
        assert_eq!(generated_id_time("order-1"), None);
    }

    #[test]
    fn states_are_written_as_before() {
        let names = [
            (DeliveryState::Pending, "pending"),
            (DeliveryState::InFlight, "in-flight"),
            (DeliveryState::Retrying, "retrying"),
            (DeliveryState::Blocked, "blocked"),
            (DeliveryState::Paused, "paused"),
            (DeliveryState::DeadLetter, "dead-letter"),
            (DeliveryState::Delivered, "delivered"),
            (DeliveryState::Acked, "acked"),
            (DeliveryState::Terminated, "terminated"),
            (DeliveryState::Skipped, "skipped"),
            (DeliveryState::LiveOnly, "live-only"),
            (DeliveryState::Unknown, "unknown"),
        ];
        for (state, name) in names {
            assert_eq!(serde_json::to_value(state).unwrap(), serde_json::json!(name));
            assert_eq!(serde_json::from_value::<DeliveryState>(serde_json::json!(name)).unwrap(), state);
        }
    }

    #[test]
    fn shapes_answer_the_same_members() {
        let failing = Delivery::Failing {
            state: DeliveryState::Retrying,
            attempts: 2,
            next_attempt: None,
            last_error: LastFailure { class: Some("endpoint-error".into()), status: Some(500), at: "t".into() },
        };
        assert_eq!(
            serde_json::to_value(&failing).unwrap(),
            serde_json::json!({ "state": "retrying", "attempts": 2, "next_attempt": null,
                "last_error": { "class": "endpoint-error", "status": 500, "at": "t" } })
        );
        assert_eq!(
            serde_json::to_value(Delivery::reached(DeliveryState::InFlight)).unwrap(),
            serde_json::json!({ "state": "in-flight" })
        );
    }
}
