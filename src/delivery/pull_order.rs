//! Key order for pull subscriptions (`ordering = { key = … }` with `mode = "pull"`): a fetch
//! hands out at most one unacknowledged message per key; the key's later messages wait until
//! its head is acked or terminated, whichever replica the participant's requests reach.
//!
//! The replicas share one queue per subscription: a KV entry in [`ORDER_BUCKET`], changed only
//! by compare-and-set. Every message a fetch takes from the consumer is entered in its key's
//! list by stream sequence and stays unacknowledged in JetStream (the consumer's
//! `max_ack_pending` is the ordering buffer); only a key's first entry is handed out. The ack
//! removes it, and the next fetch hands out the key's next message, read from the stream by its
//! sequence. A key's place in the queue is fixed when its message is entered, so redeliveries
//! (a NAK, an ack wait running out) cannot reorder it.
//!
//! A message taken from the consumer but not yet entered (a concurrent fetch on another
//! replica, or one that died between the two) could be an earlier message of a key whose later
//! one is queued; so nothing is handed out while the consumer has more messages out than the
//! queue holds. After a replica's crash that lasts until the lost messages come back (one ack
//! wait), the same bound as the push takeover.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::pull::{Action, Parts, TokenKey, finished, take_now};
use super::subscription::Subscription;
use super::{DeliveryError, DeliveryKind, nats};

/// KV bucket of the key-ordered pull subscriptions' queues (one entry per subscription).
pub const ORDER_BUCKET: &str = "magistral_pull_order";

/// How often a fetch that found nothing to hand out looks again while it may wait.
const RECHECK: Duration = Duration::from_millis(100);

/// A key-ordered pull subscription's queue bucket, the ack ledger and its ack wait.
#[derive(Clone, Copy)]
pub struct KeyOrder<'a> {
    pub bucket: &'a kv::Store,
    /// [`super::pull::ACK_LEDGER`]: whether a head is finished already.
    pub ledger: &'a kv::Store,
    pub ack_wait: Duration,
}

/// One message entered in its key's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Stream sequence.
    q: u64,
    /// The latest JetStream ack subject of the message.
    r: String,
    /// Handed out until (Unix milliseconds; 0: not handed out). Past it, the head is free again.
    #[serde(default)]
    u: i64,
    /// Times handed out: the `delivery_count` the participant sees.
    #[serde(default)]
    n: i64,
    /// Which entering of the message this is (unique in the queue): a message removed and
    /// entered again is another entry, whose head must be checked in the ack ledger again.
    #[serde(default)]
    i: u64,
}

/// Every key with messages taken from the consumer and not yet acked, in stream order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Queue {
    keys: BTreeMap<String, Vec<Entry>>,
    /// The last [`Entry::i`] given.
    #[serde(default)]
    last: u64,
}

