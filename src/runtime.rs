//! What the running gateway is made of beyond HTTP: the current catalog, the publisher, the
//! delivery engine, the responders and the readiness facts. Reconciling and reloading work on
//! this; the HTTP edge (`AppState` in the `http` module) holds it next to what only requests need.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::catalog::Catalog;
use crate::contracts::registry::Registry;
use crate::delivery::Deliveries;
use crate::publish::Publisher;
use crate::request::Responders;

/// The gateway's moving parts. Cheap to clone (all `Arc`s and handles inside).
#[derive(Clone)]
pub struct Runtime {
    /// Participants, contracts, streams; swapped whole when configuration is reloaded.
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub publisher: Publisher,
    pub deliveries: Arc<Deliveries>,
    pub responders: Arc<Responders>,
    pub health: Arc<Health>,
    /// Contracts registered over the API, composed into every catalog stored.
    pub registry: Arc<Registry>,
}

/// Readiness facts the background tasks update.
#[derive(Debug, Default)]
pub struct Health {
    /// Every declared stream exists on the server with its declared config.
    pub streams_reconciled: AtomicBool,
    /// SIGTERM received: stop taking new work.
    pub shutting_down: AtomicBool,
}

impl Health {
    pub fn set_streams_reconciled(&self) {
        self.streams_reconciled.store(true, Ordering::SeqCst);
    }
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}
