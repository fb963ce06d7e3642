//! Transforms (subscriptions, responders, inbound routes) and the inbound adapters for what
//! Bitrix24, Business Central and plain-JSON systems really send.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::ExpectStatus;
use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, jetstream, slug, stream_count, subscription};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver};

async fn last_stored(nats: &NatsServer) -> (String, Value, async_nats::HeaderMap) {
    let js = jetstream(&nats.url()).await;
    let stream = js.get_stream("ORDERS").await.unwrap();
    let seq = stream.clone().info().await.unwrap().state.last_sequence;
    let m = stream.get_raw_message(seq).await.unwrap();
    (m.subject.to_string(), serde_json::from_slice(&m.payload).unwrap(), m.headers)
}

#[tokio::test]
async fn subscription_transform_reshapes_for_an_odata_erp_and_failures_dead_letter() {
    let nats = NatsServer::start();
    let erp = Receiver::start().await;
    // An OData-style ERP: PATCH, Basic auth, If-Match, its own field names.
    let sub = subscription(
        "nav",
        &["orders.misc"],
        &erp.url(),
        json!({
            "method": "PATCH",
            "headers": {"authorization": "Basic bmF2OnNlY3JldA==", "if-match": "*"},
            "transform": "{number: .order_id, sellToCustomerNo: .customer, salesOrderLines: [.lines[] | {itemId: .sku, quantity: .qty}]}",
            "signing_secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        }),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-odata", sub)]).await;
    gw.publish(BITRIX, "orders.misc", r#"{"order_id":"4711","customer":"C-42","lines":[{"sku":"WR-1","qty":2}]}"#)
        .send()
        .await
        .unwrap();
    let got = erp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].method, "PATCH");
    assert_eq!(got[0].header("if-match"), Some("*"));
    assert_eq!(got[0].header("authorization"), Some("Basic bmF2OnNlY3JldA=="));
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        body,
        json!({"number": "4711", "sellToCustomerNo": "C-42", "salesOrderLines": [{"itemId": "WR-1", "quantity": 2}]})
    );

    // Data the program cannot handle: dead-lettered at once with the class, no request sent.
    gw.publish(BITRIX, "orders.misc", r#"{"order_id":"4712","lines":"not a list"}"#).send().await.unwrap();
    let list = eventually("a dead letter", Duration::from_secs(10), async || {
        let list = gw.get_json(crate::common::gateway::NAV, "/v1/subscriptions/nav-odata/dead-letters").await;
        (list["total"] == 1).then_some(list)
    })
    .await;
    assert_eq!(list["dead_letters"][0]["class"], "transform-failed", "{list}");
    assert_eq!(erp.received().len(), 1);
}

