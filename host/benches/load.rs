//! The load benchmark: one superpeer worker serving a rising number of simulated
//! viewers (`superpeer-load`: real WebRTC through a real bittorrent-tracker, every byte
//! checked), and side by side the alternative people run today, a headless Chromium
//! tab seeding with p2p-media-loader (`tests/support/seeder.mjs`), serving the same
//! simulated viewers. Resource figures are the measured processes' own, from `/proc`:
//! the worker's, or the sum over Chromium's processes.
//!
//! Everything runs on this machine: in-process VOD origins (ten segments of 2 s: 1 MiB
//! for a 4.2 Mbit/s stream, 256 KiB for a 1 Mbit/s one), the tracker
//! (`tests/support/tracker.mjs`), `superpeer serve` (release build). Each step starts
//! from a freshly restarted worker. Prints Markdown tables and writes them, with the
//! figures as JSON and a chart (`tests/support/chart.mjs`), to `results/`.
//!
//! It also measures how fast superpeer reaches a swarm that was there first: the
//! simulated viewers announce (with their offers) and connect among themselves, and
//! only then is superpeer seeded; the time until it has an open DataChannel with 90% of
//! them, with the default number of offers per announce and with bittorrent-tracker's
//! 82. And what an offer waiting for its answer costs the worker.
//!
//! Environment: `SUPERPEER_LOAD` names the load generator binary (default
//! `target/release/superpeer-load`); `SUPERPEER_BENCH_SECONDS` is the length of each
//! step (default 20); the series are `SUPERPEER_BENCH_VIEWERS` (greedy),
//! `SUPERPEER_BENCH_PACED_VIEWERS`, `SUPERPEER_BENCH_SWAP_VIEWERS`,
//! `SUPERPEER_BENCH_MANY_VIEWERS` (the largest step profiled into
//! `results/worker-flame.svg`), `SUPERPEER_BENCH_SIDE_VIEWERS` (side by side) and
//! `SUPERPEER_BENCH_REACH_VIEWERS` (with `SUPERPEER_BENCH_REACH_OFFERS`, the offers per
//! announce to try), comma-separated; an empty series is skipped.

// A benchmark's fixtures may panic: a broken one should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use superpeer::master::procfs;

#[path = "../../tests/support/harness.rs"]
mod harness;
#[path = "support/profile.rs"]
mod profile;

use harness::*;

const SEGMENTS: usize = 10;
const SEGMENT_SECONDS: f64 = 2.0;
const PACE_MS: u64 = (SEGMENT_SECONDS * 1000.0) as u64;
/// How often memory is sampled during a step (its peak is reported).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn series(variable: &str, default: &str) -> Vec<usize> {
    std::env::var(variable)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// One stream to serve: its origin, and its segment size.
struct Stream {
    origin: VodOrigin,
    segment_bytes: usize,
}

impl Stream {
    fn start(segment_bytes: usize) -> Stream {
        Stream { origin: VodOrigin::start(SEGMENTS, segment_bytes), segment_bytes }
    }

    fn mbps_per_viewer(&self) -> f64 {
        self.segment_bytes as f64 * 8.0 / SEGMENT_SECONDS / 1e6
    }
}

/// How the simulated viewers run.
struct Load<'a> {
    binary: &'a Path,
    tracker: &'a str,
    seconds: u64,
}

/// What one step measured: the load generator's summary and the measured processes'
/// CPU and memory (summed over them).
struct Measured {
    viewers: usize,
    summary: Value,
    wall: f64,
    cpu: f64,
    idle_rss: u64,
    peak_rss: u64,
    idle_pss: u64,
    peak_pss: u64,
}

impl Measured {
    fn connected(&self) -> u64 {
        self.summary["connected"].as_u64().unwrap_or(0)
    }

    fn mbps(&self) -> f64 {
        self.summary["bytes"].as_f64().unwrap_or(0.0) * 8.0 / self.wall / 1e6
    }

    fn cpu_per_gb(&self) -> Option<f64> {
        let gb = self.summary["bytes"].as_f64().unwrap_or(0.0) / 1e9;
        (gb > 0.0).then(|| self.cpu / gb)
    }

    fn cpu_percent(&self) -> f64 {
        self.cpu / self.wall * 100.0
    }

    /// Memory added per connected viewer, from the idle process to the step's peak.
    fn per_viewer_kb(&self, idle: u64, peak: u64) -> Option<f64> {
        let connected = self.connected();
        (connected > 0).then(|| peak.saturating_sub(idle) as f64 / 1024.0 / connected as f64)
    }

    fn rss_per_viewer_kb(&self) -> Option<f64> {
        self.per_viewer_kb(self.idle_rss, self.peak_rss)
    }

