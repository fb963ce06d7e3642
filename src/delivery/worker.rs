//! One worker per (subscription, stream): keeps the durable consumer in place, fetches
//! within the in-flight bound, rate limit and circuit breaker, and runs each delivery to a
//! decision: ack, retry (NAK with delay, or in place when ordered), dead letter, or pause.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::{self, AttemptResult};
use super::breaker::BreakerState;
use super::dead_letter::{self, Failure};
use super::outcome::{Class, Decision};
use super::subscription::Subscription;
use super::{Control, Engine};
use crate::config::{OnExhausted, StartPosition};

/// How long one pull request waits for messages.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);

pub struct Worker {
    pub engine: Arc<Engine>,
    pub sub: Arc<Subscription>,
    pub control: Arc<Control>,
    pub stream: String,
    pub filters: Vec<String>,
    /// The replay stream's consumer starts from its beginning: replays are always wanted.
    pub is_replay: bool,
    pub cancel: CancellationToken,
}

impl Worker {
    fn consumer_config(&self) -> pull::Config {
        let mut config = pull::Config {
            durable_name: Some(self.sub.consumer_name()),
            description: Some(format!("magistral push subscription {} of {}", self.sub.name, self.sub.participant)),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.sub.ack_wait,
            // Attempts are counted and capped by the gateway, which dead-letters; the server
            // must never drop a message silently.
            max_deliver: -1,
            max_ack_pending: i64::from(self.sub.max_in_flight),
            deliver_policy: match (self.is_replay, self.sub.start) {
                (true, _) | (false, StartPosition::All) => DeliverPolicy::All,
                (false, StartPosition::New) => DeliverPolicy::New,
            },
            ..Default::default()
        };
        if let [one] = self.filters.as_slice() {
            config.filter_subject = one.clone();
        } else {
            config.filter_subjects = self.filters.clone();
        }
        config
    }

    /// Creates the consumer, or updates it when the subscription changed (keeping its start
    /// position, which JetStream cannot change).
    pub async fn ensure_consumer(&self) -> Result<Consumer<pull::Config>, String> {
        let stream = self.engine.js.get_stream(&self.stream).await.map_err(|e| e.to_string())?;
        let mut wanted = self.consumer_config();
        match stream.get_consumer::<pull::Config>(&self.sub.consumer_name()).await {
            Ok(mut existing) => {
                let current = existing.info().await.map_err(|e| e.to_string())?.config.clone();
                wanted.deliver_policy = current.deliver_policy;
                let differs = current.filter_subject != wanted.filter_subject
                    || current.filter_subjects != wanted.filter_subjects
                    || current.max_ack_pending != wanted.max_ack_pending
                    || current.ack_wait != wanted.ack_wait
                    || current.description != wanted.description;
                if differs { stream.update_consumer(wanted).await.map_err(|e| e.to_string()) } else { Ok(existing) }
            }
            Err(_) => stream.create_consumer(wanted).await.map_err(|e| e.to_string()),
        }
    }

