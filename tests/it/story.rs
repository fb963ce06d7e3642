//! The seed's story end to end on the reference example (examples/wine-retail), every
//! system played by a real HTTP server speaking its own shape.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{Gateway, example};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver};

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(example(&format!("samples/{name}"))).unwrap()
}

async fn until<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually(what, Duration::from_secs(15), check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wine_retailer_story_runs_end_to_end() {
    let nats = NatsServer::start();
    // NAV (Business Central): books sales orders, answers queries through an OData action.
    let nav = Receiver::scripted(|_, r| {
        if r.path.contains("MagistralQueries_Answer") {
            let answer = json!({"customerNo": "C-0042", "orders": [
                {"no": "SO-000123", "externalDocumentNo": "BX-2026-118734", "orderDate": "2026-11-27", "amountIncludingVAT": 12990, "currencyCode": ""}
            ]});
            Answer::ok().with_header("content-type", "application/json").body(&json!({"value": answer.to_string()}).to_string())
        } else if r.path.contains("salesOrders") {
            Answer::status(201).body(r#"{"number":"SO-000123"}"#)
        } else {
            Answer::ok()
        }
    })
    .await;
    let bitrix = Receiver::start().await;
    let crm = Receiver::start().await;
    let isimple = Receiver::start().await;

    let dir = tempfile::tempdir().unwrap();
    crate::common::gateway::copy_example(dir.path());
    let toml = dir.path().join("magistral.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("http://127.0.0.1:7048", &nav.base())
        .replace("http://127.0.0.1:7101", &bitrix.base())
        .replace("http://127.0.0.1:7201", &crm.base())
        .replace("http://127.0.0.1:7401", &isimple.base());
    std::fs::write(&toml, text).unwrap();
    let gw = Gateway::start_with(toml, &nats.url(), |_| {}).await;
    let token = |name: &str| format!("{name}-demo-token");

    // 1. An order placed on the site reaches NAV in milliseconds, as a BC sales order.
    let r = gw.publish(&token("bitrix"), "orders.created", sample("sales-order.valid.json")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let booked =
        until("NAV receives the order", async || nav.received().into_iter().find(|r| r.path.contains("salesOrders")))
            .await;
    assert_eq!(booked.header("authorization"), Some("Basic ZGVtbzpkZW1v"));
    let so: Value = serde_json::from_slice(&booked.body).unwrap();
    assert!(so["salesOrderLines"].as_array().is_some_and(|l| !l.is_empty()), "{so}");

    // 2. NAV's status comes back to the shop, in Bitrix's own shape.
    let r = gw.publish(&token("nav"), "orders.status", sample("order-status.valid.json")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    until("the shop gets the status", async || {
        bitrix.received().into_iter().find(|r| r.path.contains("sale.order.update"))
    })
    .await;

    // 2b. NAV refuses an order with a classified error: the shop gets it, correlated by order id.
    let mut refusal: Value = serde_json::from_slice(&sample("order-status.error.json")).unwrap();
    refusal["order_id"] = json!("BX-2026-118735");
    let r = gw
        .publish(&token("nav"), "orders.status", refusal.to_string())
        .header("ce-correlationid", "BX-2026-118735")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let told = until("the shop gets the refusal", async || {
        bitrix
            .received()
            .into_iter()
            .find(|r| r.path.contains("sale.order.update") && String::from_utf8_lossy(&r.body).contains("118735"))
    })
    .await;
    let told_text = String::from_utf8_lossy(&told.body).into_owned();
    assert!(told_text.contains("unknown-sku"), "the error class reaches the shop: {told_text}");
    assert_eq!(told.header("ce-correlationid"), Some("BX-2026-118735"));

    // 2c. An order that breaks its contract is refused at the edge, every failing field named.
    let r = gw.publish(&token("bitrix"), "orders.created", sample("sales-order.invalid.json")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert!(problem["errors"].as_array().unwrap().len() >= 5, "{problem}");

    // 2d. Docs In Box routes a partner's EDI document to NAV.
    let r =
        gw.publish(&token("docsinbox"), "edi.inbound.ordrsp", sample("edi-document.ordrsp.json")).send().await.unwrap();
    let status = r.status();
    assert_eq!(status, 202, "{}", r.text().await.unwrap());
    let edi = until("NAV gets the EDI document", async || {
        nav.received().into_iter().find(|r| r.path.contains("MagistralEdi_Receive"))
    })
    .await;
    assert!(serde_json::from_slice::<Value>(&edi.body).unwrap()["documentJson"].is_string());

    // 3. The shop asks NAV for a customer's purchase history, live.
    let r = gw
        .http
        .post(gw.url("/v1/request/nav.query.customer.purchases"))
        .bearer_auth(token("bitrix"))
        .header("content-type", "application/json")
        .body(r#"{"customer_id":"C-0042"}"#)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let history: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["orders"][0]["order_id"], "BX-2026-118734");
    assert_eq!(history["orders"][0]["currency"], "RUB");

    // 4. A price change reaches the apps the moment it happens: iSimple by push, SimpleWine live.
    let live = gw
        .http
        .get(gw.url("/v1/subscriptions/apps-prices/events"))
        .bearer_auth(token("simplewine"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let r = gw
        .http
        .put(gw.url("/v1/kv/prices/RETAIL.W-0012345"))
        .bearer_auth(token("nav"))
        .header("content-type", "application/json")
        .body(sample("price.valid.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pushed = until("iSimple gets the price", async || isimple.received().into_iter().next()).await;
    assert!(pushed.header("webhook-signature").is_some(), "signed for the app");
    let mut events = live.bytes_stream();
    let mut text = String::new();
    while !text.contains("W-0012345") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("SSE event").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(events);
    // Anyone allowed reads the price without touching NAV.
    let r = gw.http.get(gw.url("/v1/kv/prices/RETAIL.W-0012345")).bearer_auth(token("nav")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // 5. Bitrix24 CRM deal events arrive form-encoded; the token comes from the demo secret.
    let app_token = std::fs::read_to_string(dir.path().join("secrets/bitrix24-application-token")).unwrap();
    let form = format!(
        "event=ONCRMDEALUPDATE&event_handler_id=17&data%5BFIELDS%5D%5BID%5D=4821&ts=1795862531&auth%5Bdomain%5D=wine-retail.bitrix24.ru&auth%5Bapplication_token%5D={}",
        app_token.trim()
    );
    let r = gw
        .http
        .post(gw.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());

    // 6. Business Central: handshake, then an item change, which 1C pulls from behind its firewall.
    let r = gw.http.post(gw.url("/v1/inbound/bc-items?validationToken=abc-123")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "abc-123");
    let state = std::fs::read_to_string(dir.path().join("secrets/bc-client-state")).unwrap();
    let notification = json!({"value": [{"subscriptionId": "s-1", "clientState": state.trim(), "expirationDateTime": "2026-12-01T10:00:00Z",
        "resource": "api/v2.0/companies(demo)/items(5d115c9c-44e3-ea11-bb43-000d3a2feca1)", "changeType": "updated",
        "lastModifiedDateTime": "2026-11-28T10:00:00Z"}]});
    let r = gw.http.post(gw.url("/v1/inbound/bc-items")).json(&notification).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["stored"].as_array().unwrap().len(), 1, "{body}");
    let (_, pulled) =
        gw.post_json(&token("onec"), "/v1/subscriptions/onec-catalog/fetch", json!({"max": 10, "wait": "5s"})).await;
    let messages = pulled["messages"].as_array().unwrap();
    assert!(messages.iter().any(|m| m["subject"] == "catalog.items.changed"), "{pulled}");
    let acks: Vec<Value> = messages.iter().map(|m| json!({"token": m["ack_token"]})).collect();
    assert_eq!(gw.post_json(&token("onec"), "/v1/subscriptions/onec-catalog/ack", json!({"acks": acks})).await.0, 200);

    // 7. The call centre reports a call; the CRM gets it as a call event.
    let call = json!({"CallId":"7f3c9a2e-5b1d-4e8a-9c0f-2d6b8e4a1c37","Event":"CallEnded","Direction":"in","CallerId":"89161234567",
        "CalledId":"84951234567","Service":"Заказы","OperatorLogin":"smirnova","OperatorName":"Смирнова Анна","OperatorExt":"214",
        "DateTime":"2026-11-27 18:44:12","Duration":"187","TalkTime":"164","Result":"answered","RecordUrl":"http://oktell.wine.example:4055/records/7f3c9a2e.mp3"});
    let r =
        gw.http.post(gw.url("/v1/inbound/oktell-calls")).bearer_auth(token("oktell")).json(&call).send().await.unwrap();
    let status = r.status();
    assert_eq!(status, 202, "{}", r.text().await.unwrap());
    let delivered = until("the CRM gets the call", async || crm.received().into_iter().next()).await;
    let event: Value = serde_json::from_slice(&delivered.body).unwrap();
    assert!(event.to_string().contains("+79161234567"), "caller number in E.164: {event}");

    // 8. Checkout to ERP: 1,000 orders arriving at a steady 200 a second (a busy shop; the
    // seed's exchange ran every 50 minutes), each timed from the shop's request to NAV's receipt.
    let order: Value = serde_json::from_slice(&sample("sales-order.valid.json")).unwrap();
    let before = nav.received().iter().filter(|r| r.path.contains("salesOrders")).count();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let mut tasks = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    for i in 0..1000 {
        pace.tick().await;
        let (http, url, sent, mut order) =
            (gw.http.clone(), gw.url("/v1/publish/orders.created"), sent.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            order["order_id"] = json!(format!("BX-LAT-{i}"));
            let started = tokio::time::Instant::now();
            let r = http.post(&url).bearer_auth("bitrix-demo-token").json(&order).send().await.unwrap();
            assert_eq!(r.status(), 202);
            let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
            sent.lock().unwrap().insert(id, started);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let received = until("NAV receives the 1,000 orders", async || {
        let got: Vec<_> = nav.received().into_iter().filter(|r| r.path.contains("salesOrders")).collect();
        (got.len() >= before + 1000).then_some(got)
    })
    .await;
    let sent = sent.lock().unwrap();
    let mut latencies: Vec<Duration> =
        received.iter().filter_map(|r| Some(r.at.saturating_duration_since(*sent.get(r.header("ce-id")?)?))).collect();
    assert_eq!(latencies.len(), 1000, "every order reached NAV exactly once");
    latencies.sort();
    let (p50, p99) = (latencies[499], latencies[989]);
    eprintln!(
        "checkout to ERP over 1,000 orders at 200/s (debug build, same 2-core host): p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies[999]
    );
    assert!(p99 < Duration::from_secs(5), "p99 {p99:?}");
}
