//! Key-ordered push subscriptions (`ordering = { key = … }`) against a real nats-server and a
//! real HTTP receiver: per-key order under random failures, with one replica and with two
//! (one killed with SIGKILL midway), a poison message parking only its key, and the operator's
//! skip releasing it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, OPS, scenario, subscription};
use crate::common::nats::NatsServer;
use crate::common::process::GatewayProcess;
use crate::common::receiver::{Answer, Receiver};

const KEYS: usize = 50;
const PER_KEY: usize = 40;

/// What the receiver answered each request (by arrival index): true for 2xx.
type Outcomes = Arc<Mutex<HashMap<usize, bool>>>;

/// A receiver failing `fail_percent` of attempts at random, answering in 0–20 ms.
async fn flaky_receiver(fail_percent: u32) -> (Receiver, Outcomes) {
    let outcomes: Outcomes = Arc::default();
    let seen = outcomes.clone();
    let receiver = Receiver::scripted(move |n, _| {
        let mut rng = rand::rng();
        let ok = rng.random_range(0..100) >= fail_percent;
        seen.lock().unwrap().insert(n, ok);
        let delay = Duration::from_millis(rng.random_range(0..=20));
        Answer::status(if ok { 200 } else { 500 }).after(delay)
    })
    .await;
    (receiver, outcomes)
}

/// The messages, interleaved across keys: round r publishes message r of every key.
fn messages(subject: &str) -> Vec<Value> {
    let mut items = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            items.push(
                json!({"subject": subject, "id": format!("o-{k}-{n}"), "data": {"order_id": format!("o-{k}"), "n": n}}),
            );
        }
    }
    items
}

fn key_and_n(body: &[u8]) -> (String, u64) {
    let v: Value = serde_json::from_slice(body).unwrap();
    (v["order_id"].as_str().unwrap().to_owned(), v["n"].as_u64().unwrap())
}

/// Per key: the message numbers of successful receipts, in arrival order.
fn successes(receiver: &Receiver, outcomes: &Outcomes) -> BTreeMap<String, Vec<u64>> {
    let outcomes = outcomes.lock().unwrap().clone();
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, r) in receiver.received().iter().enumerate() {
        if outcomes.get(&i).copied().unwrap_or(false) {
            let (key, n) = key_and_n(&r.body);
            per_key.entry(key).or_default().push(n);
        }
    }
    per_key
}

/// Every key's first successful receipts are 0..PER_KEY in order; returns the duplicates
/// (successful receipts beyond the first of a message).
fn assert_in_order_none_missing(per_key: &BTreeMap<String, Vec<u64>>) -> usize {
    assert_eq!(per_key.len(), KEYS, "keys seen");
    let mut duplicates = 0;
    for (key, got) in per_key {
        let mut first = Vec::new();
        for n in got {
            if !first.contains(n) {
                first.push(*n);
            }
        }
        assert_eq!(first, (0..PER_KEY as u64).collect::<Vec<_>>(), "key {key}: first successful receipts {got:?}");
        duplicates += got.len() - first.len();
    }
    duplicates
}

