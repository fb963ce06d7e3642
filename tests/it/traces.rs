//! Traces: the built binary exports OpenTelemetry spans over OTLP/HTTP to a receiver in the
//! test, which decodes them (protobuf) and checks how they hang together: a publish continues
//! the caller's `traceparent`, its delivery attempt is its child and the webhook carries the
//! attempt's context; the same for a request (and its responder) and an inbound call. With
//! traces off nothing is exported and the caller's context travels unchanged.

use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::common::eventually;
use crate::common::nats::NatsServer;
use crate::common::process::GatewayProcess;
use crate::common::receiver::{Answer, Receiver};

const SHOP: &str = "shop-traces-token-01";
const ERP: &str = "erp-traces-token-001";
const ORDER: &str = r#"{"order_id":"T-1","total":100}"#;

/// The caller's trace contexts (W3C Trace Context's own example ids, and two more).
const PUBLISH_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISH_PARENT: &str = "00f067aa0ba902b7";
const REQUEST_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const REQUEST_PARENT: &str = "b7ad6b7169203331";
const INBOUND_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const INBOUND_PARENT: &str = "051581bf3cb55c13";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// A configuration of its own: a shop publishing and requesting, an ERP receiving pushes and
/// answering requests, a plain-JSON inbound route; `traces` is the `[traces]` table, if any.
fn config(dir: &Path, hooks: &str, answers: &str, traces: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("streams")).unwrap();
    std::fs::create_dir_all(dir.join("contracts")).unwrap();
    std::fs::write(
        dir.join("streams/ORDERS.json"),
        r#"{"name":"ORDERS","subjects":["orders.>"],"retention":"limits","storage":"file","num_replicas":1}"#,
    )
    .unwrap();
    let toml = format!(
        r#"
streams_dir = "streams"
contracts_dir = "contracts"
{traces}

[participants.shop]
tokens = [{{ env = "TRACES_SHOP_TOKEN" }}]
publish = ["orders.>"]
request = ["svc.>"]

[participants.erp]
tokens = [{{ env = "TRACES_ERP_TOKEN" }}]
subscribe = ["orders.>"]
respond = ["svc.>"]

[subscriptions.erp-orders]
participant = "erp"
subjects = ["orders.>"]
endpoint = "{hooks}/hook"

[responders.erp-answers]
participant = "erp"
subjects = ["svc.ping"]
endpoint = "{answers}/answer"

[inbound.calls]
kind = "json"
participant = "shop"
subject = "orders.calls"
"#,
    );
    let path = dir.join("magistral.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

const TOKENS: [(&str, &str); 2] = [("TRACES_SHOP_TOKEN", SHOP), ("TRACES_ERP_TOKEN", ERP)];

/// One exported span, ids in hex.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
    service: String,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every span the collector received so far (OTLP/HTTP protobuf bodies on `/v1/traces`).
fn spans(collector: &Receiver) -> Vec<Span> {
    let mut out = Vec::new();
    for request in collector.received() {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.header("content-type"), Some("application/x-protobuf"));
        let export = ExportTraceServiceRequest::decode(request.body.as_ref()).expect("an OTLP trace export");
        for resource in export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Span {
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect(),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(trace id, span id)` of a `traceparent` a receiver got.
fn ids(traceparent: Option<&str>) -> (String, String) {
    let parts: Vec<&str> = traceparent.expect("a traceparent").split('-').collect();
    assert_eq!(parts.len(), 4, "{parts:?}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Waits until the collector has a span matching `what`.
async fn span_where(collector: &Receiver, what: &str, pick: impl Fn(&Span) -> bool) -> Span {
    eventually(what, Duration::from_secs(15), async || spans(collector).into_iter().find(|s| pick(s))).await
}

#[tokio::test]
async fn spans_continue_the_callers_trace_and_link_deliveries_requests_and_inbound_calls() {
    let nats = NatsServer::start();
    let collector = Receiver::start().await;
    let hooks = Receiver::start().await;
    let answers = Receiver::scripted(|_, _| {
        Answer::ok().with_header("content-type", "application/json").body(r#"{"pong":true}"#)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let traces = format!("[traces]\notlp_endpoint = \"{}\"\n", collector.base());
    let config = config(dir.path(), &hooks.base(), &answers.base(), &traces);
    let envs = [TOKENS[0], TOKENS[1], ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let gw = GatewayProcess::start(&config, &nats.url(), &envs).await;

    // A publish with the caller's trace context, delivered to the ERP.
    let caller = traceparent(PUBLISH_TRACE, PUBLISH_PARENT);
    let r = gw
        .http
        .post(gw.url("/v1/publish/orders.created"))
        .bearer_auth(SHOP)
        .header("content-type", "application/json")
        .header("traceparent", &caller)
        .header("tracestate", "shop=a1")
        .header("idempotency-key", "order-T-1")
        .body(ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let delivered = hooks.wait_for(1, Duration::from_secs(15)).await;
    let (hook_trace, hook_span) = ids(delivered[0].header("traceparent"));
    assert_eq!(hook_trace, PUBLISH_TRACE, "the webhook continues the caller's trace");
    assert_ne!(hook_span, PUBLISH_PARENT, "the webhook's parent is the attempt, not the caller");
    assert_eq!(delivered[0].header("tracestate"), Some("shop=a1"));

    let publish = span_where(&collector, "the publish span", |s| s.name == "publish").await;
    assert_eq!(publish.service, "magistral");
    assert_eq!(publish.kind, SpanKind::Producer);
    assert_eq!((publish.trace_id.as_str(), publish.parent_span_id.as_str()), (PUBLISH_TRACE, PUBLISH_PARENT));
    assert_eq!(publish.attr("messaging.system"), Some("nats"));
    assert_eq!(publish.attr("messaging.destination.name"), Some("orders.created"));
    assert_eq!(publish.attr("messaging.message.id"), Some("order-T-1"));
    assert_eq!(publish.attr("http.request.method"), Some("POST"));
    assert_eq!(publish.attr("http.response.status_code"), Some("202"));
    assert_eq!(publish.attr("error.type"), None);

    let attempt = span_where(&collector, "the delivery attempt's span", |s| s.span_id == hook_span).await;
    assert_eq!(attempt.name, "deliver erp-orders");
    assert_eq!(attempt.kind, SpanKind::Client);
    assert_eq!(attempt.trace_id, PUBLISH_TRACE, "one trace per message");
    assert_eq!(attempt.parent_span_id, publish.span_id, "the attempt is the publish's child");
    assert_eq!(attempt.attr("messaging.destination.name"), Some("orders.created"));
    assert_eq!(attempt.attr("messaging.message.id"), Some("order-T-1"));
    assert_eq!(attempt.attr("magistral.subscription"), Some("erp-orders"));
    assert_eq!(attempt.attr("magistral.delivery.attempt"), Some("1"));
    assert_eq!(attempt.attr("magistral.delivery.class"), Some("delivered"));
    assert_eq!(attempt.attr("url.full"), Some(format!("{}/hook", hooks.base()).as_str()));
    assert_eq!(attempt.attr("http.response.status_code"), Some("200"));

    // A request: its span continues the caller's trace, the responder's continues the request's,
    // and the responder's endpoint gets the responder span's context.
    let caller = traceparent(REQUEST_TRACE, REQUEST_PARENT);
    let ask = async || {
        gw.http
            .post(gw.url("/v1/request/svc.ping"))
            .bearer_auth(SHOP)
            .header("content-type", "application/json")
            .header("traceparent", &caller)
            .body(r#"{"ping":1}"#)
            .send()
            .await
            .unwrap()
    };
    // The responder's micro service registers once streams are reconciled; until then 503.
    let r = eventually("the responder answers", Duration::from_secs(15), async || {
        let r = ask().await;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(r.text().await.unwrap(), r#"{"pong":true}"#);
    let asked = answers.received();
    let (answer_trace, answer_span) = ids(asked.last().unwrap().header("traceparent"));
    assert_eq!(answer_trace, REQUEST_TRACE);

    let respond = span_where(&collector, "the responder's span", |s| s.span_id == answer_span).await;
    assert_eq!(respond.name, "respond erp-answers");
    assert_eq!(respond.kind, SpanKind::Server);
    assert_eq!(respond.attr("http.response.status_code"), Some("200"));
    let request = span_where(&collector, "the request span", |s| s.span_id == respond.parent_span_id).await;
    assert_eq!(request.name, "request");
    assert_eq!(request.kind, SpanKind::Client);
    assert_eq!((request.trace_id.as_str(), request.parent_span_id.as_str()), (REQUEST_TRACE, REQUEST_PARENT));
    assert_eq!(request.attr("messaging.destination.name"), Some("svc.ping"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));

    // An inbound call: its span continues the caller's trace and the message it publishes is
    // delivered as its child.
    let caller = traceparent(INBOUND_TRACE, INBOUND_PARENT);
    let r = gw
        .http
        .post(gw.url("/v1/inbound/calls"))
        .bearer_auth(SHOP)
        .header("content-type", "application/json")
        .header("traceparent", &caller)
        .body(r#"{"phone":"+7 495 000-00-00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let delivered = hooks.wait_for(2, Duration::from_secs(15)).await;
    let (hook_trace, hook_span) = ids(delivered[1].header("traceparent"));
    assert_eq!(hook_trace, INBOUND_TRACE);
    let inbound = span_where(&collector, "the inbound span", |s| s.name == "inbound calls").await;
    assert_eq!(inbound.kind, SpanKind::Server);
    assert_eq!((inbound.trace_id.as_str(), inbound.parent_span_id.as_str()), (INBOUND_TRACE, INBOUND_PARENT));
    assert_eq!(inbound.attr("magistral.inbound.route"), Some("calls"));
    assert_eq!(inbound.attr("http.response.status_code"), Some("202"));
    let attempt = span_where(&collector, "the inbound message's delivery span", |s| s.span_id == hook_span).await;
    assert_eq!(attempt.parent_span_id, inbound.span_id);
    assert_eq!(attempt.attr("messaging.destination.name"), Some("orders.calls"));

    // A refusal is traced too, with its problem as the error type.
    let r = gw
        .http
        .post(gw.url("/v1/publish/orders.created"))
        .bearer_auth(SHOP)
        .header("content-type", "application/json")
        .header("traceparent", traceparent(PUBLISH_TRACE, "1111111111111111"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let refused =
        span_where(&collector, "the refused publish's span", |s| s.parent_span_id == "1111111111111111").await;
    assert_eq!(refused.attr("error.type"), Some("malformed-json"));
    assert_eq!(refused.attr("http.response.status_code"), Some("400"));
}

#[tokio::test]
async fn with_traces_off_nothing_is_exported_and_the_callers_context_travels_unchanged() {
    let nats = NatsServer::start();
    let hooks = Receiver::start().await;
    let answers = Receiver::start().await;
    // Where a collector would be: the gateway must never connect to it.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    collector.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &hooks.base(), &answers.base(), "");
    // The standard variables name the collector, and the standard switch turns the SDK off.
    let envs = [
        TOKENS[0],
        TOKENS[1],
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut gw = GatewayProcess::start(&config, &nats.url(), &envs).await;

    let caller = traceparent(PUBLISH_TRACE, PUBLISH_PARENT);
    let r = gw
        .http
        .post(gw.url("/v1/publish/orders.created"))
        .bearer_auth(SHOP)
        .header("content-type", "application/json")
        .header("traceparent", &caller)
        .body(ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let delivered = hooks.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(delivered[0].header("traceparent"), Some(caller.as_str()), "passed on unchanged");

    // A graceful stop is when buffered spans would be flushed.
    let status = std::process::Command::new("kill").args(["-TERM", &gw.pid().to_string()]).status().unwrap();
    assert!(status.success());
    eventually("the gateway stops", Duration::from_secs(15), async || (!gw.is_alive()).then_some(())).await;
    match collector.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the gateway connected to the collector: {other:?}"),
    }
    assert!(!std::fs::read_to_string(gw.stderr_path()).unwrap().contains("OTLP"));
}

#[test]
fn check_refuses_bad_trace_settings() {
    let dir = tempfile::tempdir().unwrap();
    let traces = "[traces]\notlp_endpoint = \"collector:4318\"\nsampling_ratio = 1.5\n";
    let config = config(dir.path(), "http://127.0.0.1:9", "http://127.0.0.1:9", traces);
    let out = std::process::Command::new(crate::common::process::BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .envs(TOKENS)
        .env_remove("MAGISTRAL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("traces.sampling_ratio: 1.5 is not between 0.0 and 1.0"), "{stderr}");
    assert!(stderr.contains("traces.otlp_endpoint: \"collector:4318\" is not an http(s) URL"), "{stderr}");
}
