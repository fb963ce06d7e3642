//! The one catalogue of refusals and failures: every operation of the bus fails with a
//! [`Problem`] of one [`ProblemType`] class, whatever path it came in by. The HTTP edge renders
//! it as RFC 9457 `application/problem+json` (`http/problem.rs`); docs/errors.md
//! mirrors the catalogue, and a test keeps them in step.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use crate::contracts::Violation;

/// Every class of error the API answers with. Clients match on [`ProblemType::slug`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemType {
    MalformedJson,
    InvalidUtf8,
    PayloadTooLarge,
    JsonTooDeep,
    UnsupportedMediaType,
    Unauthorized,
    Forbidden,
    InvalidSubject,
    InvalidCloudEvent,
    InvalidId,
    NoStream,
    ContractViolation,
    ContractRequired,
    UnknownDataschema,
    BatchRejected,
    TooManyItems,
    NatsUnavailable,
    PublishTimeout,
    Overloaded,
    NotFound,
    InvalidQuery,
    TransformFailed,
    InvalidHeader,
    TooManyStreams,
    AlreadyAcked,
    InvalidAckToken,
    WrongMode,
    RevisionMismatch,
    InvalidKey,
    ReplyContractViolation,
    ResponderError,
    RequestTimeout,
    NoResponders,
    MethodNotAllowed,
    Internal,
    DuplicateKey,
    FormTooComplex,
    RateLimited,
    BodyTimeout,
    UndecodableBody,
    UnreadableFile,
    ContractConflict,
    InvalidSchema,
    IncompatibleContract,
}

