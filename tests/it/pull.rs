//! HTTP pull and Server-Sent Events for participants that cannot take webhooks.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, slug};
use crate::common::nats::NatsServer;

fn pull_sub(extra: Value) -> magistral::config::SubscriptionConfig {
    let mut base = json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "pull", "ack_wait": "2s"});
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    serde_json::from_value(base).unwrap()
}

async fn fetch(gw: &Gateway, token: &str, body: Value) -> (u16, Value) {
    gw.post_json(token, "/v1/subscriptions/nav-pull/fetch", body).await
}

async fn ack(gw: &Gateway, token: &str, acks: Value) -> (u16, Value) {
    gw.post_json(token, "/v1/subscriptions/nav-pull/ack", json!({ "acks": acks })).await
}

async fn publish_n(gw: &Gateway, n: usize) {
    let items: Vec<Value> = (0..n).map(|i| json!({"subject": "orders.misc", "data": {"n": i}})).collect();
    let r = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn fetch_ack_nak_term_and_redelivery() {
    let nats = NatsServer::start();
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", pull_sub(json!({})))]).await;
    publish_n(&gw, 5).await;
    let (status, body) = fetch(&gw, NAV, json!({"max": 3})).await;
    assert_eq!(status, 200, "{body}");
    let msgs = body["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 3);
    let m = &msgs[0];
    assert_eq!(m["data"], json!({"n": 0}));
    assert_eq!(m["subject"], "orders.misc");
    assert_eq!(m["stream"], "ORDERS");
    assert_eq!(m["publisher"], "/participants/bitrix");
    assert_eq!(m["attributes"]["source"], "/participants/bitrix");
    assert_eq!(m["delivery_count"], 1);
    assert!(m["id"].as_str().is_some() && m["time"].as_str().is_some() && m["seq"].as_u64().is_some());

    // ack #0, nak #1 with a delay, term #2.
    let (status, body) = ack(
        &gw,
        NAV,
        json!([
            {"token": msgs[0]["ack_token"], "action": "ack"},
            {"token": msgs[1]["ack_token"], "action": "nak", "delay": "2s"},
            {"token": msgs[2]["ack_token"], "action": "term"},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Next: #3, #4, then #1 again after its delay.
    let (_, body) = fetch(&gw, NAV, json!({"max": 10})).await;
    let ns: Vec<u64> = body["messages"].as_array().unwrap().iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![3, 4]);
    let tokens: Vec<Value> =
        body["messages"].as_array().unwrap().iter().map(|m| json!({"token": m["ack_token"]})).collect();
    assert_eq!(ack(&gw, NAV, json!(tokens)).await.0, 200);
    let (_, body) = fetch(&gw, NAV, json!({"max": 10, "wait": "3s"})).await;
    let again = &body["messages"][0];
    assert_eq!(again["data"], json!({"n": 1}));
    assert_eq!(again["delivery_count"], 2);
    // Not acked: it comes back after the ack wait (2s).
    let started = Instant::now();
    let (_, body) = fetch(&gw, NAV, json!({"max": 10, "wait": "5s"})).await;
    assert_eq!(body["messages"][0]["data"], json!({"n": 1}), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "redelivered before the ack wait");
    assert_eq!(body["messages"][0]["delivery_count"], 3);
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_a_message_arrives() {
    let nats = NatsServer::start();
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", pull_sub(json!({})))]).await;
    let started = Instant::now();
    let poll = fetch(&gw, NAV, json!({"max": 10, "wait": "20s"}));
    let publisher = async {
        // The late arrival under test: the poll must be waiting when it comes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        gw.publish(BITRIX, "orders.misc", r#"{"late":true}"#).send().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(poll, publisher);
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["data"], json!({"late": true}));
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "took {took:?}");
    // An empty long poll waits about as long as asked.
    let started = Instant::now();
    let (_, body) = fetch(&gw, NAV, json!({"wait": "700ms"})).await;
    assert!(body["messages"].as_array().unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn forged_foreign_and_replayed_tokens_are_refused_and_change_nothing() {
    let nats = NatsServer::start();
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![("nav-pull", pull_sub(json!({}))), ("nav-other", pull_sub(json!({})))],
    )
    .await;
    publish_n(&gw, 2).await;
    let (_, body) = fetch(&gw, NAV, json!({"max": 2})).await;
    let msgs = body["messages"].as_array().unwrap().clone();
    let (_, other) = gw.post_json(NAV, "/v1/subscriptions/nav-other/fetch", json!({"max": 1})).await;
    let foreign = other["messages"][0]["ack_token"].as_str().unwrap().to_owned();
    let good = msgs[0]["ack_token"].as_str().unwrap().to_owned();
    // Alter one character of the signed payload.
    let mut altered = good.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();

    for (what, token) in [
        ("forged", "v1.eyJzIjoibmF2LXB1bGwifQ.AAAA".to_owned()),
        ("altered", altered),
        ("foreign", foreign),
        ("garbage", "hello".to_owned()),
    ] {
        // The bad token rides with a good one: the whole request is refused.
        let (status, body) = ack(&gw, NAV, json!([{"token": good}, {"token": token}])).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(slug(&body), "invalid-ack-token", "{what}");
        assert_eq!(body["items"][0]["index"], 1, "{what}");
    }
    // Nothing was acked: both messages come back after the ack wait.
    let (_, body) = fetch(&gw, NAV, json!({"max": 10, "wait": "4s"})).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");
    let fresh: Vec<String> =
        body["messages"].as_array().unwrap().iter().map(|m| m["ack_token"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ack(&gw, NAV, json!([{"token": fresh[0]}])).await.0, 200);
    // Replayed: the same token again.
    let (status, body) = ack(&gw, NAV, json!([{"token": fresh[0]}])).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(slug(&body["results"][0]["error"]), "already-acked");
    // Only the owner may fetch or ack; to anyone else the subscription does not exist.
    let (status, body) = fetch(&gw, BITRIX, json!({})).await;
    assert_eq!((status, slug(&body)), (404, "not-found"));
    assert_eq!(body["detail"], "no subscription nav-pull");
    let (status, body) = gw.post_json(NAV, "/v1/subscriptions/missing/fetch", json!({})).await;
    assert_eq!((status, slug(&body)), (404, "not-found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_pulling_one_subscription_split_the_messages() {
    let nats = NatsServer::start();
    let gw =
        Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", pull_sub(json!({"max_in_flight": 1000})))]).await;
    publish_n(&gw, 200).await;
    let client = |gw: &Gateway| {
        let http = gw.http.clone();
        let url = gw.url("/v1/subscriptions/nav-pull");
        async move {
            let mut seen = Vec::new();
            loop {
                let r: Value = http
                    .post(format!("{url}/fetch"))
                    .bearer_auth(NAV)
                    .json(&json!({"max": 7, "wait": "500ms"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let msgs = r["messages"].as_array().unwrap().clone();
                if msgs.is_empty() {
                    return seen;
                }
                let acks: Vec<Value> = msgs.iter().map(|m| json!({"token": m["ack_token"]})).collect();
                let a =
                    http.post(format!("{url}/ack")).bearer_auth(NAV).json(&json!({"acks": acks})).send().await.unwrap();
                assert_eq!(a.status(), 200);
                seen.extend(msgs.iter().map(|m| m["data"]["n"].as_u64().unwrap()));
            }
        }
    };
    let (a, b) = tokio::join!(client(&gw), client(&gw));
    assert!(!a.is_empty() && !b.is_empty(), "both clients got messages ({} / {})", a.len(), b.len());
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>(), "each message exactly once across the two");
}

/// Reads SSE events (id, data) from a response body until `n` events or the deadline.
async fn read_events(response: reqwest::Response, n: usize, heartbeats: &mut usize) -> Vec<(u64, String)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.starts_with(':') {
                *heartbeats += 1;
                continue;
            }
            let mut id = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if let Some(id) = id {
                events.push((id, data.join("\n")));
            }
        }
    }
    events
}

async fn consumer_count(nats: &NatsServer) -> usize {
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    js.get_stream("ORDERS").await.unwrap().info().await.unwrap().state.consumer_count
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_without_gaps_and_releases_its_consumer() {
    let nats = NatsServer::start();
    let sub: magistral::config::SubscriptionConfig = serde_json::from_value(
        json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "stream", "start": "all"}),
    )
    .unwrap();
    let gw = Gateway::start_with(crate::common::gateway::scenario("basic"), &nats.url(), move |c| {
        c.subscriptions.insert("nav-live".into(), sub);
        c.limits.sse_heartbeat = Duration::from_millis(300);
        c.limits.max_streams_per_participant = 2;
    })
    .await;
    publish_n(&gw, 150).await;
    let before = consumer_count(&nats).await;
    let mut heartbeats = 0;
    // Browser style: the token in the query.
    let r = gw.http.get(gw.url(&format!("/v1/subscriptions/nav-live/events?access_token={NAV}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(consumer_count(&nats).await, before + 1);
    let first = read_events(r, 100, &mut heartbeats).await;
    assert_eq!(first.len(), 100);
    assert_eq!(serde_json::from_str::<Value>(&first[0].1).unwrap(), json!({"n": 0}));
    let last_id = first[99].0;
    // Disconnected (response dropped): the consumer goes away.
    eventually("the consumer gone with its client", Duration::from_secs(10), async || {
        (consumer_count(&nats).await == before).then_some(())
    })
    .await;
    let r = gw
        .http
        .get(gw.url("/v1/subscriptions/nav-live/events"))
        .bearer_auth(NAV)
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap();
    let rest = read_events(r, 50, &mut heartbeats).await;
    let ns: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..150).collect::<Vec<_>>(), "exactly the rest, no gap, no repeat");
    // An id past the stream's last was never sent: not a resume point.
    let r = gw
        .http
        .get(gw.url("/v1/subscriptions/nav-live/events"))
        .bearer_auth(NAV)
        .header("last-event-id", "100000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "invalid-header");
    // Idle (resumed after the last event): heartbeats keep it alive.
    let newest = rest.last().unwrap().0.to_string();
    let r = gw
        .http
        .get(gw.url("/v1/subscriptions/nav-live/events"))
        .bearer_auth(NAV)
        .header("last-event-id", &newest)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains(":heartbeat") && !text.contains(": heartbeat") {
        let chunk =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("a heartbeat in time").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Bounded per participant (2 here: this one and one more).
    let second = gw
        .http
        .get(gw.url("/v1/subscriptions/nav-live/events"))
        .bearer_auth(NAV)
        .header("last-event-id", &newest)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let third = gw.http.get(gw.url("/v1/subscriptions/nav-live/events")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(slug(&third.json::<Value>().await.unwrap()), "too-many-streams");
    // A bad token in the query is refused like any other.
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-live/events?access_token=wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    drop(stream);
    drop(second);
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let nats = NatsServer::start();
    let sub: magistral::config::SubscriptionConfig =
        serde_json::from_value(json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "stream"})).unwrap();
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-live", sub)]).await;
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-live/events")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let started = Instant::now();
    // The drain timeout is 5 s in this scenario: an open stream must not hold shutdown that long.
    tokio::time::timeout(Duration::from_secs(3), gw.stop()).await.expect("stopped without waiting for the stream");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The client sees its stream end (and would reconnect with Last-Event-ID elsewhere).
    let end =
        tokio::time::timeout(Duration::from_secs(3), async { while let Some(Ok(_)) = body.next().await {} }).await;
    assert!(end.is_ok(), "the event stream did not end");
}

/// A key-ordered pull subscription served by two replicas, two pollers (one per replica)
/// fetching at once, the participant NAKing a fifth of what it gets at random: for every key,
/// never two of its messages out at once, no message acked once handed out again, and the acks
/// come in publication order, none missing; different keys go out together. What the pull
/// contract allows is tolerated and nothing more: a message whose ack wait ran out before its
/// ack was carried out is handed out again (`delivery_count` higher), and the second of its two
/// acks answers `already-acked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordered_pull_hands_out_one_message_per_key_across_replicas() {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use rand::Rng;

    const KEYS: usize = 12;
    const PER_KEY: u64 = 10;
    const ACK_WAIT: Duration = Duration::from_secs(5);

    /// One hand-out of a message: when the fetch that got it was sent, its delivery count.
    #[derive(Clone, Copy)]
    struct Held {
        n: u64,
        fetched: Instant,
        count: u64,
    }

    /// What the participant saw, both pollers together.
    #[derive(Default)]
    struct Seen {
        /// The key's message out now (handed out, not yet acked or NAKed).
        out: HashMap<String, Held>,
        /// Each message's latest hand-out.
        latest: HashMap<(String, u64), Held>,
        /// Messages whose ack was sent, and when its answer came (`None`: not yet).
        ack_answered: HashMap<(String, u64), Option<Instant>>,
        /// Messages handed out again after their ack wait ran out (the contract allows it).
        redelivered: HashSet<(String, u64)>,
        /// The acks per key.
        acked: BTreeMap<String, Vec<u64>>,
        widest: usize,
    }

    impl Seen {
        /// A hand-out of `(sku, n)` by a fetch sent at `sent` and answered at `answered`.
        fn handed_out(&mut self, sku: &str, n: u64, count: u64, sent: Instant, answered: Instant) {
            let id = (sku.to_owned(), n);
            // Again after its ack wait ran out, with a higher delivery count: allowed.
            let again = |prev: &Held| count > prev.count && answered.duration_since(prev.fetched) >= ACK_WAIT;
            if let Some(other) = self.out.get(sku) {
                assert!(
                    other.n == n && again(other),
                    "key {sku}: message {n} (delivery {count}) handed out while {} (delivery {}) was out",
                    other.n,
                    other.count
                );
                self.redelivered.insert(id.clone());
            }
            match self.ack_answered.get(&id) {
                Some(Some(at)) if *at <= sent => panic!("key {sku}: message {n} handed out again after its ack"),
                Some(_) => {
                    assert!(
                        self.latest.get(&id).is_some_and(again),
                        "key {sku}: message {n} handed out again while its ack was on the way, within its ack wait"
                    );
                    self.redelivered.insert(id.clone());
                }
                None => {}
            }
            let held = Held { n, fetched: sent, count };
            self.out.insert(sku.to_owned(), held);
            self.latest.insert(id, held);
        }
    }

    let nats = NatsServer::start();
    let sub = || pull_sub(json!({"ordering": {"key": "/sku"}, "max_in_flight": 8, "ack_wait": "5s"}));
    let a = Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", sub())]).await;
    let b = Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", sub())]).await;
    // Interleaved across keys: round n publishes message n of every key.
    let items: Vec<Value> = (0..PER_KEY)
        .flat_map(|n| {
            (0..KEYS).map(move |k| json!({"subject": "orders.misc", "data": {"sku": format!("W-{k}"), "n": n}}))
        })
        .collect();
    let r = a.http.post(a.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 202);

    let seen: Arc<Mutex<Seen>> = Arc::default();
    let poller = |gw: &Gateway| {
        let seen = seen.clone();
        let (http, base) = (gw.http.clone(), gw.url(""));
        async move {
            let started = Instant::now();
            while seen.lock().unwrap().acked.values().map(Vec::len).sum::<usize>() < KEYS * PER_KEY as usize {
                assert!(started.elapsed() < Duration::from_secs(90), "not every message was acked in time");
                let sent = Instant::now();
                let r = http
                    .post(format!("{base}/v1/subscriptions/nav-pull/fetch"))
                    .bearer_auth(NAV)
                    .json(&json!({"max": 8, "wait": "1s"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                let answered = Instant::now();
                let msgs = body["messages"].as_array().unwrap().clone();
                let mut keys: Vec<(String, u64)> = Vec::new();
                {
                    let mut seen = seen.lock().unwrap();
                    for m in &msgs {
                        let (sku, n) =
                            (m["data"]["sku"].as_str().unwrap().to_owned(), m["data"]["n"].as_u64().unwrap());
                        let count = m["delivery_count"].as_u64().unwrap();
                        seen.handed_out(&sku, n, count, sent, answered);
                        keys.push((sku, n));
                    }
                    seen.widest = seen.widest.max(keys.len());
                }
                let mut acks = Vec::new();
                let mut settled = Vec::new();
                for (m, (sku, n)) in msgs.iter().zip(&keys) {
                    let nak = rand::rng().random_range(0..100) < 20;
                    acks.push(json!({"token": m["ack_token"], "action": if nak { "nak" } else { "ack" }}));
                    settled.push((sku.clone(), *n, nak));
                }
                if acks.is_empty() {
                    continue;
                }
                // Marked free before the ack goes: the next hand-out of the key may follow at once.
                {
                    let mut seen = seen.lock().unwrap();
                    for (sku, n, nak) in &settled {
                        seen.out.remove(sku);
                        if !nak {
                            seen.ack_answered.insert((sku.clone(), *n), None);
                            // Both copies of a message handed out twice may be acked: counted once.
                            let list = seen.acked.entry(sku.clone()).or_default();
                            if list.last() != Some(n) {
                                list.push(*n);
                            }
                        }
                    }
                }
                let r = http
                    .post(format!("{base}/v1/subscriptions/nav-pull/ack"))
                    .bearer_auth(NAV)
                    .json(&json!({ "acks": acks }))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                let mut seen = seen.lock().unwrap();
                let now = Instant::now();
                for (sku, n, nak) in &settled {
                    if !nak {
                        seen.ack_answered.insert((sku.clone(), *n), Some(now));
                    }
                }
                if status == 200 {
                    continue;
                }
                // Only `already-acked`, and only for a message handed out again after its ack wait.
                assert_eq!(status, 207, "{body}");
                for item in body["results"].as_array().unwrap() {
                    if let Some(i) = item["index"].as_u64().filter(|_| item.get("error").is_some()) {
                        let (sku, n, _) = &settled[i as usize];
                        assert!(
                            slug(&item["error"]) == "already-acked" && seen.redelivered.contains(&(sku.clone(), *n)),
                            "key {sku}: message {n}: {body}"
                        );
                    }
                }
            }
        }
    };
    tokio::join!(poller(&a), poller(&b));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.acked.len(), KEYS);
        for (sku, ns) in &seen.acked {
            assert_eq!(ns, &(0..PER_KEY).collect::<Vec<_>>(), "key {sku}: acked out of order");
        }
        assert!(seen.widest > 1, "keys never went out together");
    }
    // Nothing is left: the queue is empty, and a fetch finds nothing.
    let (_, body) = fetch(&a, NAV, json!({"max": 8})).await;
    assert!(body["messages"].as_array().unwrap().is_empty(), "{body}");
}

/// The flake of the test above, step by step: a key's head waits in the queue longer than the
/// ack wait, so JetStream redelivers it, and another replica's fetch takes that copy just before
/// the participant acks the head and enters it just after the ack removed it. The acked message
/// must not be handed out again (its ack would answer `already-acked`); the key moves on.
#[tokio::test]
async fn key_ordered_pull_never_hands_out_an_acked_message_again() {
    use async_nats::jetstream::consumer::pull;
    use magistral::delivery::pull_order;

    let nats = NatsServer::start();
    let sub = pull_sub(json!({"ordering": {"key": "/sku"}, "ack_wait": "1s"}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", sub)]).await;
    let items: Vec<Value> = (0..2).map(|n| json!({"subject": "orders.misc", "data": {"sku": "W-1", "n": n}})).collect();
    let r = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 202);
    // The fetch takes both messages from the consumer and hands out the head.
    let (status, body) = fetch(&gw, NAV, json!({"max": 8})).await;
    assert_eq!(status, 200, "{body}");
    let head = body["messages"].as_array().unwrap().clone();
    assert_eq!(head.len(), 1, "{body}");
    assert_eq!(head[0]["data"]["n"], 0);
    let seq = head[0]["seq"].as_u64().unwrap();

    // The other replica: its fetch takes the head's redelivered copy (after the ack wait)...
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        js.get_stream("ORDERS").await.unwrap().get_consumer("magistral-nav-pull").await.unwrap();
    let mut batch = consumer.batch().max_messages(1).expires(Duration::from_secs(10)).messages().await.unwrap();
    let copy = batch.next().await.expect("the head redelivered within 10 s").unwrap();
    assert_eq!(copy.info().unwrap().stream_sequence, seq);
    assert!(copy.info().unwrap().delivered > 1);
    // ... the participant acks the head ...
    let (status, body) = ack(&gw, NAV, json!([{"token": head[0]["ack_token"]}])).await;
    assert_eq!(status, 200, "{body}");
    // ... and the other replica enters its copy, as a fetch enters what it took.
    let bucket = js.get_key_value(pull_order::ORDER_BUCKET).await.unwrap();
    pull_order::enter(&bucket, "nav-pull", &[("W-1".to_owned(), seq, copy.reply.as_ref().unwrap().to_string())])
        .await
        .unwrap();

    // The key's next message comes, not the acked one again; and its ack is the first.
    let (status, body) = fetch(&gw, NAV, json!({"max": 8, "wait": "5s"})).await;
    assert_eq!(status, 200, "{body}");
    let next = body["messages"].as_array().unwrap().clone();
    assert_eq!(next.len(), 1, "{body}");
    assert_eq!(next[0]["data"]["n"], 1, "the acked message was handed out again: {body}");
    let (status, body) = ack(&gw, NAV, json!([{"token": next[0]["ack_token"]}])).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = fetch(&gw, NAV, json!({"max": 8})).await;
    assert!(body["messages"].as_array().unwrap().is_empty(), "{body}");
}
