//! Spreadsheet exports of pull subscriptions, for a system that still reads files (a 1C
//! configuration's import, an old NAV report): `GET .../export.xlsx` (or `.csv`) fetches the
//! pending messages like a pull `fetch`, one row each, and acknowledges nothing. The answer
//! carries a confirmation token; `POST .../export/confirm` with it acks exactly those
//! messages. Without it they come again after the subscription's `ack_wait`, so a crash
//! between download and import loses nothing.
//!
//! The export's ack tokens are kept in the ack ledger (`<subscription>.export.x<id>`, for
//! its 24 hours), so the confirmation token stays short whatever the number of rows.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde_json::Value;

use crate::config::ExportColumn;
use crate::contracts::Contracts;
use crate::delivery::pull::{self, AckFailure, AckToken, Action, TokenKey};
use crate::delivery::pull_order::KeyOrder;
use crate::delivery::subscription::Subscription;
use crate::delivery::{DeliveryError, DeliveryKind};

/// The messages of one export, as rows.
#[derive(Debug)]
pub struct Export {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Confirms the export (acks its messages); `None` when nothing was pending.
    pub token: Option<String>,
}

/// Fetches what is pending (up to `max`, no waiting) and records the export's ack tokens.
///
/// # Errors
/// NATS failed; nothing is recorded then, and the fetched messages come again after the
/// ack wait.
pub async fn export(
    js: &jetstream::Context,
    key: &TokenKey,
    ledger: &kv::Store,
    order: Option<KeyOrder<'_>>,
    contracts: &Contracts,
    sub: &Subscription,
    max: usize,
) -> Result<Export, DeliveryError> {
    let fetched = pull::fetch(js, key, sub, order, max, Duration::ZERO).await?;
    let mut tokens: Vec<AckToken> = Vec::with_capacity(fetched.len());
    let mut data = Vec::with_capacity(fetched.len());
    let mut subjects = Vec::new();
    for message in fetched {
        // Signed a moment ago by the same key.
        if let Some(token) = message["ack_token"].as_str().and_then(|t| key.verify(t).ok()) {
            tokens.push(token);
        }
        if let Some(subject) = message["subject"].as_str()
            && !subjects.iter().any(|s| s == subject)
        {
            subjects.push(subject.to_owned());
        }
        data.push(message.get("data").cloned().unwrap_or(Value::Null));
    }
    let columns = columns(&sub.export_columns, contracts, &subjects, &data);
    let rows = data.iter().map(|d| columns.iter().map(|(_, pointer)| cell(d, pointer)).collect()).collect();
    let token = if tokens.is_empty() {
        None
    } else {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let record = serde_json::to_vec(&tokens).unwrap_or_default();
        ledger
            .put(pull::export_key(&sub.name, &id), record.into())
            .await
            .map_err(|e| DeliveryError::new(DeliveryKind::Nats, e.to_string()))?;
        Some(key.sign_export(&sub.name, &id))
    };
    Ok(Export { headers: columns.into_iter().map(|(h, _)| h).collect(), rows, token })
}

/// The columns: the subscription's `export_columns`; else the top-level properties of the
/// contracts bound to the messages' subjects; else the data's own top-level members.
fn columns(
    declared: &[ExportColumn],
    contracts: &Contracts,
    subjects: &[String],
    data: &[Value],
) -> Vec<(String, String)> {
    if !declared.is_empty() {
        return declared.iter().map(|c| (c.header.clone(), c.pointer.clone())).collect();
    }
    let mut names: Vec<String> = Vec::new();
    for subject in subjects {
        if let Ok(Some(contract)) = contracts.for_subject(subject, None)
            && let Some(properties) = contract.schema.get("properties").and_then(Value::as_object)
        {
            push_new(&mut names, properties.keys());
        }
    }
    if names.is_empty() {
        push_new(&mut names, data.iter().filter_map(Value::as_object).flat_map(|o| o.keys()));
    }
    names.into_iter().map(|n| (n.clone(), format!("/{}", n.replace('~', "~0").replace('/', "~1")))).collect()
}

