//! CloudEvents 1.0 on both sides of the gateway: attributes read from HTTP (binary-mode
//! `ce-*` headers or a structured `application/cloudevents+json` envelope), and written to
//! NATS in binary mode (one `ce-*` header per attribute, data as the payload), with header
//! values percent-encoded as the HTTP and NATS bindings require.

use std::collections::BTreeMap;

use async_nats::HeaderMap as NatsHeaders;
use axum::http::HeaderMap;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::problem::{Problem, ProblemType};

/// Characters a `ce-*` header value must percent-encode: space, `"`, `%`, controls; every
/// non-ASCII byte is encoded by `utf8_percent_encode` itself.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Attributes the client may set. `source` is absent on purpose: the gateway stamps it.
#[derive(Debug, Default, Clone)]
pub struct ClientAttributes {
    pub id: Option<String>,
    pub type_: Option<String>,
    pub time: Option<String>,
    pub subject: Option<String>,
    pub dataschema: Option<String>,
    /// Extension attributes, by lowercase name.
    pub extensions: BTreeMap<String, String>,
}

/// Reads binary-mode attributes from request headers (`ce-type`, `ce-id`, ...).
///
/// # Errors
/// `invalid-cloudevent` for a bad spec version, time, attribute name or encoding.
pub fn from_http_headers(headers: &HeaderMap) -> Result<ClientAttributes, Problem> {
    let mut attrs = ClientAttributes::default();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else { continue };
        let raw = value
            .to_str()
            .map_err(|_| invalid(format!("header {name} must be ASCII (percent-encode other characters)")))?;
        let value = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| invalid(format!("header {name} does not percent-decode to UTF-8")))?
            .into_owned();
        set(&mut attrs, attr, value)?;
    }
    Ok(attrs)
}

/// A structured-mode event: the envelope's attributes plus `data` as its exact bytes.
pub struct StructuredEvent<'a> {
    pub data: Option<&'a RawValue>,
    pub attributes: BTreeMap<String, &'a RawValue>,
}

impl<'a> StructuredEvent<'a> {
    /// Parses an envelope, borrowing every member from `body` (data is not re-serialised).
    ///
    /// # Errors
    /// The body is not a JSON object.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        // `#[serde(flatten)]` cannot hold `RawValue`s, so the envelope is read as a map.
        let mut attributes: BTreeMap<String, &'a RawValue> = serde_json::from_slice(body)?;
        let data = attributes.remove("data");
        Ok(Self { data, attributes })
    }

    /// Attributes from the envelope.
    ///
    /// # Errors
    /// `invalid-cloudevent` when an attribute is not a string/number/bool, or breaks a rule.
    pub fn client_attributes(&self) -> Result<ClientAttributes, Problem> {
        let mut attrs = ClientAttributes::default();
        for (name, raw) in &self.attributes {
            if name == "data_base64" {
                return Err(invalid("data_base64 is not accepted; send JSON data in `data`".into()));
            }
            let value = match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(serde_json::Value::Number(n)) => n.to_string(),
                Ok(serde_json::Value::Bool(b)) => b.to_string(),
                Ok(serde_json::Value::Null) => continue,
                _ => return Err(invalid(format!("attribute {name} must be a string, number or boolean"))),
            };
            set(&mut attrs, name, value)?;
        }
        Ok(attrs)
    }
}

