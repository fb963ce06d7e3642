//! Configuration: built-in defaults < `magistral.toml` < `MAGISTRAL_*` environment
//! (figment), parsed once and validated before anything starts.
//!
//! This module only reads settings; [`crate::catalog`] turns them into participants,
//! contracts and streams and reports every problem it finds, naming file and field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

mod locate;

/// Every setting of the gateway. Each default sits in [`Default`] with its reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Folder of NATS stream-config JSON files, relative to the config file.
    pub streams_dir: PathBuf,
    /// Folder of JSON Schema contracts, relative to the config file.
    pub contracts_dir: PathBuf,
    /// Refuse publishes to subjects that no contract is bound to.
    pub require_contract: bool,
    pub nats: NatsConfig,
    pub limits: Limits,
    pub log: LogConfig,
    /// OpenTelemetry traces, exported over OTLP/HTTP; off unless an endpoint is given.
    pub traces: TracesConfig,
    /// The operator console in the browser (`/console`).
    pub console: ConsoleConfig,
    /// Contract bindings: which schema file governs which subjects.
    pub contracts: Vec<ContractBinding>,
    /// Connected systems, by name.
    pub participants: BTreeMap<String, ParticipantConfig>,
    /// Push subscriptions, by name (the name is part of consumer and subject names).
    pub subscriptions: BTreeMap<String, SubscriptionConfig>,
    /// HTTP endpoints that answer requests on subjects, by name.
    pub responders: BTreeMap<String, ResponderConfig>,
    /// Reference books kept in JetStream KV buckets, by name (= bucket name).
    pub directories: BTreeMap<String, DirectoryConfig>,
    /// Inbound adapters for what systems really send (`POST /v1/inbound/<name>`).
    pub inbound: BTreeMap<String, InboundConfig>,
    /// Spreadsheet imports (`POST /v1/import/<name>`): CSV/XLSX rows as messages.
    pub imports: BTreeMap<String, ImportConfig>,
    /// The gateway's own streams: dead letters, delivery status events, replays.
    pub system: SystemConfig,
    /// How often configuration files are checked for changes, a fallback for file systems
    /// that send no change events (0 = no poll: file events and SIGHUP only).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The file these settings came from; relative paths resolve against its folder.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Loopback by default: exposing the bus is a deliberate act (Helm sets 0.0.0.0).
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            streams_dir: PathBuf::from("streams"),
            contracts_dir: PathBuf::from("contracts"),
            // Off by default so a first subject can be tried before its contract exists;
            // the reference example turns it on.
            require_contract: false,
            nats: NatsConfig::default(),
            limits: Limits::default(),
            log: LogConfig::default(),
            traces: TracesConfig::default(),
            console: ConsoleConfig::default(),
            contracts: Vec::new(),
            participants: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            responders: BTreeMap::new(),
            directories: BTreeMap::new(),
            inbound: BTreeMap::new(),
            imports: BTreeMap::new(),
            system: SystemConfig::default(),
            // Changes are seen at once through file events; the poll only backs them up (network
            // file systems send none), and hashing a few small files is cheap.
            reload_interval: Duration::from_secs(5),
            source: None,
        }
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// One URL or several, comma-separated (cluster seed list).
    pub url: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A `.creds` file (JWT + nkey seed) for decentralised auth.
    pub creds_file: Option<PathBuf>,
    /// Extra root CA to trust (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    pub tls_required: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            // Long enough for a TLS handshake across a data centre, short enough that a
            // wrong URL fails a deployment quickly.
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Bounds on what one request may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest single-message body. NATS's default `max_payload` is 1 MiB, and headers
    /// need room too, so larger messages would be refused by the server anyway.
    pub max_body_bytes: usize,
    /// Largest batch body (`POST /v1/publish`).
    pub max_batch_bytes: usize,
    /// Most items in one batch.
    pub max_batch_items: usize,
    /// Deepest JSON nesting accepted; business documents rarely pass 10, and deep nesting
    /// is a cheap way to make validators work hard.
    pub max_json_depth: usize,
    /// Longest subject, in bytes.
    pub max_subject_length: usize,
    /// How long to wait for JetStream's PubAck before answering 504.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Publishes waiting for their PubAck at once; past it the gateway answers 503 rather
    /// than queue without bound.
    pub max_in_flight_publishes: usize,
    /// Request/reply wait when the requester names none (`?timeout=`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest `?timeout=` a requester may ask for.
    #[serde(with = "humantime_serde")]
    pub max_request_timeout: Duration,
    /// Seconds suggested in `Retry-After` when NATS is unavailable.
    pub retry_after_seconds: u64,
    /// Most messages one `fetch` returns.
    pub max_fetch: usize,
    /// Longest long-poll `wait` of a `fetch`.
    #[serde(with = "humantime_serde")]
    pub max_fetch_wait: Duration,
    /// Server-Sent Event streams one participant may hold open at once.
    pub max_streams_per_participant: usize,
    /// How often an idle event stream sends a comment so proxies keep it open.
    #[serde(with = "humantime_serde")]
    pub sse_heartbeat: Duration,
    /// How long shutdown waits for in-flight requests before closing anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a client may take to send the request line and headers; a slow-loris
    /// connection is closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body (`body-timeout`, 408).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest silence between two pieces of a request body (`body-timeout`, 408): a client
    /// that stops sending mid-body is cut off long before `body_read_timeout`.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Open client connections per replica; past it new connections wait in the kernel's
    /// accept queue instead of taking memory.
    pub max_connections: usize,
    /// Requests one participant may have in flight at once on a replica (`rate-limited`, 429);
    /// one runaway system cannot take every slot. 0 turns the bound off.
    pub max_in_flight_per_participant: usize,
    /// Publishes per second one participant may make on a replica (a token bucket; batch items
    /// count one each). 0 (the default) turns the rate limit off.
    pub publish_rate_per_participant: f64,
    /// Burst of the publish rate limit: publishes allowed at once after an idle spell.
    pub publish_burst_per_participant: u32,
    /// Most fields in one form-encoded body (Bitrix24 inbound routes).
    pub max_form_fields: usize,
    /// Deepest bracket nesting of a form key (`data[a][b]` is 3).
    pub max_form_depth: usize,
    /// Contract violations listed in a `contract-violation` answer (the total is counted
    /// apart), so an answer stays small whatever the body.
    pub max_violations_reported: usize,
    /// Most CloudEvents attributes (extensions included) one message may carry.
    pub max_event_attributes: usize,
    /// Largest reply a responder's HTTP endpoint may answer with.
    pub max_reply_bytes: usize,
    /// Largest file `POST /v1/import/{route}` takes (CSV, XLSX or ZIP), as received.
    pub max_import_bytes: usize,
    /// Most data rows one import may hold, all files of a ZIP together (`too-many-items`);
    /// counted while reading, so a larger file is refused at the row past it.
    pub max_import_rows: usize,
    /// Most columns of one row.
    pub max_import_columns: usize,
    /// Longest cell, in bytes of UTF-8.
    pub max_import_cell_bytes: usize,
    /// Most entries of a ZIP (an XLSX is a ZIP too).
    pub max_import_zip_entries: usize,
    /// Most bytes a ZIP (or XLSX) may expand to, all entries together; measured while
    /// inflating, never taken from the archive's own claims.
    pub max_import_expanded_bytes: usize,
    /// Most a ZIP may expand, as a multiple of its size: a zip bomb is refused long before
    /// `max_import_expanded_bytes`.
    pub max_import_expansion_ratio: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_items: 1000,
            max_json_depth: 32,
            max_subject_length: 256,
            // A JetStream R3 ack takes milliseconds; 5 s covers a leader election.
            publish_timeout: Duration::from_secs(5),
            // The async-nats default ack window is 5,000; stay under it so the client
            // never blocks a request silently.
            max_in_flight_publishes: 4096,
            // A live question to an ERP: seconds, not minutes; a page is waiting for it.
            request_timeout: Duration::from_secs(5),
            max_request_timeout: Duration::from_secs(60),
            retry_after_seconds: 2,
            max_fetch: 1000,
            // Long enough to save round trips, short enough for proxies' idle timeouts.
            max_fetch_wait: Duration::from_secs(30),
            max_streams_per_participant: 16,
            sse_heartbeat: Duration::from_secs(15),
            // Kubernetes' default grace period is 30 s; finish before it.
            drain_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            // A 16 MiB batch over a slow mobile link still arrives in well under a minute.
            body_read_timeout: Duration::from_secs(60),
            // Mobile links stall for a few seconds; ten without a byte is a stuck client.
            body_idle_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_in_flight_per_participant: 1024,
            publish_rate_per_participant: 0.0,
            publish_burst_per_participant: 100,
            // A Bitrix24 deal with every field filled has a few hundred fields.
            max_form_fields: 2000,
            max_form_depth: 8,
            max_violations_reported: 100,
            max_event_attributes: 64,
            max_reply_bytes: 1024 * 1024,
            // A NAV or 1C report of a few thousand lines is well under a megabyte as XLSX.
            max_import_bytes: 16 * 1024 * 1024,
            // Ten batches' worth: a day's orders or a whole price list, not a data warehouse.
            max_import_rows: 10_000,
            // Reports rarely pass 50 columns; 256 is Excel 2003's own limit.
            max_import_columns: 256,
            // Generous for a comment cell; a cell is one field of one message.
            max_import_cell_bytes: 32 * 1024,
            // An XLSX holds a dozen parts; a ZIP of a few reports.
            max_import_zip_entries: 64,
            max_import_expanded_bytes: 128 * 1024 * 1024,
            // XLSX sheet XML compresses 10-20 times; 100 leaves room and stops bombs (1000+).
            max_import_expansion_ratio: 100,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `magistral=debug,async_nats=warn`.
    pub level: String,
    /// One line per HTTP request (target `magistral::access`): method, route, status,
    /// participant, duration.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into(), access: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Traces: spans of publishes, delivery attempts, requests and inbound calls, sent to an
