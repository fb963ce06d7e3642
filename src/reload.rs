//! Configuration reload without a restart: on SIGHUP, and whenever the config file or a
//! file in `streams/` or `contracts/` changes — seen at once by watching the folders
//! (inotify and its kin), with the `reload_interval` poll kept as a fallback for file
//! systems that send no events. Works with Kubernetes ConfigMap mounts, which swap a
//! `..data` symlink: the parent folders are watched and the watch is set up again after
//! every change, so it follows the new target. A bad new configuration is logged and
//! ignored: the gateway keeps serving the last good one.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
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
    let catalog = state.registry.install(&state.catalog, &catalog);
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
    // Registered contracts come and go through their bucket, not through files.
    let versions = catalog.contracts.iter().filter(|c| c.origin == crate::contracts::Origin::File);
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

/// How long to wait after a file event for the rest of the same save (an editor writes a
/// temporary file, renames it, sets attributes; `kubectl` swaps a whole folder).
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);

/// The folders whose entries decide the configuration: the config file's, `streams_dir`,
/// `contracts_dir`, the parents of the last two (a ConfigMap mounts them as symlinks into
/// `..data`), and the folders the symlinks currently lead to.
fn watched_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(source) = &config.source {
        dirs.push(config.base_dir());
        if let Some(parent) = std::fs::canonicalize(source).ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
            dirs.push(parent);
        }
    }
    for dir in [config.resolve(&config.streams_dir), config.resolve(&config.contracts_dir)] {
        if let Some(parent) = dir.parent() {
            dirs.push(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() });
        }
        if let Ok(real) = std::fs::canonicalize(&dir) {
            dirs.push(real);
        }
        dirs.push(dir);
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A file-system watch over [`watched_dirs`]; each relevant event wakes the reload loop.
struct FileWatch {
    /// Kept alive for its events; dropped to stop them.
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
}

impl FileWatch {
    /// `None` when the platform offers no watch (the poll still works); folders that do
    /// not exist yet are skipped, a later change to their parent sets the watch up again.
    fn start(config: &Config) -> Option<Self> {
        // One slot: a wake-up pending is all the loop needs, however many events came.
        let (tx, events) = mpsc::channel(1);
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|e| match e.kind {
                // Reads (ours included) change nothing; a file closed after writing does.
                EventKind::Access(kind) => matches!(kind, AccessKind::Close(AccessMode::Write)),
                _ => true,
            });
            if relevant {
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!(%err, "cannot watch configuration files; relying on the reload_interval poll");
                return None;
            }
        };
        for dir in watched_dirs(config) {
            if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::debug!(%err, dir = %dir.display(), "not watched");
            }
        }
        Some(Self { _watcher: watcher, events })
    }
}

/// Watches for changes until shutdown.
pub(crate) async fn watch(state: Runtime, mut config: Config, shutdown: CancellationToken) {
    let path = config.source.clone();
    let mut last = fingerprint(&config);
    let interval = config.reload_interval;
    let mut files = FileWatch::start(&config);
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
        let event = async {
            let woken = match files.as_mut() {
                Some(f) => f.events.recv().await.is_some(),
                None => false,
            };
            if !woken {
                std::future::pending::<()>().await;
            }
        };
        let (forced, watched) = tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangup => (true, false),
            () = tick => (false, false),
            () = event => (false, true),
        };
        if watched {
            tokio::time::sleep(DEBOUNCE).await;
            if let Some(f) = files.as_mut() {
                while f.events.try_recv().is_ok() {}
            }
        }
        let current = Config::load(path.as_deref()).map(|c| fingerprint(&c)).unwrap_or(0);
        if watched {
            // A swapped symlink or a folder created since: watch what the paths lead to now.
            files = FileWatch::start(&config);
        }
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
            Ok(new) => {
                config = new;
                files = FileWatch::start(&config);
            }
            Err(err) => {
                metrics::counter!(crate::telemetry::catalogue::CONFIG_RELOADS_TOTAL, "outcome" => "refused")
                    .increment(1);
                tracing::error!(%err, "new configuration refused; still serving the previous one");
            }
        }
    }
}
