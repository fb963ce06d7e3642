//! Spreadsheet imports: a CSV or XLSX (or a ZIP of them) that a system not yet on the bus
//! still produces — a NAV report, a 1C export — posted to `POST /v1/import/{route}`, each
//! data row made a message on the route's subject and checked against its contract like any
//! publish. Rows are published as batches whose ids derive from the file's content and the
//! row's place, so posting the same file again stores nothing twice (JetStream
//! de-duplication within the stream's `duplicate_window`). What was refused is reported by
//! row and column, so the person who made the spreadsheet can fix it.
//!
//! - [`table`]: reading files as rows, bounded while reading (rows, columns, cells, ZIP
//!   entries and inflated bytes).
//! - this file: the route, rows made messages (column mapping or a jq program, cells typed
//!   as the contract types them), the report.
//! - [`cli`]: `magistral import FILE --route R`.

pub mod cli;
pub mod table;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::charset::Charset;
use crate::config::{Config, ImportConfig, Limits};
use crate::participants::Participant;
use crate::problem::{Problem, ProblemType};
use crate::publish::cloudevents::ClientAttributes;
use crate::publish::{self, Draft, Outgoing};
use crate::transform::Transform;
use table::{Cell, Format, Options, RowRef, Sink};

/// Why an import was refused as a whole (nothing was published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportErrorKind {
    /// Over a limit: size, columns, cell length, ZIP entries or inflated bytes.
    TooLarge,
    /// More data rows than `limits.max_import_rows`.
    TooManyRows,
    /// Not a readable CSV, XLSX or ZIP, no header row, or a mapped column missing.
    Unreadable,
    /// A CSV that is not valid in its charset.
    Undecodable,
}

pub type ImportError = crate::error::Error<ImportErrorKind>;

/// How a row becomes a message's data.
#[derive(Debug, Clone, PartialEq)]
enum Mapping {
    /// Each column is the member its header names.
    Headers,
    /// `(JSON pointer of the member, header)`, in configuration order.
    Columns(Vec<(String, String)>),
    /// A jq program over the row as `{header: cell}`.
    Transform(Transform),
}

/// A configured import route, resolved.
#[derive(Debug, Clone)]
pub struct ImportRoute {
    pub name: String,
    pub participant: String,
    pub subject: String,
    mapping: Mapping,
    sheet: Option<String>,
    charset: Option<Charset>,
    delimiter: Option<u8>,
}

impl ImportRoute {
    /// # Errors
    /// `(field, message)` for every problem, relative to `imports.<name>`.
    pub fn resolve(name: &str, cfg: &ImportConfig, config: &Config) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            problems.push((String::new(), "an import route name is 1-64 of A-Z, a-z, 0-9, '-', '_'".to_owned()));
        }
        if let Err(e) = crate::subject::validate_publish_subject(&cfg.subject, 256) {
            problems.push(("subject".to_owned(), e.to_string()));
        }
        match config.participants.get(&cfg.participant) {
            None => problems.push(("participant".into(), format!("no participant {:?}", cfg.participant))),
            Some(p) if !p.publish.iter().any(|pat| crate::subject::matches(pat, &cfg.subject)) => problems.push((
                "subject".into(),
                format!("participant {} may not publish to {}", cfg.participant, cfg.subject),
            )),
            Some(_) => {}
        }
        let transform =
            crate::transform::load(config, "transform", cfg.transform.as_ref(), cfg.transform_file.as_ref())
                .unwrap_or_else(|p| {
                    problems.push(p);
                    None
                });
        let mapping = match (transform, cfg.columns.is_empty()) {
            (Some(_), false) => {
                problems.push(("columns".into(), "give columns or a transform, not both".into()));
                Mapping::Headers
            }
            (Some(t), true) => Mapping::Transform(t),
            (None, true) => Mapping::Headers,
            (None, false) => Mapping::Columns(
                cfg.columns
                    .iter()
                    .map(|(member, header)| {
                        let pointer = if member.starts_with('/') { member.clone() } else { format!("/{member}") };
                        if pointer.len() < 2 || pointer.contains("//") || pointer.ends_with('/') {
                            problems.push((format!("columns.{member}"), "not a member name or JSON pointer".into()));
                        }
                        (pointer, header.trim().to_owned())
                    })
                    .collect(),
            ),
        };
        let charset = match cfg.charset.as_deref().map(crate::charset::label_to_encoding) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(p)) => {
                problems.push(("charset".into(), p.detail));
                None
            }
        };
        let delimiter = match cfg.delimiter {
            None => None,
            Some(c) if c.is_ascii() && c != '"' && c != '\n' && c != '\r' => Some(c as u8),
            Some(_) => {
                problems.push(("delimiter".into(), "one ASCII character other than a quote or a line break".into()));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            name: name.to_owned(),
            participant: cfg.participant.clone(),
            subject: cfg.subject.clone(),
            mapping,
            sheet: cfg.sheet.clone(),
            charset,
            delimiter,
        })
    }

    /// Whether `participant` may post files to this route: its own participant, or an admin;
    /// either needs publish permission on the subject.
    ///
    /// # Errors
    /// `forbidden`, saying which.
    pub fn authorize(&self, participant: &Participant) -> Result<(), Problem> {
        if participant.name != self.participant && !participant.admin {
            return Err(Problem::new(
                ProblemType::Forbidden,
                format!("import route {} is for participant {}", self.name, self.participant),
            ));
        }
        if !participant.publish.allows(&self.subject) {
            return Err(Problem::new(
                ProblemType::Forbidden,
                format!("participant {} may not publish to {}", participant.name, self.subject),
            ));
        }
        Ok(())
    }
}