/// OpenTelemetry collector over OTLP/HTTP (protobuf). Read at start (a reload does not change
/// them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Base URL of the collector's OTLP/HTTP receiver, e.g. `http://otel-collector:4318`;
    /// spans are POSTed to `<url>/v1/traces`. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` when set, else no traces at all.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans. Unset: `OTEL_SERVICE_NAME`, else `magistral`.
    pub service_name: Option<String>,
    /// Share of traces started here that are recorded, 0.0-1.0; a caller's `traceparent`
    /// decides for its own trace (parent-based sampling).
    pub sampling_ratio: f64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            // Off: exporting is a deliberate act, and an unset collector costs nothing.
            otlp_endpoint: None,
            service_name: None,
            // Every trace once an operator turns traces on: a bus carries business messages,
            // not clicks, and a missing trace is the one asked about; lower it for volume.
            sampling_ratio: 1.0,
        }
    }
}

impl TracesConfig {
    /// What is wrong with these settings (checked at load, so `magistral check` names it).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            problems.push(("traces.sampling_ratio", format!("{} is not between 0.0 and 1.0", self.sampling_ratio)));
        }
        if let Some(url) = &self.otlp_endpoint {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                Ok(_) => problems.push(("traces.otlp_endpoint", format!("{url:?} is not an http(s) URL"))),
                Err(e) => problems.push(("traces.otlp_endpoint", format!("{url:?}: {e}"))),
            }
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            problems.push(("traces.service_name", "must not be empty".to_owned()));
        }
        problems
    }
}

