//! Reaching a swarm that was there first. Unmodified p2p-media-loader viewers (hls.js +
//! p2p-media-loader-hlsjs in headless Chromium, one iframe per viewer so each has its
//! own libraries and peer ids) watch an ffmpeg-made VOD stream and share it among
//! themselves through a real tracker; only then is superpeer seeded. It must connect to
//! at least 90% of them within 30 s (they announce again only every two minutes, so it
//! must offer, not wait for their offers) and upload to them; after `kill -9` of its
//! worker, the replacement must do the same. Every byte a viewer got over P2P is the
//! origin's.
//!
//! - 2.3.1 viewers on bittorrent-tracker, a stream of MPEG-TS segments;
//! - 2.2.2 and 2.3.1 viewers together (two swarms per rendition) on aquatic_ws, a stream
//!   shaped as PeerTube makes them: fragmented MP4 in one file, each segment a byte range.
//!
//! Needs Chromium and ffmpeg (`just system-deps`), the npm packages in `tests/support`
//! (`just node-deps`) and aquatic_ws (`just tools`).

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// How many viewers each swarm has: more than one announce round of theirs reaches.
const VIEWERS: usize = 12;
/// The share of them superpeer must reach.
const REACH: f64 = 0.9;
/// How long superpeer may take to reach them, from the seed (or the restart).
const REACH_WITHIN: Duration = Duration::from_secs(30);
/// p2p-media-loader fetches over HTTP whatever plays within this many seconds (15 by
/// default); sites that deploy a super peer shorten it (see interop.rs).
const HIGH_DEMAND_SECONDS: u32 = 4;
/// A long VOD of small segments: the viewers are still loading ahead while the test runs.
const MEDIA: &[&str] = &["--seconds", "600", "--size", "160x90", "--video-bitrate", "100k"];

/// Twelve Chromium players, ffmpeg's origin and superpeer share two cores: one swarm at
/// a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The peer ids superpeer's workers took so far (each swarm it joins logs its own).
fn superpeer_peer_ids(master: &Superpeer) -> BTreeSet<String> {
    logged_peer_ids(&master.log.lock().unwrap()).into_iter().collect()
}

/// The one worker of the seed, once it runs: its pid and its stats.
fn the_worker(stats: &Value) -> Option<(u32, Value)> {
    let workers = stats["workers"].as_object()?;
    let (pid, worker) = workers.iter().find(|(_, w)| w["state"] == "running")?;
    Some((pid.parse().ok()?, worker.clone()))
}

