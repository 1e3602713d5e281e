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
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SEGMENTS: usize = 10;
const SEGMENT_BYTES: usize = 1 << 20;
const SEGMENT_SECONDS: f64 = 2.0;
const TOKEN: &str = "bench-token";

fn segment(n: usize) -> Vec<u8> {
    (0..SEGMENT_BYTES).map(|i| ((i * 31 + n * 7) % 251) as u8).collect()
}

/// A VOD origin on 127.0.0.1:0; returns its base URL.
fn start_origin() -> String {
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            use axum::routing::get;
            let media = {
                let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n");
                for n in 0..SEGMENTS {
                    write!(text, "#EXTINF:{SEGMENT_SECONDS:.1},\nseg{n}.ts\n").unwrap();
                }
                text + "#EXT-X-ENDLIST\n"
            };
            let app = axum::Router::new()
                .route(
                    "/vod/master.m3u8",
                    get(|| async {
                        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720\n720p.m3u8\n"
                    }),
                )
                .route("/vod/720p.m3u8", get(move || async move { media.clone() }))
                .route(
                    "/vod/{name}",
                    get(|axum::extract::Path(name): axum::extract::Path<String>| async move {
                        let n: usize = name.trim_start_matches("seg").trim_end_matches(".ts").parse().unwrap_or(0);
                        segment(n)
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            found.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    address.recv().unwrap()
}

/// A child process killed (and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start_tracker() -> (Process, String) {
    let mut child = Command::new("node")
        .arg(repo().join("tests/support/tracker.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is needed for the tracker (run `just node-deps` first)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // Keep draining what it prints about announces.
    std::thread::spawn(move || for _ in stdout.lines() {});
    let port = line.trim().strip_prefix("listening ").expect("tracker did not start").to_string();
    (Process(child), format!("ws://127.0.0.1:{port}"))
}

fn start_superpeer(dir: &Path) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_superpeer"))
        .args(["serve", "--port", "0", "--bind", "127.0.0.1", "--access-token", TOKEN])
        .args(["--max-workers", "1", "--data-dir"])
        .arg(dir)
        .arg("--env-file")
        .arg(dir.join("absent.env"))
        .env("RUST_LOG", "warn,superpeer=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut address = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(at) = line.find("superpeer listening on http://") {
            address = Some(line[at + "superpeer listening on http://".len()..].trim().to_string());
            break;
        }
        line.clear();
    }
    std::thread::spawn(move || for _ in stderr.lines() {});
    (Process(child), address.expect("superpeer did not start"))
}

fn request(addr: &str, method: &str, path: &str, body: &str) -> Value {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-ACCESS-TOKEN: {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    serde_json::from_str(response.split_once("\r\n\r\n").map_or("", |(_, b)| b))
        .unwrap_or(Value::Null)
}

/// The one running worker: (pid, its stats), once `ready` holds for it.
fn worker(addr: &str, ready: impl Fn(&Value) -> bool) -> (u32, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = request(addr, "GET", "/stats", "");
        if let Some((pid, w)) = stats["workers"]
            .as_object()
            .and_then(|ws| ws.iter().find(|(_, w)| w["state"] == "running" && ready(w)))
        {
            return (pid.parse().unwrap(), w.clone());
        }
        assert!(Instant::now() < deadline, "worker never ready: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU seconds (user + system) of a process, from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// A `/proc/<pid>/status` figure in kB.
fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The info hash viewers compute for the origin's one rendition (p2p-media-loader 2.3
/// with hls.js: bitrate, video codec, size).
fn info_hash(manifest: &str) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let b64 = base64::engine::general_purpose::STANDARD;
    let short = b64.encode(Sha1::digest(b"1280000-avc1.4d401f-1280-720-----"));
    b64.encode(&Sha1::digest(format!("v2-{manifest}-main-{short}").as_bytes())[..15])
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
    let series: Vec<usize> = std::env::var("SUPERPEER_BENCH_VIEWERS")
        .unwrap_or_else(|_| "10,25,50,100,200".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let seconds: u64 =
        std::env::var("SUPERPEER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);

    let dir = std::env::temp_dir().join(format!("superpeer-bench-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let origin = start_origin();
    let (_tracker, tracker) = start_tracker();
    let (_superpeer, addr) = start_superpeer(&dir);
    let manifest = format!("{origin}/vod/master.m3u8");
    let channel = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&manifest)
    };
    let seed = json!({"list": [{"channel": channel, "keepAlive": true, "signal1": tracker, "maxConnections": 10000}]});
    request(&addr, "POST", "/seed", &seed.to_string());
    let (pid, _) = worker(&addr, |w| w["segments"] == SEGMENTS && w["trackers"] == 1);
    let idle_rss = status_kb(pid, "VmRSS:");

    let mut table = String::from(
        "| viewers | connected | upload Mbit/s | worker CPU s/GB | worker CPU % | policy share of CPU | worker RSS MB | RSS KB/viewer | segment p50 ms | segment p99 ms | failures | load generator CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut best_within_duration = 0;
    for &viewers in &series {
        // Start from a worker with no viewers left from the step before.
        let (_, before) = worker(&addr, |w| w["peers"] == 0);
        let cpu_before = cpu_seconds(pid);
        let busy_before = before["policyStats"]["busy_us"].as_f64().unwrap_or(0.0);
        let uploaded_before = before["uploaded"].as_f64().unwrap_or(0.0);
        let started = Instant::now();
        let output = Command::new(&load)
            .args(["--tracker", &tracker, "--info-hash", &info_hash(&manifest)])
            .args(["--media", &format!("{origin}/vod/720p.m3u8")])
            .args(["--viewers", &viewers.to_string(), "--seconds", &seconds.to_string()])
            .args(["--ramp-ms", "2"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        let rss = status_kb(pid, "VmRSS:");
        let cpu = cpu_seconds(pid) - cpu_before;
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let (_, after) = worker(&addr, |_| true);
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
    let report = format!(
        "Load on one superpeer worker: {} (release build, {seconds} s per step, 1 MiB segments of {SEGMENT_SECONDS} s, viewers fetching as fast as served).\n\n{table}\nMost viewers with p99 segment time under the segment duration and no failure: {best_within_duration}.\n",
        machine()
    );
    println!("{report}");
    let results = repo().join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("load.md"), &report).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