/// One refusal in a report: the row, and where possible the column and member at fault.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Refusal {
    /// The file inside a ZIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based, as the spreadsheet numbers it (the header is row 1).
    pub row: u64,
    /// The column's header, when the fault is in one column.
    pub column: Option<String>,
    /// The JSON pointer into the message the contract named.
    pub pointer: Option<String>,
    /// The problem class (`contract-violation`, `nats-unavailable`, …).
    pub problem: String,
    pub message: String,
}

/// What an import did: counts, and each refusal by row and column.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Report {
    pub route: String,
    /// SHA-256 of the file as received; the rows' ids derive from it.
    pub file_sha256: String,
    /// Data rows read.
    pub rows: usize,
    /// Rows stored now.
    pub stored: usize,
    /// Rows JetStream already had (the same file posted before).
    pub duplicates: usize,
    /// Rows refused by a check (contract, transform); nothing of them was stored.
    pub refused: usize,
    /// Rows that passed the checks but were not stored (NATS failed): post the file again.
    pub failed: usize,
    /// Each refusal and failure, at most [`MAX_LISTED`].
    pub refusals: Vec<Refusal>,
}

/// Most refusals listed in one report (all are counted): a file failing everywhere still
/// gets a short answer.
pub const MAX_LISTED: usize = 1000;

impl Report {
    fn note(&mut self, refusal: Refusal) {
        if self.refusals.len() < MAX_LISTED {
            self.refusals.push(refusal);
        }
    }

    /// Counts a publish result of a checked row.
    pub fn published(&mut self, at: &RowRef, result: Result<publish::Stored, Problem>) {
        match result {
            Ok(s) if s.duplicate => self.duplicates += 1,
            Ok(_) => self.stored += 1,
            Err(problem) => {
                self.failed += 1;
                self.note(Refusal {
                    file: at.file.clone(),
                    row: at.row,
                    column: None,
                    pointer: None,
                    problem: problem.kind.slug().to_owned(),
                    message: problem.detail,
                });
            }
        }
    }

    /// The refusals as CSV (`file,row,column,pointer,problem,message`), for the person who
    /// made the spreadsheet.
    #[must_use]
    pub fn to_csv(&self) -> Vec<u8> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let _ = writer.write_record(["file", "row", "column", "pointer", "problem", "message"]);
        for r in &self.refusals {
            let row = r.row.to_string();
            let _ = writer.write_record([
                r.file.as_deref().unwrap_or(""),
                row.as_str(),
                r.column.as_deref().unwrap_or(""),
                r.pointer.as_deref().unwrap_or(""),
                r.problem.as_str(),
                r.message.as_str(),
            ]);
        }
        writer.into_inner().unwrap_or_default()
    }
}

/// A file read and checked: the rows ready to publish, with their places, and the report so
/// far (refusals counted, nothing published yet).
pub struct Checked {
    pub ready: Vec<(RowRef, Outgoing)>,
    pub report: Report,
}

