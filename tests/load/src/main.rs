//! The `superpeer-load` command: see the library's documentation.

use clap::Parser;
use superpeer_load::{Args, run};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(run(args))?;
    // The summary on stdout is this program's output.
    #[allow(clippy::print_stdout)]
    {
        println!("{summary}");
    }
    Ok(())
}
