//! Publish benchmark (issue 2, "Performance"); results and how to read them are in
//! `docs/benchmarks.md`. Run with `scripts/bench` (or `cargo bench --bench publish` with
//! `NATS_SERVER_BIN` set).
//!
//! One run, one nats-server (started here: `-js`, file storage in a temp dir, killed at the
//! end), and in the same process:
//! - the gateway (`magistral::run`) on its own tokio runtime (threads named `gw`), with the
//!   example's streams (the orders go to `ORDERS`) and `sales-order` v1 contract,
//!   `require_contract = true`, otherwise the default configuration (message tracking on);
//!   the process uses mimalloc, as the `magistral` binary does;
//! - a bare axum handler on that same runtime: same route shape, reads the body, answers 202;
//! - the load generator on a second runtime (threads named `lg`): one raw hyper HTTP/1.1
//!   keep-alive connection per worker, one request in flight per connection (closed loop),
//!   so "concurrency" = connections = requests in flight;
//! - direct async-nats JetStream publishing from the `lg` runtime with the same number of
//!   PubAcks outstanding (N workers, each publish → await its ack), the limit.
//!
//! Scenarios (each: warm-up, then a measured window; the stream is purged before each):
//! - (a) `POST /v1/publish/orders.created` through the gateway, (c) the bare handler and
//!   (b) direct publishing, at each level of `BENCH_CONCURRENCY`;
//! - (d) `POST /v1/publish` with `BENCH_BATCH_SIZE` items per batch vs direct pipelined
//!   publishing of the same count (send all, then await all acks), at each level of
//!   `BENCH_BATCH_CONCURRENCY`.
//! - nats-server's CPU per message, where the gateway's differs from direct publishing: at
//!   each level of `BENCH_CONCURRENCY`, direct publishing again (e) with the headers the
//!   gateway stores with an order (built by the gateway's own `StoredAttributes`, with the
//!   source, type and dataschema read back from the smoke message it stored), and (f) both
//!   direct variants paced at the messages/s the gateway reached in the same round, so "fewer
//!   messages per socket read" and "bytes of headers" show apart.
//!
//! CPU time per message is read per thread from `/proc/self/task/*/schedstat` (ns on CPU),
//! split by runtime (`gw`, `lg`), and from `/proc/<nats-server>/task/*/schedstat`.
//!
//! Environment (all optional):
//! - `NATS_SERVER_BIN` (default `.tools/bin/nats-server`)
//! - `BENCH_WARMUP_SECS` (1), `BENCH_SECS` (5): warm-up and measured window per scenario
//! - `BENCH_CONCURRENCY` ("1,16,64,256"), `BENCH_BATCH_CONCURRENCY` ("1,4,16"),
//!   `BENCH_BATCH_SIZE` (100)
//! - `BENCH_ROUNDS` (1): repeat every measurement, interleaved, and report the round with
//!   the median throughput (all rounds' throughputs are listed too)
//! - `BENCH_QUIET_RETRIES` (3): before each measurement wait (up to 2 min) for the machine
//!   to be quiet, and measure again when other processes took > 0.15 cores during the
//!   window (the machine may be shared); the CPU table shows what remained. 0 disables both.
//! - `BENCH_TRACKING` (the config default, on): `off` runs the gateway without the
//!   message-tracking index (one extra core NATS publish per stored message)
//! - `BENCH_GATEWAY_THREADS` (2), `BENCH_CLIENT_THREADS` (2): worker threads per runtime
//! - `BENCH_SCENARIOS` ("single,batch"), `BENCH_PARTS` ("gateway,bare,direct,headers,paced"):
//!   what to run (a part left out shows as 0; meant for profiling one part alone); `headers`
//!   and `paced` are (e) and (f) above, single publish only, `paced` needs `gateway`

#[path = "support/env.rs"]
mod env;
use env::{env_list, env_or};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use magistral::catalog::Catalog;
use magistral::config::{Config, ContractBinding, ParticipantConfig};
use magistral::publish::cloudevents::StoredAttributes;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

