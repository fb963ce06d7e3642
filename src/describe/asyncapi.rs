//! The AsyncAPI 3.0 document of the bus as one participant sees it (`GET /v1/asyncapi.json`,
//! `magistral asyncapi`): the participant is the application described, so what it publishes
//! or requests is `send` and what it receives or answers is `receive`.
//!
//! Choices, each forced by the specification or by the AsyncAPI parser:
//! - Channel addresses are subject patterns with each wildcard as a parameter
//!   (`edi.inbound.{token3}`, `{tail}` for `>`), since AsyncAPI has no wildcards.
//! - Payloads are the contracts' schemas in `components/schemas`, `$ref`-ed from messages.
//!   AsyncAPI 3.0 defines no JSON Schema 2020-12 `schemaFormat` and the parser refuses unknown
//!   ones, so the schemas are given in the default format (a superset of draft-07): `$id` and
//!   `$schema` are dropped and internal `$ref`s re-pointed into the document. Each message's
//!   `externalDocs` links the authoritative 2020-12 schema served by the gateway.
//! - A request's reply has a dynamic address (the HTTP response, or a NATS inbox), so its
//!   reply channel has `address: null`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::directory_subject;
use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
use crate::contracts::Contract;
use crate::participants::Participant;
use crate::subject;

/// The AsyncAPI version written.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// A NATS server of the bus, from `nats.url` (credentials never kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    /// `host:port`.
    pub host: String,
    pub tls: bool,
}

impl NatsServer {
    /// Every server of a comma-separated `nats.url` list; entries that do not parse are
    /// left out (the connection itself reports them).
    #[must_use]
    pub fn from_urls(urls: &str, tls_required: bool) -> Vec<Self> {
        urls.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .filter_map(|u| {
                let with_scheme = if u.contains("://") { u.to_owned() } else { format!("nats://{u}") };
                let url = reqwest::Url::parse(&with_scheme).ok()?;
                let host = url.host_str()?;
                let port = url.port().unwrap_or(4222);
                Some(Self { host: format!("{host}:{port}"), tls: tls_required || url.scheme() == "tls" })
            })
            .collect()
    }
}

/// Where the document says the bus is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// The HTTP gateway's `host[:port]`.
    pub gateway: String,
    /// `https` when the gateway is reached over TLS.
    pub gateway_tls: bool,
    pub nats: Vec<NatsServer>,
}

impl Servers {
    fn gateway_url(&self, path: &str) -> String {
        format!("{}://{}{path}", if self.gateway_tls { "https" } else { "http" }, self.gateway)
    }
}

