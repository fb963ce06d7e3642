//! The gateway's own streams and bucket, created next to the declared ones:
//! dead letters, delivery status events, replays, and subscription status.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use serde_json::json;

use crate::config::SystemConfig;
use crate::streams::StreamDef;

pub(crate) const DLQ_STREAM: &str = "MAGISTRAL_DLQ";
pub(crate) const EVENTS_STREAM: &str = "MAGISTRAL_EVENTS";
pub(crate) const REPLAY_STREAM: &str = "MAGISTRAL_REPLAY";
/// KV bucket with each subscription's operator-visible status (pause reason, last error).
pub(crate) const STATUS_BUCKET: &str = "magistral_subscriptions";

/// Subjects under this prefix belong to the gateway; participants cannot publish there.
pub(crate) const RESERVED_PREFIX: &str = "magistral.";

#[must_use]
pub(crate) fn dlq_subject(subscription: &str) -> String {
    format!("magistral.dlq.{subscription}")
}

#[must_use]
pub(crate) fn replay_subject(subscription: &str) -> String {
    format!("magistral.replay.{subscription}")
}

/// `magistral.delivery.<event>.<subscription>`, e.g. `magistral.delivery.dead_lettered.nav-orders`.
#[must_use]
pub(crate) fn event_subject(event: &str, subscription: &str) -> String {
    format!("magistral.delivery.{event}.{subscription}")
}

/// The system streams, as stream definitions reconciled like the declared ones.
#[must_use]
pub(crate) fn streams(cfg: &SystemConfig) -> Vec<StreamDef> {
    let def = |name: &str, subject: &str, max_age: Duration, description: &str| {
        let config = StreamConfig {
            name: name.to_owned(),
            description: Some(description.to_owned()),
            subjects: vec![subject.to_owned()],
            storage: StorageType::File,
            num_replicas: cfg.replicas,
            max_age,
            discard: DiscardPolicy::Old,
            ..Default::default()
        };
        let declared = json!({
            "subjects": [subject], "num_replicas": cfg.replicas, "max_age": max_age.as_nanos() as u64,
        });
        StreamDef {
            file: PathBuf::from("(built-in)"),
            declared: declared.as_object().cloned().unwrap_or_default(),
            config,
            bucket: false,
        }
    };
    vec![
        def(DLQ_STREAM, "magistral.dlq.>", cfg.dead_letter_max_age, "Dead letters, per subscription"),
        def(EVENTS_STREAM, "magistral.delivery.>", cfg.events_max_age, "Delivery status events"),
        def(REPLAY_STREAM, "magistral.replay.>", cfg.dead_letter_max_age, "Dead letters being replayed"),
    ]
}
