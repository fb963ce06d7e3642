//! The extractors every route parses its request with, each refusing in the problem format:
//! - [`Caller`]: who is asking (the `Authorization: Bearer` token), with the catalog it was
//!   found in, so a handler loads the catalog once;
//! - [`JsonBody`] / [`JsonBytes`]: a bounded body of a JSON media type, deserialised or raw;
//!   [`CommandBody`] / [`OptionalCommandBody`] for the operations routes' small commands;
//! - [`SubjectPath`]: the `{subject}` of a route, refused as `invalid-subject` when it is not
//!   UTF-8 once percent-decoded;
//! - [`Params`]: query parameters, refused as `invalid-query`.
//!
//! Extractors run in the order of a handler's arguments and the first refusal answers, so a
//! handler lists them in the order docs/errors.md gives: `Caller` first. A check that must
//! answer before a later extractor's refusal takes that extractor as `Result<X, Problem>` and
//! applies `?` where its turn comes.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate, media_type, read_body, request_charset};
use crate::catalog::Catalog;
use crate::charset::{Charset, to_utf8};
use crate::participants::Participant;
use crate::publish::cloudevents::is_json_media_type;

/// An authenticated caller: the catalog of this request (loaded once) and the participant
/// its bearer token belongs to. Cheap to clone.
///
/// As an extractor it answers `401 unauthorized` for a missing, malformed or unknown token;
/// the authentication is done once per request (later extractors that need the caller reuse
/// it).
#[derive(Clone)]
pub struct Caller {
    catalog: Arc<Catalog>,
    /// The participant's place in `catalog.participants`.
    index: usize,
}

impl Caller {
    /// Authenticates `headers` against `catalog` (see [`authenticate`]).
    ///
    /// # Errors
    /// `unauthorized`.
    pub fn from_headers(catalog: Arc<Catalog>, headers: &HeaderMap) -> Result<Self, Problem> {
        let participant = authenticate(&catalog, headers)?;
        let index = catalog
            .participants
            .position(&participant.name)
            .ok_or_else(|| Problem::new(ProblemType::Internal, "internal error"))?;
        Ok(Self { catalog, index })
    }

    /// The participant `name` of `catalog` (a console session names its participant).
    #[must_use]
    pub(crate) fn of(catalog: Arc<Catalog>, name: &str) -> Option<Self> {
        let index = catalog.participants.position(name)?;
        Some(Self { catalog, index })
    }

    /// The catalog the caller was authenticated in; the request's view of the configuration.
    #[must_use]
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The catalog, shared (for work that outlives the borrow of the caller).
    #[must_use]
    pub fn catalog_arc(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    #[must_use]
    pub fn participant(&self) -> &Participant {
        #[allow(clippy::expect_used)]
        self.catalog.participants.get(self.index).expect("the index was taken from this catalog")
    }

    /// The participant's name, for metrics and logs.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.participant().name
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = Self::from_headers(state.catalog.load_full(), &parts.headers)?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// Refuses a request whose `Content-Type` is not `application/json` or a `+json` type, or
/// names a charset the Encoding Standard does not know; the charset to decode the body from
/// when it is not UTF-8 ([`crate::charset::to_utf8`]).
///
/// # Errors
/// `unsupported-media-type`.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<Option<Charset>, Problem> {
    match media_type(headers).as_deref() {
        Some(t) if is_json_media_type(t) => request_charset(headers),
        other => Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            format!("{} is not accepted; send application/json", other.unwrap_or("no Content-Type")),
        )),
    }
}

/// A body of a JSON media type, at most `limits.max_body_bytes`, not yet parsed. Checks, in
/// order: content type and charset (`unsupported-media-type`) → size and arrival
/// (`payload-too-large`, `body-timeout`) → decoding from a charset other than UTF-8
/// (`undecodable-body`).
pub struct JsonBytes(pub Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let (parts, body) = request.into_parts();
        let charset = require_json(&parts.headers)?;
        Ok(Self(to_utf8(read_body(body, &parts.headers, state.limits.max_body_bytes).await?, charset)?))
    }
}

/// A [`JsonBytes`] body deserialised as `T` (`malformed-json` when it is not one: bad JSON,
/// unknown or missing members).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let JsonBytes(body) = JsonBytes::from_request(request, state).await?;
        serde_json::from_slice(&body).map(Self).map_err(crate::publish::malformed)
    }
}

/// The most an operations command (replay, fetch, ack) may send, whatever
/// `limits.max_body_bytes` says: these bodies carry ids and tokens, not data.
pub(crate) const COMMAND_BODY_BYTES: usize = 1024 * 1024;

/// The body of an operations command: `application/json` (exactly), at most
/// [`COMMAND_BODY_BYTES`], deserialised as `T`. Checks, in order: content type → size and
/// arrival → `T` (`malformed-json`).
pub(crate) struct CommandBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for CommandBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _: &AppState) -> Result<Self, Problem> {
        let (parts, body) = request.into_parts();
        require_plain_json(&parts.headers)?;
        let body = read_body(body, &parts.headers, COMMAND_BODY_BYTES).await?;
        serde_json::from_slice(&body).map(Self).map_err(crate::publish::malformed)
    }
}

/// A [`CommandBody`] that may be left empty (then `T::default()`). Checks, in order: size and
/// arrival → content type, only for a body that is not blank → `T`.
pub(crate) struct OptionalCommandBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalCommandBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _: &AppState) -> Result<Self, Problem> {
        let (parts, body) = request.into_parts();
        let body = read_body(body, &parts.headers, COMMAND_BODY_BYTES).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        require_plain_json(&parts.headers)?;
        serde_json::from_slice(&body).map(Self).map_err(crate::publish::malformed)
    }
}

fn require_plain_json(headers: &HeaderMap) -> Result<(), Problem> {
    if media_type(headers).as_deref() == Some("application/json") {
        Ok(())
    } else {
        Err(Problem::new(ProblemType::UnsupportedMediaType, "send application/json"))
    }
}

/// The `{subject}` of a route, percent-decoded; not yet checked as a subject (the domain
/// does that, and names the rule broken).
pub struct SubjectPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SubjectPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(subject)) => Ok(Self(subject)),
            Err(_) => {
                Err(Problem::new(ProblemType::InvalidSubject, "the subject is not valid UTF-8 once percent-decoded"))
            }
        }
    }
}

/// Query parameters as `T`; `invalid-query` (with serde's reason) when they do not fit.
pub(crate) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Self(params)),
            Err(e) => Err(Problem::new(ProblemType::InvalidQuery, e.body_text())),
        }
    }
}

/// A NATS failure as an answer: the error text goes to the log, the client gets a fixed
/// detail (`what` failed) and `Retry-After`.
pub(crate) fn nats_unavailable(state: &AppState, what: &str, err: impl std::fmt::Display) -> Problem {
    tracing::warn!(%err, "{what}: NATS failed");
    Problem::new(ProblemType::NatsUnavailable, format!("{what}: NATS did not answer; retry later"))
        .retry_after(state.limits.retry_after_seconds)
}
