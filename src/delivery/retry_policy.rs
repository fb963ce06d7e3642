//! What an endpoint's answer means for a message: each answer is a named class, and each
//! class maps to one decision (ack, retry after a delay, dead-letter, pause the subscription).

use std::time::Duration;

/// The class of one delivery attempt's result (`endpoint-*` in docs/errors.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 2xx.
    Delivered,
    /// 429, or 503 with `Retry-After`: the endpoint asked us to slow down.
    Throttled,
    /// 408: request timeout reported by the endpoint.
    EndpointTimeout,
    /// 5xx (other than a 503 with `Retry-After`).
    EndpointError,
    /// No answer within the subscription's timeout.
    Timeout,
    /// Connection refused/reset, DNS or TLS failure.
    Unreachable,
    /// 410: the endpoint says it is gone for good.
    Gone,
    /// Other 4xx: the endpoint refused this message.
    Rejected,
    /// Redirects and other non-2xx answers we do not follow.
    Unexpected,
    /// The subscription's transform failed on this message (no request was sent).
    TransformFailed,
    /// The subscription's transform produced nothing: the message is not for this endpoint.
    Skipped,
    /// The body holds a character the subscription's `charset` cannot represent (no request
    /// was sent; a `?` in its place would change the data silently).
    Unencodable,
    /// A pinned subscription's `down_conversion` failed on a newer version's message (no
    /// request was sent).
    ConversionFailed,
    /// A pinned subscription got data (converted from a newer version) that its pinned
    /// version refuses (no request was sent).
    ConversionInvalid,
}

impl Class {
    /// Every class (`Timeout` and `EndpointTimeout` share a slug: one is listed), for the
    /// series the metrics create up front.
    pub const ALL: &'static [Class] = &[
        Self::Delivered,
        Self::Throttled,
        Self::EndpointTimeout,
        Self::EndpointError,
        Self::Unreachable,
        Self::Gone,
        Self::Rejected,
        Self::Unexpected,
        Self::TransformFailed,
        Self::Skipped,
    ];

    #[must_use]
    pub const fn slug(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Throttled => "endpoint-throttled",
            Self::EndpointTimeout | Self::Timeout => "endpoint-timeout",
            Self::EndpointError => "endpoint-error",
            Self::Unreachable => "endpoint-unreachable",
            Self::Gone => "endpoint-gone",
            Self::Rejected => "endpoint-rejected",
            Self::Unexpected => "endpoint-unexpected",
            Self::TransformFailed => "transform-failed",
            Self::Skipped => "skipped",
            Self::Unencodable => "unencodable",
            Self::ConversionFailed => "conversion-failed",
            Self::ConversionInvalid => "conversion-invalid",
        }
    }

    /// Classifies an HTTP answer.
    #[must_use]
    pub fn of_status(status: u16, has_retry_after: bool) -> Self {
        match status {
            200..=299 => Self::Delivered,
            429 => Self::Throttled,
            503 if has_retry_after => Self::Throttled,
            408 => Self::EndpointTimeout,
            410 => Self::Gone,
            400..=499 => Self::Rejected,
            500..=599 => Self::EndpointError,
            _ => Self::Unexpected,
        }
    }

    /// Whether the attempt ended before any request was sent (nothing was learnt about the
    /// endpoint).
    #[must_use]
    pub const fn unsent(self) -> bool {
        matches!(
            self,
            Self::Skipped
                | Self::TransformFailed
                | Self::Unencodable
                | Self::ConversionFailed
                | Self::ConversionInvalid
        )
    }

    /// Whether the failure says something about the endpoint (counts toward the breaker)
    /// rather than about this one message.
    #[must_use]
    pub const fn is_endpoint_failure(self) -> bool {
        matches!(
            self,
            Self::EndpointError | Self::Timeout | Self::Unreachable | Self::EndpointTimeout | Self::Throttled
        )
    }
}

/// What to do with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Ack,
    /// NAK with this delay; JetStream redelivers it then.
    Retry(Duration),
    DeadLetter,
    /// NAK the message and pause the subscription until an operator resumes it.
    PauseSubscription,
}

