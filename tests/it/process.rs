//! Whole-process tests: the built `magistral` binary, started like an operator would, driven
//! over HTTP like a participant would; `check` and `apply` as a CI job would run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::eventually;
use crate::common::gateway::{example, jetstream, stream_count};
use crate::common::nats::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_magistral");

fn magistral(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("MAGISTRAL_CONFIG")
        .output()
        .expect("run magistral")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A copy of the example in a temp dir, for tests that break or change it.
fn example_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    crate::common::gateway::copy_example(dir.path());
    let config = dir.path().join("magistral.toml");
    (dir, config)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    crate::common::write_atomically(path, text.replacen(from, to, 1));
}

#[tokio::test]
async fn the_binary_serves_the_example_and_stops_on_sigterm() {
    let nats = NatsServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let config = example("magistral.toml");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("MAGISTRAL_LISTEN", &listen)
        .env("MAGISTRAL_NATS__URL", nats.url())
        .env("MAGISTRAL_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = crate::common::http_client();
    let base = format!("http://{listen}");
    eventually("the binary ready", Duration::from_secs(15), async || {
        http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    let publish = |token: &'static str, subject: &'static str, sample: &'static str| {
        http.post(format!("{base}/v1/publish/{subject}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(std::fs::read(example(&format!("samples/{sample}"))).unwrap())
            .send()
    };
    let r = publish("bitrix-demo-token", "orders.created", "sales-order.valid.json").await.unwrap();
    assert_eq!(r.status(), 202);
    let r = publish("bitrix-demo-token", "orders.created", "sales-order.invalid.json").await.unwrap();
    assert_eq!(r.status(), 422);
    let r = publish("nav-demo-token", "orders.status", "order-status.error.json").await.unwrap();
    assert_eq!(r.status(), 202);
    let r = publish("nav-demo-token", "orders.status", "order-status.invalid.json").await.unwrap();
    assert_eq!(r.status(), 422);
    let r = publish("isimple-demo-token", "orders.status", "order-status.valid.json").await.unwrap();
    assert_eq!(r.status(), 403, "the app may not report order status");
    let js = jetstream(&nats.url()).await;
    assert_eq!(stream_count(&js, "ORDERS").await, 2);
    let spec: Value = http.get(format!("{base}/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = eventually("exit after SIGTERM", Duration::from_secs(15), async || child.try_wait().unwrap()).await;
    assert!(exit.success(), "exit after SIGTERM: {exit:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(logs.lines().any(|l| l.starts_with('{') && l.contains("magistral listening")), "JSON logs: {logs}");
    assert!(!logs.contains("demo-token"), "a token reached the logs");
}

#[test]
fn check_accepts_the_example() {
    let out = magistral(&["check", "--config", example("magistral.toml").to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// The bus lives at the repository root: `magistral check` there, with no flags, finds
/// ./magistral.toml and its streams, contracts, transforms and secrets (issue 13's layout).
#[test]
fn check_passes_at_the_repository_root_with_no_flags() {
    let out = Command::new(BIN)
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MAGISTRAL_CONFIG")
        .output()
        .expect("run magistral");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("configuration OK: 8 participant(s), 6 stream(s), 13 contract(s)"),
        "not the root configuration: {stdout}"
    );
}

/// `magistral dev` takes ./magistral.toml; elsewhere it says where to run it.
#[test]
fn dev_outside_the_repository_root_says_where_to_run_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .current_dir(empty.path())
        .env_remove("MAGISTRAL_CONFIG")
        .output()
        .expect("run magistral");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no magistral.toml here; run it at the repository root"), "{stderr}");
}

/// Each broken configuration: what to break, and what the message must name.
#[test]
fn check_names_file_and_field_of_every_problem() {
    type Breakage = (&'static str, fn(&Path), &'static [&'static str]);
    let cases: &[Breakage] = &[
        (
            "unknown key",
            |d| edit(&d.join("magistral.toml"), "require_contract = true", "require_contracts = true"),
            &["magistral.toml", "require_contracts"],
        ),
        (
            "wrongly typed value",
            |d| edit(&d.join("magistral.toml"), "max_json_depth = 32", "max_json_depth = \"deep\""),
            &["magistral.toml", "limits.max_json_depth"],
        ),
        (
            "token hash not hex",
            |d| edit(&d.join("magistral.toml"), "sha256 = \"5083", "sha256 = \"zz83"),
            &["magistral.toml", "participants.bitrix.tokens[0]", "64 hexadecimal"],
        ),
        (
            "token env var unset",
            |d| {
                edit(
                    &d.join("magistral.toml"),
                    "tokens = [{ sha256 = \"5083",
                    "tokens = [{ env = \"MAGISTRAL_TEST_UNSET_TOKEN\" }, { sha256 = \"5083",
                )
            },
            &["participants.bitrix.tokens[0]", "MAGISTRAL_TEST_UNSET_TOKEN"],
        ),
        (
            "bad permission pattern",
            |d| edit(&d.join("magistral.toml"), "publish = [\"orders.created\"]", "publish = [\"orders.>.x\"]"),
            &["participants.bitrix.publish[0]"],
        ),
        (
            "schema does not compile",
            |d| edit(&d.join("contracts/sales-order.v1.json"), "\"type\": \"object\"", "\"type\": 12"),
            &["sales-order.v1.json", "JSON Schema"],
        ),
        (
            "schema file missing",
            |d| std::fs::remove_file(d.join("contracts/order-status.v1.json")).unwrap(),
            &["magistral.toml", "contracts[1].file", "order-status.v1.json"],
        ),
        (
            "binding no stream stores",
            |d| edit(&d.join("magistral.toml"), "subjects = [\"orders.status\"]", "subjects = [\"invoices.>\"]"),
            &["contracts[1].subjects[0]", "invoices.>"],
        ),
        (
            "subscription without subscribe permission",
            |d| {
                let toml = d.join("magistral.toml");
                edit(&toml, "subscribe = [\"orders.created\", ", "subscribe = [");
                edit(&toml, "max_in_flight = 8\n", "max_in_flight = 8\nsigning_secrets = [\"whsec_c2hvcnQ=\"]\n");
            },
            &[
                "subscriptions.nav-orders.subjects[0]",
                "may not subscribe",
                "subscriptions.nav-orders.signing_secrets[0]",
            ],
        ),
        (
            "stream file not JSON",
            |d| edit(&d.join("streams/ORDERS.json"), "\"name\"", "name"),
            &["ORDERS.json", "not JSON"],
        ),
        (
            "stream file without subjects",
            |d| edit(&d.join("streams/ORDERS.json"), "\"subjects\"", "\"subjects_typo\""),
            &["ORDERS.json"],
        ),
    ];
    for (what, break_it, expected) in cases {
        let (dir, config) = example_copy();
        break_it(dir.path());
        let out = magistral(&["check", "--config", config.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: exit code; stderr: {stderr}");
        for needle in *expected {
            assert!(stderr.contains(needle), "{what}: {needle:?} not named in: {stderr}");
        }
    }
    // Serve refuses the same way, before touching the network.
    let (dir, config) = example_copy();
    edit(&dir.path().join("magistral.toml"), "max_json_depth = 32", "max_json_depth = -1");
    let out = magistral(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_json_depth"));
    // A missing file is named too.
    let out = magistral(&["check", "--config", "/nonexistent/magistral.toml"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/magistral.toml"));
}

#[tokio::test]
async fn apply_dry_run_shows_the_difference_and_apply_makes_it() {
    let nats = NatsServer::start();
    let url = nats.url();
    let env = [("MAGISTRAL_NATS__URL", url.as_str())];
    let (dir, config) = example_copy();
    let config = config.to_str().unwrap().to_owned();
    let js = jetstream(&url).await;

    let out = magistral(&["apply", "--dry-run", "--config", &config], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("+ stream ORDERS: create"));
    assert!(js.get_stream("ORDERS").await.is_err(), "dry run created the stream");

    let out = magistral(&["apply", "--config", &config], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(js.get_stream("ORDERS").await.is_ok());
    let out = magistral(&["apply", "--dry-run", "--config", &config], &env);
    assert!(String::from_utf8_lossy(&out.stdout).contains("= stream ORDERS: unchanged"));

    // 30 days → 90 days.
    edit(&dir.path().join("streams/ORDERS.json"), "2592000000000000", "7776000000000000");
    let out = magistral(&["apply", "--dry-run", "--config", &config], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("~ stream ORDERS: update") && stdout.contains("max_age"), "{stdout}");
    let max_age = |js: async_nats::jetstream::Context| async move {
        js.get_stream("ORDERS").await.unwrap().info().await.unwrap().config.max_age
    };
    assert_eq!(max_age(js.clone()).await, Duration::from_secs(30 * 86_400));
    let out = magistral(&["apply", "--config", &config], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(max_age(js.clone()).await, Duration::from_secs(90 * 86_400));

    // NATS unreachable: exit 69.
    drop(nats);
    let out = magistral(&["apply", "--config", &config], &env);
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn apply_prune_deletes_only_consumers_of_removed_subscriptions() {
    use async_nats::jetstream::consumer::pull;
    let nats = NatsServer::start();
    let url = nats.url();
    let env = [("MAGISTRAL_NATS__URL", url.as_str())];
    // The example's nav-orders subscription is configured; magistral-removed-sub is not.
    let (_dir, config) = example_copy();
    let config = config.to_str().unwrap().to_owned();
    let out = magistral(&["apply", "--config", &config], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let js = jetstream(&url).await;
    let orders = js.get_stream("ORDERS").await.unwrap();
    for name in ["magistral-nav-orders", "magistral-removed-sub", "someone-elses"] {
        orders.create_consumer(pull::Config { durable_name: Some(name.into()), ..Default::default() }).await.unwrap();
    }
    let out = magistral(&["apply", "--prune", "--dry-run", "--config", &config], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("- consumer magistral-removed-sub on ORDERS: delete"), "{stdout}");
    assert!(!stdout.contains("magistral-nav-orders") && !stdout.contains("someone-elses"), "{stdout}");
    assert!(orders.consumer_info("magistral-removed-sub").await.is_ok(), "dry run deleted");

    let out = magistral(&["apply", "--prune", "--config", &config], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(orders.consumer_info("magistral-removed-sub").await.is_err());
    assert!(orders.consumer_info("magistral-nav-orders").await.is_ok());
    assert!(orders.consumer_info("someone-elses").await.is_ok());
}

/// Two gateway processes deliver one subscription; one is killed with SIGKILL mid-delivery.
/// Every message still arrives at least once; duplicates are counted and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gateway_mid_delivery_loses_nothing() {
    use crate::common::receiver::{Answer, Receiver};
    let nats = NatsServer::start();
    let receiver = Receiver::scripted(|_, _| Answer::ok().after(Duration::from_millis(30))).await;
    let (dir, config) = example_copy();
    crate::common::point_nav_orders_at(dir.path(), &receiver.url());
    let http = crate::common::http_client();
    let start = |port: u16| {
        Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("MAGISTRAL_LISTEN", format!("127.0.0.1:{port}"))
            .env("MAGISTRAL_NATS__URL", nats.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start(port_a);
    let mut b = start(port_b);
    for port in [port_a, port_b] {
        eventually(&format!("gateway on {port} ready"), Duration::from_secs(15), async || {
            http.get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
                .then_some(())
        })
        .await;
    }
    // Both workers must have joined the consumer (each holds a pull request) before the load
    // starts.
    let orders = jetstream(&nats.url()).await.get_stream("ORDERS").await.unwrap();
    eventually("both workers pulling", Duration::from_secs(15), async || {
        let info = orders.consumer_info("magistral-nav-orders").await.ok()?;
        (info.num_waiting >= 2).then_some(())
    })
    .await;
    let order = std::fs::read(example("samples/sales-order.valid.json")).unwrap();
    for i in 0..200 {
        let r = http
            .post(format!("http://127.0.0.1:{port_a}/v1/publish/orders.created"))
            .bearer_auth("bitrix-demo-token")
            .header("content-type", "application/json")
            .header("idempotency-key", format!("order-{i}"))
            .body(order.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    receiver.wait_for(40, Duration::from_secs(20)).await;
    let delivered_by = |port: u16| {
        let http = http.clone();
        async move {
            let text = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
            text.lines()
                .filter(|l| l.starts_with("magistral_delivery_total{") && l.contains(r#"class="delivered""#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    let by_b = delivered_by(port_b).await;
    b.kill().unwrap();
    b.wait().unwrap();
    let got = eventually("200 distinct messages delivered after the kill", Duration::from_secs(30), async || {
        let got = receiver.received();
        let distinct: std::collections::HashSet<&str> = got.iter().map(|r| r.header("webhook-id").unwrap()).collect();
        let distinct = distinct.len();
        (distinct == 200).then_some(got)
    })
    .await;
    let by_a = delivered_by(port_a).await;
    assert!(by_b > 0.0, "the killed replica never delivered: the test proves nothing");
    eprintln!(
        "kill -9 of one gateway mid-delivery: 200 messages, {} deliveries, {} duplicates; acked by the killed replica before the kill: {by_b}, by the survivor: {by_a}",
        got.len(),
        got.len() - 200
    );
    let _ = a.kill();
    let _ = a.wait();
}
