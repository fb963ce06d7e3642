//! Breaking-change check between two versions of a contract: a structural comparison of two
//! JSON Schemas (2020-12) that names each change by its JSON pointer and says, for each side,
//! whether it breaks.
//!
//! - **Producers** (publishers of the old version): is every document valid under the old
//!   schema still accepted by the new one? A tightening (new required member, narrower type,
//!   smaller enum, …) breaks them.
//! - **Consumers** (readers written against the old version): is every document accepted by
//!   the new schema still valid under the old one? A loosening breaks them.
//!
//! The comparison is conservative: what it cannot decide (a changed `pattern`, composition
//! with `oneOf`/`if`, an unknown keyword) is "may break" for both sides, never "compatible".
//! Local `$ref`s (`#/...`) are resolved and their targets compared, so a changed definition
//! is a change at every place that uses it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod check;
pub use check::{DIFF_BAD_INPUT, DIFF_BREAKS, DIFF_COMPATIBLE, DIFF_MAY_BREAK, Outcome, check, diff_files};

/// What a change does to one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Compatible,
    /// Not decided structurally; treated as breaking by `check`.
    MayBreak,
    Breaks,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Compatible => "compatible",
            Self::MayBreak => "may break",
            Self::Breaks => "breaks",
        })
    }
}

/// One difference between the two schemas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// JSON pointer into the new schema (into the old one for what was removed).
    pub pointer: String,
    /// The `$ref`s (pointers into the schema) through which `pointer` was reached, outermost
    /// first: a changed definition is reported once per place that uses it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    pub producers: Verdict,
    pub consumers: Verdict,
    /// What changed and why it does (not) break each side.
    pub reason: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", if self.pointer.is_empty() { "(root)" } else { &self.pointer })?;
        for via in &self.via {
            write!(f, " (via {via})")?;
        }
        write!(f, ": producers {}, consumers {}: {}", self.producers, self.consumers, self.reason)
    }
}

/// Every change between `old` and `new`, and the worst verdict for each side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub changes: Vec<Change>,
}

impl Report {
    /// The worst verdict for producers (`Compatible` when nothing changed).
    #[must_use]
    pub fn producers(&self) -> Verdict {
        self.changes.iter().map(|c| c.producers).max().unwrap_or(Verdict::Compatible)
    }

    /// The worst verdict for consumers (`Compatible` when nothing changed).
    #[must_use]
    pub fn consumers(&self) -> Verdict {
        self.changes.iter().map(|c| c.consumers).max().unwrap_or(Verdict::Compatible)
    }

    /// The worst verdict for the sides `mode` protects.
    #[must_use]
    pub fn verdict(&self, mode: Compatibility) -> Verdict {
        match mode {
            Compatibility::Backward => self.producers(),
            Compatibility::Forward => self.consumers(),
            Compatibility::Full => self.producers().max(self.consumers()),
            Compatibility::None => Verdict::Compatible,
        }
    }

    /// The changes that violate `mode` (breaking or possibly breaking a protected side).
    pub fn violations(&self, mode: Compatibility) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(move |c| match mode {
            Compatibility::Backward => c.producers != Verdict::Compatible,
            Compatibility::Forward => c.consumers != Verdict::Compatible,
            Compatibility::Full => c.producers != Verdict::Compatible || c.consumers != Verdict::Compatible,
            Compatibility::None => false,
        })
    }
}

/// How a new version must relate to the one before it; named as in Confluent Schema Registry
/// (`BACKWARD`: the new schema reads data written with the old one; `FORWARD`: data written
/// with the new schema is read by the old one; `FULL`: both; `NONE`: not checked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    /// Every document valid under the previous version is accepted by this one: producers
    /// of the previous version are not broken.
    #[default]
    Backward,
    /// Every document accepted by this version is valid under the previous one: consumers
    /// of the previous version are not broken.
    Forward,
    /// Both.
    Full,
    /// Not checked.
    None,
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Backward => "backward",
            Self::Forward => "forward",
            Self::Full => "full",
            Self::None => "none",
        })
    }
}

