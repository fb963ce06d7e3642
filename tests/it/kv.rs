//! Directories in JetStream KV over HTTP: read/write/delete/list, compare-and-set,
//! contracts, permissions, and changes pushed to subscribers.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::ExpectStatus;
use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, slug, subscription};
use crate::common::nats::NatsServer;
use crate::common::receiver::Receiver;

fn item(sku: &str, amount: f64) -> String {
    json!({"sku": sku, "name": "Château Example 2019", "color": "red", "price": {"amount": amount, "currency": "RUB"}})
        .to_string()
}

fn put(gw: &Gateway, token: &str, key: &str, body: String) -> reqwest::RequestBuilder {
    gw.http
        .put(gw.url(&format!("/v1/kv/items/{key}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn put_get_delete_and_list_with_paging() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    for i in 0..25 {
        let r = put(&gw, NAV, &format!("WR-{i:04}"), item(&format!("WR-{i:04}"), 1000.0 + f64::from(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = put(&gw, NAV, "ACC-0001", item("ACC-0001", 300.0)).send().await.unwrap();
    let revision = r.headers()["etag"].to_str().unwrap().to_owned();

    let r = gw.http.get(gw.url("/v1/kv/items/ACC-0001")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), revision);
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.text().await.unwrap(), item("ACC-0001", 300.0), "the value as written");

    // Paged keys with a prefix.
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/kv/items?prefix=WR-&limit=10&cursor={c}"),
            None => "/v1/kv/items?prefix=WR-&limit=10".to_owned(),
        };
        let page = gw.get_json(BITRIX, &path).await;
        keys.extend(page["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(keys, (0..25).map(|i| format!("WR-{i:04}")).collect::<Vec<_>>());

    gw.http.delete(gw.url("/v1/kv/items/ACC-0001")).bearer_auth(NAV).expect_status(204).await;
    let r = gw.http.get(gw.url("/v1/kv/items/ACC-0001")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "not-found");
    assert!(
        !gw.get_json(BITRIX, "/v1/kv/items?prefix=ACC").await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "ACC-0001")
    );
    // Deleting again: nothing there.
    gw.http.delete(gw.url("/v1/kv/items/ACC-0001")).bearer_auth(NAV).expect_status(404).await;
    // A deleted key may be created again with a create-only write.
    put(&gw, NAV, "ACC-0001", item("ACC-0001", 310.0)).header("if-none-match", "*").expect_status(201).await;
}

#[tokio::test]
async fn compare_and_set_contracts_permissions_and_keys() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let r = put(&gw, NAV, "WR-0042", item("WR-0042", 1590.0)).header("if-none-match", "*").send().await.unwrap();
    assert_eq!(r.status(), 201, "create-only write of a new key");
    let first = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = put(&gw, NAV, "WR-0042", item("WR-0042", 1.0)).header("if-none-match", "*").send().await.unwrap();
    assert_eq!(r.status(), 412, "create-only write of an existing key");

    let r = put(&gw, NAV, "WR-0042", item("WR-0042", 1690.0)).header("if-match", &first).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let second = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(first, second);
    // A writer holding the old revision loses, and the value stays.
    let r = put(&gw, NAV, "WR-0042", item("WR-0042", 9.0)).header("if-match", &first).send().await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "revision-mismatch");
    let current = || async {
        gw.http.get(gw.url("/v1/kv/items/WR-0042")).bearer_auth(BITRIX).send().await.unwrap().text().await.unwrap()
    };
    assert_eq!(current().await, item("WR-0042", 1690.0));

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "contract violation",
            put(&gw, NAV, "WR-0042", json!({"sku": "WR-0042", "price": -1}).to_string()),
            422,
            "contract-violation",
        ),
        ("reader may not write", put(&gw, BITRIX, "WR-0042", item("WR-0042", 1.0)), 403, "forbidden"),
        ("unknown directory", gw.http.get(gw.url("/v1/kv/prices/WR-0042")).bearer_auth(NAV), 404, "not-found"),
        ("key with a space", put(&gw, NAV, "WR%200042", item("WR-0042", 1.0)), 400, "invalid-key"),
        ("key with a wildcard", put(&gw, NAV, "WR-*", item("WR-0042", 1.0)), 400, "invalid-key"),
        ("over-long key", put(&gw, NAV, &"K".repeat(300), item("WR-0042", 1.0)), 400, "invalid-key"),
        ("not JSON", put(&gw, NAV, "WR-0042", "{".into()), 400, "malformed-json"),
        (
            "wrong content type",
            gw.http.put(gw.url("/v1/kv/items/WR-0042")).bearer_auth(NAV).header("content-type", "text/plain").body("x"),
            415,
            "unsupported-media-type",
        ),
        ("no token", gw.http.get(gw.url("/v1/kv/items/WR-0042")), 401, "unauthorized"),
        (
            "bad If-Match",
            put(&gw, NAV, "WR-0042", item("WR-0042", 1.0)).header("if-match", "yesterday"),
            400,
            "invalid-header",
        ),
    ];
    for (what, request, status, expected) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        assert_eq!(slug(&r.json::<Value>().await.unwrap()), expected, "{what}");
    }
    assert_eq!(current().await, item("WR-0042", 1690.0), "no refused write changed the value");
}

#[tokio::test]
async fn directory_changes_are_pushed_to_subscribers() {
    let nats = NatsServer::start();
    let app = Receiver::start().await;
    let sub = subscription("bitrix", &["$KV.items.>"], &app.url(), json!({}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("shop-prices", sub)]).await;
    // Changes made before the subscription's consumer exists are not its to deliver.
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    eventually("the subscription's consumer", Duration::from_secs(10), async || {
        let stream = js.get_stream("KV_items").await.ok()?;
        stream.consumer_info("magistral-shop-prices").await.ok().map(|_| ())
    })
    .await;
    put(&gw, NAV, "WR-0042", item("WR-0042", 1590.0)).expect_status(200).await;
    let got = app.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body.as_ref(), item("WR-0042", 1590.0).as_bytes());
    assert_eq!(got[0].header("ce-source"), Some("/participants/nav"));
    assert_eq!(got[0].header("ce-subject"), Some("WR-0042"));
    assert_eq!(got[0].header("magistral-subject"), Some("$KV.items.WR-0042"));
    assert_eq!(got[0].header("ce-dataschema"), Some("https://magistral.dev/contracts/item/v1"));
    // A delete is announced as one, with its own id.
    gw.http.delete(gw.url("/v1/kv/items/WR-0042")).bearer_auth(NAV).expect_status(204).await;
    let got = app.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("ce-type"), Some("magistral.directory.items.delete"));
    assert_eq!(got[1].header("ce-subject"), Some("WR-0042"));
    assert_ne!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    put(&gw, NAV, "WR-0042", item("WR-0042", 1590.0)).send().await.unwrap();
    // A NATS-native watcher sees it too.
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    let store = js.get_key_value("items").await.unwrap();
    assert_eq!(store.get("WR-0042").await.unwrap().unwrap().as_ref(), item("WR-0042", 1590.0).as_bytes());
}
