//! The contracts and AsyncAPI routes (`GET /v1/contracts`, `/v1/contracts/{name}/{version}`,
//! `/v1/asyncapi.json`) with their permissions, driven through the real router without a
//! broker (none of them asks NATS); and the AsyncAPI documents of the example and the test
//! configurations parsed by the AsyncAPI project's own parser (`@asyncapi/parser`, installed by
//! `scripts/install-asyncapi-parser.sh`, run through `scripts/asyncapi-validate.mjs` or
//! `$ASYNCAPI_VALIDATE`): zero errors and zero warnings. Without the parser these tests fail,
//! unless `MAGISTRAL_SKIP_ASYNCAPI=1` asks to skip the parser's part.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use magistral::catalog::Catalog;
use magistral::config::Config;
use magistral::describe::asyncapi::{NatsServer, Servers, document};
use magistral::http::{AppState, router};
use serde_json::Value;
use tower::ServiceExt;

use crate::common::gateway::{BITRIX, NAV, OPS, example, scenario};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const ISIMPLE: &str = "isimple-test-token-01";

fn load(path: &Path) -> Catalog {
    let config = Config::load(Some(path)).expect("config loads");
    Catalog::load(&config).expect("catalog loads")
}

/// The validator script, or `None` when skipping was asked for.
fn validator() -> Option<PathBuf> {
    let script = std::env::var_os("ASYNCAPI_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("scripts/asyncapi-validate.mjs"));
    let parser = Path::new(REPO).join(".tools/asyncapi/node_modules/@asyncapi/parser/package.json");
    if script.is_file() && (std::env::var_os("ASYNCAPI_TOOLS_DIR").is_some() || parser.is_file()) {
        return Some(script);
    }
    if std::env::var("MAGISTRAL_SKIP_ASYNCAPI").as_deref() == Ok("1") {
        eprintln!(
            "\n!!! SKIPPED: AsyncAPI documents NOT parsed — no @asyncapi/parser and MAGISTRAL_SKIP_ASYNCAPI=1.\n\
             !!! Run scripts/install-asyncapi-parser.sh to check them.\n"
        );
        return None;
    }
    panic!(
        "@asyncapi/parser not found ({} / {}): run scripts/install-asyncapi-parser.sh \
         (or set MAGISTRAL_SKIP_ASYNCAPI=1 to skip the parser knowingly)",
        script.display(),
        parser.display()
    );
}

/// The parser's errors and warnings for `doc`, and whether the validator exited 0; `None`
/// when skipping was asked for.
fn problems(what: &str, doc: &Value) -> Option<(Vec<Value>, bool)> {
    let script = validator()?;
    let mut child = Command::new("node")
        .arg(&script)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (Node.js is needed for the AsyncAPI parser)");
    child.stdin.take().unwrap().write_all(doc.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let diagnostics: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{what}: the validator printed no JSON ({e}): {stdout}{}", String::from_utf8_lossy(&out.stderr))
    });
    let bad = diagnostics
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == "error" || d["severity"] == "warning")
        .cloned()
        .collect();
    Some((bad, out.status.success()))
}

/// Panics on any error or warning of the parser.
fn assert_parses_clean(what: &str, doc: &Value) {
    let Some((bad, success)) = problems(what, doc) else { return };
    assert!(bad.is_empty() && success, "{what}: the AsyncAPI parser found {bad:#?}");
}

#[test]
fn the_parser_refuses_a_broken_document() {
    // The check above is only worth something if the parser does refuse: a message reference
    // outside the operation's channel is an error of the AsyncAPI 3 ruleset.
    let catalog = load(&scenario("basic"));
    let mut doc = document(&catalog, &servers(), None);
    let op = doc["operations"].as_object_mut().unwrap().values_mut().next().unwrap();
    op["messages"] = serde_json::json!([{"$ref": "#/channels/nowhere/messages/nothing"}]);
    let Some((bad, success)) = problems("broken", &doc) else { return };
    assert!(!success, "the validator exits non-zero");
    assert!(bad.iter().any(|d| d["severity"] == "error"), "{bad:#?}");
}

