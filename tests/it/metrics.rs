//! `/metrics` of the real binary against docs/metrics.md: every documented metric is served with
//! its `# HELP`, `# TYPE` and labels, every served `magistral_*`/`process_*` metric is documented,
//! configured participants' and subscriptions' series are there at zero before any traffic (and
//! a reload's new ones after it), and traffic moves the right series.
//!
//! The binary runs as a child process: the `metrics` recorder is process-global, and this way
//! no other test's gateway shares it whatever the test runner.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::common::cluster::{edit, example_copy};
use crate::common::eventually;
use crate::common::gateway::example;
use crate::common::nats::NatsServer;
use crate::common::process::GatewayProcess;
use crate::common::receiver::{Answer, Receiver};

/// One row of docs/metrics.md.
#[derive(Debug, Clone)]
pub struct Documented {
    pub name: String,
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// Every metric docs/metrics.md lists (the tables of its "The list" section).
pub fn documented() -> Vec<Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let section = text.split("\n## The list").nth(1).expect("docs/metrics.md has a `## The list` section");
    let section = section.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", metric, type, labels, meaning, ""]
        assert!(cells.len() >= 5, "docs/metrics.md: a row without metric | type | labels | meaning: {line}");
        let name = cells[1].trim_matches('`').to_owned();
        let labels = cells[3].split(',').map(|l| l.trim().trim_matches('`')).filter(|l| !l.is_empty());
        rows.push(Documented { name, kind: cells[2].to_owned(), labels: labels.map(str::to_owned).collect() });
    }
    assert!(rows.len() > 20, "docs/metrics.md: only {} metrics found; did its tables change shape?", rows.len());
    let names: BTreeSet<&str> = rows.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), rows.len(), "docs/metrics.md lists a metric twice");
    rows
}

/// One sample line of the exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub help: HashMap<String, String>,
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let mut e = Exposition::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                e.help.insert(name.to_owned(), help.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
                e.types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') {
                e.samples.push(parse_sample(line));
            }
        }
        e
    }

    /// The metric family a sample belongs to (`x_bucket` of histogram `x` is `x`).
    pub fn family<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && self.types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base;
            }
        }
        sample
    }

    /// The value of the one sample of `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {} series", found.len());
        found.first().map(|s| s.value)
    }

    /// Like [`value`](Self::value), failing with the whole family when the series is absent.
    pub fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            let family: Vec<String> =
                self.samples.iter().filter(|s| s.name == name).map(|s| format!("{:?} {}", s.labels, s.value)).collect();
            panic!("no series {name} {labels:?}; served:\n{}", family.join("\n"))
        })
    }
}

/// `name{k="v",...} value` (label values may hold escaped quotes and commas).
fn parse_sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let Some((name, rest)) = head.split_once('{') else {
        return Sample { name: head.to_owned(), labels: BTreeMap::new(), value };
    };
    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label value not quoted: {line}");
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => val.push(chars.next().unwrap_or('\\')),
                '"' => break,
                c => val.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Sample { name: name.to_owned(), labels, value }
}

async fn scrape(gw: &GatewayProcess) -> Exposition {
    let r = gw.http.get(gw.url("/metrics")).send().await.expect("the gateway answers /metrics");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers()
    );
    Exposition::parse(&r.text().await.unwrap())
}

