//! One worker per (subscription, stream): keeps the durable consumer in place, fetches
//! within the in-flight bound, rate limit and circuit breaker, and runs each delivery to a
//! decision: ack, retry (NAK with delay, or in place when ordered), dead letter, or pause.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::{self, AttemptResult};
use super::breaker::BreakerState;
use super::dead_letter::{self, Failure};
use super::retry_policy::{Class, Decision};
use super::subscription::Subscription;
use super::{Control, DeliveryError, Engine, nats};
use crate::config::{OnExhausted, StartPosition};
use crate::telemetry::catalogue;
use crate::tracking::{self, DeliveryRecord, DeliveryState};

pub(crate) mod keyed;

/// One message's delivery on this worker, across its attempts.
struct InFlight {
    /// Stream and sequence of the message as fetched.
    key: (String, u64),
    /// Where "where is my message?" looks: a replay's original place.
    track_key: (String, u64),
    attempt: u32,
    published: OffsetDateTime,
    /// Whether status events are published about it.
    announce: bool,
    /// A replay from the dead letters: its replays so far and when it was last replayed.
    replayed: Option<(u32, String)>,
}

/// An attempt's result, what it means for the message, and the failure as reported.
struct Verdict {
    result: AttemptResult,
    decision: Decision,
    failure: Failure,
}

/// Whether the message is settled, or held for another attempt (ordered retries).
enum Settled {
    Done,
    RetryInPlace,
}

/// A worker's claim on a message it holds between attempts (ordered and key-ordered
/// delivery). JetStream hands an unacknowledged message to another replica once no
/// in-progress ack reached the consumer's leader for `ack_wait` (a cut connection, a leader
/// election); an attempt made after that could reach the endpoint behind the other replica's
/// deliveries of the message and of those after it. So the in-progress acks of a held message
/// are confirmed, and it is attempted again only while the chain of confirmations shows the
/// leader never went `ack_wait` without one: counted from the confirmation before the last
/// (the last one may not have reached the leader's replicas when an election follows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    before_last: Instant,
    last: Instant,
    /// The client's connection count when the claim began: a reconnection may have lost acks.
    connects: u64,
    lost: bool,
}

impl Lease {
    fn new(now: Instant, connects: u64) -> Self {
        Lease { before_last: now, last: now, connects, lost: false }
    }

    /// Notes a keep-alive sent at `sent`, confirmed or not, seen at `now` with the client's
    /// connection count `connects`.
    fn extend(&mut self, ack_wait: Duration, connects: u64, sent: Instant, confirmed: bool, now: Instant) {
        if connects != self.connects || now.duration_since(self.before_last) >= ack_wait {
            self.lost = true;
        }
        if confirmed && !self.lost {
            self.before_last = self.last;
            self.last = sent;
        }
    }

    /// Unbroken, on the same connection, with a tenth of `ack_wait` to spare at `now`.
    fn holds(&self, ack_wait: Duration, connects: u64, now: Instant) -> bool {
        !self.lost && connects == self.connects && now.duration_since(self.before_last) < ack_wait * 9 / 10
    }
}

/// How long a confirmation of an in-progress ack is waited for.
const CONFIRM_WAIT: Duration = Duration::from_millis(500);