/// The document for `viewer` (the whole bus for an admin or for `None`).
#[must_use]
pub fn document(catalog: &Catalog, servers: &Servers, viewer: Option<&Participant>) -> Value {
    let whole_bus = viewer.is_none_or(|v| v.admin);
    let mut b = Builder {
        catalog,
        servers,
        channels: BTreeMap::new(),
        channel_keys: BTreeMap::new(),
        operations: BTreeMap::new(),
        messages: BTreeMap::new(),
        schemas: BTreeMap::new(),
    };
    let actors: Vec<&Participant> = match viewer {
        Some(v) if !v.admin => vec![v],
        _ => catalog.participants.iter().collect(),
    };
    for actor in actors {
        b.participant(actor);
    }
    let mut server_map = Map::new();
    server_map.insert(
        "gateway".into(),
        json!({
            "host": servers.gateway,
            "protocol": if servers.gateway_tls { "https" } else { "http" },
            "title": "magistral HTTP gateway",
            "description": "Publish: POST /v1/publish/{subject}. Request: POST /v1/request/{subject}. \
                Pull: POST /v1/subscriptions/{name}/fetch and /ack. Server-Sent Events: \
                GET /v1/subscriptions/{name}/events. Push subscriptions are POSTed to the participant's endpoint. \
                Schemas: GET /v1/contracts/{name}/{version}.",
            "security": [{"$ref": "#/components/securitySchemes/bearer"}],
        }),
    );
    for (i, nats) in servers.nats.iter().enumerate() {
        let key = if i == 0 { "nats".to_owned() } else { format!("nats-{}", i + 1) };
        let tls = if nats.tls { " over TLS" } else { "" };
        server_map.insert(
            key,
            json!({
                "host": nats.host,
                "protocol": "nats",
                "title": "NATS",
                "description": format!(
                    "The NATS server{tls} under the gateway, for NATS-native services: the same subjects, \
                     with CloudEvents headers (NATS binding). Credentials are issued by the bus's operators."
                ),
            }),
        );
    }
    let (title, id) = match viewer {
        Some(v) if !whole_bus => {
            (format!("magistral bus, as seen by {}", v.name), format!("urn:magistral:bus:{}", v.name))
        }
        _ => ("magistral bus".to_owned(), "urn:magistral:bus".to_owned()),
    };
    let mut components = Map::new();
    b.schemas.insert(HEADERS.into(), headers_schema());
    components.insert("schemas".into(), Value::Object(b.schemas.into_iter().collect()));
    components.insert("messages".into(), Value::Object(b.messages.into_iter().collect()));
    components.insert(
        "securitySchemes".into(),
        json!({"bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The participant's API token: Authorization: Bearer <token>."
        }}),
    );
    let channels = Value::Object(b.channels.into_iter().collect());
    let operations = Value::Object(b.operations.into_iter().collect());
    let components = Value::Object(components);
    // The version changes exactly when what the document describes does.
    let mut hasher = Sha256::new();
    for part in [&channels, &operations, &components] {
        hasher.update(part.to_string().as_bytes());
    }
    let version = hex::encode(&hasher.finalize()[..6]);
    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "id": id,
        "info": {
            "title": title,
            "version": version,
            "description": "Channels are NATS subjects of the bus. `send` operations are what this application \
                publishes or requests, `receive` operations what it is delivered or answers. Message data is \
                JSON checked against the contract; CloudEvents attributes travel as ce-* headers (binary mode).",
        },
        "defaultContentType": "application/json",
        "servers": Value::Object(server_map),
        "channels": channels,
        "operations": operations,
        "components": components,
    })
}

const HEADERS: &str = "cloudevents-headers";
const UNCONTRACTED: &str = "uncontracted";

/// The CloudEvents (binary mode) and delivery headers a message carries.
fn headers_schema() -> Value {
    json!({
        "type": "object",
        "description": "CloudEvents 1.0 attributes as headers (HTTP and NATS bindings, binary mode). The gateway \
            stamps ce-id, ce-source, ce-type and ce-time on what a participant publishes; a publisher may set \
            ce-type, ce-subject, ce-dataschema, ce-correlationid and Idempotency-Key. Push deliveries add the \
            Standard Webhooks headers.",
        "required": ["ce-specversion", "ce-id", "ce-source", "ce-type"],
        "properties": {
            "ce-specversion": {"type": "string", "const": "1.0"},
            "ce-id": {"type": "string", "description": "Message id, unique per publisher."},
            "ce-source": {"type": "string", "description": "The publisher: /participants/<name>."},
            "ce-type": {"type": "string", "description": "Event type."},
            "ce-time": {"type": "string", "format": "date-time"},
            "ce-subject": {"type": "string", "description": "Subject of the event within its source (e.g. an order id)."},
            "ce-dataschema": {"type": "string", "format": "uri", "description": "The contract version the data honours."},
            "ce-correlationid": {"type": "string", "description": "Business correlation id, for tracking."},
            "traceparent": {"type": "string", "description": "W3C trace context."},
            "webhook-id": {"type": "string", "description": "Push only: unique per stored message, stable across retries."},
            "webhook-timestamp": {"type": "string", "description": "Push only: Unix seconds."},
            "webhook-signature": {"type": "string", "description": "Push only: v1,<base64 HMAC-SHA256>, when signing secrets are set."}
        }
    })
}

struct Builder<'c> {
    catalog: &'c Catalog,
    servers: &'c Servers,
    channels: BTreeMap<String, Value>,
    /// Subject pattern (or `reply:` + pattern) → channel key, and the channel's message keys.
    channel_keys: BTreeMap<String, (String, Vec<String>)>,
    operations: BTreeMap<String, Value>,
    messages: BTreeMap<String, Value>,
    schemas: BTreeMap<String, Value>,
}

