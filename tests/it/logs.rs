//! What the log says, read as an operator reads it: the built binary with `log.format = json`,
//! its stderr captured, driven through failing deliveries, a breaker, a dead letter, an
//! endpoint gone, pause and resume, refused publishes, a config reload and a NATS outage.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::nats::NatsServer;
use crate::common::process::GatewayProcess;
use crate::common::receiver::{Answer, Receiver};
use crate::common::{assert_status, eventually};

const BITRIX: &str = "bitrix-test-token-0001";
const OPS: &str = "ops-test-token-000001";
const NAV: &str = "nav-test-token-00001";

/// The basic scenario's config with absolute paths, plus `extra` TOML.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let basic = std::fs::canonicalize("tests/configs/basic").unwrap();
    let contracts = std::fs::canonicalize("contracts").unwrap();
    let text = std::fs::read_to_string(basic.join("magistral.toml")).unwrap();
    let text = text
        .replace("streams_dir = \"streams\"", &format!("streams_dir = {:?}", basic.join("streams")))
        .replace("contracts_dir = \"../../../contracts\"", &format!("contracts_dir = {contracts:?}"));
    // Top-level keys must come before the first table.
    let text = format!("reload_interval = \"200ms\"\n{text}\n{extra}\n");
    let path = dir.join("magistral.toml");
    crate::common::write_atomically(&path, text);
    path
}

fn subscriptions(receiver: &Receiver) -> String {
    let base = receiver.base();
    format!(
        r#"
[subscriptions.erp-orders]
participant = "nav"
subjects = ["orders.logs.fail"]
endpoint = "{base}/fail"
retry_schedule = ["100ms"]
max_attempts = 3
breaker_failures = 2
breaker_cooldown = "300ms"
timeout = "2s"

[subscriptions.shop-status]
participant = "bitrix"
subjects = ["orders.status"]
endpoint = "{base}/gone"
timeout = "2s"
"#
    )
}

/// The JSON log lines written so far.
fn lines(gw: &GatewayProcess) -> Vec<Value> {
    let text = std::fs::read_to_string(gw.stderr_path()).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
        .collect()
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(message))).collect()
}

async fn logged(gw: &GatewayProcess, message: &str, within: Duration) -> Vec<Value> {
    eventually(&format!("log line {message:?}"), within, async || {
        let found: Vec<Value> = with_message(&lines(gw), message).into_iter().cloned().collect();
        (!found.is_empty()).then_some(found)
    })
    .await
}

