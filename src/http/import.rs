//! `POST /v1/import/{route}`: a spreadsheet in (CSV, XLSX, or a ZIP of them), its rows
//! checked and published, a report out — JSON, or CSV for `Accept: text/csv` (see
//! [`crate::import`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::Caller;
use super::problem::{Problem, ProblemType};
use super::{AppState, header_str, media_type, read_body, request_charset};
use crate::import::table::{Format, RowRef};
use crate::import::{self, Checked, Report, Upload};
use crate::publish::Outgoing;

/// Rows published per batch: well under `limits.max_in_flight_publishes`, so an import
/// does not crowd out other publishers.
const CHUNK: usize = 256;

/// `POST /v1/import/{route}`. Checks, in order: token → route (`not-found`) → the caller
/// (`forbidden`) → content type and charset → body size → the file, read within the import
/// limits → each row as a publish (refusals reported, not answered) → NATS.
pub(crate) async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let route = caller
        .catalog()
        .import(&name)
        .ok_or_else(|| Problem::new(ProblemType::NotFound, format!("no import route {name}")))?
        .clone();
    route.authorize(caller.participant())?;
    let format = Format::of_media_type(media_type(&headers).as_deref()).ok_or_else(|| {
        Problem::new(
            ProblemType::UnsupportedMediaType,
            "send text/csv, application/vnd.openxmlformats-officedocument.spreadsheetml.sheet, application/zip or application/octet-stream",
        )
    })?;
    let charset = request_charset(&headers)?;
    let body = read_body(body, &headers, state.limits.max_import_bytes).await?;

    let (catalog, limits, participant) = (caller.catalog_arc().clone(), state.limits.clone(), caller.name().to_owned());
    let checked = tokio::task::spawn_blocking(move || {
        let participant = catalog.participants.by_name(&participant);
        let participant = participant.ok_or_else(|| Problem::new(ProblemType::Internal, "internal error"))?;
        import::check(&route, &catalog, &limits, participant, Upload { body: &body, format, charset })
            .map_err(Problem::from)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "import check task failed");
        Problem::new(ProblemType::Internal, "internal error")
    })??;
    let Checked { ready, mut report } = checked;
    state.admission.charge_batch_items(caller.name(), ready.len());
    drop(caller);
    let first_failure = publish(&state, ready, &mut report).await;
    answer(&headers, report, first_failure)
}

/// Publishes the checked rows batch by batch, counting each result in the report; the first
/// failure, if any.
async fn publish(state: &AppState, ready: Vec<(RowRef, Outgoing)>, report: &mut Report) -> Option<Problem> {
    let mut first_failure = None;
    let mut note = |at: &RowRef, result: Result<crate::publish::Stored, Problem>, report: &mut Report| {
        if let (Err(p), None) = (&result, &first_failure) {
            first_failure = Some(p.clone());
        }
        report.published(at, result);
    };
    let mut rows = ready.into_iter().peekable();
    while rows.peek().is_some() {
        let (places, batch): (Vec<RowRef>, Vec<Outgoing>) = rows.by_ref().take(CHUNK).unzip();
        match state.publisher.publish_batch(batch).await {
            Ok(results) => places.iter().zip(results).for_each(|(at, result)| note(at, result, report)),
            Err(problem) => places.iter().for_each(|at| note(at, Err(problem.clone()), report)),
        }
    }
    first_failure
}

/// 200 when every checked row is in JetStream (refused rows are in the report, not an error:
/// the file was taken); 207 when some were not stored. When none of the checked rows could
/// be stored the answer is that failure as a problem (`nats-unavailable`, `overloaded`,
/// `publish-timeout`): post the same file again. The counts are in headers too, for the CSV
/// form.
fn answer(headers: &HeaderMap, report: Report, first_failure: Option<Problem>) -> Result<Response, Problem> {
    let checked = report.stored + report.duplicates + report.failed;
    let status = match report.failed {
        0 => StatusCode::OK,
        n if n == checked => {
            return Err(first_failure.unwrap_or_else(|| Problem::new(ProblemType::Internal, "internal error")));
        }
        _ => StatusCode::MULTI_STATUS,
    };
    let counts = [
        ("magistral-import-rows", report.rows),
        ("magistral-import-stored", report.stored),
        ("magistral-import-duplicates", report.duplicates),
        ("magistral-import-refused", report.refused),
        ("magistral-import-failed", report.failed),
    ];
    let retry_after = first_failure.and_then(|p| p.retry_after);
    let mut response = if wants_csv(header_str(headers, header::ACCEPT.as_str())) {
        // A BOM, so that Excel opens the Cyrillic of the messages as UTF-8.
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend(report.to_csv());
        (status, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
    } else {
        (status, Json(report)).into_response()
    };
    for (name, value) in counts {
        response.headers_mut().insert(name, HeaderValue::from(value));
    }
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    Ok(response)
}

/// Whether `Accept` asks for CSV before JSON (the first of the two named wins; no `q`
/// weighing needed for these two).
fn wants_csv(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    for range in accept.split(',') {
        match range.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "text/csv" => return true,
            "application/json" => return false,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::wants_csv;

    #[test]
    fn accept_picks_the_report_form() {
        assert!(wants_csv(Some("text/csv")));
        assert!(wants_csv(Some("text/csv;q=0.9, application/json;q=0.5")));
        assert!(!wants_csv(Some("application/json, text/csv")));
        assert!(!wants_csv(Some("*/*")));
        assert!(!wants_csv(None));
    }
}