impl Queue {
    fn total(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Enters a message at its place in its key's list; a redelivery only renews its ack subject.
    ///
    /// A copy JetStream redelivered (its ack wait ran out while it waited here) can be taken by
    /// one fetch just before the participant acks the message and entered just after the ack
    /// removed it: entered again then, as a new entry. [`Queue::free_heads`] with the ack ledger
    /// finds it finished before it could be handed out a second time.
    fn record(&mut self, key: String, seq: u64, reply: String) {
        let list = self.keys.entry(key).or_default();
        match list.binary_search_by_key(&seq, |e| e.q) {
            Ok(i) => list[i].r = reply,
            Err(i) => {
                self.last += 1;
                list.insert(i, Entry { q: seq, r: reply, u: 0, n: 0, i: self.last });
            }
        }
    }

    fn find(&mut self, seq: u64) -> Option<(&String, &mut Vec<Entry>, usize)> {
        self.keys.iter_mut().find_map(|(k, list)| list.iter().position(|e| e.q == seq).map(|i| (k, list, i)))
    }

    /// Removes an acked or terminated message; its key's next one becomes the head.
    fn remove(&mut self, seq: u64) -> bool {
        let Some((key, list, i)) = self.find(seq) else { return false };
        let key = key.clone();
        list.remove(i);
        if list.is_empty() {
            self.keys.remove(&key);
        }
        true
    }

    fn hand_out_until(&mut self, seq: u64, until: i64) {
        if let Some((_, list, i)) = self.find(seq) {
            list[i].u = until;
        }
    }

    /// Keys whose head is handed out now.
    fn out(&self, now: i64) -> usize {
        self.keys.values().filter(|l| l.first().is_some_and(|e| e.u > now)).count()
    }

    /// Heads not handed out now, oldest first, as `(seq, entry id, times handed out)`.
    fn free_heads(&self, now: i64) -> Vec<(u64, u64, i64)> {
        let mut free: Vec<_> =
            self.keys.values().filter_map(|l| l.first()).filter(|e| e.u <= now).map(|e| (e.q, e.i, e.n)).collect();
        free.sort_unstable();
        free
    }

    /// Marks up to `max` free heads (oldest first) among `allowed` (`(seq, entry id)`: the heads
    /// checked in the ack ledger) handed out until `until`, and returns them.
    fn take_heads(&mut self, now: i64, until: i64, max: usize, allowed: &[(u64, u64)]) -> Vec<(String, Entry)> {
        let mut free: Vec<(u64, String)> = self
            .keys
            .iter()
            .filter_map(|(k, l)| {
                l.first().filter(|e| e.u <= now && allowed.contains(&(e.q, e.i))).map(|e| (e.q, k.clone()))
            })
            .collect();
        free.sort_unstable();
        let mut taken = Vec::new();
        for (_, key) in free.into_iter().take(max) {
            if let Some(head) = self.keys.get_mut(&key).and_then(|l| l.first_mut()) {
                head.u = until;
                head.n += 1;
                taken.push((key, head.clone()));
            }
        }
        taken
    }
}

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Changes the subscription's queue with compare-and-set, trying again when another replica
/// changed it meanwhile.
async fn change<T>(bucket: &kv::Store, name: &str, mut f: impl FnMut(&mut Queue) -> T) -> Result<T, DeliveryError> {
    for round in 0..64u32 {
        let entry = bucket.entry(name).await.map_err(nats)?;
        let (mut queue, revision) = match entry {
            // Stored data is not trusted to parse: an unreadable queue starts empty, and the
            // messages it held come back from the consumer after their ack wait.
            Some(e) if e.operation == kv::Operation::Put => {
                (serde_json::from_slice(&e.value).unwrap_or_default(), Some(e.revision))
            }
            Some(e) => (Queue::default(), Some(e.revision)),
            None => (Queue::default(), None),
        };
        let out = f(&mut queue);
        let bytes = serde_json::to_vec(&queue).map_err(|e| DeliveryError::new(DeliveryKind::Nats, e.to_string()))?;
        let stored = match revision {
            Some(r) => bucket.update(name, bytes.into(), r).await.is_ok(),
            None => bucket.create(name, bytes.into()).await.is_ok(),
        };
        if stored {
            return Ok(out);
        }
        // Lost the race: a short, growing, jittered pause before reading again.
        let jitter = rand::random::<u64>() % 10;
        tokio::time::sleep(Duration::from_millis(u64::from(round.min(20)) * 2 + jitter)).await;
    }
    Err(DeliveryError::new(DeliveryKind::Nats, "the key-order queue kept changing under this replica"))
}

/// Fetches up to `max` messages of a key-ordered pull subscription, at most one per key and at
/// most `max_in_flight` keys out at once, waiting up to `wait` for a first one.
///
/// # Errors
/// NATS refused or is unreachable.
pub(crate) async fn fetch(
    js: &jetstream::Context,
    key: &TokenKey,
    sub: &Subscription,
    order: KeyOrder<'_>,
    max: usize,
    wait: Duration,
) -> Result<Vec<Value>, DeliveryError> {
    let ordering = sub.ordering.as_ref().ok_or_else(|| DeliveryError::new(DeliveryKind::NoConsumer, "no ordering"))?;
    let (stream_name, _) =
        sub.spans.first().ok_or_else(|| DeliveryError::new(DeliveryKind::NoConsumer, "no stream"))?;
    let stream = js.get_stream(stream_name).await.map_err(nats)?;
    let mut consumer: jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer(&sub.consumer_name()).await.map_err(nats)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut arrived: Vec<jetstream::Message> = Vec::new();
    loop {
        // What the consumer has now; its ack-pending limit is the ordering buffer.
        let info = consumer.info().await.map_err(nats)?.clone();
        let room = usize::try_from(info.config.max_ack_pending)
            .unwrap_or(usize::MAX)
            .saturating_sub(info.num_ack_pending)
            .min(256);
        if room > 0 && (info.num_pending > 0 || info.num_ack_pending > 0) {
            arrived.extend(take_now(&consumer, room).await?);
        }
        let mut fetched: BTreeMap<u64, jetstream::Message> = BTreeMap::new();
        for m in arrived.drain(..) {
            if let Ok(i) = m.info() {
                fetched.insert(i.stream_sequence, m);
            }
        }
        if !fetched.is_empty() {
            let entries: Vec<(String, u64, String)> = fetched
                .iter()
                .map(|(seq, m)| {
                    let subject = super::attempt::original_subject(m);
                    let k = ordering.key.key_of(&subject, m.headers.as_ref(), &m.payload);
                    (k, *seq, m.reply.as_ref().map(ToString::to_string).unwrap_or_default())
                })
                .collect();
            enter(order.bucket, &sub.name, &entries).await?;
        }
        let out = hand_out(key, sub, order, &stream, &mut consumer, &fetched, max).await?;
        if !out.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(out);
        }
        // Nothing to hand out yet: wait for a new message (bounded), or look again shortly.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let pause = left.min(Duration::from_secs(1));
        if info.num_pending > 0 || room == 0 {
            tokio::time::sleep(left.min(RECHECK)).await;
        } else if let Ok(mut batch) = consumer.batch().max_messages(1).expires(pause).messages().await {
            while let Some(Ok(m)) = batch.next().await {
                arrived.push(m);
            }
        } else {
            tokio::time::sleep(left.min(RECHECK)).await;
        }
    }
}