fn set(attrs: &mut ClientAttributes, name: &str, value: String) -> Result<(), Problem> {
    match name {
        "specversion" => {
            if value != "1.0" {
                return Err(invalid(format!("specversion {value:?} is not supported; use 1.0")));
            }
        }
        // The gateway stamps the authenticated participant; a client's claim is ignored.
        "source" => {}
        "datacontenttype" => {
            if !is_json_media_type(&value) {
                return Err(Problem::new(
                    ProblemType::UnsupportedMediaType,
                    format!("datacontenttype {value:?}: only JSON data is accepted"),
                ));
            }
        }
        "id" => attrs.id = Some(non_empty(name, value)?),
        "type" => attrs.type_ = Some(non_empty(name, value)?),
        "subject" => attrs.subject = Some(value),
        "dataschema" => attrs.dataschema = Some(non_empty(name, value)?),
        "time" => {
            OffsetDateTime::parse(&value, &Rfc3339)
                .map_err(|_| invalid(format!("time {value:?} is not an RFC 3339 timestamp")))?;
            attrs.time = Some(value);
        }
        other => {
            // CloudEvents: attribute names are lowercase a-z and 0-9, at most 20 characters.
            if other.is_empty()
                || other.len() > 20
                || !other.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(invalid(format!("{other:?} is not a valid CloudEvents attribute name")));
            }
            attrs.extensions.insert(other.to_owned(), value);
        }
    }
    Ok(())
}

fn non_empty(name: &str, value: String) -> Result<String, Problem> {
    if value.is_empty() { Err(invalid(format!("{name} must not be empty"))) } else { Ok(value) }
}

fn invalid(detail: String) -> Problem {
    Problem::new(ProblemType::InvalidCloudEvent, detail)
}

/// W3C Trace Context `traceparent` (§3.2): `version-traceid-parentid-flags`, lowercase hex,
/// ids not all zero; a version other than 00 may append fields (forward compatibility).
///
/// # Errors
/// `invalid-header` naming what is wrong.
pub fn check_traceparent(value: &str) -> Result<(), Problem> {
    let bad = |why: &str| {
        Problem::new(
            ProblemType::InvalidHeader,
            format!("traceparent: {why} (W3C Trace Context: 00-<32 hex>-<16 hex>-<2 hex>)"),
        )
    };
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let b = value.as_bytes();
    if !value.is_ascii() || b.len() < 55 || (b.len() > 55 && (value.starts_with("00") || b[55] != b'-')) {
        return Err(bad("wrong length"));
    }
    let (version, trace_id, parent_id, flags) = (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || ![version, trace_id, parent_id, flags].iter().all(|p| hex(p)) {
        return Err(bad("not in its format"));
    }
    if version == "ff" || trace_id.bytes().all(|c| c == b'0') || parent_id.bytes().all(|c| c == b'0') {
        return Err(bad("a forbidden version or an all-zero id"));
    }
    Ok(())
}

/// Longest `tracestate` passed on: the size W3C Trace Context (§3.3.1.5) asks vendors to
/// propagate at least.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// W3C Trace Context `tracestate`: printable ASCII, at most 32 list members and
/// [`MAX_TRACESTATE_BYTES`].
///
/// # Errors
/// `invalid-header` naming what is wrong.
pub fn check_tracestate(value: &str) -> Result<(), Problem> {
    if value.len() > MAX_TRACESTATE_BYTES {
        return Err(Problem::new(
            ProblemType::InvalidHeader,
            format!("tracestate is longer than {MAX_TRACESTATE_BYTES} bytes"),
        ));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Problem::new(ProblemType::InvalidHeader, "tracestate holds a character outside printable ASCII"));
    }
    if value.split(',').filter(|m| !m.trim().is_empty()).count() > 32 {
        return Err(Problem::new(ProblemType::InvalidHeader, "tracestate has more than 32 list members"));
    }
    Ok(())
}

/// `application/json` or any `+json` type, parameters ignored.
#[must_use]
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/")
            && essence.ends_with("+json")
            && essence != "application/cloudevents+json")
}

