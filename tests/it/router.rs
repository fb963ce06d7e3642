//! The router tier: the real `http::router` driven with `oneshot`, no broker and no TCP. The
//! NATS client never connects, so every answer here is decided before the first NATS call —
//! which is the point: refusals cost the broker nothing.

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use magistral::catalog::Catalog;
use magistral::config::Config;
use magistral::http::{AppState, router};
use serde_json::Value;
use tower::ServiceExt;

use crate::common::gateway::{BITRIX, NAV, example, scenario};

/// The `basic` scenario's router, with a NATS client that is not connected (and never will be).
async fn app() -> axum::Router {
    let config = Config::load(Some(&scenario("basic"))).expect("scenario config loads");
    let catalog = Catalog::load(&config).expect("scenario catalog loads");
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("127.0.0.1:1")
        .await
        .expect("a client that retries in the background");
    router(AppState::for_tests(catalog, config.limits.clone(), client))
}

fn publish(token: Option<&str>, subject: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(format!("/v1/publish/{subject}")).header(header::CONTENT_TYPE, content_type);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(body.into()).unwrap()
}

/// Sends `request` and asserts the answer is a problem of `status` and `slug`.
async fn assert_problem(what: &str, request: Request<Body>, status: u16, slug: &str) {
    let response = app().await.oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json", "{what}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], format!("urn:magistral:problem:{slug}"), "{what}: {body}");
    assert_eq!(body["status"], status, "{what}: {body}");
}

#[tokio::test]
async fn unauthenticated_requests_are_401() {
    assert_problem("no token", publish(None, "orders.misc", "application/json", "{}"), 401, "unauthorized").await;
    assert_problem(
        "unknown token",
        publish(Some("nobody"), "orders.misc", "application/json", "{}"),
        401,
        "unauthorized",
    )
    .await;
    let basic = Request::post("/v1/publish/orders.misc")
        .header(header::AUTHORIZATION, format!("Basic {BITRIX}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    assert_problem("bad scheme", basic, 401, "unauthorized").await;
    // The token comes first, whatever else is wrong with the request.
    assert_problem("no token and a bad body", publish(None, "orders.*", "text/plain", "\u{0}"), 401, "unauthorized")
        .await;
    let batch = Request::post("/v1/publish").header(header::CONTENT_TYPE, "application/json").body(Body::from("[]"));
    assert_problem("batch without a token", batch.unwrap(), 401, "unauthorized").await;
    let list = Request::get("/v1/subscriptions").body(Body::empty()).unwrap();
    assert_problem("subscriptions without a token", list, 401, "unauthorized").await;
    let events = Request::get("/v1/subscriptions/any/events?access_token=nobody").body(Body::empty()).unwrap();
    assert_problem("event stream with an unknown query token", events, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_subject_not_permitted_is_403() {
    let order = std::fs::read(example("samples/sales-order.valid.json")).unwrap();
    assert_problem(
        "nav publishing orders",
        publish(Some(NAV), "orders.created", "application/json", order),
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_by_its_content_length() {
    let body = format!("\"{}\"", "x".repeat(70_000));
    let mut request = publish(Some(BITRIX), "orders.misc", "application/json", body.clone());
    request.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
    assert_problem("over max_body_bytes", request, 413, "payload-too-large").await;
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    assert_problem(
        "text/plain",
        publish(Some(BITRIX), "orders.misc", "text/plain", "{}"),
        415,
        "unsupported-media-type",
    )
    .await;
    let batch = Request::post("/v1/publish")
        .header(header::AUTHORIZATION, format!("Bearer {BITRIX}"))
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from("a,b"))
        .unwrap();
    assert_problem("batch as CSV", batch, 415, "unsupported-media-type").await;
}

#[tokio::test]
async fn a_contract_violation_is_422_before_nats() {
    let invalid = std::fs::read(example("samples/sales-order.invalid.json")).unwrap();
    let request = publish(Some(BITRIX), "orders.created", "application/json", invalid);
    assert_problem("invalid order", request, 422, "contract-violation").await;
}

#[tokio::test]
async fn bad_input_is_400() {
    let twice = publish(Some(BITRIX), "orders.misc", "application/json", r#"{"a":1,"a":2}"#);
    assert_problem("a member twice", twice, 400, "duplicate-key").await;
    let not_utf8 = publish(Some(BITRIX), "orders.%FF", "application/json", "{}");
    assert_problem("subject not UTF-8 once decoded", not_utf8, 400, "invalid-subject").await;
    let wildcard = publish(Some(BITRIX), "orders.*", "application/json", "{}");
    assert_problem("wildcard subject", wildcard, 400, "invalid-subject").await;
}

#[tokio::test]
async fn unknown_things_are_404() {
    let sub = Request::get("/v1/subscriptions/no-such")
        .header(header::AUTHORIZATION, format!("Bearer {BITRIX}"))
        .body(Body::empty())
        .unwrap();
    assert_problem("unknown subscription", sub, 404, "not-found").await;
    assert_problem("unknown route", Request::get("/v1/nothing").body(Body::empty()).unwrap(), 404, "not-found").await;
}
