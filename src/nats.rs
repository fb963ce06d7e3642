//! The NATS connection: credentials, TLS, and a reconnect policy that keeps retrying
//! forever (a gateway without NATS answers 503, it does not exit).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
        .event_callback({
            let log = Arc::new(ConnectionLog::default());
            move |event| {
                log.event(&event);
                async {}
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

/// How long an outage goes on before the log says again that NATS is still unreachable.
const STILL_DOWN_REMINDER: Duration = Duration::from_secs(60);

/// Turns the client's connection events into what an operator needs: one line when the
/// connection is lost, one when it is back (with the reconnect attempts and the time it was
/// down), a reminder each minute in between; not a line per reconnect attempt.
#[derive(Default)]
struct ConnectionLog {
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    ever_connected: bool,
    /// Since when the connection has been down (or, before the first connect, since when
    /// the first attempt failed).
    down_since: Option<Instant>,
    attempts: u64,
    last_error: Option<String>,
    last_said: Option<Instant>,
}

impl ConnectionLog {
    fn event(&self, event: &Event) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match event {
            Event::Connected => {
                let down_for = link.down_since.map(|since| humantime::format_duration(round(now - since)).to_string());
                let last_error = link.last_error.take().unwrap_or_default();
                match (link.ever_connected, down_for) {
                    (true, Some(down_for)) => tracing::info!(
                        reconnect_attempts = link.attempts,
                        %down_for,
                        %last_error,
                        "NATS connection restored"
                    ),
                    (false, Some(down_for)) => tracing::info!(
                        connect_attempts = link.attempts,
                        waited = %down_for,
                        %last_error,
                        "connected to NATS"
                    ),
                    _ => tracing::info!("connected to NATS"),
                }
                *link = Link { ever_connected: true, ..Link::default() };
            }
            Event::Disconnected => {
                if link.down_since.is_none() {
                    tracing::warn!(
                        "NATS connection lost; reconnecting in the background (publishes answer 503 meanwhile)"
                    );
                    link.down_since = Some(now);
                    link.last_said = Some(now);
                    link.attempts = 0;
                }
            }
            Event::ClientError(err) if link.down_since.is_some() || !link.ever_connected => {
                link.attempts += 1;
                link.last_error = Some(err.to_string());
                let since = *link.down_since.get_or_insert(now);
                let said = link.last_said.is_some_and(|at| now - at < STILL_DOWN_REMINDER);
                if !said {
                    let down_for = humantime::format_duration(round(now - since)).to_string();
                    if link.ever_connected {
                        tracing::warn!(reconnect_attempts = link.attempts, %down_for, error = %err, "NATS still unreachable");
                    } else {
                        tracing::warn!(
                            connect_attempts = link.attempts,
                            %down_for,
                            error = %err,
                            "NATS not reachable; retrying in the background (not ready meanwhile)"
                        );
                    }
                    link.last_said = Some(now);
                } else {
                    tracing::debug!(attempt = link.attempts, error = %err, "NATS reconnect attempt failed");
                }
            }
            Event::ClientError(err) => tracing::warn!(error = %err, "NATS client error"),
            Event::ServerError(err) => tracing::warn!(error = %err, "NATS server error"),
            Event::LameDuckMode => {
                tracing::warn!(
                    "the NATS server is shutting down (lame duck mode); the client will move to another server"
                );
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "NATS slow consumer: messages were dropped for a subscription")
            }
            Event::Draining => tracing::info!("NATS connection draining"),
            Event::Closed => tracing::info!("NATS connection closed"),
        }
    }
}

/// Whole milliseconds: `1s 204ms`, not nanoseconds.
fn round(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