impl ProblemType {
    /// Every class, for the catalogue test and docs.
    pub const ALL: &'static [ProblemType] = &[
        Self::MalformedJson,
        Self::InvalidUtf8,
        Self::PayloadTooLarge,
        Self::JsonTooDeep,
        Self::UnsupportedMediaType,
        Self::Unauthorized,
        Self::Forbidden,
        Self::InvalidSubject,
        Self::InvalidCloudEvent,
        Self::InvalidId,
        Self::NoStream,
        Self::ContractViolation,
        Self::ContractRequired,
        Self::UnknownDataschema,
        Self::BatchRejected,
        Self::TooManyItems,
        Self::NatsUnavailable,
        Self::PublishTimeout,
        Self::Overloaded,
        Self::NotFound,
        Self::InvalidQuery,
        Self::TransformFailed,
        Self::InvalidHeader,
        Self::TooManyStreams,
        Self::AlreadyAcked,
        Self::InvalidAckToken,
        Self::WrongMode,
        Self::RevisionMismatch,
        Self::InvalidKey,
        Self::ReplyContractViolation,
        Self::ResponderError,
        Self::RequestTimeout,
        Self::NoResponders,
        Self::MethodNotAllowed,
        Self::Internal,
        Self::DuplicateKey,
        Self::FormTooComplex,
        Self::RateLimited,
        Self::BodyTimeout,
        Self::UndecodableBody,
        Self::UnreadableFile,
        Self::ContractConflict,
        Self::InvalidSchema,
        Self::IncompatibleContract,
    ];

    /// The stable identifier clients match on.
    #[must_use]
    pub const fn slug(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed-json",
            Self::InvalidUtf8 => "invalid-utf8",
            Self::PayloadTooLarge => "payload-too-large",
            Self::JsonTooDeep => "json-too-deep",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidSubject => "invalid-subject",
            Self::InvalidCloudEvent => "invalid-cloudevent",
            Self::InvalidId => "invalid-id",
            Self::NoStream => "no-stream",
            Self::ContractViolation => "contract-violation",
            Self::ContractRequired => "contract-required",
            Self::UnknownDataschema => "unknown-dataschema",
            Self::BatchRejected => "batch-rejected",
            Self::TooManyItems => "too-many-items",
            Self::NatsUnavailable => "nats-unavailable",
            Self::PublishTimeout => "publish-timeout",
            Self::Overloaded => "overloaded",
            Self::NotFound => "not-found",
            Self::InvalidQuery => "invalid-query",
            Self::TransformFailed => "transform-failed",
            Self::InvalidHeader => "invalid-header",
            Self::TooManyStreams => "too-many-streams",
            Self::AlreadyAcked => "already-acked",
            Self::InvalidAckToken => "invalid-ack-token",
            Self::WrongMode => "wrong-mode",
            Self::RevisionMismatch => "revision-mismatch",
            Self::InvalidKey => "invalid-key",
            Self::ReplyContractViolation => "reply-contract-violation",
            Self::ResponderError => "responder-error",
            Self::RequestTimeout => "request-timeout",
            Self::NoResponders => "no-responders",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Internal => "internal",
            Self::DuplicateKey => "duplicate-key",
            Self::FormTooComplex => "form-too-complex",
            Self::RateLimited => "rate-limited",
            Self::BodyTimeout => "body-timeout",
            Self::UndecodableBody => "undecodable-body",
            Self::UnreadableFile => "unreadable-file",
            Self::ContractConflict => "contract-conflict",
            Self::InvalidSchema => "invalid-schema",
            Self::IncompatibleContract => "incompatible-contract",
        }
    }

    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson
            | Self::InvalidUtf8
            | Self::JsonTooDeep
            | Self::InvalidSubject
            | Self::InvalidCloudEvent
            | Self::InvalidId
            | Self::InvalidQuery => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge | Self::TooManyItems => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NoStream | Self::NotFound => StatusCode::NOT_FOUND,
            Self::ContractViolation | Self::ContractRequired | Self::UnknownDataschema | Self::BatchRejected => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::NatsUnavailable | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::PublishTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TransformFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidHeader => StatusCode::BAD_REQUEST,
            Self::TooManyStreams => StatusCode::TOO_MANY_REQUESTS,
            Self::AlreadyAcked => StatusCode::CONFLICT,
            Self::InvalidAckToken => StatusCode::UNPROCESSABLE_ENTITY,
            Self::WrongMode => StatusCode::CONFLICT,
            Self::RevisionMismatch => StatusCode::PRECONDITION_FAILED,
            Self::InvalidKey => StatusCode::BAD_REQUEST,
            Self::ReplyContractViolation => StatusCode::BAD_GATEWAY,
            Self::ResponderError => StatusCode::BAD_GATEWAY,
            Self::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoResponders => StatusCode::SERVICE_UNAVAILABLE,
            Self::DuplicateKey | Self::FormTooComplex | Self::UndecodableBody | Self::UnreadableFile => {
                StatusCode::BAD_REQUEST
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ContractConflict => StatusCode::CONFLICT,
            Self::InvalidSchema | Self::IncompatibleContract => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::MalformedJson => "The body is not well-formed JSON",
            Self::InvalidUtf8 => "The body is not valid UTF-8",
            Self::PayloadTooLarge => "The body is larger than the limit",
            Self::JsonTooDeep => "The JSON nests deeper than the limit",
            Self::UnsupportedMediaType => "The content type is not accepted here",
            Self::Unauthorized => "A valid bearer token is required",
            Self::Forbidden => "The participant may not do this",
            Self::InvalidSubject => "The subject is not a valid publish subject",
            Self::InvalidCloudEvent => "The CloudEvents attributes are invalid",
            Self::InvalidId => "The message id is invalid",
            Self::NoStream => "No stream stores this subject",
            Self::ContractViolation => "The data does not honour its contract",
            Self::ContractRequired => "No contract is bound to this subject",
            Self::UnknownDataschema => "The requested dataschema is not bound to this subject",
            Self::BatchRejected => "Some batch items were refused; nothing was published",
            Self::TooManyItems => "The batch has more items than the limit",
            Self::NatsUnavailable => "NATS is unavailable",
            Self::PublishTimeout => "JetStream did not confirm storage in time",
            Self::Overloaded => "The gateway is at its in-flight limit",
            Self::NotFound => "No such resource",
            Self::InvalidQuery => "The query parameters are invalid",
            Self::TransformFailed => "The configured transform failed on this input",
            Self::InvalidHeader => "A request header is invalid",
            Self::TooManyStreams => "The participant holds its limit of open event streams",
            Self::AlreadyAcked => "The message was already acked or terminated with this token",
            Self::InvalidAckToken => "An ack token is forged, altered or for another subscription",
            Self::WrongMode => "The subscription's mode does not allow this",
            Self::RevisionMismatch => "The value changed since the given revision",
            Self::InvalidKey => "The key is not a valid directory key",
            Self::ReplyContractViolation => "The reply does not honour its contract",
            Self::ResponderError => "The responder answered with an error",
            Self::RequestTimeout => "The responder did not answer in time",
            Self::NoResponders => "No responder is listening on this subject",
            Self::MethodNotAllowed => "The method is not allowed on this resource",
            Self::Internal => "Internal error",
            Self::DuplicateKey => "A JSON object has the same member twice",
            Self::FormTooComplex => "The form has more fields or deeper keys than the limit",
            Self::RateLimited => "The participant is over its rate or in-flight limit",
            Self::BodyTimeout => "The request body did not arrive in time",
            Self::UndecodableBody => "The body is not valid in the charset its Content-Type names",
            Self::UnreadableFile => "The file is not a readable spreadsheet for this import",
            Self::ContractConflict => "The contract version cannot be registered as asked",
            Self::InvalidSchema => "The body is not a valid JSON Schema 2020-12",
            Self::IncompatibleContract => "The new version breaks its compatibility mode",
        }
    }

    /// Whether the same request may succeed if sent again unchanged.
    #[must_use]
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Self::NatsUnavailable
                | Self::PublishTimeout
                | Self::Overloaded
                | Self::Internal
                | Self::NoResponders
                | Self::RequestTimeout
                | Self::TooManyStreams
                | Self::RateLimited
                | Self::BodyTimeout
        )
    }

    #[must_use]
    pub fn uri(self) -> String {
        format!("urn:magistral:problem:{}", self.slug())
    }
}

