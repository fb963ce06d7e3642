//! Subscribers pinned to a contract version: a v2 message is converted to v1 by the
//! subscription's `down_conversion` and checked against v1 before delivery; a conversion the
//! pinned version refuses is a dead letter of its own class; without a conversion, a pin a
//! newer version breaks is refused by the configuration check.

use std::time::Duration;

use magistral::catalog::Catalog;
use magistral::config::Config;
use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, token_sha256};
use crate::common::nats::NatsServer;
use crate::common::receiver::Receiver;

/// `lead` v1 (`name`) and v2 (`first_name`, `last_name`) on `orders.lead`; nav's
/// subscription, pinned to v1 with `extra` as the rest of its table.
fn bus(endpoint: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = crate::common::gateway::orders_bus_dir();
    let v1 = json!({"type":"object","required":["id","name"],"additionalProperties":false,
        "properties":{"id":{"type":"string"},"name":{"type":"string","minLength":1}}});
    let v2 = json!({"type":"object","required":["id","first_name","last_name"],"additionalProperties":false,
        "properties":{"id":{"type":"string"},"first_name":{"type":"string"},"last_name":{"type":"string"}}});
    std::fs::write(dir.path().join("contracts/lead.v1.json"), v1.to_string()).unwrap();
    std::fs::write(dir.path().join("contracts/lead.v2.json"), v2.to_string()).unwrap();
    let hash = token_sha256;
    let config = dir.path().join("magistral.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"

[[contracts]]
name = "lead"
version = 1
file = "lead.v1.json"
subjects = ["orders.lead"]

[[contracts]]
name = "lead"
version = 2
file = "lead.v2.json"
subjects = ["orders.lead"]
compatibility = "none"

[participants.bitrix]
tokens = [{{ sha256 = "{}" }}]
publish = ["orders.>"]

[participants.nav]
tokens = [{{ sha256 = "{}" }}]
subscribe = ["orders.>"]

[subscriptions.nav-leads]
participant = "nav"
subjects = ["orders.lead"]
endpoint = "{endpoint}"
retry_schedule = ["100ms"]
contract_version = 1
{extra}
"#,
            hash(BITRIX),
            hash(NAV)
        ),
    )
    .unwrap();
    (dir, config)
}

#[tokio::test]
async fn a_pinned_subscriber_receives_a_v2_message_converted_to_v1() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let (_dir, config) = bus(
        &receiver.url(),
        r#"down_conversion = '{id, name: ([.first_name, .last_name] | map(select(. != "")) | join(" "))}'"#,
    );
    let gw = Gateway::start_with(config, &nats.url(), |_| {}).await;

    // Published under v2 (the newest, stamped as its ce-dataschema), delivered as v1.
    let answer = gw.publish(BITRIX, "orders.lead", r#"{"id":"L-1","first_name":"Anna","last_name":"Petrova"}"#);
    assert_eq!(answer.send().await.unwrap().status(), 202);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body, json!({"id":"L-1","name":"Anna Petrova"}));

    // A v1 message is delivered as published.
    let v1 = gw
        .publish(BITRIX, "orders.lead", r#"{"id":"L-2","name":"Ivan"}"#)
        .header("ce-dataschema", "urn:magistral:contract:lead:v1");
    assert_eq!(v1.send().await.unwrap().status(), 202);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].body.as_ref(), br#"{"id":"L-2","name":"Ivan"}"#);

    // A v2 message whose conversion v1 refuses (an empty name) is never sent: a dead letter.
    let empty = gw.publish(BITRIX, "orders.lead", r#"{"id":"L-3","first_name":"","last_name":""}"#);
    assert_eq!(empty.send().await.unwrap().status(), 202);
    let dead = eventually("the refused conversion dead-lettered", Duration::from_secs(10), async || {
        let list = gw.get_json(NAV, "/v1/subscriptions/nav-leads/dead-letters").await;
        (list["total"] == 1).then(|| list["dead_letters"][0].clone())
    })
    .await;
    assert_eq!(dead["class"], "conversion-invalid", "{dead}");
    assert_eq!(dead["attempts"], 1, "{dead}");
    eprintln!("dead letter: {dead}");
    assert_eq!(receiver.received().len(), 2);
}

#[test]
fn without_a_conversion_check_refuses_a_pin_that_a_newer_version_breaks() {
    let (_dir, path) = bus("http://127.0.0.1:9/hook", "");
    let config = Config::load(Some(&path)).unwrap();
    let err = Catalog::load(&config).unwrap_err().to_string();
    assert!(err.contains("subscriptions.nav-leads.contract_version"), "{err}");
    assert!(err.contains("pinned to lead v1, but v2 breaks its consumers"), "{err}");
    assert!(err.contains("declare a down_conversion"), "{err}");
    eprintln!("{err}");

    // A conversion makes the same pin acceptable.
    let (_dir, path) = bus("http://127.0.0.1:9/hook", r#"down_conversion = "{id, name: .first_name}""#);
    let config = Config::load(Some(&path)).unwrap();
    Catalog::load(&config).expect("a pin with a down_conversion loads");
}
