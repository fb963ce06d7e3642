//! Hostile input at the gateway's edges (issue 10, findings 4, 8, 9, 11): stored data that
//! would break an event stream, resume points that are not, secrets in endpoint URLs,
//! requests used to store messages, foreign subscriptions, and responders answering with
//! something other than bounded JSON.

use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use futures::StreamExt;
use magistral::catalog::Catalog;
use magistral::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, OPS, scenario, slug, subscription};
use crate::common::nats::NatsServer;

/// Reads SSE frames until `n` events (frames with an `id:`) arrived: each as its raw text.
async fn read_frames(r: reqwest::Response, n: usize) -> Vec<String> {
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frames: Vec<String> =
            text.split("\n\n").filter(|f| f.lines().any(|l| l.starts_with("id:"))).map(str::to_owned).collect();
        // The last piece may be a frame still arriving.
        if frames.len() >= n && text.ends_with("\n\n") {
            return frames;
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn field<'a>(frame: &'a str, name: &str) -> Vec<&'a str> {
    frame
        .lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .map(|v| v.strip_prefix(' ').unwrap_or(v))
        .collect()
}

#[tokio::test]
async fn stored_line_breaks_cannot_cut_an_event_stream_and_bad_resume_points_are_400() {
    let nats = NatsServer::start();
    let sub: magistral::config::SubscriptionConfig = serde_json::from_value(
        json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "stream", "start": "all"}),
    )
    .unwrap();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), move |c| {
        c.subscriptions.insert("nav-live".into(), sub);
    })
    .await;
    // Stored as an older gateway (or a NATS-native publisher) could have: CR/LF percent-encoded
    // in the type, raw CR/LF in the data.
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-type", "evil%0D%0Aevent%3A%20forged%0Aid%3A%201");
    headers.insert("ce-id", "hostile-1");
    js.publish_with_headers("orders.misc", headers, "{\"n\":\r\n 0,\r\"x\":\n1}".into()).await.unwrap().await.unwrap();
    let r = gw.publish(BITRIX, "orders.misc", r#"{"n":1}"#).send().await.unwrap();
    assert_eq!(r.status(), 202);

    let open = |last: Option<&str>| {
        let mut req = gw.http.get(gw.url("/v1/subscriptions/nav-live/events")).bearer_auth(NAV);
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        req.send()
    };
    for last in [None, Some("0")] {
        let r = open(last).await.unwrap();
        assert_eq!(r.status(), 200);
        let frames = read_frames(r, 2).await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        let first = &frames[0];
        assert!(!first.contains('\r'), "{first:?}");
        assert_eq!(field(first, "id"), ["1"], "{first:?}");
        assert_eq!(field(first, "event"), ["evil\u{fffd}\u{fffd}event: forged\u{fffd}id: 1"]);
        let data = field(first, "data").join("\n");
        assert_eq!(serde_json::from_str::<Value>(&data).unwrap(), json!({"n": 0, "x": 1}));
        assert_eq!(field(&frames[1], "id"), ["2"]);
        assert_eq!(serde_json::from_str::<Value>(&field(&frames[1], "data").join("\n")).unwrap(), json!({"n": 1}));
    }
    // Resuming right after the hostile event goes on from there.
    let frames = read_frames(open(Some("1")).await.unwrap(), 1).await;
    assert_eq!(field(&frames[0], "id"), ["2"]);

    // Not resume points: 400, never a retryable 5xx.
    for bad in ["18446744073709551615", "99999999999999999999", "-1", "+1", "abc", "", "3"] {
        let r = open(Some(bad)).await.unwrap();
        assert_eq!(r.status(), 400, "Last-Event-ID {bad:?}");
        assert_eq!(slug(&r.json::<Value>().await.unwrap()), "invalid-header", "{bad:?}");
    }
    let r = gw
        .http
        .get(gw.url("/v1/subscriptions/nav-live/events?last_event_id=18446744073709551615"))
        .bearer_auth(NAV)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "invalid-query");
    // Still serving.
    assert_eq!(gw.http.get(gw.url("/readyz")).send().await.unwrap().status(), 200);
}

