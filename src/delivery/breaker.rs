//! The circuit breaker: after N consecutive endpoint failures a subscription stops fetching
//! for a cooldown, then lets one probe through. While it is open no message is fetched, so
//! no attempts are spent on an endpoint known to be down.

use std::time::Duration;

use tokio::time::Instant;

use super::retry_policy::Class;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// Cooldown over: one probe may go.
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    #[must_use]
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, consecutive_failures: 0, open_until: None }
    }

    #[must_use]
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open { until },
            Some(_) => BreakerState::HalfOpen,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Records an attempt's class. Endpoint failures count; anything that shows the endpoint
    /// answering (a 2xx, or a 4xx about one message) closes the breaker.
    pub(crate) fn record(&mut self, class: Class, now: Instant) {
        if class.is_endpoint_failure() {
            self.consecutive_failures += 1;
            if self.consecutive_failures >= self.threshold {
                self.open_until = Some(now + self.cooldown);
            }
        } else {
            self.consecutive_failures = 0;
            self.open_until = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cooldown() {
        let mut b = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        b.record(Class::EndpointError, t0);
        b.record(Class::Unreachable, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record(Class::Timeout, t0);
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(b.state(Instant::now()), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
        // The probe fails: open again for a full cooldown.
        b.record(Class::Unreachable, Instant::now());
        assert!(matches!(b.state(Instant::now()), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(31)).await;
        b.record(Class::Delivered, Instant::now());
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[test]
    fn a_rejection_is_not_an_endpoint_failure() {
        let mut b = Breaker::new(2, Duration::from_secs(30));
        let now = Instant::now();
        b.record(Class::EndpointError, now);
        b.record(Class::Rejected, now);
        b.record(Class::EndpointError, now);
        assert_eq!(b.state(now), BreakerState::Closed);
    }
}
