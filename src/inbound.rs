//! Inbound adapters: what systems really send, turned into CloudEvents on a subject.
//!
//! - Bitrix24 outbound event handlers POST `application/x-www-form-urlencoded` with
//!   bracketed keys (`data[FIELDS][ID]=…&auth[application_token]=…`); nothing is signed, so
//!   `auth[application_token]` is compared with the configured one — found by a lazy scan
//!   before the form is built ([`application_token`]), then the form is built iteratively
//!   within `limits.max_form_fields` / `limits.max_form_depth` ([`parse_bracketed_form`]).
//!   The `auth` part (which carries access tokens) is never published.
//! - Business Central webhook subscriptions first call `?validationToken=` (echo it as
//!   text/plain), then POST `{"value": [...]}`; the entries stay raw ([`notification_entries`])
//!   and each one's `clientState` is checked before the entry is parsed. BC
//!   deletes a subscription on any answer but 2xx/408/429/5xx, so this adapter answers only
//!   those.
//! - Plain JSON (1C HTTP services, OKTELL scenarios): the publish API's checks, plus a
//!   transform where the shapes differ.

use std::borrow::Cow;
use std::cell::Cell;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use bytes::Bytes;

use crate::catalog::Catalog;
use crate::charset::Charset;
use crate::config::{Config, InboundConfig, InboundKind, Limits};
use crate::delivery::subscription::read_secret;
use crate::participants::Participant;
use crate::publish::Draft;
use crate::publish::cloudevents::ClientAttributes;
use crate::subject;
use crate::transform::{self, Transform};

/// What an inbound adapter refused or failed at, before anything is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundErrorKind {
    /// The secret inside the body (Bitrix24's `auth[application_token]`) is missing or wrong.
    Unauthorized,
    /// A Bitrix24 form over `limits.max_form_fields` or `limits.max_form_depth`.
    FormTooComplex,
    /// A Business Central notification with more than `limits.max_batch_items` entries.
    TooManyEntries,
    /// The route's transform failed on this input.
    TransformFailed,
    /// A form whose percent-decoded bytes are not valid in the charset its content type names.
    Undecodable,
    /// The route's participant is not in the catalog (the catalog check makes this a bug).
    NoParticipant,
}

/// An inbound adapter's error; the detail is for people.
pub type InboundError = crate::error::Error<InboundErrorKind>;

/// What an adapter made of what a system sent: one message for the route's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The data, before the route's transform.
    pub data: Vec<u8>,
    /// The message id; a system's retries of the same content get the same one.
    pub id: Option<String>,
    /// CloudEvents `type`.
    pub type_: String,
}

/// A Business Central POST, taken apart.
#[derive(Debug)]
pub enum Notification {
    /// Not a notification envelope at all: not BC's, to be answered 2xx and dropped.
    NotANotification(serde_json::Error),
    /// The entries whose `clientState` matched, as messages, and how many did not.
    Entries { messages: Vec<InboundMessage>, ignored: u64 },
}

/// A configured inbound route, resolved.
#[derive(Debug, Clone)]
pub struct InboundRoute {
    pub name: String,
    pub kind: InboundKind,
    pub participant: String,
    pub subject: String,
    pub transform: Option<Transform>,
    /// `application_token` (Bitrix24) or `clientState` (Business Central).
    pub secret: Option<String>,
}

impl InboundRoute {
    /// # Errors
    /// `(field, message)` for every problem, relative to `inbound.<name>`.
    pub fn resolve(name: &str, cfg: &InboundConfig, config: &Config) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if let Err(e) = subject::validate_publish_subject(&cfg.subject, 256) {
            problems.push(("subject".to_owned(), e.to_string()));
        }
        match config.participants.get(&cfg.participant) {
            None => problems.push(("participant".into(), format!("no participant {:?}", cfg.participant))),
            Some(p) if !p.publish.iter().any(|pat| subject::matches(pat, &cfg.subject)) => {
                problems.push((
                    "subject".into(),
                    format!("participant {} may not publish to {}", cfg.participant, cfg.subject),
                ));
            }
            Some(_) => {}
        }
        let transform = transform::load(config, "transform", cfg.transform.as_ref(), cfg.transform_file.as_ref())
            .unwrap_or_else(|p| {
                problems.push(p);
                None
            });
        let (field, secret) = match cfg.kind {
            InboundKind::Bitrix24 => ("application_token", cfg.application_token.as_ref()),
            InboundKind::BusinessCentral => ("client_state", cfg.client_state.as_ref()),
            InboundKind::Json => ("", None),
        };
        let secret = match (cfg.kind, secret) {
            (InboundKind::Json, _) => None,
            (_, None) => {
                problems.push((field.to_owned(), format!("a {:?} route needs {field}", cfg.kind)));
                None
            }
            (_, Some(s)) => match read_secret(config, s) {
                Ok(s) if !s.is_empty() => Some(s),
                Ok(_) => {
                    problems.push((field.to_owned(), "is empty".into()));
                    None
                }
                Err(m) => {
                    problems.push((field.to_owned(), m.to_string()));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            name: name.to_owned(),
            kind: cfg.kind,
            participant: cfg.participant.clone(),
            subject: cfg.subject.clone(),
            transform,
            secret,
        })
    }

