//! Splitting a batch body into its items, bounded while reading: the item limit is checked as
//! items are found, so a body of millions of tiny items is refused after `max_items + 1` of
//! them, never parsed whole.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::json;
use serde_json::value::RawValue;

use super::cloudevents::ClientAttributes;
use super::json::{check_strict, exceeds_depth};
use super::{Draft, Outgoing};
use crate::catalog::Catalog;
use crate::config::Limits;
use crate::participants::Participant;
use crate::problem::{Problem, ProblemType};

/// How a batch body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON array of items (`application/json`).
    JsonArray,
    /// One item per line (`application/x-ndjson`); blank lines are skipped.
    Ndjson,
}

/// The items of a batch body, each as its exact bytes (not yet checked as JSON for NDJSON).
///
/// # Errors
/// `too-many-items` past `max_items`; `json-too-deep` or `malformed-json` for a JSON array that
/// is not one.
pub fn split(body: &[u8], framing: Framing, max_items: usize, max_depth: usize) -> Result<Vec<&[u8]>, Problem> {
    let too_many =
        || Problem::new(ProblemType::TooManyItems, format!("more than {max_items} items; the limit is {max_items}"));
    match framing {
        Framing::Ndjson => {
            let mut items = Vec::new();
            for line in body.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if items.len() == max_items {
                    return Err(too_many());
                }
                items.push(line);
            }
            Ok(items)
        }
        Framing::JsonArray => {
            // Array, item, item's data: the data may nest `max_depth` levels below that.
            if exceeds_depth(body, max_depth + 2) {
                return Err(Problem::new(
                    ProblemType::JsonTooDeep,
                    format!("the data nests deeper than {max_depth} levels"),
                ));
            }
            let over = Cell::new(false);
            let mut de = serde_json::Deserializer::from_slice(body);
            let raw =
                de.deserialize_seq(Items { max: max_items, over: &over }).and_then(|items| de.end().map(|()| items));
            match raw {
                Ok(items) => Ok(items.into_iter().map(|r| r.get().as_bytes()).collect()),
                Err(_) if over.get() => Err(too_many()),
                Err(e) => {
                    Err(Problem::new(ProblemType::MalformedJson, format!("a batch is a JSON array of items: {e}")))
                }
            }
        }
    }
}

/// One batch item. Unknown members are refused so a typo (`"dta"`) is not silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item<'a> {
    subject: String,
    #[serde(borrow)]
    data: &'a RawValue,
    /// Message id (idempotency key) for this item.
    #[serde(default)]
    id: Option<String>,
    /// CloudEvents `type`; defaults to the subject.
    #[serde(default, rename = "type")]
    type_: Option<String>,
    /// Picks a contract version when several are bound.
    #[serde(default)]
    dataschema: Option<String>,
    /// CloudEvents `correlationid`: ties the item to a business transaction.
    #[serde(default)]
    correlation_id: Option<String>,
}

/// The trace context of the request, shared by every item.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace<'h> {
    pub traceparent: Option<&'h str>,
    pub tracestate: Option<&'h str>,
}

impl Item<'_> {
    /// The item as a message to check; its data is a slice of `body`, not a copy.
    fn into_draft(self, body: &Bytes, trace: Trace<'_>) -> Draft {
        let mut attributes = ClientAttributes { type_: self.type_, dataschema: self.dataschema, ..Default::default() };
        if let Some(corr) = self.correlation_id {
            attributes.extensions.insert("correlationid".to_owned(), corr);
        }
        Draft {
            subject: self.subject,
            data: body.slice_ref(self.data.get().as_bytes()),
            data_well_formed: true,
            attributes,
            idempotency_key: self.id,
            traceparent: trace.traceparent.map(str::to_owned),
            tracestate: trace.tracestate.map(str::to_owned),
        }
    }
}

