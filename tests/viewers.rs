//! Many viewers at once: simulated p2p-media-loader viewers (`superpeer-load`, real
//! WebRTC through a real bittorrent-tracker) all connect to one worker and get every
//! segment they ask for, byte for byte, while hostile viewers among them send a command
//! that never ends or flood it with requests: those are closed, alone, and nobody else
//! notices. The load benchmark uses the same generator to measure.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use serde_json::json;

#[path = "support/harness.rs"]
mod harness;

use harness::*;

#[test]
fn twenty_viewers_get_every_segment_intact_while_hostile_ones_are_closed_alone() {
    let dir = data_dir("viewers");
    // The subject is hostile viewers, not the deadline (policy.rs and hostile.rs test
    // it): a turn with a flood's requests in it can take a debug build's host more than
    // the 5 ms of CPU a release build stays far below.
    std::fs::write(dir.join(ENV_FILE), "policyLimits={\"call_deadline\":50}\n").unwrap();
    let origin = VodOrigin::start(10, 256 << 10);
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    // bittorrent-tracker hands each offer of an announce to another member: with as many
    // offers as members, one round reaches everyone, so that every viewer meets superpeer
    // within the run does not depend on which members random offers find (the bench
    // measures reach).
    seed_vod(&master, &origin, &tracker, 10, json!({"offersPerAnnounce": 82}));

    let args = superpeer_load::Args {
        ramp_ms: 100,
        hostile_endless: 2,
        hostile_flood: 2,
        ..superpeer_load::Args::new(&tracker.url, &origin.info_hash(), &origin.media(), 20)
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = runtime.block_on(superpeer_load::run(args)).unwrap();
    assert_eq!(summary["connected"], 20, "{summary}");
    assert_eq!(summary["failures"], 0, "{summary}");
    assert_eq!(
        (summary["hostile"].clone(), summary["hostile_closed"].clone()),
        (json!(4), json!(4)),
        "{summary}"
    );
    // Served throughout: segments arrived in every second from the first to the last.
    let per_second: Vec<u64> = summary["segments_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    let first = per_second.iter().position(|n| *n > 0).unwrap();
    assert!(per_second[first..per_second.len() - 1].iter().all(|n| *n > 0), "{per_second:?}");
    // Each viewer got segments; every one was checked against the origin's bytes.
    assert!(summary["segments"].as_u64().unwrap() >= 20, "{summary}");
    let stats = master.wait_for("the uploads counted", |s| {
        s["workers"]
            .as_object()
            .unwrap()
            .values()
            .any(|w| w["uploaded"].as_u64() >= summary["bytes"].as_u64())
    });
    let worker = stats["workers"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(worker["policyStats"]["faults"], 0, "{:#}", worker["policyStats"]);
    master.stop();
}