/// One schema file bound to subject patterns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractBinding {
    /// Contract name, e.g. `sales-order`.
    pub name: String,
    /// Version; several versions of one contract may be loaded at once.
    pub version: u32,
    /// Schema file, relative to `contracts_dir`.
    pub file: PathBuf,
    /// Subject patterns whose data (published, or sent as a request) must honour the schema.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Request subject patterns whose replies must honour the schema.
    #[serde(default)]
    pub replies: Vec<String>,
    /// How this version must relate to the previous one (`magistral check`); `backward` by
    /// default, so publishers of the previous version are never refused by a new one.
    #[serde(default)]
    pub compatibility: crate::contracts::compat::Compatibility,
}

/// A connected system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    /// Free text for operators.
    #[serde(default)]
    pub description: Option<String>,
    /// API tokens; any of them authenticates the participant (several allow rotation).
    pub tokens: Vec<TokenSource>,
    /// Subject patterns the participant may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Subject patterns the participant may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// May operate every subscription (pause, resume, replay), not only its own.
    #[serde(default)]
    pub admin: bool,
    /// Subject patterns the participant may send requests to (`POST /v1/request/...`).
    #[serde(default)]
    pub request: Vec<String>,
    /// Subject patterns the participant may answer as a responder.
    #[serde(default)]
    pub respond: Vec<String>,
    /// Directories (bucket names, or `*`) the participant may read.
    #[serde(default)]
    pub kv_read: Vec<String>,
    /// Directories (bucket names, or `*`) the participant may write.
    #[serde(default)]
    pub kv_write: Vec<String>,
    /// Contract names the participant may register over the API
    /// (`PUT /v1/contracts/{name}/{version}`): a name, or a prefix ending in `*` (`crm.*`).
    #[serde(default)]
    pub contracts: Vec<String>,
}

/// An HTTP endpoint of a participant that answers requests on subjects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponderConfig {
    /// The participant answering; it needs `respond` permission for the subjects.
    pub participant: String,
    /// Subjects (wildcards allowed) this endpoint answers.
    pub subjects: Vec<String>,
    pub endpoint: String,
    #[serde(default)]
    pub method: DeliveryMethod,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretValue>,
    /// Per-request HTTP timeout (the requester's own timeout may be shorter).
    #[serde(default = "defaults::delivery_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests forwarded at once, per gateway replica.
    #[serde(default = "defaults::max_in_flight")]
    pub max_concurrency: u32,
    /// jq reshaping the request before it reaches the endpoint (inline or from a file).
    #[serde(default)]
    pub request_transform: Option<String>,
    #[serde(default)]
    pub request_transform_file: Option<PathBuf>,
    /// jq reshaping the endpoint's answer before it is replied.
    #[serde(default)]
    pub reply_transform: Option<String>,
    #[serde(default)]
    pub reply_transform_file: Option<PathBuf>,
    #[serde(default)]
    pub signing_secrets: Vec<SecretValue>,
}

