//! What operators see: logs (`logs`), metrics (`prometheus`) and, when configured, traces.

mod logs;
mod prometheus;

pub use self::logs::init_logs;
pub use self::prometheus::metrics_handle;
