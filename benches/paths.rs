//! Delivery, request/reply, directory and pull benchmark (issues 3, 4 and 5, "Performance");
//! the results and how to read them are in `docs/benchmarks.md`, section "Delivery,
//! request/reply, directories and pull". Run with `scripts/bench` (which runs every benchmark)
//! or `cargo bench --bench paths` (`NATS_SERVER_BIN` optional).
//!
//! One run, one nats-server (started here: `-js`, file storage in a temp dir, killed at the
//! end), and in this process three tokio runtimes, so CPU time can be told apart per thread:
//! - `gw`: the gateway (`magistral::run`), a fresh instance per configuration;
//! - `lg`: the load generator and the direct async-nats clients (the limits);
//! - `peer`: what participants would run: a no-op HTTP receiver (axum, answers 200) and a
//!   NATS-native micro service (async-nats service API, answers a small JSON).
//!
//! Scenarios, each next to its limit on the same server:
//! - (a) `push`: a stream pre-filled with `BENCH_PUSH_MESSAGES` 1 KiB messages drained by one
//!   unordered push subscription into the receiver, per `max_in_flight` and with
//!   `system.tracking` off and on; limits: a direct pull consumer fetching and acking the same
//!   count (`max_ack_pending` = the same in-flight bound), and the HTTP leg alone (a reqwest
//!   client POSTing the same count to the receiver at the same concurrency). Then sustained:
//!   16 closed-loop HTTP publishers and the push subscription at once, tracking off and on
//!   (tracking writes its index at publish and nothing for a healthy delivery, so only this
//!   shows its cost).
//! - (b) `latency`: HTTP publish at a fixed rate → gateway → push → receiver; the receiver
//!   records receive time minus send time (the send time travels in the body). Tracking off
//!   and on.
//! - (c) `request`: `POST /v1/request/svc.echo` → the micro service, closed loop per
//!   concurrency level, vs direct `client.request` at the same concurrency.
//! - (d) `kv`: `GET /v1/kv/{bucket}/{key}` over `BENCH_KV_KEYS` keys vs direct
//!   `kv::Store::get`, per concurrency level.
//! - (e) `pull`: `POST /v1/subscriptions/{name}/fetch {"max":N}` then `/ack` with every token,
//!   per number of concurrent pullers, vs a direct pull consumer fetching batches of N and
//!   acking each message (plain ack; and double ack, which is what the gateway does).
//!
//! The process runs on mimalloc, as the `magistral` binary does.
//!
//! CPU per operation comes from `/proc/self/task/*/schedstat` (ns on CPU per thread, grouped by
//! thread name) and `/proc/<nats-server>/task/*/schedstat`; the machine's busy time from
//! `/proc/stat` shows how much other processes took during each window.
//!
//! Environment (all optional):
//! - `NATS_SERVER_BIN` (default `.tools/bin/nats-server`)
//! - `BENCH_PATHS` ("push,latency,request,kv,pull"): which scenarios to run
//! - `BENCH_WARMUP_SECS` (1), `BENCH_SECS` (5): warm-up and window of the closed-loop scenarios
//! - `BENCH_PUSH_MESSAGES` (50000), `BENCH_PUSH_IN_FLIGHT` ("64,256")
//! - `BENCH_LATENCY_RATE` (500 msgs/s), `BENCH_LATENCY_SECS` (10)
//! - `BENCH_RR_CONCURRENCY` ("1,16,64"), `BENCH_KV_CONCURRENCY` ("1,16,64"), `BENCH_KV_KEYS` (1000)
//! - `BENCH_PULL_MESSAGES` (20000), `BENCH_PULL_BATCH` (100), `BENCH_PULL_CONCURRENCY` ("1,4")
//! - `BENCH_GATEWAY_THREADS` (2), `BENCH_CLIENT_THREADS` (2), `BENCH_PEER_THREADS` (1)

#[path = "support/env.rs"]
mod env;
use env::{env_list, env_or};

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use async_nats::jetstream::{self, consumer::pull};
use async_nats::service::ServiceExt as _;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use magistral::catalog::Catalog;
use magistral::config::{Config, DirectoryConfig, ParticipantConfig, SubscriptionConfig};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

// The `magistral` binary runs on mimalloc (src/main.rs), and the issue 16 targets are
// measured with the binary's allocator: on glibc malloc 12 % of the gateway's request/reply
// and directory samples ended in malloc/free (profile in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-paths-token-0123456789abcdef";
const PARTICIPANT: &str = "bench";
const STREAM: &str = "BENCH";
const BUCKET: &str = "bench_dir";
const SERVICE_SUBJECT: &str = "svc.echo";
const PAYLOAD_BYTES: usize = 1024;

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    paths: Vec<String>,
    warmup: Duration,
    duration: Duration,
    push_messages: usize,
    push_in_flight: Vec<usize>,
    latency_rate: f64,
    latency_secs: f64,
    rr_levels: Vec<usize>,
    kv_levels: Vec<usize>,
    kv_keys: usize,
    pull_messages: usize,
    pull_batch: usize,
    pull_levels: Vec<usize>,
    gateway_threads: usize,
    client_threads: usize,
    peer_threads: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            paths: std::env::var("BENCH_PATHS")
                .unwrap_or_else(|_| "push,latency,request,kv,pull".into())
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect(),
            warmup: Duration::from_secs_f64(env_or("BENCH_WARMUP_SECS", 1.0)?),
            duration: Duration::from_secs_f64(env_or("BENCH_SECS", 5.0)?),
            push_messages: env_or("BENCH_PUSH_MESSAGES", 50_000)?,
            push_in_flight: env_list("BENCH_PUSH_IN_FLIGHT", "64,256")?,
            latency_rate: env_or("BENCH_LATENCY_RATE", 500.0)?,
            latency_secs: env_or("BENCH_LATENCY_SECS", 10.0)?,
            rr_levels: env_list("BENCH_RR_CONCURRENCY", "1,16,64")?,
            kv_levels: env_list("BENCH_KV_CONCURRENCY", "1,16,64")?,
            kv_keys: env_or("BENCH_KV_KEYS", 1000)?,
            pull_messages: env_or("BENCH_PULL_MESSAGES", 20_000)?,
            pull_batch: env_or("BENCH_PULL_BATCH", 100)?,
            pull_levels: env_list("BENCH_PULL_CONCURRENCY", "1,4")?,
            gateway_threads: env_or("BENCH_GATEWAY_THREADS", 2)?,
            client_threads: env_or("BENCH_CLIENT_THREADS", 2)?,
            peer_threads: env_or("BENCH_PEER_THREADS", 1)?,
        })
    }

    fn runs(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }
}

// ---------------------------------------------------------------------------------------
// nats-server: the integration tests' helper (a dynamic port, a temp store, killed on drop)

#[path = "../tests/it/common/nats.rs"]
mod nats;
use nats::NatsServer;

