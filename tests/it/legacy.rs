//! Legacy bridges against a real nats-server and real HTTP receivers: windows-1251 bodies in
//! and out, spreadsheet imports (XLSX, CSV, ZIP) and exports of pull subscriptions.

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use calamine::Reader;
use serde_json::{Value, json};

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, OPS, jetstream, scenario, slug, stream_count};
use crate::common::nats::NatsServer;
use crate::common::receiver::{Receiver, verify_signature};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// The legacy scenario plus the given subscriptions (JSON configs).
async fn gateway(nats: &NatsServer, subs: Vec<(&str, Value)>) -> Gateway {
    Gateway::start_with(scenario("legacy"), &nats.url(), move |c| {
        for (name, sub) in subs {
            c.subscriptions.insert(name.to_owned(), serde_json::from_value(sub).expect("subscription config"));
        }
    })
    .await
}

fn push(receiver: &Receiver, extra: Value) -> Value {
    let mut sub = json!({
        "participant": "nav",
        "subjects": ["legacy.notes", "legacy.deals", "legacy.calls"],
        "endpoint": receiver.url(),
        "retry_schedule": ["100ms"],
        "breaker_failures": 1000,
        "timeout": "5s",
    });
    if let (Some(base), Value::Object(extra)) = (sub.as_object_mut(), extra) {
        base.extend(extra);
    }
    sub
}

fn cp1251(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1251.encode(text);
    assert!(!unmappable, "{text} is not all windows-1251");
    bytes.into_owned()
}

/// A form value percent-encoded byte by byte, as a windows-1251 site's PHP `urlencode` does.
fn form_escape(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn windows_1251_forms_and_json_reach_subscribers_as_utf8() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let gw = gateway(&nats, vec![("nav-legacy", push(&receiver, json!({})))]).await;

    // A 1C-Bitrix site in windows-1251: the percent-decoded bytes are windows-1251.
    let title = "Шираз «Барросса» № 5";
    let form = format!(
        "event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=4711&data%5BFIELDS%5D%5BTITLE%5D={}&auth%5Bdomain%5D=shop.example.ru&auth%5Bapplication_token%5D=app-token-123",
        form_escape(&cp1251(title))
    );
    let r = gw
        .http
        .post(gw.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/x-www-form-urlencoded; charset=windows-1251")
        .body(form.clone())
        .send()
        .await
        .unwrap();
    crate::common::assert_status(r, 200).await;

    // A windows-1251 JSON body, published; and a KOI8-R one on a json inbound route.
    let note = json!({"customer": "Иванов Пётр", "comment": "доставка до 18:00 — звонить"});
    let r = gw
        .publish_as(BITRIX, "legacy.notes", "application/json; charset=windows-1251", cp1251(&note.to_string()))
        .send()
        .await
        .unwrap();
    crate::common::assert_status(r, 202).await;
    let call = json!({"phone": "+79161234567", "operator": "Сидорова"});
    let call_text = call.to_string();
    let (koi8, _, _) = encoding_rs::KOI8_R.encode(&call_text);
    let r = gw
        .http
        .post(gw.url("/v1/inbound/oktell-calls"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/json; charset=koi8-r")
        .body(koi8.into_owned())
        .send()
        .await
        .unwrap();
    crate::common::assert_status(r, 202).await;

    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let by_subject = |s: &str| -> Value {
        let r = got.iter().find(|r| r.header("magistral-subject") == Some(s)).unwrap();
        assert_eq!(r.header("content-type"), Some("application/json"));
        serde_json::from_slice(std::str::from_utf8(&r.body).expect("UTF-8").as_bytes()).unwrap()
    };
    let deal = by_subject("legacy.deals");
    assert_eq!(deal["data"]["FIELDS"]["TITLE"], title);
    assert!(deal.get("auth").is_none(), "the auth part is never published");
    assert_eq!(by_subject("legacy.notes"), note);
    assert_eq!(by_subject("legacy.calls"), call);

    // The same form again is the same message (its id derives from the bytes received).
    let r = gw
        .http
        .post(gw.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/x-www-form-urlencoded; charset=windows-1251")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(crate::common::assert_status(r, 200).await["duplicate"], true);

    // Bytes that are not what the charset says (every byte is a windows-1251 character; a
    // Shift_JIS lead byte needs a trail byte): 400, nothing stored.
    let r = gw
        .publish_as(BITRIX, "legacy.notes", "application/json; charset=shift_jis", &b"{\"a\":\"\x81 \"}"[..])
        .send()
        .await
        .unwrap();
    let body = crate::common::assert_status(r, 400).await;
    assert_eq!(
        (slug(&body), body["detail"].as_str()),
        ("undecodable-body", Some("the body is not valid Shift_JIS at byte 6"))
    );
    let bad_form = "event=X&data%5BT%5D=%81%20&auth%5Bapplication_token%5D=app-token-123";
    let r = gw
        .http
        .post(gw.url("/v1/inbound/bitrix-deals"))
        .header("content-type", "application/x-www-form-urlencoded; charset=shift_jis")
        .body(bad_form)
        .send()
        .await
        .unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 400).await), "undecodable-body");
    // An unknown label: 415, before the body is read.
    let r = gw.publish_as(BITRIX, "legacy.notes", "application/json; charset=klingon", "{}").send().await.unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 415).await), "unsupported-media-type");
    // latin1 is windows-1252 (WHATWG): 0xE9 is é.
    let r = gw
        .publish_as(BITRIX, "legacy.notes", "application/json; charset=latin1", &b"{\"wine\":\"Ros\xe9\"}"[..])
        .send()
        .await
        .unwrap();
    crate::common::assert_status(r, 202).await;
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    let rose: Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
    assert_eq!(rose["wine"], "Rosé");
    // A batch in windows-1251.
    let batch = json!([{"subject": "legacy.notes", "data": {"n": "первый"}}, {"subject": "legacy.notes", "data": {"n": "второй"}}]);
    let r = gw
        .http
        .post(gw.url("/v1/publish"))
        .bearer_auth(BITRIX)
        .header("content-type", "application/json; charset=cp1251")
        .body(cp1251(&batch.to_string()))
        .send()
        .await
        .unwrap();
    crate::common::assert_status(r, 202).await;
    let got = receiver.wait_for(6, Duration::from_secs(10)).await;
    let names: Vec<Value> =
        got[4..].iter().map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["n"].clone()).collect();
    assert!(names.contains(&json!("первый")) && names.contains(&json!("второй")), "{names:?}");
}

