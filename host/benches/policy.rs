//! Policy-call figures: what running decisions in WebAssembly costs the worker.
//!
//! Prints a Markdown table: compile and load times, instantiate + init, nanoseconds per
//! event (batched and one at a time) for the default policy and a policy that answers
//! every event, and the pause a hot swap holds the event loop for.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use superpeer::policy::wire::{Event, PeerId, SeedConfig, TimerId};
use superpeer::policy::{
    Clock, CompiledPolicy, EMBEDDED_POLICY, PolicyEngine, PolicyLimits, PolicyRunner,
};

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", env!("SUPERPEER_GUEST_DIR"))).unwrap()
}

fn seed() -> SeedConfig {
    SeedConfig {
        channel: "bench".into(),
        manifest_url: None,
        trackers: vec![],
        live: true,
        max_connections: 80,
        label: "bench".into(),
        settings: vec![],
        scout: false,
    }
}

fn clock(at: Duration) -> Clock {
    Clock { monotonic: at, wall_ms: 0 }
}

/// Median and worst of `runs` timings of `f`.
fn measure(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    (times[runs / 2], times[runs - 1])
}

/// Nanoseconds per event through `PolicyRunner::handle` (guest call plus the host's
/// admission of every command), with batches of `batch` events.
fn per_event(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    batch: usize,
    event: impl Fn(u64) -> Event,
) -> (f64, f64) {
    let mut runner =
        PolicyRunner::start(engine.clone(), policy.clone(), seed(), clock(Duration::ZERO)).unwrap();
    let total = 400_000usize;
    let rounds = total / batch;
    let batches: Vec<Vec<Event>> = (0..rounds)
        .map(|r| (0..batch).map(|i| event(((r * batch + i) % 256) as u64)).collect())
        .collect();
    // Warm up: the first calls fault in the instance's memory.
    for b in batches.iter().take(rounds / 10) {
        runner.handle(clock(Duration::ZERO), b.clone());
    }
    let busy_before = runner.stats().busy_us;
    let started = Instant::now();
    for b in batches {
        runner.handle(clock(Duration::ZERO), b);
    }
    let elapsed = started.elapsed();
    let stats = runner.stats();
    assert_eq!(stats.faults, 0, "benchmark policy faulted: {:?}", stats.last_fault);
    let busy = Duration::from_micros(stats.busy_us - busy_before);
    let n = (rounds * batch) as f64;
    (elapsed.as_nanos() as f64 / n, busy.as_nanos() as f64 / n)
}

fn main() {
    let engine = PolicyEngine::new(PolicyLimits::default()).unwrap();
    let counter_wasm = guest("superpeer_test_counter");
    let mut rows: Vec<(String, String, String)> = Vec::new();

    let (compile, _) = measure(5, || {
        engine.compile(EMBEDDED_POLICY).unwrap();
    });
    rows.push((
        "compile default policy (median of 5)".into(),
        format!("{:.1} ms", ms(compile)),
        "off the event loop".into(),
    ));
    let native = engine.precompile(EMBEDDED_POLICY).unwrap();
    let (load, _) = measure(20, || {
        engine.load_precompiled(&native).unwrap();
    });
    rows.push((
        "load precompiled default policy".into(),
        format!("{:.2} ms", ms(load)),
        String::new(),
    ));

    let pml = engine.compile(EMBEDDED_POLICY).unwrap();
    let counter = engine.compile(&counter_wasm).unwrap();
    let counter_v2 = engine.compile(&guest("superpeer_test_counter_v2")).unwrap();
    let (start, start_max) = measure(200, || {
        PolicyRunner::start(engine.clone(), pml.clone(), seed(), clock(Duration::ZERO)).unwrap();
    });
    rows.push((
        "instantiate + init (median / max of 200)".into(),
        format!("{:.1} / {:.1} us", us(start), us(start_max)),
        String::new(),
    ));

    type MakeEvent = fn(u64) -> Event;
    let workloads: [(&str, &CompiledPolicy, MakeEvent); 2] = [
        ("default policy, peer-buffered-low", &pml, |n| Event::PeerBufferedLow(PeerId(n))),
        ("counter, timer-fired -> timer-set", &counter, |n| Event::TimerFired(TimerId(n))),
    ];
    for (name, policy, make) in workloads {
        for batch in [1usize, 16, 256] {
            let (total, guest) = per_event(&engine, policy, batch, make);
            let target =
                if batch >= 16 { verdict(total <= 1000.0, "<= 1000 ns") } else { String::new() };
            rows.push((
                format!("{name}, batch of {batch}"),
                format!("{total:.0} ns/event ({guest:.0} in guest)"),
                target,
            ));
        }
    }

    let mut runner =
        PolicyRunner::start(engine.clone(), counter.clone(), seed(), clock(Duration::ZERO))
            .unwrap();
    let mut next = [counter_v2, counter];
    let mut now = Duration::ZERO;
    let mut pauses: Vec<Duration> = (0..200)
        .map(|i| {
            now += Duration::from_millis(1);
            runner.handle(clock(now), (0..64).map(|n| Event::TimerFired(TimerId(n))).collect());
            let report = runner.swap(clock(now), next[i % 2].clone()).unwrap();
            next.swap(0, 1);
            report.pause
        })
        .collect();
    pauses.sort();
    let (p50, p99) = (pauses[100], pauses[197]);
    rows.push((
        "hot swap pause, counter v1 <-> v2 (p50 / p99 of 200)".into(),
        format!("{:.1} / {:.1} us", us(p50), us(p99)),
        verdict(p99 <= Duration::from_millis(1), "<= 1 ms"),
    ));

    println!("\n## Policy calls\n");
    println!("| measure | result | target |");
    println!("| --- | --- | --- |");
    for (what, result, target) in rows {
        println!("| {what} | {result} | {target} |");
    }
    println!(
        "\n{} cores; default limits (deadline {:?}, memory {} MiB).",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        engine.limits().call_deadline,
        engine.limits().memory_bytes >> 20
    );
}

fn verdict(met: bool, target: &str) -> String {
    format!("{} {target}", if met { "met:" } else { "MISSED:" })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
