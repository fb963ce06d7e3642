//! A subscription as the delivery engine uses it: configuration resolved (secrets read,
//! signing keys decoded, URL parsed) and mapped onto the streams its subjects span.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::retry_policy::RetryPolicy;
use super::signature::SigningKey;
use super::{DeliveryError, DeliveryKind};
use crate::config::{
    Config, DeliveryMethod, OnExhausted, SecretValue, StartPosition, SubscriptionConfig, SubscriptionMode,
};
use crate::streams::StreamDef;
use crate::subject;

/// A push subscription, ready to run.
#[derive(Clone, PartialEq)]
pub struct Subscription {
    pub name: String,
    pub participant: String,
    pub subjects: Vec<String>,
    pub mode: SubscriptionMode,
    /// Push mode's endpoint (a placeholder, never called, for pull and stream).
    pub endpoint: reqwest::Url,
    pub method: reqwest::Method,
    /// Extra headers with secrets already read.
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub policy: RetryPolicy,
    pub ordered: bool,
    pub on_exhausted: OnExhausted,
    pub max_in_flight: u32,
    /// Per-key ordering (none: unordered, or strictly `ordered`).
    pub ordering: Option<KeyOrdering>,
    pub rate_limit: Option<f64>,
    pub signing_keys: Vec<SigningKey>,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub start: StartPosition,
    pub ack_wait: Duration,
    /// Reshapes the data before delivery.
    pub transform: Option<crate::transform::Transform>,
    /// The contract version deliveries are converted to and checked against.
    pub pin: Option<super::pin::Pin>,
    /// Bodies are re-encoded in this charset before they are signed and sent; none = UTF-8.
    pub charset: Option<crate::charset::Charset>,
    /// Pull only: the columns of a spreadsheet export (none: the contract's properties).
    pub export_columns: Vec<crate::config::ExportColumn>,
    /// `(stream, filter subjects)` for every stream the subjects span: one consumer each.
    pub spans: Vec<(String, Vec<String>)>,
}

/// Debug output ends up in logs: the endpoint is shown redacted, headers and keys not at all.
impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("participant", &self.participant)
            .field("subjects", &self.subjects)
            .field("mode", &self.mode)
            .field("endpoint", &redacted(&self.endpoint))
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The durable consumer name, the same on every stream and every replica.
    #[must_use]
    pub fn consumer_name(&self) -> String {
        consumer_name(&self.name)
    }

    /// The endpoint without credentials or query, for listings and logs (push mode only).
    #[must_use]
    pub fn endpoint_redacted(&self) -> Option<String> {
        (self.mode == SubscriptionMode::Push).then(|| redacted(&self.endpoint))
    }

    /// Resolves one configured subscription. `streams` includes the system streams.
    ///
    /// # Errors
    /// `(field, message)` for every problem, field relative to `subscriptions.<name>`.
    pub fn resolve(
        name: &str,
        cfg: &SubscriptionConfig,
        config: &Config,
        streams: &[StreamDef],
        subscribe_permissions: Option<&[String]>,
        contracts: &crate::contracts::Contracts,
    ) -> Result<Self, Problems> {
        // Every check runs, in this order, so one answer lists every problem.
        let mut problems = Vec::new();
        check_name(name, &mut problems);
        check_permissions(cfg, subscribe_permissions, &mut problems);
        let spans = spans(cfg, streams, &mut problems);
        let endpoint = endpoint(cfg, streams, &mut problems);
        let target = resolve_target(config, &endpoint, cfg.method, &cfg.headers, &cfg.signing_secrets);
        let target = target.map_err(|list| problems.extend(list)).ok();
        check_delivery_knobs(cfg, &mut problems);
        let transform =
            match crate::transform::load(config, "transform", cfg.transform.as_ref(), cfg.transform_file.as_ref()) {
                Ok(t) => t,
                Err(p) => {
                    problems.push(p);
                    None
                }
            };
        check_timing(cfg, &mut problems);
        let charset = charset(cfg, &mut problems);
        check_export_columns(cfg, &mut problems);
        let pin = super::pin::resolve(cfg, config, contracts).map_err(|list| problems.extend(list)).ok().flatten();
        let ordering = ordering(cfg, &mut problems);
        let (Some(target), true) = (target, problems.is_empty()) else {
            return Err(problems);
        };
        let mut sub = Self::build(name, cfg, target, transform, spans);
        sub.charset = charset;
        sub.pin = pin;
        sub.ordering = ordering;
        Ok(sub)
    }

    fn build(
        name: &str,
        cfg: &SubscriptionConfig,
        target: HttpTarget,
        transform: Option<crate::transform::Transform>,
        spans: Vec<(String, Vec<String>)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            participant: cfg.participant.clone(),
            subjects: cfg.subjects.clone(),
            mode: cfg.mode,
            endpoint: target.endpoint,
            method: target.method,
            headers: target.headers,
            timeout: cfg.timeout,
            policy: RetryPolicy {
                schedule: cfg.retry_schedule.iter().map(|d| d.0).collect(),
                max_attempts: cfg.max_attempts,
                retry_client_errors: cfg.retry_client_errors,
            },
            ordered: cfg.ordered,
            on_exhausted: cfg.on_exhausted,
            max_in_flight: if cfg.ordered { 1 } else { cfg.max_in_flight },
            ordering: None,
            rate_limit: cfg.rate_limit,
            signing_keys: target.signing_keys,
            breaker_failures: cfg.breaker_failures.max(1),
            breaker_cooldown: cfg.breaker_cooldown,
            start: cfg.start,
            ack_wait: cfg.ack_wait(),
            transform,
            charset: None,
            pin: None,
            export_columns: cfg.export_columns.clone(),
            spans,
        }
    }
}