#[tokio::test]
async fn a_transform_that_yields_nothing_skips_the_message() {
    let nats = NatsServer::start();
    let shop = Receiver::start().await;
    let sub =
        subscription("nav", &["orders.misc"], &shop.url(), json!({"transform": "select(.channel == \"web\") | {id}"}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("shop-web", sub)]).await;
    gw.publish(BITRIX, "orders.misc", r#"{"id":1,"channel":"app"}"#).send().await.unwrap();
    gw.publish(BITRIX, "orders.misc", r#"{"id":2,"channel":"web"}"#).send().await.unwrap();
    let got = shop.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body.as_ref(), br#"{"id":2}"#);
    // Waiting for nothing to happen: the skipped message must not arrive late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shop.received().len(), 1);
    let list = gw.get_json(crate::common::gateway::NAV, "/v1/subscriptions/shop-web/dead-letters").await;
    assert_eq!(list["total"], 0, "a skipped message is not a dead letter");
}

#[tokio::test]
async fn bitrix24_event_handler_form_is_published_without_its_auth() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let form = "event=ONCRMDEALADD&event_handler_id=17&data%5BFIELDS%5D%5BID%5D=4711&ts=1732780800\
        &auth%5Baccess_token%5D=secret-access&auth%5Brefresh_token%5D=secret-refresh\
        &auth%5Bdomain%5D=winestore.bitrix24.ru&auth%5Bmember_id%5D=m1&auth%5Bapplication_token%5D=app-token-123";
    let send = |body: &'static str| {
        gw.http
            .post(gw.url("/v1/inbound/bitrix-deals"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = send(Box::leak(form.to_owned().into_boxed_str())).await.unwrap();
    assert_eq!(r.status(), 200);
    let (subject, data, headers) = last_stored(&nats).await;
    assert_eq!(subject, "orders.bitrix.deals");
    assert_eq!(data, json!({"deal_id": "4711", "event": "ONCRMDEALADD", "portal": "winestore.bitrix24.ru"}));
    assert_eq!(headers.get("ce-type").unwrap().as_str(), "bitrix24.oncrmdealadd");
    assert_eq!(headers.get("ce-source").unwrap().as_str(), "/participants/bitrix");
    // Bitrix24 resends the same body: stored once.
    let r = send(Box::leak(form.to_owned().into_boxed_str())).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);
    assert_eq!(stream_count(&js, "ORDERS").await, 1);
    // A wrong application token is refused and stores nothing.
    let forged = "event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=1&auth%5Bapplication_token%5D=guess";
    let r = send(forged).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "unauthorized");
    let r = gw
        .http
        .post(gw.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(stream_count(&js, "ORDERS").await, 1);
    // The raw stored message never contains the portal's tokens.
    let stored = js.get_stream("ORDERS").await.unwrap().get_raw_message(1).await.unwrap();
    let text = String::from_utf8_lossy(&stored.payload);
    assert!(!text.contains("secret-access") && !text.contains("secret-refresh") && !text.contains("app-token-123"));
}

#[tokio::test]
async fn business_central_handshake_and_notifications() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let js = jetstream(&nats.url()).await;
    let r = gw.http.post(gw.url("/v1/inbound/bc-items?validationToken=4f7a1b2c-token")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "4f7a1b2c-token");

    let notification = json!({"value": [
        {"subscriptionId": "s1", "clientState": "bc-state-xyz", "expirationDateTime": "2026-12-01T10:00:00Z",
         "resource": "api/v2.0/companies(demo)/items(1a2b)", "changeType": "updated", "lastModifiedDateTime": "2026-11-28T10:00:00Z"},
        {"subscriptionId": "s1", "clientState": "bc-state-xyz", "expirationDateTime": "2026-12-01T10:00:00Z",
         "resource": "api/v2.0/companies(demo)/items?$filter=lastModifiedDateTime gt 2026-11-28T09:59:30Z", "changeType": "collection",
         "lastModifiedDateTime": "2026-11-28T10:00:00Z"},
        {"subscriptionId": "s1", "clientState": "not-ours", "resource": "x", "changeType": "deleted", "lastModifiedDateTime": "2026-11-28T10:00:00Z"}
    ]});
    let body = gw.http.post(gw.url("/v1/inbound/bc-items")).json(&notification).expect_status(202).await;
    assert_eq!(body["ignored"], 1);
    assert_eq!(stream_count(&js, "ORDERS").await, 2, "one message per entry, the collection entry as one");
    let (subject, data, headers) = last_stored(&nats).await;
    assert_eq!(subject, "orders.bc.items");
    assert_eq!(data["changeType"], "collection");
    assert!(data.get("clientState").is_none(), "the shared secret is not published");
    assert_eq!(headers.get("ce-type").unwrap().as_str(), "businesscentral.collection");
    // BC retries the same notification: nothing new stored.
    gw.http.post(gw.url("/v1/inbound/bc-items")).json(&notification).send().await.unwrap();
    assert_eq!(stream_count(&js, "ORDERS").await, 2);
    // Garbage is still answered 2xx (anything else would make BC delete the subscription).
    let r = gw.http.post(gw.url("/v1/inbound/bc-items")).body("not json").send().await.unwrap();
    assert!(r.status().is_success());
}

#[tokio::test]
async fn plain_json_route_with_a_transform_needs_the_participants_token() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    let oktell = json!({"phone": "+74951234567", "op": "ivanova", "dur": "95"});
    gw.http.post(gw.url("/v1/inbound/oktell-calls")).bearer_auth(BITRIX).json(&oktell).expect_status(202).await;
    let (subject, data, _) = last_stored(&nats).await;
    assert_eq!(subject, "orders.calls");
    assert_eq!(data, json!({"caller": "+74951234567", "operator": "ivanova", "seconds": 95}));
    gw.http.post(gw.url("/v1/inbound/oktell-calls")).json(&oktell).expect_status(401).await;
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .bearer_auth(crate::common::gateway::NAV)
        .json(&oktell)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .bearer_auth(BITRIX)
        .json(&json!({"phone": 1, "dur": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "transform-failed");
    let r = gw.http.post(gw.url("/v1/inbound/nothing")).bearer_auth(BITRIX).json(&oktell).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn responder_transforms_reshape_request_and_reply() {
    let nats = NatsServer::start();
    let erp = Receiver::scripted(|_, _| {
        Answer::ok().with_header("content-type", "application/json").body(
            r#"{"Customer_No":"C-0042","Entries":[{"Document_No":"SO-1","Posting_Date":"2026-11-20","Amount":12990}]}"#,
        )
    })
    .await;
    let cfg: magistral::config::ResponderConfig = serde_json::from_value(json!({
        "participant": "nav",
        "subjects": ["nav.query.customer.purchases"],
        "endpoint": erp.url(),
        "request_transform": "{Customer_No: .customer_id}",
        "reply_transform": "{customer_id: .Customer_No, orders: [.Entries[] | {order_id: .Document_No, date: .Posting_Date, total: .Amount}]}",
    }))
    .unwrap();
    let gw = Gateway::start_with(crate::common::gateway::scenario("basic"), &nats.url(), move |c| {
        c.responders.insert("nav-queries".into(), cfg);
    })
    .await;
    // 503 until the responder has joined its subjects.
    let r = eventually("the responder answers", Duration::from_secs(10), async || {
        let r = gw
            .http
            .post(gw.url("/v1/request/nav.query.customer.purchases"))
            .bearer_auth(BITRIX)
            .header("content-type", "application/json")
            .body(r#"{"customer_id":"C-0042"}"#)
            .send()
            .await
            .unwrap();
        (r.status() != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 200);
    // The reply also honours the purchase-history reply contract, after the transform.
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"customer_id": "C-0042", "orders": [{"order_id": "SO-1", "date": "2026-11-20", "total": 12990}]})
    );
    let asked: Value = serde_json::from_slice(&erp.received()[0].body).unwrap();
    assert_eq!(asked, json!({"Customer_No": "C-0042"}));
}
