//! The catalogue of metrics: every name the gateway serves with its type, unit, labels and
//! help text, described to the recorder once (so `/metrics` has `# HELP` and `# TYPE` for each).
//! Call sites use the names from here, so a name cannot drift; docs/metrics.md mirrors the
//! list, and tests/it/metrics.rs checks both against what `/metrics` serves.
//!
//! Series that exist from the start at zero ([`register`]) are bounded by configuration: each
//! configured name times the few label values an alert or a dashboard needs (docs/metrics.md,
//! "Series that exist from the start").

use metrics::Unit;

use crate::catalog::Catalog;
use crate::config::{InboundKind, SubscriptionMode};
use crate::delivery::breaker::BreakerState;
use crate::delivery::retry_policy::Class;
use crate::delivery::system::RESERVED_PREFIX;
use crate::participants::Participant;
use crate::streams::StreamDef;

/// The Prometheus type a metric is served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the catalogue.
#[derive(Debug)]
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) unit: Option<Unit>,
    pub(crate) labels: &'static [&'static str],
    pub(crate) help: &'static str,
}

// --- publish ---
pub(crate) const PUBLISH_TOTAL: &str = "magistral_publish_total";
pub(crate) const PUBLISH_DURATION: &str = "magistral_publish_duration_seconds";
pub(crate) const PUBLISH_IN_FLIGHT: &str = "magistral_publish_in_flight";
pub(crate) const RATE_LIMITED_TOTAL: &str = "magistral_rate_limited_total";
// --- push delivery ---
pub(crate) const DELIVERY_TOTAL: &str = "magistral_delivery_total";
pub(crate) const DELIVERY_DURATION: &str = "magistral_delivery_duration_seconds";
pub(crate) const DELIVERY_LAG: &str = "magistral_delivery_lag_seconds";
pub(crate) const DEAD_LETTERS_TOTAL: &str = "magistral_dead_letters_total";
pub(crate) const DEAD_LETTERS: &str = "magistral_dead_letters";
pub(crate) const BREAKER_STATE: &str = "magistral_breaker_state";
// --- subscriptions (push and pull: their durable consumers) ---
pub(crate) const SUBSCRIPTION_PENDING: &str = "magistral_subscription_pending";
pub(crate) const SUBSCRIPTION_IN_FLIGHT: &str = "magistral_subscription_in_flight";
pub(crate) const SUBSCRIPTION_PAUSED: &str = "magistral_subscription_paused";
pub(crate) const CONSUMER_REFUSED: &str = "magistral_subscription_consumer_refused";
pub(crate) const PARKED_KEYS: &str = "magistral_subscription_parked_keys";
pub(crate) const KEY_LAG: &str = "magistral_subscription_key_lag_seconds";
pub(crate) const WAITING_KEYS: &str = "magistral_subscription_waiting_keys";
// --- pull and event streams ---
pub(crate) const PULL_FETCHED_TOTAL: &str = "magistral_pull_fetched_total";
pub(crate) const EVENT_STREAMS: &str = "magistral_event_streams";
// --- request/reply ---
pub(crate) const REQUEST_TOTAL: &str = "magistral_request_total";
pub(crate) const REQUEST_DURATION: &str = "magistral_request_duration_seconds";
pub(crate) const RESPONDER_REQUESTS_TOTAL: &str = "magistral_responder_requests_total";
// --- inbound adapters ---
pub(crate) const INBOUND_TOTAL: &str = "magistral_inbound_total";
pub(crate) const INBOUND_IGNORED_TOTAL: &str = "magistral_inbound_ignored_total";
// --- the gateway itself ---
pub(crate) const CONFIG_RELOADS_TOTAL: &str = "magistral_config_reloads_total";
pub(crate) const NATS_CONNECTED: &str = "magistral_nats_connected";
pub(crate) const READY: &str = "magistral_ready";
pub(crate) const BUILD_INFO: &str = "magistral_build_info";