/// `(field, message)` pairs of a configuration being resolved.
type Problems = Vec<(String, String)>;

fn check_name(name: &str, problems: &mut Problems) {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problems.push((String::new(), "a subscription name is 1-64 of A-Z, a-z, 0-9, '-', '_'".to_owned()));
    }
}

/// The participant exists and may subscribe to every subject.
fn check_permissions(cfg: &SubscriptionConfig, subscribe_permissions: Option<&[String]>, problems: &mut Problems) {
    match subscribe_permissions {
        None => problems.push(("participant".into(), format!("no participant {:?}", cfg.participant))),
        Some(allowed) => {
            for (i, s) in cfg.subjects.iter().enumerate() {
                if !allowed.iter().any(|p| subject::covers(p, s)) {
                    problems.push((
                        format!("subjects[{i}]"),
                        format!("participant {} may not subscribe to {s}", cfg.participant),
                    ));
                }
            }
        }
    }
    if cfg.subjects.is_empty() {
        problems.push(("subjects".into(), "at least one subject".into()));
    }
}

/// `(stream, consumer filters)` for every stream the subjects span; a subject no stream
/// stores is a problem.
fn spans(cfg: &SubscriptionConfig, streams: &[StreamDef], problems: &mut Problems) -> Vec<(String, Vec<String>)> {
    let mut spans: Vec<(String, Vec<String>)> = Vec::new();
    for (i, s) in cfg.subjects.iter().enumerate() {
        if let Err(m) = subject::validate_pattern(s) {
            problems.push((format!("subjects[{i}]"), m.to_string()));
            continue;
        }
        let mut found = false;
        for stream in streams {
            for stored in &stream.config.subjects {
                // The consumer filter is the narrower of the two patterns.
                let filter = if subject::covers(stored, s) {
                    s.clone()
                } else if subject::covers(s, stored) {
                    stored.clone()
                } else {
                    continue;
                };
                found = true;
                match spans.iter_mut().find(|(n, _)| n == stream.name()) {
                    Some((_, filters)) if !filters.contains(&filter) => filters.push(filter),
                    Some(_) => {}
                    None => spans.push((stream.name().to_owned(), vec![filter])),
                }
            }
        }
        if !found {
            problems.push((format!("subjects[{i}]"), format!("no stream stores {s}")));
        }
    }
    spans
}

