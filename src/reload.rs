//! Configuration reload without a restart: on SIGHUP, and whenever the config file or a
//! file in `streams/` or `contracts/` changes (polled; works with Kubernetes ConfigMap
//! mounts, which swap symlinks). A bad new configuration is logged and ignored: the
//! gateway keeps serving the last good one.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{Config, ConfigError};
use crate::runtime::Runtime;

/// A hash of everything configuration is read from.
fn fingerprint(config: &Config) -> u64 {
    let mut hasher = DefaultHasher::new();
    let mut files: Vec<PathBuf> = config.source.iter().cloned().collect();
    for dir in [config.resolve(&config.streams_dir), config.resolve(&config.contracts_dir)] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    files.sort();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// Loads the configuration again and, when valid, swaps it in, reconciles streams and
/// brings deliveries in line.
///
/// # Errors
/// The new configuration's problems; nothing was changed.
pub(crate) async fn reload(state: &Runtime, path: Option<&Path>) -> Result<(), ConfigError> {
    let config = Config::load(path)?;
    let catalog = Catalog::load(&config)?;
    let catalog = Arc::new(catalog);
    // Streams and consumers first, then the catalog requests see: once a change is visible,
    // everything it needs exists.
    crate::reconcile_all(state, &catalog).await;
    state.deliveries.apply(&catalog).await;
    state.responders.apply(&catalog);
    state.catalog.store(catalog.clone());
    crate::telemetry::catalogue::register(&catalog);
    metrics::counter!(crate::telemetry::catalogue::CONFIG_RELOADS_TOTAL, "outcome" => "applied").increment(1);
    tracing::info!("configuration reloaded");
    Ok(())
}

/// Watches for changes until shutdown.
pub(crate) async fn watch(state: Runtime, initial: Config, shutdown: CancellationToken) {
    let path = initial.source.clone();
    let mut last = fingerprint(&initial);
    let interval = initial.reload_interval;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let tick = async {
            if interval.is_zero() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(interval).await;
            }
        };
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangup => true,
            () = tick => false,
        };
        let current = Config::load(path.as_deref()).map(|c| fingerprint(&c)).unwrap_or(0);
        if !forced && current == last {
            continue;
        }
        last = current;
        if let Err(err) = reload(&state, path.as_deref()).await {
            metrics::counter!(crate::telemetry::catalogue::CONFIG_RELOADS_TOTAL, "outcome" => "refused").increment(1);
            tracing::error!(%err, "new configuration refused; still serving the previous one");
        }
    }
}
