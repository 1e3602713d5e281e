//! The `superpeer-load` command: see the library's documentation.

use clap::Parser;
use superpeer_load::{Args, run_until};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // SIGTERM or SIGINT: the run's time is up now; the summary still comes.
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    };
    let summary = runtime.block_on(async { run_until(args, stop).await })?;
    // The summary on stdout is this program's output.
    #[allow(clippy::print_stdout)]
    {
        println!("{summary}");
    }
    Ok(())
}
