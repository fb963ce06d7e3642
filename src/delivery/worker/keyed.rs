//! Key-ordered delivery (`ordering = { key = … }`): within a key, stream order and one
//! message at a time; across keys, up to `max_in_flight` at once.
//!
//! The consumer has a priority group with the `pinned_client` policy, so of all replicas only
//! one pulls at a time; the pin moves when that one stops pulling for `pinned_ttl`. The pinned
//! replica keeps every message it pulled (up to `max_ack_pending` = the ordering buffer) in a
//! queue per key, sorted by stream sequence, sends the head of up to `max_in_flight` keys,
//! retries a failing head in place (its key waits, the others flow) and acks each message
//! (double ack) once it is settled. Waiting messages are kept alive with in-progress acks.
//!
//! After a takeover, the messages the previous replica held come back only when their ack wait
//! ends; until every unacknowledged message of the consumer is in this replica's hands, nothing
//! is sent (see [`Scheduler::check_recovered`]), so a key's later message never overtakes an
//! earlier one held by the replica that went away.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::attempt;
use super::super::breaker::BreakerState;
use super::super::dead_letter::{self, Failure};
use super::super::retry_policy::{Class, Decision};
use super::{InFlight, Lease, Worker};
use crate::config::OnKeyExhausted;
use crate::tracking::DeliveryState;

/// The consumer's priority group.
pub(crate) const GROUP: &str = "magistral";

/// Key in the status bucket of one worker's parked keys.
#[must_use]
pub(crate) fn parked_entry(subscription: &str, stream: &str) -> String {
    format!("parked.{subscription}.{stream}")
}

/// Subject the replicas' key-ordered workers answer operator actions on.
#[must_use]
pub(crate) fn control_subject(subscription: &str) -> String {
    format!("magistral.control.ordering.{subscription}")
}

/// A key whose head message failed and is not yet delivered, dead-lettered or skipped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParkedKey {
    pub key: String,
    /// The head message's id (`ce-id`, else `Nats-Msg-Id`, else stream and sequence).
    pub message_id: String,
    pub stream: String,
    pub seq: u64,
    pub attempts: u32,
    /// `retrying` (attempts left) or `parked` (attempts used up, waiting for an operator).
    pub state: String,
    pub last_error: super::super::LastError,
    /// When the head message first failed.
    pub since: String,
    /// Messages of the key waiting behind the head.
    pub waiting: usize,
    /// When the next attempt is due (`retrying` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
}

/// An operator's action on a parked key, sent to every replica; the one holding the key answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyAction {
    pub key: String,
    /// `skip` (dead-letter the head, release the key) or `retry` (attempt it now).
    pub action: String,
    pub by: String,
}

/// What the replica holding the key answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyActionDone {
    pub key: String,
    pub message_id: String,
    pub action: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Skip,
    RetryNow,
    /// Give the message back unsettled (this replica lets go of the subscription).
    LetGo,
}

/// A head delivery's end: the message was acked or terminated (`settled`), or let go unsettled
/// (shutdown), then NAKed for whoever delivers next.
struct Finished {
    key: String,
    seq: u64,
    settled: bool,
}

