//! The `magistral` client commands and `magistral dev`, run as the built binary the way an
//! operator runs them: against a real gateway and nats-server, checking what they print and
//! their exit codes.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::eventually;
use crate::common::gateway::{BITRIX, Gateway, NAV, example, scenario, subscription};
use crate::common::nats::{NatsServer, server_bin};
use crate::common::receiver::{Answer, Receiver};

const BIN: &str = env!("CARGO_BIN_EXE_magistral");

/// `magistral <args>` against `gateway` as `token`; the environment cleared of the
/// settings a developer's shell may hold.
fn cli(gateway: &str, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("MAGISTRAL_URL", gateway)
        .env("MAGISTRAL_TOKEN", token)
        .env_remove("MAGISTRAL_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs to the end (bounded); returns (exit code, stdout, stderr).
async fn run(mut command: Command) -> (i32, String, String) {
    let out: Output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("the command ends")
        .expect("run magistral");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The cells of the table row that starts with `first` (columns split on runs of spaces).
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
        .split_whitespace()
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn commands_answer_an_operator_with_tables_json_and_exit_codes() {
    let nats = NatsServer::start();
    // NAV refuses the first order it sees and every `bad-` one; the status endpoint is gone.
    let erp = Receiver::scripted(|n, r| {
        if n == 0 || r.header("ce-id").is_some_and(|id| id.starts_with("bad-")) {
            Answer::status(400).body(r#"{"error":"unknown customer C-0042"}"#)
        } else {
            Answer::ok()
        }
    })
    .await;
    let gone = Receiver::scripted(|_, _| Answer::status(410)).await;
    let gw = Gateway::with_subscriptions(
        &nats.url(),
        vec![
            ("nav-orders", subscription("nav", &["orders.created"], &erp.url(), json!({}))),
            ("nav-gone", subscription("nav", &["orders.status"], &gone.url(), json!({}))),
        ],
    )
    .await;
    let base = gw.url("");
    let base = base.trim_end_matches('/');
    let order = example("samples/sales-order.valid.json");
    let order = order.to_str().unwrap();

    // publish: the stored id, stream and sequence; a repeat is a duplicate.
    let publish = ["publish", "orders.created", order, "--id", "order-1", "--correlation", "corr-1"];
    let (code, out, err) = run(cli(base, BITRIX, &publish)).await;
    assert_eq!((code, out.as_str()), (0, "stored order-1 (stream ORDERS, seq 1)\n"), "{err}");
    let (code, out, _) = run(cli(base, BITRIX, &publish)).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("duplicate: order-1 was stored before (stream ORDERS, seq 1)"), "{out}");
    // From standard input, with a type, as JSON for scripts.
    let mut command = cli(base, BITRIX, &["publish", "orders.created", "-", "--type", "shop.order", "--json"]);
    command.stdin(std::fs::File::open(example("samples/sales-order.valid.json")).unwrap());
    let (code, out, err) = run(command).await;
    assert_eq!(code, 0, "{err}");
    let stored: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((stored["stream"].as_str(), stored["seq"].as_u64()), (Some("ORDERS"), Some(2)));

    eventually("order-1 dead-lettered", Duration::from_secs(10), async || {
        (gw.get_json(NAV, "/v1/subscriptions/nav-orders").await["dead_letters"] == 1).then_some(())
    })
    .await;

    // where: the message and, per subscription, how far it got.
    let (code, out, err) = run(cli(base, BITRIX, &["where", "order-1"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("subject      orders.created (stream ORDERS, seq 1)"), "{out}");
    assert!(out.contains("correlation  corr-1"), "{out}");
    let nav = row(&out, "nav-orders");
    assert_eq!(&nav[1..5], ["nav", "push", "dead-letter", "1"], "{out}");
    assert!(out.contains("endpoint-rejected 400"), "{out}");
    let (code, out, _) = run(cli(base, BITRIX, &["where", "--correlation", "corr-1"])).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("correlation corr-1: 1 message(s)\n"), "{out}");
    assert_eq!(row(&out, "order-1")[1], "orders.created");

    // The status endpoint answers 410: that subscription pauses.
    let status = example("samples/order-status.valid.json");
    let (code, _, err) = run(cli(base, NAV, &["publish", "orders.status", status.to_str().unwrap()])).await;
    assert_eq!(code, 0, "{err}");
    eventually("nav-gone paused", Duration::from_secs(10), async || {
        (gw.get_json(NAV, "/v1/subscriptions/nav-gone").await["state"] == "paused").then_some(())
    })
    .await;

    // subs: what is failing, at a glance.
    let (code, out, err) = run(cli(base, NAV, &["subs"])).await;
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = out.lines().next().unwrap().split("  ").filter(|c| !c.is_empty()).map(str::trim).collect();
    assert_eq!(
        header,
        [
            "SUBSCRIPTION",
            "PARTICIPANT",
            "MODE",
            "STATE",
            "PENDING",
            "IN FLIGHT",
            "BREAKER",
            "DEAD LETTERS",
            "PARKED KEYS"
        ]
    );
    // Not ordered by key: no parked-keys count.
    assert_eq!(row(&out, "nav-orders")[1..], ["nav", "push", "active", "0", "0", "closed", "1", "-"], "{out}");
    assert_eq!(row(&out, "nav-gone")[1..4], ["nav", "push", "paused"], "{out}");
    let paused_note = out.lines().find(|l| l.starts_with("nav-gone: paused since ")).expect(&out);
    assert!(paused_note.ends_with(": endpoint answered 410 Gone"), "{out}");
    assert!(out.contains("nav-orders: last failed attempt at "), "{out}");
    assert!(out.contains("endpoint-rejected 400: {\"error\":\"unknown customer C-0042\"}"), "{out}");
    // The same as JSON, as the API answers it.
    let (code, out, _) = run(cli(base, NAV, &["subs", "nav-orders", "--json"])).await;
    assert_eq!(code, 0);
    let sub: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((sub["breaker"].as_str(), sub["dead_letters"].as_u64()), (Some("closed"), Some(1)), "{sub}");

    // dead-letters: list, replay one (NAV takes it now), discard another.
    let (code, out, _) = run(cli(base, NAV, &["dead-letters", "nav-orders"])).await;
    assert_eq!(code, 0);
    assert_eq!(row(&out, "1")[1..6], ["order-1", "orders.created", "endpoint-rejected", "400", "1"], "{out}");
    assert!(out.ends_with("1 of 1 dead letter(s) of nav-orders\n"), "{out}");
    let (code, out, _) = run(cli(base, NAV, &["dead-letters", "nav-orders", "--replay", "order-1"])).await;
    assert_eq!((code, out.as_str()), (0, "replayed 1: order-1\n"));
    eventually("order-1 delivered after the replay", Duration::from_secs(10), async || {
        let m = gw.get_json(BITRIX, "/v1/messages/order-1").await;
        (m["subscriptions"][0]["state"] == "delivered").then_some(())
    })
    .await;
    run(cli(base, BITRIX, &["publish", "orders.created", order, "--id", "bad-2"])).await;
    eventually("bad-2 dead-lettered", Duration::from_secs(10), async || {
        (gw.get_json(NAV, "/v1/subscriptions/nav-orders").await["dead_letters"] == 1).then_some(())
    })
    .await;
    let (code, out, err) = run(cli(base, NAV, &["dead-letters", "nav-orders", "--replay", "nope"])).await;
    assert_eq!((code, out.as_str()), (0, "replayed 0\n"));
    assert_eq!(err, "no dead letter of nav-orders matched: nope\n");
    let (code, out, _) = run(cli(base, NAV, &["dead-letters", "nav-orders", "--discard", "--all"])).await;
    assert_eq!((code, out.as_str()), (0, "discarded 1: bad-2\n"));
    let (_, out, _) = run(cli(base, NAV, &["dead-letters", "nav-orders"])).await;
    assert_eq!(out, "0 of 0 dead letter(s) of nav-orders\n");

    // pause and resume.
    let (code, out, _) = run(cli(base, NAV, &["pause", "nav-orders"])).await;
    assert_eq!((code, row(&out, "nav-orders")[3]), (0, "paused"), "{out}");
    assert!(out.contains(": paused by nav\n"), "{out}");
    let (code, out, _) = run(cli(base, NAV, &["resume", "nav-orders"])).await;
    assert_eq!((code, row(&out, "nav-orders")[3]), (0, "active"), "{out}");

    // Problems: `title: detail` on stderr, nothing on stdout, the exit code by class.
    let invalid = example("samples/sales-order.invalid.json");
    let (code, out, err) = run(cli(base, BITRIX, &["publish", "orders.created", invalid.to_str().unwrap()])).await;
    assert_eq!((code, out.as_str()), (65, ""));
    assert!(
        err.starts_with("The data does not honour its contract: 8 violation(s) of contract sales-order v1\n"),
        "{err}"
    );
    assert!(err.contains("\n  /delivery/country: \"RUS\" does not match"), "{err}");
    let (code, _, err) = run(cli(base, "not-a-token", &["subs"])).await;
    assert_eq!((code, err.as_str()), (77, "A valid bearer token is required: unknown token\n"));
    let (code, _, err) = run(cli(base, BITRIX, &["subs", "nav-orders"])).await;
    assert_eq!((code, err.as_str()), (66, "No such resource: no subscription nav-orders\n"));
    let (code, _, err) = run(cli(base, BITRIX, &["publish", "orders.created", "/nonexistent/order.json"])).await;
    assert_eq!(code, 66, "{err}");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run(cli(&closed, NAV, &["subs"])).await;
    assert_eq!(code, 69, "{err}");
    assert!(err.starts_with(&format!("cannot reach the gateway at {closed}/v1/subscriptions: ")), "{err}");
    // Usage: a flag without what it needs, a missing argument, a URL that is none.
    for args in [&["dead-letters", "nav-orders", "--replay"][..], &["publish"], &["subs", "--url", "localhost:8080"]] {
        let (code, _, err) = run(cli(base, NAV, args)).await;
        assert_eq!(code, 64, "{args:?}: {err}");
    }
}

/// `magistral subs` counts a key-ordered subscription's parked keys and says, per key, what its
/// head is, how often it failed, why, and how many messages wait behind it.
#[tokio::test]
async fn subs_shows_the_parked_keys_of_a_key_ordered_subscription() {
    let nats = NatsServer::start();
    // The first message of order SO-7 (id `a`) is refused every time; everything else is taken.
    let erp = Receiver::scripted(|_, r| {
        if r.header("ce-id") == Some("a") { Answer::status(500).body("cannot book SO-7") } else { Answer::ok() }
    })
    .await;
    let sub = subscription(
        "nav",
        &["orders.keyed"],
        &erp.url(),
        json!({"ordering": {"key": "/order_id", "on_exhausted": "park"}, "retry_schedule": ["20ms"], "max_attempts": 2}),
    );
    let gw = Gateway::with_subscriptions(&nats.url(), vec![("keyed", sub)]).await;
    let items: Vec<Value> = [("SO-7", "a"), ("SO-8", "b"), ("SO-7", "c"), ("SO-7", "d")]
        .iter()
        .map(|(order, id)| json!({"subject": "orders.keyed", "id": id, "data": {"order_id": order}}))
        .collect();
    let r = gw.http.post(gw.url("/v1/publish")).bearer_auth(BITRIX).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let base = gw.url("");
    let base = base.trim_end_matches('/');
    // Parked once its two attempts are used up, with both later messages of SO-7 behind it.
    let out = eventually("SO-7 parked, as subs shows it", Duration::from_secs(20), async || {
        let (code, out, err) = run(cli(base, NAV, &["subs", "keyed"])).await;
        assert_eq!(code, 0, "{err}");
        out.contains("parked since").then_some(out)
    })
    .await;
    assert_eq!(row(&out, "keyed").last(), Some(&"1"), "{out}");
    let line = out.lines().find(|l| l.starts_with("keyed: key \"SO-7\" parked since ")).expect(&out);
    assert!(
        line.contains(": head a after 2 attempt(s), 2 waiting behind it: endpoint-error 500: cannot book SO-7"),
        "{out}"
    );
    // SO-8 was not held up.
    assert!(erp.received().iter().any(|r| r.header("ce-id") == Some("b")));
    // The operator skips the head: SO-7 flows again and nothing is parked any more.
    let (status, body) = gw.post_json(NAV, "/v1/subscriptions/keyed/parked-keys/skip", json!({"key": "SO-7"})).await;
    assert_eq!(status, 200, "{body}");
    let out = eventually("nothing parked", Duration::from_secs(20), async || {
        let (_, out, _) = run(cli(base, NAV, &["subs", "keyed"])).await;
        (row(&out, "keyed").last() == Some(&"0") && !out.contains("parked since")).then_some(out)
    })
    .await;
    assert!(!out.contains("key \"SO-7\""), "{out}");
    // Its later messages went after the skip, in order (a twice, b, c, d).
    erp.wait_for(5, Duration::from_secs(20)).await;
    let so7: Vec<String> = erp
        .received()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_owned))
        .filter(|id| id == "c" || id == "d")
        .collect();
    assert_eq!(so7, ["c", "d"]);
    gw.stop().await;
}

#[tokio::test]
async fn tail_prints_events_and_resumes_after_the_last_one_across_a_restart() {
    let nats = NatsServer::start();
    let adjust = |c: &mut magistral::config::Config| {
        let live = json!({"participant": "nav", "subjects": ["orders.misc"], "mode": "stream", "start": "all"});
        c.subscriptions.insert("nav-live".into(), serde_json::from_value(live).unwrap());
        c.limits.sse_heartbeat = Duration::from_millis(300);
    };
    let gw = Gateway::start_with(scenario("basic"), &nats.url(), adjust).await;
    let (addr, base) = (gw.addr, gw.url("").trim_end_matches('/').to_owned());
    for n in 1..=2 {
        gw.publish(BITRIX, "orders.misc", format!(r#"{{"n":{n}}}"#)).send().await.unwrap();
    }
    let mut tail = cli(&base, NAV, &["tail", "nav-live", "--json", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.expect("an event in time");
        serde_json::from_str(&line.unwrap().expect("a line")).unwrap()
    };
    assert_eq!(next().await, json!({"id": "1", "event": "orders.misc", "data": {"n": 1}}));
    assert_eq!(next().await["id"], "2");

    // A rolling restart: the stream ends, the gateway is away for a moment, then back on the
    // same address. With `start = "all"`, a reconnect without Last-Event-ID would begin at 1.
    gw.stop().await;
    let gw = Gateway::start_at(addr, scenario("basic"), &nats.url(), adjust).await;
    gw.publish(BITRIX, "orders.misc", r#"{"n":3}"#).send().await.unwrap();
    assert_eq!(next().await, json!({"id": "3", "event": "orders.misc", "data": {"n": 3}}));
    let status = tokio::time::timeout(Duration::from_secs(10), tail.wait()).await.unwrap().unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tail.stderr.take().unwrap(), &mut err).await.unwrap();
    assert_eq!(status.code(), Some(0), "stops after --count events; {err}");
    assert!(err.contains("tail: the gateway ended the stream; reconnecting after event 2\n"), "{err}");
    assert!(err.contains("tail: reconnected after event 2\n"), "{err}");

    // --from starts after a given event; human lines are `id  event  data`.
    let (code, out, _) = run(cli(&base, NAV, &["tail", "nav-live", "--from", "2", "--count", "1"])).await;
    assert_eq!((code, out.as_str()), (0, "3  orders.misc  {\"n\":3}\n"));
    // A subscription that does not exist (or is not this participant's) is not found.
    let (code, _, err) = run(cli(&base, NAV, &["tail", "nope"])).await;
    assert_eq!(code, 66, "{err}");
}

/// `magistral dev` in a fresh directory (its NATS store goes to `.magistral/` there), on the
/// bundled example.
fn dev(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("dev")
        .args(["--config", example("magistral.toml").to_str().unwrap()])
        .args(args)
        .current_dir(dir)
        .env("NATS_SERVER_BIN", server_bin())
        .env_remove("MAGISTRAL_CONFIG")
        .env("MAGISTRAL_LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn dev_reports_a_busy_port_before_serving_and_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let nats_port = free_port().to_string();
    let (code, _, err) = run(dev(dir.path(), &["--listen", &busy, "--nats-port", &nats_port])).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.starts_with(&format!("magistral dev: cannot listen on {busy} (")), "{err}");
    assert!(err.contains("choose another address with --listen"), "{err}");
    assert!(!err.contains("serving") && !err.contains("started"), "nothing started before: {err}");

    // The NATS port held by something that is not NATS (it never says INFO).
    let listen = format!("127.0.0.1:{}", free_port());
    let other = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) = run(dev(dir.path(), &["--listen", &listen, "--nats-port", &other])).await;
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{other} is taken by something that is not a NATS server")), "{err}");
    assert!(err.contains("--nats-port"), "{err}");
    assert!(!err.contains("serving"), "{err}");
}

/// `magistral dev --fresh` (what a walkthrough starts with): the store it keeps in
/// `.magistral/dev/jetstream` is emptied first, so the first order is `seq` 1 again; with a NATS
/// server it did not start already there, it refuses (that store is not its to empty).
#[tokio::test]
async fn dev_fresh_starts_on_an_empty_store_and_refuses_a_nats_it_did_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let http = crate::common::http_client();
    let order = std::fs::read(example("samples/sales-order.valid.json")).unwrap();
    // Two runs on the same store: the second sees the first's order (seq 2), unless --fresh.
    for (flags, seq) in [(&[][..], 1), (&[][..], 2), (&["--fresh"][..], 1)] {
        let listen = format!("127.0.0.1:{}", free_port());
        let nats_port = free_port().to_string();
        let log = dir.path().join("stderr.log");
        let mut command = dev(dir.path(), &["--listen", &listen, "--nats-port", &nats_port]);
        command.args(flags).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let mut child = command.spawn().unwrap();
        eventually("dev ready", Duration::from_secs(30), async || {
            let ready = http.get(format!("http://{listen}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
            ready.then_some(())
        })
        .await;
        let answer: Value = http
            .post(format!("http://{listen}/v1/publish/orders.created"))
            .bearer_auth("bitrix-demo-token")
            .header("content-type", "application/json")
            .body(order.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["seq"], seq, "{flags:?}: {answer}\n{}", std::fs::read_to_string(&log).unwrap());
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            stderr.contains("magistral dev: --fresh: emptied .magistral/dev/jetstream"),
            seq == 1 && !flags.is_empty(),
            "{stderr}"
        );
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("dev stops").unwrap();
    }

    let nats = NatsServer::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, _, err) =
        run(dev(dir.path(), &["--listen", &listen, "--nats-port", &nats.port().to_string(), "--fresh"])).await;
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("--fresh: a NATS server this command did not start is already at"), "{err}");
    assert!(!err.contains("serving"), "{err}");
}

#[tokio::test]
async fn dev_stops_and_says_why_when_its_nats_server_dies() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let nats_port = free_port().to_string();
    let log = dir.path().join("stderr.log");
    let mut command = dev(dir.path(), &["--listen", &listen, "--nats-port", &nats_port]);
    command.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let http = crate::common::http_client();
    eventually("dev ready", Duration::from_secs(15), async || {
        let ready = http.get(format!("http://{listen}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
        ready.then_some(())
    })
    .await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    let started = stderr.lines().find(|l| l.starts_with("magistral dev: started ")).expect(&stderr);
    assert!(started.contains(&format!(" on 127.0.0.1:{nats_port} ")), "{started}");
    let pid = started.split("(pid ").nth(1).and_then(|s| s.split(')').next()).expect(started);

    let killed = std::process::Command::new("kill").args(["-9", pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("dev exits").unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    let said = format!(
        "magistral dev: the nats-server magistral dev started (pid {pid}, 127.0.0.1:{nats_port}) exited (signal: 9 (SIGKILL)); stopping the gateway"
    );
    assert!(stderr.contains(&said), "{stderr}");
}
