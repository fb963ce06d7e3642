//! Push delivery: durable JetStream consumers that POST every message to a participant's
//! endpoint, with retries, a circuit breaker, dead letters, replay and status events.
//!
//! - [`subscription`]: configuration resolved into what a worker runs.
//! - [`worker`]: fetch loop and per-message decisions (one per subscription and stream).
//! - [`attempt`]: one HTTP request, signed, with CloudEvents headers.
//! - [`retry_policy`]: where retries are decided: classes of answers, and what each means
//!   for a message (ack, retry after a delay, dead-letter, pause).
//! - [`breaker`]: stop fetching while an endpoint is down.
//! - [`dead_letter`]: the dead-letter stream, replay, status events.
//! - [`signature`]: Standard Webhooks signing.
//! - [`system`]: the gateway's own streams and bucket.

pub(crate) mod attempt;
pub(crate) mod breaker;
pub(crate) mod dead_letter;
pub mod pin;
pub mod pull;
pub mod pull_order;
pub mod retry_policy;
pub(crate) mod signature;
pub(crate) mod subscription;
pub(crate) mod system;
pub(crate) mod worker;

/// The old name of [`retry_policy`], kept until `request/responder.rs` and
/// `tests/it/openapi.rs` import the new one.
#[doc(hidden)]
pub use retry_policy as outcome;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, kv};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::SubscriptionMode;
use attempt::AttemptResult;
use breaker::{Breaker, BreakerState};
use subscription::Subscription;
use worker::Worker;

/// What went wrong in the delivery area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// NATS refused or could not be reached; the detail says how (for logs, not answers).
    Nats,
    /// The HTTP client could not be built (no TLS provider).
    HttpClient,
    /// The shared ack token key is malformed, or the replicas could not settle on one.
    TokenKey,
    /// A pull subscription has no consumer to fetch from.
    NoConsumer,
    /// A configured secret could not be read or is not usable (the detail says which).
    Secret,
}

pub type DeliveryError = crate::error::Error<DeliveryKind>;

/// A NATS failure, its text kept for the log.
fn nats(err: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::new(DeliveryKind::Nats, err.to_string())
}

/// What delivery workers share: NATS, one pooled HTTP client, and the status bucket.
pub struct Engine {
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    status: tokio::sync::OnceCell<kv::Store>,
    ack_ledger: tokio::sync::OnceCell<kv::Store>,
    /// The key-ordered pull subscriptions' queues.
    pull_order: tokio::sync::OnceCell<kv::Store>,
    token_key: tokio::sync::OnceCell<pull::TokenKey>,
    system_replicas: usize,
    /// Record noteworthy delivery states for message tracking.
    pub tracking: bool,
}

/// Operator-visible status of a subscription kept in the status bucket (shared by replicas).
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct StoredStatus {
    /// Why it is paused (`None` when running).
    pub paused_reason: Option<String>,
    pub paused_at: Option<String>,
    pub last_error: Option<LastError>,
}

/// The last failed attempt.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LastError {
    pub class: String,
    pub status: Option<u16>,
    pub detail: String,
    pub attempt: u32,
    pub at: String,
}

impl Engine {
    /// # Errors
    /// The HTTP client could not be built (no TLS provider).
    pub fn new(js: jetstream::Context, system_replicas: usize) -> Result<Self, DeliveryError> {
        // One process-wide TLS provider; ring, as async-nats uses it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("magistral/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| DeliveryError::new(DeliveryKind::HttpClient, e.to_string()))?;
        Ok(Self {
            js,
            http,
            status: tokio::sync::OnceCell::new(),
            ack_ledger: tokio::sync::OnceCell::new(),
            pull_order: tokio::sync::OnceCell::new(),
            token_key: tokio::sync::OnceCell::new(),
            system_replicas,
            tracking: false,
        })
    }