#[tokio::test]
async fn a_windows_1251_subscriber_gets_its_charset_signed_and_unencodable_is_a_dead_letter() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let sub = push(&receiver, json!({"charset": "windows-1251", "signing_secrets": [SECRET]}));
    let gw = gateway(&nats, vec![("nav-1251", sub)]).await;

    let note = json!({"customer": "Иванов Пётр", "comment": "«срочно» — до 18:00"});
    let r = gw.publish(BITRIX, "legacy.notes", note.to_string()).send().await.unwrap();
    crate::common::assert_status(r, 202).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let d = &got[0];
    assert_eq!(d.header("content-type"), Some("application/json; charset=windows-1251"));
    assert!(std::str::from_utf8(&d.body).is_err(), "the bytes are windows-1251, not UTF-8");
    let (text, had_errors) = encoding_rs::WINDOWS_1251.decode_without_bom_handling(&d.body);
    assert!(!had_errors);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), note);
    assert!(
        verify_signature(
            SECRET,
            d.header("webhook-id").unwrap(),
            d.header("webhook-timestamp").unwrap(),
            &d.body,
            d.header("webhook-signature").unwrap()
        ),
        "the signature covers the bytes sent"
    );

    // A character windows-1251 has not: never a `?`, a dead letter with its own class.
    let r = gw.publish(BITRIX, "legacy.notes", json!({"comment": "вино 🍷"}).to_string()).send().await.unwrap();
    let id = crate::common::assert_status(r, 202).await["id"].as_str().unwrap().to_owned();
    let list = eventually("the dead letter", Duration::from_secs(10), async || {
        let list = gw.get_json(NAV, "/v1/subscriptions/nav-1251/dead-letters").await;
        (list["total"] == 1).then_some(list)
    })
    .await;
    let dl = &list["dead_letters"][0];
    assert_eq!(dl["id"], id.as_str());
    assert_eq!(dl["class"], "unencodable");
    assert!(dl["response_excerpt"].as_str().unwrap().contains("U+1F377"), "{dl}");
    assert_eq!(receiver.received().len(), 1, "nothing was sent for it");
}

