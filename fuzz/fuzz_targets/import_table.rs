//! Spreadsheets sent to `POST /v1/import/{route}` (issue 17): CSV, XLSX and ZIP, each read at
//! the default import limits into a sink that only counts. Must never panic, and never run
//! past the limits (libFuzzer's -rss_limit_mb and -timeout catch a limit that does not hold).
#![no_main]
use libfuzzer_sys::fuzz_target;
use magistral::import::table::{self, Cell, Format, Options, RowRef, Sink};

struct Count(usize);

impl Sink for Count {
    fn headers(&mut self, _file: Option<&str>, headers: &[String]) -> Result<(), magistral::import::ImportError> {
        self.0 += headers.len();
        Ok(())
    }
    fn row(&mut self, _at: RowRef, cells: Vec<Cell>) -> Result<(), magistral::import::ImportError> {
        self.0 += cells.len();
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = magistral::config::Limits::default();
    let options = Options { charset: None, default_charset: None, delimiter: None, sheet: None };
    for format in [Format::Csv, Format::Xlsx, Format::Zip, Format::sniff(data)] {
        let _ = table::read(data, format, options, &limits, &mut Count(0));
    }
});