/// How long one pull request waits for messages.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);
/// The same after a pull failed or went unanswered: the consumer's leader may have died with
/// its pending requests, and a new one is found within about this much of its election.
const RECOVERY_EXPIRES: Duration = Duration::from_secs(1);
/// The server ends every request at its expiry; silence for this much longer means the request
/// died with the consumer's leader (async-nats itself would wait 5 s more).
const PULL_GRACE: Duration = Duration::from_secs(1);
/// Longest wait between pulls while they fail (an election takes seconds).
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Looking for a lost consumer after a failed pull: no longer than this (without a stream
/// leader the lookup would wait for the JetStream request timeout).
const CONSUMER_CHECK: Duration = Duration::from_secs(2);

pub(crate) struct Worker {
    pub engine: Arc<Engine>,
    pub sub: Arc<Subscription>,
    pub control: Arc<Control>,
    pub stream: String,
    pub filters: Vec<String>,
    /// The replay stream's consumer starts from its beginning: replays are always wanted.
    pub is_replay: bool,
    pub cancel: CancellationToken,
    /// The subscription's metric handles, resolved once.
    pub series: Arc<catalogue::DeliverySeries>,
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
        self.keyed_consumer_config(&mut config);
        config
    }

    /// Creates the consumer, or updates it when the subscription changed (keeping its start
    /// position, which JetStream cannot change).
    pub(crate) async fn ensure_consumer(&self) -> Result<Consumer<pull::Config>, DeliveryError> {
        let stream = self.engine.js.get_stream(&self.stream).await.map_err(nats)?;
        let mut wanted = self.consumer_config();
        match stream.get_consumer::<pull::Config>(&self.sub.consumer_name()).await {
            Ok(mut existing) => {
                let current = existing.info().await.map_err(nats)?.config.clone();
                wanted.deliver_policy = current.deliver_policy;
                let differs = current.filter_subject != wanted.filter_subject
                    || current.filter_subjects != wanted.filter_subjects
                    || current.max_ack_pending != wanted.max_ack_pending
                    || current.ack_wait != wanted.ack_wait
                    || current.description != wanted.description
                    || current.priority_policy != wanted.priority_policy
                    || current.priority_timeout != wanted.priority_timeout;
                if differs { stream.update_consumer(wanted).await.map_err(nats) } else { Ok(existing) }
            }
            Err(_) => stream.create_consumer(wanted).await.map_err(nats),
        }
    }

    /// Runs until cancelled; NATS outages are waited out with backoff.
    pub(crate) async fn run(self) {
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
        if self.sub.ordering.is_some() {
            return self.run_keyed(consumer).await;
        }
        let permits = Arc::new(Semaphore::new(self.sub.max_in_flight as usize));
        let deliveries = TaskTracker::new();
        let mut next_slot = Instant::now();
        let mut backoff = Duration::from_millis(200);
        // A pull failed or went unanswered: pull with short requests until one is answered.
        let mut recovering = false;
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
            // `batch` waits (up to its expiry) and yields messages as they come; `fetch` would
            // return at once when nothing is pending and spin this loop.
            let expires = if recovering { RECOVERY_EXPIRES } else { FETCH_EXPIRES };
            let batch = consumer.batch().max_messages(held.len()).expires(expires).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(err) => {
                    tracing::debug!(subscription = %self.sub.name, %err, "fetch failed; backing off");
                    recovering = true;
                    if self.sleep(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(PULL_BACKOFF_MAX);
                    self.check_consumer(&mut consumer).await;
                    continue;
                }
            };
            let mut silent_after = Instant::now() + expires + PULL_GRACE;
            loop {
                let next = tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => None,
                    n = batch.next() => n,
                    () = tokio::time::sleep_until(silent_after) => {
                        tracing::debug!(subscription = %self.sub.name, "pull request unanswered; pulling again");
                        recovering = true;
                        None
                    }
                };
                let message = match next {
                    Some(Ok(message)) => {
                        (recovering, backoff) = (false, Duration::from_millis(200));
                        silent_after = Instant::now() + expires + PULL_GRACE;
                        message
                    }
                    Some(Err(err)) => {
                        tracing::debug!(subscription = %self.sub.name, %err, "pull failed; checking the consumer");
                        recovering = true;
                        if self.sleep(backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(PULL_BACKOFF_MAX);
                        self.check_consumer(&mut consumer).await;
                        break;
                    }
                    // The request expired or was filled: the consumer's leader answers.
                    None if silent_after > Instant::now() => {
                        (recovering, backoff) = (false, Duration::from_millis(200));
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
                    // Kept in progress meanwhile: the wait may be longer than ack_wait.
                    if next_slot > now && !self.hold_until(&message, next_slot, None).await {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        break;
                    }
                    next_slot = next_slot.max(now) + Duration::from_secs_f64(1.0 / rate);
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

    /// After a failed pull: the consumer may be gone (deleted by hand, or lost with a stream),
    /// so it is put back; bounded, as the lookup waits for a stream leader during an election.
    async fn check_consumer(&self, consumer: &mut Consumer<pull::Config>) {
        if let Ok(Ok(fresh)) = tokio::time::timeout(CONSUMER_CHECK, self.ensure_consumer()).await {
            *consumer = fresh;
        }
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
            series: self.series.clone(),
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

    /// Delivers one message to a decision, attempt after attempt: send it, classify the
    /// answer, settle what the decision says (an ordered retry comes back for another round).
    async fn deliver(&self, message: jetstream::Message) {
        let mut delivery = self.prepare(&message);
        let mut lease = self.lease();
        loop {
            let started = OffsetDateTime::now_utc();
            let result = self.send(&message, &delivery).await;
            let verdict = self.classify(&delivery, result, started);
            match self.settle(&message, &delivery, &verdict, &mut lease).await {
                Settled::Done => return,
                Settled::RetryInPlace => delivery.attempt += 1,
            }
        }
    }

    /// What a message's delivery needs to know before its first attempt here.
    fn prepare(&self, message: &jetstream::Message) -> InFlight {
        // Parsed once (the reply subject is split and its numbers parsed on every call).
        let info = message.info().ok();
        let key = info.as_ref().map(|i| (i.stream.to_owned(), i.stream_sequence)).unwrap_or_default();
        // A replay is tracked under the message it replays.
        let track_key = dead_letter::original_location(message).unwrap_or_else(|| key.clone());
        // JetStream counts deliveries; those handed back unattempted while the breaker was
        // open are not attempts.
        let delivered = info.as_ref().map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX));
        let attempt = delivered.saturating_sub(self.control.skips(&key)).max(1);
        let published = info.as_ref().map_or_else(OffsetDateTime::now_utc, |i| i.published);
        // No events about status events: a subscription to them must not feed itself.
        let announce = !attempt::is_status_event(message);
        let replayed = dead_letter::replays(message);
        InFlight { key, track_key, attempt, published, announce, replayed }
    }

    /// One attempt, counted (metrics, breaker, last error).
    async fn send(&self, message: &jetstream::Message, delivery: &InFlight) -> AttemptResult {
        if self.control.breaker_state() == BreakerState::HalfOpen {
            self.control.note_probe();
        }
        let (attempt, fetched) = (delivery.attempt, &delivery.key);
        let result = attempt::send(&self.engine.http, &self.sub, message, fetched, attempt, self.sub.ack_wait).await;
        self.control.record(&result, attempt);
        self.series.count(result.class);
        self.series.duration.record(result.elapsed.as_secs_f64());
        result
    }

    /// What the attempt's result means for the message (the retry policy decides), and the
    /// failure as dead letters and events report it.
    fn classify(&self, delivery: &InFlight, result: AttemptResult, started: OffsetDateTime) -> Verdict {
        let first_attempt = if result.class == Class::Delivered {
            started
        } else {
            // Remembered from this replica's first failure; after a redelivery to another
            // replica, the publish time is the honest lower bound.
            let first = if delivery.attempt == 1 { started } else { delivery.published };
            self.control.first_failure(&delivery.key, first)
        };
        let failure = Failure {
            result: result.clone(),
            attempts: delivery.attempt,
            first_attempt,
            last_attempt: OffsetDateTime::now_utc(),
        };
        let decision = self.sub.policy.decide(result.class, delivery.attempt, result.retry_after);
        Verdict { result, decision, failure }
    }

    /// Carries out the decision: ack, NAK, hold for an in-place retry, block, dead-letter or
    /// pause; with the tracking record and status events that go with it.
    async fn settle(
        &self,
        message: &jetstream::Message,
        delivery: &InFlight,
        verdict: &Verdict,
        lease: &mut Lease,
    ) -> Settled {
        let Verdict { result, decision, failure } = verdict;
        if !matches!(result.class, Class::Delivered | Class::Skipped) {
            self.log_failure(message, delivery, verdict);
            if delivery.attempt == 1 {
                self.announce("failed", delivery, message, failure).await;
            }
        }
        if !matches!(decision, Decision::Retry(_)) {
            self.control.forget(&delivery.key);
        }
        match *decision {
            Decision::Ack => self.acknowledge(message, delivery, result).await,
            Decision::Retry(delay) if self.sub.ordered => {
                return self.retry_in_place(message, delivery, result, delay, lease).await;
            }
            Decision::Retry(delay) => {
                self.track(delivery, DeliveryState::Retrying, result, Some(delay)).await;
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Decision::DeadLetter if self.sub.ordered && self.sub.on_exhausted == OnExhausted::Block => {
                self.block(message, delivery, failure).await;
            }
            Decision::DeadLetter => self.dead_letter(message, delivery, failure).await,
            Decision::PauseSubscription => {
                tracing::error!(
                    subscription = %self.sub.name,
                    endpoint = %self.sub.endpoint_redacted().unwrap_or_default(),
                    message_id = %attempt::message_id(message),
                    "endpoint gone (410): the subscription is paused until an operator resumes it"
                );
                self.track(delivery, DeliveryState::Paused, result, None).await;
                self.engine.pause(&self.sub, "endpoint answered 410 Gone", result).await;
                self.announce("paused", delivery, message, failure).await;
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
        Settled::Done
    }

    /// One log event per failed attempt, saying what happens next.
    fn log_failure(&self, message: &jetstream::Message, delivery: &InFlight, verdict: &Verdict) {
        let result = &verdict.result;
        let next = match verdict.decision {
            Decision::Retry(delay) => {
                let at = OffsetDateTime::now_utc() + delay;
                format!(
                    "retry at {} (in {})",
                    at.format(&Rfc3339).unwrap_or_default(),
                    humantime::format_duration(delay)
                )
            }
            Decision::DeadLetter if self.sub.ordered && self.sub.on_exhausted == OnExhausted::Block => {
                "attempts exhausted: block the subscription".to_owned()
            }
            Decision::DeadLetter => "attempts exhausted: dead letter".to_owned(),
            Decision::PauseSubscription => "pause the subscription".to_owned(),
            Decision::Ack => "give up (acknowledged)".to_owned(),
        };
        tracing::warn!(
            subscription = %self.sub.name,
            message_id = %attempt::message_id(message),
            attempt = delivery.attempt,
            class = result.class.slug(),
            status = result.status.unwrap_or(0),
            detail = %result.excerpt.chars().take(200).collect::<String>(),
            next = %next,
            "delivery failed"
        );
    }

    async fn acknowledge(&self, message: &jetstream::Message, delivery: &InFlight, result: &AttemptResult) {
        if result.class == Class::Skipped {
            self.track(delivery, DeliveryState::Skipped, result, None).await;
        } else if delivery.attempt > 1 || self.is_replay {
            // After failures, or a replayed dead letter: replace the old record.
            self.track(delivery, DeliveryState::Delivered, result, None).await;
        }
        let lag = OffsetDateTime::now_utc() - delivery.published;
        self.series.lag.record(lag.as_seconds_f64().max(0.0));
        let _ = message.ack().await;
    }

    /// Key-ordered: as [`Worker::acknowledge`], but the ack is confirmed before the key's next
    /// message goes out (a lost ack would redeliver it behind its successor).
    async fn acknowledge_keyed(&self, message: &jetstream::Message, delivery: &InFlight, result: &AttemptResult) {
        if result.class == Class::Skipped {
            self.track(delivery, DeliveryState::Skipped, result, None).await;
        } else if delivery.attempt > 1 || self.is_replay {
            self.track(delivery, DeliveryState::Delivered, result, None).await;
        }
        let lag = OffsetDateTime::now_utc() - delivery.published;
        self.series.lag.record(lag.as_seconds_f64().max(0.0));
        let mut backoff = Duration::from_millis(100);
        for _ in 0..5 {
            if message.double_ack().await.is_ok() {
                return;
            }
            if self.sleep(backoff).await {
                return;
            }
            backoff *= 2;
        }
    }

    /// Ordered: keep the message (and so the subscription's one slot) and retry in place; a
    /// NAK would let the next message overtake it.
    async fn retry_in_place(
        &self,
        message: &jetstream::Message,
        delivery: &InFlight,
        result: &AttemptResult,
        delay: Duration,
        lease: &mut Lease,
    ) -> Settled {
        self.track(delivery, DeliveryState::Retrying, result, Some(delay)).await;
        // The attempt just made kept the message alive with unconfirmed acks: confirm now. One
        // that lasted `ack_wait` or longer leaves the claim unproven; the message is then left
        // to come back after its ack_wait (a NAK could hand it out beside a replica that has it).
        self.renew(message, lease).await;
        if lease.lost {
            tracing::debug!(subscription = %self.sub.name, message_id = %attempt::message_id(message), "claim on a held message unproven after the attempt; left to JetStream");
            return Settled::Done;
        }
        if !self.hold(message, delay, Some(lease)).await {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return Settled::Done;
        }
        while let BreakerState::Open { until } = self.control.breaker_state() {
            if !self.hold_until(message, until, Some(lease)).await {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return Settled::Done;
            }
        }
        if !self.still_ours(message, lease).await {
            return Settled::Done;
        }
        Settled::RetryInPlace
    }

    /// Ordered with `on_exhausted = block`: the message holds the line and the subscription
    /// pauses until an operator steps in.
    async fn block(&self, message: &jetstream::Message, delivery: &InFlight, failure: &Failure) {
        let result = &failure.result;
        self.track(delivery, DeliveryState::Blocked, result, None).await;
        let reason = format!("blocked: message {} exhausted its attempts", attempt::message_id(message));
        self.engine.pause(&self.sub, &reason, result).await;
        self.announce("blocked", delivery, message, failure).await;
        let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
    }

    async fn dead_letter(&self, message: &jetstream::Message, delivery: &InFlight, failure: &Failure) {
        if let Err(err) = dead_letter::store(&self.engine.js, &self.sub.name, message, failure).await {
            // Never terminate what the dead-letter stream did not take.
            tracing::warn!(subscription = %self.sub.name, %err, "dead letter not stored; will retry");
            let _ = message.ack_with(AckKind::Nak(Some(self.sub.policy.delay_after(delivery.attempt)))).await;
            return;
        }
        self.after_dead_letter(message, delivery, failure).await;
        let _ = message.ack_with(AckKind::Term).await;
    }

    /// What follows a stored dead letter: the metric, the log, tracking and the event.
    async fn after_dead_letter(&self, message: &jetstream::Message, delivery: &InFlight, failure: &Failure) {
        // Counted as soon as it is stored (a scrape may already see it in the stream).
        self.series.dead_letters.increment(1);
        tracing::warn!(
            subscription = %self.sub.name,
            message_id = %attempt::message_id(message),
            attempts = delivery.attempt,
            class = failure.result.class.slug(),
            status = failure.result.status.unwrap_or(0),
            failing_since = %failure.first_attempt.format(&Rfc3339).unwrap_or_default(),
            "message dead-lettered"
        );
        self.track(delivery, DeliveryState::DeadLetter, &failure.result, None).await;
        if let Ok(depth) = dead_letter::count(&self.engine.js, &self.sub.name).await {
            catalogue::set_dead_letters(&self.sub.name, depth);
        }
        self.announce("dead_lettered", delivery, message, failure).await;
    }

    /// Publishes a status event, unless the message is itself one.
    async fn announce(
        &self,
        event: &'static str,
        delivery: &InFlight,
        message: &jetstream::Message,
        failure: &Failure,
    ) {
        if delivery.announce {
            dead_letter::publish_event(&self.engine.js, event, &self.sub.name, message, failure).await;
        }
    }

    /// Notes a noteworthy state for "where is my message?" (nothing for a first-try success).
    async fn track(&self, delivery: &InFlight, state: DeliveryState, result: &AttemptResult, next: Option<Duration>) {
        if !self.engine.tracking {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let (key, attempt) = (&delivery.track_key, delivery.attempt);
        let record = DeliveryRecord {
            state,
            attempts: attempt,
            replays: delivery.replayed.as_ref().map(|r| r.0),
            replayed_at: delivery.replayed.as_ref().map(|r| r.1.clone()),
            class: (result.class != Class::Delivered).then(|| result.class.slug().to_owned()),
            status: result.status,
            at: now.format(&Rfc3339).unwrap_or_default(),
            next_attempt: next.and_then(|d| (now + d).format(&Rfc3339).ok()),
        };
        tracking::record(&self.engine.js.client(), &self.sub.name, &key.0, key.1, &record).await;
    }

    /// A claim starting now: on a message just fetched, or on messages kept alive until now.
    pub(crate) fn lease(&self) -> Lease {
        Lease::new(Instant::now(), self.connects())
    }

    fn connects(&self) -> u64 {
        self.engine.js.client().statistics().connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An in-progress ack the consumer's leader confirms; the claim is lost when the previous
    /// confirmations leave a gap of `ack_wait` (or the connection was renewed meanwhile).
    pub(crate) async fn renew(&self, message: &jetstream::Message, lease: &mut Lease) {
        let sent = Instant::now();
        let confirmed =
            matches!(tokio::time::timeout(CONFIRM_WAIT, message.double_ack_with(AckKind::Progress)).await, Ok(Ok(())));
        self.extend(lease, sent, confirmed);
    }

    /// Notes a keep-alive sent at `sent` (confirmed or not) in the claim.
    pub(crate) fn extend(&self, lease: &mut Lease, sent: Instant, confirmed: bool) {
        lease.extend(self.sub.ack_wait, self.connects(), sent, confirmed, Instant::now());
    }

    /// The claim unbroken, on the same connection, with a tenth of `ack_wait` to spare.
    pub(crate) fn lease_holds(&self, lease: &Lease) -> bool {
        lease.holds(self.sub.ack_wait, self.connects(), Instant::now())
    }

    /// Whether the message may be attempted again now: a fresh confirmation, and the claim
    /// holds.
    pub(crate) async fn still_ours(&self, message: &jetstream::Message, lease: &mut Lease) -> bool {
        self.renew(message, lease).await;
        let ours = self.lease_holds(lease);
        if !ours {
            lease.lost = true;
            tracing::warn!(
                subscription = %self.sub.name,
                message_id = %attempt::message_id(message),
                "held message no longer confirmed as this replica's (connection or consumer leader changed): \
                 not attempted again here; JetStream delivers it after its ack_wait"
            );
        }
        ours
    }

    /// Keeps a message in progress for `delay`; false when cancelled.
    async fn hold(&self, message: &jetstream::Message, delay: Duration, lease: Option<&mut Lease>) -> bool {
        self.hold_until(message, Instant::now() + delay, lease).await
    }

    /// Keeps a message in progress until `until` (with confirmed in-progress acks when a claim
    /// is kept); false when cancelled.
    pub(crate) async fn hold_until(
        &self,
        message: &jetstream::Message,
        until: Instant,
        mut lease: Option<&mut Lease>,
    ) -> bool {
        let mut progress = tokio::time::interval(self.sub.ack_wait / 3);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                _ = progress.tick() => match lease.as_deref_mut() {
                    Some(lease) => self.renew(message, lease).await,
                    None => { let _ = message.ack_with(AckKind::Progress).await; }
                },
            }
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    const ACK_WAIT: Duration = Duration::from_secs(5);
    const S: fn(u64) -> Duration = Duration::from_millis;

    /// Keep-alives confirmed every third of ack_wait keep the claim; a retry is allowed.
    #[test]
    fn confirmations_every_third_of_ack_wait_keep_the_claim() {
        let t0 = Instant::now();
        let mut lease = Lease::new(t0, 1);
        for i in 1..=30 {
            let sent = t0 + S(1_666 * i);
            lease.extend(ACK_WAIT, 1, sent, true, sent + S(20));
            assert!(lease.holds(ACK_WAIT, 1, sent + S(30)), "after keep-alive {i}");
        }
    }

    /// An election: the confirmations stop for 4 s. The last one before it may not have reached
    /// the leader's replicas, so the gap counts from the one before: the claim is gone even
    /// though confirmations come back within ack_wait of the last one.
    #[test]
    fn a_gap_of_ack_wait_from_the_confirmation_before_the_last_breaks_the_claim() {
        let t0 = Instant::now();
        let mut lease = Lease::new(t0, 1);
        lease.extend(ACK_WAIT, 1, t0 + S(1_666), true, t0 + S(1_670));
        lease.extend(ACK_WAIT, 1, t0 + S(3_333), true, t0 + S(3_340));
        // An unanswered keep-alive while there is no leader.
        lease.extend(ACK_WAIT, 1, t0 + S(5_000), false, t0 + S(5_500));
        assert!(!lease.lost);
        // Answered again 4.2 s after the last confirmed one (within ack_wait), 5.9 s after the
        // one before it (not).
        lease.extend(ACK_WAIT, 1, t0 + S(7_500), true, t0 + S(7_550));
        assert!(lease.lost);
        assert!(!lease.holds(ACK_WAIT, 1, t0 + S(7_600)));
        // Lost stays lost.
        lease.extend(ACK_WAIT, 1, t0 + S(9_000), true, t0 + S(9_010));
        assert!(!lease.holds(ACK_WAIT, 1, t0 + S(9_020)));
    }

    /// A reconnection may have lost keep-alives: the claim is gone at once.
    #[test]
    fn a_reconnection_breaks_the_claim() {
        let t0 = Instant::now();
        let mut lease = Lease::new(t0, 1);
        assert!(!lease.holds(ACK_WAIT, 2, t0 + S(100)));
        lease.extend(ACK_WAIT, 2, t0 + S(200), true, t0 + S(210));
        assert!(lease.lost);
    }

    /// No confirmation for most of ack_wait (an attempt that took long, a stalled loop): no retry
    /// is started with less than a tenth of ack_wait left.
    #[test]
    fn a_claim_near_its_end_allows_no_attempt() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, 1);
        assert!(lease.holds(ACK_WAIT, 1, t0 + S(4_400)));
        assert!(!lease.holds(ACK_WAIT, 1, t0 + S(4_600)));
    }
}