/// A key for a component or channel: AsyncAPI allows `[A-Za-z0-9._-]`.
fn key(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            '*' => '+',
            '>' => '#',
            _ => '_',
        })
        .collect::<String>()
        .replace('+', "any")
        .replace('#', "all")
}

fn unique(map: &BTreeMap<String, Value>, base: String) -> String {
    if !map.contains_key(&base) {
        return base;
    }
    (2..).map(|n| format!("{base}-{n}")).find(|k| !map.contains_key(k)).unwrap_or(base)
}

fn reference(path: &str) -> Value {
    json!({"$ref": path})
}

/// JSON pointer escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A channel address for a subject pattern: each wildcard a parameter.
fn address(pattern: &str) -> (String, Map<String, Value>) {
    let mut params = Map::new();
    let tokens: Vec<String> = pattern
        .split('.')
        .enumerate()
        .map(|(i, t)| match t {
            "*" => {
                let name = format!("token{}", i + 1);
                params.insert(
                    name.clone(),
                    json!({"description": format!("Any one subject token (position {}).", i + 1)}),
                );
                format!("{{{name}}}")
            }
            ">" => {
                params.insert("tail".into(), json!({"description": "One or more subject tokens, dot-separated."}));
                "{tail}".to_owned()
            }
            t => t.to_owned(),
        })
        .collect();
    (tokens.join("."), params)
}

/// A copy of a 2020-12 schema that resolves inside the document at `at` (see the module).
fn embedded(schema: &Value, at: &str) -> Value {
    fn walk(v: &mut Value, at: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match child {
                        Value::String(r) if k == "$ref" && r.starts_with('#') => {
                            *r = format!("{at}{}", &r[1..]);
                        }
                        _ => walk(child, at),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, at)),
            _ => {}
        }
    }
    let mut copy = schema.clone();
    if let Value::Object(map) = &mut copy {
        map.remove("$id");
        map.remove("$schema");
    }
    walk(&mut copy, at);
    copy
}

impl<'c> Builder<'c> {
    fn participant(&mut self, p: &'c Participant) {
        let catalog = self.catalog;
        for pattern in p.publish.patterns() {
            let (channel, messages) = self.channel(pattern);
            self.operation(
                &p.name,
                "publish",
                &channel,
                json!({
                    "action": "send",
                    "title": format!("{} publishes {pattern}", p.name),
                    "description": "POST /v1/publish/{subject} on the gateway (answer 202 once JetStream stored it), \
                        or publish on NATS for a NATS-native service. The data is checked against the contract first.",
                }),
                &messages,
            );
        }
        for sub in catalog.subscriptions.iter().filter(|s| s.participant == p.name) {
            let how = match sub.mode {
                SubscriptionMode::Push => format!(
                    "The gateway POSTs each message to {} (answer 2xx to acknowledge; retried otherwise).",
                    sub.endpoint_redacted().unwrap_or_default()
                ),
                SubscriptionMode::Pull => format!(
                    "Fetched from the gateway: POST /v1/subscriptions/{0}/fetch, then POST /v1/subscriptions/{0}/ack.",
                    sub.name
                ),
                SubscriptionMode::Stream => {
                    format!("Streamed by the gateway as Server-Sent Events: GET /v1/subscriptions/{}/events.", sub.name)
                }
            };
            for pattern in &sub.subjects {
                let (channel, messages) = self.channel(pattern);
                self.operation(
                    &p.name,
                    &format!("receive.{}", sub.name),
                    &channel,
                    json!({
                        "action": "receive",
                        "title": format!("{} receives {pattern} ({})", p.name, sub.name),
                        "description": how,
                        "x-magistral-subscription": {"name": sub.name, "mode": sub.mode},
                    }),
                    &messages,
                );
            }
        }
        for pattern in p.request.patterns() {
            let (channel, messages) = self.channel(pattern);
            let reply = self.reply(pattern);
            self.operation(
                &p.name,
                "request",
                &channel,
                json!({
                    "action": "send",
                    "title": format!("{} requests {pattern}", p.name),
                    "description": "POST /v1/request/{subject}?timeout= on the gateway; the reply is the response body.",
                    "reply": reply,
                }),
                &messages,
            );
        }
        let responders: Vec<_> = catalog.responders.iter().filter(|r| r.participant == p.name).collect();
        for r in &responders {
            for pattern in &r.subjects {
                let (channel, messages) = self.channel(pattern);
                let reply = self.reply(pattern);
                self.operation(
                    &p.name,
                    &format!("answer.{}", r.name),
                    &channel,
                    json!({
                        "action": "receive",
                        "title": format!("{} answers {pattern} ({})", p.name, r.name),
                        "description": format!(
                            "The gateway POSTs each request to {} and returns the response as the reply.",
                            crate::delivery::subscription::redacted(&r.target.endpoint)
                        ),
                        "reply": reply,
                        "x-magistral-responder": r.name,
                    }),
                    &messages,
                );
            }
        }
        // Answered natively on NATS where no responder of the gateway serves.
        for pattern in p.respond.patterns() {
            if responders.iter().flat_map(|r| &r.subjects).any(|s| subject::covers(s, pattern)) {
                continue;
            }
            let (channel, messages) = self.channel(pattern);
            let reply = self.reply(pattern);
            self.operation(
                &p.name,
                "answer",
                &channel,
                json!({
                    "action": "receive",
                    "title": format!("{} answers {pattern}", p.name),
                    "description": "Answered as a NATS-native service (a queue-group subscriber replying to the \
                        request's inbox).",
                    "reply": reply,
                }),
                &messages,
            );
        }
    }

