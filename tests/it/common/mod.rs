//! Shared helpers for the integration tests: real processes and fixtures, no mocks.
pub mod browser;
pub mod cluster;
pub mod gateway;
pub mod nats;
pub mod process;
pub mod receiver;

/// An HTTP client for talking to the gateway (installs the TLS provider reqwest needs).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// In a copy of the example: the `nav-orders` push subscription (NAV books sales orders)
/// delivers to `endpoint` instead of NAV, with a short ack wait and from the stream's start.
pub fn point_nav_orders_at(example_dir: &std::path::Path, endpoint: &str) {
    let toml = example_dir.join("magistral.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let original = "endpoint = \"http://127.0.0.1:7048/BC/api/v2.0/companies(demo)/salesOrders\"";
    assert!(text.contains(original), "the example's nav-orders endpoint moved");
    let text = text.replacen(original, &format!("endpoint = \"{endpoint}\""), 1).replacen(
        "max_in_flight = 8\n",
        "max_in_flight = 8\nack_wait = \"2s\"\nstart = \"all\"\n",
        1,
    );
    std::fs::write(toml, text).unwrap();
}

/// Replaces a file the way editors and Kubernetes do (a new file renamed over the old), so a
/// gateway polling it never reads it half written.
pub fn write_atomically(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Copies a folder tree (the example, into a temp dir a test may change).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Polls `check` every 50 ms until it yields a value, and returns it; fails the test with
/// `what` when nothing came `within`. Use it wherever a test waits for something to happen
/// instead of sleeping a fixed time.
pub async fn eventually<T>(what: &str, within: std::time::Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends a request and asserts the status of its answer.
#[allow(async_fn_in_trait)]
pub trait ExpectStatus {
    /// Sends, asserts the answer's status is `status` (printing the body when not), and
    /// returns the body as JSON (`Null` when empty or not JSON).
    async fn expect_status(self, status: u16) -> serde_json::Value;
}

impl ExpectStatus for reqwest::RequestBuilder {
    async fn expect_status(self, status: u16) -> serde_json::Value {
        assert_status(self.send().await.expect("the gateway answers"), status).await
    }
}

/// Asserts `response` has `status` (printing the body when not) and returns its body as JSON
/// (`Null` when empty or not JSON).
pub async fn assert_status(response: reqwest::Response, status: u16) -> serde_json::Value {
    let got = response.status().as_u16();
    let url = response.url().clone();
    let body = response.bytes().await.expect("read the answer");
    assert_eq!(got, status, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}