#[tokio::test]
async fn an_unknown_subscription_charset_is_refused_by_check() {
    let mut config = magistral::config::Config::load(Some(&scenario("legacy"))).unwrap();
    config.subscriptions.insert(
        "bad".into(),
        serde_json::from_value(json!({"participant": "nav", "subjects": ["legacy.notes"], "endpoint": "http://127.0.0.1:9/", "charset": "klingon"})).unwrap(),
    );
    let err = magistral::catalog::Catalog::load(&config).unwrap_err().to_string();
    assert!(err.contains("subscriptions.bad.charset") && err.contains("klingon"), "{err}");
}

/// NAV's order-line report as XLSX: `n` lines, `bad` rows spoilt as the test says.
fn order_lines_xlsx(n: u32, spoil: impl Fn(u32, &mut rust_xlsxwriter::Worksheet) -> bool) -> Vec<u8> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, h) in ["Order No.", "Line No.", "Item No.", "Description", "Quantity", "Unit Price"].iter().enumerate() {
        sheet.write(0, c as u16, *h).unwrap();
    }
    for i in 1..=n {
        if spoil(i, sheet) {
            continue;
        }
        sheet.write(i, 0, format!("SO-{}", 100 + i / 10)).unwrap();
        sheet.write(i, 1, i % 10 + 1).unwrap();
        sheet.write(i, 2, format!("W-{:07}", i)).unwrap();
        sheet.write(i, 3, "Вино красное сухое").unwrap();
        sheet.write(i, 4, (i % 6 + 1) as f64).unwrap();
        sheet.write(i, 5, 1250.5).unwrap();
    }
    book.save_to_buffer().unwrap()
}

#[tokio::test]
async fn an_xlsx_of_1000_lines_with_3_bad_rows_stores_997_and_resending_stores_none() {
    let nats = NatsServer::start();
    let gw = gateway(&nats, vec![]).await;
    let js = jetstream(&nats.url()).await;
    let xlsx = order_lines_xlsx(1000, |i, sheet| {
        let good = |sheet: &mut rust_xlsxwriter::Worksheet| {
            sheet.write(i, 0, "SO-1").unwrap();
            sheet.write(i, 1, 1).unwrap();
            sheet.write(i, 2, "W-1").unwrap();
            sheet.write(i, 4, 1).unwrap();
            sheet.write(i, 5, 10).unwrap();
        };
        match i {
            // A negative quantity (row 101 of the sheet).
            100 => {
                good(sheet);
                sheet.write(i, 4, -2).unwrap();
            }
            // An item number in lower case (row 501).
            500 => {
                good(sheet);
                sheet.write(i, 2, "w-lower").unwrap();
            }
            // No price at all (row 1000).
            999 => {
                good(sheet);
                sheet.write_blank(i, 5, &rust_xlsxwriter::Format::new()).unwrap();
            }
            _ => return false,
        }
        true
    });
    let post = |accept: &'static str, token: &'static str, body: Vec<u8>| {
        gw.http
            .post(gw.url("/v1/import/nav-lines"))
            .bearer_auth(token)
            .header("content-type", XLSX)
            .header("accept", accept)
            .body(body)
    };
    let report =
        crate::common::assert_status(post("application/json", NAV, xlsx.clone()).send().await.unwrap(), 200).await;
    assert_eq!(
        (report["rows"].as_u64(), report["stored"].as_u64(), report["refused"].as_u64()),
        (Some(1000), Some(997), Some(3)),
        "{report}"
    );
    let refusals: Vec<(u64, &str)> = report["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["row"].as_u64().unwrap(), r["column"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(refusals, vec![(101, "Quantity"), (501, "Item No."), (1000, "Unit Price")], "{report}");
    assert_eq!(report["refusals"][2]["message"], "\"price\" is a required property");
    assert!(report["refusals"].as_array().unwrap().iter().all(|r| r["problem"] == "contract-violation"));
    assert_eq!(stream_count(&js, "LEGACY").await, 997);
    // A stored row is the line as the contract types it.
    let stream = js.get_stream("LEGACY").await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    let data: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(
        data,
        json!({"order_id": "SO-100", "line": 2, "sku": "W-0000001", "name": "Вино красное сухое", "qty": 2, "price": 1250.5})
    );

    // The same file again: nothing stored twice; the report as CSV for the person.
    let r = post("text/csv", NAV, xlsx.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["magistral-import-stored"], "0");
    assert_eq!(r.headers()["magistral-import-duplicates"], "997");
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(lines[0], "file,row,column,pointer,problem,message");
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[1].starts_with(",101,Quantity,/qty,contract-violation,"), "{csv}");
    assert_eq!(stream_count(&js, "LEGACY").await, 997);

    // Who may import: the route's participant, or an admin with publish permission.
    let r = post("application/json", BITRIX, xlsx.clone()).send().await.unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 403).await), "forbidden");
    let r = post("application/json", OPS, xlsx.clone()).send().await.unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 403).await), "forbidden");
    let r = gw.http.post(gw.url("/v1/import/nav-lines")).header("content-type", XLSX).body(xlsx).send().await.unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 401).await), "unauthorized");
    let r = gw
        .http
        .post(gw.url("/v1/import/nope"))
        .bearer_auth(NAV)
        .header("content-type", "text/csv")
        .body("a\n")
        .send()
        .await
        .unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 404).await), "not-found");
}

