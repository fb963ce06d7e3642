//! Problems rendered as RFC 9457 `application/problem+json`: the one place where the bus's
//! refusals and failures ([`crate::problem`]) become HTTP answers.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

pub use crate::problem::{Problem, ProblemType};

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body().to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.kind == ProblemType::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"magistral\""));
        }
        response
    }
}

// --- directory ---

use crate::directory::{DirectoryError, DirectoryKind};

impl From<DirectoryError> for Problem {
    fn from(err: DirectoryError) -> Self {
        let class = match err.kind() {
            DirectoryKind::Refused(problem) => return *problem,
            DirectoryKind::Unavailable { retry_after } => {
                return Problem::new(ProblemType::NatsUnavailable, err.detail()).retry_after(retry_after);
            }
            DirectoryKind::NotFound => ProblemType::NotFound,
            DirectoryKind::Forbidden => ProblemType::Forbidden,
            DirectoryKind::InvalidKey => ProblemType::InvalidKey,
            DirectoryKind::RevisionMismatch => ProblemType::RevisionMismatch,
            DirectoryKind::Timeout => ProblemType::PublishTimeout,
            DirectoryKind::Internal => ProblemType::Internal,
        };
        Problem::new(class, err.detail())
    }
}

// --- request ---

use crate::request::{RequestError, RequestKind};

impl From<RequestError> for Problem {
    fn from(err: RequestError) -> Self {
        let detail = err.detail();
        match err.kind() {
            RequestKind::Refused(problem) => *problem,
            RequestKind::InvalidSubject => Problem::new(ProblemType::InvalidSubject, detail),
            RequestKind::Forbidden => Problem::new(ProblemType::Forbidden, detail),
            RequestKind::NoResponders { retry_after } => {
                Problem::new(ProblemType::NoResponders, detail).retry_after(retry_after)
            }
            RequestKind::Timeout => Problem::new(ProblemType::RequestTimeout, detail),
            RequestKind::ResponderError { status, retry_after } => {
                let mut problem = Problem::new(ProblemType::ResponderError, detail);
                problem.status =
                    Some(axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY));
                problem.retry_after = retry_after;
                problem
            }
            RequestKind::ReplyContract(violations) => {
                Problem::new(ProblemType::ReplyContractViolation, detail).with_errors(violations)
            }
            RequestKind::Unavailable { retry_after } => {
                Problem::new(ProblemType::NatsUnavailable, detail).retry_after(retry_after)
            }
        }
    }
}

// --- delivery and tracking ---

/// A NATS failure answered without its text (which goes to the log).
fn nats_unavailable(area: &str, detail: &str, retry_after_seconds: u64) -> Problem {
    tracing::warn!(area, error = detail, "NATS failed");
    Problem::new(ProblemType::NatsUnavailable, "NATS is unavailable; try again shortly")
        .retry_after(retry_after_seconds)
}

/// "Where is my message?" failures.
#[must_use]
pub fn tracking_problem(err: crate::tracking::TrackingError, retry_after_seconds: u64) -> Problem {
    use crate::tracking::TrackingKind;
    match err.kind() {
        TrackingKind::Off => {
            Problem::new(ProblemType::NotFound, "message tracking is turned off (system.tracking = false)")
        }
        TrackingKind::Nats => nats_unavailable("tracking", err.detail(), retry_after_seconds),
    }
}

/// Delivery failures: subscriptions, dead letters, pull.
#[must_use]
pub fn delivery_problem(err: crate::delivery::DeliveryError, retry_after_seconds: u64) -> Problem {
    use crate::delivery::DeliveryKind;
    match err.kind() {
        // The ack token key is settled through NATS: failing to is NATS failing.
        DeliveryKind::Nats | DeliveryKind::NoConsumer | DeliveryKind::TokenKey => {
            nats_unavailable("delivery", err.detail(), retry_after_seconds)
        }
        // Startup and configuration failures; never expected at request time.
        DeliveryKind::HttpClient | DeliveryKind::Secret => {
            tracing::warn!(error = err.detail(), "delivery failed");
            Problem::new(ProblemType::Internal, "the delivery engine failed; see the gateway's log")
        }
    }
}
// --- inbound ---

impl From<crate::inbound::InboundError> for Problem {
    fn from(err: crate::inbound::InboundError) -> Self {
        use crate::inbound::InboundErrorKind as Kind;
        match err.kind() {
            Kind::Unauthorized => Problem::new(ProblemType::Unauthorized, err.detail()),
            Kind::FormTooComplex => Problem::new(ProblemType::FormTooComplex, err.detail()),
            Kind::Undecodable => Problem::new(ProblemType::UndecodableBody, err.detail()),
            Kind::TooManyEntries => Problem::new(ProblemType::TooManyItems, err.detail()),
            Kind::TransformFailed => Problem::new(ProblemType::TransformFailed, err.detail()),
            Kind::NoParticipant => {
                tracing::error!(detail = err.detail(), "inbound route without its participant");
                Problem::new(ProblemType::Internal, "internal error")
            }
        }
    }
}

// --- import ---

impl From<crate::import::ImportError> for Problem {
    fn from(err: crate::import::ImportError) -> Self {
        use crate::import::ImportErrorKind as Kind;
        let class = match err.kind() {
            Kind::TooLarge => ProblemType::PayloadTooLarge,
            Kind::TooManyRows => ProblemType::TooManyItems,
            Kind::Unreadable => ProblemType::UnreadableFile,
            Kind::Undecodable => ProblemType::UndecodableBody,
        };
        Problem::new(class, err.detail())
    }
}