/// Every metric the gateway serves under `magistral_` (process metrics come from
/// `metrics-process`, which describes its own).
pub(crate) const ALL: &[Metric] = &[
    Metric {
        name: PUBLISH_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["stream", "participant", "outcome"],
        help: "Single publishes by outcome: stored, duplicate, the problem slug when JetStream did not store it \
               (nats-unavailable, publish-timeout, payload-too-large), or, with stream=\"\", the problem slug of a refusal \
               (4xx, overloaded).",
    },
    Metric {
        name: PUBLISH_DURATION,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &["stream"],
        help: "From sending a publish to its PubAck (or failure), retries included.",
    },
    Metric {
        name: PUBLISH_IN_FLIGHT,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Publishes waiting for their PubAck on this replica (limits.max_in_flight_publishes bounds it).",
    },
    Metric {
        name: RATE_LIMITED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["participant", "reason"],
        help: "Requests refused 429 by a participant's limits: reason in-flight or publish-rate.",
    },
    Metric {
        name: DELIVERY_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["subscription", "class"],
        help: "Push delivery attempts by outcome class (delivered, endpoint-*, transform-failed, skipped).",
    },
    Metric {
        name: DELIVERY_DURATION,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &["subscription"],
        help: "One push delivery attempt, from the request to the endpoint's answer.",
    },
    Metric {
        name: DELIVERY_LAG,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &["subscription"],
        help: "From storage in the stream to the acknowledged delivery, retries included.",
    },
    Metric {
        name: DEAD_LETTERS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["subscription"],
        help: "Messages dead-lettered by this replica.",
    },
    Metric {
        name: DEAD_LETTERS,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &["subscription"],
        help: "Dead letters kept for the subscription (MAGISTRAL_DLQ), as of the latest scrape or dead-lettering.",
    },
    Metric {
        name: BREAKER_STATE,
        kind: Kind::Gauge,
        unit: None,
        labels: &["subscription", "state"],
        help: "This replica's circuit breaker: 1 for the current state (closed, open, half-open), 0 for the others.",
    },
    Metric {
        name: SUBSCRIPTION_PENDING,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &["subscription"],
        help: "Lag: messages not yet delivered to the subscription (JetStream num_pending over its consumers).",
    },
    Metric {
        name: SUBSCRIPTION_IN_FLIGHT,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &["subscription"],
        help: "Messages delivered and awaiting their ack (JetStream num_ack_pending over the subscription's consumers).",
    },
    Metric {
        name: SUBSCRIPTION_PAUSED,
        kind: Kind::Gauge,
        unit: None,
        labels: &["subscription"],
        help: "1 while the subscription is paused (by an operator, or after an endpoint answered 410 Gone), else 0.",
    },
    Metric {
        name: CONSUMER_REFUSED,
        kind: Kind::Gauge,
        unit: None,
        labels: &["subscription"],
        help: "1 while NATS refuses to create one of the subscription's consumers (e.g. error 10026, the stream's consumer limit), so nothing is delivered; else 0.",
    },
    Metric {
        name: PARKED_KEYS,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &["subscription"],
        help: "Key-ordered: keys whose head message failed and is not yet delivered, dead-lettered or skipped (on the delivering replica).",
    },
    Metric {
        name: KEY_LAG,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        labels: &["subscription"],
        help: "Key-ordered: age of the oldest message waiting behind its key's head (0 when none waits), on the delivering replica.",
    },
    Metric {
        name: WAITING_KEYS,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &["subscription"],
        help: "Key-ordered: keys with messages held by the delivering replica (in flight or waiting).",
    },
    Metric {
        name: PULL_FETCHED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["subscription"],
        help: "Messages handed out by pull fetches (repeats included).",
    },
    Metric {
        name: EVENT_STREAMS,
        kind: Kind::Gauge,
        unit: Some(Unit::Count),
        labels: &["subscription"],
        help: "Server-Sent Event streams open on this replica.",
    },
    Metric {
        name: REQUEST_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["participant", "outcome"],
        help: "Requests by outcome: answered (the reply was passed on), responder-error, reply-contract-violation, \
               no-responders, request-timeout, nats-unavailable.",
    },
    Metric {
        name: REQUEST_DURATION,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &["participant"],
        help: "A request, from sending it to its reply (or failure).",
    },
    Metric {
        name: RESPONDER_REQUESTS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["responder", "outcome"],
        help: "Requests passed to HTTP responders: answered (2xx) or error.",
    },
    Metric {
        name: INBOUND_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["route", "outcome"],
        help: "Calls of inbound adapter routes: accepted or the problem slug.",
    },
    Metric {
        name: INBOUND_IGNORED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["route"],
        help: "Business Central notification entries dropped for a wrong clientState.",
    },
    Metric {
        name: CONFIG_RELOADS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        labels: &["outcome"],
        help: "Configuration reloads: applied, or refused (the previous configuration keeps serving).",
    },
    Metric {
        name: NATS_CONNECTED,
        kind: Kind::Gauge,
        unit: None,
        labels: &[],
        help: "1 while this replica is connected to NATS, else 0.",
    },
    Metric {
        name: READY,
        kind: Kind::Gauge,
        unit: None,
        labels: &[],
        help: "1 while this replica is ready (what /readyz answers 200 for), else 0.",
    },
    Metric {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        unit: None,
        labels: &["version", "commit"],
        help: "Always 1; the labels name the running build.",
    },
];