    /// Adds an operation with the channel's messages.
    fn operation(&mut self, participant: &str, kind: &str, channel: &str, mut op: Value, messages: &[String]) {
        let id = unique(&self.operations, key(&format!("{participant}.{kind}.{channel}")));
        if let Value::Object(map) = &mut op {
            map.insert("channel".into(), reference(&format!("#/channels/{}", escape(channel))));
            let refs: Vec<Value> = messages
                .iter()
                .map(|m| reference(&format!("#/channels/{}/messages/{}", escape(channel), escape(m))))
                .collect();
            map.insert("messages".into(), Value::Array(refs));
            map.insert("x-magistral-participant".into(), json!(participant));
        }
        self.operations.insert(id, op);
    }

    /// The channel for a subject pattern (made once): key and message keys.
    fn channel(&mut self, pattern: &str) -> (String, Vec<String>) {
        if let Some(found) = self.channel_keys.get(pattern) {
            return found.clone();
        }
        let catalog = self.catalog;
        let mut contracts: Vec<&Contract> =
            catalog.contracts.iter().filter(|c| c.subjects.iter().any(|s| subject::overlap(s, pattern))).collect();
        // A directory's changes carry its values.
        for d in &catalog.directories {
            if subject::overlap(&directory_subject(&d.bucket), pattern)
                && let Some((name, version)) = &d.contract
                && let Some(c) = catalog.contracts.get(name, *version)
                && !contracts.iter().any(|k| std::ptr::eq(*k, c))
            {
                contracts.push(c);
            }
        }
        let messages = self.messages_for(&contracts);
        let (address, parameters) = address(pattern);
        let mut channel = json!({
            "address": address,
            "title": pattern,
            "messages": message_map(&messages),
        });
        if !parameters.is_empty()
            && let Value::Object(map) = &mut channel
        {
            map.insert("parameters".into(), Value::Object(parameters));
        }
        let key = unique(&self.channels, key(pattern));
        self.channels.insert(key.clone(), channel);
        self.channel_keys.insert(pattern.to_owned(), (key.clone(), messages.clone()));
        (key, messages)
    }

    /// The reply of requests on `pattern`: a channel with a dynamic address.
    fn reply(&mut self, pattern: &str) -> Value {
        let lookup = format!("reply:{pattern}");
        let (key, messages) = match self.channel_keys.get(&lookup) {
            Some(found) => found.clone(),
            None => {
                let catalog = self.catalog;
                let contracts: Vec<&Contract> = catalog
                    .contracts
                    .iter()
                    .filter(|c| c.replies.iter().any(|s| subject::overlap(s, pattern)))
                    .collect();
                let messages = self.messages_for(&contracts);
                let key = unique(&self.channels, format!("{}.reply", key(pattern)));
                self.channels.insert(
                    key.clone(),
                    json!({
                        "address": null,
                        "title": format!("replies to {pattern}"),
                        "description": "The HTTP response of POST /v1/request/{subject}, or the NATS inbox of the request.",
                        "messages": message_map(&messages),
                    }),
                );
                self.channel_keys.insert(lookup, (key.clone(), messages.clone()));
                (key, messages)
            }
        };
        json!({
            "channel": reference(&format!("#/channels/{}", escape(&key))),
            "messages": messages
                .iter()
                .map(|m| reference(&format!("#/channels/{}/messages/{}", escape(&key), escape(m))))
                .collect::<Vec<_>>(),
        })
    }

