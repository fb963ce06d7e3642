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

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub const BUCKET: &str = "magistral_track";

#[must_use]
pub fn encode(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text.as_bytes())
}

fn subject(key: &str) -> String {
    format!("$KV.{BUCKET}.{key}")
}

/// Where a message is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Location {
    pub stream: String,
    pub seq: u64,
}

/// A noteworthy delivery state of one message for one subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// `retrying`, `dead-letter`, `delivered`, `blocked`, `paused`.
    pub state: String,
    pub attempts: u32,
    pub class: Option<String>,
    pub status: Option<u16>,
    pub at: String,
    /// When the next attempt is due (retrying only).
    pub next_attempt: Option<String>,
}

/// Creates the bucket (idempotent).
///
/// # Errors
/// NATS refused.
pub async fn ensure(js: &jetstream::Context, max_age: Duration, replicas: usize) -> Result<kv::Store, String> {
    js.create_or_update_key_value(kv::Config {
        bucket: BUCKET.to_owned(),
        description: "magistral message tracking index".to_owned(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// Indexes a stored message. Fire and forget.
pub async fn index(client: &async_nats::Client, id: &str, correlation_id: Option<&str>, stream: &str, seq: u64) {
    let Ok(value) = serde_json::to_vec(&Location { stream: stream.to_owned(), seq }) else { return };
    let value = bytes::Bytes::from(value);
    let _ = client.publish(subject(&format!("m.{}", encode(id))), value.clone()).await;
    if let Some(corr) = correlation_id {
        let _ = client.publish(subject(&format!("c.{}.{}", encode(corr), encode(id))), value).await;
    }
}

/// Records a delivery state. Fire and forget.
pub async fn record(client: &async_nats::Client, subscription: &str, stream: &str, seq: u64, record: &DeliveryRecord) {
    if let Ok(value) = serde_json::to_vec(record) {
        let _ = client.publish(subject(&format!("d.{subscription}.{stream}.{seq}")), value.into()).await;
    }
}

/// The key of a delivery record.
#[must_use]
pub fn delivery_key(subscription: &str, stream: &str, seq: u64) -> String {
    format!("d.{subscription}.{stream}.{seq}")
}

/// The ids with a correlation id (from the index's keys).
///
/// # Errors
/// NATS refused.
pub async fn correlated(js: &jetstream::Context, correlation_id: &str, limit: usize) -> Result<Vec<Location>, String> {
    use futures::StreamExt;
    let store = js.get_key_value(BUCKET).await.map_err(|e| e.to_string())?;
    let mut keys =
        store.watch_with_history(format!("c.{}.>", encode(correlation_id))).await.map_err(|e| e.to_string())?;
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