/// The endpoint a mode needs (push) or must not have (pull, stream), and the one-stream rule
/// of pull and stream subscriptions. A placeholder stands in where there is none.
fn endpoint(cfg: &SubscriptionConfig, streams: &[StreamDef], problems: &mut Problems) -> String {
    let endpoint = match (cfg.mode, &cfg.endpoint) {
        (SubscriptionMode::Push, Some(e)) => e.clone(),
        (SubscriptionMode::Push, None) => {
            problems.push(("endpoint".into(), "a push subscription needs an endpoint".into()));
            "http://missing.invalid/".to_owned()
        }
        (_, Some(_)) => {
            problems.push(("endpoint".into(), "pull and stream subscriptions have no endpoint".into()));
            "http://unused.invalid/".to_owned()
        }
        (_, None) => "http://unused.invalid/".to_owned(),
    };
    if cfg.mode != SubscriptionMode::Push && spans_streams(&cfg.subjects, streams) > 1 {
        problems.push(("subjects".into(), "pull and stream subscriptions read from one stream".into()));
    }
    endpoint
}

/// Retries, concurrency and rate.
fn check_delivery_knobs(cfg: &SubscriptionConfig, problems: &mut Problems) {
    if cfg.retry_schedule.is_empty() {
        problems.push(("retry_schedule".into(), "at least one delay".into()));
    }
    if cfg.max_attempts == 0 {
        problems.push(("max_attempts".into(), "at least 1".into()));
    }
    if cfg.max_in_flight == 0 || cfg.max_in_flight > 10_000 {
        problems.push(("max_in_flight".into(), "between 1 and 10000".into()));
    }
    if cfg.rate_limit.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        problems.push(("rate_limit".into(), "a positive number of messages per second".into()));
    }
}

/// Export columns: pull mode only, each a header and a JSON pointer.
fn check_export_columns(cfg: &SubscriptionConfig, problems: &mut Problems) {
    if !cfg.export_columns.is_empty() && cfg.mode != SubscriptionMode::Pull {
        problems.push(("export_columns".into(), "only pull subscriptions are exported as spreadsheets".into()));
    }
    for (i, column) in cfg.export_columns.iter().enumerate() {
        if !column.pointer.starts_with('/') {
            problems.push((format!("export_columns[{i}].pointer"), "a JSON pointer, e.g. /sku".into()));
        }
        if column.header.trim().is_empty() {
            problems.push((format!("export_columns[{i}].header"), "must not be empty".into()));
        }
    }
}

/// Where a message's ordering key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JSON pointer into the data; a missing value or non-JSON data is the empty key.
    Pointer(String),
    /// A CloudEvents attribute, read from its `ce-<name>` header.
    Attribute(String),
    /// The n-th token (from 0) of the subject the message was published to.
    SubjectToken(usize),
}

impl KeySource {
    /// Parses `/pointer`, `ce:<attribute>` or `subject:<n>` (n from 1).
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(Self::Pointer(text.to_owned()));
        }
        if let Some(name) = text.strip_prefix("ce:") {
            let valid = !name.is_empty()
                && name.len() <= 20
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            return if valid {
                Ok(Self::Attribute(name.to_owned()))
            } else {
                Err("a CloudEvents attribute name is 1-20 of a-z, 0-9 (ce:subject, ce:orderid)".to_owned())
            };
        }
        if let Some(n) = text.strip_prefix("subject:") {
            return match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Self::SubjectToken(n - 1)),
                _ => Err("subject:<n> counts tokens from 1 (subject:3 of shop.order.42 is 42)".to_owned()),
            };
        }
        Err("a JSON pointer (/order_id), a CloudEvents attribute (ce:subject) or a subject token (subject:3)"
            .to_owned())
    }

    /// The key of a message: `subject` is the one it was published to.
    #[must_use]
    pub fn key_of(&self, subject: &str, headers: Option<&async_nats::HeaderMap>, data: &[u8]) -> String {
        match self {
            Self::Pointer(pointer) => serde_json::from_slice::<serde_json::Value>(data)
                .ok()
                .and_then(|v| {
                    v.pointer(pointer).map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                })
                .unwrap_or_default(),
            Self::Attribute(name) => headers
                .and_then(|h| h.get(format!("ce-{name}").as_str()))
                .map(|v| percent_encoding::percent_decode_str(v.as_str()).decode_utf8_lossy().into_owned())
                .unwrap_or_default(),
            Self::SubjectToken(n) => subject.split('.').nth(*n).unwrap_or_default().to_owned(),
        }
    }
}

