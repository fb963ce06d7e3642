//! A real `nats-server` per test: JetStream on, dynamic port, its own store dir, killed on drop.
//! The one helper that runs nats-server: the integration tests use it as `common::nats`, and
//! the benchmarks include this file (`#[path = "../tests/it/common/nats.rs"] mod nats;`), so
//! it depends on nothing else of the test crate.
//!
//! Tests never share a broker or a fixed port (see STYLE.md), so they can run in parallel under
//! `cargo test` and `cargo nextest`. The binary is found in this order:
//! 1. `$NATS_SERVER_BIN` (set by `scripts/test` and `scripts/dev`);
//! 2. `<repo>/.tools/bin/nats-server` (installed by `scripts/install-nats-server.sh`);
//! 3. `nats-server` on `PATH`.
//!
//! Blocking `std::process` on purpose: usable from `#[test]` and `#[tokio::test]` alike, and
//! `Drop` can kill the child without a runtime.
// Not every test binary uses every helper.
#![allow(dead_code)]

use std::env;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a start or restart may take before the test fails; generous for loaded CI hosts.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Polling interval while waiting for the server.
const POLL: Duration = Duration::from_millis(20);

/// A running `nats-server` child process with JetStream enabled.
///
/// Everything it writes lives in one temporary directory: `store/` (JetStream), `ports/` (the
/// ports file announcing the dynamic port) and `nats-server.log` (its stdout and stderr, kept
/// out of the test output and printed when start-up fails).
pub struct NatsServer {
    /// The `nats-server` binary, kept so `restart` runs the same one.
    bin: PathBuf,
    /// Root of the store dir, ports dir and log; removed when the server is dropped.
    dir: TempDir,
    /// Client port, chosen by the server on first start and reused by `restart`.
    port: u16,
    /// Configuration file (`-c`) when started with [`NatsServer::start_with_config`].
    config: Option<PathBuf>,
    /// `None` after `kill`.
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a fresh server on a dynamic port with an empty JetStream store.
    ///
    /// # Panics
    /// When no binary is found or the server is not accepting clients within 10 s.
    pub fn start() -> NatsServer {
        Self::start_with_config("")
    }

    /// Like [`NatsServer::start`], with `config` as the server's configuration file (`-c`);
    /// the flags the helper sets (JetStream, address, port, store dir) take precedence. For
    /// example `jetstream { limits { default_max_consumers: 2 } }` lowers the consumers a
    /// stream may have (nats-server 2.15 allows 1,000 by default; `-1` lifts the cap).
    ///
    /// # Panics
    /// As [`NatsServer::start`], or when the server refuses the configuration.
    pub fn start_with_config(config: &str) -> NatsServer {
        let bin = server_bin();
        let dir =
            tempfile::Builder::new().prefix("magistral-nats-").tempdir().expect("create temp dir for nats-server");
        fs::create_dir(dir.path().join("store")).expect("create store dir");
        fs::create_dir(dir.path().join("ports")).expect("create ports dir");
        let config = (!config.is_empty()).then(|| {
            let path = dir.path().join("nats-server.conf");
            fs::write(&path, config).expect("write nats-server config");
            path
        });
        let mut server = NatsServer { bin, dir, port: 0, config, child: None };
        let mut child = server.spawn("-1");
        let port = match wait_for_ports_file(&server.ports_dir(), &mut child) {
            Ok(port) => port,
            Err(why) => server.fail(child, &why),
        };
        server.port = port;
        server.child = Some(child);
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the configuration file of a server started with
    /// [`NatsServer::start_with_config`]; read at the next [`NatsServer::restart`].
    ///
    /// # Panics
    /// When the server was started without one.
    pub fn rewrite_config(&self, config: &str) {
        let path = self.config.as_ref().expect("started with start_with_config");
        fs::write(path, config).expect("write nats-server config");
    }

    /// JetStream store dir (`-sd`); survives `kill` and `restart`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's combined stdout/stderr log, accumulated across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The server's process id (the benchmarks read its CPU time from `/proc/<pid>`).
    ///
    /// # Panics
    /// After `kill`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("nats-server is not running")
    }

    /// What `nats-server --version` prints, for reports.
    pub fn version(&self) -> String {
        Command::new(&self.bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }

    /// Whether the child process is still there (`kill` not called, not crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the server abruptly (SIGKILL, no lame-duck or flush) and waits for it to exit:
    /// the "broker crashed" case. No-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store dir, so streams, consumers
    /// and KV written before survive; kills it first when still running. Returns once the port
    /// accepts TCP connections.
    ///
    /// # Panics
    /// When the server is not accepting clients within 10 s (e.g. the port was taken meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        let mut child = self.spawn(&self.port.to_string());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.fail(child, &format!("nats-server exited during restart: {status}"));
            }
            if TcpStream::connect_timeout(&addr, POLL * 5).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                self.fail(child, &format!("port {} not accepting connections after {START_DEADLINE:?}", self.port));
            }
            thread::sleep(POLL);
        }
        self.child = Some(child);
    }

    fn ports_dir(&self) -> PathBuf {
        self.dir.path().join("ports")
    }

    fn spawn(&self, port: &str) -> Child {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open nats-server log");
        let log_err = log.try_clone().expect("clone log handle");
        let mut command = Command::new(&self.bin);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", port])
            .arg("-sd")
            .arg(self.store_dir())
            .arg("--ports_file_dir")
            .arg(self.ports_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}\n{}", self.bin.display(), INSTALL_HINT))
    }

    /// Kills `child`, then panics with `why` and the server log.
    fn fail(&self, mut child: Child, why: &str) -> ! {
        let _ = child.kill();
        let _ = child.wait();
        let log = fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<no log: {e}>"));
        panic!(
            "nats-server ({}) failed to start: {why}\n--- {} ---\n{log}--- end of log ---",
            self.bin.display(),
            self.log_path().display()
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const INSTALL_HINT: &str = "run scripts/install-nats-server.sh (installs .tools/bin/nats-server), \
     or set NATS_SERVER_BIN to a nats-server >= 2.10 binary";

/// Finds the `nats-server` binary (see the module docs for the order).
/// The `nats-server` binary the tests run (also handed to `magistral dev` by its tests).
pub fn server_bin() -> PathBuf {
    if let Some(bin) = env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "NATS_SERVER_BIN={} does not exist; {INSTALL_HINT}", bin.display());
        return bin;
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/nats-server");
    if tools.is_file() {
        return tools;
    }
    env::var_os("PATH")
        .and_then(|path| env::split_paths(&path).map(|dir| dir.join("nats-server")).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("nats-server not found; {INSTALL_HINT}"))
}

/// Waits for `nats-server_<pid>.ports` (written once the listeners are up) and returns the
/// client port from it: `{"nats":["nats://127.0.0.1:PORT"], ...}`.
fn wait_for_ports_file(dir: &Path, child: &mut Child) -> Result<u16, String> {
    let file = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("nats-server exited: {status}"));
        }
        // The file may be seen half-written; a parse failure just means "poll again".
        if let Some(port) = File::open(&file)
            .ok()
            .and_then(|f| serde_json::from_reader::<_, serde_json::Value>(f).ok())
            .and_then(|ports| client_port(&ports))
        {
            return Ok(port);
        }
        if Instant::now() >= deadline {
            return Err(format!("no ports file {} after {START_DEADLINE:?}", file.display()));
        }
        thread::sleep(POLL);
    }
}

fn client_port(ports: &serde_json::Value) -> Option<u16> {
    ports["nats"].as_array()?.iter().filter_map(|url| url.as_str()?.rsplit_once(':')?.1.parse().ok()).next()
}
