//! Reading spreadsheets as rows, bounded while reading: CSV (`csv`), XLSX (`calamine`, cell
//! by cell) and ZIP archives of them (`zip`). Every limit is checked as the data comes —
//! rows, columns, cell length, archive entries, and the bytes an archive inflates to, which
//! are counted as they are inflated (an archive's own size claims are not trusted) — so a
//! zip bomb or a million-row file is refused after reading only what the limits allow.

use std::io::{Cursor, Read};

use calamine::{DataRef, Reader, Xlsx};

use super::{ImportError, ImportErrorKind};
use crate::charset::{self, Charset};
use crate::config::Limits;

/// One cell as read. CSV cells are text; XLSX cells keep the type the sheet gave them.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Where a row is, as the person who made the file sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    /// The file inside a ZIP; `None` for a file sent as is.
    pub file: Option<String>,
    /// The entry's place in the ZIP (0 for a file sent as is); part of the row's id.
    pub entry: usize,
    /// 1-based, as spreadsheets number rows (the header is row 1).
    pub row: u64,
}

/// What a file is, from its content type or its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Xlsx,
    Zip,
}

impl Format {
    /// By media type; `application/octet-stream` (or none) is sniffed from the bytes.
    #[must_use]
    pub fn of_media_type(media: Option<&str>) -> Option<Option<Self>> {
        match media {
            Some("text/csv" | "application/csv" | "text/plain") => Some(Some(Self::Csv)),
            Some("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet") => Some(Some(Self::Xlsx)),
            Some("application/zip" | "application/x-zip-compressed") => Some(Some(Self::Zip)),
            None | Some("application/octet-stream") => Some(None),
            Some(_) => None,
        }
    }

    /// A ZIP holding a workbook part is an XLSX; any other ZIP is an archive; the rest CSV.
    #[must_use]
    pub fn sniff(bytes: &[u8]) -> Self {
        if !bytes.starts_with(b"PK\x03\x04") {
            return Self::Csv;
        }
        match zip::ZipArchive::new(Cursor::new(bytes)) {
            Ok(archive) if archive.index_for_name("xl/workbook.xml").is_some() => Self::Xlsx,
            _ => Self::Zip,
        }
    }

    fn of_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") || lower.ends_with(".txt") {
            Some(Self::Csv)
        } else if lower.ends_with(".xlsx") {
            Some(Self::Xlsx)
        } else {
            None
        }
    }
}

/// How to read: the route's choices and the request's charset.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The content type's charset; else a BOM; else `default_charset`; else UTF-8.
    pub charset: Option<Charset>,
    pub default_charset: Option<Charset>,
    pub delimiter: Option<u8>,
    pub sheet: Option<&'a str>,
}

/// Receives the rows: headers once per file, then each data row.
pub trait Sink {
    /// # Errors
    /// Whatever the sink refuses the file for (it ends the reading).
    fn headers(&mut self, file: Option<&str>, headers: &[String]) -> Result<(), ImportError>;
    /// # Errors
    /// As for `headers`.
    fn row(&mut self, at: RowRef, cells: Vec<Cell>) -> Result<(), ImportError>;
}

/// Counts what the limits bound, across all files of one import.
struct Budget<'l> {
    limits: &'l Limits,
    rows: usize,
}

impl Budget<'_> {
    fn row(&mut self) -> Result<(), ImportError> {
        self.rows += 1;
        if self.rows > self.limits.max_import_rows {
            return Err(ImportError::new(
                ImportErrorKind::TooManyRows,
                format!("more than {} data rows (limits.max_import_rows)", self.limits.max_import_rows),
            ));
        }
        Ok(())
    }

    fn columns(&self, n: usize, at: &RowRef) -> Result<(), ImportError> {
        within(n, self.limits.max_import_columns, || {
            format!(
                "row {}{} has more than {} columns (limits.max_import_columns)",
                at.row,
                in_file(at.file.as_deref()),
                self.limits.max_import_columns
            )
        })
    }

    fn cell(&self, len: usize, at: &RowRef) -> Result<(), ImportError> {
        within(len, self.limits.max_import_cell_bytes, || {
            format!(
                "a cell of row {}{} is longer than {} bytes (limits.max_import_cell_bytes)",
                at.row,
                in_file(at.file.as_deref()),
                self.limits.max_import_cell_bytes
            )
        })
    }
}

/// `too_large` with `detail` when `n` exceeds `limit`.
fn within(n: usize, limit: usize, detail: impl FnOnce() -> String) -> Result<(), ImportError> {
    if n > limit { Err(too_large(detail())) } else { Ok(()) }
}