    /// Constant-time comparison with the configured secret. Both sides are hashed first so
    /// that neither the content nor the length of the secret shows in the time taken.
    #[must_use]
    pub fn secret_matches(&self, presented: &str) -> bool {
        self.secret.as_deref().is_some_and(|s| {
            let (want, got) = (Sha256::digest(s.as_bytes()), Sha256::digest(presented.as_bytes()));
            bool::from(want.as_slice().ct_eq(got.as_slice()))
        })
    }
}

impl InboundRoute {
    /// The participant the route publishes as.
    ///
    /// # Errors
    /// `NoParticipant` (the catalog check rules it out).
    pub fn participant<'c>(&self, catalog: &'c Catalog) -> Result<&'c Participant, InboundError> {
        catalog.participants.iter().find(|p| p.name == self.participant).ok_or_else(|| {
            InboundError::new(InboundErrorKind::NoParticipant, format!("no participant {}", self.participant))
        })
    }

    /// A message as the draft to publish on the route's subject, the route's transform (if
    /// any) applied to its data.
    ///
    /// # Errors
    /// `TransformFailed`.
    pub fn draft(&self, message: InboundMessage, traceparent: Option<&str>) -> Result<Draft, InboundError> {
        let data = match &self.transform {
            None => message.data,
            Some(t) => t.apply(&message.data).map_err(|e| {
                InboundError::new(InboundErrorKind::TransformFailed, format!("the route's transform failed: {e}"))
            })?,
        };
        Ok(Draft {
            subject: self.subject.clone(),
            data: Bytes::from(data),
            data_well_formed: false,
            attributes: ClientAttributes { type_: Some(message.type_), ..Default::default() },
            idempotency_key: message.id,
            traceparent: traceparent.map(str::to_owned),
            tracestate: None,
        })
    }

    /// A Bitrix24 outbound event. Bitrix24 signs nothing and puts its token in the body, so
    /// the order is: a scan for the token alone (nothing built) → the token → only then the
    /// form, within its field and depth limits. The `auth` part carries the portal's access
    /// and refresh tokens: never published (its `domain` becomes `portal`).
    ///
    /// The token is compared as the form's charset decodes it; the id derives from the bytes
    /// received, so a retry of the same post is the same message.
    ///
    /// # Errors
    /// `Unauthorized`, `Undecodable`, `FormTooComplex`.
    pub fn bitrix24_event(
        &self,
        body: &[u8],
        charset: Option<Charset>,
        limits: &Limits,
    ) -> Result<InboundMessage, InboundError> {
        let token = match charset {
            None => application_token(body).map(Cow::into_owned),
            Some(charset) => crate::charset::form_field(body, APPLICATION_TOKEN_KEY, Some(charset)),
        };
        if !token.is_some_and(|token| self.secret_matches(&token)) {
            return Err(InboundError::new(
                InboundErrorKind::Unauthorized,
                "auth[application_token] is missing or does not match this route's application token",
            ));
        }
        // A windows-1251 site's form: its percent-decoded bytes are windows-1251.
        let utf8 = match charset {
            None => Cow::Borrowed(body),
            Some(charset) => Cow::Owned(
                crate::charset::form_to_utf8(body, charset)
                    .map_err(|p| InboundError::new(InboundErrorKind::Undecodable, p.detail))?,
            ),
        };
        let mut form = parse_bracketed_form(&utf8, limits.max_form_fields, limits.max_form_depth)
            .map_err(|e| InboundError::new(InboundErrorKind::FormTooComplex, e.to_string()))?;
        let portal = form["auth"]["domain"].as_str().map(str::to_owned);
        if let Some(obj) = form.as_object_mut() {
            obj.remove("auth");
            if let Some(portal) = portal {
                obj.insert("portal".into(), Value::String(portal));
            }
        }
        let event = form["event"].as_str().unwrap_or("event").to_ascii_lowercase();
        Ok(InboundMessage {
            data: serde_json::to_vec(&form).unwrap_or_default(),
            // Bitrix24 resends the same body on failure: the same id lets JetStream drop the copy.
            id: Some(content_id("bitrix24", &[body])),
            type_: format!("bitrix24.{event}"),
        })
    }

    /// A Business Central notification: the envelope's entries stay raw, counted up to
    /// `max_entries`, and only an entry whose `clientState` matches is parsed further (as
    /// Microsoft's webhook guidance says, the others are not ours: dropped and counted).
    ///
    /// # Errors
    /// `TooManyEntries`.
    pub fn business_central_notification(&self, body: &[u8], max_entries: usize) -> Result<Notification, InboundError> {
        let entries = match notification_entries(body, max_entries) {
            Ok(entries) => entries,
            Err(e @ EnvelopeError::TooManyEntries { .. }) => {
                return Err(InboundError::new(InboundErrorKind::TooManyEntries, e.to_string()));
            }
            Err(EnvelopeError::Malformed(e)) => return Ok(Notification::NotANotification(e)),
        };
        let mut messages = Vec::new();
        let mut ignored = 0;
        for raw in entries {
            match self.business_central_entry(raw) {
                Some(message) => messages.push(message),
                None => ignored += 1,
            }
        }
        Ok(Notification::Entries { messages, ignored })
    }

    /// One notification entry as a message, if its `clientState` is this route's.
    fn business_central_entry(&self, raw: &RawValue) -> Option<InboundMessage> {
        if !entry_client_state(raw).is_some_and(|cs| self.secret_matches(&cs)) {
            return None;
        }
        // Ours: only now is the entry built (serde_json bounds its nesting).
        let mut entry = serde_json::from_str::<Value>(raw.get()).ok()?;
        if let Some(obj) = entry.as_object_mut() {
            obj.remove("clientState");
        }
        let field = |k: &str| entry[k].as_str().unwrap_or_default().to_owned();
        let change = field("changeType");
        let id = content_id(
            "bc",
            &[
                field("subscriptionId").as_bytes(),
                field("resource").as_bytes(),
                change.as_bytes(),
                field("lastModifiedDateTime").as_bytes(),
            ],
        );
        let change = if change.is_empty() { "changed".to_owned() } else { change.to_ascii_lowercase() };
        Some(InboundMessage {
            data: serde_json::to_vec(&entry).unwrap_or_default(),
            id: Some(id),
            type_: format!("businesscentral.{change}"),
        })
    }
}

