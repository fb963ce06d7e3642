//! Hostile input to the inbound adapters (issue 10, findings 1 and 6): what an attacker can
//! send to a Bitrix24 or Business Central route without credentials, and with them.

use serde_json::{Value, json};

use crate::common::gateway::{BITRIX, Gateway, jetstream, scenario, slug, stream_count};
use crate::common::nats::NatsServer;

const TOKEN: &str = "auth%5Bapplication_token%5D=app-token-123";

/// The `basic` scenario at the default body and batch limits (it lowers them for other tests):
/// the hostile corpus is about what the gateway does as shipped.
async fn gateway(nats: &NatsServer) -> Gateway {
    Gateway::start_with(scenario("basic"), &nats.url(), |c| {
        let defaults = magistral::config::Limits::default();
        c.limits.max_body_bytes = defaults.max_body_bytes;
        c.limits.max_batch_items = defaults.max_batch_items;
        assert_eq!(
            (c.limits.max_form_depth, c.limits.max_form_fields),
            (8, 2000),
            "the tests below count on these defaults"
        );
    })
    .await
}

async fn post_form(gw: &Gateway, body: String) -> (u16, Value) {
    let r = gw
        .http
        .post(gw.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn assert_ready(gw: &Gateway) {
    let r = gw.http.get(gw.url("/readyz")).send().await.expect("the gateway still answers");
    assert_eq!(r.status(), 200);
}

fn nested(levels: usize, encoded: bool) -> String {
    let level = if encoded { "%5Ba%5D" } else { "[a]" };
    format!("data{}=1", level.repeat(levels))
}

#[tokio::test]
async fn bitrix24_deep_forms_without_the_token_are_refused_before_they_are_parsed() {
    let nats = NatsServer::start();
    let gw = gateway(&nats).await;
    let js = jetstream(&nats.url()).await;
    for (levels, encoded) in [(10_000, false), (10_000, true), (50_000, false)] {
        // No token at all, and a wrong one after the deep key.
        for body in [nested(levels, encoded), format!("{}&auth%5Bapplication_token%5D=guess", nested(levels, encoded))]
        {
            let (status, problem) = post_form(&gw, body).await;
            assert_eq!(status, 401, "{levels} levels: {problem}");
            assert_eq!(slug(&problem), "unauthorized");
            assert_ready(&gw).await;
        }
    }
    assert_eq!(stream_count(&js, "ORDERS").await, 0);
}

#[tokio::test]
async fn bitrix24_forms_with_the_token_are_bounded_in_depth_and_fields() {
    let nats = NatsServer::start();
    let gw = gateway(&nats).await;
    let js = jetstream(&nats.url()).await;

    // Deep: refused as form-too-complex, naming the limit; nothing stored.
    for levels in [8, 10_000, 50_000] {
        let (status, problem) = post_form(&gw, format!("{TOKEN}&event=X&{}", nested(levels, levels == 10_000))).await;
        assert_eq!(status, 400, "{levels}: {problem}");
        assert_eq!(slug(&problem), "form-too-complex");
        assert!(problem["detail"].as_str().unwrap().contains("limits.max_form_depth"), "{problem}");
        assert_eq!(problem["retryable"], false);
        assert_ready(&gw).await;
    }
    assert_eq!(stream_count(&js, "ORDERS").await, 0);
    // At the default limit exactly (8 parts: `data` and 7 brackets): accepted.
    let (status, problem) =
        post_form(&gw, format!("{TOKEN}&event=X&data%5BFIELDS%5D%5BID%5D=7&{}", nested(7, false))).await;
    assert_eq!(status, 200, "{problem}");
    assert_eq!(stream_count(&js, "ORDERS").await, 1);

    // Fields: 2000 (the default) accepted, 2001 refused.
    let form = |fields: usize| {
        let mut parts = vec![TOKEN.to_owned(), "event=Y".to_owned(), "data%5BFIELDS%5D%5BID%5D=8".to_owned()];
        parts.extend((parts.len()..fields).map(|i| format!("data%5BUF%5D%5Bf{i}%5D=v")));
        parts.join("&")
    };
    let (status, problem) = post_form(&gw, form(2001)).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(slug(&problem), "form-too-complex");
    assert!(problem["detail"].as_str().unwrap().contains("limits.max_form_fields"), "{problem}");
    assert_eq!(stream_count(&js, "ORDERS").await, 1);
    let (status, problem) = post_form(&gw, form(2000)).await;
    assert_eq!(status, 200, "{problem}");
    assert_eq!(stream_count(&js, "ORDERS").await, 2);

    // Odd keys are not a crash: kept literally, and the auth part still never published.
    let (status, problem) =
        post_form(&gw, format!("{TOKEN}&event=Z&a%5B=1&b%5D=2&%5Bx%5D=3&c%5Bd%5De=4&=5&f=1&f%5Bg%5D=2")).await;
    assert_eq!(status, 200, "{problem}");
    assert_eq!(stream_count(&js, "ORDERS").await, 3);
    assert_ready(&gw).await;
}

/// A BC notification with many entries, each carrying `client_state`.
fn notification(entries: usize, client_state: &str, padding: usize) -> Vec<u8> {
    let entry = json!({"subscriptionId": "s1", "clientState": client_state, "resource": "x".repeat(padding), "changeType": "updated",
        "lastModifiedDateTime": "2026-11-28T10:00:00Z"});
    serde_json::to_vec(&json!({ "value": vec![entry; entries] })).unwrap()
}

#[tokio::test]
async fn business_central_wrong_client_state_and_large_bodies_are_bounded() {
    let nats = NatsServer::start();
    let gw = gateway(&nats).await;
    let js = jetstream(&nats.url()).await;
    let post = |body: reqwest::Body| {
        gw.http.post(gw.url("/v1/inbound/bc-items")).header("content-type", "application/json").body(body).send()
    };

    // Over limits.max_body_bytes (1 MiB), wrong clientState: never read whole, never parsed.
    // 413 would make BC delete its subscription; 500 is what BC tolerates (and retries).
    let big = notification(8_000, "not-ours", 1000); // ~8.5 MB
    assert!(big.len() > 8 * 1024 * 1024);
    let r = post(big.clone().into()).await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "payload-too-large");
    // The same without a Content-Length (chunked): cut at the limit while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "payload-too-large");
    assert_ready(&gw).await;

    // Within the byte limit but over limits.max_batch_items (1000) entries: 500, counted only.
    let r = post(notification(1001, "bc-state-xyz", 0).into()).await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "too-many-items");
    // 1000 entries with a wrong clientState: answered 2xx, each dropped unparsed.
    let r = post(notification(1000, "not-ours", 0).into()).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["ignored"], 1000);
    // A deep body with no credentials: not a notification, 202 and dropped, no crash.
    let deep = format!(r#"{{"value":[{}]}}"#, "[".repeat(500_000));
    let r = post(deep.into()).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(stream_count(&js, "ORDERS").await, 0, "nothing stored");

    // A real notification is still taken.
    let r = post(notification(1, "bc-state-xyz", 10).into()).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(stream_count(&js, "ORDERS").await, 1);
    assert_ready(&gw).await;
}

#[tokio::test]
async fn plain_json_route_authenticates_before_it_reads_the_body() {
    let nats = NatsServer::start();
    let gw = gateway(&nats).await;
    let js = jetstream(&nats.url()).await;
    // Larger than max_body_bytes and nested past any limit: without a token it is 401, not 413/400.
    let hostile = format!("{}{}", "[".repeat(2 * 1024 * 1024), "]".repeat(10));
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .header("content-type", "application/json")
        .body(hostile.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .bearer_auth("not-a-token")
        .header("content-type", "application/json")
        .body(hostile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With the token, the bounds apply.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "json-too-deep");
    assert_eq!(stream_count(&js, "ORDERS").await, 0);
    assert_ready(&gw).await;
}
