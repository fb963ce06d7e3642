//! The operator console (`/console`): plain HTTP checks of its security (CSP, cookie flags,
//! CSRF, admin only), and a real headless Chromium driven over WebDriver through what an
//! operator does: sign in, watch a subscription fail and recover, replay a dead letter, look
//! a message up, tail, switch language. The browser test writes a screenshot of each page to
//! target/console-screenshots/ (docs/console/ with `MAGISTRAL_UPDATE_SCREENSHOTS=1`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::browser::Browser;
use crate::common::gateway::{BITRIX, Gateway, NAV, OPS, example, slug, subscription};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Answer, Receiver};

fn order() -> Vec<u8> {
    std::fs::read(example("samples/sales-order.valid.json")).unwrap()
}

/// Where a page's screenshot goes: `target/console-screenshots/` on every run (a run must not
/// dirty the checkout), `docs/console/` (the pictures the docs show) with
/// `MAGISTRAL_UPDATE_SCREENSHOTS=1`.
fn shot(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = if std::env::var_os("MAGISTRAL_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        root.join("docs/console")
    } else {
        root.join("target/console-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Signs in over HTTP; the `Set-Cookie` value and the answer.
async fn sign_in(gw: &Gateway, token: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut request = gw.http.post(gw.url("/console/session")).json(&json!({ "token": token }));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let cookie = r.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    (status, cookie, r.json().await.unwrap_or(Value::Null))
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_console_page_is_locked_down_and_sessions_need_csrf_for_changes() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![("nav-orders", subscription("nav", &["orders.created"], &receiver.url(), json!({})))],
    )
    .await;

    // The page and its assets: a strict CSP, no sniffing, no framing; nothing inline.
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let r = gw.http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"), "{csp}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body = r.text().await.unwrap();
        if path == "/console" {
            assert!(!body.contains("<script>") && !body.contains("style="), "no inline script or style");
            assert!(!body.contains("http://") && !body.contains("https://"), "nothing from elsewhere");
        }
    }
    assert_eq!(gw.http.get(gw.url("/console/nope.js")).send().await.unwrap().status(), 404);

    // Unknown token 401, a participant that is not an admin 403, another origin's page 403.
    let (status, cookie, body) = sign_in(&gw, "no-such-token", &[]).await;
    assert_eq!((status, slug(&body), cookie), (401, "unauthorized", None));
    let (status, cookie, body) = sign_in(&gw, NAV, &[]).await;
    assert_eq!((status, slug(&body), cookie), (403, "forbidden", None));
    let (status, _, body) = sign_in(&gw, OPS, &[("origin", "https://evil.example")]).await;
    assert_eq!((status, slug(&body)), (403, "forbidden"));

    // The cookie: HttpOnly, SameSite=Strict, Secure only behind TLS.
    let (status, set_cookie, session) = sign_in(&gw, OPS, &[]).await;
    assert_eq!(status, 200, "{session}");
    let set_cookie = set_cookie.unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert_eq!(session["participant"], "ops");
    let (_, tls_cookie, _) = sign_in(&gw, OPS, &[("x-forwarded-proto", "https")]).await;
    assert!(tls_cookie.unwrap().contains("; Secure"), "behind TLS the cookie is Secure");

    // The session reads like the participant's token...
    let cookie = cookie_pair(&set_cookie);
    let csrf = session["csrf_token"].as_str().unwrap();
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-orders")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.http.get(gw.url("/console/session")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["csrf_token"], csrf);
    // ...but changes nothing without its CSRF token, or with another.
    let pause = gw.url("/v1/subscriptions/nav-orders/pause");
    for token in [None, Some("forged")] {
        let mut request = gw.http.post(&pause).header("cookie", &cookie);
        if let Some(t) = token {
            request = request.header("x-csrf-token", t);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "CSRF token {token:?}");
    }
    assert_eq!(gw.get_json(OPS, "/v1/subscriptions/nav-orders").await["state"], "active");
    let r = gw.http.post(&pause).header("cookie", &cookie).header("x-csrf-token", csrf).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["paused_reason"], "paused by ops");
    // A tampered cookie is no session.
    let tampered = cookie.replace("v1.", "v1.e");
    let r = gw.http.get(gw.url("/v1/overview")).header("cookie", &tampered).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // The overview is for admins only, like the console.
    let overview = gw.get_json(OPS, "/v1/overview").await;
    assert_eq!(overview["nats"]["connected"], true);
    assert!(overview["streams"].as_array().unwrap().iter().any(|s| s["name"] == "ORDERS"), "{overview}");
    assert!(overview["participants"].as_array().unwrap().iter().any(|p| p["name"] == "ops" && p["admin"] == true));
    let r = gw.http.get(gw.url("/v1/overview")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = gw.http.get(gw.url("/v1/tail?subject=orders.>")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(r.status(), 403);
    for subject in ["$JS.API.>", "*.>", ">", "_INBOX.x"] {
        let r = gw
            .http
            .get(gw.url(&format!("/v1/tail?subject={}", subject.replace('$', "%24").replace('>', "%3E"))))
            .bearer_auth(OPS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{subject}");
    }

    // Signing out needs the CSRF token too, and ends the session.
    let out = gw.url("/console/session");
    assert_eq!(gw.http.delete(&out).header("cookie", &cookie).send().await.unwrap().status(), 401);
    let r = gw.http.delete(&out).header("cookie", &cookie).header("x-csrf-token", csrf).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let r = gw.http.get(gw.url("/console/session")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn an_operator_finds_and_fixes_a_failing_subscription_in_the_browser() {
    let Some(browser) = Browser::start().await else { return };
    let nats = NatsServer::start();
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let receiver = Receiver::scripted(move |_, _| {
        if flag.load(Ordering::SeqCst) { Answer::status(500).body("database is down") } else { Answer::ok() }
    })
    .await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![("nav-orders", subscription("nav", &["orders.created"], &receiver.url(), json!({})))],
    )
    .await;
    let wait = Duration::from_secs(20);

    // A participant that is not an admin is refused; the admin gets in.
    browser.goto(&gw.url("/console")).await;
    browser.wait("#token", wait).await.type_text(NAV).await;
    browser.wait("#signin-submit", wait).await.click().await;
    let error = browser.wait("#signin-error:not(:empty)", wait).await;
    assert!(error.text().await.contains("not an admin"), "{}", error.text().await);
    let token = browser.wait("#token", wait).await;
    token.clear().await;
    token.type_text(OPS).await;
    browser.screenshot(&shot("signin.png")).await;
    browser.wait("#signin-submit", wait).await.click().await;
    browser.wait("#subs-table tr[data-sub='nav-orders'][data-status='active']", wait).await;
    browser.wait("#streams-table tr[data-stream='ORDERS']", wait).await;

    // The endpoint starts answering 500: the row turns to failing, and the order is dead-lettered.
    failing.store(true, Ordering::SeqCst);
    let r = gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    let failed_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    browser.wait("#subs-table tr.failing[data-sub='nav-orders'][data-status='failing']", wait).await;
    crate::common::eventually("the order dead-lettered", wait, async || {
        (gw.get_json(OPS, "/v1/subscriptions/nav-orders").await["dead_letters"] == 1).then_some(())
    })
    .await;
    browser.wait("#card-dead.alarm", wait).await;
    browser.screenshot(&shot("overview-failing.png")).await;

    // It recovers: the next order is delivered, the row is active again.
    failing.store(false, Ordering::SeqCst);
    let attempts = receiver.received().len();
    let webhook_id = receiver.received()[0].header("webhook-id").unwrap().to_owned();
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    browser.wait("#subs-table tr[data-sub='nav-orders'][data-status='active']:not(.failing)", wait).await;
    browser.screenshot(&shot("overview.png")).await;

    // The subscription page: the failure and the dead letter; replay it from there.
    browser.wait("#subs-table a[href='#/subscription/nav-orders']", wait).await.click().await;
    browser.wait(&format!("#dead-table tr[data-id='{failed_id}']"), wait).await;
    let failures = browser.wait("#failures li.failure", wait).await.text().await;
    assert!(failures.contains("endpoint-5xx") || failures.contains("500"), "{failures}");
    browser.screenshot(&shot("subscription.png")).await;
    browser.wait(&format!("#dead-table tr[data-id='{failed_id}'] button.replay"), wait).await.click().await;
    browser.wait("#toast.good", wait).await;
    let got = receiver.wait_for(attempts + 2, wait).await;
    let replayed = got.iter().skip(attempts).find(|r| r.header("ce-id") == Some(failed_id.as_str())).expect("replayed");
    assert_eq!(replayed.header("webhook-id"), Some(webhook_id.as_str()), "a replay keeps the webhook id");
    browser.wait("#dead p", wait).await;

    // Look the message up: stored, then its attempts at nav-orders.
    browser.wait("a[href='#/lookup']", wait).await.click().await;
    browser.wait("#lookup-value", wait).await.type_text(&failed_id).await;
    browser.wait("#lookup-submit", wait).await.click().await;
    let step = browser.wait("li[data-subscription='nav-orders'][data-state='delivered']", wait).await;
    assert!(step.text().await.contains("attempt"), "{}", step.text().await);
    // ...after its dead letter and the replay from the subscription page.
    browser.wait("li[data-subscription='nav-orders'][data-state='dead-letter']", wait).await;
    let replay = browser.wait("li.replay[data-subscription='nav-orders'][data-replays='1']", wait).await;
    assert!(replay.text().await.contains("replayed"), "{}", replay.text().await);
    browser.screenshot(&shot("lookup.png")).await;

    // The live tail shows what is published now.
    browser.wait("a[href='#/tail']", wait).await.click().await;
    // The page suggests the first stream's subjects; the operator types their own.
    let subject = browser.wait("#tail-subject", wait).await;
    crate::common::eventually("a subject suggested", wait, async || {
        browser
            .script("return document.getElementById('tail-subject').value", json!([]))
            .await
            .as_str()
            .is_some_and(|v| !v.is_empty())
            .then_some(())
    })
    .await;
    subject.clear().await;
    subject.type_text("orders.>").await;
    browser.wait("#tail-start", wait).await.click().await;
    browser.wait("#tail-pause:not([disabled])", wait).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.publish(BITRIX, "orders.created", order()).send().await.unwrap();
    browser.wait("#tail-table tbody tr", wait).await;
    browser.screenshot(&shot("tail.png")).await;

    browser.wait("a[href='#/contracts']", wait).await.click().await;
    browser.wait("#contracts-table", wait).await;
    browser.screenshot(&shot("contracts.png")).await;

    // Russian, by keyboard: focus the language list and choose; remembered after a reload.
    browser.wait("a[href='#/overview']", wait).await.click().await;
    browser.script("document.getElementById('lang').focus()", json!([])).await;
    browser.wait("#lang option[value='ru']", wait).await.click().await;
    browser.wait("#subs-table", wait).await;
    assert_eq!(browser.wait("a[href='#/overview']", wait).await.text().await, "Обзор");
    browser.goto(&gw.url("/console#/overview")).await;
    browser.wait("#subs-table tr[data-sub='nav-orders']", wait).await;
    assert_eq!(browser.wait("a[href='#/overview']", wait).await.text().await, "Обзор");
    let lang = browser.script("return document.documentElement.lang", json!([])).await;
    assert_eq!(lang, "ru");
    browser.screenshot(&shot("overview-ru.png")).await;
}

/// Order `n` of key `key`, for the key-ordered subscription below.
fn keyed(key: &str, n: u64) -> String {
    json!({ "order_id": key, "n": n }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_key_is_shown_and_skipped_from_the_console() {
    let Some(browser) = Browser::start().await else { return };
    let nats = NatsServer::start();
    // Order 1 of o-7 is refused every time; everything else is taken.
    let receiver = Receiver::scripted(|_, r| {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if v["order_id"] == "o-7" && v["n"] == 1 {
            Answer::status(500).body("cannot book this order")
        } else {
            Answer::ok()
        }
    })
    .await;
    let sub = subscription(
        "nav",
        &["orders.keyed"],
        &receiver.url(),
        json!({"ordering": {"key": "/order_id", "on_exhausted": "park"}, "max_in_flight": 4,
               "retry_schedule": ["20ms"], "max_attempts": 2}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("keyed", sub)]).await;
    let wait = Duration::from_secs(30);
    for n in [1, 2] {
        assert_eq!(gw.publish(BITRIX, "orders.keyed", keyed("o-7", n)).send().await.unwrap().status(), 202);
    }

    browser.goto(&gw.url("/console")).await;
    browser.wait("#token", wait).await.type_text(OPS).await;
    browser.wait("#signin-submit", wait).await.click().await;
    // The key parks; another key's delivery afterwards leaves the subscription in
    // `parked-keys` (decided by the gateway: the page and the API say the same).
    browser.wait("#subs-table tr[data-sub='keyed'] .parked[data-parked='1']", wait).await;
    assert_eq!(gw.publish(BITRIX, "orders.keyed", keyed("o-8", 1)).send().await.unwrap().status(), 202);
    browser.wait("#subs-table tr[data-sub='keyed'][data-status='parked-keys']", wait).await;
    let overview = gw.get_json(OPS, "/v1/overview").await;
    let listed = overview["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "keyed").unwrap().clone();
    assert_eq!(listed["status"], "parked-keys", "{listed}");
    assert_eq!(gw.get_json(OPS, "/v1/subscriptions/keyed").await["status"], "parked-keys");
    assert!(receiver.received().iter().all(|r| !String::from_utf8_lossy(&r.body).contains(r#""n":2"#)), "o-7 held");

    // The subscription page lists the key; skipping it (confirmed) lets order 2 through and
    // leaves order 1 among the dead letters.
    browser.wait("#subs-table a[href='#/subscription/keyed']", wait).await.click().await;
    let row = browser.wait("#parked-table tr[data-key-name='o-7'][data-key-state='parked']", wait).await;
    let text = row.text().await;
    assert!(text.contains("parked") && text.contains("500"), "{text}");
    browser.screenshot(&shot("subscription-parked.png")).await;
    browser.script("window.confirm = () => true", json!([])).await;
    browser.wait("#parked-table tr[data-key-name='o-7'] button.skip-key", wait).await.click().await;
    let toast = browser.wait("#toast.good", wait).await.text().await;
    assert!(toast.contains("o-7"), "{toast}");
    browser.wait("#parked p", wait).await;
    crate::common::eventually("o-7's order 2 delivered", wait, async || {
        receiver
            .received()
            .iter()
            .any(|r| {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                v["order_id"] == "o-7" && v["n"] == 2
            })
            .then_some(())
    })
    .await;
    browser.wait("#dead-table tbody tr", wait).await;
    let show = gw.get_json(OPS, "/v1/subscriptions/keyed").await;
    assert_eq!((&show["dead_letters"], &show["status"]), (&json!(1), &json!("active")), "{show}");
}