/// Waits until superpeer's worker has an open DataChannel with at least 90% of the
/// viewers, within [`REACH_WITHIN`] of `since`; returns the pid and how long it took.
fn reached(master: &Superpeer, since: Instant, not: Option<u32>) -> (u32, Duration) {
    let needed = (VIEWERS as f64 * REACH).ceil() as u64;
    loop {
        let stats = master.stats();
        if let Some((pid, worker)) = the_worker(&stats)
            && Some(pid) != not
            && worker["peers"].as_u64() >= Some(needed)
        {
            return (pid, since.elapsed());
        }
        assert!(
            since.elapsed() < REACH_WITHIN,
            "superpeer did not reach {needed} of {VIEWERS} viewers within {REACH_WITHIN:?}: {:#}",
            stats["workers"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many viewers got P2P bytes from one of `ids`.
fn served_by(viewers: &[Value], ids: &BTreeSet<String>) -> usize {
    viewers
        .iter()
        .filter(|v| {
            v["p2pFrom"].as_object().is_some_and(|from| {
                from.iter().any(|(id, bytes)| ids.contains(id) && bytes.as_u64() > Some(0))
            })
        })
        .count()
}

/// What each viewer saw, in a line each, for the test's output.
fn brief(viewers: &[Value], superpeer: &BTreeSet<String>) -> String {
    viewers
        .iter()
        .map(|v| {
            let from_superpeer: u64 = v["p2pFrom"]
                .as_object()
                .map(|f| {
                    f.iter()
                        .filter(|(id, _)| superpeer.contains(*id))
                        .filter_map(|(_, b)| b.as_u64())
                        .sum()
                })
                .unwrap_or(0);
            format!(
                "{} played {}s stalls {} peers {} p2p {} (superpeer {}) http {}",
                v["generation"],
                v["played"],
                v["stalls"],
                v["peers"].as_array().map_or(0, Vec::len),
                v["p2pBytes"],
                from_superpeer,
                v["httpBytes"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Run<'a> {
    name: &'a str,
    generations: &'a [&'a str],
    media: &'a [&'a str],
    tracker_url: String,
    /// Kill the worker once it has reached the swarm, and see its replacement do it.
    kill: bool,
}

fn reach_a_swarm_that_was_there_first(run: Run<'_>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = data_dir(&format!("swarm-{}", run.name));
    let media = dir.join("media");
    let origin = HlsOrigin::start_with(&media, "vod", run.media);
    let master = Superpeer::start(&dir);

    let page = format!(
        "{}/swarm.html?viewers={}&manifest={}&trackers={}&highDemand={HIGH_DEMAND_SECONDS}",
        origin.url,
        run.generations.join(","),
        percent_encode(&origin.manifest),
        percent_encode(&run.tracker_url),
    );
    let swarm = Swarm::start(&page);
    // The viewers play and share among themselves; each announced (with its offers)
    // when its first segment was asked for.
    swarm.wait_until("every viewer playing", Duration::from_secs(90), |viewers| {
        viewers.iter().all(|v| v["played"].as_f64() >= Some(4.0))
    });

    let seeded = Instant::now();
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": origin.channel(), "keepAlive": true, "signal1": run.tracker_url}]}),
    );
    let (pid, took) = reached(&master, seeded, None);
    eprintln!(
        "{}: superpeer connected to 90% of {VIEWERS} viewers {took:?} after the seed",
        run.name
    );
    let needed = (VIEWERS as f64 * REACH).ceil() as usize;
    let ids = superpeer_peer_ids(&master);
    let viewers =
        swarm.wait_until("superpeer uploading to the viewers", Duration::from_secs(60), |v| {
            served_by(v, &ids) >= needed
        });
    eprintln!("{}: served by superpeer:\n{}", run.name, brief(&viewers, &ids));

    if run.kill {
        signal("KILL", pid);
        let restarted = Instant::now();
        let (replacement, took) = reached(&master, restarted, Some(pid));
        eprintln!(
            "{}: the replacement worker {replacement} reached 90% {took:?} after kill -9",
            run.name
        );
        let new_ids: BTreeSet<String> =
            superpeer_peer_ids(&master).difference(&ids).cloned().collect();
        assert!(!new_ids.is_empty(), "the replacement joined with peer ids of its own");
        let viewers = swarm.wait_until("the replacement uploading", Duration::from_secs(60), |v| {
            served_by(v, &new_ids) >= needed
        });
        eprintln!("{}: after the restart:\n{}", run.name, brief(&viewers, &new_ids));
    }

    let summary = swarm.finish();
    let viewers = summary["viewers"].as_array().unwrap();
    for (index, viewer) in viewers.iter().enumerate() {
        assert_eq!(viewer["failed"], Value::Null, "viewer {index}: {viewer:#}");
    }
    let checked = assert_all_from_origin(&summary, &media, &origin.url);
    assert!(checked > 0, "no P2P segment was checked");
    let stats = master.stats();
    let (_, worker) = the_worker(&stats).unwrap();
    assert_eq!(worker["policyStats"]["faults"], 0, "{:#}", worker["policyStats"]);
    master.stop();
}

#[test]
fn superpeer_reaches_a_swarm_of_2_3_viewers_that_was_there_first_and_again_after_kill_9() {
    let tracker = Tracker::start();
    reach_a_swarm_that_was_there_first(Run {
        name: "bittorrent-tracker",
        generations: &["2.3"; VIEWERS],
        media: MEDIA,
        tracker_url: tracker.url.clone(),
        kill: true,
    });
}

#[test]
fn superpeer_reaches_2_2_and_2_3_viewers_of_a_peertube_shaped_stream_on_aquatic_ws() {
    let tracker = Aquatic::start();
    let generations: Vec<&str> =
        (0..VIEWERS).map(|i| if i % 2 == 0 { "2.2" } else { "2.3" }).collect();
    let media: Vec<&str> = MEDIA.iter().copied().chain(["--fmp4"]).collect();
    reach_a_swarm_that_was_there_first(Run {
        name: "aquatic_ws",
        generations: &generations,
        media: &media,
        tracker_url: tracker.url.clone(),
        kill: false,
    });
}
