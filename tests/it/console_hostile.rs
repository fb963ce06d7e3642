//! Hostile input for the routes added with the console, the contract registry and key
//! ordering — `PUT /v1/contracts/{name}/{version}`, `POST/GET/DELETE /console/session`,
//! `GET /v1/tail`, `GET /v1/overview`, `POST /v1/subscriptions/{name}/parked-keys/{skip,retry}`
//! — against the REAL binary at default limits: a stranger is refused (`401`) before the body
//! is read (a body announced as 1 GiB that never comes); an oversized body is `413` with
//! bounded memory; garbage, bad JSON, a wrong content type each get their problem class;
//! nothing is stored (the registry bucket and ORDERS unchanged); the process stays ready.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::gateway::{BITRIX, NAV, OPS, jetstream, slug, stream_count};
use crate::common::nats::NatsServer;
use crate::common::process::GatewayProcess;

/// Peak resident memory over the whole run (the hostile corpus's bound).
const MAX_PEAK_RSS_KIB: u64 = 256 * 1024;

/// A bus with the registry granted to bitrix, an admin, and a key-ordered subscription.
pub(crate) fn bus(dir: &std::path::Path) -> std::path::PathBuf {
    let basic = crate::common::gateway::scenario("basic");
    std::fs::create_dir(dir.join("streams")).unwrap();
    std::fs::create_dir(dir.join("contracts")).unwrap();
    std::fs::copy(basic.parent().unwrap().join("streams/ORDERS.json"), dir.join("streams/ORDERS.json")).unwrap();
    // Nothing listens there: the subscription only needs to exist.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hash = |t: &str| hex::encode(Sha256::digest(t));
    let config = dir.join("magistral.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"

[participants.bitrix]
tokens = [{{ sha256 = "{}" }}]
publish = ["orders.>"]
contracts = ["crm.*"]

[participants.nav]
tokens = [{{ sha256 = "{}" }}]
subscribe = ["orders.>"]

[participants.ops]
tokens = [{{ sha256 = "{}" }}]
admin = true

[subscriptions.nav-orders]
participant = "nav"
subjects = ["orders.created"]
endpoint = "http://127.0.0.1:{port}/hook"
ordering = {{ key = "/order_id", on_exhausted = "park" }}
"#,
            hash(BITRIX),
            hash(NAV),
            hash(OPS)
        ),
    )
    .unwrap();
    config
}

/// Keys in the contract registry's bucket (0 when it was never created).
async fn registry_keys(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("KV_magistral_contracts").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Messages in the dead-letter stream (0 before it exists).
async fn dead_letters(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("MAGISTRAL_DLQ").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Sends raw request head `head` (with a `Content-Length` far larger than what follows, and
/// no body at all) and reads the status line of the answer, within `within`.
async fn status_before_body(addr: &str, head: &str, within: Duration) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed without an answer".to_owned());
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(line) = got.split(|b| *b == b'\n').next().filter(|_| got.contains(&b'\n')) {
                let line = String::from_utf8_lossy(line);
                return line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {line:?}"));
            }
        }
    };
    tokio::time::timeout(within, read).await.map_err(|_| format!("no answer within {within:?}"))?
}

/// Sends request head `head` (chunked transfer, no `Content-Length`) and then `[` chunks up
/// to `total` bytes while reading the answer: its status, once the server answers (a server
/// that answers early and closes ends the writing with an error, which is fine).
async fn status_while_streaming(addr: &str, head: &str, total: usize) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let write = async move {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "[".repeat(64 * 1024));
        for _ in 0..total.div_ceil(64 * 1024) {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !got.contains(&b'\n') {
            let n = reader.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed without an answer".to_owned());
            }
            got.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&got);
        line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {line:.60?}"))
    };
    tokio::select! {
        status = tokio::time::timeout(Duration::from_secs(60), read) => status.map_err(|_| "no answer within 60 s".to_owned())?,
        () = write => Err("unreachable".to_owned()),
    }
}

/// A chunked request head for `method path`, with a bearer token when given.
fn chunked_head(addr: &str, method: &str, path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
}

struct Run<'a> {
    gw: &'a GatewayProcess,
    failures: Vec<String>,
}