fn in_file(file: Option<&str>) -> String {
    file.map(|f| format!(" of {f}")).unwrap_or_default()
}

fn too_large(detail: String) -> ImportError {
    ImportError::new(ImportErrorKind::TooLarge, detail)
}

fn unreadable(detail: impl Into<String>) -> ImportError {
    ImportError::new(ImportErrorKind::Unreadable, detail)
}

/// Reads `body` as `format` and hands every row to `sink`.
///
/// # Errors
/// A limit exceeded, a file that cannot be read, or the sink's refusal.
pub fn read(
    body: &[u8],
    format: Format,
    options: Options<'_>,
    limits: &Limits,
    sink: &mut dyn Sink,
) -> Result<(), ImportError> {
    let mut budget = Budget { limits, rows: 0 };
    match format {
        Format::Csv => read_csv(body, None, 0, options, &mut budget, sink),
        Format::Xlsx => read_xlsx(body, None, 0, options, &mut budget, sink),
        Format::Zip => read_zip(body, options, &mut budget, sink),
    }
}

/// The entries of an archive, inflated within the limits: at most `max_import_zip_entries`,
/// and the bytes inflated, counted as they come, at most `max_import_expanded_bytes` in all
/// and at most `max_import_expansion_ratio` times the archive's size.
fn inflate(
    archive_bytes: &[u8],
    limits: &Limits,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, ImportError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(archive_bytes))
        .map_err(|e| unreadable(format!("not a readable ZIP archive: {e}")))?;
    if archive.len() > limits.max_import_zip_entries {
        return Err(too_large(format!(
            "the archive has {} entries; at most {} (limits.max_import_zip_entries)",
            archive.len(),
            limits.max_import_zip_entries
        )));
    }
    let budget = limits
        .max_import_expanded_bytes
        .min(archive_bytes.len().saturating_mul(limits.max_import_expansion_ratio.max(1)).max(64 * 1024));
    let mut spent = 0usize;
    let mut out = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| unreadable(format!("ZIP entry {index}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map_or_else(|_| format!("entry {}", index + 1), std::borrow::Cow::into_owned);
        let wanted = keep(&name);
        let left = budget - spent;
        // One byte past what is left tells "too much" from "exactly enough".
        let mut data = Vec::new();
        let mut limited = (&mut entry).take(left as u64 + 1);
        let read = if wanted {
            limited.read_to_end(&mut data)
        } else {
            std::io::copy(&mut limited, &mut std::io::sink()).map(|n| n as usize)
        }
        .map_err(|e| unreadable(format!("ZIP entry {name}: {e}")))?;
        if read > left {
            return Err(too_large(format!(
                "the archive inflates to more than {budget} bytes (limits.max_import_expanded_bytes, and at most {} times its size: limits.max_import_expansion_ratio)",
                limits.max_import_expansion_ratio
            )));
        }
        spent += read;
        if wanted {
            out.push((name, data));
        }
    }
    Ok(out)
}

fn read_zip(
    body: &[u8],
    options: Options<'_>,
    budget: &mut Budget<'_>,
    sink: &mut dyn Sink,
) -> Result<(), ImportError> {
    let entries =
        inflate(body, budget.limits, |name| Format::of_name(name).is_some() && !name.starts_with("__MACOSX/"))?;
    if entries.is_empty() {
        return Err(unreadable("the archive holds no .csv or .xlsx file"));
    }
    for (index, (name, data)) in entries.into_iter().enumerate() {
        let entry = index + 1;
        match Format::of_name(&name) {
            Some(Format::Xlsx) => read_xlsx(&data, Some(&name), entry, options, budget, sink)?,
            // The request's charset is the archive's, not its files': a BOM or the route's.
            _ => read_csv(&data, Some(&name), entry, Options { charset: None, ..options }, budget, sink)?,
        }
    }
    Ok(())
}

/// The CSV's text: charset from the content type, else a BOM, else the route's default.
fn csv_text<'b>(body: &'b [u8], options: Options<'_>) -> Result<std::borrow::Cow<'b, [u8]>, ImportError> {
    let charset = match (options.charset, encoding_rs::Encoding::for_bom(body)) {
        (Some(c), _) => Some(c),
        (None, Some((bom, _))) => Some(bom),
        (None, None) => options.default_charset,
    };
    match charset.filter(|c| *c != encoding_rs::UTF_8) {
        Some(c) => charset::decode(body, c)
            .map(|text| std::borrow::Cow::Owned(text.into_bytes()))
            .map_err(|p| ImportError::new(ImportErrorKind::Undecodable, p.detail)),
        None => {
            let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
            std::str::from_utf8(body).map_err(|e| {
                ImportError::new(
                    ImportErrorKind::Undecodable,
                    format!(
                        "the file is not valid UTF-8 at byte {}; name its charset (text/csv; charset=windows-1251)",
                        e.valid_up_to()
                    ),
                )
            })?;
            Ok(std::borrow::Cow::Borrowed(body))
        }
    }
}

