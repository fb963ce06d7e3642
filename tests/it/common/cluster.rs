//! Real processes for the cluster fault tests: a three-node NATS JetStream cluster on
//! loopback, and gateway processes (the built `magistral` binary) started like an operator
//! would, each killable and restartable on the same ports.
//!
//! Ports. Every node gets a client and a cluster port picked below the kernel's ephemeral
//! range and checked free when picked: the outgoing connections a test makes by the thousand
//! take ephemeral ports, and one of them holding a node's port would make its restart fail
//! with "address in use". The ports file (`--ports_file_dir`, as in [`super::nats`]) tells
//! when a node listens and which monitoring port it got (that one stays dynamic).
//!
//! Readiness. A node is ready when its monitoring `/healthz` answers 200: JetStream is on, the
//! node is in contact with the meta leader and every stream and consumer it holds is current.
//! The cluster is ready when every running node is and the JetStream API answers
//! (`$JS.API.INFO`, which only a meta leader serves).
// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::HashSet;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longest any single wait here may take (start, restart, leader election, readiness).
pub const WAIT: Duration = Duration::from_secs(30);
/// How long a node may take to open its listeners (the ports file appears).
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// Name of the NATS cluster; nodes are `n0`, `n1`, `n2`.
const CLUSTER_NAME: &str = "magistral-it";

/// Three `nats-server` processes forming one JetStream cluster. Dropping it kills them all.
pub struct NatsCluster {
    bin: PathBuf,
    /// Root of every node's store, ports dir, config and log; removed on drop.
    dir: TempDir,
    nodes: Vec<Node>,
    /// A client for the monitoring endpoints.
    http: reqwest::Client,
}

struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    /// Monitoring port of the current run (dynamic, read from the ports file).
    monitor_port: u16,
    /// `None` after `kill`.
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes with empty stores and waits (≤ 30 s) until the cluster has a
    /// JetStream meta leader and every node is healthy.
    ///
    /// # Panics
    /// When a node does not start or the cluster does not form within the deadlines.
    pub async fn start() -> NatsCluster {
        let bin = server_bin();
        let dir = tempfile::Builder::new().prefix("magistral-cluster-").tempdir().expect("create cluster temp dir");
        let nodes = (0..3)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: pick_port(),
                cluster_port: pick_port(),
                monitor_port: 0,
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { bin, dir, nodes, http: crate::common::http_client() };
        for i in 0..3 {
            fs::create_dir_all(cluster.node_dir(i).join("store")).expect("create store dir");
            fs::create_dir_all(cluster.node_dir(i).join("ports")).expect("create ports dir");
            cluster.write_config(i);
        }
        // Spawn all before waiting for any: a node alone cannot elect a meta leader.
        let children: Vec<Child> = (0..3).map(|i| cluster.spawn(i)).collect();
        for (i, child) in children.into_iter().enumerate() {
            cluster.await_listening(i, child);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Client URLs of all three nodes, comma-separated (what `MAGISTRAL_NATS__URL` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// `nats://127.0.0.1:PORT` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// `n0`, `n1`, `n2`: the `server_name` JetStream reports (e.g. as a stream's leader).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s combined stdout/stderr, accumulated across restarts.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("nats-server.log")
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        matches!(self.nodes[i].child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL node `i` (no lame duck, no flush) and reap it. No-op when not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Starts node `i` again on the same ports with the same store (killing it first if it
    /// runs) and waits (≤ 30 s) until it is healthy and the cluster has a meta leader.
    ///
    /// # Panics
    /// When the node does not come back within the deadlines.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn(i);
        self.await_listening(i, child);
        self.wait_ready().await;
    }

    /// Starts every stopped node again (same ports, same stores) and waits (≤ 30 s) for a
    /// meta leader and every node healthy.
    pub async fn restart_all(&mut self) {
        let stopped: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.is_running(i)).collect();
        let children: Vec<(usize, Child)> = stopped.iter().map(|&i| (i, self.spawn(i))).collect();
        for (i, child) in children {
            self.await_listening(i, child);
        }
        self.wait_ready().await;
    }

    /// Waits (≤ 30 s) until every running node's `/healthz` is 200 and the JetStream API
    /// answers through a client connected to the running nodes.
    ///
    /// # Panics
    /// At the deadline, with what was still failing and the end of each node's log.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut last_problem = String::new();
        let mut js: Option<async_nats::jetstream::Context> = None;
        loop {
            let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_running(i)).collect();
            let mut healthy = true;
            for &i in &running {
                let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
                match self.http.get(&url).timeout(Duration::from_secs(2)).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        healthy = false;
                        last_problem = format!(
                            "{} /healthz {}: {}",
                            self.nodes[i].name,
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                    Err(e) => {
                        healthy = false;
                        last_problem = format!("{} /healthz: {e}", self.nodes[i].name);
                    }
                }
            }
            if healthy {
                if js.is_none() {
                    let urls: Vec<String> = running.iter().map(|&i| self.url(i)).collect();
                    match async_nats::ConnectOptions::new()
                        .connection_timeout(Duration::from_secs(2))
                        .connect(server_addrs(&urls.join(",")))
                        .await
                    {
                        Ok(client) => js = Some(async_nats::jetstream::new(client)),
                        Err(e) => last_problem = format!("connect: {e}"),
                    }
                }
                if let Some(js) = &js {
                    match tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
                        Ok(Ok(_)) => return,
                        Ok(Err(e)) => last_problem = format!("$JS.API.INFO: {e}"),
                        Err(_) => last_problem = "$JS.API.INFO: no answer within 2 s".into(),
                    }
                }
            }
            if Instant::now() >= deadline {
                let logs: String = (0..self.nodes.len())
                    .map(|i| format!("--- {} ---\n{}", self.nodes[i].name, tail(&self.log_path(i), 30)))
                    .collect();
                panic!("NATS cluster not ready within {WAIT:?}: {last_problem}\n{logs}");
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[i].name)
    }

    fn write_config(&self, i: usize) {
        let node = &self.nodes[i];
        let dir = self.node_dir(i);
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"server_name: "{name}"
host: "127.0.0.1"
port: {client}
http: "127.0.0.1:-1"
ports_file_dir: "{ports}"
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  # A reservation limit, not disk used: the example's streams reserve their max_bytes.
  max_file_store: 64GB
}}
cluster {{
  name: "{CLUSTER_NAME}"
  listen: "127.0.0.1:{cluster}"
  routes: [{routes}]
}}
"#,
            name = node.name,
            client = node.client_port,
            cluster = node.cluster_port,
            ports = dir.join("ports").display(),
            store = dir.join("store").display(),
        );
        fs::write(dir.join("nats-server.conf"), config).expect("write node config");
    }

    fn spawn(&self, i: usize) -> Child {
        let dir = self.node_dir(i);
        let log = OpenOptions::new().create(true).append(true).open(self.log_path(i)).expect("open node log");
        let log_err = log.try_clone().expect("clone log handle");
        Command::new(&self.bin)
            // Log times in UTC, comparable with the tests' clock (recovery runs read them).
            .env("TZ", "UTC")
            .arg("-c")
            .arg(dir.join("nats-server.conf"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/install-nats-server.sh", self.bin.display()))
    }

    /// Waits for the ports file of `child` (its listeners are up), records its monitoring
    /// port and keeps the child.
    fn await_listening(&mut self, i: usize, mut child: Child) {
        let file = self.node_dir(i).join("ports").join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + LISTEN_DEADLINE;
        let monitor = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited at start: {status}\n{}", self.nodes[i].name, tail(&self.log_path(i), 40));
            }
            // A half-written file fails to parse: poll again.
            if let Some(port) = File::open(&file)
                .ok()
                .and_then(|f| serde_json::from_reader::<_, serde_json::Value>(f).ok())
                .and_then(|ports| port_of(&ports["monitoring"]))
            {
                break port;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: no ports file after {LISTEN_DEADLINE:?}\n{}",
                    self.nodes[i].name,
                    tail(&self.log_path(i), 40)
                );
            }
            thread::sleep(POLL);
        };
        self.nodes[i].monitor_port = monitor;
        self.nodes[i].child = Some(child);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A comma-separated URL list as async-nats takes it (its `&str` form is one URL only).
pub fn server_addrs(urls: &str) -> Vec<async_nats::ServerAddr> {
    urls.split(',').map(|u| u.trim().parse().expect("NATS URL")).collect()
}

/// A JetStream context on its own connection to any of `urls` (comma-separated), for
/// looking at what was stored.
pub async fn jetstream(urls: &str) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(server_addrs(urls))
        .await
        .expect("connect to the NATS cluster");
    async_nats::jetstream::new(client)
}

