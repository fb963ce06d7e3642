//! Metrics: Prometheus text exposition through the `metrics` facade. Names, types and help
//! texts are in [`catalogue`](super::catalogue); process metrics come from `metrics-process`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::catalogue;

/// Buckets of the latency histograms (`*_seconds`): sub-millisecond PubAcks to slow endpoints.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Buckets of the delivery lag: retries stretch it to minutes and hours, so it needs its own
/// range up to the longest default retry delays.
const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];

/// The process-wide Prometheus recorder (the `metrics` facade allows one per process), with
/// every metric described and the build and process metrics set up.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                // A full-name match is tried before a suffix match.
                .set_buckets_for_metric(Matcher::Full(catalogue::DELIVERY_LAG.into()), LAG_BUCKETS)
                .expect("static bucket list is non-empty")
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            catalogue::describe();
            process_collector().describe();
            process_collector().collect();
            handle
        })
        .clone()
}

/// Refreshes the gauges that are read rather than counted — process CPU, memory, files; the
/// NATS connection; readiness — right before a scrape renders them.
pub fn observe(nats_connected: bool, ready: bool) {
    process_collector().collect();
    catalogue::set_connection(nats_connected, ready);
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}