/// The largest key-order queue of a pull subscription (entries of a KV value).
const PULL_BUFFER_MAX: u32 = 2000;

/// A key-ordered subscription's settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrdering {
    pub key: KeySource,
    pub on_exhausted: crate::config::OnKeyExhausted,
    pub pinned_ttl: Duration,
    pub buffer: u32,
}

/// `ordering`: a key that parses, push or pull mode, not with `ordered`, a buffer that holds at least
/// one message per key in flight.
fn ordering(cfg: &SubscriptionConfig, problems: &mut Problems) -> Option<KeyOrdering> {
    let o = cfg.ordering.as_ref()?;
    let key = KeySource::parse(&o.key).map_err(|m| problems.push(("ordering.key".into(), m))).ok();
    if cfg.mode == SubscriptionMode::Stream {
        problems.push(("ordering".into(), "push and pull subscriptions are delivered in key order, not stream".into()));
    }
    if cfg.ordered {
        problems
            .push(("ordering".into(), "ordered (one message at a time) and ordering by key exclude each other".into()));
    }
    if o.buffer < cfg.max_in_flight || o.buffer > 100_000 {
        problems.push(("ordering.buffer".into(), "between max_in_flight and 100000".into()));
    }
    if cfg.mode == SubscriptionMode::Pull && o.buffer > PULL_BUFFER_MAX {
        // The pull queue is one KV value, bounded by the server's max_payload (1 MiB by default).
        problems.push(("ordering.buffer".into(), format!("at most {PULL_BUFFER_MAX} for a pull subscription")));
    }
    if o.pinned_ttl < Duration::from_secs(1) {
        problems.push(("ordering.pinned_ttl".into(), "at least 1s".into()));
    }
    Some(KeyOrdering { key: key?, on_exhausted: o.on_exhausted, pinned_ttl: o.pinned_ttl, buffer: o.buffer })
}

/// The charset bodies are delivered in: a WHATWG label the gateway can write, push mode only.
fn charset(cfg: &SubscriptionConfig, problems: &mut Problems) -> Option<crate::charset::Charset> {
    let label = cfg.charset.as_deref()?;
    let encoding = match crate::charset::label_to_encoding(label) {
        Ok(encoding) => encoding,
        Err(problem) => {
            problems.push(("charset".into(), problem.detail));
            return None;
        }
    };
    if cfg.mode != SubscriptionMode::Push {
        problems.push(("charset".into(), "only push subscriptions deliver bodies in a charset".into()));
    }
    if encoding.output_encoding() != encoding {
        // The Encoding Standard writes UTF-16 as UTF-8: the label would lie.
        problems.push(("charset".into(), format!("{} can be read but not written; use UTF-8", encoding.name())));
        return None;
    }
    (encoding != encoding_rs::UTF_8).then_some(encoding)
}

fn check_timing(cfg: &SubscriptionConfig, problems: &mut Problems) {
    if cfg.ack_wait() < Duration::from_secs(1) {
        problems.push(("ack_wait".into(), "at least 1s".into()));
    }
    if cfg.timeout.is_zero() {
        problems.push(("timeout".into(), "must be more than 0".into()));
    }
}

/// An endpoint as it may be shown anywhere (errors, events, API answers, logs):
/// `scheme://host[:port]/path`, with `?…` standing for a query. Userinfo, query and fragment
/// routinely carry secrets (`https://user:pw@host/hook?code=…`) and never appear.
#[must_use]
pub(crate) fn redacted(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?…");
    }
    out
}

/// `text` with every spelling of `url` in it replaced by its redacted form; for error
/// messages from HTTP clients and resolvers, which quote the URL they were given.
#[must_use]
pub(crate) fn scrub(text: &str, url: &reqwest::Url) -> String {
    let mut out = text.replace(url.as_str(), &redacted(url));
    // Pieces that may be quoted on their own.
    for secret in [url.password(), url.query(), Some(url.username()).filter(|u| !u.is_empty())].into_iter().flatten() {
        if secret.len() >= 3 {
            out = out.replace(secret, "…");
        }
    }
    out
}

