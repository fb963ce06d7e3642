//! Directories, inbound routes, responders and subscriptions: each area resolves its own
//! items from configuration; their problems are collected here under the item's name.

use std::sync::Arc;

use super::problems::Problems;
use crate::config::Config;
use crate::delivery::subscription::Subscription;
use crate::directory::Directory;
use crate::import::ImportRoute;
use crate::inbound::InboundRoute;
use crate::request::Responder;
use crate::streams::StreamDef;

/// Directories (their buckets' streams can be subscribed to).
pub(super) fn directories(config: &Config, problems: &mut Problems) -> Vec<Directory> {
    config
        .directories
        .iter()
        .filter_map(|(name, cfg)| {
            problems.resolved(&format!("directories.{name}"), Directory::resolve(name, cfg, config))
        })
        .collect()
}

/// Inbound adapters.
pub(super) fn inbound_routes(config: &Config, problems: &mut Problems) -> Vec<InboundRoute> {
    config
        .inbound
        .iter()
        .filter_map(|(name, cfg)| {
            problems.resolved(&format!("inbound.{name}"), InboundRoute::resolve(name, cfg, config))
        })
        .collect()
}

/// Spreadsheet import routes.
pub(super) fn imports(config: &Config, problems: &mut Problems) -> Vec<ImportRoute> {
    config
        .imports
        .iter()
        .filter_map(|(name, cfg)| {
            problems.resolved(&format!("imports.{name}"), ImportRoute::resolve(name, cfg, config))
        })
        .collect()
}

/// Responders, each checked against its participant's `respond` patterns.
pub(super) fn responders(config: &Config, problems: &mut Problems) -> Vec<Arc<Responder>> {
    config
        .responders
        .iter()
        .filter_map(|(name, cfg)| {
            let permissions = config.participants.get(&cfg.participant).map(|p| p.respond.as_slice());
            problems.resolved(&format!("responders.{name}"), Responder::resolve(name, cfg, config, permissions))
        })
        .map(Arc::new)
        .collect()
}

/// Subscriptions over `streams` (declared, system and directory streams), each checked
/// against its participant's `subscribe` patterns.
pub(super) fn subscriptions(
    config: &Config,
    streams: &[StreamDef],
    contracts: &crate::contracts::Contracts,
    problems: &mut Problems,
) -> Vec<Arc<Subscription>> {
    config
        .subscriptions
        .iter()
        .filter_map(|(name, cfg)| {
            let permissions = config.participants.get(&cfg.participant).map(|p| p.subscribe.as_slice());
            problems.resolved(
                &format!("subscriptions.{name}"),
                Subscription::resolve(name, cfg, config, streams, permissions, contracts),
            )
        })
        .map(Arc::new)
        .collect()
}
