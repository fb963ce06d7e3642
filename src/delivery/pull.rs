//! HTTP pull: participants behind firewalls fetch from their subscription's durable consumer
//! and ack with tokens the gateway signed. A token names the subscription and the message's
//! ack subject; it cannot be forged, moved to another subscription, or used twice.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;

use super::pull_order::KeyOrder;
use super::subscription::Subscription;
use super::{DeliveryError, DeliveryKind, nats, system};

/// The longest a "what is there now" pull may take.
const NO_WAIT_BOUND: Duration = Duration::from_millis(500);

/// KV bucket remembering finished tokens, so an acked message cannot be acked again.
pub const ACK_LEDGER: &str = "magistral_acks";
/// Key in the status bucket holding the token signing key shared by all replicas.
const TOKEN_KEY: &str = "_ack_token_key";

/// What a token carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AckToken {
    /// Subscription name.
    pub s: String,
    /// The message's JetStream ack subject.
    pub r: String,
    /// Stream and sequence, for the ledger and for errors.
    pub st: String,
    pub q: u64,
    /// Delivery count when fetched.
    pub d: i64,
}

impl AckToken {
    fn ledger_key(&self) -> String {
        ledger_key(&self.s, &self.st, self.q)
    }
}

/// `<subscription>.<stream>.<seq>`: the ack ledger's key of one message.
fn ledger_key(subscription: &str, stream: &str, seq: u64) -> String {
    format!("{subscription}.{stream}.{seq}")
}

/// A pull message the participant finished (acked or terminated), from the ack ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// [`Action::Ack`] or [`Action::Term`].
    pub action: Action,
    pub at: time::OffsetDateTime,
}

/// Whether the participant finished a message; `None` when not, or when the ledger cannot
/// be read (the consumer's counters answer then).
pub async fn finished(ledger: &kv::Store, subscription: &str, stream: &str, seq: u64) -> Option<Finished> {
    let entry = ledger.entry(ledger_key(subscription, stream, seq)).await.ok()??;
    let term = entry.value.as_ref() == action_name(Action::Term).as_bytes();
    Some(Finished { action: if term { Action::Term } else { Action::Ack }, at: entry.created })
}

/// Signs and checks tokens with one key shared by every replica (kept in NATS).
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// Reads the shared key, creating it if this is the first replica ever.
    ///
    /// # Errors
    /// NATS refused.
    pub async fn load(status: &kv::Store) -> Result<Self, DeliveryError> {
        for _ in 0..3 {
            if let Some(bytes) = status.get(TOKEN_KEY).await.map_err(nats)? {
                let key: [u8; 32] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| DeliveryError::new(DeliveryKind::TokenKey, "the stored token key is malformed"))?;
                return Ok(Self(key));
            }
            let fresh: [u8; 32] = rand::random();
            // `create` fails if another replica won the race; then read theirs.
            if status.create(TOKEN_KEY, fresh.to_vec().into()).await.is_ok() {
                return Ok(Self(fresh));
            }
        }
        Err(DeliveryError::new(DeliveryKind::TokenKey, "could not settle the ack token key"))
    }

    /// A key from its bytes (tests and fuzzing; the gateway uses [`TokenKey::load`]).
    #[must_use]
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }

    #[must_use]
    pub fn sign(&self, token: &AckToken) -> String {
        let payload = serde_json::to_vec(token).unwrap_or_default();
        format!("v1.{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(self.mac(&payload)))
    }

    /// # Errors
    /// The token is malformed, or its signature does not match (forged or altered).
    pub fn verify(&self, text: &str) -> Result<AckToken, &'static str> {
        let mut parts = text.split('.');
        let (Some("v1"), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not an ack token");
        };
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| "not an ack token")?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "not an ack token")?;
        if !bool::from(self.mac(&payload).ct_eq(&signature)) {
            return Err("the token's signature does not match: forged or altered");
        }
        serde_json::from_slice(&payload).map_err(|_| "not an ack token")
    }
}

/// The prefix of a spreadsheet export's confirmation token; its MAC covers a different
/// message than an ack token's, so neither can pass for the other.
const EXPORT_TOKEN: &str = "x1";

