//! Interop with what viewers really run: headless Chromium playing an ffmpeg-made HLS
//! stream with unmodified hls.js + p2p-media-loader-hlsjs 2.3.1, a real bittorrent-tracker,
//! and `superpeer serve` seeded through `POST /seed`. For a live and for a VOD stream, a
//! lone viewer (no other peer in the swarm but superpeer) must play 30 s without a stall,
//! get at least half of its segment bytes over P2P, and every byte it got over P2P must
//! be the origin's.
//!
//! Needs Chromium and ffmpeg (`just setup` installs them) and the npm packages in
//! `tests/support` (`just node-deps`).

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// Seconds each viewer must play.
const PLAY_SECONDS: u32 = 30;
/// p2p-media-loader fetches over HTTP whatever plays within this many seconds (15 by
/// default). Two segments' worth leaves the rest of the buffer to P2P, as a site that
/// deploys a super peer would configure it.
const HIGH_DEMAND_SECONDS: u32 = 4;

/// Chromium, ffmpeg and superpeer share two cores: one stream at a time keeps a stall
/// from being the machine's fault.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn sha256_of_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks each URL's hash against the origin's file for it.
fn assert_same_as_origin(media: &Path, origin: &str, hashes: &Value, what: &str) {
    let hashes = hashes.as_object().unwrap();
    assert!(!hashes.is_empty(), "no {what} recorded");
    for (url, hash) in hashes {
        let path = url.strip_prefix(origin).unwrap_or_else(|| panic!("{url} is not the origin's"));
        assert_eq!(
            hash.as_str().unwrap(),
            sha256_of_file(&media.join(path.trim_start_matches('/'))),
            "{what}: {url} differs from the origin's file"
        );
    }
}

fn a_lone_viewer_gets_most_of_the_stream_from_superpeer(kind: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = data_dir(&format!("interop-{kind}"));
    let media = dir.join("media");
    let origin = HlsOrigin::start(&media, kind);
    let origin_url = origin.url.clone();
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);

    let manifest = origin.manifest.clone();
    let channel = origin.channel();
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": channel, "keepAlive": true, "signal1": tracker.url}]}),
    );
    // Superpeer is in the swarm with segments cached before the viewer comes, as when an
    // operator seeds a channel ahead of its audience.
    master.wait_for("the worker in the swarm with segments", |stats| {
        stats["workers"].as_object().unwrap().values().any(|w| {
            w["trackers"] == 1 && w["segments"].as_u64() >= Some(1) && w["state"] == "running"
        })
    });

    let page = format!(
        "{origin_url}/player.html?manifest={}&trackers={}&highDemand={HIGH_DEMAND_SECONDS}&liveSync={LIVE_SYNC_SEGMENTS}",
        percent_encode(&manifest),
        percent_encode(&tracker.url)
    );
    let viewers = watch(&page, 1, PLAY_SECONDS);
    let viewer = &viewers[0];
    let brief: BTreeMap<&str, &Value> = ["failed", "timedOut", "playedSeconds", "stalls", "errors"]
        .into_iter()
        .chain(["p2pBytes", "httpBytes", "peers", "console"])
        .map(|key| (key, &viewer[key]))
        .collect();
    let brief =
        format!("{} segments: {}", serde_json::to_string(&brief).unwrap(), loaded_sources(viewer));
    eprintln!("{kind}: {brief}");

    assert_eq!(viewer["failed"], Value::Null, "{brief}");
    assert_eq!(viewer["timedOut"], false, "{brief}");
    assert!(viewer["playedSeconds"].as_f64().unwrap() >= f64::from(PLAY_SECONDS), "{brief}");
    assert_eq!(viewer["stalls"], 0, "the picture stopped: {brief}");

    let p2p = viewer["p2pBytes"].as_u64().unwrap();
    let http = viewer["httpBytes"].as_u64().unwrap();
    assert!(2 * p2p >= p2p + http, "less than half the bytes came over P2P: {brief}");

    // Every segment that came over P2P was hashed as it arrived, and matches the origin.
    let p2p_segments = viewer["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|segment| segment["source"] == "p2p")
        .count();
    assert_eq!(viewer["p2pHashes"].as_object().unwrap().len(), p2p_segments, "{brief}");
    assert_same_as_origin(&media, &origin_url, &viewer["p2pHashes"], "P2P segments");
    assert_same_as_origin(&media, &origin_url, &viewer["playedHashes"], "played fragments");

    // What the viewer got over P2P, superpeer counted as uploaded (in the worker's next
    // report: workers report once a second).
    master.wait_for(&format!("the viewer's {p2p} P2P bytes counted as uploaded"), |stats| {
        uploaded_by_workers(stats) >= p2p
    });
    master.stop();
}

#[test]
fn a_lone_viewer_of_a_live_stream_gets_most_of_it_from_superpeer() {
    a_lone_viewer_gets_most_of_the_stream_from_superpeer("live");
}

#[test]
fn a_lone_viewer_of_a_vod_stream_gets_most_of_it_from_superpeer() {
    a_lone_viewer_gets_most_of_the_stream_from_superpeer("vod");
}