/// An inbound adapter: a system's own request shape in, a CloudEvent on a subject out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    pub kind: InboundKind,
    /// The participant the messages are published as (needs publish permission).
    pub participant: String,
    /// Where the messages are published.
    pub subject: String,
    /// jq reshaping the parsed request into the subject's data.
    #[serde(default)]
    pub transform: Option<String>,
    #[serde(default)]
    pub transform_file: Option<PathBuf>,
    /// Bitrix24: the `auth[application_token]` its event handlers send.
    #[serde(default)]
    pub application_token: Option<SecretValue>,
    /// Business Central: the `clientState` given when the webhook subscription was made.
    #[serde(default)]
    pub client_state: Option<SecretValue>,
}

/// A spreadsheet import route: each data row of a CSV or XLSX (or of the files of a ZIP)
/// becomes one message on `subject`, published as the caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// The participant whose files these are; it (or an admin with publish permission)
    /// may post them.
    pub participant: String,
    /// Where each row is published; its contract checks every row.
    pub subject: String,
    /// Message member ← column header: `{ sku = "Item No.", available = "Qty. Available" }`;
    /// a member may be a JSON pointer (`/customer/name`). Cells are typed as the contract
    /// types the member (CSV text `"12"` becomes `12` for an integer).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Or a jq program from the row (an object of header → cell) to the message.
    #[serde(default)]
    pub transform: Option<String>,
    #[serde(default)]
    pub transform_file: Option<PathBuf>,
    /// XLSX: the sheet to read; the first one by default.
    #[serde(default)]
    pub sheet: Option<String>,
    /// CSV: the charset when neither the content type nor a byte-order mark names one
    /// (1C and Excel write windows-1251 on Russian systems); UTF-8 by default.
    #[serde(default)]
    pub charset: Option<String>,
    /// CSV: the field separator; by default guessed from the header line (`,`, `;` or tab).
    #[serde(default)]
    pub delimiter: Option<char>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboundKind {
    /// Bitrix24 outbound event handlers: form-encoded, bracketed keys.
    Bitrix24,
    /// Business Central webhook subscriptions: handshake and `{"value": [...]}` notifications.
    BusinessCentral,
    /// Plain JSON with the participant's bearer token (1C HTTP services, OKTELL scenarios).
    Json,
}

/// A reference book in a JetStream KV bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The participant that owns the book; it may always read and write it.
    pub owner: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Revisions kept per key (1-64).
    #[serde(default = "defaults::history")]
    pub history: i64,
    /// How long a value lives without being rewritten; none = forever.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    #[serde(default = "defaults::replicas")]
    pub replicas: usize,
    /// Contract name every value must honour (its newest version, or `contract_version`).
    #[serde(default)]
    pub contract: Option<String>,
    #[serde(default)]
    pub contract_version: Option<u32>,
}

