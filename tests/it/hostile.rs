//! Issue 10's hostile corpus replayed against the REAL binary and a real nats-server, at
//! default limits (`tests/configs/hostile`): each finding's request, then the answer expected
//! after the fix, that nothing was stored, that the process is alive and ready, and — over the
//! whole corpus — a peak resident memory (`VmHWM`) under 256 MB.
//!
//! Every case runs even when an earlier one fails: a case that kills the process is reported
//! with the process's last words and a fresh process is started for the next case. All
//! findings are listed at the end in one panic message, one line per case.
//!
//! The expected answers sit in the `WANT_*` constants below: adjust them there when a decision
//! changes.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::gateway::{BITRIX, NAV, jetstream, scenario, slug, stream_count};
use crate::common::nats::NatsServer;
use crate::common::process::GatewayProcess;

/// An expected answer: status and, for refusals, the problem `type` slug.
#[derive(Clone, Copy, Debug)]
struct Want {
    status: u16,
    slug: Option<&'static str>,
}

const fn problem(status: u16, slug: &'static str) -> Want {
    Want { status, slug: Some(slug) }
}

// --- Expected answers after the fix (one per finding; adjust here) ----------------------------
/// 1. Bitrix24 form nesting 10,000 / 50,000 levels, no application token.
const WANT_DEEP_FORM: Want = problem(401, "unauthorized");
/// 2. NDJSON batch of 5 M `{}` lines (within `max_batch_bytes`, far over `max_batch_items`).
const WANT_HUGE_BATCH: Want = problem(413, "too-many-items");
/// 2. ...answered within this (the items are counted as read, the first one over stops it).
const HUGE_BATCH_WITHIN: Duration = Duration::from_secs(10);
/// 3. 1 MiB body breaking its contract in 250,000 places.
const WANT_MANY_VIOLATIONS: Want = problem(422, "contract-violation");
/// 3. ...with a small answer: at most this many bytes and listed errors.
const MAX_VIOLATION_ANSWER_BYTES: usize = 64 * 1024;
const MAX_VIOLATIONS_LISTED: usize = 100;
/// 4. `ce-type` holding CR/LF through percent-encoding.
const WANT_CRLF_ATTRIBUTE: Want = problem(400, "invalid-cloudevent");
/// 5. Participant B reusing participant A's `Idempotency-Key`: B is stored, A's retry is a duplicate.
const WANT_OTHER_PUBLISHERS_KEY: Want = Want { status: 202, slug: None };
const WANT_OWN_RETRY: Want = Want { status: 200, slug: None };
/// 6. Business Central route, 16 MiB body, wrong clientState: any status BC tolerates
///    (anything else makes BC delete its subscription).
fn bc_tolerates(status: u16) -> bool {
    (200..300).contains(&status) || status == 408 || status == 429 || (500..600).contains(&status)
}
/// 7. Slow client: the server closes the connection within the header timeout plus this slack.
const HEADER_READ_TIMEOUT: &str = "1s";
const SLOW_CLIENT_CLOSED_WITHIN: Duration = Duration::from_secs(6);
/// 8. Duplicate object keys (I-JSON), with the pointer named.
const WANT_DUPLICATE_KEY: Want = problem(400, "duplicate-key");
/// 9. `Last-Event-ID` past any sequence.
const WANT_HUGE_LAST_EVENT_ID: Want = problem(400, "invalid-header");
/// 10. Structured event with 40,000 extension attributes.
const WANT_MANY_ATTRIBUTES: Want = problem(400, "invalid-cloudevent");
/// 11. `traceparent: garbage`, and a 60 KB `tracestate`.
const WANT_BAD_TRACEPARENT: Want = problem(400, "invalid-header");
const WANT_HUGE_TRACESTATE: Want = problem(400, "invalid-header");
/// 12. `Authorization: BEARER <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
const WANT_UPPERCASE_BEARER: Want = Want { status: 202, slug: None };
/// The whole corpus, at default limits.
const MAX_PEAK_RSS_KIB: u64 = 256 * 1024;
// ------------------------------------------------------------------------------------------------

/// One hostile request (or a few) and how many messages it should leave in ORDERS.
struct Case {
    id: &'static str,
    stored: u64,
}

