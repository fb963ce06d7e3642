//! `POST /v1/request/{subject}?timeout=`: an HTTP request becomes a NATS request; the reply
//! becomes the HTTP response (or a problem mapped from NATS micro error headers).

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::problem::{Problem, ProblemType};
use super::{AppState, authenticate, header_str, media_type, read_body};
use crate::publish::cloudevents::{self, StoredAttributes};

use crate::subject;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestQuery {
    /// `500ms`, `5s`, ...; bounded by `limits.max_request_timeout`.
    timeout: Option<String>,
}

/// Sends the body as a NATS request and answers with the reply.
pub async fn request(
    State(state): State<AppState>,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<RequestQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let catalog = state.catalog.load_full();
    let participant = authenticate(&catalog, &headers)?;
    let Ok(Path(subject)) = subject else {
        return Err(Problem::new(ProblemType::InvalidSubject, "the subject is not valid UTF-8 once percent-decoded"));
    };
    let Query(query) = query.map_err(|e| Problem::new(ProblemType::InvalidQuery, e.body_text()))?;
    let limits = &state.limits;
    let timeout = match query.timeout.as_deref() {
        None => limits.request_timeout,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| Problem::new(ProblemType::InvalidQuery, format!("timeout {t:?}: {e} (e.g. 500ms, 5s)")))?,
    }
    .min(limits.max_request_timeout)
    .max(Duration::from_millis(1));

    subject::validate_publish_subject(&subject, limits.max_subject_length)
        .map_err(|e| Problem::new(ProblemType::InvalidSubject, format!("{subject:?}: {e}")))?;
    if subject.starts_with(crate::delivery::system::RESERVED_PREFIX) {
        return Err(Problem::new(ProblemType::InvalidSubject, "subjects under `magistral.` are reserved"));
    }
    if !participant.request.allows(&subject) {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!("participant {} may not send requests to {subject}", participant.name),
        ));
    }
    // A stream storing the subject keeps the request and fans it out like a publish.
    if let Some(stream) = catalog.stream_for(&subject)
        && !participant.publish.allows(&subject)
    {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!(
                "{subject} is stored by stream {}; participant {} may not publish there",
                stream.name(),
                participant.name
            ),
        ));
    }
    match media_type(&headers).as_deref() {
        Some(t) if cloudevents::is_json_media_type(t) => {}
        other => {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                format!("{} is not accepted; send application/json", other.unwrap_or("no Content-Type")),
            ));
        }
    }
    let body = read_body(body, &headers, limits.max_body_bytes).await?;
    let attributes = cloudevents::from_http_headers(&headers)?;
    crate::publish::check_attributes(
        limits,
        &attributes,
        header_str(&headers, "traceparent"),
        header_str(&headers, "tracestate"),
    )?;
    let contract = catalog
        .contracts
        .for_subject(&subject, attributes.dataschema.as_deref())
        .map_err(|e| Problem::new(ProblemType::UnknownDataschema, e.to_string()))?;
    crate::publish::check_data(limits, contract, &body)?;

    let id = attributes.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let nats_headers = StoredAttributes {
        id: &id,
        source: &participant.source,
        type_: attributes.type_.as_deref().unwrap_or(&subject),
        subject: attributes.subject.as_deref(),
        dataschema: contract.map(|c| c.dataschema.as_str()),
        time: attributes.time.as_deref(),
        extensions: &attributes.extensions,
        traceparent: header_str(&headers, "traceparent"),
        tracestate: header_str(&headers, "tracestate"),
    }
    .to_nats_headers();

    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(
            Problem::new(ProblemType::NatsUnavailable, "not connected to NATS").retry_after(limits.retry_after_seconds)
        );
    }
    let started = std::time::Instant::now();
    let sent = state
        .client
        .send_request(
            subject.clone(),
            async_nats::Request::new().payload(body).headers(nats_headers).timeout(Some(timeout)),
        )
        .await;
    let outcome = match &sent {
        Ok(reply) if reply.headers.as_ref().is_some_and(|h| h.get("Nats-Service-Error-Code").is_some()) => "",
        Ok(_) => "answered",
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => "no-responders",
            async_nats::RequestErrorKind::TimedOut => "request-timeout",
            _ => "nats-unavailable",
        },
    };
    metrics::histogram!("magistral_request_duration_seconds", "participant" => participant.name.clone())
        .record(started.elapsed().as_secs_f64());
    if !outcome.is_empty() {
        metrics::counter!("magistral_request_total", "participant" => participant.name.clone(), "outcome" => outcome)
            .increment(1);
    }
    let reply = sent.map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            Problem::new(ProblemType::NoResponders, format!("nothing answers {subject}"))
                .retry_after(limits.retry_after_seconds)
        }
        async_nats::RequestErrorKind::TimedOut => {
            Problem::new(ProblemType::RequestTimeout, format!("no answer within {timeout:?}"))
        }
        _ => Problem::new(ProblemType::NatsUnavailable, "the request could not be sent")
            .retry_after(limits.retry_after_seconds),
    })?;

    let reply_header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    if let Some(code) = reply_header("Nats-Service-Error-Code") {
        let detail = reply_header("Nats-Service-Error").unwrap_or_default();
        // The service's 4xx is its answer about this request; 503/504 say it is unavailable;
        // any other failure is a bad gateway (never our own 500).
        let status = match code.trim().parse::<u16>() {
            Ok(c @ (400..=499 | 503 | 504)) => StatusCode::from_u16(c).unwrap_or(StatusCode::BAD_GATEWAY),
            _ => StatusCode::BAD_GATEWAY,
        };
        metrics::counter!("magistral_request_total", "participant" => participant.name.clone(), "outcome" => "responder-error").increment(1);
        let mut problem = Problem::new(ProblemType::ResponderError, format!("{detail} (service error code {code})"));
        problem.status = Some(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            problem = problem.retry_after(limits.retry_after_seconds);
        }
        return Err(problem);
    }
    // The bus answers JSON only: a reply in another media type (an HTML page with a script,
    // say) or not parsing as JSON is a failing responder, never served under our origin.
    if let Some(t) = reply_header("content-type")
        && !is_json(&media_type_of(&t))
    {
        metrics::counter!("magistral_request_total", "participant" => participant.name.clone(), "outcome" => "responder-error").increment(1);
        return Err(bad_reply(format!("the reply is {}, not JSON", media_type_of(&t))));
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&reply.payload).is_err() {
        metrics::counter!("magistral_request_total", "participant" => participant.name.clone(), "outcome" => "responder-error").increment(1);
        return Err(bad_reply("the reply is not JSON".to_owned()));
    }
    if let Some(contract) = catalog.contracts.for_reply(&subject) {
        let value: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| Problem::new(ProblemType::ReplyContractViolation, format!("the reply is not JSON: {e}")))?;
        let (violations, total) = contract.violations(&value, limits.max_violations_reported);
        if total > 0 {
            return Err(Problem::new(
                ProblemType::ReplyContractViolation,
                format!("the reply breaks contract {} v{} in {total} place(s)", contract.name, contract.version),
            )
            .with_errors(violations));
        }
    }
    let mut response = (StatusCode::OK, reply.payload).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(h) = &reply.headers {
        for (name, values) in h.iter() {
            let lower = name.to_string().to_ascii_lowercase();
            if lower.starts_with("ce-")
                && let (Ok(n), Some(v)) = (header::HeaderName::from_bytes(lower.as_bytes()), values.first())
                && let Ok(v) = HeaderValue::from_str(v.as_str())
            {
                response.headers_mut().insert(n, v);
            }
        }
    }
    Ok(response)
}

/// `type/subtype` of a Content-Type value, lowercased, parameters dropped.
fn media_type_of(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// `application/json` or any `+json` type.
fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn bad_reply(detail: String) -> Problem {
    Problem::new(ProblemType::ResponderError, detail)
}