#[tokio::test]
async fn every_event_an_operator_acts_on_is_one_structured_line() {
    let mut nats = NatsServer::start();
    let receiver = Receiver::scripted(|_, r| match r.path.as_str() {
        "/gone" => Answer::status(410),
        _ => Answer::status(500).body("database is down"),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &subscriptions(&receiver));
    let gw = GatewayProcess::start(
        &config,
        &nats.url(),
        &[("MAGISTRAL_LOG__ACCESS", "true"), ("MAGISTRAL_LOG__LEVEL", "info,magistral::refusals=debug")],
    )
    .await;
    let http = &gw.http;
    let startup = lines(&gw);
    let created = with_message(&startup, "stream created");
    assert!(created.iter().any(|l| l["stream"] == "ORDERS"), "stream reconcile is logged: {startup:#?}");
    assert_eq!(with_message(&startup, "connected to NATS").len(), 1);

    // A failing endpoint: each attempt, the breaker opening and probing, the dead letter.
    let r = http
        .post(gw.url("/v1/publish/orders.logs.fail"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/json")
        .header("ce-id", "order-4711")
        .body(r#"{"order":4711}"#)
        .send()
        .await
        .unwrap();
    assert_status(r, 202).await;
    let dead = logged(&gw, "message dead-lettered", Duration::from_secs(15)).await;
    assert_eq!(dead[0]["subscription"], "erp-orders");
    assert_eq!(dead[0]["message_id"], "order-4711");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["class"], "endpoint-error");
    assert_eq!(dead[0]["status"], 500);
    let all = lines(&gw);
    let failures = with_message(&all, "delivery failed");
    assert_eq!(failures.len(), 3, "one line per failed attempt: {failures:#?}");
    for (n, line) in failures.iter().enumerate() {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["subscription"], "erp-orders");
        assert_eq!(line["message_id"], "order-4711");
        assert_eq!(line["attempt"], n as u64 + 1);
        assert_eq!(line["class"], "endpoint-error");
        assert_eq!(line["detail"], "database is down");
    }
    assert!(failures[0]["next"].as_str().unwrap().starts_with("retry at "), "{:?}", failures[0]);
    assert_eq!(failures[2]["next"], "attempts exhausted: dead letter");
    let opened = with_message(&all, "circuit breaker opened");
    assert!(!opened.is_empty() && opened[0]["consecutive_failures"] == 2, "{all:#?}");
    assert!(!with_message(&all, "circuit breaker half-open").is_empty(), "the probe is logged");

    // The endpoint says 410: it is gone, the subscription pauses; an operator resumes it.
    let r = http
        .post(gw.url("/v1/publish/orders.status"))
        .bearer_auth("nav-test-token-00001")
        .header("content-type", "application/json")
        .body(std::fs::read("samples/order-status.valid.json").unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let gone = logged(&gw, "endpoint gone (410)", Duration::from_secs(10)).await;
    assert_eq!(gone[0]["level"], "ERROR");
    assert_eq!(gone[0]["subscription"], "shop-status");
    assert!(gone[0]["endpoint"].as_str().unwrap().contains("/gone"), "{:?}", gone[0]);
    let paused = logged(&gw, "subscription paused:", Duration::from_secs(5)).await;
    assert_eq!(paused[0]["reason"], "endpoint answered 410 Gone");
    receiver.set_script(|_, _| Answer::ok());
    let r = http.post(gw.url("/v1/subscriptions/shop-status/resume")).bearer_auth(OPS).send().await.unwrap();
    assert_status(r, 200).await;
    let resumed = logged(&gw, "subscription resumed", Duration::from_secs(5)).await;
    assert_eq!((&resumed[0]["subscription"], &resumed[0]["by"]), (&"shop-status".into(), &"ops".into()));
    let r = http.post(gw.url("/v1/subscriptions/erp-orders/pause")).bearer_auth(OPS).send().await.unwrap();
    assert_status(r, 200).await;
    logged(&gw, "subscription paused by an operator", Duration::from_secs(5)).await;

    // Twenty refused publishes: all counted, a few logged (at DEBUG, turned on here), and the
    // access log has every request.
    for _ in 0..20 {
        let r = http
            .post(gw.url("/v1/publish/orders.logs.x"))
            .bearer_auth(BITRIX)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_status(r, 400).await;
    }
    let refused = logged(&gw, "publish refused", Duration::from_secs(5)).await;
    assert_eq!(refused.len(), 5, "the refusal log is throttled: {refused:#?}");
    assert_eq!((&refused[0]["participant"], &refused[0]["problem"]), (&"bitrix".into(), &"malformed-json".into()));
    assert_eq!(refused[0]["target"], "magistral::refusals");
    let metrics = http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("magistral_publish_total{")
            && l.contains("outcome=\"malformed-json\"")
            && l.contains("participant=\"bitrix\"")
            && l.ends_with(" 20")),
        "every refusal is counted:\n{metrics}"
    );
    let access: Vec<Value> = lines(&gw).into_iter().filter(|l| l["target"] == "magistral::access").collect();
    let refused_requests =
        access.iter().filter(|l| l["route"] == "/v1/publish/{subject}" && l["status"] == 400).count();
    assert_eq!(refused_requests, 20, "{access:#?}");
    assert!(access.iter().any(|l| l["participant"] == "bitrix" && l["method"] == "POST"), "{access:#?}");

    // A reload names what changed.
    let more = format!(
        "{}\n[participants.crm]\ntokens = [{{ sha256 = \"{}\" }}]\npublish = [\"orders.crm.>\"]\n",
        subscriptions(&receiver),
        "0".repeat(64)
    );
    write_config(dir.path(), &more);
    let reloaded = logged(&gw, "configuration reloaded", Duration::from_secs(10)).await;
    assert_eq!(reloaded[0]["changes"], "+participant crm", "{reloaded:#?}");

    // NATS down for two seconds: one line when lost, one when restored, with the attempts.
    nats.kill();
    logged(&gw, "NATS connection lost", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    let restored = logged(&gw, "NATS connection restored", Duration::from_secs(15)).await;
    assert!(restored[0]["reconnect_attempts"].as_u64().unwrap() >= 2, "{restored:#?}");
    assert!(restored[0]["down_for"].as_str().unwrap().contains('s'), "{restored:#?}");
    let all = lines(&gw);
    assert_eq!(with_message(&all, "NATS connection lost").len(), 1, "lost once");
    assert_eq!(with_message(&all, "NATS connection restored").len(), 1, "restored once");
    assert!(with_message(&all, "NATS event").is_empty() && with_message(&all, "NATS still").is_empty());
    let client_lines = all.iter().filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("async_nats"))).count();
    assert_eq!(client_lines, 0, "the NATS client's own line per reconnect attempt is held back: {all:#?}");
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_when_not_at_a_terminal() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = GatewayProcess::start(&config, &nats.url(), &[("MAGISTRAL_LOG__FORMAT", "text")]).await;
    let text = std::fs::read_to_string(gw.stderr_path()).unwrap();
    assert!(text.contains("magistral listening"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in a log file:\n{text}");
    assert!(!text.contains("Some("), "values are written in Display form:\n{text}");
}

#[tokio::test]
async fn a_contract_registered_over_the_api_is_logged_with_who_name_and_version() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::console_hostile::bus(dir.path());
    let gw = GatewayProcess::start(&config, &nats.url(), &[]).await;
    let put = async |token: &str, path: &str| {
        let r = gw
            .http
            .put(gw.url(path))
            .bearer_auth(token)
            .json(&serde_json::json!({"type": "object", "required": ["id"]}))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(put(BITRIX, "/v1/contracts/crm.lead/1?subject=orders.crm.lead").await, 201);
    let line = logged(&gw, "contract registered over the API", Duration::from_secs(5)).await;
    assert_eq!(line.len(), 1, "{line:#?}");
    assert_eq!(line[0]["level"], "INFO");
    assert_eq!(line[0]["participant"], "bitrix");
    assert_eq!(line[0]["contract"], "crm.lead");
    assert_eq!(line[0]["version"], 1);
    assert_eq!(line[0]["unchanged"], false);
    assert!(line[0]["subjects"].as_str().is_some_and(|s| s.contains("orders.crm.lead")), "{:?}", line[0]);
    // A retried registration is a line too, marked unchanged; a refused one is not a registration.
    assert_eq!(put(BITRIX, "/v1/contracts/crm.lead/1?subject=orders.crm.lead").await, 200);
    assert_eq!(put(NAV, "/v1/contracts/crm.other/1?subject=orders.crm.other").await, 403);
    let lines = eventually("the retry's line", Duration::from_secs(5), async || {
        let found: Vec<Value> =
            with_message(&lines(&gw), "contract registered over the API").into_iter().cloned().collect();
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!((&lines[1]["participant"], &lines[1]["unchanged"]), (&"bitrix".into(), &true.into()));
}
