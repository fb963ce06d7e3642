//! The catalog: participants, contracts and streams built from configuration, checked as a
//! whole (`magistral check`), and consulted on every request.

mod bindings;
mod contracts;
mod participants;
mod problems;
mod streams;

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::contracts::Contracts;
use crate::delivery::subscription::Subscription;
use crate::delivery::system;
use crate::directory::Directory;
use crate::import::ImportRoute;
use crate::inbound::InboundRoute;
use crate::participants::Participants;
use crate::request::Responder;
use crate::streams::StreamDef;
use problems::Problems;

/// Everything loaded from configuration that requests consult.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub participants: Participants,
    pub contracts: Contracts,
    /// Declared streams, then the gateway's system streams.
    pub streams: Vec<StreamDef>,
    pub subscriptions: Vec<Arc<Subscription>>,
    pub responders: Vec<Arc<Responder>>,
    pub directories: Vec<Directory>,
    pub inbound: Vec<InboundRoute>,
    /// Spreadsheet import routes (`POST /v1/import/<name>`).
    pub imports: Vec<ImportRoute>,
    pub require_contract: bool,
    /// The NATS servers of `nats.url`, for the AsyncAPI document's `servers`.
    pub nats_servers: Vec<crate::describe::asyncapi::NatsServer>,
}

impl Catalog {
    /// Loads and cross-checks participants, stream files and contract files.
    ///
    /// Every problem is collected before returning, so one run of `magistral check` lists
    /// all of them.
    ///
    /// # Errors
    /// Each problem names its file and field.
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        // The order of the steps is the order `magistral check` lists problems in.
        let mut problems = Problems::new(config.source.clone());
        let participants = participants::participants(config, &mut problems);
        let mut streams = streams::declared(config, &mut problems);
        participants::check_requests_publishable(config, &streams, &mut problems);
        let contracts = Contracts::new(contracts::contracts(config, &streams, &mut problems));
        let directories = bindings::directories(config, &mut problems);
        let inbound = bindings::inbound_routes(config, &mut problems);
        let imports = bindings::imports(config, &mut problems);
        let responders = bindings::responders(config, &mut problems);
        // Subscriptions, over the declared, system and directory streams.
        let declared = streams.len();
        streams.extend(system::streams(&config.system));
        streams.extend(directories.iter().map(Directory::stream));
        let subscriptions = bindings::subscriptions(config, &streams, &contracts, &mut problems);
        streams::check_reserved(&streams[..declared], &mut problems);
        problems.finish(|| Self {
            subscriptions,
            responders,
            directories,
            inbound,
            imports,
            participants: Participants::new(participants),
            contracts,
            streams,
            require_contract: config.require_contract,
            nats_servers: crate::describe::asyncapi::NatsServer::from_urls(&config.nats.url, config.nats.tls_required),
        })
    }

    /// The declared stream that stores `subject`.
    #[must_use]
    pub fn stream_for(&self, subject: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|s| s.binds(subject))
    }

    #[must_use]
    pub fn directory(&self, bucket: &str) -> Option<&Directory> {
        self.directories.iter().find(|d| d.bucket == bucket)
    }

    #[must_use]
    pub fn import(&self, name: &str) -> Option<&ImportRoute> {
        self.imports.iter().find(|r| r.name == name)
    }

    /// This catalog with the contracts registered over the API in place of those it held.
    #[must_use]
    pub fn with_api_contracts(&self, api: &[Arc<crate::contracts::Contract>]) -> Self {
        let mut catalog = self.clone();
        catalog.contracts = self.contracts.with_api(api);
        catalog
    }

    #[must_use]
    pub fn subscription(&self, name: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.iter().find(|s| s.name == name)
    }
}
