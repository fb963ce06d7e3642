//! Request/reply: HTTP requesters reach NATS services, and participants' HTTP endpoints
//! answer requests as NATS micro services (so NATS-native requesters reach them too).
//!
//! - [`send`](send()): a requester's request — [`authorize`] the subject for the caller, then
//!   send it and check the reply ([`Reply`], or a typed [`RequestError`]). The HTTP side,
//!   `POST /v1/request/{subject}`, only parses and answers (`http/request.rs`).
//! - [`responder`]: serving one configured responder on every replica (queue group).

pub(crate) mod responder;
mod send;

pub use send::{Outgoing, Reply, RequestError, RequestKind, Route, authorize, send};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::{Config, ResponderConfig};
use crate::delivery::subscription::{HttpTarget, resolve_target};
use crate::subject;

/// A configured responder, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Responder {
    pub name: String,
    pub participant: String,
    pub subjects: Vec<String>,
    pub target: HttpTarget,
    pub timeout: Duration,
    pub max_concurrency: u32,
    pub request_transform: Option<crate::transform::Transform>,
    pub reply_transform: Option<crate::transform::Transform>,
    /// Largest reply body read from the endpoint (`limits.max_reply_bytes`).
    pub max_reply_bytes: usize,
}

impl Responder {
    /// # Errors
    /// `(field, message)` for every problem, relative to `responders.<name>`.
    pub fn resolve(
        name: &str,
        cfg: &ResponderConfig,
        config: &Config,
        respond_permissions: Option<&[String]>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            problems.push((String::new(), "a responder name is 1-64 of A-Z, a-z, 0-9, '-', '_'".to_owned()));
        }
        if cfg.subjects.is_empty() {
            problems.push(("subjects".into(), "at least one subject".into()));
        }
        for (i, s) in cfg.subjects.iter().enumerate() {
            if let Err(m) = subject::validate_pattern(s) {
                problems.push((format!("subjects[{i}]"), m.to_string()));
            } else if s.starts_with('$') || s.starts_with(crate::delivery::system::RESERVED_PREFIX) {
                problems.push((format!("subjects[{i}]"), "system and gateway subjects cannot be answered".into()));
            }
            match respond_permissions {
                Some(allowed) if allowed.iter().any(|p| subject::covers(p, s)) => {}
                Some(_) => problems.push((
                    format!("subjects[{i}]"),
                    format!("participant {} may not respond on {s}", cfg.participant),
                )),
                None => {}
            }
        }
        if respond_permissions.is_none() {
            problems.push(("participant".into(), format!("no participant {:?}", cfg.participant)));
        }
        if cfg.max_concurrency == 0 {
            problems.push(("max_concurrency".into(), "at least 1".into()));
        }
        let mut transform = |field: &str, inline: Option<&String>, file: Option<&std::path::PathBuf>| {
            crate::transform::load(config, field, inline, file).unwrap_or_else(|p| {
                problems.push(p);
                None
            })
        };
        let request_transform =
            transform("request_transform", cfg.request_transform.as_ref(), cfg.request_transform_file.as_ref());
        let reply_transform =
            transform("reply_transform", cfg.reply_transform.as_ref(), cfg.reply_transform_file.as_ref());
        let target = resolve_target(config, &cfg.endpoint, cfg.method, &cfg.headers, &cfg.signing_secrets);
        match (target, problems.is_empty()) {
            (Ok(target), true) => Ok(Self {
                request_transform,
                reply_transform,
                name: name.to_owned(),
                participant: cfg.participant.clone(),
                subjects: cfg.subjects.clone(),
                target,
                timeout: cfg.timeout,
                max_concurrency: cfg.max_concurrency,
                max_reply_bytes: config.limits.max_reply_bytes,
            }),
            (Ok(_), false) => Err(problems),
            (Err(more), _) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }
}

struct Running {
    responder: Arc<Responder>,
    cancel: CancellationToken,
}

/// Starts, restarts and stops responders as the catalog changes.
pub struct Responders {
    client: async_nats::Client,
    http: reqwest::Client,
    running: Mutex<HashMap<String, Running>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Responders {
    #[must_use]
    pub fn new(
        client: async_nats::Client,
        http: reqwest::Client,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self { client, http, running: Mutex::new(HashMap::new()), tracker, shutdown }
    }

    pub fn apply(&self, catalog: &Catalog) {
        let Ok(mut running) = self.running.lock() else { return };
        running.retain(|name, r| {
            let keep = catalog.responders.iter().any(|c| c.name == *name && **c == *r.responder);
            if !keep {
                r.cancel.cancel();
            }
            keep
        });
        for responder in &catalog.responders {
            if running.contains_key(&responder.name) {
                continue;
            }
            let cancel = self.shutdown.child_token();
            self.tracker.spawn(responder::serve(
                self.client.clone(),
                self.http.clone(),
                responder.clone(),
                cancel.clone(),
            ));
            running.insert(responder.name.clone(), Running { responder: responder.clone(), cancel });
        }
    }
}

/// `application/json` or any `+json` type, given a media type's lowercased essence: what the
/// bus passes on as a reply.
fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}
