//! Logs: tracing events, as text for people or JSON for log shippers.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::traces;
use crate::config::{LogConfig, LogFormat, TracesConfig};

/// Installs the log subscriber, with the traces layer when traces are configured. `RUST_LOG`, when set, overrides
/// `log.level`. A second call (tests start several gateways in one process) keeps the first.
pub fn init_logs(cfg: &LogConfig, traces_cfg: &TracesConfig) {
    let tracer = traces::tracer(traces_cfg);
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    if tracer.is_some() {
        // Exported spans do not depend on the log level.
        filter = filter.add_directive(traces::DIRECTIVE.parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().finish().with(tracer.map(traces::layer)).try_init(),
        LogFormat::Text => builder.finish().with(tracer.map(traces::layer)).try_init(),
    };
}