/// A participant's standing interest in subjects, delivered by HTTP push.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// The participant that owns it; it needs subscribe permission for every subject.
    pub participant: String,
    /// Subject patterns (filters) to deliver.
    pub subjects: Vec<String>,
    /// `push` (the gateway calls `endpoint`), `pull` (the participant fetches over HTTP,
    /// e.g. from behind a firewall) or `stream` (Server-Sent Events, for apps and browsers).
    #[serde(default)]
    pub mode: SubscriptionMode,
    /// Where to deliver (http or https); push mode only.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A jq program reshaping the data before it is delivered.
    #[serde(default)]
    pub transform: Option<String>,
    /// The same, from a file (relative to the config file).
    #[serde(default)]
    pub transform_file: Option<PathBuf>,
    /// Pull only: the columns of `GET .../export.xlsx` and `.csv`, in order, each a header and
    /// a JSON pointer into the data; by default the contract's top-level properties.
    #[serde(default)]
    pub export_columns: Vec<ExportColumn>,
    /// Push only: deliver bodies in this charset (a WHATWG label: `windows-1251`, `koi8-r`, …)
    /// instead of UTF-8, for receivers that cannot read UTF-8; none = UTF-8.
    #[serde(default)]
    pub charset: Option<String>,
    #[serde(default)]
    pub method: DeliveryMethod,
    /// Extra request headers, e.g. `Authorization` for an ERP web service.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretValue>,
    /// Per-attempt HTTP timeout.
    #[serde(default = "defaults::delivery_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Delay before each retry; the last one repeats.
    #[serde(default = "defaults::retry_schedule")]
    pub retry_schedule: Vec<Delay>,
    /// Attempts before a message is dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// One message in flight across all replicas, in stream order.
    #[serde(default)]
    pub ordered: bool,
    /// Ordered only: when a message exhausts its attempts, dead-letter it and go on, or
    /// block the subscription until an operator acts.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Unordered and key-ordered: deliveries in flight at once (per subscription, all replicas).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: u32,
    /// Per-key ordering: messages with the same key in stream order, one at a time; different
    /// keys in parallel (up to `max_in_flight`). Push and pull; not with `ordered`.
    #[serde(default)]
    pub ordering: Option<OrderingConfig>,
    /// Deliveries per second per gateway replica; none = unlimited.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Standard Webhooks secrets (`whsec_<base64>`); several sign at once during rotation.
    #[serde(default)]
    pub signing_secrets: Vec<SecretValue>,
    /// Retry 4xx answers (except 410) instead of dead-lettering them at once.
    #[serde(default)]
    pub retry_client_errors: bool,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe delivery.
    #[serde(default = "defaults::breaker_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Where a new subscription starts: `new` messages only, or `all` the stream holds.
    #[serde(default)]
    pub start: StartPosition,
    /// Pin the subscription to this version of its subjects' contract: messages of a newer
    /// version are converted by `down_conversion` and checked against it before delivery.
    #[serde(default)]
    pub contract_version: Option<u32>,
    /// The contract pinned, when the subjects are governed by several.
    #[serde(default)]
    pub contract: Option<String>,
    /// jq from a newer version's data to the pinned version's (inline or from a file).
    #[serde(default)]
    pub down_conversion: Option<String>,
    #[serde(default)]
    pub down_conversion_file: Option<PathBuf>,
    /// How long a delivery may go silent before JetStream gives the message to another
    /// replica (a crashed one's). In-progress acks every third of it keep slow endpoints
    /// from causing duplicates. None: see [`SubscriptionConfig::ack_wait`].
    #[serde(default, with = "humantime_serde")]
    pub ack_wait: Option<Duration>,
}

impl SubscriptionConfig {
    /// `ack_wait`, or its default: 5 s for push (a crashed replica's or a dead consumer
    /// leader's messages come back within seconds; attempts of any length, waits between
    /// retries and messages waiting behind their key send in-progress acks every third of it,
    /// and an ordered or key-ordered message is attempted again only while those acks are
    /// confirmed), 30 s for pull (a participant works through what it fetched).
    #[must_use]
    pub fn ack_wait(&self) -> Duration {
        let push = self.mode == SubscriptionMode::Push;
        self.ack_wait.unwrap_or(if push { defaults::push_ack_wait() } else { defaults::ack_wait() })
    }
}

mod defaults {
    use std::time::Duration;

    // An ERP web service answering a sales order may take seconds; 10 s bounds a hung one.
    pub(super) fn delivery_timeout() -> Duration {
        Duration::from_secs(10)
    }
    // Internal systems: quick first retries for blips, then back off to hourly.
    pub(super) fn retry_schedule() -> Vec<super::Delay> {
        [1, 5, 30, 120, 600, 1800, 3600].map(|s| super::Delay(Duration::from_secs(s))).to_vec()
    }
    // 1s..1h then hourly: about a day of trying before a person must look.
    pub(super) fn max_attempts() -> u32 {
        30
    }
    pub(super) fn max_in_flight() -> u32 {
        32
    }
    // Long enough to ride out a slow pull, short enough that a crash costs seconds.
    pub(super) fn pinned_ttl() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn ordering_buffer() -> u32 {
        1000
    }
    pub(super) fn breaker_failures() -> u32 {
        5
    }
    pub(super) fn ack_wait() -> Duration {
        Duration::from_secs(30)
    }
    // Within 10 s of a replica's crash or a consumer leader's election, every message the dead
    // one held is delivered again (docs/benchmarks.md, "Recovery time").
    pub(super) fn push_ack_wait() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn history() -> i64 {
        1
    }
    pub(super) fn replicas() -> usize {
        1
    }
    pub(super) fn breaker_cooldown() -> Duration {
        Duration::from_secs(30)
    }
}

/// `ordering = { key = "/order_id" }`: what a message's ordering key is and what happens to a
/// key whose head message runs out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderingConfig {
    /// `/pointer` into the JSON data, `ce:<attribute>` (a CloudEvents attribute such as
    /// `ce:subject` or an extension), or `subject:<n>` (the n-th token of the NATS subject,
    /// counted from 1).
    pub key: String,
    /// When a key's head message has used all its attempts: `dead-letter` it and release the
    /// key, or `park` the key until an operator skips the message or retries it.
    #[serde(default)]
    pub on_exhausted: OnKeyExhausted,
    /// How long a replica keeps the subscription after it stops pulling (a crash, a lost
    /// connection) before another replica takes over.
    #[serde(default = "defaults::pinned_ttl", with = "humantime_serde")]
    pub pinned_ttl: Duration,
    /// Messages the delivering replica may hold unacknowledged (in flight and waiting behind
    /// their key), across all keys.
    #[serde(default = "defaults::ordering_buffer")]
    pub buffer: u32,
}

