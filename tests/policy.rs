//! The policy runtime against real components: the embedded default policy, a counter
//! in two versions, and policies that misbehave on purpose. Time is passed in, so no
//! test sleeps; only the epoch deadline runs on real time.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use superpeer::policy::wire::{
    Command, ConnId, Event, FetchId, PeerId, SeedConfig, TimerId, TimerSet,
};
use superpeer::policy::{
    Clock, CompiledPolicy, EMBEDDED_POLICY, Fault, PolicyEngine, PolicyError, PolicyLimits,
    PolicyRunner,
};

fn guest(name: &str) -> Vec<u8> {
    let path = format!("{}/{name}.wasm", env!("SUPERPEER_GUEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Generous deadlines: a loaded CI machine must not turn a slow call into a fault.
fn limits() -> PolicyLimits {
    PolicyLimits {
        call_deadline: Duration::from_millis(500),
        init_deadline: Duration::from_millis(2000),
        memory_bytes: 16 << 20,
        snapshot_interval: Duration::ZERO,
        ..PolicyLimits::default()
    }
}

fn engine() -> PolicyEngine {
    PolicyEngine::new(limits()).unwrap()
}

fn config(settings: &[(&str, &str)]) -> SeedConfig {
    SeedConfig {
        channel: "aHR0cDovL29yaWdpbi5leGFtcGxlL21hc3Rlci5tM3U4".into(),
        manifest_url: Some("http://origin.example/master.m3u8".into()),
        trackers: vec![],
        live: true,
        max_connections: 80,
        label: "test".into(),
        settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        scout: false,
    }
}

fn at(ms: u64) -> Clock {
    Clock { monotonic: Duration::from_millis(ms), wall_ms: 1_700_000_000_000 + ms }
}

fn counter(engine: &PolicyEngine) -> CompiledPolicy {
    engine.compile(&guest("superpeer_test_counter")).unwrap()
}

fn timers(ids: std::ops::Range<u64>) -> Vec<Event> {
    ids.map(|n| Event::TimerFired(TimerId(n))).collect()
}

/// The counter's answers as (timer, after_ms).
fn answers(commands: &[Command]) -> Vec<(u64, u64)> {
    commands
        .iter()
        .map(|c| match c {
            Command::TimerSet(TimerSet { timer, after_ms }) => (timer.0, *after_ms),
            other => panic!("unexpected command {other:?}"),
        })
        .collect()
}

/// Runs the counter in a runner and checks it answers in sequence from `first_seen`.
fn assert_counter_answers(runner: &mut PolicyRunner, clock: Clock, first_seen: u64) {
    let got = answers(&runner.handle(clock, timers(100..103)));
    let expected: Vec<_> = (0..3).map(|i| (100 + i, first_seen + i)).collect();
    assert_eq!(got, expected, "counter should still answer, carrying its count");
}

#[test]
fn embedded_default_policy_loads_and_describes_itself() {
    let policy = engine().compile(EMBEDDED_POLICY).unwrap();
    assert_eq!(policy.meta().name, "pml");
    assert_eq!(policy.meta().size, EMBEDDED_POLICY.len());
    assert_eq!(policy.meta().digest.len(), 16);
}

#[test]
fn embedded_policy_connects_its_trackers() {
    let engine = engine();
    let policy = engine.compile(EMBEDDED_POLICY).unwrap();
    let mut seed = config(&[]);
    seed.trackers = vec!["wss://tracker.example/".into(), "ws://127.0.0.1:8000".into()];
    let mut runner = PolicyRunner::start(engine, policy, seed, at(0)).unwrap();
    let commands = runner.handle(at(1), vec![Event::PeerBufferedLow(PeerId(1))]);
    let urls: Vec<_> = commands
        .iter()
        .filter_map(|c| match c {
            Command::TrackerConnect(t) => Some(t.url.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(urls, ["wss://tracker.example/", "ws://127.0.0.1:8000"]);
    let manifest = commands.iter().find_map(|c| match c {
        Command::FetchText(f) => Some(f.url.as_str()),
        _ => None,
    });
    assert_eq!(
        manifest,
        Some("http://origin.example/master.m3u8"),
        "it reads the manifest at once"
    );
}

#[test]
fn a_snapshot_follows_soon_after_the_policy_speaks_to_a_tracker() {
    // Snapshots every second otherwise: a fault within that second would restart the
    // policy from a state that never told the tracker who it is, and it would announce
    // again as a stranger while its old peer ids stay listed.
    let engine =
        PolicyEngine::new(PolicyLimits { snapshot_interval: Duration::from_secs(1), ..limits() })
            .unwrap();
    let policy = engine.compile(EMBEDDED_POLICY).unwrap();
    let mut seed = config(&[]);
    seed.trackers = vec!["ws://127.0.0.1:8000".into()];
    let mut runner = PolicyRunner::start(engine, policy, seed, at(0)).unwrap();
    let first = runner.handle(at(1), Vec::new());
    let before = runner.stats().snapshot_bytes;
    let (mut conn, mut fetch) = (ConnId(0), FetchId(0));
    for command in &first {
        match command {
            Command::TrackerConnect(c) => conn = c.conn,
            Command::FetchText(f) => fetch = f.fetch,
            _ => {}
        }
    }
    let media = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns1.ts\n#EXTINF:2,\ns2.ts\n";
    let read = Event::TextFetched(superpeer::policy::wire::TextFetched {
        fetch,
        url: "http://origin.example/master.m3u8".into(),
        text: media.into(),
    });
    let offers = runner.handle(at(2), vec![read, Event::TrackerConnected(conn)]);
    let ready: Vec<Event> = offers
        .iter()
        .filter_map(|c| match c {
            Command::PeerOffer(peer) => {
                Some(Event::PeerOfferReady(superpeer::policy::wire::SdpReady {
                    peer: *peer,
                    sdp: "v=0\r\n".into(),
                }))
            }
            _ => None,
        })
        .collect();
    assert!(!ready.is_empty(), "it offers in its swarms: {offers:?}");
    assert_eq!(runner.stats().snapshot_bytes, before, "nothing said to the tracker yet");
    let announced = runner.handle(at(150), ready);
    assert!(
        announced.iter().any(|c| matches!(c, Command::TrackerSend(_))),
        "it announces: {announced:?}"
    );
    assert!(
        runner.stats().snapshot_bytes > before,
        "a snapshot with its swarms and peer ids, well before the periodic one"
    );
}

#[test]
fn precompiled_policy_round_trips() {
    let engine = engine();
    let precompiled = engine.precompile(EMBEDDED_POLICY).unwrap();
    let policy = engine.load_precompiled(&precompiled).unwrap();
    assert_eq!(policy.meta(), engine.compile(EMBEDDED_POLICY).unwrap().meta());
}

#[test]
fn a_policy_that_imports_the_system_clock_is_refused_at_load() {
    let error = engine().compile(&guest("superpeer_test_sleeper")).unwrap_err();
    assert!(matches!(error, PolicyError::WrongWorld(_)), "{error}");
    assert!(error.to_string().contains("wasi:clocks"), "{error}");
}

#[test]
fn large_turns_are_split_into_several_calls_in_order() {
    let limits = PolicyLimits { max_events_per_call: 10, ..limits() };
    let engine = PolicyEngine::new(limits).unwrap();
    let mut runner =
        PolicyRunner::start(engine.clone(), counter(&engine), config(&[]), at(0)).unwrap();
    let got = answers(&runner.handle(at(1), timers(0..25)));
    assert_eq!(got, (0..25).map(|i| (i, i + 1)).collect::<Vec<_>>());
    assert_eq!(runner.stats().calls, 3);
}

#[test]
fn a_swap_is_refused_when_the_running_policy_cannot_save_its_state() {
    let engine = engine();
    let bad = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let mut runner =
        PolicyRunner::start(engine.clone(), bad, config(&[("mode", "snapshot")]), at(0)).unwrap();
    let error = runner.swap(at(1), counter(&engine)).unwrap_err();
    assert!(matches!(error, PolicyError::SwapAborted(Fault::Panic(_))), "{error}");
    assert_eq!(runner.policy().name, "misbehave", "nothing was swapped");
    let stats = runner.stats();
    assert_eq!((stats.swaps, stats.swaps_rejected, stats.faults), (0, 1, 1));
}

/// A snapshot writes the whole state, as `init` reads it back: it runs under the init
/// deadline, not a `handle` call's, which a large state (a flood of offers) outgrows.
#[test]
fn a_snapshot_runs_under_the_init_deadline() {
    let generous = PolicyLimits {
        call_deadline: Duration::from_millis(1),
        init_deadline: Duration::from_secs(60),
        ..limits()
    };
    let engine = PolicyEngine::new(generous.clone()).unwrap();
    let slow = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let settings = [("mode", "slow"), ("when", "snapshot")];
    let mut runner = PolicyRunner::start(engine, slow, config(&settings), at(0)).unwrap();
    runner.handle(at(1), timers(0..1));
    let stats = runner.stats();
    assert_eq!(stats.faults, 0, "{:?}", stats.last_fault);
    assert_eq!(stats.snapshot_bytes, "state".len());

    // Bounded all the same.
    let strict = PolicyLimits { init_deadline: Duration::from_millis(200), ..generous };
    let engine = PolicyEngine::new(strict).unwrap();
    let looping = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let settings = [("mode", "loop"), ("when", "snapshot")];
    let mut runner = PolicyRunner::start(engine, looping, config(&settings), at(0)).unwrap();
    runner.handle(at(1), timers(0..1));
    let fault = runner.stats().last_fault.unwrap().fault;
    assert_eq!(fault, Fault::Deadline(Duration::from_millis(200)));
}

#[test]
fn log_floods_are_capped_and_do_not_fault() {
    let engine = engine();
    let noisy = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let mut runner =
        PolicyRunner::start(engine, noisy, config(&[("mode", "logs")]), at(0)).unwrap();
    runner.handle(at(1), timers(0..1));
    let stats = runner.stats();
    assert_eq!(stats.faults, 0, "{:?}", stats.last_fault);
    assert_eq!((stats.log_lines, stats.log_lines_dropped), (64, 10_000 - 64));
}

#[test]
fn a_restart_after_a_fault_carries_state_and_gets_the_faulted_events_once_more() {
    let engine = engine();
    let mut runner =
        PolicyRunner::start(engine.clone(), counter(&engine), config(&[]), at(0)).unwrap();
    assert_eq!(answers(&runner.handle(at(1), timers(0..5))).last(), Some(&(4, 5)));

    // The instance is lost with the call it panicked in; its events wait for the next.
    assert!(
        runner
            .handle(
                at(2),
                vec![Event::TimerFired(TimerId(7)), Event::TimerFired(TimerId(u64::MAX))]
            )
            .is_empty()
    );
    let stats = runner.stats();
    assert_eq!(stats.faults_by_kind.get("panic"), Some(&1));
    assert_eq!((stats.events_redelivered, stats.events_dropped), (2, 0));
    let fault = stats.last_fault.expect("the fault is reported");
    assert!(fault.message.contains("poisoned after 7 events"), "{}", fault.message);
    assert_eq!(stats.state, "restarting");
    let wake = runner.restart_at().expect("a restart is scheduled");

    // Before the back-off ends, events wait. After it, the new instance continues from
    // the snapshot taken after the fifth event and gets the faulted events first: the
    // poison faults it again, so those two are dropped, and the events that came
    // meanwhile wait for the next instance.
    assert!(runner.handle(at(3), timers(10..11)).is_empty());
    assert!(runner.handle(Clock { monotonic: wake, wall_ms: 0 }, timers(11..12)).is_empty());
    let stats = runner.stats();
    assert_eq!((stats.faults, stats.events_redelivered, stats.events_dropped), (2, 4, 2));
    assert!(stats.last_fault.unwrap().message.contains("poisoned after 7 events"));
    let wake = runner.restart_at().expect("another restart is scheduled");
    let resumed = answers(&runner.handle(Clock { monotonic: wake, wall_ms: 0 }, timers(12..13)));
    assert_eq!(resumed, vec![(10, 6), (11, 7), (12, 8)]);
    assert_eq!(runner.stats().restarts, 2);
    assert_eq!(runner.stats().state, "running");
}

#[test]
fn hot_swap_mid_stream_loses_no_event_and_carries_state() {
    let engine = engine();
    let v2 = engine.compile(&guest("superpeer_test_counter_v2")).unwrap();
    assert_eq!(v2.meta().version, "2.0.0");
    let mut runner =
        PolicyRunner::start(engine.clone(), counter(&engine), config(&[]), at(0)).unwrap();

    let mut seen = Vec::new();
    for batch in 0..100u64 {
        if batch == 50 {
            let report = runner.swap(at(batch), v2.clone()).unwrap();
            assert_eq!(
                (report.from.version.as_str(), report.to.version.as_str()),
                ("1.0.0", "2.0.0")
            );
            assert_eq!(report.snapshot_bytes, 8);
        }
        seen.extend(answers(&runner.handle(at(batch), timers(batch * 10..batch * 10 + 10))));
    }
    assert_eq!(seen.len(), 1000, "every event answered exactly once");
    for (i, (timer, after_ms)) in seen.iter().enumerate() {
        let i = i as u64;
        assert_eq!(*timer, i, "answers in order");
        let mark = if i < 500 { 0 } else { 1_000_000 };
        assert_eq!(*after_ms, mark + i + 1, "event {i}: count carried over the swap");
    }
    let stats = runner.stats();
    assert_eq!((stats.swaps, stats.faults, stats.events_dropped), (1, 0, 0));
    assert_eq!(stats.previous.map(|p| p.version), Some("1.0.0".to_string()));
}

/// Short deadlines for policies that loop, also for an instance's first turn (whose
/// deadline starts from `init_deadline`), so that each loop is stopped soon; two
/// different ones, so that a fault tells which applied.
fn looping_limits() -> PolicyLimits {
    let ms = Duration::from_millis;
    PolicyLimits { call_deadline: ms(20), init_deadline: ms(40), ..limits() }
}

/// Swaps a misbehaving policy in over the counter, makes it misbehave until the
/// runner rolls back, and checks the counter carries on where it was.
fn contained_after_swap(mode: &str, expected_kind: &str, limits: PolicyLimits) -> PolicyRunner {
    let engine = PolicyEngine::new(limits).unwrap();
    let bad = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let mut runner =
        PolicyRunner::start(engine.clone(), counter(&engine), config(&[("mode", mode)]), at(0))
            .unwrap();
    assert_eq!(answers(&runner.handle(at(1), timers(0..3))).len(), 3);

    runner.swap(at(2), bad).expect("the bad policy passes its canary: it only misbehaves later");
    assert_eq!(runner.policy().name, "misbehave");
    let mut now = 3;
    while runner.policy().name == "misbehave" {
        assert!(runner.handle(at(now), timers(50..51)).is_empty());
        now = runner.restart_at().map_or(now + 1, |t| t.as_millis() as u64).max(now + 1);
        assert!(now < 100_000, "never rolled back");
    }
    let stats = runner.stats();
    assert_eq!(stats.rollbacks, 1, "{stats:?}");
    assert_eq!(stats.faults_by_kind.get(expected_kind), Some(&3), "{stats:?}");
    assert!(stats.last_fault.is_some());
    // Each timer went to two instances that faulted and was dropped, but the last: the
    // counter gets it first, and resumes from the state it had when it was swapped out.
    assert_eq!((stats.events_redelivered, stats.events_dropped), (3, 2), "{stats:?}");
    let got = answers(&runner.handle(at(now), timers(100..103)));
    assert_eq!(got, [(50, 4), (100, 5), (101, 6), (102, 7)]);
    runner
}

#[test]
fn infinite_loop_is_interrupted_and_rolled_back() {
    let limits = looping_limits();
    let runner = contained_after_swap("loop", "deadline", limits.clone());
    let stats = runner.stats();
    // Each instance looped in its first turn; the last one's held `started`, the timer
    // its predecessor faulted on, and the next.
    let deadline = limits.handle_deadline(3, 0, true);
    assert_eq!(stats.last_fault.unwrap().fault, Fault::Deadline(deadline));
    // The slowest call is the one that ran past the deadline, kept after its instance
    // was discarded.
    assert!(stats.slowest_call_us >= 20_000, "{}", stats.slowest_call_us);
}

#[test]
fn deadlines_hold_after_the_watchdog_went_idle() {
    let limits = looping_limits();
    let engine = PolicyEngine::new(limits.clone()).unwrap();
    let looping = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let mut runner =
        PolicyRunner::start(engine.clone(), looping, config(&[("mode", "loop")]), at(0)).unwrap();
    // Idle, the watchdog sleeps; the looping call below must wake it or hang.
    let patience = std::time::Instant::now() + Duration::from_secs(10);
    while !engine.watchdog_idle() {
        assert!(std::time::Instant::now() < patience, "the watchdog never went idle");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(runner.handle(at(1), vec![]).is_empty(), "the first turn is only `started`");
    assert!(runner.handle(at(2), timers(0..1)).is_empty());
    let fault = runner.stats().last_fault.unwrap().fault;
    assert_eq!(fault, Fault::Deadline(limits.handle_deadline(1, 0, false)));
}

#[test]
fn memory_bomb_hits_the_cap_and_is_rolled_back() {
    let runner = contained_after_swap("memory", "memory", limits());
    assert_eq!(runner.stats().last_fault.unwrap().fault, Fault::Memory(16 << 20));
}

#[test]
fn panic_is_contained_with_its_message() {
    let runner = contained_after_swap("panic", "panic", limits());
    let message = runner.stats().last_fault.unwrap().message;
    assert!(message.contains("panicking on purpose"), "{message}");
}

#[test]
fn oversized_command_list_is_a_fault() {
    let runner = contained_after_swap("flood", "too-many-commands", limits());
    let fault = runner.stats().last_fault.unwrap().fault;
    assert_eq!(fault, Fault::TooManyCommands { count: 10_000, max: 4096 });
}

#[test]
fn output_past_the_copy_budget_is_a_fault() {
    let limits = PolicyLimits { memory_bytes: 64 << 20, max_output_bytes: 8 << 20, ..limits() };
    let runner = contained_after_swap("bulk", "too-much-output", limits);
    assert_eq!(runner.stats().last_fault.unwrap().fault, Fault::TooMuchOutput(8 << 20));
}

#[test]
fn a_policy_that_fails_its_canary_never_replaces_the_running_one() {
    let limits = PolicyLimits {
        call_deadline: Duration::from_millis(200),
        init_deadline: Duration::from_millis(200),
        ..limits()
    };
    let engine = PolicyEngine::new(limits).unwrap();
    let bad = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    for mode in ["loop", "memory", "panic", "reject"] {
        let settings = [("mode", mode), ("when", "init")];
        let mut runner =
            PolicyRunner::start(engine.clone(), counter(&engine), config(&settings), at(0))
                .unwrap();
        assert_eq!(answers(&runner.handle(at(1), timers(0..2))).len(), 2);
        let error = runner.swap(at(2), bad.clone()).unwrap_err();
        assert!(matches!(error, PolicyError::Start { .. }), "{mode}: {error}");
        assert_eq!(runner.policy().name, "counter", "{mode}");
        assert_eq!(runner.stats().swaps_rejected, 1);
        assert_counter_answers(&mut runner, at(3), 3);
    }
}

#[test]
fn components_of_both_world_versions_load_and_say_which_they_are() {
    let engine = engine();
    let newest = engine.compile(EMBEDDED_POLICY).unwrap();
    let frozen = engine.compile(&guest("superpeer_test_pml_0_1_0")).unwrap();
    assert_eq!((newest.meta().world.as_str(), frozen.meta().world.as_str()), ("0.2.0", "0.1.0"));
    assert_eq!(frozen.meta().name, newest.meta().name, "the same policy, built for 0.1.0");
}

#[test]
fn components_of_the_wrong_world_and_garbage_are_refused() {
    let engine = engine();
    let wrong = engine.compile(&guest("superpeer_test_wrong_world")).unwrap_err();
    assert!(matches!(wrong, PolicyError::WrongWorld(_)), "{wrong}");
    for (garbage, says) in [
        (&b""[..], "no `\\0asm` header"),
        (b"not wasm at all", "no `\\0asm` header"),
        (&[0xff; 4096], "no `\\0asm` header"),
        (b"\0asm\x01\0\0\0", "core WebAssembly module, not a component"),
        (b"\0asm\x0d\0\x01\0\xff\xff", "not a valid WebAssembly component"),
    ] {
        let error = engine.compile(garbage).unwrap_err();
        assert!(matches!(error, PolicyError::Invalid(_)), "{error}");
        assert!(error.to_string().contains(says), "{error:?} should say {says:?}");
    }
    let limits = PolicyLimits { max_component_bytes: 1024, ..limits() };
    let error = PolicyEngine::new(limits).unwrap().compile(EMBEDDED_POLICY).unwrap_err();
    assert!(matches!(error, PolicyError::TooLarge { .. }), "{error}");
}

#[test]
fn a_faulting_policy_with_nothing_to_roll_back_to_restarts_with_growing_back_off() {
    let engine = engine();
    let bad = engine.compile(&guest("superpeer_test_misbehave")).unwrap();
    let mut runner = PolicyRunner::start(engine, bad, config(&[("mode", "panic")]), at(0)).unwrap();
    let mut now = Duration::ZERO;
    let mut waits = Vec::new();
    for _ in 0..4 {
        runner.handle(Clock { monotonic: now, wall_ms: 0 }, timers(0..1));
        let next = runner.restart_at().unwrap();
        waits.push((next - now).as_millis());
        now = next;
    }
    assert_eq!(waits, [50, 100, 200, 400]);
    let stats = runner.stats();
    assert_eq!((stats.rollbacks, stats.restarts), (0, 3));
}

#[test]
fn commands_past_the_host_limits_are_rejected_one_by_one() {
    let limits = PolicyLimits { max_timers: 4, ..limits() };
    let engine = PolicyEngine::new(limits).unwrap();
    let mut runner =
        PolicyRunner::start(engine.clone(), counter(&engine), config(&[]), at(0)).unwrap();
    let admitted = runner.handle(at(1), timers(0..10));
    assert_eq!(answers(&admitted).iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let stats = runner.stats();
    assert_eq!((stats.commands, stats.commands_rejected, stats.faults), (4, 6, 0));
}
