//! The HTTP side of the client: one `reqwest` client, the gateway's base URL and the token;
//! every answer either decodes as JSON or becomes a [`Failure`] that knows its exit code.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, Url};
use serde::Deserialize;
use serde_json::Value;

use super::Exit;
use crate::problem::ProblemType;

/// How long to wait for a TCP (and TLS) connection to the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plain request may take in all: above the gateway's own bounds (publish timeout
/// 5 s, NATS questions 2–5 s per subscription), so the gateway's answer says why first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a command failed. Displayed as the one line (or few) printed on stderr.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Wrong arguments the parser could not catch (a bad `--url`, conflicting flags).
    #[error("{0}")]
    Usage(String),
    /// The input file cannot be read.
    #[error("{path}: {source}")]
    Input { path: String, source: std::io::Error },
    /// The gateway answered with an RFC 9457 problem.
    #[error("{0}")]
    Problem(Box<ProblemAnswer>),
    /// The gateway (or something in front of it) answered an error that is no problem of ours.
    #[error("HTTP {status} from {url}: {excerpt}")]
    Http { status: u16, url: String, excerpt: String },
    /// No connection: nothing listens, DNS, TLS, or the connection broke.
    #[error("cannot reach the gateway at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// No answer in time.
    #[error("the gateway at {url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    /// A success answer that is not the JSON the API answers.
    #[error("{url} answered something that is not the gateway's API: {why}")]
    Protocol { url: String, why: String },
}

impl Failure {
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Input { .. } => Exit::NoInput,
            Self::Problem(p) => p.kind.map_or_else(|| Exit::of_status(p.status), Exit::of_problem),
            Self::Http { status, .. } => Exit::of_status(*status),
            Self::Unreachable { .. } => Exit::Unavailable,
            Self::Timeout { .. } => Exit::TempFail,
            Self::Protocol { .. } => Exit::Protocol,
        }
    }

    /// Worth trying again later (what `tail` does after it was connected once).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self.exit(), Exit::Unavailable | Exit::TempFail)
    }

    fn of_reqwest(err: &reqwest::Error, url: &Url) -> Self {
        let url = url.as_str().to_owned();
        if err.is_timeout() {
            return Self::Timeout { url, seconds: REQUEST_TIMEOUT.as_secs() };
        }
        if err.is_builder() {
            return Self::Usage(format!("{url}: {err}"));
        }
        // reqwest's own text is "error sending request"; the cause ("Connection refused")
        // is at the end of the chain.
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        Self::Unreachable { url, reason }
    }
}

/// An RFC 9457 problem as the gateway answers it (`src/problem.rs`).
#[derive(Debug, Deserialize)]
pub(crate) struct ProblemAnswer {
    #[serde(rename = "type", default)]
    pub type_uri: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: Option<String>,
    /// Contract violations: the failing pointers.
    #[serde(default)]
    pub errors: Vec<Violation>,
    /// Our class, when the type is one of ours.
    #[serde(skip)]
    pub kind: Option<ProblemType>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Violation {
    #[serde(rename = "instancePath", default)]
    pub instance_path: String,
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for ProblemAnswer {
    /// `title: detail`, then one line per contract violation.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) if !detail.is_empty() => write!(f, "{}: {detail}", self.title)?,
            _ => write!(f, "{}", self.title)?,
        }
        for v in &self.errors {
            let at = if v.instance_path.is_empty() { "(the document)" } else { &v.instance_path };
            write!(f, "\n  {at}: {}", v.message)?;
        }
        Ok(())
    }
}

/// A success answer: its JSON, and its text as it came (what `--json` prints).
pub(crate) struct Answer {
    pub json: Value,
    pub text: String,
    /// Where it came from, for a message about an answer of the wrong shape.
    pub url: String,
}

