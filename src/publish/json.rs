//! Checks on bytes that claim to be JSON, run before anything trusts them: UTF-8, nesting
//! depth (before any recursive parser sees the input), and I-JSON's rule (RFC 7493 §2.3) that
//! an object never names a member twice. Duplicate members matter because parsers disagree on
//! them: the contract would be checked against the last occurrence while a receiver that keeps
//! the first gets data that was never validated.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::problem::{Problem, ProblemType};

/// # Errors
/// `invalid-utf8` with the byte offset of the first bad sequence.
pub fn check_utf8(bytes: &[u8]) -> Result<(), Problem> {
    std::str::from_utf8(bytes)
        .map(|_| ())
        .map_err(|e| Problem::new(ProblemType::InvalidUtf8, format!("invalid UTF-8 at byte {}", e.valid_up_to())))
}

/// Whether arrays/objects nest deeper than `max`. One pass, no allocation; brackets inside
/// strings do not count. Runs before parsing so deep input never reaches a recursive parser.
#[must_use]
pub fn exceeds_depth(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Checks that `bytes` are one well-formed I-JSON value nesting at most `max_depth` levels,
/// without building it.
///
/// # Errors
/// `json-too-deep`, `malformed-json`, or `duplicate-key` naming the member's JSON pointer.
pub fn check_strict(bytes: &[u8], max_depth: usize) -> Result<(), Problem> {
    run(bytes, max_depth, false).map(|_| ())
}

/// [`check_strict`], building the value (for contract validation).
///
/// # Errors
/// As [`check_strict`].
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, Problem> {
    run(bytes, max_depth, true).map(Option::unwrap_or_default)
}

fn run(bytes: &[u8], max_depth: usize, build: bool) -> Result<Option<Value>, Problem> {
    if exceeds_depth(bytes, max_depth) {
        return Err(Problem::new(ProblemType::JsonTooDeep, format!("the data nests deeper than {max_depth} levels")));
    }
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = Node { duplicate: &duplicate, build };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(value) => Ok(value),
        Err(err) => Err(match duplicate.into_inner() {
            Some(segments) => Problem::new(
                ProblemType::DuplicateKey,
                format!("the member {} appears more than once in its object (RFC 7493 I-JSON)", pointer(&segments)),
            ),
            None => super::malformed(err),
        }),
    }
}

/// The JSON pointer (RFC 6901) of a path collected innermost segment first.
fn pointer(segments: &[String]) -> String {
    let mut pointer = String::new();
    for segment in segments.iter().rev() {
        pointer.push('/');
        pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    pointer
}

/// One JSON value; builds it only when asked. The path to a duplicate member is collected
/// only when one is found, as the error unwinds (innermost segment first): a valid document
/// costs no path bookkeeping.
struct Node<'p> {
    duplicate: &'p RefCell<Option<Vec<String>>>,
    build: bool,
}