/// Served and documented agree: names, types, HELP, label names.
fn assert_served_as_documented(served: &Exposition, docs: &[Documented]) {
    let mut problems = Vec::new();
    for d in docs {
        match served.types.get(&d.name) {
            None => problems.push(format!("{}: documented, not served", d.name)),
            Some(t) if *t != d.kind => problems.push(format!("{}: served as {t}, documented as {}", d.name, d.kind)),
            Some(_) => {}
        }
        if served.help.get(&d.name).is_none_or(|h| h.trim().is_empty()) {
            problems.push(format!("{}: no # HELP", d.name));
        }
    }
    let by_name: HashMap<&str, &Documented> = docs.iter().map(|d| (d.name.as_str(), d)).collect();
    for name in served.types.keys() {
        if !served.help.contains_key(name) {
            problems.push(format!("{name}: served without # HELP"));
        }
        if (name.starts_with("magistral_") || name.starts_with("process_")) && !by_name.contains_key(name.as_str()) {
            problems.push(format!("{name}: served, not in docs/metrics.md"));
        }
    }
    for s in &served.samples {
        let family = served.family(&s.name);
        if !served.types.contains_key(family) {
            problems.push(format!("{}: a sample without # TYPE", s.name));
            continue;
        }
        let Some(d) = by_name.get(family) else { continue };
        let labels: BTreeSet<String> = s.labels.keys().filter(|k| *k != "le").cloned().collect();
        if labels != d.labels {
            problems.push(format!("{family}: served with labels {labels:?}, documented {:?}", d.labels));
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "/metrics and docs/metrics.md differ:\n{}", problems.join("\n"));
}

fn publish(gw: &GatewayProcess, token: &str, subject: &str, sample: &str) -> reqwest::RequestBuilder {
    gw.http
        .post(gw.url(&format!("/v1/publish/{subject}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(std::fs::read(example(&format!("samples/{sample}"))).unwrap())
}

#[tokio::test]
async fn metrics_are_served_as_documented_and_exist_from_the_start() {
    let docs = documented();
    let nats = NatsServer::start();
    // nav-orders: the first delivery is taken, every later one refused (a dead letter).
    let receiver = Receiver::scripted(|n, _| if n == 0 { Answer::ok() } else { Answer::status(422) }).await;
    let (dir, config) = example_copy();
    crate::common::point_nav_orders_at(dir.path(), &receiver.url());
    let gw = GatewayProcess::start(&config, &nats.url(), &[("MAGISTRAL_RELOAD_INTERVAL", "200ms")]).await;

    // --- Before any traffic -----------------------------------------------------------------
    let m = scrape(&gw).await;
    assert_served_as_documented(&m, &docs);
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(m.expect(name, labels), 0.0, "{name} {labels:?} before any traffic");
    };
    for outcome in ["stored", "duplicate", "nats-unavailable", "publish-timeout"] {
        zero("magistral_publish_total", &[("stream", "ORDERS"), ("participant", "bitrix"), ("outcome", outcome)]);
    }
    zero("magistral_publish_total", &[("stream", ""), ("participant", "bitrix"), ("outcome", "overloaded")]);
    assert_eq!(
        m.value("magistral_publish_total", &[("stream", "CALLS"), ("participant", "bitrix"), ("outcome", "stored")]),
        None,
        "bitrix may not publish into CALLS: no series for it"
    );
    zero("magistral_rate_limited_total", &[("participant", "nav"), ("reason", "publish-rate")]);
    for class in ["delivered", "endpoint-rejected", "endpoint-gone", "endpoint-unreachable", "skipped"] {
        zero("magistral_delivery_total", &[("subscription", "nav-orders"), ("class", class)]);
    }
    zero("magistral_dead_letters_total", &[("subscription", "nav-orders")]);
    zero("magistral_dead_letters", &[("subscription", "nav-orders")]);
    zero("magistral_delivery_lag_seconds_count", &[("subscription", "nav-orders")]);
    assert_eq!(m.expect("magistral_breaker_state", &[("subscription", "nav-orders"), ("state", "closed")]), 1.0);
    zero("magistral_breaker_state", &[("subscription", "nav-orders"), ("state", "open")]);
    zero("magistral_breaker_state", &[("subscription", "nav-orders"), ("state", "half-open")]);
    for sub in ["nav-orders", "docsinbox-edi"] {
        zero("magistral_subscription_pending", &[("subscription", sub)]);
        zero("magistral_subscription_in_flight", &[("subscription", sub)]);
        zero("magistral_subscription_paused", &[("subscription", sub)]);
    }
    zero("magistral_pull_fetched_total", &[("subscription", "docsinbox-edi")]);
    zero("magistral_event_streams", &[("subscription", "apps-prices")]);
    zero("magistral_request_total", &[("participant", "bitrix"), ("outcome", "answered")]);
    zero("magistral_request_total", &[("participant", "bitrix"), ("outcome", "no-responders")]);
    zero("magistral_responder_requests_total", &[("responder", "nav-queries"), ("outcome", "error")]);
    zero("magistral_inbound_total", &[("route", "bitrix-deals"), ("outcome", "accepted")]);
    zero("magistral_inbound_ignored_total", &[("route", "bc-items")]);
    zero("magistral_config_reloads_total", &[("outcome", "applied")]);
    zero("magistral_config_reloads_total", &[("outcome", "refused")]);
    zero("magistral_publish_in_flight", &[]);
    assert_eq!(m.expect("magistral_nats_connected", &[]), 1.0);
    assert_eq!(m.expect("magistral_ready", &[]), 1.0);
    let build = m.samples.iter().find(|s| s.name == "magistral_build_info").expect("magistral_build_info");
    assert_eq!(build.value, 1.0);
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    let commit = &build.labels["commit"];
    assert!(commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{commit}");
    assert!(m.expect("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.expect("process_open_fds", &[]) > 0.0);
    let started = m.expect("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 600.0..=now + 5.0).contains(&started), "start time {started}, now {now}");

    // --- Traffic: stored, refused, a delivery, a dead letter --------------------------------
    assert_eq!(
        publish(&gw, "bitrix-demo-token", "orders.created", "sales-order.valid.json").send().await.unwrap().status(),
        202
    );
    receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        publish(&gw, "bitrix-demo-token", "orders.created", "sales-order.invalid.json").send().await.unwrap().status(),
        422
    );
    assert_eq!(
        publish(&gw, "bitrix-demo-token", "orders.created", "sales-order.valid.json").send().await.unwrap().status(),
        202
    );
    let m = eventually("the dead letter counted", Duration::from_secs(20), async || {
        let m = scrape(&gw).await;
        // The gauge is read from JetStream on a scrape and can show the stored dead letter
        // before the worker has counted it: wait for both.
        let counted = m.expect("magistral_dead_letters_total", &[("subscription", "nav-orders")]) == 1.0;
        (m.expect("magistral_dead_letters", &[("subscription", "nav-orders")]) == 1.0 && counted).then_some(m)
    })
    .await;
    let stored = [("stream", "ORDERS"), ("participant", "bitrix"), ("outcome", "stored")];
    assert_eq!(m.expect("magistral_publish_total", &stored), 2.0);
    assert_eq!(
        m.expect(
            "magistral_publish_total",
            &[("stream", ""), ("participant", "bitrix"), ("outcome", "contract-violation")]
        ),
        1.0
    );
    assert_eq!(m.expect("magistral_publish_duration_seconds_count", &[("stream", "ORDERS")]), 2.0);
    let nav = |class| [("subscription", "nav-orders"), ("class", class)];
    assert_eq!(m.expect("magistral_delivery_total", &nav("delivered")), 1.0);
    assert_eq!(m.expect("magistral_delivery_total", &nav("endpoint-rejected")), 1.0);
    assert_eq!(m.expect("magistral_dead_letters_total", &[("subscription", "nav-orders")]), 1.0);
    assert_eq!(m.expect("magistral_delivery_lag_seconds_count", &[("subscription", "nav-orders")]), 1.0);
    assert_eq!(m.expect("magistral_breaker_state", &[("subscription", "nav-orders"), ("state", "closed")]), 1.0);
    assert_served_as_documented(&m, &docs);

    // --- A reload adds a subscription: its series are there at zero -------------------------
    let toml = std::fs::read_to_string(&config).unwrap();
    crate::common::write_atomically(
        &config,
        format!(
            "{toml}\n[subscriptions.metrics-added]\nparticipant = \"docsinbox\"\nsubjects = [\"edi.outbound.*\"]\nmode = \"pull\"\n"
        ),
    );
    let m = eventually("the reload applied", Duration::from_secs(20), async || {
        let m = scrape(&gw).await;
        (m.value("magistral_config_reloads_total", &[("outcome", "applied")]) == Some(1.0)).then_some(m)
    })
    .await;
    assert_eq!(m.expect("magistral_subscription_pending", &[("subscription", "metrics-added")]), 0.0);
    assert_eq!(m.expect("magistral_pull_fetched_total", &[("subscription", "metrics-added")]), 0.0);

    // A refused reload counts too (the series was there at 0, so `increase` sees it).
    edit(&config, "[subscriptions.metrics-added]", "[subscriptions.metrics-added]\nno_such_key = 1");
    eventually("the refusal counted", Duration::from_secs(20), async || {
        let m = scrape(&gw).await;
        (m.value("magistral_config_reloads_total", &[("outcome", "refused")]) == Some(1.0)).then_some(())
    })
    .await;
    drop(dir);
}

#[test]
fn the_exposition_parser_reads_escaped_label_values() {
    let e = Exposition::parse(
        "# HELP x_seconds Time.\n# TYPE x_seconds histogram\n\
         x_seconds_bucket{a=\"q\\\"u,o\",le=\"+Inf\"} 3\nx_seconds_sum{a=\"q\\\"u,o\"} 1.5\nup 1\n",
    );
    assert_eq!(e.samples[0].labels["a"], "q\"u,o");
    assert_eq!(e.samples[0].labels["le"], "+Inf");
    assert_eq!(e.family("x_seconds_bucket"), "x_seconds");
    assert_eq!(e.family("up"), "up");
    assert_eq!(e.value("x_seconds_sum", &[("a", "q\"u,o")]), Some(1.5));
}

/// A consumer NATS refuses is not silent: nats-server allowing 2 consumers per stream and three
/// push subscriptions on ORDERS. The refused subscription is logged at error with its name and
/// the server's answer (10026) and flagged in `magistral_subscription_consumer_refused`; once
/// the server allows more (restarted with the limit lifted), the worker's retries create the
/// consumer, the subscription delivers and the flag goes back to 0.
#[tokio::test]
async fn a_consumer_refused_by_the_servers_limit_is_logged_and_flagged_until_created() {
    let mut nats = NatsServer::start_with_config("jetstream { limits { default_max_consumers: 2 } }\n");
    let receiver = Receiver::start().await;
    let dir = crate::common::gateway::orders_bus_dir();
    let config = dir.path().join("magistral.toml");
    let mut text = format!(
        "streams_dir = \"streams\"\ncontracts_dir = \"contracts\"\nrequire_contract = false\n\n\
         [participants.bitrix]\ntokens = [{{ sha256 = \"{}\" }}]\npublish = [\"orders.>\"]\nsubscribe = [\"orders.>\"]\n",
        crate::common::gateway::token_sha256(crate::common::gateway::BITRIX)
    );
    let subs = ["cap-a", "cap-b", "cap-c"];
    for sub in subs {
        text.push_str(&format!(
            "\n[subscriptions.{sub}]\nparticipant = \"bitrix\"\nsubjects = [\"orders.{sub}\"]\nendpoint = \"{}/{sub}\"\n",
            receiver.url()
        ));
    }
    std::fs::write(&config, text).unwrap();
    let gw = GatewayProcess::start(&config, &nats.url(), &[]).await;

    // Three consumers wanted on ORDERS (and on MAGISTRAL_REPLAY), two allowed on each.
    let js = crate::common::gateway::jetstream(&nats.url()).await;
    let orders = js.get_stream("ORDERS").await.unwrap();
    let mut names: Vec<String> = Vec::new();
    let mut list = orders.consumer_names();
    while let Some(name) = futures::StreamExt::next(&mut list).await {
        names.push(name.unwrap());
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let refused: Vec<&str> = subs.iter().copied().filter(|s| !names.iter().any(|n| n.contains(s))).collect();
    assert_eq!(refused.len(), 1, "consumers {names:?}");
    let refused = refused[0];

    let log_lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(gw.stderr_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let errors: Vec<serde_json::Value> =
        log_lines().into_iter().filter(|l| l["level"] == "ERROR" && l["stream"] == "ORDERS").collect();
    assert_eq!(errors.len(), 1, "one error line for the refused consumer on ORDERS:\n{}", gw.stderr_tail(4000));
    let line = errors[0].to_string();
    assert_eq!(errors[0]["subscription"], refused, "{line}");
    assert!(line.contains("maximum consumers limit reached") && line.contains("10026"), "{line}");
    assert!(line.contains("default_max_consumers"), "the line says what to change: {line}");

    let m = scrape(&gw).await;
    assert_eq!(m.expect("magistral_subscription_consumer_refused", &[("subscription", refused)]), 1.0);
    for sub in subs.iter().filter(|s| **s != refused) {
        // ORDERS took theirs; MAGISTRAL_REPLAY may have refused one of them: flagged iff logged.
        let logged = log_lines().iter().any(|l| l["level"] == "ERROR" && l["subscription"] == *sub);
        let flag = m.expect("magistral_subscription_consumer_refused", &[("subscription", sub)]);
        assert_eq!(flag, if logged { 1.0 } else { 0.0 }, "{sub}");
    }

    // The operator lifts the limit; the refused subscription starts delivering by itself.
    nats.rewrite_config("jetstream { limits { default_max_consumers: -1 } }\n");
    nats.restart();
    let subject = format!("orders.{refused}");
    eventually("the refused subscription delivers once the limit is lifted", Duration::from_secs(30), async || {
        let answer = gw
            .http
            .post(gw.url(&format!("/v1/publish/{subject}")))
            .bearer_auth(crate::common::gateway::BITRIX)
            .header("content-type", "application/json")
            .body(r#"{"n":1}"#)
            .send()
            .await
            .ok()?;
        if answer.status() != 202 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        receiver.received().iter().any(|r| r.path.ends_with(refused)).then_some(())
    })
    .await;
    eventually("the flag goes back to 0", Duration::from_secs(15), async || {
        let m = scrape(&gw).await;
        (m.expect("magistral_subscription_consumer_refused", &[("subscription", refused)]) == 0.0).then_some(())
    })
    .await;
}