async fn publish_all(base: &str, http: &reqwest::Client, items: &[Value]) {
    // In chunks, so the stream order is the publication order chunk after chunk.
    for chunk in items.chunks(500) {
        let r = http.post(format!("{base}/v1/publish")).bearer_auth(BITRIX).json(chunk).send().await.unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_keeps_every_keys_order_through_random_failures() {
    let nats = NatsServer::start();
    let (receiver, outcomes) = flaky_receiver(20).await;
    let sub = subscription(
        "nav",
        &["orders.keyed"],
        &receiver.url(),
        json!({"ordering": {"key": "/order_id"}, "max_in_flight": 16, "retry_schedule": ["10ms"], "max_attempts": 1000}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("keyed", sub)]).await;
    publish_all(&gw.url(""), &gw.http, &messages("orders.keyed")).await;
    let per_key = eventually("every message delivered", Duration::from_secs(60), async || {
        let per_key = successes(&receiver, &outcomes);
        let done = per_key.values().map(|v| v.iter().collect::<std::collections::BTreeSet<_>>().len()).sum::<usize>();
        (done == KEYS * PER_KEY).then_some(per_key)
    })
    .await;
    let duplicates = assert_in_order_none_missing(&per_key);
    assert_eq!(duplicates, 0, "one replica, no crash: no message is delivered twice");
    // Every attempt of a key, failed or not, was for its oldest undelivered message.
    let mut attempts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in receiver.received() {
        let (key, n) = key_and_n(&r.body);
        attempts.entry(key).or_default().push(n);
    }
    for (key, list) in &attempts {
        assert!(list.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "key {key}: a message overtook: {list:?}");
    }
    let failures = receiver.received().len() - KEYS * PER_KEY;
    assert!(failures > 200, "the receiver should have failed about 20 % of attempts ({failures})");
    // Keys went in parallel: more than one request at a time.
    assert!(receiver.max_in_flight() > 4, "in flight at once: {}", receiver.max_in_flight());
    let show = gw.get_json(OPS, "/v1/subscriptions/keyed").await;
    assert_eq!(show["ordering"]["key"], "/order_id");
    assert_eq!(show["ordering"]["on_exhausted"], "dead-letter");
    gw.stop().await;
}

/// A configuration file for the built binary: the `basic` scenario with absolute paths and one
/// key-ordered subscription.
fn process_config(dir: &Path, subscription_toml: &str) -> PathBuf {
    let basic = scenario("basic");
    let basic_dir = basic.parent().unwrap();
    let text = std::fs::read_to_string(&basic).unwrap();
    let text =
        text.replace("streams_dir = \"streams\"", &format!("streams_dir = {:?}", basic_dir.join("streams"))).replace(
            "contracts_dir = \"../../../contracts\"",
            &format!("contracts_dir = {:?}", basic_dir.join("../../../contracts")),
        );
    let path = dir.join("magistral.toml");
    std::fs::write(&path, format!("{text}\n{subscription_toml}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_a_kill_keep_every_keys_order() {
    let nats = NatsServer::start();
    let (receiver, outcomes) = flaky_receiver(20).await;
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        &format!(
            r#"[subscriptions.keyed]
participant = "nav"
subjects = ["orders.keyed"]
endpoint = "{}"
max_in_flight = 16
retry_schedule = ["10ms"]
max_attempts = 1000
breaker_failures = 1000
ack_wait = "2s"
ordering = {{ key = "/order_id", pinned_ttl = "2s" }}
"#,
            receiver.url()
        ),
    );
    // The first replica takes the pin; the second waits on standby.
    let mut first = GatewayProcess::start(&config, &nats.url(), &[]).await;
    let second = GatewayProcess::start(&config, &nats.url(), &[]).await;
    publish_all(&first.base, &first.http, &messages("orders.keyed")).await;
    // Midway: the delivering replica dies without a goodbye.
    let total = KEYS * PER_KEY;
    eventually("a third delivered", Duration::from_secs(60), async || {
        let done: usize = successes(&receiver, &outcomes).values().map(Vec::len).sum();
        (done >= total / 3).then_some(())
    })
    .await;
    let before_kill = receiver.received().len();
    first.kill();
    let per_key = eventually("every message delivered after the kill", Duration::from_secs(60), async || {
        let per_key = successes(&receiver, &outcomes);
        let done = per_key.values().map(|v| v.iter().collect::<std::collections::BTreeSet<_>>().len()).sum::<usize>();
        (done == total).then_some(per_key)
    })
    .await;
    assert!(receiver.received().len() > before_kill, "the second replica took over");
    let duplicates = assert_in_order_none_missing(&per_key);
    // Only the heads in flight when the replica died may come twice: one per key at most,
    // and no more than max_in_flight.
    assert!(duplicates <= 16, "duplicates: {duplicates} (at most one unacknowledged head per key in flight)");
    eprintln!("two replicas, kill -9 midway: {duplicates} duplicate deliveries of {total} messages");
    drop(second);
}

/// The delivering replica stands still (SIGSTOP) past `pinned_ttl` and `ack_wait`, so the other
/// takes over its messages; then it runs again (SIGCONT) holding messages that are no longer its
/// own. Every key's first successful receipts stay in order, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stood_still_and_comes_back_keeps_every_keys_order() {
    let nats = NatsServer::start();
    let (receiver, outcomes) = flaky_receiver(20).await;
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        &format!(
            r#"[subscriptions.keyed]
participant = "nav"
subjects = ["orders.keyed"]
endpoint = "{}"
max_in_flight = 16
retry_schedule = ["10ms"]
max_attempts = 1000
breaker_failures = 1000
ack_wait = "2s"
ordering = {{ key = "/order_id", pinned_ttl = "2s" }}
"#,
            receiver.url()
        ),
    );
    let first = GatewayProcess::start(&config, &nats.url(), &[]).await;
    let second = GatewayProcess::start(&config, &nats.url(), &[]).await;
    publish_all(&first.base, &first.http, &messages("orders.keyed")).await;
    let total = KEYS * PER_KEY;
    eventually("a third delivered", Duration::from_secs(60), async || {
        let done: usize = successes(&receiver, &outcomes).values().map(Vec::len).sum();
        (done >= total / 3).then_some(())
    })
    .await;
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &first.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let stopped_at = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(receiver.received().len() > stopped_at, "the other replica took over while the first stood still");
    signal("-CONT");
    let per_key = eventually("every message delivered", Duration::from_secs(60), async || {
        let per_key = successes(&receiver, &outcomes);
        let done = per_key.values().map(|v| v.iter().collect::<std::collections::BTreeSet<_>>().len()).sum::<usize>();
        (done == total).then_some(per_key)
    })
    .await;
    let duplicates = assert_in_order_none_missing(&per_key);
    eprintln!("two replicas, one stopped for 6 s midway: {duplicates} duplicate deliveries of {total} messages");
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_parks_only_its_key_until_an_operator_skips_it() {
    let nats = NatsServer::start();
    // Message 5 of o-7 is refused every time; everything else is taken.
    let receiver = Receiver::scripted(|_, r| {
        let (key, n) = key_and_n(&r.body);
        if key == "o-7" && n == 5 { Answer::status(500).body("cannot book this order") } else { Answer::ok() }
    })
    .await;
    let sub = subscription(
        "nav",
        &["orders.keyed"],
        &receiver.url(),
        // One slot: a parked key must not hold it, or nothing else would flow.
        json!({"ordering": {"key": "/order_id", "on_exhausted": "park"}, "max_in_flight": 1,
               "retry_schedule": ["20ms"], "max_attempts": 3}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("keyed", sub)]).await;
    publish_all(&gw.url(""), &gw.http, &messages("orders.keyed")).await;
    let delivered = |receiver: &Receiver| {
        let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in receiver.received() {
            let (key, n) = key_and_n(&r.body);
            if !(key == "o-7" && n == 5) {
                per_key.entry(key).or_default().push(n);
            }
        }
        per_key
    };
    // The other 49 keys finish while o-7 is parked.
    eventually("the other keys finish", Duration::from_secs(60), async || {
        let per_key = delivered(&receiver);
        let others = per_key.iter().filter(|(k, v)| k.as_str() != "o-7" && v.len() == PER_KEY).count();
        (others == KEYS - 1).then_some(())
    })
    .await;
    let parked = eventually("o-7 listed as parked", Duration::from_secs(10), async || {
        let show = gw.get_json(OPS, "/v1/subscriptions/keyed").await;
        let list = show["ordering"]["parked_keys"].as_array().cloned().unwrap_or_default();
        // `waiting` is stored within half a second of the last arrival.
        list.into_iter().find(|p| p["key"] == "o-7" && p["state"] == "parked" && p["waiting"] == (PER_KEY - 6) as u64)
    })
    .await;
    assert_eq!(parked["attempts"], 3);
    assert_eq!(parked["last_error"]["status"], 500);
    assert!(parked["last_error"]["detail"].as_str().unwrap().contains("cannot book"), "{parked}");
    assert!(parked["since"].as_str().is_some_and(|s| s.contains('T')), "{parked}");
    assert_eq!(parked["waiting"], (PER_KEY - 6) as u64, "messages 6.. of o-7 wait behind the head: {parked}");
    // o-7 stopped at its head: 0..=4 delivered, nothing after.
    assert_eq!(delivered(&receiver)["o-7"], (0..5).collect::<Vec<_>>());
    let head = receiver
        .received()
        .into_iter()
        .find(|r| key_and_n(&r.body) == ("o-7".to_owned(), 5))
        .and_then(|r| r.header("ce-id").map(str::to_owned))
        .expect("the poison message arrived with a ce-id");
    assert_eq!(parked["message_id"], head.as_str());
    assert_eq!(head, "o-7-5");
    // Tracking: the next message of the key waits behind the head.
    let tracked = gw.get_json(OPS, "/v1/messages/bitrix:o-7-6").await;
    let delivery = &tracked["subscriptions"][0];
    assert_eq!(delivery["waiting_behind"], "o-7-5", "{tracked}");
    assert_eq!(delivery["detail"], "waiting behind o-7-5", "{tracked}");
    assert!(matches!(delivery["state"].as_str(), Some("in-flight" | "pending")), "{tracked}");
    // A key that is not parked is not found; a participant without the subscription neither.
    let (status, body) = gw.post_json(OPS, "/v1/subscriptions/keyed/parked-keys/skip", json!({"key": "o-8"})).await;
    assert_eq!(status, 404, "{body}");
    // Retry now: one more attempt, refused again, still parked.
    let attempts_before = receiver.received().len();
    let (status, body) = gw.post_json(OPS, "/v1/subscriptions/keyed/parked-keys/retry", json!({"key": "o-7"})).await;
    assert_eq!(status, 200, "{body}");
    receiver.wait_for(attempts_before + 1, Duration::from_secs(10)).await;
    // Skip: the head goes to the dead letters, the key flows again.
    let (status, body) = eventually("skip accepted", Duration::from_secs(10), async || {
        let (status, body) = gw.post_json(OPS, "/v1/subscriptions/keyed/parked-keys/skip", json!({"key": "o-7"})).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["message_id"], head.as_str());
    eventually("o-7 finishes after the skip", Duration::from_secs(30), async || {
        let got = delivered(&receiver).get("o-7").cloned().unwrap_or_default();
        (got.len() == PER_KEY - 1).then_some(())
    })
    .await;
    let o7 = delivered(&receiver)["o-7"].clone();
    assert_eq!(o7, (0..PER_KEY as u64).filter(|n| *n != 5).collect::<Vec<_>>());
    let dead = gw.get_json(OPS, "/v1/subscriptions/keyed/dead-letters").await;
    assert_eq!(dead["total"], 1, "{dead}");
    eventually("o-7 no longer parked", Duration::from_secs(10), async || {
        let show = gw.get_json(OPS, "/v1/subscriptions/keyed").await;
        show["ordering"]["parked_keys"].as_array().is_some_and(Vec::is_empty).then_some(())
    })
    .await;
    gw.stop().await;
}

/// An existing subscription switched to key ordering (and back) keeps its consumer's place and
/// goes on delivering: the consumer is updated in place (priority group and policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_subscription_switches_to_key_ordering_and_back() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let plain = subscription("nav", &["orders.keyed"], &receiver.url(), json!({"ordered": true}));
    let keyed = subscription("nav", &["orders.keyed"], &receiver.url(), json!({"ordering": {"key": "/order_id"}}));
    let mut sent = 0;
    for (round, sub) in [plain.clone(), keyed, plain].into_iter().enumerate() {
        let gw = Gateway::with_subscriptions(&nats.url(), vec![("switching", sub)]).await;
        let items: Vec<Value> = (0..5)
            .map(|n| json!({"subject": "orders.keyed", "data": {"order_id": "o-1", "n": round * 10 + n}}))
            .collect();
        publish_all(&gw.url(""), &gw.http, &items).await;
        sent += items.len();
        let got = receiver.wait_for(sent, Duration::from_secs(20)).await;
        let ns: Vec<u64> = got.iter().map(|r| key_and_n(&r.body).1).collect();
        let want: Vec<u64> = (0..=round as u64).flat_map(|r| (0..5).map(move |n| r * 10 + n)).collect();
        assert_eq!(ns, want, "round {round}: every message once, in order");
        gw.stop().await;
        // The last ack went out before the connection closed: nothing is left for the next
        // gateway to wait out (ack_wait is 30 s for ordered deliveries).
        let js = crate::common::gateway::jetstream(&nats.url()).await;
        eventually("every delivery acked once the gateway stopped", Duration::from_secs(2), async || {
            let stream = js.get_stream("ORDERS").await.ok()?;
            let info = stream.consumer_info("magistral-switching").await.ok()?;
            (info.num_ack_pending == 0).then_some(())
        })
        .await;
    }
}