    fn pss_per_viewer_kb(&self) -> Option<f64> {
        self.per_viewer_kb(self.idle_pss, self.peak_pss)
    }

    fn p50(&self) -> Option<f64> {
        self.summary["segment_ms_p50"].as_f64()
    }

    fn p99(&self) -> Option<f64> {
        self.summary["segment_ms_p99"].as_f64()
    }

    fn failures(&self) -> u64 {
        self.summary["failures"].as_u64().unwrap_or(u64::MAX)
    }

    fn load_cpu_percent(&self) -> Option<f64> {
        self.summary["load_cpu_seconds"].as_f64().map(|c| c / self.wall * 100.0)
    }

    /// Every viewer connected, no failure, p99 segment time under the segment duration.
    fn served_in_time(&self) -> bool {
        self.connected() == self.viewers as u64
            && self.failures() == 0
            && self.p99().is_some_and(|p| p < SEGMENT_SECONDS * 1000.0)
    }

    fn json(&self) -> Value {
        json!({
            "viewers": self.viewers, "connected": self.connected(), "mbps": self.mbps(),
            "cpu_s_per_gb": self.cpu_per_gb(), "cpu_percent": self.cpu_percent(),
            "rss_mb": self.peak_rss as f64 / 1048576.0, "rss_kb_per_viewer": self.rss_per_viewer_kb(),
            "pss_kb_per_viewer": self.pss_per_viewer_kb(), "p50_ms": self.p50(), "p99_ms": self.p99(),
            "failures": self.failures(), "dropped": self.summary["dropped"],
            "load_cpu_percent": self.load_cpu_percent(),
        })
    }
}

fn memory(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(rss, pss), &pid| {
        (rss + procfs::rss_bytes(pid).unwrap_or(0), pss + procfs::pss_bytes(pid).unwrap_or(0))
    })
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| procfs::cpu_seconds(pid)).sum()
}

/// Starts the load generator: `viewers` of `stream` joining 2 ms apart, for `seconds`;
/// its summary (stdout) is read to the end by the thread returned. `isolated` viewers
/// cannot connect to each other (as behind NATs that block browser-to-browser links),
/// which keeps their own connections off this machine's two cores.
fn spawn_load(
    load: &Load,
    stream: &Stream,
    viewers: usize,
    seconds: u64,
    pace_ms: u64,
    isolated: bool,
) -> (std::process::Child, std::thread::JoinHandle<Vec<u8>>) {
    let mut child = Command::new(load.binary)
        .args(isolated.then_some("--isolated"))
        .args(["--tracker", load.tracker, "--info-hash", &stream.origin.info_hash()])
        .args(["--media", &stream.origin.media()])
        .args(["--viewers", &viewers.to_string(), "--seconds", &seconds.to_string()])
        .args(["--ramp-ms", "2", "--pace-ms", &pace_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
        out
    });
    (child, reader)
}

/// Runs `viewers` simulated viewers of `stream` against whoever is in its swarm,
/// measuring the processes `measured` names; `midway` runs once, half way through.
fn measure(
    load: &Load,
    stream: &Stream,
    viewers: usize,
    pace_ms: u64,
    measured: &dyn Fn() -> Vec<u32>,
    midway: &mut dyn FnMut(),
) -> Measured {
    let pids = measured();
    let (idle_rss, idle_pss) = memory(&pids);
    let cpu_before = cpu(&pids);
    let started = Instant::now();
    let (mut child, reader) = spawn_load(load, stream, viewers, load.seconds, pace_ms, true);
    let (mut peak_rss, mut peak_pss) = (idle_rss, idle_pss);
    let half_way = started + Duration::from_secs(load.seconds) / 2;
    let mut midway = Some(midway);
    while child.try_wait().unwrap().is_none() {
        let (rss, pss) = memory(&measured());
        peak_rss = peak_rss.max(rss);
        peak_pss = peak_pss.max(pss);
        if Instant::now() >= half_way
            && let Some(midway) = midway.take()
        {
            midway();
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_used = cpu(&measured()) - cpu_before;
    let summary = serde_json::from_slice(&reader.join().unwrap()).unwrap_or(Value::Null);
    if summary["failures"].as_u64() != Some(0) {
        println!("{viewers} viewers: failures {}", summary["failure_reasons"]);
    }
    Measured { viewers, summary, wall, cpu: cpu_used, idle_rss, peak_rss, idle_pss, peak_pss }
}

/// The master, seeding each stream with one worker.
struct Superpeers<'a> {
    master: &'a Superpeer,
}

/// A superpeer step: what was measured, the policy's share of the worker's CPU, and
/// the worker's policy figures afterwards.
struct SuperpeerStep {
    measured: Measured,
    policy_share: Option<f64>,
    policy_after: Value,
}

impl Superpeers<'_> {
    /// The channel's worker once it holds every segment and is on the tracker.
    fn ready_worker(&self, channel: &str, not: Option<u32>) -> (u32, Value) {
        let ready = |s: &Value| {
            workers_of(s, channel).into_iter().find(|(pid, w)| {
                Some(*pid) != not && w["segments"] == SEGMENTS && w["trackers"] == 1
            })
        };
        ready(&self.master.wait_for("the worker ready", |s| ready(s).is_some())).unwrap()
    }

    /// One step from a freshly restarted worker (its memory then is the baseline, and
    /// no viewer is left from the step before).
    fn step(
        &self,
        load: &Load,
        stream: &Stream,
        viewers: usize,
        pace_ms: u64,
        midway: &mut dyn FnMut(u32),
    ) -> SuperpeerStep {
        let channel = stream.origin.channel();
        let (old, _) = self.ready_worker(&channel, None);
        self.master.ok("POST", &format!("/restart/{old}"), Value::Null);
        let (pid, before) = self.ready_worker(&channel, Some(old));
        let busy = |w: &Value| w["policyStats"]["busy_us"].as_f64().unwrap_or(0.0) / 1e6;
        let measured = measure(load, stream, viewers, pace_ms, &|| vec![pid], &mut || midway(pid));
        let after = workers_of(&self.master.stats(), &channel)
            .into_iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, w)| w)
            .unwrap_or(Value::Null);
        let policy_seconds = busy(&after) - busy(&before);
        let policy_share =
            (measured.cpu > 0.0).then(|| (policy_seconds / measured.cpu * 100.0).min(100.0));
        SuperpeerStep { measured, policy_share, policy_after: after["policyStats"].clone() }
    }
}