impl std::str::FromStr for Compatibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "backward" => Ok(Self::Backward),
            "forward" => Ok(Self::Forward),
            "full" => Ok(Self::Full),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?} is not one of backward, forward, full, none")),
        }
    }
}

/// Compares two schemas.
#[must_use]
pub fn diff(old: &Value, new: &Value) -> Report {
    let mut walk = Walk { old_root: old, new_root: new, changes: Vec::new(), via: Vec::new(), refs: Vec::new() };
    walk.schema(old, new, "");
    Report { changes: walk.changes }
}

/// Keywords that do not affect validation (2020-12 meta-data, core identifiers, content
/// annotations; formats are asserted by magistral, so `format` is not among them).
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$id",
    "$anchor",
    "contentMediaType",
    "contentEncoding",
    "contentSchema",
];

/// Keywords compared by meaning below; any other keyword that changed "may break".
const UNDERSTOOD: &[&str] = &[
    "$ref",
    "$defs",
    "definitions",
    "type",
    "enum",
    "const",
    "pattern",
    "format",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "required",
    "properties",
    "additionalProperties",
    "unevaluatedProperties",
    "patternProperties",
    "propertyNames",
    "items",
    "prefixItems",
    "unevaluatedItems",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
];

/// Deepest nesting compared; a deeper (or endlessly recursive) schema is "may break" there.
const MAX_DEPTH: usize = 64;

/// Which side a one-sided change hurts.
#[derive(Clone, Copy)]
enum Effect {
    /// The new version accepts less: producers break.
    Tightened,
    /// The new version accepts more: consumers break.
    Loosened,
    /// Each accepts something the other refuses.
    Both,
    Unknown,
}

impl Effect {
    fn verdicts(self) -> (Verdict, Verdict) {
        match self {
            Self::Tightened => (Verdict::Breaks, Verdict::Compatible),
            Self::Loosened => (Verdict::Compatible, Verdict::Breaks),
            Self::Both => (Verdict::Breaks, Verdict::Breaks),
            Self::Unknown => (Verdict::MayBreak, Verdict::MayBreak),
        }
    }
}

struct Walk<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    changes: Vec<Change>,
    via: Vec<String>,
    /// `$ref` pairs being compared, so recursive definitions end.
    refs: Vec<(String, String)>,
}

/// A schema seen as keywords; `true` is the empty object, `false` is `None`.
fn keywords(schema: &Value) -> Option<Map<String, Value>> {
    match schema {
        Value::Bool(true) => Some(Map::new()),
        Value::Object(map) => Some(map.clone()),
        // `false`, or not a schema at all (compile refuses those earlier).
        _ => None,
    }
}

/// A schema that accepts everything (only annotations).
fn accepts_all(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| ANNOTATIONS.contains(&k.as_str()) || k == "$schema" || k == "$defs"),
        _ => false,
    }
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn join(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", escape(token))
}

impl<'a> Walk<'a> {
    fn push(&mut self, pointer: String, effect: Effect, reason: impl Into<String>) {
        let (producers, consumers) = effect.verdicts();
        self.changes.push(Change { pointer, via: self.via.clone(), producers, consumers, reason: reason.into() });
    }

    /// Whether comparing `old` and `new` finds no change (refs resolved).
    fn same(&mut self, old: &Value, new: &Value, pointer: &str) -> bool {
        let before = self.changes.len();
        self.schema(old, new, pointer);
        let same = self.changes.len() == before;
        self.changes.truncate(before);
        same
    }