/// What a key-ordered subscription does when a key's head message exhausts its attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnKeyExhausted {
    #[default]
    DeadLetter,
    Park,
}

/// One column of a spreadsheet export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportColumn {
    /// The header written in the first row.
    pub header: String,
    /// A JSON pointer into the message data (`/customer/name`); objects and arrays are
    /// written as JSON text.
    pub pointer: String,
}

/// A duration written as `"30s"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Delay(#[serde(with = "humantime_serde")] pub Duration);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeliveryMethod {
    #[default]
    Post,
    Put,
    Patch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionMode {
    #[default]
    Push,
    Pull,
    Stream,
}

impl fmt::Display for SubscriptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Push => "push",
            Self::Pull => "pull",
            Self::Stream => "stream",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExhausted {
    #[default]
    DeadLetter,
    Block,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    #[default]
    New,
    All,
}

/// A value given literally, or read from an environment variable or a file.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretValue {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(_) => f.write_str("Literal(<redacted>)"),
            Self::Env { env } => write!(f, "Env({env})"),
            Self::File { file } => write!(f, "File({})", file.display()),
        }
    }
}

/// The gateway's own streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    /// Replicas of the system streams and KV bucket (3 on a NATS cluster).
    pub replicas: usize,
    /// How long dead letters are kept.
    #[serde(with = "humantime_serde")]
    pub dead_letter_max_age: Duration,
    /// How long delivery status events are kept.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// Keep the message-tracking index (`GET /v1/messages/...`).
    pub tracking: bool,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            // Long enough to survive a holiday weekend before someone replays them.
            dead_letter_max_age: Duration::from_secs(30 * 86_400),
            events_max_age: Duration::from_secs(7 * 86_400),
            // Costs one core NATS publish per stored message and nothing per healthy delivery.
            tracking: true,
        }
    }
}

/// Where a participant's token comes from. The token itself is never in the config file.
#[derive(Clone)]
pub enum TokenSource {
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    Sha256(String),
    /// Name of an environment variable holding the token.
    Env(String),
    /// Path of a file holding the token (a mounted Kubernetes secret).
    File(PathBuf),
    /// A bare string where a `{ sha256 = ... }` table belongs: read so that the check can
    /// answer with how to hash it, never accepted.
    Plain(Secret),
}

impl<'de> Deserialize<'de> for TokenSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "lowercase")]
        enum Tagged {
            Sha256(String),
            Env(String),
            File(PathBuf),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Tagged(Tagged),
            Plain(String),
        }
        Ok(match Entry::deserialize(deserializer)? {
            Entry::Tagged(Tagged::Sha256(hash)) => Self::Sha256(hash),
            Entry::Tagged(Tagged::Env(name)) => Self::Env(name),
            Entry::Tagged(Tagged::File(path)) => Self::File(path),
            Entry::Plain(token) => Self::Plain(Secret(token)),
        })
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sha256(_) => f.write_str("Sha256(<redacted>)"),
            Self::Env(name) => write!(f, "Env({name})"),
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

/// The operator console (`/console`): sessions are signed cookies (docs/console.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Signs session cookies. Give every replica the same key so a session works on any of
    /// them; without one each process makes its own, and sessions end with it.
    pub session_key: Option<Secret>,
    /// How long a sign-in lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the cookie `Secure`: `true` always, `false` never; unset, when the request came
    /// over TLS (a terminating proxy's `X-Forwarded-Proto: https`).
    pub secure_cookie: Option<bool>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_key: None,
            // A working day: an operator signs in once a shift, a lost laptop's cookie dies overnight.
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookie: None,
        }
    }
}

impl ConsoleConfig {
    /// What is wrong with these settings (checked at load, so `magistral check` names it).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        // HMAC-SHA256 is as strong as its key: a short one could be guessed offline from a cookie.
        if self.session_key.as_ref().is_some_and(|k| k.expose().len() < 32) {
            problems
                .push(("console.session_key", "must be at least 32 bytes (e.g. `openssl rand -hex 32`)".to_owned()));
        }
        if self.session_ttl.is_zero() {
            problems.push(("console.session_ttl", "must be longer than 0 s".to_owned()));
        }
        problems
    }
}

