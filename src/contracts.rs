//! Contracts: JSON Schema (2020-12) documents bound to subject patterns, compiled once at
//! load and checked against every published message's data.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::subject;

pub mod compat;
pub mod registry;

/// A compiled contract version.
#[derive(Debug)]
pub struct Contract {
    pub name: String,
    pub version: u32,
    /// The schema file, for operators and `GET /v1/contracts`.
    pub file: PathBuf,
    /// Subject patterns this version governs.
    pub subjects: Vec<String>,
    /// Request subject patterns whose replies this version governs.
    pub replies: Vec<String>,
    /// URI stamped as `ce-dataschema`: the schema's `$id`, or a URN naming the version.
    pub dataschema: String,
    pub schema: Value,
    /// Where the version comes from: files are authoritative, the API adds beside them.
    pub origin: Origin,
    validator: jsonschema::Validator,
}

/// Where a contract version comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `[[contracts]]` and a schema file: changed only by operators.
    File,
    /// Registered over `PUT /v1/contracts/{name}/{version}` by a participant granted its name.
    Api { registered_by: String, compatibility: compat::Compatibility },
}

/// One way data breaks its contract (`errors` member of a `contract-violation` problem).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// JSON pointer into the data.
    pub instance_path: String,
    /// JSON pointer into the schema: the keyword that failed.
    pub schema_path: String,
    pub message: String,
}

/// A schema that does not compile as JSON Schema 2020-12, described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(String);

impl Contract {
    /// Compiles a schema as JSON Schema 2020-12 with `format` asserted (dates, e-mails).
    ///
    /// # Errors
    /// The schema is not a valid 2020-12 schema, or references something that cannot be
    /// resolved offline.
    pub fn compile(
        name: String,
        version: u32,
        file: PathBuf,
        subjects: Vec<String>,
        schema: Value,
    ) -> Result<Self, SchemaError> {
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| SchemaError(e.to_string()))?;
        let dataschema = schema
            .get("$id")
            .and_then(Value::as_str)
            .map_or_else(|| format!("urn:magistral:contract:{name}:v{version}"), str::to_owned);
        Ok(Self {
            name,
            version,
            file,
            subjects,
            replies: Vec::new(),
            dataschema,
            schema,
            origin: Origin::File,
            validator,
        })
    }

    /// The first `max` ways `data` breaks this contract, and how many there are in all (0
    /// when it honours it). Only the listed ones are rendered, so a body that fails in a
    /// million places costs a count, not a million messages.
    #[must_use]
    pub fn violations(&self, data: &Value, max: usize) -> (Vec<Violation>, usize) {
        // Most messages honour their contract: `is_valid` stops at nothing and builds no error
        // locations, where walking `iter_errors` did (half the validation samples in a profile,
        // docs/benchmarks.md "Flat with scale").
        if self.validator.is_valid(data) {
            return (Vec::new(), 0);
        }
        let mut listed = Vec::new();
        let mut total = 0;
        for e in self.validator.iter_errors(data) {
            total += 1;
            if listed.len() < max {
                listed.push(Violation {
                    instance_path: e.instance_path().to_string(),
                    schema_path: e.schema_path().to_string(),
                    message: shortened(e.to_string()),
                });
            }
        }
        (listed, total)
    }

    #[must_use]
    pub fn governs(&self, subject: &str) -> bool {
        self.subjects.iter().any(|p| subject::matches(p, subject))
    }
}

/// Longest violation message answered: a validator's message may quote the whole instance
/// (`[1,1,…] has more than 200 items`).
const MAX_MESSAGE_BYTES: usize = 200;

