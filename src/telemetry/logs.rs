//! Logs: tracing events, as text for people or JSON for log shippers.
//!
//! Two targets are off unless asked for: `magistral::access` (one line per HTTP request,
//! `log.access = true`) and `magistral::refusals` (publishes refused with a 4xx, at DEBUG:
//! `log.level = "info,magistral::refusals=debug"`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::traces;
use crate::config::{LogConfig, LogFormat, TracesConfig};

/// The target of the access log.
pub const ACCESS: &str = "magistral::access";
/// The target of refused publishes.
pub const REFUSALS: &str = "magistral::refusals";

/// Installs the log subscriber, with the traces layer when traces are configured. `RUST_LOG`,
/// when set, overrides `log.level` (and `log.access`). A second call (tests start several
/// gateways in one process) keeps the first.
pub fn init_logs(cfg: &LogConfig, traces_cfg: &TracesConfig) {
    let tracer = traces::tracer(traces_cfg);
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives(cfg)));
    if tracer.is_some() {
        // Exported spans do not depend on the log level.
        filter = filter.add_directive(traces::DIRECTIVE.parse().expect("a valid directive"));
    }
    // Colour codes only for a person at a terminal: a file or a log shipper gets plain text.
    let ansi = cfg.format == LogFormat::Text && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match cfg.format {
        // One flat JSON object per line: the event's fields beside `timestamp`, `level`,
        // `target` and `message`, as Loki, Elasticsearch and Vector expect them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .with(tracer.map(traces::layer))
            .try_init(),
        LogFormat::Text => builder.finish().with(tracer.map(traces::layer)).try_init(),
    };
}

/// `log.level` with the access log switched by `log.access`. The NATS client says INFO for
/// every reconnect attempt; the gateway's own lines say what matters (lost, restored), so the
/// client is held to WARN unless `log.level` names it.
fn directives(cfg: &LogConfig) -> String {
    let access = if cfg.access { "info" } else { "off" };
    let nats = if cfg.level.contains("async_nats") { String::new() } else { ",async_nats=warn".to_owned() };
    format!("{}{nats},{ACCESS}={access}", cfg.level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_is_a_target_switched_by_the_setting() {
        let mut cfg = LogConfig::default();
        assert_eq!(directives(&cfg), "info,async_nats=warn,magistral::access=off");
        cfg.access = true;
        cfg.level = "warn,async_nats=debug".into();
        assert_eq!(directives(&cfg), "warn,async_nats=debug,magistral::access=info");
    }
}
