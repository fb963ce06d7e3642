//! `magistral dev`: the listen port claimed first, a local nats-server when none is
//! reachable, and the gateway served until that nats-server dies (then `dev` stops too, so
//! it never runs on not-ready without saying why).

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;

/// How often `dev` looks whether its nats-server still runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// How long the gateway may drain after its nats-server died before `dev` exits anyway.
const DRAIN_WITHOUT_NATS: Duration = Duration::from_secs(3);

/// A nats-server started for development; killed when dropped.
pub struct DevNats {
    child: Mutex<Child>,
    pid: u32,
    addr: String,
}

impl DevNats {
    /// The process id (printed at start, so it can be found and stopped).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process has exited, with how it ended.
    pub async fn exited(&self) -> ExitStatus {
        loop {
            if let Ok(mut child) = self.child.lock()
                && let Ok(Some(status)) = child.try_wait()
            {
                return status;
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
        }
    }
}

impl Drop for DevNats {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Why `magistral dev` stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot listen on {addr} ({source}); choose another address with --listen, e.g. --listen {ip}:{next}", ip = .addr.ip(), next = .addr.port().wrapping_add(1))]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Nats(#[from] DevNatsError),
    #[error(
        "the nats-server magistral dev started (pid {pid}, {addr}) exited ({status}); stopping the gateway. Start `magistral dev` again for a new one"
    )]
    NatsDied { pid: u32, addr: String, status: ExitStatus },
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

/// Claims the listen address before anything else starts, so a busy port is the first and
/// only thing reported.
///
/// # Errors
/// [`DevError::Listen`], naming the `--listen` flag.
pub fn bind_listen(addr: SocketAddr) -> Result<std::net::TcpListener, DevError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| DevError::Listen { addr, source })?;
    listener.set_nonblocking(true).map_err(|source| DevError::Listen { addr, source })?;
    Ok(listener)
}

/// The NATS URL with the port of its first server replaced (`--nats-port`).
#[must_use]
pub fn with_port(url: &str, port: u16) -> Option<String> {
    let (host, _) = first_host_port(url)?;
    Some(format!("nats://{host}:{port}"))
}

/// Serves the gateway until `shutdown`, or until the nats-server `dev` started exits: then
/// says so at once, drains briefly and fails with [`DevError::NatsDied`].
///
/// # Errors
/// The gateway failed ([`DevError::Run`]) or its nats-server died.
pub async fn serve(
    config: Config,
    catalog: Catalog,
    listener: std::net::TcpListener,
    nats: Option<&DevNats>,
    shutdown: CancellationToken,
) -> Result<(), DevError> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| DevError::Listen { addr: config.listen, source })?;
    let run = crate::run(config, catalog, listener, shutdown.clone());
    let Some(nats) = nats else { return Ok(run.await?) };
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => Ok(result?),
        status = nats.exited() => {
            let died = DevError::NatsDied { pid: nats.pid, addr: nats.addr.clone(), status };
            // Said now, not after the drain: the operator sees why the moment it happens.
            eprintln!("magistral dev: {died}");
            shutdown.cancel();
            let _ = tokio::time::timeout(DRAIN_WITHOUT_NATS, run).await;
            Err(died)
        }
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

/// What answers on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Nothing,
    /// A NATS server: it greets every client with `INFO {...}` at once.
    Nats,
    /// Something else took the port.
    Other,
}

fn probe(host: &str, port: u16) -> Listener {
    let Some(addr) = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next()) else { return Listener::Nothing };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return Listener::Nothing;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut greeting = [0_u8; 5];
    match stream.read_exact(&mut greeting) {
        Ok(()) if greeting.eq_ignore_ascii_case(b"INFO ") => Listener::Nats,
        _ => Listener::Other,
    }
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
    #[error("nats-server exited at start ({status}); is {host}:{port} free? Another port is chosen with --nats-port")]
    Exited { host: String, port: u16, status: ExitStatus },
    #[error("{host}:{port} is taken by something that is not a NATS server; start the development one on another port with --nats-port, e.g. --nats-port {next}", next = .port.wrapping_add(1))]
    NotNats { host: String, port: u16 },
    #[error(
        "--fresh: a NATS server this command did not start is already at {host}:{port}, and its streams would stay; stop it first, or take another port with --nats-port"
    )]
    FreshButRunning { host: String, port: u16 },
}

/// Starts nats-server with JetStream on the URL's port unless something already listens.
/// `fresh` empties `store_dir` first, so that the bus starts with no streams, directories or
/// dead letters (a walkthrough's sequence numbers assume that).
///
/// # Errors
/// The binary cannot be started or does not listen within 10 s; `fresh` with a NATS server
/// already there (its store is not ours to empty).
pub fn ensure_nats(url: &str, store_dir: &Path, fresh: bool) -> Result<Option<DevNats>, DevNatsError> {
    let (host, port) = first_host_port(url).ok_or_else(|| DevNatsError::Url(url.to_owned()))?;
    match probe(&host, port) {
        Listener::Nats if fresh => return Err(DevNatsError::FreshButRunning { host, port }),
        Listener::Nats => {
            eprintln!("magistral dev: using the NATS server already at {host}:{port}");
            return Ok(None);
        }
        Listener::Other => return Err(DevNatsError::NotNats { host, port }),
        Listener::Nothing => {}
    }
    let binary = nats_server_binary();
    if fresh {
        match std::fs::remove_dir_all(store_dir) {
            Ok(()) => eprintln!("magistral dev: --fresh: emptied {}", store_dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DevNatsError::StoreDir { path: store_dir.to_path_buf(), source }),
        }
    }
    std::fs::create_dir_all(store_dir)
        .map_err(|source| DevNatsError::StoreDir { path: store_dir.to_path_buf(), source })?;
    let mut child = Command::new(&binary)
        .args(["-js", "-a", &host, "-p", &port.to_string(), "-sd"])
        .arg(store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| DevNatsError::Start { binary: binary.clone(), source })?;
    let pid = child.id();
    eprintln!(
        "magistral dev: started {} (pid {pid}) on {host}:{port} (store {})",
        binary.display(),
        store_dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(&host, port) != Listener::Nats {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DevNatsError::Exited { host, port, status });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DevNatsError::NotListening { host, port });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Some(DevNats { child: Mutex::new(child), pid, addr: format!("{host}:{port}") }))
}

#[cfg(test)]
mod tests {
    use super::{first_host_port, with_port};

    #[test]
    fn host_port_from_urls() {
        assert_eq!(first_host_port("nats://127.0.0.1:4222"), Some(("127.0.0.1".into(), 4222)));
        assert_eq!(first_host_port("nats://u:p@h:5000,nats://x:1"), Some(("h".into(), 5000)));
        assert_eq!(first_host_port("localhost"), Some(("localhost".into(), 4222)));
        assert_eq!(with_port("nats://127.0.0.1:4222", 4333).as_deref(), Some("nats://127.0.0.1:4333"));
    }
}
