//! Transforms: jq programs (run by jaq) that reshape JSON so the bus adapts to a system
//! rather than the system to the bus — per subscription (before delivery), per responder
//! (request and reply) and per inbound route. Compiled once at load; `magistral check`
//! compiles every one. A failing program is a classified failure, never a crash.

use std::fmt;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq program.
#[derive(Clone)]
pub struct Transform {
    /// The program text, for errors and equality (config reload compares transforms).
    source: Arc<str>,
    filter: Arc<Filter>,
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transform({:?})", self.source)
    }
}

impl PartialEq for Transform {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// jaq's error values print the program text around the fault; keep a readable head.
fn brief(mut text: String) -> String {
    if text.len() > 400 {
        let mut cut = 400;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" …");
    }
    text
}

/// Why a transform did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("the input is not JSON: {0}")]
    Input(String),
    #[error("the jq program failed: {0}")]
    Failed(String),
    #[error("the jq program produced no value")]
    Empty,
}

/// Why a program does not compile. Each holds the whole message (jaq's description cut
/// to a readable head with [`brief`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Compile(String),
}

impl Transform {
    /// Parses and compiles a program.
    ///
    /// # Errors
    /// Parse or compile errors, described.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let program = File { code: source, path: () };
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, program)
            .map_err(|errs| CompileError::Syntax(brief(format!("jq syntax error: {errs:?}"))))?;
        let filter = Compiler::default().with_funs(funs).compile(modules).map_err(|errs| {
            CompileError::Compile(brief(format!("jq compile error (undefined name or arity?): {errs:?}")))
        })?;
        Ok(Self { source: Arc::from(source), filter: Arc::new(filter) })
    }

    /// Runs the program on JSON bytes; the first output, as JSON bytes.
    ///
    /// # Errors
    /// The input is not JSON, the program raised an error, or it produced nothing.
    pub fn apply(&self, input: &[u8]) -> Result<Vec<u8>, TransformError> {
        let input = jaq_json::read::parse_single(input).map_err(|e| TransformError::Input(e.to_string()))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(unwrap_valr);
        match out.next() {
            Some(Ok(value)) => Ok(value.to_string().into_bytes()),
            Some(Err(e)) => Err(TransformError::Failed(e.to_string())),
            None => Err(TransformError::Empty),
        }
    }

    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The transform of a config entry: inline text or a file, never both.
///
/// # Errors
/// `(field, message)`: both given, unreadable file, or a program that does not compile.
pub(crate) fn load(
    config: &crate::config::Config,
    field: &str,
    inline: Option<&String>,
    file: Option<&std::path::PathBuf>,
) -> Result<Option<Transform>, (String, String)> {
    let (source, named) = match (inline, file) {
        (Some(_), Some(_)) => return Err((field.to_owned(), format!("give {field} or {field}_file, not both"))),
        (Some(text), None) => (text.clone(), field.to_owned()),
        (None, Some(path)) => {
            let path = config.resolve(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| (format!("{field}_file"), format!("{}: {e}", path.display())))?;
            (text, format!("{field}_file ({})", path.display()))
        }
        (None, None) => return Ok(None),
    };
    Transform::compile(&source).map(Some).map_err(|e| (named, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshapes_json() {
        let t = Transform::compile(
            r#"{no: .order_id, lines: [.lines[] | {sku, q: .qty}], total: (.lines | map(.qty * .price) | add)}"#,
        )
        .unwrap();
        let out = t
            .apply(br#"{"order_id":"4711","lines":[{"sku":"A","qty":2,"price":10},{"sku":"B","qty":1,"price":5}]}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"no":"4711","lines":[{"sku":"A","q":2},{"sku":"B","q":1}],"total":25}));
    }

    #[test]
    fn strings_survive_with_escapes() {
        let t = Transform::compile(r#"{name: "\(.a) «вино»", x: (.n | tostring)}"#).unwrap();
        let out = t.apply(br#"{"a":"Ch\u00e2teau \"X\"","n":3}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], "Château \"X\" «вино»");
        assert_eq!(v["x"], "3");
    }

    #[test]
    fn errors_are_classified_not_panics() {
        assert!(Transform::compile("{a: ").is_err());
        assert!(Transform::compile("nosuchfunction(1)").is_err());
        let t = Transform::compile(".a + 1").unwrap();
        assert!(matches!(t.apply(br#"{"a":"x"}"#), Err(TransformError::Failed(_))));
        assert!(matches!(t.apply(b"{"), Err(TransformError::Input(_))));
        let empty = Transform::compile("empty").unwrap();
        assert_eq!(empty.apply(b"{}"), Err(TransformError::Empty));
        let err = Transform::compile(r#"error("no customer")"#).unwrap();
        assert!(matches!(err.apply(b"{}"), Err(TransformError::Failed(m)) if m.contains("no customer")));
    }
}
