//! Self-service contracts: a participant granted a namespace registers versions over
//! `PUT /v1/contracts/{name}/{version}`; they are kept in NATS, so a version registered on
//! one replica is served and enforced by another; files stay authoritative.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, jetstream, slug, token_sha256};
use crate::common::nats::NatsServer;

/// A bus with a file contract (`sales-order` on `orders.created`), bitrix granted `crm.*` and
/// `sales-order`, nav granted nothing.
fn bus() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = crate::common::gateway::orders_bus_dir();
    std::fs::write(dir.path().join("contracts/sales-order.v1.json"), r#"{"type":"object","required":["order_id"]}"#)
        .unwrap();
    let hash = token_sha256;
    let config = dir.path().join("magistral.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"

[[contracts]]
name = "sales-order"
version = 1
file = "sales-order.v1.json"
subjects = ["orders.created"]

[participants.bitrix]
tokens = [{{ sha256 = "{}" }}]
publish = ["orders.>"]
contracts = ["crm.*", "sales-order"]

[participants.nav]
tokens = [{{ sha256 = "{}" }}]
subscribe = ["orders.>"]
"#,
            hash(BITRIX),
            hash(NAV)
        ),
    )
    .unwrap();
    (dir, config)
}

async fn put(gw: &Gateway, token: &str, path_and_query: &str, schema: &Value) -> (u16, Value) {
    let answer = gw
        .http
        .put(gw.url(path_and_query))
        .bearer_auth(token)
        .header("content-type", "application/schema+json")
        .body(schema.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_contract_registered_on_one_replica_is_served_and_enforced_by_another() {
    let nats = NatsServer::start();
    let (_dir, config) = bus();
    let a = Gateway::start_with(config.clone(), &nats.url(), |_| {}).await;
    let b = Gateway::start_with(config.clone(), &nats.url(), |_| {}).await;
    let v1 = json!({"title":"CRM lead","type":"object","required":["id"],"additionalProperties":false,"properties":{"id":{"type":"string"},"phone":{"type":"string"}}});

    // Before: anything goes on the subject.
    assert_eq!(b.publish(BITRIX, "orders.crm.lead", r#"{"phone":"1"}"#).send().await.unwrap().status(), 202);
    let (status, body) = put(&a, BITRIX, "/v1/contracts/crm.lead/1?subject=orders.crm.lead", &v1).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["registeredBy"], "bitrix");
    assert_eq!(body["schema"], "/v1/contracts/crm.lead/1");
    // Enforced by A as soon as it answered.
    let refused = a.publish(BITRIX, "orders.crm.lead", r#"{"phone":"1"}"#).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    // And by B, which only watches the bucket.
    let registered = Instant::now();
    let refusal = eventually("B enforces crm.lead v1", Duration::from_secs(2), async || {
        let answer = b.publish(BITRIX, "orders.crm.lead", r#"{"phone":"1"}"#).send().await.unwrap();
        if answer.status() == 422 { Some(answer.json::<Value>().await.unwrap()) } else { None }
    })
    .await;
    eprintln!("enforced on the other replica {:?} after the registration answered", registered.elapsed());
    assert_eq!(slug(&refusal), "contract-violation", "{refusal}");
    assert_eq!(b.publish(BITRIX, "orders.crm.lead", r#"{"id":"L-1"}"#).send().await.unwrap().status(), 202);

    // Served by B: listed for a receiver, its schema, the AsyncAPI document.
    let listed = b.get_json(NAV, "/v1/contracts").await;
    let lead = listed["contracts"].as_array().unwrap().iter().find(|c| c["name"] == "crm.lead").expect("listed");
    assert_eq!(lead["subjects"][0]["subject"], "orders.crm.lead", "{lead}");
    assert_eq!(lead["subjects"][0]["publishers"], json!(["bitrix"]), "{lead}");
    assert_eq!(b.get_json(NAV, "/v1/contracts/crm.lead/1").await, v1);
    let asyncapi = b.get_json(BITRIX, "/v1/asyncapi.json").await.to_string();
    assert!(asyncapi.contains("/v1/contracts/crm.lead/1"), "{asyncapi}");

    // A retried registration changes nothing.
    assert_eq!(put(&b, BITRIX, "/v1/contracts/crm.lead/1?subject=orders.crm.lead", &v1).await.0, 200);

    // A v2 that breaks its producers (backward, inherited) is refused with the change named.
    let breaking = json!({"type":"object","required":["id","phone"],"additionalProperties":false,"properties":{"id":{"type":"string"},"phone":{"type":"string"}}});
    let (status, problem) = put(&a, BITRIX, "/v1/contracts/crm.lead/2", &breaking).await;
    assert_eq!((status, slug(&problem)), (422, "incompatible-contract"), "{problem}");
    assert!(
        problem["errors"].as_array().unwrap().iter().any(|e| e["schemaPath"].as_str().unwrap().contains("required")),
        "{problem}"
    );
    eprintln!("incompatible-contract: {problem}");

    // A compatible v2 keeps v1's subjects; publishers may still name v1.
    let v2 = json!({"type":"object","required":["id"],"additionalProperties":false,"properties":{"id":{"type":"string"},"phone":{"type":"string"},"source":{"type":"string"}}});
    let (status, body) = put(&a, BITRIX, "/v1/contracts/crm.lead/2", &v2).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["subjects"], json!(["orders.crm.lead"]));
    eventually("B lists v2", Duration::from_secs(2), async || {
        let listed = b.get_json(NAV, "/v1/contracts").await.to_string();
        listed.contains("/v1/contracts/crm.lead/2").then_some(())
    })
    .await;

    // A replica started later reads them from the bucket's history.
    let c = Gateway::start_with(config.clone(), &nats.url(), |_| {}).await;
    eventually("a late replica enforces crm.lead", Duration::from_secs(5), async || {
        let answer = c.publish(BITRIX, "orders.crm.lead", r#"{"phone":"1"}"#).send().await.unwrap();
        (answer.status() == 422).then_some(())
    })
    .await;
    // A configuration reload keeps them: a participant added to the file, then the contract
    // still enforced.
    let text = std::fs::read_to_string(&config).unwrap();
    let ops = token_sha256("ops-registry-token-01");
    crate::common::write_atomically(
        &config,
        format!("{text}\n[participants.ops]\ntokens = [{{ sha256 = \"{ops}\" }}]\nadmin = true\n"),
    );
    eventually("the reload applied", Duration::from_secs(5), async || {
        let answer = a.http.get(a.url("/v1/contracts")).bearer_auth("ops-registry-token-01").send().await.unwrap();
        (answer.status() == 200).then_some(())
    })
    .await;
    assert_eq!(a.publish(BITRIX, "orders.crm.lead", r#"{"phone":"1"}"#).send().await.unwrap().status(), 422);
    let listed = a.get_json("ops-registry-token-01", "/v1/contracts").await.to_string();
    assert!(listed.contains("/v1/contracts/crm.lead/2"), "{listed}");

    // Versions never change, and come one after another.
    let other = json!({"type":"object"});
    let (status, problem) = put(&b, BITRIX, "/v1/contracts/crm.lead/2", &other).await;
    assert_eq!((status, slug(&problem)), (409, "contract-conflict"), "{problem}");
    let (status, problem) = put(&b, BITRIX, "/v1/contracts/crm.lead/5", &v2).await;
    assert_eq!((status, slug(&problem)), (409, "contract-conflict"), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("v3"), "{problem}");

    // Files are authoritative, even for a granted name.
    let (status, problem) = put(&a, BITRIX, "/v1/contracts/sales-order/2", &other).await;
    assert_eq!((status, slug(&problem)), (409, "contract-conflict"), "{problem}");
    eprintln!("contract-conflict: {problem}");
    // Nor can a registration bind a subject a file contract governs.
    let (status, problem) = put(&a, BITRIX, "/v1/contracts/crm.order/1?subject=orders.created", &other).await;
    assert_eq!((status, slug(&problem)), (409, "contract-conflict"), "{problem}");

    // Only a granted name, only the registrant's own subjects.
    let (status, problem) = put(&a, NAV, "/v1/contracts/crm.x/1?subject=orders.crm.x", &other).await;
    assert_eq!((status, slug(&problem)), (403, "forbidden"), "{problem}");
    let (status, problem) = put(&a, BITRIX, "/v1/contracts/crm.x/1?subject=nav.x", &other).await;
    assert_eq!((status, slug(&problem)), (403, "forbidden"), "{problem}");
    let (status, problem) = put(&a, BITRIX, "/v1/contracts/crm.x/1", &other).await;
    assert_eq!((status, slug(&problem)), (400, "invalid-query"), "{problem}");

    // The body must be a schema.
    let (status, problem) =
        put(&a, BITRIX, "/v1/contracts/crm.x/1?subject=orders.crm.x", &json!({"type":"strin"})).await;
    assert_eq!((status, slug(&problem)), (422, "invalid-schema"), "{problem}");
    eprintln!("invalid-schema: {problem}");

    // Exported for the operators' repository: schema files and their bindings.
    let out = tempfile::tempdir().unwrap();
    let js = jetstream(&nats.url()).await;
    assert_eq!(magistral::registry::export(&js, out.path()).await.unwrap(), 2);
    let exported: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("crm.lead.v2.json")).unwrap()).unwrap();
    assert_eq!(exported, v2);
    assert!(out.path().join("crm.lead.v1.json").is_file());
    // The same through the command an operator runs, with the configuration's NATS.
    let cli_out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_magistral"))
        .args(["contracts", "export", cli_out.path().to_str().unwrap(), "--config", config.to_str().unwrap()])
        .env("MAGISTRAL_NATS__URL", nats.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("2 registered contract version(s) written"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(cli_out.path().join("registered.toml")).unwrap(),
        std::fs::read_to_string(out.path().join("registered.toml")).unwrap()
    );
    let bindings = std::fs::read_to_string(out.path().join("registered.toml")).unwrap();
    assert!(
        bindings.contains(
            "name = \"crm.lead\"\nversion = 2\nfile = \"crm.lead.v2.json\"\nsubjects = [\"orders.crm.lead\"]"
        ),
        "{bindings}"
    );
}
