//! What operators see: logs (`logs`, with `throttle` against floods), metrics (`prometheus`)
//! and, when configured, traces.

mod logs;
mod prometheus;
mod throttle;

pub use self::logs::{ACCESS, REFUSALS, init_logs};
pub use self::prometheus::metrics_handle;
pub use self::throttle::LogThrottle;
