//! The `superpeer` command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use superpeer::fleet::Fleet;
use superpeer::master::Master;
use superpeer::master::config::MasterConfig;
use superpeer::policy::{PolicyEngine, PolicyLimits};
use superpeer::protocol::{Protocol, starting_policies};
use superpeer::serve::{self, ControlPlane};

/// mimalloc rather than the system allocator: a worker allocates and frees packet
/// buffers at a high rate, and measured ~10% less CPU per GB served with it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A super peer for P2P HLS streaming: it joins a stream's swarm like a viewer, fetches
/// the stream from the origin and uploads it to viewers over WebRTC.
#[derive(Debug, Parser)]
#[command(
    name = "superpeer",
    version,
    about,
    after_help = "Start with `superpeer serve`, then open http://<host>:<listenPort>/ for the \
                  monitor.\nThe REST API is described at /openapi.json; metrics are at /metrics."
)]
struct Cli {
    /// Log format; `RUST_LOG` sets the levels (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SUPERPEER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the master: the REST control plane, the monitor page, the metrics and the
    /// workers that seed channels. Reads `.env` from the working directory; each flag
    /// overrides its key.
    #[command(after_long_help = superpeer::master::config::key_reference())]
    Serve(Box<ServeArgs>),
    /// Work with policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A worker process, started by `serve` (not by hand).
    #[command(hide = true)]
    Worker {
        /// The channel it seeds: for its log lines and for `ps` (the seed itself comes
        /// from the master over stdin).
        #[arg(long, default_value = "")]
        channel: String,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The `.env` file to read (a missing file means defaults).
    #[arg(long, default_value = ".env")]
    env_file: PathBuf,
    /// `listenPort`: port of the control plane (0 picks a free one; the log says which).
    #[arg(long)]
    port: Option<u16>,
    /// `bindAddress`: address to listen on (default 0.0.0.0 with an access token,
    /// 127.0.0.1 without; any other address without a token is refused).
    #[arg(long)]
    bind: Option<String>,
    /// `accessToken`: required in `X-ACCESS-TOKEN` on every request but /health.
    #[arg(long, hide_env_values = true, env = "SUPERPEER_ACCESS_TOKEN")]
    access_token: Option<String>,
    /// `dataDir`: where the seed list is kept (default `data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `policyFile`: policy component (.wasm) to run instead of the embedded default.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// `maxWorkers`: at most this many workers (default: one per core).
    #[arg(long)]
    max_workers: Option<usize>,
    /// `bandwidth`: upload capacity in Mbit/s, for sizing.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// `idleGraceSeconds`: how long a worker may have fewer than `minViewers` viewers
    /// before it is evicted (keepAlive seeds excepted).
    #[arg(long)]
    idle_grace_seconds: Option<u64>,
    /// `publicIp`: the address viewers reach workers on; without it workers accept
    /// viewers on this machine only.
    #[arg(long, env = "SUPERPEER_PUBLIC_IP")]
    public_ip: Option<String>,
    /// `cacheDir`: the disk cache all workers share (default `<dataDir>/cache`).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// `cacheSize`: the most the disk cache holds, e.g. `500M`, `20G` (default 10G).
    #[arg(long)]
    cache_size: Option<String>,
    /// `udpPorts`: UDP ports for workers, `first-last`, one per worker (default: any free).
    #[arg(long)]
    udp_ports: Option<String>,
    /// `originAllow`: internal hosts fetches may reach besides each seed's manifest host
    /// and port: comma-separated `host`, `host:port` or CIDR entries.
    #[arg(long)]
    origin_allow: Option<String>,
    /// Check the configuration (every key) and the policy (compiled and started once),
    /// print what would run as JSON, and exit: non-zero, naming the problem, if either
    /// is refused. It does not try the port or the data directory.
    #[arg(long)]
    check: bool,
}

impl ServeArgs {
    /// The flags given, as `.env` keys.
    fn overrides(&self) -> BTreeMap<String, String> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            ("listenPort", self.port.map(|v| v.to_string())),
            ("bindAddress", self.bind.clone()),
            ("accessToken", self.access_token.clone()),
            ("dataDir", self.data_dir.as_ref().map(path)),
            ("policyFile", self.policy.as_ref().map(path)),
            ("maxWorkers", self.max_workers.map(|v| v.to_string())),
            ("bandwidth", self.bandwidth.map(|v| v.to_string())),
            ("idleGraceSeconds", self.idle_grace_seconds.map(|v| v.to_string())),
            ("publicIp", self.public_ip.clone()),
            ("udpPorts", self.udp_ports.clone()),
            ("cacheDir", self.cache_dir.as_ref().map(path)),
            ("cacheSize", self.cache_size.clone()),
            ("originAllow", self.origin_allow.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key.to_string(), v)))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Compile a policy, check it against the policy world and start it once; prints
    /// its name, version and digest as JSON. Exits non-zero if it would be refused.
    Check {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Write an embedded policy to a file, to inspect or modify it.
    ExportDefault {
        /// Where to write the component.
        file: PathBuf,
        /// Whose policy: pml (the default) or swarmcloud.
        #[arg(long, default_value = "pml")]
        protocol: Protocol,
    },
}

