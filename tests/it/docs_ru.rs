//! The Russian documents keep the English originals' structure: `README.ru.md` against `README.md`,
//! `docs/operations.ru.md` against `docs/operations.md`.
//!
//! Heading texts differ by language, so the structure is compared: the sequence of headings (by
//! level), code blocks (by language and the commands they show) and tables (by row count), in
//! document order. A section added in English, a command changed, or a configuration key added to a
//! table fails here until the Russian follows; the failure prints both outlines side by side. Links
//! in the Russian documents must resolve inside the repository (files and `#anchors`) — as must
//! every relative link of every Markdown file of the repository, and no doc's prose may link
//! outside it (loopback and example hosts aside).
//!
//! When it fails after an English change: the rows marked `!` say what to do. Copy a changed code
//! block into the Russian verbatim (comments in it may be translated: they are not compared),
//! translate a new section or table row, and fix the `#anchors` the link check names (Russian
//! headings have Cyrillic anchors, e.g. `#где-моё-сообщение`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The English original and its Russian counterpart, relative to the repository root.
const PAIRS: &[(&str, &str)] = &[("README.md", "README.ru.md"), ("docs/operations.md", "docs/operations.ru.md")];

#[test]
fn readme_ru_has_the_structure_of_readme() {
    assert_same_structure("README.md", "README.ru.md");
}

#[test]
fn operations_ru_has_the_structure_of_operations() {
    assert_same_structure("docs/operations.md", "docs/operations.ru.md");
}

#[test]
fn links_in_russian_docs_resolve_inside_the_repository() {
    let mut broken = Vec::new();
    for (_, ru) in PAIRS {
        broken.extend(broken_links(ru));
    }
    assert!(broken.is_empty(), "broken links in the Russian documents:\n  {}", broken.join("\n  "));
}