/// What a request sent: the bytes, and what its content type says about them.
pub struct Upload<'a> {
    pub body: &'a [u8],
    /// From the content type; `None` for `application/octet-stream` (sniffed).
    pub format: Option<Format>,
    /// The content type's charset (CSV).
    pub charset: Option<Charset>,
}

/// Reads a file and checks every row as a publish of `participant` to the route's subject.
/// Runs on a blocking thread: reading and validating thousands of rows is CPU work.
///
/// # Errors
/// The file as a whole: over a limit, unreadable, undecodable.
pub fn check(
    route: &ImportRoute,
    catalog: &Catalog,
    limits: &Limits,
    participant: &Participant,
    upload: Upload<'_>,
) -> Result<Checked, ImportError> {
    let file_sha256 = hex::encode(Sha256::digest(upload.body));
    let format = upload.format.unwrap_or_else(|| Format::sniff(upload.body));
    let contract = catalog.contracts.for_subject(&route.subject, None).ok().flatten();
    let mut rows = Rows {
        route,
        catalog,
        limits,
        participant,
        schema: contract.map(|c| &c.schema),
        id_prefix: format!("import-{}-{}", route.name, &file_sha256[..32]),
        columns: Vec::new(),
        ready: Vec::new(),
        report: Report {
            route: route.name.clone(),
            file_sha256,
            rows: 0,
            stored: 0,
            duplicates: 0,
            refused: 0,
            failed: 0,
            refusals: Vec::new(),
        },
    };
    let options = Options {
        charset: upload.charset,
        default_charset: route.charset,
        delimiter: route.delimiter,
        sheet: route.sheet.as_deref(),
    };
    table::read(upload.body, format, options, limits, &mut rows)?;
    Ok(Checked { ready: rows.ready, report: rows.report })
}

/// The sink that makes rows messages.
struct Rows<'a> {
    route: &'a ImportRoute,
    catalog: &'a Catalog,
    limits: &'a Limits,
    participant: &'a Participant,
    /// The contract's schema, for typing cells and naming columns.
    schema: Option<&'a Value>,
    id_prefix: String,
    /// The current file's columns: `(header, member pointer)` by position.
    columns: Vec<(String, Option<String>)>,
    ready: Vec<(RowRef, Outgoing)>,
    report: Report,
}

impl Sink for Rows<'_> {
    fn headers(&mut self, file: Option<&str>, headers: &[String]) -> Result<(), ImportError> {
        let mut seen = HashMap::new();
        for h in headers.iter().filter(|h| !h.is_empty()) {
            if seen.insert(h.as_str(), ()).is_some() {
                return Err(ImportError::new(
                    ImportErrorKind::Unreadable,
                    format!("the header row{} names {h:?} twice", file.map(|f| format!(" of {f}")).unwrap_or_default()),
                ));
            }
        }
        self.columns = match &self.route.mapping {
            Mapping::Headers | Mapping::Transform(_) => headers
                .iter()
                .map(|h| (h.clone(), (!h.is_empty()).then(|| format!("/{}", escape_pointer(h)))))
                .collect(),
            Mapping::Columns(map) => {
                let mut columns: Vec<(String, Option<String>)> = headers.iter().map(|h| (h.clone(), None)).collect();
                for (pointer, header) in map {
                    match headers.iter().position(|h| h == header) {
                        Some(index) => columns[index].1 = Some(pointer.clone()),
                        // A member the contract does not require may have no column (a report
                        // without descriptions); without a contract nothing tells a typo
                        // from an optional column.
                        None if self.schema.is_some_and(|s| !is_required(s, pointer)) => {}
                        None => {
                            return Err(ImportError::new(
                                ImportErrorKind::Unreadable,
                                format!(
                                    "the header row{} has no column {header:?} (route {} maps it to {pointer})",
                                    file.map(|f| format!(" of {f}")).unwrap_or_default(),
                                    self.route.name
                                ),
                            ));
                        }
                    }
                }
                columns
            }
        };
        Ok(())
    }

    fn row(&mut self, at: RowRef, cells: Vec<Cell>) -> Result<(), ImportError> {
        self.report.rows += 1;
        let data = match self.data(cells) {
            Ok(data) => data,
            Err(message) => {
                self.refuse(&at, None, None, ProblemType::TransformFailed, message);
                return Ok(());
            }
        };
        let data = bytes::Bytes::from(data);
        let draft = Draft {
            subject: self.route.subject.clone(),
            data: data.clone(),
            data_well_formed: false,
            attributes: ClientAttributes::default(),
            idempotency_key: Some(format!("{}-{}-{}", self.id_prefix, at.entry, at.row)),
            traceparent: None,
            tracestate: None,
        };
        match publish::prepare(self.catalog, self.limits, self.participant, draft) {
            Ok(outgoing) => self.ready.push((at, outgoing)),
            Err(problem) if !problem.errors.is_empty() => {
                self.report.refused += 1;
                let value: Value = serde_json::from_slice(&data).unwrap_or_default();
                for v in &problem.errors {
                    let column = self.column_of(&value, &v.instance_path, &v.schema_path);
                    self.report.note(Refusal {
                        file: at.file.clone(),
                        row: at.row,
                        column,
                        pointer: Some(v.instance_path.clone()),
                        problem: problem.kind.slug().to_owned(),
                        message: v.message.clone(),
                    });
                }
            }
            Err(problem) => self.refuse(&at, None, None, problem.kind, problem.detail),
        }
        Ok(())
    }
}

