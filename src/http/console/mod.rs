//! The operator console: a browser UI at `/console` for admin participants.
//!
//! The pages are embedded in the binary and load nothing from elsewhere (a strict
//! Content-Security-Policy says so to the browser). Signing in with a token sets a session
//! cookie ([`session`]); the console's script then calls the same JSON API a participant
//! would, and [`session_layer`] maps the cookie to that participant, so every action is
//! authorised exactly as the API call is. A state-changing call must also carry the session's
//! CSRF token in `X-CSRF-Token`; without it the cookie authenticates nothing (`401`).
//! What the API lacked for an overview is added as two admin-only routes:
//! `GET /v1/overview` and `GET /v1/tail` (live messages, as Server-Sent Events).

pub(crate) mod session;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::AppState;
use super::extract::{Caller, CommandBody, Params};
use super::header_str;
use super::problem::{Problem, ProblemType};
pub(crate) use session::Sessions;
use session::{COOKIE, Session};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Nothing but this origin's own files; no inline script or style, no framing.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                              connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                              form-action 'self'; frame-ancestors 'none'";

/// The header a state-changing call from the console carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Live tails open at once on this replica (each holds a NATS subscription).
const MAX_TAILS: usize = 16;

/// The console's shared state: sessions and the tail slots.
#[derive(Debug)]
pub struct Console {
    pub(crate) sessions: Sessions,
    tails: Arc<Semaphore>,
}

impl Console {
    #[must_use]
    pub fn new(config: &crate::config::ConsoleConfig) -> Self {
        if config.session_key.is_none() {
            tracing::info!(
                "console.session_key is not set: console sessions are signed with a key of this process (they end at \
                 restart and work only on this replica)"
            );
        }
        Self { sessions: Sessions::new(config), tails: Arc::new(Semaphore::new(MAX_TAILS)) }
    }
}

/// A request's console session, put in its extensions by [`session_layer`].
#[derive(Clone)]
pub(crate) struct SessionAuth {
    session: Session,
    /// A safe method, or the CSRF token matched.
    csrf_ok: bool,
}

/// Maps a valid session cookie to its participant for a request without `Authorization`:
/// the handlers' [`Caller`] then is that participant. A state-changing method needs the
/// session's CSRF token too; without it the cookie is ignored.
pub(crate) async fn session_layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if request.headers().get(header::AUTHORIZATION).is_none()
        && let Some(cookie) = cookie_value(request.headers(), COOKIE)
    {
        let catalog = state.catalog.load_full();
        if let Some(session) = state.console.sessions.verify(cookie, &catalog.participants) {
            let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            let csrf_ok =
                safe || header_str(request.headers(), CSRF_HEADER).is_some_and(|t| Sessions::csrf_matches(&session, t));
            if csrf_ok && let Some(caller) = Caller::of(catalog, &session.participant) {
                request.extensions_mut().insert(caller);
            }
            request.extensions_mut().insert(SessionAuth { session, csrf_ok });
        }
    }
    next.run(request).await
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Headers every console answer carries.
fn hardened(mut response: Response, content_type: &'static str, cache: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// `GET /console`: the single page (the sign-in form until a session exists).
pub(crate) async fn page() -> Response {
    hardened(INDEX_HTML.into_response(), "text/html; charset=utf-8", "no-store")
}

/// `GET /console/{asset}`: the page's script and style sheet.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    // Revalidated each time: assets change with the binary, and they are small.
    match name.as_str() {
        "app.js" => hardened(APP_JS.into_response(), "text/javascript; charset=utf-8", "no-cache"),
        "app.css" => hardened(APP_CSS.into_response(), "text/css; charset=utf-8", "no-cache"),
        _ => Problem::new(ProblemType::NotFound, "no such console asset").into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    token: String,
}

fn session_body(session: &Session) -> Value {
    let expires = time::OffsetDateTime::from_unix_timestamp(i64::try_from(session.expires).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    json!({ "participant": session.participant, "csrf_token": session.csrf, "expires": expires })
}

/// Whether the request came over TLS, as far as the gateway can tell.
fn over_tls(state: &AppState, headers: &HeaderMap) -> bool {
    state.console.sessions.secure.unwrap_or_else(|| {
        header_str(headers, "x-forwarded-proto")
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    })
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> Result<HeaderValue, Problem> {
    let secure = if secure { "; Secure" } else { "" };
    // Path=/ : the console's script calls the API under /v1 with it.
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"))
        .map_err(|_| Problem::new(ProblemType::Internal, "internal error"))
}

/// A request from a page of another origin (a cross-site form or script) is refused; the
/// browser names the page's origin in `Origin` on every POST and DELETE.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = header_str(headers, header::ORIGIN.as_str()) else { return true };
    let host = header_str(headers, "x-forwarded-host").or_else(|| header_str(headers, header::HOST.as_str()));
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h.split(',').next().unwrap_or("").trim()))
}

