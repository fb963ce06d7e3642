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