fn main() -> anyhow::Result<()> {
    // No transparent huge pages, in this process and the workers it starts (the setting
    // is inherited): the allocator asks for them, and each is 2 MiB zeroed at its first
    // touch (milliseconds on a virtual machine whose memory the host has not backed
    // yet), charged to whatever runs then, a policy call's deadline included, and
    // resident whether viewers use it or not.
    let huge_pages_off = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(error) = huge_pages_off {
        tracing::warn!(%error, "could not turn transparent huge pages off");
    }
    match cli.command {
        Command::Serve(args) => serve_main(&args, cli.log_format),
        Command::Worker { channel } => {
            // Entered for the life of the process: the worker's event loop runs every
            // task on this thread, so each of its log lines carries pid and channel.
            let span = tracing::info_span!("worker", pid = std::process::id(), channel);
            let _entered = span.enter();
            superpeer::worker::main()
        }
        Command::Policy { command: PolicyCommand::Check { file } } => {
            let engine = PolicyEngine::new(PolicyLimits::default())?;
            let policy = engine.admit_file(&file)?;
            write_stdout(&serde_json::to_string_pretty(&policy.meta)?)
        }
        Command::Policy { command: PolicyCommand::ExportDefault { file, protocol } } => {
            std::fs::write(&file, protocol.embedded_policy())
                .with_context(|| format!("could not write {}", file.display()))
        }
    }
}

fn serve_main(args: &ServeArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let config = MasterConfig::load(&args.env_file, &args.overrides())?;
    let engine = PolicyEngine::new(config.policy_limits.clone())?;
    let policies =
        starting_policies(&engine, config.default_protocol, config.policy_file.as_deref())
            .map_err(anyhow::Error::msg)?;
    let policy = &policies[&config.default_protocol];
    if args.check {
        let summary = serde_json::json!({
            "listen": config.listen.to_string(),
            "accessToken": if config.access_token.is_some() { "set" } else { "not set" },
            "trackers": config.default_trackers,
            "dataDir": config.data_dir,
            "cacheDir": config.cache_dir,
            "cacheBytes": config.cache_bytes,
            "maxWorkers": config.max_workers,
            "bandwidth": config.bandwidth_mbps,
            "publicIp": config.public_ip,
            "udpPorts": config.udp_ports,
            "originAllow": config.origin_allow,
            "originTimeoutSeconds": config.origin_timeout.as_secs(),
            "viewerStallSeconds": config.viewer_stall.as_secs(),
            "protocol": config.default_protocol,
            "policy": policy.meta,
            "policySource": policy.source,
            "policies": policies.iter().map(|(p, a)| (p.name(), &a.meta)).collect::<BTreeMap<_, _>>(),
            "fleet": config.fleet.as_ref().map(|fleet| serde_json::json!({
                "etcdEndpoints": fleet.endpoints,
                "nodeName": fleet.node_name,
                "nodeAddress": fleet.node_address,
                "fleetPrefix": fleet.prefix,
                "fleetLeaseSeconds": fleet.lease_seconds,
            })),
        });
        return write_stdout(&serde_json::to_string_pretty(&summary)?);
    }
    for (protocol, policy) in &policies {
        tracing::info!(%protocol, policy = %policy.meta, source = %policy.source, "policy loaded");
    }

    let runtime = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    runtime.block_on(async move {
        let (master, handle) = Master::new(config.clone(), policies, log_format.as_str())?;
        let mut master_task = tokio::spawn(master.run());
        let mut control = ControlPlane::new(engine, handle.clone(), config.access_token.clone());
        if !control.requires_token() {
            tracing::warn!(
                listen = %config.listen,
                "no accessToken: the API is open to this machine only; set accessToken to \
                 reach it from elsewhere"
            );
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("could not listen on {}", config.listen))?;
        let local = listener.local_addr()?;
        tracing::info!("superpeer listening on http://{local}");
        let (leaving, left) = tokio::sync::oneshot::channel::<()>();
        let fleet_task = match config.fleet.clone() {
            Some(fleet_config) => {
                let address = fleet_config.node_address.clone().unwrap_or_else(|| {
                    let ip = config.public_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
                    format!("http://{}", std::net::SocketAddr::new(ip, local.port()))
                });
                tracing::info!(
                    node = %fleet_config.node_name, %address, etcd = ?fleet_config.endpoints,
                    "fleet mode: the seed list is the fleet's, in etcd"
                );
                let from_url = config.autoseed.candidates_url.is_some();
                let (fleet, fleet_handle) =
                    Fleet::new(fleet_config, address, handle.clone(), config.max_seeds, from_url);
                control = control.with_fleet(fleet_handle);
                Some(tokio::spawn(fleet.run(async move {
                    let _ = left.await;
                })))
            }
            None => None,
        };
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let server = serve::run_with(listener, control, config.api_limits.clone(), async move {
            shutdown_signal().await;
            let _ = signalled.send(());
        });
        tokio::select! {
            result = server => result?,
            // A client holding a request open must not keep the workers running.
            () = async {
                let _ = on_signal.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; stopping anyway"),
            _ = &mut master_task => anyhow::bail!("the master task ended unexpectedly"),
        }
        // The fleet gives its lease back first, so the others take this node's
        // channels while its workers stop.
        let _ = leaving.send(());
        if let Some(task) = fleet_task {
            let _ = task.await;
        }
        handle.shutdown().await;
        let _ = master_task.await;
        tracing::info!("superpeer stopped");
        anyhow::Ok(())
    })
}

/// How long open requests may delay a shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a journal or a log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let limit = DependencyLogLimit(PerSecond::new(DEPENDENCY_LINES_PER_SECOND));
    match format {
        LogFormat::Text => builder.finish().with(limit).init(),
        LogFormat::Json => builder.json().finish().with(limit).init(),
    }
}

