//! What operators see: logs (`logs`), metrics (`prometheus`) and, when configured, traces.

mod logs;
mod prometheus;
pub(crate) mod traces;

pub use self::logs::init_logs;
pub use self::prometheus::metrics_handle;
pub use self::traces::shutdown_traces;