/// A string that is never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One thing wrong with the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file at fault (config file, stream file or schema file), when known.
    pub file: Option<PathBuf>,
    /// Dotted path of the field at fault, e.g. `participants.bitrix.publish[0]`.
    pub field: String,
    pub message: String,
    /// The line of `field` in `file` (1-based), when the file is TOML and holds the field.
    pub line: Option<usize>,
}

impl ConfigProblem {
    #[must_use]
    pub fn new(file: Option<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file, field: field.into(), message: message.into(), line: None }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: {}: {}", file.display(), self.field, self.message),
            (Some(file), None) => write!(f, "{}: {}: {}", file.display(), self.field, self.message),
            (None, _) => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Everything wrong with a configuration, reported at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The same problems, each in a TOML file given the line its field is on.
    #[must_use]
    pub fn located(mut self) -> Self {
        let mut texts: BTreeMap<PathBuf, Option<String>> = BTreeMap::new();
        for problem in &mut self.problems {
            let Some(file) = problem.file.as_ref().filter(|f| f.extension().is_some_and(|e| e == "toml")) else {
                continue;
            };
            let text = texts.entry(file.clone()).or_insert_with(|| std::fs::read_to_string(file).ok());
            if problem.line.is_none() {
                problem.line = text.as_deref().and_then(|t| locate::line_of(t, &problem.field));
            }
        }
        self
    }
}

impl From<ConfigProblem> for ConfigError {
    fn from(problem: ConfigProblem) -> Self {
        Self { problems: vec![problem] }
    }
}

/// Top-level settings holding one value (`MAGISTRAL_LISTEN`), for filtering variables.
const VALUE_KEYS: &[&str] = &["listen", "streams_dir", "contracts_dir", "require_contract", "reload_interval"];
/// Top-level tables, set through nested variables (`MAGISTRAL_NATS__URL`).
const TABLE_KEYS: &[&str] = &[
    "nats",
    "limits",
    "log",
    "traces",
    "console",
    "contracts",
    "participants",
    "subscriptions",
    "responders",
    "directories",
    "inbound",
    "imports",
    "system",
];

impl Config {
    /// Layers defaults < `path` (when given) < `MAGISTRAL_*` environment variables
    /// (`MAGISTRAL_NATS__URL` sets `nats.url`).
    #[must_use]
    pub fn figment(path: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only variables naming a setting: `MAGISTRAL_CONFIG` (the file itself)
        // and those Kubernetes injects for a Service named magistral (`MAGISTRAL_PORT`, ...)
        // are not settings and must not fail the start.
        figment.merge(Env::prefixed("MAGISTRAL_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            match key.split_once('.') {
                Some((top, _)) => TABLE_KEYS.contains(&top),
                None => VALUE_KEYS.contains(&key.as_str()),
            }
        }))
    }

    /// Reads and parses the configuration.
    ///
    /// # Errors
    /// A missing or unreadable file, TOML syntax, an unknown key or a wrongly typed value;
    /// each names the key, the file (or variable) it came from, and its line.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match Self::load_all(path) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigError { problems }.located()),
        }
    }

    /// Reads the configuration and every problem in it. A setting that does not read (a bad
    /// duration, an unknown key, a wrong type) is reported and left out — its default applies,
    /// or the item holding it is left out when it cannot do without it — and reading goes on,
    /// so the catalog's checks still run on the rest: `magistral check` lists everything at
    /// once. The configuration is `None` only when nothing could be read (no file, TOML syntax).
    #[must_use]
    pub fn load_all(path: Option<&Path>) -> (Option<Self>, Vec<ConfigProblem>) {
        if let Some(path) = path
            && !path.is_file()
        {
            let message = if path.exists() { "not a file" } else { "no such file" };
            return (None, vec![ConfigProblem::new(Some(path.to_path_buf()), "(file)", message)]);
        }
        let figment = Self::figment(path);
        // Everything as plain data first: TOML syntax ends the reading here.
        let mut data: figment::value::Value = match figment.extract() {
            Ok(data) => data,
            Err(err) => return (None, err.into_iter().map(|e| problem_of(&e, path, true)).collect()),
        };
        let mut problems = Vec::new();
        // What was left out so far, so the "missing field" it causes is not reported again.
        let mut left_out: Vec<Vec<String>> = Vec::new();
        let mut current = figment;
        let mut first = true;
        // Each pass leaves out at least one key; a configuration has far fewer bad ones.
        for _ in 0..256 {
            let err =
                match current.extract::<Config>() {
                    Ok(mut config) => {
                        config.source = path.map(Path::to_path_buf);
                        problems.extend(
                            config.traces.problems().into_iter().chain(config.console.problems()).map(
                                |(field, message)| ConfigProblem::new(path.map(Path::to_path_buf), field, message),
                            ),
                        );
                        config.resolve_nats_files();
                        return (Some(config), problems);
                    }
                    Err(err) => err,
                };
            let mut progressed = false;
            for e in err {
                let mut key = e.path.clone();
                let mut consequence = false;
                match &e.kind {
                    figment::error::Kind::UnknownField(name, _) if key.last() != Some(name) => key.push(name.clone()),
                    figment::error::Kind::MissingField(name) => {
                        let mut full = key.clone();
                        full.push(name.to_string());
                        consequence = left_out.contains(&full);
                    }
                    _ => {}
                }
                if !consequence {
                    problems.push(problem_of(&e, path, first));
                }
                if !key.is_empty() && remove(&mut data, &key) {
                    left_out.push(key);
                    progressed = true;
                }
            }
            if !progressed {
                return (None, problems);
            }
            // Later passes read the data left; their problems are reported as the file's.
            current = Figment::from(figment::providers::Serialized::defaults(&data));
            first = false;
        }
        (None, problems)
    }

    /// NATS credential and TLS files resolve against the config file, like every path.
    fn resolve_nats_files(&mut self) {
        let base = self.base_dir();
        for file in [
            &mut self.nats.creds_file,
            &mut self.nats.tls_ca_file,
            &mut self.nats.tls_cert_file,
            &mut self.nats.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }

    /// The folder relative paths are resolved against.
    #[must_use]
    pub fn base_dir(&self) -> PathBuf {
        self.source.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
    }

    #[must_use]
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.base_dir().join(path) }
    }
}

