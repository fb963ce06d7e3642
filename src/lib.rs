//! magistral — an integration bus: a stateless HTTP/JSON gateway over NATS JetStream.
//!
//! # Layout (mirrors the data paths)
//! - [`config`]: settings from defaults, `magistral.toml` and `MAGISTRAL_*` variables.
//! - [`catalog`]: participants, contracts and streams built from the settings and checked
//!   as a whole (`magistral check`).
//! - [`participants`]: bearer token → participant; permissions.
//! - [`subject`]: subject rules and wildcard matching.
//! - `contracts`: JSON Schema contracts bound to subjects; [`compat`]: the breaking-change
//!   check between two versions (`magistral check`, `magistral contracts diff`); [`registry`]:
//!   contracts participants register over the API, kept in a KV bucket every replica watches.
//! - [`streams`]: stream files and reconciling them with the server (`magistral apply`).
//! - [`charset`]: legacy charsets (windows-1251, KOI8-R, …) decoded at the edge, re-encoded
//!   for subscriptions that ask.
//! - [`publish`]: the publish path, from checked bytes to PubAck; CloudEvents headers.
//! - [`delivery`]: push subscriptions: consumers, HTTP attempts, retries, dead letters.
//! - [`request`]: request/reply and participants' HTTP responders (NATS micro services).
//! - `directory`: reference books in JetStream KV.
//! - [`export`]: pull subscriptions fetched as XLSX/CSV, acked on confirmation.
//! - [`import`]: CSV/XLSX files (and ZIPs of them) posted as rows of messages, with a report.
//! - [`inbound`]: adapters for what Bitrix24, Business Central and plain-JSON systems send.
//! - `transform`: jq programs (jaq) reshaping JSON for a system.
//! - [`tracking`]: "where is my message?"
//! - [`describe`]: what a participant is told about the bus: its contracts (with who publishes
//!   and receives each subject), the schemas as served, the AsyncAPI 3.0 document.
//! - `reload`: configuration changes picked up without a restart.
//! - [`problem`]: the one catalogue of refusals and failures; `error`: the `Error<Kind>`
//!   shape of each area's typed error; `runtime`: what reconciling and reloading work on.
//! - [`http`]: the edge — extractors in (`Caller`, `JsonBody`, `SubjectPath`), handlers that
//!   parse, call the domain and answer, and the one conversion of errors to RFC 9457 problems.
//!   Nothing outside `http` imports it (docs/architecture.md has the rules).
//! - [`nats`]: the NATS connection; [`telemetry`]: logs, metrics and traces; [`dev`]: `magistral dev`.
//! - [`client`]: the `magistral` client commands (publish, where, tail, subs, dead-letters,
//!   pause, resume) over the HTTP API.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod catalog;
pub mod charset;
pub mod client;
pub mod config;
pub(crate) mod contracts;
/// The breaking-change check between contract versions (`magistral check`, `magistral contracts diff`).
pub use contracts::compat;
/// Contracts registered over the API, kept in NATS (`magistral contracts export`).
pub use contracts::registry;
pub mod delivery;
pub mod describe;
pub mod dev;
pub(crate) mod directory;
pub(crate) mod error;
pub mod export;
pub mod http;
pub mod import;
pub mod inbound;
pub mod nats;
pub mod participants;
pub mod problem;
pub mod publish;
pub(crate) mod reload;
pub mod request;
pub(crate) mod runtime;
pub mod streams;
pub mod subject;
pub mod telemetry;
pub mod tracking;
pub(crate) mod transform;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use catalog::Catalog;
use config::Config;
use http::AppState;
use publish::Publisher;
use runtime::{Health, Runtime};

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Nats(#[from] nats::ConnectError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("delivery engine: {0}")]
    Delivery(String),
}