/// Log lines the libraries superpeer uses may write per second, all together: the
/// WebRTC stack warns about each bad packet, and anyone can send those. superpeer's
/// own lines are not limited here, nor are policies' (the runner limits and counts
/// those per instance).
const DEPENDENCY_LINES_PER_SECOND: u32 = 20;

/// Whether lines of `target` come from a library, and so count against
/// [`DEPENDENCY_LINES_PER_SECOND`].
fn from_a_dependency(target: &str) -> bool {
    !target.starts_with("superpeer") && target != superpeer::policy::LOG_TARGET
}

/// Drops dependencies' log lines past their rate, before any is formatted.
struct DependencyLogLimit(PerSecond);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DependencyLogLimit {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !from_a_dependency(event.metadata().target()) || self.0.allow(std::time::Instant::now())
    }
}

/// At most `limit` events in each second (counted from the first).
struct PerSecond {
    limit: u32,
    epoch: std::time::Instant,
    /// The current second since `epoch` and the events allowed in it.
    window: std::sync::Mutex<(u64, u32)>,
}

impl PerSecond {
    fn new(limit: u32) -> Self {
        PerSecond { limit, epoch: std::time::Instant::now(), window: std::sync::Mutex::new((0, 0)) }
    }

    fn allow(&self, now: std::time::Instant) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let Ok(mut window) = self.window.lock() else { return false };
        if window.0 != second {
            *window = (second, 0);
        }
        window.1 += 1;
        window.1 <= self.limit
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    /// A chatty WebRTC stack once took the whole budget, and policies' lines were lost
    /// while their stats said they were written.
    #[test]
    fn only_libraries_lines_count_against_their_budget() {
        assert!(super::from_a_dependency("rtc_ice::agent"));
        assert!(super::from_a_dependency("wasmtime"));
        assert!(!super::from_a_dependency("superpeer::worker"));
        assert!(!super::from_a_dependency(superpeer::policy::LOG_TARGET));
    }

    use super::PerSecond;
    use std::time::Duration;

    #[test]
    fn dependency_lines_are_limited_per_second() {
        let limit = PerSecond::new(3);
        let start = limit.epoch;
        let allowed = (0..10).filter(|_| limit.allow(start)).count();
        assert_eq!(allowed, 3);
        assert!(limit.allow(start + Duration::from_millis(1500)), "a new second");
    }
}
