//! The NATS connection: credentials, TLS, and a reconnect policy that keeps retrying
//! forever (a gateway without NATS answers 503, it does not exit).

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};

use crate::config::NatsConfig;

/// Why the connection could not even be attempted (bad URL, unreadable creds file).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("nats.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("nats.creds_file {path}: {source}")]
    Creds { path: String, source: std::io::Error },
    #[error("connecting to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connects to NATS. Returns at once even when the server is down: the client keeps
/// retrying in the background and the gateway reports not-ready meanwhile.
///
/// # Errors
/// A malformed URL or an unreadable credentials file.
pub async fn connect(cfg: &NatsConfig) -> Result<Client, ConnectError> {
    let addrs = cfg
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| ConnectError::Url { url: cfg.url.clone(), reason: e.to_string() }))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(ConnectError::Url { url: cfg.url.clone(), reason: "no server address".into() });
    }
    let mut options = ConnectOptions::new()
        .name("magistral")
        .connection_timeout(cfg.connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Retry quickly at first, then every 2 s: an outage should end in seconds, not in
        // the client's default multi-second backoff.
        .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(2_000)))
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    if let Some(user) = &cfg.user {
        let password = cfg.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(token) = &cfg.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(path) = &cfg.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Creds { path: path.display().to_string(), source })?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.tls_required {
        options = options.require_tls(true);
    }
    Ok(options.connect(addrs).await?)
}
