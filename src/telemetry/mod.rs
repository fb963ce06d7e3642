//! What operators see: logs (`logs`), metrics (`prometheus`, named in `catalogue`) and, when
//! configured, traces.

pub(crate) mod catalogue;
mod logs;
mod prometheus;

pub use self::logs::init_logs;
pub use self::prometheus::{metrics_handle, observe};
