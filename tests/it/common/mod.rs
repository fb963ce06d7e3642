//! Shared helpers for the integration tests: real processes and fixtures, no mocks.
pub mod cluster;
pub mod gateway;
pub mod nats;
pub mod receiver;

/// An HTTP client for talking to the gateway (installs the TLS provider reqwest needs).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