/// The key Bitrix24 carries its application token in.
pub const APPLICATION_TOKEN_KEY: &str = "auth[application_token]";

/// Finds `auth[application_token]` in a form body without building anything: the pairs are
/// decoded lazily one at a time, so a hostile body costs no more than one pair's memory before
/// the token has been checked. The first occurrence counts.
#[must_use]
pub fn application_token(body: &[u8]) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(body).find(|(key, _)| key == APPLICATION_TOKEN_KEY).map(|(_, value)| value)
}

/// Why a form was refused (`form-too-complex`); the message names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the form has more than {limit} fields (limits.max_form_fields)")]
    TooManyFields { limit: usize },
    #[error("a form key nests deeper than {limit} levels (limits.max_form_depth)")]
    TooDeep { limit: usize },
}

/// Parses a form body with bracketed keys into nested JSON:
/// `data[FIELDS][ID]=42&event=X` → `{"data": {"FIELDS": {"ID": "42"}}, "event": "X"}`.
///
/// Bounded and iterative (no recursion, whatever the input): at most `max_fields` pairs and
/// at most `max_depth` parts per key (`data[a][b]` has 3), checked before the pair is used.
///
/// Odd input, decided here (PHP, which Bitrix24 is written in, guesses instead; we keep what
/// was sent and never panic):
/// - A key that is not exactly `name[part]…[part]` with a non-empty `name` — `a[`, `a]`,
///   `[x]`, `a[b]c`, the empty key — is one literal top-level name, kept as sent (depth 1).
/// - `a[]` is the member `""` of `a` (no array appends; Bitrix24 always sends indices).
/// - A part may hold `[` (`a[b[c]` → `a` → `b[c`), as the first `]` closes it.
/// - Where a string and an object meet (`a=1&a[b]=2`, or `a[b]=2&a=1`), the later pair wins,
///   as in PHP: `{"a": {"b": "2"}}`, or `{"a": "1"}`.
///
/// # Errors
/// [`FormError`] when a limit is exceeded.
pub fn parse_bracketed_form(body: &[u8], max_fields: usize, max_depth: usize) -> Result<Value, FormError> {
    let mut root = Map::new();
    let mut fields = 0usize;
    'pairs: for (key, value) in form_urlencoded::parse(body) {
        fields += 1;
        if fields > max_fields {
            return Err(FormError::TooManyFields { limit: max_fields });
        }
        let path = split_key(&key, max_depth)?;
        let Some((last, parents)) = path.split_last() else { continue };
        let mut map = &mut root;
        for part in parents {
            let child = map.entry(*part).or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            match child {
                Value::Object(next) => map = next,
                // Cannot happen (made an object just above); skipping beats panicking.
                _ => continue 'pairs,
            }
        }
        map.insert((*last).to_owned(), Value::String(value.into_owned()));
    }
    Ok(Value::Object(root))
}