/// Every relative link and `#anchor` of every Markdown file of the repository resolves: the file
/// exists inside the repository, and the anchor is one of its headings'.
#[test]
fn links_in_every_doc_resolve_inside_the_repository() {
    let files = markdown_files();
    assert!(files.iter().any(|f| f == "README.md") && files.iter().any(|f| f == "docs/operations.ru.md"), "{files:?}");
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

/// No doc sends the reader off the repository: no http(s) address in the prose of any Markdown
/// file (English or Russian; a bare address is a link too, renderers make it one) but loopback and
/// the reserved example names. Standards are named in words. Code blocks and code spans are
/// not links: a contract's `$id` or a configured endpoint there stays.
#[test]
fn no_doc_links_outside_the_repository() {
    let outside: Vec<String> = markdown_files().iter().flat_map(|f| outside_links(f, &read(f))).collect();
    assert!(outside.is_empty(), "links outside the repository (say it in words):\n  {}", outside.join("\n  "));
}

#[test]
fn outside_links_are_found_in_prose_not_in_code() {
    let doc = "See [NATS](https://docs.nats.io/x) or <https://a.org>, http://b.org/y.\n\
               `curl https://c.org` and http://127.0.0.1:8080/v1 and https://bus.wine.example/v1\n\
               ```sh\ncurl https://d.org\n```\n";
    let mut found = outside_links("x.md", doc);
    found.sort();
    assert_eq!(found, ["x.md:1: a.org", "x.md:1: b.org", "x.md:1: docs.nats.io"]);
}

#[test]
fn the_outline_reader_sees_what_a_markdown_renderer_sees() {
    let doc = "# Title\n\nText # not a heading\n\n## Part `a`\n\n  ```sh\n  # a comment, not a heading\n  \
               scripts/dev   # starts it\n  ```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n````console\n\
               $ curl -i http://x/ \\\n    -H 'A: b'\n```\nstill inside\n$ echo done   # a comment\n````\n\n#### Deep\n";
    let items = outline(doc);
    let shapes: Vec<String> = items.iter().map(|i| i.shape()).collect();
    assert_eq!(
        shapes,
        [
            "#",
            "##",
            "```sh scripts/dev",
            "table 2 rows",
            "```console $ curl -i http://x/ \\ -H 'A: b' ; $ echo done",
            "####",
        ],
        "{items:#?}"
    );
    let (en, ru) = (outline("# A\n```sh\nx\n```\n## B\n"), outline("# Б\n## В\n"));
    let gaps: Vec<(bool, bool)> = align(&en, &ru).iter().map(|(a, b)| (a.is_some(), b.is_some())).collect();
    assert_eq!(gaps, [(true, true), (true, false), (true, true)], "a missing code block is a gap, not a shift");
    assert_eq!(
        slug("Binary mode: body = data, attributes in `ce-*` headers"),
        "binary-mode-body--data-attributes-in-ce--headers"
    );
    assert_eq!(slug("Где моё сообщение?"), "где-моё-сообщение");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One structural element of a Markdown document.
#[derive(Debug)]
enum Item {
    /// An ATX heading: its level and text (the text is shown, never compared).
    Heading { level: usize, text: String },
    /// A fenced code block: its info string and its commands (see [`commands`]).
    Code { info: String, commands: String },
    /// A table: its body rows (the header and delimiter rows not counted).
    Table { rows: usize },
}

impl Item {
    /// What must be equal in both languages.
    fn shape(&self) -> String {
        match self {
            Item::Heading { level, .. } => "#".repeat(*level),
            Item::Code { info, commands } => format!("```{info} {commands}"),
            Item::Table { rows } => format!("table {rows} rows"),
        }
    }

    /// A line of the side-by-side outline.
    fn show(&self) -> String {
        match self {
            Item::Heading { level, text } => format!("{} {text}", "#".repeat(*level)),
            Item::Code { .. } | Item::Table { .. } => format!("    {}", self.shape()),
        }
    }
}

/// Headings, fenced code blocks and tables in document order. Code fences may be indented (inside
/// list items) and are closed by a fence of the same character at least as long, as CommonMark has
/// it; nothing inside a code block is read as a heading or a table.
fn outline(doc: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some((fence, info)) = opening_fence(trimmed) {
            let mut body = Vec::new();
            for inner in lines.by_ref() {
                let t = inner.trim();
                if t.starts_with(&fence) && t.chars().all(|c| fence.starts_with(c)) {
                    break;
                }
                body.push(inner.trim_start().to_owned());
            }
            items.push(Item::Code { info, commands: commands(&body) });
        } else if let Some(level) = heading_level(line) {
            let text = line[level..].trim().trim_end_matches('#').trim().to_owned();
            items.push(Item::Heading { level, text });
        } else if trimmed.starts_with('|') {
            let mut rows: usize = 0;
            while lines.peek().is_some_and(|l| l.trim_start().starts_with('|')) {
                lines.next();
                rows += 1;
            }
            // The delimiter row (`|---|---|`) follows the header row.
            items.push(Item::Table { rows: rows.saturating_sub(1) });
        }
    }
    items
}

/// `Some((fence, info))` when `line` opens a fenced code block: three or more backticks or tildes.
fn opening_fence(line: &str) -> Option<(String, String)> {
    let c = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let fence: String = line.chars().take_while(|x| *x == c).collect();
    (fence.len() >= 3).then(|| (fence.clone(), line[fence.len()..].trim().to_owned()))
}

/// The level of an ATX heading (`#` to `######` then a space), not indented.
fn heading_level(line: &str) -> Option<usize> {
    let level = line.chars().take_while(|c| *c == '#').count();
    ((1..=6).contains(&level) && line[level..].starts_with(' ')).then_some(level)
}

/// The commands a code block shows: each `$ ` line with its continuation lines (after a trailing
/// `\` or `|`), or, in a block without a prompt, its first line that is not only a comment.
/// Comments (` # …` to the end of a line, `rem …` lines) are dropped: they may be translated.
fn commands(body: &[String]) -> String {
    let code: Vec<String> = body.iter().map(|l| strip_comment(l)).collect();
    let mut shown: Vec<String> = Vec::new();
    let mut continued = false;
    for line in &code {
        if continued {
            if let Some(last) = shown.last_mut() {
                last.push(' ');
                last.push_str(line);
            }
        } else if line.starts_with("$ ") || line == "$" {
            shown.push(line.clone());
        } else {
            continue;
        }
        continued = line.ends_with('\\') || line.ends_with('|');
    }
    if shown.is_empty() {
        shown.extend(code.into_iter().find(|l| !l.is_empty()));
    }
    shown.join(" ; ")
}

/// A line without its comment: a whole line starting with `#` or `rem `, or ` #…` after code.
fn strip_comment(line: &str) -> String {
    let line = line.trim();
    if line.starts_with('#') || line.starts_with("rem ") {
        return String::new();
    }
    let code = match line.find(" #") {
        Some(at) => &line[..at],
        None => line,
    };
    code.trim_end().to_owned()
}

fn assert_same_structure(english: &str, russian: &str) {
    let (en, ru) = (outline(&read(english)), outline(&read(russian)));
    let same = en.len() == ru.len() && en.iter().zip(&ru).all(|(a, b)| a.shape() == b.shape());
    if same {
        return;
    }
    let count = |items: &[Item]| {
        let mut per_level = [0usize; 6];
        let mut code = 0;
        for item in items {
            match item {
                Item::Heading { level, .. } => per_level[level - 1] += 1,
                Item::Code { .. } => code += 1,
                Item::Table { .. } => {}
            }
        }
        format!("headings per level {per_level:?}, {code} code blocks")
    };
    let mut report = format!(
        "{russian} does not follow the structure of {english}.\n  {english}: {}\n  {russian}: {}\n\
         Side by side, aligned where the shapes agree (`!` marks what one side has and the other lacks; \
         levels, commands and table sizes must match, heading texts need not):\n",
        count(&en),
        count(&ru)
    );
    let width = 70;
    let cell = |i: Option<&Item>| {
        let s = i.map(Item::show).unwrap_or_default();
        if s.chars().count() > width { s.chars().take(width - 1).chain(['…']).collect() } else { s }
    };
    for (a, b) in align(&en, &ru) {
        let mark = if a.is_some() && b.is_some() { ' ' } else { '!' };
        let _ = writeln!(report, "{mark} {:<width$} | {}", cell(a), cell(b));
    }
    panic!("{report}");
}

/// Both outlines aligned on their longest common subsequence of shapes, so a section missing on one
/// side shows as a gap there instead of shifting every row after it.
fn align<'a>(en: &'a [Item], ru: &'a [Item]) -> Vec<(Option<&'a Item>, Option<&'a Item>)> {
    let (n, m) = (en.len(), ru.len());
    // lcs[i][j]: the longest common subsequence of en[i..] and ru[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if en[i].shape() == ru[j].shape() { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut rows) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && en[i].shape() == ru[j].shape() {
            rows.push((Some(&en[i]), Some(&ru[j])));
            (i, j) = (i + 1, j + 1);
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            rows.push((Some(&en[i]), None));
            i += 1;
        } else {
            rows.push((None, Some(&ru[j])));
            j += 1;
        }
    }
    rows
}