/// Outcomes of a stored publish that exist per (stream, participant) from the start.
const PUBLISH_OUTCOMES: &[&str] = &["stored", "duplicate", "nats-unavailable", "publish-timeout"];
/// Refusals counted with `stream=""` that exist per participant from the start (the 5xx one).
const REFUSAL_OUTCOMES: &[&str] = &["overloaded"];
const RATE_LIMIT_REASONS: &[&str] = &["in-flight", "publish-rate"];
const REQUEST_OUTCOMES: &[&str] = &[
    "answered",
    "responder-error",
    "reply-contract-violation",
    "no-responders",
    "request-timeout",
    "nats-unavailable",
];
const RESPONDER_OUTCOMES: &[&str] = &["answered", "error"];
const RELOAD_OUTCOMES: &[&str] = &["applied", "refused"];
const BREAKER_STATES: &[&str] = &["closed", "open", "half-open"];

/// Describes every metric to the installed recorder and sets the series that do not depend on
/// configuration (build info, reload counters, connection and readiness).
pub(crate) fn describe() {
    for m in ALL {
        match (m.kind, m.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (Kind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(m.name, unit, m.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
        // A gauge without labels has one series: it exists from the start.
        if m.kind == Kind::Gauge && m.labels.is_empty() {
            metrics::gauge!(m.name).increment(0.0);
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("MAGISTRAL_COMMIT")).set(1.0);
    for outcome in RELOAD_OUTCOMES {
        metrics::counter!(CONFIG_RELOADS_TOTAL, "outcome" => *outcome).absolute(0);
    }
}

/// Creates, at zero, the series of everything `catalog` configures (at start and after each
/// reload; series that already exist keep their values). Series of what a reload removed stay
/// until the process restarts.
pub(crate) fn register(catalog: &Catalog) {
    let publishable: Vec<&StreamDef> = catalog.streams.iter().filter(|s| is_publishable(s)).collect();
    for p in catalog.participants.iter() {
        for stream in publishable.iter().filter(|s| may_publish_into(p, s)) {
            for outcome in PUBLISH_OUTCOMES {
                touch_counter(metrics::counter!(PUBLISH_TOTAL, "stream" => stream.name().to_owned(),
                    "participant" => p.name.clone(), "outcome" => *outcome));
            }
            let _ = metrics::histogram!(PUBLISH_DURATION, "stream" => stream.name().to_owned());
        }
        if !p.publish.patterns().is_empty() {
            for outcome in REFUSAL_OUTCOMES {
                touch_counter(metrics::counter!(PUBLISH_TOTAL, "stream" => "",
                    "participant" => p.name.clone(), "outcome" => *outcome));
            }
        }
        for reason in RATE_LIMIT_REASONS {
            touch_counter(metrics::counter!(RATE_LIMITED_TOTAL, "participant" => p.name.clone(), "reason" => *reason));
        }
        if !p.request.patterns().is_empty() {
            for outcome in REQUEST_OUTCOMES {
                touch_counter(metrics::counter!(REQUEST_TOTAL, "participant" => p.name.clone(), "outcome" => *outcome));
            }
            let _ = metrics::histogram!(REQUEST_DURATION, "participant" => p.name.clone());
        }
    }
    for sub in &catalog.subscriptions {
        let name = || sub.name.clone();
        match sub.mode {
            SubscriptionMode::Push => {
                for class in Class::ALL {
                    touch_counter(metrics::counter!(DELIVERY_TOTAL, "subscription" => name(), "class" => class.slug()));
                }
                let _ = metrics::histogram!(DELIVERY_DURATION, "subscription" => name());
                if sub.ordering.is_some() {
                    for gauge in [PARKED_KEYS, KEY_LAG, WAITING_KEYS] {
                        metrics::gauge!(gauge, "subscription" => name()).increment(0.0);
                    }
                }
                let _ = metrics::histogram!(DELIVERY_LAG, "subscription" => name());
                touch_counter(metrics::counter!(DEAD_LETTERS_TOTAL, "subscription" => name()));
                metrics::gauge!(DEAD_LETTERS, "subscription" => name()).increment(0.0);
                // All three exist at 0; the breaker sets its state when its worker starts
                // (`delivery::Control::new`), and a reload keeps a breaker that is open now.
                for state in BREAKER_STATES {
                    metrics::gauge!(BREAKER_STATE, "subscription" => name(), "state" => *state).increment(0.0);
                }
            }
            SubscriptionMode::Pull => {
                touch_counter(metrics::counter!(PULL_FETCHED_TOTAL, "subscription" => name()));
            }
            SubscriptionMode::Stream => {
                metrics::gauge!(EVENT_STREAMS, "subscription" => name()).increment(0.0);
                continue;
            }
        }
        for gauge in [SUBSCRIPTION_PENDING, SUBSCRIPTION_IN_FLIGHT, SUBSCRIPTION_PAUSED, CONSUMER_REFUSED] {
            metrics::gauge!(gauge, "subscription" => name()).increment(0.0);
        }
    }
    for responder in &catalog.responders {
        for outcome in RESPONDER_OUTCOMES {
            touch_counter(metrics::counter!(RESPONDER_REQUESTS_TOTAL, "responder" => responder.name.clone(),
                "outcome" => *outcome));
        }
    }
    for route in &catalog.inbound {
        touch_counter(metrics::counter!(INBOUND_TOTAL, "route" => route.name.clone(), "outcome" => "accepted"));
        if route.kind == InboundKind::BusinessCentral {
            touch_counter(metrics::counter!(INBOUND_IGNORED_TOTAL, "route" => route.name.clone()));
        }
    }
}

/// A counter handle is enough for the exporter to serve the series at 0.
fn touch_counter(counter: metrics::Counter) {
    counter.increment(0);
}

/// Streams participants publish into: not directory buckets, not the gateway's own streams.
fn is_publishable(stream: &StreamDef) -> bool {
    !stream.bucket && !stream.config.subjects.iter().all(|s| s.starts_with(RESERVED_PREFIX))
}

fn may_publish_into(participant: &Participant, stream: &StreamDef) -> bool {
    participant.publish.patterns().iter().any(|p| stream.config.subjects.iter().any(|s| crate::subject::overlap(p, s)))
}

/// The breaker series of a subscription: 1 for `state`, 0 for the others.
pub(crate) fn set_breaker(subscription: &str, state: &BreakerState) {
    let current = match state {
        BreakerState::Closed => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen => "half-open",
    };
    for s in BREAKER_STATES {
        metrics::gauge!(BREAKER_STATE, "subscription" => subscription.to_owned(), "state" => *s)
            .set(if *s == current { 1.0 } else { 0.0 });
    }
}

/// What JetStream says about a subscription's consumers.
pub(crate) fn set_consumer_facts(subscription: &str, paused: bool, pending: u64, in_flight: u64) {
    let name = || subscription.to_owned();
    metrics::gauge!(SUBSCRIPTION_PAUSED, "subscription" => name()).set(if paused { 1.0 } else { 0.0 });
    metrics::gauge!(SUBSCRIPTION_PENDING, "subscription" => name()).set(pending as f64);
    metrics::gauge!(SUBSCRIPTION_IN_FLIGHT, "subscription" => name()).set(in_flight as f64);
}

/// A key-ordered subscription's keys on this replica: parked, worst lag, keys held.
pub(crate) fn set_keyed(subscription: &str, parked: usize, lag: f64, keys: usize) {
    let name = || subscription.to_owned();
    metrics::gauge!(PARKED_KEYS, "subscription" => name()).set(parked as f64);
    metrics::gauge!(KEY_LAG, "subscription" => name()).set(lag);
    metrics::gauge!(WAITING_KEYS, "subscription" => name()).set(keys as f64);
}

/// Whether NATS refuses (1) to create one of the subscription's consumers.
pub(crate) fn set_consumer_refused(subscription: &str, refused: bool) {
    metrics::gauge!(CONSUMER_REFUSED, "subscription" => subscription.to_owned()).set(if refused { 1.0 } else { 0.0 });
}

pub(crate) fn set_dead_letters(subscription: &str, depth: u64) {
    metrics::gauge!(DEAD_LETTERS, "subscription" => subscription.to_owned()).set(depth as f64);
}

/// The replica's NATS connection and readiness.
pub(crate) fn set_connection(connected: bool, ready: bool) {
    metrics::gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

// --- series resolved once: the hot paths' handles ---
//
// `metrics::counter!(NAME, labels...)` builds a key (label strings cloned), hashes it and
// looks it up in the recorder's registry on every call. The handles below are resolved once
// per (stream, participant) or subscription and kept (the recorder never drops a series), so
// a publish or a delivery only touches atomics (issue 16).

/// A publish's series for one stream and participant.
pub(crate) struct PublishSeries {
    pub duration: metrics::Histogram,
    pub stored: metrics::Counter,
    pub duplicate: metrics::Counter,
}

/// The publish series of `stream` and `participant`.
pub(crate) fn publish_series(stream: &str, participant: &str) -> std::sync::Arc<PublishSeries> {
    type Cache = std::sync::RwLock<
        std::collections::HashMap<String, std::collections::HashMap<String, std::sync::Arc<PublishSeries>>>,
    >;
    static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::default);
    if let Ok(cache) = CACHE.read()
        && let Some(series) = cache.get(stream).and_then(|m| m.get(participant))
    {
        return series.clone();
    }
    let counter = |outcome: &'static str| metrics::counter!(PUBLISH_TOTAL, "stream" => stream.to_owned(), "participant" => participant.to_owned(), "outcome" => outcome);
    let series = std::sync::Arc::new(PublishSeries {
        duration: metrics::histogram!(PUBLISH_DURATION, "stream" => stream.to_owned()),
        stored: counter("stored"),
        duplicate: counter("duplicate"),
    });
    if let Ok(mut cache) = CACHE.write() {
        cache.entry(stream.to_owned()).or_default().insert(participant.to_owned(), series.clone());
    }
    series
}

/// `magistral_publish_in_flight`.
pub(crate) fn publish_in_flight() -> &'static metrics::Gauge {
    static GAUGE: std::sync::LazyLock<metrics::Gauge> = std::sync::LazyLock::new(|| metrics::gauge!(PUBLISH_IN_FLIGHT));
    &GAUGE
}

/// A push subscription's delivery series.
pub(crate) struct DeliverySeries {
    /// `magistral_delivery_total`, one per class, in `Class::ALL` order.
    total: Vec<(Class, metrics::Counter)>,
    pub duration: metrics::Histogram,
    pub lag: metrics::Histogram,
    pub dead_letters: metrics::Counter,
}

impl DeliverySeries {
    pub(crate) fn new(subscription: &str) -> Self {
        let name = || subscription.to_owned();
        Self {
            total: Class::ALL
                .iter()
                .map(|c| (*c, metrics::counter!(DELIVERY_TOTAL, "subscription" => name(), "class" => c.slug())))
                .collect(),
            duration: metrics::histogram!(DELIVERY_DURATION, "subscription" => name()),
            lag: metrics::histogram!(DELIVERY_LAG, "subscription" => name()),
            dead_letters: metrics::counter!(DEAD_LETTERS_TOTAL, "subscription" => name()),
        }
    }

    pub(crate) fn count(&self, class: Class) {
        if let Some((_, counter)) = self.total.iter().find(|(c, _)| *c == class) {
            counter.increment(1);
        }
    }
}
