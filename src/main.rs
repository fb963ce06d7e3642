//! The `magistral` command: argument parsing and wiring only; the gateway and the client
//! are the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use magistral::catalog::Catalog;
use magistral::config::{Config, ConfigError};
use tokio_util::sync::CancellationToken;

// glibc's malloc made throughput swing between runs (about 30 % of gateway samples in
// malloc/free in the slow mode; benches/paths.rs); mimalloc keeps every run fast.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits: configuration error, or a command line that does not parse (EX_USAGE).
const EX_CONFIG: u8 = 64;
/// sysexits: a service (NATS) unavailable.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "magistral", version, about = "An integration bus: HTTP/JSON gateway over NATS JetStream")]
struct Cli {
    /// Configuration file (TOML). Defaults to ./magistral.toml when it exists.
    #[arg(long, short, global = true, env = "MAGISTRAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Write the AsyncAPI 3.0 document of the bus (as GET /v1/asyncapi.json serves it) from
    /// the configuration, offline: the whole bus, or what one participant sees.
    Asyncapi {
        /// Describe the bus as this participant sees it (an admin sees the whole bus).
        #[arg(long, value_name = "NAME")]
        participant: Option<String>,
        /// The gateway's host[:port] as participants reach it, instead of `listen`.
        #[arg(long, value_name = "HOST")]
        gateway: Option<String>,
        /// The gateway is reached over HTTPS.
        #[arg(long)]
        https: bool,
    },
    /// Run the gateway for local development: start nats-server if none is reachable,
    /// serve the bundled example unless --config says otherwise. Stops when the nats-server
    /// it started dies.
    Dev {
        /// Address to serve on, instead of the configuration's `listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Port for NATS (used, or started there), instead of the one in `nats.url`.
        #[arg(long, value_name = "PORT")]
        nats_port: Option<u16>,
        /// Start on an empty store: delete .magistral/dev/jetstream (streams, directories, dead
        /// letters) before starting nats-server. Refused when a NATS server is already running.
        #[arg(long)]
        fresh: bool,
    },
    /// Validate the whole configuration offline: config, streams, contracts, bindings, and
    /// each contract version against the one before it (its `compatibility`).
    Check {
        /// Also compare the contracts with those of another checkout of the configuration
        /// (a directory holding magistral.toml, or the file): same versions unchanged or
        /// compatible, new versions compatible with the previous ones there.
        #[arg(long, value_name = "DIR")]
        against: Option<PathBuf>,
    },
    /// Contract tools.
    Contracts {
        #[command(subcommand)]
        command: ContractsCommand,
    },
    /// Create missing streams and update changed ones; never deletes.
    Apply {
        /// Print the differences without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the consumers of subscriptions no longer in the configuration.
        #[arg(long)]
        prune: bool,
    },
    #[command(flatten)]
    Client(magistral::client::ClientCommand),
    /// Post a CSV, XLSX or ZIP to an import route of a gateway and print the report.
    Import {
        file: PathBuf,
        /// The import route (`[imports.<route>]` of the gateway's configuration).
        #[arg(long)]
        route: String,
        /// The gateway's address.
        #[arg(long, env = "MAGISTRAL_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The participant's bearer token.
        #[arg(long, env = "MAGISTRAL_TOKEN", hide_env_values = true)]
        token: String,
        /// Also write the refused rows as CSV to this file.
        #[arg(long)]
        csv_report: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ContractsCommand {
    /// Compare two versions of a JSON Schema: each change with its pointer and verdicts for
    /// producers and consumers. Exit 0 compatible for the mode, 1 breaking, 2 may break,
    /// 65 unreadable input.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Which sides must not break: backward (producers), forward (consumers), full, none.
        #[arg(long, default_value = "backward")]
        compatibility: magistral::compat::Compatibility,
    },
    /// Write the contracts participants registered over the API (read from the NATS of the
    /// configuration) to DIR in the contracts/ layout: one schema file per version and
    /// registered.toml with their [[contracts]] bindings, for the operators' repository.
    Export { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(EX_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    // The client needs no configuration: it talks to a gateway that has one.
    let command = match cli.command {
        Command::Client(command) => return client(command),
        Command::Contracts { command: ContractsCommand::Diff { old, new, compatibility } } => {
            return ExitCode::from(magistral::compat::diff_files(&old, &new, compatibility));
        }
        Command::Import { file, route, url, token, csv_report } => {
            return match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(magistral::import::cli::run(&url, &token, &file, &route, csv_report.as_deref())),
                Err(err) => {
                    eprintln!("cannot start the async runtime: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        command => command,
    };
    let config_path = cli.config.clone().or_else(|| match command {
        // dev needs one; ./magistral.toml is the bus at the repository root.
        Command::Dev { .. } => Some(PathBuf::from("magistral.toml")),
        _ => Some(PathBuf::from("magistral.toml")).filter(|p| p.is_file()),
    });
    if matches!(command, Command::Dev { .. }) && cli.config.is_none() && !Path::new("magistral.toml").is_file() {
        eprintln!(
            "magistral dev: no magistral.toml here; run it at the repository root (the bus's configuration is \
             there, as scripts/dev does) or name one with --config FILE"
        );
        return ExitCode::from(EX_CONFIG);
    }
    if let Command::Check { against } = &command {
        return check(config_path.as_deref(), against.as_deref());
    }
    // Everything is parsed and checked before the runtime starts (exit 64 on error).
    let (mut config, mut catalog) = match load(config_path.as_deref()) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    magistral::telemetry::init_logs(&config.log, &config.traces);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Contracts { command: ContractsCommand::Export { dir } } => runtime.block_on(export(&config, &dir)),
        Command::Check { .. }
        | Command::Client(_)
        | Command::Contracts { command: ContractsCommand::Diff { .. } }
        | Command::Import { .. } => {
            unreachable!("handled above")
        }
        Command::Apply { dry_run, prune } => runtime.block_on(apply(config, catalog, dry_run, prune)),
        Command::Serve => runtime.block_on(serve(config, catalog)),
        Command::Asyncapi { participant, gateway, https } => {
            asyncapi(&config, &catalog, participant.as_deref(), gateway, https)
        }
        Command::Dev { listen, nats_port, fresh } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(port) = nats_port {
                match magistral::dev::with_port(&config.nats.url, port) {
                    Some(url) => {
                        // The AsyncAPI document names the NATS server actually used.
                        catalog.nats_servers =
                            magistral::describe::asyncapi::NatsServer::from_urls(&url, config.nats.tls_required);
                        config.nats.url = url;
                    }
                    None => {
                        eprintln!("magistral dev: cannot read host:port from nats.url {}", config.nats.url);
                        return ExitCode::from(EX_CONFIG);
                    }
                }
            }
            // The listen port first: a busy one is reported before anything starts.
            let listener = match magistral::dev::bind_listen(config.listen) {
                Ok(listener) => listener,
                Err(error) => {
                    eprintln!("magistral dev: {error}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            let store = PathBuf::from(".magistral/dev/jetstream");
            let nats = match magistral::dev::ensure_nats(&config.nats.url, &store, fresh) {
                Ok(nats) => nats,
                Err(error) => {
                    eprintln!("magistral dev: {error}");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            };
            print_dev_hints(listener.local_addr().unwrap_or(config.listen));
            let shutdown = CancellationToken::new();
            let code = runtime.block_on(async {
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                match magistral::dev::serve(config, catalog, listener, nats.as_ref(), shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    // Already said when it happened.
                    Err(magistral::dev::DevError::NatsDied { .. }) => ExitCode::from(EX_UNAVAILABLE),
                    Err(error) => {
                        eprintln!("magistral dev: {error}");
                        ExitCode::FAILURE
                    }
                }
            });
            // Tasks still waiting on the dead NATS connection must not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

/// `magistral asyncapi`: the document on standard output.
fn asyncapi(
    config: &Config,
    catalog: &Catalog,
    participant: Option<&str>,
    gateway: Option<String>,
    https: bool,
) -> ExitCode {
    use magistral::describe::asyncapi::{Servers, document};
    let viewer = match participant {
        None => None,
        Some(name) => match catalog.participants.iter().find(|p| p.name == name) {
            Some(p) => Some(p),
            None => {
                eprintln!("magistral asyncapi: no participant {name:?} in the configuration");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    // An unspecified listen address (0.0.0.0) is no address to reach the gateway at.
    let listen = if config.listen.ip().is_unspecified() {
        format!("localhost:{}", config.listen.port())
    } else {
        config.listen.to_string()
    };
    let servers =
        Servers { gateway: gateway.unwrap_or(listen), gateway_tls: https, nats: catalog.nats_servers.clone() };
    match serde_json::to_string_pretty(&document(catalog, &servers, viewer)) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("magistral asyncapi: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A client command: a small runtime, no configuration.
fn client(command: magistral::client::ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(runtime.block_on(magistral::client::run(command)).code())
}

/// `magistral check`: every problem of the configuration in one run — settings, catalog and
/// contract versions — each with its file, line and field.
fn check(path: Option<&Path>, against: Option<&Path>) -> ExitCode {
    let Some(path) = path else {
        eprintln!(
            "no configuration file: there is no magistral.toml in {}; name one with --config FILE (or \
             MAGISTRAL_CONFIG)",
            std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| ".".into())
        );
        return ExitCode::from(EX_CONFIG);
    };
    let (config, mut problems) = Config::load_all(Some(path));
    let mut catalog = None;
    if let Some(config) = &config {
        match Catalog::load(config) {
            Ok(loaded) => catalog = Some(loaded),
            Err(err) => problems.extend(err.problems),
        }
        match magistral::compat::check(config, against) {
            Ok(outcome) => {
                print!("{}", outcome.report);
                problems.extend(outcome.problems);
            }
            Err(err) => problems.extend(err.problems.into_iter().map(|mut p| {
                p.message = format!("{} (the --against checkout)", p.message);
                p
            })),
        }
    }
    if !problems.is_empty() {
        eprintln!("{}", ConfigError { problems }.located());
        return ExitCode::from(EX_CONFIG);
    }
    let Some(catalog) = catalog else { return ExitCode::from(EX_CONFIG) };
    println!(
        "configuration OK: {} participant(s), {} stream(s), {} contract(s), {} subscription(s), {} responder(s), {} directory(ies), {} inbound route(s)",
        catalog.participants.iter().count(),
        catalog.streams.iter().filter(|s| s.file.extension().is_some_and(|e| e == "json")).count(),
        catalog.contracts.iter().count(),
        catalog.subscriptions.len(),
        catalog.responders.len(),
        catalog.directories.len(),
        catalog.inbound.len(),
    );
    ExitCode::SUCCESS
}

fn load(path: Option<&Path>) -> Result<(Config, Catalog), ConfigError> {
    let config = Config::load(path)?;
    let catalog = Catalog::load(&config)?;
    Ok((config, catalog))
}

async fn serve(config: Config, catalog: Catalog) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(err) => {
            eprintln!("listen {}: {err}", config.listen);
            return ExitCode::from(EX_CONFIG);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = magistral::run(config, catalog, listener, shutdown).await;
    // The spans of the drain, too; blocking (the exporter has its own thread), so off the runtime's workers.
    let _ = tokio::task::spawn_blocking(magistral::telemetry::shutdown_traces).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            err @ magistral::RunError::Nats(
                magistral::nats::ConnectError::Url { .. } | magistral::nats::ConnectError::Creds { .. },
            ),
        ) => {
            eprintln!("{err}");
            ExitCode::from(EX_CONFIG)
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// JetStream over the configuration's NATS, once connected; the exit code when it is not.
async fn jetstream(config: &Config) -> Result<async_nats::jetstream::Context, ExitCode> {
    let client = match magistral::nats::connect(&config.nats).await {
        Ok(c) => c,
        Err(err) => {
            eprintln!("{err}");
            return Err(ExitCode::from(EX_CONFIG));
        }
    };
    // The client retries in the background; give it the connect timeout to succeed.
    let deadline = tokio::time::Instant::now() + config.nats.connect_timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            eprintln!("NATS at {} is not reachable", config.nats.url);
            return Err(ExitCode::from(EX_UNAVAILABLE));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(async_nats::jetstream::new(client))
}

async fn export(config: &Config, dir: &std::path::Path) -> ExitCode {
    let js = match jetstream(config).await {
        Ok(js) => js,
        Err(code) => return code,
    };
    match magistral::registry::export(&js, dir).await {
        Ok(n) => {
            println!("{n} registered contract version(s) written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("magistral contracts export: {err}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

async fn apply(config: Config, catalog: Catalog, dry_run: bool, prune: bool) -> ExitCode {
    let js = match jetstream(&config).await {
        Ok(js) => js,
        Err(code) => return code,
    };
    let mut failed = false;
    for directory in &catalog.directories {
        if dry_run {
            println!("= directory {}: ensured on apply (bucket settings are applied as configured)", directory.bucket);
        } else if let Err(err) = directory.ensure(&js).await {
            eprintln!("{err}");
            failed = true;
        } else {
            println!("= directory {}: bucket ready", directory.bucket);
        }
    }
    for def in catalog.streams.iter().filter(|s| !s.bucket) {
        match magistral::streams::reconcile(&js, def, dry_run).await {
            Ok(change) => println!("{change}"),
            Err(err) => {
                eprintln!("{err}");
                failed = true;
            }
        }
    }
    if prune {
        match magistral::delivery::prune(&js, &catalog, dry_run).await {
            Ok(pruned) => {
                for (stream, consumer) in pruned {
                    println!("- consumer {consumer} on {stream}: delete (its subscription is gone)");
                }
            }
            Err(err) => {
                eprintln!("prune: {err}");
                failed = true;
            }
        }
    }
    if dry_run {
        println!("(dry run: nothing was changed)");
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}

fn print_dev_hints(listen: SocketAddr) {
    let base = format!("http://{listen}");
    // The binary as the reader can type it: `scripts/dev` runs target/release/magistral, which
    // is not on PATH.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.strip_prefix(std::env::current_dir().ok()?).ok()?.to_path_buf()))
        .map_or_else(|| "magistral".to_owned(), |rel| rel.display().to_string());
    eprintln!(
        "\nmagistral dev: serving {base}\n\
         Try:\n  curl -i {base}/readyz\n  \
         curl -i -X POST {base}/v1/publish/orders.created \\\n    \
         -H 'Authorization: Bearer bitrix-demo-token' -H 'Content-Type: application/json' \\\n    \
         --data-binary @samples/sales-order.valid.json\n  \
         curl -i -X POST {base}/v1/publish/orders.created \\\n    \
         -H 'Authorization: Bearer bitrix-demo-token' -H 'Content-Type: application/json' \\\n    \
         --data-binary @samples/sales-order.invalid.json\n  \
         export MAGISTRAL_URL={base} MAGISTRAL_TOKEN=nav-demo-token\n  \
         {exe} subs\n"
    );
}