fn push_new<'a>(names: &mut Vec<String>, new: impl Iterator<Item = &'a String>) {
    for name in new {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
}

/// A cell's value: scalars as they are, objects and arrays as JSON text, absent as null.
fn cell(data: &Value, pointer: &str) -> Value {
    match data.pointer(pointer) {
        None | Some(Value::Null) => Value::Null,
        Some(v @ (Value::Object(_) | Value::Array(_))) => Value::String(v.to_string()),
        Some(v) => v.clone(),
    }
}

/// The sheet as XLSX: a bold header row, then one row per message.
///
/// # Errors
/// The writer failed (a bug: every value written is a string, number or bool).
pub fn to_xlsx(export: &Export, sheet_name: &str) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    // Sheet names are at most 31 characters.
    sheet.set_name(sheet_name.chars().take(31).collect::<String>())?;
    let bold = rust_xlsxwriter::Format::new().set_bold();
    for (col, header) in export.headers.iter().enumerate() {
        sheet.write_string_with_format(0, col as u16, header, &bold)?;
    }
    for (r, row) in export.rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (col, value) in row.iter().enumerate() {
            let col = col as u16;
            match value {
                Value::Null => {}
                Value::Bool(b) => {
                    sheet.write_boolean(r, col, *b)?;
                }
                // Integers beyond 2^53 would lose digits as an Excel number: text keeps them.
                Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() < 9.0e15) => {
                    sheet.write_number(r, col, n.as_f64().unwrap_or_default())?;
                }
                Value::Number(n) => {
                    sheet.write_string(r, col, n.to_string())?;
                }
                Value::String(s) => {
                    sheet.write_string(r, col, s)?;
                }
                other => {
                    sheet.write_string(r, col, other.to_string())?;
                }
            }
        }
    }
    book.save_to_buffer()
}

/// The sheet as CSV (UTF-8 with a byte-order mark, which Excel needs to read Cyrillic).
#[must_use]
pub fn to_csv(export: &Export) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(b"\xEF\xBB\xBF".to_vec());
    if export.headers.is_empty() {
        return writer.into_inner().unwrap_or_default();
    }
    let _ = writer.write_record(&export.headers);
    for row in &export.rows {
        let _ = writer.write_record(row.iter().map(|v| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
    }
    writer.into_inner().unwrap_or_default()
}

/// What a confirmation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confirmed {
    /// Messages acked now.
    pub acked: usize,
    /// Messages already finished (acked through another export or a pull ack).
    pub already: usize,
}

/// Why a confirmation was not carried out.
#[derive(Debug)]
pub enum ConfirmError {
    /// The export is not in the ledger: confirmed before, or older than the ledger keeps.
    Unknown,
    /// NATS failed; confirming again is safe (acked messages are skipped).
    Nats(String),
}

/// Acks the messages of export `id` of `sub`, then forgets the export.
///
/// # Errors
/// [`ConfirmError`].
pub async fn confirm(
    client: &async_nats::Client,
    ledger: &kv::Store,
    order: Option<KeyOrder<'_>>,
    sub: &str,
    id: &str,
) -> Result<Confirmed, ConfirmError> {
    let key = pull::export_key(sub, id);
    let record = ledger.get(&key).await.map_err(|e| ConfirmError::Nats(e.to_string()))?.ok_or(ConfirmError::Unknown)?;
    let tokens: Vec<AckToken> = serde_json::from_slice(&record).map_err(|_| ConfirmError::Unknown)?;
    let mut confirmed = Confirmed::default();
    for chunk in tokens.chunks(64) {
        let outcomes =
            futures::future::join_all(chunk.iter().map(|t| pull::act(client, ledger, t, Action::Ack, None))).await;
        for outcome in outcomes {
            match outcome {
                Ok(()) => confirmed.acked += 1,
                Err(AckFailure::AlreadyAcked) => confirmed.already += 1,
                Err(AckFailure::Nats(e)) => return Err(ConfirmError::Nats(e)),
            }
        }
        if let Some(order) = order {
            // Every message of the chunk is acked (now or before): their keys move on.
            let done: Vec<_> = chunk.iter().map(|t| (t.st.as_str(), t.q, Action::Ack, None)).collect();
            crate::delivery::pull_order::settle(order, sub, &done)
                .await
                .map_err(|e| ConfirmError::Nats(e.to_string()))?;
        }
    }
    ledger.purge(&key).await.map_err(|e| ConfirmError::Nats(e.to_string()))?;
    Ok(confirmed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_values_are_json_text_and_sheets_are_written() {
        let data = json!({"sku": "W-1", "available": 12, "warehouses": [{"code": "MSK"}], "note": null});
        assert_eq!(cell(&data, "/sku"), json!("W-1"));
        assert_eq!(cell(&data, "/warehouses"), json!(r#"[{"code":"MSK"}]"#));
        assert_eq!(cell(&data, "/note"), Value::Null);
        assert_eq!(cell(&data, "/missing"), Value::Null);
        let cols = columns(&[], &Contracts::default(), &[], std::slice::from_ref(&data));
        assert_eq!(
            cols.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
            ["available", "note", "sku", "warehouses"]
        );
        let export = Export {
            headers: vec!["sku".into(), "available".into()],
            rows: vec![vec![json!("Шираз"), json!(12)], vec![json!(true), Value::Null]],
            token: None,
        };
        let csv = to_csv(&export);
        assert_eq!(String::from_utf8(csv).unwrap(), "\u{feff}sku,available\nШираз,12\ntrue,\n");
        let xlsx = to_xlsx(&export, "onec-stock").unwrap();
        assert!(xlsx.starts_with(b"PK"));
    }
}
