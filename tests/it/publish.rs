//! The publish path against a real nats-server: every error class changes nothing, valid
//! messages are stored with CloudEvents headers and their exact bytes, idempotency, batches.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::ExpectStatus;
use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, example, jetstream, slug, stream_count};
use crate::common::nats::NatsServer;

const CE: &str = "application/cloudevents+json";

fn valid_order() -> Vec<u8> {
    std::fs::read(example("samples/sales-order.valid.json")).unwrap()
}

/// Each refused request: (what, request, status, problem slug). None of them may store anything.
#[tokio::test]
async fn every_error_class_is_classified_and_stores_nothing() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let before = stream_count(&js, "ORDERS").await;

    let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
    let long_subject = format!("orders.{}", "x".repeat(300));
    let invalid_order = std::fs::read(example("samples/sales-order.invalid.json")).unwrap();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("malformed JSON", gw.publish(BITRIX, "orders.misc", r#"{"a":"#), 400, "malformed-json"),
        ("trailing garbage", gw.publish(BITRIX, "orders.misc", r#"{"a":1} x"#), 400, "malformed-json"),
        ("invalid UTF-8", gw.publish(BITRIX, "orders.misc", b"{\"a\":\"\xff\xfe\"}".to_vec()), 400, "invalid-utf8"),
        (
            "over the body limit",
            gw.publish(BITRIX, "orders.misc", format!("\"{}\"", "x".repeat(70_000))),
            413,
            "payload-too-large",
        ),
        ("nested too deep", gw.publish(BITRIX, "orders.misc", deep), 400, "json-too-deep"),
        ("wrong content type", gw.publish_as(BITRIX, "orders.misc", "text/plain", "{}"), 415, "unsupported-media-type"),
        (
            "no content type",
            gw.http.post(gw.url("/v1/publish/orders.misc")).bearer_auth(BITRIX).body("{}"),
            415,
            "unsupported-media-type",
        ),
        (
            "no token",
            gw.http.post(gw.url("/v1/publish/orders.misc")).header("content-type", "application/json").body("{}"),
            401,
            "unauthorized",
        ),
        ("unknown token", gw.publish("not-a-real-token-at-all", "orders.misc", "{}"), 401, "unauthorized"),
        (
            "not a bearer token",
            gw.http
                .post(gw.url("/v1/publish/orders.misc"))
                .header("authorization", format!("Basic {BITRIX}"))
                .header("content-type", "application/json")
                .body("{}"),
            401,
            "unauthorized",
        ),
        ("subject not permitted", gw.publish(NAV, "orders.created", valid_order()), 403, "forbidden"),
        ("empty token in subject", gw.publish(BITRIX, "orders..x", "{}"), 400, "invalid-subject"),
        ("trailing dot", gw.publish(BITRIX, "orders.", "{}"), 400, "invalid-subject"),
        ("wildcard *", gw.publish(BITRIX, "orders.*", "{}"), 400, "invalid-subject"),
        ("wildcard >", gw.publish(BITRIX, "orders.>", "{}"), 400, "invalid-subject"),
        ("system subject", gw.publish(BITRIX, "$JS.API.STREAM.LIST", "{}"), 400, "invalid-subject"),
        ("space in subject", gw.publish(BITRIX, "orders.a%20b", "{}"), 400, "invalid-subject"),
        ("subject not UTF-8", gw.publish(BITRIX, "orders.%FF", "{}"), 400, "invalid-subject"),
        ("reserved subject", gw.publish(BITRIX, "magistral.dlq.x", "{}"), 400, "invalid-subject"),
        ("over-long subject", gw.publish(BITRIX, &long_subject, "{}"), 400, "invalid-subject"),
        ("no stream binds the subject", gw.publish(BITRIX, "unstored.thing", "{}"), 404, "no-stream"),
        ("contract violation", gw.publish(BITRIX, "orders.created", invalid_order), 422, "contract-violation"),
        (
            "unsupported CloudEvents version",
            gw.publish(BITRIX, "orders.misc", "{}").header("ce-specversion", "0.3"),
            400,
            "invalid-cloudevent",
        ),
        (
            "bad CloudEvents time",
            gw.publish(BITRIX, "orders.misc", "{}").header("ce-time", "yesterday"),
            400,
            "invalid-cloudevent",
        ),
        (
            "message id with spaces",
            gw.publish(BITRIX, "orders.misc", "{}").header("idempotency-key", "a b"),
            400,
            "invalid-id",
        ),
        (
            "unknown dataschema",
            gw.publish(BITRIX, "orders.created", valid_order()).header("ce-dataschema", "https://example.com/v9"),
            422,
            "unknown-dataschema",
        ),
        (
            "structured event without data",
            gw.publish_as(BITRIX, "orders.misc", CE, r#"{"specversion":"1.0","type":"x"}"#),
            400,
            "invalid-cloudevent",
        ),
        ("unknown route", gw.http.get(gw.url("/v1/nothing")), 404, "not-found"),
        ("wrong method", gw.http.get(gw.url("/v1/publish/orders.misc")), 405, "method-not-allowed"),
    ];
    for (what, request, status, expected) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{what}: problem+json content type");
        let body: Value = response.json().await.unwrap();
        assert_eq!(slug(&body), expected, "{what}: {body}");
        assert_eq!(body["status"], status, "{what}");
        assert!(body["title"].is_string() && body["detail"].is_string(), "{what}: {body}");
    }
    assert_eq!(stream_count(&js, "ORDERS").await, before, "a refused request stored something");
}

#[tokio::test]
async fn contract_violation_lists_every_failing_pointer() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let invalid = std::fs::read(example("samples/sales-order.invalid.json")).unwrap();
    let body = gw.publish(BITRIX, "orders.created", invalid).expect_status(422).await;
    let errors = body["errors"].as_array().unwrap();
    let pointers: Vec<&str> = errors.iter().map(|e| e["instancePath"].as_str().unwrap()).collect();
    for expected in ["/lines/1/qty", "/lines/0", "/delivery/country", "/created_at", "/payment/method"] {
        assert!(pointers.contains(&expected), "{expected} missing from {pointers:?}");
    }
    assert!(errors.iter().all(|e| e["schemaPath"].as_str().is_some_and(|s| s.starts_with('/'))));
    assert!(errors.iter().all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())));
}