#[tokio::test]
async fn csv_in_windows_1251_and_a_zip_of_files_are_imported() {
    let nats = NatsServer::start();
    let gw = gateway(&nats, vec![]).await;
    let js = jetstream(&nats.url()).await;
    // As Russian Excel saves CSV: windows-1251, semicolons, decimal commas.
    let csv = "Order No.;Line No.;Item No.;Description;Quantity;Unit Price\r\nSO-1;1;W-0001;Шампанское брют;6;3499,90\r\nSO-1;2;W-0002;Херес;1;1200\r\n";
    let r = gw
        .http
        .post(gw.url("/v1/import/nav-lines"))
        .bearer_auth(NAV)
        .header("content-type", "text/csv; charset=windows-1251")
        .body(cp1251(csv))
        .send()
        .await
        .unwrap();
    let report = crate::common::assert_status(r, 200).await;
    assert_eq!(report["stored"], 2, "{report}");
    let stream = js.get_stream("LEGACY").await.unwrap();
    let data: Value = serde_json::from_slice(&stream.get_raw_message(1).await.unwrap().payload).unwrap();
    assert_eq!(data["name"], "Шампанское брют");
    assert_eq!(data["price"], 3499.9);

    // Two files in a ZIP, sent as octet-stream (sniffed); a missing column refuses the file.
    let mut archive = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut archive);
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("monday.xlsx", options).unwrap();
    zip.write_all(&order_lines_xlsx(3, |_, _| false)).unwrap();
    zip.start_file("tuesday.csv", options).unwrap();
    zip.write_all(
        "Order No.,Line No.,Item No.,Quantity,Unit Price\nSO-9,1,W-0009,2,10\nSO-9,2,W-0010,0,10\n".as_bytes(),
    )
    .unwrap();
    zip.finish().unwrap();
    let r = gw
        .http
        .post(gw.url("/v1/import/nav-lines"))
        .bearer_auth(NAV)
        .header("content-type", "application/octet-stream")
        .body(archive.into_inner())
        .send()
        .await
        .unwrap();
    let report = crate::common::assert_status(r, 200).await;
    assert_eq!(
        (report["rows"].as_u64(), report["stored"].as_u64(), report["refused"].as_u64()),
        (Some(5), Some(4), Some(1)),
        "{report}"
    );
    let refusal = &report["refusals"][0];
    assert_eq!(
        (refusal["file"].as_str(), refusal["row"].as_u64(), refusal["column"].as_str()),
        (Some("tuesday.csv"), Some(3), Some("Quantity"))
    );

    let r = gw
        .http
        .post(gw.url("/v1/import/nav-lines"))
        .bearer_auth(NAV)
        .header("content-type", "text/csv")
        .body("Order,Qty\nA,1\n")
        .send()
        .await
        .unwrap();
    let body = crate::common::assert_status(r, 400).await;
    assert_eq!(slug(&body), "unreadable-file");
    assert!(body["detail"].as_str().unwrap().starts_with("the header row has no column"), "{body}");
}

