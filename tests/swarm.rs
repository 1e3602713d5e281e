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
use std::io::{BufRead, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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

/// `node swarm.mjs`: the viewers, watching until dropped (or [`Swarm::finish`]).
struct Swarm {
    child: Child,
    stdin: Option<ChildStdin>,
    latest: Arc<Mutex<Option<Value>>>,
    summary: Arc<Mutex<Option<Value>>>,
}

impl Swarm {
    fn start(page: &str) -> Swarm {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/swarm.mjs");
        assert!(Path::new("/usr/bin/chromium").exists(), "Chromium is missing: `just system-deps`");
        let mut child = Command::new("node")
            .arg(script)
            .args(["--page", page])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().unwrap());
        let (latest, summary) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let (ticks, end) = (latest.clone(), summary.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let message: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                match message["type"].as_str() {
                    Some("tick") => *ticks.lock().unwrap() = Some(message["viewers"].clone()),
                    Some("summary") => *end.lock().unwrap() = Some(message),
                    _ => {}
                }
            }
        });
        Swarm { child, stdin, latest, summary }
    }

    /// Waits until the viewers' latest state satisfies `done`, within `patience`;
    /// returns that state, or panics with it.
    fn wait_until(
        &self,
        what: &str,
        patience: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + patience;
        loop {
            let latest = self.latest.lock().unwrap().clone();
            if let Some(Value::Array(viewers)) = &latest
                && done(viewers)
            {
                return viewers.clone();
            }
            assert!(self.child_alive(), "the swarm driver exited; last state: {latest:?}");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last state: {latest:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn child_alive(&self) -> bool {
        alive(self.child.id())
    }

    /// Stops the viewers and returns what each saw.
    fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the swarm driver failed: {status}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(summary) = self.summary.lock().unwrap().take() {
                return summary;
            }
            assert!(Instant::now() < deadline, "the swarm driver printed no summary");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal("TERM", self.child.id());
            let _ = self.child.wait();
        }
    }
}

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

/// The bytes a segment key names: a whole file, or `file|first-last` of it.
fn origin_bytes(media: &Path, origin: &str, key: &str) -> Vec<u8> {
    let (url, range) = match key.split_once('|') {
        Some((url, range)) => (url, Some(range)),
        None => (key, None),
    };
    let path = media.join(url.strip_prefix(origin).unwrap().trim_start_matches('/'));
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match range.and_then(|r| r.split_once('-')) {
        None => {
            let mut all = Vec::new();
            file.read_to_end(&mut all).unwrap();
            all
        }
        Some((first, last)) => {
            let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
            let mut part = vec![0; (last - first + 1) as usize];
            file.seek(SeekFrom::Start(first)).unwrap();
            file.read_exact(&mut part).unwrap();
            part
        }
    }
}

/// Every segment each viewer got over P2P, and every fragment it played, is the
/// origin's, byte for byte; returns how many P2P segments were checked.
fn assert_all_from_origin(summary: &Value, media: &Path, origin: &str) -> usize {
    let mut checked = 0;
    for (index, viewer) in summary["viewers"].as_array().unwrap().iter().enumerate() {
        for what in ["p2pHashes", "playedHashes"] {
            for (key, hash) in viewer[what].as_object().unwrap() {
                let expected: String = Sha256::digest(origin_bytes(media, origin, key))
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(hash.as_str().unwrap(), expected, "viewer {index}: {what} {key}");
                checked += usize::from(what == "p2pHashes");
            }
        }
    }
    checked
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
