//! What the commands print: aligned tables for people, the API's JSON for scripts.
//! Columns are padded by characters (order lines and NAV's answers are Cyrillic); numeric
//! columns are right-aligned.

use std::io::Write;

/// A table with a header row.
pub(crate) struct Table {
    header: Vec<&'static str>,
    /// Columns aligned right (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named by `header`; a name ending in `>` is right-aligned (the `>` not shown).
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            right: header.iter().map(|h| h.ends_with('>')).collect(),
            header: header.iter().map(|h| h.trim_end_matches('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, two spaces between columns, no trailing spaces.
    pub(crate) fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| lines.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for cells in lines {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                let pad = width - cell.chars().count();
                if c > 0 {
                    line.push_str("  ");
                }
                if self.right[c] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints to stdout. A closed pipe (`| head`) is not an error worth a panic: `false` then,
/// so a command that prints on and on (`tail`) can stop.
pub(crate) fn print(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_ok()
}

/// A cell for an optional value: `-` when absent.
pub(crate) fn cell<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Cuts a one-line excerpt to `max` characters (line breaks shown as spaces).
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_by_characters_and_numbers_to_the_right() {
        let mut t = Table::new(&["NAME", "PENDING>", "NOTE"]);
        t.row(vec!["nav-orders".into(), "12".into(), "Номенклатура".into()]);
        t.row(vec!["x".into(), "3".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "NAME        PENDING  NOTE\nnav-orders       12  Номенклатура\nx                 3  -\n"
        );
    }

    #[test]
    fn excerpts_are_one_line_and_bounded() {
        assert_eq!(excerpt("a\nb", 10), "a b");
        assert_eq!(excerpt("Номенклатура", 5), "Номе…");
    }
}