/// The items of a batch body: counted while they are found ([`split`]); then each is checked
/// whole (I-JSON, depth) before its members are read, so a bad item is named by its index
/// like any other refusal.
///
/// # Errors
/// What [`split`] refuses; a bad item is an `Err` in the list, not a refusal of the whole.
pub fn items(
    body: &[u8],
    framing: Framing,
    max_items: usize,
    max_depth: usize,
) -> Result<Vec<Result<Item<'_>, Problem>>, Problem> {
    Ok(split(body, framing, max_items, max_depth)?
        .into_iter()
        .map(|raw| {
            check_strict(raw, max_depth + 1)?;
            serde_json::from_slice(raw).map_err(super::malformed)
        })
        .collect())
}

/// Every item checked as a single publish ([`super::prepare`]); all ready, or none.
///
/// # Errors
/// `batch-rejected`, each refused item in `items` with its `index`.
pub fn prepare(
    catalog: &Catalog,
    limits: &Limits,
    participant: &Participant,
    body: &Bytes,
    items: Vec<Result<Item<'_>, Problem>>,
    trace: Trace<'_>,
) -> Result<Vec<Outgoing>, Problem> {
    let mut ready: Vec<Outgoing> = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item.and_then(|item| super::prepare(catalog, limits, participant, item.into_draft(body, trace))) {
            Ok(outgoing) => ready.push(outgoing),
            Err(problem) => {
                let mut entry = problem.body();
                entry["index"] = json!(index);
                refused.push(entry);
            }
        }
    }
    if refused.is_empty() {
        return Ok(ready);
    }
    let mut problem = Problem::new(
        ProblemType::BatchRejected,
        format!("{} of {} item(s) refused; nothing was published", refused.len(), refused.len() + ready.len()),
    );
    problem.items = refused;
    Err(problem)
}

/// Collects the array's items as raw JSON, refusing the one past `max`.
struct Items<'o> {
    max: usize,
    over: &'o Cell<bool>,
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of batch items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                self.over.set(true);
                return Err(de::Error::custom("too many items"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_limit_is_checked_while_reading() {
        let body = "{}\n".repeat(5);
        assert_eq!(split(body.as_bytes(), Framing::Ndjson, 5, 32).unwrap().len(), 5);
        assert_eq!(split(body.as_bytes(), Framing::Ndjson, 4, 32).unwrap_err().kind, ProblemType::TooManyItems);
        assert_eq!(split(b"[{}, {}, {}]", Framing::JsonArray, 3, 32).unwrap().len(), 3);
        assert_eq!(split(b"[{}, {}, {}]", Framing::JsonArray, 2, 32).unwrap_err().kind, ProblemType::TooManyItems);
        // Refused at the item past the limit, even though the rest is not even JSON.
        assert_eq!(
            split(b"[{}, {}, {}, garbage", Framing::JsonArray, 2, 32).unwrap_err().kind,
            ProblemType::TooManyItems
        );
        assert_eq!(split(b"[{}] x", Framing::JsonArray, 2, 32).unwrap_err().kind, ProblemType::MalformedJson);
        assert_eq!(split(b"{}", Framing::JsonArray, 2, 32).unwrap_err().kind, ProblemType::MalformedJson);
        assert_eq!(split(b"\n  \n{\"a\":1}\n\n", Framing::Ndjson, 2, 32).unwrap(), vec![&b"{\"a\":1}"[..]]);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_exceeds_the_limit(body in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..8) {
            for framing in [Framing::Ndjson, Framing::JsonArray] {
                if let Ok(items) = split(&body, framing, max, 4) {
                    prop_assert!(items.len() <= max);
                }
            }
        }

        #[test]
        fn arrays_split_into_their_items(n in 0usize..20) {
            let body = format!("[{}]", vec!["{\"subject\":\"a.b\",\"data\":{}}"; n].join(","));
            prop_assert_eq!(split(body.as_bytes(), Framing::JsonArray, 20, 4).unwrap().len(), n);
        }
    }
}