/// Every stored message of a stream, headers and payload as text.
async fn stream_texts(js: &async_nats::jetstream::Context, stream: &str) -> Vec<String> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(format!("{} {:?} {}", m.subject, m.headers, String::from_utf8_lossy(&m.payload)));
        }
    }
    out
}

#[tokio::test]
async fn endpoint_secrets_stay_out_of_dead_letters_status_events_and_listings() {
    let nats = NatsServer::start();
    // A port nothing listens on: the attempt fails in the HTTP client, whose errors quote URLs.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://erp-user:pw-hunter2@127.0.0.1:{port}/hook?code=SECRET-XYZ");
    let sub = subscription("nav", &["orders.misc"], &endpoint, json!({"max_attempts": 1}));
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("nav-hook", sub)]).await;
    let r = gw.publish(BITRIX, "orders.misc", r#"{"n":1}"#).send().await.unwrap();
    assert_eq!(r.status(), 202);

    let dead = eventually("a dead letter", Duration::from_secs(15), async || {
        let list = gw.get_json(NAV, "/v1/subscriptions/nav-hook/dead-letters").await;
        (list["total"] == 1).then_some(list)
    })
    .await;
    assert_eq!(dead["dead_letters"][0]["class"], "endpoint-unreachable", "{dead}");
    let show = gw.get_json(NAV, "/v1/subscriptions/nav-hook").await;
    assert_eq!(show["endpoint"], format!("http://127.0.0.1:{port}/hook?…"));
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    let mut seen = vec![
        dead.to_string(),
        show.to_string(),
        gw.get_json(OPS, "/v1/subscriptions").await.to_string(),
        gw.get_json(OPS, "/v1/subscriptions/nav-hook/dead-letters").await.to_string(),
    ];
    // Status events (anyone with `magistral.delivery.>` reads them) and the stored dead letter.
    // A soft wait (not `eventually`): after 5 s, whatever events arrived are checked.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = stream_texts(&js, "MAGISTRAL_EVENTS").await;
        if events.iter().any(|e| e.contains("dead_lettered")) || Instant::now() > deadline {
            assert!(!events.is_empty(), "no status event");
            seen.extend(events);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.extend(stream_texts(&js, "MAGISTRAL_DLQ").await);
    for text in &seen {
        for secret in ["SECRET-XYZ", "hunter2", "erp-user", "code="] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    // The failure itself is still explained.
    assert!(seen.iter().any(|t| t.contains("endpoint-unreachable")), "{seen:?}");
}

/// A gateway over an already-built catalog (to reach checks `magistral check` makes unreachable).
async fn run_with(config: Config, catalog: Catalog) -> (String, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(magistral::run(config, catalog, listener, shutdown.clone()));
    let http = crate::common::http_client();
    eventually("ready", Duration::from_secs(10), async || {
        http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    (base, shutdown)
}

#[tokio::test]
async fn a_request_to_a_stored_subject_needs_publish_permission() {
    // `check` refuses a request pattern reaching stored subjects the participant may not publish.
    let mut config = Config::load(Some(&scenario("basic"))).unwrap();
    config.participants.get_mut("nav").unwrap().request = vec!["orders.*".into()];
    let problems = Catalog::load(&config).expect_err("refused").problems;
    let p = problems.iter().find(|p| p.field == "participants.nav.request[0]").expect("names the pattern");
    assert!(p.message.contains("orders.*") && p.message.contains("ORDERS"), "{}", p.message);
    // Within what it may publish, it is fine.
    config.participants.get_mut("nav").unwrap().request = vec!["orders.status".into(), "nav.query.>".into()];
    Catalog::load(&config).expect("accepted");

    // At runtime too, whatever the catalog says.
    let nats = NatsServer::start();
    let mut config = Config::load(Some(&scenario("basic"))).unwrap();
    config.nats.url = nats.url();
    let mut catalog = Catalog::load(&config).unwrap();
    let participants: Vec<_> = catalog
        .participants
        .iter()
        .cloned()
        .map(|mut p| {
            if p.name == "nav" {
                p.request = magistral::subject::PatternSet::new(vec!["orders.>".into()]);
            }
            p
        })
        .collect();
    catalog.participants = magistral::participants::Participants::new(participants);
    let (base, shutdown) = run_with(config, catalog).await;
    let http = crate::common::http_client();
    let r = http
        .post(format!("{base}/v1/request/orders.misc?timeout=200ms"))
        .bearer_auth(NAV)
        .header("content-type", "application/json")
        .body(r#"{"sneaked":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(slug(&r.json::<Value>().await.unwrap()), "forbidden");
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    assert_eq!(crate::common::gateway::stream_count(&js, "ORDERS").await, 0, "nothing stored");
    shutdown.cancel();
}

#[tokio::test]
async fn another_participants_subscription_is_not_found() {
    let nats = NatsServer::start();
    let stream_sub: magistral::config::SubscriptionConfig =
        serde_json::from_value(json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "stream"})).unwrap();
    let pull_sub: magistral::config::SubscriptionConfig =
        serde_json::from_value(json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "pull"})).unwrap();
    let push = subscription("nav", &["orders.status"], "http://127.0.0.1:9/hook", json!({}));
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![("nav-live", stream_sub), ("nav-pull", pull_sub), ("nav-push", push)],
    )
    .await;
    let req = |method: reqwest::Method, path: &str, token: &str| {
        let mut r = gw.http.request(method.clone(), gw.url(path)).bearer_auth(token);
        if method == reqwest::Method::POST {
            r = r.header("content-type", "application/json").body(match path {
                p if p.ends_with("/replay") || p.ends_with("/discard") => r#"{"all":true}"#,
                p if p.ends_with("/ack") => r#"{"acks":[]}"#,
                _ => "{}",
            });
        }
        r.send()
    };
    use reqwest::Method;
    let routes = [
        (Method::GET, "/v1/subscriptions/{}"),
        (Method::POST, "/v1/subscriptions/{}/pause"),
        (Method::POST, "/v1/subscriptions/{}/resume"),
        (Method::GET, "/v1/subscriptions/{}/dead-letters"),
        (Method::POST, "/v1/subscriptions/{}/dead-letters/replay"),
        (Method::POST, "/v1/subscriptions/{}/dead-letters/discard"),
    ];
    let per_mode = [
        ("nav-push", &routes[..]),
        ("nav-pull", &[(Method::POST, "/v1/subscriptions/{}/fetch"), (Method::POST, "/v1/subscriptions/{}/ack")][..]),
        ("nav-live", &[(Method::GET, "/v1/subscriptions/{}/events")][..]),
    ];
    for (name, routes) in per_mode {
        for (method, route) in routes {
            let foreign = req(method.clone(), &route.replace("{}", name), BITRIX).await.unwrap();
            let missing = req(method.clone(), &route.replace("{}", "nav-nothing"), BITRIX).await.unwrap();
            assert_eq!((foreign.status().as_u16(), missing.status().as_u16()), (404, 404), "{method} {route} {name}");
            let (foreign, missing): (Value, Value) = (foreign.json().await.unwrap(), missing.json().await.unwrap());
            assert_eq!(slug(&foreign), "not-found");
            assert_eq!(
                foreign["detail"].as_str().unwrap().replace(name, "X"),
                missing["detail"].as_str().unwrap().replace("nav-nothing", "X")
            );
        }
    }
    // The owner and an admin still see it.
    assert_eq!(gw.get_json(OPS, "/v1/subscriptions/nav-push").await["name"], "nav-push");
    assert_eq!(gw.get_json(NAV, "/v1/subscriptions/nav-push").await["name"], "nav-push");
    let list = gw.get_json(BITRIX, "/v1/subscriptions").await;
    assert!(!list.to_string().contains("nav-push"), "{list}");
}

