//! Flat with scale (issue 16): what a deployment's size costs. The results and how to read
//! them are in `docs/benchmarks.md`, section "Flat with scale". Run with
//! `BENCHES=scale scripts/bench` or `cargo bench --bench scale` (`NATS_SERVER_BIN` optional).
//!
//! One run, one nats-server (started here, killed at the end), and the real `magistral`
//! binary of this build (`serve`, configuration generated into a temp dir) as a child process,
//! one deployment at a time. Each large deployment is measured beside one 100 times smaller,
//! in the same run, the same way:
//! - `participants` (100 vs 10,000): gateway CPU per authenticated request
//!   (`GET /v1/subscriptions`, tokens spread over every participant, 16 in flight); and, in
//!   this process, the token lookup alone next to the linear scan it replaced;
//! - `subscriptions` (10 vs 1,000 push subscriptions, one subject each, to a no-op receiver):
//!   start-up (until `/readyz`, until every consumer exists, until every subscription has
//!   delivered one message), idle CPU of the gateway and of nats-server and resident memory,
//!   in total and per subscription, and hot-reload time (a subscription added to the file →
//!   its first push);
//! - `contracts` (10 vs 1,000 contracts, one subject each): gateway CPU per validated publish
//!   of the 1.3 KiB sales order, subjects spread over every contract;
//! - `replicas` (for `docs/capacity.md`): a three-node nats-server cluster started here; direct
//!   JetStream publishing (256 acks outstanding) of the same order into one R1 and one R3
//!   stream: nats-server CPU per stored message summed over the nodes, and one stream's write
//!   rate.
//!
//! CPU is `/proc/<pid>/task/*/schedstat` (ns on CPU, summed over threads) of the gateway and
//! of nats-server; memory is `VmRSS` of `/proc/<pid>/status`; `/proc/stat` gives the machine's
//! busy time in each window, so load from other processes shows.
//!
//! Environment (all optional):
//! - `NATS_SERVER_BIN` (default `.tools/bin/nats-server`)
//! - `BENCH_SCALE` ("participants,subscriptions,contracts"): which scenarios to run
//! - `BENCH_SCALE_PARTICIPANTS` ("100,10000"), `BENCH_SCALE_SUBSCRIPTIONS` ("10,1000"),
//!   `BENCH_SCALE_CONTRACTS` ("10,1000"): the deployments compared (the first is the reference)
//! - `BENCH_SCALE_REQUESTS` (20000): requests per authentication / publish window
//! - `BENCH_SCALE_IN_FLIGHT` (16), `BENCH_SCALE_IDLE_SECS` (10)
//! - `BENCH_SCALE_REPLICA_MESSAGES` (20000)

#[path = "support/env.rs"]
mod env;
use env::env_or;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use magistral::participants::{Participant, Participants, hash_token};
use magistral::subject::PatternSet;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

#[path = "../tests/it/common/nats.rs"]
mod nats;
use nats::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_magistral");
const STREAM: &str = "BENCH";
/// What docs/operations.md ("NATS settings that matter") asks of a server beyond ~1,000
/// subscriptions.
const NATS_CONFIG: &str = "jetstream { limits { default_max_consumers: -1 } }\n";
const ADMIN_TOKEN: &str = "bench-scale-admin-token-0123456789";

fn token(i: usize) -> String {
    format!("bench-scale-token-{i:06}-0123456789abcdef")
}

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    scenarios: Vec<String>,
    participants: Vec<usize>,
    subscriptions: Vec<usize>,
    contracts: Vec<usize>,
    requests: usize,
    in_flight: usize,
    idle: Duration,
    replica_messages: usize,
}

