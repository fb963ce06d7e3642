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

// --- inbound ---

impl From<crate::inbound::InboundError> for Problem {
    fn from(err: crate::inbound::InboundError) -> Self {
        use crate::inbound::InboundErrorKind as Kind;
        match err.kind() {
            Kind::Unauthorized => Problem::new(ProblemType::Unauthorized, err.detail()),
            Kind::FormTooComplex => Problem::new(ProblemType::FormTooComplex, err.detail()),
            Kind::TooManyEntries => Problem::new(ProblemType::TooManyItems, err.detail()),
            Kind::TransformFailed => Problem::new(ProblemType::TransformFailed, err.detail()),
            Kind::NoParticipant => {
                tracing::error!(detail = err.detail(), "inbound route without its participant");
                Problem::new(ProblemType::Internal, "internal error")
            }
        }
    }
}
