//! Request/reply: HTTP requesters, HTTP responders (as NATS micro services), NATS-native
//! peers on both sides, and every error class with its timing bounded.

use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, slug};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver};

const HISTORY: &str =
    r#"{"customer_id":"C-0042","orders":[{"order_id":"4711","date":"2026-11-20","total":12990,"currency":"RUB"}]}"#;

fn responder(endpoint: &str, extra: Value) -> magistral::config::ResponderConfig {
    let mut value = json!({
        "participant": "nav",
        "subjects": ["nav.query.customer.purchases", "nav.query.order.*"],
        "endpoint": endpoint,
        "timeout": "2s",
        "signing_secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    });
    if let (Some(base), Value::Object(extra)) = (value.as_object_mut(), extra) {
        base.extend(extra);
    }
    serde_json::from_value(value).unwrap()
}

async fn with_responder(nats: &NatsServer, endpoint: &str, extra: Value) -> Gateway {
    let cfg = responder(endpoint, extra);
    Gateway::start_with(crate::common::gateway::scenario("basic"), &nats.url(), move |c| {
        c.responders.insert("nav-queries".into(), cfg);
    })
    .await
}

fn ask(gw: &Gateway, subject: &str, body: &str) -> reqwest::RequestBuilder {
    gw.http
        .post(gw.url(&format!("/v1/request/{subject}")))
        .bearer_auth(BITRIX)
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// Waits until the responder's micro service answers `$SRV.PING`.
async fn wait_for_service(client: &async_nats::Client, name: &str) {
    let info: Value = eventually(&format!("service {name} discoverable"), Duration::from_secs(10), async || {
        let ping = client.request(format!("$SRV.PING.{name}"), "".into());
        let reply = tokio::time::timeout(Duration::from_millis(500), ping).await.ok()?.ok()?;
        Some(serde_json::from_slice(&reply.payload).unwrap())
    })
    .await;
    assert_eq!(info["name"], name);
}

#[tokio::test]
async fn http_requester_reaches_an_http_responder_and_nats_requesters_do_too() {
    let nats = NatsServer::start();
    let erp =
        Receiver::scripted(|_, _| Answer::ok().with_header("content-type", "application/json").body(HISTORY)).await;
    let gw = with_responder(&nats, &erp.url(), json!({})).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_for_service(&client, "magistral-nav-queries").await;

    let r = ask(&gw, "nav.query.customer.purchases", r#"{"customer_id":"C-0042"}"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), HISTORY);
    let got = erp.received();
    assert_eq!(got[0].body.as_ref(), br#"{"customer_id":"C-0042"}"#);
    assert_eq!(got[0].header("ce-source"), Some("/participants/bitrix"));
    assert_eq!(got[0].header("magistral-subject"), Some("nav.query.customer.purchases"));
    assert!(got[0].header("webhook-signature").is_some_and(|s| s.starts_with("v1,")));
    assert_eq!(got[0].header("webhook-id"), got[0].header("ce-id"));

    // A NATS-native requester reaches the same responder.
    let reply = client.request("nav.query.order.4711", r#"{"order_id":"4711"}"#.into()).await.unwrap();
    assert_eq!(reply.payload.as_ref(), HISTORY.as_bytes());
    assert_eq!(erp.received()[1].header("magistral-subject"), Some("nav.query.order.4711"));
    // Discovery: $SRV.INFO lists the endpoints.
    let info: Value =
        serde_json::from_slice(&client.request("$SRV.INFO.magistral-nav-queries", "".into()).await.unwrap().payload)
            .unwrap();
    let subjects: Vec<&str> =
        info["endpoints"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert!(subjects.contains(&"nav.query.customer.purchases") && subjects.contains(&"nav.query.order.*"), "{info}");
}

#[tokio::test]
async fn http_requester_reaches_a_nats_native_micro_service() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let service = client.service_builder().start("prices", "1.0.0").await.unwrap();
    let mut endpoint = service.endpoint("svc.price").await.unwrap();
    // The endpoint's subscription reaches the server before the first request does.
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let asked: Value = serde_json::from_slice(&request.message.payload).unwrap();
            let result = if asked["sku"] == "NOPE" {
                Err(async_nats::service::error::Error { status: "unknown sku NOPE".into(), code: 404 })
            } else {
                Ok(json!({"sku": asked["sku"], "amount": 1590}).to_string().into())
            };
            request.respond(result).await.unwrap();
        }
    });
    // The service's interest reaches the gateway's connection through the server; under load
    // the first request can still find no responder (503 no-responders, retryable): retry.
    let answer = eventually("the NATS-native service answers", Duration::from_secs(10), async || {
        let r = ask(&gw, "svc.price", r#"{"sku":"WR-0042"}"#).send().await.unwrap();
        match r.status().as_u16() {
            200 => Some(r.json::<Value>().await.unwrap()),
            503 => None,
            other => panic!("{other}: {}", r.text().await.unwrap()),
        }
    })
    .await;
    assert_eq!(answer["amount"], 1590);
    // Micro error headers become the mapped status with a problem body.
    let r = ask(&gw, "svc.price", r#"{"sku":"NOPE"}"#).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(slug(&body), "responder-error");
    assert!(body["detail"].as_str().unwrap().contains("unknown sku NOPE"), "{body}");
}

#[tokio::test]
async fn every_request_error_class_is_classified_within_its_timeout() {
    let nats = NatsServer::start();
    let erp = Receiver::scripted(|_, r| {
        let asked: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        match asked["customer_id"].as_str().unwrap_or("") {
            "unknown" => Answer::status(404).body(r#"{"error":"no such customer"}"#),
            "crash" => Answer::status(500).body("stack trace"),
            "slow" => {
                Answer::ok().after(Duration::from_secs(3)).with_header("content-type", "application/json").body(HISTORY)
            }
            "bad-reply" => Answer::ok()
                .with_header("content-type", "application/json")
                .body(r#"{"customer_id":"C-1","orders":"none"}"#),
            _ => Answer::ok().with_header("content-type", "application/json").body(HISTORY),
        }
    })
    .await;
    let gw = with_responder(&nats, &erp.url(), json!({"timeout": "1s"})).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_for_service(&client, "magistral-nav-queries").await;

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, Duration)> = vec![
        ("no responders", ask(&gw, "svc.nobody", "{}"), 503, "no-responders", Duration::from_secs(1)),
        (
            "timeout (the endpoint is slower than the requester waits)",
            gw.http
                .post(gw.url("/v1/request/nav.query.customer.purchases?timeout=300ms"))
                .bearer_auth(BITRIX)
                .header("content-type", "application/json")
                .body(r#"{"customer_id":"slow"}"#),
            504,
            "request-timeout",
            Duration::from_millis(900),
        ),
        (
            "responder endpoint times out",
            ask(&gw, "nav.query.customer.purchases", r#"{"customer_id":"slow"}"#),
            504,
            "responder-error",
            Duration::from_secs(3),
        ),
        (
            "responder 4xx",
            ask(&gw, "nav.query.customer.purchases", r#"{"customer_id":"unknown"}"#),
            404,
            "responder-error",
            Duration::from_secs(1),
        ),
        (
            "responder 5xx",
            ask(&gw, "nav.query.customer.purchases", r#"{"customer_id":"crash"}"#),
            502,
            "responder-error",
            Duration::from_secs(1),
        ),
        (
            "reply breaks its contract",
            ask(&gw, "nav.query.customer.purchases", r#"{"customer_id":"bad-reply"}"#),
            502,
            "reply-contract-violation",
            Duration::from_secs(1),
        ),
        (
            "request breaks its contract",
            ask(&gw, "nav.query.customer.purchases", r#"{"customer":"C-1"}"#),
            422,
            "contract-violation",
            Duration::from_secs(1),
        ),
        (
            "forbidden subject",
            gw.http
                .post(gw.url("/v1/request/nav.query.customer.purchases"))
                .bearer_auth(NAV)
                .header("content-type", "application/json")
                .body(r#"{"customer_id":"C-1"}"#),
            403,
            "forbidden",
            Duration::from_secs(1),
        ),
        ("invalid subject", ask(&gw, "nav.query.>", "{}"), 400, "invalid-subject", Duration::from_secs(1)),
        (
            "bad timeout",
            gw.http
                .post(gw.url("/v1/request/svc.x?timeout=soon"))
                .bearer_auth(BITRIX)
                .header("content-type", "application/json")
                .body("{}"),
            400,
            "invalid-query",
            Duration::from_secs(1),
        ),
    ];
    for (what, request, status, expected, bound) in cases {
        let started = Instant::now();
        let r = request.send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(slug(&body), expected, "{what}: {body}");
        assert!(took < bound, "{what}: took {took:?}, bound {bound:?}");
    }
    let asked_with_bad_request = erp.received().iter().filter(|r| r.body.as_ref() == br#"{"customer":"C-1"}"#).count();
    assert_eq!(asked_with_bad_request, 0, "a request breaking its contract reached the responder");
}

#[tokio::test]
async fn responder_down_is_a_classified_error() {
    let nats = NatsServer::start();
    let mut erp = Receiver::start().await;
    erp.go_down();
    let gw = with_responder(&nats, &erp.url(), json!({})).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_for_service(&client, "magistral-nav-queries").await;
    let r = ask(&gw, "nav.query.customer.purchases", r#"{"customer_id":"C-1"}"#).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(slug(&body), "responder-error");
    assert!(body["detail"].as_str().unwrap().contains("endpoint-unreachable"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_across_two_gateways_respect_the_concurrency_bound() {
    let nats = NatsServer::start();
    let erp = Receiver::scripted(|_, _| {
        Answer::ok().after(Duration::from_millis(20)).with_header("content-type", "application/json").body(HISTORY)
    })
    .await;
    let a = with_responder(&nats, &erp.url(), json!({"max_concurrency": 4})).await;
    let b = with_responder(&nats, &erp.url(), json!({"max_concurrency": 4})).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_for_service(&client, "magistral-nav-queries").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let request = gw
            .http
            .post(gw.url("/v1/request/nav.query.customer.purchases?timeout=20s"))
            .bearer_auth(BITRIX)
            .header("content-type", "application/json")
            .body(r#"{"customer_id":"C-1"}"#);
        tasks.push(tokio::spawn(async move { request.send().await.unwrap().status().as_u16() }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "every request answered");
    let max = erp.max_in_flight();
    assert!(max <= 8, "at most 4 per replica in flight at the endpoint, saw {max}");
    assert!(max >= 2, "requests were not concurrent at all ({max})");
    eprintln!("200 requests over 2 gateways: all answered; endpoint saw at most {max} at once (bound 2 x 4)");
}