#[tokio::test]
async fn a_zip_bomb_and_a_million_row_csv_are_refused_within_the_limits() {
    let nats = NatsServer::start();
    let gw = gateway(&nats, vec![]).await;
    let js = jetstream(&nats.url()).await;
    // 64 MB of one repeated row, deflated to well under 1 MB (a ratio near 1000).
    let mut archive = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut archive);
    zip.start_file("orders.csv", zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(b"Order No.,Line No.,Item No.,Quantity,Unit Price\n").unwrap();
    let block = "SO-1,1,W-0001,1,1\n".repeat(64 * 1024);
    for _ in 0..(64 * 1024 * 1024 / block.len()) {
        zip.write_all(block.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    let bomb = archive.into_inner();
    assert!(bomb.len() < 2 * 1024 * 1024, "{}", bomb.len());
    let started = Instant::now();
    let r = gw
        .http
        .post(gw.url("/v1/import/nav-lines"))
        .bearer_auth(NAV)
        .header("content-type", "application/zip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    let body = crate::common::assert_status(r, 413).await;
    assert_eq!(slug(&body), "payload-too-large");
    assert!(body["detail"].as_str().unwrap().contains("max_import_expansion_ratio"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // A million rows (10 MB, under the size limit): refused at the row past max_import_rows.
    let mut csv = String::from("Order No.,Line No.,Item No.,Quantity,Unit Price\n");
    csv.push_str(&"A,1,B,1,1\n".repeat(1_000_000));
    let started = Instant::now();
    let r = gw
        .http
        .post(gw.url("/v1/import/nav-lines"))
        .bearer_auth(NAV)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let body = crate::common::assert_status(r, 413).await;
    assert_eq!(
        (slug(&body), body["detail"].as_str()),
        ("too-many-items", Some("more than 2000 data rows (limits.max_import_rows)"))
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(stream_count(&js, "LEGACY").await, 0, "nothing of a refused file is stored");
}

fn pull_lines() -> Value {
    json!({"participant": "nav", "subjects": ["legacy.lines"], "mode": "pull", "ack_wait": "2s", "max_in_flight": 500})
}

/// Rows of the first sheet of an XLSX, as text.
fn sheet_rows(xlsx: &[u8]) -> Vec<Vec<String>> {
    let mut book = calamine::Xlsx::new(Cursor::new(xlsx.to_vec())).unwrap();
    let name = book.sheet_names()[0].clone();
    let range = book.worksheet_range(&name).unwrap();
    range.rows().map(|r| r.iter().map(ToString::to_string).collect()).collect()
}

async fn import_lines(gw: &Gateway, n: u32) {
    let r = gw
        .http
        .post(gw.url("/v1/import/nav-lines"))
        .bearer_auth(NAV)
        .header("content-type", XLSX)
        .body(order_lines_xlsx(n, |_, _| false))
        .send()
        .await
        .unwrap();
    assert_eq!(crate::common::assert_status(r, 200).await["stored"], n);
}

#[tokio::test]
async fn export_then_confirm_leaves_nothing_pending() {
    let nats = NatsServer::start();
    let gw = gateway(&nats, vec![("nav-report", pull_lines())]).await;
    import_lines(&gw, 5).await;
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-report/export.xlsx")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], XLSX);
    assert_eq!(r.headers()["magistral-export-rows"], "5");
    let token = r.headers()["magistral-export-token"].to_str().unwrap().to_owned();
    let rows = sheet_rows(&r.bytes().await.unwrap());
    // The contract's top-level properties are the columns.
    assert_eq!(rows[0], ["line", "name", "order_id", "price", "qty", "sku"]);
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[1], ["2", "Вино красное сухое", "SO-100", "1250.5", "2", "W-0000001"]);

    // Only the owner's subscription; a token of the right shape only.
    let (status, body) = gw
        .post_json(NAV, "/v1/subscriptions/nav-report/export/confirm", json!({"token": "x1.nav-report.00.AAAA"}))
        .await;
    assert_eq!((status, slug(&body)), (422, "invalid-ack-token"));
    let (status, body) =
        gw.post_json(NAV, "/v1/subscriptions/nav-report/export/confirm", json!({"token": token})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"acked": 5, "already": 0}));
    let (status, body) =
        gw.post_json(NAV, "/v1/subscriptions/nav-report/export/confirm", json!({"token": token})).await;
    assert_eq!((status, slug(&body)), (409, "already-acked"));

    // Nothing pending, now and after the ack wait.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-report/export.csv")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["magistral-export-rows"], "0");
    assert!(r.headers().get("magistral-export-token").is_none());
    assert_eq!(r.text().await.unwrap(), "\u{feff}", "no messages, no columns");
}

#[tokio::test]
async fn export_without_confirmation_gives_the_same_rows_again() {
    let nats = NatsServer::start();
    let columns = json!([{"header": "Артикул", "pointer": "/sku"}, {"header": "Кол-во", "pointer": "/qty"}]);
    let mut sub = pull_lines();
    sub["export_columns"] = columns;
    let gw = gateway(&nats, vec![("nav-report", sub)]).await;
    import_lines(&gw, 3).await;
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-report/export.csv")).bearer_auth(NAV).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.text().await.unwrap();
    assert_eq!(first, "\u{feff}Артикул,Кол-во\nW-0000001,2\nW-0000002,3\nW-0000003,4\n");
    // Not confirmed: after the ack wait (2 s) the same rows come again.
    let again = eventually("the rows again", Duration::from_secs(10), async || {
        let r = gw.http.get(gw.url("/v1/subscriptions/nav-report/export.csv")).bearer_auth(NAV).send().await.unwrap();
        let text = r.text().await.unwrap();
        (text.lines().count() > 1).then_some(text)
    })
    .await;
    assert_eq!(again, first);
    // Another participant cannot tell the subscription exists.
    let r = gw.http.get(gw.url("/v1/subscriptions/nav-report/export.xlsx")).bearer_auth(BITRIX).send().await.unwrap();
    assert_eq!(slug(&crate::common::assert_status(r, 404).await), "not-found");
}

#[tokio::test]
async fn the_wine_retail_nav_stock_report_flows_through_the_bus() {
    let nats = NatsServer::start();
    let gw = Gateway::start_with(crate::common::gateway::example("magistral.toml"), &nats.url(), |_| {}).await;
    let js = jetstream(&nats.url()).await;
    let sample = std::fs::read(crate::common::gateway::example("samples/nav-stock.xlsx")).unwrap();
    let post = || {
        gw.http
            .post(gw.url("/v1/import/nav-stock"))
            .bearer_auth("nav-demo-token")
            .header("content-type", XLSX)
            .body(sample.clone())
    };
    let report = crate::common::assert_status(post().send().await.unwrap(), 200).await;
    assert_eq!(
        (report["rows"].as_u64(), report["stored"].as_u64(), report["refused"].as_u64()),
        (Some(5), Some(4), Some(1)),
        "{report}"
    );
    // As examples/wine-retail/README.md shows it (step 9).
    assert_eq!(
        report,
        json!({"route":"nav-stock","file_sha256":"a89aabdaa12d05d662cc0dca3b89391349137dad25958995d11b082c99653442","rows":5,"stored":4,"duplicates":0,"refused":1,"failed":0,"refusals":[{"row":5,"column":"Qty. Available","pointer":"/available","problem":"contract-violation","message":"-3 is less than the minimum of 0"}]})
    );
    let before = stream_count(&js, "CATALOG").await;
    let again = crate::common::assert_status(post().send().await.unwrap(), 200).await;
    assert_eq!((again["stored"].as_u64(), again["duplicates"].as_u64()), (Some(0), Some(4)));
    assert_eq!(stream_count(&js, "CATALOG").await, before);

    // 1C's old loader takes them as a spreadsheet with its own columns, then confirms.
    let r = gw
        .http
        .get(gw.url("/v1/subscriptions/onec-stock/export.xlsx"))
        .bearer_auth("onec-demo-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["magistral-export-token"].to_str().unwrap().to_owned();
    let rows = sheet_rows(&r.bytes().await.unwrap());
    assert_eq!(rows[0], ["Артикул", "Доступно", "В резерве", "Название", "Обновлено"]);
    assert_eq!(rows[1], ["W-0012345", "48", "6", "", "2026-11-27T18:45:00+03:00"]);
    assert_eq!(rows.len(), 5);
    let (status, body) =
        gw.post_json("onec-demo-token", "/v1/subscriptions/onec-stock/export/confirm", json!({"token": token})).await;
    assert_eq!((status, body), (200, json!({"acked": 4, "already": 0})));
}
