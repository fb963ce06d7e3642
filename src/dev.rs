//! `magistral dev`: a local nats-server when none is reachable, and a hint of what to try.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server started for development; killed when dropped.
pub struct DevNats {
    child: Child,
}

impl Drop for DevNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host:port of the first URL in a NATS URL list.
#[must_use]
pub fn first_host_port(url: &str) -> Option<(String, u16)> {
    let first = url.split(',').next()?.trim();
    let rest = first.split("://").nth(1).unwrap_or(first);
    let rest = rest.rsplit('@').next()?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "4222"));
    Some((host.to_owned(), port.trim_end_matches('/').parse().ok()?))
}

fn reachable(host: &str, port: u16) -> bool {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr: SocketAddr| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
}

/// Finds a nats-server binary: `NATS_SERVER_BIN`, `.tools/bin/nats-server`, or `PATH`.
#[must_use]
pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let local = Path::new(".tools/bin/nats-server");
    if local.exists() {
        return local.to_path_buf();
    }
    PathBuf::from("nats-server")
}

/// Why a development nats-server could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DevNatsError {
    #[error("cannot read host:port from {0}")]
    Url(String),
    #[error("{path}: {source}", path = .path.display())]
    StoreDir { path: PathBuf, source: std::io::Error },
    #[error("cannot start {binary} ({source}); run scripts/install-nats-server.sh", binary = .binary.display())]
    Start { binary: PathBuf, source: std::io::Error },
    #[error("nats-server did not listen on {host}:{port} within 10 s")]
    NotListening { host: String, port: u16 },
}

/// Starts nats-server with JetStream on the URL's port unless something already listens.
///
/// # Errors
/// The binary cannot be started or does not listen within 10 s.
pub fn ensure_nats(url: &str, store_dir: &Path) -> Result<Option<DevNats>, DevNatsError> {
    let (host, port) = first_host_port(url).ok_or_else(|| DevNatsError::Url(url.to_owned()))?;
    if reachable(&host, port) {
        eprintln!("magistral dev: using the NATS server already at {host}:{port}");
        return Ok(None);
    }
    let binary = nats_server_binary();
    std::fs::create_dir_all(store_dir)
        .map_err(|source| DevNatsError::StoreDir { path: store_dir.to_path_buf(), source })?;
    eprintln!("magistral dev: starting {} on {host}:{port} (store {})", binary.display(), store_dir.display());
    let child = Command::new(&binary)
        .args(["-js", "-a", &host, "-p", &port.to_string(), "-sd"])
        .arg(store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| DevNatsError::Start { binary: binary.clone(), source })?;
    let nats = DevNats { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reachable(&host, port) {
        if Instant::now() > deadline {
            return Err(DevNatsError::NotListening { host, port });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Some(nats))
}

#[cfg(test)]
mod tests {
    use super::first_host_port;

    #[test]
    fn host_port_from_urls() {
        assert_eq!(first_host_port("nats://127.0.0.1:4222"), Some(("127.0.0.1".into(), 4222)));
        assert_eq!(first_host_port("nats://u:p@h:5000,nats://x:1"), Some(("h".into(), 5000)));
        assert_eq!(first_host_port("localhost"), Some(("localhost".into(), 4222)));
    }
}