fn servers() -> Servers {
    Servers {
        gateway: "127.0.0.1:8080".into(),
        gateway_tls: false,
        nats: vec![NatsServer { host: "127.0.0.1:4222".into(), tls: false }],
    }
}

fn addresses(doc: &Value) -> Vec<String> {
    let mut v: Vec<String> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["address"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// `(participant, action, address)` of every operation.
fn operations(doc: &Value) -> Vec<(String, String, String)> {
    let channels = doc["channels"].as_object().unwrap();
    doc["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|op| {
            let channel = op["channel"]["$ref"].as_str().unwrap().trim_start_matches("#/channels/");
            (
                op["x-magistral-participant"].as_str().unwrap().to_owned(),
                op["action"].as_str().unwrap().to_owned(),
                channels[channel]["address"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn has_op(doc: &Value, participant: &str, action: &str, address: &str) -> bool {
    operations(doc).iter().any(|(p, a, c)| p == participant && a == action && c == address)
}

#[test]
fn example_documents_parse_clean_for_the_bus_and_its_participants() {
    let catalog = load(&example("magistral.toml"));
    let whole = document(&catalog, &servers(), None);
    assert_parses_clean("wine-retail, whole bus", &whole);
    // Every participant's operations are in the whole bus.
    for p in ["bitrix", "nav", "docsinbox", "onec", "simplewine", "isimple", "crm", "oktell"] {
        assert!(operations(&whole).iter().any(|(q, _, _)| q == p), "no operation of {p} in the whole bus");
    }
    let seen = |name: &str| {
        let p = catalog.participants.iter().find(|p| p.name == name).unwrap();
        let doc = document(&catalog, &servers(), Some(p));
        assert_parses_clean(&format!("wine-retail, {name}"), &doc);
        assert!(operations(&doc).iter().all(|(q, _, _)| q == name), "{name} sees only its own operations");
        doc
    };
    let bitrix = seen("bitrix");
    assert!(has_op(&bitrix, "bitrix", "send", "orders.created"));
    assert!(has_op(&bitrix, "bitrix", "receive", "orders.status"));
    assert!(has_op(&bitrix, "bitrix", "send", "nav.query.order.status"));
    assert!(!addresses(&bitrix).iter().any(|a| a.starts_with("edi.")), "{:?}", addresses(&bitrix));
    // A request's reply is governed by its reply contract.
    let request = bitrix["operations"]["bitrix.request.nav.query.order.status"].clone();
    assert_eq!(
        request["reply"]["messages"][0]["$ref"],
        "#/channels/nav.query.order.status.reply/messages/order-status.v1"
    );
    assert_eq!(
        bitrix["components"]["messages"]["sales-order.v1"]["externalDocs"]["url"],
        "http://127.0.0.1:8080/v1/contracts/sales-order/1"
    );

    let nav = seen("nav");
    assert!(has_op(&nav, "nav", "receive", "orders.created"));
    assert!(has_op(&nav, "nav", "receive", "edi.inbound.{token3}"));
    assert!(has_op(&nav, "nav", "receive", "nav.query.order.status"), "nav answers through its responder");
    assert!(has_op(&nav, "nav", "send", "edi.outbound.{token3}"));

    let docsinbox = seen("docsinbox");
    let pull =
        docsinbox["operations"].as_object().unwrap().values().find(|op| op["action"] == "receive").unwrap().clone();
    assert!(pull["description"].as_str().unwrap().contains("/v1/subscriptions/docsinbox-edi/fetch"), "{pull}");

    // Price changes from the `prices` directory carry its contract.
    let simplewine = seen("simplewine");
    assert!(has_op(&simplewine, "simplewine", "receive", "$KV.prices.{tail}"));
    assert!(simplewine["components"]["messages"].get("price.v1").is_some());
    seen("onec");
    seen("oktell");
}

#[test]
fn test_config_documents_parse_clean() {
    let catalog = load(&scenario("basic"));
    assert_parses_clean("basic, whole bus", &document(&catalog, &servers(), None));
    for name in ["bitrix", "nav", "ops", "isimple"] {
        let p = catalog.participants.iter().find(|p| p.name == name).unwrap();
        assert_parses_clean(&format!("basic, {name}"), &document(&catalog, &servers(), Some(p)));
    }
    for config in ["hostile", "legacy"] {
        assert_parses_clean(&format!("{config}, whole bus"), &document(&load(&scenario(config)), &servers(), None));
    }
}

#[test]
fn edi_schema_refs_resolve_inside_the_document() {
    // The EDI contract has `$defs` and internal `$ref`s: they must point into the document.
    let catalog = load(&example("magistral.toml"));
    let doc = document(&catalog, &servers(), None);
    let text = doc["components"]["schemas"]["edi-document.v1"].to_string();
    assert!(text.contains("\"#/components/schemas/edi-document.v1/"), "{text}");
    assert!(!text.contains("\"#/$defs"), "{text}");
}

// --- the routes ---------------------------------------------------------------------------

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

async fn get(path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = app().await.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.into_body().collect().await.unwrap().to_bytes().to_vec())
}

async fn contract_names(token: &str) -> Vec<String> {
    let (status, _, body) = get("/v1/contracts", Some(token), &[]).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).unwrap();
    body["contracts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn contracts_list_only_what_touches_the_caller() {
    let all = ["item", "order-status", "purchase-history", "purchase-history-request", "sales-order"];
    assert_eq!(contract_names(OPS).await, all, "an admin sees every contract");
    // bitrix publishes orders.>, receives orders.status, requests nav.query.>, reads items.
    assert_eq!(contract_names(BITRIX).await, all);
    // isimple may only publish unstored.>: no contract touches it.
    assert!(contract_names(ISIMPLE).await.is_empty());

    let (_, _, body) = get("/v1/contracts", Some(NAV), &[]).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    let sales = body["contracts"].as_array().unwrap().iter().find(|c| c["name"] == "sales-order").unwrap();
    let subject = &sales["subjects"][0];
    assert_eq!(subject["subject"], "orders.created");
    assert_eq!(subject["publishers"], serde_json::json!(["bitrix"]));
    assert_eq!(subject["receivers"], serde_json::json!(["nav"]));
    assert_eq!(sales["versions"][0]["schema"], "/v1/contracts/sales-order/1");
    let history = body["contracts"].as_array().unwrap().iter().find(|c| c["name"] == "purchase-history").unwrap();
    assert_eq!(history["replies"][0]["subject"], "nav.query.customer.purchases");
    assert_eq!(history["replies"][0]["requesters"], serde_json::json!(["bitrix"]));
    assert_eq!(history["replies"][0]["responders"], serde_json::json!(["nav"]));
    let item = body["contracts"].as_array().unwrap().iter().find(|c| c["name"] == "item").unwrap();
    assert_eq!(item["directories"][0]["name"], "items");
    assert_eq!(item["directories"][0]["owner"], "nav");

    let (status, _, _) = get("/v1/contracts", None, &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_schema_is_served_with_a_strong_etag() {
    let (status, headers, body) = get("/v1/contracts/sales-order/1", Some(BITRIX), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers[header::CONTENT_TYPE], "application/schema+json");
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong: {etag}");
    let served: Value = serde_json::from_slice(&body).unwrap();
    let file: Value =
        serde_json::from_slice(&std::fs::read(example("contracts/sales-order.v1.json")).unwrap()).unwrap();
    assert_eq!(served, file);

    // The same tag on every fetch; If-None-Match answers 304 without a body.
    let (_, again, _) = get("/v1/contracts/sales-order/v1", Some(BITRIX), &[]).await;
    assert_eq!(again[header::ETAG].to_str().unwrap(), etag);
    for value in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}")] {
        let (status, headers, body) =
            get("/v1/contracts/sales-order/1", Some(BITRIX), &[("if-none-match", &value)]).await;
        assert_eq!(status, 304, "{value}");
        assert_eq!(headers[header::ETAG].to_str().unwrap(), etag);
        assert!(body.is_empty());
    }
    let (status, _, _) = get("/v1/contracts/sales-order/1", Some(BITRIX), &[("if-none-match", "\"other\"")]).await;
    assert_eq!(status, 200);

    // Unknown contract, version, a version that is no number, and one the caller may not see.
    for (path, token) in [
        ("/v1/contracts/no-such/1", BITRIX),
        ("/v1/contracts/sales-order/9", BITRIX),
        ("/v1/contracts/sales-order/latest", BITRIX),
        ("/v1/contracts/sales-order/1", ISIMPLE),
    ] {
        let (status, headers, body) = get(path, Some(token), &[]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["type"], "urn:magistral:problem:not-found");
    }
    let (status, _, _) = get("/v1/contracts/sales-order/1", None, &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_asyncapi_document_is_the_callers() {
    let (status, headers, body) =
        get("/v1/asyncapi.json", Some(BITRIX), &[("host", "bus.example:8443"), ("x-forwarded-proto", "https")]).await;
    assert_eq!(status, 200);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["servers"]["gateway"]["host"], "bus.example:8443");
    assert_eq!(doc["servers"]["gateway"]["protocol"], "https");
    assert_eq!(doc["servers"]["nats"]["protocol"], "nats");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(has_op(&doc, "bitrix", "send", "orders.{tail}"));
    assert!(has_op(&doc, "bitrix", "send", "nav.query.{tail}"), "its requests");
    assert!(operations(&doc).iter().all(|(p, _, _)| p == "bitrix"));
    assert_parses_clean("GET /v1/asyncapi.json as bitrix", &doc);

    // isimple: only its one publish pattern.
    let (_, _, body) = get("/v1/asyncapi.json", Some(ISIMPLE), &[]).await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(addresses(&doc), ["unstored.{tail}"]);
    assert_eq!(operations(&doc), [("isimple".to_owned(), "send".to_owned(), "unstored.{tail}".to_owned())]);
    // A Host that is no authority is not echoed.
    let (_, _, body) = get("/v1/asyncapi.json", Some(ISIMPLE), &[("host", "evil\"/x@y")]).await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["servers"]["gateway"]["host"], "localhost");

    // The admin sees every participant's operations.
    let (_, _, body) = get("/v1/asyncapi.json", Some(OPS), &[]).await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(has_op(&doc, "nav", "send", "orders.status"));
    assert!(has_op(&doc, "isimple", "send", "unstored.{tail}"));

    let (status, _, _) = get("/v1/asyncapi.json", None, &[]).await;
    assert_eq!(status, 401);
}

// --- the command ------------------------------------------------------------------------

#[test]
fn the_command_writes_the_document_the_route_serves() {
    let config = example("magistral.toml");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_magistral"))
            .arg("-c")
            .arg(&config)
            .args(args)
            .env_remove("MAGISTRAL_CONFIG")
            .output()
            .expect("run magistral asyncapi")
    };
    let out = run(&["asyncapi", "--participant", "bitrix", "--gateway", "bus.example.com", "--https"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    let catalog = load(&config);
    let bitrix = catalog.participants.iter().find(|p| p.name == "bitrix").unwrap();
    let servers = Servers { gateway: "bus.example.com".into(), gateway_tls: true, nats: catalog.nats_servers.clone() };
    assert_eq!(written, document(&catalog, &servers, Some(bitrix)));

    // Without --participant: the whole bus, the gateway at `listen`.
    let out = run(&["asyncapi"]);
    assert!(out.status.success());
    let whole: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(whole["id"], "urn:magistral:bus");
    assert_eq!(whole["servers"]["gateway"]["host"], "127.0.0.1:8080");

    let out = run(&["asyncapi", "--participant", "nobody"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no participant \"nobody\""));
}