/// The gateway's HTTP API as seen from the command line.
pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Api {
    /// A client for the gateway at `url`, acting as the participant of `token`.
    ///
    /// # Errors
    /// `url` is not an http(s) URL; the HTTP client cannot be built.
    pub(crate) fn new(url: &str, token: Option<String>) -> Result<Self, Failure> {
        let base = Url::parse(url).map_err(|e| Failure::Usage(format!("--url / MAGISTRAL_URL {url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Failure::Usage(format!("--url / MAGISTRAL_URL {url:?}: an http:// or https:// URL is needed")));
        }
        // reqwest is built without a TLS provider of its own; ring, as the gateway uses it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("magistral-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| Failure::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, token: token.filter(|t| !t.is_empty()) })
    }

    /// The URL of an API path given as segments (each percent-encoded as one segment, so a
    /// subject or id with `/`, `?` or spaces stays one), below the base URL's own path.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url).header(ACCEPT, "application/json, application/problem+json");
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET` a JSON resource.
    pub(crate) async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Answer, Failure> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send(self.request(reqwest::Method::GET, url.clone()).timeout(REQUEST_TIMEOUT), &url).await
    }

    /// `POST` a JSON command.
    pub(crate) async fn post(&self, segments: &[&str], body: &Value) -> Result<Answer, Failure> {
        let url = self.url(segments);
        let request = self
            .request(reqwest::Method::POST, url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(REQUEST_TIMEOUT);
        self.send(request, &url).await
    }

    /// `POST` a body with extra headers (a publish: `Idempotency-Key`, `ce-*`).
    pub(crate) async fn post_bytes(
        &self,
        segments: &[&str],
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        let url = self.url(segments);
        let request = self
            .request(reqwest::Method::POST, url.clone())
            .header(CONTENT_TYPE, "application/json")
            .headers(headers)
            .body(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(request, &url).await
    }

    /// Opens an endless `text/event-stream` answer, resuming after `last_event_id`. No total
    /// timeout: the caller bounds the time between two reads.
    pub(crate) async fn open_events(
        &self,
        segments: &[&str],
        last_event_id: Option<&str>,
    ) -> Result<Response, Failure> {
        let url = self.url(segments);
        let mut request = self.request(reqwest::Method::GET, url.clone()).header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            let value = HeaderValue::from_str(id)
                .map_err(|_| Failure::Usage(format!("{id:?} is not an event id (it must be visible ASCII)")))?;
            request = request.header("last-event-id", value);
        }
        // The answer's head must come in time; its body never ends.
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .map_err(|_| Failure::Timeout { url: url.as_str().to_owned(), seconds: REQUEST_TIMEOUT.as_secs() })?
            .map_err(|e| Failure::of_reqwest(&e, &url))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Err(error_answer(status, &url, &body))
    }

    async fn send(&self, request: RequestBuilder, url: &Url) -> Result<Answer, Failure> {
        let response = request.send().await.map_err(|e| Failure::of_reqwest(&e, url))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| Failure::of_reqwest(&e, url))?;
        if !(200..300).contains(&status) {
            return Err(error_answer(status, url, &body));
        }
        let json = serde_json::from_slice(&body).map_err(|e| Failure::Protocol {
            url: url.as_str().to_owned(),
            why: format!("HTTP {status} with a body that is not JSON ({e})"),
        })?;
        Ok(Answer { json, text: String::from_utf8_lossy(&body).into_owned(), url: url.as_str().to_owned() })
    }
}

/// An error answer: our problem when it is one (`type` and `title` present), else plain HTTP.
fn error_answer(status: u16, url: &Url, body: &Bytes) -> Failure {
    match serde_json::from_slice::<ProblemAnswer>(body) {
        Ok(mut problem) if !problem.type_uri.is_empty() && !problem.title.is_empty() => {
            problem.kind = ProblemType::ALL.iter().copied().find(|k| k.uri() == problem.type_uri);
            if problem.status == 0 {
                problem.status = status;
            }
            Failure::Problem(Box::new(problem))
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no body)");
            Failure::Http { status, url: url.as_str().to_owned(), excerpt: line.chars().take(200).collect() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(base: &str) -> Api {
        Api::new(base, None).unwrap()
    }

    #[test]
    fn path_segments_are_encoded_one_by_one_below_the_base_path() {
        assert_eq!(
            api("http://127.0.0.1:8080").url(&["v1", "messages", "a/b c?"]).as_str(),
            "http://127.0.0.1:8080/v1/messages/a%2Fb%20c%3F"
        );
        assert_eq!(
            api("https://bus.example/magistral/").url(&["v1", "subscriptions"]).as_str(),
            "https://bus.example/magistral/v1/subscriptions"
        );
    }

    #[test]
    fn a_url_that_is_no_http_url_is_a_usage_error() {
        for bad in ["127.0.0.1:8080", "ftp://x", "not a url"] {
            assert!(matches!(Api::new(bad, None), Err(Failure::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn problems_are_read_by_class_and_printed_as_title_and_detail() {
        let url = Url::parse("http://x/").unwrap();
        let body = Bytes::from_static(
            br#"{"type":"urn:magistral:problem:contract-violation","title":"The data does not honour its contract","status":422,"detail":"1 violation(s) of contract sales-order v1","errors":[{"instancePath":"/qty","schemaPath":"/x","message":"-1 is less than 0"}]}"#,
        );
        let failure = error_answer(422, &url, &body);
        assert_eq!(failure.exit(), Exit::DataErr);
        assert_eq!(
            failure.to_string(),
            "The data does not honour its contract: 1 violation(s) of contract sales-order v1\n  /qty: -1 is less than 0"
        );
        let html = error_answer(502, &url, &Bytes::from_static(b"\n<html>Bad Gateway</html>"));
        assert_eq!(html.exit(), Exit::Unavailable);
        assert_eq!(html.to_string(), "HTTP 502 from http://x/: <html>Bad Gateway</html>");
        // Another service's problem type: judged by its status.
        let foreign = error_answer(
            403,
            &url,
            &Bytes::from_static(br#"{"type":"https://example.com/probs/out-of-credit","title":"No credit"}"#),
        );
        assert_eq!((foreign.exit(), foreign.to_string()), (Exit::NoPerm, "No credit".to_owned()));
    }
}