impl TokenKey {
    /// Signs the confirmation of a spreadsheet export: `x1.<subscription>.<export id>.<mac>`.
    #[must_use]
    pub fn sign_export(&self, subscription: &str, export: &str) -> String {
        let mac = self.mac(format!("export\0{subscription}\0{export}").as_bytes());
        format!("{EXPORT_TOKEN}.{subscription}.{export}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// `(subscription, export id)` of a confirmation token this key signed.
    ///
    /// # Errors
    /// Malformed, forged or altered.
    pub fn verify_export(&self, text: &str) -> Result<(String, String), &'static str> {
        let mut parts = text.split('.');
        let (Some(EXPORT_TOKEN), Some(sub), Some(export), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not an export confirmation token");
        };
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| "not an export confirmation token")?;
        let want = self.mac(format!("export\0{sub}\0{export}").as_bytes());
        if !bool::from(want.ct_eq(&mac)) {
            return Err("the token's signature does not match: forged or altered");
        }
        Ok((sub.to_owned(), export.to_owned()))
    }
}

/// The ack ledger's key of an export's tokens: `<subscription>.export.x<id>` (a stream's
/// sequence is all digits, so no message's key can be one).
#[must_use]
pub fn export_key(subscription: &str, export: &str) -> String {
    format!("{subscription}.export.x{export}")
}

/// Fetches up to `max` messages, waiting up to `wait` for the first one and returning as
/// soon as one arrives (then taking whatever else is already there). A key-ordered
/// subscription (`order`) hands out at most one unacknowledged message per key
/// ([`super::pull_order`]).
///
/// # Errors
/// NATS refused or is unreachable.
pub async fn fetch(
    js: &jetstream::Context,
    key: &TokenKey,
    sub: &Subscription,
    order: Option<KeyOrder<'_>>,
    max: usize,
    wait: Duration,
) -> Result<Vec<Value>, DeliveryError> {
    let mut consumers = Vec::new();
    // Replays first (rare, and an operator is waiting for them), then the subscription's stream.
    let mut streams = vec![system::REPLAY_STREAM.to_owned()];
    if order.is_none() {
        streams.extend(sub.spans.iter().map(|(s, _)| s.clone()));
    }
    for stream in streams {
        let stream = js.get_stream(&stream).await.map_err(nats)?;
        let consumer: jetstream::consumer::Consumer<pull::Config> =
            stream.get_consumer(&sub.consumer_name()).await.map_err(nats)?;
        consumers.push(consumer);
    }
    let mut out = Vec::new();
    // What is there now, without waiting.
    for consumer in &consumers {
        if out.len() >= max {
            break;
        }
        // The info `get_consumer` just fetched: a consumer with nothing stored and nothing
        // awaiting redelivery (the replay stream, nearly always) would make a bounded no-wait
        // pull sit out its whole bound; at its ack-pending limit it would too.
        let info = consumer.cached_info();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            continue;
        }
        let room =
            usize::try_from(info.config.max_ack_pending).unwrap_or(usize::MAX).saturating_sub(info.num_ack_pending);
        if room == 0 {
            continue;
        }
        for m in take_now(consumer, (max - out.len()).min(room)).await? {
            out.push(describe(key, sub, &m));
        }
    }
    if let Some(order) = order {
        // Replays are an operator's, outside key order; the stream's messages in key order.
        if out.len() < max {
            let wait = if out.is_empty() { wait } else { Duration::ZERO };
            out.extend(super::pull_order::fetch(js, key, sub, order, max - out.len(), wait).await?);
        }
        return Ok(out);
    }
    if out.is_empty() && !wait.is_zero() {
        // Long poll for one message on the main stream; a batch of one ends the moment it
        // arrives, so no pull request is left dangling.
        let main = consumers.last().ok_or_else(|| DeliveryError::new(DeliveryKind::NoConsumer, "no consumer"))?;
        let mut batch = main.batch().max_messages(1).expires(wait).messages().await.map_err(nats)?;
        while let Some(Ok(m)) = batch.next().await {
            out.push(describe(key, sub, &m));
        }
        if !out.is_empty() && max > 1 {
            for m in take_now(main, max - 1).await? {
                out.push(describe(key, sub, &m));
            }
        }
    }
    Ok(out)
}