#[tokio::test]
async fn valid_order_is_stored_with_cloudevents_headers_and_exact_bytes() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;

    // Odd whitespace proves the body is stored as received, not re-serialised.
    let mut body = b"  \n".to_vec();
    body.extend(valid_order());
    body.extend(b"\n\t ");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = gw
        .publish(BITRIX, "orders.created", body.clone())
        .header("ce-source", "/participants/someone-else")
        .header("ce-type", "ru.winestore.order.created")
        .header("ce-comment", "%D0%B7%D0%B0%D0%BA%D0%B0%D0%B7%20100%25")
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["stream"], "ORDERS");
    assert_eq!(ack["duplicate"], false);
    let id = ack["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7, "generated ids are UUIDv7");

    let stream = js.get_stream("ORDERS").await.unwrap();
    let stored = stream.get_raw_message(ack["seq"].as_u64().unwrap()).await.unwrap();
    assert_eq!(stored.subject.as_str(), "orders.created");
    assert_eq!(stored.payload.as_ref(), body.as_slice(), "payload is the body as received");
    let h = stored.headers;
    let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-id").as_deref(), Some(id));
    assert_eq!(get("Nats-Msg-Id").as_deref(), Some(id));
    assert_eq!(get("ce-source").as_deref(), Some("/participants/bitrix"), "the gateway stamps the source");
    assert_eq!(get("ce-type").as_deref(), Some("ru.winestore.order.created"));
    assert_eq!(get("ce-dataschema").as_deref(), Some("https://magistral.dev/contracts/sales-order/v1"));
    assert_eq!(get("content-type").as_deref(), Some("application/json"));
    assert_eq!(get("traceparent").as_deref(), Some(traceparent));
    assert_eq!(get("ce-comment").as_deref(), Some("%D0%B7%D0%B0%D0%BA%D0%B0%D0%B7%20100%25"), "percent-encoded");
    let time = get("ce-time").unwrap();
    assert!(time.starts_with("20") && time.ends_with('Z'), "RFC 3339 UTC time: {time}");
}

#[tokio::test]
async fn structured_cloudevent_stores_data_bytes_and_envelope_attributes() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let event = r#"{"specversion":"1.0","id":"status-4711-1","source":"/elsewhere","type":"ru.winestore.order.status",
        "time":"2026-11-28T10:00:00Z","datacontenttype":"application/json","region":"msk",
        "data": {"order_id" : "4711",   "status":"created","nav_document_no":"SO-000123","at":"2026-11-28T10:00:01Z"}}"#;
    let response = gw.publish_as(NAV, "orders.status", CE, event).send().await.unwrap();
    let status = response.status();
    let ack: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["id"], "status-4711-1", "ce id becomes the message id");
    let stored = js.get_stream("ORDERS").await.unwrap().get_raw_message(ack["seq"].as_u64().unwrap()).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&stored.payload).unwrap(),
        r#"{"order_id" : "4711",   "status":"created","nav_document_no":"SO-000123","at":"2026-11-28T10:00:01Z"}"#
    );
    let get = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-source").as_deref(), Some("/participants/nav"));
    assert_eq!(get("ce-type").as_deref(), Some("ru.winestore.order.status"));
    assert_eq!(get("ce-time").as_deref(), Some("2026-11-28T10:00:00Z"));
    assert_eq!(get("ce-region").as_deref(), Some("msk"));
    assert_eq!(get("ce-id").as_deref(), Some("status-4711-1"));
    // JetStream de-duplicates on the id scoped to its publisher.
    assert_eq!(get("Nats-Msg-Id").as_deref(), Some("nav:status-4711-1"));

    // The data, not the envelope, is what the contract checks.
    let bad = r#"{"specversion":"1.0","type":"x","data":{"order_id":"4711","status":"shipped"}}"#;
    gw.publish_as(NAV, "orders.status", CE, bad).expect_status(422).await;
}

