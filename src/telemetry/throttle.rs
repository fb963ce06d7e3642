//! Keeps a repeated log event from flooding the log: per key, the first `burst` events of
//! each window are logged and the rest only counted; the next line logged for that key says
//! how many were left out. (Metrics count every one.)

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-key log budget. Keys must come from a bounded set (configured participants,
/// subscriptions, problem classes), never from request input.
pub struct LogThrottle {
    window: Duration,
    burst: u32,
    keys: Mutex<BTreeMap<String, Budget>>,
}

struct Budget {
    window_start: Instant,
    logged: u32,
    /// Events not logged since the last line for this key.
    left_out: u64,
}

impl LogThrottle {
    #[must_use]
    pub const fn new(window: Duration, burst: u32) -> Self {
        Self { window, burst, keys: Mutex::new(BTreeMap::new()) }
    }

    /// `Some(left_out)` when this event may be logged (`left_out`: how many before it were
    /// not); `None` when it should only be counted.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let budget = match keys.get_mut(key) {
            Some(budget) => budget,
            None => keys.entry(key.to_owned()).or_insert(Budget { window_start: now, logged: 0, left_out: 0 }),
        };
        if now.duration_since(budget.window_start) >= self.window {
            budget.window_start = now;
            budget.logged = 0;
        }
        if budget.logged < self.burst {
            budget.logged += 1;
            Some(std::mem::take(&mut budget.left_out))
        } else {
            budget.left_out += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_left_out() {
        let throttle = LogThrottle::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let logged: Vec<_> = (0..10).map(|_| throttle.admit_at("nav", t0)).collect();
        assert_eq!(logged, [Some(0), Some(0), Some(0), None, None, None, None, None, None, None]);
        // Another key has its own budget.
        assert_eq!(throttle.admit_at("bitrix", t0), Some(0));
        // Next window: the first line says 7 were left out.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(throttle.admit_at("nav", t1), Some(7));
        assert_eq!(throttle.admit_at("nav", t1), Some(0));
    }
}