/// Up to `max` messages the consumer has now, without waiting for more.
///
/// # Errors
/// NATS refused or is unreachable.
pub(crate) async fn take_now(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    max: usize,
) -> Result<Vec<jetstream::Message>, DeliveryError> {
    // Bounded: a no-wait pull can otherwise sit on the server while the consumer is at its
    // ack-pending limit.
    let mut batch = consumer.fetch().max_messages(max).expires(NO_WAIT_BOUND).messages().await.map_err(nats)?;
    let mut out = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m);
    }
    Ok(out)
}

/// What a fetched message is made of: taken from the consumer, or read from the stream by
/// sequence (a key-ordered head whose turn came after it was taken).
pub(crate) struct Parts {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
    reply: String,
    stream: String,
    seq: u64,
    delivered: i64,
    published: Option<time::OffsetDateTime>,
    id: String,
}

impl Parts {
    pub(crate) fn of(m: &jetstream::Message) -> Self {
        let info = m.info().ok();
        Self {
            subject: super::attempt::original_subject(m),
            headers: m.headers.clone().unwrap_or_default(),
            payload: m.payload.clone(),
            reply: m.reply.as_ref().map(ToString::to_string).unwrap_or_default(),
            stream: info.as_ref().map(|i| i.stream.to_owned()).unwrap_or_default(),
            seq: info.as_ref().map_or(0, |i| i.stream_sequence),
            delivered: info.as_ref().map_or(0, |i| i.delivered),
            published: info.as_ref().map(|i| i.published),
            id: super::attempt::message_id(m),
        }
    }

    pub(crate) fn stored(m: jetstream::message::StreamMessage, stream: String) -> Self {
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        let subject = header(super::dead_letter::ORIGINAL_SUBJECT).unwrap_or_else(|| m.subject.to_string());
        let id = header("ce-id")
            .or_else(|| header("Nats-Msg-Id"))
            .or_else(|| header(super::dead_letter::ORIGINAL_MSG_ID))
            .unwrap_or_else(|| format!("{stream}-{}", m.sequence));
        Self {
            subject,
            id,
            reply: String::new(),
            seq: m.sequence,
            delivered: 0,
            published: Some(m.time),
            stream,
            headers: m.headers,
            payload: m.payload,
        }
    }

    /// The ack subject and delivery count the key-order queue knows.
    pub(crate) fn with_reply(mut self, reply: String, delivered: i64) -> Self {
        self.reply = reply;
        self.delivered = delivered;
        self
    }
}

fn describe(key: &TokenKey, sub: &Subscription, m: &jetstream::Message) -> Value {
    describe_parts(key, sub, Parts::of(m))
}

pub(crate) fn describe_parts(key: &TokenKey, sub: &Subscription, m: Parts) -> Value {
    let decoded = |v: &str| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
    let mut attributes = serde_json::Map::new();
    for (name, values) in m.headers.iter() {
        let n = name.to_string().to_ascii_lowercase();
        if let (Some(attr), Some(v)) = (n.strip_prefix("ce-"), values.first()) {
            attributes.insert(attr.to_owned(), Value::String(decoded(v.as_str())));
        }
    }
    let time = m.published.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default();
    let token = AckToken { s: sub.name.clone(), r: m.reply, st: m.stream.clone(), q: m.seq, d: m.delivered };
    // Data as published when it is JSON; otherwise base64 (e.g. a directory delete marker).
    let data = serde_json::from_slice::<Value>(&m.payload).ok();
    let mut out = json!({
        "id": m.id,
        "subject": m.subject,
        "stream": m.stream,
        "seq": m.seq,
        "time": time,
        "publisher": attributes.get("source").cloned(),
        "attributes": attributes,
        "delivery_count": m.delivered,
        "ack_token": key.sign(&token),
    });
    match data {
        Some(data) => out["data"] = data,
        None if m.payload.is_empty() => out["data"] = Value::Null,
        None => out["data_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
    }
    out
}

/// What to do with a fetched message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Ack,
    Nak,
    Term,
    InProgress,
}