fn shortened(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// All loaded contracts (shared, so a catalog with the API's contracts swapped in is cheap).
#[derive(Debug, Default, Clone)]
pub struct Contracts {
    list: Vec<Arc<Contract>>,
    /// Publish subjects: a literal subject is one map hit, not a scan of every pattern.
    subjects: SubjectIndex,
    /// Request subjects whose replies are governed.
    replies: SubjectIndex,
}

/// Which contracts (positions in `Contracts::list`, in its order) a subject pattern binds:
/// for every literal pattern, all contracts governing that subject (wildcard ones included);
/// for other subjects only contracts holding a wildcard pattern can match, so only those are
/// scanned. Keeps per-message lookup flat as contracts grow (issue 16).
#[derive(Debug, Default, Clone)]
struct SubjectIndex {
    literal: std::collections::HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
}

impl SubjectIndex {
    fn build(list: &[Arc<Contract>], patterns: impl Fn(&Contract) -> &[String]) -> Self {
        let is_literal = |p: &str| !p.split('.').any(|t| t == "*" || t == ">");
        let governs = |c: &Contract, subject: &str| patterns(c).iter().any(|p| subject::matches(p, subject));
        let mut index = Self::default();
        for (i, c) in list.iter().enumerate() {
            for p in patterns(c) {
                if is_literal(p) {
                    index.literal.entry(p.clone()).or_default();
                } else if index.wildcard.last() != Some(&i) {
                    index.wildcard.push(i);
                }
            }
        }
        for (subject, bound) in &mut index.literal {
            bound.extend(list.iter().enumerate().filter(|(_, c)| governs(c, subject)).map(|(i, _)| i));
        }
        index
    }

    /// Positions of the contracts governing `subject`, in list order.
    fn lookup<'a, 's, F>(
        &'a self,
        list: &'a [Arc<Contract>],
        subject: &'s str,
        patterns: F,
    ) -> impl Iterator<Item = &'a Contract> + use<'a, 's, F>
    where
        F: Fn(&Contract) -> &[String],
    {
        let (hit, scan) = match self.literal.get(subject) {
            Some(bound) => (bound.as_slice(), &[][..]),
            None => (&[][..], self.wildcard.as_slice()),
        };
        let scanned =
            scan.iter().map(|&i| &*list[i]).filter(move |c| patterns(c).iter().any(|p| subject::matches(p, subject)));
        hit.iter().map(|&i| &*list[i]).chain(scanned)
    }
}

impl Contracts {
    /// Sorted so that, among versions of one contract, the newest comes first.
    #[must_use]
    pub fn new(list: Vec<Contract>) -> Self {
        Self::sorted(list.into_iter().map(Arc::new).collect())
    }

    fn sorted(mut list: Vec<Arc<Contract>>) -> Self {
        list.sort_by(|a, b| a.name.cmp(&b.name).then(b.version.cmp(&a.version)));
        let subjects = SubjectIndex::build(&list, |c| &c.subjects);
        let replies = SubjectIndex::build(&list, |c| &c.replies);
        Self { list, subjects, replies }
    }

    /// These contracts' file versions with `api` beside them (replacing any API versions held
    /// before). An API version whose name files now declare is left out: files win.
    #[must_use]
    pub fn with_api(&self, api: &[Arc<Contract>]) -> Self {
        let files: Vec<Arc<Contract>> = self.list.iter().filter(|c| c.origin == Origin::File).cloned().collect();
        let mut list = files.clone();
        for contract in api {
            if files.iter().any(|f| f.name == contract.name) {
                tracing::warn!(
                    contract = %contract.name,
                    version = contract.version,
                    "a registered contract's name is now declared in files; the files' versions apply"
                );
            } else {
                list.push(contract.clone());
            }
        }
        Self::sorted(list)
    }

    /// A version, shared (a pinned subscription holds its own).
    #[must_use]
    pub fn shared(&self, name: &str, version: u32) -> Option<Arc<Contract>> {
        self.list.iter().find(|c| c.name == name && c.version == version).cloned()
    }

    /// The contract that governs `subject`.
    ///
    /// When several versions are bound to the subject, a publisher picks one with
    /// `ce-dataschema`; without it the newest version applies.
    ///
    /// # Errors
    /// `requested` names a schema that is not bound to this subject.
    pub fn for_subject(&self, subject: &str, requested: Option<&str>) -> Result<Option<&Contract>, UnknownSchema> {
        let mut bound = self.subjects.lookup(&self.list, subject, |c| &c.subjects);
        match requested {
            None => Ok(bound.next()),
            Some(uri) => {
                let bound: Vec<&Contract> = bound.collect();
                if bound.is_empty() {
                    return Ok(None);
                }
                bound.iter().find(|c| c.dataschema == uri).map(|c| Some(*c)).ok_or_else(|| UnknownSchema {
                    requested: uri.to_owned(),
                    bound: bound.iter().map(|c| c.dataschema.clone()).collect(),
                })
            }
        }
    }

    /// The contract replies to requests on `subject` must honour (newest version).
    #[must_use]
    pub fn for_reply(&self, subject: &str) -> Option<&Contract> {
        self.replies.lookup(&self.list, subject, |c| &c.replies).next()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Contract> {
        self.list.iter().map(|c| &**c)
    }

    #[must_use]
    pub fn get(&self, name: &str, version: Option<u32>) -> Option<&Contract> {
        self.iter().find(|c| c.name == name && version.is_none_or(|v| v == c.version))
    }
}

/// The publisher asked for a schema version that is not bound to the subject.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ce-dataschema {requested:?} is not bound to this subject (bound: {bound:?})")]
pub struct UnknownSchema {
    pub requested: String,
    pub bound: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract(version: u32, schema: Value) -> Contract {
        Contract::compile("order".into(), version, "x.json".into(), vec!["orders.>".into()], schema).unwrap()
    }

    #[test]
    fn violations_name_every_pointer() {
        let c = contract(
            1,
            json!({"type":"object","required":["id","lines"],"properties":{"id":{"type":"string"},"lines":{"type":"array","items":{"type":"object","properties":{"qty":{"type":"number","exclusiveMinimum":0}}}}}}),
        );
        let (v, total) = c.violations(&json!({"lines":[{"qty":1},{"qty":-1},{"qty":0}]}), 100);
        assert_eq!(total, v.len());
        let paths: Vec<&str> = v.iter().map(|v| v.instance_path.as_str()).collect();
        assert!(paths.contains(&""), "{v:?}");
        assert!(paths.contains(&"/lines/1/qty"), "{v:?}");
        assert!(paths.contains(&"/lines/2/qty"), "{v:?}");
        assert!(v.iter().any(|v| v.schema_path.ends_with("exclusiveMinimum")), "{v:?}");
    }

    #[test]
    fn many_violations_are_counted_and_few_listed_briefly() {
        let c = contract(1, json!({"type":"array","maxItems":3,"items":{"type":"string"}}));
        let (listed, total) = c.violations(&json!(vec![1; 5000]), 100);
        assert_eq!((listed.len(), total), (100, 5001));
        assert!(listed.iter().all(|v| v.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8()), "{listed:?}");
    }

    #[test]
    fn newest_version_unless_requested() {
        let cs = Contracts::new(vec![
            contract(1, json!({"$id":"https://x/v1","type":"object"})),
            contract(2, json!({"$id":"https://x/v2","type":"object"})),
        ]);
        assert_eq!(cs.for_subject("orders.created", None).unwrap().unwrap().version, 2);
        assert_eq!(cs.for_subject("orders.created", Some("https://x/v1")).unwrap().unwrap().version, 1);
        assert!(cs.for_subject("orders.created", Some("https://x/v9")).is_err());
        assert!(cs.for_subject("other", None).unwrap().is_none());
    }

    /// The literal-subject index answers what a scan of every pattern would, in the same order.
    #[test]
    fn literal_index_agrees_with_a_scan() {
        let bind = |name: &str, subjects: &[&str]| {
            let subjects = subjects.iter().map(|s| (*s).to_owned()).collect();
            Contract::compile(name.into(), 1, "x.json".into(), subjects, json!({})).unwrap()
        };
        let cs = Contracts::new(vec![
            bind("b-literal", &["orders.created"]),
            bind("a-wild", &["orders.*", "stock.moved"]),
            bind("c-other", &["invoices.>"]),
            bind("d-literal", &["orders.created", "orders.deleted.x"]),
        ]);
        let scan = |subject: &str| -> Vec<String> {
            cs.iter().filter(|c| c.governs(subject)).map(|c| c.name.clone()).collect()
        };
        for subject in ["orders.created", "orders.updated", "stock.moved", "invoices.a.b", "orders.deleted.x", "nope"] {
            let indexed: Vec<String> =
                cs.subjects.lookup(&cs.list, subject, |c| &c.subjects).map(|c| c.name.clone()).collect();
            assert_eq!(indexed, scan(subject), "{subject}");
        }
        assert_eq!(cs.for_subject("orders.created", None).unwrap().unwrap().name, "a-wild");
        assert_eq!(cs.for_subject("orders.deleted.x", None).unwrap().unwrap().name, "d-literal");
        assert!(cs.for_subject("orders.deleted.y", None).unwrap().is_none());
    }

    #[test]
    fn formats_are_asserted() {
        let c = contract(1, json!({"type":"string","format":"date-time"}));
        assert_eq!(c.violations(&json!("2026-11-28T10:00:00Z"), 10).1, 0);
        assert_eq!(c.violations(&json!("yesterday"), 10).1, 1);
    }
}
