//! Streams: `streams/*.json` in NATS's own stream-config JSON (what `nats stream add
//! --config` takes), and reconciling them with the server: create what is missing, update
//! what changed, never delete.

use std::fmt;
use std::path::PathBuf;

use async_nats::jetstream::{self, stream};
use serde_json::Value;

use crate::subject;

/// A stream as declared in a file.
#[derive(Debug, Clone)]
pub struct StreamDef {
    pub file: PathBuf,
    /// The file's JSON as written; only the keys it sets are compared with the server.
    pub declared: serde_json::Map<String, Value>,
    pub config: stream::Config,
    /// The stream of a directory's KV bucket: created as a bucket, never as a plain stream.
    pub bucket: bool,
}

impl StreamDef {
    /// Parses one stream file's content.
    ///
    /// # Errors
    /// Not JSON, not an object, not a NATS stream config, or no name/subjects.
    pub fn parse(file: PathBuf, text: &str) -> Result<Self, (String, String)> {
        let value: Value = serde_json::from_str(text).map_err(|e| ("(file)".to_owned(), format!("not JSON: {e}")))?;
        let Value::Object(declared) = value else {
            return Err(("(file)".into(), "a stream file holds one JSON object".into()));
        };
        // Fields the file leaves out take the client's defaults (as `nats stream add` does).
        let mut full = serde_json::to_value(stream::Config::default()).unwrap_or_default();
        if let Value::Object(full) = &mut full {
            full.extend(declared.clone());
        }
        let config: stream::Config = serde_path_to_error::deserialize(full).map_err(|e| {
            let field = e.path().to_string();
            (if field == "." { "(file)".to_owned() } else { field }, format!("not a NATS stream config: {}", e.inner()))
        })?;
        if config.name.is_empty() {
            return Err(("name".into(), "a stream needs a name".into()));
        }
        if config.subjects.is_empty() {
            return Err(("subjects".into(), "a stream needs at least one subject".into()));
        }
        for (i, s) in config.subjects.iter().enumerate() {
            subject::validate_pattern(s).map_err(|m| (format!("subjects[{i}]"), m.to_string()))?;
        }
        Ok(Self { file, declared, config, bucket: false })
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.config.name
    }

    #[must_use]
    pub fn binds(&self, subject: &str) -> bool {
        self.config.subjects.iter().any(|p| subject::matches(p, subject))
    }
}

/// What reconciling one stream did, or would do with `--dry-run`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamChange {
    Create { name: String },
    Update { name: String, fields: Vec<FieldChange> },
    Unchanged { name: String },
}

/// One field that differs between the file and the server.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub field: String,
    pub server: Value,
    pub declared: Value,
}

impl fmt::Display for StreamChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create { name } => write!(f, "+ stream {name}: create"),
            Self::Unchanged { name } => write!(f, "= stream {name}: unchanged"),
            Self::Update { name, fields } => {
                write!(f, "~ stream {name}: update")?;
                for c in fields {
                    write!(f, "\n    {}: {} -> {}", c.field, c.server, c.declared)?;
                }
                Ok(())
            }
        }
    }
}

/// Why a stream could not be reconciled.
#[derive(Debug, thiserror::Error)]
#[error("stream {name} ({file}): {reason}")]
pub struct ReconcileError {
    pub name: String,
    pub file: String,
    pub reason: String,
}

/// Compares one declared stream with the server and, unless `dry_run`, creates or updates it.
///
/// # Errors
/// The server could not be asked, or refused the change (e.g. a storage type change).
pub async fn reconcile(
    js: &jetstream::Context,
    def: &StreamDef,
    dry_run: bool,
) -> Result<StreamChange, ReconcileError> {
    let fail =
        |reason: String| ReconcileError { name: def.name().to_owned(), file: def.file.display().to_string(), reason };
    let name = def.name().to_owned();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| fail(e.to_string()))?;
            let fields = diff(def, &info.config);
            if fields.is_empty() {
                return Ok(StreamChange::Unchanged { name });
            }
            if !dry_run {
                js.update_stream(&def.config).await.map_err(|e| fail(format!("update refused: {e}")))?;
            }
            Ok(StreamChange::Update { name, fields })
        }
        Err(err) if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            if !dry_run {
                js.create_stream(def.config.clone()).await.map_err(|e| fail(format!("create refused: {e}")))?;
            }
            Ok(StreamChange::Create { name })
        }
        Err(err) => Err(fail(err.to_string())),
    }
}

/// The fields the file sets whose value differs on the server. Both sides go through the
/// client's `Config` type so defaults and units (nanoseconds) compare alike.
fn diff(def: &StreamDef, server: &stream::Config) -> Vec<FieldChange> {
    let declared = serde_json::to_value(&def.config).unwrap_or(Value::Null);
    let server = serde_json::to_value(server).unwrap_or(Value::Null);
    let mut keys: Vec<&String> = def.declared.keys().collect();
    keys.sort();
    keys.into_iter()
        .filter_map(|key| {
            let d = declared.get(key).cloned().unwrap_or(Value::Null);
            let s = server.get(key).cloned().unwrap_or(Value::Null);
            (d != s && !(is_empty(&d) && is_empty(&s))).then(|| FieldChange {
                field: key.clone(),
                server: s,
                declared: d,
            })
        })
        .collect()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}