/// The GitHub anchor of a heading: lower case, spaces to `-`, punctuation other than `-` and `_`
/// dropped (letters of any script kept).
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a document's headings, with GitHub's `-1`, `-2` suffixes for repeated ones.
fn anchors(doc: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for item in outline(doc) {
        if let Item::Heading { text, .. } = item {
            let base = slug(&text);
            let repeats = seen.entry(base.clone()).or_default();
            anchors.push(if *repeats == 0 { base } else { format!("{base}-{repeats}") });
            *repeats += 1;
        }
    }
    anchors
}

/// Inline links `[text](target)` outside code blocks and code spans that do not resolve: a target
/// outside the repository, a missing file, or an `#anchor` no heading of the target has.
fn broken_links(rel: &str) -> Vec<String> {
    let doc = read(rel);
    let dir = Path::new(rel).parent().unwrap_or(Path::new(""));
    let mut broken = Vec::new();
    let mut in_code = false;
    for (n, line) in doc.lines().enumerate() {
        if opening_fence(line.trim_start()).is_some() {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for target in prose.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let at = format!("{rel}:{}: ({target})", n + 1);
            if target.contains("://") || target.starts_with("mailto:") {
                broken.push(format!("{at}: links outside the repository"));
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() { PathBuf::from(rel) } else { dir.join(path) };
            let full = repo().join(&file);
            let inside = full.canonicalize().is_ok_and(|f| repo().canonicalize().is_ok_and(|r| f.starts_with(r)));
            if !full.exists() {
                broken.push(format!("{at}: no such file {}", file.display()));
            } else if !inside {
                broken.push(format!("{at}: {} is outside the repository", file.display()));
            } else if !anchor.is_empty() && full.is_file() {
                let text = std::fs::read_to_string(&full).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    broken.push(format!("{at}: {} has no heading #{anchor}", file.display()));
                }
            }
        }
    }
    broken
}

/// The Markdown files of the repository, relative to its root: not build output or tools
/// (`target/`, `node_modules/`, hidden folders).
fn markdown_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(&path, root, out);
                }
            } else if name.ends_with(".md") {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo(), &repo(), &mut files);
    files.sort();
    files
}

/// Loopback, and the names reserved for examples (RFC 2606 / RFC 6761).
fn allowed_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "example.com" | "example.org" | "example.net")
        || host.ends_with(".example")
        || host.ends_with(".localhost")
}

/// The http(s) addresses in the prose of `doc` (outside code blocks and code spans) whose host
/// is not allowed: `file:line: host`.
fn outside_links(rel: &str, doc: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fence: Option<String> = None;
    for (n, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        match &fence {
            Some(f) => {
                let t = trimmed.trim_end();
                if t.starts_with(f.as_str()) && t.chars().all(|c| f.starts_with(c)) {
                    fence = None;
                }
                continue;
            }
            None => {
                if let Some((f, _)) = opening_fence(trimmed) {
                    fence = Some(f);
                    continue;
                }
            }
        }
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for scheme in ["http://", "https://"] {
            for rest in prose.split(scheme).skip(1) {
                let authority = rest.split(['/', ')', '>', ']', ' ', '"', '\'', ',', '?', '#']).next().unwrap_or("");
                let host = authority.rsplit('@').next().unwrap_or("");
                let host = if host.starts_with('[') {
                    host.split(']').next().map(|h| format!("{h}]")).unwrap_or_default()
                } else {
                    host.split(':').next().unwrap_or("").to_owned()
                };
                let host = host.trim_end_matches('.');
                if !allowed_host(host) {
                    found.push(format!("{rel}:{}: {host}", n + 1));
                }
            }
        }
    }
    found
}