impl Node<'_> {
    fn child(&self) -> Self {
        Node { duplicate: self.duplicate, build: self.build }
    }

    /// On the way out of a failed child: adds this level's segment to a duplicate's path.
    fn unwinding(&self, segment: impl FnOnce() -> String) {
        if let Some(path) = self.duplicate.borrow_mut().as_mut() {
            path.push(segment());
        }
    }

    fn found_duplicate<E: de::Error>(&self, key: &str) -> E {
        *self.duplicate.borrow_mut() = Some(vec![key.to_owned()]);
        de::Error::custom("duplicate member")
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.build.then_some(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.build.then(|| Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.build.then(|| Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.build.then(|| Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.build.then(|| Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(self.build.then_some(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.build.then_some(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut index = 0usize;
        loop {
            match seq.next_element_seed(self.child()) {
                Err(err) => {
                    self.unwinding(|| index.to_string());
                    return Err(err);
                }
                Ok(None) => break,
                Ok(Some(v)) => items.extend(v),
            }
            index += 1;
        }
        Ok(self.build.then_some(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if self.build {
            // The map being built is the set of names seen so far.
            let mut built = Map::new();
            while let Some(key) = map.next_key_seed(Key)? {
                match built.entry(key.into_owned()) {
                    serde_json::map::Entry::Occupied(seen) => return Err(self.found_duplicate(seen.key())),
                    serde_json::map::Entry::Vacant(slot) => match map.next_value_seed(self.child()) {
                        Ok(value) => {
                            slot.insert(value.unwrap_or_default());
                        }
                        Err(err) => {
                            self.unwinding(|| slot.key().clone());
                            return Err(err);
                        }
                    },
                }
            }
            return Ok(Some(Value::Object(built)));
        }
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(Key)? {
            if seen.contains(&key) {
                return Err(self.found_duplicate(&key));
            }
            if let Err(err) = map.next_value_seed(self.child()) {
                self.unwinding(|| key.to_string());
                return Err(err);
            }
            seen.insert(key);
        }
        Ok(None)
    }
}

/// The member names of one object so far. Most objects are small: a linear scan beats
/// hashing until they are not.
#[derive(Default)]
struct Seen<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> Seen<'de> {
    const FEW: usize = 16;

    fn contains(&self, key: &str) -> bool {
        if self.many.is_empty() { self.few.iter().any(|k| k == key) } else { self.many.contains(key) }
    }

    fn insert(&mut self, key: Cow<'de, str>) {
        if self.many.is_empty() && self.few.len() < Self::FEW {
            self.few.push(key);
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(key);
        }
    }
}

/// An object member's name, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn depth() {
        assert!(!exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(exceeds_depth(br#"{"a":[1,{"b":[2]}]}"#, 3));
        assert!(!exceeds_depth(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(exceeds_depth(&b"[".repeat(100), 32));
    }

    #[test]
    fn duplicate_members_are_named_by_pointer() {
        let p = check_strict(br#"{"order_id": 5, "x": 1, "order_id": "BX-1"}"#, 32).unwrap_err();
        assert_eq!(p.kind, ProblemType::DuplicateKey);
        assert!(p.detail.contains("/order_id"), "{}", p.detail);
        let p = check_strict(br#"{"lines": [{"sku": "a"}, {"sku": "b", "sku": "c"}]}"#, 32).unwrap_err();
        assert!(p.detail.contains("/lines/1/sku"), "{}", p.detail);
        // An escaped spelling of the same name is the same member.
        let p = parse_strict(br#"{"a/b~": 1, "a\u002fb~": 2}"#, 32).unwrap_err();
        assert!(p.detail.contains("/a~1b~0"), "{}", p.detail);
        // Many members: past the linear-scan size too.
        let mut many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        many.push_str("\"k7\":0");
        let p = check_strict(format!("{{{many}}}").as_bytes(), 32).unwrap_err();
        assert!(p.detail.contains("/k7"), "{}", p.detail);
    }

    #[test]
    fn same_names_in_different_objects_are_fine() {
        let v = parse_strict(br#"{"a": {"id": 1}, "b": {"id": 2}, "id": [ {"id": 3} ]}"#, 32).unwrap();
        assert_eq!(v["b"]["id"], 2);
        check_strict(br#"[1, "x", null, true, 2.5, -3]"#, 32).unwrap();
    }

    #[test]
    fn malformed_and_deep_are_classified() {
        assert_eq!(check_strict(br#"{"a": 1"#, 32).unwrap_err().kind, ProblemType::MalformedJson);
        assert_eq!(check_strict(br#"{"a": 1} x"#, 32).unwrap_err().kind, ProblemType::MalformedJson);
        assert_eq!(check_strict(&b"[".repeat(40), 32).unwrap_err().kind, ProblemType::JsonTooDeep);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn strict_parse_agrees_with_serde_json_when_members_are_unique(v in json_value()) {
            let text = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(parse_strict(&text, 32).unwrap(), v);
        }

        #[test]
        fn never_panics_and_accepts_only_what_serde_json_accepts(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if check_strict(&bytes, 8).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
            }
        }
    }
}