impl Rows<'_> {
    fn refuse(
        &mut self,
        at: &RowRef,
        column: Option<String>,
        pointer: Option<String>,
        kind: ProblemType,
        message: String,
    ) {
        self.report.refused += 1;
        self.report.note(Refusal {
            file: at.file.clone(),
            row: at.row,
            column,
            pointer,
            problem: kind.slug().to_owned(),
            message,
        });
    }

    /// The row's message data as JSON bytes.
    fn data(&self, cells: Vec<Cell>) -> Result<Vec<u8>, String> {
        let mut object = Value::Object(Map::new());
        let typed = !matches!(self.route.mapping, Mapping::Transform(_));
        for (cell, (_, pointer)) in cells.into_iter().zip(&self.columns) {
            let Some(pointer) = pointer else { continue };
            if cell == Cell::Empty {
                continue;
            }
            let wanted = if typed { self.schema.and_then(|s| schema_type(s, pointer)) } else { None };
            set_pointer(&mut object, pointer, typed_cell(cell, wanted));
        }
        let bytes = serde_json::to_vec(&object).unwrap_or_default();
        match &self.route.mapping {
            Mapping::Transform(t) => t.apply(&bytes).map_err(|e| format!("the route's transform failed: {e}")),
            _ => Ok(bytes),
        }
    }

    /// The column a violation is about: the member at its pointer (or its nearest mapped
    /// parent); for a missing required member, that member's column.
    fn column_of(&self, data: &Value, instance_path: &str, schema_path: &str) -> Option<String> {
        let header_of =
            |pointer: &str| self.columns.iter().find(|(_, p)| p.as_deref() == Some(pointer)).map(|(h, _)| h.clone());
        if schema_path.ends_with("/required") {
            // The required members the row did not give, that a column would have given.
            let required = self.schema.and_then(|s| schema_at(s, instance_path)).and_then(|s| s.get("required"));
            let missing: Vec<String> = required
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|member| format!("{instance_path}/{}", escape_pointer(member)))
                .filter(|pointer| data.pointer(pointer).is_none())
                .filter_map(|pointer| header_of(&pointer))
                .collect();
            return (!missing.is_empty()).then(|| missing.join(", "));
        }
        let mut pointer = instance_path;
        loop {
            if let Some(header) = header_of(pointer) {
                return Some(header);
            }
            pointer = &pointer[..pointer.rfind('/')?];
        }
    }
}

/// RFC 6901: `~` and `/` in a member name.
fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn unescape_pointer(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Sets `value` at `pointer` in `root`, creating objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let mut current = root;
    let mut tokens = pointer.split('/').skip(1).peekable();
    while let Some(token) = tokens.next() {
        let key = unescape_pointer(token);
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(map) = current else { return };
        if tokens.peek().is_none() {
            map.insert(key, value);
            return;
        }
        current = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// The subschema describing the member at `pointer` (through `properties` only).
fn schema_at<'s>(schema: &'s Value, pointer: &str) -> Option<&'s Value> {
    let mut current = schema;
    for token in pointer.split('/').skip(1) {
        current = current.get("properties")?.get(unescape_pointer(token))?;
    }
    Some(current)
}