/// The separator of a CSV, guessed from its header line: the most frequent of `,`, `;` and
/// tab (Russian Excel writes `;`).
fn guess_delimiter(text: &[u8]) -> u8 {
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    [b',', b';', b'\t'].into_iter().max_by_key(|d| line.iter().filter(|b| *b == d).count()).unwrap_or(b',')
}

fn read_csv(
    body: &[u8],
    file: Option<&str>,
    entry: usize,
    options: Options<'_>,
    budget: &mut Budget<'_>,
    sink: &mut dyn Sink,
) -> Result<(), ImportError> {
    let text = csv_text(body, options)?;
    let delimiter = options.delimiter.unwrap_or_else(|| guess_delimiter(&text));
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).flexible(true).from_reader(text.as_ref());
    let mut record = csv::ByteRecord::new();
    let mut row = 0u64;
    let mut headers = None;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(unreadable(format!("not readable as CSV{}: {e}", in_file(file)))),
        }
        row += 1;
        let at = RowRef { file: file.map(str::to_owned), entry, row };
        budget.columns(record.len(), &at)?;
        let mut cells = Vec::with_capacity(record.len());
        for field in &record {
            budget.cell(field.len(), &at)?;
            // Checked UTF-8 above as a whole; a field is a slice of it.
            let text = String::from_utf8_lossy(field).into_owned();
            cells.push(if text.is_empty() { Cell::Empty } else { Cell::Text(text) });
        }
        if headers.is_none() {
            let names = header_names(cells, file)?;
            sink.headers(file, &names)?;
            headers = Some(names);
            continue;
        }
        if cells.iter().all(|c| *c == Cell::Empty) {
            continue;
        }
        budget.row()?;
        sink.row(at, cells)?;
    }
    if headers.is_none() {
        return Err(unreadable(format!("the file{} is empty: the first row must name the columns", in_file(file))));
    }
    Ok(())
}