/// The attributes of a message as it is stored, written as NATS binary-mode headers.
pub struct StoredAttributes<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub type_: &'a str,
    pub subject: Option<&'a str>,
    pub dataschema: Option<&'a str>,
    pub time: Option<&'a str>,
    pub extensions: &'a BTreeMap<String, String>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl StoredAttributes<'_> {
    #[must_use]
    pub fn to_nats_headers(&self) -> NatsHeaders {
        let mut h = NatsHeaders::new();
        let put = |h: &mut NatsHeaders, name: &str, value: &str| {
            // Borrowed when nothing needs encoding (the usual case): no copy.
            let encoded: std::borrow::Cow<'_, str> = utf8_percent_encode(value, HEADER_VALUE).into();
            h.insert(name, encoded.as_ref());
        };
        put(&mut h, "ce-specversion", "1.0");
        put(&mut h, "ce-id", self.id);
        put(&mut h, "ce-source", self.source);
        put(&mut h, "ce-type", self.type_);
        let now;
        let time = match self.time {
            Some(t) => t,
            None => {
                now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
                &now
            }
        };
        put(&mut h, "ce-time", time);
        if let Some(s) = self.subject {
            put(&mut h, "ce-subject", s);
        }
        if let Some(s) = self.dataschema {
            put(&mut h, "ce-dataschema", s);
        }
        for (name, value) in self.extensions {
            put(&mut h, &format!("ce-{name}"), value);
        }
        h.insert("content-type", "application/json");
        // W3C trace context travels as is; it is already restricted to safe characters.
        if let Some(t) = self.traceparent {
            h.insert("traceparent", t);
        }
        if let Some(t) = self.tracestate {
            h.insert("tracestate", t);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::prop;

    use super::*;

    #[test]
    fn header_values_are_percent_encoded() {
        let ext = BTreeMap::from([("comment".to_owned(), "заказ 100% \"ok\"".to_owned())]);
        let attrs = StoredAttributes {
            id: "a b",
            source: "/participants/bitrix",
            type_: "orders.created",
            subject: None,
            dataschema: None,
            time: Some("2026-11-28T10:00:00Z"),
            extensions: &ext,
            traceparent: None,
            tracestate: None,
        };
        let h = attrs.to_nats_headers();
        assert_eq!(h.get("ce-id").unwrap().as_str(), "a%20b");
        assert_eq!(h.get("ce-comment").unwrap().as_str(), "%D0%B7%D0%B0%D0%BA%D0%B0%D0%B7%20100%25%20%22ok%22");
        assert_eq!(h.get("ce-source").unwrap().as_str(), "/participants/bitrix");
    }

    #[test]
    fn trace_context_is_checked() {
        check_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        check_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").unwrap();
        for bad in [
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert!(check_traceparent(bad).is_err(), "{bad}");
        }
        check_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert!(check_tracestate(&"a=b,".repeat(20_000)).is_err());
        assert!(check_tracestate("a=\u{7}").is_err());
    }

    proptest::proptest! {
        #[test]
        fn trace_context_checks_never_panic(s in ".{0,80}") {
            let _ = check_traceparent(&s);
            let _ = check_tracestate(&s);
        }

        #[test]
        fn header_attributes_never_panic(name in "ce-[a-z0-9]{0,24}", value in "[ -~]{0,40}") {
            let mut h = HeaderMap::new();
            if let (Ok(n), Ok(v)) = (axum::http::HeaderName::from_bytes(name.as_bytes()), axum::http::HeaderValue::from_str(&value)) {
                h.insert(n, v);
                let _ = from_http_headers(&h);
            }
        }

        #[test]
        fn envelopes_never_panic(body in prop::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(event) = StructuredEvent::parse(&body) {
                let _ = event.client_attributes();
            }
        }
    }

    #[test]
    fn http_headers_decode_and_source_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert("ce-type", "order.created".parse().unwrap());
        h.insert("ce-source", "/participants/evil".parse().unwrap());
        h.insert("ce-comment", "%D0%B7%20x".parse().unwrap());
        let a = from_http_headers(&h).unwrap();
        assert_eq!(a.type_.as_deref(), Some("order.created"));
        assert_eq!(a.extensions.get("comment").map(String::as_str), Some("з x"));
        h.insert("ce-specversion", "0.3".parse().unwrap());
        assert!(from_http_headers(&h).is_err());
    }
}