/// The first port of a ports-file list such as `["http://127.0.0.1:8222"]`.
fn port_of(list: &serde_json::Value) -> Option<u16> {
    list.as_array()?.iter().filter_map(|url| url.as_str()?.rsplit_once(':')?.1.parse().ok()).next()
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<no log {}: {e}>\n", path.display()));
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// Finds `nats-server` like [`super::nats`] does: `$NATS_SERVER_BIN`, `.tools/bin`, `PATH`.
fn server_bin() -> PathBuf {
    if let Some(bin) = env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/nats-server");
    if tools.is_file() {
        return tools;
    }
    env::var_os("PATH")
        .and_then(|path| env::split_paths(&path).map(|dir| dir.join("nats-server")).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("nats-server not found; run scripts/install-nats-server.sh or set NATS_SERVER_BIN"))
}

/// Ports already handed out in this test process, so parallel tests never pick the same one.
static PICKED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port below the ephemeral range (see the module docs), never handed out
/// twice in this process. Falls back to a kernel-chosen port when no low range exists.
pub fn pick_port() -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut picked = PICKED.lock().unwrap();
    let picked = picked.get_or_insert_with(HashSet::new);
    if low > 12_000 {
        let (from, span) = (10_000u64, u64::from(low) - 10_000);
        for _ in 0..1000 {
            let port = u16::try_from(from + random() % span).expect("port fits");
            if picked.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                picked.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if picked.insert(port) {
            return port;
        }
    }
}

/// A random number without a dependency: every `RandomState` is seeded afresh.
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

// ---------------------------------------------------------------------------------------
// Gateway processes

const BIN: &str = env!("CARGO_BIN_EXE_magistral");

/// A `magistral serve` child process on a fixed loopback port; SIGTERM, SIGKILL and start
/// again on the same port. Killed on drop.
pub struct GatewayProcess {
    pub name: String,
    pub port: u16,
    config: PathBuf,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started (the log separates runs).
    runs: u32,
}

impl GatewayProcess {
    /// Starts `magistral serve --config <config>` with `MAGISTRAL_LISTEN` on a picked port,
    /// `MAGISTRAL_NATS__URL = nats_urls` and the extra variables; logs go to `log_dir`.
    /// Does not wait for readiness (see [`Self::wait_ready`]).
    pub fn start(name: &str, config: &Path, nats_urls: &str, extra_env: &[(&str, &str)], log_dir: &Path) -> Self {
        let mut envs = vec![
            ("MAGISTRAL_NATS__URL".to_owned(), nats_urls.to_owned()),
            ("MAGISTRAL_LOG__LEVEL".to_owned(), "info,async_nats=warn".to_owned()),
        ];
        envs.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut gateway = GatewayProcess {
            name: name.to_owned(),
            port: pick_port(),
            config: config.to_path_buf(),
            envs,
            log: log_dir.join(format!("gateway-{name}.log")),
            child: None,
            runs: 0,
        };
        gateway.start_again();
        gateway
    }

    /// Starts the process again on the same port (it must have exited).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "gateway {} still running", self.name);
        self.runs += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open gateway log");
        std::io::Write::write_all(&mut log, format!("===== run {} =====\n", self.runs).as_bytes()).unwrap();
        let log_err = log.try_clone().unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("MAGISTRAL_CONFIG")
            .env("MAGISTRAL_LISTEN", format!("127.0.0.1:{}", self.port))
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("run magistral");
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `/readyz` until 200 (≤ `within`).
    ///
    /// # Panics
    /// At the deadline or when the process exited, with the end of its log.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let last = match http.get(format!("{}/readyz", self.base())).timeout(Duration::from_secs(3)).send().await {
                Ok(r) if r.status() == 200 => return,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("gateway {} exited ({status}) before ready\n{}", self.name, tail(&self.log, 40));
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} not ready within {within:?}: {last}\n{}",
                self.name,
                tail(&self.log, 40)
            );
            tokio::time::sleep(POLL * 2).await;
        }
    }

    /// Polls `/readyz` until it answers 503 (≤ `within`).
    pub async fn wait_not_ready(&self, http: &reqwest::Client, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.base())).timeout(Duration::from_secs(3)).send().await
                && r.status() == 503
            {
                return;
            }
            assert!(Instant::now() < deadline, "gateway {} /readyz not 503 within {within:?}", self.name);
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM (what Kubernetes does at a rolling update).
    pub fn sigterm(&self) {
        let pid = self.pid().expect("gateway running");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// SIGKILL and reap. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (≤ `within`) for the process to exit and returns its status and how long it took.
    ///
    /// # Panics
    /// When it is still running at the deadline (it is killed first).
    pub async fn wait_exit(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let child = self.child.as_mut().expect("gateway running");
        loop {
            if let Some(status) = child.try_wait().expect("wait for gateway") {
                self.child = None;
                return (status, started.elapsed());
            }
            if started.elapsed() >= within {
                self.kill();
                panic!("gateway {} did not exit within {within:?}\n{}", self.name, tail(&self.log, 40));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// A copy of the root configuration (the wine-retail example) in a temp dir, with `edit` applied; returns the dir
/// and the path of its `magistral.toml`.
pub fn example_copy() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("magistral-example-").tempdir().unwrap();
    crate::common::gateway::copy_example(dir.path());
    let config = dir.path().join("magistral.toml");
    (dir, config)
}

/// Replaces the first `from` in a file with `to`; panics when `from` is not there.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    crate::common::write_atomically(path, text.replacen(from, to, 1));
}

/// Makes the example's ORDERS stream R3.
pub fn make_r3(example_dir: &Path) {
    edit(&example_dir.join("streams/ORDERS.json"), "\"num_replicas\": 1", "\"num_replicas\": 3");
}

/// Points the example's `nav-orders` push subscription at `endpoint` (a test receiver), with a
/// short ack wait and delivery from the start of the stream.
pub fn add_nav_subscription(example_dir: &Path, endpoint: &str) {
    crate::common::point_nav_orders_at(example_dir, endpoint);
}
