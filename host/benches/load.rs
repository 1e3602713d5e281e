//! The load benchmark: one superpeer worker serving a rising number of simulated
//! viewers (`superpeer-load`: real WebRTC through a real bittorrent-tracker, every byte
//! checked), with the worker's own CPU and memory read from `/proc`.
//!
//! Everything runs on this machine: an in-process VOD origin (ten 1 MiB segments of
//! 2 s), the tracker (`tests/support/tracker.mjs`), `superpeer serve` (release build)
//! limited to one worker. For each viewer count the viewers fetch segments as fast as
//! superpeer sends them for a fixed time. Prints a Markdown table and writes it to
//! `results/load.md`.
//!
//! `SUPERPEER_LOAD` names the load generator binary (default
//! `target/release/superpeer-load`); `SUPERPEER_BENCH_VIEWERS` (e.g. `10,50,100`) and
//! `SUPERPEER_BENCH_SECONDS` change the series and the length of each step.

// A benchmark's fixtures may panic: a broken one should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use superpeer::master::procfs;

#[path = "../../tests/support/harness.rs"]
mod harness;

use harness::*;

const SEGMENTS: usize = 10;
const SEGMENT_BYTES: usize = 1 << 20;
const SEGMENT_SECONDS: f64 = 2.0;

/// The one running worker, once `ready` holds for it: (pid, its stats).
fn worker(master: &Superpeer, ready: impl Fn(&Value) -> bool) -> (u32, Value) {
    let stats = master.wait_for("the worker", |s| {
        s["workers"].as_object().unwrap().values().any(|w| w["state"] == "running" && ready(w))
    });
    let (pid, w) = stats["workers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, w)| w["state"] == "running" && ready(w))
        .unwrap();
    (pid.parse().unwrap(), w.clone())
}

fn rss_kb(pid: u32) -> u64 {
    procfs::rss_bytes(pid).unwrap_or(0) / 1024
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What every step of a series runs against.
struct Setup<'a> {
    master: &'a Superpeer,
    origin: &'a VodOrigin,
    tracker: &'a str,
    load: &'a Path,
}

fn series(variable: &str, default: &str) -> Vec<usize> {
    std::env::var(variable)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// One step per viewer count; the Markdown table, and the most viewers served with
/// p99 segment time under the segment duration and no failure.
fn run_series(setup: &Setup, series: &[usize], seconds: u64, pace_ms: u64) -> (String, usize) {
    let mut table = String::from(
        "| viewers | connected | upload Mbit/s | worker CPU s/GB | worker CPU % | policy share of CPU | worker RSS MB | RSS KB/viewer | segment p50 ms | segment p99 ms | failures | load generator CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut best_within_duration = 0;
    for &viewers in series {
        // Each step starts from a fresh worker (its RSS then is the baseline), with its
        // segments cached and no viewer left from the step before.
        let (old, _) = worker(setup.master, |_| true);
        setup.master.ok("POST", &format!("/restart/{old}"), Value::Null);
        let stats = setup.master.wait_for("the restarted worker ready", |s| {
            s["workers"].as_object().unwrap().iter().any(|(p, w)| {
                p != &old.to_string()
                    && w["state"] == "running"
                    && w["segments"] == SEGMENTS
                    && w["trackers"] == 1
            })
        });
        let (pid, before) = stats["workers"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(p, w)| p != &&old.to_string() && w["state"] == "running")
            .map(|(p, w)| (p.parse::<u32>().unwrap(), w.clone()))
            .unwrap();
        let idle_rss = rss_kb(pid);
        let cpu_before = procfs::cpu_seconds(pid).unwrap_or(0.0);
        let busy_before = before["policyStats"]["busy_us"].as_f64().unwrap_or(0.0);
        let uploaded_before = before["uploaded"].as_f64().unwrap_or(0.0);
        let started = Instant::now();
        let output = Command::new(setup.load)
            .args(["--tracker", setup.tracker, "--info-hash", &setup.origin.info_hash()])
            .args(["--media", &setup.origin.media()])
            .args(["--viewers", &viewers.to_string(), "--seconds", &seconds.to_string()])
            .args(["--ramp-ms", "2", "--pace-ms", &pace_ms.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        let rss = rss_kb(pid);
        let cpu = procfs::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let (_, after) = worker(setup.master, |_| true);
        let uploaded = after["uploaded"].as_f64().unwrap_or(0.0) - uploaded_before;
        let busy = (after["policyStats"]["busy_us"].as_f64().unwrap_or(0.0) - busy_before) / 1e6;
        let p99 = result["segment_ms_p99"].as_f64();
        let failures = result["failures"].as_u64().unwrap_or(u64::MAX);
        if p99.is_some_and(|p| p < SEGMENT_SECONDS * 1000.0) && failures == 0 {
            best_within_duration = best_within_duration.max(viewers);
        }
        let fmt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        let gb = uploaded / 1e9;
        writeln!(
            table,
            "| {viewers} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {failures} | {} |",
            result["connected"],
            fmt(Some(uploaded * 8.0 / wall / 1e6), 0),
            fmt((gb > 0.0).then(|| cpu / gb), 2),
            fmt(Some(cpu / wall * 100.0), 0),
            fmt((cpu > 0.0).then(|| busy / cpu * 100.0).map(|p| p.min(100.0)), 1),
            fmt(Some(rss as f64 / 1024.0), 0),
            fmt(Some(rss.saturating_sub(idle_rss) as f64 / viewers as f64), 0),
            fmt(result["segment_ms_p50"].as_f64(), 0),
            fmt(p99, 0),
            fmt(result["load_cpu_seconds"].as_f64().map(|c| c / wall * 100.0), 0),
        )
        .unwrap();
        if failures > 0 {
            println!("{viewers} viewers: failures {}", result["failure_reasons"]);
        }
    }
    (table, best_within_duration)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(str::trim))
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores ({model}), loopback")
}

fn main() {
    // Relative paths are the repository's (benches run in the package directory).
    let load = repo().join(
        std::env::var("SUPERPEER_LOAD").unwrap_or_else(|_| "target/release/superpeer-load".into()),
    );
    assert!(load.exists(), "{} is missing: run `just bench`", load.display());
    let seconds: u64 =
        std::env::var("SUPERPEER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);

    let dir = data_dir("bench-load");
    let origin = VodOrigin::start(SEGMENTS, SEGMENT_BYTES);
    let tracker = Tracker::start();
    let master = Superpeer::start_with(&dir, &["--max-workers", "1"]);
    let seed = json!({"list": [{
        "channel": origin.channel(), "keepAlive": true, "signal1": tracker.url, "maxConnections": 10000,
    }]});
    master.ok("POST", "/seed", seed);
    worker(&master, |w| w["segments"] == SEGMENTS && w["trackers"] == 1);

    let setup = Setup { master: &master, origin: &origin, tracker: &tracker.url, load: &load };
    let greedy_series = series("SUPERPEER_BENCH_VIEWERS", "10,25,50,100,200");
    let (greedy, _) = run_series(&setup, &greedy_series, seconds, 0);
    let paced_series = series("SUPERPEER_BENCH_PACED_VIEWERS", "25,50,100,150,200,300");
    let (paced, best) =
        run_series(&setup, &paced_series, seconds, (SEGMENT_SECONDS * 1000.0) as u64);
    let report = format!(
        "Load on one superpeer worker: {} (release build, {seconds} s per step, 1 MiB segments of {SEGMENT_SECONDS} s; the load generator runs on the same machine).\n\n\
         Viewers fetching as fast as they are served (VOD filling a buffer):\n\n{greedy}\n\
         Viewers each asking for one segment per segment duration (4.2 Mbit/s each, as when watching):\n\n{paced}\n\
         Most paced viewers with p99 segment time under the segment duration and no failure: {best}.\n",
        machine()
    );
    println!("{report}");
    let results = repo().join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("load.md"), &report).unwrap();
    master.stop();
}