/// An RFC 9457 problem, ready to be answered.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemType,
    pub detail: String,
    /// `errors` member: every failing JSON pointer of a contract violation.
    pub errors: Vec<Violation>,
    /// `items` member: per-item problems of a refused batch.
    pub items: Vec<Value>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// A status other than the class's own: a responder's error keeps the code it chose.
    pub status: Option<StatusCode>,
    /// Already counted in the publish metrics (so the HTTP layer does not count it again).
    pub counted: bool,
    /// JetStream answered "no responders" for a stream (worth retrying during a failover).
    pub no_responders: bool,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            items: Vec::new(),
            retry_after: None,
            status: None,
            counted: false,
            no_responders: false,
        }
    }

    #[must_use]
    pub fn with_errors(mut self, errors: Vec<Violation>) -> Self {
        self.errors = errors;
        self
    }

    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status answered.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    /// The problem as a JSON object (also used for batch items).
    #[must_use]
    pub fn body(&self) -> Value {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            type_: String,
            title: &'static str,
            status: u16,
            detail: &'a str,
            retryable: bool,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            errors: &'a [Violation],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            items: &'a [Value],
        }
        serde_json::to_value(Body {
            type_: self.kind.uri(),
            title: self.kind.title(),
            status: self.status().as_u16(),
            detail: &self.detail,
            retryable: self.kind.retryable()
                || (self.kind == ProblemType::ResponderError && matches!(self.status().as_u16(), 502..=504)),
            errors: &self.errors,
            items: &self.items,
        })
        .unwrap_or(Value::Null)
    }
}