/// A figment error as a problem: the file (or the provider, e.g. "`MAGISTRAL_` environment
/// variable(s)") and the field written as everywhere else (`participants.nav.tokens[0]`).
/// Past the `first` pass the data read again carries no file of its own: the file's it is.
fn problem_of(e: &figment::Error, path: Option<&Path>, first: bool) -> ConfigProblem {
    let file = e
        .metadata
        .as_ref()
        .filter(|_| first)
        .map(|m| {
            m.source
                .as_ref()
                .and_then(|s| s.file_path().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(m.name.to_string()))
        })
        .or_else(|| path.map(Path::to_path_buf));
    let mut field = String::new();
    for part in &e.path {
        if part.parse::<usize>().is_ok() {
            field.push_str(&format!("[{part}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(part);
        }
    }
    if field.is_empty() {
        field = "(top level)".into();
    }
    let mut message = e.kind.to_string();
    if let figment::error::Kind::MissingField(name) = &e.kind {
        message = format!("missing field `{name}`");
    }
    ConfigProblem::new(file, field, message)
}

/// Leaves the value at `key` out of `data`; false when there is none.
fn remove(data: &mut figment::value::Value, key: &[String]) -> bool {
    use figment::value::Value;
    let Some((last, parents)) = key.split_last() else { return false };
    let mut node = data;
    for part in parents {
        node = match node {
            Value::Dict(_, dict) => match dict.get_mut(part) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(_, items) => match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Dict(_, dict) => dict.remove(last).is_some(),
        Value::Array(_, items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;

    #[test]
    fn a_short_session_key_or_no_session_time_is_refused() {
        let ok = ConsoleConfig { session_key: Some(Secret("k".repeat(32))), ..ConsoleConfig::default() };
        assert!(ok.problems().is_empty());
        let short = ConsoleConfig { session_key: Some(Secret("k".repeat(31))), ..ConsoleConfig::default() };
        assert_eq!(short.problems()[0].0, "console.session_key");
        let zero = ConsoleConfig { session_ttl: Duration::ZERO, ..ConsoleConfig::default() };
        assert_eq!(zero.problems()[0].0, "console.session_ttl");
        assert_eq!(format!("{:?}", ok.session_key), "Some(<redacted>)");
    }
}

#[cfg(test)]
mod ack_wait_tests {
    use super::*;

    fn sub(extra: serde_json::Value) -> SubscriptionConfig {
        let mut v = serde_json::json!({"participant": "nav", "subjects": ["orders.created"], "endpoint": "http://127.0.0.1:1/hook"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ack_wait_defaults_to_seconds_for_push_only() {
        assert_eq!(sub(serde_json::json!({})).ack_wait(), Duration::from_secs(5));
        assert_eq!(sub(serde_json::json!({"ordered": true})).ack_wait(), Duration::from_secs(5));
        assert_eq!(sub(serde_json::json!({"ordering": {"key": "subject"}})).ack_wait(), Duration::from_secs(5));
        assert_eq!(
            sub(serde_json::json!({"mode": "pull", "ordering": {"key": "subject"}})).ack_wait(),
            Duration::from_secs(30)
        );
        assert_eq!(sub(serde_json::json!({"mode": "pull"})).ack_wait(), Duration::from_secs(30));
        assert_eq!(sub(serde_json::json!({"ack_wait": "12s"})).ack_wait(), Duration::from_secs(12));
    }
}
