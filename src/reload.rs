//! Configuration reload without a restart: on SIGHUP, and whenever the config file or a
//! file in `streams/` or `contracts/` changes (polled; works with Kubernetes ConfigMap
//! mounts, which swap symlinks). A bad new configuration is logged and ignored: the
//! gateway keeps serving the last good one.

use std::collections::BTreeMap;
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
/// brings deliveries in line. Returns the new configuration.
///
/// # Errors
/// The new configuration's problems; nothing was changed.
pub(crate) async fn reload(state: &Runtime, previous: &Config, path: Option<&Path>) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    let catalog = Catalog::load(&config)?;
    let catalog = Arc::new(catalog);
    let changes = changes(previous, &state.catalog.load(), &config, &catalog);
    // Streams and consumers first, then the catalog requests see: once a change is visible,
    // everything it needs exists.
    crate::reconcile_all(state, &catalog).await;
    state.deliveries.apply(&catalog).await;
    state.responders.apply(&catalog);
    state.catalog.store(catalog.clone());
    crate::telemetry::catalogue::register(&catalog);
    metrics::counter!(crate::telemetry::catalogue::CONFIG_RELOADS_TOTAL, "outcome" => "applied").increment(1);
    if changes.is_empty() {
        tracing::info!("configuration reloaded; nothing that matters changed");
    } else {
        tracing::info!(changes = %changes.join(", "), "configuration reloaded");
    }
    Ok(config)
}

/// What a reload changes, by kind and name: `+participant crm`, `~subscription nav-orders`,
/// `-stream OLD`. Settings outside these (limits, log) show as `~settings`.
fn changes(old_config: &Config, old: &Catalog, new_config: &Config, new: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    diff("participant", &debug_forms(&old_config.participants), &debug_forms(&new_config.participants), &mut out);
    diff("subscription", &debug_forms(&old_config.subscriptions), &debug_forms(&new_config.subscriptions), &mut out);
    diff("responder", &debug_forms(&old_config.responders), &debug_forms(&new_config.responders), &mut out);
    diff("directory", &debug_forms(&old_config.directories), &debug_forms(&new_config.directories), &mut out);
    diff("inbound", &debug_forms(&old_config.inbound), &debug_forms(&new_config.inbound), &mut out);
    diff("stream", &streams(old), &streams(new), &mut out);
    diff("contract", &contracts(old), &contracts(new), &mut out);
    let settings = |c: &Config| format!("{:?}{:?}{:?}{:?}{:?}", c.limits, c.log, c.system, c.nats, c.contracts);
    if settings(old_config) != settings(new_config) {
        out.push("~settings".to_owned());
    }
    out
}

/// Each named item in a form that changes when it does (secrets are redacted in it, so a
/// rotated token file's path shows, its content does not).
fn debug_forms<T: std::fmt::Debug>(items: &BTreeMap<String, T>) -> BTreeMap<String, String> {
    items.iter().map(|(name, item)| (name.clone(), format!("{item:?}"))).collect()
}

fn streams(catalog: &Catalog) -> BTreeMap<String, String> {
    let declared = catalog.streams.iter().filter(|s| !s.bucket);
    declared.map(|s| (s.config.name.clone(), serde_json::Value::Object(s.declared.clone()).to_string())).collect()
}

fn contracts(catalog: &Catalog) -> BTreeMap<String, String> {
    let versions = catalog.contracts.iter();
    versions
        .map(|c| (format!("{}@{}", c.name, c.version), format!("{}{:?}{:?}", c.schema, c.subjects, c.replies)))
        .collect()
}

fn diff(kind: &str, old: &BTreeMap<String, String>, new: &BTreeMap<String, String>, out: &mut Vec<String>) {
    for (name, form) in new {
        match old.get(name) {
            None => out.push(format!("+{kind} {name}")),
            Some(previous) if previous != form => out.push(format!("~{kind} {name}")),
            Some(_) => {}
        }
    }
    out.extend(old.keys().filter(|name| !new.contains_key(*name)).map(|name| format!("-{kind} {name}")));
}

/// How long a changed configuration must stay the same before it is applied.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Watches for changes until shutdown.
pub(crate) async fn watch(state: Runtime, mut config: Config, shutdown: CancellationToken) {
    let path = config.source.clone();
    let mut last = fingerprint(&config);
    let interval = config.reload_interval;
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
        // A file being saved in place may be read half written (and a truncated participant
        // list is still valid TOML): apply only what reads the same twice in a row.
        tokio::time::sleep(SETTLE).await;
        if Config::load(path.as_deref()).map(|c| fingerprint(&c)).unwrap_or(0) != current {
            continue;
        }
        last = current;
        match reload(&state, &config, path.as_deref()).await {
            Ok(new) => config = new,
            Err(err) => {
                metrics::counter!(crate::telemetry::catalogue::CONFIG_RELOADS_TOTAL, "outcome" => "refused")
                    .increment(1);
                tracing::error!(%err, "new configuration refused; still serving the previous one");
            }
        }
    }
}