// ---------------------------------------------------------------------------------------
// CPU accounting (ns on CPU per thread, from schedstat) and machine load

#[derive(Default, Clone, Copy)]
struct Cpu {
    gateway: u64,
    client: u64,
    peer: u64,
    other: u64,
    nats: u64,
    /// Busy time of the whole machine (every process), from `/proc/stat`.
    machine: u64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            gateway: self.gateway.saturating_sub(o.gateway),
            client: self.client.saturating_sub(o.client),
            peer: self.peer.saturating_sub(o.peer),
            other: self.other.saturating_sub(o.other),
            nats: self.nats.saturating_sub(o.nats),
            machine: self.machine.saturating_sub(o.machine),
        }
    }
}

impl Cpu {
    fn ours(&self) -> u64 {
        self.gateway + self.client + self.peer + self.other + self.nats
    }
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
            match std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim() {
                "gw" => cpu.gateway += ns,
                "lg" => cpu.client += ns,
                "peer" => cpu.peer += ns,
                _ => cpu.other += ns,
            }
        }
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{nats_pid}/task")) {
        cpu.nats = tasks.flatten().filter_map(|t| task_ns(&t.path())).sum();
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    if let Some(line) = stat.lines().next() {
        // user nice system idle iowait irq softirq steal, in USER_HZ (100/s).
        let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
        cpu.machine = busy * 10_000_000;
    }
    cpu
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU per operation over a window, and how busy the machine was.
#[derive(Clone, Copy, Default)]
struct CpuPerOp {
    gateway_us: f64,
    client_us: f64,
    peer_us: f64,
    nats_us: f64,
    total_us: f64,
    /// Cores used by this benchmark (all threads plus nats-server) over the window.
    cores: f64,
    /// Cores used by other processes over the window.
    foreign: f64,
}

fn per_op(cpu: Cpu, ops: u64, wall: Duration) -> CpuPerOp {
    let ops = ops.max(1) as f64;
    let us = |ns: u64| ns as f64 / 1000.0 / ops;
    let wall_ns = wall.as_nanos().max(1) as f64;
    CpuPerOp {
        gateway_us: us(cpu.gateway),
        client_us: us(cpu.client + cpu.other),
        peer_us: us(cpu.peer),
        nats_us: us(cpu.nats),
        total_us: us(cpu.ours()),
        cores: cpu.ours() as f64 / wall_ns,
        foreign: cpu.machine.saturating_sub(cpu.ours()) as f64 / wall_ns,
    }
}

// ---------------------------------------------------------------------------------------
// Closed-loop measurement (warm-up, then a window)

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct WorkerStats {
    /// Latencies (µs) of operations that started and finished inside the window.
    latencies: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl WorkerStats {
    fn record(&mut self, window: Window, t0: Instant, outcome: Result<(), String>) {
        let t1 = Instant::now();
        let inside = t0 >= window.start && t1 <= window.end;
        match outcome {
            Ok(()) if inside => self.latencies.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX)),
            Ok(()) => {}
            Err(e) => {
                if inside {
                    self.errors += 1;
                }
                self.first_error.get_or_insert(e);
            }
        }
    }
}