impl Run<'_> {
    /// Checks an answer's status and problem slug.
    async fn expect(&mut self, what: &str, answer: reqwest::Result<reqwest::Response>, status: u16, want: &str) {
        match answer {
            Err(e) => self.failures.push(format!("{what}: no answer: {e}")),
            Ok(r) => {
                let got = r.status().as_u16();
                let content_type =
                    r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if got != status || slug(&body) != want || content_type != "application/problem+json" {
                    self.failures
                        .push(format!("{what}: got {got} {} ({content_type}); expected {status} {want}", slug(&body)));
                }
            }
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.gw.http.request(method, self.gw.url(path)).timeout(Duration::from_secs(60))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_to_the_console_registry_and_parked_key_routes() {
    use reqwest::Method;
    let nats = NatsServer::start();
    let js = jetstream(&nats.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = bus(dir.path());
    let gw = GatewayProcess::start(&config, &nats.url(), &[]).await;
    let mut run = Run { gw: &gw, failures: Vec::new() };
    let orders_before = stream_count(&js, "ORDERS").await;
    let dead_before = dead_letters(&js).await;

    // 1. No credentials and a body announced as 1 GiB that never arrives: refused at once.
    //    (Sign-in is the exception: its body is the credential; it is bounded instead.)
    let routes = [
        ("PUT", "/v1/contracts/crm.lead/1", 401),
        ("POST", "/v1/subscriptions/nav-orders/parked-keys/skip", 401),
        ("POST", "/v1/subscriptions/nav-orders/parked-keys/retry", 401),
        ("DELETE", "/console/session", 401),
        ("GET", "/console/session", 401),
        ("GET", "/v1/overview", 401),
        ("GET", "/v1/tail?subject=orders.%3E", 401),
        ("POST", "/console/session", 413),
    ];
    for (method, path, want) in routes {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
            gw.addr()
        );
        let started = Instant::now();
        match status_before_body(gw.addr(), &head, Duration::from_secs(5)).await {
            Ok(status) if status == want => {}
            Ok(status) => run.failures.push(format!("{method} {path} without a body: {status}, expected {want}")),
            Err(e) => run.failures.push(format!("{method} {path} without a body: {e} after {:?}", started.elapsed())),
        }
    }
    // A forged, a truncated and a huge session cookie authenticate nothing.
    let forged = format!("magistral_console=v1.{}.AAAA", "eyJwIjoib3BzIn0");
    let huge = format!("magistral_console=v1.{}.x", "A".repeat(16 * 1024));
    for cookie in [forged.as_str(), "magistral_console=v1.", "magistral_console=", huge.as_str()] {
        let r = run.req(Method::GET, "/v1/overview").header("cookie", cookie).send().await;
        run.expect(&format!("overview with cookie {:.40}", cookie), r, 401, "unauthorized").await;
        let r = run
            .req(Method::PUT, "/v1/contracts/crm.lead/1")
            .header("cookie", cookie)
            .header("x-csrf-token", "x")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await;
        run.expect("register with a forged cookie", r, 401, "unauthorized").await;
    }
    // Another participant's token: not an admin.
    let r = run.req(Method::GET, "/v1/overview").bearer_auth(NAV).send().await;
    run.expect("overview as a non-admin", r, 403, "forbidden").await;
    let r = run.req(Method::GET, "/v1/tail?subject=orders.>").bearer_auth(BITRIX).send().await;
    run.expect("tail as a non-admin", r, 403, "forbidden").await;

    // 2. Oversized bodies, honest (Content-Length) and streamed (chunked): 413, memory bounded.
    let big = 64 * 1024 * 1024;
    for (method, path, token) in [
        (Method::PUT, "/v1/contracts/crm.lead/1", BITRIX),
        (Method::POST, "/v1/subscriptions/nav-orders/parked-keys/skip", OPS),
        (Method::POST, "/v1/subscriptions/nav-orders/parked-keys/retry", OPS),
    ] {
        let r = run
            .req(method.clone(), path)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await;
        run.expect(&format!("{method} {path} 2 MiB"), r, 413, "payload-too-large").await;
        match status_while_streaming(gw.addr(), &chunked_head(gw.addr(), method.as_str(), path, Some(token)), big).await
        {
            Ok(413) => {}
            other => run.failures.push(format!("{method} {path} 64 MiB chunked: {other:?}, expected 413")),
        }
    }
    match status_while_streaming(gw.addr(), &chunked_head(gw.addr(), "POST", "/console/session", None), big).await {
        Ok(413) => {}
        other => run.failures.push(format!("sign-in 64 MiB chunked: {other:?}, expected 413")),
    }

    // 3. Garbage, broken JSON, wrong shapes, wrong content types.
    let deep = "[".repeat(100_000);
    let bad_bodies: [(&str, &[u8], u16, &str); 5] = [
        ("application/json", b"{\"type\":", 400, "malformed-json"),
        ("application/json", b"\xff\xfe\x00garbage\x00", 400, "malformed-json"),
        ("application/json", deep.as_bytes(), 400, "malformed-json"),
        ("text/plain", b"{}", 415, "unsupported-media-type"),
        ("application/x-www-form-urlencoded", b"token=x", 415, "unsupported-media-type"),
    ];
    for (content_type, body, status, want) in bad_bodies {
        let what =
            |route: &str| format!("{route} {content_type} {:?}", String::from_utf8_lossy(&body[..body.len().min(12)]));
        let r = run
            .req(Method::PUT, "/v1/contracts/crm.lead/1?subject=orders.crm.lead")
            .bearer_auth(BITRIX)
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .await;
        run.expect(&what("register"), r, status, want).await;
        for path in ["/v1/subscriptions/nav-orders/parked-keys/skip", "/console/session"] {
            let r = run
                .req(Method::POST, path)
                .bearer_auth(OPS)
                .header("content-type", content_type)
                .body(body.to_vec())
                .send()
                .await;
            run.expect(&what(path), r, status, want).await;
        }
    }
    // Well-formed JSON of the wrong shape.
    for body in [json!({"key": 5}), json!({"kee": "x"}), json!("x"), json!({"key": "x", "by": "ops"})] {
        let r = run
            .req(Method::POST, "/v1/subscriptions/nav-orders/parked-keys/retry")
            .bearer_auth(OPS)
            .json(&body)
            .send()
            .await;
        run.expect(&format!("retry {body}"), r, 400, "malformed-json").await;
    }
    for body in [json!({"token": 5}), json!({}), json!({"token": OPS, "admin": true})] {
        let r = run.req(Method::POST, "/console/session").json(&body).send().await;
        run.expect(&format!("sign-in {body}"), r, 400, "malformed-json").await;
    }
    // Well-formed and well-shaped, but not a key that is parked.
    let r = run
        .req(Method::POST, "/v1/subscriptions/nav-orders/parked-keys/skip")
        .bearer_auth(OPS)
        .json(&json!({"key": "\u{0}\n../x"}))
        .send()
        .await;
    run.expect("skip of a key that is not parked", r, 404, "not-found").await;
    // A schema that is no schema, a version that is no number, an unknown parameter.
    let r = run
        .req(Method::PUT, "/v1/contracts/crm.lead/1?subject=orders.crm.lead")
        .bearer_auth(BITRIX)
        .json(&json!({"type": 5}))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == 422 || r.status() == 400 => {}
        Ok(r) => run.failures.push(format!("a schema that is no schema: {}", r.status())),
        Err(e) => run.failures.push(format!("a schema that is no schema: {e}")),
    }
    for path in ["/v1/contracts/crm.lead/99999999999999999999", "/v1/contracts/crm.lead/1?evil=1"] {
        let r = run.req(Method::PUT, path).bearer_auth(BITRIX).json(&json!({"type": "object"})).send().await;
        run.expect(path, r, 400, "invalid-query").await;
    }
    // Tails of what is not the bus's traffic, or no subject at all.
    let long = format!("orders.{}", "a".repeat(10_000));
    for query in [
        "subject=>",
        "subject=*.x",
        "subject=$SYS.>",
        "subject=_INBOX.>",
        "subject=a..b",
        "",
        "subject=orders.>&x=1",
        &format!("subject={long}"),
    ] {
        let r = run.req(Method::GET, &format!("/v1/tail?{query}")).bearer_auth(OPS).send().await;
        run.expect(&format!("tail ?{:.40}", query), r, 400, "invalid-query").await;
    }
    // Sign-in from another origin's page.
    let r = run
        .req(Method::POST, "/console/session")
        .header("origin", "https://evil.example")
        .json(&json!({"token": OPS}))
        .send()
        .await;
    run.expect("sign-in from another origin", r, 403, "forbidden").await;

    // 4. Nothing stored, alive and ready, memory bounded.
    let keys = registry_keys(&js).await;
    if keys != 0 {
        run.failures.push(format!("the contract registry holds {keys} entries"));
    }
    let dead_after = dead_letters(&js).await;
    if dead_after != dead_before {
        run.failures.push(format!("dead letters went from {dead_before} to {dead_after} (a skip went through)"));
    }
    let orders_after = stream_count(&js, "ORDERS").await;
    if orders_after != orders_before {
        run.failures.push(format!("ORDERS went from {orders_before} to {orders_after}"));
    }
    let mut failures = std::mem::take(&mut run.failures);
    let mut gw = gw;
    if !gw.is_alive() {
        failures.push(format!("the process DIED: {}", gw.stderr_tail(2000)));
    } else if !gw.ready().await {
        failures.push("not ready afterwards".into());
    }
    let peak = gw.peak_rss_kib().unwrap_or(0);
    eprintln!("console/registry hostile run: peak RSS (VmHWM) {} MiB", peak / 1024);
    if peak >= MAX_PEAK_RSS_KIB {
        failures.push(format!("peak RSS {} MiB over {} MiB", peak / 1024, MAX_PEAK_RSS_KIB / 1024));
    }
    // A well-formed registration still works afterwards (the refusals above were not luck).
    let r = gw
        .http
        .put(gw.url("/v1/contracts/crm.lead/1?subject=orders.crm.lead"))
        .bearer_auth(BITRIX)
        .json(&json!({"type": "object"}))
        .send()
        .await
        .unwrap();
    if r.status() != 201 {
        failures.push(format!("a valid registration afterwards: {}", r.status()));
    }
    assert!(failures.is_empty(), "{} finding(s):\n{}", failures.len(), failures.join("\n"));
}