/// Runs the gateway until `shutdown` is cancelled, then drains: readiness goes false, new
/// connections are refused, in-flight requests finish (bounded by `limits.drain_timeout`),
/// and the NATS connection drains.
///
/// Streams are reconciled in the background (retrying while NATS is unreachable); the
/// gateway is ready once that has succeeded.
///
/// # Errors
/// An unusable NATS URL or credentials file, or the listener failing.
pub async fn run(
    config: Config,
    catalog: Catalog,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let client = nats::connect(&config.nats).await?;
    let limits = Arc::new(config.limits.clone());
    let mut publisher = Publisher::new(client.clone(), &limits);
    publisher.tracking = config.system.tracking;
    let tasks = TaskTracker::new();
    let mut engine = delivery::Engine::new(publisher.jetstream().clone(), config.system.replicas)
        .map_err(|e| RunError::Delivery(e.to_string()))?;
    engine.tracking = config.system.tracking;
    let http_client = engine.http.clone();
    let deliveries = Arc::new(delivery::Deliveries::new(Arc::new(engine), tasks.clone(), shutdown.clone()));
    let state = AppState::new(http::Shared {
        catalog: Arc::new(ArcSwap::from_pointee(catalog)),
        limits: limits.clone(),
        publisher: publisher.clone(),
        client: client.clone(),
        health: Arc::new(Health::default()),
        metrics: telemetry::metrics_handle(),
        deliveries,
        responders: Arc::new(request::Responders::new(
            client.clone(),
            http_client.clone(),
            tasks.clone(),
            shutdown.clone(),
        )),
        stores: Arc::new(directory::Stores::default()),
        sse_streams: Arc::new(http::events::StreamCounts::default()),
        admission: Arc::new(http::admission::Admission::new(&limits)),
        shutdown: shutdown.clone(),
        registry: Arc::new(contracts::registry::Registry::new(config.system.replicas)),
        console: Arc::new(http::console::Console::new(&config.console)),
    });
    // Every configured participant's and subscription's series exist at zero from the start.
    telemetry::catalogue::register(&state.catalog.load());
    tasks.spawn(start_when_reconciled(state.runtime(), config.clone(), shutdown.clone()));

    let app = http::router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "magistral listening");
    let server = serve(listener, app, &limits, state.health.clone(), shutdown.clone());
    let drain_timeout = limits.drain_timeout;
    let bounded_drain = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        () = server => {}
        () = bounded_drain => tracing::warn!("drain timeout reached; closing with requests in flight"),
    }
    tasks.close();
    tasks.wait().await;
    // The last deliveries' acks (and NAKs) may still sit in the client's write buffer, and
    // drain closes the connection without writing them: a lost ack holds an ordered
    // subscription's next message, and a key-ordered one's takeover, for a whole ack_wait.
    if let Err(err) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(%err, "NATS flush did not finish");
    }
    if let Err(err) = tokio::time::timeout(Duration::from_secs(5), client.drain()).await {
        tracing::warn!(%err, "NATS drain did not finish");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves HTTP/1.1 until `shutdown`, then stops accepting, lets every connection finish its
/// request in flight (idle ones close at once) and returns when all are closed.
///
/// Each connection holds a permit of `limits.max_connections`; past it the loop stops
/// accepting, so further clients wait in the kernel's backlog instead of taking memory.
/// A client has `limits.header_read_timeout` to send a request's line and headers (a
/// slow-loris connection is closed after it); bodies are bounded by [`http::admission`].
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: &config::Limits,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Some(limits.header_read_timeout).filter(|d| !d.is_zero()));
    let service = TowerToHyperService::new(app);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "connection closed with an error");
            }
        });
    }
    drop(listener);
    health.set_shutting_down();
    tracing::info!("shutting down: refusing new connections, finishing in-flight requests");
    connections.close();
    connections.wait().await;
}

/// A failed `accept`: a client that went away is nothing; anything else (out of file
/// descriptors) is logged and waited out briefly rather than spinning.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(err.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused) {
        return;
    }
    tracing::error!(%err, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Reconciles streams (retrying while NATS is unreachable), then starts deliveries and
/// the configuration watcher.
async fn start_when_reconciled(state: Runtime, config: Config, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        let catalog = state.catalog.load_full();
        if reconcile_all(&state, &catalog).await {
            state.deliveries.apply(&catalog).await;
            state.responders.apply(&catalog);
            state.health.set_streams_reconciled();
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    let registry = state.registry.clone();
    let js = state.publisher.jetstream().clone();
    tokio::join!(
        registry.watch(js, state.catalog.clone(), shutdown.clone()),
        reload::watch(state, config, shutdown.clone())
    );
}

/// Creates or updates every stream of the catalog (never deletes); true when all succeeded.
pub async fn reconcile_all(state: &Runtime, catalog: &Catalog) -> bool {
    let mut ok = true;
    for directory in &catalog.directories {
        if let Err(err) = directory.ensure(state.publisher.jetstream()).await {
            tracing::warn!(%err, "directory bucket not ready; will retry");
            ok = false;
        }
    }
    if state.publisher.tracking {
        // The index lives as long as the longest-lived declared stream keeps messages.
        let declared = catalog.streams.iter().filter(|s| s.file.extension().is_some_and(|e| e == "json"));
        let ages: Vec<Duration> = declared.map(|s| s.config.max_age).collect();
        let max_age = if ages.iter().any(Duration::is_zero) {
            Duration::ZERO
        } else {
            ages.into_iter().max().unwrap_or_default()
        };
        if let Err(err) =
            tracking::ensure(state.publisher.jetstream(), max_age, state.deliveries.engine.system_replicas()).await
        {
            tracing::warn!(%err, "tracking bucket not ready; will retry");
            ok = false;
        }
    }
    for def in catalog.streams.iter().filter(|s| !s.bucket) {
        match streams::reconcile(state.publisher.jetstream(), def, false).await {
            Ok(streams::StreamChange::Unchanged { name }) => tracing::debug!(stream = %name, "stream unchanged"),
            Ok(streams::StreamChange::Create { name }) => tracing::info!(stream = %name, "stream created"),
            Ok(streams::StreamChange::Update { name, fields }) => {
                let changes: Vec<String> =
                    fields.iter().map(|c| format!("{}: {} -> {}", c.field, c.server, c.declared)).collect();
                tracing::info!(stream = %name, changes = %changes.join("; "), "stream updated");
            }
            Err(err) => {
                tracing::warn!(%err, "stream reconcile failed; will retry");
                ok = false;
            }
        }
    }
    ok
}