/// A Chromium seeder step: a fresh seeder that has loaded `stream` before the viewers
/// come; Chromium's processes are the seeder helper's descendants.
fn chromium_step(load: &Load, stream: &Stream, viewers: usize, pace_ms: u64) -> Measured {
    let seeder = NodeService::start(
        "seeder.mjs",
        &[
            "--manifest".as_ref(),
            stream.origin.manifest().as_ref(),
            "--trackers".as_ref(),
            load.tracker.as_ref(),
        ],
    );
    let helper = seeder.child.id();
    measure(load, stream, viewers, pace_ms, &|| procfs::descendants(helper), &mut || {})
}

/// The longest a reach step waits for superpeer to reach 90% of the swarm.
const REACH_PATIENCE: Duration = Duration::from_secs(120);

/// One reach step: how long superpeer took to reach 90% of a swarm of `viewers` that
/// was there first, and the offers the tracker relayed from it to them.
struct ReachStep {
    viewers: usize,
    offers_per_announce: usize,
    /// From the seed to 90% of the viewers connected, if within the patience.
    seconds: Option<f64>,
    /// Viewers connected at the end of the wait.
    connected: u64,
    offers_relayed: u64,
    load: Value,
}

impl ReachStep {
    fn offers_per_viewer(&self) -> Option<f64> {
        (self.connected > 0).then(|| self.offers_relayed as f64 / self.connected as f64)
    }
}