/// `POST /console/session` with `{"token": "..."}`: signs in an admin participant.
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    CommandBody(request): CommandBody<SignIn>,
) -> Result<Response, Problem> {
    if !same_origin(&headers) {
        return Err(Problem::new(ProblemType::Forbidden, "sign in from the console's own page"));
    }
    let catalog = state.catalog.load_full();
    let participant = catalog
        .participants
        .authenticate(&request.token)
        .ok_or_else(|| Problem::new(ProblemType::Unauthorized, "unknown token"))?;
    if !participant.admin {
        tracing::info!(participant = %participant.name, "console sign-in refused: not an admin");
        return Err(Problem::new(ProblemType::Forbidden, "the console is for admin participants"));
    }
    let (cookie, session) = state.console.sessions.issue(participant, &crate::participants::hash_token(&request.token));
    tracing::info!(participant = %participant.name, "console sign-in");
    let cookie = set_cookie(&cookie, state.console.sessions.ttl().as_secs(), over_tls(&state, &headers))?;
    let response = (StatusCode::OK, [(header::SET_COOKIE, cookie)], Json(session_body(&session))).into_response();
    Ok(hardened(response, "application/json", "no-store"))
}

/// `GET /console/session`: who is signed in, and the CSRF token for state-changing calls.
pub(crate) async fn current(auth: Option<axum::Extension<SessionAuth>>) -> Result<Response, Problem> {
    let axum::Extension(auth) = auth.ok_or_else(|| Problem::new(ProblemType::Unauthorized, "not signed in"))?;
    Ok(hardened(Json(session_body(&auth.session)).into_response(), "application/json", "no-store"))
}

/// `DELETE /console/session` (with `X-CSRF-Token`): signs out.
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: Option<axum::Extension<SessionAuth>>,
) -> Result<Response, Problem> {
    let axum::Extension(auth) = auth.ok_or_else(|| Problem::new(ProblemType::Unauthorized, "not signed in"))?;
    if !auth.csrf_ok {
        return Err(Problem::new(ProblemType::Unauthorized, "send the session's X-CSRF-Token"));
    }
    state.console.sessions.revoke(&auth.session);
    tracing::info!(participant = %auth.session.participant, "console sign-out");
    let cookie = set_cookie("", 0, over_tls(&state, &headers))?;
    Ok(hardened((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(), "text/plain", "no-store"))
}

fn require_admin(caller: &Caller) -> Result<(), Problem> {
    if caller.participant().admin {
        Ok(())
    } else {
        Err(Problem::new(ProblemType::Forbidden, "only an admin participant sees the whole bus"))
    }
}

/// `GET /v1/overview` (admin): NATS, streams with counts, participants and their
/// permissions, every subscription with its status, directories, and this replica's delivery
/// counters per subscription.
pub(crate) async fn overview(State(state): State<AppState>, caller: Caller) -> Result<Response, Problem> {
    require_admin(&caller)?;
    let catalog = caller.catalog();
    let connection = state.client.connection_state();
    let info = state.client.server_info();
    let nats = json!({
        "connected": connection == async_nats::connection::State::Connected,
        "state": connection.to_string(),
        "server_name": info.server_name,
        "version": info.version,
        "cluster_urls": info.connect_urls,
    });
    let js = state.publisher.jetstream();
    // All at once, each bounded: a NATS outage costs the page 2 s, not 2 s per stream.
    let streams = futures::future::join_all(catalog.streams.iter().map(|def| async move {
        let name = &def.config.name;
        let found = tokio::time::timeout(Duration::from_secs(2), async {
            let mut stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
            stream.info().await.map(|i| i.state.clone()).map_err(|e| e.to_string())
        })
        .await;
        match found {
            Ok(Ok(s)) => json!({
                "name": name, "subjects": def.config.subjects, "directory": def.bucket,
                "messages": s.messages, "bytes": s.bytes, "consumers": s.consumer_count,
                "first_seq": s.first_sequence, "last_seq": s.last_sequence,
            }),
            Ok(Err(e)) => json!({ "name": name, "subjects": def.config.subjects, "error": e }),
            Err(_) => {
                json!({ "name": name, "subjects": def.config.subjects, "error": "NATS did not answer within 2 s" })
            }
        }
    }))
    .await;
    let participants: Vec<Value> = catalog
        .participants
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "admin": p.admin,
                "publish": p.publish.patterns(), "subscribe": p.subscribe.patterns(),
                "request": p.request.patterns(), "respond": p.respond.patterns(),
                "kv_read": p.kv_read, "kv_write": p.kv_write,
            })
        })
        .collect();
    // Every subscription as `GET /v1/subscriptions` describes it, with its `status` decided
    // on the server (so the page and the API say the same).
    let subscriptions =
        futures::future::join_all(catalog.subscriptions.iter().map(|sub| super::subscriptions::describe(&state, sub)))
            .await;
    let directories: Vec<Value> = catalog
        .directories
        .iter()
        .map(|d| json!({ "name": d.bucket, "owner": d.owner, "description": d.description }))
        .collect();
    Ok(Json(json!({
        "nats": nats,
        "streams": streams,
        "participants": participants,
        "subscriptions": subscriptions,
        "directories": directories,
        "deliveries": delivery_counts(&state.metrics.render()),
    }))
    .into_response())
}