/// Where and how to call a participant's HTTP endpoint (subscriptions and responders).
#[derive(Clone, PartialEq)]
pub struct HttpTarget {
    pub endpoint: reqwest::Url,
    pub method: reqwest::Method,
    /// Extra headers, secrets already read, marked sensitive.
    pub headers: HeaderMap,
    pub signing_keys: Vec<SigningKey>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("endpoint", &redacted(&self.endpoint))
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Parses an endpoint and reads its header values and signing secrets.
///
/// # Errors
/// `(field, message)` for every problem.
pub(crate) fn resolve_target(
    config: &Config,
    endpoint: &str,
    method: DeliveryMethod,
    headers: &std::collections::BTreeMap<String, SecretValue>,
    signing_secrets: &[SecretValue],
) -> Result<HttpTarget, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let endpoint = match reqwest::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
        Ok(_) => {
            problems.push(("endpoint".into(), "only http and https endpoints".into()));
            None
        }
        Err(e) => {
            problems.push(("endpoint".into(), format!("not a URL: {e}")));
            None
        }
    };
    let mut resolved = HeaderMap::new();
    for (key, value) in headers {
        let field = format!("headers.{key}");
        let Ok(header) = HeaderName::from_bytes(key.as_bytes()) else {
            problems.push((field, "not a valid header name".into()));
            continue;
        };
        match read_secret(config, value).and_then(|v| {
            HeaderValue::from_str(&v).map_err(|_| DeliveryError::new(DeliveryKind::Secret, "not a valid header value"))
        }) {
            Ok(mut v) => {
                v.set_sensitive(true);
                resolved.insert(header, v);
            }
            Err(m) => problems.push((field, m.to_string())),
        }
    }
    let mut signing_keys = Vec::new();
    for (i, secret) in signing_secrets.iter().enumerate() {
        match read_secret(config, secret).and_then(|s| SigningKey::from_secret(&s)) {
            Ok(key) => signing_keys.push(key),
            Err(m) => problems.push((format!("signing_secrets[{i}]"), m.to_string())),
        }
    }
    match (endpoint, problems.is_empty()) {
        (Some(endpoint), true) => Ok(HttpTarget {
            endpoint,
            method: match method {
                DeliveryMethod::Post => reqwest::Method::POST,
                DeliveryMethod::Put => reqwest::Method::PUT,
                DeliveryMethod::Patch => reqwest::Method::PATCH,
            },
            headers: resolved,
            signing_keys,
        }),
        _ => Err(problems),
    }
}

/// How many streams the patterns touch.
fn spans_streams(subjects: &[String], streams: &[StreamDef]) -> usize {
    streams
        .iter()
        .filter(|st| {
            st.config
                .subjects
                .iter()
                .any(|stored| subjects.iter().any(|s| subject::covers(stored, s) || subject::covers(s, stored)))
        })
        .count()
}

/// Every durable consumer the gateway creates is named `magistral-<subscription>`.
pub(crate) const CONSUMER_PREFIX: &str = "magistral-";

/// The durable consumer name of a subscription.
#[must_use]
pub(crate) fn consumer_name(subscription: &str) -> String {
    format!("{CONSUMER_PREFIX}{subscription}")
}

/// The subscription a gateway consumer belongs to; `None` for other consumers.
#[must_use]
pub(crate) fn subscription_of(consumer: &str) -> Option<&str> {
    consumer.strip_prefix(CONSUMER_PREFIX)
}