/// A minimal HTTP/1.1 server answering each request with what `script` says for its body:
/// (Content-Type or none, body, chunked?). Raw, so "no Content-Type at all" is possible.
async fn raw_responder(script: fn(&Value) -> (Option<&'static str>, String, bool)) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/answer", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let Ok(n) = socket.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let Ok(n) = socket.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let asked: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
                let (content_type, body, chunked) = script(&asked);
                let mut answer = String::from("HTTP/1.1 200 OK\r\nConnection: close\r\n");
                if let Some(t) = content_type {
                    answer.push_str(&format!("Content-Type: {t}\r\n"));
                }
                if chunked {
                    answer.push_str(&format!(
                        "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                        body.len()
                    ));
                } else {
                    answer.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
                }
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn responders_answer_bounded_json_only() {
    let nats = NatsServer::start();
    let endpoint = raw_responder(|asked| {
        let big = || format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
        match asked["case"].as_str().unwrap_or_default() {
            "html" => (Some("text/html"), "<script>alert(document.cookie)</script>".into(), false),
            "bare-text" => (None, "hello".into(), false),
            "typed-garbage" => (Some("application/json"), "not json".into(), false),
            "big" => (Some("application/json"), big(), false),
            "big-chunked" => (Some("application/json"), big(), true),
            "vendor-json" => (Some("application/vnd.erp+json; charset=utf-8"), r#"{"ok":"vendor"}"#.into(), false),
            _ => (None, r#"{"ok":"bare"}"#.into(), false),
        }
    })
    .await;
    let cfg: magistral::config::ResponderConfig = serde_json::from_value(json!({
        "participant": "nav", "subjects": ["nav.query.order.*"], "endpoint": endpoint, "timeout": "2s",
    }))
    .unwrap();
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), move |c| {
        c.responders.insert("nav-raw".into(), cfg);
        c.limits.max_reply_bytes = 16 * 1024;
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    // A NATS-native service answering HTML: refused by the gateway itself.
    let service = client.service_builder().start("htmlsvc", "1.0.0").await.unwrap();
    let mut html_endpoint = service.endpoint("svc.html").await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = html_endpoint.next().await {
            let _ = request.respond(Ok("<html><script>alert(1)</script></html>".into())).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.request("$SRV.PING.magistral-nav-raw", "".into()).await.is_err() {
        assert!(Instant::now() < deadline, "responder not serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ask = |subject: &str, case: &str| {
        gw.http
            .post(gw.url(&format!("/v1/request/{subject}")))
            .bearer_auth(BITRIX)
            .header("content-type", "application/json")
            .body(json!({ "case": case }).to_string())
            .send()
    };
    for (case, subject, detail) in [
        ("html", "nav.query.order.1", "not JSON"),
        ("bare-text", "nav.query.order.2", "not JSON"),
        ("typed-garbage", "nav.query.order.3", "not JSON"),
        ("big", "nav.query.order.4", "reply too large"),
        ("big-chunked", "nav.query.order.5", "reply too large"),
        ("-", "svc.html", "not JSON"),
    ] {
        let r = ask(subject, case).await.unwrap();
        assert_eq!(r.status(), 502, "{case}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{case}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(slug(&body), "responder-error", "{case}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(detail), "{case}: {body}");
        assert!(!body.to_string().contains("<script>"), "{case}: {body}");
    }
    for (case, expected) in [("bare-json", json!({"ok": "bare"})), ("vendor-json", json!({"ok": "vendor"}))] {
        let r = ask("nav.query.order.9", case).await.unwrap();
        assert_eq!(r.status(), 200, "{case}");
        assert_eq!(r.headers()["content-type"], "application/json", "{case}");
        assert_eq!(r.json::<Value>().await.unwrap(), expected);
    }
}