/// Simulated viewers join and announce; once the tracker knows every one of them,
/// superpeer is seeded (with `offers_per_announce`), and the step waits until its
/// worker has an open DataChannel with 90% of them.
fn reach_step(
    master: &Superpeer,
    tracker: &Tracker,
    load: &Load,
    stream: &Stream,
    viewers: usize,
    offers_per_announce: usize,
) -> ReachStep {
    let channel = stream.origin.channel();
    let info_hash: String = stream.origin.info_hash().bytes().map(|b| format!("{b:02x}")).collect();
    let lines_before = tracker.service.lines.lock().unwrap().len();
    let announced = || {
        let lines = tracker.service.lines.lock().unwrap();
        lines[lines_before..]
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["event"] == "start" && l["info_hash"] == info_hash.as_str())
            .map(|l| l["peer_id"].to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let seconds = 60 + viewers as u64 / 4 + REACH_PATIENCE.as_secs();
    let (mut child, reader) = spawn_load(load, stream, viewers, seconds, PACE_MS, false);
    let joined_by = Instant::now() + Duration::from_secs(60 + viewers as u64 / 4);
    while announced() < viewers {
        assert!(Instant::now() < joined_by, "only {} of {viewers} viewers announced", announced());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_before = master.log.lock().unwrap().len();
    let seeded = Instant::now();
    let settings = json!({"offersPerAnnounce": offers_per_announce, "identities": "2.3"});
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{
            "channel": channel, "keepAlive": true, "signal1": tracker.url,
            "maxConnections": 10000, "settings": settings,
        }]}),
    );
    let needed = (viewers as f64 * 0.9).ceil() as u64;
    let peers = || {
        master.stats()["workers"]
            .as_object()
            .unwrap()
            .values()
            .filter(|w| w["channelId"] == channel.as_str())
            .filter_map(|w| w["peers"].as_u64())
            .sum::<u64>()
    };
    let (reached, connected) = loop {
        let connected = peers();
        if connected >= needed {
            break (Some(seeded.elapsed().as_secs_f64()), connected);
        }
        if seeded.elapsed() > REACH_PATIENCE {
            break (None, connected);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    signal("TERM", child.id());
    child.wait().unwrap();
    let summary: Value = serde_json::from_slice(&reader.join().unwrap()).unwrap_or(Value::Null);
    println!(
        "reach {viewers} viewers, {offers_per_announce} offers per announce: {connected} connected; load generator failures {}",
        summary["failure_reasons"]
    );
    let ours = logged_peer_ids(&master.log.lock().unwrap()[log_before..]);
    let offers_relayed =
        ours.iter().filter_map(|id| summary["offers_received_from"][id.as_str()].as_u64()).sum();
    master.ok("POST", &format!("/stop/{}", percent_encode(&channel)), Value::Null);
    ReachStep {
        viewers,
        offers_per_announce,
        seconds: reached,
        connected,
        offers_relayed,
        load: summary,
    }
}

/// What offers waiting for their answers cost a worker's data plane: CPU to make one,
/// and memory held per offer, for `count` offers.
fn pending_offer_cost(count: u64) -> (f64, f64) {
    use superpeer::dataplane::{DataPlaneLimits, Driver, Input};
    use superpeer::policy::wire::{Command as PolicyCommand, PeerId};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut plane, _io) = Driver::new(DataPlaneLimits::default()).unwrap();
        plane.handle([Input::Command(PolicyCommand::PeerOffer(PeerId(0)))]);
        let me = std::process::id();
        let (rss, cpu) = (procfs::rss_bytes(me).unwrap(), procfs::cpu_seconds(me).unwrap());
        for peer in 1..=count {
            plane.handle([Input::Command(PolicyCommand::PeerOffer(PeerId(peer)))]);
        }
        let spent = procfs::cpu_seconds(me).unwrap() - cpu;
        let held = procfs::rss_bytes(me).unwrap().saturating_sub(rss);
        assert_eq!(plane.plane().offers_pending() as u64, count + 1);
        (spent * 1e6 / count as f64, held as f64 / 1024.0 / count as f64)
    })
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}

const SERIES_HEADER: &str = "| viewers | connected | upload Mbit/s | worker CPU s/GB | worker CPU % | policy share of CPU | worker RSS MB | RSS KB/viewer | segment p50 ms | segment p99 ms | failures | load generator CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";

fn series_row(step: &SuperpeerStep) -> String {
    let m = &step.measured;
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        m.viewers,
        m.connected(),
        fmt(Some(m.mbps()), 0),
        fmt(m.cpu_per_gb(), 2),
        fmt(Some(m.cpu_percent()), 0),
        fmt(step.policy_share, 1),
        fmt(Some(m.peak_rss as f64 / 1048576.0), 0),
        fmt(m.rss_per_viewer_kb(), 0),
        fmt(m.p50(), 0),
        fmt(m.p99(), 0),
        m.failures(),
        fmt(m.load_cpu_percent(), 0),
    )
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(str::trim))
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = procfs::total_memory_bytes().map_or(0.0, |b| b as f64 / (1u64 << 30) as f64);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({model}), {memory:.0} GiB, Linux {}, loopback", kernel.trim())
}

/// Goal lines: what was asked, what was measured, met or not.
fn goal(line: &mut String, what: &str, measured: String, met: bool) {
    let verdict = if met { "met" } else { "missed" };
    writeln!(line, "| {what} | {measured} | {verdict} |").unwrap();
}