/// `env::env_list`, refusing an empty list (a scale needs at least one deployment size).
fn env_list(name: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    let list = env::env_list(name, default)?;
    if list.is_empty() {
        bail!("{name} is empty");
    }
    Ok(list)
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            scenarios: std::env::var("BENCH_SCALE")
                .unwrap_or_else(|_| "participants,subscriptions,contracts,replicas".into())
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect(),
            participants: env_list("BENCH_SCALE_PARTICIPANTS", "100,10000")?,
            subscriptions: env_list("BENCH_SCALE_SUBSCRIPTIONS", "10,1000")?,
            contracts: env_list("BENCH_SCALE_CONTRACTS", "10,1000")?,
            requests: env_or("BENCH_SCALE_REQUESTS", 20_000)?,
            in_flight: env_or("BENCH_SCALE_IN_FLIGHT", 16)?,
            idle: Duration::from_secs_f64(env_or("BENCH_SCALE_IDLE_SECS", 10.0)?),
            replica_messages: env_or("BENCH_SCALE_REPLICA_MESSAGES", 20_000)?,
        })
    }

    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

// ---------------------------------------------------------------------------------------
// /proc

/// ns on CPU of every live thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// (busy, total) jiffies of the whole machine.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU of the gateway, of nats-server and of the machine across a window.
struct Window {
    start: Instant,
    gateway: u64,
    nats: u64,
    machine: (u64, u64),
}

struct Spent {
    wall: Duration,
    gateway_ns: u64,
    nats_ns: u64,
    /// Busy share of the whole machine (all cores) during the window.
    machine_busy: f64,
}

impl Window {
    fn open(gateway: u32, nats: u32) -> Self {
        Self { start: Instant::now(), gateway: cpu_ns(gateway), nats: cpu_ns(nats), machine: machine_jiffies() }
    }

    fn close(&self, gateway: u32, nats: u32) -> Spent {
        let (busy, total) = machine_jiffies();
        let (db, dt) = (busy - self.machine.0, total - self.machine.1);
        Spent {
            wall: self.start.elapsed(),
            gateway_ns: cpu_ns(gateway).saturating_sub(self.gateway),
            nats_ns: cpu_ns(nats).saturating_sub(self.nats),
            machine_busy: if dt == 0 { 0.0 } else { db as f64 / dt as f64 },
        }
    }
}

// ---------------------------------------------------------------------------------------
// The receiver: answers 200 to every push and remembers which subscription it came from.

#[derive(Default)]
struct Received {
    seen: Mutex<HashSet<String>>,
    total: AtomicUsize,
}

async fn hook(State(r): State<Arc<Received>>, UrlPath(sub): UrlPath<String>) -> StatusCode {
    r.total.fetch_add(1, Ordering::Relaxed);
    r.seen.lock().expect("receiver lock").insert(sub);
    StatusCode::OK
}

fn start_receiver(peer: &tokio::runtime::Handle) -> anyhow::Result<(SocketAddr, Arc<Received>)> {
    let received = Arc::new(Received::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/push/{sub}", axum::routing::post(hook)).with_state(received.clone());
    peer.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("receiver listener");
        axum::serve(listener, app).await.expect("receiver");
    });
    Ok((addr, received))
}

// ---------------------------------------------------------------------------------------
// A deployment: its configuration files and the gateway process

#[derive(Clone, Copy, Default)]
struct Size {
    participants: usize,
    subscriptions: usize,
    contracts: usize,
}

struct Deployment {
    dir: tempfile::TempDir,
    size: Size,
    receiver: SocketAddr,
}

