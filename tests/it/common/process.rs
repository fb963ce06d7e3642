//! The real `magistral` binary as a child process: started on a dynamic port against a test
//! nats-server, its stderr kept in a temp file, its peak memory read from `/proc`.
//! Killed on drop.
// Not every test uses every helper.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_magistral");

pub struct GatewayProcess {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    /// Holds the stderr log; removed on drop.
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// `magistral serve --config <config>` on a free loopback port, with extra `MAGISTRAL_*`
    /// settings; waits (bounded) until `/readyz` answers 200.
    pub async fn start(config: &Path, nats_url: &str, envs: &[(&str, &str)]) -> GatewayProcess {
        let dir = tempfile::Builder::new().prefix("magistral-proc-").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let log = File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("MAGISTRAL_CONFIG")
            .env("MAGISTRAL_LISTEN", &listen)
            .env("MAGISTRAL_NATS__URL", nats_url)
            .env("MAGISTRAL_LOG__FORMAT", "json")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn magistral");
        let mut gw =
            GatewayProcess { child, base: format!("http://{listen}"), http: crate::common::http_client(), dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !gw.ready().await {
            assert!(gw.is_alive(), "magistral exited during start-up:\n{}", gw.stderr_tail(4000));
            assert!(Instant::now() < deadline, "magistral not ready within 20 s:\n{}", gw.stderr_tail(4000));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port` for raw TCP.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/readyz` answers 200 within 5 s.
    pub async fn ready(&self) -> bool {
        let probe = self.http.get(self.url("/readyz")).timeout(Duration::from_secs(5)).send();
        matches!(probe.await, Ok(r) if r.status() == 200)
    }

    /// Peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), in KiB; `None` once
    /// the process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        vm_hwm_kib(self.child.id())
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// The last `max` bytes of what the process wrote to stderr (panics, aborts).
    pub fn stderr_tail(&self, max: usize) -> String {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmHWM` of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
