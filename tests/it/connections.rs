//! Connection hygiene over real TCP against an in-process gateway and a real nats-server:
//! header and body read timeouts, the connection cap, the `Bearer` scheme, per-participant
//! in-flight slots and the publish rate limit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::gateway::{BITRIX, Gateway, NAV, jetstream, scenario, slug, stream_count};
use crate::common::nats::NatsServer;

/// Reads until the server closes the connection (or `within` passes: `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&buf).into_owned())
}

/// Reads one response head (up to the blank line), or `None` when nothing came in `within`.
async fn read_head(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(within, async {
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
    })
    .await
    .ok()?;
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

fn publish_head(subject: &str, token: &str, content_length: usize) -> String {
    format!(
        "POST /v1/publish/{subject} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to the gateway")
}

#[tokio::test]
async fn half_a_header_block_is_disconnected_after_the_header_timeout() {
    let nats = NatsServer::start();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), |c| {
        c.limits.header_read_timeout = Duration::from_millis(700)
    })
    .await;
    let mut slow = connect(gw.addr).await;
    let started = Instant::now();
    slow.write_all(b"POST /v1/publish/orders.misc HTTP/1.1\r\nHost: gw\r\nContent-Type: appl").await.unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.is_some(), "a client that never finishes its headers keeps its connection");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "closed before the header timeout ({took:?})");
    // Others are served meanwhile and afterwards.
    assert_eq!(gw.http.get(gw.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_nothing_is_stored() {
    let nats = NatsServer::start();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), |c| {
        c.limits.body_idle_timeout = Duration::from_millis(500);
        c.limits.body_read_timeout = Duration::from_secs(30);
    })
    .await;
    let js = jetstream(&nats.url()).await;
    let before = stream_count(&js, "ORDERS").await;

    let body = br#"{"half": "of a body that never ends"}"#;
    let mut slow = connect(gw.addr).await;
    let started = Instant::now();
    slow.write_all(publish_head("orders.misc", BITRIX, body.len()).as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("the connection is closed after the idle timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "cut off before the idle timeout ({took:?})");
    // Everything the client sent was read, so the answer gets out before the close.
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(stream_count(&js, "ORDERS").await, before, "a half body stored something");
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_total_body_timeout() {
    let nats = NatsServer::start();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), |c| {
        c.limits.body_idle_timeout = Duration::from_secs(10);
        c.limits.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let js = jetstream(&nats.url()).await;
    let before = stream_count(&js, "ORDERS").await;

    let body = format!("\"{}\"", "x".repeat(60));
    let (mut reader, mut writer) = connect(gw.addr).await.into_split();
    let started = Instant::now();
    writer.write_all(publish_head("orders.misc", BITRIX, body.len()).as_bytes()).await.unwrap();
    // One byte every 100 ms: never idle, but 6 s for the whole.
    let trickle = tokio::spawn(async move {
        for b in body.bytes() {
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
            // The trickle is the thing under test.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(closed.is_ok(), "a trickling body kept its connection past the total body timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");
    let answer = String::from_utf8_lossy(&answer);
    // The client is still writing when the server closes, so its kernel may drop the answer
    // (reset): a bare close is fine here; an answer must be the 408.
    if !answer.is_empty() {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body-timeout"), "{answer}");
    }
    assert_eq!(stream_count(&js, "ORDERS").await, before);
}

#[tokio::test]
async fn past_the_connection_cap_a_client_waits_until_a_connection_closes() {
    let nats = NatsServer::start();
    let mut gw = Gateway::start_with(scenario("basic"), &nats.url(), |c| {
        c.limits.max_connections = 2;
        c.limits.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    // The readiness probe's pooled connection would hold a slot: close it.
    drop(std::mem::replace(&mut gw.http, reqwest::Client::new()));
    // A fixed wait for the server to see the close: nothing shows a freed slot without taking
    // one (a probe connection would hold a slot itself).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let health = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut held = Vec::new();
    for n in 0..2 {
        let mut c = connect(gw.addr).await;
        c.write_all(health).await.unwrap();
        let head = read_head(&mut c, Duration::from_secs(3)).await;
        assert!(head.is_some_and(|h| h.starts_with("HTTP/1.1 200")), "connection {n} within the cap was not served");
        // Drain the small body; the connection stays open (keep-alive) and holds its slot.
        let mut rest = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_millis(200), c.read(&mut rest)).await;
        held.push(c);
    }
    let mut third = connect(gw.addr).await;
    third.write_all(health).await.unwrap();
    assert!(read_head(&mut third, Duration::from_secs(1)).await.is_none(), "the connection over the cap was served");
    drop(held.remove(0));
    let head = read_head(&mut third, Duration::from_secs(5)).await;
    assert!(
        head.is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "the waiting connection was not served once a slot was free"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    for auth in [
        format!("BEARER {BITRIX}"),
        format!("bearer {BITRIX}"),
        format!("Bearer {BITRIX}"),
        format!("  bEaReR   {BITRIX}  "),
    ] {
        let r = gw
            .http
            .post(gw.url("/v1/publish/orders.misc"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(r#"{"n": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{auth:?}");
    }
    for auth in [format!("Basic {BITRIX}"), format!("Bearer{BITRIX}"), "Bearer not-a-token".to_owned()] {
        let r = gw.http.get(gw.url("/v1/messages")).header("authorization", &auth).send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
    }
}

#[tokio::test]
async fn in_flight_requests_are_bounded_per_participant_but_not_event_streams() {
    let nats = NatsServer::start();
    let sub: magistral::config::SubscriptionConfig =
        serde_json::from_value(json!({"participant": "bitrix", "subjects": ["orders.status"], "mode": "stream"}))
            .unwrap();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), move |c| {
        c.subscriptions.insert("bitrix-live".into(), sub);
        c.limits.max_in_flight_per_participant = 1;
    })
    .await;
    let js = jetstream(&nats.url()).await;
    let before = stream_count(&js, "ORDERS").await;

    // An open event stream does not take bitrix's one slot.
    let events = gw.http.get(gw.url("/v1/subscriptions/bitrix-live/events")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let r = gw.http.get(gw.url("/v1/subscriptions")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 200, "an event stream held an in-flight slot");

    // A publish whose body is on its way holds the slot.
    let body = br#"{"slow": true}"#;
    let mut slow = connect(gw.addr).await;
    slow.write_all(publish_head("orders.misc", BITRIX, body.len()).as_bytes()).await.unwrap();
    slow.write_all(&body[..5]).await.unwrap();
    // A fixed wait for the server to read the head: a probe publish would be the request
    // under test (and store a message when it came too early).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = gw.publish(BITRIX, "orders.misc", r#"{"n": 2}"#).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "rate-limited");
    // Another participant is not affected.
    let r = gw.http.get(gw.url("/v1/subscriptions")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Unauthenticated requests are not counted against anyone: still 401.
    let r = gw.http.get(gw.url("/v1/messages")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // The body arrives: the slow publish is stored, and the slot is free again.
    slow.write_all(&body[5..]).await.unwrap();
    let head = read_head(&mut slow, Duration::from_secs(5)).await.expect("an answer to the slow publish");
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    let r = gw.publish(BITRIX, "orders.misc", r#"{"n": 3}"#).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(stream_count(&js, "ORDERS").await, before + 2, "the refused publish stored something");
    drop(events);
}

#[tokio::test]
async fn the_publish_rate_limit_answers_429_with_retry_after_and_recovers() {
    let nats = NatsServer::start();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), |c| {
        c.limits.publish_rate_per_participant = 2.0;
        c.limits.publish_burst_per_participant = 2;
    })
    .await;
    let js = jetstream(&nats.url()).await;
    let before = stream_count(&js, "ORDERS").await;

    for n in 0..2 {
        let r = gw.publish(BITRIX, "orders.misc", json!({"n": n}).to_string()).send().await.unwrap();
        assert_eq!(r.status(), 202, "within the burst");
    }
    let r = gw.publish(BITRIX, "orders.misc", r#"{"n": 2}"#).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1", "a token is free in 0.5 s: rounded up to 1");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(slug(&problem), "rate-limited");
    assert_eq!(problem["retryable"], true);
    // The inbound JSON route publishes as bitrix too: same bucket.
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .bearer_auth(BITRIX)
        .json(&json!({"phone": "+1", "op": "a", "dur": "5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Reads are not publishes; other participants have their own bucket.
    assert_eq!(gw.http.get(gw.url("/v1/subscriptions")).bearer_auth(BITRIX).send().await.unwrap().status(), 200);
    assert_eq!(gw.publish(NAV, "orders.bc.other", r#"{"x": 1}"#).send().await.unwrap().status(), 202);

    // Waiting out Retry-After (the refill) is the thing under test.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.publish(BITRIX, "orders.misc", r#"{"n": 3}"#).send().await.unwrap();
    assert_eq!(r.status(), 202, "recovered after Retry-After");

    // A batch larger than the burst passes on one free token and leaves the bucket in debt.
    // The same refill, so the batch starts from a full bucket.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let batch: String =
        (0..5).map(|n| json!({"subject": "orders.misc", "data": {"b": n}}).to_string() + "\n").collect();
    let r = gw
        .http
        .post(gw.url("/v1/publish"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/x-ndjson")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = gw.publish(BITRIX, "orders.misc", r#"{"n": 4}"#).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 2, "five items against a burst of two must cost more than one token ({wait} s)");

    assert_eq!(stream_count(&js, "ORDERS").await, before + 2 + 1 + 1 + 5, "refused publishes stored something");
}

#[tokio::test]
async fn the_publish_rate_limit_is_off_by_default() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url()).await;
    assert_eq!(magistral::config::Limits::default().publish_rate_per_participant, 0.0);
    // Well past the default burst (100), as fast as the client can go, 8 at a time.
    let statuses: Vec<u16> = futures::stream::iter(0..250)
        .map(|n| {
            let req = gw.publish(BITRIX, "orders.misc", json!({"n": n}).to_string());
            async move { req.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "{:?}", statuses.iter().filter(|s| **s != 202).collect::<Vec<_>>());
}