/// Enters messages a fetch took from the consumer, `(key, stream sequence, ack subject)`, in
/// the subscription's queue at their places ([`Queue::record`]).
///
/// # Errors
/// NATS refused.
pub async fn enter(
    bucket: &kv::Store,
    subscription: &str,
    messages: &[(String, u64, String)],
) -> Result<(), DeliveryError> {
    change(bucket, subscription, |q| {
        for (key, seq, reply) in messages {
            q.record(key.clone(), *seq, reply.clone());
        }
    })
    .await
}

/// Hands out free heads when the queue holds every message the consumer has out.
#[allow(clippy::too_many_arguments)]
async fn hand_out(
    key: &TokenKey,
    sub: &Subscription,
    order: KeyOrder<'_>,
    stream: &jetstream::stream::Stream,
    consumer: &mut jetstream::consumer::Consumer<pull::Config>,
    fetched: &BTreeMap<u64, jetstream::Message>,
    max: usize,
) -> Result<Vec<Value>, DeliveryError> {
    let Some(current) = order.bucket.entry(&sub.name).await.map_err(nats)? else { return Ok(Vec::new()) };
    let queue: Queue = if current.operation == kv::Operation::Put {
        serde_json::from_slice(&current.value).unwrap_or_default()
    } else {
        Queue::default()
    };
    if queue.keys.is_empty() {
        return Ok(Vec::new());
    }
    // Free heads are checked in the ack ledger before they are handed out. A finished one was
    // acked where the queue was not told (a replica died between the two), or entered again
    // from a redelivered copy taken just before its ack ([`Queue::record`]): it is done, and
    // handing it out again would give the participant a message it finished (`already-acked`).
    let now = now_ms();
    let in_flight = sub.max_in_flight as usize;
    let room = in_flight.saturating_sub(queue.out(now)).min(max);
    let stream_name = stream.cached_info().config.name.as_str();
    let (mut done, mut ready) = (Vec::new(), Vec::new());
    for (seq, id, handed_out) in queue.free_heads(now) {
        // Every head handed out before (its time ran out), the others while there is room.
        if ready.len() >= room && handed_out == 0 {
            continue;
        }
        if finished(order.ledger, &sub.name, stream_name, seq).await.is_some() {
            done.push(seq);
        } else {
            ready.push((seq, id));
        }
    }
    if !done.is_empty() {
        tracing::debug!(subscription = %sub.name, seqs = ?done, "finished messages left in the key-order queue removed");
    }
    // Every message out is in the queue: nothing earlier of any key is elsewhere.
    let pending = consumer.info().await.map_err(nats)?.num_ack_pending;
    if pending > queue.total().saturating_sub(done.len()) {
        if !done.is_empty() {
            change(order.bucket, &sub.name, |q| {
                done.iter().for_each(|s| {
                    let _ = q.remove(*s);
                })
            })
            .await?;
        }
        return Ok(Vec::new());
    }
    let until = now + ms(order.ack_wait);
    // Only heads checked above, and only the very entries checked: a head entered again
    // meanwhile waits for the next look.
    let taken = change(order.bucket, &sub.name, |q| {
        for s in &done {
            q.remove(*s);
        }
        let room = in_flight.saturating_sub(q.out(now)).min(max);
        q.take_heads(now, until, room, &ready)
    })
    .await?;
    let mut out = Vec::with_capacity(taken.len());
    let mut gone = Vec::new();
    for (_, entry) in taken {
        let parts = match fetched.get(&entry.q) {
            Some(m) => Parts::of(m),
            None => match stream.get_raw_message(entry.q).await {
                Ok(m) => Parts::stored(m, stream.cached_info().config.name.clone()),
                Err(err) if matches!(err.kind(), jetstream::stream::RawMessageErrorKind::NoMessageFound) => {
                    // Gone from the stream (its limits): nothing to deliver, the key moves on.
                    gone.push(entry.q);
                    continue;
                }
                Err(err) => return Err(nats(err)),
            },
        };
        out.push(super::pull::describe_parts(key, sub, parts.with_reply(entry.r, entry.n)));
    }
    if !gone.is_empty() {
        change(order.bucket, &sub.name, |q| {
            gone.iter().for_each(|s| {
                let _ = q.remove(*s);
            })
        })
        .await?;
    }
    Ok(out)
}