/// The parts of a form key (see [`parse_bracketed_form`] for the rules). The key is checked
/// and its parts counted before anything is allocated.
fn split_key(key: &str, max_depth: usize) -> Result<Vec<&str>, FormError> {
    let too_deep = FormError::TooDeep { limit: max_depth };
    let Some(parts) = bracket_parts(key) else {
        return if max_depth == 0 { Err(too_deep) } else { Ok(vec![key]) };
    };
    if parts > max_depth {
        return Err(too_deep);
    }
    let open = key.find('[').unwrap_or(key.len());
    let mut path = Vec::with_capacity(parts);
    path.push(&key[..open]);
    let mut rest = &key[open..];
    while let Some(inner) = rest.strip_prefix('[')
        && let Some(close) = inner.find(']')
    {
        path.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    Ok(path)
}

/// How many parts a well-formed bracketed key has (`a[b][c]` → 3), or `None` when the key
/// is to be taken literally.
fn bracket_parts(key: &str) -> Option<usize> {
    let open = key.find('[')?;
    if open == 0 {
        return None;
    }
    let mut parts = 1usize;
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        parts += 1;
        rest = &inner[close + 1..];
    }
    Some(parts)
}

/// Why a Business Central notification envelope was not taken apart.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a notification envelope: {0}")]
    Malformed(serde_json::Error),
    #[error("the notification has more than {limit} entries (limits.max_batch_items)")]
    TooManyEntries { limit: usize },
}

/// The entries of a Business Central notification `{"value": [...]}`, each left as borrowed
/// raw JSON so nothing of an entry is built before its `clientState` is checked. Counting
/// stops at the first entry over `max_entries`. A missing `value` is no entries; a duplicate
/// `value` member is malformed (RFC 7493: which one would count is ambiguous).
///
/// # Errors
/// [`EnvelopeError`].
pub fn notification_entries(body: &[u8], max_entries: usize) -> Result<Vec<&RawValue>, EnvelopeError> {
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = EnvelopeSeed { max_entries, too_many: &too_many }
        .deserialize(&mut de)
        .and_then(|entries| de.end().map(|()| entries));
    match parsed {
        Ok(entries) => Ok(entries),
        Err(_) if too_many.get() => Err(EnvelopeError::TooManyEntries { limit: max_entries }),
        Err(e) => Err(EnvelopeError::Malformed(e)),
    }
}

struct EnvelopeSeed<'c> {
    max_entries: usize,
    too_many: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#"{"value": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "value" {
                map.next_value::<IgnoredAny>()?;
            } else if entries.is_some() {
                return Err(serde::de::Error::duplicate_field("value"));
            } else {
                entries =
                    Some(map.next_value_seed(EntriesSeed { max_entries: self.max_entries, too_many: self.too_many })?);
            }
        }
        Ok(entries.unwrap_or_default())
    }
}

