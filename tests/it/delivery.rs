//! Push delivery against a real nats-server and real HTTP receivers.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, OPS, example, slug, subscription};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver, verify_signature};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn order() -> Vec<u8> {
    std::fs::read(example("samples/sales-order.valid.json")).unwrap()
}

#[tokio::test]
async fn delivers_signed_cloudevents_with_the_exact_body() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let sub = subscription(
        "nav",
        &["orders.created"],
        &receiver.url(),
        json!({"signing_secrets": [SECRET], "headers": {"authorization": "Basic bmF2OnNlY3JldA=="}}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    let body = order();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw
        .publish(BITRIX, "orders.created", body.clone())
        .header("traceparent", traceparent)
        .header("ce-comment", "%D0%B7%20x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ack: Value = r.json().await.unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let d = &got[0];
    assert_eq!(d.method, "POST");
    assert_eq!(d.body.as_ref(), body.as_slice(), "the body is the data as stored");
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert_eq!(d.header("ce-specversion"), Some("1.0"));
    assert_eq!(d.header("ce-id"), ack["id"].as_str());
    assert_eq!(d.header("ce-source"), Some("/participants/bitrix"));
    assert_eq!(d.header("ce-type"), Some("orders.created"));
    assert_eq!(d.header("ce-comment"), Some("%D0%B7%20x"), "percent-encoded as published");
    assert!(d.header("ce-time").is_some());
    assert_eq!(d.header("ce-dataschema"), Some("https://magistral.dev/contracts/sales-order/v1"));
    assert_eq!(d.header("traceparent"), Some(traceparent));
    assert_eq!(d.header("authorization"), Some("Basic bmF2OnNlY3JldA=="));
    // webhook-id is unique per stored message (ce-id is unique only with ce-source).
    assert!(
        d.header("webhook-id").is_some_and(|id| id.starts_with("msg_") && id.len() == 36),
        "{:?}",
        d.header("webhook-id")
    );
    let ts = d.header("webhook-timestamp").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((ts.parse::<i64>().unwrap() - now).abs() < 60);
    assert!(
        verify_signature(SECRET, d.header("webhook-id").unwrap(), ts, &d.body, d.header("webhook-signature").unwrap()),
        "signature does not verify: {:?}",
        d.header("webhook-signature")
    );
    // A quiet window: no second delivery may arrive during it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "delivered once");
}

#[tokio::test]
async fn flaky_endpoint_is_retried_on_schedule_until_delivered() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|n, _| if n < 3 { Answer::status(500) } else { Answer::ok() }).await;
    let sub = subscription(
        "nav",
        &["orders.created"],
        &receiver.url(),
        json!({"retry_schedule": ["300ms", "600ms", "900ms"]}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    assert_eq!(gw.publish(BITRIX, "orders.created", order()).send().await.unwrap().status(), 202);
    let got = receiver.wait_for(4, Duration::from_secs(15)).await;
    let attempts: Vec<&str> = got.iter().map(|r| r.header("magistral-attempt").unwrap()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    assert!(got.iter().all(|r| r.header("webhook-id") == got[0].header("webhook-id")), "same id on every attempt");
    for (i, expected) in [300u64, 600, 900].iter().enumerate() {
        let gap = got[i + 1].at - got[i].at;
        let expected = Duration::from_millis(*expected);
        assert!(
            gap >= expected && gap < expected + Duration::from_millis(700),
            "gap {i}: {gap:?}, expected {expected:?}"
        );
    }
    // A quiet window longer than the retry schedule: nothing may follow the success.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 4, "nothing after the success");
    let subs = gw.get_json(NAV, "/v1/subscriptions").await;
    assert_eq!(subs["subscriptions"][0]["last_error"]["class"], "endpoint-error");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let nats = NatsServer::start();
    let receiver =
        Receiver::scripted(
            |n, _| {
                if n == 0 { Answer::status(429).with_header("retry-after", "2") } else { Answer::ok() }
            },
        )
        .await;
    let sub = subscription("nav", &["orders.created"], &receiver.url(), json!({}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(2) && gap < Duration::from_millis(3500), "gap {gap:?}");
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_and_replayed_to_that_subscription_only() {
    let nats = NatsServer::start();
    // The ERP refuses the first order it sees, then accepts everything.
    let erp = Receiver::scripted(|n, _| {
        if n == 0 { Answer::status(400).body(r#"{"error":"unknown customer C-0042"}"#) } else { Answer::ok() }
    })
    .await;
    let crm = Receiver::start().await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![
            ("nav-orders", subscription("nav", &["orders.created"], &erp.url(), json!({}))),
            ("crm-orders", subscription("nav", &["orders.created"], &crm.url(), json!({}))),
            (
                "bitrix-failures",
                subscription("bitrix", &["magistral.delivery.>"], &crm.url().replace("/hook", "/events"), json!({})),
            ),
        ],
    )
    .await;
    let r =
        gw.publish(BITRIX, "orders.created", order()).header("ce-correlationid", "order-4711").send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    erp.wait_for(1, Duration::from_secs(10)).await;
    // The CRM got it once; the bitrix status subscription hears of the first failure and the dead letter.
    let events = eventually("two status events at the CRM", Duration::from_secs(10), async || {
        let events: Vec<Value> = crm
            .received()
            .iter()
            .filter(|r| r.header("magistral-subject").is_some_and(|s| s.starts_with("magistral.delivery.")))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        (events.len() >= 2).then_some(events)
    })
    .await;
    let dead = events.iter().find(|e| e["event"] == "dead_lettered").expect("dead_lettered event");
    assert_eq!(dead["message_id"], id.as_str());
    assert_eq!(dead["correlation_id"], "order-4711");
    assert_eq!(dead["publisher"], "/participants/bitrix");
    assert_eq!(dead["class"], "endpoint-rejected");
    assert_eq!(dead["status"], 400);
    assert!(events.iter().any(|e| e["event"] == "failed"));

    let list = gw.get_json(NAV, "/v1/subscriptions/nav-orders/dead-letters").await;
    assert_eq!(list["total"], 1);
    let dl = &list["dead_letters"][0];
    assert_eq!(dl["id"], id.as_str());
    assert_eq!(dl["subject"], "orders.created");
    assert_eq!(dl["class"], "endpoint-rejected");
    assert_eq!(dl["status"], 400);
    assert_eq!(dl["attempts"], 1);
    assert!(dl["response_excerpt"].as_str().unwrap().contains("unknown customer C-0042"));
    // Another participant may not look, and cannot tell it exists; an admin may.
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-orders/dead-letters")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!((slug(&body), body["detail"].as_str()), ("not-found", Some("no subscription nav-orders")));
    gw.get_json(OPS, "/v1/subscriptions/nav-orders/dead-letters").await;

    let crm_orders_before =
        crm.received().iter().filter(|r| r.header("magistral-subject") == Some("orders.created")).count();
    assert_eq!(crm_orders_before, 1);
    let (status, body) =
        gw.post_json(NAV, "/v1/subscriptions/nav-orders/dead-letters/replay", json!({"ids": [id]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 1);
    let got = erp.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"), "a replay keeps the webhook id");
    assert_eq!(got[1].header("ce-id"), Some(id.as_str()), "a replay keeps the message id");
    assert_eq!(got[1].header("magistral-subject"), Some("orders.created"));
    assert_eq!(got[1].body, got[0].body);
    // A quiet window: the replay must not reach the CRM's subscription during it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crm_orders_after =
        crm.received().iter().filter(|r| r.header("magistral-subject") == Some("orders.created")).count();
    assert_eq!(crm_orders_after, 1, "the replay reached only the subscription it was for");
    let list = gw.get_json(NAV, "/v1/subscriptions/nav-orders/dead-letters").await;
    assert_eq!(list["total"], 0);
    // "Where is my order?" follows the replay.
    eventually("nav-orders delivered after the replay", Duration::from_secs(5), async || {
        let m = gw.get_json(BITRIX, &format!("/v1/messages/{id}")).await;
        let state =
            m["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "nav-orders").unwrap()["state"].clone();
        (state == "delivered").then_some(())
    })
    .await;
}

#[tokio::test]
async fn discarded_dead_letters_are_gone_for_good_and_only_their_operators_may_discard() {
    let nats = NatsServer::start();
    let erp = Receiver::scripted(|_, _| Answer::status(422).body(r#"{"error":"unknown-sku"}"#)).await;
    let sub = subscription("nav", &["orders.created"], &erp.url(), json!({}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    for id in ["dl-a", "dl-b", "dl-c"] {
        gw.publish(BITRIX, "orders.created", order()).header("idempotency-key", id).send().await.unwrap();
    }
    eventually("three dead letters", Duration::from_secs(10), async || {
        (gw.get_json(NAV, "/v1/subscriptions/nav-orders/dead-letters").await["total"] == 3).then_some(())
    })
    .await;
    let discard = "/v1/subscriptions/nav-orders/dead-letters/discard";
    // Authorised exactly like replay: another participant cannot tell the subscription exists.
    let (status, body) = gw.post_json(BITRIX, discard, json!({"all": true})).await;
    assert_eq!((status, slug(&body)), (404, "not-found"), "{body}");
    let (status, body) = gw.post_json(NAV, discard, json!({})).await;
    assert_eq!((status, body["detail"].as_str()), (400, Some("send either {\"ids\": [...]} or {\"all\": true}")));
    let (status, body) = gw.post_json(NAV, discard, json!({"ids": ["dl-b", "nope"]})).await;
    assert_eq!((status, body), (200, json!({"discarded": 1, "ids": ["dl-b"]})));
    let list = gw.get_json(NAV, "/v1/subscriptions/nav-orders/dead-letters").await;
    let left: Vec<&str> = list["dead_letters"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(left, ["dl-a", "dl-c"]);
    // An admin may, too; nothing is delivered: the endpoint saw each message once.
    let (status, body) = gw.post_json(OPS, discard, json!({"all": true})).await;
    assert_eq!((status, body), (200, json!({"discarded": 2, "ids": ["dl-a", "dl-c"]})));
    assert_eq!(gw.get_json(NAV, "/v1/subscriptions/nav-orders").await["dead_letters"], 0);
    let (_, body) = gw.post_json(NAV, "/v1/subscriptions/nav-orders/dead-letters/replay", json!({"all": true})).await;
    assert_eq!(body["replayed"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(erp.received().len(), 3, "a discarded message is never delivered again");
    // The message itself stays in its stream; tracking still says where it ended.
    let m = gw.get_json(BITRIX, "/v1/messages/dl-b").await;
    assert_eq!(m["subscriptions"][0]["state"], "dead-letter", "{m}");
}

#[tokio::test]
async fn gone_endpoint_pauses_the_subscription_until_resumed() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|_, _| Answer::status(410)).await;
    let sub = subscription("nav", &["orders.created"], &receiver.url(), json!({}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let state = eventually("nav-orders paused", Duration::from_secs(10), async || {
        let s = gw.get_json(NAV, "/v1/subscriptions/nav-orders").await;
        (s["state"] == "paused").then_some(s)
    })
    .await;
    assert!(state["paused_reason"].as_str().unwrap().contains("410"), "{state}");
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    // A quiet window: nothing may be delivered while paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "nothing is delivered while paused");

    receiver.set_script(|_, _| Answer::ok());
    let (status, body) = gw.post_json(NAV, "/v1/subscriptions/nav-orders/resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "the first message again, and the second");
}

/// Deterministic "random" failures: about one answer in six is a 500.
fn flaky(n: usize) -> bool {
    (n.wrapping_mul(2_654_435_761) >> 7).is_multiple_of(6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_subscription_delivers_in_publish_order_despite_failures() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|n, _| if flaky(n) { Answer::status(500) } else { Answer::ok() }).await;
    let sub = subscription(
        "nav",
        &["orders.misc"],
        &receiver.url(),
        json!({"ordered": true, "retry_schedule": ["10ms"], "max_attempts": 1000}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-ordered", sub)]).await;
    let items: Vec<Value> = (0..500).map(|i| json!({"subject": "orders.misc", "data": {"n": i}})).collect();
    let r = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let delivered: Vec<u64> = eventually("500 of 500 delivered", Duration::from_secs(60), async || {
        // Answers mirror requests one to one, so request k succeeded unless flaky(k).
        let got = receiver.received();
        let ok: Vec<u64> = got
            .iter()
            .enumerate()
            .filter(|(k, _)| !flaky(*k))
            .map(|(_, r)| serde_json::from_slice::<Value>(&r.body).unwrap()["n"].as_u64().unwrap())
            .collect();
        (ok.len() >= 500).then_some(ok)
    })
    .await;
    assert_eq!(delivered, (0..500).collect::<Vec<_>>(), "successful deliveries out of publish order");
    let failures = receiver.received().len() - 500;
    assert!(failures > 50, "the test should have injected failures ({failures})");
    // Every request, failed or not, was for the oldest undelivered message.
    let all: Vec<u64> = receiver
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["n"].as_u64().unwrap())
        .collect();
    assert!(all.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "a message overtook a failing one");
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn breaker_stops_attempts_while_the_endpoint_is_down_and_nothing_is_lost() {
    let nats = NatsServer::start();
    let mut receiver = Receiver::start().await;
    receiver.go_down();
    let sub = subscription(
        "nav",
        &["orders.misc"],
        &receiver.url(),
        json!({"breaker_failures": 3, "breaker_cooldown": "2s", "retry_schedule": ["100ms"], "max_attempts": 100, "timeout": "1s"}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-breaker", sub)]).await;
    for i in 0..5 {
        gw.publish(BITRIX, "orders.misc", format!(r#"{{"n":{i}}}"#)).send().await.unwrap();
    }
    let attempts = || async {
        let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric(
            &text,
            "magistral_delivery_total{",
            &[r#"subscription="nav-breaker""#, r#"class="endpoint-unreachable""#],
        )
    };
    // Wait for the breaker to open.
    eventually("breaker open", Duration::from_secs(10), async || {
        let s = gw.get_json(NAV, "/v1/subscriptions/nav-breaker").await;
        (s["state"] == "breaker-open").then_some(())
    })
    .await;
    let at_open = attempts().await;
    // A window inside the 2s cooldown: no attempt may be made during it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(attempts().await, at_open, "attempts rose while the breaker was open");
    assert!(at_open <= 5.0, "no more than the in-flight messages were tried ({at_open})");

    receiver.come_back().await;
    let got = receiver.wait_for(5, Duration::from_secs(20)).await;
    let mut ns: Vec<u64> =
        got.iter().map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["n"].as_u64().unwrap()).collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    let s = gw.get_json(NAV, "/v1/subscriptions/nav-breaker").await;
    assert_eq!(s["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_subscription_without_duplicates() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let sub = || subscription("nav", &["orders.misc"], &receiver.url(), json!({"max_in_flight": 16}));
    let a = Gateway::with_subscriptions(&nats.url(), vec![("nav-shared", sub())]).await;
    let b = Gateway::with_subscriptions(&nats.url(), vec![("nav-shared", sub())]).await;
    for chunk in 0..4 {
        let gw = if chunk % 2 == 0 { &a } else { &b };
        let items: Vec<Value> =
            (0..100).map(|i| json!({"subject": "orders.misc", "data": {"n": chunk * 100 + i}})).collect();
        let r = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    receiver.wait_for(400, Duration::from_secs(20)).await;
    // A quiet window: no duplicate may arrive after the 400.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.header("webhook-id").unwrap()).collect();
    assert_eq!(ids.len(), 400, "every message delivered");
    assert_eq!(got.len(), 400, "no message delivered twice");
}

#[tokio::test]
async fn slow_endpoint_past_ack_wait_gets_no_duplicate() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|_, _| Answer::ok().after(Duration::from_secs(4))).await;
    let sub = subscription("nav", &["orders.misc"], &receiver.url(), json!({"ack_wait": "1s", "timeout": "10s"}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-slow", sub)]).await;
    gw.publish(BITRIX, "orders.misc", "{}").send().await.unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // Past the 1s ack wait and the 4s answer: a redelivery would have arrived by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(receiver.received().len(), 1, "redelivered while the first request was still running");
}

#[tokio::test]
async fn a_subscription_added_to_the_config_file_starts_without_a_restart() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let basic = crate::common::gateway::scenario("basic");
    let contracts = basic.parent().unwrap().join("../../../contracts").canonicalize().unwrap();
    let text = std::fs::read_to_string(&basic).unwrap().replace(
        "contracts_dir = \"../../../contracts\"",
        &format!("contracts_dir = {:?}", contracts.display().to_string()),
    );
    std::fs::create_dir(dir.path().join("streams")).unwrap();
    std::fs::copy(basic.parent().unwrap().join("streams/ORDERS.json"), dir.path().join("streams/ORDERS.json")).unwrap();
    let config = dir.path().join("magistral.toml");
    std::fs::write(&config, &text).unwrap();
    let gw = Gateway::start_with(config.clone(), &nats.url(), |c| c.reload_interval = Duration::from_millis(200)).await;
    assert_eq!(gw.get_json(NAV, "/v1/subscriptions").await["subscriptions"].as_array().unwrap().len(), 0);

    // A new participant (the CRM) and its subscription, by configuration alone.
    let crm_hash = "9e5ee3ac2ba84e6bb2b86d8e0e5b3e1c2c5a1e63f8b0d4a47e5b1f3c3d2a1b0c";
    crate::common::write_atomically(
        &config,
        format!(
            "{text}\n[participants.crm]\ntokens = [{{ sha256 = \"{crm_hash}\" }}]\nsubscribe = [\"orders.misc\"]\n\n[subscriptions.nav-new]\nparticipant = \"crm\"\nsubjects = [\"orders.misc\"]\nendpoint = \"{}\"\n",
            receiver.url()
        ),
    );
    eventually("the new subscription picked up", Duration::from_secs(10), async || {
        let subs = gw.get_json(OPS, "/v1/subscriptions").await;
        (!subs["subscriptions"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    gw.publish(BITRIX, "orders.misc", r#"{"hello":"nav"}"#).send().await.unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body.as_ref(), br#"{"hello":"nav"}"#);

    // A broken change is refused and the running configuration stays.
    crate::common::write_atomically(&config, format!("{text}\nthis is not toml = = =\n"));
    // Several 200ms reload intervals: the broken file has been seen and must have been refused.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gw.get_json(OPS, "/v1/subscriptions").await["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(gw.publish(BITRIX, "orders.misc", "{}").send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn ordered_block_mode_holds_the_line_until_an_operator_resumes() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|_, _| Answer::status(500)).await;
    let sub = subscription(
        "nav",
        &["orders.misc"],
        &receiver.url(),
        json!({"ordered": true, "on_exhausted": "block", "max_attempts": 2, "retry_schedule": ["50ms"]}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-blocking", sub)]).await;
    gw.publish(BITRIX, "orders.misc", r#"{"n":1}"#).send().await.unwrap();
    gw.publish(BITRIX, "orders.misc", r#"{"n":2}"#).send().await.unwrap();
    let state = eventually("nav-blocking blocked", Duration::from_secs(10), async || {
        let s = gw.get_json(NAV, "/v1/subscriptions/nav-blocking").await;
        (s["state"] == "paused").then_some(s)
    })
    .await;
    assert!(state["paused_reason"].as_str().unwrap().starts_with("blocked"), "{state}");
    assert_eq!(state["dead_letters"], 0, "block mode does not dead-letter");
    // A window while blocked: the second message must not overtake during it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen: Vec<Value> = receiver.received().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert!(seen.iter().all(|v| v["n"] == 1), "the second message overtook the blocked one");

    receiver.set_script(|_, _| Answer::ok());
    let (status, _) = gw.post_json(OPS, "/v1/subscriptions/nav-blocking/resume", json!({})).await;
    assert_eq!(status, 200, "an admin may resume");
    let before = receiver.received().len();
    let got = receiver.wait_for(before + 2, Duration::from_secs(10)).await;
    let tail: Vec<Value> = got[before..].iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert_eq!(tail, vec![json!({"n":1}), json!({"n":2})]);
}

#[tokio::test]
async fn a_deleted_consumer_is_recreated() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let sub = subscription("nav", &["orders.misc"], &receiver.url(), json!({"start": "all"}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-recreate", sub)]).await;
    gw.publish(BITRIX, "orders.misc", r#"{"n":1}"#).send().await.unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    js.get_stream("ORDERS").await.unwrap().delete_consumer("magistral-nav-recreate").await.unwrap();
    gw.publish(BITRIX, "orders.misc", r#"{"n":2}"#).send().await.unwrap();
    // Recreated from its configured start (`all`), so the first message may come again.
    eventually("delivered after the consumer was deleted", Duration::from_secs(20), async || {
        receiver.received().iter().any(|r| r.body.as_ref() == br#"{"n":2}"#).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_message_without_a_cloudevents_id_keeps_its_nats_id_through_dead_letter_and_replay() {
    let nats = NatsServer::start();
    let erp = Receiver::scripted(|n, _| if n == 0 { Answer::status(422) } else { Answer::ok() }).await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![("nav-native", subscription("nav", &["orders.misc"], &erp.url(), json!({})))],
    )
    .await;
    // A NATS-native publisher: no CloudEvents headers, only a message id.
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "native-1");
    js.publish_with_headers("orders.misc", headers, r#"{"native":true}"#.into()).await.unwrap().await.unwrap();
    let got = erp.wait_for(1, Duration::from_secs(10)).await;
    let webhook_id = got[0].header("webhook-id").map(str::to_owned);
    assert!(webhook_id.as_deref().is_some_and(|id| id.starts_with("msg_")));
    let list = eventually("native-1 dead-lettered", Duration::from_secs(10), async || {
        let list = gw.get_json(NAV, "/v1/subscriptions/nav-native/dead-letters").await;
        (list["total"] == 1).then_some(list)
    })
    .await;
    assert_eq!(list["dead_letters"][0]["id"], "native-1");
    let (status, body) =
        gw.post_json(NAV, "/v1/subscriptions/nav-native/dead-letters/replay", json!({"ids": ["native-1"]})).await;
    assert_eq!((status, body["replayed"].as_u64()), (200, Some(1)), "{body}");
    let got = erp.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), webhook_id.as_deref(), "the replay keeps the webhook id");
}

#[tokio::test]
async fn status_events_about_status_events_are_not_published() {
    let nats = NatsServer::start();
    let failing = Receiver::scripted(|_, _| Answer::status(400)).await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![
            ("nav-orders", subscription("nav", &["orders.misc"], &failing.url(), json!({}))),
            // Watches every status event, and fails too: it must not feed itself.
            ("bitrix-watch", subscription("bitrix", &["magistral.delivery.>"], &failing.url(), json!({}))),
        ],
    )
    .await;
    gw.publish(BITRIX, "orders.misc", "{}").send().await.unwrap();
    // A window for any feedback loop to show: the event count must stay at two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    let events = crate::common::gateway::stream_count(&js, "MAGISTRAL_EVENTS").await;
    assert_eq!(events, 2, "one message failed once and was dead-lettered: two events, no more");
    let dead = gw.get_json(crate::common::gateway::OPS, "/v1/subscriptions/bitrix-watch/dead-letters").await;
    assert_eq!(dead["total"], 2, "the watcher's own failures are dead-lettered quietly");
}

#[tokio::test]
async fn rate_limit_spaces_deliveries() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let sub = subscription("nav", &["orders.misc"], &receiver.url(), json!({"rate_limit": 10.0}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-slow-erp", sub)]).await;
    let items: Vec<Value> = (0..15).map(|i| json!({"subject": "orders.misc", "data": {"n": i}})).collect();
    gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
    let got = receiver.wait_for(15, Duration::from_secs(10)).await;
    let span = got[14].at - got[0].at;
    // 15 deliveries at 10/s: 14 gaps of 100 ms.
    assert!(span >= Duration::from_millis(1300), "15 deliveries within {span:?}");
}
