//! The host's parsers of untrusted input on generated inputs (random bytes and mutated
//! valid examples, `superpeer-fuzzing`): the targets in `fuzz_targets/` (master/worker
//! frames, `.env`, `/seed` bodies and channel ids, `originAllow` entries and URLs, and
//! datagrams at a worker's WebRTC socket), which `just fuzz` also runs under AFL++. None
//! may panic; a bad datagram must not cost the viewer that was there. `just fuzz` runs
//! a million inputs each; `just test` a short run.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use superpeer_fuzzing::{inputs, run};

mod fuzz_targets;

/// Runs a target on `default` generated inputs (unless told otherwise).
fn run_target(name: &str, default: u64) {
    let mut fuzzing = (fuzz_targets::target(name).unwrap().start)();
    println!("{}", run(name, &fuzzing.examples, inputs(default), |input| (fuzzing.check)(input)));
}

#[test]
fn master_and_worker_frames() {
    run_target("ipc-frames", 20_000);
}

#[test]
fn env_files() {
    run_target("env-files", 20_000);
}

#[test]
fn seed_requests_and_channel_ids() {
    run_target("seeds-and-channels", 20_000);
}

#[test]
fn origin_rules_and_urls() {
    run_target("origin-rules", 20_000);
}

#[test]
fn datagrams_at_a_workers_socket() {
    run_target("datagrams", 5_000);
}