/// The header row's cells as names: trimmed text; numbers as written.
fn header_names(cells: Vec<Cell>, file: Option<&str>) -> Result<Vec<String>, ImportError> {
    let names: Vec<String> = cells
        .into_iter()
        .map(|c| match c {
            Cell::Text(t) => t.trim().to_owned(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Bool(b) => b.to_string(),
            Cell::Empty => String::new(),
        })
        .collect();
    if names.iter().all(String::is_empty) {
        return Err(unreadable(format!("the first row{} names no columns", in_file(file))));
    }
    Ok(names)
}

fn read_xlsx(
    body: &[u8],
    file: Option<&str>,
    entry: usize,
    options: Options<'_>,
    budget: &mut Budget<'_>,
    sink: &mut dyn Sink,
) -> Result<(), ImportError> {
    // An XLSX is a ZIP: its parts are inflated once within the limits before calamine (which
    // keeps shared strings in memory) sees them.
    inflate(body, budget.limits, |_| false)?;
    let mut workbook = Xlsx::new(Cursor::new(body))
        .map_err(|e| unreadable(format!("not a readable XLSX workbook{}: {e}", in_file(file))))?;
    let sheet = match options.sheet {
        Some(name) => name.to_owned(),
        None => workbook
            .sheet_names()
            .first()
            .cloned()
            .ok_or_else(|| unreadable(format!("the workbook{} has no sheet", in_file(file))))?,
    };
    let mut cells_reader = workbook
        .worksheet_cells_reader(&sheet)
        .map_err(|e| unreadable(format!("sheet {sheet:?}{}: {e}", in_file(file))))?;
    let mut headers: Option<Vec<String>> = None;
    let mut current: Option<(u32, Vec<Cell>)> = None;
    let place = |row: u32| RowRef { file: file.map(str::to_owned), entry, row: u64::from(row) + 1 };
    loop {
        let cell =
            cells_reader.next_cell().map_err(|e| unreadable(format!("sheet {sheet:?}{}: {e}", in_file(file))))?;
        let Some(cell) = cell else { break };
        let (row, col) = cell.get_position();
        if current.as_ref().is_some_and(|(r, _)| *r != row)
            && let Some((r, cells)) = current.take()
        {
            xlsx_row(place(r), cells, &mut headers, file, budget, sink)?;
        }
        let at = place(row);
        let col = col as usize;
        budget.columns(col + 1, &at)?;
        let value = cell_value(cell.get_value());
        if let Cell::Text(t) = &value {
            budget.cell(t.len(), &at)?;
        }
        let (_, cells) = current.get_or_insert_with(|| (row, Vec::new()));
        if cells.len() <= col {
            cells.resize(col + 1, Cell::Empty);
        }
        cells[col] = value;
    }
    if let Some((r, cells)) = current.take() {
        xlsx_row(place(r), cells, &mut headers, file, budget, sink)?;
    }
    if headers.is_none() {
        return Err(unreadable(format!(
            "sheet {sheet:?}{} is empty: the first row must name the columns",
            in_file(file)
        )));
    }
    Ok(())
}

/// A sheet's row, complete: the header row, or a data row for the sink.
fn xlsx_row(
    at: RowRef,
    cells: Vec<Cell>,
    headers: &mut Option<Vec<String>>,
    file: Option<&str>,
    budget: &mut Budget<'_>,
    sink: &mut dyn Sink,
) -> Result<(), ImportError> {
    match headers {
        None => {
            let names = header_names(cells, file)?;
            sink.headers(file, &names)?;
            *headers = Some(names);
            Ok(())
        }
        Some(_) if cells.iter().all(|c| *c == Cell::Empty) => Ok(()),
        Some(_) => {
            budget.row()?;
            sink.row(at, cells)
        }
    }
}

/// A sheet's cell as a [`Cell`]: dates as ISO 8601 text (`2026-11-27`, or with the time
/// when it has one), errors (`#DIV/0!`) as their text.
fn cell_value(value: &DataRef<'_>) -> Cell {
    match value {
        DataRef::Empty => Cell::Empty,
        DataRef::Int(i) => Cell::Int(*i),
        // Spreadsheets keep every number as a float: whole ones are integers to a person.
        DataRef::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Cell::Int(*f as i64),
        DataRef::Float(f) => Cell::Float(*f),
        DataRef::String(s) => Cell::Text(s.clone()),
        DataRef::SharedString(s) => Cell::Text((*s).to_owned()),
        DataRef::Bool(b) => Cell::Bool(*b),
        DataRef::DateTime(dt) if dt.is_datetime() => {
            let (y, mo, d, h, mi, s, _) = dt.to_ymd_hms_milli();
            Cell::Text(if (h, mi, s) == (0, 0, 0) {
                format!("{y:04}-{mo:02}-{d:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
            })
        }
        DataRef::DateTime(dt) => Cell::Float(dt.as_f64()),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Cell::Text(s.clone()),
        DataRef::Error(e) => Cell::Text(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<Vec<String>>, Vec<(RowRef, Vec<Cell>)>);

    impl Sink for Collect {
        fn headers(&mut self, _: Option<&str>, headers: &[String]) -> Result<(), ImportError> {
            self.0.push(headers.to_vec());
            Ok(())
        }
        fn row(&mut self, at: RowRef, cells: Vec<Cell>) -> Result<(), ImportError> {
            self.1.push((at, cells));
            Ok(())
        }
    }

    fn options() -> Options<'static> {
        Options { charset: None, default_charset: None, delimiter: None, sheet: None }
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }

    #[test]
    fn csv_rows_with_guessed_separator_and_charsets() {
        let limits = Limits::default();
        let mut sink = Collect(Vec::new(), Vec::new());
        let (body, _, _) = encoding_rs::WINDOWS_1251.encode("Артикул;Остаток\nW-1;12\n;\nW-2;\"3\"\n");
        let opts = Options { charset: Some(encoding_rs::WINDOWS_1251), ..options() };
        read(&body, Format::Csv, opts, &limits, &mut sink).unwrap();
        assert_eq!(sink.0, vec![vec!["Артикул".to_owned(), "Остаток".to_owned()]]);
        assert_eq!(sink.1.len(), 2, "the blank row is skipped");
        assert_eq!(sink.1[1].0.row, 4);
        assert_eq!(sink.1[1].1, vec![text("W-2"), text("3")]);
        // Not UTF-8 and no charset named: refused, not guessed.
        let err = read(&body, Format::Csv, options(), &limits, &mut sink).unwrap_err();
        assert_eq!(err.kind(), ImportErrorKind::Undecodable);
        // A UTF-8 BOM is not part of the first header.
        let mut sink = Collect(Vec::new(), Vec::new());
        read(b"\xEF\xBB\xBFsku,qty\r\nA,1\r\n", Format::Csv, options(), &limits, &mut sink).unwrap();
        assert_eq!(sink.0[0][0], "sku");
    }

    #[test]
    fn limits_are_checked_while_reading() {
        let limits =
            Limits { max_import_rows: 3, max_import_columns: 2, max_import_cell_bytes: 4, ..Limits::default() };
        let mut sink = Collect(Vec::new(), Vec::new());
        let many = format!("a,b\n{}", "1,2\n".repeat(1_000_000));
        let err = read(many.as_bytes(), Format::Csv, options(), &limits, &mut sink).unwrap_err();
        assert_eq!(err.kind(), ImportErrorKind::TooManyRows);
        assert_eq!(sink.1.len(), 3);
        let err = read(b"a,b,c\n", Format::Csv, options(), &limits, &mut sink).unwrap_err();
        assert_eq!(err.kind(), ImportErrorKind::TooLarge);
        let err = read(b"a,b\n12345,1\n", Format::Csv, options(), &limits, &mut sink).unwrap_err();
        assert_eq!(err.kind(), ImportErrorKind::TooLarge);
        assert_eq!(
            read(b"", Format::Csv, options(), &limits, &mut sink).unwrap_err().kind(),
            ImportErrorKind::Unreadable
        );
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            writer.start_file(*name, options).unwrap();
            std::io::Write::write_all(&mut writer, data).unwrap();
        }
        writer.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn a_zip_bomb_is_refused_while_inflating() {
        let limits = Limits::default();
        // 50 MB of zeros compress to about 50 KB: a ratio near 1000.
        let zeros = vec![0u8; 50 * 1024 * 1024];
        let bomb = zip_of(&[("orders.csv", &zeros)]);
        drop(zeros);
        let mut sink = Collect(Vec::new(), Vec::new());
        let started = std::time::Instant::now();
        let err = read(&bomb, Format::Zip, options(), &limits, &mut sink).unwrap_err();
        assert_eq!(err.kind(), ImportErrorKind::TooLarge, "{}", err.detail());
        assert!(err.detail().contains("max_import_expansion_ratio"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let many: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("{i}.csv"), b"a\n1\n".to_vec())).collect();
        let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let err = read(&zip_of(&refs), Format::Zip, options(), &limits, &mut sink).unwrap_err();
        assert!(err.detail().contains("max_import_zip_entries"));
    }

    #[test]
    fn a_zip_of_files_is_read_file_by_file() {
        let limits = Limits::default();
        let archive = zip_of(&[("a.csv", b"x\n1\n2\n"), ("readme.md", b"hi"), ("b.csv", b"x\n3\n")]);
        assert_eq!(Format::sniff(&archive), Format::Zip);
        let mut sink = Collect(Vec::new(), Vec::new());
        read(&archive, Format::Zip, options(), &limits, &mut sink).unwrap();
        let places: Vec<(Option<String>, usize, u64)> =
            sink.1.iter().map(|(r, _)| (r.file.clone(), r.entry, r.row)).collect();
        assert_eq!(
            places,
            vec![(Some("a.csv".into()), 1, 2), (Some("a.csv".into()), 1, 3), (Some("b.csv".into()), 2, 2)]
        );
    }

    #[test]
    fn xlsx_cells_keep_their_types() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.write(0, 0, "sku").unwrap();
        sheet.write(0, 1, "qty").unwrap();
        sheet.write(0, 3, "price").unwrap();
        sheet.write(1, 0, "W-1").unwrap();
        sheet.write(1, 1, 12).unwrap();
        sheet.write(1, 3, 9.5).unwrap();
        sheet.write(3, 0, "W-2").unwrap();
        sheet.write(3, 2, true).unwrap();
        let bytes = book.save_to_buffer().unwrap();
        assert_eq!(Format::sniff(&bytes), Format::Xlsx);
        let mut sink = Collect(Vec::new(), Vec::new());
        read(&bytes, Format::Xlsx, options(), &Limits::default(), &mut sink).unwrap();
        assert_eq!(sink.0[0], vec!["sku", "qty", "", "price"]);
        assert_eq!(sink.1[0].1, vec![text("W-1"), Cell::Int(12), Cell::Empty, Cell::Float(9.5)]);
        assert_eq!(sink.1[1].0.row, 4);
        assert_eq!(sink.1[1].1, vec![text("W-2"), Cell::Empty, Cell::Bool(true)]);
    }
}