/// Tells the queue what became of handed-out messages `(stream, seq, action, nak delay)`:
/// acked or terminated (the key moves on), NAKed (free again after the delay), in progress
/// (handed out for another ack wait). One compare-and-set for the whole request. Should this
/// fail after an ack, the next fetch finds the ack in the ledger and moves the key on.
///
/// # Errors
/// NATS refused.
pub async fn settle(
    order: KeyOrder<'_>,
    subscription: &str,
    done: &[(&str, u64, Action, Option<Duration>)],
) -> Result<(), DeliveryError> {
    // Replays are outside key order.
    let done: Vec<_> = done.iter().filter(|(stream, ..)| *stream != super::system::REPLAY_STREAM).collect();
    if done.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    change(order.bucket, subscription, |q| {
        for (_, seq, action, delay) in &done {
            match action {
                Action::Ack | Action::Term => {
                    let _ = q.remove(*seq);
                }
                Action::Nak => q.hand_out_until(*seq, now + delay.map_or(0, ms)),
                Action::InProgress => q.hand_out_until(*seq, now + ms(order.ack_wait)),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every free head, as if the ack ledger had found none finished.
    fn unchecked(q: &Queue, now: i64) -> Vec<(u64, u64)> {
        q.free_heads(now).into_iter().map(|(seq, id, _)| (seq, id)).collect()
    }

    proptest! {
        /// Whatever order messages are entered in and heads are taken and acked, each key's
        /// messages come out in stream order, one at a time.
        #[test]
        fn heads_come_out_in_stream_order_one_per_key(
            messages in prop::collection::vec((0u8..5, any::<bool>()), 1..60),
        ) {
            let mut q = Queue::default();
            // Entered in a shuffled order (as concurrent fetches might), sequences unique.
            let mut order: Vec<usize> = (0..messages.len()).collect();
            order.reverse();
            for i in order {
                q.record(format!("k{}", messages[i].0), i as u64 + 1, format!("r{i}"));
            }
            let mut delivered: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut now = 1_000;
            while q.total() > 0 {
                let taken = q.take_heads(now, now + 10, 3, &unchecked(&q, now));
                prop_assert!(!taken.is_empty());
                let mut keys: Vec<&String> = taken.iter().map(|(k, _)| k).collect();
                keys.dedup();
                prop_assert_eq!(keys.len(), taken.len(), "two heads of one key out at once");
                for (k, e) in &taken {
                    // A failing receiver's NAK: the same head comes again.
                    if messages[e.q as usize - 1].1 && e.n == 1 {
                        q.hand_out_until(e.q, 0);
                    } else {
                        delivered.entry(k.clone()).or_default().push(e.q);
                        q.remove(e.q);
                    }
                }
                now += 1;
            }
            for (k, seqs) in delivered {
                let want: Vec<u64> = messages
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| format!("k{}", m.0) == k)
                    .map(|(i, _)| i as u64 + 1)
                    .collect();
                prop_assert_eq!(seqs, want);
            }
        }
    }

    #[test]
    fn a_handed_out_head_holds_its_key_until_its_time_runs_out() {
        let mut q = Queue::default();
        q.record("a".into(), 1, "r1".into());
        q.record("a".into(), 2, "r2".into());
        q.record("b".into(), 3, "r3".into());
        let first = q.take_heads(100, 200, 10, &unchecked(&q, 100));
        assert_eq!(first.iter().map(|(_, e)| e.q).collect::<Vec<_>>(), [1, 3]);
        assert!(q.take_heads(150, 250, 10, &unchecked(&q, 150)).is_empty());
        assert_eq!(q.out(150), 2);
        // Not acked within its time: the same head again, never the next one.
        let again = q.take_heads(200, 300, 10, &unchecked(&q, 200));
        assert_eq!(again.iter().map(|(_, e)| (e.q, e.n)).collect::<Vec<_>>(), [(1, 2), (3, 2)]);
        assert_eq!(q.free_heads(300).iter().map(|(seq, _, n)| (*seq, *n)).collect::<Vec<_>>(), [(1, 2), (3, 2)]);
        // A redelivery renews the ack subject, not the place.
        q.record("a".into(), 1, "r1b".into());
        assert!(q.remove(1));
        assert_eq!(
            q.take_heads(250, 350, 10, &unchecked(&q, 250))
                .iter()
                .map(|(_, e)| (e.q, e.r.as_str()))
                .collect::<Vec<_>>(),
            [(2, "r2")]
        );
    }

    /// A redelivered copy entered after the message's ack removed it is a new entry: a look at
    /// the ack ledger that checked the message before cannot pass for it.
    #[test]
    fn a_message_entered_again_after_its_ack_is_a_new_entry() {
        let mut q = Queue::default();
        q.record("a".into(), 1, "r1".into());
        q.record("a".into(), 2, "r2".into());
        let checked = unchecked(&q, 100);
        assert_eq!(q.take_heads(100, 200, 10, &checked).iter().map(|(_, e)| e.q).collect::<Vec<_>>(), [1]);
        // Acked: removed. Then a fetch that took a redelivered copy before the ack enters it.
        assert!(q.remove(1));
        q.record("a".into(), 1, "r1-redelivered".into());
        assert_eq!(q.free_heads(150).first().map(|(seq, _, n)| (*seq, *n)), Some((1, 0)));
        // The head checked before the ack does not stand for it, nor for the message behind it.
        assert!(q.take_heads(150, 250, 10, &checked).is_empty());
        // The ledger finds it finished: removed, and the key moves on.
        assert!(q.remove(1));
        assert_eq!(q.take_heads(150, 250, 10, &unchecked(&q, 150)).iter().map(|(_, e)| e.q).collect::<Vec<_>>(), [2]);
    }
}