fn main() {
    // Relative paths are the repository's (benches run in the package directory).
    let binary = repo().join(
        std::env::var("SUPERPEER_LOAD").unwrap_or_else(|_| "target/release/superpeer-load".into()),
    );
    assert!(binary.exists(), "{} is missing: run `just bench`", binary.display());
    let seconds: u64 =
        std::env::var("SUPERPEER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);

    let dir = data_dir("bench-load");
    let tracker = Tracker::start();
    let load = Load { binary: &binary, tracker: &tracker.url, seconds };
    // The 4.2 Mbit/s stream superpeer serves, the 1 Mbit/s one for many viewers, and
    // a copy of the first at another address (another swarm) for the Chromium seeder.
    let hd = Stream::start(1 << 20);
    let sd = Stream::start(1 << 18);
    let for_chromium = Stream::start(1 << 20);
    // Two streams seeded all along, and the reach steps' stream seeded and stopped in turn.
    let master = Superpeer::start_with(&dir, &["--max-workers", "3"]);
    // bittorrent-tracker forwards up to 82 offers an announce: the viewers of a step
    // are met within seconds of joining.
    let seed = |stream: &Stream| {
        json!({
            "channel": stream.origin.channel(), "keepAlive": true, "signal1": tracker.url,
            "maxConnections": 10000, "settings": {"offersPerAnnounce": 82},
        })
    };
    master.ok("POST", "/seed", json!({"list": [seed(&hd), seed(&sd)]}));
    let superpeers = Superpeers { master: &master };
    let mut figures = json!({"machine": machine(), "seconds": seconds});
    let mut report = format!(
        "Load on one superpeer worker: {} (release build, {seconds} s per step; the load generator and any seeder run on the same machine; memory is each process's own, from /proc).\n\n",
        machine()
    );

    let greedy_series = series("SUPERPEER_BENCH_VIEWERS", "10,25,50,100");
    let paced_series = series("SUPERPEER_BENCH_PACED_VIEWERS", "25,50,100,150,200,300");
    let mut best_paced = 0;
    let mut best_mbps = 0.0f64;
    let mut best_per_core = 0.0f64;
    let mut worst_cpu_per_gb = 0.0f64;
    let mut best_cpu_per_gb = f64::INFINITY;
    let mut per_viewer_kb: Vec<f64> = Vec::new();
    // Where the worker's fixed memory (its segment cache, its runtime) is spread thin.
    let mut per_viewer_kb_at_scale: Vec<f64> = Vec::new();
    let mut idle_kb: Option<f64> = None;
    for (name, viewers, pace_ms, title) in [
        (
            "greedy",
            &greedy_series,
            0,
            "Viewers fetching as fast as they are served (VOD filling a buffer; 1 MiB segments)",
        ),
        (
            "paced",
            &paced_series,
            PACE_MS,
            "Viewers each asking for one segment per segment duration (a 4.2 Mbit/s stream: 1 MiB segments of 2 s, as when watching)",
        ),
    ] {
        if viewers.is_empty() {
            continue;
        }
        let mut table = String::from(SERIES_HEADER);
        let mut points = Vec::new();
        for &n in viewers {
            let step = superpeers.step(&load, &hd, n, pace_ms, &mut |_| {});
            table.push_str(&series_row(&step));
            let m = &step.measured;
            best_mbps = best_mbps.max(m.mbps());
            if m.cpu > 0.0 {
                best_per_core = best_per_core.max(m.mbps() / (m.cpu_percent() / 100.0));
            }
            if let Some(c) = m.cpu_per_gb() {
                worst_cpu_per_gb = worst_cpu_per_gb.max(c);
                best_cpu_per_gb = best_cpu_per_gb.min(c);
            }
            per_viewer_kb.extend(m.rss_per_viewer_kb());
            if n >= 100 {
                per_viewer_kb_at_scale.extend(m.rss_per_viewer_kb());
            }
            if pace_ms > 0 && m.served_in_time() {
                best_paced = best_paced.max(n);
            }
            let mut point = m.json();
            point["policy_share_percent"] = json!(step.policy_share);
            points.push(point);
        }
        writeln!(report, "{title}:\n\n{table}").unwrap();
        figures[name] = Value::Array(points);
    }
    if !paced_series.is_empty() {
        writeln!(
            report,
            "Most paced viewers served with every one connected, no failure and p99 segment time under the segment duration: {best_paced}.\n"
        )
        .unwrap();
    }

    // Many viewers of a lighter stream: what one worker holds at once, and whether its
    // CPU per GB stays flat as they grow. The largest step is then run again under the
    // profiler (its second half) and drawn as a flame graph.
    let mut most_viewers = 0;
    let mut many_cpu_per_gb: Vec<f64> = Vec::new();
    let mut flame = String::new();
    let many = series("SUPERPEER_BENCH_MANY_VIEWERS", "25,100,250,500,1000");
    if !many.is_empty() {
        let mut table = String::from(SERIES_HEADER);
        let mut points = Vec::new();
        let largest = many.iter().copied().max().unwrap_or(0);
        for &n in &many {
            // Long enough for superpeer's offers, which the tracker hands to random
            // members of the swarm, to have come to every viewer (a step of a thousand
            // viewers that all join at its start is over before the last are met).
            let load = Load { seconds: load.seconds.max(n as u64 / 20), ..load };
            let step = superpeers.step(&load, &sd, n, PACE_MS, &mut |_| {});
            if n == largest {
                // Profiled in a repeat of the step, not the one measured: perf's
                // unwinding takes a share of the two cores the figures are about.
                let data = dir.0.join("worker.perf.data");
                let mut recording = None;
                superpeers.step(&load, &sd, n, PACE_MS, &mut |pid| {
                    recording = profile::Profile::start(pid, load.seconds / 2, &data);
                });
                let svg = repo().join("results/worker-flame.svg");
                std::fs::create_dir_all(repo().join("results")).unwrap();
                let title = format!(
                    "superpeer worker, {n} viewers of a {:.1} Mbit/s stream",
                    sd.mbps_per_viewer()
                );
                flame = match recording.map(|r| r.flame_graph(&svg, &title)) {
                    Some(Ok(())) => format!(
                        "Where the worker's CPU goes at {n} viewers (the second half of a repeat of that step, sampled by perf): [results/worker-flame.svg](worker-flame.svg).\n"
                    ),
                    Some(Err(why)) => format!("No flame graph of the worker: {why}.\n"),
                    None => "No flame graph of the worker: perf did not start.\n".into(),
                };
            }
            table.push_str(&series_row(&step));
            if step.measured.served_in_time() {
                most_viewers = most_viewers.max(n);
            }
            many_cpu_per_gb.extend(step.measured.cpu_per_gb());
            if let Some(c) = step.measured.cpu_per_gb() {
                worst_cpu_per_gb = worst_cpu_per_gb.max(c);
                best_cpu_per_gb = best_cpu_per_gb.min(c);
            }
            per_viewer_kb.extend(step.measured.rss_per_viewer_kb());
            if n >= 100 {
                per_viewer_kb_at_scale.extend(step.measured.rss_per_viewer_kb());
            }
            points.push(step.measured.json());
        }
        writeln!(
            report,
            "Many viewers of a {:.1} Mbit/s stream (256 KiB segments of 2 s, one per viewer every 2 s; a step lasts a second for every 20 viewers, {} s at least):\n\n{table}\n{flame}",
            sd.mbps_per_viewer(),
            load.seconds
        )
        .unwrap();
        figures["many"] = Value::Array(points);
    }

    // Connected viewers asking for nothing (their first request would come after the
    // step): what a connection itself costs, the floor under memory per viewer.
    if let Some(&n) = series("SUPERPEER_BENCH_IDLE_VIEWERS", "1000").first() {
        let idle_pace_ms = 3_600_000;
        // As long as the many-viewer step of as many viewers, for them all to be met.
        let load = Load { seconds: load.seconds.max(n as u64 / 20), ..load };
        let step = superpeers.step(&load, &sd, n, idle_pace_ms, &mut |_| {});
        let m = &step.measured;
        writeln!(
            report,
            "Connected viewers asking for nothing (the memory a connection itself costs):\n\n\
             | viewers | connected | worker RSS MB | RSS KB/viewer | worker CPU % | failures |\n|---|---|---|---|---|---|\n\
             | {n} | {} | {} | {} | {} | {} |\n",
            m.connected(),
            fmt(Some(m.peak_rss as f64 / 1048576.0), 0),
            fmt(m.rss_per_viewer_kb(), 0),
            fmt(Some(m.cpu_percent()), 1),
            m.failures(),
        )
        .unwrap();
        idle_kb = m.rss_per_viewer_kb();
        figures["idle"] = m.json();
    }

    // Hot swap under load: the default policy shipped again (a new version, as far
    // as the workers know), half way through a paced step.
    let mut swap_service: Option<f64> = None;
    if let Some(&n) = series("SUPERPEER_BENCH_SWAP_VIEWERS", "100").first() {
        let policy = export_default_policy(&dir);
        let mut swap_answer = Value::Null;
        let step = superpeers.step(&load, &hd, n, PACE_MS, &mut |_| {
            let (status, answer) = master.request("POST", "/policy", &policy);
            swap_answer = json!({"status": status, "answer": answer});
        });
        let m = &step.measured;
        let pause_ms = step.policy_after["last_swap_pause_us"].as_f64().map(|us| us / 1000.0);
        // Segments completed in the 5 s after the swap against the 5 s before (it came
        // half way through the step).
        let per_second: Vec<u64> = m.summary["segments_per_second"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let at = (load.seconds / 2) as usize;
        println!("hot swap: segments completed each second {per_second:?}, the swap at {at} s");
        let window = |from: usize| per_second.iter().skip(from).take(5).sum::<u64>();
        let before = window(at.saturating_sub(5));
        let service = (before > 0).then(|| window(at) as f64 / before as f64 * 100.0);
        writeln!(
            report,
            "Hot swap under load: the default policy uploaded again (`POST /policy`) half way through a paced step; service is the segments viewers completed in the 5 s after the swap against the 5 s before:\n\n\
             | viewers | connected | swaps | event loop paused ms | service across the swap % | viewers dropped | failures | segment p50 ms | segment p99 ms |\n|---|---|---|---|---|---|---|---|---|\n\
             | {n} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.connected(),
            step.policy_after["swaps"],
            fmt(pause_ms, 2),
            fmt(service, 0),
            m.summary["dropped"],
            m.failures(),
            fmt(m.p50(), 0),
            fmt(m.p99(), 0),
        )
        .unwrap();
        swap_service = service;
        let mut point = m.json();
        point["swaps"] = step.policy_after["swaps"].clone();
        point["pause_ms"] = json!(pause_ms);
        point["service_percent"] = json!(swap_service);
        point["upload"] = swap_answer;
        figures["swap"] = point;
    }

    // Side by side: the same viewers served by superpeer and by a Chromium seeder.
    let side = series("SUPERPEER_BENCH_SIDE_VIEWERS", "5,10,25,50");
    let mut ratios = Vec::new();
    let mut memory_ratios = Vec::new();
    // The Chromium seeder's saturation point: the most viewers it had connected at
    // once, and the step that asked for them.
    let mut chromium_most: Option<(u64, usize)> = None;
    if !side.is_empty() {
        let mut table = String::from(
            "| viewers | seeder | connected | upload Mbit/s | CPU s/GB | CPU % | memory (PSS) MB | PSS KB/viewer | segment p50 ms | segment p99 ms | failures |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mut ratio_table = String::from(
            "| viewers | CPU per GB: Chromium / superpeer | memory per viewer: Chromium / superpeer |\n|---|---|---|\n",
        );
        let mut points = Vec::new();
        for &n in &side {
            let ours = superpeers.step(&load, &hd, n, PACE_MS, &mut |_| {}).measured;
            let theirs = chromium_step(&load, &for_chromium, n, PACE_MS);
            for (name, m) in [("superpeer worker", &ours), ("Chromium tab", &theirs)] {
                writeln!(
                    table,
                    "| {n} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    m.connected(),
                    fmt(Some(m.mbps()), 0),
                    fmt(m.cpu_per_gb(), 2),
                    fmt(Some(m.cpu_percent()), 0),
                    fmt(Some(m.peak_pss as f64 / 1048576.0), 0),
                    fmt(m.pss_per_viewer_kb(), 0),
                    fmt(m.p50(), 0),
                    fmt(m.p99(), 0),
                    m.failures(),
                )
                .unwrap();
            }
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let cpu_ratio = ratio(theirs.cpu_per_gb(), ours.cpu_per_gb());
            let memory_ratio = ratio(theirs.pss_per_viewer_kb(), ours.pss_per_viewer_kb());
            ratios.extend(cpu_ratio);
            memory_ratios.extend(memory_ratio);
            if chromium_most.is_none_or(|(most, _)| theirs.connected() > most) {
                chromium_most = Some((theirs.connected(), n));
            }
            writeln!(ratio_table, "| {n} | {} | {} |", fmt(cpu_ratio, 1), fmt(memory_ratio, 1))
                .unwrap();
            points.push(json!({
                "viewers": n, "superpeer": ours.json(), "chromium": theirs.json(),
                "cpu_per_gb_ratio": cpu_ratio, "memory_per_viewer_ratio": memory_ratio,
            }));
        }
        writeln!(
            report,
            "Side by side: the same paced viewers (4.2 Mbit/s each) served by one superpeer worker, then by one headless Chromium tab seeding with p2p-media-loader 2.3.1 (`tests/support/seeder.html`: the library's core without hls.js, so it decodes nothing; its figures are the sum over all of Chromium's processes). Memory is PSS, so pages Chromium's processes share count once:\n\n{table}\n{ratio_table}"
        )
        .unwrap();
        if let Some((most, asked)) = chromium_most {
            writeln!(
                report,
                "The Chromium seeder's saturation point: {most} viewers connected at most (when {asked} asked); past it, viewers it does not take fail.\n"
            )
            .unwrap();
        }
        figures["side_by_side"] = Value::Array(points);
    }

    // Reaching a swarm that was there first.
    let reach_series = series("SUPERPEER_BENCH_REACH_VIEWERS", "50,200,500,1000");
    let reach_offers = series("SUPERPEER_BENCH_REACH_OFFERS", "10,82");
    if !reach_series.is_empty() && !reach_offers.is_empty() {
        let small = Stream::start(64 << 10);
        let mut table = String::from(
            "| viewers | offers per announce | 90% connected after s | connected | offers relayed per viewer connected | load generator failures |\n|---|---|---|---|---|---|\n",
        );
        let mut points = Vec::new();
        for &n in &reach_series {
            for &offers in &reach_offers {
                let step = reach_step(&master, &tracker, &load, &small, n, offers);
                writeln!(
                    table,
                    "| {n} | {offers} | {} | {} | {} | {} |",
                    step.seconds
                        .map_or(format!("> {}", REACH_PATIENCE.as_secs()), |s| format!("{s:.1}")),
                    step.connected,
                    fmt(step.offers_per_viewer(), 1),
                    step.load["failures"],
                )
                .unwrap();
                points.push(json!({
                    "viewers": step.viewers, "offers_per_announce": step.offers_per_announce,
                    "seconds": step.seconds, "connected": step.connected,
                    "offers_relayed": step.offers_relayed,
                    "offers_per_viewer": step.offers_per_viewer(),
                    "load_failures": step.load["failures"], "peers_p50": step.load["peers_p50"],
                }));
            }
        }
        let (cpu_us, kb) = pending_offer_cost(1000);
        writeln!(
            report,
            "Reaching a swarm that was there first: simulated viewers (each announcing with five offers, as the library does, and connecting among themselves) join first; then superpeer is seeded, and the time is from the seed to an open DataChannel with 90% of them. The tracker is bittorrent-tracker, which forwards up to 82 offers per announce (aquatic_ws 10, the default):\n\n{table}\nAn offer waiting for its answer costs the worker {cpu_us:.1} us of CPU to make and {kb:.1} KB of memory (1,000 offers made in one data plane).\n"
        )
        .unwrap();
        figures["reach"] =
            json!({"steps": points, "pending_offer_cpu_us": cpu_us, "pending_offer_kb": kb});
    }

    let mut goals = String::from("| goal | measured | |\n|---|---|---|\n");
    goal(
        &mut goals,
        "at least 1,000 viewers of a 1 Mbit/s stream on one worker, p99 under the segment duration, no failure",
        format!("{most_viewers} at most"),
        most_viewers >= 1000,
    );
    goal(
        &mut goals,
        "at least 1 Gbit/s per worker core",
        format!(
            "{best_per_core:.0} Mbit/s per core of worker CPU at best; {best_mbps:.0} Mbit/s the most one worker sent"
        ),
        best_per_core >= 1000.0,
    );
    goal(
        &mut goals,
        "at most 4 CPU-seconds per GB at every step",
        format!(
            "{best_cpu_per_gb:.1} to {worst_cpu_per_gb:.1} across the greedy, paced and many-viewer steps"
        ),
        worst_cpu_per_gb > 0.0 && worst_cpu_per_gb <= 4.0,
    );
    let (flat_low, flat_high) = many_cpu_per_gb
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(low, high), c| (low.min(*c), high.max(*c)));
    goal(
        &mut goals,
        "CPU per GB flat from 25 to 1,000 viewers (the highest at most 1.25x the lowest)",
        if many_cpu_per_gb.is_empty() {
            "-".into()
        } else {
            format!("{flat_low:.1} to {flat_high:.1} ({:.2}x)", flat_high / flat_low)
        },
        !many_cpu_per_gb.is_empty() && flat_high <= flat_low * 1.25,
    );
    let worst_kb = per_viewer_kb.iter().copied().fold(0.0, f64::max);
    let busy_kb = per_viewer_kb_at_scale.iter().copied().fold(0.0, f64::max);
    goal(
        &mut goals,
        "at most 200 KB of memory per connected viewer, idle and under load",
        format!(
            "{} KB per idle connection; {busy_kb:.0} KB per viewer at 100 or more viewers; {worst_kb:.0} KB at worst (few viewers share the worker's fixed memory)",
            fmt(idle_kb, 0)
        ),
        busy_kb > 0.0 && busy_kb <= 200.0 && idle_kb.is_some_and(|kb| kb <= 200.0),
    );
    goal(
        &mut goals,
        "at least 95% service across a hot swap under load",
        format!("{}%", fmt(swap_service, 0)),
        swap_service.is_some_and(|s| s >= 95.0),
    );
    for (what, ratios) in [("CPU per GB", &ratios), ("memory per viewer", &memory_ratios)] {
        let least = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        goal(
            &mut goals,
            &format!("at least 10x less {what} than the Chromium seeder, at every step"),
            if ratios.is_empty() { "-".into() } else { format!("{least:.1}x at least") },
            !ratios.is_empty() && least >= 10.0,
        );
    }
    writeln!(report, "Goals:\n\n{goals}").unwrap();

    println!("{report}");
    let results = repo().join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("load.md"), &report).unwrap();
    std::fs::write(
        results.join("load.json"),
        serde_json::to_string_pretty(&figures).unwrap() + "\n",
    )
    .unwrap();
    let chart = Command::new("node")
        .arg(repo().join("tests/support/chart.mjs"))
        .arg(results.join("load.json"))
        .arg(results.join("load.png"))
        .status()
        .unwrap();
    assert!(chart.success(), "the chart could not be drawn");
    master.stop();
}