    async fn status_bucket(&self) -> Result<&kv::Store, DeliveryError> {
        self.status
            .get_or_try_init(|| async {
                self.js
                    .create_key_value(kv::Config {
                        bucket: system::STATUS_BUCKET.to_owned(),
                        description: "magistral subscription status".to_owned(),
                        history: 1,
                        num_replicas: self.system_replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(nats)
            })
            .await
    }

    #[must_use]
    pub fn system_replicas(&self) -> usize {
        self.system_replicas
    }

    /// The ledger of finished pull acks.
    ///
    /// # Errors
    /// NATS refused.
    pub async fn ack_ledger(&self) -> Result<&kv::Store, DeliveryError> {
        self.ack_ledger
            .get_or_try_init(|| async {
                self.js
                    .create_key_value(kv::Config {
                        bucket: pull::ACK_LEDGER.to_owned(),
                        description: "magistral pull acks already carried out".to_owned(),
                        history: 1,
                        // Longer than any ack wait: a token past it is stale anyway.
                        max_age: std::time::Duration::from_secs(24 * 3600),
                        num_replicas: self.system_replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(nats)
            })
            .await
    }

    /// A key-ordered pull subscription's queue (`None` for any other subscription).
    ///
    /// # Errors
    /// NATS refused.
    pub async fn key_order(&self, sub: &Subscription) -> Result<Option<pull_order::KeyOrder<'_>>, DeliveryError> {
        if sub.ordering.is_none() || sub.mode != SubscriptionMode::Pull {
            return Ok(None);
        }
        let bucket = self
            .pull_order
            .get_or_try_init(|| async {
                self.js
                    .create_key_value(kv::Config {
                        bucket: pull_order::ORDER_BUCKET.to_owned(),
                        description: "magistral key-ordered pull queues".to_owned(),
                        history: 1,
                        num_replicas: self.system_replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(nats)
            })
            .await?;
        let ledger = self.ack_ledger().await?;
        Ok(Some(pull_order::KeyOrder { bucket, ledger, ack_wait: sub.ack_wait }))
    }

    /// The key pull ack tokens are signed with, shared by all replicas.
    ///
    /// # Errors
    /// NATS refused.
    pub async fn token_key(&self) -> Result<&pull::TokenKey, DeliveryError> {
        self.token_key.get_or_try_init(|| async { pull::TokenKey::load(self.status_bucket().await?).await }).await
    }

    /// The stored status of a subscription.
    pub async fn stored_status(&self, name: &str) -> StoredStatus {
        let Ok(bucket) = self.status_bucket().await else { return StoredStatus::default() };
        match bucket.get(name).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => StoredStatus::default(),
        }
    }

    async fn update_status(&self, name: &str, change: impl FnOnce(&mut StoredStatus)) {
        let mut status = self.stored_status(name).await;
        change(&mut status);
        if let (Ok(bucket), Ok(bytes)) = (self.status_bucket().await, serde_json::to_vec(&status))
            && let Err(err) = bucket.put(name, bytes.into()).await
        {
            tracing::warn!(subscription = name, %err, "status not stored");
        }
    }

    /// Stores one worker's parked keys for every replica's `GET /v1/subscriptions/{name}`.
    async fn store_parked(&self, entry: &str, list: &[worker::keyed::ParkedKey]) {
        if let (Ok(bucket), Ok(bytes)) = (self.status_bucket().await, serde_json::to_vec(list))
            && let Err(err) = bucket.put(entry, bytes.into()).await
        {
            tracing::debug!(entry, %err, "parked keys not stored");
        }
    }

    /// A key-ordered subscription's parked keys, as the delivering replicas stored them.
    pub async fn parked_keys(&self, sub: &Subscription) -> Vec<worker::keyed::ParkedKey> {
        let Ok(bucket) = self.status_bucket().await else { return Vec::new() };
        let mut all = Vec::new();
        for stream in consumer_streams(sub) {
            if let Ok(Some(bytes)) = bucket.get(worker::keyed::parked_entry(&sub.name, &stream)).await
                && let Ok(list) = serde_json::from_slice::<Vec<worker::keyed::ParkedKey>>(&bytes)
            {
                all.extend(list);
            }
        }
        all
    }

    /// Sends an operator's action on a parked key to the replica holding it; `None` when no
    /// replica holds that key parked.
    pub async fn act_on_key(
        &self,
        sub: &Subscription,
        key: &str,
        action: &str,
        by: &str,
    ) -> Option<worker::keyed::KeyActionDone> {
        let body = worker::keyed::KeyAction { key: key.to_owned(), action: action.to_owned(), by: by.to_owned() };
        let body = serde_json::to_vec(&body).ok()?;
        let client = self.js.client();
        let request = client.request(worker::keyed::control_subject(&sub.name), body.into());
        let answer = tokio::time::timeout(std::time::Duration::from_secs(3), request).await.ok()?.ok()?;
        serde_json::from_slice(&answer.payload).ok()
    }

    /// Pauses every consumer of a subscription (on all replicas: JetStream consumer pause)
    /// and records why.
    pub async fn pause(&self, sub: &Subscription, reason: &str, result: &AttemptResult) {
        tracing::warn!(subscription = %sub.name, reason, "subscription paused: no deliveries until it is resumed");
        let reason = reason.to_owned();
        let last_error = LastError {
            class: result.class.slug().to_owned(),
            status: result.status,
            detail: result.excerpt.chars().take(200).collect(),
            attempt: 0,
            at: now(),
        };
        // The reason first, so whoever sees the pause can also see why.
        self.update_status(&sub.name, |s| {
            s.paused_reason = Some(reason);
            s.paused_at = Some(now());
            s.last_error = Some(last_error);
        })
        .await;
        let until = OffsetDateTime::now_utc() + time::Duration::days(365 * 100);
        for stream in consumer_streams(sub) {
            if let Ok(s) = self.js.get_stream(&stream).await
                && let Err(err) = s.pause_consumer(&sub.consumer_name(), until).await
            {
                tracing::warn!(subscription = %sub.name, %stream, %err, "consumer pause failed");
            }
        }
    }

    /// Resumes every consumer of a subscription.
    ///
    /// # Errors
    /// NATS refused.
    pub async fn resume(&self, sub: &Subscription, by: &str) -> Result<(), DeliveryError> {
        for stream in consumer_streams(sub) {
            let s = self.js.get_stream(&stream).await.map_err(nats)?;
            s.resume_consumer(&sub.consumer_name()).await.map_err(nats)?;
        }
        self.update_status(&sub.name, |s| {
            s.paused_reason = None;
            s.paused_at = None;
        })
        .await;
        tracing::info!(subscription = %sub.name, by, "subscription resumed");
        Ok(())
    }

    /// Pauses on an operator's request.
    ///
    /// # Errors
    /// NATS refused.
    pub async fn pause_by_operator(&self, sub: &Subscription, by: &str) -> Result<(), DeliveryError> {
        let until = OffsetDateTime::now_utc() + time::Duration::days(365 * 100);
        for stream in consumer_streams(sub) {
            let s = self.js.get_stream(&stream).await.map_err(nats)?;
            s.pause_consumer(&sub.consumer_name(), until).await.map_err(nats)?;
        }
        tracing::info!(subscription = %sub.name, by, "subscription paused by an operator");
        let reason = format!("paused by {by}");
        self.update_status(&sub.name, |s| {
            s.paused_reason = Some(reason);
            s.paused_at = Some(now());
        })
        .await;
        Ok(())
    }

    /// Consumer facts across a subscription's streams: (paused, pending, in flight).
    pub async fn consumer_facts(&self, sub: &Subscription) -> Option<(bool, u64, u64)> {
        let mut paused = false;
        let (mut pending, mut in_flight) = (0, 0);
        for stream in consumer_streams(sub) {
            let s = self.js.get_stream(&stream).await.ok()?;
            let info = s.consumer_info(sub.consumer_name()).await.ok()?;
            paused |= info.paused;
            pending += info.num_pending;
            in_flight += info.num_ack_pending as u64;
        }
        Some((paused, pending, in_flight))
    }
}

/// The streams a subscription has a consumer on: those its subjects span, and replays.
#[must_use]
pub fn consumer_streams(sub: &Subscription) -> Vec<String> {
    if sub.mode == SubscriptionMode::Stream {
        return Vec::new();
    }
    let mut streams: Vec<String> = sub.spans.iter().map(|(s, _)| s.clone()).collect();
    streams.push(system::REPLAY_STREAM.to_owned());
    streams
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// In-process state of one subscription on this replica.
pub struct Control {
    name: String,
    breaker: Mutex<Breaker>,
    last_error: Mutex<Option<LastError>>,
    /// Since when the endpoint's answers have been failures with none delivered in between
    /// (`None` once one is delivered): what the console and the API call `failing`.
    failing_since: Mutex<Option<String>>,
    /// When each failing message (stream, seq) first failed on this replica; bounded.
    first_failures: Mutex<HashMap<(String, u64), OffsetDateTime>>,
    /// Deliveries of a message handed back unattempted while the breaker was open; bounded.
    skipped: Mutex<HashMap<(String, u64), u32>>,
    /// The current half-open spell was logged.
    probe_announced: std::sync::atomic::AtomicBool,
    /// Key-ordered: (parked keys, worst key lag, keys held) per stream worker.
    keyed: Mutex<HashMap<String, (usize, f64, usize)>>,
}

/// Failing messages remembered per subscription; past it the oldest memory is dropped and
/// the publish time stands in.
const MAX_REMEMBERED_FAILURES: usize = 10_000;

impl Control {
    fn new(sub: &Subscription) -> Self {
        crate::telemetry::catalogue::set_breaker(&sub.name, &BreakerState::Closed);
        Self {
            name: sub.name.clone(),
            breaker: Mutex::new(Breaker::new(sub.breaker_failures, sub.breaker_cooldown)),
            last_error: Mutex::new(None),
            failing_since: Mutex::new(None),
            first_failures: Mutex::new(HashMap::new()),
            skipped: Mutex::new(HashMap::new()),
            probe_announced: std::sync::atomic::AtomicBool::new(false),
            keyed: Mutex::new(HashMap::new()),
        }
    }

    /// One stream worker's key gauges; the subscription's are their sum (lag: their max).
    fn set_keyed_gauges(&self, stream: &str, parked: usize, lag: f64, keys: usize) {
        let Ok(mut all) = self.keyed.lock() else { return };
        all.insert(stream.to_owned(), (parked, lag, keys));
        let parked = all.values().map(|v| v.0).sum();
        let lag = all.values().map(|v| v.1).fold(0.0, f64::max);
        let keys = all.values().map(|v| v.2).sum();
        crate::telemetry::catalogue::set_keyed(&self.name, parked, lag, keys);
    }

    fn note_skip(&self, key: &(String, u64)) {
        if let Ok(mut map) = self.skipped.lock() {
            if map.len() >= MAX_REMEMBERED_FAILURES && !map.contains_key(key) {
                map.clear();
            }
            *map.entry(key.clone()).or_default() += 1;
        }
    }

    fn skips(&self, key: &(String, u64)) -> u32 {
        self.skipped.lock().ok().and_then(|m| m.get(key).copied()).unwrap_or(0)
    }

    /// The first failure time of a message, remembering `now` if it is the first.
    fn first_failure(&self, key: &(String, u64), now: OffsetDateTime) -> OffsetDateTime {
        let Ok(mut map) = self.first_failures.lock() else { return now };
        if let Some(t) = map.get(key) {
            return *t;
        }
        if map.len() >= MAX_REMEMBERED_FAILURES
            && let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(key.clone(), now);
        now
    }

    fn forget(&self, key: &(String, u64)) {
        if let Ok(mut map) = self.first_failures.lock() {
            map.remove(key);
        }
        if let Ok(mut map) = self.skipped.lock() {
            map.remove(key);
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().map(|b| b.state(Instant::now())).unwrap_or(BreakerState::Closed)
    }

    /// The breaker's cooldown ended and a probe goes out (said once per half-open spell).
    fn note_probe(&self) {
        if !self.probe_announced.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(subscription = %self.name, "circuit breaker half-open: one probe delivery goes out");
        }
    }

    fn record(&self, result: &AttemptResult, attempt: u32) {
        // No request was made: nothing learnt about the endpoint.
        if result.class.unsent() {
            return;
        }
        if let Ok(mut b) = self.breaker.lock() {
            let now = Instant::now();
            let before = b.state(now);
            b.record(result.class, now);
            let open = matches!(b.state(now), BreakerState::Open { .. });
            match (before, open) {
                (BreakerState::Closed | BreakerState::HalfOpen, true) => {
                    self.probe_announced.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        subscription = %self.name,
                        consecutive_failures = b.consecutive_failures(),
                        cooldown = %humantime::format_duration(b.cooldown()),
                        class = result.class.slug(),
                        after_probe = matches!(before, BreakerState::HalfOpen),
                        "circuit breaker opened: no deliveries to this endpoint until the cooldown ends"
                    );
                }
                (BreakerState::Open { .. } | BreakerState::HalfOpen, false) => {
                    tracing::info!(subscription = %self.name, "circuit breaker closed: the endpoint answers again");
                }
                _ => {}
            }
            crate::telemetry::catalogue::set_breaker(&self.name, &b.state(now));
        }
        if let Ok(mut since) = self.failing_since.lock() {
            if result.class == retry_policy::Class::Delivered {
                *since = None;
            } else if since.is_none() {
                *since = Some(now());
            }
        }
        if result.class != retry_policy::Class::Delivered
            && let Ok(mut last) = self.last_error.lock()
        {
            *last = Some(LastError {
                class: result.class.slug().to_owned(),
                status: result.status,
                detail: result.excerpt.chars().take(200).collect(),
                attempt,
                at: now(),
            });
        }
    }

    /// Since when this replica's attempts have all failed (`None`: the last one was delivered,
    /// or none was made).
    pub fn failing_since(&self) -> Option<String> {
        self.failing_since.lock().ok().and_then(|s| s.clone())
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

struct Running {
    sub: Arc<Subscription>,
    control: Arc<Control>,
    cancel: CancellationToken,
}

/// Starts, restarts and stops workers as the catalog changes.
pub struct Deliveries {
    pub engine: Arc<Engine>,
    running: Mutex<HashMap<String, Running>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// When the subscription gauges were last refreshed for a scrape (see [`Deliveries::observe`]).
    observed: tokio::sync::Mutex<Option<Instant>>,
    /// Streams warned about for holding more consumers than nats-server's default limit.
    cap_warned: Mutex<std::collections::HashSet<String>>,
}

/// Scrapes closer together than this reuse the subscription gauges of the previous one: the
/// NATS requests per scrape stay bounded however often `/metrics` is fetched.
const OBSERVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// A slow NATS does not hold a scrape longer than this; gauges not refreshed keep their values.
const OBSERVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How many consumers nats-server 2.15 lets a stream have unless its configuration sets
/// `jetstream { limits { default_max_consumers } }`.
const NATS_DEFAULT_MAX_CONSUMERS: usize = 1000;

/// JetStream's error code for "maximum consumers limit reached".
const MAX_CONSUMERS_REACHED: u32 = 10026;

/// The JetStream error code in a NATS error's text (async-nats writes `(code 400, error code
/// 10026)`), when NATS answered with one.
fn jetstream_error_code(detail: &str) -> Option<u32> {
    let (_, after) = detail.rsplit_once("error code ")?;
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A consumer [`Deliveries::apply`] could not create. NATS refusing it (an answer with a
/// JetStream error code, not a lost connection) is an error an operator must see: nothing is
/// delivered to the subscription until it is resolved; the worker keeps retrying meanwhile.
fn consumer_not_created(subscription: &str, stream: &str, err: &DeliveryError) {
    match jetstream_error_code(err.detail()) {
        Some(code) => {
            crate::telemetry::catalogue::set_consumer_refused(subscription, true);
            let why = if code == MAX_CONSUMERS_REACHED {
                "NATS refused the subscription's consumer: the stream has as many consumers as the server allows \
                 (nats-server's jetstream { limits { default_max_consumers } }, 1,000 by default in 2.15); \
                 nothing is delivered to this subscription until the limit is raised (-1 lifts it; see \
                 docs/operations.md, \"NATS settings that matter\") or other consumers are removed"
            } else {
                "NATS refused the subscription's consumer; nothing is delivered to it until that is resolved"
            };
            tracing::error!(%subscription, %stream, nats = %err, "{why}");
        }
        None => tracing::warn!(%subscription, %stream, %err, "consumer not created yet; retrying"),
    }
}

/// How many subscriptions' consumers [`Deliveries::apply`] creates at once.
const CONSUMERS_CREATED_AT_ONCE: usize = 16;

impl Deliveries {
    #[must_use]
    pub fn new(engine: Arc<Engine>, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            engine,
            running: Mutex::new(HashMap::new()),
            tracker,
            shutdown,
            observed: Default::default(),
            cap_warned: Mutex::default(),
        }
    }

    /// Brings running workers in line with the catalog: new subscriptions start, changed ones
    /// restart, removed ones stop (their consumers stay until `apply --prune`).
    ///
    /// A new subscription's consumers are created before this returns, so a message
    /// published once the gateway reports ready (or the reload is visible) is not missed.
    pub async fn apply(&self, catalog: &Catalog) {
        let to_start: Vec<Arc<Subscription>> = {
            let Ok(mut running) = self.running.lock() else { return };
            running.retain(|name, r| {
                let keep = catalog.subscription(name).is_some_and(|s| **s == *r.sub);
                if !keep {
                    tracing::info!(subscription = %name, "stopping delivery (removed or changed)");
                    r.cancel.cancel();
                }
                keep
            });
            catalog.subscriptions.iter().filter(|s| !running.contains_key(&s.name)).cloned().collect()
        };
        self.warn_of_the_consumer_cap(catalog);
        // Stream (SSE) subscriptions have no durable state: each connection reads on its own.
        let mut workers = Vec::new();
        for sub in to_start.into_iter().filter(|s| s.mode != SubscriptionMode::Stream) {
            tracing::info!(
                subscription = %sub.name,
                mode = %sub.mode,
                endpoint = %sub.endpoint_redacted().unwrap_or_default(),
                "starting delivery"
            );
            let control = Arc::new(Control::new(&sub));
            let series = Arc::new(crate::telemetry::catalogue::DeliverySeries::new(&sub.name));
            let cancel = self.shutdown.child_token();
            let mut spans = sub.spans.clone();
            spans.push((system::REPLAY_STREAM.to_owned(), vec![system::replay_subject(&sub.name)]));
            for (stream, filters) in spans {
                let worker = Worker {
                    engine: self.engine.clone(),
                    sub: sub.clone(),
                    control: control.clone(),
                    is_replay: stream == system::REPLAY_STREAM,
                    stream,
                    filters,
                    cancel: cancel.clone(),
                    series: series.clone(),
                };
                workers.push(worker);
            }
            if let Ok(mut running) = self.running.lock() {
                running.insert(sub.name.clone(), Running { sub: sub.clone(), control, cancel });
            }
        }
        // Consumers are created several at a time: one after another, 1,000 subscriptions took
        // ~9 s to become ready (docs/benchmarks.md, "Flat with scale").
        use futures::StreamExt;
        futures::stream::iter(workers)
            .for_each_concurrent(CONSUMERS_CREATED_AT_ONCE, |worker| async move {
                // The worker keeps trying if NATS is not ready yet; a refusal is shown.
                if let Err(err) = worker.ensure_consumer().await {
                    consumer_not_created(&worker.sub.name, &worker.stream, &err);
                }
                // Pull subscriptions have consumers but no worker: the participant fetches.
                if worker.sub.mode == SubscriptionMode::Push {
                    self.tracker.spawn(worker.run());
                }
            })
            .await;
    }

    /// Refreshes the per-subscription gauges before a scrape: what JetStream says about each
    /// running subscription's consumers (pending, in flight, paused), its dead letters, and this
    /// replica's breaker (which turns half-open by time alone). NATS is asked only when
    /// `connected`, at most once per [`OBSERVE_INTERVAL`], four subscriptions at a time.
    pub async fn observe(&self, connected: bool) {
        use futures::StreamExt;
        let mut last = self.observed.lock().await;
        if last.is_some_and(|at| at.elapsed() < OBSERVE_INTERVAL) {
            return;
        }
        let subs: Vec<(Arc<Subscription>, Arc<Control>)> = match self.running.lock() {
            Ok(running) => running.values().map(|r| (r.sub.clone(), r.control.clone())).collect(),
            Err(_) => return,
        };
        for (sub, control) in subs.iter().filter(|(s, _)| s.mode == SubscriptionMode::Push) {
            crate::telemetry::catalogue::set_breaker(&sub.name, &control.breaker_state());
        }
        if !connected {
            return;
        }
        let refresh = futures::stream::iter(subs)
            .map(|(sub, _)| async move {
                let facts = self.engine.consumer_facts(&sub).await;
                let dead_letters = if sub.mode == SubscriptionMode::Push {
                    dead_letter::count(&self.engine.js, &sub.name).await.ok()
                } else {
                    None
                };
                (sub, facts, dead_letters)
            })
            .buffer_unordered(4)
            .for_each(|(sub, facts, dead_letters)| async move {
                if let Some((paused, pending, in_flight)) = facts {
                    crate::telemetry::catalogue::set_consumer_facts(&sub.name, paused, pending, in_flight);
                    // Every consumer exists (the worker's retries got it created).
                    crate::telemetry::catalogue::set_consumer_refused(&sub.name, false);
                }
                if let Some(depth) = dead_letters {
                    crate::telemetry::catalogue::set_dead_letters(&sub.name, depth);
                }
            });
        if tokio::time::timeout(OBSERVE_TIMEOUT, refresh).await.is_ok() {
            *last = Some(Instant::now());
        }
    }

    /// Warns (once per stream and process) when a stream is to hold more of the subscriptions'
    /// consumers than nats-server allows a stream by default: the server does not tell its
    /// clients its limit, so an operator who raised it may ignore this.
    fn warn_of_the_consumer_cap(&self, catalog: &Catalog) {
        let mut per_stream: HashMap<String, usize> = HashMap::new();
        for sub in catalog.subscriptions.iter() {
            for stream in consumer_streams(sub) {
                *per_stream.entry(stream).or_default() += 1;
            }
        }
        let Ok(mut warned) = self.cap_warned.lock() else { return };
        for (stream, count) in per_stream {
            if count > NATS_DEFAULT_MAX_CONSUMERS && warned.insert(stream.clone()) {
                tracing::warn!(
                    %stream,
                    consumers = count,
                    "this stream is to hold {count} consumers, one per subscription reading it; nats-server 2.15 \
                     refuses more than {NATS_DEFAULT_MAX_CONSUMERS} per stream (error 10026) unless its configuration \
                     says jetstream {{ limits {{ default_max_consumers: -1 }} }} (docs/operations.md, \
                     \"NATS settings that matter\")"
                );
            }
        }
    }

    /// This replica's in-process view of a subscription.
    pub fn control(&self, name: &str) -> Option<Arc<Control>> {
        self.running.lock().ok()?.get(name).map(|r| r.control.clone())
    }
}

/// Deletes (unless `dry_run`) the gateway's consumers whose subscription is no longer
/// configured, or no longer spans that stream. Returns `(stream, consumer)` pairs.
///
/// # Errors
/// NATS could not be asked or refused a deletion.
pub async fn prune(
    js: &jetstream::Context,
    catalog: &Catalog,
    dry_run: bool,
) -> Result<Vec<(String, String)>, DeliveryError> {
    use futures::StreamExt;
    let mut pruned = Vec::new();
    for def in &catalog.streams {
        let stream = js.get_stream(def.name()).await.map_err(nats)?;
        let mut names = stream.consumer_names();
        let mut doomed = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(nats)?;
            let Some(sub_name) = subscription::subscription_of(&name) else { continue };
            let wanted =
                catalog.subscription(sub_name).is_some_and(|sub| consumer_streams(sub).iter().any(|s| s == def.name()));
            if !wanted {
                doomed.push(name);
            }
        }
        for name in doomed {
            if !dry_run {
                stream.delete_consumer(&name).await.map_err(nats)?;
            }
            pruned.push((def.name().to_owned(), name));
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::{MAX_CONSUMERS_REACHED, jetstream_error_code, nats};

    /// The code is read from async-nats's own text of the server's answer.
    #[test]
    fn the_jetstream_error_code_is_read_from_the_nats_error() {
        let answer: async_nats::jetstream::Error =
            serde_json::from_str(r#"{"code":400,"err_code":10026,"description":"maximum consumers limit reached"}"#)
                .unwrap();
        let err = nats(async_nats::jetstream::stream::ConsumerError::from(answer));
        assert!(err.detail().contains("maximum consumers limit reached"), "{err}");
        assert_eq!(jetstream_error_code(err.detail()), Some(MAX_CONSUMERS_REACHED));
        let lost = nats(async_nats::jetstream::stream::ConsumerError::new(
            async_nats::jetstream::stream::ConsumerErrorKind::TimedOut,
        ));
        assert_eq!(jetstream_error_code(lost.detail()), None, "{lost}");
    }
}