/// Why one token's action was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckFailure {
    AlreadyAcked,
    Nats(String),
}

/// Carries out one verified token's action. Final actions (ack, term) are recorded in the
/// ledger first, so a second use is refused; every action on an already-finished token
/// changes nothing.
///
/// # Errors
/// The token was already used for ack/term, or NATS failed.
pub async fn act(
    client: &async_nats::Client,
    ledger: &kv::Store,
    token: &AckToken,
    action: Action,
    delay: Option<Duration>,
) -> Result<(), AckFailure> {
    let key = token.ledger_key();
    // Ack and term: the ledger's `create` below refuses a finished token by itself.
    if !matches!(action, Action::Ack | Action::Term) {
        let finished = ledger.get(&key).await.map_err(|e| AckFailure::Nats(e.to_string()))?;
        if finished.is_some() {
            return Err(AckFailure::AlreadyAcked);
        }
    }
    let body = match action {
        Action::Ack => "+ACK".to_owned(),
        Action::Term => "+TERM".to_owned(),
        Action::InProgress => "+WPI".to_owned(),
        Action::Nak => match delay {
            Some(d) => format!("-NAK {}", json!({ "delay": d.as_nanos() as u64 })),
            None => "-NAK".to_owned(),
        },
    };
    if matches!(action, Action::Ack | Action::Term) {
        ledger.create(&key, action_name(action).into()).await.map_err(|e| {
            if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) {
                AckFailure::AlreadyAcked
            } else {
                AckFailure::Nats(e.to_string())
            }
        })?;
        // Double ack: JetStream confirms it processed the ack. If it did not, forget the
        // ledger entry so the token (or the redelivery's) can be used again.
        if let Err(e) = client.request(token.r.clone(), body.into()).await {
            let _ = ledger.purge(&key).await;
            return Err(AckFailure::Nats(e.to_string()));
        }
    } else {
        client.publish(token.r.clone(), body.into()).await.map_err(|e| AckFailure::Nats(e.to_string()))?;
    }
    Ok(())
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Ack => "ack",
        Action::Nak => "nak",
        Action::Term => "term",
        Action::InProgress => "in-progress",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn token() -> impl Strategy<Value = AckToken> {
        (".{0,12}", ".{0,40}", ".{0,12}", any::<u64>(), any::<i64>()).prop_map(|(s, r, st, q, d)| AckToken {
            s,
            r,
            st,
            q,
            d,
        })
    }

    proptest! {
        #[test]
        fn signed_tokens_verify_and_any_change_is_refused(t in token(), flip in any::<prop::sample::Index>()) {
            let key = TokenKey::from_bytes([7; 32]);
            let signed = key.sign(&t);
            prop_assert_eq!(key.verify(&signed).ok(), Some(t.clone()));
            // Another key refuses it.
            prop_assert!(TokenKey::from_bytes([8; 32]).verify(&signed).is_err());
            // Any one character changed is refused (never accepted as another token).
            let mut bytes = signed.into_bytes();
            let i = flip.index(bytes.len());
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            if let Ok(text) = String::from_utf8(bytes) {
                prop_assert!(key.verify(&text).is_err() || key.verify(&text).ok() == Some(t));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = TokenKey::from_bytes([1; 32]).verify(&text);
            let _ = TokenKey::from_bytes([1; 32]).verify_export(&text);
        }

        #[test]
        fn export_tokens_verify_and_are_not_ack_tokens(sub in "[a-z-]{1,12}", id in "[0-9a-f]{32}") {
            let key = TokenKey::from_bytes([7; 32]);
            let token = key.sign_export(&sub, &id);
            prop_assert_eq!(key.verify_export(&token), Ok((sub.clone(), id.clone())));
            prop_assert!(key.verify(&token).is_err());
            prop_assert!(TokenKey::from_bytes([8; 32]).verify_export(&token).is_err());
            let other = key.sign_export(&format!("{sub}x"), &id);
            prop_assert!(key.verify_export(&other).is_ok_and(|(s, _)| s != sub));
        }
    }
}
