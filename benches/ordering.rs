//! Key-ordered delivery benchmark (issue 14, "Performance"); results in `docs/benchmarks.md`,
//! section "Ordered by key". Run with `BENCHES=ordering scripts/bench` or
//! `cargo bench --bench ordering` (`NATS_SERVER_BIN` optional).
//!
//! One run, one nats-server (started here, file storage in a temp dir), and in this process
//! two tokio runtimes: `gw` (the gateway, `magistral::run`, a fresh instance per scenario) and
//! `peer` (the receiver: axum, answers 200 after `BENCH_ORDERING_LATENCY_MS`, 5 ms).
//!
//! Each scenario pre-fills a subject with messages spread round-robin over
//! `BENCH_ORDERING_KEYS` (64) keys (`{"key": "k-<n>", "n": <i>}`), starts a gateway whose one
//! push subscription drains it (`start = "all"`), and measures from the first delivery to the
//! last: deliveries per second and CPU (gateway threads, nats-server) per delivery. Scenarios,
//! all with the same `max_in_flight` (`BENCH_ORDERING_IN_FLIGHT`, 64):
//! - `unordered`: `BENCH_ORDERING_MESSAGES` (20000) messages;
//! - `key-ordered`: `ordering = { key = "/key" }`, the same count; the receiver also checks that
//!   each key's messages arrive in order, and counts violations;
//! - `strict`: `ordered = true`. One delivery at a time takes about the receiver's latency
//!   each, so it drains `BENCH_ORDERING_STRICT_MESSAGES` (2000) only; the rate is comparable.

#[path = "support/env.rs"]
mod env;
use env::env_or;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use async_nats::jetstream;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use magistral::catalog::Catalog;
use magistral::config::{Config, ParticipantConfig, SubscriptionConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

#[path = "../tests/it/common/nats.rs"]
mod nats;
use nats::NatsServer;

const STREAM: &str = "BENCH";
const PARTICIPANT: &str = "bench";
const TOKEN: &str = "bench-token-0000000001";

struct Settings {
    messages: usize,
    strict_messages: usize,
    keys: usize,
    in_flight: usize,
    latency: Duration,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            messages: env_or("BENCH_ORDERING_MESSAGES", 20_000)?,
            strict_messages: env_or("BENCH_ORDERING_STRICT_MESSAGES", 2_000)?,
            keys: env_or("BENCH_ORDERING_KEYS", 64)?,
            in_flight: env_or("BENCH_ORDERING_IN_FLIGHT", 64)?,
            latency: Duration::from_millis(env_or("BENCH_ORDERING_LATENCY_MS", 5)?),
        })
    }
}

// ---------------------------------------------------------------------------------------
// CPU, per thread name (`gw`, `peer`) and of nats-server, from schedstat (ns on CPU)

#[derive(Clone, Copy, Default)]
struct Cpu {
    gateway: u64,
    peer: u64,
    nats: u64,
}

fn task_ns(task_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(task_dir.join("schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn sample_cpu(nats_pid: u32) -> Cpu {
    let mut cpu = Cpu::default();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let ns = task_ns(&task.path()).unwrap_or(0);
            match std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim() {
                "gw" => cpu.gateway += ns,
                "peer" => cpu.peer += ns,
                _ => {}
            }
        }
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{nats_pid}/task")) {
        cpu.nats = tasks.flatten().filter_map(|t| task_ns(&t.path())).sum();
    }
    cpu
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------
// The receiver (runtime `peer`)

#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// Per key, the last message number seen; deliveries that went backwards.
    last: Mutex<HashMap<String, u64>>,
    out_of_order: AtomicU64,
    latency: Mutex<Duration>,
}

async fn hook(State(r): State<Arc<Received>>, body: Bytes) -> StatusCode {
    let latency = *r.latency.lock().expect("lock");
    tokio::time::sleep(latency).await;
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && let (Some(key), Some(n)) = (v["key"].as_str(), v["n"].as_u64())
        && let Ok(mut last) = r.last.lock()
    {
        let before = last.insert(key.to_owned(), n);
        if before.is_some_and(|b| b > n) {
            r.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
    }
    r.count.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

fn start_receiver(peer: &Handle, received: Arc<Received>) -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    peer.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("listener");
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(received);
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------
// The gateway (runtime `gw`)

struct Files {
    dir: tempfile::TempDir,
}

fn stream_json() -> Value {
    json!({
        "name": STREAM, "subjects": ["bench.>"], "retention": "limits", "storage": "file",
        "num_replicas": 1, "discard": "old", "duplicate_window": 120_000_000_000u64,
    })
}

impl Files {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("magistral-bench-ordering-").tempdir()?;
        std::fs::create_dir(dir.path().join("streams"))?;
        std::fs::create_dir(dir.path().join("contracts"))?;
        std::fs::write(dir.path().join("streams/BENCH.json"), serde_json::to_vec_pretty(&stream_json())?)?;
        Ok(Self { dir })
    }
}

fn config(nats_url: &str, files: &Files, name: &str, sub: SubscriptionConfig) -> Config {
    let mut config = Config::default();
    config.nats.url = nats_url.to_owned();
    config.streams_dir = files.dir.path().join("streams");
    config.contracts_dir = files.dir.path().join("contracts");
    config.require_contract = false;
    config.limits.drain_timeout = Duration::from_secs(3);
    config.reload_interval = Duration::ZERO;
    config.participants.insert(
        PARTICIPANT.into(),
        serde_json::from_value::<ParticipantConfig>(json!({
            "tokens": [{ "sha256": hex::encode(magistral::participants::hash_token(TOKEN)) }],
            "publish": ["bench.>"],
            "subscribe": ["bench.>"],
        }))
        .expect("participant"),
    );
    config.subscriptions.insert(name.to_owned(), sub);
    config
}

struct Gateway {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), magistral::RunError>>,
}