#[tokio::test]
async fn idempotent_republish_is_a_duplicate_with_the_original_seq() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let send = || gw.publish(BITRIX, "orders.created", valid_order()).header("idempotency-key", "order-4711").send();
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Something else in between, so "the original seq" is not just "the last seq".
    assert_eq!(gw.publish(BITRIX, "orders.misc", "{}").send().await.unwrap().status(), 202);
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["seq"], first["seq"]);
    assert_eq!(second["id"], "order-4711");
    assert_eq!(stream_count(&js, "ORDERS").await, 2);
}

#[tokio::test]
async fn batch_of_1000_is_stored_in_order() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let items: Vec<Value> =
        (0..1000).map(|i| json!({"subject": "orders.misc", "id": format!("batch-{i}"), "data": {"n": i}})).collect();
    let body = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).expect_status(202).await;
    assert_eq!(body["stored"], 1000);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert_eq!(stream_count(&js, "ORDERS").await, 1000);
    let stream = js.get_stream("ORDERS").await.unwrap();
    let mut last_seq = 0;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["id"], format!("batch-{i}"));
        let seq = result["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "item {i} stored out of order");
        last_seq = seq;
    }
    for i in [0u64, 499, 999] {
        let m = stream.get_raw_message(results[i as usize]["seq"].as_u64().unwrap()).await.unwrap();
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), format!(r#"{{"n":{i}}}"#));
    }
}

