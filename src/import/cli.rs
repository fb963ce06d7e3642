//! `magistral import FILE --route R`: posts a spreadsheet to a gateway's import route and
//! prints the report, so a person (or a scheduled job on the old system's side) can feed
//! the bus from the files it already produces.

use std::path::Path;
use std::process::ExitCode;

use super::Report;

/// sysexits: the file's data was refused (some rows, or the file).
const EX_DATAERR: u8 = 65;
/// sysexits: the gateway or NATS is unavailable; posting the same file again is safe.
const EX_UNAVAILABLE: u8 = 69;
/// sysexits: the token is wrong or may not use the route.
const EX_NOPERM: u8 = 77;

/// The content type a file is sent with, by its extension.
#[must_use]
pub fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv" | "txt") => "text/csv",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

/// Posts `file` to `{url}/v1/import/{route}` as the participant of `token`, prints the
/// report (and writes its CSV form to `csv_report` when given). Exit status: 0 when every
/// row is stored (or was already), 65 when rows or the file were refused, 69 when the
/// gateway or NATS failed (post the file again: nothing is stored twice), 77 for a token
/// that may not import there.
pub async fn run(url: &str, token: &str, file: &Path, route: &str, csv_report: Option<&Path>) -> ExitCode {
    let body = match tokio::fs::read(file).await {
        Ok(body) => body,
        Err(err) => {
            eprintln!("{}: {err}", file.display());
            return ExitCode::from(EX_DATAERR);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().user_agent(concat!("magistral/", env!("CARGO_PKG_VERSION"))).build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("cannot build an HTTP client: {err}");
            return ExitCode::FAILURE;
        }
    };
    let endpoint = format!(
        "{}/v1/import/{}",
        url.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(route, percent_encoding::NON_ALPHANUMERIC)
    );
    let sent = client
        .post(&endpoint)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, content_type(file))
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            eprintln!("{endpoint}: {err}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Report>(&text) {
        Ok(report) if status.is_success() || status.as_u16() == 503 => {
            print_report(&report);
            if let Some(path) = csv_report
                && let Err(err) = std::fs::write(path, report.to_csv())
            {
                eprintln!("{}: {err}", path.display());
            }
            if report.failed > 0 {
                ExitCode::from(EX_UNAVAILABLE)
            } else if report.refused > 0 {
                ExitCode::from(EX_DATAERR)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // A problem+json refusal of the whole file (or something that is not ours).
            let problem: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let detail = problem["detail"].as_str().unwrap_or(text.as_str());
            let class = problem["type"].as_str().unwrap_or("").trim_start_matches("urn:magistral:problem:");
            eprintln!("{}: {status} {class}: {detail}", file.display());
            match status.as_u16() {
                401 | 403 => ExitCode::from(EX_NOPERM),
                s if s >= 500 || s == 429 || s == 408 => ExitCode::from(EX_UNAVAILABLE),
                _ => ExitCode::from(EX_DATAERR),
            }
        }
    }
}

fn print_report(report: &Report) {
    println!(
        "import {}: {} row(s): {} stored, {} already stored, {} refused, {} not stored (NATS)",
        report.route, report.rows, report.stored, report.duplicates, report.refused, report.failed
    );
    for r in &report.refusals {
        let file = r.file.as_deref().map(|f| format!("{f}, ")).unwrap_or_default();
        let column = r.column.as_deref().map(|c| format!(", column {c:?}")).unwrap_or_default();
        println!("  {file}row {}{column}: {} ({})", r.row, r.message, r.problem);
    }
    let listed = report.refusals.len();
    if report.refused + report.failed > listed {
        println!("  … {} more not listed", report.refused + report.failed - listed);
    }
}