// The `magistral` binary runs on mimalloc (src/main.rs); measure with the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBJECT: &str = "orders.created";
const STREAM: &str = "ORDERS";
const TOKEN: &str = "bench-token-0123456789abcdef";
const TARGET_PAYLOAD: usize = 1024;

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    warmup: Duration,
    duration: Duration,
    levels: Vec<usize>,
    batch_levels: Vec<usize>,
    batch_size: usize,
    rounds: usize,
    /// `system.tracking` for the gateway; `None` keeps the default (on).
    tracking: Option<bool>,
    quiet_retries: usize,
    gateway_threads: usize,
    client_threads: usize,
    single: bool,
    batch: bool,
    /// Which of gateway/bare/direct to run (for profiling one of them alone).
    parts: Vec<String>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let scenarios = std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| "single,batch".into());
        Ok(Self {
            warmup: Duration::from_secs_f64(env_or("BENCH_WARMUP_SECS", 1.0)?),
            duration: Duration::from_secs_f64(env_or("BENCH_SECS", 5.0)?),
            levels: env_list("BENCH_CONCURRENCY", "1,16,64,256")?,
            batch_levels: env_list("BENCH_BATCH_CONCURRENCY", "1,4,16")?,
            batch_size: env_or("BENCH_BATCH_SIZE", 100)?,
            rounds: env_or::<usize>("BENCH_ROUNDS", 1)?.max(1),
            quiet_retries: env_or("BENCH_QUIET_RETRIES", 3)?,
            tracking: match std::env::var("BENCH_TRACKING").as_deref() {
                Ok("0" | "false" | "off") => Some(false),
                Ok("1" | "true" | "on") => Some(true),
                Ok(other) => bail!("BENCH_TRACKING={other:?}: use on or off"),
                Err(_) => None,
            },
            gateway_threads: env_or("BENCH_GATEWAY_THREADS", 2)?,
            client_threads: env_or("BENCH_CLIENT_THREADS", 2)?,
            single: scenarios.split(',').any(|s| s.trim() == "single"),
            batch: scenarios.split(',').any(|s| s.trim() == "batch"),
            parts: std::env::var("BENCH_PARTS")
                .unwrap_or_else(|_| "gateway,bare,direct,headers,paced".into())
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// nats-server: the integration tests' helper (a dynamic port, a temp store, killed on drop)

#[path = "../tests/it/common/nats.rs"]
mod nats;
use nats::NatsServer;

// ---------------------------------------------------------------------------------------
// CPU accounting (ns on CPU, per thread, from schedstat)

#[derive(Default, Clone, Copy)]
struct Cpu {
    gateway: u64,
    client: u64,
    other: u64,
    nats: u64,
    /// Busy time of the whole machine (all processes), from `/proc/stat`.
    machine: u64,
}

fn task_ns(task_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(task_dir.join("schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn sample_cpu(nats_pid: u32) -> Cpu {
    let mut cpu = Cpu::default();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let ns = task_ns(&path).unwrap_or(0);
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            match comm.trim() {
                "gw" => cpu.gateway += ns,
                "lg" => cpu.client += ns,
                _ => cpu.other += ns,
            }
        }
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{nats_pid}/task")) {
        cpu.nats = tasks.flatten().filter_map(|t| task_ns(&t.path())).sum();
    }
    cpu.machine = machine_busy_ns();
    cpu
}

/// Non-idle CPU time of the whole machine, in ns (`/proc/stat` counts in USER_HZ = 100/s).
fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0 };
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * 10_000_000
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            gateway: self.gateway.saturating_sub(o.gateway),
            client: self.client.saturating_sub(o.client),
            other: self.other.saturating_sub(o.other),
            nats: self.nats.saturating_sub(o.nats),
            machine: self.machine.saturating_sub(o.machine),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurement

#[derive(Clone, Copy)]
struct Window {
    /// Measured requests start at or after this and finish at or before `end`.
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct WorkerStats {
    /// Latencies (µs) of successful operations inside the window.
    latencies: Vec<u32>,
    /// Failed operations inside the window.
    errors: u64,
    /// Every successful operation, warm-up included (checked against the stream).
    total_ok: u64,
    first_error: Option<String>,
}

impl WorkerStats {
    fn record(&mut self, window: Window, t0: Instant, outcome: Result<(), String>) {
        let t1 = Instant::now();
        let inside = t0 >= window.start && t1 <= window.end;
        match outcome {
            Ok(()) => {
                self.total_ok += 1;
                if inside {
                    self.latencies.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
                }
            }
            Err(e) => {
                if inside {
                    self.errors += 1;
                }
                self.first_error.get_or_insert(e);
            }
        }
    }
}

#[derive(Default)]
struct Measured {
    /// Operations (requests, publishes or batches) per second.
    ops_per_sec: f64,
    p50_us: u32,
    p99_us: u32,
    errors: u64,
    total_ok: u64,
    cpu: Cpu,
    ops: u64,
    first_error: Option<String>,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Measured {
    /// Cores used by processes other than this one and nats-server during the window.
    fn foreign_cores(&self, wall: Duration) -> f64 {
        let ours = self.cpu.gateway + self.cpu.client + self.cpu.other + self.cpu.nats;
        self.cpu.machine.saturating_sub(ours) as f64 / wall.as_nanos() as f64
    }
}

/// [`measure_once`], repeated (up to `BENCH_QUIET_RETRIES` times) while other processes on
/// the machine took more than 0.15 cores during the window. `total_ok` sums every attempt.
async fn measure<F, Fut>(s: &Settings, nats_pid: u32, workers: usize, worker: F) -> Measured
where
    F: Fn(Window) -> Fut,
    Fut: Future<Output = WorkerStats> + Send + 'static,
{
    let mut total_ok = 0;
    let mut attempt = 0;
    loop {
        if s.quiet_retries > 0 {
            wait_quiet(Duration::from_secs(120)).await;
        }
        let mut m = measure_once(s, nats_pid, workers, &worker).await;
        total_ok += m.total_ok;
        let foreign = m.foreign_cores(s.duration);
        if foreign <= 0.15 || attempt >= s.quiet_retries {
            m.total_ok = total_ok;
            return m;
        }
        attempt += 1;
        eprintln!(
            "  other processes used {foreign:.2} cores during the window; measuring again ({attempt}/{})",
            s.quiet_retries
        );
    }
}

/// Waits (at most `max`) until the whole machine has been under 0.15 busy cores for two
/// consecutive seconds, so a measurement does not start in the middle of someone's build.
async fn wait_quiet(max: Duration) {
    let started = Instant::now();
    let mut quiet = 0;
    while quiet < 2 {
        let before = machine_busy_ns();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = machine_busy_ns().saturating_sub(before) as f64 / 1e9;
        quiet = if busy < 0.15 { quiet + 1 } else { 0 };
        if started.elapsed() > max {
            eprintln!("  the machine did not become quiet within {max:?}; measuring anyway");
            return;
        }
    }
}

/// Runs `workers` copies of `worker` for warm-up + window, sampling CPU over the window.
async fn measure_once<F, Fut>(s: &Settings, nats_pid: u32, workers: usize, worker: &F) -> Measured
where
    F: Fn(Window) -> Fut,
    Fut: Future<Output = WorkerStats> + Send + 'static,
{
    let begin = Instant::now() + Duration::from_millis(20);
    let window = Window { start: begin + s.warmup, end: begin + s.warmup + s.duration };
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(window))).collect();
    tokio::time::sleep_until(window.start.into()).await;
    let cpu0 = sample_cpu(nats_pid);
    tokio::time::sleep_until(window.end.into()).await;
    let cpu1 = sample_cpu(nats_pid);
    let mut latencies = Vec::new();
    let (mut errors, mut total_ok, mut first_error) = (0, 0, None);
    for h in handles {
        let st = h.await.expect("worker panicked");
        latencies.extend(st.latencies);
        errors += st.errors;
        total_ok += st.total_ok;
        if first_error.is_none() {
            first_error = st.first_error;
        }
    }
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    Measured {
        ops_per_sec: ops as f64 / s.duration.as_secs_f64(),
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        errors,
        total_ok,
        cpu: cpu1 - cpu0,
        ops,
        first_error,
    }
}

// ---------------------------------------------------------------------------------------
// HTTP load generator: one raw hyper HTTP/1.1 connection per worker, keep-alive.

struct HttpTarget {
    addr: SocketAddr,
    path: String,
    host: HeaderValue,
    authorization: HeaderValue,
    content_type: HeaderValue,
    body: Bytes,
}

async fn http_worker(target: std::sync::Arc<HttpTarget>, window: Window) -> WorkerStats {
    let mut stats = WorkerStats { latencies: Vec::with_capacity(64 * 1024), ..Default::default() };
    let connect = async {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        anyhow::Ok(sender)
    };
    let mut sender = match connect.await {
        Ok(s) => s,
        Err(e) => {
            stats.errors += 1;
            stats.first_error = Some(format!("connect: {e}"));
            return stats;
        }
    };
    loop {
        let t0 = Instant::now();
        if t0 >= window.end {
            return stats;
        }
        let outcome = async {
            sender.ready().await.map_err(|e| e.to_string())?;
            let mut req = Request::new(Full::new(target.body.clone()));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = target.path.parse().map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
            let h = req.headers_mut();
            h.insert(header::HOST, target.host.clone());
            h.insert(header::AUTHORIZATION, target.authorization.clone());
            h.insert(header::CONTENT_TYPE, target.content_type.clone());
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if status.is_success() { Ok(()) } else { Err(format!("{status}: {}", String::from_utf8_lossy(&body))) }
        }
        .await;
        let broken = outcome.is_err() && sender.is_closed();
        stats.record(window, t0, outcome);
        if broken {
            return stats;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Direct JetStream publishing: `per_op` publishes sent, then all their acks awaited.

/// How a direct publisher differs from plain direct publishing (for the nats-server
/// comparison): the gateway's headers on every message, and a shared pace.
#[derive(Clone, Default)]
struct Variant {
    headers: Option<Arc<GatewayHeaders>>,
    pacer: Option<Arc<Pacer>>,
}

/// The headers the gateway stores with a published order: what does not change per message,
/// read back from the smoke message it stored; `ce-id` and `ce-time` are made per message,
/// as the gateway makes them.
struct GatewayHeaders {
    source: String,
    type_: String,
    dataschema: Option<String>,
    /// Header names of the stored smoke message, sorted.
    names: Vec<String>,
    /// Bytes of its NATS header block (`NATS/1.0` line, `name: value` lines, blank line).
    bytes: usize,
}

impl GatewayHeaders {
    /// Reads the last stored message on `SUBJECT` (the gateway's smoke publish) back.
    async fn read(js: &jetstream::Context) -> anyhow::Result<Self> {
        let stored = js.get_stream(STREAM).await?.get_last_raw_message_by_subject(SUBJECT).await?;
        let value = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
        let h = Self {
            source: value("ce-source").ok_or_else(|| anyhow!("the stored order has no ce-source"))?,
            type_: value("ce-type").ok_or_else(|| anyhow!("the stored order has no ce-type"))?,
            dataschema: value("ce-dataschema"),
            names: header_names(&stored.headers),
            bytes: header_bytes(&stored.headers),
        };
        // The set built here must be the one the gateway stored.
        let built = h.build(&uuid::Uuid::now_v7().to_string());
        let mut names = header_names(&built);
        names.push("Nats-Msg-Id".to_owned());
        names.sort_unstable();
        if names != h.names {
            bail!("the gateway stored headers {:?}, the bench would send {names:?}", h.names);
        }
        Ok(h)
    }

    /// The headers of one message, by the gateway's own function (`Nats-Msg-Id` is added by
    /// the publish, as in the gateway).
    fn build(&self, id: &str) -> async_nats::HeaderMap {
        StoredAttributes {
            id,
            source: &self.source,
            type_: &self.type_,
            subject: None,
            dataschema: self.dataschema.as_deref(),
            time: None,
            extensions: &std::collections::BTreeMap::new(),
            traceparent: None,
            tracestate: None,
        }
        .to_nats_headers()
    }
}

fn header_names(headers: &async_nats::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
    names.sort_unstable();
    names
}

/// Size of the header block on the wire and in the store: `NATS/1.0\r\n`, one
/// `name: value\r\n` per value, `\r\n`.
fn header_bytes(headers: &async_nats::HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(n, values)| {
            values.iter().map(|v| AsRef::<str>::as_ref(n).len() + 2 + v.as_str().len() + 2).sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// Hands out send times `1 / rate` apart to every worker sharing it; a worker that is late
/// sends at once, and the lost time is not made up (the rate is a ceiling).
struct Pacer {
    period: Duration,
    next: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Self { period: Duration::from_secs_f64(1.0 / rate.max(1.0)), next: std::sync::Mutex::new(None) }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = tokio::time::Instant::now();
            let at = next.map_or(now, |t| t.max(now));
            *next = Some(at + self.period);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

async fn direct_worker(
    js: jetstream::Context,
    payload: Bytes,
    per_op: usize,
    variant: Variant,
    window: Window,
) -> WorkerStats {
    let mut stats = WorkerStats { latencies: Vec::with_capacity(64 * 1024), ..Default::default() };
    let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(per_op);
    loop {
        if let Some(pacer) = &variant.pacer {
            pacer.wait().await;
        }
        let t0 = Instant::now();
        if t0 >= window.end {
            return stats;
        }
        let outcome = async {
            for _ in 0..per_op {
                // Same id scheme as the gateway (UUIDv7 → Nats-Msg-Id), so the server does
                // the same de-duplication bookkeeping for both.
                let id = uuid::Uuid::now_v7().to_string();
                let mut msg = PublishMessage::build().payload(payload.clone());
                if let Some(headers) = &variant.headers {
                    msg = msg.headers(headers.build(&id));
                }
                let msg = msg.message_id(id.as_str());
                acks.push(js.send_publish(SUBJECT, msg).await.map_err(|e| e.to_string())?);
            }
            if per_op == 1 {
                acks.pop().expect("one ack").await.map_err(|e| e.to_string())?;
            } else {
                for r in futures::future::join_all(acks.drain(..).map(std::future::IntoFuture::into_future)).await {
                    r.map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        }
        .await;
        acks.clear();
        stats.record(window, t0, outcome);
    }
}

// ---------------------------------------------------------------------------------------
// The servers under test

fn gateway_config(nats_url: &str, tracking: Option<bool>) -> Config {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let mut config = Config::default();
    config.nats.url = nats_url.to_owned();
    config.streams_dir = example.join("streams");
    config.contracts_dir = example.join("contracts");
    config.require_contract = true;
    // No file to reload from: a reload would rebuild the configuration without the bench
    // participant (every request then 401), as paths.rs and ordering.rs already avoid.
    config.reload_interval = Duration::ZERO;
    if let Some(tracking) = tracking {
        config.system.tracking = tracking;
    }
    // Built through serde, as from a config file, so fields added later take their defaults.
    let hash = hex::encode(magistral::participants::hash_token(TOKEN));
    config.contracts = vec![
        serde_json::from_value::<ContractBinding>(serde_json::json!({
            "name": "sales-order", "version": 1, "file": "sales-order.v1.json", "subjects": [SUBJECT],
        }))
        .expect("contract binding"),
    ];
    config.participants.insert(
        "bitrix".into(),
        serde_json::from_value::<ParticipantConfig>(serde_json::json!({
            "tokens": [{ "sha256": hash }], "publish": [SUBJECT],
        }))
        .expect("participant"),
    );
    config
}

/// The HTTP-side limit: same route shape, reads the whole body, answers 202 with a body
/// shaped like the gateway's.
async fn bare_handler(UrlPath(_subject): UrlPath<String>, body: Bytes) -> impl IntoResponse {
    std::hint::black_box(&body);
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"id":"019a0000-0000-7000-8000-000000000000","stream":"ORDERS","seq":1,"duplicate":false}"#,
    )
}

/// The ~1 KiB order: the example's valid sample, compact, with lines appended until it
/// reaches `TARGET_PAYLOAD` bytes.
fn order_payload() -> anyhow::Result<Bytes> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sales-order.valid.json");
    let mut order: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let lines = order["lines"].as_array_mut().ok_or_else(|| anyhow!("sample has no lines"))?;
    let template = lines[0].clone();
    loop {
        let size = serde_json::to_vec(&order)?.len();
        if size >= TARGET_PAYLOAD {
            break;
        }
        let lines = order["lines"].as_array_mut().expect("checked above");
        let mut line = template.clone();
        line["line_no"] = Value::from(lines.len() + 1);
        lines.push(line);
    }
    Ok(serde_json::to_vec(&order)?.into())
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gateway not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks one publish through the gateway is accepted (a contract violation here would
/// make the whole benchmark measure the error path).
async fn smoke(addr: SocketAddr, payload: &Bytes) -> anyhow::Result<()> {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish/{SUBJECT}"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(payload.clone())
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if status != StatusCode::ACCEPTED {
        bail!("smoke publish answered {status}: {text}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Driver

struct Bench {
    s: Settings,
    nats_pid: u32,
    js: jetstream::Context,
    payload: Bytes,
    gateway: SocketAddr,
    bare: SocketAddr,
    headers: Arc<GatewayHeaders>,
}

impl Bench {
    /// Empties the orders stream (returning what it held) and the tracking index, so every
    /// scenario starts from the same state.
    async fn purge(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(STREAM).await?;
        let before = stream.info().await?.state.messages;
        stream.purge().await?;
        if let Ok(index) = self.js.get_stream(format!("KV_{}", magistral::tracking::BUCKET)).await {
            index.purge().await?;
        }
        Ok(before)
    }

    fn target(&self, addr: SocketAddr, path: &str, content_type: &str, body: Bytes) -> std::sync::Arc<HttpTarget> {
        std::sync::Arc::new(HttpTarget {
            addr,
            path: path.to_owned(),
            host: HeaderValue::from_str(&addr.to_string()).expect("ascii"),
            authorization: HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("ascii"),
            content_type: HeaderValue::from_str(content_type).expect("ascii"),
            body,
        })
    }

    fn skip(&self, part: &str) -> bool {
        !self.s.parts.iter().any(|p| p == part)
    }

    async fn http(&self, target: std::sync::Arc<HttpTarget>, workers: usize) -> Measured {
        if self.skip(if target.addr == self.bare { "bare" } else { "gateway" }) {
            return Measured::default();
        }
        measure(&self.s, self.nats_pid, workers, move |w| http_worker(target.clone(), w)).await
    }

    async fn direct(&self, per_op: usize, workers: usize) -> Measured {
        self.direct_as("direct", per_op, workers, Variant::default()).await
    }

    /// Direct single publishes with the gateway's headers or not, paced at `rate` or not
    /// (part `headers` or `paced`).
    async fn direct_variant(&self, workers: usize, with_headers: bool, rate: Option<f64>) -> Measured {
        let part = if rate.is_some() { "paced" } else { "headers" };
        let variant = Variant {
            headers: with_headers.then(|| self.headers.clone()),
            pacer: rate.map(|r| Arc::new(Pacer::new(r))),
        };
        self.direct_as(part, 1, workers, variant).await
    }

    async fn direct_as(&self, part: &str, per_op: usize, workers: usize, variant: Variant) -> Measured {
        if self.skip(part) {
            return Measured::default();
        }
        let (js, payload) = (self.js.clone(), self.payload.clone());
        measure(&self.s, self.nats_pid, workers, move |w| {
            direct_worker(js.clone(), payload.clone(), per_op, variant.clone(), w)
        })
        .await
    }

    /// Purges, runs, then checks the stream holds exactly what was acknowledged.
    async fn stored_run<Fut: Future<Output = Measured>>(&self, msgs_per_op: u64, run: Fut) -> anyhow::Result<Measured> {
        self.purge().await?;
        let m = run.await;
        let stored = self.purge().await?;
        if stored != m.total_ok * msgs_per_op {
            eprintln!("WARNING: stream holds {stored} messages, {} were acknowledged", m.total_ok * msgs_per_op);
        }
        Ok(m)
    }
}

/// The round with the median throughput; lists every round's msg/s in `log`.
fn median(mut runs: Vec<Measured>, log: &mut String, scenario: &str, conc: usize, msgs_per_op: u64) -> Measured {
    let all: Vec<String> = runs.iter().map(|m| format!("{:.0}", m.ops_per_sec * msgs_per_op as f64)).collect();
    let _ = writeln!(log, "| {scenario} | {conc} | {} |", all.join(", "));
    runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    runs.swap_remove((runs.len() - 1) / 2)
}

fn report_errors(name: &str, m: &Measured) {
    if m.errors > 0 || m.first_error.is_some() {
        eprintln!("WARNING {name}: {} errors in window; first: {}", m.errors, m.first_error.as_deref().unwrap_or("-"));
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() }
}

fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

fn cpu_row(out: &mut String, scenario: &str, conc: usize, m: &Measured, msgs_per_op: u64, wall: Duration) {
    let msgs = (m.ops * msgs_per_op).max(1) as f64;
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0 / msgs);
    let ours = m.cpu.gateway + m.cpu.client + m.cpu.other + m.cpu.nats;
    let busy = ours as f64 / wall.as_nanos() as f64;
    let foreign = m.foreign_cores(wall);
    if foreign > 0.15 {
        eprintln!(
            "WARNING {scenario} at {conc}: other processes used {foreign:.2} cores during the window; rerun on a quiet machine"
        );
    }
    let _ = writeln!(
        out,
        "| {scenario} | {conc} | {} | {} | {} | {} | {:.2} | {:.2} |",
        us(m.cpu.gateway),
        us(m.cpu.client),
        us(m.cpu.nats),
        us(ours),
        busy,
        foreign
    );
}

async fn run_all(b: &Bench) -> anyhow::Result<String> {
    let s = &b.s;
    let mut single = String::new();
    let mut batch = String::new();
    let mut cpu = String::new();
    let mut rounds = String::new();
    let mut server = String::new();
    let _ = writeln!(
        server,
        "| concurrency | gateway | direct | direct, gateway headers | direct, paced | direct, gateway headers, paced | gateway ÷ direct | ÷ direct with headers | ÷ direct with headers, paced |"
    );
    let _ = writeln!(server, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        cpu,
        "| scenario | concurrency | gateway µs/msg | load generator µs/msg | nats-server µs/msg | total µs/msg | cores busy | other processes (cores) |"
    );
    let _ = writeln!(cpu, "|---|---:|---:|---:|---:|---:|---:|---:|");

    if s.single {
        let _ = writeln!(
            single,
            "| concurrency | gateway msg/s | p50 ms | p99 ms | bare req/s | p50 ms | p99 ms | direct msg/s | p50 ms | p99 ms | gateway/direct | gateway/bare |"
        );
        let _ = writeln!(single, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let path = format!("/v1/publish/{SUBJECT}");
        for &c in &s.levels {
            let (mut gs, mut bs, mut ds) = (Vec::new(), Vec::new(), Vec::new());
            let (mut dhs, mut dps, mut dhps) = (Vec::new(), Vec::new(), Vec::new());
            for round in 1..=s.rounds {
                eprintln!("single, concurrency {c}, round {round}: gateway");
                let g = b
                    .stored_run(1, b.http(b.target(b.gateway, &path, "application/json", b.payload.clone()), c))
                    .await?;
                report_errors("gateway", &g);
                eprintln!("single, concurrency {c}, round {round}: bare handler");
                let bare = b.http(b.target(b.bare, &path, "application/json", b.payload.clone()), c).await;
                report_errors("bare", &bare);
                eprintln!("single, concurrency {c}, round {round}: direct");
                let d = b.stored_run(1, b.direct(1, c)).await?;
                report_errors("direct", &d);
                eprintln!("single, concurrency {c}, round {round}: direct with the gateway's headers");
                let dh = b.stored_run(1, b.direct_variant(c, true, None)).await?;
                report_errors("direct with headers", &dh);
                // Paced at the rate the gateway reached in this round (nothing to pace at
                // when the gateway was not run).
                let pace = (g.ops_per_sec > 0.0).then_some(g.ops_per_sec);
                let (mut dp, mut dhp) = (Measured::default(), Measured::default());
                if let Some(rate) = pace {
                    eprintln!("single, concurrency {c}, round {round}: direct, paced at {rate:.0}/s");
                    dp = b.stored_run(1, b.direct_variant(c, false, Some(rate))).await?;
                    report_errors("direct paced", &dp);
                    eprintln!("single, concurrency {c}, round {round}: direct with the gateway's headers, paced");
                    dhp = b.stored_run(1, b.direct_variant(c, true, Some(rate))).await?;
                    report_errors("direct with headers, paced", &dhp);
                }
                gs.push(g);
                bs.push(bare);
                ds.push(d);
                dhs.push(dh);
                dps.push(dp);
                dhps.push(dhp);
            }
            let g = median(gs, &mut rounds, "gateway", c, 1);
            let bare = median(bs, &mut rounds, "bare", c, 1);
            let d = median(ds, &mut rounds, "direct", c, 1);
            let dh = median(dhs, &mut rounds, "direct, gateway headers", c, 1);
            let dp = median(dps, &mut rounds, "direct, paced", c, 1);
            let dhp = median(dhps, &mut rounds, "direct, gateway headers, paced", c, 1);
            let _ = writeln!(
                single,
                "| {c} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} |",
                g.ops_per_sec,
                ms(g.p50_us),
                ms(g.p99_us),
                bare.ops_per_sec,
                ms(bare.p50_us),
                ms(bare.p99_us),
                d.ops_per_sec,
                ms(d.p50_us),
                ms(d.p99_us),
                ratio(g.ops_per_sec, d.ops_per_sec),
                ratio(g.ops_per_sec, bare.ops_per_sec),
            );
            cpu_row(&mut cpu, "gateway", c, &g, 1, s.duration);
            cpu_row(&mut cpu, "bare", c, &bare, 1, s.duration);
            cpu_row(&mut cpu, "direct", c, &d, 1, s.duration);
            if !b.skip("headers") {
                cpu_row(&mut cpu, "direct, gateway headers", c, &dh, 1, s.duration);
            }
            if !b.skip("paced") && g.ops > 0 {
                cpu_row(&mut cpu, "direct, paced", c, &dp, 1, s.duration);
                cpu_row(&mut cpu, "direct, gateway headers, paced", c, &dhp, 1, s.duration);
            }
            let nats_us = |m: &Measured| m.cpu.nats as f64 / 1000.0 / m.ops.max(1) as f64;
            let cell = |m: &Measured| {
                if m.ops > 0 { format!("{:.1} ({:.0}/s)", nats_us(m), m.ops_per_sec) } else { "-".into() }
            };
            let per = |m: &Measured| {
                if m.ops > 0 && g.ops > 0 { format!("{:.2}", nats_us(&g) / nats_us(m)) } else { "-".into() }
            };
            let _ = writeln!(
                server,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&g),
                cell(&d),
                cell(&dh),
                cell(&dp),
                cell(&dhp),
                per(&d),
                per(&dh),
                per(&dhp),
            );
        }
    }

    if s.batch {
        let n = s.batch_size;
        let item = format!(r#"{{"subject":"{SUBJECT}","data":{}}}"#, std::str::from_utf8(&b.payload).expect("utf-8"));
        let body: Bytes = format!("[{}]", vec![item; n].join(",")).into();
        let _ = writeln!(
            batch,
            "| concurrent batches | msgs in flight | gateway msg/s | batch p50 ms | batch p99 ms | direct msg/s | p50 ms | p99 ms | gateway/direct |"
        );
        let _ = writeln!(batch, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in &s.batch_levels {
            let (mut gs, mut ds) = (Vec::new(), Vec::new());
            for round in 1..=s.rounds {
                eprintln!("batch of {n}, concurrency {c}, round {round}: gateway");
                let g = b
                    .stored_run(
                        n as u64,
                        b.http(b.target(b.gateway, "/v1/publish", "application/json", body.clone()), c),
                    )
                    .await?;
                report_errors("gateway batch", &g);
                eprintln!("batch of {n}, concurrency {c}, round {round}: direct");
                let d = b.stored_run(n as u64, b.direct(n, c)).await?;
                report_errors("direct batch", &d);
                gs.push(g);
                ds.push(d);
            }
            let g = median(gs, &mut rounds, &format!("gateway batch×{n}"), c, n as u64);
            let d = median(ds, &mut rounds, &format!("direct batch×{n}"), c, n as u64);
            let (gm, dm) = (g.ops_per_sec * n as f64, d.ops_per_sec * n as f64);
            let _ = writeln!(
                batch,
                "| {c} | {} | {gm:.0} | {} | {} | {dm:.0} | {} | {} | {} |",
                c * n,
                ms(g.p50_us),
                ms(g.p99_us),
                ms(d.p50_us),
                ms(d.p99_us),
                ratio(gm, dm),
            );
            cpu_row(&mut cpu, &format!("gateway batch×{n}"), c, &g, n as u64, s.duration);
            cpu_row(&mut cpu, &format!("direct batch×{n}"), c, &d, n as u64, s.duration);
        }
    }

    let mut out = String::new();
    if s.single {
        let _ = writeln!(
            out,
            "### Single-message publish ({} B order, `POST /v1/publish/{SUBJECT}`)\n\n{single}",
            b.payload.len()
        );
    }
    if s.batch {
        let _ = writeln!(out, "### Batch publish ({} items per `POST /v1/publish`)\n\n{batch}", s.batch_size);
    }
    let _ = writeln!(out, "### CPU per message over the measured window\n\n{cpu}");
    if s.single {
        let h = &b.headers;
        let _ = writeln!(
            out,
            "### nats-server CPU per message: gateway vs direct with its headers and at its rate\n\n\
             nats-server µs per stored message (messages/s) for single publishes. The gateway stores \
             {} header bytes per order ({}); plain direct publishing sends `Nats-Msg-Id` only ({} bytes). \
             \"paced\" = sent no faster than the gateway's messages/s in the same round.\n\n{server}",
            h.bytes,
            h.names.join(", "),
            "NATS/1.0\r\n".len() + "Nats-Msg-Id: ".len() + 36 + 2 + 2,
        );
    }
    if s.rounds > 1 {
        let _ = writeln!(
            out,
            "### Every round (msg/s; the tables above show the median round)\n\n| scenario | concurrency | msg/s per round |\n|---|---:|---|\n{rounds}"
        );
    }
    Ok(out)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cores} CPU(s), {model}")
}

fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider; the gateway installs ring, and so do we
    // (before the readiness client is built).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Settings::from_env()?;
    let nats = NatsServer::start();
    let version = nats.version();
    let nats_pid = nats.pid();
    let payload = order_payload()?;

    // The gateway (and the bare handler) on their own runtime.
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.gateway_threads)
        .thread_name("gw")
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let config = gateway_config(&nats.url(), s.tracking);
    let tracking = config.system.tracking;
    let catalog = Catalog::load(&config).map_err(|e| anyhow!("{e}"))?;
    let (gateway, bare, gw_task) = gw_rt.block_on(async {
        let gw_listener = TcpListener::bind("127.0.0.1:0").await?;
        let bare_listener = TcpListener::bind("127.0.0.1:0").await?;
        let (gateway, bare) = (gw_listener.local_addr()?, bare_listener.local_addr()?);
        let task = tokio::spawn(magistral::run(config, catalog, gw_listener, shutdown.clone()));
        let router = axum::Router::new().route("/v1/publish/{subject}", axum::routing::post(bare_handler));
        tokio::spawn(
            axum::serve(bare_listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future(),
        );
        anyhow::Ok((gateway, bare, task))
    })?;

    // The load generator and the direct publisher on theirs.
    let lg_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.client_threads)
        .thread_name("lg")
        .enable_all()
        .build()?;
    let result = lg_rt.block_on(async {
        wait_ready(gateway).await?;
        smoke(gateway, &payload).await?;
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::context::ContextBuilder::new().timeout(Duration::from_secs(5)).build(client);
        let headers = Arc::new(GatewayHeaders::read(&js).await?);
        let bench = Bench { s, nats_pid, js, payload, gateway, bare, headers };
        eprintln!(
            "magistral publish benchmark: {}; {}; payload {} B; warm-up {:?}, window {:?}; gateway threads {}, client threads {}",
            machine(),
            version,
            bench.payload.len(),
            bench.s.warmup,
            bench.s.duration,
            bench.s.gateway_threads,
            bench.s.client_threads,
        );
        let tables = run_all(&bench).await?;
        anyhow::Ok((tables, bench))
    });
    shutdown.cancel();
    let _ = gw_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), gw_task).await });
    let (tables, bench) = result?;
    println!(
        "## Publish benchmark\n\n- machine: {}\n- {version}, JetStream file storage, R1\n- payload: {} B sales order (contract-validated); message tracking {}\n- warm-up {:?}, window {:?}; gateway runtime {} threads, load generator runtime {} threads\n\n{tables}",
        machine(),
        bench.payload.len(),
        if tracking { "on" } else { "off" },
        bench.s.warmup,
        bench.s.duration,
        bench.s.gateway_threads,
        bench.s.client_threads,
    );
    drop(lg_rt);
    drop(gw_rt);
    drop(nats);
    Ok(())
}