    fn schema(&mut self, old: &Value, new: &Value, pointer: &str) {
        if old == new && !contains_ref(old) {
            return;
        }
        if self.via.len() + pointer.matches('/').count() > MAX_DEPTH {
            self.push(pointer.to_owned(), Effect::Unknown, "nested too deeply to compare");
            return;
        }
        let (Some(old_kw), Some(new_kw)) = (keywords(old), keywords(new)) else {
            match (old, new) {
                (Value::Bool(false), Value::Bool(false)) => {}
                (Value::Bool(false), _) => self.push(
                    pointer.to_owned(),
                    Effect::Loosened,
                    "the old version accepted nothing here (false); the new one accepts documents",
                ),
                (_, Value::Bool(false)) => {
                    let reason =
                        if pointer.ends_with("/additionalProperties") || pointer.ends_with("/unevaluatedProperties") {
                            "members not named in properties are now refused (false): documents of the old version \
                         carrying other members are refused"
                        } else {
                            "the new version accepts nothing here (false)"
                        };
                    self.push(pointer.to_owned(), Effect::Tightened, reason);
                }
                _ => self.push(pointer.to_owned(), Effect::Unknown, "not a schema"),
            }
            return;
        };
        if old_kw.contains_key("$ref") || new_kw.contains_key("$ref") {
            self.with_refs(&old_kw, &new_kw, pointer);
            return;
        }
        self.object(old_kw, new_kw, pointer);
    }

    /// A schema where either side has a `$ref`: the targets compared, then what is beside them.
    fn with_refs(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let old_ref = old.get("$ref").and_then(Value::as_str);
        let new_ref = new.get("$ref").and_then(Value::as_str);
        let resolve =
            |root: &'a Value, r: Option<&str>| r.and_then(|r| r.strip_prefix('#')).and_then(|p| root.pointer(p));
        let (old_target, new_target) = (resolve(self.old_root, old_ref), resolve(self.new_root, new_ref));
        let ref_pointer = join(pointer, "$ref");
        let rest = |m: &Map<String, Value>| {
            let mut m = m.clone();
            m.remove("$ref");
            m
        };
        match (old_ref, new_ref) {
            (Some(o), Some(n)) if old_target.is_none() || new_target.is_none() => {
                // A remote reference: its text is all that can be compared.
                if o != n {
                    self.push(ref_pointer, Effect::Unknown, format!("$ref changed from {o:?} to {n:?} (not resolved)"));
                }
                self.object(rest(old), rest(new), pointer);
            }
            (Some(o), Some(n)) => {
                let (old_target, new_target) = (old_target.unwrap_or(&Value::Null), new_target.unwrap_or(&Value::Null));
                self.follow(o, n, old_target, new_target, pointer);
                self.object(rest(old), rest(new), pointer);
            }
            (Some(o), None) | (None, Some(o)) => {
                // One side inlines what the other references: comparable when the `$ref`
                // stands alone.
                let (with, without) = if old_ref.is_some() { (old, new) } else { (new, old) };
                let alone = with.keys().all(|k| k == "$ref" || ANNOTATIONS.contains(&k.as_str()));
                let target = if old_ref.is_some() { old_target } else { new_target };
                match target {
                    Some(target) if alone => {
                        let inline = Value::Object(without.clone());
                        let (ot, nt) = if old_ref.is_some() { (target, &inline) } else { (&inline, target) };
                        self.via.push(ref_pointer);
                        let at =
                            if old_ref.is_some() { pointer.to_owned() } else { o.trim_start_matches('#').to_owned() };
                        self.schema(ot, nt, &at);
                        self.via.pop();
                    }
                    _ => self.push(
                        ref_pointer,
                        Effect::Unknown,
                        format!(
                            "$ref {o:?} {} beside other keywords",
                            if old_ref.is_some() { "removed" } else { "added" }
                        ),
                    ),
                }
            }
            (None, None) => unreachable!("called when a side has $ref"),
        }
    }

    /// Compares two `$ref` targets, reporting changes inside the (new) definition.
    fn follow(&mut self, old_ref: &str, new_ref: &str, old: &Value, new: &Value, pointer: &str) {
        let key = (old_ref.to_owned(), new_ref.to_owned());
        if self.refs.contains(&key) {
            // Already being compared further up: a recursive definition.
            return;
        }
        self.refs.push(key);
        self.via.push(join(pointer, "$ref"));
        self.schema(old, new, new_ref.trim_start_matches('#'));
        self.via.pop();
        self.refs.pop();
    }