#[derive(Default, Clone)]
struct Measured {
    ops_per_sec: f64,
    p50_us: u32,
    p99_us: u32,
    errors: u64,
    cpu: CpuPerOp,
    first_error: Option<String>,
    probe_per_sec: f64,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `workers` copies of `worker` through warm-up and window; CPU sampled over the window.
async fn measure<F, Fut>(s: &Settings, nats_pid: u32, workers: usize, worker: F) -> Measured
where
    F: Fn(usize, Window) -> Fut,
    Fut: Future<Output = WorkerStats> + Send + 'static,
{
    measure_with_probe(s, nats_pid, workers, None, worker).await
}

/// [`measure`], also reading `probe` (a counter, e.g. deliveries) at the window's edges;
/// its growth over the window, per second, lands in `probe_per_sec`.
async fn measure_with_probe<F, Fut>(
    s: &Settings,
    nats_pid: u32,
    workers: usize,
    probe: Option<&AtomicU64>,
    worker: F,
) -> Measured
where
    F: Fn(usize, Window) -> Fut,
    Fut: Future<Output = WorkerStats> + Send + 'static,
{
    let begin = Instant::now() + Duration::from_millis(50);
    let window = Window { start: begin + s.warmup, end: begin + s.warmup + s.duration };
    let handles: Vec<_> = (0..workers).map(|i| tokio::spawn(worker(i, window))).collect();
    tokio::time::sleep_until(window.start.into()).await;
    let cpu0 = sample_cpu(nats_pid);
    let probe0 = probe.map_or(0, |p| p.load(Ordering::Relaxed));
    tokio::time::sleep_until(window.end.into()).await;
    let cpu1 = sample_cpu(nats_pid);
    let probe1 = probe.map_or(0, |p| p.load(Ordering::Relaxed));
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for h in handles {
        let st = h.await.expect("worker panicked");
        latencies.extend(st.latencies);
        errors += st.errors;
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
        cpu: per_op(cpu1 - cpu0, ops, s.duration),
        first_error,
        probe_per_sec: probe1.saturating_sub(probe0) as f64 / s.duration.as_secs_f64(),
    }
}

fn warn_errors(name: &str, errors: u64, first: Option<&str>) {
    if errors > 0 || first.is_some() {
        eprintln!("WARNING {name}: {errors} errors in the window; first: {}", first.unwrap_or("-"));
    }
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 keep-alive connection (hyper), one request at a time

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    authorization: HeaderValue,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: HeaderValue::from_str(&addr.to_string()).expect("ascii"),
            authorization: HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("ascii"),
        })
    }

    /// Sends one request as the bench participant; the status and whole body.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        json_body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let has_body = json_body.is_some();
        let mut req = Request::new(Full::new(json_body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(header::AUTHORIZATION, self.authorization.clone());
        if has_body {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

fn expect_ok((status, body): (StatusCode, Bytes)) -> Result<Bytes, String> {
    if status.is_success() { Ok(body) } else { Err(format!("{status}: {}", String::from_utf8_lossy(&body))) }
}

// ---------------------------------------------------------------------------------------
// The participant side (runtime `peer`): a no-op receiver and a NATS micro service

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the benchmark began (one clock for sender and receiver).
fn now_us() -> u64 {
    u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Received {
    /// Push deliveries to `/push`.
    push: AtomicU64,
    /// `(sent at, receive − send)` in µs, for deliveries to `/lat`.
    latency: Mutex<Vec<(u64, u32)>>,
}

async fn push_hook(State(r): State<Arc<Received>>, body: Bytes) -> StatusCode {
    std::hint::black_box(&body);
    r.push.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

async fn latency_hook(State(r): State<Arc<Received>>, body: Bytes) -> StatusCode {
    let now = now_us();
    if let Some(sent) = sent_at(&body) {
        let lat = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
        r.latency.lock().expect("lock").push((sent, lat));
    }
    StatusCode::OK
}

/// The `t` of a body `{"t":<µs>,...}`.
fn sent_at(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(br#"{"t":"#)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// A ~1 KiB JSON body carrying its send time.
fn payload(t: u64) -> Bytes {
    let head = format!(r#"{{"t":{t},"pad":""#);
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(PAYLOAD_BYTES);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s.into()
}

fn start_receiver(peer: &Handle) -> anyhow::Result<(SocketAddr, Arc<Received>)> {
    let received = Arc::new(Received::default());
    let listener = StdListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/push", axum::routing::post(push_hook))
        .route("/lat", axum::routing::post(latency_hook))
        .with_state(received.clone());
    peer.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("receiver listener");
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, received))
}

/// Starts the echo micro service on `peer`; returns once it is registered.
async fn start_service(peer: &Handle, nats_url: String) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    peer.spawn(async move {
        let setup = async {
            let client = async_nats::connect(nats_url).await?;
            let service = client
                .service_builder()
                .description("benchmark echo")
                .start("bench-echo", "1.0.0")
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let endpoint = service.endpoint(SERVICE_SUBJECT).await.map_err(|e| anyhow!("{e}"))?;
            client.flush().await?;
            anyhow::Ok((client, service, endpoint))
        };
        match setup.await {
            Ok((_client, _service, mut endpoint)) => {
                let _ = ready_tx.send(Ok(()));
                let reply = Bytes::from_static(br#"{"ok":true,"customer":"C-0042","orders":3,"total":1234.5}"#);
                while let Some(request) = endpoint.next().await {
                    let _ = request.respond(Ok(reply.clone())).await;
                }
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }
    });
    ready_rx.await.map_err(|_| anyhow!("service task ended"))?
}

// ---------------------------------------------------------------------------------------
// The gateway under test (runtime `gw`)

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    /// A streams folder with `BENCH` (`bench.>`, file storage) and an empty contracts folder.
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("magistral-bench-config-").tempdir()?;
        std::fs::create_dir(dir.path().join("streams"))?;
        std::fs::create_dir(dir.path().join("contracts"))?;
        std::fs::write(dir.path().join("streams/BENCH.json"), serde_json::to_vec_pretty(&stream_json())?)?;
        Ok(Self { dir })
    }
}

fn stream_json() -> Value {
    json!({
        "name": STREAM,
        "subjects": ["bench.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": 1,
        "discard": "old",
        "duplicate_window": 120_000_000_000u64,
    })
}

fn base_config(nats_url: &str, files: &Files, tracking: bool) -> Config {
    let mut config = Config::default();
    config.nats.url = nats_url.to_owned();
    config.streams_dir = files.dir.path().join("streams");
    config.contracts_dir = files.dir.path().join("contracts");
    config.require_contract = false;
    config.system.tracking = tracking;
    config.limits.drain_timeout = Duration::from_secs(3);
    config.reload_interval = Duration::ZERO;
    // Built through serde, as from a config file, so fields added later take their defaults.
    config.participants.insert(
        PARTICIPANT.into(),
        serde_json::from_value::<ParticipantConfig>(json!({
            "tokens": [{ "sha256": hex::encode(magistral::participants::hash_token(TOKEN)) }],
            "publish": ["bench.>"],
            "subscribe": ["bench.>"],
            "request": ["svc.>"],
            "kv_read": [BUCKET],
        }))
        .expect("participant"),
    );
    config
}

fn subscription(value: Value) -> SubscriptionConfig {
    let mut base = json!({
        "participant": PARTICIPANT,
        "timeout": "10s",
        "breaker_failures": 1000,
    });
    if let (Some(b), Value::Object(extra)) = (base.as_object_mut(), value) {
        b.extend(extra);
    }
    serde_json::from_value(base).expect("subscription config")
}

struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), magistral::RunError>>,
}

impl Gateway {
    /// Starts `magistral::run` on the `gw` runtime and waits for `/readyz`.
    async fn start(gw: &Handle, config: Config) -> anyhow::Result<Gateway> {
        let catalog = Catalog::load(&config).map_err(|e| anyhow!("{e}"))?;
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = gw.spawn(async move {
            let listener = TcpListener::from_std(listener).map_err(magistral::RunError::Serve)?;
            magistral::run(config, catalog, listener, stop).await
        });
        let gateway = Gateway { addr, shutdown, task };
        let mut conn = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if conn.is_none() {
                conn = Conn::open(addr).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                match c.call(Method::GET, "/readyz", None).await {
                    Ok((status, _)) if status.is_success() => return Ok(gateway),
                    Ok(_) => {}
                    Err(_) => conn = None,
                }
            }
            if Instant::now() > deadline || gateway.task.is_finished() {
                gateway.shutdown.cancel();
                bail!("gateway not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(15), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("WARNING: gateway stopped with {e}"),
            Ok(Err(e)) => eprintln!("WARNING: gateway task failed: {e}"),
            Err(_) => eprintln!("WARNING: gateway did not stop within 15 s"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers on the NATS side

/// Publishes `n` copies of `body` to `subject`, pipelined, and waits for every PubAck.
async fn prefill(js: &jetstream::Context, subject: &str, n: usize, body: &Bytes) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..n {
        acks.push(js.publish(subject.to_owned(), body.clone()).await?);
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

async fn purge(js: &jetstream::Context, subject: &str) -> anyhow::Result<()> {
    js.get_stream(STREAM).await?.purge().filter(subject).await?;
    Ok(())
}

async fn direct_consumer(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    max_ack_pending: usize,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = js.get_stream(STREAM).await?;
    Ok(stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: subject.to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: i64::try_from(max_ack_pending).unwrap_or(i64::MAX),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?)
}

// ---------------------------------------------------------------------------------------
// The benchmark

struct Bench {
    s: Settings,
    nats_url: String,
    nats_pid: u32,
    gw: Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    files: Files,
    receiver: SocketAddr,
    received: Arc<Received>,
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() }
}

fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

fn cpu_cells(c: &CpuPerOp) -> String {
    format!(
        "{:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2}",
        c.gateway_us, c.nats_us, c.peer_us, c.client_us, c.total_us, c.cores, c.foreign
    )
}

const CPU_HEADER: &str =
    "gateway µs | nats-server µs | peer µs | load gen µs | total µs | cores busy | other procs (cores)";
const CPU_ALIGN: &str = "---:|---:|---:|---:|---:|---:|---:";

/// One drain of a pre-filled backlog: how fast it went and what it cost.
struct Drain {
    per_sec: f64,
    cpu: CpuPerOp,
}

impl Bench {
    fn check_foreign(&self, what: &str, cpu: &CpuPerOp) {
        if cpu.foreign > 0.15 {
            eprintln!(
                "WARNING {what}: other processes used {:.2} cores during the window (load {})",
                cpu.foreign,
                load_average()
            );
        }
    }

    /// Watches `count` until it reaches `n`: the rate from the first to the last, with CPU.
    async fn watch_drain(&self, count: impl Fn() -> u64, n: u64, limit: Duration) -> anyhow::Result<Drain> {
        let deadline = Instant::now() + limit;
        let (t0, cpu0) = loop {
            if count() > 0 {
                break (Instant::now(), sample_cpu(self.nats_pid));
            }
            if Instant::now() > deadline {
                bail!("nothing arrived within {limit:?}");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        let c0 = count();
        loop {
            let c = count();
            if c >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {c} of {n} arrived within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (t1, cpu1) = (Instant::now(), sample_cpu(self.nats_pid));
        let done = n.saturating_sub(c0);
        let wall = t1 - t0;
        Ok(Drain { per_sec: done as f64 / wall.as_secs_f64(), cpu: per_op(cpu1 - cpu0, done, wall) })
    }

    // ---- (a) push delivery

    async fn push_gateway(&self, in_flight: usize, tracking: bool) -> anyhow::Result<Drain> {
        let label = format!("f{in_flight}-{}", if tracking { "on" } else { "off" });
        let subject = format!("bench.push.{label}");
        let n = self.s.push_messages;
        prefill(&self.js, &subject, n, &payload(0)).await?;
        self.received.push.store(0, Ordering::SeqCst);
        let mut config = base_config(&self.nats_url, &self.files, tracking);
        config.subscriptions.insert(
            format!("push-{label}"),
            subscription(json!({
                "subjects": [subject],
                "endpoint": format!("http://{}/push", self.receiver),
                "max_in_flight": in_flight,
                "start": "all",
            })),
        );
        let gateway = Gateway::start(&self.gw, config).await?;
        let received = self.received.clone();
        let drain =
            self.watch_drain(move || received.push.load(Ordering::Relaxed), n as u64, Duration::from_secs(300)).await;
        gateway.stop().await;
        purge(&self.js, &subject).await?;
        drain
    }

    /// The NATS-side limit: a direct pull consumer draining the same backlog, acking each.
    async fn push_direct(&self, in_flight: usize) -> anyhow::Result<Drain> {
        let subject = format!("bench.direct.f{in_flight}");
        let n = self.s.push_messages;
        prefill(&self.js, &subject, n, &payload(0)).await?;
        let consumer = direct_consumer(&self.js, &format!("direct-f{in_flight}"), &subject, in_flight).await?;
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut messages = consumer.stream().max_messages_per_batch(in_flight).messages().await?;
            let mut done = 0;
            while done < n {
                let Some(m) = messages.next().await else { break };
                let m = m.map_err(|e| anyhow!("{e}"))?;
                m.ack().await.map_err(|e| anyhow!("{e}"))?;
                done += 1;
                counter.store(done as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
        let drain = self.watch_drain(move || count.load(Ordering::Relaxed), n as u64, Duration::from_secs(300)).await;
        task.await??;
        purge(&self.js, &subject).await?;
        drain
    }

    /// The HTTP-side limit: POSTing the same count to the receiver at the same concurrency,
    /// with a reqwest client set up like the gateway's.
    async fn push_http_only(&self, in_flight: usize) -> anyhow::Result<Drain> {
        let http = reqwest::Client::builder().tcp_nodelay(true).pool_idle_timeout(Duration::from_secs(60)).build()?;
        let n = self.s.push_messages as u64;
        self.received.push.store(0, Ordering::SeqCst);
        let next = Arc::new(AtomicU64::new(0));
        let url = format!("http://{}/push", self.receiver);
        let body = payload(0);
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (http, next, url, body) = (http.clone(), next.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await?;
                        if !r.status().is_success() {
                            bail!("receiver answered {}", r.status());
                        }
                        r.bytes().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        let received = self.received.clone();
        let drain = self.watch_drain(move || received.push.load(Ordering::Relaxed), n, Duration::from_secs(300)).await;
        for t in tasks {
            t.await??;
        }
        drain
    }

    /// Sustained: HTTP publishers (closed loop) and one push subscription at once, so the
    /// tracking index is written as in production (at publish).
    async fn push_sustained(&self, tracking: bool, publishers: usize) -> anyhow::Result<Measured> {
        let label = if tracking { "on" } else { "off" };
        let subject = format!("bench.flow.{label}");
        let mut config = base_config(&self.nats_url, &self.files, tracking);
        config.subscriptions.insert(
            format!("flow-{label}"),
            subscription(json!({
                "subjects": [subject],
                "endpoint": format!("http://{}/push", self.receiver),
                "max_in_flight": 64,
            })),
        );
        let gateway = Gateway::start(&self.gw, config).await?;
        self.received.push.store(0, Ordering::SeqCst);
        let paths = Arc::new(vec![format!("/v1/publish/{subject}")]);
        let addr = gateway.addr;
        let body = payload(0);
        let m = measure_with_probe(&self.s, self.nats_pid, publishers, Some(&self.received.push), move |_, w| {
            http_loop(addr, Method::POST, paths.clone(), Some(body.clone()), 0, w)
        })
        .await;
        warn_errors(&format!("sustained publish (tracking {label})"), m.errors, m.first_error.as_deref());
        // Let the backlog drain before the gateway stops (deliveries stop growing).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = u64::MAX;
        while Instant::now() < deadline {
            let now = self.received.push.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        gateway.stop().await;
        purge(&self.js, &subject).await?;
        Ok(m)
    }

    async fn push(&self) -> anyhow::Result<String> {
        let n = self.s.push_messages;
        let mut table = String::new();
        let mut cpu = String::new();
        let _ = writeln!(
            table,
            "| max_in_flight | tracking | gateway deliveries/s | direct pull+ack msg/s (limit) | gateway/direct | HTTP-only POST/s | gateway/HTTP-only |"
        );
        let _ = writeln!(table, "|---:|---|---:|---:|---:|---:|---:|");
        let _ = writeln!(cpu, "| path | in flight | {CPU_HEADER} |");
        let _ = writeln!(cpu, "|---|---:|{CPU_ALIGN}|");
        let mut off_on = Vec::new();
        for &f in &self.s.push_in_flight {
            eprintln!("push, max_in_flight {f}: direct pull+ack (load {})", load_average());
            let direct = self.push_direct(f).await?;
            eprintln!("push, max_in_flight {f}: HTTP only");
            let http = self.push_http_only(f).await?;
            let mut rates = Vec::new();
            for tracking in [false, true] {
                eprintln!("push, max_in_flight {f}: gateway, tracking {tracking} (load {})", load_average());
                let g = self.push_gateway(f, tracking).await?;
                self.check_foreign("push", &g.cpu);
                let _ = writeln!(
                    table,
                    "| {f} | {} | {:.0} | {:.0} | {} | {:.0} | {} |",
                    if tracking { "on" } else { "off" },
                    g.per_sec,
                    direct.per_sec,
                    ratio(g.per_sec, direct.per_sec),
                    http.per_sec,
                    ratio(g.per_sec, http.per_sec),
                );
                let _ = writeln!(
                    cpu,
                    "| gateway push, tracking {} | {f} | {} |",
                    if tracking { "on" } else { "off" },
                    cpu_cells(&g.cpu)
                );
                rates.push(g.per_sec);
            }
            off_on.push((f, rates[0], rates[1]));
            let _ = writeln!(cpu, "| direct pull+ack | {f} | {} |", cpu_cells(&direct.cpu));
            let _ = writeln!(cpu, "| HTTP only | {f} | {} |", cpu_cells(&http.cpu));
        }
        let mut out = format!(
            "### (a) Push delivery: draining {n} × {PAYLOAD_BYTES} B messages to a no-op receiver\n\n\
             Rate from the first to the last delivery. Latency under load is (b)'s subject; a drain \
             has only queueing time.\n\n{table}\n"
        );
        let _ = writeln!(out, "Tracking on ÷ off (push deliveries/s):");
        for (f, off, on) in off_on {
            let _ = writeln!(out, "- max_in_flight {f}: {} ({:+.1} %)", ratio(on, off), (on / off - 1.0) * 100.0);
        }
        let _ = writeln!(out, "\nCPU per delivery (µs):\n\n{cpu}");

        // Sustained publish + push, tracking off and on.
        let publishers = 16;
        let mut flow = String::new();
        let _ = writeln!(
            flow,
            "| tracking | published msgs/s | publish p50 ms | publish p99 ms | delivered msgs/s | {CPU_HEADER} |"
        );
        let _ = writeln!(flow, "|---|---:|---:|---:|---:|{CPU_ALIGN}|");
        let mut rates = Vec::new();
        for tracking in [false, true] {
            eprintln!("push, sustained publish + delivery, tracking {tracking} (load {})", load_average());
            let m = self.push_sustained(tracking, publishers).await?;
            self.check_foreign("sustained", &m.cpu);
            let _ = writeln!(
                flow,
                "| {} | {:.0} | {} | {} | {:.0} | {} |",
                if tracking { "on" } else { "off" },
                m.ops_per_sec,
                ms(m.p50_us),
                ms(m.p99_us),
                m.probe_per_sec,
                cpu_cells(&m.cpu)
            );
            rates.push((m.ops_per_sec, m.probe_per_sec, m.cpu.total_us));
        }
        let _ = writeln!(
            out,
            "Sustained: {publishers} HTTP publishers (closed loop, 1 KiB, no contract) and the push subscription \
             (`max_in_flight` 64, `start = new`) running at once; {:?} window after {:?} warm-up. CPU per \
             published message.\n\n{flow}\nTracking on ÷ off: published {}, delivered {}, CPU per message {}.\n",
            self.s.duration,
            self.s.warmup,
            ratio(rates[1].0, rates[0].0),
            ratio(rates[1].1, rates[0].1),
            ratio(rates[1].2, rates[0].2),
        );
        Ok(out)
    }

    // ---- (b) publish → receive latency

    async fn latency_run(&self, tracking: bool) -> anyhow::Result<(String, String)> {
        let label = if tracking { "on" } else { "off" };
        let subject = format!("bench.lat.{label}");
        let mut config = base_config(&self.nats_url, &self.files, tracking);
        config.subscriptions.insert(
            format!("lat-{label}"),
            subscription(json!({
                "subjects": [subject],
                "endpoint": format!("http://{}/lat", self.receiver),
                "max_in_flight": 64,
            })),
        );
        let gateway = Gateway::start(&self.gw, config).await?;
        self.received.latency.lock().expect("lock").clear();
        let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(64).build()?;
        let url = format!("http://{}/v1/publish/{subject}", gateway.addr);
        let rate = self.s.latency_rate;
        let warmup_n = (self.s.warmup.as_secs_f64() * rate).round() as usize;
        let measured_n = (self.s.latency_secs * rate).round() as usize;
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sends = Vec::with_capacity(warmup_n + measured_n);
        let mut window_start_us = 0;
        let (mut t0, mut cpu0) = (Instant::now(), sample_cpu(self.nats_pid));
        for i in 0..warmup_n + measured_n {
            ticker.tick().await;
            if i == warmup_n {
                window_start_us = now_us();
                (t0, cpu0) = (Instant::now(), sample_cpu(self.nats_pid));
            }
            let (http, url) = (http.clone(), url.clone());
            sends.push(tokio::spawn(async move {
                let sent = now_us();
                let r = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(payload(sent))
                    .send()
                    .await;
                let outcome = match r {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Err(e.to_string()),
                };
                (sent, u32::try_from(now_us() - sent).unwrap_or(u32::MAX), outcome)
            }));
        }
        let mut publish_lat = Vec::with_capacity(measured_n);
        let (mut errors, mut first_error, mut accepted) = (0u64, None, 0usize);
        for s in sends {
            let (sent, lat, outcome) = s.await?;
            match outcome {
                Ok(()) => {
                    accepted += 1;
                    if sent >= window_start_us {
                        publish_lat.push(lat);
                    }
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        // Every accepted message delivered (or give up after 10 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received.latency.lock().expect("lock").len() < accepted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (t1, cpu1) = (Instant::now(), sample_cpu(self.nats_pid));
        gateway.stop().await;
        warn_errors(&format!("latency (tracking {label})"), errors, first_error.as_deref());
        let got: Vec<(u64, u32)> = self.received.latency.lock().expect("lock").clone();
        let received_n = got.len();
        let mut e2e: Vec<u32> = got.into_iter().filter(|(sent, _)| *sent >= window_start_us).map(|(_, l)| l).collect();
        e2e.sort_unstable();
        publish_lat.sort_unstable();
        let cpu = per_op(cpu1 - cpu0, e2e.len() as u64, t1 - t0);
        self.check_foreign("latency", &cpu);
        if received_n < accepted {
            eprintln!("WARNING latency (tracking {label}): {received_n} of {accepted} accepted messages delivered");
        }
        let row = format!(
            "| {label} | {rate:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            e2e.len(),
            ms(percentile(&e2e, 50.0)),
            ms(percentile(&e2e, 99.0)),
            ms(e2e.last().copied().unwrap_or(0)),
            ms(percentile(&publish_lat, 50.0)),
            ms(percentile(&publish_lat, 99.0)),
            errors,
            accepted - received_n.min(accepted),
        );
        let cpu_row = format!("| publish + push, tracking {label} | {} |", cpu_cells(&cpu));
        purge(&self.js, &subject).await?;
        Ok((row, cpu_row))
    }

    async fn latency(&self) -> anyhow::Result<String> {
        let mut table = String::new();
        let mut cpu = String::new();
        let _ = writeln!(
            table,
            "| tracking | msgs/s offered | measured msgs | e2e p50 ms | e2e p99 ms | e2e max ms | publish p50 ms | publish p99 ms | publish errors | not delivered |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(cpu, "| path | {CPU_HEADER} |");
        let _ = writeln!(cpu, "|---|{CPU_ALIGN}|");
        for tracking in [false, true] {
            eprintln!("latency at {} msgs/s, tracking {tracking} (load {})", self.s.latency_rate, load_average());
            let (row, cpu_row) = self.latency_run(tracking).await?;
            let _ = writeln!(table, "{row}");
            let _ = writeln!(cpu, "{cpu_row}");
        }
        Ok(format!(
            "### (b) Publish → receive latency at a fixed rate\n\n\
             `POST /v1/publish/bench.lat.*` (1 KiB, open loop) → JetStream → push subscription \
             (`max_in_flight` 64) → receiver; e2e = receive time − send time, over {} s after {:?} \
             of warm-up. Target: p99 < 20 ms at 500 msgs/s.\n\n{table}\nCPU per message (µs):\n\n{cpu}",
            self.s.latency_secs, self.s.warmup
        ))
    }

    // ---- (c) request/reply

    async fn request(&self, gateway: SocketAddr) -> anyhow::Result<String> {
        let body = Bytes::from_static(br#"{"customer":"C-0042","since":"2025-01-01"}"#);
        // One request first: the service answers through the gateway.
        let mut conn = Conn::open(gateway).await.map_err(|e| anyhow!(e))?;
        expect_ok(
            conn.call(Method::POST, &format!("/v1/request/{SERVICE_SUBJECT}"), Some(body.clone()))
                .await
                .map_err(|e| anyhow!(e))?,
        )
        .map_err(|e| anyhow!("request through the gateway: {e}"))?;
        let mut table = String::new();
        let mut cpu = String::new();
        let _ = writeln!(
            table,
            "| concurrency | gateway req/s | p50 ms | p99 ms | direct req/s | p50 ms | p99 ms | gateway/direct |"
        );
        let _ = writeln!(table, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(cpu, "| path | concurrency | {CPU_HEADER} |");
        let _ = writeln!(cpu, "|---|---:|{CPU_ALIGN}|");
        for &c in &self.s.rr_levels {
            eprintln!("request/reply, concurrency {c}: gateway (load {})", load_average());
            let path = Arc::new(format!("/v1/request/{SERVICE_SUBJECT}"));
            let b = body.clone();
            let g = measure(&self.s, self.nats_pid, c, move |_, w| {
                http_loop(gateway, Method::POST, Arc::new(vec![(*path).clone()]), Some(b.clone()), 0, w)
            })
            .await;
            warn_errors("request via gateway", g.errors, g.first_error.as_deref());
            eprintln!("request/reply, concurrency {c}: direct");
            let client = self.client.clone();
            let b = body.clone();
            let d = measure(&self.s, self.nats_pid, c, move |_, w| {
                let (client, b) = (client.clone(), b.clone());
                async move {
                    let mut st = WorkerStats::default();
                    while Instant::now() < w.end {
                        let t0 = Instant::now();
                        let r = client.request(SERVICE_SUBJECT, b.clone()).await.map(|_| ()).map_err(|e| e.to_string());
                        st.record(w, t0, r);
                    }
                    st
                }
            })
            .await;
            warn_errors("request direct", d.errors, d.first_error.as_deref());
            self.check_foreign("request", &g.cpu);
            let _ = writeln!(
                table,
                "| {c} | {:.0} | {} | {} | {:.0} | {} | {} | {} |",
                g.ops_per_sec,
                ms(g.p50_us),
                ms(g.p99_us),
                d.ops_per_sec,
                ms(d.p50_us),
                ms(d.p99_us),
                ratio(g.ops_per_sec, d.ops_per_sec)
            );
            let _ = writeln!(cpu, "| gateway | {c} | {} |", cpu_cells(&g.cpu));
            let _ = writeln!(cpu, "| direct | {c} | {} |", cpu_cells(&d.cpu));
        }
        Ok(format!(
            "### (c) Request/reply: HTTP → gateway → NATS micro service vs direct `client.request`\n\n\
             Closed loop (requests in flight = concurrency; one HTTP connection per worker, one shared \
             NATS connection for direct), {:?} window after {:?} warm-up; the service answers a 58 B \
             JSON from one task on the `peer` runtime.\n\n{table}\nCPU per request (µs):\n\n{cpu}",
            self.s.duration, self.s.warmup
        ))
    }

    // ---- (d) directory reads

    async fn kv(&self, gateway: SocketAddr) -> anyhow::Result<String> {
        let store = self.js.get_key_value(BUCKET).await?;
        let keys: Vec<String> = (0..self.s.kv_keys).map(|i| format!("item-{i:05}")).collect();
        for (i, key) in keys.iter().enumerate() {
            let value = json!({
                "sku": key, "name": format!("Château Bench {i}"), "vintage": 2019, "volume_ml": 750,
                "price": {"amount": 1234.5, "currency": "RUB"}, "country": "FR", "region": "Bordeaux",
                "grapes": ["Merlot", "Cabernet Sauvignon"], "active": true,
            });
            store.put(key, serde_json::to_vec(&value)?.into()).await?;
        }
        let paths = Arc::new(keys.iter().map(|k| format!("/v1/kv/{BUCKET}/{k}")).collect::<Vec<_>>());
        let mut conn = Conn::open(gateway).await.map_err(|e| anyhow!(e))?;
        expect_ok(conn.call(Method::GET, &paths[0], None).await.map_err(|e| anyhow!(e))?)
            .map_err(|e| anyhow!("directory GET: {e}"))?;
        let keys = Arc::new(keys);
        let mut table = String::new();
        let mut cpu = String::new();
        let _ = writeln!(
            table,
            "| concurrency | gateway GET/s | p50 ms | p99 ms | direct get/s | p50 ms | p99 ms | gateway/direct |"
        );
        let _ = writeln!(table, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(cpu, "| path | concurrency | {CPU_HEADER} |");
        let _ = writeln!(cpu, "|---|---:|{CPU_ALIGN}|");
        for &c in &self.s.kv_levels {
            eprintln!("directory GET, concurrency {c}: gateway (load {})", load_average());
            let p = paths.clone();
            let g = measure(&self.s, self.nats_pid, c, move |i, w| {
                http_loop(gateway, Method::GET, p.clone(), None, i * 7919, w)
            })
            .await;
            warn_errors("kv via gateway", g.errors, g.first_error.as_deref());
            eprintln!("directory GET, concurrency {c}: direct");
            let (st, k) = (store.clone(), keys.clone());
            let d = measure(&self.s, self.nats_pid, c, move |i, w| {
                let (store, keys) = (st.clone(), k.clone());
                async move {
                    let mut stats = WorkerStats::default();
                    let mut n = i * 7919;
                    while Instant::now() < w.end {
                        let key = &keys[n % keys.len()];
                        n += 1;
                        let t0 = Instant::now();
                        let r = match store.get(key).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(format!("no key {key}")),
                            Err(e) => Err(e.to_string()),
                        };
                        stats.record(w, t0, r);
                    }
                    stats
                }
            })
            .await;
            warn_errors("kv direct", d.errors, d.first_error.as_deref());
            self.check_foreign("kv", &g.cpu);
            let _ = writeln!(
                table,
                "| {c} | {:.0} | {} | {} | {:.0} | {} | {} | {} |",
                g.ops_per_sec,
                ms(g.p50_us),
                ms(g.p99_us),
                d.ops_per_sec,
                ms(d.p50_us),
                ms(d.p99_us),
                ratio(g.ops_per_sec, d.ops_per_sec)
            );
            let _ = writeln!(cpu, "| gateway | {c} | {} |", cpu_cells(&g.cpu));
            let _ = writeln!(cpu, "| direct | {c} | {} |", cpu_cells(&d.cpu));
        }
        Ok(format!(
            "### (d) Directory reads: `GET /v1/kv/{BUCKET}/{{key}}` vs direct `kv::Store::get`\n\n\
             {} keys of ~230 B JSON, read round-robin; closed loop, one connection per worker, {:?} \
             window after {:?} warm-up. Target: ≥ 10,000/s and p99 < 5 ms at moderate load.\n\n{table}\nCPU per read (µs):\n\n{cpu}",
            self.s.kv_keys, self.s.duration, self.s.warmup
        ))
    }

    // ---- (e) HTTP pull

    async fn pull_gateway(&self, gateway: SocketAddr, pullers: usize) -> anyhow::Result<(Drain, Vec<u32>, Vec<u32>)> {
        let n = self.s.pull_messages;
        prefill(&self.js, "bench.pull.gw", n, &payload(0)).await?;
        let done = Arc::new(AtomicU64::new(0));
        let batch = self.s.pull_batch;
        let tasks: Vec<_> = (0..pullers)
            .map(|_| {
                let done = done.clone();
                tokio::spawn(async move {
                    let mut conn = Conn::open(gateway).await.map_err(|e| anyhow!(e))?;
                    let fetch_body = Bytes::from(json!({ "max": batch }).to_string());
                    let (mut fetch_lat, mut ack_lat) = (Vec::new(), Vec::new());
                    loop {
                        let t0 = Instant::now();
                        let body = expect_ok(
                            conn.call(Method::POST, "/v1/subscriptions/pull/fetch", Some(fetch_body.clone()))
                                .await
                                .map_err(|e| anyhow!(e))?,
                        )
                        .map_err(|e| anyhow!("fetch: {e}"))?;
                        let t1 = Instant::now();
                        let fetched: Value = serde_json::from_slice(&body)?;
                        let acks: Vec<Value> = fetched["messages"]
                            .as_array()
                            .ok_or_else(|| anyhow!("fetch answered {fetched}"))?
                            .iter()
                            .map(|m| json!({ "token": m["ack_token"] }))
                            .collect();
                        if acks.is_empty() {
                            break;
                        }
                        let count = acks.len() as u64;
                        let ack_body = Bytes::from(serde_json::to_vec(&json!({ "acks": acks }))?);
                        let t2 = Instant::now();
                        let (status, body) = conn
                            .call(Method::POST, "/v1/subscriptions/pull/ack", Some(ack_body))
                            .await
                            .map_err(|e| anyhow!(e))?;
                        let t3 = Instant::now();
                        if status != StatusCode::OK {
                            bail!("ack answered {status}: {}", String::from_utf8_lossy(&body));
                        }
                        fetch_lat.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
                        ack_lat.push(u32::try_from((t3 - t2).as_micros()).unwrap_or(u32::MAX));
                        done.fetch_add(count, Ordering::Relaxed);
                    }
                    anyhow::Ok((fetch_lat, ack_lat))
                })
            })
            .collect();
        let d = done.clone();
        let drain = self.watch_drain(move || d.load(Ordering::Relaxed), n as u64, Duration::from_secs(600)).await?;
        let (mut fetch_lat, mut ack_lat) = (Vec::new(), Vec::new());
        for t in tasks {
            let (f, a) = t.await??;
            fetch_lat.extend(f);
            ack_lat.extend(a);
        }
        fetch_lat.sort_unstable();
        ack_lat.sort_unstable();
        purge(&self.js, "bench.pull.gw").await?;
        Ok((drain, fetch_lat, ack_lat))
    }

    async fn pull_direct(&self, pullers: usize, double_ack: bool) -> anyhow::Result<(Drain, Vec<u32>)> {
        let n = self.s.pull_messages;
        let batch = self.s.pull_batch;
        let name = format!("direct-pull-{pullers}-{}", if double_ack { "double" } else { "plain" });
        let consumer = direct_consumer(&self.js, &name, "bench.pull.direct", batch * pullers).await?;
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..pullers)
            .map(|_| {
                let (consumer, done) = (consumer.clone(), done.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while done.load(Ordering::Relaxed) < n as u64 {
                        let t0 = Instant::now();
                        let mut messages =
                            consumer.fetch().max_messages(batch).messages().await.map_err(|e| anyhow!("{e}"))?;
                        let mut got = 0;
                        while let Some(m) = messages.next().await {
                            let m = m.map_err(|e| anyhow!("{e}"))?;
                            if double_ack {
                                m.double_ack().await.map_err(|e| anyhow!("{e}"))?;
                            } else {
                                m.ack().await.map_err(|e| anyhow!("{e}"))?;
                            }
                            got += 1;
                        }
                        if got == 0 {
                            break;
                        }
                        lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                        done.fetch_add(got, Ordering::Relaxed);
                    }
                    anyhow::Ok(lat)
                })
            })
            .collect();
        let d = done.clone();
        let drain = self.watch_drain(move || d.load(Ordering::Relaxed), n as u64, Duration::from_secs(600)).await?;
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        lat.sort_unstable();
        Ok((drain, lat))
    }

    async fn pull(&self, gateway: SocketAddr) -> anyhow::Result<String> {
        let n = self.s.pull_messages;
        let batch = self.s.pull_batch;
        prefill(&self.js, "bench.pull.direct", n, &payload(0)).await?;
        let mut table = String::new();
        let mut cpu = String::new();
        let _ = writeln!(
            table,
            "| pullers | gateway msgs/s | fetch p50/p99 ms | ack p50/p99 ms | direct (ack) msgs/s | batch p50/p99 ms | gateway/direct | direct (double ack) msgs/s | batch p50/p99 ms | gateway/double |"
        );
        let _ = writeln!(table, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(cpu, "| path | pullers | {CPU_HEADER} |");
        let _ = writeln!(cpu, "|---|---:|{CPU_ALIGN}|");
        for &c in &self.s.pull_levels {
            eprintln!("pull, {c} puller(s): gateway (load {})", load_average());
            let (g, fl, al) = self.pull_gateway(gateway, c).await?;
            self.check_foreign("pull", &g.cpu);
            eprintln!("pull, {c} puller(s): direct");
            let (d, dl) = self.pull_direct(c, false).await?;
            eprintln!("pull, {c} puller(s): direct, double ack");
            let (dd, ddl) = self.pull_direct(c, true).await?;
            let pp = |v: &[u32]| format!("{} / {}", ms(percentile(v, 50.0)), ms(percentile(v, 99.0)));
            let _ = writeln!(
                table,
                "| {c} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0} | {} | {} |",
                g.per_sec,
                pp(&fl),
                pp(&al),
                d.per_sec,
                pp(&dl),
                ratio(g.per_sec, d.per_sec),
                dd.per_sec,
                pp(&ddl),
                ratio(g.per_sec, dd.per_sec)
            );
            let _ = writeln!(cpu, "| gateway fetch+ack | {c} | {} |", cpu_cells(&g.cpu));
            let _ = writeln!(cpu, "| direct, ack | {c} | {} |", cpu_cells(&d.cpu));
            let _ = writeln!(cpu, "| direct, double ack | {c} | {} |", cpu_cells(&dd.cpu));
        }
        purge(&self.js, "bench.pull.direct").await?;
        Ok(format!(
            "### (e) HTTP pull: fetch {batch} + ack {batch} vs a direct pull consumer\n\n\
             {n} × {PAYLOAD_BYTES} B messages drained per row; each puller loops `fetch {{\"max\":{batch}}}` → \
             `ack` with every token (one HTTP connection per puller). Direct: `fetch().max_messages({batch})`, \
             each message acked (`ack` = fire-and-forget, `double ack` = awaits the server's confirmation, \
             as the gateway does).\n\n{table}\nCPU per message (µs):\n\n{cpu}"
        ))
    }
}

/// Closed loop over HTTP: one connection, one request at a time, paths taken in turn.
async fn http_loop(
    addr: SocketAddr,
    method: Method,
    paths: Arc<Vec<String>>,
    body: Option<Bytes>,
    offset: usize,
    window: Window,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut conn = match Conn::open(addr).await {
        Ok(c) => c,
        Err(e) => {
            stats.errors += 1;
            stats.first_error = Some(e);
            return stats;
        }
    };
    let mut n = offset;
    while Instant::now() < window.end {
        let path = &paths[n % paths.len()];
        n += 1;
        let t0 = Instant::now();
        let outcome = conn.call(method.clone(), path, body.clone()).await;
        let broken = outcome.is_err();
        stats.record(window, t0, outcome.and_then(expect_ok).map(|_| ()));
        if broken {
            match Conn::open(addr).await {
                Ok(c) => conn = c,
                Err(_) => return stats,
            }
        }
    }
    stats
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

fn runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()?)
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = now_us();
    let s = Settings::from_env()?;
    let nats = NatsServer::start();
    let version = nats.version();
    let nats_pid = nats.pid();
    let nats_url = nats.url();
    let files = Files::new()?;
    let gw_rt = runtime(s.gateway_threads, "gw")?;
    let peer_rt = runtime(s.peer_threads, "peer")?;
    let lg_rt = runtime(s.client_threads, "lg")?;
    let (receiver, received) = start_receiver(peer_rt.handle())?;
    let load_before = load_average();
    let started = Instant::now();

    let result = lg_rt.block_on(async {
        let client = async_nats::connect(&nats_url).await?;
        let js = jetstream::context::ContextBuilder::new().timeout(Duration::from_secs(10)).build(client.clone());
        // The stream exists before the first gateway starts, so backlogs can be pre-filled;
        // the gateway's reconcile finds it as declared.
        let config: jetstream::stream::Config = serde_json::from_value(stream_json())?;
        js.get_or_create_stream(config).await?;
        start_service(peer_rt.handle(), nats_url.clone()).await?;
        let b = Bench {
            s,
            nats_url: nats_url.clone(),
            nats_pid,
            gw: gw_rt.handle().clone(),
            client,
            js,
            files,
            receiver,
            received,
        };
        eprintln!(
            "magistral paths benchmark: {}; {version}; runtimes gw {} / lg {} / peer {} threads; load {}",
            machine(),
            b.s.gateway_threads,
            b.s.client_threads,
            b.s.peer_threads,
            load_average()
        );
        let mut out = String::new();
        if b.s.runs("push") {
            out.push_str(&b.push().await?);
            out.push('\n');
        }
        if b.s.runs("latency") {
            out.push_str(&b.latency().await?);
            out.push('\n');
        }
        if b.s.runs("request") || b.s.runs("kv") || b.s.runs("pull") {
            // One gateway (tracking on, the default) for request/reply, directories and pull.
            let mut config = base_config(&b.nats_url, &b.files, true);
            config.directories.insert(
                BUCKET.into(),
                serde_json::from_value::<DirectoryConfig>(json!({ "owner": PARTICIPANT })).expect("directory"),
            );
            config.subscriptions.insert(
                "pull".into(),
                subscription(json!({
                    "subjects": ["bench.pull.gw"],
                    "mode": "pull",
                    "start": "all",
                    // The consumer's max_ack_pending: room for every puller's batch.
                    "max_in_flight": (b.s.pull_batch * b.s.pull_levels.iter().copied().max().unwrap_or(1)).max(32),
                })),
            );
            let gateway = Gateway::start(&b.gw, config).await?;
            if b.s.runs("request") {
                out.push_str(&b.request(gateway.addr).await?);
                out.push('\n');
            }
            if b.s.runs("kv") {
                out.push_str(&b.kv(gateway.addr).await?);
                out.push('\n');
            }
            if b.s.runs("pull") {
                out.push_str(&b.pull(gateway.addr).await?);
                out.push('\n');
            }
            gateway.stop().await;
        }
        anyhow::Ok((out, b.s))
    });
    let load_after = load_average();
    let (tables, s) = result?;
    println!(
        "## Delivery, request/reply, directories and pull\n\n\
         - machine: {}; load average (1/5/15 min) {load_before} before, {load_after} after ({:.0} s)\n\
         - {version}, JetStream file storage, R1, one server started by the benchmark\n\
         - in one process: gateway runtime {} threads (`gw`), load generator {} (`lg`), receiver and micro service {} (`peer`)\n\
         - CPU columns: µs of CPU per operation over the measured window, by thread group; \
         \"other procs\" = cores used by the rest of the machine meanwhile\n\n{tables}",
        machine(),
        started.elapsed().as_secs_f64(),
        s.gateway_threads,
        s.client_threads,
        s.peer_threads,
    );
    drop(lg_rt);
    drop(gw_rt);
    drop(peer_rt);
    drop(nats);
    Ok(())
}