struct EntriesSeed<'c> {
    max_entries: usize,
    too_many: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of notifications")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element::<&'de RawValue>()? {
            if entries.len() == self.max_entries {
                self.too_many.set(true);
                return Err(serde::de::Error::custom("too many entries"));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// An entry's `clientState` alone; the rest of the entry is skipped, not built.
#[must_use]
pub fn entry_client_state(entry: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Only<'a> {
        #[serde(rename = "clientState", borrow)]
        client_state: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Only>(entry.get()).ok().and_then(|o| o.client_state)
}

/// A stable id for what a system sent, so its retries are de-duplicated by JetStream.
#[must_use]
pub fn content_id(prefix: &str, parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update(p);
        hash.update([0]);
    }
    format!("{prefix}-{}", &hex::encode(hash.finalize())[..32])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const BITRIX: &[u8] = b"event=ONCRMDEALADD&event_handler_id=12&data%5BFIELDS%5D%5BID%5D=4711&ts=1732780800&auth%5Bdomain%5D=shop.bitrix24.ru&auth%5Bapplication_token%5D=abc";

    #[test]
    fn bitrix_form_becomes_nested_json() {
        let v = parse_bracketed_form(BITRIX, 100, 8).unwrap();
        assert_eq!(v["event"], "ONCRMDEALADD");
        assert_eq!(v["data"]["FIELDS"]["ID"], "4711");
        assert_eq!(v["auth"]["application_token"], "abc");
        assert_eq!(v["auth"]["domain"], "shop.bitrix24.ru");
        assert_eq!(application_token(BITRIX).as_deref(), Some("abc"));
    }

    #[test]
    fn the_token_scan_takes_the_first_and_finds_none_without_it() {
        assert_eq!(
            application_token(b"auth[application_token]=one&auth%5Bapplication_token%5D=two").as_deref(),
            Some("one")
        );
        assert_eq!(application_token(b"auth[application_token][x]=1&auth=abc&data[auth][application_token]=2"), None);
        assert_eq!(application_token(b""), None);
    }

    #[test]
    fn odd_keys_are_literal_names_and_the_later_pair_wins() {
        let v = |body: &[u8]| parse_bracketed_form(body, 100, 8).unwrap();
        assert_eq!(
            v(b"a[=1&b]=2&[x]=3&c[d]e=4&=5&f[g][=6"),
            json!({"a[": "1", "b]": "2", "[x]": "3", "c[d]e": "4", "": "5", "f[g][": "6"})
        );
        assert_eq!(v(b"a[]=1&a[b[c]=2"), json!({"a": {"": "1", "b[c": "2"}}));
        assert_eq!(v(b"a=1&a[b]=2"), json!({"a": {"b": "2"}}));
        assert_eq!(v(b"a[b]=2&a=1"), json!({"a": "1"}));
        assert_eq!(v(b"a[b][c]=1&a[b]=2&a[b][d]=3"), json!({"a": {"b": {"d": "3"}}}));
        assert_eq!(v(b"&&a=1&&"), json!({"a": "1"}), "empty pairs are not fields");
    }

    #[test]
    fn a_ten_thousand_level_key_is_refused_not_recursed() {
        let key = format!("data{}", "[a]".repeat(10_000));
        let body = format!("{key}=1");
        assert_eq!(parse_bracketed_form(body.as_bytes(), 2000, 8), Err(FormError::TooDeep { limit: 8 }));
        // Even with no depth limit to speak of, building it does not recurse.
        let v = parse_bracketed_form(body.as_bytes(), 2000, usize::MAX).unwrap();
        let mut depth = 0;
        let mut cur = &v;
        while let Some(next) = cur.as_object().and_then(|m| m.values().next()) {
            depth += 1;
            cur = next;
        }
        assert_eq!(depth, 10_001);
        // serde_json drops a Value recursively: take it apart without recursing.
        let mut stack = vec![v];
        while let Some(mut v) = stack.pop() {
            if let Some(m) = v.as_object_mut() {
                stack.extend(std::mem::take(m).into_iter().map(|(_, v)| v));
            }
        }
    }

    #[test]
    fn limit_errors_name_the_limit() {
        assert!(FormError::TooManyFields { limit: 5 }.to_string().contains("limits.max_form_fields"));
        assert!(FormError::TooDeep { limit: 5 }.to_string().contains("limits.max_form_depth"));
    }

    #[test]
    fn notification_entries_are_counted_and_left_raw() {
        let body = br#"{"@odata":"x","value":[{"clientState":"s","a":[1,{"b":2}]},{"clientState":"t\u0041"},3]}"#;
        let entries = notification_entries(body, 3).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].get(), r#"{"clientState":"s","a":[1,{"b":2}]}"#);
        assert_eq!(entry_client_state(entries[0]).as_deref(), Some("s"));
        assert_eq!(entry_client_state(entries[1]).as_deref(), Some("tA"));
        assert_eq!(entry_client_state(entries[2]), None);
        assert!(matches!(notification_entries(body, 2), Err(EnvelopeError::TooManyEntries { limit: 2 })));
        assert!(notification_entries(b"{}", 2).unwrap().is_empty());
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"value":5}"#,
            br#"{"value":[],"value":[]}"#,
            br#"{"value":[]} x"#,
            br#"{"value":[1,]}"#,
        ] {
            assert!(
                matches!(notification_entries(bad, 10), Err(EnvelopeError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A duplicate clientState is no clientState (which one would count is ambiguous).
        let dup = notification_entries(br#"{"value":[{"clientState":"s","clientState":"t"}]}"#, 1).unwrap();
        assert_eq!(entry_client_state(dup[0]), None);
    }

    #[test]
    fn deep_notification_entries_are_malformed_not_a_crash() {
        let body = format!(r#"{{"value":[{}]}}"#, "[".repeat(100_000));
        assert!(matches!(notification_entries(body.as_bytes(), 10), Err(EnvelopeError::Malformed(_))));
    }

    #[test]
    fn content_ids_are_stable() {
        assert_eq!(content_id("x", &[b"a", b"b"]), content_id("x", &[b"a", b"b"]));
        assert_ne!(content_id("x", &[b"a", b"b"]), content_id("x", &[b"ab"]));
    }

    /// A tree of non-empty objects with string leaves, as a form could express it.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = "[ -~\u{e9}\u{416}]{0,8}".prop_map(Value::String);
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop::collection::btree_map("[A-Za-z0-9_]{1,6}", inner, 1..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn to_form(v: &Value) -> (String, usize, usize) {
        let mut out = form_urlencoded::Serializer::new(String::new());
        let (mut fields, mut depth) = (0, 0);
        let mut stack: Vec<(String, &Value, usize)> =
            v.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v, 1)).collect();
        while let Some((key, v, d)) = stack.pop() {
            match v {
                Value::Object(m) => stack.extend(m.iter().map(|(k, v)| (format!("{key}[{k}]"), v, d + 1))),
                other => {
                    out.append_pair(&key, other.as_str().unwrap_or_default());
                    fields += 1;
                    depth = depth.max(d);
                }
            }
        }
        (out.finish(), fields, depth)
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512), fields in 0usize..20, depth in 0usize..6) {
            let _ = parse_bracketed_form(&body, fields, depth);
            let _ = application_token(&body);
            let _ = notification_entries(&body, fields).map(|e| e.into_iter().map(entry_client_state).count());
        }

        #[test]
        fn never_panics_on_bracket_soup(body in "[ab\\[\\]=&%5BD]{0,200}", depth in 0usize..6) {
            if let Ok(v) = parse_bracketed_form(body.as_bytes(), 100, depth) {
                prop_assert!(v.is_object());
            }
        }

        #[test]
        fn simple_nested_forms_round_trip(v in tree().prop_filter("an object", Value::is_object)) {
            let (form, fields, depth) = to_form(&v);
            prop_assert_eq!(parse_bracketed_form(form.as_bytes(), fields, depth), Ok(v));
        }

        #[test]
        fn limits_hold_exactly_at_the_boundary(v in tree().prop_filter("an object", Value::is_object)) {
            let (form, fields, depth) = to_form(&v);
            prop_assert!(parse_bracketed_form(form.as_bytes(), fields, depth).is_ok());
            prop_assert_eq!(parse_bracketed_form(form.as_bytes(), fields - 1, usize::MAX), Err(FormError::TooManyFields { limit: fields - 1 }));
            prop_assert_eq!(parse_bracketed_form(form.as_bytes(), usize::MAX, depth - 1), Err(FormError::TooDeep { limit: depth - 1 }));
        }

        #[test]
        fn entry_count_limit_holds_exactly(n in 0usize..50) {
            let body = format!(r#"{{"value":[{}]}}"#, vec![r#"{"clientState":"x"}"#; n].join(","));
            prop_assert_eq!(notification_entries(body.as_bytes(), n).map(|e| e.len()).ok(), Some(n));
            if n > 0 {
                let over = matches!(notification_entries(body.as_bytes(), n - 1), Err(EnvelopeError::TooManyEntries { .. }));
                prop_assert!(over);
            }
        }
    }
}
