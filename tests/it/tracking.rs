//! "Where is my message?": per-subscription delivery state, correlation, visibility.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, example, subscription};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver};

const OUTSIDER: &str = "isimple-test-token-01";

async fn state_of(gw: &Gateway, id: &str, sub: &str) -> Value {
    let m = gw.get_json(BITRIX, &format!("/v1/messages/{id}")).await;
    m["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == sub).cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_message_shows_where_it_is_for_each_subscription() {
    let nats = NatsServer::start();
    let healthy = Receiver::start().await;
    let failing = Receiver::scripted(|_, _| Answer::status(503)).await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![
            ("nav-ok", subscription("nav", &["orders.created"], &healthy.url(), json!({}))),
            (
                "nav-failing",
                subscription(
                    "nav",
                    &["orders.created"],
                    &failing.url(),
                    json!({"retry_schedule": ["700ms"], "max_attempts": 3}),
                ),
            ),
        ],
    )
    .await;
    let order = std::fs::read(example("samples/sales-order.valid.json")).unwrap();
    let r = gw.publish(BITRIX, "orders.created", order).header("ce-correlationid", "order-4711").send().await.unwrap();
    let ack: Value = r.json().await.unwrap();
    let id = ack["id"].as_str().unwrap().to_owned();
    healthy.wait_for(1, Duration::from_secs(10)).await;
    failing.wait_for(1, Duration::from_secs(10)).await;

    // While the failing endpoint is retried.
    let bad = eventually("nav-ok delivered and nav-failing retrying", Duration::from_secs(10), async || {
        let ok = state_of(&gw, &id, "nav-ok").await;
        let bad = state_of(&gw, &id, "nav-failing").await;
        (ok["state"] == "delivered" && bad["state"] == "retrying").then_some(bad)
    })
    .await;
    assert_eq!(bad["last_error"]["class"], "endpoint-error");
    assert_eq!(bad["last_error"]["status"], 503);
    assert!(bad["attempts"].as_u64().unwrap() >= 1);
    assert!(bad["next_attempt"].as_str().is_some());
    let m = gw.get_json(BITRIX, &format!("/v1/messages/{id}")).await;
    assert_eq!(m["subject"], "orders.created");
    assert_eq!(m["stream"], "ORDERS");
    assert_eq!(m["seq"], ack["seq"]);
    assert_eq!(m["publisher"], "/participants/bitrix");
    assert_eq!(m["correlation_id"], "order-4711");
    assert!(m["time"].as_str().is_some());

    // After its attempts: a dead letter.
    let bad = eventually("nav-failing dead-lettered", Duration::from_secs(15), async || {
        let bad = state_of(&gw, &id, "nav-failing").await;
        (bad["state"] == "dead-letter").then_some(bad)
    })
    .await;
    assert_eq!(bad["attempts"], 3);

    // NAV answers with a status in the same business transaction.
    let status = r#"{"order_id":"4711","status":"created","nav_document_no":"SO-000123","at":"2026-11-28T10:00:01Z"}"#;
    let r = gw.publish(NAV, "orders.status", status).header("ce-correlationid", "order-4711").send().await.unwrap();
    assert_eq!(r.status(), 202);
    let list = eventually("two messages for order-4711", Duration::from_secs(5), async || {
        let list = gw.get_json(BITRIX, "/v1/messages?correlation_id=order-4711").await;
        (list["messages"].as_array().unwrap().len() == 2).then_some(list)
    })
    .await;
    let subjects: Vec<&str> =
        list["messages"].as_array().unwrap().iter().map(|m| m["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["orders.created", "orders.status"]);

    // Someone with no rights to the subject: the message does not exist for them.
    let r = gw.http.get(gw.url(&format!("/v1/messages/{id}"))).bearer_auth(OUTSIDER).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let list =
        gw.http.get(gw.url("/v1/messages?correlation_id=order-4711")).bearer_auth(OUTSIDER).send().await.unwrap();
    assert_eq!(list.json::<Value>().await.unwrap()["messages"].as_array().unwrap().len(), 0);
    let r = gw.http.get(gw.url("/v1/messages/no-such-id")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_pull_client_ack_shows_as_acked() {
    let nats = NatsServer::start();
    let sub: magistral::config::SubscriptionConfig =
        serde_json::from_value(json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "pull"})).unwrap();
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-pull", sub)]).await;
    let r = gw.publish(BITRIX, "orders.misc", "{}").send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(state_of(&gw, &id, "nav-pull").await["state"], "pending");
    let (_, body) = gw.post_json(NAV, "/v1/subscriptions/nav-pull/fetch", json!({"max": 1})).await;
    assert_eq!(state_of(&gw, &id, "nav-pull").await["state"], "in-flight");
    let token = body["messages"][0]["ack_token"].clone();
    gw.post_json(NAV, "/v1/subscriptions/nav-pull/ack", json!({"acks": [{"token": token}]})).await;
    assert_eq!(state_of(&gw, &id, "nav-pull").await["state"], "acked");
}

#[tokio::test]
async fn replays_from_the_dead_letters_show_in_the_message_timeline() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let nats = NatsServer::start();
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let receiver =
        Receiver::scripted(move |_, _| if flag.load(Ordering::SeqCst) { Answer::status(500) } else { Answer::ok() })
            .await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![("nav-orders", subscription("nav", &["orders.created"], &receiver.url(), json!({"max_attempts": 1})))],
    )
    .await;
    let order = std::fs::read(example("samples/sales-order.valid.json")).unwrap();
    let ack: Value = gw.publish(BITRIX, "orders.created", order).send().await.unwrap().json().await.unwrap();
    let id = ack["id"].as_str().unwrap().to_owned();
    let dead = async |replays: Option<u64>| {
        eventually("dead-lettered", Duration::from_secs(15), async || {
            let s = state_of(&gw, &id, "nav-orders").await;
            (s["state"] == "dead-letter" && s["replays"].as_u64() == replays).then_some(s)
        })
        .await
    };
    let first = dead(None).await;
    assert!(first.get("replayed_at").is_none(), "{first}");

    // Replayed while the subscription is paused: pending, replayed once, until it is attempted.
    assert_eq!(gw.post_json(NAV, "/v1/subscriptions/nav-orders/pause", json!(null)).await.0, 200);
    let (status, _) = gw.post_json(NAV, "/v1/subscriptions/nav-orders/dead-letters/replay", json!({"all": true})).await;
    assert_eq!(status, 200);
    let pending = eventually("the replay pending", Duration::from_secs(10), async || {
        let s = state_of(&gw, &id, "nav-orders").await;
        (s["state"] == "pending").then_some(s)
    })
    .await;
    assert_eq!(pending["replays"], 1, "{pending}");
    // Resumed while the endpoint still fails: dead again, with the replay counted.
    assert_eq!(gw.post_json(NAV, "/v1/subscriptions/nav-orders/resume", json!(null)).await.0, 200);
    let again = dead(Some(1)).await;
    assert!(again["replayed_at"].as_str().is_some_and(|t| t.contains('T')), "{again}");

    // The endpoint recovers; the second replay is delivered, and says it was the second.
    failing.store(false, Ordering::SeqCst);
    let (status, _) = gw.post_json(NAV, "/v1/subscriptions/nav-orders/dead-letters/replay", json!({"all": true})).await;
    assert_eq!(status, 200);
    let delivered = eventually("the replay delivered", Duration::from_secs(15), async || {
        let s = state_of(&gw, &id, "nav-orders").await;
        (s["state"] == "delivered").then_some(s)
    })
    .await;
    assert_eq!(delivered["replays"], 2, "{delivered}");
    assert!(delivered["replayed_at"].as_str().unwrap() >= again["replayed_at"].as_str().unwrap(), "{delivered}");
}