    fn object(&mut self, mut old: Map<String, Value>, mut new: Map<String, Value>, pointer: &str) {
        let p = |k: &str| join(pointer, k);
        // `required` moved into (or out of) an `allOf` branch that holds only `required` is
        // the same constraint: fold such branches into the node's own `required`.
        fold_required_branches(&mut old);
        fold_required_branches(&mut new);

        self.types(&old, &new, pointer);
        self.values(&old, &new, pointer);
        self.pattern(&old, &new, pointer);
        self.format(&old, &new, pointer);
        self.bound(&old, &new, pointer, Side::Lower, "minimum", "exclusiveMinimum");
        self.bound(&old, &new, pointer, Side::Upper, "maximum", "exclusiveMaximum");
        self.multiple_of(&old, &new, pointer);
        for (keyword, side) in [
            ("minLength", Side::Lower),
            ("maxLength", Side::Upper),
            ("minItems", Side::Lower),
            ("maxItems", Side::Upper),
            ("minProperties", Side::Lower),
            ("maxProperties", Side::Upper),
        ] {
            self.count(&old, &new, pointer, keyword, side);
        }
        self.unique_items(&old, &new, pointer);
        self.required(&old, &new, pointer);
        self.properties(&old, &new, pointer);
        for keyword in ["additionalProperties", "unevaluatedProperties", "propertyNames", "unevaluatedItems"] {
            // Absent is the same as `true` for these.
            let (o, n) =
                (old.get(keyword).unwrap_or(&Value::Bool(true)), new.get(keyword).unwrap_or(&Value::Bool(true)));
            self.schema(o, n, &p(keyword));
        }
        self.pattern_properties(&old, &new, pointer);
        self.items(&old, &new, pointer);
        self.composition(&old, &new, pointer);
        // Anything else that changed is not understood.
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            if UNDERSTOOD.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str()) {
                continue;
            }
            if old.get(key) != new.get(key) {
                let what = match (old.get(key), new.get(key)) {
                    (None, _) => "added",
                    (_, None) => "removed",
                    _ => "changed",
                };
                self.push(p(key), Effect::Unknown, format!("{key} {what}: not compared by meaning"));
            }
        }
        old.clear();
        new.clear();
    }

    fn types(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let (o, n) = (type_atoms(old.get("type")), type_atoms(new.get("type")));
        if o == n {
            return;
        }
        let lost: Vec<&str> = o.difference(&n).copied().collect();
        let gained: Vec<&str> = n.difference(&o).copied().collect();
        let (effect, reason) = match (lost.is_empty(), gained.is_empty()) {
            (true, false) => (
                Effect::Loosened,
                format!("type widened (now also {}): the old version refuses such documents", gained.join(", ")),
            ),
            (false, true) => (
                Effect::Tightened,
                format!("type narrowed (no longer {}): documents of the old version may be refused", lost.join(", ")),
            ),
            _ => (Effect::Both, format!("type changed (no longer {}; now {})", lost.join(", "), gained.join(", "))),
        };
        self.push(join(pointer, "type"), effect, reason);
    }

    /// `enum` and `const`: the set of allowed values.
    fn values(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let (o, n) = (allowed_values(old), allowed_values(new));
        let keyword = |m: &Map<String, Value>| if m.contains_key("const") { "const" } else { "enum" };
        let at = join(pointer, keyword(if new.contains_key("enum") || new.contains_key("const") { new } else { old }));
        match (o, n) {
            (None, None) => {}
            (None, Some(_)) => {
                self.push(at, Effect::Tightened, format!("{} added: only listed values are accepted", keyword(new)))
            }
            (Some(_), None) => {
                self.push(at, Effect::Loosened, format!("{} removed: any value is accepted", keyword(old)))
            }
            (Some(o), Some(n)) => {
                let lost: Vec<String> = o.iter().filter(|v| !n.contains(v)).map(Value::to_string).collect();
                let gained: Vec<String> = n.iter().filter(|v| !o.contains(v)).map(Value::to_string).collect();
                match (lost.is_empty(), gained.is_empty()) {
                    (true, true) => {}
                    (true, false) => self.push(
                        at,
                        Effect::Loosened,
                        format!("values added ({}): the old version refuses them", gained.join(", ")),
                    ),
                    (false, true) => self.push(
                        at,
                        Effect::Tightened,
                        format!(
                            "values removed ({}): documents of the old version using them are refused",
                            lost.join(", ")
                        ),
                    ),
                    (false, false) => self.push(
                        at,
                        Effect::Both,
                        format!("values removed ({}) and added ({})", lost.join(", "), gained.join(", ")),
                    ),
                }
            }
        }
    }

    fn pattern(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let at = join(pointer, "pattern");
        match (old.get("pattern"), new.get("pattern")) {
            (o, n) if o == n => {}
            (None, Some(n)) => self.push(at, Effect::Tightened, format!("pattern {n} added")),
            (Some(o), None) => self.push(at, Effect::Loosened, format!("pattern {o} removed")),
            (Some(o), Some(n)) => self.push(
                at,
                Effect::Unknown,
                format!("pattern changed from {o} to {n}: which strings each accepts is not compared"),
            ),
            (None, None) => {}
        }
    }

    fn format(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let at = join(pointer, "format");
        let (o, n) = (old.get("format").and_then(Value::as_str), new.get("format").and_then(Value::as_str));
        match (o, n) {
            (o, n) if o == n => {}
            (None, Some(n)) => self.push(at, Effect::Tightened, format!("format {n:?} added (formats are asserted)")),
            (Some(o), None) => self.push(at, Effect::Loosened, format!("format {o:?} removed")),
            (Some(o), Some(n)) => {
                // Formats whose strings are all strings of another (RFC 3987 extends 3986, …).
                const WIDER: &[(&str, &str)] = &[
                    ("email", "idn-email"),
                    ("hostname", "idn-hostname"),
                    ("uri", "iri"),
                    ("uri", "uri-reference"),
                    ("uri", "iri-reference"),
                    ("iri", "iri-reference"),
                    ("uri-reference", "iri-reference"),
                ];
                let (effect, how) = if WIDER.contains(&(o, n)) {
                    (Effect::Loosened, "widened")
                } else if WIDER.contains(&(n, o)) {
                    (Effect::Tightened, "narrowed")
                } else {
                    (Effect::Both, "changed")
                };
                self.push(at, effect, format!("format {how} from {o:?} to {n:?}"));
            }
            (None, None) => {}
        }
    }

    /// `minimum`/`exclusiveMinimum` (or the maximum pair) as one bound.
    fn bound(
        &mut self,
        old: &Map<String, Value>,
        new: &Map<String, Value>,
        pointer: &str,
        side: Side,
        inclusive: &str,
        exclusive: &str,
    ) {
        let (o, n) = (numeric_bound(old, side, inclusive, exclusive), numeric_bound(new, side, inclusive, exclusive));
        let keyword = |b: &Option<(f64, bool)>| if b.is_some_and(|b| b.1) { exclusive } else { inclusive };
        let at = join(pointer, keyword(if n.is_some() { &n } else { &o }));
        let show = |b: (f64, bool), kw: &str| format!("{kw} {}", b.0);
        match (o, n) {
            (None, None) => {}
            (None, Some(nb)) => self.push(at, Effect::Tightened, format!("{} added", show(nb, keyword(&n)))),
            (Some(ob), None) => self.push(at, Effect::Loosened, format!("{} removed", show(ob, keyword(&o)))),
            (Some(ob), Some(nb)) => {
                // Positive when the new bound admits fewer numbers.
                let stricter = match side {
                    Side::Lower => nb.0 > ob.0 || (nb.0 == ob.0 && nb.1 && !ob.1),
                    Side::Upper => nb.0 < ob.0 || (nb.0 == ob.0 && nb.1 && !ob.1),
                };
                if ob == nb {
                    return;
                }
                let (effect, how) =
                    if stricter { (Effect::Tightened, "tightened") } else { (Effect::Loosened, "loosened") };
                self.push(at, effect, format!("{how}: {} → {}", show(ob, keyword(&o)), show(nb, keyword(&n))));
            }
        }
    }

    fn multiple_of(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let at = join(pointer, "multipleOf");
        let (o, n) = (old.get("multipleOf").and_then(Value::as_f64), new.get("multipleOf").and_then(Value::as_f64));
        let divides = |a: f64, b: f64| {
            // b is a whole multiple of a.
            let k = b / a;
            (k - k.round()).abs() < 1e-9
        };
        match (o, n) {
            (o, n) if o == n => {}
            (None, Some(n)) => self.push(at, Effect::Tightened, format!("multipleOf {n} added")),
            (Some(o), None) => self.push(at, Effect::Loosened, format!("multipleOf {o} removed")),
            (Some(o), Some(n)) if divides(o, n) => {
                self.push(at, Effect::Tightened, format!("multipleOf {o} → {n}: fewer numbers are multiples"));
            }
            (Some(o), Some(n)) if divides(n, o) => {
                self.push(at, Effect::Loosened, format!("multipleOf {o} → {n}: more numbers are multiples"));
            }
            (Some(o), Some(n)) => self.push(at, Effect::Both, format!("multipleOf {o} → {n}")),
            (None, None) => {}
        }
    }

    /// A length or count bound (`minLength`, `maxItems`, …).
    fn count(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str, keyword: &str, side: Side) {
        let (o, n) = (old.get(keyword).and_then(Value::as_f64), new.get(keyword).and_then(Value::as_f64));
        // A lower bound of 0 is the same as none.
        let norm = |v: Option<f64>| if side == Side::Lower && v == Some(0.0) { None } else { v };
        let (o, n) = (norm(o), norm(n));
        let at = join(pointer, keyword);
        match (o, n) {
            (o, n) if o == n => {}
            (None, Some(n)) => self.push(at, Effect::Tightened, format!("{keyword} {n} added")),
            (Some(o), None) => self.push(at, Effect::Loosened, format!("{keyword} {o} removed")),
            (Some(o), Some(n)) => {
                let stricter = if side == Side::Lower { n > o } else { n < o };
                let (effect, how) =
                    if stricter { (Effect::Tightened, "tightened") } else { (Effect::Loosened, "loosened") };
                self.push(at, effect, format!("{keyword} {how}: {o} → {n}"));
            }
            (None, None) => {}
        }
    }

    fn unique_items(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let flag = |m: &Map<String, Value>| m.get("uniqueItems").and_then(Value::as_bool).unwrap_or(false);
        match (flag(old), flag(new)) {
            (false, true) => self.push(join(pointer, "uniqueItems"), Effect::Tightened, "uniqueItems added"),
            (true, false) => self.push(join(pointer, "uniqueItems"), Effect::Loosened, "uniqueItems removed"),
            _ => {}
        }
    }

    fn required(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let (o, n) = (names(old.get("required")), names(new.get("required")));
        let at = join(pointer, "required");
        for name in n.difference(&o) {
            self.push(
                at.clone(),
                Effect::Tightened,
                format!("{name:?} is now required: documents of the old version without it are refused"),
            );
        }
        for name in o.difference(&n) {
            self.push(
                at.clone(),
                Effect::Loosened,
                format!("{name:?} is no longer required: documents of the new version may lack it"),
            );
        }
    }

    fn properties(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let empty = Map::new();
        let op = old.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let np = new.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let props = join(pointer, "properties");
        let names: BTreeSet<&String> = op.keys().chain(np.keys()).collect();
        for name in names {
            let at = join(&props, name);
            match (op.get(name), np.get(name)) {
                (Some(o), Some(n)) => self.schema(o, n, &at),
                (None, Some(n)) => {
                    // What the old version did with a member of this name.
                    match elsewhere(old) {
                        Some(o) if accepts_all(&o) && !accepts_all(n) => self.push(
                            at,
                            Effect::Tightened,
                            format!(
                                "property {name:?} added with a schema: the old version accepted any value under \
                                 that name (open content model), so some of its documents may be refused"
                            ),
                        ),
                        Some(Value::Bool(false)) if n != &Value::Bool(false) => self.push(
                            at,
                            Effect::Loosened,
                            format!("property {name:?} added: the old version forbids it (additional members refused)"),
                        ),
                        Some(o) => self.schema(&o, n, &at),
                        None => self.push(
                            at,
                            Effect::Unknown,
                            format!("property {name:?} added where the old version matched names by pattern"),
                        ),
                    }
                }
                (Some(o), None) => match elsewhere(new) {
                    Some(n) if accepts_all(&n) && !accepts_all(o) => self.push(
                        at,
                        Effect::Loosened,
                        format!(
                            "property {name:?} removed: the new version accepts any value under that name \
                             (open content model), which the old one may refuse"
                        ),
                    ),
                    Some(Value::Bool(false)) if o != &Value::Bool(false) => self.push(
                        at,
                        Effect::Tightened,
                        format!(
                            "property {name:?} removed while additional members are refused: documents of the old \
                             version carrying it are refused"
                        ),
                    ),
                    Some(n) => self.schema(o, &n, &at),
                    None => self.push(
                        at,
                        Effect::Unknown,
                        format!("property {name:?} removed where the new version matches names by pattern"),
                    ),
                },
                (None, None) => {}
            }
        }
    }

    fn pattern_properties(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let empty = Map::new();
        let op = old.get("patternProperties").and_then(Value::as_object).unwrap_or(&empty);
        let np = new.get("patternProperties").and_then(Value::as_object).unwrap_or(&empty);
        let at = join(pointer, "patternProperties");
        let patterns: BTreeSet<&String> = op.keys().chain(np.keys()).collect();
        for pattern in patterns {
            match (op.get(pattern), np.get(pattern)) {
                (Some(o), Some(n)) => self.schema(o, n, &join(&at, pattern)),
                _ => self.push(
                    join(&at, pattern),
                    Effect::Unknown,
                    format!("patternProperties {pattern:?} added or removed: which members it governs is not compared"),
                ),
            }
        }
    }

    fn items(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        let yes = Value::Bool(true);
        let (oi, ni) = (old.get("items").unwrap_or(&yes), new.get("items").unwrap_or(&yes));
        let no_prefix = Vec::new();
        let op = old.get("prefixItems").and_then(Value::as_array).unwrap_or(&no_prefix);
        let np = new.get("prefixItems").and_then(Value::as_array).unwrap_or(&no_prefix);
        // Position i is governed by prefixItems[i], or by items past the prefix.
        for i in 0..op.len().max(np.len()) {
            let (o, n) = (op.get(i).unwrap_or(oi), np.get(i).unwrap_or(ni));
            let at =
                if i < np.len() { join(&join(pointer, "prefixItems"), &i.to_string()) } else { join(pointer, "items") };
            self.schema(o, n, &at);
        }
        self.schema(oi, ni, &join(pointer, "items"));
    }

    fn composition(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, pointer: &str) {
        // allOf and anyOf are monotone: a branch compared with the branch at its place keeps
        // its verdicts. Another number of branches is not compared.
        for keyword in ["allOf", "anyOf"] {
            let at = join(pointer, keyword);
            match (old.get(keyword).and_then(Value::as_array), new.get(keyword).and_then(Value::as_array)) {
                (None, None) => {}
                (Some(o), Some(n)) if o.len() == n.len() => {
                    for (i, (o, n)) in o.iter().zip(n).enumerate() {
                        self.schema(o, n, &join(&at, &i.to_string()));
                    }
                }
                (o, n) => {
                    let count = |v: Option<&Vec<Value>>| v.map_or(0, Vec::len);
                    self.push(
                        at,
                        Effect::Unknown,
                        format!("{keyword} changed from {} to {} branch(es): not compared", count(o), count(n)),
                    );
                }
            }
        }
        // `not` reverses who breaks.
        match (old.get("not"), new.get("not")) {
            (None, None) => {}
            (Some(o), Some(n)) => {
                let before = self.changes.len();
                self.schema(o, n, &join(pointer, "not"));
                for change in &mut self.changes[before..] {
                    std::mem::swap(&mut change.producers, &mut change.consumers);
                    change.reason = format!("inside not, so reversed: {}", change.reason);
                }
            }
            _ => self.push(join(pointer, "not"), Effect::Unknown, "not added or removed: not compared"),
        }
        // oneOf and if/then/else: only "unchanged" is decided.
        for keyword in ["oneOf", "if", "then", "else"] {
            let (o, n) = (old.get(keyword), new.get(keyword));
            let unchanged = match (o, n) {
                (None, None) => true,
                // oneOf holds a list of schemas; if/then/else one schema.
                (Some(Value::Array(o)), Some(Value::Array(n))) => {
                    o.len() == n.len()
                        && o.iter()
                            .zip(n)
                            .enumerate()
                            .all(|(i, (o, n))| self.same(o, n, &join(&join(pointer, keyword), &i.to_string())))
                }
                (Some(o), Some(n)) => self.same(o, n, &join(pointer, keyword)),
                _ => false,
            };
            if !unchanged {
                self.push(
                    join(pointer, keyword),
                    Effect::Unknown,
                    format!("{keyword} changed: not compared by meaning"),
                );
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Lower,
    Upper,
}

/// Moves `allOf` branches holding only `required` into the node's own `required`.
fn fold_required_branches(node: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = node.get("allOf") else { return };
    let (only_required, rest): (Vec<&Value>, Vec<&Value>) = branches.iter().partition(|b| {
        b.as_object().is_some_and(|m| {
            m.contains_key("required") && m.keys().all(|k| k == "required" || ANNOTATIONS.contains(&k.as_str()))
        })
    });
    if only_required.is_empty() {
        return;
    }
    let mut required = names(node.get("required"));
    for branch in only_required {
        required.extend(names(branch.get("required")));
    }
    let rest: Vec<Value> = rest.into_iter().cloned().collect();
    node.insert("required".into(), Value::Array(required.into_iter().map(Value::String).collect()));
    if rest.is_empty() {
        node.remove("allOf");
    } else {
        node.insert("allOf".into(), Value::Array(rest));
    }
}

/// The schema applied to an object member not named in `properties`, when no
/// `patternProperties` may apply instead (`None` then).
fn elsewhere(node: &Map<String, Value>) -> Option<Value> {
    if node.get("patternProperties").and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
        return None;
    }
    let ap = node.get("additionalProperties").or_else(|| node.get("unevaluatedProperties"));
    Some(ap.cloned().unwrap_or(Value::Bool(true)))
}

fn names(required: Option<&Value>) -> BTreeSet<String> {
    required
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The kinds of JSON values a `type` admits; `integer` is the whole numbers among `number`.
fn type_atoms(ty: Option<&Value>) -> BTreeSet<&'static str> {
    const ALL: [&str; 7] = ["null", "boolean", "object", "array", "string", "integer", "fractional number"];
    let atoms = |t: &str| -> &[&'static str] {
        match t {
            "null" => &["null"],
            "boolean" => &["boolean"],
            "object" => &["object"],
            "array" => &["array"],
            "string" => &["string"],
            "integer" => &["integer"],
            "number" => &["integer", "fractional number"],
            _ => &[],
        }
    };
    match ty {
        None => ALL.into_iter().collect(),
        Some(Value::String(t)) => atoms(t).iter().copied().collect(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).flat_map(|t| atoms(t).iter().copied()).collect(),
        Some(_) => BTreeSet::new(),
    }
}

/// The values `enum`/`const` allow (`const` wins), or `None` when any value is allowed.
fn allowed_values(node: &Map<String, Value>) -> Option<Vec<Value>> {
    if let Some(c) = node.get("const") {
        return Some(vec![c.clone()]);
    }
    node.get("enum").and_then(Value::as_array).cloned()
}

/// The effective lower (upper) bound: the stricter of the inclusive and exclusive keywords.
fn numeric_bound(node: &Map<String, Value>, side: Side, inclusive: &str, exclusive: &str) -> Option<(f64, bool)> {
    let inc = node.get(inclusive).and_then(Value::as_f64).map(|v| (v, false));
    let exc = node.get(exclusive).and_then(Value::as_f64).map(|v| (v, true));
    match (inc, exc) {
        (Some(i), Some(e)) => {
            let e_stricter = match side {
                Side::Lower => e.0 >= i.0,
                Side::Upper => e.0 <= i.0,
            };
            Some(if e_stricter { e } else { i })
        }
        (i, e) => i.or(e),
    }
}

fn contains_ref(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(contains_ref),
        Value::Array(a) => a.iter().any(contains_ref),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