/// Policy knobs of one subscription that decide outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub max_attempts: u32,
    pub retry_client_errors: bool,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` attempts (1-based).
    #[must_use]
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) - 1) as usize;
        self.schedule.get(index).or_else(|| self.schedule.last()).copied().unwrap_or(Duration::from_secs(1))
    }

    /// Decides after attempt number `attempt` (1-based) ended in `class`.
    /// `retry_after` is the endpoint's own `Retry-After`, honoured for throttling.
    #[must_use]
    pub fn decide(&self, class: Class, attempt: u32, retry_after: Option<Duration>) -> Decision {
        let retry = |delay: Duration| {
            if attempt >= self.max_attempts { Decision::DeadLetter } else { Decision::Retry(delay) }
        };
        match class {
            Class::Delivered | Class::Skipped => Decision::Ack,
            Class::Gone => Decision::PauseSubscription,
            // The same program on the same data fails the same way: no point retrying. So does
            // encoding the same data in the same charset.
            Class::TransformFailed | Class::Unencodable | Class::ConversionFailed | Class::ConversionInvalid => {
                Decision::DeadLetter
            }
            Class::Rejected | Class::Unexpected if !self.retry_client_errors => Decision::DeadLetter,
            Class::Throttled => retry(retry_after.unwrap_or_else(|| self.delay_after(attempt))),
            _ => retry(self.delay_after(attempt)),
        }
    }
}

/// Parses `Retry-After` (seconds or an HTTP date), capped at an hour so a confused endpoint
/// cannot park a message for days.
#[must_use]
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let cap = Duration::from_secs(3600);
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(cap));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default().min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)],
            max_attempts: 5,
            retry_client_errors: false,
        }
    }

    #[test]
    fn classes_of_statuses() {
        assert_eq!(Class::of_status(200, false), Class::Delivered);
        assert_eq!(Class::of_status(204, false), Class::Delivered);
        assert_eq!(Class::of_status(429, false), Class::Throttled);
        assert_eq!(Class::of_status(503, true), Class::Throttled);
        assert_eq!(Class::of_status(503, false), Class::EndpointError);
        assert_eq!(Class::of_status(408, false), Class::EndpointTimeout);
        assert_eq!(Class::of_status(410, false), Class::Gone);
        assert_eq!(Class::of_status(400, false), Class::Rejected);
        assert_eq!(Class::of_status(500, false), Class::EndpointError);
        assert_eq!(Class::of_status(302, false), Class::Unexpected);
    }

    #[test]
    fn schedule_then_last_repeats_then_dead_letter() {
        let p = policy();
        assert_eq!(p.decide(Class::EndpointError, 1, None), Decision::Retry(Duration::from_secs(1)));
        assert_eq!(p.decide(Class::Timeout, 2, None), Decision::Retry(Duration::from_secs(5)));
        assert_eq!(p.decide(Class::Unreachable, 3, None), Decision::Retry(Duration::from_secs(30)));
        assert_eq!(p.decide(Class::Unreachable, 4, None), Decision::Retry(Duration::from_secs(30)));
        assert_eq!(p.decide(Class::Unreachable, 5, None), Decision::DeadLetter);
    }

    #[test]
    fn decisions_per_class() {
        let p = policy();
        assert_eq!(p.decide(Class::Delivered, 1, None), Decision::Ack);
        assert_eq!(
            p.decide(Class::Throttled, 1, Some(Duration::from_secs(2))),
            Decision::Retry(Duration::from_secs(2))
        );
        assert_eq!(p.decide(Class::Gone, 1, None), Decision::PauseSubscription);
        assert_eq!(p.decide(Class::Rejected, 1, None), Decision::DeadLetter);
        assert_eq!(p.decide(Class::Unencodable, 1, None), Decision::DeadLetter);
        assert!(Class::Unencodable.unsent() && !Class::Unencodable.is_endpoint_failure());
        let lenient = RetryPolicy { retry_client_errors: true, ..policy() };
        assert_eq!(lenient.decide(Class::Rejected, 1, None), Decision::Retry(Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