    /// Runs until cancelled; NATS outages are waited out with backoff.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        let mut consumer = loop {
            match self.ensure_consumer().await {
                Ok(c) => break c,
                Err(err) => {
                    tracing::warn!(subscription = %self.sub.name, stream = %self.stream, %err, "consumer not ready; retrying");
                    if self.sleep(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let permits = Arc::new(Semaphore::new(self.sub.max_in_flight as usize));
        let deliveries = TaskTracker::new();
        let mut next_slot = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let probe = match self.control.breaker_state() {
                BreakerState::Closed => false,
                BreakerState::HalfOpen => true,
                BreakerState::Open { until } => {
                    if self.sleep_until(until).await {
                        break;
                    }
                    continue;
                }
            };
            let ordered_or_probe = self.sub.ordered || probe;
            // Take one permit (waiting), then whatever else is free.
            let first = tokio::select! {
                () = self.cancel.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let mut held = vec![first];
            while !ordered_or_probe && held.len() < self.sub.max_in_flight as usize {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            // `batch` waits (up to FETCH_EXPIRES) and yields messages as they come; `fetch` would
            // return at once when nothing is pending and spin this loop.
            let batch = consumer.batch().max_messages(held.len()).expires(FETCH_EXPIRES).messages().await;
            let mut batch = match batch {
                Ok(b) => {
                    backoff = Duration::from_millis(200);
                    b
                }
                Err(err) => {
                    tracing::debug!(subscription = %self.sub.name, %err, "fetch failed; backing off");
                    if self.sleep(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // The consumer may be gone (deleted by hand, or lost with a stream):
                    // put it back.
                    if let Ok(fresh) = self.ensure_consumer().await {
                        consumer = fresh;
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    () = self.cancel.cancelled() => None,
                    n = batch.next() => n,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        tracing::debug!(subscription = %self.sub.name, %err, "pull failed; checking the consumer");
                        if self.sleep(backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        if let Ok(fresh) = self.ensure_consumer().await {
                            consumer = fresh;
                        }
                        break;
                    }
                    None => break,
                };
                let Some(permit) = held.pop() else { break };
                // A pull request made before the breaker opened may still bring messages:
                // hand them back for after the cooldown without calling the endpoint.
                if let (false, BreakerState::Open { until }) = (probe, self.control.breaker_state()) {
                    if let Ok(info) = message.info() {
                        self.control.note_skip(&(info.stream.to_owned(), info.stream_sequence));
                    }
                    let wait = until.saturating_duration_since(Instant::now());
                    let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
                    drop(permit);
                    continue;
                }
                if let Some(rate) = self.sub.rate_limit {
                    let now = Instant::now();
                    if next_slot > now && self.sleep_until(next_slot).await {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        break;
                    }
                    next_slot = next_slot.max(now) + Duration::from_secs_f64(1.0 / rate);
                }
                if let Ok(info) = message.info() {
                    metrics::gauge!("magistral_consumer_pending", "subscription" => self.sub.name.clone(), "stream" => self.stream.clone())
                        .set(info.pending as f64);
                }
                if ordered_or_probe {
                    // In line: the next fetch waits for this message's decision.
                    self.deliver(message).await;
                    drop(permit);
                } else {
                    let worker = self.handle();
                    deliveries.spawn(async move {
                        worker.deliver(message).await;
                        drop(permit);
                    });
                }
            }
        }
        deliveries.close();
        deliveries.wait().await;
    }

    /// A cheap copy for a delivery task.
    fn handle(&self) -> Worker {
        Worker {
            engine: self.engine.clone(),
            sub: self.sub.clone(),
            control: self.control.clone(),
            stream: self.stream.clone(),
            filters: Vec::new(),
            is_replay: self.is_replay,
            cancel: self.cancel.clone(),
        }
    }

    /// Sleeps; true when cancelled meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        self.sleep_until(Instant::now() + d).await
    }

    async fn sleep_until(&self, t: Instant) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => true,
            () = tokio::time::sleep_until(t) => false,
        }
    }

    /// Delivers one message to a decision.
    async fn deliver(&self, message: jetstream::Message) {
        let key = message.info().map(|i| (i.stream.to_owned(), i.stream_sequence)).unwrap_or_default();
        // A replay is tracked under the message it replays.
        let track_key = dead_letter::original_location(&message).unwrap_or_else(|| key.clone());
        // JetStream counts deliveries; those handed back unattempted while the breaker was
        // open are not attempts.
        let delivered = message.info().map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX)).unwrap_or(1);
        let mut attempt = delivered.saturating_sub(self.control.skips(&key)).max(1);
        let published = message.info().map(|i| i.published).unwrap_or_else(|_| OffsetDateTime::now_utc());
        // No events about status events: a subscription to them must not feed itself.
        let announce = !attempt::is_status_event(&message);
        loop {
            let started = OffsetDateTime::now_utc();
            let result = attempt::send(&self.engine.http, &self.sub, &message, attempt, self.sub.ack_wait).await;
            self.control.record(&result, attempt);
            metrics::counter!("magistral_delivery_total", "subscription" => self.sub.name.clone(), "class" => result.class.slug())
                .increment(1);
            metrics::histogram!("magistral_delivery_duration_seconds", "subscription" => self.sub.name.clone())
                .record(result.elapsed.as_secs_f64());
            let first_attempt = if result.class == Class::Delivered {
                started
            } else {
                // Remembered from this replica's first failure; after a redelivery to another
                // replica, the publish time is the honest lower bound.
                self.control.first_failure(&key, if attempt == 1 { started } else { published })
            };
            let failure = Failure {
                result: result.clone(),
                attempts: attempt,
                first_attempt,
                last_attempt: OffsetDateTime::now_utc(),
            };
            let decision = self.sub.policy.decide(result.class, attempt, result.retry_after);
            if announce && attempt == 1 && !matches!(result.class, Class::Delivered | Class::Skipped) {
                dead_letter::publish_event(&self.engine.js, "failed", &self.sub.name, &message, &failure).await;
            }
            if !matches!(decision, Decision::Retry(_)) {
                self.control.forget(&key);
            }
            match decision {
                Decision::Ack => {
                    if result.class == Class::Skipped {
                        self.track(&track_key, "skipped", attempt, &result, None).await;
                    } else if attempt > 1 || self.is_replay {
                        // After failures, or a replayed dead letter: replace the old record.
                        self.track(&track_key, "delivered", attempt, &result, None).await;
                    }
                    let lag = OffsetDateTime::now_utc() - published;
                    metrics::histogram!("magistral_delivery_lag_seconds", "subscription" => self.sub.name.clone())
                        .record(lag.as_seconds_f64().max(0.0));
                    let _ = message.ack().await;
                    return;
                }
                Decision::Retry(delay) if self.sub.ordered => {
                    self.track(&track_key, "retrying", attempt, &result, Some(delay)).await;
                    // Ordered: keep the message (and so the subscription's one slot) and retry
                    // in place; a NAK would let the next message overtake it.
                    if !self.hold(&message, delay).await {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        return;
                    }
                    attempt += 1;
                    while let BreakerState::Open { until } = self.control.breaker_state() {
                        if !self.hold_until(&message, until).await {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            return;
                        }
                    }
                }
                Decision::Retry(delay) => {
                    self.track(&track_key, "retrying", attempt, &result, Some(delay)).await;
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    return;
                }
                Decision::DeadLetter if self.sub.ordered && self.sub.on_exhausted == OnExhausted::Block => {
                    self.track(&track_key, "blocked", attempt, &result, None).await;
                    let reason = format!("blocked: message {} exhausted its attempts", attempt::message_id(&message));
                    self.engine.pause(&self.sub, &reason, &result).await;
                    if announce {
                        dead_letter::publish_event(&self.engine.js, "blocked", &self.sub.name, &message, &failure)
                            .await;
                    }
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
                Decision::DeadLetter => {
                    match dead_letter::store(&self.engine.js, &self.sub.name, &message, &failure).await {
                        Ok(()) => {
                            self.track(&track_key, "dead-letter", attempt, &result, None).await;
                            metrics::counter!("magistral_dead_letters_total", "subscription" => self.sub.name.clone())
                                .increment(1);
                            if let Ok(depth) = dead_letter::count(&self.engine.js, &self.sub.name).await {
                                metrics::gauge!("magistral_dead_letters", "subscription" => self.sub.name.clone())
                                    .set(depth as f64);
                            }
                            if announce {
                                dead_letter::publish_event(
                                    &self.engine.js,
                                    "dead_lettered",
                                    &self.sub.name,
                                    &message,
                                    &failure,
                                )
                                .await;
                            }
                            let _ = message.ack_with(AckKind::Term).await;
                        }
                        Err(err) => {
                            // Never terminate what the dead-letter stream did not take.
                            tracing::warn!(subscription = %self.sub.name, %err, "dead letter not stored; will retry");
                            let _ = message.ack_with(AckKind::Nak(Some(self.sub.policy.delay_after(attempt)))).await;
                        }
                    }
                    return;
                }
                Decision::PauseSubscription => {
                    self.track(&track_key, "paused", attempt, &result, None).await;
                    self.engine.pause(&self.sub, "endpoint answered 410 Gone", &result).await;
                    if announce {
                        dead_letter::publish_event(&self.engine.js, "paused", &self.sub.name, &message, &failure).await;
                    }
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            }
        }
    }

    /// Notes a noteworthy state for "where is my message?" (nothing for a first-try success).
    async fn track(
        &self,
        key: &(String, u64),
        state: &str,
        attempt: u32,
        result: &AttemptResult,
        next: Option<Duration>,
    ) {
        if !self.engine.tracking {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let record = crate::tracking::DeliveryRecord {
            state: state.to_owned(),
            attempts: attempt,
            class: (result.class != Class::Delivered).then(|| result.class.slug().to_owned()),
            status: result.status,
            at: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            next_attempt: next.and_then(|d| (now + d).format(&time::format_description::well_known::Rfc3339).ok()),
        };
        crate::tracking::record(&self.engine.js.client(), &self.sub.name, &key.0, key.1, &record).await;
    }

    /// Keeps a message in progress for `delay`; false when cancelled.
    async fn hold(&self, message: &jetstream::Message, delay: Duration) -> bool {
        self.hold_until(message, Instant::now() + delay).await
    }

    async fn hold_until(&self, message: &jetstream::Message, until: Instant) -> bool {
        let mut progress = tokio::time::interval(self.sub.ack_wait / 3);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                _ = progress.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
            }
        }
    }
}

/// Logged, operator-visible summary of an attempt that did not deliver.
pub fn describe(result: &AttemptResult) -> String {
    match result.status {
        Some(s) => format!("{} (HTTP {s})", result.class.slug()),
        None => format!("{}: {}", result.class.slug(), result.excerpt),
    }
}