/// Reads a literal, environment or file secret.
///
/// # Errors
/// The variable is unset or the file unreadable.
pub(crate) fn read_secret(config: &Config, value: &SecretValue) -> Result<String, DeliveryError> {
    let unreadable = |detail: String| DeliveryError::new(DeliveryKind::Secret, detail);
    match value {
        SecretValue::Literal(s) => Ok(s.clone()),
        SecretValue::Env { env } => {
            std::env::var(env).map_err(|_| unreadable(format!("environment variable {env} is not set")))
        }
        SecretValue::File { file } => {
            let path = config.resolve(file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| unreadable(format!("{}: {e}", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_keys_parse_and_read() {
        let data = br#"{"order_id": "SO-1", "item": {"sku": 42}}"#;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-subject", "SO%2F7");
        let key = |text: &str| KeySource::parse(text).unwrap().key_of("prices.sku.A-100", Some(&headers), data);
        assert_eq!(key("/order_id"), "SO-1");
        assert_eq!(key("/item/sku"), "42");
        assert_eq!(key("/missing"), "");
        assert_eq!(key("ce:subject"), "SO/7");
        assert_eq!(key("ce:customerid"), "");
        assert_eq!(key("subject:3"), "A-100");
        assert_eq!(key("subject:9"), "");
        assert_eq!(KeySource::parse("/x").unwrap().key_of("s", None, b"not json"), "");
        for bad in ["order_id", "ce:", "ce:Subject", "subject:0", "subject:x", ""] {
            assert!(KeySource::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ordering_is_checked_against_the_other_settings() {
        let cfg = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"participant": "p", "subjects": ["a.b"], "endpoint": "http://x/"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<SubscriptionConfig>(v).unwrap()
        };
        let problems = |extra| {
            let mut p = Vec::new();
            let _ = ordering(&cfg(extra), &mut p);
            p.into_iter().map(|(f, _)| f).collect::<Vec<_>>()
        };
        assert!(problems(serde_json::json!({"ordering": {"key": "/id"}})).is_empty());
        assert_eq!(problems(serde_json::json!({"ordering": {"key": "id"}})), ["ordering.key"]);
        assert_eq!(problems(serde_json::json!({"ordering": {"key": "/id"}, "ordered": true})), ["ordering"]);
        assert!(problems(serde_json::json!({"ordering": {"key": "/id"}, "mode": "pull"})).is_empty());
        assert_eq!(problems(serde_json::json!({"ordering": {"key": "/id"}, "mode": "stream"})), ["ordering"]);
        assert_eq!(
            problems(serde_json::json!({"ordering": {"key": "/id", "buffer": 5000}, "mode": "pull"})),
            ["ordering.buffer"]
        );
        assert_eq!(
            problems(serde_json::json!({"ordering": {"key": "/id", "buffer": 4}, "max_in_flight": 8})),
            ["ordering.buffer"]
        );
        assert_eq!(
            problems(serde_json::json!({"ordering": {"key": "/id", "pinned_ttl": "100ms"}})),
            ["ordering.pinned_ttl"]
        );
        let parsed = ordering(
            &cfg(serde_json::json!({"ordering": {"key": "ce:subject", "on_exhausted": "park"}})),
            &mut Vec::new(),
        );
        assert_eq!(
            parsed,
            Some(KeyOrdering {
                key: KeySource::Attribute("subject".into()),
                on_exhausted: crate::config::OnKeyExhausted::Park,
                pinned_ttl: Duration::from_secs(10),
                buffer: 1000,
            })
        );
    }

    #[test]
    fn redacted_endpoints_keep_no_secrets() {
        let url = reqwest::Url::parse("https://user:pw@erp.example:8443/hook/in?code=SECRET#frag").unwrap();
        assert_eq!(redacted(&url), "https://erp.example:8443/hook/in?…");
        let plain = reqwest::Url::parse("http://10.0.0.5/hook").unwrap();
        assert_eq!(redacted(&plain), "http://10.0.0.5/hook");
        let v6 = reqwest::Url::parse("http://[::1]:9000/").unwrap();
        assert_eq!(redacted(&v6), "http://[::1]:9000/");
        let target = HttpTarget {
            endpoint: url.clone(),
            method: reqwest::Method::POST,
            headers: HeaderMap::new(),
            signing_keys: Vec::new(),
        };
        assert!(!format!("{target:?}").contains("SECRET"));
        let url = reqwest::Url::parse("https://erp-user:pw-secret@erp.example:8443/hook/in?code=SECRET").unwrap();
        let text =
            format!("error sending request for url ({url}): at erp.example/hook/in?code=SECRET as erp-user:pw-secret");
        let cleaned = scrub(&text, &url);
        assert_eq!(
            cleaned,
            "error sending request for url (https://erp.example:8443/hook/in?…): at erp.example/hook/in?… as …:…"
        );
    }
}
