//! The line a configuration field is on, for problems: `participants.nav.tokens[0]` found in
//! the TOML text by its keys, tables, arrays of tables and array elements.

use toml_edit::{Document, Item, Value};

/// One step of a field path: a key or an index.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[0].c` as steps; `None` for what is not a path (`(file)`, `(top level)`).
fn steps(field: &str) -> Option<Vec<Step<'_>>> {
    if field.starts_with('(') {
        return None;
    }
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            out.push(Step::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

/// Where the walk is: an item, or a table of an array of tables (held apart from items).
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a toml_edit::Table),
}

/// The 1-based line of the deepest part of `field` found in `text`.
pub(super) fn line_of(text: &str, field: &str) -> Option<usize> {
    let doc = Document::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut found = None;
    for step in steps(field)? {
        let (span, next) = match (step, node) {
            (Step::Key(key), Node::Item(item)) => {
                let Some((k, v)) = item.as_table_like().and_then(|t| t.get_key_value(key)) else { break };
                (k.span().or_else(|| v.span()), Node::Item(v))
            }
            (Step::Key(key), Node::Table(table)) => {
                let Some((k, v)) = table.get_key_value(key) else { break };
                (k.span().or_else(|| v.span()), Node::Item(v))
            }
            (Step::Index(i), Node::Item(Item::ArrayOfTables(tables))) => {
                let Some(table) = tables.get(i) else { break };
                (table.span(), Node::Table(table))
            }
            (Step::Index(i), Node::Item(Item::Value(Value::Array(array)))) => {
                // An element is a value, not an item: it is as deep as the walk goes.
                found = array.get(i).and_then(Value::span).or(found);
                break;
            }
            _ => break,
        };
        found = span.or(found);
        node = next;
    }
    found.map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "listen = \"x\"\n\n[[contracts]]\nname = \"a\"\n\n[[contracts]]\nname = \"b\"\nfile = \"b.json\"\n\n[participants.nav]\ntokens = [\n  { env = \"A\" },\n  \"plain\",\n]\n";

    #[test]
    fn finds_keys_tables_and_elements() {
        assert_eq!(line_of(TEXT, "listen"), Some(1));
        assert_eq!(line_of(TEXT, "contracts[1].file"), Some(8));
        assert_eq!(line_of(TEXT, "contracts[1]"), Some(6));
        assert_eq!(line_of(TEXT, "participants.nav.tokens"), Some(11));
        assert_eq!(line_of(TEXT, "participants.nav.tokens[1]"), Some(13));
        assert_eq!(line_of(TEXT, "(file)"), None);
        // What is not there: the deepest part that is.
        assert_eq!(line_of(TEXT, "participants.nav.publish"), Some(10));
    }
}
