//! Inbound adapters: what systems really send, turned into CloudEvents on a subject.
//!
//! - Bitrix24 outbound event handlers POST `application/x-www-form-urlencoded` with
//!   bracketed keys (`data[FIELDS][ID]=…&auth[application_token]=…`); nothing is signed, so
//!   `auth[application_token]` is compared with the configured one. The `auth` part (which
//!   carries access tokens) is never published.
//! - Business Central webhook subscriptions first call `?validationToken=` (echo it as
//!   text/plain), then POST `{"value": [...]}`; each entry's `clientState` is checked. BC
//!   deletes a subscription on any answer but 2xx/408/429/5xx, so this adapter answers only
//!   those.
//! - Plain JSON (1C HTTP services, OKTELL scenarios): the publish API's checks, plus a
//!   transform where the shapes differ.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, InboundConfig, InboundKind};
use crate::delivery::subscription::read_secret;
use crate::subject;
use crate::transform::{self, Transform};

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
                problems.push(("subject".into(), format!("participant {} may not publish to {}", cfg.participant, cfg.subject)));
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
                    problems.push((field.to_owned(), m));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self { name: name.to_owned(), kind: cfg.kind, participant: cfg.participant.clone(), subject: cfg.subject.clone(), transform, secret })
    }

    /// Constant-time comparison with the configured secret.
    #[must_use]
    pub fn secret_matches(&self, presented: &str) -> bool {
        self.secret.as_deref().is_some_and(|s| bool::from(s.as_bytes().ct_eq(presented.as_bytes())))
    }
}

/// Parses a form body with bracketed keys into nested JSON:
/// `data[FIELDS][ID]=42&event=X` → `{"data": {"FIELDS": {"ID": "42"}}, "event": "X"}`.
#[must_use]
pub fn parse_bracketed_form(body: &[u8]) -> Value {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let mut path: Vec<String> = Vec::new();
        match key.find('[') {
            Some(i) if key.ends_with(']') => {
                path.push(key[..i].to_owned());
                path.extend(key[i + 1..key.len() - 1].split("][").map(str::to_owned));
            }
            _ => path.push(key.into_owned()),
        }
        insert(&mut root, &path, Value::String(value.into_owned()));
    }
    Value::Object(root)
}

fn insert(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return;
    }
    let child = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(child) = child {
        insert(child, rest, value);
    }
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
    use super::*;

    #[test]
    fn bitrix_form_becomes_nested_json() {
        let body = b"event=ONCRMDEALADD&event_handler_id=12&data%5BFIELDS%5D%5BID%5D=4711&ts=1732780800&auth%5Bdomain%5D=shop.bitrix24.ru&auth%5Bapplication_token%5D=abc";
        let v = parse_bracketed_form(body);
        assert_eq!(v["event"], "ONCRMDEALADD");
        assert_eq!(v["data"]["FIELDS"]["ID"], "4711");
        assert_eq!(v["auth"]["application_token"], "abc");
        assert_eq!(v["auth"]["domain"], "shop.bitrix24.ru");
    }

    #[test]
    fn content_ids_are_stable() {
        assert_eq!(content_id("x", &[b"a", b"b"]), content_id("x", &[b"a", b"b"]));
        assert_ne!(content_id("x", &[b"a", b"b"]), content_id("x", &[b"ab"]));
    }
}
