//! A gateway running in the test process (`magistral::run`) against a real nats-server,
//! driven over real HTTP like a participant would.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use magistral::catalog::Catalog;
use magistral::config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const BITRIX: &str = "bitrix-test-token-0001";
pub const NAV: &str = "nav-test-token-00001";

/// `tests/configs/<name>/magistral.toml`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs").join(name).join("magistral.toml")
}

/// A file of the bus configuration at the repository root (the wine-retail example's).
pub fn example(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// What the root configuration is made of: its file and the folders it names.
pub const EXAMPLE_PARTS: [&str; 6] = ["magistral.toml", "streams", "contracts", "transforms", "secrets", "samples"];

/// Copies the root configuration (not the rest of the repository) into `to`.
pub fn copy_example(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for part in EXAMPLE_PARTS {
        let from = example(part);
        if from.is_dir() {
            crate::common::copy_dir(&from, &to.join(part));
        } else {
            std::fs::copy(&from, to.join(part)).unwrap();
        }
    }
}

/// A fresh configuration folder: `streams/ORDERS.json` from the basic scenario and an empty
/// `contracts/`, for tests that write their own `magistral.toml` and contracts.
pub fn orders_bus_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("streams")).unwrap();
    std::fs::create_dir(dir.path().join("contracts")).unwrap();
    let basic = scenario("basic");
    std::fs::copy(basic.parent().unwrap().join("streams/ORDERS.json"), dir.path().join("streams/ORDERS.json")).unwrap();
    dir
}

/// The `sha256` a participant's `tokens` entry stores for `token`.
pub fn token_sha256(token: impl AsRef<[u8]>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_ref()))
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), magistral::RunError>>>,
}

impl Gateway {
    /// Starts the `basic` scenario against `nats_url` and waits until it is ready.
    pub async fn start(nats_url: &str) -> Gateway {
        Self::start_with(scenario("basic"), nats_url, |_| {}).await
    }

    /// Starts a scenario, letting the test adjust the loaded config first.
    pub async fn start_with(path: PathBuf, nats_url: &str, adjust: impl FnOnce(&mut Config)) -> Gateway {
        Self::start_at("127.0.0.1:0".parse().unwrap(), path, nats_url, adjust).await
    }

    /// Starts a scenario on a given address (a restart on the same address, as a client sees
    /// a rolling restart).
    pub async fn start_at(
        addr: SocketAddr,
        path: PathBuf,
        nats_url: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> Gateway {
        let mut config = Config::load(Some(&path)).expect("scenario config loads");
        config.nats.url = nats_url.to_owned();
        adjust(&mut config);
        let catalog = Catalog::load(&config).expect("scenario catalog loads");
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(magistral::run(config, catalog, listener, shutdown.clone()));
        let gateway = Gateway { addr, http: crate::common::http_client(), shutdown, handle: Some(handle) };
        gateway.wait_ready(Duration::from_secs(10)).await;
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Polls `/readyz` until 200.
    pub async fn wait_ready(&self, within: Duration) {
        crate::common::eventually("gateway ready", within, async || {
            self.http.get(self.url("/readyz")).send().await.is_ok_and(|r| r.status() == 200).then_some(())
        })
        .await;
    }

    /// `POST /v1/publish/{subject}` as `token` with a JSON body.
    pub fn publish(&self, token: &str, subject: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        self.publish_as(token, subject, "application/json", body)
    }

    /// `POST /v1/publish/{subject}` with a given content type.
    pub fn publish_as(
        &self,
        token: &str,
        subject: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/v1/publish/{subject}")))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
    }

    /// Stops the gateway and waits for it to finish draining.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("gateway task").expect("gateway run");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A JetStream context on its own connection, for looking at what was stored.
pub async fn jetstream(nats_url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats_url).await.expect("connect to test nats"))
}

/// Messages currently in a stream.
pub async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.expect("stream exists").info().await.expect("stream info").state.messages
}

/// The problem `type` slug of a problem+json response body.
pub fn slug(body: &serde_json::Value) -> &str {
    body["type"].as_str().unwrap_or_default().trim_start_matches("urn:magistral:problem:")
}

pub const OPS: &str = "ops-test-token-000001";

/// A push subscription config for tests: quick retries, breaker out of the way unless asked.
pub fn subscription(
    participant: &str,
    subjects: &[&str],
    endpoint: &str,
    extra: serde_json::Value,
) -> magistral::config::SubscriptionConfig {
    let mut value = serde_json::json!({
        "participant": participant,
        "subjects": subjects,
        "endpoint": endpoint,
        "retry_schedule": ["100ms", "200ms", "400ms"],
        "breaker_failures": 1000,
        "timeout": "5s",
    });
    if let (Some(base), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
        base.extend(extra);
    }
    serde_json::from_value(value).expect("test subscription config")
}

impl Gateway {
    /// The basic scenario plus the given subscriptions.
    pub async fn with_subscriptions(
        nats_url: &str,
        subs: Vec<(&str, magistral::config::SubscriptionConfig)>,
    ) -> Gateway {
        Self::start_with(scenario("basic"), nats_url, move |c| {
            for (name, sub) in subs {
                c.subscriptions.insert(name.to_owned(), sub);
            }
        })
        .await
    }

    /// `GET` a JSON resource as `token`.
    pub async fn get_json(&self, token: &str, path: &str) -> serde_json::Value {
        let r = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// `POST` JSON as `token`; returns status and body.
    pub async fn post_json(&self, token: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(self.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}
