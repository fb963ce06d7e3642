//! Shared helpers for the integration tests: real processes and fixtures, no mocks.
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
