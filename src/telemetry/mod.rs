//! What operators see: logs (`logs`, with `throttle` against floods), metrics (`prometheus`,
//! named in `catalogue`) and, when configured, traces.

pub(crate) mod catalogue;
mod logs;
mod prometheus;
mod throttle;
pub(crate) mod traces;

pub use self::logs::{ACCESS, REFUSALS, init_logs};
pub use self::prometheus::{metrics_handle, observe};
pub use self::throttle::LogThrottle;
pub use self::traces::shutdown_traces;
