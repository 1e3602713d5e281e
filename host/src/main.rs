//! The `superpeer` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use superpeer::policy::{EMBEDDED_POLICY, PolicyEngine, PolicyLimits, PolicyRunner};
use superpeer::serve::{self, ControlPlane, PolicySource};

/// A super peer for P2P HLS streaming: it joins a stream's swarm like a viewer, fetches
/// the stream from the origin and uploads it to viewers over WebRTC.
#[derive(Debug, Parser)]
#[command(name = "superpeer", version, about)]
struct Cli {
    /// Log format.
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the master: the REST control plane and the policy workers run.
    Serve {
        /// Address to listen on. Port 0 picks a free port (the log says which).
        #[arg(long, default_value = "0.0.0.0:8080", env = "SUPERPEER_LISTEN")]
        listen: SocketAddr,
        /// Token every request must carry in `X-ACCESS-TOKEN`; none means no check.
        #[arg(long, env = "SUPERPEER_ACCESS_TOKEN", hide_env_values = true)]
        access_token: Option<String>,
        /// Policy component (.wasm) to run instead of the embedded default.
        #[arg(long, env = "SUPERPEER_POLICY")]
        policy: Option<PathBuf>,
        /// Policy limits as JSON (see README), overriding the defaults field by field.
        #[arg(long, env = "SUPERPEER_POLICY_LIMITS")]
        policy_limits: Option<String>,
    },
    /// Work with policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Compile a policy, check it against the policy world and start it once; prints
    /// its name, version and digest as JSON. Exits non-zero if it would be refused.
    Check {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Write the embedded default policy to a file, to inspect or modify it.
    ExportDefault {
        /// Where to write the component.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { listen, access_token, policy, policy_limits } => {
            let limits = match policy_limits {
                Some(json) => serde_json::from_str::<PolicyLimits>(&json)
                    .context("--policy-limits is not valid policy limits JSON")?,
                None => PolicyLimits::default(),
            };
            let engine = PolicyEngine::new(limits)?;
            let (policy, source) = match policy {
                Some(path) => {
                    (engine.compile_file(&path), PolicySource::File(path.display().to_string()))
                }
                None => (engine.compile(EMBEDDED_POLICY), PolicySource::Embedded),
            };
            let policy = policy
                .and_then(|policy| PolicyRunner::canary(&engine, &policy).map(|()| policy))
                .with_context(|| format!("policy {source:?} was refused"))?;
            tracing::info!(policy = %policy.meta(), "policy loaded");
            let control = ControlPlane::new(engine, policy, source, access_token);
            if !control.requires_token() && !listen.ip().is_loopback() {
                tracing::warn!(
                    %listen,
                    "no access token set and listening beyond this machine: anyone who can reach \
                     the port can replace the policy (set --access-token)"
                );
            }
            let runtime =
                tokio::runtime::Runtime::new().context("could not start the async runtime")?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("could not listen on {listen}"))?;
                let local = listener.local_addr()?;
                tracing::info!("superpeer listening on http://{local}");
                serve::run(listener, control, shutdown_signal()).await?;
                tracing::info!("superpeer stopped");
                anyhow::Ok(())
            })
        }
        Command::Policy { command: PolicyCommand::Check { file } } => {
            let engine = PolicyEngine::new(PolicyLimits::default())?;
            let policy = engine.compile_file(&file)?;
            PolicyRunner::canary(&engine, &policy)?;
            write_stdout(&serde_json::to_string_pretty(policy.meta())?)
        }
        Command::Policy { command: PolicyCommand::ExportDefault { file } } => {
            std::fs::write(&file, EMBEDDED_POLICY)
                .with_context(|| format!("could not write {}", file.display()))
        }
    }
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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