#[tokio::test]
async fn ndjson_batch_is_accepted() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let order = String::from_utf8(valid_order()).unwrap().replace('\n', "");
    let body = format!(
        "{{\"subject\":\"orders.created\",\"data\":{order}}}\n\n{{\"subject\":\"orders.misc\",\"data\":[1,2,3]}}\n"
    );
    let response = gw
        .http
        .post(gw.url("/v1/publish"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(stream_count(&js, "ORDERS").await, 2);
}

#[tokio::test]
async fn batch_with_one_bad_item_stores_nothing_and_names_it() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let invalid: Value =
        serde_json::from_slice(&std::fs::read(example("samples/sales-order.invalid.json")).unwrap()).unwrap();
    let mut items: Vec<Value> = (0..10).map(|i| json!({"subject": "orders.misc", "data": {"n": i}})).collect();
    items[3] = json!({"subject": "orders.created", "data": invalid});
    items[7] = json!({"subject": "$SYS.x", "data": {}});
    let body = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).expect_status(422).await;
    assert_eq!(slug(&body), "batch-rejected");
    let refused = body["items"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["index"], 3);
    assert_eq!(slug(&refused[0]), "contract-violation");
    assert!(!refused[0]["errors"].as_array().unwrap().is_empty());
    assert_eq!(refused[1]["index"], 7);
    assert_eq!(slug(&refused[1]), "invalid-subject");
    assert_eq!(stream_count(&js, "ORDERS").await, 0);

    // A typo in an item's members is refused too, by index, not silently dropped.
    let response = gw
        .http
        .post(gw.url("/v1/publish"))
        .bearer_auth(BITRIX)
        .json(&json!([{"subject": "orders.misc", "data": {}}, {"subject": "orders.misc", "dta": {}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["items"][0]["index"], 1);
    assert_eq!(slug(&body["items"][0]), "malformed-json");
    assert_eq!(stream_count(&js, "ORDERS").await, 0);
}

#[tokio::test]
async fn metrics_count_publishes_by_outcome() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    assert_eq!(gw.publish(BITRIX, "orders.created", valid_order()).send().await.unwrap().status(), 202);
    let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("magistral_publish_total{")
            && l.contains(r#"participant="bitrix""#)
            && l.contains(r#"outcome="stored""#)),
        "{text}"
    );
    assert!(text.contains("magistral_publish_duration_seconds_bucket"), "{text}");
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn message_ids_are_scoped_to_their_publisher() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let status = r#"{"order_id":"4711","status":"created","nav_document_no":"SO-000123","at":"2026-11-28T10:00:01Z"}"#;
    let send =
        |token: &'static str| gw.publish(token, "orders.status", status).header("idempotency-key", "shared-1").send();

    let by_bitrix = send(BITRIX).await.unwrap();
    assert_eq!(by_bitrix.status(), 202);
    let by_bitrix: Value = by_bitrix.json().await.unwrap();
    // Another participant's message with the same key is its own message, not a duplicate.
    let by_nav = send(NAV).await.unwrap();
    assert_eq!(by_nav.status(), 202);
    let by_nav: Value = by_nav.json().await.unwrap();
    assert_eq!(by_nav["duplicate"], false);
    assert_ne!(by_nav["seq"], by_bitrix["seq"]);
    assert_eq!(by_nav["id"], "shared-1", "the publisher's own id is answered");
    // A participant's own retry is still a duplicate of its first message.
    let again = send(BITRIX).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!((again["duplicate"].as_bool(), &again["seq"]), (Some(true), &by_bitrix["seq"]));
    assert_eq!(stream_count(&js, "ORDERS").await, 2);

    // "Where is my message?" answers each publisher about its own.
    for (token, source, seq) in
        [(BITRIX, "/participants/bitrix", &by_bitrix["seq"]), (NAV, "/participants/nav", &by_nav["seq"])]
    {
        let found = eventually("shared-1 indexed", Duration::from_secs(5), async || {
            let r = gw.http.get(gw.url("/v1/messages/shared-1")).bearer_auth(token).send().await.unwrap();
            if r.status() == 200 { Some(r.json::<Value>().await.unwrap()) } else { None }
        })
        .await;
        assert_eq!(found["publisher"], source);
        assert_eq!(&found["seq"], seq);
    }
}

#[tokio::test]
async fn hostile_bodies_are_refused_with_bounded_answers() {
    let nats = NatsServer::start();
    let gw = Gateway::start_with(crate::common::gateway::scenario("basic"), &nats.url(), |c| {
        c.limits.max_body_bytes = 1024 * 1024;
        c.limits.max_batch_bytes = 16 * 1024 * 1024;
        c.limits.max_batch_items = 1000;
    })
    .await;
    let js = jetstream(&nats.url()).await;

    // Repeated members: refused with the member named, wherever the JSON is.
    let r = gw.publish(BITRIX, "orders.misc", r#"{"order_id": 5, "x": 1, "order_id": "BX-1"}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(slug(&body), "duplicate-key");
    assert!(body["detail"].as_str().unwrap().contains("/order_id"), "{body}");
    let envelope = r#"{"specversion":"1.0","type":"x","id":"e-1","data":{"a":{"b":1,"b":2}}}"#;
    let r = gw.publish_as(BITRIX, "orders.misc", "application/cloudevents+json", envelope).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("/data/a/b"));
    let batch = json!([{"subject": "orders.misc", "data": {}}]).to_string().replace("{}", r#"{"k":1,"k":2}"#);
    let r = gw
        .http
        .post(gw.url("/v1/publish"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["items"][0]["type"], "urn:magistral:problem:duplicate-key", "{body}");

    // Millions of tiny NDJSON items: refused at the first one over the limit.
    let started = std::time::Instant::now();
    let r = gw
        .http
        .post(gw.url("/v1/publish"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/x-ndjson")
        .body("{}\n".repeat(5_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "too-many-items");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());

    // A body breaking its contract in a hundred thousand places: a small answer with a count.
    let order = json!({
        "order_id": "BX-1", "customer_id": "C-1", "created_at": "2026-11-28T10:00:00Z",
        "lines": (0..100_000).map(|_| json!(1)).collect::<Vec<_>>(),
    });
    let r = gw.publish(BITRIX, "orders.created", order.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "answer of {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["errors"].as_array().unwrap().len(), 100);
    assert!(body["detail"].as_str().unwrap().contains("the first 100 are listed"), "{body}");

    // Attributes that would become broken headers or SSE fields.
    for (name, value) in [
        ("ce-type", "a%0D%0Ab"),
        ("ce-comment", "x%0Ay"),
        ("traceparent", "garbage"),
        ("tracestate", &"a=b,".repeat(200)),
    ] {
        let r = gw.publish(BITRIX, "orders.misc", "{}").header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 400, "{name}: {value}");
    }
    let mut envelope = serde_json::Map::new();
    envelope.insert("specversion".into(), json!("1.0"));
    envelope.insert("type".into(), json!("x"));
    envelope.insert("data".into(), json!({}));
    for i in 0..40_000 {
        envelope.insert(format!("x{i}"), json!("v"));
    }
    let r = gw
        .publish_as(BITRIX, "orders.misc", "application/cloudevents+json", Value::Object(envelope).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(slug(&r), "invalid-cloudevent");
    assert_eq!(stream_count(&js, "ORDERS").await, 0, "nothing hostile was stored");
}