impl Gateway {
    fn start(gw: &Handle, config: Config) -> anyhow::Result<Gateway> {
        let catalog = Catalog::load(&config).map_err(|e| anyhow!("{e}"))?;
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = gw.spawn(async move {
            let listener = TcpListener::from_std(listener).map_err(magistral::RunError::Serve)?;
            magistral::run(config, catalog, listener, stop).await
        });
        Ok(Gateway { shutdown, task })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

// ---------------------------------------------------------------------------------------

struct Outcome {
    name: &'static str,
    messages: usize,
    per_sec: f64,
    gateway_us: f64,
    nats_us: f64,
    out_of_order: u64,
    max_in_flight: usize,
}

struct Bench {
    s: Settings,
    nats_url: String,
    nats_pid: u32,
    gw: Handle,
    js: jetstream::Context,
    files: Files,
    receiver: SocketAddr,
    received: Arc<Received>,
}

impl Bench {
    async fn prefill(&self, subject: &str, n: usize) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(1000);
        for i in 0..n {
            let body = json!({"key": format!("k-{}", i % self.s.keys), "n": i / self.s.keys, "pad": "x".repeat(200)});
            acks.push(self.js.publish(subject.to_owned(), serde_json::to_vec(&body)?.into()).await?);
            if acks.len() == 1000 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    async fn run(&self, name: &'static str, n: usize, extra: Value) -> anyhow::Result<Outcome> {
        let subject = format!("bench.ordering.{name}");
        self.prefill(&subject, n).await?;
        self.received.count.store(0, Ordering::SeqCst);
        self.received.out_of_order.store(0, Ordering::SeqCst);
        self.received.last.lock().expect("lock").clear();
        let mut sub = json!({
            "participant": PARTICIPANT,
            "subjects": [subject],
            "endpoint": format!("http://{}/hook", self.receiver),
            "max_in_flight": self.s.in_flight,
            "start": "all",
            "timeout": "10s",
            "breaker_failures": 1000,
        });
        if let (Some(b), Value::Object(extra)) = (sub.as_object_mut(), extra) {
            b.extend(extra);
        }
        let sub: SubscriptionConfig = serde_json::from_value(sub)?;
        let gateway = Gateway::start(&self.gw, config(&self.nats_url, &self.files, name, sub))?;
        let count = || self.received.count.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(600);
        while count() == 0 {
            if Instant::now() > deadline {
                bail!("{name}: nothing delivered");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let (t0, c0, cpu0) = (Instant::now(), count(), sample_cpu(self.nats_pid));
        while (count() as usize) < n {
            if Instant::now() > deadline {
                bail!("{name}: only {} of {n} delivered", count());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (wall, cpu1) = (t0.elapsed(), sample_cpu(self.nats_pid));
        let done = (n as u64 - c0) as f64;
        gateway.stop().await;
        self.js.get_stream(STREAM).await?.purge().filter(&subject).await?;
        Ok(Outcome {
            name,
            messages: n,
            per_sec: done / wall.as_secs_f64(),
            gateway_us: cpu1.gateway.saturating_sub(cpu0.gateway) as f64 / 1000.0 / done,
            nats_us: cpu1.nats.saturating_sub(cpu0.nats) as f64 / 1000.0 / done,
            out_of_order: self.received.out_of_order.load(Ordering::Relaxed),
            max_in_flight: if name == "strict" { 1 } else { self.s.in_flight },
        })
    }
}

fn runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()?)
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Settings::from_env()?;
    let nats = NatsServer::start();
    let version = nats.version();
    let (nats_pid, nats_url) = (nats.pid(), nats.url());
    let gw_rt = runtime(2, "gw")?;
    let peer_rt = runtime(1, "peer")?;
    let lg_rt = runtime(1, "lg")?;
    let received = Arc::new(Received::default());
    *received.latency.lock().expect("lock") = s.latency;
    let receiver = start_receiver(peer_rt.handle(), received.clone())?;
    let load_before = load_average();
    let out = lg_rt.block_on(async {
        let client = async_nats::connect(&nats_url).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(serde_json::from_value::<jetstream::stream::Config>(stream_json())?).await?;
        let b = Bench {
            s,
            nats_url: nats_url.clone(),
            nats_pid,
            gw: gw_rt.handle().clone(),
            js,
            files: Files::new()?,
            receiver,
            received,
        };
        eprintln!(
            "magistral ordering benchmark: {version}; {} keys, max_in_flight {}, receiver latency {:?}; load {}",
            b.s.keys,
            b.s.in_flight,
            b.s.latency,
            load_average()
        );
        let unordered = b.run("unordered", b.s.messages, json!({})).await?;
        let keyed = b.run("key-ordered", b.s.messages, json!({"ordering": {"key": "/key"}})).await?;
        let strict = b.run("strict", b.s.strict_messages, json!({"ordered": true})).await?;
        anyhow::Ok(vec![unordered, keyed, strict])
    })?;
    println!(
        "load average before: {load_before}; after: {}\n\n\
         | subscription | max_in_flight | messages | deliveries/s | vs unordered | gateway µs/delivery | nats-server µs/delivery | out of order per key |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        load_average()
    );
    let base = out[0].per_sec;
    for o in &out {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {} |",
            o.name,
            o.max_in_flight,
            o.messages,
            o.per_sec,
            o.per_sec / base,
            o.gateway_us,
            o.nats_us,
            o.out_of_order
        );
    }
    println!(
        "\nkey-ordered / strict: {:.1}x; key-ordered / unordered: {:.2}x",
        out[1].per_sec / out[2].per_sec,
        out[1].per_sec / base
    );
    Ok(())
}