    /// Component messages for contracts (or the uncontracted message when none governs).
    fn messages_for(&mut self, contracts: &[&Contract]) -> Vec<String> {
        if contracts.is_empty() {
            self.messages.entry(UNCONTRACTED.into()).or_insert_with(|| {
                json!({
                    "name": UNCONTRACTED,
                    "title": "Any JSON",
                    "summary": "No contract governs these subjects: any JSON value.",
                    "contentType": "application/json",
                    "headers": reference(&format!("#/components/schemas/{HEADERS}")),
                    "correlationId": {"location": "$message.header#/ce-correlationid"},
                })
            });
            return vec![UNCONTRACTED.into()];
        }
        contracts.iter().map(|c| self.message(c)).collect()
    }

    fn message(&mut self, c: &Contract) -> String {
        let k = key(&format!("{}.v{}", c.name, c.version));
        if self.messages.contains_key(&k) {
            return k;
        }
        let at = format!("#/components/schemas/{}", escape(&k));
        self.schemas.insert(k.clone(), embedded(&c.schema, &at));
        let text = |f: &str| c.schema.get(f).and_then(Value::as_str).map(str::to_owned);
        let mut message = json!({
            "name": c.name,
            "title": text("title").unwrap_or_else(|| format!("{} v{}", c.name, c.version)),
            "contentType": "application/json",
            "headers": reference(&format!("#/components/schemas/{HEADERS}")),
            "payload": reference(&at),
            "correlationId": {"location": "$message.header#/ce-correlationid"},
            "externalDocs": {
                "description": "The contract's JSON Schema (2020-12), as the gateway validates it",
                "url": self.servers.gateway_url(&super::schema_path(c)),
            },
            "x-magistral-contract": {"name": c.name, "version": c.version, "dataschema": c.dataschema},
        });
        if let (Some(d), Value::Object(map)) = (text("description"), &mut message) {
            map.insert("summary".into(), json!(d));
        }
        self.messages.insert(k.clone(), message);
        k
    }
}

fn message_map(keys: &[String]) -> Value {
    let mut map = Map::new();
    for k in keys {
        let mut path = String::from("#/components/messages/");
        let _ = write!(path, "{}", escape(k));
        map.insert(k.clone(), reference(&path));
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_parameters() {
        let (a, p) = address("edi.inbound.*");
        assert_eq!(a, "edi.inbound.{token3}");
        assert!(p.contains_key("token3"));
        let (a, p) = address("$KV.prices.>");
        assert_eq!(a, "$KV.prices.{tail}");
        assert!(p.contains_key("tail"));
        assert_eq!(key("$KV.prices.>"), "_KV.prices.all");
    }

    #[test]
    fn internal_refs_are_repointed() {
        let s = json!({"$id": "https://x", "$schema": "s", "$defs": {"a": {"type": "string"}},
            "properties": {"x": {"$ref": "#/$defs/a"}, "y": {"items": [{"$ref": "#"}]}}});
        let e = embedded(&s, "#/components/schemas/k");
        assert_eq!(e["properties"]["x"]["$ref"], "#/components/schemas/k/$defs/a");
        assert_eq!(e["properties"]["y"]["items"][0]["$ref"], "#/components/schemas/k");
        assert!(e.get("$id").is_none() && e.get("$schema").is_none());
    }

    #[test]
    fn nats_urls_without_credentials() {
        let s = NatsServer::from_urls("nats://u:p@a:4223, tls://b ,c:1", false);
        assert_eq!(
            s,
            vec![
                NatsServer { host: "a:4223".into(), tls: false },
                NatsServer { host: "b:4222".into(), tls: true },
                NatsServer { host: "c:1".into(), tls: false },
            ]
        );
    }
}