fn sha_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Deployment {
    fn new(size: Size, receiver: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("magistral-bench-scale-").tempdir()?;
        std::fs::create_dir(dir.path().join("streams"))?;
        std::fs::create_dir(dir.path().join("contracts"))?;
        let stream = serde_json::json!({
            "name": STREAM, "subjects": ["bench.>"], "retention": "limits", "storage": "file",
            "num_replicas": 1, "discard": "old", "duplicate_window": 120_000_000_000u64,
        });
        std::fs::write(dir.path().join("streams/BENCH.json"), serde_json::to_vec_pretty(&stream)?)?;
        let schema = std::fs::read_to_string(repo().join("contracts/sales-order.v1.json"))?;
        for i in 0..size.contracts {
            let own = schema.replace("/contracts/sales-order/v1", &format!("/contracts/c{i}/v1"));
            std::fs::write(dir.path().join(format!("contracts/c{i}.v1.json")), own)?;
        }
        let deployment = Self { dir, size, receiver };
        deployment.write(size.subscriptions)?;
        Ok(deployment)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("magistral.toml")
    }

    /// Writes the configuration with `subscriptions` push subscriptions (atomically, as an
    /// operator's deploy tool would).
    fn write(&self, subscriptions: usize) -> anyhow::Result<()> {
        let mut t = String::from(
            "listen = \"127.0.0.1:0\"\nstreams_dir = \"streams\"\ncontracts_dir = \"contracts\"\nrequire_contract = false\n",
        );
        for i in 0..self.size.contracts {
            writeln!(
                t,
                "\n[[contracts]]\nname = \"c{i}\"\nversion = 1\nfile = \"c{i}.v1.json\"\nsubjects = [\"bench.c{i}\"]"
            )?;
        }
        writeln!(
            t,
            "\n[participants.bench]\ntokens = [{{ sha256 = \"{}\" }}]\npublish = [\"bench.>\"]\nsubscribe = [\"bench.>\"]\nadmin = true",
            sha_hex(ADMIN_TOKEN)
        )?;
        for i in 0..self.size.participants {
            writeln!(
                t,
                "\n[participants.p{i}]\ntokens = [{{ sha256 = \"{}\" }}]\npublish = [\"bench.p{i}\"]\nsubscribe = [\"bench.p{i}\"]",
                sha_hex(&token(i))
            )?;
        }
        for i in 0..subscriptions {
            writeln!(
                t,
                "\n[subscriptions.s{i}]\nparticipant = \"bench\"\nsubjects = [\"bench.s{i}\"]\nendpoint = \"http://{}/push/s{i}\"",
                self.receiver
            )?;
        }
        let path = self.config_path();
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, t)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

struct Gateway {
    child: Child,
    base: String,
    spawned: Instant,
    /// Spawn → `/readyz` 200.
    ready_after: Duration,
    log: PathBuf,
}

impl Gateway {
    async fn start(d: &Deployment, nats_url: &str, http: &reqwest::Client) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let log = d.dir.path().join("stderr.log");
        let spawned = Instant::now();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(d.config_path())
            .env_remove("MAGISTRAL_CONFIG")
            .env("MAGISTRAL_LISTEN", &listen)
            .env("MAGISTRAL_NATS__URL", nats_url)
            .env("MAGISTRAL_LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn magistral")?;
        let mut gw = Self { child, base: format!("http://{listen}"), spawned, ready_after: Duration::ZERO, log };
        loop {
            let probe = http.get(format!("{}/readyz", gw.base)).timeout(Duration::from_secs(5)).send().await;
            if matches!(probe, Ok(r) if r.status() == 200) {
                gw.ready_after = spawned.elapsed();
                return Ok(gw);
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                bail!("magistral exited ({status}) during start-up:\n{}", gw.log_tail());
            }
            if spawned.elapsed() > Duration::from_secs(120) {
                bail!("magistral not ready within 120 s:\n{}", gw.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect()
    }

    /// SIGTERM, then SIGKILL if it has not drained within 15 s.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("WARNING: gateway did not stop within 15 s; killed");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes the stream (with its consumers) so each deployment starts from an empty server.
async fn reset(js: &jetstream::Context) {
    let _ = js.delete_stream(STREAM).await;
}

/// `requests` calls built by `make(n)`, `in_flight` at a time; counts the answers that are not
/// `expect`.
async fn closed_loop<F>(requests: usize, in_flight: usize, expect: u16, make: F) -> anyhow::Result<usize>
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let (next, wrong, make) = (next.clone(), wrong.clone(), make.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                match make(n).send().await {
                    Ok(r) if r.status().as_u16() == expect => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        if wrong.fetch_add(1, Ordering::Relaxed) == 0 {
                            let status = r.status();
                            eprintln!("WARNING: {status}: {}", r.text().await.unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        if wrong.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("WARNING: {e}");
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    Ok(wrong.load(Ordering::Relaxed))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The machine's 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

struct Bench {
    s: Settings,
    nats: NatsServer,
    js: jetstream::Context,
    http: reqwest::Client,
    receiver: SocketAddr,
    received: Arc<Received>,
    out: String,
}

impl Bench {
    fn nats_pid(&self) -> u32 {
        self.nats.pid()
    }

    // -- participants ---------------------------------------------------------------------

    async fn participants(&mut self) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for &n in &self.s.participants {
            reset(&self.js).await;
            let d = Deployment::new(Size { participants: n, ..Size::default() }, self.receiver)?;
            let gw = Gateway::start(&d, &self.nats.url(), &self.http).await?;
            let tokens: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("Bearer {}", token(i))).collect());
            let (http, base) = (self.http.clone(), gw.base.clone());
            let request = move |k: usize| {
                // Spread over every participant, not in file order.
                let t = &tokens[k.wrapping_mul(7919) % tokens.len()];
                http.get(format!("{base}/v1/subscriptions")).header("authorization", t)
            };
            let warm = closed_loop(self.s.requests / 10, self.s.in_flight, 200, request.clone()).await?;
            let w = Window::open(gw.pid(), self.nats_pid());
            let wrong = closed_loop(self.s.requests, self.s.in_flight, 200, request).await? + warm;
            let spent = w.close(gw.pid(), self.nats_pid());
            if wrong > 0 {
                bail!("{wrong} authenticated requests were not answered 200 at {n} participants");
            }
            let rss = status_kib(gw.pid(), "VmRSS");
            let startup = gw.ready_after;
            gw.stop();
            rows.push((n, spent, rss, startup));
        }

        // The lookup alone, in this process, next to the linear scan it replaced.
        let mut micro = Vec::new();
        for &n in &self.s.participants {
            micro.push((n, lookup_ns(n, false), lookup_ns(n, true)));
        }

        let reference = rows[0].1.gateway_ns as f64 / self.s.requests as f64;
        let out = &mut self.out;
        writeln!(out, "\n### Participants: authentication cost per request\n")?;
        writeln!(
            out,
            "`GET /v1/subscriptions`, {} requests, {} in flight, tokens spread over every participant; \
             gateway CPU per request (µs), relative to the smallest deployment.\n",
            self.s.requests, self.s.in_flight
        )?;
        writeln!(
            out,
            "| participants | start-up to ready (s) | requests/s | gateway µs/request | ÷ {} participants | RSS (MiB) | machine busy |",
            rows[0].0
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|")?;
        for (n, spent, rss, startup) in &rows {
            let per = spent.gateway_ns as f64 / self.s.requests as f64 / 1000.0;
            writeln!(
                out,
                "| {n} | {} | {:.0} | {per:.1} | {:.2} | {} | {:.0} % |",
                secs(*startup),
                self.s.requests as f64 / spent.wall.as_secs_f64(),
                per * 1000.0 / reference,
                mib(*rss),
                spent.machine_busy * 100.0
            )?;
        }
        let last = rows.last().map_or(0.0, |r| r.1.gateway_ns as f64 / self.s.requests as f64);
        writeln!(
            out,
            "\nVerdict (within 10 % of {} participants at {}): {:.2} → {}\n",
            rows[0].0,
            rows.last().map_or(0, |r| r.0),
            last / reference,
            verdict(last / reference <= 1.10)
        )?;
        writeln!(out, "Token lookup alone (this process, one SHA-256 included), ns per call:\n")?;
        writeln!(out, "| participants | index lookup | linear scan (the former code, re-implemented here) |")?;
        writeln!(out, "|---:|---:|---:|")?;
        for (n, index, scan) in micro {
            writeln!(out, "| {n} | {index:.0} | {scan:.0} |")?;
        }
        Ok(())
    }

    // -- subscriptions --------------------------------------------------------------------

    async fn subscriptions(&mut self) -> anyhow::Result<()> {
        struct Row {
            n: usize,
            ready: Duration,
            consumers: Duration,
            delivered: Duration,
            idle: Spent,
            rss_idle: u64,
            hwm: u64,
            reload: Option<Duration>,
        }
        let mut rows = Vec::new();
        for &n in &self.s.subscriptions {
            reset(&self.js).await;
            *self.received.seen.lock().expect("receiver lock") = HashSet::new();
            let d = Deployment::new(Size { subscriptions: n, ..Size::default() }, self.receiver)?;
            let gw = Gateway::start(&d, &self.nats.url(), &self.http).await?;
            // Every consumer created…
            loop {
                let count = match self.js.get_stream(STREAM).await {
                    Ok(mut s) => s.info().await.map(|i| i.state.consumer_count).unwrap_or(0),
                    Err(_) => 0,
                };
                if count >= n {
                    break;
                }
                if gw.spawned.elapsed() > Duration::from_secs(300) {
                    bail!("{count} of {n} consumers after 300 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let consumers = gw.spawned.elapsed();
            // …and every subscription delivering: one message each.
            for i in 0..n {
                self.js.publish(format!("bench.s{i}"), "{\"n\":1}".into()).await?.await?;
            }
            loop {
                let seen = self.received.seen.lock().expect("receiver lock").len();
                if seen >= n {
                    break;
                }
                if gw.spawned.elapsed() > Duration::from_secs(300) {
                    bail!("{seen} of {n} subscriptions delivered after 300 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let delivered = gw.spawned.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let w = Window::open(gw.pid(), self.nats_pid());
            tokio::time::sleep(self.s.idle).await;
            let idle = w.close(gw.pid(), self.nats_pid());
            let rss_idle = status_kib(gw.pid(), "VmRSS");
            let hwm = status_kib(gw.pid(), "VmHWM");

            // Hot reload: one subscription added; the file saved → its first push.
            let added = format!("s{n}");
            let saved = Instant::now();
            d.write(n + 1)?;
            let mut reload = None;
            loop {
                if self.received.seen.lock().expect("receiver lock").contains(&added) {
                    reload = Some(saved.elapsed());
                    break;
                }
                if saved.elapsed() > Duration::from_secs(30) {
                    eprintln!("WARNING: {n}: the added subscription delivered nothing within 30 s:\n{}", gw.log_tail());
                    break;
                }
                self.js.publish(format!("bench.{added}"), "{\"n\":2}".into()).await?.await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ready = gw.ready_after;
            gw.stop();
            rows.push(Row { n, ready, consumers, delivered, idle, rss_idle, hwm, reload });
        }

        let out = &mut self.out;
        writeln!(out, "\n### Subscriptions: start-up, idle cost, memory, hot reload\n")?;
        writeln!(
            out,
            "Push subscriptions, one subject each, to a no-op receiver. Start-up times from the process's spawn; \
             idle over {} s after every subscription has delivered once; hot reload: one subscription added to \
             the file → its first push (target < 5 s). nats-server with `{}`. Load average now {}.\n",
            self.s.idle.as_secs_f64(),
            NATS_CONFIG.trim(),
            loadavg()
        )?;
        writeln!(
            out,
            "| subscriptions | ready (s) | every consumer (s) | every one delivered (s) | idle gateway CPU (%) | idle nats-server CPU (%) | RSS idle (MiB) | peak RSS (MiB) | hot reload (s) | machine busy |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &rows {
            let wall = r.idle.wall.as_secs_f64();
            writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {:.0} % |",
                r.n,
                secs(r.ready),
                secs(r.consumers),
                secs(r.delivered),
                r.idle.gateway_ns as f64 / 1e9 / wall * 100.0,
                r.idle.nats_ns as f64 / 1e9 / wall * 100.0,
                mib(r.rss_idle),
                mib(r.hwm),
                r.reload.map_or_else(|| "not applied in 30 s".to_owned(), secs),
                r.idle.machine_busy * 100.0
            )?;
        }
        if let (Some(a), Some(b)) = (rows.first(), rows.last())
            && b.n > a.n
        {
            let k = (b.n - a.n) as f64;
            let cpu = |r: &Row| r.idle.gateway_ns as f64 / r.idle.wall.as_secs_f64();
            let ncpu = |r: &Row| r.idle.nats_ns as f64 / r.idle.wall.as_secs_f64();
            writeln!(
                out,
                "\nPer subscription (difference between {} and {} ÷ {}): gateway idle CPU {:.1} µs/s, nats-server idle CPU \
                 {:.1} µs/s, resident memory {:.1} KiB.\n",
                b.n,
                a.n,
                b.n - a.n,
                (cpu(b) - cpu(a)) / k / 1000.0,
                (ncpu(b) - ncpu(a)) / k / 1000.0,
                (b.rss_idle as f64 - a.rss_idle as f64) / k
            )?;
            writeln!(
                out,
                "Verdicts at {}: start-up (every subscription delivering) {} s → {}; hot reload {} s → {}\n",
                b.n,
                secs(b.delivered),
                verdict(b.delivered < Duration::from_secs(5)),
                b.reload.map_or_else(|| "not applied in 30".to_owned(), secs),
                verdict(b.reload.is_some_and(|r| r < Duration::from_secs(5)))
            )?;
        }
        Ok(())
    }

    // -- contracts ------------------------------------------------------------------------

    async fn contracts(&mut self) -> anyhow::Result<()> {
        let order = bytes::Bytes::from(std::fs::read(repo().join("samples/sales-order.valid.json"))?);
        // (contracts loaded, contracts published to). Beside each large deployment spread over
        // all its contracts: the same deployment with publishes spread over as few contracts as
        // the reference has (the lookup among every contract, the validators touched as few as
        // in the reference), and the reference again at the end (drift within the run).
        let first = self.s.contracts[0];
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for &n in &self.s.contracts {
            if n > first {
                plan.push((n, first));
            }
            plan.push((n, n));
        }
        if self.s.contracts.len() > 1 {
            plan.push((first, first));
        }
        let mut rows = Vec::new();
        for (n, used) in plan {
            reset(&self.js).await;
            let d = Deployment::new(Size { contracts: n, ..Size::default() }, self.receiver)?;
            let gw = Gateway::start(&d, &self.nats.url(), &self.http).await?;
            let (http, base, body) = (self.http.clone(), gw.base.clone(), order.clone());
            // Contract c{k} for k spread over the first `used` of the (sorted by name) list.
            let request = move |k: usize| {
                let c = k.wrapping_mul(7919) % used;
                http.post(format!("{base}/v1/publish/bench.c{c}"))
                    .bearer_auth(ADMIN_TOKEN)
                    .header("content-type", "application/json")
                    .body(body.clone())
            };
            let warm = closed_loop(self.s.requests / 10, self.s.in_flight, 202, request.clone()).await?;
            let w = Window::open(gw.pid(), self.nats_pid());
            let wrong = closed_loop(self.s.requests, self.s.in_flight, 202, request).await? + warm;
            let spent = w.close(gw.pid(), self.nats_pid());
            if wrong > 0 {
                bail!("{wrong} publishes were not accepted at {n} contracts");
            }
            let rss = status_kib(gw.pid(), "VmRSS");
            let startup = gw.ready_after;
            gw.stop();
            rows.push((n, used, spent, rss, startup));
        }
        let per = |spent: &Spent| spent.gateway_ns as f64 / self.s.requests as f64;
        let reference = per(&rows[0].2);
        let out = &mut self.out;
        writeln!(out, "\n### Contracts: validation cost per message\n")?;
        writeln!(
            out,
            "`POST /v1/publish/bench.c{{k}}`, the {}-byte sales order, each subject bound to its own contract, {} requests, \
             {} in flight, subjects spread over the contracts in the \"published to\" column. Load average now {}.\n",
            order.len(),
            self.s.requests,
            self.s.in_flight,
            loadavg()
        )?;
        writeln!(
            out,
            "| contracts | published to | start-up to ready (s) | publishes/s | gateway µs/publish | ÷ first row | nats-server µs/publish | RSS (MiB) | machine busy |",
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for (n, used, spent, rss, startup) in &rows {
            writeln!(
                out,
                "| {n} | {used} | {} | {:.0} | {:.1} | {:.2} | {:.1} | {} | {:.0} % |",
                secs(*startup),
                self.s.requests as f64 / spent.wall.as_secs_f64(),
                per(spent) / 1000.0,
                per(spent) / reference,
                spent.nats_ns as f64 / self.s.requests as f64 / 1000.0,
                mib(*rss),
                spent.machine_busy * 100.0
            )?;
        }
        // The reference: the mean of the small deployment's rows (first and last).
        let small: Vec<f64> = rows.iter().filter(|r| r.0 == first).map(|r| per(&r.2)).collect();
        let small = small.iter().sum::<f64>() / small.len().max(1) as f64;
        if let Some(big) = rows.iter().rev().find(|r| r.0 > first && r.1 == r.0) {
            let few = rows.iter().find(|r| r.0 == big.0 && r.1 == first).map_or(f64::NAN, |r| per(&r.2));
            writeln!(
                out,
                "\nAt {} contracts ÷ {first} (mean of its rows): lookup among {} (publishing to {first}) {:.2}; \
                 publishing to all {} {:.2}. Verdict (validation cost per message unchanged, within 10 %): {:.2} → {}\n",
                big.0,
                big.0,
                few / small,
                big.0,
                per(&big.2) / small,
                per(&big.2) / small,
                verdict(per(&big.2) / small <= 1.10)
            )?;
        }
        Ok(())
    }
}

/// ns per token lookup among `n` participants: the index, or (`scan`) the former linear scan.
fn lookup_ns(n: usize, scan: bool) -> f64 {
    let list: Vec<Participant> =
        (0..n).map(|i| Participant::new(format!("p{i}"), vec![hash_token(&token(i))], PatternSet::default())).collect();
    let hashes: Vec<[u8; 32]> = (0..n).map(|i| hash_token(&token(i))).collect();
    let participants = Participants::new(list);
    let tokens: Vec<String> = (0..n).map(token).collect();
    let calls = if scan { 2_000_000 / n.max(1) + 200 } else { 200_000 };
    let start = Instant::now();
    let mut found = 0usize;
    for k in 0..calls {
        let t = &tokens[k.wrapping_mul(7919) % n];
        if scan {
            // What `Participants::authenticate` did before the index: every stored hash, in
            // constant time, never stopping early.
            let presented: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            let mut hit = None;
            for (i, h) in hashes.iter().enumerate() {
                if bool::from(h.ct_eq(&presented)) && hit.is_none() {
                    hit = Some(i);
                }
            }
            found += usize::from(std::hint::black_box(hit).is_some());
        } else {
            found += usize::from(std::hint::black_box(participants.authenticate(t)).is_some());
        }
    }
    assert_eq!(found, calls, "every token is found");
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// Three nats-server processes forming one JetStream cluster on loopback, killed on drop.
struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Child>,
    urls: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("magistral-bench-cluster-").tempdir()?;
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
        let route: Vec<u16> = (0..3).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
        let routes = route.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect::<Vec<_>>().join(", ");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let store = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&store)?;
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: bench, listen: \"127.0.0.1:{}\", routes: [{routes}] }}\n",
                    client[i],
                    store.display(),
                    route[i]
                ),
            )?;
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log")))?;
            nodes.push(
                Command::new(nats::server_bin())
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?,
            );
        }
        let urls = client.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let cluster = Self { _dir: dir, nodes, urls };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let why = match cluster.connect().await {
                Ok(c) => match jetstream::new(c).query_account().await {
                    Ok(_) => return Ok(cluster),
                    Err(e) => format!("$JS.API.INFO: {e}"),
                },
                Err(e) => format!("connect: {e}"),
            };
            if Instant::now() > deadline {
                bail!("the three-node cluster has no JetStream meta leader after 60 s (last: {why})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client to any of the three nodes. async-nats reads a `&str` as one URL, so the
    /// comma-separated list is split here (given whole, every connect failed to parse and the
    /// cluster looked leaderless).
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let addrs = self.urls.split(',').map(str::parse).collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
        Ok(async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)).connect(addrs).await?)
    }

    fn cpu_ns(&self) -> u64 {
        self.nodes.iter().map(|n| cpu_ns(n.id())).sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

impl Bench {
    async fn replicas(&mut self) -> anyhow::Result<()> {
        let order = bytes::Bytes::from(std::fs::read(repo().join("samples/sales-order.valid.json"))?);
        let cluster = Cluster::start().await?;
        let js = jetstream::new(cluster.connect().await?);
        let m = self.s.replica_messages;
        let mut rows = Vec::new();
        for r in [1usize, 3] {
            let name = format!("REP{r}");
            js.create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("rep{r}.>")],
                num_replicas: r,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
            let subject = format!("rep{r}.orders");
            // Warm-up, then the window.
            for (count, measured) in [(m / 10, false), (m, true)] {
                let (start, cpu, machine) = (Instant::now(), cluster.cpu_ns(), machine_jiffies());
                let mut acks = std::collections::VecDeque::with_capacity(256);
                for _ in 0..count {
                    acks.push_back(js.publish(subject.clone(), order.clone()).await?);
                    if acks.len() >= 256
                        && let Some(ack) = acks.pop_front()
                    {
                        ack.await?;
                    }
                }
                for ack in acks {
                    ack.await?;
                }
                if measured {
                    let (busy, total) = machine_jiffies();
                    let spent = Spent {
                        wall: start.elapsed(),
                        gateway_ns: 0,
                        nats_ns: cluster.cpu_ns().saturating_sub(cpu),
                        machine_busy: (busy - machine.0) as f64 / (total - machine.1).max(1) as f64,
                    };
                    rows.push((r, spent));
                }
            }
        }
        let out = &mut self.out;
        writeln!(out, "\n### Replication: nats-server CPU per stored message, one stream's write rate\n")?;
        writeln!(
            out,
            "Direct JetStream publishing (async-nats, 256 acks outstanding) of the {}-byte order into one stream \
             on a three-node cluster on this machine, {m} messages; CPU summed over the three nodes. The cluster's \
             three processes share the machine's cores with the publisher, so the rate is this machine's, \
             the CPU per message is what carries over. Load average now {}.\n",
            order.len(),
            loadavg()
        )?;
        writeln!(out, "| replicas | msgs/s (one stream) | nats-server µs/msg (all nodes) | ÷ R1 | machine busy |")?;
        writeln!(out, "|---:|---:|---:|---:|---:|")?;
        let reference = rows.first().map_or(1.0, |(_, s)| s.nats_ns as f64 / m as f64);
        for (r, spent) in &rows {
            let per = spent.nats_ns as f64 / m as f64;
            writeln!(
                out,
                "| R{r} | {:.0} | {:.1} | {:.2} | {:.0} % |",
                m as f64 / spent.wall.as_secs_f64(),
                per / 1000.0,
                per / reference,
                spent.machine_busy * 100.0
            )?;
        }
        Ok(())
    }
}

fn runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()?)
}

fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider (as in the tests); plain HTTP here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Settings::from_env()?;
    let peer = runtime(1, "peer")?;
    let lg = runtime(2, "lg")?;
    // nats-server 2.15 caps every stream at 1,000 consumers unless told otherwise, and each
    // subscription is one consumer on its stream and one on MAGISTRAL_REPLAY: the 1,001st
    // (hot reload at 1,000) would be refused with error 10026. Lifted as docs/operations.md says.
    let nats = NatsServer::start_with_config(NATS_CONFIG);
    let (receiver, received) = start_receiver(peer.handle())?;
    lg.block_on(async move {
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client);
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        let mut b = Bench { s, nats, js, http, receiver, received, out: String::new() };
        let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        writeln!(
            b.out,
            "## Flat with scale\n\n{cpus} CPUs, load average at start {}, {}, the `magistral` binary of this build as a process.",
            loadavg(),
            b.nats.version()
        )?;
        if b.s.runs("participants") {
            b.participants().await?;
            eprintln!("{}", b.out);
        }
        if b.s.runs("subscriptions") {
            b.subscriptions().await?;
        }
        if b.s.runs("contracts") {
            b.contracts().await?;
        }
        if b.s.runs("replicas") {
            b.replicas().await?;
        }
        print!("{}", b.out);
        anyhow::Ok(())
    })
}