/// State shared between the scheduler and its delivery tasks.
struct Shared {
    /// Attempts under way (`max_in_flight`): a head waiting for its next attempt or for an
    /// operator holds none, so a parked key never takes a slot from the others.
    slots: Arc<tokio::sync::Semaphore>,
    max_slots: usize,
    /// A slot came free: the scheduler may send another head.
    freed: tokio::sync::Notify,
    parked: Mutex<BTreeMap<String, ParkedKey>>,
    /// The parked set changed since it was last stored.
    dirty: std::sync::atomic::AtomicBool,
    /// The consumer is paused (410 Gone, or an operator): no attempts until resumed.
    paused: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn park(&self, entry: ParkedKey) {
        if let Ok(mut parked) = self.parked.lock() {
            parked.insert(entry.key.clone(), entry);
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn release(&self, key: &str) {
        if let Ok(mut parked) = self.parked.lock()
            && parked.remove(key).is_some()
        {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// One key's messages on this replica.
#[derive(Default)]
struct KeyQueue {
    /// Waiting messages by stream sequence.
    waiting: BTreeMap<u64, jetstream::Message>,
    /// The head being delivered, and the channel to its task.
    busy: Option<(u64, mpsc::UnboundedSender<Command>, String)>,
    /// In the ready queue.
    queued: bool,
}

/// Settled sequences remembered, so a redelivery after a lost ack is acked and dropped.
const REMEMBERED_SETTLED: usize = 100_000;

struct Scheduler {
    worker: Worker,
    shared: Arc<Shared>,
    keys: HashMap<String, KeyQueue>,
    ready: VecDeque<String>,
    /// Head delivery tasks running (attempting, or waiting between attempts).
    heads: usize,
    /// Messages held (waiting or in flight).
    held: usize,
    settled: BTreeSet<u64>,
    /// Every unacknowledged message of the consumer is in this replica's hands.
    recovered: bool,
    /// Since when this replica holds messages without being `recovered`.
    unrecovered_since: Option<Instant>,
    paused: bool,
    /// This replica has been given messages (it holds or held the pin).
    active: bool,
    last_check: Option<Instant>,
    last_tick: Option<Instant>,
    last_store: Option<Instant>,
    next_slot: Instant,
    finished_tx: mpsc::UnboundedSender<Finished>,
    /// The claim on the waiting messages (see [`Lease`]): broken, they may be another
    /// replica's now, and all are handed back.
    lease: Lease,
}

impl Worker {
    pub(super) fn keyed_consumer_config(&self, config: &mut pull::Config) {
        if let Some(ordering) = &self.sub.ordering {
            // The ordering buffer: messages waiting behind their key's head stay unacknowledged.
            config.max_ack_pending = i64::from(ordering.buffer);
            if self.sub.mode == crate::config::SubscriptionMode::Pull {
                // Any replica serves a participant's fetch; the key-order queue in KV orders them.
                return;
            }
            config.priority_policy = jetstream::consumer::PriorityPolicy::PinnedClient;
            config.priority_groups = vec![GROUP.to_owned()];
            config.priority_timeout = ordering.pinned_ttl;
        }
    }

    /// The key-ordered worker's loop; runs until cancelled.
    pub(super) async fn run_keyed(self, consumer: Consumer<pull::Config>) {
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
        let max_slots = self.sub.max_in_flight as usize;
        let shared = Arc::new(Shared {
            slots: Arc::new(tokio::sync::Semaphore::new(max_slots)),
            max_slots,
            freed: tokio::sync::Notify::new(),
            parked: Mutex::default(),
            dirty: std::sync::atomic::AtomicBool::default(),
            paused: tokio::sync::watch::Sender::default(),
        });
        let sub_name = self.sub.name.clone();
        let control = self.engine.js.client().subscribe(control_subject(&sub_name)).await.ok();
        let mut control = control.map(futures::StreamExt::boxed);
        let lease = self.lease();
        let mut sched = Scheduler {
            worker: self,
            shared,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            heads: 0,
            held: 0,
            settled: BTreeSet::new(),
            recovered: false,
            unrecovered_since: None,
            paused: false,
            active: false,
            last_check: None,
            last_tick: None,
            last_store: None,
            next_slot: Instant::now(),
            finished_tx,
            lease,
        };
        let ordering = sched.worker.sub.ordering.clone().expect("a keyed worker has ordering");
        // Pull requests renewed well within the pin's lifetime, or the pin is lost between them.
        let expires = (ordering.pinned_ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(30));
        let batch = (ordering.buffer as usize).min(256);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut progress = tokio::time::interval(sched.worker.sub.ack_wait / 3);
        let mut backoff = Duration::from_millis(200);
        let mut consumer = consumer;
        'outer: loop {
            let messages =
                consumer.stream().group(GROUP).expires(expires).max_messages_per_batch(batch).messages().await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(err) => {
                    tracing::debug!(subscription = %sub_name, %err, "pull stream not opened; retrying");
                    if sched.worker.sleep(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if let Ok(fresh) = sched.worker.ensure_consumer().await {
                        consumer = fresh;
                    }
                    continue;
                }
            };
            loop {
                sched.dispatch();
                let rate_wait = sched.rate_blocked();
                tokio::select! {
                    () = sched.worker.cancel.cancelled() => break 'outer,
                    next = messages.next() => match next {
                        Some(Ok(message)) => {
                            backoff = Duration::from_millis(200);
                            sched.receive(message).await;
                        }
                        Some(Err(err)) => {
                            tracing::debug!(subscription = %sub_name, %err, "pull failed");
                            if sched.worker.sleep(backoff).await {
                                break 'outer;
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            if let Ok(fresh) = sched.worker.ensure_consumer().await {
                                consumer = fresh;
                            }
                            // Whatever happened, another replica may have delivered meanwhile.
                            sched.recovered = false;
                            continue 'outer;
                        }
                        None => {
                            sched.recovered = false;
                            continue 'outer;
                        }
                    },
                    Some(done) = finished_rx.recv() => sched.finish(done).await,
                    () = sched.shared.freed.notified() => {}
                    Some(request) = async { match control.as_mut() { Some(c) => c.next().await, None => None } } => {
                        sched.operator(request).await;
                    }
                    _ = tick.tick() => sched.tick(&consumer).await,
                    _ = progress.tick() => sched.keep_alive().await,
                    () = async { match rate_wait { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
                }
            }
        }
        sched.shutdown(&mut finished_rx).await;
    }
}

impl Scheduler {
    fn ordering(&self) -> &crate::delivery::subscription::KeyOrdering {
        self.worker.sub.ordering.as_ref().expect("a keyed worker has ordering")
    }

    fn key_of(&self, message: &jetstream::Message) -> String {
        let subject = attempt::original_subject(message);
        self.ordering().key.key_of(&subject, message.headers.as_ref(), &message.payload)
    }

    async fn receive(&mut self, message: jetstream::Message) {
        self.active = true;
        let Ok(seq) = message.info().map(|i| i.stream_sequence) else { return };
        if self.settled.contains(&seq) {
            // Settled here, but the ack was lost: ack again, deliver nothing.
            let _ = message.ack().await;
            return;
        }
        let key = self.key_of(&message);
        let queue = self.keys.entry(key.clone()).or_default();
        if queue.busy.as_ref().is_some_and(|(s, _, _)| *s == seq) {
            // The head in flight came again (its ack wait ran out); its task keeps it.
            return;
        }
        if queue.waiting.insert(seq, message).is_none() {
            self.held += 1;
            if self.shared.parked.lock().is_ok_and(|p| p.contains_key(&key)) {
                // Its `waiting` count changed.
                self.shared.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if queue.busy.is_none() && !queue.queued {
            queue.queued = true;
            self.ready.push_back(key);
        }
        if !self.recovered && self.last_check.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
            self.check_recovered().await;
        }
    }

    /// Every message the consumer has out unacknowledged is held here: nothing earlier of any
    /// key can still come from another replica, and what comes next is later in the stream.
    async fn check_recovered(&mut self) {
        self.last_check = Some(Instant::now());
        let Ok(stream) = self.worker.engine.js.get_stream(&self.worker.stream).await else { return };
        let Ok(info) = stream.consumer_info(self.worker.sub.consumer_name()).await else { return };
        self.paused = info.paused;
        let _ = self.shared.paused.send_replace(info.paused);
        if !self.recovered && info.num_ack_pending <= self.held {
            self.unrecovered_since = None;
            if self.held > 0 {
                tracing::debug!(subscription = %self.worker.sub.name, held = self.held, "key-ordered delivery starts");
            }
            self.recovered = true;
        }
    }

    fn rate_blocked(&self) -> Option<Instant> {
        (self.worker.sub.rate_limit.is_some() && self.next_slot > Instant::now() && !self.ready.is_empty())
            .then_some(self.next_slot)
    }

    /// Sends the heads of ready keys while there is room.
    fn dispatch(&mut self) {
        // Stood still past pinned_ttl: the next tick checks first (see `tick`).
        let stalled = self.last_tick.is_some_and(|t| t.elapsed() > self.ordering().pinned_ttl);
        if stalled
            || !self.recovered
            || !self.worker.lease_holds(&self.lease)
            || self.paused
            || self.worker.engine.js.client().connection_state() != async_nats::connection::State::Connected
        {
            return;
        }
        let probe = match self.worker.control.breaker_state() {
            BreakerState::Closed => false,
            // One probe: only when no attempt is under way.
            BreakerState::HalfOpen => true,
            BreakerState::Open { .. } => return,
        };
        if probe && self.shared.slots.available_permits() < self.shared.max_slots {
            return;
        }
        while !self.ready.is_empty() {
            if self.rate_blocked().is_some() {
                return;
            }
            let Ok(permit) = self.shared.slots.clone().try_acquire_owned() else { return };
            let Some(key) = self.ready.pop_front() else { return };
            let Some(queue) = self.keys.get_mut(&key) else { continue };
            queue.queued = false;
            let Some((seq, message)) = queue.waiting.pop_first() else { continue };
            let (tx, rx) = mpsc::unbounded_channel();
            let id = attempt::message_id(&message);
            queue.busy = Some((seq, tx, id));
            self.heads += 1;
            if let Some(rate) = self.worker.sub.rate_limit {
                self.next_slot = self.next_slot.max(Instant::now()) + Duration::from_secs_f64(1.0 / rate);
            }
            let waiting = queue.waiting.len();
            let task = Head {
                worker: self.worker.handle(),
                shared: self.shared.clone(),
                key,
                seq,
                waiting,
                commands: rx,
                finished: self.finished_tx.clone(),
                permit: Some(permit),
                lease: self.lease,
            };
            tokio::spawn(task.run(message));
            if probe {
                return;
            }
        }
    }

    async fn finish(&mut self, done: Finished) {
        self.heads = self.heads.saturating_sub(1);
        self.held = self.held.saturating_sub(1);
        if done.settled {
            if self.settled.len() >= REMEMBERED_SETTLED {
                self.settled.pop_first();
            }
            self.settled.insert(done.seq);
        }
        let Some(queue) = self.keys.get_mut(&done.key) else { return };
        queue.busy = None;
        if !done.settled {
            // Let go unsettled: not ours to order any more.
            self.recovered = false;
        }
        if queue.waiting.is_empty() {
            self.keys.remove(&done.key);
        } else if !queue.queued {
            queue.queued = true;
            self.ready.push_back(done.key);
        }
    }

    /// An operator's action; answered only by the replica holding the key.
    async fn operator(&mut self, request: async_nats::Message) {
        let Ok(action) = serde_json::from_slice::<KeyAction>(&request.payload) else { return };
        let Some(reply) = request.reply else { return };
        let parked = self.shared.parked.lock().ok().is_some_and(|p| p.contains_key(&action.key));
        let Some((_, tx, id)) = self.keys.get(&action.key).and_then(|q| q.busy.as_ref()) else { return };
        if !parked {
            return;
        }
        let command: Command = match action.action.as_str() {
            "skip" => Command::Skip,
            "retry" => Command::RetryNow,
            _ => return,
        };
        if tx.send(command).is_err() {
            return;
        }
        tracing::info!(subscription = %self.worker.sub.name, key = %action.key, message_id = %id, action = %action.action, by = %action.by, "operator action on a parked key");
        let answer = KeyActionDone { key: action.key, message_id: id.clone(), action: action.action };
        if let Ok(body) = serde_json::to_vec(&answer) {
            let _ = self.worker.engine.js.client().publish(reply, body.into()).await;
        }
    }

    /// Every half second: recovery and pause checks, gauges, the parked keys for operators.
    async fn tick(&mut self, _consumer: &Consumer<pull::Config>) {
        if !self.active {
            return;
        }
        // This replica stood still (stopped, starved) long enough to lose the pin: another may
        // have taken over the messages held here.
        if self.last_tick.replace(Instant::now()).is_some_and(|t| t.elapsed() > self.ordering().pinned_ttl) {
            tracing::warn!(subscription = %self.worker.sub.name, "delivery stood still past pinned_ttl; checking who delivers");
            self.recovered = false;
        }
        if self.recovered || self.held == 0 {
            self.unrecovered_since = None;
        } else {
            let since = *self.unrecovered_since.get_or_insert_with(Instant::now);
            // A takeover waits up to one ack wait for the messages of a replica that died. Longer
            // means another replica holds the pin (and waits for what this one holds): let go.
            if since.elapsed() > self.worker.sub.ack_wait * 2 + self.ordering().pinned_ttl {
                self.let_go().await;
            }
        }
        if self.worker.engine.js.client().connection_state() != async_nats::connection::State::Connected {
            // Cut off: another replica may take the pin meanwhile.
            self.recovered = false;
        } else if !self.recovered || self.paused || self.last_check.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
        {
            self.check_recovered().await;
        }
        let now = OffsetDateTime::now_utc();
        let oldest = self
            .keys
            .values()
            .filter_map(|q| q.waiting.values().next())
            .filter_map(|m| m.info().ok().map(|i| i.published))
            .min();
        let lag = oldest.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0));
        let parked = self.shared.parked.lock().map(|p| p.len()).unwrap_or(0);
        self.worker.control.set_keyed_gauges(&self.worker.stream, parked, lag, self.keys.len());
        // Refreshed while this replica holds something: one that let go must not keep
        // overwriting the list of the one delivering now.
        let periodic = self.held > 0 && self.last_store.is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if self.shared.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) || periodic {
            self.store_parked().await;
        }
    }

    async fn store_parked(&mut self) {
        self.last_store = Some(Instant::now());
        let mut list: Vec<ParkedKey> =
            self.shared.parked.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        for entry in &mut list {
            entry.waiting = self.keys.get(&entry.key).map_or(0, |q| q.waiting.len());
        }
        self.worker.engine.store_parked(&parked_entry(&self.worker.sub.name, &self.worker.stream), &list).await;
    }

    /// Gives every held message back to JetStream (waiting ones NAKed now, heads at their next
    /// wait), so whichever replica holds the pin can deliver them in order.
    async fn let_go(&mut self) {
        tracing::warn!(
            subscription = %self.worker.sub.name,
            stream = %self.worker.stream,
            held = self.held,
            "another replica delivers this subscription now: handing back the messages held here"
        );
        for queue in self.keys.values_mut() {
            for message in std::mem::take(&mut queue.waiting).into_values() {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                self.held = self.held.saturating_sub(1);
            }
            queue.queued = false;
            if let Some((_, tx, _)) = &queue.busy {
                let _ = tx.send(Command::LetGo);
            }
        }
        self.keys.retain(|_, q| q.busy.is_some());
        self.ready.clear();
        self.unrecovered_since = Some(Instant::now());
    }

    /// In-progress acks for the waiting messages (a head in flight keeps its own alive), the
    /// last one confirmed: the leader handles one connection's acks in order, so that answer
    /// vouches for all. A broken claim hands everything back.
    async fn keep_alive(&mut self) {
        let mut last = None;
        for queue in self.keys.values() {
            for message in queue.waiting.values() {
                if let Some(previous) = last.replace(message) {
                    let _ = previous.ack_with(AckKind::Progress).await;
                }
            }
        }
        let Some(last) = last else {
            // Nothing waits: what comes next is fresh.
            self.lease = self.worker.lease();
            return;
        };
        let mut lease = self.lease;
        self.worker.renew(last, &mut lease).await;
        self.lease = lease;
        if lease.lost {
            tracing::warn!(subscription = %self.worker.sub.name, "waiting messages no longer confirmed as this replica's (connection or consumer leader changed)");
            self.let_go().await;
            self.recovered = false;
            self.lease = self.worker.lease();
        }
    }

    /// Lets go of everything: waiting messages are NAKed so the next pinned replica gets them
    /// at once; delivery tasks NAK their own.
    async fn shutdown(&mut self, finished: &mut mpsc::UnboundedReceiver<Finished>) {
        for queue in self.keys.values() {
            for message in queue.waiting.values() {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
        while self.heads > 0 {
            match tokio::time::timeout(Duration::from_secs(15), finished.recv()).await {
                Ok(Some(_)) => self.heads -= 1,
                _ => break,
            }
        }
        if self.active
            && let Ok(stream) = self.worker.engine.js.get_stream(&self.worker.stream).await
        {
            // Hand the pin over now rather than after pinned_ttl.
            let _ = stream.unpin_consumer(&self.worker.sub.consumer_name(), GROUP).await;
        }
    }
}

/// The delivery of one key's head message, attempt after attempt, until it is settled.
struct Head {
    worker: Worker,
    shared: Arc<Shared>,
    key: String,
    seq: u64,
    waiting: usize,
    commands: mpsc::UnboundedReceiver<Command>,
    finished: mpsc::UnboundedSender<Finished>,
    /// The head's slot while it attempts.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The claim on the message, from the scheduler's on the waiting ones.
    lease: Lease,
}

/// How a head's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Acked or dead-lettered.
    Settled,
    /// Given back (NAKed) for whoever delivers next.
    Unsettled,
    /// No longer confirmed as this replica's: left to JetStream, untouched.
    Lost,
}

/// Why a wait ended.
enum Woken {
    Due,
    Command(Command),
    Cancelled,
}

impl Head {
    async fn run(mut self, message: jetstream::Message) {
        let outcome = self.deliver(&message).await;
        if outcome == Outcome::Unsettled {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
        let settled = outcome == Outcome::Settled;
        self.free_slot();
        self.shared.release(&self.key);
        self.worker.control.forget(&(self.worker.stream.clone(), self.seq));
        let _ = self.finished.send(Finished { key: self.key.clone(), seq: self.seq, settled });
    }

    async fn deliver(&mut self, message: &jetstream::Message) -> Outcome {
        let mut delivery = self.worker.prepare(message);
        let mut since: Option<OffsetDateTime> = None;
        let mut retry = false;
        loop {
            // The breaker and a paused consumer hold every key.
            if !self.wait_until_open(message).await || !self.take_slot(message).await {
                return Outcome::Unsettled;
            }
            // A retry goes out only while the message is confirmed as this replica's; the first
            // attempt rests on the scheduler's claim on the waiting messages.
            let ours = if retry {
                self.worker.still_ours(message, &mut self.lease).await
            } else {
                self.worker.lease_holds(&self.lease)
            };
            if !ours {
                return Outcome::Lost;
            }
            retry = true;
            let started = OffsetDateTime::now_utc();
            let result = self.worker.send(message, &delivery).await;
            let verdict = self.worker.classify(&delivery, result, started);
            let failed = !matches!(verdict.result.class, Class::Delivered | Class::Skipped);
            if failed {
                self.worker.log_failure(message, &delivery, &verdict);
                if delivery.attempt == 1 {
                    self.worker.announce("failed", &delivery, message, &verdict.failure).await;
                }
                since.get_or_insert(verdict.failure.first_attempt);
            }
            let wait = match verdict.decision {
                Decision::Ack => {
                    self.worker.acknowledge_keyed(message, &delivery, &verdict.result).await;
                    return Outcome::Settled;
                }
                Decision::Retry(delay) => {
                    self.park(message, &delivery, &verdict.failure, since, "retrying", Some(delay));
                    let state = DeliveryState::Retrying;
                    self.worker.track(&delivery, state, &verdict.result, Some(delay)).await;
                    Some(delay)
                }
                Decision::DeadLetter
                    if self
                        .worker
                        .sub
                        .ordering
                        .as_ref()
                        .is_some_and(|o| o.on_exhausted == OnKeyExhausted::DeadLetter) =>
                {
                    return self.dead_letter(message, &delivery, &verdict.failure).await;
                }
                Decision::DeadLetter => {
                    self.park(message, &delivery, &verdict.failure, since, "parked", None);
                    let state = DeliveryState::Blocked;
                    self.worker.track(&delivery, state, &verdict.result, None).await;
                    self.worker.announce("blocked", &delivery, message, &verdict.failure).await;
                    None
                }
                Decision::PauseSubscription => {
                    self.park(message, &delivery, &verdict.failure, since, "retrying", None);
                    let state = DeliveryState::Paused;
                    self.worker.track(&delivery, state, &verdict.result, None).await;
                    self.worker.engine.pause(&self.worker.sub, "endpoint answered 410 Gone", &verdict.result).await;
                    self.worker.announce("paused", &delivery, message, &verdict.failure).await;
                    let _ = self.shared.paused.send_replace(true);
                    // The next attempt waits for the resume (wait_until_open).
                    Some(Duration::ZERO)
                }
            };
            // The attempt kept the message alive with unconfirmed acks: confirm before waiting.
            self.worker.renew(message, &mut self.lease).await;
            match self.wait(message, wait).await {
                Woken::Due | Woken::Command(Command::RetryNow) => delivery.attempt += 1,
                Woken::Command(Command::LetGo) | Woken::Cancelled => return Outcome::Unsettled,
                Woken::Command(Command::Skip) => {
                    let mut failure = verdict.failure.clone();
                    failure.last_attempt = OffsetDateTime::now_utc();
                    return self.dead_letter(message, &delivery, &failure).await;
                }
            }
        }
    }

    fn free_slot(&mut self) {
        if self.permit.take().is_some() {
            self.shared.freed.notify_one();
        }
    }

    /// A slot for the next attempt, keeping the message in progress meanwhile; false when
    /// cancelled.
    async fn take_slot(&mut self, message: &jetstream::Message) -> bool {
        if self.permit.is_some() {
            return true;
        }
        let mut progress = tokio::time::interval(self.worker.sub.ack_wait / 3);
        loop {
            tokio::select! {
                () = self.worker.cancel.cancelled() => return false,
                permit = self.shared.slots.clone().acquire_owned() => match permit {
                    Ok(p) => {
                        self.permit = Some(p);
                        return true;
                    }
                    Err(_) => return false,
                },
                _ = progress.tick() => self.worker.renew(message, &mut self.lease).await,
            }
        }
    }

    /// Waits for `delay` (none: for an operator), keeping the message in progress; the slot
    /// is given up meanwhile.
    async fn wait(&mut self, message: &jetstream::Message, delay: Option<Duration>) -> Woken {
        self.free_slot();
        let until = delay.map(|d| Instant::now() + d);
        let mut progress = tokio::time::interval(self.worker.sub.ack_wait / 3);
        loop {
            tokio::select! {
                () = self.worker.cancel.cancelled() => return Woken::Cancelled,
                () = async { match until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => return Woken::Due,
                c = self.commands.recv() => match c {
                    Some(c) => return Woken::Command(c),
                    None => return Woken::Cancelled,
                },
                _ = progress.tick() => self.worker.renew(message, &mut self.lease).await,
            }
        }
    }

    /// Holds while the breaker is open or the consumer paused; false when cancelled.
    async fn wait_until_open(&mut self, message: &jetstream::Message) -> bool {
        let mut paused = self.shared.paused.subscribe();
        loop {
            if *paused.borrow_and_update() {
                let mut progress = tokio::time::interval(self.worker.sub.ack_wait / 3);
                tokio::select! {
                    () = self.worker.cancel.cancelled() => return false,
                    _ = paused.changed() => {}
                    _ = progress.tick() => self.worker.renew(message, &mut self.lease).await,
                }
                continue;
            }
            match self.worker.control.breaker_state() {
                BreakerState::Open { until } => {
                    if !self.worker.hold_until(message, until, Some(&mut self.lease)).await {
                        return false;
                    }
                }
                _ => return true,
            }
        }
    }

    fn park(
        &self,
        message: &jetstream::Message,
        delivery: &InFlight,
        failure: &Failure,
        since: Option<OffsetDateTime>,
        state: &str,
        next: Option<Duration>,
    ) {
        let result = &failure.result;
        let now = OffsetDateTime::now_utc();
        self.shared.park(ParkedKey {
            key: self.key.clone(),
            message_id: attempt::message_id(message),
            stream: delivery.key.0.clone(),
            seq: delivery.key.1,
            attempts: delivery.attempt,
            state: state.to_owned(),
            last_error: super::super::LastError {
                class: result.class.slug().to_owned(),
                status: result.status,
                detail: result.excerpt.chars().take(200).collect(),
                attempt: delivery.attempt,
                at: now.format(&Rfc3339).unwrap_or_default(),
            },
            since: since.unwrap_or(now).format(&Rfc3339).unwrap_or_default(),
            waiting: self.waiting,
            next_attempt: next.and_then(|d| (now + d).format(&Rfc3339).ok()),
        });
    }

    /// Stores the head in the dead-letter stream (until it takes it) and terminates it.
    /// Unsettled when cancelled before the dead-letter stream took it.
    async fn dead_letter(&mut self, message: &jetstream::Message, delivery: &InFlight, failure: &Failure) -> Outcome {
        let mut backoff = Duration::from_millis(500);
        while let Err(err) = dead_letter::store(&self.worker.engine.js, &self.worker.sub.name, message, failure).await {
            tracing::warn!(subscription = %self.worker.sub.name, %err, "dead letter not stored; will retry");
            if let Woken::Cancelled = self.wait(message, Some(backoff)).await {
                return Outcome::Unsettled;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        self.worker.after_dead_letter(message, delivery, failure).await;
        let _ = message.double_ack_with(AckKind::Term).await;
        Outcome::Settled
    }
}