const CASES: &[Case] = &[
    Case { id: "01-bitrix-form-10k-levels-no-token", stored: 0 },
    Case { id: "01-bitrix-form-50k-levels-no-token", stored: 0 },
    Case { id: "02-ndjson-5M-tiny-lines", stored: 0 },
    Case { id: "03-contract-violated-250k-times", stored: 0 },
    Case { id: "04-ce-type-with-crlf", stored: 0 },
    Case { id: "05-idempotency-key-of-another-participant", stored: 2 },
    Case { id: "06-business-central-16MiB-wrong-client-state", stored: 0 },
    Case { id: "07-slow-client-half-headers", stored: 0 },
    Case { id: "08-duplicate-json-keys", stored: 0 },
    Case { id: "09-last-event-id-u64-max", stored: 0 },
    Case { id: "10-structured-event-40k-attributes", stored: 0 },
    Case { id: "11-traceparent-garbage", stored: 0 },
    Case { id: "11-tracestate-60KB", stored: 0 },
    Case { id: "12-authorization-BEARER-uppercase", stored: 1 },
];

/// What a case sees of the gateway: cheap to clone into each case.
#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    base: String,
    addr: String,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

const ORDER: &str = r#"{"order_id":"BX-1"}"#;
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_against_the_binary() {
    let nats = NatsServer::start();
    let js = jetstream(&nats.url()).await;
    let config = scenario("hostile");
    let envs = [("MAGISTRAL_LIMITS__HEADER_READ_TIMEOUT", HEADER_READ_TIMEOUT)];
    let mut gw = GatewayProcess::start(&config, &nats.url(), &envs).await;
    let mut peak_kib = 0u64;
    let mut report: Vec<String> = Vec::new();
    let mut failed = 0usize;

    for case in CASES {
        let ctx = Ctx { http: gw.http.clone(), base: gw.base.clone(), addr: gw.addr().to_owned() };
        let before = stream_count(&js, "ORDERS").await;
        let started = Instant::now();
        let mut problems = match tokio::time::timeout(Duration::from_secs(120), run(case.id, ctx)).await {
            Ok(problems) => problems,
            Err(_) => vec!["no answer within 120 s".to_owned()],
        };
        let took = started.elapsed();

        // The process must have survived and be ready.
        let mut died = false;
        if gw.is_alive() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gw.ready().await {
                if !gw.is_alive() {
                    break;
                }
                if Instant::now() > deadline {
                    problems.push("/readyz did not answer 200 within 10 s afterwards".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !gw.is_alive() {
            died = true;
            // Panics and aborts are the lines that are not JSON log records.
            let tail = gw.stderr_tail(64 * 1024);
            let last_words: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('{')).collect();
            let tail = last_words[last_words.len().saturating_sub(5)..].join(" | ");
            problems.push(format!("the process DIED; its last words: {tail}"));
        }
        match gw.peak_rss_kib() {
            Some(kib) => peak_kib = peak_kib.max(kib),
            None if !died => problems.push("VmHWM unreadable".into()),
            None => {}
        }
        // Nothing stored beyond what the case is meant to store (checked after the process
        // settled, so a late write is seen too).
        let after = stream_count(&js, "ORDERS").await;
        if after != before + case.stored {
            problems.push(format!("ORDERS went from {before} to {after} messages; expected +{}", case.stored));
        }

        let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
        let line = format!(
            "hostile {}: {verdict} in {:.1} s, peak RSS so far {} MiB{}{}",
            case.id,
            took.as_secs_f64(),
            peak_kib / 1024,
            if problems.is_empty() { "" } else { " — " },
            problems.join("; ")
        );
        eprintln!("{line}");
        report.push(line);
        if !problems.is_empty() {
            failed += 1;
        }
        if died {
            // Keep going: the remaining cases still say something.
            gw = GatewayProcess::start(&config, &nats.url(), &envs).await;
        }
    }
    if let Some(kib) = gw.peak_rss_kib() {
        peak_kib = peak_kib.max(kib);
    }
    let memory_ok = peak_kib < MAX_PEAK_RSS_KIB;
    report.push(format!(
        "hostile peak RSS (VmHWM, max over the process(es)): {} MiB; limit {} MiB: {}",
        peak_kib / 1024,
        MAX_PEAK_RSS_KIB / 1024,
        if memory_ok { "PASS" } else { "FAIL" }
    ));
    eprintln!("{}", report.last().unwrap());
    gw.kill();
    assert!(failed == 0 && memory_ok, "{failed} of {} hostile case(s) failed:\n{}", CASES.len(), report.join("\n"));
}

/// Runs one case; returns what did not match its expectation.
async fn run(id: &str, ctx: Ctx) -> Vec<String> {
    let mut p = Vec::new();
    match id {
        "01-bitrix-form-10k-levels-no-token" => deep_form(&ctx, 10_000, &mut p).await,
        "01-bitrix-form-50k-levels-no-token" => deep_form(&ctx, 50_000, &mut p).await,
        "02-ndjson-5M-tiny-lines" => {
            let body = "{}\n".repeat(5_000_000);
            let started = Instant::now();
            let r = ctx
                .http
                .post(ctx.url("/v1/publish"))
                .bearer_auth(BITRIX)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await;
            expect(r, WANT_HUGE_BATCH, &mut p).await;
            if started.elapsed() > HUGE_BATCH_WITHIN {
                p.push(format!("answered after {:?}; expected within {HUGE_BATCH_WITHIN:?}", started.elapsed()));
            }
        }
        "03-contract-violated-250k-times" => {
            // 250,000 strings where the contract wants integers: 1,000,001 bytes.
            const ITEMS: usize = 250_000;
            let mut body = String::with_capacity(ITEMS * 4 + 2);
            body.push('[');
            body.push_str(&"\"x\",".repeat(ITEMS - 1));
            body.push_str("\"x\"]");
            let r = publish(&ctx, BITRIX, "orders.tally", body).send().await;
            match r {
                Err(e) => p.push(format!("no answer: {e}")),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let bytes = r.bytes().await.unwrap_or_default();
                    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    check(status, &json, WANT_MANY_VIOLATIONS, &mut p);
                    if bytes.len() > MAX_VIOLATION_ANSWER_BYTES {
                        p.push(format!(
                            "the answer is {} bytes; expected at most {MAX_VIOLATION_ANSWER_BYTES}",
                            bytes.len()
                        ));
                    }
                    let listed = json["errors"].as_array().map_or(0, Vec::len);
                    if listed > MAX_VIOLATIONS_LISTED {
                        p.push(format!("{listed} errors listed; expected at most {MAX_VIOLATIONS_LISTED}"));
                    }
                    // The total is reported somewhere: a top-level count or the detail. Its
                    // member name is the implementer's choice, so any top-level number will do.
                    let total_named =
                        json.as_object().is_some_and(|o| o.values().any(|v| v.as_u64() == Some(ITEMS as u64)))
                            || json["detail"].as_str().is_some_and(|d| d.contains(&ITEMS.to_string()));
                    if !total_named {
                        p.push(format!("the total ({ITEMS}) is named neither in a top-level member nor in the detail"));
                    }
                }
            }
        }
        "04-ce-type-with-crlf" => {
            let r = publish(&ctx, BITRIX, "orders.created", ORDER).header("ce-type", "a%0D%0Ab").send().await;
            expect(r, WANT_CRLF_ATTRIBUTE, &mut p).await;
        }
        "05-idempotency-key-of-another-participant" => {
            let key = "order-4711-shared-key";
            let send = |token: &'static str| {
                publish(&ctx, token, "orders.created", ORDER).header("idempotency-key", key).send()
            };
            let first = send(BITRIX).await;
            let mut setup = Vec::new();
            expect(first, Want { status: 202, slug: None }, &mut setup).await;
            p.extend(setup.into_iter().map(|s| format!("A's first publish (setup): {s}")));
            let mut b = Vec::new();
            let r = send(NAV).await;
            let duplicate = expect(r, WANT_OTHER_PUBLISHERS_KEY, &mut b).await;
            if duplicate["duplicate"] == true {
                b.push("answered as a duplicate of A's message".into());
            }
            p.extend(b.into_iter().map(|s| format!("B with A's key: {s}")));
            let mut retry = Vec::new();
            let r = send(BITRIX).await;
            let body = expect(r, WANT_OWN_RETRY, &mut retry).await;
            if body["duplicate"] != true {
                retry.push(format!("not answered as a duplicate: {body}"));
            }
            p.extend(retry.into_iter().map(|s| format!("A's retry: {s}")));
        }
        "06-business-central-16MiB-wrong-client-state" => {
            let entry = r#"{"subscriptionId":"s1","clientState":"not-the-state","expirationDateTime":"2026-12-01T10:00:00Z","resource":"api/v2.0/companies(demo)/items(1a2b)","changeType":"updated","lastModifiedDateTime":"2026-11-28T10:00:00Z"},"#;
            let target = 16 * 1024 * 1024 - 1024;
            let mut body = String::with_capacity(target + entry.len());
            body.push_str(r#"{"value":["#);
            while body.len() + entry.len() < target {
                body.push_str(entry);
            }
            body.pop();
            body.push_str("]}");
            let r = ctx
                .http
                .post(ctx.url("/v1/inbound/bc-items"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                // The gateway answers without reading past its limit and closes the connection;
                // a client still uploading may see that as a reset instead of the answer. What
                // BC would read is checked below, deterministically.
                Err(e) if e.is_request() || e.is_body() => {}
                Err(e) => p.push(format!("no HTTP answer: {e}")),
                Ok(r) if !bc_tolerates(r.status().as_u16()) => {
                    p.push(format!("status {}; BC tolerates only 2xx/408/429/5xx", r.status().as_u16()));
                }
                Ok(_) => {}
            }
            // The same announced size with no body sent: the answer comes before any of it is read.
            match tokio::net::TcpStream::connect(&ctx.addr).await {
                Err(e) => p.push(format!("connect: {e}")),
                Ok(mut tcp) => {
                    let head = format!(
                        "POST /v1/inbound/bc-items HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        ctx.addr,
                        16 * 1024 * 1024
                    );
                    let mut answer = Vec::new();
                    let read = async {
                        tcp.write_all(head.as_bytes()).await?;
                        let mut buf = [0u8; 4096];
                        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = tcp.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            answer.extend_from_slice(&buf[..n]);
                        }
                        std::io::Result::Ok(())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), read).await {
                        Ok(Ok(())) => {
                            let status =
                                String::from_utf8_lossy(&answer).split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
                            match status {
                                Some(s) if bc_tolerates(s) => {}
                                other => p.push(format!(
                                    "announced 16 MiB: status {other:?}; BC tolerates only 2xx/408/429/5xx"
                                )),
                            }
                        }
                        Ok(Err(e)) => p.push(format!("announced 16 MiB: {e}")),
                        Err(_) => {
                            p.push("announced 16 MiB: no answer within 5 s (the gateway waited for the body)".into())
                        }
                    }
                }
            }
        }
        "07-slow-client-half-headers" => match tokio::net::TcpStream::connect(&ctx.addr).await {
            Err(e) => p.push(format!("connect: {e}")),
            Ok(mut tcp) => {
                let half = format!(
                    "POST /v1/publish/orders.created HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {BITRIX}\r\nContent-Ty",
                    ctx.addr
                );
                if let Err(e) = tcp.write_all(half.as_bytes()).await {
                    p.push(format!("write: {e}"));
                } else {
                    // Closed = EOF or a reset, after at most a short error answer.
                    let closed = tokio::time::timeout(SLOW_CLIENT_CLOSED_WITHIN, async {
                        let mut buf = [0u8; 4096];
                        loop {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    })
                    .await;
                    if closed.is_err() {
                        p.push(format!("the connection is still open {SLOW_CLIENT_CLOSED_WITHIN:?} after half the headers (header timeout {HEADER_READ_TIMEOUT})"));
                    }
                }
            }
        },
        "08-duplicate-json-keys" => {
            let r = publish(&ctx, BITRIX, "orders.created", r#"{"order_id": 5, "order_id": "BX-1"}"#).send().await;
            let body = expect(r, WANT_DUPLICATE_KEY, &mut p).await;
            if !body.to_string().contains("/order_id") {
                p.push(format!("the JSON pointer /order_id is not named: {body}"));
            }
        }
        "09-last-event-id-u64-max" => {
            let r = ctx
                .http
                .get(ctx.url("/v1/subscriptions/bitrix-events/events"))
                .bearer_auth(BITRIX)
                .header("last-event-id", u64::MAX.to_string())
                .timeout(Duration::from_secs(15))
                .send()
                .await;
            match r {
                // A 200 would be an event stream: judge by the status alone, do not read it.
                Ok(r) if r.status() == 200 => p.push("status 200 (an event stream was opened)".into()),
                other => {
                    expect(other, WANT_HUGE_LAST_EVENT_ID, &mut p).await;
                }
            }
        }
        "10-structured-event-40k-attributes" => {
            let mut body = String::from(r#"{"specversion":"1.0","type":"order.created","id":"many-attrs""#);
            for i in 0..40_000 {
                body.push_str(&format!(r#","e{i}":"v""#));
            }
            body.push_str(r#","data":{"order_id":"BX-1"}}"#);
            // Not `publish()`: reqwest appends headers, and a second Content-Type would be ignored.
            let r = ctx
                .http
                .post(ctx.url("/v1/publish/orders.created"))
                .bearer_auth(BITRIX)
                .header("content-type", "application/cloudevents+json")
                .body(body)
                .send()
                .await;
            expect(r, WANT_MANY_ATTRIBUTES, &mut p).await;
        }
        "11-traceparent-garbage" => {
            let r = publish(&ctx, BITRIX, "orders.created", ORDER).header("traceparent", "garbage").send().await;
            expect(r, WANT_BAD_TRACEPARENT, &mut p).await;
        }
        "11-tracestate-60KB" => {
            let tracestate = format!("vendor={}", "x".repeat(60 * 1024));
            let r = publish(&ctx, BITRIX, "orders.created", ORDER)
                .header("traceparent", TRACEPARENT)
                .header("tracestate", tracestate)
                .send()
                .await;
            expect(r, WANT_HUGE_TRACESTATE, &mut p).await;
        }
        "12-authorization-BEARER-uppercase" => {
            let r = ctx
                .http
                .post(ctx.url("/v1/publish/orders.created"))
                .header("authorization", format!("BEARER {BITRIX}"))
                .header("content-type", "application/json")
                .body(ORDER)
                .send()
                .await;
            expect(r, WANT_UPPERCASE_BEARER, &mut p).await;
        }
        other => p.push(format!("no such case {other}")),
    }
    p
}

/// `POST /v1/publish/{subject}` with a JSON body.
fn publish(ctx: &Ctx, token: &str, subject: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    ctx.http
        .post(ctx.url(&format!("/v1/publish/{subject}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
}

/// `data[a][a]…[a]=1` with `levels` brackets and no application token.
async fn deep_form(ctx: &Ctx, levels: usize, p: &mut Vec<String>) {
    let body = format!("event=ONCRMDEALADD&data{}=1", "[a]".repeat(levels));
    let r = ctx
        .http
        .post(ctx.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await;
    expect(r, WANT_DEEP_FORM, p).await;
}

/// Checks an answer against `want`; returns its JSON body (`Null` when not JSON).
async fn expect(r: reqwest::Result<reqwest::Response>, want: Want, p: &mut Vec<String>) -> Value {
    match r {
        Err(e) => {
            p.push(format!("no answer: {e}"));
            Value::Null
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let json: Value = r.json().await.unwrap_or(Value::Null);
            check(status, &json, want, p);
            json
        }
    }
}

fn check(status: u16, json: &Value, want: Want, p: &mut Vec<String>) {
    let got_slug = slug(json);
    let got = if got_slug.is_empty() { status.to_string() } else { format!("{status} {got_slug}") };
    let expected = match want.slug {
        Some(s) => format!("{} {s}", want.status),
        None => want.status.to_string(),
    };
    if status != want.status || want.slug.is_some_and(|s| s != got_slug) {
        let detail = json["detail"]
            .as_str()
            .map(|d| format!(" ({})", d.chars().take(160).collect::<String>()))
            .unwrap_or_default();
        p.push(format!("got {got}{detail}; expected {expected}"));
    }
}