/// Delivered and failed push attempts per subscription since this replica started, read from
/// the `magistral_delivery_total` series (`skipped` is neither).
fn delivery_counts(exposition: &str) -> serde_json::Map<String, Value> {
    let mut out: std::collections::BTreeMap<String, (f64, f64)> = std::collections::BTreeMap::new();
    let prefix = format!("{}{{", crate::telemetry::catalogue::DELIVERY_TOTAL);
    for line in exposition.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line[prefix.len()..].rsplit_once("} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let label = |name: &str| {
            labels.split("\",").find_map(|kv| kv.strip_prefix(&format!("{name}=\""))).map(|v| v.trim_end_matches('"'))
        };
        let (Some(sub), Some(class)) = (label("subscription"), label("class")) else { continue };
        let entry = out.entry(sub.to_owned()).or_default();
        match class {
            "delivered" => entry.0 += value,
            "skipped" => {}
            _ => entry.1 += value,
        }
    }
    out.into_iter().map(|(k, (d, f))| (k, json!({ "delivered": d, "failed": f }))).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailQuery {
    /// A subject or pattern (`orders.>`).
    subject: String,
}

/// `GET /v1/tail?subject=` (admin): messages published on the subject from now on, as
/// Server-Sent Events; nothing is consumed or acknowledged (a plain NATS subscription).
pub(crate) async fn tail(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<TailQuery>,
) -> Result<Response, Problem> {
    require_admin(&caller)?;
    // Bounded like a published subject: NATS refuses a SUB line past its `max_control_line`
    // (4 KiB) by closing the whole connection, which would take the gateway down with it.
    let max = state.limits.max_subject_length;
    if query.subject.len() > max {
        return Err(Problem::new(ProblemType::InvalidQuery, format!("subject: longer than {max} bytes")));
    }
    crate::subject::validate_pattern(&query.subject)
        .map_err(|e| Problem::new(ProblemType::InvalidQuery, format!("subject: {e}")))?;
    // The server's own traffic (JetStream API, inboxes) is not the bus's messages; a pattern
    // whose first token is a wildcard would take it in too.
    let first = query.subject.split('.').next().unwrap_or_default();
    if first.starts_with('$') || first.starts_with("_INBOX") || first == "*" || first == ">" {
        return Err(Problem::new(
            ProblemType::InvalidQuery,
            "subject: tail the bus's subjects, from a literal first token, e.g. orders.>",
        ));
    }
    let permit =
        state.console.tails.clone().try_acquire_owned().map_err(|_| {
            Problem::new(ProblemType::TooManyStreams, format!("at most {MAX_TAILS} live tails at once"))
        })?;
    let subscriber = state
        .client
        .subscribe(query.subject.clone())
        .await
        .map_err(|e| super::extract::nats_unavailable(&state, "opening the tail", e))?;
    let shutdown = state.shutdown.clone();
    let events = subscriber.take_until(shutdown.cancelled_owned()).map(move |message| {
        let _slot = &permit;
        Ok::<_, Infallible>(Event::default().event("message").data(describe_message(&message).to_string()))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// What the tail shows of a message: subject, its CloudEvents attributes, an excerpt.
fn describe_message(message: &async_nats::Message) -> Value {
    let attr = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| percent_encoding::percent_decode_str(v.as_str()).decode_utf8_lossy().into_owned())
    };
    let excerpt: String = String::from_utf8_lossy(&message.payload).chars().take(500).collect();
    json!({
        "subject": message.subject.as_str(),
        "id": attr("ce-id").or_else(|| attr("Nats-Msg-Id")),
        "type": attr("ce-type"),
        "source": attr("ce-source"),
        "time": attr("ce-time"),
        "correlation_id": attr("ce-correlationid"),
        "size": message.payload.len(),
        "excerpt": excerpt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_counts_add_up_by_class() {
        let text = "# TYPE magistral_delivery_total counter\n\
            magistral_delivery_total{subscription=\"a\",class=\"delivered\"} 3\n\
            magistral_delivery_total{subscription=\"a\",class=\"endpoint-5xx\"} 2\n\
            magistral_delivery_total{subscription=\"a\",class=\"endpoint-timeout\"} 1\n\
            magistral_delivery_total{subscription=\"a\",class=\"skipped\"} 7\n\
            magistral_delivery_total{class=\"delivered\",subscription=\"b\"} 5\n\
            magistral_delivery_duration_seconds{subscription=\"a\"} 9\n";
        let counts = delivery_counts(text);
        assert_eq!(counts["a"], json!({ "delivered": 3.0, "failed": 3.0 }));
        assert_eq!(counts["b"], json!({ "delivered": 5.0, "failed": 0.0 }));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; magistral_console=v1.x.y"));
        assert_eq!(cookie_value(&h, COOKIE), Some("v1.x.y"));
        assert_eq!(cookie_value(&h, "b"), None);
    }

    #[test]
    fn only_the_pages_own_origin_signs_in() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("bus:8080"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://bus:8080"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h));
    }
}
