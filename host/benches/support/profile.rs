//! A CPU profile of one process during a benchmark step, drawn as a flame graph: `perf
//! record` (DWARF call graphs, so a release build without frame pointers unwinds) for a
//! while, then `perf script`, `inferno-collapse-perf` and `inferno-flamegraph` into an
//! SVG. `just bench` installs perf and inferno (`scripts/setup-profiler.sh`).
//!
//! It never fails a benchmark: a missing tool or a refused recording is reported as
//! such, and the step's figures stand without a profile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Samples per second: enough for a readable graph over a few seconds, little enough
/// that unwinding does not disturb the worker much.
const FREQUENCY: &str = "199";

/// A recording in progress.
pub struct Profile {
    child: Child,
    data: PathBuf,
}

impl Profile {
    /// Records `pid` for `seconds` into `data`; none if perf could not start.
    pub fn start(pid: u32, seconds: u64, data: &Path) -> Option<Profile> {
        let child = Command::new("perf")
            .args(["record", "-q", "-F", FREQUENCY, "--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(data)
            .args(["--", "sleep", &seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| println!("no profile: perf did not start ({e})"))
            .ok()?;
        Some(Profile { child, data: data.to_path_buf() })
    }

    /// Waits for the recording to end and writes its flame graph to `svg`; why not, if
    /// it could not.
    pub fn flame_graph(mut self, svg: &Path, title: &str) -> Result<(), String> {
        let recorded = self.child.wait().map_err(|e| e.to_string())?;
        if !recorded.success() {
            return Err(format!("perf record ended with {recorded}"));
        }
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("perf script: {e}"))?;
        let folded = pipe("inferno-collapse-perf", &[], &script.stdout)?;
        let graph = pipe("inferno-flamegraph", &["--title", title], &folded)?;
        std::fs::write(svg, graph).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&self.data);
        Ok(())
    }
}

/// Runs `program` with `input` on its stdin; its stdout.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    let _ = writer.join();
    if !output.status.success() || output.stdout.is_empty() {
        return Err(format!("{program} ended with {}", output.status));
    }
    Ok(output.stdout)
}
