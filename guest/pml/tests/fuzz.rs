//! The default policy's parsers of untrusted input on generated inputs (random bytes
//! and mutated valid examples, `superpeer-fuzzing`): the peer wire codec and chunk
//! joiner, tracker JSON, playlists and URL resolution (the targets in `targets/`, which
//! `just fuzz` also runs under AFL++). None may panic; what decodes must encode back to
//! the same command. `just fuzz` runs a million inputs each.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use superpeer_fuzzing::{inputs, run};

mod targets;

fn run_target(name: &str) {
    let target = targets::target(name).unwrap();
    println!("{}", run(name, &(target.examples)(), inputs(50_000), target.check));
}

#[test]
fn peer_wire_commands_and_chunks() {
    run_target("peer-wire");
}

#[test]
fn tracker_messages() {
    run_target("tracker-json");
}

#[test]
fn playlists_and_urls() {
    run_target("playlists");
}