/// Whether the contract requires the member at `pointer` (its parent lists it).
fn is_required(schema: &Value, pointer: &str) -> bool {
    let Some((parent, member)) = pointer.rsplit_once('/') else { return false };
    schema_at(schema, parent)
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|m| m.as_str() == Some(unescape_pointer(member).as_str())))
}

/// The JSON type the contract gives the member at `pointer` (the first non-null of a list).
fn schema_type<'s>(schema: &'s Value, pointer: &str) -> Option<&'s str> {
    match schema_at(schema, pointer)?.get("type")? {
        Value::String(t) => Some(t.as_str()),
        Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

/// A cell as JSON, typed as the contract wants where the cell says so unambiguously: CSV
/// text `"12"` for an integer, `"9,5"` (a Russian decimal comma) for a number, a number for
/// a string (an item code Excel took for a number). Anything else is left as it is, for the
/// contract to refuse with its own message.
fn typed_cell(cell: Cell, wanted: Option<&str>) -> Value {
    match (cell, wanted) {
        (Cell::Text(t), Some("integer")) => t.trim().parse::<i64>().map_or(Value::String(t), Value::from),
        (Cell::Text(t), Some("number")) => {
            let trimmed = t.trim();
            trimmed
                .parse::<f64>()
                .or_else(|_| trimmed.replacen(',', ".", 1).parse::<f64>())
                .ok()
                .filter(|f| f.is_finite())
                .map_or(Value::String(t.clone()), |f| {
                    if f.fract() == 0.0 && f.abs() < 9.0e15 { Value::from(f as i64) } else { Value::from(f) }
                })
        }
        (Cell::Text(t), Some("boolean")) => match t.trim().to_lowercase().as_str() {
            "true" | "1" | "yes" | "да" => Value::Bool(true),
            "false" | "0" | "no" | "нет" => Value::Bool(false),
            _ => Value::String(t),
        },
        (Cell::Int(i), Some("string")) => Value::String(i.to_string()),
        (Cell::Float(f), Some("string")) => Value::String(f.to_string()),
        (Cell::Bool(b), Some("string")) => Value::String(b.to_string()),
        (Cell::Float(f), Some("integer")) if f.fract() == 0.0 => Value::from(f as i64),
        (Cell::Text(t), _) => Value::String(t),
        (Cell::Int(i), _) => Value::from(i),
        (Cell::Float(f), _) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        (Cell::Bool(b), _) => Value::Bool(b),
        (Cell::Empty, _) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_are_typed_as_the_contract_types_them() {
        let text = |s: &str| Cell::Text(s.to_owned());
        assert_eq!(typed_cell(text(" 12 "), Some("integer")), json!(12));
        assert_eq!(typed_cell(text("12.5"), Some("integer")), json!("12.5"));
        assert_eq!(typed_cell(text("9,5"), Some("number")), json!(9.5));
        assert_eq!(typed_cell(text("10"), Some("number")), json!(10));
        assert_eq!(typed_cell(text("да"), Some("boolean")), json!(true));
        assert_eq!(typed_cell(Cell::Int(12345), Some("string")), json!("12345"));
        assert_eq!(typed_cell(text("00123"), Some("string")), json!("00123"));
        assert_eq!(typed_cell(text("00123"), None), json!("00123"));
        assert_eq!(typed_cell(Cell::Float(2.0), Some("integer")), json!(2));
    }

    #[test]
    fn pointers_build_nested_members() {
        let mut v = json!({});
        set_pointer(&mut v, "/customer/name", json!("Иванов"));
        set_pointer(&mut v, "/customer/id", json!("C-1"));
        set_pointer(&mut v, "/a~1b", json!(1));
        assert_eq!(v, json!({"customer": {"name": "Иванов", "id": "C-1"}, "a/b": 1}));
        let schema = json!({"properties": {"customer": {"properties": {"age": {"type": ["null", "integer"]}}}}});
        assert_eq!(schema_type(&schema, "/customer/age"), Some("integer"));
        assert_eq!(schema_type(&schema, "/nope"), None);
    }
}
