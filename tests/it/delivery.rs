//! Push delivery against a real nats-server and real HTTP receivers.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

use crate::common::gateway::{example, subscription, Gateway, BITRIX, NAV, OPS};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn order() -> Vec<u8> {
    std::fs::read(example("samples/sales-order.valid.json")).unwrap()
}

/// Verifies a Standard Webhooks signature from the spec's definition, independently of the
/// gateway's signing code: HMAC-SHA256 over `id.timestamp.body`, base64, `v1,` prefix.
fn verify_signature(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header.split(' ').any(|s| s == format!("v1,{expected}"))
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
    assert_eq!(d.header("webhook-id"), ack["id"].as_str(), "webhook-id is the message id");
    let ts = d.header("webhook-timestamp").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((ts.parse::<i64>().unwrap() - now).abs() < 60);
    assert!(
        verify_signature(SECRET, d.header("webhook-id").unwrap(), ts, &d.body, d.header("webhook-signature").unwrap()),
        "signature does not verify: {:?}",
        d.header("webhook-signature")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "delivered once");
}

#[tokio::test]
async fn flaky_endpoint_is_retried_on_schedule_until_delivered() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|n, _| if n < 3 { Answer::status(500) } else { Answer::ok() }).await;
    let sub = subscription("nav", &["orders.created"], &receiver.url(), json!({"retry_schedule": ["300ms", "600ms", "900ms"]}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    assert_eq!(gw.publish(BITRIX, "orders.created", order()).send().await.unwrap().status(), 202);
    let got = receiver.wait_for(4, Duration::from_secs(15)).await;
    let attempts: Vec<&str> = got.iter().map(|r| r.header("magistral-attempt").unwrap()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    assert!(got.iter().all(|r| r.header("webhook-id") == got[0].header("webhook-id")), "same id on every attempt");
    for (i, expected) in [300u64, 600, 900].iter().enumerate() {
        let gap = got[i + 1].at - got[i].at;
        let expected = Duration::from_millis(*expected);
        assert!(gap >= expected && gap < expected + Duration::from_millis(700), "gap {i}: {gap:?}, expected {expected:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 4, "nothing after the success");
    let subs = gw.get_json(NAV, "/v1/subscriptions").await;
    assert_eq!(subs["subscriptions"][0]["last_error"]["class"], "endpoint-error");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|n, _| {
        if n == 0 { Answer::status(429).with_header("retry-after", "2") } else { Answer::ok() }
    })
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
            ("bitrix-failures", subscription("bitrix", &["magistral.delivery.>"], &crm.url().replace("/hook", "/events"), json!({}))),
        ],
    )
    .await;
    let r = gw.publish(BITRIX, "orders.created", order()).header("ce-correlationid", "order-4711").send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    erp.wait_for(1, Duration::from_secs(10)).await;
    // The CRM got it once; the bitrix status subscription hears of the first failure and the dead letter.
    let events = loop {
        let events: Vec<Value> = crm
            .received()
            .iter()
            .filter(|r| r.header("magistral-subject").is_some_and(|s| s.starts_with("magistral.delivery.")))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        if events.len() >= 2 {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    // Another participant may not look; an admin may.
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-orders/dead-letters")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 403);
    gw.get_json(OPS, "/v1/subscriptions/nav-orders/dead-letters").await;

    let crm_orders_before = crm.received().iter().filter(|r| r.header("magistral-subject") == Some("orders.created")).count();
    assert_eq!(crm_orders_before, 1);
    let (status, body) = gw.post_json(NAV, "/v1/subscriptions/nav-orders/dead-letters/replay", json!({"ids": [id]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 1);
    let got = erp.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), Some(id.as_str()), "a replay keeps the message id");
    assert_eq!(got[1].header("magistral-subject"), Some("orders.created"));
    assert_eq!(got[1].body, got[0].body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crm_orders_after = crm.received().iter().filter(|r| r.header("magistral-subject") == Some("orders.created")).count();
    assert_eq!(crm_orders_after, 1, "the replay reached only the subscription it was for");
    let list = gw.get_json(NAV, "/v1/subscriptions/nav-orders/dead-letters").await;
    assert_eq!(list["total"], 0);
}

#[tokio::test]
async fn gone_endpoint_pauses_the_subscription_until_resumed() {
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|_, _| Answer::status(410)).await;
    let sub = subscription("nav", &["orders.created"], &receiver.url(), json!({}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-orders", sub)]).await;
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let state = loop {
        let s = gw.get_json(NAV, "/v1/subscriptions/nav-orders").await;
        if s["state"] == "paused" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(state["paused_reason"].as_str().unwrap().contains("410"), "{state}");
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "nothing is delivered while paused");

    receiver.set_script(|_, _| Answer::ok());
    let (status, body) = gw.post_json(NAV, "/v1/subscriptions/nav-orders/resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "the first message again, and the second");
}
